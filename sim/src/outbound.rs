//! The sending side: one conversation per sending application, each run a proto [`Sender`]
//! driven as `sdk/src/outbound.rs` drives it — its actions carried out on the simulated
//! network, the network's events and the time fed back — with the application's send window
//! (`send_window` bytes queued or unacknowledged) in front of it.

use std::collections::VecDeque;
use std::time::Duration;

use ferry_proto::frame::ErrorCode;
use ferry_proto::sender::{self, Action, Loss, RunFailure, Sender, Ticket};

use crate::network::{Dir, StreamId};
use crate::world::{Event, World};

/// Why a stream or a connection could not be had, as the sender is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SimError {
    /// No connection: the dial failed.
    DialFailed,
    /// The connection was lost.
    ConnectionLost,
    /// The receiver stopped reading the stream.
    Stopped,
}

/// One run of a conversation.
pub(crate) struct Conversation {
    /// The protocol.
    pub(crate) sm: Sender<SimError>,
    /// The run (the checker's index).
    pub(crate) run: usize,
    /// The stream it writes to.
    pub(crate) stream: Option<StreamId>,
    /// Messages queued and not resolved: ticket, number, cost against the window.
    pub(crate) tickets: VecDeque<(Ticket, u64, usize)>,
    /// The next ticket.
    next_ticket: Ticket,
    /// Bytes of the window in use.
    pub(crate) cost: usize,
    /// When the path was last probed.
    probed_at: Duration,
    /// The wake-up last scheduled.
    timer: Option<Duration>,
}

impl World {
    /// Wakes the application of `source` after `after`, unless it is woken sooner.
    pub(crate) fn wake_app(&mut self, source: usize, after: Duration) {
        let at = self.now + after;
        if self.sources[source].wake.is_none_or(|wake| at < wake) {
            self.sources[source].wake = Some(at);
            self.schedule(after, Event::AppSend { source });
        }
    }

    /// The application of `source` sends what its window takes.
    pub(crate) fn app_send(&mut self, source: usize) {
        if self.sources[source].wake != Some(self.now) {
            return; // a later or an earlier wake-up replaced this one
        }
        self.sources[source].wake = None;
        let node = self.sources[source].spec.node;
        if !self.nodes[node].up {
            return;
        }
        let window = self.scenario.limits.send_window;
        loop {
            let Some((number, payload)) = self.sources[source].peek(&mut self.rng, source) else {
                break;
            };
            let cost = sender::cost(payload.len());
            if !self.nodes[node].conversations.contains_key(&source) {
                self.start_run(source);
            }
            let now = self.instant();
            let Some(conversation) = self.nodes[node].conversations.get_mut(&source) else {
                break;
            };
            if conversation.cost + cost > window {
                break; // waits for acknowledgements (they wake it)
            }
            let ticket = conversation.next_ticket;
            conversation.next_ticket += 1;
            conversation.cost += cost;
            conversation.tickets.push_back((ticket, number, cost));
            conversation.sm.push(now, ticket, payload);
            let run = conversation.run;
            self.sources[source].sent(number);
            self.check.pushed(run, ticket, number);
            self.pump(node, source);
        }
        if self.sources[source].has_work() {
            let gap = self.draw_gap(self.scenario.pace.send_gap);
            self.wake_app(source, gap);
        }
    }

    /// Begins a run of `source`'s conversation: a fresh epoch.
    fn start_run(&mut self, source: usize) {
        let spec = self.sources[source].spec.clone();
        let target = &self.scenario.mailboxes[spec.target];
        let to = &self.nodes[target.node];
        let target_address = to.identity.address(target.slot);
        let from = self.nodes[spec.node].identity.address(spec.slot);
        let epoch = self.rng.next_u64();
        let seed = self.rng.next_u64();
        let run = self.check.run_started(source, epoch, target.node, self.now);
        let sm = Sender::new(
            std::sync::Arc::new(self.scenario.limits.sender),
            target_address,
            from,
            epoch,
            seed,
            self.instant(),
        );
        self.trace(|| format!("run {run} of source {source}: epoch {epoch:x}"));
        self.nodes[spec.node].conversations.insert(
            source,
            Conversation {
                sm,
                run,
                stream: None,
                tickets: VecDeque::new(),
                next_ticket: 0,
                cost: 0,
                probed_at: self.now,
                timer: None,
            },
        );
    }

    /// Carries out what the run of `source` at `node` asks, until it asks nothing more.
    pub(crate) fn pump(&mut self, node: usize, source: usize) {
        loop {
            let Some(conversation) = self.nodes[node].conversations.get_mut(&source) else {
                return;
            };
            let Some(action) = conversation.sm.poll_action() else {
                break;
            };
            let run = conversation.run;
            self.trace(|| format!("node {node} run {run}: {}", describe(&action)));
            self.act(node, source, action);
        }
        let base = self.instant() - self.now;
        let Some(conversation) = self.nodes[node].conversations.get_mut(&source) else {
            return;
        };
        if conversation.sm.is_ended() {
            let run = conversation.run;
            if !conversation.tickets.is_empty() {
                self.check.fail(
                    "a run ended with messages unresolved",
                    format!(
                        "run {run} ended idle with tickets {:?}",
                        conversation.tickets
                    ),
                );
            }
            self.nodes[node].conversations.remove(&source);
            if self.sources[source].has_work() {
                self.wake_app(source, Duration::ZERO);
            }
            return;
        }
        let Some(at) = conversation.sm.poll_timeout() else {
            return;
        };
        let at = at.saturating_duration_since(base);
        if conversation.timer != Some(at) {
            conversation.timer = Some(at);
            let run = conversation.run;
            let delay = at.saturating_sub(self.now);
            self.schedule(delay, Event::SenderTimer { node, source, run });
        }
    }

    /// One action of a run.
    fn act(&mut self, node: usize, source: usize, action: Action<SimError>) {
        let now = self.instant();
        match action {
            Action::Open(head) => self.open_stream(node, source, head),
            Action::Write(bytes) => {
                let Some(stream) = self.conversation(node, source).and_then(|c| c.stream) else {
                    return;
                };
                if let Err(error) = self.write(stream, Dir::Out, bytes) {
                    if let Some(conversation) = self.conversation(node, source) {
                        conversation.sm.stream_failed(now, error, Loss::Retry, true);
                    }
                }
            }
            Action::Reset(_) | Action::Finish => {
                let Some(stream) = self
                    .conversation(node, source)
                    .and_then(|c| c.stream.take())
                else {
                    return;
                };
                if matches!(action, Action::Finish) {
                    self.finish(stream, Dir::Out);
                } else {
                    self.reset(stream, Dir::Out);
                }
                self.stop_reading(stream, Dir::In);
            }
            Action::Probe => {
                let Some(stream) = self.conversation(node, source).and_then(|c| c.stream) else {
                    return;
                };
                let heard = self.heard_at(stream, Dir::In);
                let at = self.now;
                let Some(conversation) = self.conversation(node, source) else {
                    return;
                };
                let answered = heard > conversation.probed_at;
                conversation.probed_at = at;
                conversation.sm.probed(now, answered);
            }
            Action::Redial => {
                let peer = self.scenario.mailboxes[self.sources[source].spec.target].node;
                self.dial(node, peer);
            }
            Action::Acknowledged { below, .. } => self.acknowledged(node, source, below),
            Action::TooLarge { ticket, size, max } => self.check.fail(
                "a message was refused as too large",
                format!("ticket {ticket}: {size} bytes, limit {max}"),
            ),
            Action::Failed(failure) => self.run_failed(node, source, *failure),
            Action::Idle => {
                if let Some(conversation) = self.conversation(node, source) {
                    conversation.sm.end_idle();
                    let run = conversation.run;
                    self.check.run_ended(run, None, self.now);
                }
            }
        }
    }

    /// The run of `source` at `node`.
    pub(crate) fn conversation(&mut self, node: usize, source: usize) -> Option<&mut Conversation> {
        self.nodes[node].conversations.get_mut(&source)
    }

    /// Every message with a ticket below `below` is in the target mailbox.
    fn acknowledged(&mut self, node: usize, source: usize, below: Ticket) {
        let Some(conversation) = self.conversation(node, source) else {
            return;
        };
        let run = conversation.run;
        let mut resolved = Vec::new();
        while conversation
            .tickets
            .front()
            .is_some_and(|(ticket, ..)| *ticket < below)
        {
            if let Some((ticket, number, cost)) = conversation.tickets.pop_front() {
                conversation.cost -= cost;
                resolved.push((ticket, number));
            }
        }
        for (ticket, number) in resolved {
            self.check.acked(run, ticket);
            self.sources[source].acknowledged(number);
        }
        if self.sources[source].has_work() {
            self.wake_app(source, Duration::ZERO);
        }
    }

    /// The run failed: its unresolved messages go back to the application.
    fn run_failed(&mut self, node: usize, source: usize, failure: RunFailure<SimError>) {
        let Some(conversation) = self.conversation(node, source) else {
            return;
        };
        let stream = conversation.stream.take();
        let numbers: Vec<u64> = conversation.tickets.drain(..).map(|(_, n, _)| n).collect();
        conversation.cost = 0;
        let run = conversation.run;
        if let Some(stream) = stream {
            self.reset(stream, Dir::Out);
            self.stop_reading(stream, Dir::In);
        }
        self.check.run_ended(run, Some(&failure), self.now);
        self.sources[source].failed(numbers);
    }

    /// The wake-up of a run.
    pub(crate) fn sender_timer(&mut self, node: usize, source: usize, run: usize) {
        let now = self.instant();
        let Some(conversation) = self.conversation(node, source) else {
            return;
        };
        if conversation.run != run {
            return;
        }
        if conversation.sm.poll_timeout().is_some_and(|at| at <= now) {
            conversation.timer = None;
            conversation.sm.handle_timeout(now);
        }
        self.pump(node, source);
    }

    /// Bytes from the receiver on the stream of a run.
    pub(crate) fn sender_received(&mut self, node: usize, source: usize, bytes: &[u8]) {
        let now = self.instant();
        if let Some(conversation) = self.conversation(node, source) {
            conversation.sm.received(now, bytes);
        }
        self.pump(node, source);
    }

    /// The receiver finished its side of the stream.
    pub(crate) fn sender_stream_finished(&mut self, node: usize, source: usize) {
        let now = self.instant();
        if let Some(conversation) = self.conversation(node, source) {
            conversation.sm.stream_finished(now); // its Reset action takes the stream
        }
        self.pump(node, source);
    }

    /// The stream of a run failed (its connection was lost, or the receiver reset it).
    pub(crate) fn sender_stream_failed(&mut self, node: usize, source: usize, error: SimError) {
        let now = self.instant();
        if let Some(conversation) = self.conversation(node, source) {
            // The SDK reports every stream failure as the target being unreachable. Its Reset
            // action takes the stream.
            conversation.sm.stream_failed(now, error, Loss::Retry, true);
        }
        self.pump(node, source);
    }

    /// Another connection took over: the run's stream moves there.
    pub(crate) fn sender_superseded(&mut self, node: usize, source: usize) {
        let now = self.instant();
        if let Some(conversation) = self.conversation(node, source) {
            conversation.sm.superseded(now);
        }
        self.pump(node, source);
    }

    /// No stream could be had for a run.
    pub(crate) fn sender_open_failed(&mut self, node: usize, source: usize, peer: usize) {
        let now = self.instant();
        // A target reached within the outbox's time is waited for; one that was not fails.
        let outbox_ttl = self.scenario.limits.sender.outbox_ttl;
        let reached = self.nodes[node]
            .peers
            .get(&peer)
            .and_then(|p| p.reached)
            .is_some_and(|at| self.now.saturating_sub(at) <= outbox_ttl);
        let loss = if reached { Loss::Retry } else { Loss::Fatal };
        if let Some(conversation) = self.conversation(node, source) {
            conversation
                .sm
                .open_failed(now, SimError::DialFailed, loss, true);
        }
        self.pump(node, source);
    }

    /// The stream asked for is open on `stream` and its OPEN written.
    pub(crate) fn sender_opened(
        &mut self,
        node: usize,
        source: usize,
        stream: StreamId,
        head: Vec<u8>,
    ) {
        let now = self.instant();
        let written = self.write(stream, Dir::Out, head);
        let Some(conversation) = self.conversation(node, source) else {
            return;
        };
        match written {
            Ok(()) => {
                conversation.stream = Some(stream);
                conversation.sm.opened(now);
            }
            Err(error) => {
                conversation.sm.open_failed(now, error, Loss::Retry, true);
            }
        }
    }
}

/// An action, for the trace.
fn describe(action: &Action<SimError>) -> String {
    match action {
        Action::Open(head) => format!("open ({} bytes)", head.len()),
        Action::Write(bytes) => format!("write {} bytes", bytes.len()),
        Action::Reset(code) => format!("reset {}", code_name(*code)),
        other => format!("{other:?}"),
    }
}

fn code_name(code: ErrorCode) -> String {
    format!("{}", code.0)
}
