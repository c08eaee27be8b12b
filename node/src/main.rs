//! The `ferry` command-line tool and daemon.
//!
//! `cli` holds the clap types, `config` the TOML config file, `daemon` the long-lived node of
//! `run`/`listen`, `commands` one module per command group, `exit` the exit codes,
//! `udp_port` the UDP port a node with a data directory keeps across restarts.

mod cli;
mod commands;
mod daemon;
mod daemon_config;
mod exit;
mod udp_port;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    commands::run(cli::Cli::parse()).await
}
