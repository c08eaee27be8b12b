//! `ferry run` and `ferry listen`: long-lived nodes ([`ferry_node::server`]), stopped by
//! SIGINT or SIGTERM, printing what arrives.

use ferry_node::server::Server;
use tokio_util::sync::CancellationToken;

use crate::cli::NodeArgs;
use crate::daemon::{print_batch, shutdown_signal};
use crate::daemon_config::DaemonConfig;

/// Runs a node until a signal, with its store, HTTP endpoint and browser gateway: prints its
/// id, listen address, inbox address and URLs, then every message to its (durable) inbox.
pub(super) async fn run(args: NodeArgs) -> anyhow::Result<()> {
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
    serve_until_signal(server, false).await
}

/// Opens one mailbox, prints its address, then every message to it until a signal. With a
/// data directory (`--data`, or `data_dir`/`key_file` in the config file) the key, the mailbox
/// and its messages persist there.
pub(super) async fn listen(args: NodeArgs, json: bool) -> anyhow::Result<()> {
    let config = DaemonConfig::load(&args)?;
    let server = Server::start(config.server(false)).await?;
    println!("{}", server.mailbox_address());
    serve_until_signal(server, json).await
}

/// Serves until SIGINT or SIGTERM, printing every message (one line each, or JSON lines).
async fn serve_until_signal(server: Server, json: bool) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        on_signal.cancel();
    });
    server
        .run(|batch| print_batch(batch, json), shutdown)
        .await?;
    Ok(())
}
