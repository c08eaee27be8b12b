//! Child processes of the bench binary, for figures whose measured side must have a process of
//! its own (its memory is then its own): the parent drives a child through its stdin (one
//! command per line) and reads its answers from its stdout (one line each, starting with a word,
//! or `error <text>`). The child's side runs with [`run`] and answers with `println!` (Rust's
//! stdout is line-buffered, so each answer leaves at once).

use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout, Command};

/// A child process of this binary; killed if dropped.
pub(crate) struct Child {
    child: tokio::process::Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    /// How long one answer may take.
    wait: Duration,
}

impl Child {
    /// Starts this binary with `args` and returns it with the rest of its `ready` line; each
    /// answer may take `wait`.
    pub(crate) async fn start(args: &[&str], wait: Duration) -> Result<(Self, String)> {
        let exe = std::env::current_exe().context("finding the bench binary")?;
        let mut command = Command::new(exe);
        command.args(args).stderr(Stdio::inherit());
        Self::start_command(command, wait).await
    }

    /// Starts `command` (this binary, maybe through a wrapper such as `nice`) with piped stdin
    /// and stdout, and returns it with the rest of its `ready` line; each answer may take
    /// `wait`.
    pub(crate) async fn start_command(
        mut command: Command,
        wait: Duration,
    ) -> Result<(Self, String)> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("child without stdout"))?;
        let mut child = Self {
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
            wait,
        };
        let ready = child.answer("ready").await?;
        Ok((child, ready))
    }

    /// The next line, which must start with `word`; returns the rest.
    pub(crate) async fn answer(&mut self, word: &str) -> Result<String> {
        let wait = self.wait;
        let line = tokio::time::timeout(wait, self.stdout.next_line())
            .await
            .map_err(|_| anyhow!("no answer {word} in {wait:?}"))??
            .ok_or_else(|| anyhow!("the child exited (expected {word})"))?;
        if let Some(error) = line.strip_prefix("error ") {
            bail!("child: {error}");
        }
        match line.split_once(' ') {
            Some((first, rest)) if first == word => Ok(rest.to_owned()),
            None if line == word => Ok(String::new()),
            _ => bail!(
                "the child answered {:?}, expected {word}",
                line.get(..200).unwrap_or(&line)
            ),
        }
    }

    /// Sends one command line.
    pub(crate) async fn send(&mut self, command: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("child stdin closed"))?;
        stdin.write_all(format!("{command}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Sends `command` and reads the answer `memory <heap bytes> <RSS bytes>`.
    pub(crate) async fn memory(&mut self, command: &str) -> Result<(i64, i64)> {
        self.send(command).await?;
        let answer = self.answer("memory").await?;
        let (heap, rss) = answer
            .split_once(' ')
            .ok_or_else(|| anyhow!("bad memory answer {answer:?}"))?;
        Ok((heap.parse()?, rss.parse()?))
    }

    /// Closes the child's stdin, which ends it; kills it if it takes more than 5 s.
    pub(crate) async fn finish(mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }

    /// Kills the child (measured already: nothing to wait for, no orderly shutdown).
    pub(crate) async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A child's side of the conversation: answers each command line read from stdin with the
/// line `answer` makes of it (or `error <text>`), until stdin ends.
pub(crate) async fn answer_commands(
    mut answer: impl AsyncFnMut(&str) -> Result<String>,
) -> Result<()> {
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    while let Some(command) = commands.next_line().await? {
        match answer(&command).await {
            Ok(line) => println!("{line}"),
            Err(error) => println!("error {error:#}"),
        }
    }
    Ok(())
}

/// Runs `main` on a multi-thread runtime (a child process's entry point).
pub(crate) fn run(main: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let result = runtime.block_on(main);
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// `VmRSS` of this process, in bytes.
pub(crate) fn rss() -> Result<i64> {
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .ok_or_else(|| anyhow!("no VmRSS in /proc/self/status"))?;
    let kib: i64 = line
        .trim()
        .strip_suffix("kB")
        .ok_or_else(|| anyhow!("VmRSS not in kB: {line}"))?
        .trim()
        .parse()?;
    Ok(kib * 1024)
}
