//! One Linux network namespace of the lab: commands and sockets inside it, and its removal.

use std::ffi::OsStr;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd as _;
use std::process::Command;

use super::registry;
use super::shell::{run, CommandError};

/// A network namespace the lab created (`ip netns add`); dropping it kills what still runs
/// inside and deletes it.
#[derive(Debug)]
pub struct Namespace {
    name: String,
}

impl Namespace {
    /// Creates the namespace `name` with its loopback up and IPv6 off (the lab is IPv4 only;
    /// without IPv6 no router solicitations or duplicate address probes add stray packets).
    /// `forwarding` makes it a router.
    pub(crate) fn create(name: &str, forwarding: bool) -> Result<Self, CommandError> {
        run("ip", &["netns", "add", name], None)?;
        // Registered before anything else can fail, so a failed setup still removes it.
        registry::register(name);
        let namespace = Self {
            name: name.to_string(),
        };
        namespace.ip(&["link", "set", "lo", "up"])?;
        let forward = format!("net.ipv4.ip_forward={}", u8::from(forwarding));
        namespace.exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
                &forward,
            ],
        )?;
        Ok(namespace)
    }

    /// The namespace's name (for `ip netns exec NAME …` by hand).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside this namespace (`ip netns exec NAME program`); the
    /// program replaces `ip`, so the child's pid is the program's.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name])
            .arg(program.as_ref());
        command
    }

    /// `ip -n NAME args…`.
    pub(crate) fn ip(&self, args: &[&str]) -> Result<String, CommandError> {
        ip_in(&self.name, args)
    }

    /// Runs a tool inside the namespace and returns its stdout.
    pub(crate) fn exec(&self, program: &str, args: &[&str]) -> Result<String, CommandError> {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run("ip", &all, None)
    }

    /// Applies an nftables script inside the namespace, atomically (`nft -f -`).
    pub(crate) fn nft(&self, script: &str) -> Result<(), CommandError> {
        run(
            "ip",
            &["netns", "exec", &self.name, "nft", "-f", "-"],
            Some(script),
        )
        .map(drop)
    }

    /// Runs `f` on a thread that entered this namespace, so that sockets it opens live here
    /// (they stay here wherever they are used afterwards).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(&path)?;
                    rustix::thread::move_into_link_name_space(
                        file.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(std::io::Error::other(format!(
                        "a thread in namespace {} panicked",
                        self.name
                    )))
                })
        })
    }

    /// A UDP socket bound to `addr` inside this namespace.
    pub fn udp_socket(&self, addr: SocketAddr) -> std::io::Result<UdpSocket> {
        self.enter(|| UdpSocket::bind(addr))?
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        delete_namespace(&self.name);
        registry::unregister(&self.name);
    }
}

/// `ip -n NAMESPACE args…`.
pub(crate) fn ip_in(namespace: &str, args: &[&str]) -> Result<String, CommandError> {
    let mut all = vec!["-n", namespace];
    all.extend_from_slice(args);
    run("ip", &all, None)
}

/// Kills the processes inside namespace `name` and deletes it. Errors are ignored: this is
/// teardown, and a namespace already gone is what it wants.
pub(crate) fn delete_namespace(name: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", name], None) {
        let pids: Vec<&str> = pids.split_whitespace().collect();
        if !pids.is_empty() {
            let mut args = vec!["-KILL"];
            args.extend(pids);
            let _ = run("kill", &args, None);
        }
    }
    let _ = run("ip", &["netns", "delete", name], None);
}
