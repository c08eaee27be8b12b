//! Two nodes in one process: the pinger sends to the ponger's address, the ponger answers to
//! the message's `from` address, and the pinger prints the round-trip times.
//!
//! ```text
//! cargo run --example ping_pong -- [ROUNDS]
//! ```

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use ferry::{Node, NodeConfig, SecretKey};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
enum Ball {
    Ping(u32),
    Pong(u32),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rounds: u32 = match std::env::args().nth(1) {
        Some(text) => text.parse().context("ROUNDS must be a number")?,
        None => 5,
    };
    let pinger = Node::bind(SecretKey::generate(), NodeConfig::default()).await?;
    let ponger = Node::bind(SecretKey::generate(), NodeConfig::default()).await?;

    let court = ponger.mailbox();
    court.set_handler({
        let ponger = ponger.clone();
        move |message| {
            let ponger = ponger.clone();
            async move {
                if let Ok(Ball::Ping(n)) = message.decode() {
                    if let Err(error) = ponger.send(message.from(), &Ball::Pong(n)).await {
                        eprintln!("ponger could not answer: {error}");
                    }
                }
            }
        }
    })?;
    // The address is all the pinger needs: it carries the ponger's dial hints.
    let address: ferry::Address = court.address().to_string().parse()?;
    println!(
        "ponger {} listening at {}",
        ponger.id(),
        ponger.local_addr()
    );

    let mut times = Vec::new();
    for n in 0..rounds {
        let started = Instant::now();
        pinger.send(&address, &Ball::Ping(n)).await?;
        let reply = pinger.inbox().recv_timeout(Duration::from_secs(5)).await?;
        let elapsed = started.elapsed();
        match reply.decode::<Ball>()? {
            Ball::Pong(m) => ensure!(m == n, "pong {m} answers ping {n}"),
            Ball::Ping(_) => anyhow::bail!("the ponger sent a ping"),
        }
        println!("ping {n}: round trip {:?}", elapsed);
        times.push(elapsed);
    }
    times.sort();
    if let Some(median) = times.get(times.len() / 2) {
        println!("{rounds} rounds, median round trip {median:?}");
    }
    pinger.shutdown(Duration::from_secs(1)).await;
    ponger.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
