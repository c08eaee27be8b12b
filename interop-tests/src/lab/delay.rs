//! The lab's delay stage: this kernel has no `netem`, so a thread inside a namespace reads the
//! packets its link rules queue (NFQUEUE, through the `nfq` crate) and accepts each one
//! `delay` after it arrived. The delay is constant per link, so packets leave in the order they
//! came.
//!
//! The `nfq` socket has no file descriptor to wait on, so the thread polls it: at least every
//! [`POLL`], sooner when a held packet is due. A packet is timed from the poll that found it, so
//! the added delay is `delay` to `delay + POLL` (plus scheduling).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::link::DELAY_QUEUE;

/// How often the stage looks for new packets.
const POLL: Duration = Duration::from_millis(1);
/// Packets held at once (the kernel's queue limit; beyond it, packets are dropped like a full
/// router queue). About 30 ms of a 1 Gbit/s link of full-size packets.
const MAX_HELD: u32 = 2048;

/// Why a delay stage could not start.
#[derive(Debug, thiserror::Error)]
pub enum DelayError {
    /// The stage's thread could not enter the namespace.
    #[error("entering namespace {namespace} for the delay stage: {source}")]
    Enter {
        /// The namespace.
        namespace: String,
        /// Why.
        source: std::io::Error,
    },
    /// The netfilter queue could not be opened or configured (the kernel lacks
    /// `nfnetlink_queue`, or the process is not root).
    #[error("opening netfilter queue {DELAY_QUEUE} in namespace {namespace}: {source}")]
    Queue {
        /// The namespace.
        namespace: String,
        /// Why.
        source: std::io::Error,
    },
    /// The stage's thread ended before it said whether it started.
    #[error("the delay stage of namespace {namespace} died while starting")]
    Died {
        /// The namespace.
        namespace: String,
    },
}

/// A running delay stage; dropping it stops the thread (held packets are dropped).
#[derive(Debug)]
pub(crate) struct DelayStage {
    delay_micros: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DelayStage {
    /// Starts a stage for the queue of namespace `namespace` (its `/run/netns` name), holding
    /// packets for `delay`. Returns once the queue is bound, so rules may send packets to it.
    pub(crate) fn start(namespace: &str, delay: Duration) -> Result<Self, DelayError> {
        let delay_micros = Arc::new(AtomicU64::new(micros(delay)));
        let stop = Arc::new(AtomicBool::new(false));
        let (started, outcome) = mpsc::channel();
        let thread = {
            let delay_micros = delay_micros.clone();
            let stop = stop.clone();
            let inside = namespace.to_string();
            std::thread::Builder::new()
                .name(format!("delay {namespace}"))
                .spawn(move || match open_queue(&inside) {
                    Ok(queue) => {
                        let _ = started.send(Ok(()));
                        hold_and_release(queue, &delay_micros, &stop);
                    }
                    Err(error) => {
                        let _ = started.send(Err(error));
                    }
                })
                .map_err(|source| DelayError::Enter {
                    namespace: namespace.to_string(),
                    source,
                })?
        };
        match outcome.recv() {
            Ok(Ok(())) => Ok(Self {
                delay_micros,
                stop,
                thread: Some(thread),
            }),
            Ok(Err(error)) => Err(error),
            Err(mpsc::RecvError) => Err(DelayError::Died {
                namespace: namespace.to_string(),
            }),
        }
    }

    /// Changes the delay of packets that arrive from now on.
    pub(crate) fn set_delay(&self, delay: Duration) {
        self.delay_micros.store(micros(delay), Ordering::Relaxed);
    }
}

impl Drop for DelayStage {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn micros(delay: Duration) -> u64 {
    u64::try_from(delay.as_micros()).unwrap_or(u64::MAX)
}

/// Enters the namespace and binds its queue: metadata only (the stage never reads payloads).
fn open_queue(namespace: &str) -> Result<nfq::Queue, DelayError> {
    let enter_error = |source| DelayError::Enter {
        namespace: namespace.to_string(),
        source,
    };
    let file = std::fs::File::open(format!("/run/netns/{namespace}")).map_err(enter_error)?;
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&file),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(|errno| enter_error(errno.into()))?;
    let queue_error = |source| DelayError::Queue {
        namespace: namespace.to_string(),
        source,
    };
    let mut queue = nfq::Queue::open().map_err(queue_error)?;
    queue.bind(DELAY_QUEUE).map_err(queue_error)?;
    queue.set_copy_range(DELAY_QUEUE, 0).map_err(queue_error)?;
    queue
        .set_queue_max_len(DELAY_QUEUE, MAX_HELD)
        .map_err(queue_error)?;
    queue.set_nonblocking(true);
    Ok(queue)
}

/// The stage's loop: take what arrived, accept what is due, wait for the next due packet or
/// the next poll.
fn hold_and_release(mut queue: nfq::Queue, delay_micros: &AtomicU64, stop: &AtomicBool) {
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let delay = Duration::from_micros(delay_micros.load(Ordering::Relaxed));
        loop {
            match queue.recv() {
                Ok(mut message) => {
                    message.set_verdict(nfq::Verdict::Accept);
                    // Never before a packet that came earlier: a shorter new delay waits.
                    let due = held
                        .back()
                        .map_or(now + delay, |(last, _)| (*last).max(now + delay));
                    held.push_back((due, message));
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    tracing::warn!(%error, "delay stage: receiving from the queue failed");
                    return;
                }
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, message)) = held.pop_front() {
                if let Err(error) = queue.verdict(message) {
                    tracing::warn!(%error, "delay stage: releasing a packet failed");
                }
            }
        }
        let wait = held.front().map_or(POLL, |(due, _)| {
            due.saturating_duration_since(now).min(POLL)
        });
        std::thread::sleep(wait);
    }
}
