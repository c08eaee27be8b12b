//! `ferry run` and `ferry listen`: long-lived nodes ([`ferry_node::server`]), stopped by
//! SIGINT or SIGTERM, printing what arrives.

use anyhow::Context as _;
use ferry_node::server::{Grants, Server};
use tokio_util::sync::CancellationToken;

use crate::cli::{ListenCaps, NodeArgs};
use crate::daemon::{print_batch, read_commands, shutdown_signal};
use crate::daemon_config::DaemonConfig;

/// Runs a node until a signal, with its store, HTTP endpoint and browser gateway: prints its
/// id, listen address, inbox address and URLs, then every message to its (durable) inbox.
pub(super) async fn run(args: NodeArgs) -> anyhow::Result<()> {
    // Before anything is printed: from then on a signal must stop the node cleanly.
    let signal = shutdown_signal();
    let config = DaemonConfig::load(&args)?;
    let server = Server::start(config.server(true)).await?;
    println!("node id: {}", server.node().id());
    println!("listening on: {}", server.node().local_addr());
    println!("inbox address: {}", server.mailbox_address());
    if let Some(http) = server.http_addr() {
        println!("metrics: http://{http}/metrics");
        println!("health: http://{http}/health");
    }
    if let Some(gateway) = server.gateway_addr() {
        println!("gateway: ws://{gateway}/ws");
        if let Some(wt) = server.webtransport() {
            let note = if wt.own_port {
                " (UDP port {gateway_port} was taken: a port of its own)"
                    .replace("{gateway_port}", &gateway.port().to_string())
            } else {
                String::new()
            };
            println!("webtransport: https://{}/webtransport{note}", wt.addr);
        }
    }
    serve_until_signal(server, false, None, signal).await
}

/// Opens one mailbox, prints its address, then every message to it until a signal. With a
/// data directory (`--data`, or `data_dir`/`key_file` in the config file) the key, the mailbox
/// and its messages persist there.
///
/// `caps`: revoke grants before taking messages; print an address under a new grant instead of
/// the plain one; take `grant` / `revoke` commands on standard input while running.
pub(super) async fn listen(args: NodeArgs, json: bool, caps: ListenCaps) -> anyhow::Result<()> {
    // Before anything is printed: from then on a signal must stop the node cleanly.
    let signal = shutdown_signal();
    let config = DaemonConfig::load(&args)?;
    let server = Server::start(config.server(false)).await?;
    let grants = server.grants();
    for grant in &caps.revoke {
        grants
            .revoke(*grant)
            .await
            .with_context(|| format!("revoking grant {grant}"))?;
    }
    if caps.grant {
        let address = grants.grant(None)?;
        eprintln!("grant: {}", address.grant());
        println!("{address}");
    } else {
        println!("{}", server.mailbox_address());
    }
    serve_until_signal(server, json, caps.commands.then_some(grants), signal).await
}

/// Serves until `signal` (SIGINT or SIGTERM), printing every message (one line each, or JSON
/// lines); with `commands`, takes `grant` / `revoke` commands on standard input meanwhile.
async fn serve_until_signal(
    server: Server,
    json: bool,
    commands: Option<Grants>,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        signal.await;
        on_signal.cancel();
    });
    let serving = server.run(|batch| print_batch(batch, json), shutdown);
    match commands {
        Some(grants) => {
            let commands = async {
                read_commands(&grants).await;
                // Standard input ended: no more commands, the server runs on.
                std::future::pending::<()>().await;
            };
            tokio::select! {
                served = serving => served?,
                () = commands => {}
            }
        }
        None => serving.await?,
    }
    Ok(())
}
