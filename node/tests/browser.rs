//! The JS client in a real browser: headless Debian Chromium driven by chromedriver over
//! WebDriver (a minimal client below), loading pages served by the gateway. Two browser
//! sessions exchange messages, browsers and a Rust peer talk both ways, calls get replies and
//! time out, a tab that drops its connection gets what was sent to it meanwhile (and its own
//! queued sends go out), and a wrong token is refused.
//!
//! Chromium and chromedriver must be installed (`scripts/test.sh` installs Debian's
//! `chromium` and `chromium-driver` when missing). Without them this test FAILS: it never
//! passes by skipping.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry::{Node, NodeConfig, SecretKey, ServiceOptions};
use ferry_node::gateway::{self, AuthConfig, GatewayConfig, NoHooks, StaticToken};
use ferry_node::store::{RedbStore, StoreConfig};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// One HTTP/1.1 request to chromedriver; the JSON answer's `value`.
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Value {
    let body = body.map(Value::to_string).unwrap_or_default();
    eprintln!(
        "webdriver: {method} {path} {}",
        body.chars().take(200).collect::<String>()
    );
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // chromedriver keeps the connection open: read the head, then Content-Length bytes.
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "chromedriver closed the connection");
        response.extend_from_slice(&buf[..n]);
        if let Some(at) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&response[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    while response.len() < head_end + length {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "chromedriver closed the connection");
        response.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&response[head_end..head_end + length]).into_owned();
    let value: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("chromedriver answered {body}: {e}"));
    value["value"].clone()
}

/// A chromedriver process and one browser session.
struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Self {
        assert!(
            Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
            "{CHROMIUM} and {CHROMEDRIVER} are required: apt-get install -y chromium chromium-driver \
             (scripts/test.sh installs them)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let created = http(addr, "POST", "/session", Some(&capabilities));
        let session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {created}"))
            .to_owned();
        let browser = Self {
            driver,
            addr,
            session,
            _profile: profile,
        };
        browser.post("timeouts", &json!({"script": 60_000}));
        browser
    }

    fn post(&self, command: &str, body: &Value) -> Value {
        http(
            self.addr,
            "POST",
            &format!("/session/{}/{command}", self.session),
            Some(body),
        )
    }

    fn window(&self) -> String {
        http(
            self.addr,
            "GET",
            &format!("/session/{}/window", self.session),
            None,
        )
        .as_str()
        .unwrap()
        .to_owned()
    }

    fn new_window(&self) -> String {
        self.post("window/new", &json!({"type": "tab"}))["handle"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn switch(&self, handle: &str) {
        self.post("window", &json!({"handle": handle}));
    }

    fn open(&self, url: &str) {
        self.post("url", &json!({"url": url}));
        self.run("while (!window.Ferry) await new Promise(r => setTimeout(r, 20)); return true");
    }

    /// Runs an async function body in the page; its return value, or panics with the
    /// error it threw.
    fn run(&self, body: &str) -> Value {
        let script = format!(
            "const done = arguments[arguments.length - 1];
             (async () => {{ {body} }})().then(
               value => done({{ok: value === undefined ? null : value}}),
               error => done({{error: String(error), code: error && error.code}}));"
        );
        let result = self.post("execute/async", &json!({"script": script, "args": []}));
        match result.get("ok") {
            Some(value) => value.clone(),
            None => panic!("script failed: {result}\n{body}"),
        }
    }

    /// Runs a body expected to throw; the error's code.
    fn fails(&self, body: &str) -> Value {
        let script = format!(
            "const done = arguments[arguments.length - 1];
             (async () => {{ {body} }})().then(
               value => done({{ok: value === undefined ? null : value}}),
               error => done({{error: String(error), code: error && error.code}}));"
        );
        let result = self.post("execute/async", &json!({"script": script, "args": []}));
        assert!(
            result.get("error").is_some(),
            "expected a failure: {result}"
        );
        result["code"].clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            http(
                self.addr,
                "DELETE",
                &format!("/session/{}", self.session),
                None,
            )
        });
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>ferry browser test</title>
<script type="module">
  import * as Ferry from '/ferry.js'
  window.Ferry = Ferry
</script>
"#;

/// A script that waits in the page until `window.got` holds `n` messages and returns them.
fn wait_for(n: usize) -> String {
    format!(
        "const end = Date.now() + 15000;
         while (window.got.length < {n} && Date.now() < end) await new Promise(r => setTimeout(r, 20));
         return window.got.map(m => ({{id: m.id, from: m.from, data: m.data, channel: m.channel || null}}));"
    )
}

async fn gateway(
    node: &Node,
    config: GatewayConfig,
    dir: &Path,
) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
    let store = Arc::new(
        RedbStore::open(
            &dir.join(format!("{}.redb", rand_name())),
            StoreConfig::default(),
        )
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let serving = gateway::serve(
        listener,
        node.clone(),
        store,
        config,
        Arc::new(NoHooks),
        shutdown.clone(),
    );
    let task = tokio::spawn(async move { serving.await.unwrap() });
    (addr, shutdown, task)
}

fn rand_name() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_talk_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), PAGE).unwrap();

    // A Rust peer with a service for browsers: JSON text in, JSON text out.
    let peer = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let _shout = peer
        .serve(
            "shout",
            ServiceOptions::default(),
            |mut conversation| async move {
                if let Ok(request) = conversation.recv_obj::<String>().await {
                    let text: String = serde_json::from_str(&request).unwrap_or_default();
                    let reply = json!({"shouted": text.to_uppercase()}).to_string();
                    let _ = conversation.reply(&reply).await;
                }
            },
        )
        .unwrap();
    let _silent = peer
        .serve(
            "silent",
            ServiceOptions::default(),
            |conversation| async move {
                tokio::time::sleep(Duration::from_secs(20)).await;
                drop(conversation);
            },
        )
        .unwrap();

    let node = Node::bind(SecretKey::generate(), NodeConfig::default())
        .await
        .unwrap();
    let config = GatewayConfig {
        static_dir: Some(dir.path().to_owned()),
        client_config: json!({
            "peer": peer.inbox().address().to_string(),
            "shout": format!("{}@{}/shout", peer.id(), peer.local_addr()),
            "silent": format!("{}@{}/silent", peer.id(), peer.local_addr()),
        }),
        ..GatewayConfig::default()
    };
    let (addr, shutdown, task) = gateway(&node, config, dir.path()).await;
    // A second gateway that requires a token, for the refusal.
    let secured = GatewayConfig {
        auth: AuthConfig {
            tokens: vec![StaticToken {
                user: "alice".into(),
                token: "alice-token".into(),
            }],
            ..AuthConfig::default()
        },
        origins: vec!["*".into()],
        ..GatewayConfig::default()
    };
    let (secured_addr, secured_shutdown, secured_task) = gateway(&node, secured, dir.path()).await;

    let url = format!("http://{addr}/");
    let browser = tokio::task::spawn_blocking(Browser::start).await.unwrap();
    let browser = Arc::new(browser);
    let b = browser.clone();
    let blocking = move |f: Box<dyn FnOnce(&Browser) -> Value + Send>| {
        let b = b.clone();
        tokio::task::spawn_blocking(move || f(&b))
    };

    // Two tabs, two sessions.
    let (tab_a, tab_b, address_a, address_b) = {
        let url = url.clone();
        blocking(Box::new(move |b| {
            let tab_a = b.window();
            b.open(&url);
            let a = b.run(
                "window.client = await Ferry.connect(); window.got = [];
                 client.mailbox.setHandler(m => { window.got.push(m) });
                 return client.address",
            );
            let tab_b = b.new_window();
            b.switch(&tab_b);
            b.open(&url);
            let bb = b.run(
                "window.client = await Ferry.connect(); window.got = [];
                 client.mailbox.setHandler(m => { window.got.push(m) });
                 return client.address",
            );
            json!([tab_a, tab_b, a, bb])
        }))
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .try_into()
        .map(|v: [String; 4]| (v[0].clone(), v[1].clone(), v[2].clone(), v[3].clone()))
        .unwrap()
    };
    assert_ne!(address_a, address_b);

    // A → B, and B answers to the message's `from`.
    let got = {
        let (tab_a, tab_b, address_b) = (tab_a.clone(), tab_b.clone(), address_b.clone());
        blocking(Box::new(move |b| {
            b.switch(&tab_a);
            b.run(&format!(
                "await client.send({address_b:?}, {{hello: 'from A'}}); return true"
            ));
            b.switch(&tab_b);
            let got = b.run(&wait_for(1));
            b.run("await client.send(window.got[0].from, {reply: 'from B'}); return true");
            b.switch(&tab_a);
            let back = b.run(&wait_for(1));
            json!([got, back])
        }))
        .await
        .unwrap()
    };
    assert_eq!(got[0][0]["data"], json!({"hello": "from A"}));
    assert_eq!(got[1][0]["data"], json!({"reply": "from B"}));

    // A calls the Rust service; a call to a silent one times out.
    let calls = {
        let tab_a = tab_a.clone();
        blocking(Box::new(move |b| {
            b.switch(&tab_a);
            let reply =
                b.run("return await client.call(client.config.shout, 'hi', {timeout: 5000})");
            let timeout = b.fails("await client.call(client.config.silent, 1, {timeout: 500})");
            let exclusive = b.fails("await client.mailbox.receive({timeout: 10})");
            json!([reply, timeout, exclusive])
        }))
        .await
        .unwrap()
    };
    assert_eq!(calls[0], json!({"shouted": "HI"}));
    assert_eq!(calls[1], "timeout");
    assert_eq!(calls[2], "mailbox_has_handler");

    // The Rust peer → B, and B → the peer.
    let b_address: ferry::Address = address_b.parse().unwrap();
    peer.send_bytes(&b_address, Bytes::from_static(br#"{"from":"rust"}"#))
        .await
        .unwrap();
    let got = {
        let tab_b = tab_b.clone();
        blocking(Box::new(move |b| {
            b.switch(&tab_b);
            let got = b.run(&wait_for(2));
            b.run("await client.send(client.config.peer, {to: 'rust'}); return true");
            got
        }))
        .await
        .unwrap()
    };
    assert_eq!(got[1]["data"], json!({"from": "rust"}));
    let message = peer
        .inbox()
        .recv_timeout(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(message.payload().as_ref(), br#"{"to":"rust"}"#);

    // B drops its connection. Meanwhile A sends three messages to B, and B sends one to the
    // peer (queued in the tab). B reconnects: it gets the three in order, once, and its send
    // goes out; the session (and address) is the same and recovery is complete.
    let offline = {
        let (tab_a, tab_b, address_b) = (tab_a.clone(), tab_b.clone(), address_b.clone());
        blocking(Box::new(move |b| {
            b.switch(&tab_b);
            b.run("client.disconnect(); return client.state");
            b.switch(&tab_a);
            b.run(&format!(
                "for (let n = 0; n < 3; n++) await client.send({address_b:?}, {{offline: n}});
                 return true"
            ));
            b.switch(&tab_b);
            let queued = b.run(
                "window.sent = client.send(client.config.peer, {queued: 'while offline'});
                 return client.state",
            );
            b.run("await client.reconnect(); await window.sent; return true");
            let got = b.run(&wait_for(5));
            let status = b.run(
                "return {address: client.address, resumed: client.resumed, recovered: client.recovered, state: client.state}",
            );
            json!([queued, got, status])
        }))
        .await
        .unwrap()
    };
    assert_eq!(offline[0], "offline");
    let got = offline[1].as_array().unwrap();
    assert_eq!(got.len(), 5, "{got:?}");
    let data: Vec<&Value> = got[2..].iter().map(|m| &m["data"]).collect();
    assert_eq!(
        data,
        [
            &json!({"offline": 0}),
            &json!({"offline": 1}),
            &json!({"offline": 2})
        ]
    );
    let ids: Vec<u64> = got.iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(offline[2]["address"], address_b.as_str());
    assert_eq!(offline[2]["resumed"], true);
    assert_eq!(offline[2]["recovered"], true);
    assert_eq!(offline[2]["state"], "open");
    let message = peer
        .inbox()
        .recv_timeout(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(message.payload().as_ref(), br#"{"queued":"while offline"}"#);

    // Channels are refused by default; a wrong token is refused, the right one accepted.
    let auth = {
        let tab_a = tab_a.clone();
        blocking(Box::new(move |b| {
            b.switch(&tab_a);
            let join = b.fails("await client.join('lobby')");
            let refused = b.fails(&format!(
                "await Ferry.connect('http://{secured_addr}', {{token: 'wrong'}})"
            ));
            let user = b.run(&format!(
                "const c = await Ferry.connect('http://{secured_addr}', {{token: 'alice-token'}});
                 const user = c.user; c.close(); return user"
            ));
            json!([join, refused, user])
        }))
        .await
        .unwrap()
    };
    assert_eq!(auth[0], "forbidden");
    assert_eq!(auth[1], "connect_failed");
    assert_eq!(auth[2], "alice");

    drop(blocking);
    tokio::task::spawn_blocking(move || drop(browser))
        .await
        .unwrap();
    shutdown.cancel();
    secured_shutdown.cancel();
    task.await.unwrap();
    secured_task.await.unwrap();
    node.shutdown(Duration::from_secs(1)).await;
}
