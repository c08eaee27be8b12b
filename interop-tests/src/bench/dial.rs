//! Dial + first message: from a node that was just bound (no connection yet) until its first
//! 64-byte message to another node is acknowledged, against raw quinn connect + open stream +
//! 64-byte echo on a fresh connection.

use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use bytes::Bytes;
use ferry::{Node, NodeConfig, SecretKey};
use hdrhistogram::Histogram;

use super::{
    histogram, measure, record_ns, shutdown, streams, Better, QuinnPair, Row, Settings,
    MESSAGE_LEN, PAYLOAD,
};

/// Grace of each sender node's shutdown: it has nothing in flight by then.
const SENDER_GRACE: Duration = Duration::from_millis(100);
/// Rounds start at most this often. A sender's shutdown (in the background) mostly waits for
/// its endpoint to drain (about 3 probe timeouts, some 80 ms on loopback); the pacing keeps
/// the number of senders still shutting down small.
pub(crate) const PACE: Duration = Duration::from_millis(5);

pub(super) async fn figure_dial(settings: Settings) -> Result<Vec<Row>> {
    let row = |what: &str| {
        Row::new(
            format!("dial + first 64 B acked (new node), {what}"),
            "ms",
            Better::Lower,
        )
        .against("raw quinn, connect + stream echo")
    };
    let mut rows = [row("p50"), row("p99")];
    let (rounds, warmup) = (settings.dial_rounds, settings.dial_warmup);
    let mut record = |ferry: bool, histogram: Histogram<u64>| {
        for (row, quantile) in rows.iter_mut().zip([0.50, 0.99]) {
            row.push(ferry, histogram.value_at_quantile(quantile) as f64 / 1e6);
        }
    };
    for run in 0..settings.runs {
        let ferry_first = run % 2 == 0;
        if ferry_first {
            record(true, measure(ferry_dials(rounds, warmup)).await?);
        }
        if !settings.ferry_only {
            record(false, measure(quinn_dials(rounds, warmup)).await?);
        }
        if !ferry_first {
            record(true, measure(ferry_dials(rounds, warmup)).await?);
        }
    }
    Ok(rows.into())
}

/// Each round binds a new sender node (not timed), then times `send_bytes` of 64 bytes to a
/// mailbox on a long-lived target node, which dials the target (the address carries its
/// socket address as a dial hint), opens a conversation and waits for the acknowledgement.
/// The sender then shuts down in the background (awaited at the end of the run).
pub(crate) async fn ferry_dials(rounds: u64, warmup: u64) -> Result<Histogram<u64>> {
    // Every sender dials from 127.0.0.1, faster than the default per-address handshake limit
    // (100/s) allows: the limit is not what this figure measures.
    let config = NodeConfig {
        handshake_rate_per_ip: 0,
        ..NodeConfig::default()
    };
    let target = Node::bind(SecretKey::generate(), config).await?;
    let mailbox = target.mailbox();
    let address = mailbox.address().clone();
    let total = warmup + rounds;
    let drain = tokio::spawn(async move {
        for _ in 0..total {
            let message = mailbox.recv().await?;
            ensure!(message.payload().len() == MESSAGE_LEN, "bad message length");
        }
        anyhow::Ok(())
    });
    let payload = Bytes::from_static(&PAYLOAD);
    let mut histogram = histogram()?;
    let mut shutdowns = Vec::new();
    for round in 0..total {
        let next = tokio::time::Instant::now() + PACE;
        let sender = Node::bind(SecretKey::generate(), NodeConfig::default()).await?;
        let start = Instant::now();
        sender.send_bytes(&address, payload.clone()).await?;
        let elapsed = start.elapsed();
        if round >= warmup {
            record_ns(&mut histogram, elapsed)?;
        }
        shutdowns.push(tokio::spawn(async move {
            sender.shutdown(SENDER_GRACE).await;
        }));
        tokio::time::sleep_until(next).await;
    }
    for shutdown in shutdowns {
        shutdown.await.context("sender shutdown panicked")?;
    }
    drain.await.context("drain task panicked")??;
    shutdown(&[target]).await;
    Ok(histogram)
}

/// Each round times a new connection from the client endpoint to the server endpoint, a
/// bidirectional stream on it, 64 bytes written and the 64-byte echo read; then the client
/// closes the connection (not timed). The server accepts each connection on a task, echoes
/// one stream and waits for the close ([`streams::dial_rounds`]).
pub(crate) async fn quinn_dials(rounds: u64, warmup: u64) -> Result<Histogram<u64>> {
    let pair = QuinnPair::connect().await?;
    let server_endpoint = pair.server.clone();
    let server = tokio::spawn(async move {
        while let Some(incoming) = server_endpoint.accept().await {
            tokio::spawn(async move { streams::serve_dial(incoming.await?).await });
        }
    });
    let mut dialer = streams::QuinnDialer {
        endpoint: pair.client.clone(),
        server: pair.server.local_addr()?,
    };
    let histogram = streams::dial_rounds(&mut dialer, rounds, warmup).await?;
    pair.close().await;
    server
        .await
        .map_err(|error| anyhow!("{error}"))
        .context("accept loop")?;
    Ok(histogram)
}
