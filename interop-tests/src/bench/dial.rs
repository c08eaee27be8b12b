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
    let row = |what: &str, against: &'static str| {
        Row::new(
            format!("dial + first 64 B acked (new node), {what}"),
            "ms",
            Better::Lower,
        )
        .against(against)
    };
    // The baseline is what ferry's figure is: a new endpoint each round (its bind untimed), as
    // the iroh dialer in bench-peers does too. Dials from one client endpoint for every round
    // (the baseline before) are shown beside it; on loopback the two agree within noise.
    let fresh = "raw quinn, new endpoint: connect + stream echo";
    let reused = "raw quinn, one endpoint for all: connect + stream echo";
    let mut against_fresh = [row("p50", fresh), row("p99", fresh)];
    let mut against_reused = [row("p50", reused), row("p99", reused)];
    let (rounds, warmup) = (settings.dial_rounds, settings.dial_warmup);
    for run in 0..settings.runs {
        let ferry_first = run % 2 == 0;
        if ferry_first {
            let ferry = measure(ferry_dials(rounds, warmup)).await?;
            record(&mut against_fresh, true, &ferry);
            record(&mut against_reused, true, &ferry);
        }
        if !settings.ferry_only {
            let quinn = measure(quinn_dials(rounds, warmup)).await?;
            record(&mut against_fresh, false, &quinn);
            let quinn = measure(quinn_dials_with(rounds, warmup, Endpoints::One)).await?;
            record(&mut against_reused, false, &quinn);
        }
        if !ferry_first {
            let ferry = measure(ferry_dials(rounds, warmup)).await?;
            record(&mut against_fresh, true, &ferry);
            record(&mut against_reused, true, &ferry);
        }
    }
    Ok(against_fresh.into_iter().chain(against_reused).collect())
}

/// Adds a run's p50 and p99, in ms, to the two rows of a comparison.
fn record(rows: &mut [Row; 2], ferry: bool, histogram: &Histogram<u64>) {
    for (row, quantile) in rows.iter_mut().zip([0.50, 0.99]) {
        row.push(ferry, histogram.value_at_quantile(quantile) as f64 / 1e6);
    }
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

/// Which client endpoints a raw quinn dial uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoints {
    /// A new one each round, bound before the round's timer starts (as a ferry node is).
    New,
    /// One for every round.
    One,
}

/// Raw quinn dials from a new client endpoint each round ([`Endpoints::New`]): the baseline
/// of the dial figure.
pub(crate) async fn quinn_dials(rounds: u64, warmup: u64) -> Result<Histogram<u64>> {
    quinn_dials_with(rounds, warmup, Endpoints::New).await
}

/// Each round times a new connection to the server endpoint, a bidirectional stream on it,
/// 64 bytes written and the 64-byte echo read; then the client closes the connection (not
/// timed). The server accepts each connection on a task, echoes one stream and waits for the
/// close ([`streams::dial_rounds`]).
pub(crate) async fn quinn_dials_with(
    rounds: u64,
    warmup: u64,
    endpoints: Endpoints,
) -> Result<Histogram<u64>> {
    let pair = QuinnPair::connect().await?;
    let server_endpoint = pair.server.clone();
    let server = tokio::spawn(async move {
        while let Some(incoming) = server_endpoint.accept().await {
            tokio::spawn(async move { streams::serve_dial(incoming.await?).await });
        }
    });
    let server_addr = pair.server.local_addr()?;
    let histogram = match endpoints {
        Endpoints::One => {
            let mut dialer = streams::QuinnDialer {
                endpoint: pair.client.clone(),
                server: server_addr,
            };
            streams::dial_rounds(&mut dialer, rounds, warmup).await?
        }
        Endpoints::New => {
            let mut dialer = NewEndpointDialer {
                config: pair.client_config.clone(),
                server: server_addr,
                current: None,
                closing: Vec::new(),
            };
            let histogram = streams::dial_rounds(&mut dialer, rounds, warmup).await?;
            for closing in dialer.closing {
                closing.await.context("closing a client endpoint")?;
            }
            histogram
        }
    };
    pair.close().await;
    server
        .await
        .map_err(|error| anyhow!("{error}"))
        .context("accept loop")?;
    Ok(histogram)
}

/// Dials from a new client endpoint each round, bound in [`streams::Dialer::prepare`].
struct NewEndpointDialer {
    config: quinn::ClientConfig,
    server: std::net::SocketAddr,
    /// The endpoint of the current round.
    current: Option<quinn::Endpoint>,
    /// Endpoints of past rounds, draining in the background.
    closing: Vec<tokio::task::JoinHandle<()>>,
}

impl streams::Dialer for NewEndpointDialer {
    type Connection = quinn::Connection;

    async fn prepare(&mut self) -> Result<()> {
        let mut endpoint =
            quinn::Endpoint::client(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))?;
        endpoint.set_default_client_config(self.config.clone());
        self.current = Some(endpoint);
        Ok(())
    }

    async fn connect(&mut self) -> Result<quinn::Connection> {
        let endpoint = self
            .current
            .as_ref()
            .ok_or_else(|| anyhow!("no endpoint prepared"))?;
        Ok(endpoint.connect(self.server, "localhost")?.await?)
    }

    async fn release(&mut self, connection: quinn::Connection) {
        connection.close(0u32.into(), b"done");
        if let Some(endpoint) = self.current.take() {
            self.closing.push(tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
            }));
        }
    }
}
