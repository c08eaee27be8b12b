//! The GenBrowser playground on ferry: a node with its browser gateway serving a pinger and a
//! ponger page, a Rust ponger mailbox that answers browsers' pings, a Rust service browsers
//! call, a logger (the node's inbox, printed here), and a files page that uploads a file to a
//! Rust service counting and hashing its bytes and downloads one back, with progress bars
//! (data streams over WebTransport, docs/GATEWAY.md §13.11; the service is
//! `ferry_testkit::files`).
//!
//! ```sh
//! cargo run -p ferry-node --example playground -- [--port 8080] [--smoke]
//! # then open http://127.0.0.1:8080/ponger.html and http://127.0.0.1:8080/pinger.html,
//! # and http://127.0.0.1:8080/files.html (WebTransport: on UDP at the same port)
//! ```
//!
//! `--smoke` starts everything, checks that the pages and the JS client are served, and exits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use ferry::{Node, NodeConfig, SecretKey, ServiceOptions};
use ferry_node::gateway::webtransport::{
    Certificates, SystemClock, WebTransport, WebTransportConfig,
};
use ferry_node::gateway::{self, GatewayConfig, NoHooks};
use ferry_node::store::{RedbStore, StoreConfig};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let port: u16 = args
        .iter()
        .position(|a| a == "--port")
        .and_then(|i| args.get(i + 1))
        .map(|p| p.parse())
        .transpose()
        .context("--port takes a number")?
        .unwrap_or(if smoke { 0 } else { 8080 });

    let data = tempfile::tempdir()?;
    let store = Arc::new(RedbStore::open(
        &data.path().join("store.redb"),
        StoreConfig::default(),
    )?);
    let node = Node::bind(SecretKey::generate(), NodeConfig::default()).await?;

    // The Rust ponger: answers every message with a pong, to its sender.
    let ponger = node.mailbox();
    let replying = node.clone();
    ponger.set_handler(move |message| {
        let node = replying.clone();
        async move {
            println!("ponger: {}", String::from_utf8_lossy(message.payload()));
            let pong = gateway::json_payload(&json!({"type": "pong", "from": "rust"}));
            if let Err(error) = node.send_bytes(message.from(), pong).await {
                println!("ponger: reply failed: {error}");
            }
        }
    })?;
    // A service browsers call: JSON text in, JSON text out.
    let _shout = node.serve(
        "shout",
        ServiceOptions::default(),
        |mut conversation| async move {
            if let Ok(request) = conversation.recv_obj::<String>().await {
                let text: String = serde_json::from_str(&request).unwrap_or(request);
                let reply = json!({ "shouted": text.to_uppercase() }).to_string();
                let _ = conversation.reply(&reply).await;
            }
        },
    )?;

    // The files service of files.html: counts and hashes uploads, sends downloads.
    let _files = ferry_testkit::files::serve(&node, "files", None);

    let pages = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/playground");
    let config = GatewayConfig {
        static_dir: Some(pages),
        client_config: json!({
            "logger": node.inbox().address().to_string(),
            "ponger": ponger.address().to_string(),
            "shout": format!("{}/shout", node.id()),
            "files": format!("{}/files", node.id()),
        }),
        ..GatewayConfig::default()
    };
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let gateway = gateway::Gateway::new(node.clone(), store.clone(), config, Arc::new(NoHooks))?;
    // WebTransport on UDP at the same port number (the pages' origin is then its authority).
    let certificates = Certificates::self_signed(
        vec!["localhost".into(), "127.0.0.1".into()],
        Arc::new(SystemClock),
    )?;
    match WebTransport::bind(addr, Arc::new(certificates), WebTransportConfig::default()) {
        Ok(endpoint) => {
            tokio::spawn(gateway.serve_webtransport(endpoint, shutdown.clone()));
        }
        Err(error) => println!("playground: no WebTransport ({error}): files.html will not work"),
    }
    let serving = tokio::spawn(gateway.serve(listener, shutdown.clone()));
    println!("playground: http://{addr}/  (pinger.html, ponger.html, files.html)");

    if smoke {
        for path in [
            "/ponger.html",
            "/pinger.html",
            "/files.html",
            "/ferry.js",
            "/webtransport",
        ] {
            let body = get(addr, path).await?;
            anyhow::ensure!(body.starts_with("HTTP/1.1 200"), "{path}: {body}");
        }
        node.send_bytes(ponger.address(), Bytes::from_static(br#"{"type":"ping"}"#))
            .await?;
        let pong = node.inbox().recv_timeout(Duration::from_secs(10)).await?;
        println!("smoke: {}", String::from_utf8_lossy(pong.payload()));
    } else {
        // The logger: what browsers send to `client.config.logger`.
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                message = node.inbox().recv() => match message {
                    Ok(message) => println!("logger: {}", String::from_utf8_lossy(message.payload())),
                    Err(_) => break,
                },
            }
        }
    }
    shutdown.cancel();
    serving.await??;
    node.shutdown(Duration::from_secs(1)).await;
    store.close();
    Ok(())
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}
