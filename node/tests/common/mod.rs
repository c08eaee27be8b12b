//! Running the real `ferry` binary in tests: a command with the user's data directory kept
//! away, and a guard that reads a child's standard output line by line and kills it when
//! dropped.
#![allow(dead_code, clippy::unwrap_used)] // shared by several test binaries; tests unwrap

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub(crate) const WAIT: Duration = Duration::from_secs(30);

pub(crate) fn ferry() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    // Keep the defaults away from the user's data directory.
    command
        .env_remove("FERRY_DATA")
        .env_remove("XDG_DATA_HOME")
        .env("HOME", "/nonexistent-home-for-ferry-tests")
        .env("RUST_LOG", "warn");
    command
}

/// Runs `ferry ARGS` to completion.
pub(crate) fn run(args: &[&str]) -> Output {
    ferry().args(args).stdin(Stdio::null()).output().unwrap()
}

pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A child process killed (and reaped) when dropped; its stdout lines arrive on a channel.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) lines: mpsc::Receiver<String>,
}

impl Daemon {
    pub(crate) fn start(args: &[&str]) -> Self {
        Self::start_with(args, Stdio::null())
    }

    /// Like [`Daemon::start`], with standard input a pipe the test writes to.
    #[allow(dead_code)] // not every test binary uses it
    pub(crate) fn start_with_stdin(args: &[&str]) -> (Self, std::process::ChildStdin) {
        let mut daemon = Self::start_with(args, Stdio::piped());
        let stdin = daemon.child.stdin.take().unwrap();
        (daemon, stdin)
    }

    fn start_with(args: &[&str], stdin: Stdio) -> Self {
        let mut child = ferry()
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// The next line of standard output; panics with the child's stderr if it exits first.
    pub(crate) fn line(&mut self) -> String {
        match self.lines.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(error) => {
                let _ = self.child.kill();
                let mut err = String::new();
                if let Some(mut stderr) = self.child.stderr.take() {
                    let _ = stderr.read_to_string(&mut err);
                }
                panic!("no line from ferry ({error}); stderr: {err}");
            }
        }
    }

    /// Sends SIGTERM and waits up to `within` for the exit.
    pub(crate) fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        ferry_testkit::wait::wait_for_value_blocking_within(
            "the exit after SIGTERM",
            within,
            || self.child.try_wait().unwrap(),
        )
    }

    /// The next line, which must start with `prefix`; returns the rest.
    pub(crate) fn field(&mut self, prefix: &str) -> String {
        let line = self.line();
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
            .to_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
