//! The `ferry` command-line tool and daemon.
//!
//! `cli` holds the clap types, `daemon_config` lays the flags over the config file (read by
//! `ferry_node::config`), `daemon` the signals and printing around `ferry_node::server` (the
//! long-lived node of `run`/`listen`), `commands` one module per command group, `exit` the
//! exit codes.

mod cli;
mod commands;
mod daemon;
mod daemon_config;
mod exit;

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
