//! Call round trip: `node.call` of a 64-byte request to an "echo" service on another node,
//! against raw quinn echo on a fresh bidirectional stream per request (what a call costs at
//! the transport level) and against NATS request/reply.

use std::time::Instant;

use anyhow::{anyhow, ensure, Context, Result};
use bytes::Bytes;
use ferry::{ServiceOptions, Target};
use hdrhistogram::Histogram;

use super::nats::{self, NatsServer};
use super::{
    ferry_pair, histogram, measure, record_ns, shutdown, streams, Better, QuinnPair, Row, Settings,
    MESSAGE_LEN, PAYLOAD,
};

/// The baseline of the quinn rows.
const QUINN: &str = "raw quinn, new stream per request";

pub(super) async fn figure_call(settings: Settings) -> Result<Vec<Row>> {
    let row = |what: &str, against: &'static str| {
        Row::new(
            format!("call 64 B -> echo service, {what}"),
            "us",
            Better::Lower,
        )
        .against(against)
    };
    let mut rows = [
        row("p50", QUINN),
        row("p99", QUINN),
        row("p50", nats::REQUEST_REPLY),
        row("p99", nats::REQUEST_REPLY),
    ];
    let server = if settings.ferry_only {
        None
    } else {
        NatsServer::start().await?
    };
    if server.is_none() && !settings.ferry_only {
        for row in &mut rows[2..] {
            row.note = Some(nats::NOT_INSTALLED.to_owned());
        }
    }
    let (rounds, warmup) = (settings.call_rounds, settings.call_warmup);
    let quantiles = |histogram: &Histogram<u64>| {
        [0.50, 0.99].map(|quantile| histogram.value_at_quantile(quantile) as f64 / 1000.0)
    };
    for run in 0..settings.runs {
        // Ferry, quinn and NATS take turns going first.
        for turn in 0..3 {
            match (run + turn) % 3 {
                0 => {
                    let [p50, p99] = quantiles(&measure(ferry_calls(rounds, warmup)).await?);
                    for (row, value) in rows.iter_mut().zip([p50, p99, p50, p99]) {
                        row.push(true, value);
                    }
                }
                1 if !settings.ferry_only => {
                    let [p50, p99] = quantiles(&measure(quinn_calls(rounds, warmup)).await?);
                    rows[0].push(false, p50);
                    rows[1].push(false, p99);
                }
                2 => {
                    if let Some(server) = &server {
                        let histogram =
                            measure(nats::request_rounds(server.addr(), rounds, warmup)).await?;
                        let [p50, p99] = quantiles(&histogram);
                        rows[2].push(false, p50);
                        rows[3].push(false, p99);
                    }
                }
                _ => {}
            }
        }
    }
    if let Some(server) = server {
        server.stop().await;
    }
    Ok(rows.into())
}

/// Sequential `node.call`s of 64 bytes (as serde bytes, `bytes::Bytes`: postcard adds a 1-byte
/// length, and the bytes are copied whole, where a `Vec<u8>` goes through serde one element
/// at a time — 2–4 k instructions per encoding or decoding, four per call; the libp2p call
/// uses `serde_bytes` likewise) to an "echo" service on a second node, whose handler answers
/// each request with itself. Every call is a new conversation, on a new stream of the one
/// connection.
pub(crate) async fn ferry_calls(rounds: u64, warmup: u64) -> Result<Histogram<u64>> {
    let (client, server) = ferry_pair().await?;
    let _echo = server.serve(
        "echo",
        ServiceOptions::default(),
        |mut conversation| async move {
            if let Ok(request) = conversation.recv_obj::<Bytes>().await {
                let _ = conversation.reply(&request).await;
            }
        },
    )?;
    let target = Target::service(server.id(), "echo").with_hints(vec![server.local_addr()]);
    let payload = Bytes::from_static(&PAYLOAD);
    let mut histogram = histogram()?;
    for round in 0..warmup + rounds {
        let start = Instant::now();
        let reply: Bytes = client.call(target.clone(), &payload).await?;
        let elapsed = start.elapsed();
        ensure!(reply.len() == MESSAGE_LEN, "bad reply length");
        if round >= warmup {
            record_ns(&mut histogram, elapsed)?;
        }
    }
    shutdown(&[client, server]).await;
    Ok(histogram)
}

/// The same with raw quinn on an open connection: per request, open a bidirectional stream,
/// write 64 bytes and finish; the server (a task per stream, like a ferry service handler)
/// reads to the end, writes the bytes back and finishes; the client reads to the end
/// ([`streams::call_rounds`]).
pub(crate) async fn quinn_calls(rounds: u64, warmup: u64) -> Result<Histogram<u64>> {
    let pair = QuinnPair::connect().await?;
    // Ends when the client closes the connection.
    let server = tokio::spawn(streams::serve_calls(pair.server_conn.clone()));
    let histogram = streams::call_rounds(&pair.client_conn, rounds, warmup).await?;
    pair.close().await;
    server
        .await
        .map_err(|error| anyhow!("{error}"))
        .context("echo server")?;
    Ok(histogram)
}
