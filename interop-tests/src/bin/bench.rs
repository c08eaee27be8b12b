//! The ferry benchmark suite.
//!
//! Every figure is measured for ferry and, in the same process and the same run, for a
//! baseline of raw quinn doing the same job on one stream, so that noise of the machine
//! affects both alike. Each measurement is repeated (5 runs, 3 with `--quick`), ferry and
//! baseline alternating which goes first; the table reports the medians over the runs and the
//! ratio ferry / baseline. Nothing passes or fails on speed.
//!
//! ```text
//! cargo run --release -p ferry-interop --bin bench -- [--quick] [--json PATH]
//! ```
//!
//! Everything runs on loopback (127.0.0.1), on tokio's multi-thread runtime.
//!
//! Adding a figure: write an `async fn` that measures it for ferry and for the baseline in
//! [`Settings::runs`] runs and returns one or more [`Row`]s, then list it in [`FIGURES`].

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use clap::Parser;
use ferry::{Mailbox, Node, NodeConfig, SecretKey};
use hdrhistogram::Histogram;
use tokio::sync::oneshot;

/// Size of the messages of every figure so far.
const MESSAGE_LEN: usize = 64;
static PAYLOAD: [u8; MESSAGE_LEN] = [0u8; MESSAGE_LEN];
/// No single measurement may take longer than this.
const MEASUREMENT_TIMEOUT: Duration = Duration::from_secs(120);
/// Messages the raw quinn client writes per `write_all` (about 64 KiB, like ferry's batches).
const BASELINE_BATCH: usize = 1000;
/// ALPN of the raw quinn baseline.
const BASELINE_ALPN: &[u8] = b"ferry-bench-baseline";

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "ferry benchmarks, each beside a raw quinn baseline measured in the same run")]
struct Cli {
    /// Fewer runs and smaller measurements (well under a minute in total).
    #[arg(long)]
    quick: bool,
    /// Also write the rows as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Runs per measurement (default 5, 3 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// Only the figures whose id contains this text (ids: throughput, rtt).
    #[arg(long, value_name = "TEXT")]
    only: Option<String>,
    /// Skip the baseline measurements; only for profiling ferry (the baseline column shows
    /// "-" then, so do not publish such output).
    #[arg(long)]
    ferry_only: bool,
    /// Worker threads of the tokio runtime (default: one per CPU); for diagnosis.
    #[arg(long, value_name = "N")]
    worker_threads: Option<usize>,
}

/// How big each measurement is.
#[derive(Debug, Clone)]
struct Settings {
    runs: usize,
    ferry_only: bool,
    /// Acked messages per throughput run (after the warm-up).
    throughput_messages: u64,
    throughput_warmup: u64,
    /// Measured round trips per latency run (after the warm-up).
    rtt_rounds: u64,
    rtt_warmup: u64,
}

impl Settings {
    fn new(cli: &Cli) -> Self {
        let mut settings = if cli.quick {
            Self {
                runs: 3,
                ferry_only: false,
                throughput_messages: 1_000_000,
                throughput_warmup: 20_000,
                rtt_rounds: 5_000,
                rtt_warmup: 200,
            }
        } else {
            Self {
                runs: 5,
                ferry_only: false,
                throughput_messages: 4_000_000,
                throughput_warmup: 50_000,
                rtt_rounds: 20_000,
                rtt_warmup: 500,
            }
        };
        if let Some(runs) = cli.runs {
            settings.runs = runs.max(1);
        }
        settings.ferry_only = cli.ferry_only;
        settings
    }
}

/// Whether a larger or a smaller value of a figure is better.
#[derive(Debug, Clone, Copy)]
enum Better {
    Higher,
    Lower,
}

/// One line of the result table: a figure measured in several runs for ferry and baseline.
#[derive(Debug, Clone)]
struct Row {
    figure: String,
    unit: &'static str,
    better: Better,
    /// One value per run.
    ferry: Vec<f64>,
    /// One value per run (empty with `--ferry-only`).
    baseline: Vec<f64>,
}

impl Row {
    fn new(figure: impl Into<String>, unit: &'static str, better: Better) -> Self {
        Self {
            figure: figure.into(),
            unit,
            better,
            ferry: Vec::new(),
            baseline: Vec::new(),
        }
    }

    fn ferry_median(&self) -> Option<f64> {
        median(&self.ferry)
    }

    fn baseline_median(&self) -> Option<f64> {
        median(&self.baseline)
    }

    /// ferry / baseline, of the medians.
    fn ratio(&self) -> Option<f64> {
        Some(self.ferry_median()? / self.baseline_median()?)
    }
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        len if len % 2 == 1 => sorted.get(mid).copied(),
        _ => Some((sorted.get(mid - 1)? + sorted.get(mid)?) / 2.0),
    }
}

type FigureFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<Row>>> + Send + 'a>>;

/// A figure: its id (for `--only`) and the function measuring it.
struct Figure {
    id: &'static str,
    measure: fn(Settings) -> FigureFuture<'static>,
}

/// Every figure, in the order of the table.
const FIGURES: &[Figure] = &[
    Figure {
        id: "throughput",
        measure: |settings| Box::pin(figure_throughput(settings)),
    },
    Figure {
        id: "rtt",
        measure: |settings| Box::pin(figure_round_trip(settings)),
    },
];

fn main() -> Result<()> {
    let cli = Cli::parse();
    let settings = Settings::new(&cli);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = cli.worker_threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let started = Instant::now();
    let rows = runtime.block_on(async {
        let mut rows = Vec::new();
        for figure in FIGURES {
            if cli
                .only
                .as_deref()
                .is_some_and(|only| !figure.id.contains(only))
            {
                continue;
            }
            // Measure on a worker thread, like application code would run.
            let measured = tokio::spawn((figure.measure)(settings.clone()))
                .await
                .with_context(|| format!("figure {} panicked", figure.id))?
                .with_context(|| format!("figure {}", figure.id))?;
            rows.extend(measured);
        }
        anyhow::Ok(rows)
    })?;
    let elapsed = started.elapsed();
    print!("{}", table(&rows, &settings));
    println!("total time: {:.1} s", elapsed.as_secs_f64());
    if let Some(path) = &cli.json {
        std::fs::write(path, json(&rows, &settings, cli.quick))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Figure 1: acked 64-byte messages per second, node to remote mailbox.

async fn figure_throughput(settings: Settings) -> Result<Vec<Row>> {
    let mut row = Row::new(
        "acked 64 B msgs/s, node -> remote mailbox",
        "msg/s",
        Better::Higher,
    );
    let (n, warmup) = (settings.throughput_messages, settings.throughput_warmup);
    for run in 0..settings.runs {
        let ferry_first = run % 2 == 0;
        if ferry_first {
            row.ferry.push(measure(ferry_throughput(n, warmup)).await?);
        }
        if !settings.ferry_only {
            row.baseline
                .push(measure(quinn_throughput(n, warmup)).await?);
        }
        if !ferry_first {
            row.ferry.push(measure(ferry_throughput(n, warmup)).await?);
        }
    }
    Ok(vec![row])
}

/// Messages per second from the first enqueue until the last delivery resolved and the
/// receiving mailbox counted every message.
async fn ferry_throughput(n: u64, warmup: u64) -> Result<f64> {
    let (a, b) = ferry_pair().await?;
    let mailbox = b.mailbox();
    let address = mailbox.address().clone();
    let (warm_tx, warm_rx) = oneshot::channel();
    let receiver = tokio::spawn(count_messages(mailbox, warmup, warm_tx, warmup + n));
    let sender = a.sender(&address);
    let payload = Bytes::from_static(&PAYLOAD);

    send_pipelined(&sender, &payload, warmup).await?;
    warm_rx.await.context("receiver ended during warm-up")?;

    let start = Instant::now();
    send_pipelined(&sender, &payload, n).await?;
    let acked = Instant::now();
    let counted = receiver.await.context("receiver panicked")??;
    let elapsed = acked.max(counted) - start;

    shutdown(&[a, b]).await;
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Enqueues `count` messages back to back and waits for the last one's delivery, which
/// (acknowledgements being cumulative) covers the others.
async fn send_pipelined(sender: &ferry::Sender, payload: &Bytes, count: u64) -> Result<()> {
    let mut last = None;
    for _ in 0..count {
        last = Some(sender.enqueue_bytes(payload.clone()).await?);
    }
    if let Some(last) = last {
        last.await.context("delivery of the last message")?;
    }
    Ok(())
}

/// Drains `mailbox` until it received `total` messages; signals `warm` once `warmup` arrived.
async fn count_messages(
    mailbox: Mailbox,
    warmup: u64,
    warm: oneshot::Sender<()>,
    total: u64,
) -> Result<Instant> {
    let mut warm = Some(warm);
    let mut count = 0u64;
    while count < total {
        let first = mailbox.recv().await?;
        let mut bytes = first.payload().len();
        count += 1;
        for message in mailbox.try_recv_many(1024)? {
            bytes += message.payload().len();
            count += 1;
        }
        ensure!(bytes % MESSAGE_LEN == 0, "a message has the wrong length");
        if count >= warmup {
            if let Some(warm) = warm.take() {
                let _ = warm.send(());
            }
        }
    }
    ensure!(
        count == total,
        "received {count} messages, expected {total}"
    );
    Ok(Instant::now())
}

/// The same with raw quinn: one bidirectional stream, the client writes length-prefixed
/// messages in batches, the server parses them and answers the cumulative count (u64) after
/// each read; done when the count reaches the total.
async fn quinn_throughput(n: u64, warmup: u64) -> Result<f64> {
    let pair = QuinnPair::connect().await?;
    let server_conn = pair.server_conn.clone();
    let server = tokio::spawn(async move {
        let (mut send, mut recv) = server_conn.accept_bi().await?;
        let mut buf = BytesMut::with_capacity(128 * 1024);
        let mut count = 0u64;
        while let Some(chunk) = recv.read_chunk(64 * 1024, true).await? {
            buf.extend_from_slice(&chunk.bytes);
            while buf.len() >= 2 {
                let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
                if buf.len() < 2 + len {
                    break;
                }
                buf.advance(2);
                let message = buf.split_to(len);
                ensure!(message.len() == MESSAGE_LEN, "bad message length");
                count += 1;
            }
            send.write_all(&count.to_be_bytes()).await?;
        }
        anyhow::Ok(count)
    });

    let (mut send, mut recv) = pair.client_conn.open_bi().await?;
    let mut batch = Vec::with_capacity(BASELINE_BATCH * (2 + MESSAGE_LEN));
    let mut acked = 0u64;
    let mut ack_buf = Vec::with_capacity(64);
    let mut sent = 0u64;
    let mut start = Instant::now();
    for (phase, goal) in [(0, warmup), (1, warmup + n)] {
        if phase == 1 {
            start = Instant::now();
        }
        let writer = async {
            while sent < goal {
                let k = (goal - sent).min(BASELINE_BATCH as u64);
                batch.clear();
                for _ in 0..k {
                    batch.extend_from_slice(&(MESSAGE_LEN as u16).to_be_bytes());
                    batch.extend_from_slice(&PAYLOAD);
                }
                send.write_all(&batch).await?;
                sent += k;
            }
            anyhow::Ok(())
        };
        let reader = async {
            while acked < goal {
                let chunk = recv
                    .read_chunk(4096, true)
                    .await?
                    .ok_or_else(|| anyhow!("server finished early"))?;
                ack_buf.extend_from_slice(&chunk.bytes);
                let whole = ack_buf.len() / 8 * 8;
                if whole > 0 {
                    let last = &ack_buf[whole - 8..whole];
                    acked = u64::from_be_bytes(last.try_into()?);
                    ack_buf.drain(..whole);
                }
            }
            anyhow::Ok(())
        };
        tokio::try_join!(writer, reader)?;
    }
    let elapsed = start.elapsed();
    send.finish()?;
    let count = server.await.context("server panicked")??;
    ensure!(count == warmup + n, "server counted {count}");
    pair.close().await;
    Ok(n as f64 / elapsed.as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// Figure 2: round trip of a 64-byte message, p50 and p99.

async fn figure_round_trip(settings: Settings) -> Result<Vec<Row>> {
    let mut p50 = Row::new("round trip 64 B, p50", "us", Better::Lower);
    let mut p99 = Row::new("round trip 64 B, p99", "us", Better::Lower);
    let (rounds, warmup) = (settings.rtt_rounds, settings.rtt_warmup);
    let mut record = |ferry: bool, histogram: Histogram<u64>| {
        let (p50_us, p99_us) = (
            histogram.value_at_quantile(0.50) as f64 / 1000.0,
            histogram.value_at_quantile(0.99) as f64 / 1000.0,
        );
        if ferry {
            p50.ferry.push(p50_us);
            p99.ferry.push(p99_us);
        } else {
            p50.baseline.push(p50_us);
            p99.baseline.push(p99_us);
        }
    };
    for run in 0..settings.runs {
        let ferry_first = run % 2 == 0;
        if ferry_first {
            record(true, measure(ferry_round_trips(rounds, warmup)).await?);
        }
        if !settings.ferry_only {
            record(false, measure(quinn_round_trips(rounds, warmup)).await?);
        }
        if !ferry_first {
            record(true, measure(ferry_round_trips(rounds, warmup)).await?);
        }
    }
    Ok(vec![p50, p99])
}

fn histogram() -> Result<Histogram<u64>> {
    // Nanoseconds, 1 ns .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| anyhow!("histogram: {e:?}"))
}

fn record_ns(histogram: &mut Histogram<u64>, elapsed: Duration) -> Result<()> {
    let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX).max(1);
    histogram
        .record(ns)
        .map_err(|e| anyhow!("recording {ns} ns: {e:?}"))
}

/// Node A sends 64 bytes to a mailbox on node B, whose task replies to `message.from()`;
/// one round ends when the reply is in A's inbox.
async fn ferry_round_trips(rounds: u64, warmup: u64) -> Result<Histogram<u64>> {
    let (a, b) = ferry_pair().await?;
    let mailbox = b.mailbox();
    let address = mailbox.address().clone();
    let total = warmup + rounds;
    let replier = b.clone();
    let echo = tokio::spawn(async move {
        let payload = Bytes::from_static(&PAYLOAD);
        let mut reply: Option<ferry::Sender> = None;
        let mut previous: Option<ferry::Delivery> = None;
        for _ in 0..total {
            let message = mailbox.recv().await?;
            ensure!(message.payload().len() == MESSAGE_LEN, "bad request length");
            let sender = match &reply {
                Some(sender) if sender.target() == message.from() => sender,
                _ => reply.insert(replier.sender(message.from())),
            };
            let delivery = sender.enqueue_bytes(payload.clone()).await?;
            // The previous reply was acknowledged long ago (the requester received it before
            // sending this request); checking it after sending this reply costs no latency.
            if let Some(previous) = previous.replace(delivery) {
                previous.await.context("delivery of a reply")?;
            }
        }
        if let Some(previous) = previous {
            previous.await.context("delivery of the last reply")?;
        }
        anyhow::Ok(())
    });

    let sender = a.sender(&address);
    let payload = Bytes::from_static(&PAYLOAD);
    let mut histogram = histogram()?;
    for round in 0..total {
        let start = Instant::now();
        let delivery = sender.enqueue_bytes(payload.clone()).await?;
        let reply = a.inbox().recv().await?;
        let elapsed = start.elapsed();
        ensure!(reply.payload().len() == MESSAGE_LEN, "bad reply length");
        delivery.await.context("delivery of a request")?;
        if round >= warmup {
            record_ns(&mut histogram, elapsed)?;
        }
    }
    echo.await.context("echo task panicked")??;
    shutdown(&[a, b]).await;
    Ok(histogram)
}

/// Raw quinn echo on an already open bidirectional stream: write 64 bytes, the server echoes
/// them, read 64 bytes.
async fn quinn_round_trips(rounds: u64, warmup: u64) -> Result<Histogram<u64>> {
    let pair = QuinnPair::connect().await?;
    let server_conn = pair.server_conn.clone();
    let server = tokio::spawn(async move {
        let (mut send, mut recv) = server_conn.accept_bi().await?;
        let mut buf = [0u8; MESSAGE_LEN];
        loop {
            match recv.read_exact(&mut buf).await {
                Ok(()) => send.write_all(&buf).await?,
                Err(quinn::ReadExactError::FinishedEarly(0)) => break,
                Err(error) => return Err(error.into()),
            }
        }
        anyhow::Ok(())
    });

    let (mut send, mut recv) = pair.client_conn.open_bi().await?;
    let mut histogram = histogram()?;
    let mut buf = [0u8; MESSAGE_LEN];
    for round in 0..warmup + rounds {
        let start = Instant::now();
        send.write_all(&PAYLOAD).await?;
        recv.read_exact(&mut buf).await?;
        let elapsed = start.elapsed();
        if round >= warmup {
            record_ns(&mut histogram, elapsed)?;
        }
    }
    send.finish()?;
    server.await.context("echo server panicked")??;
    pair.close().await;
    Ok(histogram)
}

// ---------------------------------------------------------------------------------------------
// Shared set-up.

/// Runs one measurement with a time limit.
async fn measure<T>(measurement: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(MEASUREMENT_TIMEOUT, measurement)
        .await
        .map_err(|_| anyhow!("measurement took more than {MEASUREMENT_TIMEOUT:?}"))?
}

/// Two ferry nodes with default configuration on loopback.
async fn ferry_pair() -> Result<(Node, Node)> {
    let a = Node::bind(SecretKey::generate(), NodeConfig::default()).await?;
    let b = Node::bind(SecretKey::generate(), NodeConfig::default()).await?;
    Ok((a, b))
}

async fn shutdown(nodes: &[Node]) {
    for node in nodes {
        node.shutdown(Duration::from_secs(1)).await;
    }
}

/// A raw quinn client and server connected over loopback, with the same TLS provider (rustls
/// with ring, TLS 1.3 only) and the same flow-control windows as a ferry node.
struct QuinnPair {
    client: quinn::Endpoint,
    server: quinn::Endpoint,
    client_conn: quinn::Connection,
    server_conn: quinn::Connection,
}

impl QuinnPair {
    async fn connect() -> Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let cert =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()])?.self_signed(&key_pair)?;
        let cert_der = cert.der().clone();
        let key_der = rustls::pki_types::PrivatePkcs8KeyDer::from(key_pair.serialize_der());

        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(vec![cert_der.clone()], key_der.into())?;
        server_tls.alpn_protocols = vec![BASELINE_ALPN.to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert_der)?;
        let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client_tls.alpn_protocols = vec![BASELINE_ALPN.to_vec()];

        let transport = Arc::new(transport_config());
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)?,
        ));
        server_config.transport_config(transport.clone());
        let mut client_config = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)?,
        ));
        client_config.transport_config(transport);

        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let server = quinn::Endpoint::server(server_config, loopback)?;
        let mut client = quinn::Endpoint::client(loopback)?;
        client.set_default_client_config(client_config);
        let server_addr = server.local_addr()?;

        let accept = async {
            let incoming = server
                .accept()
                .await
                .ok_or_else(|| anyhow!("server endpoint closed"))?;
            anyhow::Ok(incoming.await?)
        };
        let connect = async { anyhow::Ok(client.connect(server_addr, "localhost")?.await?) };
        let (server_conn, client_conn) = tokio::try_join!(accept, connect)?;
        Ok(Self {
            client,
            server,
            client_conn,
            server_conn,
        })
    }

    async fn close(self) {
        self.client_conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.wait_idle()).await;
        self.server.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.server.wait_idle()).await;
    }
}

/// The windows a ferry node configures (sdk/src/node.rs `transport_config`), so the baseline
/// gets the same room in flight.
fn transport_config() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport
        .stream_receive_window((4u32 << 20).into())
        .receive_window((32u32 << 20).into())
        .send_window(32 << 20);
    transport
}

// ---------------------------------------------------------------------------------------------
// Output.

fn format_value(value: Option<f64>, unit: &str) -> String {
    let Some(value) = value else {
        return "-".to_owned();
    };
    if unit == "msg/s" {
        thousands(value.round() as u64)
    } else {
        format!("{value:.1}")
    }
}

fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The result table: medians over the runs, then every run's value.
fn table(rows: &[Row], settings: &Settings) -> String {
    let header = ["figure", "unit", "ferry", "baseline", "ratio"];
    let mut cells: Vec<[String; 5]> = vec![header.map(str::to_owned)];
    for row in rows {
        let ratio = row.ratio().map_or_else(
            || "-".to_owned(),
            |ratio| {
                let hint = match row.better {
                    Better::Higher => "higher is better",
                    Better::Lower => "lower is better",
                };
                format!("{ratio:.2}x ({hint})")
            },
        );
        cells.push([
            row.figure.clone(),
            row.unit.to_owned(),
            format_value(row.ferry_median(), row.unit),
            format_value(row.baseline_median(), row.unit),
            ratio,
        ]);
    }
    let mut widths = [0usize; 5];
    for line in &cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "medians of {} runs; baseline = raw quinn on one stream, same process and run; \
         ratio = ferry / baseline",
        settings.runs
    );
    for (index, line) in cells.iter().enumerate() {
        let mut text = String::new();
        for (column, (cell, width)) in line.iter().zip(widths).enumerate() {
            if column > 0 {
                text.push_str(" | ");
            }
            // Text columns left-aligned, numbers right-aligned.
            if column < 2 || column == 4 {
                let _ = write!(text, "{cell:<width$}");
            } else {
                let _ = write!(text, "{cell:>width$}");
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
        if index == 0 {
            let total = widths.iter().sum::<usize>() + 3 * (widths.len() - 1);
            let _ = writeln!(out, "{}", "-".repeat(total));
        }
    }
    let _ = writeln!(out, "\nevery run (ferry / baseline):");
    for row in rows {
        let list = |values: &[f64]| {
            values
                .iter()
                .map(|value| format_value(Some(*value), row.unit))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "  {}: ferry [{}] / baseline [{}] {}",
            row.figure,
            list(&row.ferry),
            list(&row.baseline),
            row.unit
        );
    }
    let _ = writeln!(
        out,
        "\nsizes: throughput {} msgs per run (+{} warm-up); round trip {} rounds per run (+{} warm-up)",
        settings.throughput_messages,
        settings.throughput_warmup,
        settings.rtt_rounds,
        settings.rtt_warmup
    );
    out
}

fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_number(value: Option<f64>) -> String {
    match value {
        Some(value) if value.is_finite() => format!("{value}"),
        _ => "null".to_owned(),
    }
}

fn json_list(values: &[f64]) -> String {
    let items: Vec<String> = values.iter().map(|v| json_number(Some(*v))).collect();
    format!("[{}]", items.join(", "))
}

/// The rows as a JSON document.
fn json(rows: &[Row], settings: &Settings, quick: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{{\n  \"quick\": {quick},\n  \"runs\": {},\n  \"rows\": [",
        settings.runs
    );
    for (index, row) in rows.iter().enumerate() {
        let better = match row.better {
            Better::Higher => "higher",
            Better::Lower => "lower",
        };
        let _ = write!(
            out,
            "    {{\"figure\": {}, \"unit\": {}, \"better\": {}, \"ferry\": {}, \"baseline\": {}, \
             \"ratio\": {}, \"ferry_runs\": {}, \"baseline_runs\": {}}}",
            json_string(&row.figure),
            json_string(row.unit),
            json_string(better),
            json_number(row.ferry_median()),
            json_number(row.baseline_median()),
            json_number(row.ratio()),
            json_list(&row.ferry),
            json_list(&row.baseline),
        );
        out.push_str(if index + 1 < rows.len() { ",\n" } else { "\n" });
    }
    out.push_str("  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
