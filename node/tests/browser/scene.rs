//! Where a browser test plays: a gateway serving the test page ([`Site`]), on its own node,
//! opened in a browser, with a Rust peer (the sink) whose mailbox records what pages send it
//! ([`Scene`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry::{Mailbox, Node, NodeConfig, SecretKey};
use ferry_node::gateway::webtransport::{
    Certificates, SystemClock, WebTransport, WebTransportConfig,
};
use ferry_node::gateway::{self, GatewayConfig, NoHooks};
use ferry_node::store::{RedbStore, StoreConfig};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use ferry_testkit::webdriver::Browser;

/// The test page: the client, and helpers the scripts below use.
const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>ferry browser test</title>
<script type="module">
  import * as Ferry from '/ferry.js'
  // True once cond() holds, false if it did not within ms.
  window.until = async (cond, ms = 15000) => {
    const end = Date.now() + ms
    while (!cond()) {
      if (Date.now() > end) return false
      await new Promise(resolve => setTimeout(resolve, 20))
    }
    return true
  }
  // What a promise came to within ms: {ok: value}, {error: code}, or 'pending'.
  window.settled = (promise, ms = 10000) => Promise.race([
    promise.then(value => ({ ok: value === undefined ? null : value }),
      error => ({ error: (error && error.code) || String(error) })),
    new Promise(resolve => setTimeout(() => resolve('pending'), ms))
  ])
  // The transport the test runs over (`?transport=` of the page's URL), if it says.
  const expected = new URLSearchParams(location.search).get('transport')
  // A connected client keeping its messages (got), states and close codes; connected over
  // the expected transport, or an error.
  window.member = async (url, options) => {
    const client = await Ferry.connect(url, options)
    if (expected && client.transport !== expected) {
      throw new Error(`connected over ${client.transport}, not ${expected}`)
    }
    client.got = []
    client.states = []
    client.closes = []
    client.mailbox.setHandler(message => { client.got.push(message) })
    client.on('state', state => client.states.push(state))
    client.on('close', close => client.closes.push(close.code))
    return client
  }
  // A fetch for the client's `fetch` option: the WebTransport endpoint it finds is at the
  // page's own port (where a test's proxy forwards UDP as well as TCP).
  window.samePort = async (url, init) => {
    const response = await fetch(url, init)
    if (!String(url).endsWith('/webtransport') || !response.ok) return response
    const info = await response.json()
    const endpoint = new URL(info.url)
    endpoint.port = location.port
    info.url = endpoint.href
    return new Response(JSON.stringify(info), { headers: { 'content-type': 'application/json' } })
  }
  window.Ferry = Ferry
</script>
"#;

/// The transport a scenario runs over: each runs over both (`over_both!` in main.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// WebSocket, in a browser without QUIC.
    WebSocket,
    /// WebTransport, in a browser with QUIC, from a gateway that serves it.
    WebTransport,
}

impl Transport {
    /// As `client.transport` says it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::WebTransport => "webtransport",
        }
    }
}

/// A gateway on `node` serving the test page.
pub(crate) struct Site {
    pub(crate) addr: SocketAddr,
    pub(crate) handle: gateway::GatewayHandle,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Site {
    /// A gateway serving WebTransport too when `transport` is WebTransport.
    pub(crate) async fn start_over(
        transport: Transport,
        node: &Node,
        config: GatewayConfig,
    ) -> Self {
        Self::serve(node, config, transport == Transport::WebTransport).await
    }

    /// A gateway (serving WebTransport too if `webtransport`: on UDP at its TCP port number,
    /// so that its pages' origin is the CONNECT's authority, as under `ferry run`'s `auto`,
    /// with self-made certificates for `localhost` and 127.0.0.1).
    async fn serve(node: &Node, config: GatewayConfig, webtransport: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), PAGE).unwrap();
        // The playground's files page, whose service tests register as `files`.
        std::fs::write(
            dir.path().join("files.html"),
            include_str!("../../examples/playground/files.html"),
        )
        .unwrap();
        let config = GatewayConfig {
            static_dir: Some(dir.path().to_owned()),
            ..config
        };
        let store = Arc::new(
            RedbStore::open(&dir.path().join("store.redb"), StoreConfig::default()).unwrap(),
        );
        let (listener, endpoint) = if webtransport {
            let (listener, endpoint) = bind_both().await;
            (listener, Some(endpoint))
        } else {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            (listener, None)
        };
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let gateway =
            gateway::Gateway::new(node.clone(), store, config, Arc::new(NoHooks)).unwrap();
        let handle = gateway.handle();
        if let Some(endpoint) = endpoint {
            tokio::spawn(gateway.serve_webtransport(endpoint, shutdown.clone()));
        }
        let serving = gateway.serve(listener, shutdown.clone());
        let task = tokio::spawn(async move { serving.await.unwrap() });
        Self {
            addr,
            handle,
            shutdown,
            task,
            _dir: dir,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

/// A TCP listener and a WebTransport endpoint on the same port number of 127.0.0.1 (another
/// free port when that UDP port is taken).
async fn bind_both() -> (tokio::net::TcpListener, WebTransport) {
    let certificates = Arc::new(
        Certificates::self_signed(
            vec!["localhost".into(), "127.0.0.1".into()],
            Arc::new(SystemClock),
        )
        .unwrap(),
    );
    for _ in 0..20 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        if let Ok(endpoint) =
            WebTransport::bind(addr, certificates.clone(), WebTransportConfig::default())
        {
            return (listener, endpoint);
        }
    }
    panic!("no port free over both TCP and UDP");
}

/// The JSON payloads' member `n`, in the order received.
pub(crate) fn numbers(payloads: &[Bytes]) -> Vec<u64> {
    payloads
        .iter()
        .map(|payload| {
            let value: Value = serde_json::from_slice(payload)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(payload)));
            value["n"].as_u64().unwrap()
        })
        .collect()
}

/// Starts a browser (with QUIC if `quic`) with one tab open at `url`.
async fn browser_at(url: String, quic: bool) -> Arc<Browser> {
    tokio::task::spawn_blocking(move || {
        let browser = if quic {
            Browser::with_quic()
        } else {
            Browser::start()
        };
        browser.open(&url);
        Arc::new(browser)
    })
    .await
    .unwrap()
}

/// A gateway on its own node serving the test page, opened in a browser, and the sink: a Rust
/// peer whose mailbox address pages find in `client.config.sink`.
pub(crate) struct Scene {
    pub(crate) sink: Node,
    pub(crate) mailbox: Mailbox,
    pub(crate) node: Node,
    pub(crate) site: Site,
    pub(crate) browser: Arc<Browser>,
    /// What the scenario runs over (WebSocket for scenes not made by `over`).
    pub(crate) transport: Transport,
}

impl Scene {
    /// A scene over `transport`: its page's `member()` fails unless the client connected
    /// over it. `configure` adjusts the gateway's configuration (the sink's address is in its
    /// client configuration already); the sink is passed for more of its addresses.
    pub(crate) async fn over(
        transport: Transport,
        configure: impl FnOnce(&mut GatewayConfig, &Node),
    ) -> Self {
        let webtransport = transport == Transport::WebTransport;
        let mut scene = Self::launch(configure, webtransport, webtransport).await;
        scene.transport = transport;
        let url = scene.page_url(scene.site.addr);
        scene.with(move |b| b.open(&url)).await;
        scene
    }

    /// The test page at `addr` (the gateway, or a proxy in front of it), telling the page
    /// which transport to expect.
    pub(crate) fn page_url(&self, addr: SocketAddr) -> String {
        format!("http://{addr}/?transport={}", self.transport.name())
    }

    /// A scene whose browser has QUIC, and whose gateway serves WebTransport if
    /// `webtransport`.
    pub(crate) async fn with_quic(
        webtransport: bool,
        configure: impl FnOnce(&mut GatewayConfig, &Node),
    ) -> Self {
        Self::launch(configure, webtransport, true).await
    }

    async fn launch(
        configure: impl FnOnce(&mut GatewayConfig, &Node),
        webtransport: bool,
        quic: bool,
    ) -> Self {
        let sink = Node::bind(SecretKey::generate(), NodeConfig::default())
            .await
            .unwrap();
        let mailbox = sink.mailbox();
        let node = Node::bind(SecretKey::generate(), NodeConfig::default())
            .await
            .unwrap();
        let mut config = GatewayConfig {
            client_config: json!({"sink": mailbox.address().to_string()}),
            ..GatewayConfig::default()
        };
        configure(&mut config, &sink);
        let site = Site::serve(&node, config, webtransport).await;
        let browser = browser_at(site.url(), quic).await;
        Self {
            sink,
            mailbox,
            node,
            site,
            browser,
            transport: Transport::WebSocket,
        }
    }

    /// Runs a script body in the page.
    pub(crate) async fn run(&self, body: impl Into<String>) -> Value {
        let body = body.into();
        self.with(move |b| b.run(&body)).await
    }

    /// Runs `f` with the browser on a blocking thread (WebDriver calls block).
    pub(crate) async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Browser) -> T + Send + 'static,
    ) -> T {
        let browser = self.browser.clone();
        tokio::task::spawn_blocking(move || f(&browser))
            .await
            .unwrap()
    }

    /// The payloads the sink receives up to `marker` (not included).
    pub(crate) async fn received_until(&self, marker: &[u8]) -> Vec<Bytes> {
        let mut payloads = Vec::new();
        loop {
            let message = self
                .mailbox
                .recv_timeout(Duration::from_secs(60))
                .await
                .unwrap_or_else(|e| panic!("no marker after {} messages: {e}", payloads.len()));
            if message.payload().as_ref() == marker {
                return payloads;
            }
            payloads.push(message.payload().clone());
        }
    }

    pub(crate) async fn finish(self) {
        let browser = self.browser;
        tokio::task::spawn_blocking(move || drop(browser))
            .await
            .unwrap();
        self.site.stop().await;
        self.node.shutdown(Duration::from_secs(1)).await;
        self.sink.shutdown(Duration::from_secs(1)).await;
    }
}
