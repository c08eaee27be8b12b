//! Running the system's network tools (`ip`, `nft`, `tc`, `sysctl`, `conntrack`) for the lab,
//! each failure a [`CommandError`] naming the command and what it printed.

use std::io::Write as _;
use std::process::{Command, ExitStatus, Stdio};

/// A network tool that could not be started or that failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The tool could not be started: it is not installed, or not on PATH.
    #[error(
        "cannot run `{command}`: {source}; the lab needs root, iproute2 and nftables \
         (scripts/test.sh installs nftables and conntrack when missing)"
    )]
    Spawn {
        /// The command line.
        command: String,
        /// Why it could not be started.
        source: std::io::Error,
    },
    /// The tool ran and exited with a failure.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// How it exited.
        status: ExitStatus,
        /// What it wrote to stderr (the tool's own explanation).
        stderr: String,
    },
}

/// Runs `program` with `args`, feeding it `input` on stdin when given; returns its stdout.
pub(crate) fn run(
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, CommandError> {
    let command = format!("{program} {}", args.join(" "));
    let spawn_error = |source| CommandError::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input.as_bytes()).map_err(spawn_error)?;
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(CommandError::Failed {
            command: match input {
                // The script is the interesting part of an nft failure.
                Some(input) => format!("{command} <<EOF\n{input}EOF"),
                None => command,
            },
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}
