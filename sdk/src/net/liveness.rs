//! Whether a connection's path still works, asked actively.
//!
//! During an outage QUIC backs its retransmissions off exponentially: after 15 s without an
//! answer the next retransmission may be 10 s away, so the path coming back goes unnoticed
//! for that long. Nothing else can be sent meanwhile either, because the data in flight fills
//! the congestion window. A [`PathProbe`] lets the node send one packet past the congestion
//! window whenever it chooses: the probe, a 1-byte QUIC datagram (which every peer ignores,
//! docs/PROTOCOL.md §12.1), is acknowledged as soon as the path is back, and that
//! acknowledgement makes QUIC declare the lost packets lost and send them again at once.
//!
//! The probe works through the congestion controller: every connection gets its own
//! controller (quinn's default, CUBIC) wrapped by [`ProbeController`], which reports an
//! unlimited window while the connection holds a probe credit and spends the credit on the
//! next packet sent.

use std::any::Any;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use quinn_proto::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};
use quinn_proto::RttEstimator;
use tokio::time::Instant;

use crate::sync::lock;

/// The shortest pause between two probes of one connection.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// The longest wait for a probe's answer when deciding whether a connection is alive.
const MAX_ANSWER_WAIT: Duration = Duration::from_secs(1);
/// The shortest wait for a probe's answer (the peer may delay its acknowledgement by 25 ms).
const MIN_ANSWER_WAIT: Duration = Duration::from_millis(150);
/// The probe: a datagram too short to be a relay datagram, which peers ignore.
const PROBE_DATAGRAM: &[u8] = &[0];

/// One connection's probe: its credit for a packet past the congestion window, and when it
/// last probed.
#[derive(Debug, Default)]
pub(crate) struct PathProbe {
    credits: AtomicU32,
    state: Mutex<ProbeState>,
}

#[derive(Debug, Default)]
struct ProbeState {
    /// When the last probe was sent.
    sent_at: Option<Instant>,
    /// The connection's received-datagram count when it was sent.
    received_then: u64,
}

/// What [`PathProbe::probe`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probed {
    /// Something arrived since the last probe: the path works.
    Answered,
    /// A probe went out now.
    Sent,
    /// A probe went out less than [`PROBE_INTERVAL`] ago and nothing has arrived since.
    Waiting,
}

impl PathProbe {
    /// A transport configuration for one connection, with a controller this probe can open.
    pub(crate) fn transport(
        self: &Arc<Self>,
        mut transport: quinn::TransportConfig,
    ) -> quinn::TransportConfig {
        transport.congestion_controller_factory(Arc::new(ProbeFactory {
            probe: self.clone(),
            inner: Arc::new(CubicConfig::default()),
        }));
        transport
    }

    /// Probes `connection` unless it got something since the last probe or was probed less
    /// than [`PROBE_INTERVAL`] ago; cheap enough to call from every sender that waits.
    pub(crate) fn probe(&self, connection: &quinn::Connection) -> Probed {
        let received = connection.stats().udp_rx.datagrams;
        let now = Instant::now();
        {
            let mut state = lock(&self.state);
            if let Some(sent_at) = state.sent_at {
                if received > state.received_then {
                    state.sent_at = None;
                    return Probed::Answered;
                }
                if now < sent_at + PROBE_INTERVAL {
                    return Probed::Waiting;
                }
            }
            state.sent_at = Some(now);
            state.received_then = received;
        }
        self.send(connection);
        Probed::Sent
    }

    /// Sends one probe past the congestion window.
    fn send(&self, connection: &quinn::Connection) {
        self.credits.fetch_add(1, Ordering::Relaxed);
        if connection
            .send_datagram(Bytes::from_static(PROBE_DATAGRAM))
            .is_err()
        {
            // Closed, or the peer takes no datagrams: no packet will spend the credit.
            self.credits.store(0, Ordering::Relaxed);
        }
    }

    /// Whether `connection` still answers: something arrives within a few round trips of a
    /// probe (at most a second).
    pub(crate) async fn answers(&self, connection: &quinn::Connection) -> bool {
        if connection.close_reason().is_some() {
            return false;
        }
        let before = connection.stats().udp_rx.datagrams;
        self.send(connection);
        let wait = (connection.rtt() * 3 + Duration::from_millis(50))
            .clamp(MIN_ANSWER_WAIT, MAX_ANSWER_WAIT);
        let deadline = Instant::now() + wait;
        loop {
            if connection.stats().udp_rx.datagrams > before {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || connection.close_reason().is_some() {
                return false;
            }
            tokio::select! {
                _ = tokio::time::sleep_until((now + Duration::from_millis(10)).min(deadline)) => {}
                _ = connection.closed() => return false,
            }
        }
    }
}

struct ProbeFactory {
    probe: Arc<PathProbe>,
    inner: Arc<CubicConfig>,
}

impl ControllerFactory for ProbeFactory {
    fn build(self: Arc<Self>, now: std::time::Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(ProbeController {
            inner: self.inner.clone().build(now, current_mtu),
            probe: self.probe.clone(),
        })
    }
}

/// A congestion controller that lets one packet per probe credit past the window.
struct ProbeController {
    inner: Box<dyn Controller>,
    probe: Arc<PathProbe>,
}

/// A window no sender fills; above `u32::MAX`, so quinn does not pace either.
const UNLIMITED: u64 = u64::MAX / 2;

impl Controller for ProbeController {
    fn on_sent(&mut self, now: std::time::Instant, bytes: u64, last_packet_number: u64) {
        let _ = self
            .probe
            .credits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |credits| {
                credits.checked_sub(1)
            });
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: std::time::Instant,
        sent: std::time::Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: std::time::Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: std::time::Instant,
        sent: std::time::Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        if self.probe.credits.load(Ordering::Relaxed) > 0 {
            UNLIMITED
        } else {
            self.inner.window()
        }
    }

    fn metrics(&self) -> ControllerMetrics {
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Self {
            inner: self.inner.clone_box(),
            probe: self.probe.clone(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller() -> (ProbeController, Arc<PathProbe>) {
        let probe = Arc::new(PathProbe::default());
        let factory = Arc::new(ProbeFactory {
            probe: probe.clone(),
            inner: Arc::new(CubicConfig::default()),
        });
        let built = factory.build(std::time::Instant::now(), 1200);
        let controller = ProbeController {
            inner: built,
            probe: probe.clone(),
        };
        (controller, probe)
    }

    #[test]
    fn a_credit_opens_the_window_for_one_packet() {
        let (mut controller, probe) = controller();
        let normal = controller.window();
        assert!(normal < UNLIMITED);
        probe.credits.store(1, Ordering::Relaxed);
        assert_eq!(controller.window(), UNLIMITED);
        controller.on_sent(std::time::Instant::now(), 1200, 1);
        assert_eq!(controller.window(), normal);
        // No credit left: further packets do not go below zero.
        controller.on_sent(std::time::Instant::now(), 1200, 2);
        assert_eq!(probe.credits.load(Ordering::Relaxed), 0);
    }
}
