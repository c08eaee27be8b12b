//! Instructions per message (`bench --instructions`): a cost that the noise of a shared machine
//! cannot blur.
//!
//! Each workload (a stack doing one job: an acknowledged message, a round trip, a call) runs in
//! a child process of this binary (the hidden option `--instructions-workload STACK JOB COUNT`)
//! under valgrind's cachegrind, which counts the instructions the process executed in user
//! space (`I refs`). The child runs the same measurement function as the timed figure, on a
//! single-threaded tokio runtime (so that no idle worker thread spins and the count repeats from
//! run to run), once with [`WARMUP`] messages and then `COUNT` more, once with the warm-up
//! alone: the difference divided by `COUNT` is the cost of one message, without the setup
//! (keys, handshake, first stream) and the shutdown, both sides of the connection together.
//! Instructions in the kernel (the UDP system calls) are not counted.

use std::future::Future;
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::streams::BATCH;
use super::{
    call, ferry_conversation_round_trips, ferry_round_trips, ferry_throughput, quinn_round_trips,
    quinn_throughput,
};

/// Messages (round trips, calls) run before the counted ones, in both runs of a workload.
pub(crate) const WARMUP: u64 = 200;
/// The message job runs this many times the count: a message costs some 30 to 50 times less
/// than a round trip, and its count must stand well above the setup run's variation. That
/// variation is mostly one QUIC handshake (6.6 M instructions): valgrind slows the first dial
/// past the dial's re-attempt time (500 ms), so in some runs a second handshake completes.
pub(crate) const MESSAGE_FACTOR: u64 = 20;
/// The jobs, in the order of the output ("batch": the message job with ferry queuing 1,000
/// at a time, as raw quinn writes them; "echo": the round trip on an open stream, ferry's
/// being a conversation).
pub(crate) const JOBS: [&str; 5] = ["message", "batch", "round-trip", "echo", "call"];

/// Whether `job` counts single messages (run [`MESSAGE_FACTOR`] times the count).
fn counts_messages(job: &str) -> bool {
    job == "message" || job == "batch"
}

/// One stack's workload for one job: runs `warmup` then `count` messages (round trips, calls).
pub(crate) type WorkloadFn = fn(u64, u64) -> Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// A stack doing one of [`JOBS`].
#[derive(Clone, Copy)]
pub(crate) struct Workload {
    /// "ferry", "quinn", ...
    pub(crate) stack: &'static str,
    /// One of [`JOBS`].
    pub(crate) job: &'static str,
    /// What the job is for this stack (the output's last column).
    pub(crate) what: &'static str,
    pub(crate) run: WorkloadFn,
}

/// ferry's workloads and raw quinn's: the functions of the throughput, round trip and call
/// figures.
pub(crate) const WORKLOADS: [Workload; 10] = [
    Workload {
        stack: "ferry",
        job: "message",
        what: "enqueue_bytes to a remote mailbox, acknowledged",
        run: |n, warmup| Box::pin(async move { ferry_throughput(n, warmup, 1).await.map(drop) }),
    },
    Workload {
        stack: "quinn",
        job: "message",
        what: "length-prefixed on one stream, cumulative count back",
        run: |n, warmup| Box::pin(async move { quinn_throughput(n, warmup).await.map(drop) }),
    },
    Workload {
        stack: "ferry",
        job: "batch",
        what: "enqueue_all of 1,000 to a remote mailbox, acknowledged",
        run: |n, warmup| {
            Box::pin(async move { ferry_throughput(n, warmup, BATCH).await.map(drop) })
        },
    },
    Workload {
        stack: "quinn",
        job: "batch",
        what: "the message job (1,000 messages per write_all)",
        run: |n, warmup| Box::pin(async move { quinn_throughput(n, warmup).await.map(drop) }),
    },
    Workload {
        stack: "ferry",
        job: "round-trip",
        what: "a message to a remote mailbox and a reply to the inbox",
        run: |n, warmup| Box::pin(async move { ferry_round_trips(n, warmup).await.map(drop) }),
    },
    Workload {
        stack: "quinn",
        job: "round-trip",
        what: "echo on an open stream",
        run: |n, warmup| Box::pin(async move { quinn_round_trips(n, warmup).await.map(drop) }),
    },
    Workload {
        stack: "ferry",
        job: "echo",
        what: "send_obj + recv_obj on a conversation with an echo service",
        run: |n, warmup| {
            Box::pin(async move { ferry_conversation_round_trips(n, warmup).await.map(drop) })
        },
    },
    Workload {
        stack: "quinn",
        job: "echo",
        what: "echo on an open stream (the round-trip job)",
        run: |n, warmup| Box::pin(async move { quinn_round_trips(n, warmup).await.map(drop) }),
    },
    Workload {
        stack: "ferry",
        job: "call",
        what: "node.call to an echo service",
        run: |n, warmup| Box::pin(async move { call::ferry_calls(n, warmup).await.map(drop) }),
    },
    Workload {
        stack: "quinn",
        job: "call",
        what: "echo on a new stream per request",
        run: |n, warmup| Box::pin(async move { call::quinn_calls(n, warmup).await.map(drop) }),
    },
];

/// The child's side: runs `stack`'s workload for `job` with `count` messages after the warm-up,
/// on a single-threaded runtime.
pub(crate) fn run_workload(workloads: &[Workload], args: &[String]) -> Result<()> {
    let [stack, job, count] = args else {
        bail!("--instructions-workload takes STACK JOB COUNT");
    };
    let count: u64 = count.parse().context("COUNT")?;
    let workload = workloads
        .iter()
        .find(|workload| workload.stack == stack && workload.job == job)
        .ok_or_else(|| anyhow!("no workload {stack} {job}"))?;
    on_current_thread((workload.run)(count, WARMUP))
}

/// Runs `work` on a current-thread runtime of the calling thread, then gives the runtime's
/// remaining tasks a second to end.
pub(crate) fn on_current_thread<T>(work: impl Future<Output = Result<T>>) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a current-thread runtime")?;
    let done = runtime.block_on(work);
    runtime.shutdown_timeout(Duration::from_secs(1));
    done
}

/// One workload's result: instructions per message, one value per repetition.
pub(crate) struct Counted {
    pub(crate) workload: Workload,
    pub(crate) per_message: Vec<f64>,
    /// Instructions of the run with the warm-up alone (setup, warm-up and shutdown).
    pub(crate) setup: u64,
}

/// The parent's side: every workload `repeats` times, `count` messages against none, each
/// under valgrind. `None` when valgrind is not installed.
pub(crate) async fn count(
    workloads: &[Workload],
    count: u64,
    repeats: usize,
) -> Result<Option<Vec<Counted>>> {
    if std::process::Command::new("valgrind")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        return Ok(None);
    }
    let mut results = Vec::new();
    for job in JOBS {
        for workload in workloads.iter().filter(|workload| workload.job == job) {
            let mut per_message = Vec::new();
            let mut setup = 0;
            let count = count
                * if counts_messages(job) {
                    MESSAGE_FACTOR
                } else {
                    1
                };
            for _ in 0..repeats.max(1) {
                setup = instructions(workload, 0).await?;
                let with_messages = instructions(workload, count).await?;
                ensure!(
                    with_messages > setup,
                    "{} {}: {with_messages} instructions with messages, {setup} without",
                    workload.stack,
                    workload.job
                );
                per_message.push((with_messages - setup) as f64 / count.max(1) as f64);
            }
            results.push(Counted {
                workload: *workload,
                per_message,
                setup,
            });
        }
    }
    Ok(Some(results))
}

/// Instructions of one child run of `workload` with `count` messages, under cachegrind.
async fn instructions(workload: &Workload, count: u64) -> Result<u64> {
    let exe = std::env::current_exe().context("finding the bench binary")?;
    let output = tokio::process::Command::new("valgrind")
        .args([
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
        ])
        .arg(exe)
        .args(["--instructions-workload", workload.stack, workload.job])
        .arg(count.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .context("running valgrind")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "{} {} {count} under valgrind: {}\n{}",
        workload.stack,
        workload.job,
        output.status,
        stderr.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    let refs = stderr
        .lines()
        .find_map(|line| line.split_once("I   refs:").map(|(_, refs)| refs))
        .ok_or_else(|| anyhow!("no `I refs` in valgrind's output"))?;
    Ok(refs.trim().replace(',', "").parse()?)
}

/// The result table: per job, each stack's instructions per message (median of the
/// repetitions, and their spread), ferry's divided by it, and the setup run's count.
pub(crate) fn table(results: &[Counted], count: u64) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "instructions per message (valgrind cachegrind, user space, both sides; ({count} + \
         {WARMUP}) round trips or calls, ({} + {WARMUP}) messages, minus a run of the {WARMUP} \
         alone; single-threaded runtime)",
        count * MESSAGE_FACTOR
    );
    let _ = writeln!(
        out,
        "{:<11} {:<7} {:>12} {:>16} {:>14} {:>12}  what",
        "job", "stack", "instr/msg", "spread", "ferry / it", "setup"
    );
    for result in results {
        let median = super::median(&result.per_message).unwrap_or(f64::NAN);
        let (low, high) = result
            .per_message
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), value| {
                (low.min(*value), high.max(*value))
            });
        let ferry = results
            .iter()
            .find(|other| {
                other.workload.job == result.workload.job && other.workload.stack == "ferry"
            })
            .and_then(|ferry| super::median(&ferry.per_message));
        let ratio = ferry.map_or_else(|| "-".to_owned(), |ferry| format!("{:.2}", ferry / median));
        let spread = if median > 0.0 {
            format!("{:.2} %", (high - low) / median * 100.0)
        } else {
            "-".to_owned()
        };
        let _ = writeln!(
            out,
            "{:<11} {:<7} {:>12.0} {:>16} {:>14} {:>12}  {}",
            result.workload.job,
            result.workload.stack,
            median,
            spread,
            ratio,
            super::thousands(result.setup),
            result.workload.what
        );
    }
    out
}
