//! A real `nats-server` (Debian's, with JetStream) on a free loopback port, for the tests
//! (node/tests/cluster) and the benchmark's cluster figure (interop-tests/src/bench/cluster.rs).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where Debian installs it (scripts/test.sh installs it when missing).
pub const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// A running `nats-server -js`, killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    /// Its client port.
    pub port: u16,
    /// Its JetStream store directory (kept across [`NatsServer::restart`]).
    store: PathBuf,
}

impl NatsServer {
    /// Whether `nats-server` is installed where Debian puts it.
    pub fn installed() -> bool {
        Path::new(NATS_SERVER).exists()
    }

    /// Starts one on a free port chosen by the server itself (`-p -1`), its JetStream store
    /// under `dir`.
    pub fn start(dir: &Path) -> Self {
        let store = dir.join("jetstream");
        let (child, port) = spawn(&store, None);
        Self {
            child: Some(child),
            port,
            store,
        }
    }

    /// Three servers forming one NATS cluster with clustered JetStream (each with its own
    /// store under `dir`), on free loopback ports.
    pub fn start_cluster(dir: &Path) -> Vec<Self> {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .map(|addr| addr.port())
                .expect("a free port")
        };
        let routes: Vec<u16> = (0..3).map(|_| free()).collect();
        let clients: Vec<u16> = (0..3).map(|_| free()).collect();
        let urls: Vec<String> = routes
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect();
        let mut children = Vec::new();
        for i in 0..3 {
            let store = dir.join(format!("jetstream{i}"));
            let args = vec![
                "-n".to_owned(),
                format!("n{i}"),
                "--cluster_name".to_owned(),
                "ferrytest".to_owned(),
                "--cluster".to_owned(),
                format!("nats://127.0.0.1:{}", routes[i]),
                "--routes".to_owned(),
                urls.join(","),
            ];
            let (child, port) = spawn_with(&store, Some(clients[i]), &args, false);
            children.push(Self {
                child: Some(child.expect("nats-server of the cluster did not start")),
                port,
                store,
            });
        }
        children
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops it (SIGKILL) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        // The port may linger briefly; try again until it binds.
        let child = crate::wait::wait_for_value_blocking_within(
            &format!("nats-server to restart on port {}", self.port),
            Duration::from_secs(20),
            || {
                let (child, port) = spawn_maybe(&self.store, Some(self.port));
                assert!(child.is_none() || port == self.port);
                child
            },
        );
        self.child = Some(child);
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
    spawn_with(store, port, &[], true)
}

/// Starts `nats-server` with `extra` arguments; waits for "Server is ready" when `ready`
/// (a clustered server is ready only once its peers are there), else for its client port.
fn spawn_with(
    store: &Path,
    port: Option<u16>,
    extra: &[String],
    ready: bool,
) -> (Option<Child>, u16) {
    assert!(
        Path::new(NATS_SERVER).exists(),
        "{NATS_SERVER} is missing: apt-get install nats-server (scripts/test.sh does)"
    );
    let port_arg = port.map_or_else(|| "-1".to_owned(), |port| port.to_string());
    let mut child = Command::new(NATS_SERVER)
        .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
        .arg(store)
        .args(extra)
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
            if !ready {
                break;
            }
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
