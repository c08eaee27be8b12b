//! The NATS baseline: a `nats-server` the bench starts on a loopback port (when it is on
//! `PATH`), reached with the async-nats client over plain TCP (no TLS, so no rustls provider is
//! ever chosen by async-nats).
//!
//! Two measurements: 64-byte publish -> subscribe throughput (core NATS: at most once, no
//! acknowledgements) and 64-byte request/reply round trips.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::Bytes;
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::{histogram, record_ns, MESSAGE_LEN, PAYLOAD};

/// The "baseline is" text of the throughput row measured against NATS.
pub(super) const PUBSUB: &str = "NATS pub -> sub (no acks)";
/// The "baseline is" text of the request/reply rows.
pub(super) const REQUEST_REPLY: &str = "NATS request/reply";
/// Shown instead of a ratio when `nats-server` is not on `PATH`.
pub(super) const NOT_INSTALLED: &str = "NATS not installed: skipped";

/// Messages the publisher may be ahead of the subscriber. Core NATS has no flow control: a
/// publisher that runs ahead fills the server's buffer for the subscriber's connection (and
/// the server then drops it as a slow consumer) or the client's subscription queue (which then
/// drops messages). This window, kept through a counter shared in the process, plays the part
/// of ferry's send window; it is far below both limits (64 MiB and [`SUBSCRIPTION_CAPACITY`]).
const WINDOW: u64 = 32 * 1024;
/// Messages the async-nats client queues per subscription (its default is 65 536).
const SUBSCRIPTION_CAPACITY: usize = 1 << 17;
/// The subscriber reports its count to the publisher after this many messages.
const REPORT_EVERY: u64 = 512;
/// How long the server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `nats-server` child process listening on a loopback port; killed when dropped.
pub(super) struct NatsServer {
    child: Child,
    url: String,
}

impl NatsServer {
    /// Starts `nats-server` on a free loopback port, or returns `None` if it is not installed.
    pub(super) async fn start() -> Result<Option<Self>> {
        let spawned = Command::new("nats-server")
            // -p -1: a random free port, which the server logs once it listens.
            .args(["-a", "127.0.0.1", "-p", "-1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error).context("starting nats-server"),
        };
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow!("nats-server without stderr"))?;
        let mut lines = BufReader::new(stderr).lines();
        let listening = async {
            while let Some(line) = lines.next_line().await? {
                if let Some((_, addr)) = line.split_once("Listening for client connections on ") {
                    return anyhow::Ok(addr.trim().to_owned());
                }
            }
            bail!("nats-server exited before listening")
        };
        let addr = tokio::time::timeout(START_TIMEOUT, listening)
            .await
            .map_err(|_| anyhow!("nats-server did not listen within {START_TIMEOUT:?}"))??;
        // Keep reading its log, so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Some(Self {
            child,
            url: format!("nats://{addr}"),
        }))
    }

    /// The server's client URL.
    pub(super) fn url(&self) -> &str {
        &self.url
    }

    /// Kills the server and waits for it to exit.
    pub(super) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

async fn connect(url: &str) -> Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// Messages per second of `n` 64-byte messages published on one connection and received by a
/// subscriber on another, after `warmup` unmeasured ones; the clock runs from the first
/// publish until the subscriber counted the last message.
pub(super) async fn throughput(url: &str, n: u64, warmup: u64) -> Result<f64> {
    let subscriber = connect(url).await?;
    let publisher = connect(url).await?;
    let subject = async_nats::Subject::from_static("bench.throughput");
    let mut subscription = subscriber.subscribe(subject.clone()).await?;
    // The server knows the subscription once it answered the PING behind the SUB.
    subscriber.flush().await?;

    let total = warmup + n;
    let (progress_tx, mut progress) = watch::channel(0u64);
    let counter = tokio::spawn(async move {
        let mut count = 0u64;
        while count < total {
            let message = subscription
                .next()
                .await
                .ok_or_else(|| anyhow!("subscription ended after {count} messages"))?;
            ensure!(message.payload.len() == MESSAGE_LEN, "bad message length");
            count += 1;
            if count.is_multiple_of(REPORT_EVERY) || count == warmup || count == total {
                progress_tx.send_replace(count);
            }
        }
        anyhow::Ok(Instant::now())
    });

    let payload = Bytes::from_static(&PAYLOAD);
    let mut sent = 0u64;
    let mut start = Instant::now();
    for (phase, goal) in [(0, warmup), (1, total)] {
        if phase == 1 {
            progress
                .wait_for(|count| *count >= warmup)
                .await
                .map_err(|_| anyhow!("subscriber ended during warm-up"))?;
            start = Instant::now();
        }
        while sent < goal {
            if sent.is_multiple_of(REPORT_EVERY) && sent - *progress.borrow() >= WINDOW {
                progress
                    .wait_for(|count| sent - count < WINDOW / 2)
                    .await
                    .map_err(|_| anyhow!("subscriber ended"))?;
            }
            publisher.publish(subject.clone(), payload.clone()).await?;
            sent += 1;
        }
        publisher.flush().await?;
    }
    let counted = counter.await.context("subscriber panicked")??;
    Ok(n as f64 / (counted - start).as_secs_f64())
}

/// Sequential request/reply round trips of 64 bytes: a responder on one connection publishes
/// each request's payload back to its reply subject; the requester on another connection uses
/// `Client::request` (a reply inbox on the client's shared inbox subscription).
pub(super) async fn request_rounds(url: &str, rounds: u64, warmup: u64) -> Result<Histogram<u64>> {
    let responder = connect(url).await?;
    let requester = connect(url).await?;
    let subject = async_nats::Subject::from_static("bench.echo");
    let mut requests = responder.subscribe(subject.clone()).await?;
    responder.flush().await?;
    let echo = tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                responder.publish(reply, request.payload).await?;
            }
        }
        anyhow::Ok(())
    });

    let payload = Bytes::from_static(&PAYLOAD);
    let mut histogram = histogram()?;
    let result = async {
        // `flush` only empties the client's buffer: the server may not have the responder's
        // subscription yet ("no responders"). Wait until a request gets through.
        let ready_by = Instant::now() + Duration::from_secs(10);
        while let Err(error) = requester.request(subject.clone(), payload.clone()).await {
            ensure!(
                Instant::now() < ready_by,
                "NATS responder never became ready: {error}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for round in 0..warmup + rounds {
            let start = Instant::now();
            let reply = requester.request(subject.clone(), payload.clone()).await?;
            let elapsed = start.elapsed();
            ensure!(reply.payload.len() == MESSAGE_LEN, "bad reply length");
            if round >= warmup {
                record_ns(&mut histogram, elapsed)?;
            }
        }
        anyhow::Ok(())
    }
    .await;
    echo.abort();
    result?;
    Ok(histogram)
}
