//! Browsers over WebTransport beside WebSocket (issue 14, points 6b and 7): a page in headless
//! Chromium (through chromedriver, `ferry_testkit::webdriver`) running ferry.js against ferry's
//! gateway, once over each transport (the same gateway, the same page: `Ferry.connect` with
//! `{WebTransport: null}` is the WebSocket client).
//!
//! - **Round trip, loopback**: the page's 64-byte call to an echo service, back to back; p50 and
//!   p99.
//! - **Idle sessions**: RSS and heap of the gateway's process per idle session, and the fan-out
//!   of one channel message to all of them (p50, p99), with Rust clients standing in for
//!   browsers (the gateway figure's processes, `gateway.rs`; over WebTransport, `wt_clients.rs`).
//! - **Head-of-line, lossy link**: the gateway in one lab host (network namespace), the browser
//!   in another, on the lab's public segment; the gateway's link drops 2 % of the packets each
//!   way (nftables) and delays each way by 20 ms (the lab's NFQUEUE stage), so TCP (WebSocket)
//!   and UDP (WebTransport) lose alike and a loss costs a round trip. One session (one client in
//!   the page, one QUIC connection or one TCP connection) has two conversations: a Rust peer
//!   sends it 20 MB (1 MB with `--quick`) as 64 KiB binary messages from one mailbox — one
//!   source, so over WebTransport one delivery stream (docs/GATEWAY.md §13.5) — while the page
//!   calls the echo service back to back (over WebTransport each call on a request stream of
//!   its own, §13.4). Echo p99 with the download divided by echo p99 alone, per transport.
//!
//! The gateway side runs in a child process (this binary with the hidden `--browser-far IP`):
//! a node with the gateway (WebSocket and WebTransport on the same port number of `IP`, its
//! self-made certificates pinned by the page with the hashes of `GET /webtransport`) serving
//! the page, and a second node, the Rust peer, with the echo service and the download's
//! sender. In the lab it is started inside the gateway host's namespace (`ip netns exec`), and
//! chromedriver inside the browser host's; the page, served from `http://198.18.x.y:PORT`, is
//! not a secure context by default, so Chromium is told to treat that origin as one
//! (`--unsafely-treat-insecure-origin-as-secure`), which is what a page served over `https:`
//! has.
//!
//! | parent → far | far → parent |
//! |---|---|
//! | (start) | `ready <page URL> <echo service address>` |
//! | `download ADDRESS BYTES` | `downloaded <ms>` once BYTES went to ADDRESS in 64 KiB messages, each accepted by the gateway's node |

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use ferry::{Node, NodeConfig, SecretKey, ServiceOptions};
use ferry_interop::lab::{HostId, Lab, Link, LinkShape};
use ferry_node::gateway::webtransport::{
    Certificates, SystemClock, WebTransport, WebTransportConfig,
};
use ferry_node::gateway::{self, GatewayConfig, NoHooks};
use ferry_node::store::{RedbStore, StoreConfig};
use ferry_testkit::webdriver::{Browser, Launch};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::child::Child;
use super::gateway::measure_sessions;
use super::{Better, Row, Settings};

/// The page: ferry.js and the helpers the scripts below call.
const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>ferry browser bench</title>
<script type="module">
  import * as Ferry from '/ferry.js'
  window.until = async (cond, ms) => {
    const end = Date.now() + ms
    while (!cond()) {
      if (Date.now() > end) return false
      await new Promise(resolve => setTimeout(resolve, 5))
    }
    return true
  }
  // A client over `transport` that counts the bytes of the messages it gets.
  window.openClient = async transport => {
    const client = await Ferry.connect(undefined,
      transport === 'websocket' ? { WebTransport: null } : {})
    client.bytes = 0
    client.first = null
    client.last = null
    client.closes = []
    client.on('close', close => client.closes.push(close.code))
    client.mailbox.setHandler(message => {
      const now = performance.now()
      if (client.first === null) client.first = now
      client.last = now
      client.bytes += message.data.byteLength || 0
    })
    return client
  }
  // Up to n 64-byte calls to `to`, back to back, while !stop(): their round trips, ms.
  window.echoes = async (client, to, n, stop = () => false) => {
    const payload = 'x'.repeat(64)
    const times = []
    for (let i = 0; i < n && !stop(); i++) {
      const start = performance.now()
      try {
        const reply = await client.call(to, payload, { timeout: CALL_TIMEOUT })
        if (reply !== payload) throw new Error('the echo answered ' + JSON.stringify(reply))
      } catch (error) {
        // A call without an answer in time counts with its whole wait (and is counted).
        if (error.code !== 'timeout') throw error
        client.timeouts = (client.timeouts || 0) + 1
      }
      times.push(performance.now() - start)
    }
    return times
  }
  const CALL_TIMEOUT = 10000
  window.Ferry = Ferry
</script>
"#;

/// Size of one message of the download.
const CHUNK: usize = 64 * 1024;
/// Loss on the lab link, percent of the packets each way.
const LOSS_PERCENT: u8 = 2;
/// Delay on the lab link, each way.
const ONE_WAY_DELAY: Duration = Duration::from_millis(20);
/// How long the far side may take for one step (a 20 MB download over the lossy link
/// included).
const STEP_WAIT: Duration = Duration::from_secs(600);
/// Calls before the measured ones (connection warm-up, ferry.js's streams).
const WARMUP_CALLS: u64 = 10;
/// What the baseline column is.
const AGAINST: &str = "same gateway over WebSocket";

/// Transports, as the page names them.
const WEBTRANSPORT: &str = "webtransport";
const WEBSOCKET: &str = "websocket";

/// The sizes of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    /// Measured calls of the loopback round trip.
    pub(crate) calls: u64,
    /// Measured calls alone over the lossy link.
    pub(crate) hol_calls: u64,
    /// Most calls during the download (they stop when it ends).
    pub(crate) hol_max_calls: u64,
    /// Bytes of the download.
    pub(crate) download: usize,
    /// Idle sessions of the memory and fan-out rows.
    pub(crate) sessions: usize,
    /// Runs at most (`--quick`: one, so that the figure stays under a minute in
    /// scripts/test.sh's smoke run of the bench; each run starts four browsers and servers).
    pub(crate) max_runs: usize,
}

impl Sizes {
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            Self {
                calls: 100,
                hol_calls: 30,
                hol_max_calls: 200,
                download: 1 << 20,
                sessions: 500,
                max_runs: 1,
            }
        } else {
            Self {
                calls: 1_000,
                hol_calls: 200,
                hol_max_calls: 5_000,
                download: 20 << 20,
                sessions: 1_000,
                max_runs: usize::MAX,
            }
        }
    }
}

pub(super) async fn figure_browser(settings: Settings) -> Result<Vec<Row>> {
    let sizes = settings.browser;
    let n = sizes.sessions;
    let runs = settings.runs.min(sizes.max_runs);
    let megabytes = sizes.download as f64 / f64::from(1 << 20);
    let lossy = format!(
        "{LOSS_PERCENT} % loss, {} ms each way",
        ONE_WAY_DELAY.as_millis()
    );
    let mut rows = [
        Row::new(
            "browser 64 B call round trip, loopback, p50",
            "ms",
            Better::Lower,
        ),
        Row::new(
            "browser 64 B call round trip, loopback, p99",
            "ms",
            Better::Lower,
        ),
        Row::new(
            format!("browser echo p99 alone ({lossy})"),
            "ms",
            Better::Lower,
        ),
        Row::new(
            format!("browser echo p99 during a {megabytes:.0} MB download ({lossy})"),
            "ms",
            Better::Lower,
        ),
        Row::new(
            "browser HOL: echo p99 with download / alone (goal <= 1.5 over WT)",
            "x",
            Better::Lower,
        ),
        Row::new(
            format!("browser download goodput ({lossy})"),
            "Mbit/s",
            Better::Higher,
        ),
        Row::new(
            "browser echo calls during the download (p99's sample)",
            "calls",
            Better::Higher,
        ),
        Row::new(
            "browser echo calls unanswered in 10 s (counted as 10 s)",
            "calls",
            Better::Lower,
        ),
        Row::new(
            "browser session closed by the gateway during the download",
            "times",
            Better::Lower,
        ),
        Row::new(
            format!("RSS per idle gateway session ({n} sessions)"),
            "KiB",
            Better::Lower,
        ),
        Row::new(
            format!("heap per idle gateway session ({n} sessions)"),
            "KiB",
            Better::Lower,
        ),
        Row::new(
            format!("fan-out: 1 channel msg -> {n} sessions, p50"),
            "ms",
            Better::Lower,
        ),
        Row::new(
            format!("fan-out: 1 channel msg -> {n} sessions, p99"),
            "ms",
            Better::Lower,
        ),
    ]
    .map(|row| row.against(AGAINST));

    // Idle sessions of Rust clients (gateway.rs's server and clients processes).
    for run in 0..runs {
        for transport in transports(run) {
            let webtransport = transport == WEBTRANSPORT;
            let sessions = measure_sessions("ferry", webtransport, &settings, n).await?;
            for (row, value) in rows[9..].iter_mut().zip(sessions.figures) {
                row.push(webtransport, value);
            }
            sessions.clients.kill().await;
            sessions.server.finish().await; // its store's directory goes with it
        }
    }

    for run in 0..runs {
        let order = transports(run);
        let far = Far::start(None).await?;
        let browser = open_browser(
            Launch {
                quic: true,
                ..Launch::default()
            },
            far.url.clone(),
        )
        .await?;
        for transport in order {
            let times = round_trips(&browser, transport, &far.echo, sizes.calls).await?;
            let webtransport = transport == WEBTRANSPORT;
            rows[0].push(webtransport, quantile(&times, 0.5));
            rows[1].push(webtransport, quantile(&times, 0.99));
        }
        close_browser(browser).await;
        far.child.finish().await;
    }

    let (lab, gateway_host, browser_host) = lossy_lab()?;
    let lab = Arc::new(lab);
    for run in 0..runs {
        let order = transports(run);
        let host = lab.host(gateway_host)?;
        let ip = IpAddr::V4(host.address());
        let mut far = Far::start(Some((host.namespace().name(), ip))).await?;
        let browser =
            open_browser(in_namespace(&lab, browser_host, &far.url)?, far.url.clone()).await?;
        for transport in order {
            let run = head_of_line(&browser, &mut far, transport, sizes).await?;
            let webtransport = transport == WEBTRANSPORT;
            let alone = quantile(&run.alone, 0.99);
            let with_download = quantile(&run.with_download, 0.99);
            rows[2].push(webtransport, alone);
            rows[3].push(webtransport, with_download);
            rows[4].push(webtransport, with_download / alone);
            rows[5].push(webtransport, run.goodput);
            rows[6].push(webtransport, run.with_download.len() as f64);
            rows[7].push(webtransport, run.timeouts);
            rows[8].push(webtransport, run.closes);
        }
        close_browser(browser).await;
        far.child.finish().await; // ends by itself, removing its store's directory
    }
    drop(lab);
    Ok(rows.into())
}

/// Which transport goes first in run `run` (alternating, as ferry and baseline do elsewhere).
fn transports(run: usize) -> [&'static str; 2] {
    if run.is_multiple_of(2) {
        [WEBTRANSPORT, WEBSOCKET]
    } else {
        [WEBSOCKET, WEBTRANSPORT]
    }
}

/// The `q` quantile of `values` (nearest rank), or NaN for none.
pub(crate) fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The lab of the head-of-line measurement: two hosts on the public segment, the gateway's
/// link lossy and delayed both ways.
fn lossy_lab() -> Result<(Lab, HostId, HostId)> {
    let mut lab = Lab::new().context("the browser figure's lab (needs root)")?;
    let gateway_host = lab.add_public_host("gw")?;
    let browser_host = lab.add_public_host("browser")?;
    lab.reshape(
        Link::Host(gateway_host),
        LinkShape {
            loss_percent: LOSS_PERCENT,
            delay: ONE_WAY_DELAY,
            ..LinkShape::default()
        },
    )?;
    Ok((lab, gateway_host, browser_host))
}

/// How to launch a browser inside `host`'s namespace whose pages at `url`'s origin are a
/// secure context.
fn in_namespace(lab: &Arc<Lab>, host: HostId, url: &str) -> Result<Launch> {
    let namespace = lab.host(host)?.namespace().name().to_owned();
    let origin = url.trim_end_matches('/').to_owned();
    let connecting = lab.clone();
    Ok(Launch {
        quic: true,
        args: vec![format!(
            "--unsafely-treat-insecure-origin-as-secure={origin}"
        )],
        command: Some(Arc::new(move |program| {
            let mut command = std::process::Command::new("ip");
            command.args(["netns", "exec", &namespace, program]);
            command
        })),
        connect: Some(Arc::new(move |addr: SocketAddr| {
            let host = connecting
                .host(host)
                .map_err(|error| std::io::Error::other(error.to_string()))?;
            host.namespace().enter(|| TcpStream::connect(addr))?
        })),
    })
}

/// Starts a browser as `launch` says with one tab at `url`.
async fn open_browser(launch: Launch, url: String) -> Result<Arc<Browser>> {
    tokio::task::spawn_blocking(move || {
        let browser = Browser::launch(launch);
        browser.open(&url);
        Arc::new(browser)
    })
    .await
    .map_err(|error| anyhow!("starting the browser failed: {error}"))
}

async fn close_browser(browser: Arc<Browser>) {
    let _ = tokio::task::spawn_blocking(move || drop(browser)).await;
}

/// Runs a script body in the page on a blocking thread.
async fn page(browser: &Arc<Browser>, body: String) -> Result<Value> {
    let browser = browser.clone();
    tokio::task::spawn_blocking(move || browser.run(&body))
        .await
        .map_err(|error| anyhow!("the page's script failed: {error}"))
}

/// Round trips (ms) of `calls` 64-byte calls over `transport`, after a warm-up, on a client
/// of its own.
async fn round_trips(
    browser: &Arc<Browser>,
    transport: &str,
    echo: &str,
    calls: u64,
) -> Result<Vec<f64>> {
    let outcome = page(
        browser,
        format!(
            "const client = await openClient({transport:?})
             if (client.transport !== {transport:?}) throw new Error('connected over ' + client.transport)
             await echoes(client, {echo:?}, {WARMUP_CALLS})
             const times = await echoes(client, {echo:?}, {calls})
             client.close()
             return times"
        ),
    )
    .await?;
    numbers(&outcome)
}

/// One transport's head-of-line run: echo round trips (ms) alone and during the download, and
/// the download's goodput (Mbit/s, from its first to its last byte in the page).
struct HolRun {
    alone: Vec<f64>,
    with_download: Vec<f64>,
    goodput: f64,
    /// Calls that had no answer within the page's timeout (10 s).
    timeouts: f64,
    /// Times the client's connection was closed (it resumed each time).
    closes: f64,
}

async fn head_of_line(
    browser: &Arc<Browser>,
    far: &mut Far,
    transport: &str,
    sizes: Sizes,
) -> Result<HolRun> {
    let echo = far.echo.clone();
    let address = page(
        browser,
        format!(
            "window.hol = await openClient({transport:?})
             if (hol.transport !== {transport:?}) throw new Error('connected over ' + hol.transport)
             await echoes(hol, {echo:?}, {WARMUP_CALLS})
             window.alone = await echoes(hol, {echo:?}, {})
             return hol.address",
            sizes.hol_calls
        ),
    )
    .await?;
    let address = address
        .as_str()
        .ok_or_else(|| anyhow!("no session address: {address}"))?;
    let total = sizes.download;
    far.child
        .send(&format!("download {address} {total}"))
        .await?;
    let outcome = page(
        browser,
        format!(
            "if (!await until(() => hol.bytes > 0, 60000)) throw new Error('the download did not start')
             const during = await echoes(hol, {echo:?}, {}, () => hol.bytes >= {total})
             if (!await until(() => hol.bytes >= {total}, 600000)) throw new Error('the download did not end')
             const result = {{alone: window.alone, during, ms: hol.last - hol.first, bytes: hol.bytes,
                             timeouts: hol.timeouts || 0, closes: hol.closes}}
             hol.close()
             return result",
            sizes.hol_max_calls
        ),
    )
    .await?;
    far.child.answer("downloaded").await?;
    let ms = outcome["ms"].as_f64().unwrap_or(f64::NAN);
    let closes = outcome["closes"].as_array().map_or(0, Vec::len);
    if closes > 0 {
        eprintln!(
            "browser figure: the {transport} session was closed during the download with codes {}",
            outcome["closes"]
        );
    }
    Ok(HolRun {
        alone: numbers(&outcome["alone"])?,
        with_download: numbers(&outcome["during"])?,
        goodput: total as f64 * 8.0 / 1e6 / (ms / 1000.0),
        timeouts: outcome["timeouts"].as_f64().unwrap_or(f64::NAN),
        closes: closes as f64,
    })
}

/// A JSON array of numbers.
fn numbers(value: &Value) -> Result<Vec<f64>> {
    value
        .as_array()
        .ok_or_else(|| anyhow!("not an array: {value}"))?
        .iter()
        .map(|v| v.as_f64().ok_or_else(|| anyhow!("not a number: {v}")))
        .collect()
}

/// The far side: the child process with the gateway and the Rust peer.
struct Far {
    child: Child,
    url: String,
    echo: String,
}

impl Far {
    /// Starts the far side on 127.0.0.1, or inside `namespace` on `ip`.
    async fn start(namespace: Option<(&str, IpAddr)>) -> Result<Self> {
        let exe = std::env::current_exe().context("finding the bench binary")?;
        let (child, ready) = match namespace {
            None => Child::start(&["--browser-far", "127.0.0.1"], STEP_WAIT).await?,
            Some((namespace, ip)) => {
                let mut command = tokio::process::Command::new("ip");
                command
                    .args(["netns", "exec", namespace])
                    .arg(exe)
                    .args(["--browser-far", &ip.to_string()])
                    .stderr(std::process::Stdio::inherit());
                Child::start_command(command, STEP_WAIT).await?
            }
        };
        let (url, echo) = ready
            .split_once(' ')
            .ok_or_else(|| anyhow!("bad ready line {ready:?}"))?;
        Ok(Self {
            child,
            url: url.to_owned(),
            echo: echo.to_owned(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The far process.

/// Runs this process as the far side on `ip` until stdin ends.
pub(super) async fn far(ip: &str) -> Result<()> {
    let ip: IpAddr = ip.parse().context("--browser-far IP")?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("index.html"), PAGE)?;
    let store = Arc::new(RedbStore::open(
        &dir.path().join("store.redb"),
        StoreConfig::default(),
    )?);
    let node = Node::bind(SecretKey::generate(), NodeConfig::default()).await?;
    // The echo service and the download's sender are on two nodes, so that the two
    // conversations share nothing on the way to the gateway's node (one QUIC connection between
    // two nodes carries both otherwise), only the session to the browser.
    let peer = Node::bind(SecretKey::generate(), NodeConfig::default()).await?;
    let downloader = Node::bind(SecretKey::generate(), NodeConfig::default()).await?;
    let _echo = peer.serve(
        "echo",
        ServiceOptions::default(),
        |mut conversation| async move {
            if let Ok(text) = conversation.recv_obj::<String>().await {
                let _ = conversation.reply(&text).await;
            }
        },
    )?;
    let mut config = GatewayConfig {
        static_dir: Some(dir.path().to_owned()),
        ..GatewayConfig::default()
    };
    // Back-to-back calls are more frames per second than the default limit of 200; and a
    // download through a slow link keeps the queue full for longer than the default 10 s of a
    // slow consumer.
    config.limits.rate_limit = 1_000_000;
    config.limits.write_timeout = Duration::from_secs(600);
    let (listener, endpoint) = bind_both(ip).await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let gateway = gateway::Gateway::new(node.clone(), store, config, Arc::new(NoHooks))?;
    tokio::spawn(gateway.serve_webtransport(endpoint, shutdown.clone()));
    tokio::spawn(gateway.serve(listener, shutdown.clone()));
    println!(
        "ready http://{addr}/ {}@{}/echo",
        peer.id(),
        peer.local_addr()
    );
    super::child::answer_commands(async |command| far_command(&downloader, command).await).await?;
    shutdown.cancel();
    Ok(())
}

async fn far_command(downloader: &Node, command: &str) -> Result<String> {
    let mut words = command.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("download"), Some(address), Some(total)) => {
            let address: ferry::Address = address
                .parse()
                .map_err(|e| anyhow!("session address {address}: {e}"))?;
            let total: usize = total.parse().context("download size")?;
            let started = Instant::now();
            let sender = downloader.sender(&address);
            // 0xFF is no UTF-8: the messages go as binary frames (docs/GATEWAY.md §3).
            let chunk = Bytes::from(vec![0xFF; CHUNK]);
            let mut deliveries = Vec::new();
            let mut sent = 0;
            while sent < total {
                let len = CHUNK.min(total - sent);
                deliveries.push(sender.enqueue_bytes(chunk.slice(..len)).await?);
                sent += len;
            }
            for delivery in deliveries {
                delivery.await?;
            }
            Ok(format!("downloaded {}", started.elapsed().as_millis()))
        }
        _ => bail!("unknown command {command:?}"),
    }
}

/// A TCP listener and a WebTransport endpoint on the same port number of `ip` (as `ferry run
/// --webtransport auto` has them, so that the page's origin is the CONNECT's authority), with
/// self-made certificates for `localhost` and `ip`.
pub(crate) async fn bind_both(ip: IpAddr) -> Result<(tokio::net::TcpListener, WebTransport)> {
    let certificates = Arc::new(Certificates::self_signed(
        vec!["localhost".into(), ip.to_string()],
        Arc::new(SystemClock),
    )?);
    for _ in 0..20 {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0)).await?;
        let addr = listener.local_addr()?;
        if let Ok(endpoint) =
            WebTransport::bind(addr, certificates.clone(), WebTransportConfig::default())
        {
            return Ok((listener, endpoint));
        }
    }
    bail!("no port of {ip} free over both TCP and UDP")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.5), 50.0);
        assert_eq!(quantile(&values, 0.99), 99.0);
        assert_eq!(quantile(&[3.0], 0.99), 3.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn transports_alternate() {
        assert_eq!(transports(0), [WEBTRANSPORT, WEBSOCKET]);
        assert_eq!(transports(1), [WEBSOCKET, WEBTRANSPORT]);
    }
}
