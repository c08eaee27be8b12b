//! The ferry benchmark suite.
//!
//! Every figure is measured for ferry and, in the same process and the same run, for a
//! baseline doing the same job: raw quinn (on one stream, a stream per request, a fresh
//! connection, bare connections; the table's "baseline is" column says which) or NATS (a
//! loopback `nats-server` the bench starts when it is installed), so that noise of the machine
//! affects both alike. Each measurement is repeated (5 runs, 3 with `--quick`), ferry and
//! baseline alternating which goes first (the HOL figure, bound by its link's delay rather
//! than the CPU, measures both at the same time); the table reports the medians over the runs
//! and the ratio ferry / baseline. Nothing passes or fails on speed.
//!
//! ```text
//! cargo run --release -p ferry-interop --bin bench -- [--quick] [--json PATH]
//! ```
//!
//! Everything runs on loopback (127.0.0.1), on tokio's multi-thread runtime. The head-of-line
//! figure (`hol`) sends both ferry and its baseline through a [`LossyLink`] each (2 % loss,
//! 10 ms one-way delay), identically configured and seeded.
//!
//! The memory figure runs the node it measures in a child process (this binary with the hidden
//! `--memory-hub` option) and counts its heap with a counting global allocator ([`ALLOCATOR`]).
//! The gateway figure (`gateway`) does the same with two children: the WebSocket server
//! (ferry's gateway, or a plain axum WebSocket server as its baseline) and the WebSocket
//! clients standing in for browsers; this process raises its soft limit of open files to the
//! hard limit first (the children inherit it).
//!
//! The cluster figure (`cluster`, [`cluster`]) runs real `ferry run --cluster` gateways (the
//! release `ferry` binary next to this one) on a `nats-server -js` it starts, against one
//! gateway alone, with the gateway figure's clients in processes of their own.
//!
//! The hostile-peer figure (`hostile`) runs the hostile peer of `ferry-testkit` as a child
//! process (this binary with the hidden `--hostile-peer` option, at a lower priority) and
//! compares an honest peer's throughput to the attacked node with its throughput while the
//! attacker is paused ([`hostile`]).
//!
//! Adding a figure: write an `async fn` that measures it for ferry and for the baseline in
//! [`Settings::runs`] runs and returns one or more [`Row`]s, then list it in [`FIGURES`]. The
//! newer figures live in modules under `interop-tests/src/bench/`.

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use clap::Parser;
use ferry::{Conversation, Mailbox, Node, NodeConfig, SecretKey, ServiceOptions, Target};
use ferry_testkit::lossy::{LinkConfig, LossyLink};
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, oneshot, watch};

#[path = "../bench/browser.rs"]
pub(crate) mod browser;
#[path = "../bench/call.rs"]
pub(crate) mod call;
#[path = "../bench/caps.rs"]
pub(crate) mod caps;
#[path = "../bench/child.rs"]
pub(crate) mod child;
#[path = "../bench/cluster.rs"]
pub(crate) mod cluster;
#[path = "../bench/dial.rs"]
pub(crate) mod dial;
#[path = "../bench/gateway.rs"]
pub(crate) mod gateway;
#[path = "../bench/hostile.rs"]
pub(crate) mod hostile;
#[path = "../bench/instructions.rs"]
pub(crate) mod instructions;
#[path = "../bench/memory.rs"]
pub(crate) mod memory;
#[path = "../bench/nats.rs"]
pub(crate) mod nats;
#[path = "../bench/peers.rs"]
pub(crate) mod peers;
#[path = "../bench/streams.rs"]
pub(crate) mod streams;
#[path = "../bench/wt_clients.rs"]
pub(crate) mod wt_clients;

/// Counts live heap bytes, for the memory figure: one atomic add or subtract per allocation,
/// free and reallocation, with no limit. The hot paths of the other figures allocate rarely
/// (ferry's throughput run: about one allocation per 17 messages), so this does not show in
/// them.
#[global_allocator]
pub(crate) static ALLOCATOR: cap::Cap<std::alloc::System> =
    cap::Cap::new(std::alloc::System, usize::MAX);

/// Counted round trips and calls per `--instructions` workload run: one extra QUIC handshake
/// in a run (see [`instructions::MESSAGE_FACTOR`]) then moves a round trip's count by under 1 %.
pub(crate) const INSTRUCTIONS_COUNT: u64 = 10_000;
/// Size of the small messages: throughput, round trip, and conversation B of the HOL figure.
pub(crate) const MESSAGE_LEN: usize = 64;
pub(crate) static PAYLOAD: [u8; MESSAGE_LEN] = [0u8; MESSAGE_LEN];
/// No single measurement may take longer than this.
const MEASUREMENT_TIMEOUT: Duration = Duration::from_secs(120);
/// ALPN of the raw quinn baseline.
const BASELINE_ALPN: &[u8] = b"ferry-bench-baseline";

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "ferry benchmarks, each beside a raw quinn baseline measured in the same run")]
pub(crate) struct Cli {
    /// Fewer runs and smaller measurements (well under a minute in total).
    #[arg(long)]
    pub(crate) quick: bool,
    /// Also write the rows as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub(crate) json: Option<PathBuf>,
    /// Runs per measurement (default 5, 3 with --quick).
    #[arg(long)]
    pub(crate) runs: Option<usize>,
    /// Only the figures whose id contains this text (ids: throughput, rtt, call, dial, bulk,
    /// hol, hostile, memory, peers, gateway, cluster, caps, browser).
    #[arg(long, value_name = "TEXT")]
    pub(crate) only: Option<String>,
    /// Skip the baseline measurements; only for profiling ferry (the baseline column shows
    /// "-" then, so do not publish such output).
    #[arg(long)]
    pub(crate) ferry_only: bool,
    /// Worker threads of the tokio runtime (default: one per CPU); for diagnosis.
    #[arg(long, value_name = "N")]
    pub(crate) worker_threads: Option<usize>,
    /// Internal: run as the measured node of the memory figure ("ferry" or "quinn"), driven
    /// through stdin and stdout by the parent bench process.
    #[arg(long, value_name = "KIND", hide = true)]
    pub(crate) memory_hub: Option<String>,
    /// WebSocket sessions of the gateway figure (default 10,000; 1,000 with --quick). Each is
    /// an open file in the server and in the clients process: at most the hard limit of open
    /// files (`ulimit -Hn`) minus a few hundred.
    #[arg(long, value_name = "N")]
    pub(crate) gateway_sessions: Option<usize>,
    /// Fan-out rounds per run of the gateway figure (default 20; 5 with --quick).
    #[arg(long, value_name = "N")]
    pub(crate) gateway_rounds: Option<u64>,
    /// Messages to 100 sessions per run of the gateway figure's messages/s (default 20,000;
    /// 5,000 with --quick).
    #[arg(long, value_name = "N")]
    pub(crate) gateway_messages: Option<usize>,
    /// WebSocket sessions of the cluster figure (`cluster`) over its three gateways (default
    /// 50,000; 3,000 with --quick), in client processes of at most 18,000 each.
    #[arg(long, value_name = "N")]
    pub(crate) cluster_sessions: Option<usize>,
    /// WebSocket sessions of the cluster figure's one gateway alone (default 18,000, what
    /// fits one process's 20,000 open files; 1,000 with --quick).
    #[arg(long, value_name = "N")]
    pub(crate) cluster_node_sessions: Option<usize>,
    /// Internal: run as the hostile peer of the hostile figure (node id, node socket address,
    /// mailbox address), driven through stdin and stdout by the parent bench process.
    #[arg(long, value_names = ["NODE", "ADDR", "MAILBOX"], num_args = 3, hide = true)]
    pub(crate) hostile_peer: Option<Vec<String>>,
    /// Peers connected to the measured node in the many-peers figure (`peers`; default 10,000,
    /// 1,000 with --quick). They live in client processes of 2,500 nodes each (one open file
    /// per node).
    #[arg(long, value_name = "N")]
    pub(crate) peers: Option<usize>,
    /// Internal: run as the many-peers figure's hub, for N peers.
    #[arg(long, value_name = "N", hide = true)]
    pub(crate) peers_hub: Option<usize>,
    /// Internal: run as one of the many-peers figure's client processes (hub address, count).
    #[arg(long, value_names = ["ADDRESS", "N"], num_args = 2, hide = true)]
    pub(crate) peers_clients: Option<Vec<String>>,
    /// Bytes of the browser figure's download (default 20 MiB; 1 MiB with --quick).
    #[arg(long, value_name = "BYTES")]
    pub(crate) browser_download: Option<usize>,
    /// Internal: run as the browser figure's gateway side on this IP address.
    #[arg(long, value_name = "IP", hide = true)]
    pub(crate) browser_far: Option<String>,
    /// Internal: run as the gateway figure's server ("ferry" or "plain").
    #[arg(long, value_name = "KIND", hide = true)]
    pub(crate) gateway_server: Option<String>,
    /// Internal: run as the gateway figure's WebSocket clients (URL, count).
    #[arg(long, value_names = ["URL", "N"], num_args = 2, hide = true)]
    pub(crate) gateway_clients: Option<Vec<String>>,
    /// Internal: the gateway figure's clients connect over WebTransport.
    #[arg(long, hide = true)]
    pub(crate) webtransport_clients: bool,
    /// Instead of the timed figures, count the instructions per acknowledged message, round
    /// trip and call of ferry and raw quinn under valgrind (cachegrind), which must be
    /// installed.
    #[arg(long)]
    pub(crate) instructions: bool,
    /// Counted round trips and calls per workload run of --instructions, and 1/20 of the
    /// counted messages (default 10,000 in `bench`, 2,000 in `bench-peers`; 500 with --quick).
    #[arg(long, value_name = "N")]
    pub(crate) instructions_count: Option<u64>,
    /// Internal: run one workload of --instructions (stack, job, count).
    #[arg(long, value_names = ["STACK", "JOB", "COUNT"], num_args = 3, hide = true)]
    pub(crate) instructions_workload: Option<Vec<String>>,
}

/// How big each measurement is.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) runs: usize,
    pub(crate) ferry_only: bool,
    /// Acked messages per throughput run (after the warm-up).
    pub(crate) throughput_messages: u64,
    pub(crate) throughput_warmup: u64,
    /// Measured round trips per latency run (after the warm-up).
    pub(crate) rtt_rounds: u64,
    pub(crate) rtt_warmup: u64,
    /// Bytes of the bulk transfer per run (after a warm-up transfer of [`BULK_WARMUP`]).
    bulk_bytes: u64,
    /// Measured round trips of conversation B per case (alone, with bulk) of the HOL figure.
    hol_rounds: u64,
    hol_warmup: u64,
    /// Measured calls per run of the call figure (after the warm-up).
    pub(crate) call_rounds: u64,
    pub(crate) call_warmup: u64,
    /// Measured dials per run of the dial figure (after the warm-up).
    pub(crate) dial_rounds: u64,
    pub(crate) dial_warmup: u64,
    /// How long each round (quiet, attacked) of the hostile figure sends.
    hostile_round: Duration,
    /// Peers connected to the measured node, and idle conversations into it, per memory run.
    pub(crate) memory_peers: usize,
    pub(crate) memory_conversations: usize,
    /// Peers connected to the measured node in the many-peers figure, per run.
    pub(crate) many_peers: usize,
    /// WebSocket sessions, fan-out rounds and messages/s messages per gateway run.
    gateway_sessions: usize,
    gateway_rounds: u64,
    gateway_messages: usize,
    /// How long the gateway figure's server settles before its memory is read, ms.
    gateway_settle_ms: u64,
    /// Checks timed per chain length and run of the capability figure.
    pub(crate) caps_checks: u64,
    /// Sessions of the cluster figure on its three gateways, and on one gateway alone.
    pub(crate) cluster_sessions: usize,
    pub(crate) cluster_node_sessions: usize,
    /// Runs (each setting up every session again: 1 unless `--runs`), fan-out rounds per run,
    /// and messages of the user messages/s figure per run.
    pub(crate) cluster_runs: usize,
    pub(crate) cluster_rounds: u64,
    pub(crate) cluster_messages: usize,
    /// Calls and download size of the browser figure.
    pub(crate) browser: browser::Sizes,
}

impl Settings {
    pub(crate) fn new(cli: &Cli) -> Self {
        let mut settings = if cli.quick {
            Self {
                runs: 3,
                ferry_only: false,
                throughput_messages: 1_000_000,
                throughput_warmup: 20_000,
                rtt_rounds: 5_000,
                rtt_warmup: 200,
                bulk_bytes: 200 << 20,
                hol_rounds: 100,
                hol_warmup: 10,
                call_rounds: 2_000,
                call_warmup: 100,
                dial_rounds: 50,
                dial_warmup: 5,
                hostile_round: Duration::from_secs(1),
                memory_peers: 200,
                memory_conversations: 200,
                many_peers: 1_000,
                gateway_sessions: 1_000,
                gateway_rounds: 5,
                gateway_messages: 5_000,
                gateway_settle_ms: 150,
                caps_checks: 2_000,
                cluster_sessions: 3_000,
                cluster_node_sessions: 1_000,
                cluster_runs: 1,
                cluster_rounds: 5,
                cluster_messages: 2_000,
                browser: browser::Sizes::new(true),
            }
        } else {
            Self {
                runs: 5,
                ferry_only: false,
                throughput_messages: 4_000_000,
                throughput_warmup: 50_000,
                rtt_rounds: 20_000,
                rtt_warmup: 500,
                bulk_bytes: 1 << 30,
                hol_rounds: 300,
                hol_warmup: 20,
                call_rounds: 10_000,
                call_warmup: 500,
                dial_rounds: 200,
                dial_warmup: 10,
                hostile_round: Duration::from_secs(2),
                memory_peers: 1000,
                memory_conversations: 1000,
                many_peers: 10_000,
                gateway_sessions: 10_000,
                gateway_rounds: 20,
                gateway_messages: 20_000,
                gateway_settle_ms: 1000,
                caps_checks: 20_000,
                cluster_sessions: 50_000,
                cluster_node_sessions: 18_000,
                cluster_runs: 1,
                cluster_rounds: 20,
                cluster_messages: 20_000,
                browser: browser::Sizes::new(false),
            }
        };
        if let Some(runs) = cli.runs {
            settings.runs = runs.max(1);
            settings.cluster_runs = runs.max(1);
        }
        if let Some(n) = cli.cluster_sessions {
            settings.cluster_sessions = n.max(cluster::NODES);
        }
        if let Some(n) = cli.cluster_node_sessions {
            settings.cluster_node_sessions = n.max(1);
        }
        settings.ferry_only = cli.ferry_only;
        if let Some(n) = cli.peers {
            settings.many_peers = n.max(1);
        }
        if let Some(n) = cli.gateway_sessions {
            settings.gateway_sessions = n.max(1);
        }
        if let Some(n) = cli.gateway_rounds {
            settings.gateway_rounds = n.max(1);
        }
        if let Some(bytes) = cli.browser_download {
            settings.browser.download = bytes.max(1);
        }
        if let Some(n) = cli.gateway_messages {
            settings.gateway_messages = n.max(1);
        }
        settings
    }
}

/// Whether a larger or a smaller value of a figure is better.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Better {
    Higher,
    Lower,
}

/// One line of the result table: a figure measured in several runs for ferry and baseline.
#[derive(Debug, Clone)]
struct Row {
    figure: String,
    unit: &'static str,
    better: Better,
    /// What the baseline is (the table's last column).
    against: &'static str,
    /// One value per run.
    ferry: Vec<f64>,
    /// One value per run (empty with `--ferry-only`, or when the baseline was skipped).
    baseline: Vec<f64>,
    /// Why there is no baseline (shown in the ratio column), e.g. NATS not installed.
    note: Option<String>,
}

impl Row {
    /// A row whose baseline is raw quinn on one stream.
    fn new(figure: impl Into<String>, unit: &'static str, better: Better) -> Self {
        Self {
            figure: figure.into(),
            unit,
            better,
            against: "raw quinn, 1 stream",
            ferry: Vec::new(),
            baseline: Vec::new(),
            note: None,
        }
    }

    /// The same row with another baseline.
    fn against(mut self, against: &'static str) -> Self {
        self.against = against;
        self
    }

    /// Records one run's value, for ferry or for the baseline.
    fn push(&mut self, ferry: bool, value: f64) {
        if ferry {
            self.ferry.push(value);
        } else {
            self.baseline.push(value);
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

pub(crate) fn median(values: &[f64]) -> Option<f64> {
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
    Figure {
        id: "call",
        measure: |settings| Box::pin(call::figure_call(settings)),
    },
    Figure {
        id: "dial",
        measure: |settings| Box::pin(dial::figure_dial(settings)),
    },
    Figure {
        id: "bulk",
        measure: |settings| Box::pin(figure_bulk(settings)),
    },
    Figure {
        id: "hol",
        measure: |settings| Box::pin(figure_head_of_line(settings)),
    },
    Figure {
        id: "hostile",
        measure: |settings| Box::pin(hostile::figure_hostile(settings)),
    },
    Figure {
        id: "memory",
        measure: |settings| Box::pin(memory::figure_memory(settings)),
    },
    Figure {
        id: "peers",
        measure: |settings| Box::pin(peers::figure_peers(settings)),
    },
    Figure {
        id: "gateway",
        measure: |settings| Box::pin(gateway::figure_gateway(settings)),
    },
    Figure {
        id: "cluster",
        measure: |settings| Box::pin(cluster::figure_cluster(settings)),
    },
    Figure {
        id: "caps",
        measure: |settings| Box::pin(caps::figure_caps(settings)),
    },
    Figure {
        id: "browser",
        measure: |settings| Box::pin(browser::figure_browser(settings)),
    },
];

/// The gateway figure's session count for `cli`.
fn settings_sessions(cli: &Cli) -> usize {
    Settings::new(cli).gateway_sessions
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(kind) = &cli.memory_hub {
        return memory::run_hub(kind);
    }
    if let Some(args) = &cli.hostile_peer {
        return ferry_testkit::hostile_peer::main(args);
    }
    if let Some(args) = &cli.instructions_workload {
        return instructions::run_workload(&instructions::WORKLOADS, args);
    }
    if cli.instructions {
        return child::run(print_instructions(
            &cli,
            &instructions::WORKLOADS,
            INSTRUCTIONS_COUNT,
        ));
    }
    // Every WebSocket session of the gateway figure is an open file (children inherit this).
    let open_files = gateway::raise_open_files_limit();
    if let Some(n) = cli.peers_hub {
        return peers::run_hub(n);
    }
    if let Some([address, count]) = cli.peers_clients.as_deref() {
        return peers::run_clients(address, count);
    }
    if let Some(ip) = &cli.browser_far {
        return child::run(browser::far(ip));
    }
    if let Some(kind) = &cli.gateway_server {
        return child::run(gateway::server(kind));
    }
    if let Some([url, n]) = cli.gateway_clients.as_deref() {
        let n = n.parse().context("--gateway-clients N")?;
        return child::run(gateway::clients(url, n, cli.webtransport_clients));
    }
    if let Some(hard) = open_files {
        let wanted = settings_sessions(&cli) as u64 + 500;
        if hard < wanted
            && cli
                .only
                .as_deref()
                .is_none_or(|only| "gateway".contains(only))
        {
            eprintln!(
                "warning: {} gateway sessions need about {wanted} open files per process; the limit is {hard}",
                settings_sessions(&cli)
            );
        }
    }
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
    let (rows, times) = runtime.block_on(async {
        let mut rows = Vec::new();
        let mut times = Vec::new();
        for figure in FIGURES {
            if cli
                .only
                .as_deref()
                .is_some_and(|only| !figure.id.contains(only))
            {
                continue;
            }
            // Measure on a worker thread, like application code would run.
            let figure_started = Instant::now();
            let measured = tokio::spawn((figure.measure)(settings.clone()))
                .await
                .with_context(|| format!("figure {} panicked", figure.id))?
                .with_context(|| format!("figure {}", figure.id))?;
            rows.extend(measured);
            times.push(format!(
                "{} {:.1} s",
                figure.id,
                figure_started.elapsed().as_secs_f64()
            ));
        }
        anyhow::Ok((rows, times))
    })?;
    let elapsed = started.elapsed();
    print!("{}", table(&rows, &settings));
    println!(
        "total time: {:.1} s ({})",
        elapsed.as_secs_f64(),
        times.join(", ")
    );
    if let Some(path) = &cli.json {
        std::fs::write(path, json(&rows, &settings, cli.quick))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

/// The `--instructions` mode: counts `workloads` and prints the table.
pub(crate) async fn print_instructions(
    cli: &Cli,
    workloads: &[instructions::Workload],
    default_count: u64,
) -> Result<()> {
    let count = cli
        .instructions_count
        .unwrap_or(if cli.quick { 500 } else { default_count })
        .max(1);
    let repeats = cli.runs.unwrap_or(if cli.quick { 2 } else { 3 });
    let started = Instant::now();
    match instructions::count(workloads, count, repeats).await? {
        Some(results) => print!("{}", instructions::table(&results, count)),
        None => println!("valgrind is not installed: no instruction counts"),
    }
    println!(
        "total time: {:.1} s ({repeats} repetitions)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Figure 1: acked 64-byte messages per second, node to remote mailbox.

/// Also measures NATS publish -> subscribe of the same messages (without acknowledgements),
/// when `nats-server` is installed, as a second baseline of the same ferry runs.
async fn figure_throughput(settings: Settings) -> Result<Vec<Row>> {
    let figure = "acked 64 B msgs/s, node -> remote mailbox";
    let mut row = Row::new(figure, "msg/s", Better::Higher);
    let mut nats_row = Row::new(figure, "msg/s", Better::Higher).against(nats::PUBSUB);
    let mut batched = Row::new(
        "acked 64 B msgs/s, enqueue_all batches of 1,000",
        "msg/s",
        Better::Higher,
    )
    .against("raw quinn, one stream (1,000 messages per write_all)");
    let server = if settings.ferry_only {
        None
    } else {
        nats::NatsServer::start().await?
    };
    if server.is_none() && !settings.ferry_only {
        nats_row.note = Some(nats::NOT_INSTALLED.to_owned());
    }
    let (n, warmup) = (settings.throughput_messages, settings.throughput_warmup);
    for run in 0..settings.runs {
        // Ferry (per message, then batched), quinn and NATS take turns going first.
        for turn in 0..3 {
            match (run + turn) % 3 {
                0 => {
                    row.ferry
                        .push(measure(ferry_throughput(n, warmup, 1)).await?);
                    batched
                        .ferry
                        .push(measure(ferry_throughput(n, warmup, streams::BATCH)).await?);
                }
                1 if !settings.ferry_only => row
                    .baseline
                    .push(measure(quinn_throughput(n, warmup)).await?),
                2 => {
                    if let Some(server) = &server {
                        nats_row
                            .baseline
                            .push(measure(nats::throughput(server.addr(), n, warmup)).await?);
                    }
                }
                _ => {}
            }
        }
    }
    nats_row.ferry = row.ferry.clone();
    batched.baseline = row.baseline.clone();
    if let Some(server) = server {
        server.stop().await;
    }
    Ok(vec![row, nats_row, batched])
}

/// Messages per second from the first enqueue until the last delivery resolved and the
/// receiving mailbox counted every message; queued one by one (`batch` 1) or `batch` at a
/// time with `enqueue_all`.
pub(crate) async fn ferry_throughput(n: u64, warmup: u64, batch: usize) -> Result<f64> {
    let (a, b) = ferry_pair().await?;
    let mailbox = b.mailbox();
    let address = mailbox.address().clone();
    let (warm_tx, warm_rx) = oneshot::channel();
    let receiver = tokio::spawn(count_messages(mailbox, warmup, warm_tx, warmup + n));
    let sender = a.sender(&address);
    let payload = Bytes::from_static(&PAYLOAD);

    send_pipelined(&sender, &payload, warmup, batch).await?;
    warm_rx.await.context("receiver ended during warm-up")?;

    let start = Instant::now();
    send_pipelined(&sender, &payload, n, batch).await?;
    let acked = Instant::now();
    let counted = receiver.await.context("receiver panicked")??;
    let elapsed = acked.max(counted) - start;

    shutdown(&[a, b]).await;
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Enqueues `count` messages back to back (`batch` at a time with `enqueue_all` when more
/// than 1) and waits for the last delivery, which (acknowledgements being cumulative) covers
/// the others.
async fn send_pipelined(
    sender: &ferry::Sender,
    payload: &Bytes,
    count: u64,
    batch: usize,
) -> Result<()> {
    let mut last = None;
    let mut left = count;
    while left > 0 {
        if batch <= 1 {
            last = Some(sender.enqueue_bytes(payload.clone()).await?);
            left -= 1;
        } else {
            let k = left.min(batch as u64);
            let part = (0..k).map(|_| payload.clone());
            last = Some(sender.enqueue_all(part).await?);
            left -= k;
        }
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
/// each read; done when the count reaches the total ([`streams::send_counted`]).
pub(crate) async fn quinn_throughput(n: u64, warmup: u64) -> Result<f64> {
    let pair = QuinnPair::connect().await?;
    let server = tokio::spawn(streams::serve_counted(pair.server_conn.clone()));
    let rate = streams::send_counted(&pair.client_conn, n, warmup).await?;
    let count = server.await.context("server panicked")??;
    ensure!(count == warmup + n, "server counted {count}");
    pair.close().await;
    Ok(rate)
}

// ---------------------------------------------------------------------------------------------
// Figure 2: round trip of a 64-byte message, p50 and p99.

async fn figure_round_trip(settings: Settings) -> Result<Vec<Row>> {
    let mut p50 = Row::new("round trip 64 B, p50", "us", Better::Lower)
        .against("raw quinn, open stream echo");
    let mut p99 = Row::new("round trip 64 B, p99", "us", Better::Lower)
        .against("raw quinn, open stream echo");
    // The same echo with a ferry node's task hand-offs on both sides: what they cost on a
    // multi-threaded runtime, apart from ferry's work (BENCHMARKS.md, "What a task hand-off
    // costs on two workers").
    let mut handed_off = Row::new("round trip 64 B, p50", "us", Better::Lower)
        .against("raw quinn echo, ferry's hand-offs");
    // ferry's own echo on an open stream (a conversation), against raw quinn's.
    let mut conversation_p50 = Row::new(
        "round trip 64 B on a conversation, p50",
        "us",
        Better::Lower,
    )
    .against("raw quinn, open stream echo");
    let mut conversation_p99 = Row::new(
        "round trip 64 B on a conversation, p99",
        "us",
        Better::Lower,
    )
    .against("raw quinn, open stream echo");
    // Both nodes on one thread (a current-thread runtime, as an embedded or single-core
    // application runs them): no hand-off between workers, only ferry's work and packets.
    let mut one_thread_p50 = Row::new("round trip 64 B on one thread, p50", "us", Better::Lower)
        .against(ONE_THREAD_ECHO);
    let mut one_thread_p99 = Row::new("round trip 64 B on one thread, p99", "us", Better::Lower)
        .against(ONE_THREAD_ECHO);
    let (rounds, warmup) = (settings.rtt_rounds, settings.rtt_warmup);
    let p50_p99 = |histogram: &Histogram<u64>| {
        (
            histogram.value_at_quantile(0.50) as f64 / 1000.0,
            histogram.value_at_quantile(0.99) as f64 / 1000.0,
        )
    };
    for run in 0..settings.runs {
        let ferry_first = run % 2 == 0;
        // ferry's two round trips, measured one after the other.
        let mut ferry = |mailbox: Histogram<u64>, conversation: Histogram<u64>| {
            let (p50_us, p99_us) = p50_p99(&mailbox);
            p50.ferry.push(p50_us);
            p99.ferry.push(p99_us);
            handed_off.ferry.push(p50_us);
            let (p50_us, p99_us) = p50_p99(&conversation);
            conversation_p50.ferry.push(p50_us);
            conversation_p99.ferry.push(p99_us);
        };
        if ferry_first {
            ferry(
                measure(ferry_round_trips(rounds, warmup)).await?,
                measure(ferry_conversation_round_trips(rounds, warmup)).await?,
            );
        }
        if !settings.ferry_only {
            let (p50_us, p99_us) = p50_p99(&measure(quinn_round_trips(rounds, warmup)).await?);
            p50.baseline.push(p50_us);
            p99.baseline.push(p99_us);
            conversation_p50.baseline.push(p50_us);
            conversation_p99.baseline.push(p99_us);
            let histogram = measure(quinn_handed_off_round_trips(rounds, warmup)).await?;
            handed_off.baseline.push(p50_p99(&histogram).0);
        }
        if !ferry_first {
            ferry(
                measure(ferry_round_trips(rounds, warmup)).await?,
                measure(ferry_conversation_round_trips(rounds, warmup)).await?,
            );
        }
        for ferry_turn in [ferry_first, !ferry_first] {
            if ferry_turn {
                let (p50_us, p99_us) =
                    p50_p99(&on_one_thread(move || ferry_round_trips(rounds, warmup)).await?);
                one_thread_p50.ferry.push(p50_us);
                one_thread_p99.ferry.push(p99_us);
            } else if !settings.ferry_only {
                let (p50_us, p99_us) =
                    p50_p99(&on_one_thread(move || quinn_round_trips(rounds, warmup)).await?);
                one_thread_p50.baseline.push(p50_us);
                one_thread_p99.baseline.push(p99_us);
            }
        }
    }
    Ok(vec![
        p50,
        p99,
        handed_off,
        conversation_p50,
        conversation_p99,
        one_thread_p50,
        one_thread_p99,
    ])
}

/// The baseline of the one-thread round trip rows.
const ONE_THREAD_ECHO: &str = "raw quinn, open stream echo, one thread";

/// Runs the measurement `make` returns on a current-thread runtime of its own thread.
async fn on_one_thread<F, T>(make: impl FnOnce() -> F + Send + 'static) -> Result<T>
where
    F: Future<Output = Result<T>>,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(move || instructions::on_current_thread(measure(make())))
        .await
        .map_err(|error| anyhow!("the one-thread measurement panicked: {error}"))?
}

pub(crate) fn histogram() -> Result<Histogram<u64>> {
    // Nanoseconds, 1 ns .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| anyhow!("histogram: {e:?}"))
}

pub(crate) fn record_ns(histogram: &mut Histogram<u64>, elapsed: Duration) -> Result<()> {
    let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX).max(1);
    histogram
        .record(ns)
        .map_err(|e| anyhow!("recording {ns} ns: {e:?}"))
}

/// Node A sends 64 bytes to a mailbox on node B, whose task replies to `message.from()`;
/// one round ends when the reply is in A's inbox.
pub(crate) async fn ferry_round_trips(rounds: u64, warmup: u64) -> Result<Histogram<u64>> {
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

/// ferry's own echo on an open stream: a conversation (`node.open`) with an "echo" service on
/// node B, whose handler sends every object it receives back; one round is `send_obj` of 64
/// bytes (`bytes::Bytes`, serde bytes) and `recv_obj` of the answer. Conversations carry no
/// acknowledgements and the application's task reads and writes the stream itself: the job of
/// raw quinn's echo, with ferry's framing and postcard.
pub(crate) async fn ferry_conversation_round_trips(
    rounds: u64,
    warmup: u64,
) -> Result<Histogram<u64>> {
    let (a, b) = ferry_pair().await?;
    let _echo = b.serve("echo", ServiceOptions::default(), echo_objects)?;
    let target = Target::service(b.id(), "echo").with_hints(vec![b.local_addr()]);
    let mut conversation = a.open(target).await?;
    let histogram = ferry_echo_rounds(&mut conversation, warmup, rounds).await?;
    conversation.finish()?;
    drop(conversation);
    shutdown(&[a, b]).await;
    Ok(histogram)
}

/// An "echo" service's handler: answers every object with itself, until the opener finishes.
async fn echo_objects(mut conversation: Conversation) {
    while let Ok(request) = conversation.recv_obj::<Bytes>().await {
        if conversation.send_obj(&request).await.is_err() {
            return;
        }
    }
    let _ = conversation.finish();
}

/// Raw quinn echo on an already open bidirectional stream: write 64 bytes, the server echoes
/// them, read 64 bytes ([`streams::echo_rounds`]).
pub(crate) async fn quinn_round_trips(rounds: u64, warmup: u64) -> Result<Histogram<u64>> {
    quinn_echo(rounds, warmup, false).await
}

/// [`quinn_round_trips`] with a task between each side's stream and the task that sends and
/// receives the messages ([`streams::echo_rounds_handed_off`]).
pub(crate) async fn quinn_handed_off_round_trips(
    rounds: u64,
    warmup: u64,
) -> Result<Histogram<u64>> {
    quinn_echo(rounds, warmup, true).await
}

async fn quinn_echo(rounds: u64, warmup: u64, handed_off: bool) -> Result<Histogram<u64>> {
    let pair = QuinnPair::connect().await?;
    let connection = pair.server_conn.clone();
    let server = tokio::spawn(async move {
        if handed_off {
            streams::serve_echo_handed_off(connection).await
        } else {
            streams::serve_echo(connection).await
        }
    });
    let histogram = if handed_off {
        streams::echo_rounds_handed_off(&pair.client_conn, rounds, warmup).await?
    } else {
        streams::echo_rounds(&pair.client_conn, rounds, warmup).await?
    };
    server.await.context("echo server panicked")??;
    pair.close().await;
    Ok(histogram)
}

// ---------------------------------------------------------------------------------------------
// Figure 3: bulk throughput of one conversation, direct loopback.

/// Chunk size of every bulk writer: ferry's largest data frame payload (64 KiB).
const BULK_CHUNK: usize = 64 * 1024;
static BULK_DATA: [u8; BULK_CHUNK] = [7u8; BULK_CHUNK];
/// Bytes sent before the measured transfer, on the same connection.
const BULK_WARMUP: u64 = 16 << 20;

async fn figure_bulk(settings: Settings) -> Result<Vec<Row>> {
    let mut row = Row::new(
        "bulk: 1 conversation send_data -> sink",
        "MB/s",
        Better::Higher,
    );
    let n = settings.bulk_bytes;
    for run in 0..settings.runs {
        let ferry_first = run % 2 == 0;
        if ferry_first {
            row.ferry.push(measure(ferry_bulk(n)).await?);
        }
        if !settings.ferry_only {
            row.baseline.push(measure(quinn_bulk(n)).await?);
        }
        if !ferry_first {
            row.ferry.push(measure(ferry_bulk(n)).await?);
        }
    }
    Ok(vec![row])
}

/// `n` bytes as 64 KiB chunks (the last one shorter), without copying.
fn bulk_chunks(n: u64) -> impl futures::Stream<Item = &'static [u8]> + Unpin {
    let full = n / BULK_CHUNK as u64;
    let rest = (n % BULK_CHUNK as u64) as usize;
    let chunks = std::iter::repeat_n(&BULK_DATA[..], full as usize)
        .chain((rest > 0).then(|| &BULK_DATA[..rest]));
    futures::stream::iter(chunks)
}

/// MB/s (10^6 bytes per second) of one conversation's `send_data_stream` of `n` bytes into a
/// service that `recv_data`s into a sink and then answers the byte count. The clock runs from
/// the first chunk until the answer arrived; a warm-up transfer on another conversation opens
/// the connection first.
async fn ferry_bulk(n: u64) -> Result<f64> {
    let (client, server) = ferry_pair().await?;
    let _sink = server.serve(
        "sink",
        ServiceOptions::default(),
        |mut conversation| async move {
            if let Ok(total) = conversation.recv_data(tokio::io::sink()).await {
                let _ = conversation.reply(&total).await;
            }
        },
    )?;
    let target = Target::service(server.id(), "sink").with_hints(vec![server.local_addr()]);
    let transfer = |bytes: u64| {
        let (client, target) = (&client, target.clone());
        async move {
            let mut conversation = client.open(target).await?;
            let start = Instant::now();
            let sent = conversation.send_data_stream(bulk_chunks(bytes)).await?;
            let received: u64 = conversation.recv_obj().await?;
            let elapsed = start.elapsed();
            ensure!(
                sent == bytes && received == bytes,
                "sent {sent}, received {received}"
            );
            conversation.finish()?;
            anyhow::Ok(elapsed)
        }
    };
    transfer(BULK_WARMUP).await?;
    let elapsed = transfer(n).await?;
    shutdown(&[client, server]).await;
    Ok(n as f64 / 1e6 / elapsed.as_secs_f64())
}

/// The same with raw quinn: one bidirectional stream, `write_all` of the same 64 KiB chunks,
/// `finish`; the server reads to the end (`read_chunk`) and answers the byte count (u64). A
/// warm-up transfer on another stream goes first.
async fn quinn_bulk(n: u64) -> Result<f64> {
    let pair = QuinnPair::connect().await?;
    let server_conn = pair.server_conn.clone();
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let (mut send, mut recv) = server_conn.accept_bi().await?;
            let mut total = 0u64;
            while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
                total += chunk.bytes.len() as u64;
            }
            send.write_all(&total.to_be_bytes()).await?;
            send.finish()?;
        }
        anyhow::Ok(())
    });
    let mut elapsed = Duration::ZERO;
    for bytes in [BULK_WARMUP, n] {
        let (mut send, mut recv) = pair.client_conn.open_bi().await?;
        let start = Instant::now();
        let mut chunks = bulk_chunks(bytes);
        while let Some(chunk) = chunks.next().await {
            send.write_all(chunk).await?;
        }
        send.finish()?;
        let mut answer = [0u8; 8];
        recv.read_exact(&mut answer).await?;
        elapsed = start.elapsed();
        let received = u64::from_be_bytes(answer);
        ensure!(received == bytes, "server received {received} of {bytes}");
    }
    server.await.context("server panicked")??;
    pair.close().await;
    Ok(n as f64 / 1e6 / elapsed.as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// Figure 4: head-of-line blocking. Through a lossy link, conversation A streams bulk data while
// conversation B does sequential 64-byte echoes; B's latency alone and with A running.

/// Loss of the HOL figure's link, per packet and direction.
const HOL_LOSS: f64 = 0.02;
/// One-way delay of the HOL figure's link.
const HOL_DELAY: Duration = Duration::from_millis(10);
/// How long bulk A runs before B's rounds with bulk are measured (slow start is over by then).
const HOL_RAMP: Duration = Duration::from_millis(500);
/// Bulk frame of the one-stream baseline.
const HOL_BULK_FRAME: usize = 16 * 1024;
/// Bulk bytes the one-stream baseline keeps written but not yet read by its server, like the
/// send buffer of a TCP socket: Linux (`tcp_sndbuf_expand`) sizes it for 2 × max(10, cwnd)
/// segments, about 24–43 KB of data at the 4–18-packet windows this link allows. Without a
/// bound quinn would queue up to the 4 MiB stream window ahead of every request, and at the
/// loss-limited rate (≈ 0.5 MB/s) a round would take seconds.
const HOL_BASELINE_BUDGET: u64 = 32 * 1024;
/// Frame kinds of the one-stream baseline (client → server; server → client: a request's kind
/// marks its response, a bulk kind the cumulative count of bulk bytes read).
const KIND_BULK: u8 = 0;
const KIND_REQUEST: u8 = 1;

/// The lossy link of one HOL measurement; ferry's and the baseline's get the same seed.
fn hol_link(seed: u64) -> LinkConfig {
    LinkConfig {
        loss: HOL_LOSS,
        delay: HOL_DELAY,
        seed: Some(seed),
        ..LinkConfig::default()
    }
}

/// B's round trips alone and with bulk A running, and A's goodput meanwhile.
struct HolRun {
    alone: Histogram<u64>,
    with_bulk: Histogram<u64>,
    /// MB/s of bulk A's bytes read by the receiving application during B's rounds with bulk.
    goodput: f64,
}

async fn figure_head_of_line(settings: Settings) -> Result<Vec<Row>> {
    let latency = |what: &str| {
        Row::new(
            format!("HOL B {what} (2% loss, 10 ms)"),
            "ms",
            Better::Lower,
        )
        .against("raw quinn, A and B on 1 stream")
    };
    let mut rows = [
        latency("64 B echo p50, alone"),
        latency("p50, with bulk A"),
        latency("p90, alone"),
        latency("p90, with bulk A"),
        latency("p99, alone"),
        latency("p99, with bulk A"),
        Row::new("HOL: B p99 with bulk / B p99 alone", "x", Better::Lower)
            .against("raw quinn, A and B on 1 stream"),
        Row::new("HOL: bulk A goodput while B runs", "MB/s", Better::Higher)
            .against("raw quinn, A and B on 1 stream"),
    ];
    let (rounds, warmup) = (settings.hol_rounds, settings.hol_warmup);
    let mut record = |ferry: bool, run: HolRun| {
        let ms = |histogram: &Histogram<u64>, quantile: f64| {
            histogram.value_at_quantile(quantile) as f64 / 1e6
        };
        let p99_alone = ms(&run.alone, 0.99);
        let p99_bulk = ms(&run.with_bulk, 0.99);
        let values = [
            ms(&run.alone, 0.50),
            ms(&run.with_bulk, 0.50),
            ms(&run.alone, 0.90),
            ms(&run.with_bulk, 0.90),
            p99_alone,
            p99_bulk,
            p99_bulk / p99_alone,
            run.goodput,
        ];
        for (row, value) in rows.iter_mut().zip(values) {
            if ferry {
                row.ferry.push(value);
            } else {
                row.baseline.push(value);
            }
        }
    };
    for run in 0..settings.runs {
        let seed = 1000 + run as u64;
        // Ferry and baseline run at the same time, each through its own link: the figure is
        // bound by the link's delay (a round takes at least 20 ms) and uses about 1 % of the
        // CPU, so they do not disturb each other at this scale, and it takes half as long.
        if settings.ferry_only {
            record(true, measure(ferry_hol(rounds, warmup, seed)).await?);
        } else {
            let (ferry, baseline) = tokio::try_join!(
                measure(ferry_hol(rounds, warmup, seed)),
                measure(quinn_hol(rounds, warmup, seed)),
            )?;
            record(true, ferry);
            record(false, baseline);
        }
    }
    Ok(rows.into())
}

/// MB/s of `bytes` read during `elapsed`.
fn megabytes_per_second(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}

/// Two ferry nodes, the client reaching the server only through a lossy link. The server
/// offers "bulk" (reads data chunks and counts them) and "echo" (answers each object with
/// itself). B is one "echo" conversation; A one "bulk" conversation whose `send_data_stream`
/// runs until the measurement ends.
async fn ferry_hol(rounds: u64, warmup: u64, seed: u64) -> Result<HolRun> {
    let (client, server) = ferry_pair().await?;
    let link = LossyLink::start(hol_link(seed), server.local_addr()).await?;
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let _bulk_service = server.serve("bulk", ServiceOptions::default(), move |conversation| {
        hol_bulk_sink(conversation, counter.clone())
    })?;
    let _echo_service = server.serve("echo", ServiceOptions::default(), echo_objects)?;
    let target =
        |name: &str| Target::service(server.id(), name).with_hints(vec![link.local_addr()]);

    let mut echo = client.open(target("echo")).await?;
    let alone = ferry_echo_rounds(&mut echo, warmup, rounds).await?;

    // A sends 64 KiB chunks without end, until it is aborted below.
    let mut bulk = client.open(target("bulk")).await?;
    let sender = tokio::spawn(async move {
        bulk.send_data_stream(futures::stream::repeat(&BULK_DATA[..]))
            .await?;
        anyhow::Ok(bulk)
    });
    tokio::time::sleep(HOL_RAMP).await;
    let (before, start) = (received.load(Ordering::Relaxed), Instant::now());
    let with_bulk = ferry_echo_rounds(&mut echo, 0, rounds).await;
    let goodput = megabytes_per_second(received.load(Ordering::Relaxed) - before, start.elapsed());
    // Stop A at once: aborting its task drops the conversation, which resets the stream and
    // discards the data still queued (up to the 4 MiB stream window; draining that at the
    // loss-limited rate would take seconds). Awaiting the task makes sure it is gone.
    sender.abort();
    match sender.await {
        Ok(result) => drop(result.context("bulk conversation A")?),
        Err(error) if error.is_cancelled() => {}
        Err(error) => return Err(error).context("bulk sender panicked"),
    }
    let with_bulk = with_bulk?;
    drop(echo);
    shutdown_quickly(&[client, server]).await;
    link.shutdown().await;
    Ok(HolRun {
        alone,
        with_bulk,
        goodput,
    })
}

/// The "bulk" service of the HOL figure: reads data chunks until the end (or a reset) and
/// adds their length to `counter`.
async fn hol_bulk_sink(mut conversation: Conversation, counter: Arc<AtomicU64>) {
    while let Ok(Some(chunk)) = conversation.recv_chunk().await {
        counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
}

/// `warmup` unrecorded, then `rounds` recorded sequential round trips of a 64-byte object on
/// an echo conversation. The object is `bytes::Bytes` (serde bytes, copied whole; postcard
/// encodes it as it does a `Vec<u8>`, which serde walks one element at a time).
async fn ferry_echo_rounds(
    echo: &mut Conversation,
    warmup: u64,
    rounds: u64,
) -> Result<Histogram<u64>> {
    let payload = Bytes::from_static(&PAYLOAD);
    let mut histogram = histogram()?;
    for index in 0..warmup + rounds {
        let start = Instant::now();
        echo.send_obj(&payload).await?;
        let reply: Bytes = echo.recv_obj().await?;
        let elapsed = start.elapsed();
        ensure!(reply.len() == MESSAGE_LEN, "bad reply length");
        if index >= warmup {
            record_ns(&mut histogram, elapsed)?;
        }
    }
    Ok(histogram)
}

/// The same for the one-stream baseline: ask the writer for a request, wait for the reader to
/// see its response.
async fn quinn_echo_rounds(
    commands: &mpsc::UnboundedSender<Command>,
    responses: &mut mpsc::UnboundedReceiver<()>,
    warmup: u64,
    rounds: u64,
) -> Result<Histogram<u64>> {
    let mut histogram = histogram()?;
    for index in 0..warmup + rounds {
        let start = Instant::now();
        commands
            .send(Command::Request)
            .map_err(|_| anyhow!("writer ended"))?;
        responses
            .recv()
            .await
            .ok_or_else(|| anyhow!("reader ended"))?;
        let elapsed = start.elapsed();
        if index >= warmup {
            record_ns(&mut histogram, elapsed)?;
        }
    }
    Ok(histogram)
}

/// What the one-stream baseline's client asks its writer task to do.
enum Command {
    /// Write one 64-byte request frame (ahead of further bulk frames).
    Request,
    /// Start or stop writing bulk frames.
    Bulk(bool),
}

/// The baseline: raw quinn through an identically configured lossy link, both flows on ONE
/// bidirectional stream, as HBI over TCP does. Frames are `[kind u8][len u32][payload]`; a
/// writer task writes a pending request before the next bulk frame, and keeps at most
/// [`HOL_BASELINE_BUDGET`] bulk bytes written but not yet read by the server. The server
/// answers each request in order on the same stream and reports the bulk bytes it read.
async fn quinn_hol(rounds: u64, warmup: u64, seed: u64) -> Result<HolRun> {
    let pair = QuinnPair::connect_via(Some(hol_link(seed))).await?;
    let received = Arc::new(AtomicU64::new(0));
    let server = tokio::spawn(hol_server(pair.server_conn.clone(), received.clone()));
    let (send, recv) = pair.client_conn.open_bi().await?;
    let (consumed_tx, consumed_rx) = watch::channel(0u64);
    let (response_tx, mut responses) = mpsc::unbounded_channel();
    let (commands, command_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(hol_writer(send, command_rx, consumed_rx));
    let reader = tokio::spawn(hol_reader(recv, consumed_tx, response_tx));

    let alone = quinn_echo_rounds(&commands, &mut responses, warmup, rounds).await?;
    commands
        .send(Command::Bulk(true))
        .map_err(|_| anyhow!("writer ended"))?;
    tokio::time::sleep(HOL_RAMP).await;
    let (before, start) = (received.load(Ordering::Relaxed), Instant::now());
    let with_bulk = quinn_echo_rounds(&commands, &mut responses, 0, rounds).await?;
    let goodput = megabytes_per_second(received.load(Ordering::Relaxed) - before, start.elapsed());

    // Stop writing bulk and finish the stream; the server reads the rest (at most the budget)
    // and finishes too.
    let _ = commands.send(Command::Bulk(false));
    drop(commands);
    let ends = async {
        writer.await.context("writer panicked")??;
        reader.await.context("reader panicked")??;
        server.await.context("server panicked")??;
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), ends)
        .await
        .map_err(|_| anyhow!("the one-stream baseline did not end in time"))??;
    pair.close().await;
    Ok(HolRun {
        alone,
        with_bulk,
        goodput,
    })
}

fn frame_header(kind: u8, len: usize) -> Result<[u8; 5]> {
    let len = u32::try_from(len)?.to_be_bytes();
    Ok([kind, len[0], len[1], len[2], len[3]])
}

/// The baseline client's writer: requests first, then bulk frames while bulk is on and the
/// server has read all but [`HOL_BASELINE_BUDGET`] bytes of what was written.
async fn hol_writer(
    mut send: quinn::SendStream,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut consumed: watch::Receiver<u64>,
) -> Result<()> {
    let mut request = frame_header(KIND_REQUEST, MESSAGE_LEN)?.to_vec();
    request.extend_from_slice(&PAYLOAD);
    let mut bulk_frame = frame_header(KIND_BULK, HOL_BULK_FRAME)?.to_vec();
    bulk_frame.extend_from_slice(&BULK_DATA[..HOL_BULK_FRAME]);
    let mut bulk = false;
    let mut written = 0u64;
    loop {
        let room = written.saturating_sub(*consumed.borrow_and_update()) < HOL_BASELINE_BUDGET;
        let command = if bulk && room {
            match commands.try_recv() {
                Ok(command) => Some(command),
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        } else if bulk {
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(command) => Some(command),
                    None => break,
                },
                changed = consumed.changed() => {
                    changed.map_err(|_| anyhow!("reader ended"))?;
                    continue;
                }
            }
        } else {
            match commands.recv().await {
                Some(command) => Some(command),
                None => break,
            }
        };
        match command {
            Some(Command::Request) => send.write_all(&request).await?,
            Some(Command::Bulk(on)) => bulk = on,
            None => {
                send.write_all(&bulk_frame).await?;
                written += HOL_BULK_FRAME as u64;
            }
        }
    }
    send.finish()?;
    Ok(())
}

/// The baseline client's reader: responses go to `responses`, bulk counts to `consumed`.
async fn hol_reader(
    mut recv: quinn::RecvStream,
    consumed: watch::Sender<u64>,
    responses: mpsc::UnboundedSender<()>,
) -> Result<()> {
    let mut kind = [0u8; 1];
    loop {
        match recv.read_exact(&mut kind).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(()),
            Err(error) => return Err(error.into()),
        }
        match kind[0] {
            KIND_REQUEST => {
                let mut response = [0u8; MESSAGE_LEN];
                recv.read_exact(&mut response).await?;
                // The measuring loop may be gone already; the stream still has to be read.
                let _ = responses.send(());
            }
            KIND_BULK => {
                let mut count = [0u8; 8];
                recv.read_exact(&mut count).await?;
                consumed.send_replace(u64::from_be_bytes(count));
            }
            other => bail!("unknown frame kind {other}"),
        }
    }
}

/// The baseline server: reads the one stream in order, answers each request at once, counts
/// bulk bytes into `received` and reports them (after every complete bulk frame).
async fn hol_server(connection: quinn::Connection, received: Arc<AtomicU64>) -> Result<()> {
    let (mut send, mut recv) = connection.accept_bi().await?;
    let mut buf = BytesMut::with_capacity(2 * HOL_BULK_FRAME);
    let mut out = Vec::new();
    let mut total = 0u64;
    let mut reported = 0u64;
    while let Some(chunk) = recv.read_chunk(64 * 1024, true).await? {
        buf.extend_from_slice(&chunk.bytes);
        out.clear();
        while buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < 5 + len {
                break;
            }
            let kind = buf[0];
            buf.advance(5);
            let payload = buf.split_to(len);
            match kind {
                KIND_REQUEST => {
                    ensure!(payload.len() == MESSAGE_LEN, "bad request length");
                    out.push(KIND_REQUEST);
                    out.extend_from_slice(&payload);
                }
                KIND_BULK => {
                    total += len as u64;
                    received.store(total, Ordering::Relaxed);
                }
                other => bail!("unknown frame kind {other}"),
            }
        }
        if total > reported {
            out.push(KIND_BULK);
            out.extend_from_slice(&total.to_be_bytes());
            reported = total;
        }
        if !out.is_empty() {
            send.write_all(&out).await?;
        }
    }
    send.finish()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Shared set-up.

/// Runs one measurement with a time limit.
pub(crate) async fn measure<T>(measurement: impl Future<Output = Result<T>>) -> Result<T> {
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

/// Shuts the nodes down with a short grace: for measurements whose conversations were given
/// up (nothing is waiting to be acknowledged), so the lossy link does not stretch the run.
async fn shutdown_quickly(nodes: &[Node]) {
    for node in nodes {
        node.shutdown(Duration::from_millis(200)).await;
    }
}

/// A raw quinn client and server connected over loopback, with the same TLS provider (rustls
/// with ring, TLS 1.3 only) and the same flow-control windows as a ferry node.
struct QuinnPair {
    client: quinn::Endpoint,
    /// The client endpoint's configuration, for more client endpoints.
    client_config: quinn::ClientConfig,
    server: quinn::Endpoint,
    client_conn: quinn::Connection,
    server_conn: quinn::Connection,
    /// The lossy link the client reaches the server through, if any.
    link: Option<LossyLink>,
}

impl QuinnPair {
    /// Connected directly.
    async fn connect() -> Result<Self> {
        Self::connect_via(None).await
    }

    /// Connected directly, or through a lossy link with this configuration.
    async fn connect_via(link: Option<LinkConfig>) -> Result<Self> {
        let identity = BaselineIdentity::generate()?;
        let transport = Arc::new(transport_config());
        let server_config = identity.server_config(transport.clone())?;
        let client_config = baseline_client_config(identity.cert.clone(), transport)?;

        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let server = quinn::Endpoint::server(server_config, loopback)?;
        let mut client = quinn::Endpoint::client(loopback)?;
        client.set_default_client_config(client_config.clone());
        let link = match link {
            Some(config) => Some(LossyLink::start(config, server.local_addr()?).await?),
            None => None,
        };
        let server_addr = match &link {
            Some(link) => link.local_addr(),
            None => server.local_addr()?,
        };

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
            client_config,
            server,
            client_conn,
            server_conn,
            link,
        })
    }

    async fn close(self) {
        self.client_conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.wait_idle()).await;
        self.server.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.server.wait_idle()).await;
        if let Some(link) = self.link {
            link.shutdown().await;
        }
    }
}

/// The raw quinn baseline server's self-signed certificate (ed25519, for "localhost").
struct BaselineIdentity {
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivatePkcs8KeyDer<'static>,
}

impl BaselineIdentity {
    fn generate() -> Result<Self> {
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let cert =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()])?.self_signed(&key_pair)?;
        Ok(Self {
            cert: cert.der().clone(),
            key: rustls::pki_types::PrivatePkcs8KeyDer::from(key_pair.serialize_der()),
        })
    }

    /// A quinn server configuration with this certificate: rustls with the ring provider
    /// passed explicitly, TLS 1.3 only, no client authentication.
    fn server_config(&self, transport: Arc<quinn::TransportConfig>) -> Result<quinn::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key().into())?;
        server_tls.alpn_protocols = vec![BASELINE_ALPN.to_vec()];
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)?,
        ));
        server_config.transport_config(transport);
        Ok(server_config)
    }
}

/// A quinn client configuration that trusts `cert` as its only root (same provider and TLS
/// version as the server).
fn baseline_client_config(
    cert: rustls::pki_types::CertificateDer<'static>,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_tls.alpn_protocols = vec![BASELINE_ALPN.to_vec()];
    let mut client_config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)?,
    ));
    client_config.transport_config(transport);
    Ok(client_config)
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

pub(crate) fn format_value(value: Option<f64>, unit: &str) -> String {
    let Some(value) = value else {
        return "-".to_owned();
    };
    if unit == "msg/s" {
        thousands(value.round() as u64)
    } else if unit == "ms" || unit == "x" || unit == "KiB" {
        format!("{value:.2}")
    } else {
        format!("{value:.1}")
    }
}

pub(crate) fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The result table: medians over the runs, then every run's value.
fn table(rows: &[Row], settings: &Settings) -> String {
    let header = [
        "figure",
        "unit",
        "ferry",
        "baseline",
        "ratio",
        "baseline is",
    ];
    let mut cells: Vec<[String; 6]> = vec![header.map(str::to_owned)];
    for row in rows {
        let ratio = row.ratio().map_or_else(
            || row.note.clone().unwrap_or_else(|| "-".to_owned()),
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
            row.against.to_owned(),
        ]);
    }
    let mut widths = [0usize; 6];
    for line in &cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "medians of {} runs; baseline = the same job done by raw quinn, NATS or a plain axum \
         WebSocket server (last column), same run; ratio = ferry / baseline",
        settings.runs
    );
    for (index, line) in cells.iter().enumerate() {
        let mut text = String::new();
        for (column, (cell, width)) in line.iter().zip(widths).enumerate() {
            if column > 0 {
                text.push_str(" | ");
            }
            // Numbers (columns 2 and 3) right-aligned, text left-aligned.
            if !(2..4).contains(&column) {
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
            "  {} (vs {}): ferry [{}] / baseline [{}] {}",
            row.figure,
            row.against,
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
    let _ = writeln!(
        out,
        "       bulk {} bytes per run (+{} warm-up); HOL {} rounds per case and run (+{} warm-up), \
         bulk running {} ms before B's rounds with bulk",
        settings.bulk_bytes,
        BULK_WARMUP,
        settings.hol_rounds,
        settings.hol_warmup,
        HOL_RAMP.as_millis()
    );
    let _ = writeln!(
        out,
        "       call {} rounds per run (+{} warm-up); dial {} fresh connections per run (+{} \
         warm-up); memory {} peers and {} idle conversations per run",
        settings.call_rounds,
        settings.call_warmup,
        settings.dial_rounds,
        settings.dial_warmup,
        settings.memory_peers,
        settings.memory_conversations
    );
    let _ = writeln!(
        out,
        "       peers: {} peer nodes connected to one hub node per run, round trip {} rounds \
         (+{} warm-up) alone and with them",
        settings.many_peers,
        peers::RTT_ROUNDS,
        peers::RTT_WARMUP
    );
    let _ = writeln!(
        out,
        "       gateway {} WebSocket sessions, {} fan-out rounds and {} messages to 100 sessions \
         per run",
        settings.gateway_sessions, settings.gateway_rounds, settings.gateway_messages
    );
    let _ = writeln!(
        out,
        "       cluster {} WebSocket sessions on 3 gateways (NATS) / {} on one, {} run(s) of {} \
         fan-out rounds and {} messages to 100 users; load {}",
        settings.cluster_sessions,
        settings.cluster_node_sessions,
        settings.cluster_runs,
        settings.cluster_rounds,
        settings.cluster_messages,
        cluster::load()
    );
    out
}

pub(crate) fn json_string(text: &str) -> String {
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

pub(crate) fn json_number(value: Option<f64>) -> String {
    match value {
        Some(value) if value.is_finite() => format!("{value}"),
        _ => "null".to_owned(),
    }
}

pub(crate) fn json_list(values: &[f64]) -> String {
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
            "    {{\"figure\": {}, \"unit\": {}, \"better\": {}, \"baseline_is\": {}, \
             \"ferry\": {}, \"baseline\": {}, \"ratio\": {}, \"ferry_runs\": {}, \
             \"baseline_runs\": {}, \"note\": {}}}",
            json_string(&row.figure),
            json_string(row.unit),
            json_string(better),
            json_string(row.against),
            json_number(row.ferry_median()),
            json_number(row.baseline_median()),
            json_number(row.ratio()),
            json_list(&row.ferry),
            json_list(&row.baseline),
            row.note
                .as_deref()
                .map_or_else(|| "null".to_owned(), json_string),
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
