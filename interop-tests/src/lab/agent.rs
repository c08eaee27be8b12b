//! An SDK agent (`src/bin/agent.rs`) running on a lab host, driven through its line protocol:
//! `send`, `path` and `quit` in; `ready`, `recv`, `sent`, `path` and `error` out.
//!
//! Lines arrive interleaved (a `recv` between a `send` and its `sent`), so every line read
//! while waiting for another kind is kept in a backlog, where the next wait for its kind finds
//! it first.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry::Address;

use ferry_testkit::harness::{HarnessError, Process};

use super::tally::Tally;
use super::topology::{HostId, Lab};
use super::LabError;

/// How long an agent may take to print `ready`.
const READY: Duration = Duration::from_secs(20);
/// How long an agent may take to answer `path`.
const PATH_ANSWER: Duration = Duration::from_secs(5);
/// Lines kept unread at most (a run that never reads its `recv` lines is a broken test).
const MAX_BACKLOG: usize = 2_000_000;

/// Why driving an agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The host is not in the lab.
    #[error(transparent)]
    Lab(#[from] LabError),
    /// The process failed to start, exited, or did not print the line in time.
    #[error(transparent)]
    Harness(#[from] HarnessError),
    /// A `send` failed: the agent printed `error sending TAG: …`.
    #[error("{name}: sending {tag} failed: {text}")]
    Send {
        /// The agent's name.
        name: String,
        /// The send's tag.
        tag: String,
        /// The agent's explanation.
        text: String,
    },
    /// The agent does not know the `path` command (it answered "unknown command").
    #[error(
        "{name}: the agent has no `path <node id>` command (it answered {answer:?}): direct and \
         relayed cannot be told apart until it reports its paths"
    )]
    PathUnsupported {
        /// The agent's name.
        name: String,
        /// Its answer.
        answer: String,
    },
    /// The agent said nothing to `path` in time.
    #[error(
        "{name} did not answer `path {node}` within {timeout:?}: direct and relayed cannot be \
         told apart until the agent reports its paths"
    )]
    PathNoAnswer {
        /// The agent's name.
        name: String,
        /// The node asked about.
        node: String,
        /// How long it was given.
        timeout: Duration,
    },
    /// A line that does not say what its first word promises (a `ready` without a node and
    /// an address, a `path` answer of none of the three forms).
    #[error("{name}: unexpected line {line:?}")]
    Unexpected {
        /// The agent's name.
        name: String,
        /// The line.
        line: String,
    },
    /// The agent printed more lines than anyone read.
    #[error("{name}: more than {MAX_BACKLOG} unread lines")]
    Backlog {
        /// The agent's name.
        name: String,
    },
}

/// How an agent reaches a peer, by its own account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathState {
    /// A direct connection to this address.
    Direct(SocketAddr),
    /// Through this relay node.
    Relayed(String),
    /// No connection.
    None,
}

impl PathState {
    /// Parses what follows `path <node id> ` in an agent's answer: `direct <socket address>`,
    /// `relayed <relay node id>` or `none`.
    pub fn parse(answer: &str) -> Option<Self> {
        match answer.split_once(' ') {
            Some(("direct", addr)) => addr.parse().ok().map(PathState::Direct),
            Some(("relayed", relay)) if !relay.is_empty() && !relay.contains(' ') => {
                Some(PathState::Relayed(relay.to_string()))
            }
            None if answer == "none" => Some(PathState::None),
            _ => None,
        }
    }
}

/// One message an agent handed to its application (a `recv` line of a payload `TAG N`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The sending node's id.
    pub from: String,
    /// The message id (`-` for a message of a non-durable mailbox).
    pub id: String,
    /// The tag of the `send` it came from.
    pub tag: String,
    /// Its number within that send.
    pub number: u64,
}

impl Received {
    /// Parses a `recv FROM ID TAG N` line.
    pub fn parse(line: &str) -> Option<Self> {
        let mut words = line.strip_prefix("recv ")?.split(' ');
        Some(Self {
            from: words.next()?.to_string(),
            id: words.next()?.to_string(),
            tag: words.next()?.to_string(),
            number: words.next()?.parse().ok()?,
        })
    }
}

/// An agent process on a lab host.
pub struct LabAgent {
    name: String,
    process: Process,
    node: String,
    address: Address,
    backlog: VecDeque<String>,
}

impl LabAgent {
    /// Starts `program` (an agent binary) with `args` on `host` and waits for its `ready`.
    pub fn start(
        lab: &Lab,
        host: HostId,
        name: &str,
        program: &Path,
        args: &[String],
    ) -> Result<Self, AgentError> {
        let mut command = lab.host(host)?.namespace().command(program);
        command.args(args);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        let mut process = Process::start(name, command)?;
        let ready = process.wait_for_prefix("ready ", READY)?;
        let parsed = ready
            .split_once(' ')
            .and_then(|(node, address)| Some((node.to_string(), address.parse().ok()?)));
        let Some((node, address)) = parsed else {
            return Err(AgentError::Unexpected {
                name: name.to_string(),
                line: ready,
            });
        };
        Ok(Self {
            name: name.to_string(),
            process,
            node,
            address,
            backlog: VecDeque::new(),
        })
    }

    /// The agent's name in the run.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its node id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Its mailbox address, as it printed it.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The process (to kill it, read its stderr).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// Tells the agent to send `count` messages `TAG 0` … `TAG count-1` to `to`.
    pub fn send(&mut self, to: &Address, count: u64, tag: &str) -> Result<(), AgentError> {
        Ok(self
            .process
            .send_line(&format!("send {to} {count} {tag}"))?)
    }

    /// Waits until every message of the send tagged `tag` is acknowledged.
    pub fn wait_sent(&mut self, tag: &str, timeout: Duration) -> Result<(), AgentError> {
        let sent = format!("sent {tag} ");
        let failed = format!("error sending {tag}: ");
        let line = self.take(&format!("{sent}…"), timeout, |line| {
            line.starts_with(&sent) || line.starts_with(&failed)
        })?;
        match line.strip_prefix(&failed) {
            Some(text) => Err(AgentError::Send {
                name: self.name.clone(),
                tag: tag.to_string(),
                text: text.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// The next message the agent received, waiting up to `timeout`.
    pub fn next_received(&mut self, timeout: Duration) -> Result<Received, AgentError> {
        let line = self.take("recv …", timeout, |line| Received::parse(line).is_some())?;
        Received::parse(&line).ok_or_else(|| AgentError::Unexpected {
            name: self.name.clone(),
            line,
        })
    }

    /// Every message received so far that no wait took, without waiting.
    pub fn received_now(&mut self) -> Vec<Received> {
        let lines = self.process.drain();
        self.backlog.extend(lines);
        let mut received = Vec::new();
        self.backlog.retain(|line| match Received::parse(line) {
            Some(message) => {
                received.push(message);
                false
            }
            None => true,
        });
        received
    }

    /// Counts the messages the agent receives into `tally` until `done(tally)` holds or
    /// `timeout` passes, then what else already came (a duplicate right behind the last
    /// message). Returns whether `done` was reached; missing messages are the caller's to count
    /// as lost.
    pub fn receive_until(
        &mut self,
        tally: &mut Tally,
        timeout: Duration,
        done: impl Fn(&Tally) -> bool,
    ) -> Result<bool, AgentError> {
        let deadline = Instant::now() + timeout;
        while !done(tally) {
            match self.next_received(deadline.saturating_duration_since(Instant::now())) {
                Ok(message) => tally.record(&message),
                Err(AgentError::Harness(HarnessError::Timeout { .. })) => break,
                Err(error) => return Err(error),
            }
        }
        for message in self.received_now() {
            tally.record(&message);
        }
        Ok(done(tally))
    }

    /// Asks how the agent reaches `node` (`path NODE`).
    pub fn path(&mut self, node: &str) -> Result<PathState, AgentError> {
        self.process.send_line(&format!("path {node}"))?;
        let answer = format!("path {node} ");
        let line = self
            .take(&answer, PATH_ANSWER, |line| {
                line.starts_with(&answer) || line.starts_with("error unknown command: path")
            })
            .map_err(|error| match error {
                AgentError::Harness(HarnessError::Timeout { .. }) => AgentError::PathNoAnswer {
                    name: self.name.clone(),
                    node: node.to_string(),
                    timeout: PATH_ANSWER,
                },
                other => other,
            })?;
        let Some(rest) = line.strip_prefix(&answer) else {
            return Err(AgentError::PathUnsupported {
                name: self.name.clone(),
                // "error unknown command: path <node id>": the node id says nothing more.
                answer: line.split(": ").next().unwrap_or_default().to_string(),
            });
        };
        PathState::parse(rest).ok_or_else(|| AgentError::Unexpected {
            name: self.name.clone(),
            line: line.clone(),
        })
    }

    /// Asks `quit` and waits up to `timeout` for the process to end.
    pub fn quit(&mut self, timeout: Duration) -> Result<(), AgentError> {
        self.process.send_line("quit")?;
        self.process.wait_exit(timeout);
        Ok(())
    }

    /// The first line matching `wanted`: from the backlog, else read (keeping the others).
    fn take(
        &mut self,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<String, AgentError> {
        if let Some(index) = self.backlog.iter().position(|line| wanted(line)) {
            if let Some(line) = self.backlog.remove(index) {
                return Ok(line);
            }
        }
        let deadline = Instant::now() + timeout;
        let backlog = &mut self.backlog;
        let line = self.process.wait_for(
            what,
            deadline.saturating_duration_since(Instant::now()),
            |line| wanted(line).then(|| line.to_string()),
            |line| backlog.push_back(line.to_string()),
        )?;
        if self.backlog.len() > MAX_BACKLOG {
            return Err(AgentError::Backlog {
                name: self.name.clone(),
            });
        }
        Ok(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_answers_parse_in_their_three_forms_and_nothing_else() {
        assert_eq!(
            PathState::parse("direct 198.18.0.11:20001"),
            Some(PathState::Direct(
                "198.18.0.11:20001"
                    .parse()
                    .unwrap_or_else(|_| unreachable!())
            ))
        );
        assert_eq!(
            PathState::parse("relayed abc"),
            Some(PathState::Relayed("abc".to_string()))
        );
        assert_eq!(PathState::parse("none"), Some(PathState::None));
        for bad in [
            "",
            "direct",
            "direct nowhere",
            "relayed ",
            "relayed a b",
            "none x",
            "up",
        ] {
            assert_eq!(PathState::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn recv_lines_parse_into_sender_id_tag_and_number() {
        assert_eq!(
            Received::parse("recv node1 - during 17"),
            Some(Received {
                from: "node1".to_string(),
                id: "-".to_string(),
                tag: "during".to_string(),
                number: 17,
            })
        );
        for bad in [
            "recv node1 - during",
            "recv node1 - during x",
            "sent during 17",
            "recv",
        ] {
            assert_eq!(Received::parse(bad), None, "{bad:?}");
        }
    }
}
