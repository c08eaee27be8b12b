//! Running real processes in tests: the `ferry` binary and SDK programs such as the `agent`.
//!
//! A [`Process`] reads its child's stdout line by line on a thread, so a test waits for a line
//! (readiness, a result) with a deadline instead of sleeping, and keeps every line for later.
//! Stderr goes to a file in the process's own temporary directory, shown when a wait fails.
//! Dropping a `Process` kills the child and waits for it, so a failed test leaves nothing
//! running.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Why a process could not be started or did not say what was expected.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The program could not be started.
    #[error("starting {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// No matching line before the deadline.
    #[error("{name}: no line matching {what} within {timeout:?}; stderr:\n{stderr}")]
    Timeout {
        /// The process's name in the test.
        name: String,
        /// What was waited for.
        what: String,
        /// How long.
        timeout: Duration,
        /// The end of its stderr.
        stderr: String,
    },
    /// The process closed its stdout (exited) before the line came.
    #[error("{name} exited before printing a line matching {what}; stderr:\n{stderr}")]
    Exited {
        /// The process's name in the test.
        name: String,
        /// What was waited for.
        what: String,
        /// The end of its stderr.
        stderr: String,
    },
    /// Writing to its stdin failed.
    #[error("{name}: writing to stdin: {source}")]
    Stdin {
        /// The process's name in the test.
        name: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A running child process with its output.
pub struct Process {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Starts `command` with piped stdin and stdout; `name` labels it in errors.
    pub fn start(name: &str, mut command: Command) -> Result<Self, HarnessError> {
        let spawn_error = |source| HarnessError::Spawn {
            program: format!("{command:?}"),
            source,
        };
        let dir = tempfile::tempdir().map_err(spawn_error)?;
        let stderr_path = dir.path().join("stderr");
        let stderr = std::fs::File::create(&stderr_path).map_err(spawn_error)?;
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                program: format!("{command:?}"),
                source,
            })?;
        let stdout = child.stdout.take();
        let stdin = child.stdin.take();
        let (sender, lines) = mpsc::channel();
        if let Some(stdout) = stdout {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Self {
            name: name.to_string(),
            child,
            stdin,
            lines,
            stderr_path,
            _dir: dir,
        })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The file the process's stderr goes to (removed with the `Process`).
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// The end of what the process wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].to_string()
    }

    /// Waits up to `timeout` for the next line for which `matches` returns `Some`, skipping
    /// (and passing to `skipped`) the lines before it.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut matches: impl FnMut(&str) -> Option<T>,
        mut skipped: impl FnMut(&str),
    ) -> Result<T, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => match matches(&line) {
                    Some(found) => return Ok(found),
                    None => skipped(&line),
                },
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(HarnessError::Timeout {
                        name: self.name.clone(),
                        what: what.to_string(),
                        timeout,
                        stderr: self.stderr_tail(),
                    })
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(HarnessError::Exited {
                        name: self.name.clone(),
                        what: what.to_string(),
                        stderr: self.stderr_tail(),
                    })
                }
            }
        }
    }

    /// Waits for the next line starting with `prefix` and returns the rest of it.
    pub fn wait_for_prefix(
        &mut self,
        prefix: &str,
        timeout: Duration,
    ) -> Result<String, HarnessError> {
        self.wait_for(
            prefix,
            timeout,
            |line| line.strip_prefix(prefix).map(str::to_string),
            |_| {},
        )
    }

    /// Every line printed so far that no wait consumed, without waiting.
    pub fn drain(&mut self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// Every remaining line up to the end of the process's output (after it exited or was
    /// killed), waiting at most `timeout` for the reader to get there.
    pub fn rest(&mut self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            lines.push(line);
        }
        lines
    }

    /// Writes one line to the process's stdin.
    pub fn send_line(&mut self, line: &str) -> Result<(), HarnessError> {
        let name = self.name.clone();
        let stdin = self.stdin.as_mut().ok_or_else(|| HarnessError::Stdin {
            name: name.clone(),
            source: std::io::Error::other("stdin closed"),
        })?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(|source| HarnessError::Stdin { name, source })
    }

    /// Closes stdin (end of input for the process).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Sends SIGKILL and waits for the process to end.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        // std can only SIGKILL a child; the kill command sends the polite signal.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.wait_exit(timeout)
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Polling for the exit (std has no wait with a timeout), up to the deadline.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `ferry` binary of this workspace, built by `cargo test --workspace` next to the test
/// binaries (`target/<profile>/ferry`).
pub fn ferry_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test binary> -> target/<profile>/ferry
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    profile_dir.join(format!("ferry{}", std::env::consts::EXE_SUFFIX))
}

/// Counts this process's open file descriptors (Linux), for leak checks.
pub fn open_fds(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|dir| dir.count())
}

/// The resident set size of process `pid` in KiB (Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}
