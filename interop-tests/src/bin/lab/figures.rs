//! `lab bench`: figures across NATs (issue 12, point 9). Nothing passes or fails on speed.
//!
//! Every access link (A's, C's, the relay's) delays each direction by `--delay-ms` (the lab's
//! user-space stage), so a direct round trip crosses two delayed links each way and a relayed
//! one four: the difference shows. The figures:
//!
//! - `stage`: a plain UDP round trip from A's host to the relay's host, against the floor the
//!   configured delays make (checks the delay stage itself).
//! - `rtt`, `throughput`: A sends to C and waits for the acknowledgement (one message at a
//!   time; then a stream), for a pair that can be direct (home router and home router, once A
//!   reports a direct path) and one that cannot (symmetric and symmetric: relayed).
//! - `direct`: time from A's first send to the first time A reports a direct path to C, over
//!   `--tries` fresh pairs of agents, for every pair of NAT kinds where physics allows.
//! - `resume`: A's router cuts its uplink for 15 s and for 40 s with a message waiting; the time
//!   from the heal to that message's acknowledgement.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use ferry_interop::lab::matrix::{wait_for_direct, PairLab};
use ferry_interop::lab::{LabAgent, Link, NatKind, PathState};
use serde::Serialize;

use super::Binaries;

/// How long a pair that can be direct is given to become so.
const DIRECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one acknowledgement may take (outages aside).
const ACK_TIMEOUT: Duration = Duration::from_secs(120);

/// `lab bench` options.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Fewer tries and messages (a few minutes in all).
    #[arg(long)]
    quick: bool,
    /// Also write the rows as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// One-way delay of every access link, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    delay_ms: u64,
    /// Tries per NAT pair of the time-to-direct figure (default 20; 3 with --quick).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1000))]
    tries: Option<u16>,
    /// Only the figures whose id contains this text (stage, rtt, throughput, direct, resume).
    #[arg(long, value_name = "TEXT")]
    only: Option<String>,
}

/// One line of the figures' table.
#[derive(Debug, Serialize)]
struct Row {
    figure: &'static str,
    /// A's NAT kind -> C's.
    pair: String,
    /// How A reached C, by its own account.
    path: String,
    /// The figure, with its unit.
    value: String,
    /// How it was measured.
    detail: String,
}

pub(crate) fn run(args: &BenchArgs, binaries: &Binaries) -> Result<()> {
    let delay = Duration::from_millis(args.delay_ms);
    let wanted = |id: &str| args.only.as_deref().is_none_or(|only| id.contains(only));
    let mut rows = Vec::new();
    let mut report = |new: Vec<Row>| {
        for row in &new {
            eprintln!(
                "{} {} {}: {} ({})",
                row.figure, row.pair, row.path, row.value, row.detail
            );
        }
        rows.extend(new);
    };
    if wanted("stage") {
        report(stage(&binaries.agent, delay)?);
    }
    let (round_trips, messages) = if args.quick {
        (20, 1000)
    } else {
        (100, 10_000)
    };
    for (from, to) in [
        (NatKind::Home, NatKind::Home),
        (NatKind::Symmetric, NatKind::Symmetric),
    ] {
        if wanted("rtt") || wanted("throughput") {
            report(rtt_and_throughput(
                &binaries.agent,
                delay,
                from,
                to,
                round_trips,
                messages,
            )?);
        }
    }
    if wanted("direct") {
        let tries = args
            .tries
            .map_or(if args.quick { 3 } else { 20 }, usize::from);
        report(time_to_direct(&binaries.agent, delay, tries)?);
    }
    if wanted("resume") {
        let tries = if args.quick { 1 } else { 3 };
        report(resume(&binaries.agent, delay, tries)?);
    }
    print!("{}", table(&rows));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// A pair's lab with every access link delayed, and agents A and C started.
struct DelayedPair {
    // Agents first: they are dropped before the lab.
    a: LabAgent,
    c: LabAgent,
    _relay: LabAgent,
    pair: PairLab,
}

impl DelayedPair {
    fn start(agent: &Path, delay: Duration, from: NatKind, to: NatKind) -> Result<Self> {
        let (mut pair, relay) = PairLab::build(agent, from, to).map_err(|error| anyhow!(error))?;
        for host in [pair.relay_host, pair.a_host, pair.c_host] {
            pair.lab.set_delay(Link::Host(host), delay)?;
        }
        let c = pair.start_node(agent, pair.c_host, "c")?;
        let a = pair.start_node(agent, pair.a_host, "a")?;
        Ok(Self {
            a,
            c,
            _relay: relay,
            pair,
        })
    }

    /// Sends one message and returns how long its acknowledgement took.
    fn round_trip(&mut self, tag: &str) -> Result<Duration> {
        let started = Instant::now();
        self.a.send(self.c.address(), 1, tag)?;
        self.a.wait_sent(tag, ACK_TIMEOUT)?;
        Ok(started.elapsed())
    }

    /// How A reaches C, as a word for the table.
    fn path(&mut self) -> String {
        let node = self.c.node().to_string();
        match self.a.path(&node) {
            Ok(PathState::Direct(_)) => "direct".to_string(),
            Ok(PathState::Relayed(_)) => "relayed".to_string(),
            Ok(PathState::None) => "none".to_string(),
            Err(_) => "unknown".to_string(),
        }
    }
}

fn stage(agent: &Path, delay: Duration) -> Result<Vec<Row>> {
    let pair = DelayedPair::start(agent, delay, NatKind::Home, NatKind::Home)?;
    let lab = &pair.pair.lab;
    let relay = lab.host(pair.pair.relay_host)?;
    let a = lab.host(pair.pair.a_host)?;
    let echo = relay
        .namespace()
        .udp_socket(SocketAddr::new(relay.address().into(), 9000))?;
    let ping = a
        .namespace()
        .udp_socket(SocketAddr::new(a.address().into(), 0))?;
    for socket in [&echo, &ping] {
        socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    }
    let target = echo.local_addr()?;
    let mut samples = Vec::new();
    let mut buffer = [0u8; 16];
    for _ in 0..20 {
        let started = Instant::now();
        ping.send_to(b"ping", target)?;
        let (_, from) = echo.recv_from(&mut buffer)?;
        echo.send_to(b"pong", from)?;
        ping.recv_from(&mut buffer)?;
        samples.push(started.elapsed());
    }
    Ok(vec![Row {
        figure: "stage",
        pair: "home -> public".to_string(),
        path: "udp".to_string(),
        value: format!("p50 {}", ms(percentile(&mut samples, 50))),
        detail: format!(
            "UDP round trip over two links delayed {} each way: floor {}",
            ms(delay),
            ms(delay * 4)
        ),
    }])
}

fn rtt_and_throughput(
    agent: &Path,
    delay: Duration,
    from: NatKind,
    to: NatKind,
    round_trips: usize,
    messages: u64,
) -> Result<Vec<Row>> {
    let mut pair = DelayedPair::start(agent, delay, from, to)?;
    pair.round_trip("warm")?;
    if from.direct_possible(to) {
        let node = pair.c.node().to_string();
        // Without the agent's `path` the pair is measured as it is; the row says "unknown".
        let _ = wait_for_direct(&mut pair.a, &node, DIRECT_TIMEOUT);
    }
    let path = pair.path();
    let mut samples = Vec::new();
    for n in 0..round_trips {
        samples.push(pair.round_trip(&format!("rtt{n}"))?);
    }
    let started = Instant::now();
    pair.a.send(pair.c.address(), messages, "stream")?;
    pair.a.wait_sent("stream", ACK_TIMEOUT)?;
    let elapsed = started.elapsed();
    let path_after = pair.path();
    let name = format!("{from} -> {to}");
    Ok(vec![
        Row {
            figure: "rtt",
            pair: name.clone(),
            path: path.clone(),
            value: format!(
                "p50 {} p99 {}",
                ms(percentile(&mut samples, 50)),
                ms(percentile(&mut samples, 99))
            ),
            detail: format!(
                "{round_trips} messages one at a time, send to acknowledgement; links {} each way",
                ms(delay)
            ),
        },
        Row {
            figure: "throughput",
            pair: name,
            path: path_after,
            value: format!("{:.0} msgs/s", messages as f64 / elapsed.as_secs_f64()),
            detail: format!("{messages} small messages, send to last acknowledgement"),
        },
    ])
}

fn time_to_direct(agent: &Path, delay: Duration, tries: usize) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for from in NatKind::ALL {
        for to in NatKind::ALL
            .into_iter()
            .filter(|to| from.direct_possible(*to))
        {
            let mut samples = Vec::new();
            let mut failures = Vec::new();
            for _ in 0..tries {
                let mut pair = DelayedPair::start(agent, delay, from, to)?;
                let node = pair.c.node().to_string();
                let started = Instant::now();
                pair.a.send(pair.c.address(), 1, "first")?;
                match wait_for_direct(&mut pair.a, &node, DIRECT_TIMEOUT) {
                    Ok(true) => samples.push(started.elapsed()),
                    Ok(false) => failures.push(format!("not direct within {DIRECT_TIMEOUT:?}")),
                    Err(error) => {
                        // The agent cannot tell: no point in the other tries.
                        failures.push(error.to_string());
                        break;
                    }
                }
            }
            rows.push(Row {
                figure: "direct",
                pair: format!("{from} -> {to}"),
                path: format!("{} of {tries} direct", samples.len()),
                value: if samples.is_empty() {
                    "-".to_string()
                } else {
                    format!(
                        "p50 {} p99 {}",
                        ms(percentile(&mut samples, 50)),
                        ms(percentile(&mut samples, 99))
                    )
                },
                detail: failures.first().cloned().unwrap_or_else(|| {
                    "from A's first send to A reporting a direct path".to_string()
                }),
            });
        }
    }
    Ok(rows)
}

fn resume(agent: &Path, delay: Duration, tries: usize) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for outage in [Duration::from_secs(15), Duration::from_secs(40)] {
        let mut samples = Vec::new();
        let mut path = String::new();
        for n in 0..tries {
            let mut pair = DelayedPair::start(agent, delay, NatKind::Home, NatKind::Home)?;
            pair.round_trip("warm")?;
            let node = pair.c.node().to_string();
            let _ = wait_for_direct(&mut pair.a, &node, DIRECT_TIMEOUT);
            path = pair.path();
            let router = pair
                .pair
                .lab
                .router_of(pair.pair.a_host)?
                .context("A has a router")?;
            pair.pair.lab.set_partitioned(Link::Uplink(router), true)?;
            let tag = format!("resume{n}");
            pair.a.send(pair.c.address(), 1, &tag)?;
            // The outage is the figure's input, not a wait for something.
            std::thread::sleep(outage);
            pair.pair.lab.set_partitioned(Link::Uplink(router), false)?;
            let healed = Instant::now();
            pair.a.wait_sent(&tag, ACK_TIMEOUT)?;
            samples.push(healed.elapsed());
        }
        rows.push(Row {
            figure: "resume",
            pair: "home -> home".to_string(),
            path,
            value: format!(
                "median {} max {}",
                ms(percentile(&mut samples, 50)),
                ms(percentile(&mut samples, 100))
            ),
            detail: format!(
                "{tries} outages of {}s (A's router cuts its uplink, a message waiting): heal to acknowledgement",
                outage.as_secs()
            ),
        });
    }
    Ok(rows)
}

/// The `p`th percentile (nearest rank) of `samples`.
fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    samples.sort();
    let rank = (samples.len() * p).div_ceil(100).max(1);
    samples.get(rank - 1).copied().unwrap_or_default()
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

fn table(rows: &[Row]) -> String {
    let mut text = format!(
        "{:<10} {:<24} {:<14} {:<28} {}\n",
        "figure", "pair", "path", "value", "how"
    );
    for row in rows {
        let _ = writeln!(
            text,
            "{:<10} {:<24} {:<14} {:<28} {}",
            row.figure, row.pair, row.path, row.value, row.detail
        );
    }
    text
}
