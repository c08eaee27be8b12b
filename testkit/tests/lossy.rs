//! Tests of the lossy link utility with plain UDP sockets (no QUIC).

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use ferry_testkit::lossy::{LinkConfig, LinkError, LinkStats, LossyLink};
use ferry_testkit::wait::{wait_for_ok, wait_for_within};
use tokio::net::UdpSocket;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::task::AbortOnDropHandle;

const LOCALHOST: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// A UDP echo server that also records the source addresses it saw.
struct Echo {
    addr: SocketAddr,
    sources: Arc<Mutex<HashSet<SocketAddr>>>,
    _task: AbortOnDropHandle<()>,
}

async fn echo_server() -> Result<Echo> {
    let socket = UdpSocket::bind(LOCALHOST).await?;
    let addr = socket.local_addr()?;
    let sources = Arc::new(Mutex::new(HashSet::new()));
    let seen = Arc::clone(&sources);
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                continue;
            };
            locked(&seen).insert(from);
            let _ = socket.send_to(&buf[..len], from).await;
        }
    });
    Ok(Echo {
        addr,
        sources,
        _task: AbortOnDropHandle::new(task),
    })
}

/// A UDP server that records the sequence numbers (first 4 bytes) and the
/// byte count of everything it receives.
struct Sink {
    addr: SocketAddr,
    seqs: Arc<Mutex<Vec<u32>>>,
    bytes: Arc<AtomicU64>,
    _task: AbortOnDropHandle<()>,
}

impl Sink {
    fn packets(&self) -> u64 {
        locked(&self.seqs).len() as u64
    }
}

async fn sink_server() -> Result<Sink> {
    let socket = UdpSocket::bind(LOCALHOST).await?;
    let addr = socket.local_addr()?;
    let seqs = Arc::new(Mutex::new(Vec::new()));
    let bytes = Arc::new(AtomicU64::new(0));
    let (task_seqs, task_bytes) = (Arc::clone(&seqs), Arc::clone(&bytes));
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok(len) = socket.recv(&mut buf).await else {
                continue;
            };
            let seq = seq_of(&buf[..len]);
            locked(&task_seqs).push(seq);
            task_bytes.fetch_add(len as u64, Ordering::Relaxed);
        }
    });
    Ok(Sink {
        addr,
        seqs,
        bytes,
        _task: AbortOnDropHandle::new(task),
    })
}

async fn client_of(link: &LossyLink) -> Result<UdpSocket> {
    let socket = UdpSocket::bind(LOCALHOST).await?;
    socket.connect(link.local_addr()).await?;
    Ok(socket)
}

fn packet(seq: u32, len: usize) -> Vec<u8> {
    let mut data = vec![0xAB; len.max(4)];
    data[..4].copy_from_slice(&seq.to_be_bytes());
    data
}

/// The sequence number in the first 4 bytes (`u32::MAX` if too short).
fn seq_of(data: &[u8]) -> u32 {
    match data {
        [a, b, c, d, ..] => u32::from_be_bytes([*a, *b, *c, *d]),
        _ => u32::MAX,
    }
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sends `count` packets of `len` bytes one way through `link` to `sink`, in
/// bursts of 50, waiting after each burst until the link has handled every
/// packet and the sink has received everything the link forwarded, so that
/// no socket buffer overflows and every loss is the link's doing.
async fn send_lockstep(
    client: &UdpSocket,
    link: &LossyLink,
    sink: &Sink,
    count: u32,
    len: usize,
) -> Result<()> {
    let mut sent = 0;
    while sent < count {
        let burst_end = (sent + 50).min(count);
        for seq in sent..burst_end {
            client.send(&packet(seq, len)).await?;
        }
        sent = burst_end;
        let what = format!("lockstep after {sent} packets");
        wait_for_within(&what, Duration::from_secs(5), || {
            let up = link.stats().upstream;
            up.received == u64::from(sent)
                && up.forwarded + up.dropped == up.received + up.duplicated
                && sink.packets() == up.forwarded
        })
        .await;
    }
    Ok(())
}

/// One echo round trip; `None` if no reply arrives within `limit`.
async fn ping(client: &UdpSocket, seq: u32, limit: Duration) -> Result<Option<Duration>> {
    let start = Instant::now();
    client.send(&packet(seq, 32)).await?;
    let mut buf = [0u8; 2048];
    let deadline = start + limit;
    loop {
        match tokio::time::timeout_at(deadline, client.recv(&mut buf)).await {
            Err(_elapsed) => return Ok(None),
            Ok(received) => {
                let len = received?;
                if seq_of(&buf[..len]) == seq {
                    return Ok(Some(start.elapsed()));
                }
            }
        }
    }
}

fn inversions(seqs: &[u32]) -> usize {
    seqs.windows(2).filter(|pair| pair[1] < pair[0]).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perfect_link_echoes_everything_in_order() -> Result<()> {
    let echo = echo_server().await?;
    let link = LossyLink::start(LinkConfig::default(), echo.addr).await?;
    let client = client_of(&link).await?;

    const TOTAL: u32 = 3000;
    const WINDOW: u32 = 64;
    let (mut next_send, mut next_expected) = (0u32, 0u32);
    let mut buf = [0u8; 2048];
    while next_expected < TOTAL {
        while next_send < TOTAL && next_send - next_expected < WINDOW {
            client.send(&packet(next_send, 100)).await?;
            next_send += 1;
        }
        let len = timeout(Duration::from_secs(2), client.recv(&mut buf))
            .await
            .with_context(|| format!("waiting for echo {next_expected}"))??;
        assert_eq!(len, 100);
        assert_eq!(seq_of(&buf[..len]), next_expected, "out of order");
        next_expected += 1;
    }

    wait_for_within(
        "every packet forwarded downstream",
        Duration::from_secs(2),
        || link.stats().downstream.forwarded == u64::from(TOTAL),
    )
    .await;
    let stats = link.stats();
    assert_eq!(stats.upstream.received, u64::from(TOTAL));
    assert_eq!(stats.upstream.forwarded, u64::from(TOTAL));
    assert_eq!(stats.upstream.forwarded_bytes, u64::from(TOTAL) * 100);
    assert_eq!(stats.upstream.dropped, 0);
    assert_eq!(stats.downstream.dropped, 0);
    assert_eq!(stats.upstream.duplicated + stats.downstream.duplicated, 0);
    assert_eq!(stats.clients, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_get_distinct_upstream_sources_and_their_own_replies() -> Result<()> {
    let echo = echo_server().await?;
    let link = LossyLink::start(LinkConfig::default(), echo.addr).await?;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(client_of(&link).await?);
    }
    for round in 0..20u32 {
        for (id, client) in clients.iter().enumerate() {
            let seq = round * 10 + id as u32;
            let rtt = ping(client, seq, Duration::from_secs(2)).await?;
            ensure!(rtt.is_some(), "client {id} got no reply to {seq}");
        }
    }
    let sources = locked(&echo.sources).clone();
    assert_eq!(sources.len(), 3, "server should see one source per client");
    assert!(!sources.contains(&link.local_addr()));
    assert_eq!(link.stats().clients, 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_limit_rejects_then_reclaims_idle_clients() -> Result<()> {
    let echo = echo_server().await?;
    let config = LinkConfig {
        max_clients: 2,
        client_idle_timeout: Duration::from_secs(60),
        ..LinkConfig::default()
    };
    let link = LossyLink::start(config.clone(), echo.addr).await?;
    let (a, b, c) = (
        client_of(&link).await?,
        client_of(&link).await?,
        client_of(&link).await?,
    );
    let limit = Duration::from_secs(2);
    assert!(ping(&a, 1, limit).await?.is_some());
    assert!(ping(&b, 2, limit).await?.is_some());
    assert!(ping(&c, 3, Duration::from_millis(300)).await?.is_none());
    assert_eq!(link.stats().clients, 2);
    assert_eq!(link.stats().upstream.dropped, 1);

    link.set_config(LinkConfig {
        client_idle_timeout: Duration::from_millis(50),
        ..config
    })?;
    // The link reclaims idle clients when a new one needs room: `c` is admitted once `a` and
    // `b` have been idle for 50 ms.
    wait_for_ok("c admitted, the idle clients reclaimed", || async {
        ping(&c, 4, Duration::from_millis(300))
            .await?
            .ok_or_else(|| anyhow::anyhow!("c's ping dropped"))
    })
    .await;
    assert!(link.stats().clients <= 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_loss_drops_the_configured_fraction() -> Result<()> {
    let sink = sink_server().await?;
    let config = LinkConfig {
        loss: 0.3,
        seed: Some(0x5EED),
        ..LinkConfig::default()
    };
    let link = LossyLink::start(config, sink.addr).await?;
    let client = client_of(&link).await?;

    const TOTAL: u32 = 5000;
    send_lockstep(&client, &link, &sink, TOTAL, 64).await?;
    let delivered = sink.packets();
    let drop_fraction = 1.0 - delivered as f64 / f64::from(TOTAL);
    println!("loss 0.3: delivered {delivered}/{TOTAL}, drop fraction {drop_fraction:.4}");
    assert!(
        (drop_fraction - 0.3).abs() < 0.03,
        "drop fraction {drop_fraction}"
    );
    let up = link.stats().upstream;
    assert_eq!(up.dropped, u64::from(TOTAL) - delivered);
    assert_eq!(up.dropped_queue_full, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_gives_same_losses() -> Result<()> {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let sink = sink_server().await?;
        let config = LinkConfig {
            loss: 0.5,
            seed: Some(99),
            ..LinkConfig::default()
        };
        let link = LossyLink::start(config, sink.addr).await?;
        let client = client_of(&link).await?;
        send_lockstep(&client, &link, &sink, 500, 16).await?;
        runs.push(locked(&sink.seqs).clone());
    }
    assert_eq!(runs[0], runs[1]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_adds_to_the_round_trip() -> Result<()> {
    let echo = echo_server().await?;
    let delay = Duration::from_millis(40);
    let link = LossyLink::start(
        LinkConfig {
            delay,
            ..LinkConfig::default()
        },
        echo.addr,
    )
    .await?;
    let client = client_of(&link).await?;
    for seq in 0..5 {
        let rtt = ping(&client, seq, Duration::from_secs(3))
            .await?
            .context("no reply")?;
        println!("delay {delay:?}: rtt {rtt:?}");
        assert!(rtt >= 2 * delay, "rtt {rtt:?} shorter than twice {delay:?}");
        assert!(rtt < 2 * delay + Duration::from_secs(1), "rtt {rtt:?}");
    }

    // Removing the delay takes effect live.
    link.set_config(LinkConfig::default())?;
    let rtt = ping(&client, 100, Duration::from_secs(3))
        .await?
        .context("no reply")?;
    assert!(rtt < Duration::from_secs(1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_delivered() -> Result<()> {
    let sink = sink_server().await?;
    let config = LinkConfig {
        duplicate: 0.25,
        seed: Some(7),
        ..LinkConfig::default()
    };
    let link = LossyLink::start(config, sink.addr).await?;
    let client = client_of(&link).await?;

    const TOTAL: u32 = 2000;
    send_lockstep(&client, &link, &sink, TOTAL, 64).await?;
    let delivered = sink.packets();
    let up = link.stats().upstream;
    println!("duplicate 0.25: delivered {delivered} for {TOTAL} sent, {up:?}");
    assert_eq!(delivered, u64::from(TOTAL) + up.duplicated);
    let fraction = up.duplicated as f64 / f64::from(TOTAL);
    assert!(
        (fraction - 0.25).abs() < 0.04,
        "duplicate fraction {fraction}"
    );
    // Every sequence number arrived at least once.
    let unique: HashSet<u32> = locked(&sink.seqs).iter().copied().collect();
    assert_eq!(unique.len(), TOTAL as usize);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitter_and_reorder_reorder_packets_without_losing_them() -> Result<()> {
    for config in [
        LinkConfig {
            jitter: Duration::from_millis(20),
            seed: Some(1),
            ..LinkConfig::default()
        },
        LinkConfig {
            reorder: 0.2,
            reorder_delay: Duration::from_millis(20),
            seed: Some(2),
            ..LinkConfig::default()
        },
    ] {
        let sink = sink_server().await?;
        let link = LossyLink::start(config.clone(), sink.addr).await?;
        let client = client_of(&link).await?;
        const TOTAL: u32 = 300;
        for seq in 0..TOTAL {
            client.send(&packet(seq, 32)).await?;
            if seq % 10 == 9 {
                // Paced in real time so that the sockets' buffers never overflow: the
                // losses counted are the link's own.
                sleep(Duration::from_millis(1)).await;
            }
        }
        wait_for_within("every packet at the sink", Duration::from_secs(3), || {
            sink.packets() == u64::from(TOTAL)
        })
        .await;
        let seqs = locked(&sink.seqs).clone();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..TOTAL).collect::<Vec<_>>());
        let inversions = inversions(&seqs);
        println!("{config:?}: {inversions} inversions");
        assert!(inversions > 0, "expected reordering with {config:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_drops_everything_until_healed() -> Result<()> {
    let echo = echo_server().await?;
    let link = LossyLink::start(LinkConfig::default(), echo.addr).await?;
    let client = client_of(&link).await?;
    assert!(ping(&client, 0, Duration::from_secs(2)).await?.is_some());

    link.partition(true);
    assert!(link.is_partitioned());
    for seq in 1..=20 {
        client.send(&packet(seq, 32)).await?;
    }
    assert!(ping(&client, 21, Duration::from_millis(300))
        .await?
        .is_none());
    wait_for_within(
        "21 packets dropped upstream",
        Duration::from_secs(2),
        || link.stats().upstream.dropped == 21,
    )
    .await;
    assert_eq!(link.stats().upstream.forwarded, 1);

    link.partition(false);
    assert!(ping(&client, 22, Duration::from_secs(2)).await?.is_some());

    // Packets waiting in the delay line when they come due during a
    // partition are dropped too.
    link.set_config(LinkConfig {
        delay: Duration::from_millis(100),
        ..LinkConfig::default()
    })?;
    for seq in 30..40 {
        client.send(&packet(seq, 32)).await?;
    }
    wait_for_within(
        "33 packets received upstream",
        Duration::from_secs(2),
        || link.stats().upstream.received == 33,
    )
    .await;
    link.partition(true);
    let before = link.stats().upstream;
    wait_for_within(
        "the 10 delayed packets dropped at the partition",
        Duration::from_secs(2),
        || link.stats().upstream.dropped >= before.dropped + 10,
    )
    .await;
    link.partition(false);
    let after = link.stats().upstream;
    assert_eq!(
        after.forwarded, before.forwarded,
        "packets survived the partition"
    );
    assert_eq!(after.dropped, before.dropped + 10);
    assert!(ping(&client, 40, Duration::from_secs(2)).await?.is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_cap_limits_throughput() -> Result<()> {
    let sink = sink_server().await?;
    const RATE: u64 = 250_000;
    let config = LinkConfig {
        bandwidth: Some(RATE),
        queue_limit_bytes: 32 * 1024,
        ..LinkConfig::default()
    };
    let link = LossyLink::start(config, sink.addr).await?;
    let client = client_of(&link).await?;

    // Offer about 2 MB/s (8x the cap) for one second.
    let start = Instant::now();
    let mut seq = 0;
    while start.elapsed() < Duration::from_secs(1) {
        for _ in 0..20 {
            client.send(&packet(seq, 1000)).await?;
            seq += 1;
        }
        // Real time is under test: an offered rate (bytes per second) against the cap.
        sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start.elapsed();
    let delivered = sink.bytes.load(Ordering::Relaxed);
    let throughput = delivered as f64 / elapsed.as_secs_f64();
    let stats: LinkStats = link.stats();
    println!(
        "bandwidth {RATE} B/s: {delivered} bytes in {elapsed:?} = {throughput:.0} B/s, offered {} packets, {:?}",
        seq, stats.upstream
    );
    assert!(
        throughput <= RATE as f64 * 1.25,
        "throughput {throughput:.0} B/s above the cap"
    );
    assert!(
        throughput >= RATE as f64 * 0.5,
        "throughput {throughput:.0} B/s far below the cap"
    );
    assert!(
        stats.upstream.dropped_queue_full > 0,
        "queue never overflowed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_rejected() -> Result<()> {
    let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
    let cases = [
        LinkConfig {
            loss: 1.5,
            ..LinkConfig::default()
        },
        LinkConfig {
            loss: f64::NAN,
            ..LinkConfig::default()
        },
        LinkConfig {
            duplicate: -0.1,
            ..LinkConfig::default()
        },
        LinkConfig {
            reorder: f64::INFINITY,
            ..LinkConfig::default()
        },
        LinkConfig {
            bandwidth: Some(0),
            ..LinkConfig::default()
        },
        LinkConfig {
            queue_limit_bytes: 0,
            ..LinkConfig::default()
        },
        LinkConfig {
            max_clients: 0,
            ..LinkConfig::default()
        },
        LinkConfig {
            delay: Duration::MAX,
            ..LinkConfig::default()
        },
    ];
    for config in &cases {
        let err = LossyLink::start(config.clone(), upstream)
            .await
            .expect_err("invalid config accepted");
        println!("{err}");
    }
    assert!(matches!(
        LossyLink::start(cases[0].clone(), upstream).await,
        Err(LinkError::InvalidFraction { field: "loss", .. })
    ));
    assert!(matches!(
        LossyLink::start(cases[2].clone(), upstream).await,
        Err(LinkError::InvalidFraction {
            field: "duplicate",
            ..
        })
    ));
    assert!(matches!(
        LossyLink::start(cases[4].clone(), upstream).await,
        Err(LinkError::ZeroBandwidth)
    ));
    assert!(matches!(
        LossyLink::start(cases[7].clone(), upstream).await,
        Err(LinkError::DelayTooLong { field: "delay", .. })
    ));

    // `set_config` rejects them too and keeps the current configuration.
    let good = LinkConfig {
        loss: 0.1,
        ..LinkConfig::default()
    };
    let link = LossyLink::start(good.clone(), upstream).await?;
    for config in cases {
        assert!(link.set_config(config).is_err());
    }
    assert_eq!(link.config(), good);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_and_drop_release_the_socket() -> Result<()> {
    let echo = echo_server().await?;
    let link = LossyLink::start(LinkConfig::default(), echo.addr).await?;
    let client = client_of(&link).await?;
    assert!(ping(&client, 0, Duration::from_secs(2)).await?.is_some());
    let addr = link.local_addr();
    link.shutdown().await;
    // The port is free again right away.
    drop(UdpSocket::bind(addr).await?);

    let link = LossyLink::start(
        LinkConfig {
            delay: Duration::from_millis(10),
            ..LinkConfig::default()
        },
        echo.addr,
    )
    .await?;
    let client = client_of(&link).await?;
    assert!(ping(&client, 1, Duration::from_secs(2)).await?.is_some());
    let addr = link.local_addr();
    drop(link);
    wait_for_ok("the link's socket to close after the drop", || {
        UdpSocket::bind(addr)
    })
    .await;
    Ok(())
}
