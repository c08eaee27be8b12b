//! Scratch probe.
// Scratch (not committed): heap of the sending side of 1000 idle conversations.
use std::time::Duration;
use bytes::Bytes;
use ferry::{Address, Node, NodeConfig, SecretKey};
use tokio::io::AsyncBufReadExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("hub") {
        let config = NodeConfig { handshake_rate_per_ip: 0, ..NodeConfig::default() };
        let node = Node::bind(SecretKey::generate(), config).await?;
        let mailbox = node.mailbox();
        println!("{}", mailbox.address());
        tokio::spawn(async move { while mailbox.recv().await.is_ok() {} });
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while lines.next_line().await?.is_some() {}
        eprintln!("hub streams {}", node.stats().streams_in);
        std::process::exit(0);
    }
    let m: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let hub_under = std::env::var("HUB_DHAT").ok();
    let mut command = match &hub_under {
        Some(out) => {
            let mut c = tokio::process::Command::new("valgrind");
            c.arg("--tool=dhat").arg(format!("--dhat-out-file={out}")).arg(&args[0]);
            c
        }
        None => tokio::process::Command::new(&args[0]),
    };
    let mut child = command.arg("hub")
        .stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn()?;
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let address: Address = out.next_line().await?.unwrap().parse().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let node = Node::bind(SecretKey::generate(), NodeConfig::default()).await?;
    node.connect(address.node(), address.hints().first().copied()).await?;
    let mut conversations = Vec::new();
    for _ in 0..m {
        let mailbox = node.mailbox();
        let sender = mailbox.sender(&address)?;
        sender.send_bytes(Bytes::from_static(&[7u8; 64])).await?;
        conversations.push((mailbox, sender));
    }
    while node.stats().parked_conversations < m { tokio::time::sleep(Duration::from_millis(50)).await; }
    tokio::time::sleep(Duration::from_millis(300)).await;
    eprintln!("parked {}", node.stats().parked_conversations);
    if hub_under.is_some() {
        drop(child.stdin.take());
        child.wait().await?;
    }
    std::process::exit(0);
}
