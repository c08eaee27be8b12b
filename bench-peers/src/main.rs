//! ferry beside the other peer-to-peer QUIC stacks in Rust, in one run and one table: ferry,
//! raw quinn, iroh, rust-libp2p and NATS doing the same jobs (acknowledged 64-byte messages/s,
//! the 64-byte round trip, a call, dial + first acknowledged message, memory per connected
//! peer), each ratio against ferry.
//!
//! ```text
//! cargo run --release --locked --manifest-path bench-peers/Cargo.toml -- [--quick] [--runs N] \
//!     [--only ID] [--json PATH] [--instructions]
//! ```
//!
//! ferry, raw quinn and NATS are measured by the benchmark suite's own code
//! (`interop-tests/src/bin/bench.rs` and its modules, compiled into this binary as the module
//! `bench`), with its sizes (`--quick` or not); iroh runs the raw quinn baseline's very stream
//! jobs (`bench::streams`), libp2p the same jobs as request-response (`libp2p_stack`). The
//! memory figure's measured node is a child process (this binary with the hidden option
//! `--memory-hub ferry|quinn|iroh|libp2p`). `--instructions` counts instructions per message
//! under valgrind instead (`bench::instructions`), for ferry, raw quinn, iroh and libp2p.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser as _;
use hdrhistogram::Histogram;

// The benchmark suite, whole: only part of it is used here.
#[allow(dead_code)]
#[path = "../../interop-tests/src/bin/bench.rs"]
mod bench;
mod iroh_stack;
mod libp2p_stack;

use bench::instructions::{self, Workload};
use bench::memory::HubCounts;
use bench::nats::{self, NatsServer};
use bench::{call, dial, measure, memory, Better, Settings};

/// libp2p's throughput runs send this fraction of the others' messages (1/10).
const LIBP2P_THROUGHPUT_SHARE: u64 = 10;

/// The stacks, in the order of the table's columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stack {
    Ferry,
    Quinn,
    Iroh,
    Libp2p,
    Nats,
}

const STACKS: [Stack; 5] = [
    Stack::Ferry,
    Stack::Quinn,
    Stack::Iroh,
    Stack::Libp2p,
    Stack::Nats,
];

impl Stack {
    fn name(self) -> &'static str {
        match self {
            Self::Ferry => "ferry",
            Self::Quinn => "raw quinn",
            Self::Iroh => "iroh",
            Self::Libp2p => "libp2p",
            Self::Nats => "NATS",
        }
    }
}

/// A measured job: its id (for `--only`), its lines, and what each stack does for it (`None`:
/// the stack has no such job).
struct Job {
    id: &'static str,
    lines: &'static [(&'static str, &'static str, Better)],
    does: [Option<&'static str>; 5],
}

/// Counted round trips and calls per `--instructions` workload run (the bench's 10,000 would
/// keep libp2p's workloads under valgrind for many minutes each).
const INSTRUCTIONS_COUNT: u64 = 2_000;

const JOBS: [Job; 5] = [
    Job {
        id: "throughput",
        lines: &[
            ("acked 64 B msgs/s", "msg/s", Better::Higher),
            (
                "acked 64 B msgs/s, ferry in batches",
                "msg/s",
                Better::Higher,
            ),
        ],
        does: [
            Some("enqueue_bytes to a remote mailbox; enqueue_all of 1,000 (2nd line)"),
            Some("1 stream, length-prefixed, cumulative acks"),
            Some("the same as raw quinn"),
            Some("request + empty response, 100 in flight"),
            Some("pub -> sub, no acks"),
        ],
    },
    Job {
        id: "rtt",
        lines: &[
            ("round trip 64 B, p50", "us", Better::Lower),
            ("round trip 64 B, p99", "us", Better::Lower),
            (
                "round trip 64 B on an open stream, p50",
                "us",
                Better::Lower,
            ),
            (
                "round trip 64 B on an open stream, p99",
                "us",
                Better::Lower,
            ),
        ],
        does: [
            Some(
                "message to a mailbox, reply to the inbox; echo on a conversation (3rd, 4th lines)",
            ),
            Some("echo on an open stream"),
            Some("the same as raw quinn"),
            Some("request-response, 64 B echoed"),
            None,
        ],
    },
    Job {
        id: "call",
        lines: &[
            ("call 64 B, p50", "us", Better::Lower),
            ("call 64 B, p99", "us", Better::Lower),
        ],
        does: [
            Some("node.call to an echo service"),
            Some("echo on a new stream per request"),
            Some("the same as raw quinn"),
            Some("request-response, 64 B echoed"),
            Some("request/reply"),
        ],
    },
    Job {
        id: "dial",
        lines: &[
            ("dial + first 64 B acked, p50", "ms", Better::Lower),
            ("dial + first 64 B acked, p99", "ms", Better::Lower),
        ],
        does: [
            Some("new node, send_bytes to a mailbox"),
            Some("connect + stream echo, one client endpoint"),
            Some("new endpoint, connect + stream echo"),
            Some("new swarm, first request-response"),
            None,
        ],
    },
    Job {
        id: "memory",
        lines: &[
            ("heap per connected peer", "KiB", Better::Lower),
            ("RSS per connected peer", "KiB", Better::Lower),
        ],
        does: [
            Some("node connect()ed by N nodes"),
            Some("server endpoint, N bare connections"),
            Some("endpoint + Router, N endpoints connected"),
            Some("swarm, N swarms connected"),
            None,
        ],
    },
];

/// One line of the table: every run's value per stack.
struct Line {
    figure: &'static str,
    unit: &'static str,
    better: Better,
    values: [Vec<f64>; 5],
}

fn main() -> Result<()> {
    let cli = bench::Cli::parse();
    if let Some(kind) = &cli.memory_hub {
        return match kind.as_str() {
            "iroh" => bench::child::run(iroh_stack::hub()),
            "libp2p" => bench::child::run(libp2p_stack::hub()),
            _ => memory::run_hub(kind),
        };
    }
    let workloads = workloads();
    if let Some(args) = &cli.instructions_workload {
        return instructions::run_workload(&workloads, args);
    }
    if cli.instructions {
        return bench::child::run(bench::print_instructions(
            &cli,
            &workloads,
            INSTRUCTIONS_COUNT,
        ));
    }
    // Every client endpoint or swarm of the memory figure has a socket of its own.
    let _ = bench::gateway::raise_open_files_limit();
    let settings = Settings::new(&cli);
    bench::child::run(async {
        let started = Instant::now();
        // Measure on a worker thread, like application code would run (as the bench does).
        let lines = tokio::spawn(measure_all(settings.clone(), cli.only.clone()))
            .await
            .context("measuring panicked")??;
        print!("{}", table(&lines, &settings));
        println!("total time: {:.1} s", started.elapsed().as_secs_f64());
        if let Some(path) = &cli.json {
            std::fs::write(path, json(&lines, &settings))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    })
}

/// The instruction workloads: the bench's (ferry, raw quinn) and the peers'.
fn workloads() -> Vec<Workload> {
    let mut workloads = instructions::WORKLOADS.to_vec();
    workloads.extend([
        Workload {
            stack: "iroh",
            job: "message",
            what: "the same as raw quinn",
            run: |n, warmup| {
                Box::pin(async move { iroh_stack::throughput(n, warmup).await.map(drop) })
            },
        },
        Workload {
            stack: "libp2p",
            job: "message",
            what: "request + empty response, 100 in flight",
            run: |n, warmup| {
                Box::pin(async move { libp2p_stack::throughput(n, warmup).await.map(drop) })
            },
        },
        Workload {
            stack: "iroh",
            job: "round-trip",
            what: "the same as raw quinn",
            run: |n, warmup| {
                Box::pin(async move { iroh_stack::round_trips(n, warmup).await.map(drop) })
            },
        },
        Workload {
            stack: "libp2p",
            job: "round-trip",
            what: "request-response, 64 B echoed",
            run: |n, warmup| {
                Box::pin(async move { libp2p_stack::calls(n, warmup).await.map(drop) })
            },
        },
        Workload {
            stack: "iroh",
            job: "echo",
            what: "echo on an open stream (its round-trip job)",
            run: |n, warmup| {
                Box::pin(async move { iroh_stack::round_trips(n, warmup).await.map(drop) })
            },
        },
        Workload {
            stack: "iroh",
            job: "call",
            what: "the same as raw quinn",
            run: |n, warmup| Box::pin(async move { iroh_stack::calls(n, warmup).await.map(drop) }),
        },
        Workload {
            stack: "libp2p",
            job: "call",
            what: "request-response, 64 B echoed",
            run: |n, warmup| {
                Box::pin(async move { libp2p_stack::calls(n, warmup).await.map(drop) })
            },
        },
    ]);
    workloads
}

/// Every job (or those whose id contains `only`), in [`Settings::runs`] runs, the stacks taking
/// turns going first.
async fn measure_all(settings: Settings, only: Option<String>) -> Result<Vec<Line>> {
    let nats = NatsServer::start().await?;
    if nats.is_none() {
        eprintln!("{}", nats::NOT_INSTALLED);
    }
    let mut lines = Vec::new();
    for job in &JOBS {
        if only.as_deref().is_some_and(|only| !job.id.contains(only)) {
            continue;
        }
        let job_started = Instant::now();
        let mut job_lines: Vec<Line> = job
            .lines
            .iter()
            .map(|&(figure, unit, better)| Line {
                figure,
                unit,
                better,
                values: Default::default(),
            })
            .collect();
        for run in 0..settings.runs {
            for turn in 0..STACKS.len() {
                let index = (run + turn) % STACKS.len();
                if job.does[index].is_none() {
                    continue;
                }
                let Some(values) =
                    measure_one(job.id, STACKS[index], &settings, nats.as_ref()).await?
                else {
                    continue;
                };
                for (line, value) in job_lines.iter_mut().zip(values) {
                    line.values[index].push(value);
                }
            }
        }
        eprintln!(
            "{} measured in {:.1} s",
            job.id,
            job_started.elapsed().as_secs_f64()
        );
        lines.extend(job_lines);
    }
    if let Some(nats) = nats {
        nats.stop().await;
    }
    Ok(lines)
}

/// p50 and p99 of `histogram`, divided by `scale` (1e3: µs, 1e6: ms).
fn quantiles(histogram: &Histogram<u64>, scale: f64) -> Vec<f64> {
    [0.50, 0.99]
        .map(|quantile| histogram.value_at_quantile(quantile) as f64 / scale)
        .into()
}

/// One run of `job` for `stack`: a value per line of the job, or `None` where the stack has no
/// such job (NATS when it is not installed).
async fn measure_one(
    job: &str,
    stack: Stack,
    settings: &Settings,
    nats: Option<&NatsServer>,
) -> Result<Option<Vec<f64>>> {
    let s = settings;
    let (n, warmup) = (s.throughput_messages, s.throughput_warmup);
    let (rtt, rtt_warmup) = (s.rtt_rounds, s.rtt_warmup);
    let (calls, call_warmup) = (s.call_rounds, s.call_warmup);
    let (dials, dial_warmup) = (s.dial_rounds, s.dial_warmup);
    let peers = s.memory_peers;
    let values = match (job, stack) {
        // The other stacks have one way to send: the same value on both lines (quinn's and
        // iroh's already write 1,000 messages per `write_all`).
        ("throughput", Stack::Ferry) => vec![
            measure(bench::ferry_throughput(n, warmup, 1)).await?,
            measure(bench::ferry_throughput(n, warmup, bench::streams::BATCH)).await?,
        ],
        ("throughput", Stack::Quinn) => vec![measure(bench::quinn_throughput(n, warmup)).await?; 2],
        ("throughput", Stack::Iroh) => vec![measure(iroh_stack::throughput(n, warmup)).await?; 2],
        // A tenth of the messages: at libp2p's rate the full count would take minutes.
        ("throughput", Stack::Libp2p) => vec![
            measure(libp2p_stack::throughput(
                n / LIBP2P_THROUGHPUT_SHARE,
                warmup / LIBP2P_THROUGHPUT_SHARE,
            ))
            .await?;
            2
        ],
        ("throughput", Stack::Nats) => match nats {
            Some(server) => vec![measure(nats::throughput(server.addr(), n, warmup)).await?; 2],
            None => return Ok(None),
        },
        // The other stacks have one way to do a round trip: the same values on the open
        // stream's lines.
        ("rtt", Stack::Ferry) => [
            quantiles(
                &measure(bench::ferry_round_trips(rtt, rtt_warmup)).await?,
                1e3,
            ),
            quantiles(
                &measure(bench::ferry_conversation_round_trips(rtt, rtt_warmup)).await?,
                1e3,
            ),
        ]
        .concat(),
        ("rtt", Stack::Quinn) => quantiles(
            &measure(bench::quinn_round_trips(rtt, rtt_warmup)).await?,
            1e3,
        )
        .repeat(2),
        ("rtt", Stack::Iroh) => quantiles(
            &measure(iroh_stack::round_trips(rtt, rtt_warmup)).await?,
            1e3,
        )
        .repeat(2),
        ("rtt", Stack::Libp2p) => {
            quantiles(&measure(libp2p_stack::calls(rtt, rtt_warmup)).await?, 1e3).repeat(2)
        }
        ("call", Stack::Ferry) => {
            quantiles(&measure(call::ferry_calls(calls, call_warmup)).await?, 1e3)
        }
        ("call", Stack::Quinn) => {
            quantiles(&measure(call::quinn_calls(calls, call_warmup)).await?, 1e3)
        }
        ("call", Stack::Iroh) => {
            quantiles(&measure(iroh_stack::calls(calls, call_warmup)).await?, 1e3)
        }
        ("call", Stack::Libp2p) => quantiles(
            &measure(libp2p_stack::calls(calls, call_warmup)).await?,
            1e3,
        ),
        ("call", Stack::Nats) => match nats {
            Some(server) => quantiles(
                &measure(nats::request_rounds(server.addr(), calls, call_warmup)).await?,
                1e3,
            ),
            None => return Ok(None),
        },
        ("dial", Stack::Ferry) => {
            quantiles(&measure(dial::ferry_dials(dials, dial_warmup)).await?, 1e6)
        }
        ("dial", Stack::Quinn) => {
            quantiles(&measure(dial::quinn_dials(dials, dial_warmup)).await?, 1e6)
        }
        ("dial", Stack::Iroh) => {
            quantiles(&measure(iroh_stack::dials(dials, dial_warmup)).await?, 1e6)
        }
        ("dial", Stack::Libp2p) => quantiles(
            &measure(libp2p_stack::dials(dials, dial_warmup)).await?,
            1e6,
        ),
        // The memory figure's first two values: heap and RSS per connected peer.
        ("memory", Stack::Ferry) => {
            measure(memory::ferry_memory(peers, s.memory_conversations)).await?[..2].to_vec()
        }
        ("memory", Stack::Quinn) => {
            measure(memory::quinn_memory(peers, s.memory_conversations)).await?[..2].to_vec()
        }
        ("memory", Stack::Iroh) => measure(iroh_stack::memory_per_peer(peers)).await?.to_vec(),
        ("memory", Stack::Libp2p) => measure(libp2p_stack::memory_per_peer(peers))
            .await?
            .to_vec(),
        _ => return Ok(None),
    };
    Ok(Some(values))
}

/// Counts a hub's connections (the iroh and libp2p hubs of the memory figure).
struct ConnectionCount(Arc<AtomicU64>);

impl HubCounts for ConnectionCount {
    fn peers(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn streams(&self) -> u64 {
        0
    }
}

// ---------------------------------------------------------------------------------------------
// Output.

/// A median with its ratio ferry / it, e.g. `11,170,000 (0.35x)`.
fn cell(line: &Line, index: usize) -> String {
    let Some(value) = bench::median(&line.values[index]) else {
        return "-".to_owned();
    };
    let text = bench::format_value(Some(value), line.unit);
    match bench::median(&line.values[0]) {
        Some(ferry) if index > 0 => format!("{text} ({:.2}x)", ferry / value),
        _ => text,
    }
}

/// The table: medians, each beside ferry / it; then what each stack does, and every run.
fn table(lines: &[Line], settings: &Settings) -> String {
    let mut cells: Vec<Vec<String>> = vec![["figure", "unit"]
        .into_iter()
        .map(str::to_owned)
        .chain(STACKS.iter().map(|stack| stack.name().to_owned()))
        .collect()];
    for line in lines {
        let better = match line.better {
            Better::Higher => "higher is better",
            Better::Lower => "lower is better",
        };
        let mut row = vec![line.figure.to_owned(), format!("{} ({better})", line.unit)];
        row.extend((0..STACKS.len()).map(|index| cell(line, index)));
        cells.push(row);
    }
    let mut widths = vec![0usize; STACKS.len() + 2];
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "medians of {} runs, all stacks in the same run; (r x) = ferry / that stack",
        settings.runs
    );
    for (index, row) in cells.iter().enumerate() {
        let text: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(column, (cell, &width))| {
                if column < 2 {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", text.join(" | ").trim_end());
        if index == 0 {
            let total = widths.iter().sum::<usize>() + 3 * (widths.len() - 1);
            let _ = writeln!(out, "{}", "-".repeat(total));
        }
    }
    let _ = writeln!(out, "\nwhat each stack does:");
    for job in &JOBS {
        let does: Vec<String> = STACKS
            .iter()
            .zip(job.does)
            .filter_map(|(stack, does)| Some(format!("{}: {}", stack.name(), does?)))
            .collect();
        let _ = writeln!(out, "  {}: {}", job.id, does.join("; "));
    }
    let _ = writeln!(out, "\nevery run:");
    for line in lines {
        let runs: Vec<String> = STACKS
            .iter()
            .zip(&line.values)
            .filter(|(_, values)| !values.is_empty())
            .map(|(stack, values)| {
                let values: Vec<String> = values
                    .iter()
                    .map(|value| bench::format_value(Some(*value), line.unit))
                    .collect();
                format!("{} [{}]", stack.name(), values.join(", "))
            })
            .collect();
        let _ = writeln!(out, "  {} ({}): {}", line.figure, line.unit, runs.join(" "));
    }
    let _ = writeln!(
        out,
        "\nsizes: throughput {} msgs per run (+{} warm-up); round trip {} rounds (+{}); call {} \
         rounds (+{}); dial {} dials (+{}); memory {} peers; libp2p's throughput 1/{} of the \
         messages",
        settings.throughput_messages,
        settings.throughput_warmup,
        settings.rtt_rounds,
        settings.rtt_warmup,
        settings.call_rounds,
        settings.call_warmup,
        settings.dial_rounds,
        settings.dial_warmup,
        settings.memory_peers,
        LIBP2P_THROUGHPUT_SHARE
    );
    out
}

/// The lines as a JSON document: per line, each stack's median, runs and ratio ferry / it.
fn json(lines: &[Line], settings: &Settings) -> String {
    let mut out = format!("{{\n  \"runs\": {},\n  \"lines\": [\n", settings.runs);
    for (index, line) in lines.iter().enumerate() {
        let ferry = bench::median(&line.values[0]);
        let stacks: Vec<String> = STACKS
            .iter()
            .zip(&line.values)
            .map(|(stack, values)| {
                let median = bench::median(values);
                let ratio = ferry.zip(median).map(|(ferry, it)| ferry / it);
                format!(
                    "{}: {{\"median\": {}, \"runs\": {}, \"ferry_ratio\": {}}}",
                    bench::json_string(stack.name()),
                    bench::json_number(median),
                    bench::json_list(values),
                    bench::json_number(ratio)
                )
            })
            .collect();
        let _ = write!(
            out,
            "    {{\"figure\": {}, \"unit\": {}, {}}}",
            bench::json_string(line.figure),
            bench::json_string(line.unit),
            stacks.join(", ")
        );
        out.push_str(if index + 1 < lines.len() { ",\n" } else { "\n" });
    }
    out.push_str("  ]\n}\n");
    out
}
