//! A minimal WebDriver client: one chromedriver process driving one headless Debian Chromium,
//! scripts run in the page, and Chrome DevTools commands through chromedriver. Used by the
//! node's browser tests (node/tests/browser/) and the benchmark's browser figure
//! (interop-tests/src/bench/browser.rs).
//!
//! Chromium and chromedriver come from Debian's `chromium` and `chromium-driver`
//! (`scripts/test.sh` installs them). Every failure panics with what chromedriver said: the
//! tests are made of these calls, and the benchmark runs them on a blocking thread whose panic
//! it reports.

#![allow(clippy::unwrap_used)] // test support: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

/// Debian's Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's chromedriver.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Opens a TCP connection to chromedriver (for a chromedriver in another network namespace, a
/// connection made from inside it).
pub type Connect = Arc<dyn Fn(SocketAddr) -> std::io::Result<TcpStream> + Send + Sync>;

/// Makes the command that runs a program (its argument), e.g. inside a network namespace.
pub type MakeCommand = Arc<dyn Fn(&str) -> Command + Send + Sync>;

/// How to launch a [`Browser`]; the default is a browser with QUIC disabled, started here.
#[derive(Clone, Default)]
pub struct Launch {
    /// QUIC (and so WebTransport) enabled; without it Chromium gets `--disable-quic`.
    pub quic: bool,
    /// More Chromium arguments (e.g. `--unsafely-treat-insecure-origin-as-secure=…`).
    pub args: Vec<String>,
    /// Makes the command that runs chromedriver (its program is the argument), e.g. inside a
    /// network namespace; `None`: chromedriver itself.
    pub command: Option<MakeCommand>,
    /// Connects to chromedriver; `None`: a plain connection from here.
    pub connect: Option<Connect>,
}

/// One HTTP/1.1 request to chromedriver; the JSON answer's `value`.
fn http(
    connect: &Connect,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Value {
    let body = body.map(Value::to_string).unwrap_or_default();
    eprintln!(
        "webdriver: {method} {path} {}",
        body.chars().take(200).collect::<String>()
    );
    let mut stream = connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(180)))
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
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    connect: Connect,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// A browser with QUIC disabled (the WebSocket tests: nothing of theirs goes over UDP).
    pub fn start() -> Self {
        Self::launch(Launch::default())
    }

    /// A browser with QUIC (and so WebTransport) enabled, for the WebTransport tests. Pages
    /// served over `http://127.0.0.1` are a secure context, so they have `WebTransport`, and
    /// certificates pinned with `serverCertificateHashes` need no flag.
    pub fn with_quic() -> Self {
        Self::launch(Launch {
            quic: true,
            ..Launch::default()
        })
    }

    /// A browser launched as `launch` says.
    pub fn launch(launch: Launch) -> Self {
        assert!(
            Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
            "{CHROMIUM} and {CHROMEDRIVER} are required: apt-get install -y chromium chromium-driver \
             (scripts/test.sh installs them)"
        );
        let connect: Connect = launch
            .connect
            .unwrap_or_else(|| Arc::new(TcpStream::connect::<SocketAddr>));
        // A free port here; inside another namespace any port is free.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = match &launch.command {
            Some(make) => make(CHROMEDRIVER),
            None => Command::new(CHROMEDRIVER),
        };
        let driver = command
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        crate::wait::wait_for_blocking("chromedriver to start", || connect(addr).is_ok());
        let profile = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--headless".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        if !launch.quic {
            args.push("--disable-quic".into());
        }
        args.extend(launch.args);
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let created = http(&connect, addr, "POST", "/session", Some(&capabilities));
        let session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {created}"))
            .to_owned();
        let browser = Self {
            driver,
            addr,
            connect,
            session,
            _profile: profile,
        };
        browser.post("timeouts", &json!({"script": 170_000}));
        browser
    }

    fn post(&self, command: &str, body: &Value) -> Value {
        http(
            &self.connect,
            self.addr,
            "POST",
            &format!("/session/{}/{command}", self.session),
            Some(body),
        )
    }

    /// The current tab's handle.
    pub fn window(&self) -> String {
        http(
            &self.connect,
            self.addr,
            "GET",
            &format!("/session/{}/window", self.session),
            None,
        )
        .as_str()
        .unwrap()
        .to_owned()
    }

    /// Opens a new tab; its handle.
    pub fn new_window(&self) -> String {
        self.post("window/new", &json!({"type": "tab"}))["handle"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Makes the tab `handle` the current one.
    pub fn switch(&self, handle: &str) {
        self.post("window", &json!({"handle": handle}));
    }

    /// Loads `url` and waits for its module script to have made `window.Ferry`.
    pub fn open(&self, url: &str) {
        self.post("url", &json!({"url": url}));
        self.run("while (!window.Ferry) await new Promise(r => setTimeout(r, 20)); return true");
    }

    /// Runs an async function body in the page: its value, or the error it threw as
    /// `{error, code}`.
    fn execute(&self, body: &str) -> Value {
        let script = format!(
            "const done = arguments[arguments.length - 1];
             (async () => {{ {body} }})().then(
               value => done({{ok: value === undefined ? null : value}}),
               error => done({{error: String(error), code: error && error.code}}));"
        );
        self.post("execute/async", &json!({"script": script, "args": []}))
    }

    /// Runs an async function body in the page; its return value, or panics with the error it
    /// threw.
    pub fn run(&self, body: &str) -> Value {
        let result = self.execute(body);
        match result.get("ok") {
            Some(value) => value.clone(),
            None => panic!("script failed: {result}\n{body}"),
        }
    }

    /// Runs a body expected to throw; the error's code.
    pub fn fails(&self, body: &str) -> Value {
        let result = self.execute(body);
        assert!(
            result.get("error").is_some(),
            "expected a failure: {result}"
        );
        result["code"].clone()
    }

    /// A Chrome DevTools Protocol command on the current tab.
    pub fn cdp(&self, command: &str, params: Value) -> Value {
        self.post(
            "goog/cdp/execute",
            &json!({"cmd": command, "params": params}),
        )
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            http(
                &self.connect,
                self.addr,
                "DELETE",
                &format!("/session/{}", self.session),
                None,
            )
        }));
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
