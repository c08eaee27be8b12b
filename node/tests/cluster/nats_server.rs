//! A real `nats-server` (Debian's, with JetStream) on a free loopback port, for the tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs it (scripts/test.sh installs it when missing).
const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// A running `nats-server -js`, killed on drop.
pub(crate) struct NatsServer {
    child: Option<Child>,
    /// Its client port.
    pub(crate) port: u16,
    /// Its JetStream store directory (kept across [`NatsServer::restart`]).
    store: PathBuf,
}

impl NatsServer {
    /// Starts one on a free port chosen by the server itself (`-p -1`), its JetStream store
    /// under `dir`.
    pub(crate) fn start(dir: &Path) -> Self {
        let store = dir.join("jetstream");
        let (child, port) = spawn(&store, None);
        Self {
            child: Some(child),
            port,
            store,
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops it (SIGKILL) and waits until it is gone.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub(crate) fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // The port may linger briefly; try again until it binds.
            let (child, port) = spawn_maybe(&self.store, Some(self.port));
            match child {
                Some(child) => {
                    assert_eq!(port, self.port);
                    self.child = Some(child);
                    return;
                }
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                None => panic!("nats-server did not restart on port {}", self.port),
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(store: &Path, port: Option<u16>) -> (Child, u16) {
    match spawn_maybe(store, port) {
        (Some(child), port) => (child, port),
        (None, _) => panic!("nats-server did not start"),
    }
}

/// Starts `nats-server` and reads its log until it listens; `None` if it exited first.
fn spawn_maybe(store: &Path, port: Option<u16>) -> (Option<Child>, u16) {
    assert!(
        Path::new(NATS_SERVER).exists(),
        "{NATS_SERVER} is missing: apt-get install nats-server (scripts/test.sh does)"
    );
    let port_arg = port.map_or_else(|| "-1".to_owned(), |port| port.to_string());
    let mut child = Command::new(NATS_SERVER)
        .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
        .arg(store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning nats-server");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let marker = "Listening for client connections on ";
    let mut found = None;
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        if let Some(at) = line.find(marker) {
            let addr = &line[at + marker.len()..];
            found = addr.rsplit(':').next().and_then(|p| p.trim().parse().ok());
        }
        if line.contains("Server is ready") {
            break;
        }
    }
    // Keep draining its log so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    match found {
        Some(port) => (Some(child), port),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            (None, 0)
        }
    }
}
