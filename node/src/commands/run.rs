//! `ferry run` and `ferry listen`: long-lived nodes.

use crate::cli::NodeArgs;
use crate::daemon::Daemon;
use crate::daemon_config::DaemonConfig;

/// Runs a node until a signal, with its store, HTTP endpoint and browser gateway: prints its
/// id, listen address, inbox address and URLs, then every message to its (durable) inbox.
pub(super) async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let config = DaemonConfig::load(&args)?;
    let mut daemon = Daemon::start(&config, true).await?;
    let inbox = daemon.mailbox("inbox")?;
    let gateway = match &config.gateway {
        Some((addr, gateway)) => Some(
            daemon
                .serve_gateway(*addr, gateway.clone(), inbox.address())
                .await?,
        ),
        None => None,
    };
    let http = daemon.serve_http(config.http).await?;
    println!("node id: {}", daemon.node.id());
    println!("listening on: {}", daemon.node.local_addr());
    println!("inbox address: {}", inbox.address());
    println!("metrics: http://{http}/metrics");
    println!("health: http://{http}/health");
    if let Some(gateway) = gateway {
        println!("gateway: ws://{gateway}/ws");
    }
    daemon.receive_until_signal(inbox, false, &config).await
}

/// Opens one mailbox, prints its address, then every message to it until a signal. With a
/// data directory (`--data`, or `data_dir`/`key_file` in the config file) the key, the mailbox
/// and its messages persist there.
pub(super) async fn listen(args: NodeArgs, json: bool) -> anyhow::Result<()> {
    let config = DaemonConfig::load(&args)?;
    let daemon = Daemon::start(&config, false).await?;
    let mailbox = daemon.mailbox("listen")?;
    println!("{}", mailbox.address());
    daemon.receive_until_signal(mailbox, json, &config).await
}
