//! The lab of real hosts (see LAB.md in this crate): network namespaces, NAT routers, a public
//! segment, and ferry agents running on them.
//!
//! ```text
//! cargo run --release -p ferry-interop --bin lab -- matrix [--quick] [--json PATH]
//! cargo run --release -p ferry-interop --bin lab -- nat-check
//! cargo run --release -p ferry-interop --bin lab -- bench [--quick] [--json PATH]
//! cargo run --release -p ferry-interop --bin lab -- up [--kinds home,symmetric]
//! cargo run --release -p ferry-interop --bin lab -- cleanup
//! ```
//!
//! Needs root. Builds the `agent` binary of its own profile first (when run by cargo), since
//! `cargo run --bin lab` builds only this one. Ctrl-C or SIGTERM removes the
//! lab's namespaces before exiting; a run killed harder leaves them for the next run (or
//! `cleanup`) to remove.

mod figures;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context as _, Result};
use clap::{Parser, Subcommand};
use ferry_interop::lab::matrix::{self, MatrixSettings};
use ferry_interop::lab::{nat_check, Lab, NatKind};

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "ferry's lab of real hosts: NAT kinds, the NAT matrix, figures across NATs")]
struct Cli {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Every ordered pair of NAT kinds: connected, direct or relayed, timings, losses. Exits
    /// 1 when a pair misses the goal.
    Matrix {
        /// Few messages per pair, several pairs at a time (the test command's size).
        #[arg(long)]
        quick: bool,
        /// Also write the outcomes as JSON to this file.
        #[arg(long, value_name = "PATH")]
        json: Option<PathBuf>,
        /// Messages per stream (each pair sends one, then two streams of this many).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        messages: Option<u64>,
        /// Pairs run at the same time (each its own lab and three agents).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=25))]
        jobs: Option<u16>,
        /// Only these kinds (comma-separated: none, full-cone, home, symmetric, two-layers).
        #[arg(long, value_name = "KINDS", value_delimiter = ',')]
        kinds: Vec<NatKind>,
        /// Keep each failed pair's agent logs and router state here (`DIR/<kind>-<kind>/`).
        #[arg(long, value_name = "DIR")]
        logs: Option<PathBuf>,
    },
    /// Measures each NAT kind with plain UDP sockets and prints what it does.
    NatCheck,
    /// Figures across NATs: direct vs relayed round trip and throughput, time to a direct
    /// connection, resume time after outages. Nothing passes or fails on speed.
    Bench(figures::BenchArgs),
    /// Builds a public host and a host behind each kind, prints their namespaces and
    /// addresses, then waits until standard input closes (or a signal): a lab to explore by
    /// hand with `ip netns exec NAMESPACE …`.
    Up {
        /// The kinds, comma-separated.
        #[arg(
            long,
            value_name = "KINDS",
            value_delimiter = ',',
            default_value = "none,full-cone,home,symmetric,two-layers"
        )]
        kinds: Vec<NatKind>,
    },
    /// Removes the namespaces of lab runs that no longer run.
    Cleanup,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    tear_down_on_signal()?;
    match cli.command {
        LabCommand::Matrix {
            quick,
            json,
            messages,
            jobs,
            kinds,
            logs,
        } => {
            let agent = sibling_binaries()?.agent;
            let mut settings = if quick {
                MatrixSettings::quick(agent)
            } else {
                MatrixSettings::full(agent)
            };
            if let Some(messages) = messages {
                settings.messages = messages;
            }
            if let Some(jobs) = jobs {
                settings.jobs = usize::from(jobs);
            }
            if !kinds.is_empty() {
                settings.kinds = kinds;
            }
            settings.logs = logs;
            let outcomes = matrix::run(&settings, |outcome| {
                eprintln!(
                    "{} -> {}: {}",
                    outcome.from,
                    outcome.to,
                    outcome
                        .goal_miss()
                        .unwrap_or_else(|| "meets the goal".to_string())
                );
            });
            print!("{}", matrix::table(&outcomes));
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&outcomes)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            let misses: Vec<String> = outcomes.iter().filter_map(|o| o.goal_miss()).collect();
            if !misses.is_empty() {
                bail!(
                    "{} pairs miss the goal:\n{}",
                    misses.len(),
                    misses.join("\n")
                );
            }
        }
        LabCommand::NatCheck => {
            let mut wrong = 0;
            println!(
                "{:<11} {:<24} {:<24} {:<22} {:<22}  seen by the observers",
                "kind", "mapping", "filtering", "local", "public address"
            );
            for kind in NatKind::ALL {
                let behaviour = nat_check::check(kind)?;
                let ok = (behaviour.mapping, behaviour.filtering) == kind.claimed();
                wrong += usize::from(!ok);
                println!(
                    "{:<11} {:<24} {:<24} {:<22} {:<22}  {} {} {}{}",
                    kind.name(),
                    format!("{:?}", behaviour.mapping),
                    format!("{:?}", behaviour.filtering),
                    behaviour.local,
                    behaviour.public_address,
                    behaviour.seen[0],
                    behaviour.seen[1],
                    behaviour.seen[2],
                    if ok { "" } else { "  NOT AS CLAIMED" }
                );
            }
            ensure!(wrong == 0, "{wrong} kinds do not behave as claimed");
        }
        LabCommand::Bench(args) => figures::run(&args, &sibling_binaries()?)?,
        LabCommand::Up { kinds } => {
            let mut lab = Lab::new()?;
            let public = lab.add_public_host("public")?;
            let mut hosts = vec![public];
            for kind in kinds {
                hosts.push(lab.add_host_behind(kind.name(), kind)?);
            }
            for id in hosts {
                let host = lab.host(id)?;
                println!(
                    "host {} namespace {} address {} public {}",
                    host.name(),
                    host.namespace().name(),
                    host.address(),
                    lab.public_address(id)?
                );
            }
            println!("ready {}", lab.prefix());
            // Until standard input closes: the lab lives as long as whoever started it wants.
            std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())?;
        }
        LabCommand::Cleanup => {
            let removed = ferry_interop::lab::remove_stale()?;
            println!("removed {} namespaces", removed.len());
            for name in removed {
                println!("  {name}");
            }
        }
    }
    Ok(())
}

/// Removes the lab's namespaces on Ctrl-C or SIGTERM, then exits (130 or 143).
fn tear_down_on_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Registered here, before any namespace exists.
    let (mut interrupt, mut terminate) = {
        let _context = runtime.enter();
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        )
    };
    std::thread::Builder::new()
        .name("signals".to_string())
        .spawn(move || {
            let code = runtime.block_on(async {
                tokio::select! {
                    _ = interrupt.recv() => 130,
                    _ = terminate.recv() => 143,
                }
            });
            eprintln!("lab: interrupted; removing the lab's namespaces");
            ferry_interop::lab::tear_down_all();
            std::process::exit(code);
        })?;
    Ok(())
}

/// The programs the lab runs on its hosts.
pub(crate) struct Binaries {
    /// The SDK agent (`src/bin/agent.rs`).
    pub(crate) agent: PathBuf,
}

/// The `agent` binary next to this one, built first when cargo runs this one (`cargo run
/// --bin lab` builds only the lab).
fn sibling_binaries() -> Result<Binaries> {
    let exe = std::env::current_exe().context("finding the lab binary")?;
    let dir = exe.parent().context("the lab binary's directory")?;
    if let Some(cargo) = std::env::var_os("CARGO") {
        build_siblings(Path::new(&cargo), dir)?;
    }
    let agent = dir.join("agent");
    ensure!(
        agent.exists(),
        "{} is missing: build it with `cargo build -p ferry-interop --bin agent` in the profile \
         of this binary",
        agent.display()
    );
    Ok(Binaries { agent })
}

fn build_siblings(cargo: &Path, dir: &Path) -> Result<()> {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let mut command = Command::new(cargo);
    command.args([
        "build",
        "--manifest-path",
        manifest,
        "-p",
        "ferry-interop",
        "--bin",
        "agent",
    ]);
    match dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            command.arg("--release");
        }
        Some(profile) => {
            command.args(["--profile", profile]);
        }
    }
    let status = command.status().context("running cargo build")?;
    ensure!(
        status.success(),
        "building the agent and ferry binaries failed"
    );
    Ok(())
}
