//! Noticing that this node's network changed: a node bound to a wildcard address looks at the
//! machine's interface addresses every [`POLL_INTERVAL`]. When they change (the host moved to
//! another network, got a new address, a VPN came up), the addresses it mints from then on
//! carry the new interface addresses, its relays are asked again where they see it, every
//! direct connection is dialed again (one whose path died is replaced, docs/PROTOCOL.md §2.4),
//! and every relayed peer is offered a new hole punch.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use crate::net::hints::{machine_interfaces, InterfaceAddr};
use crate::net::Net;

/// How often the interfaces are looked at.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The addresses that matter for reaching this node: those of interfaces that are up.
fn usable(interfaces: &[InterfaceAddr]) -> BTreeSet<IpAddr> {
    interfaces
        .iter()
        .filter(|interface| interface.up)
        .map(|interface| interface.ip)
        .collect()
}

/// Watches the interfaces until the node shuts down; `known` is what the node was bound with.
pub(crate) async fn watch(node: Arc<Net>, known: Vec<InterfaceAddr>) {
    let mut known = usable(&known);
    // The first look is one interval after the bind, which has just read the interfaces.
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + POLL_INTERVAL, POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let interfaces = machine_interfaces();
        let now = usable(&interfaces);
        if now == known {
            continue;
        }
        info!(before = ?known, now = ?now, "the network interfaces changed");
        known = now;
        node.interfaces_changed(&interfaces);
        changed(&node);
    }
}

/// This node's network changed: relays are asked again where they see it, direct connections
/// are dialed again, relayed peers are offered a new punch.
pub(crate) fn changed(node: &Arc<Net>) {
    for (relay, _) in &node.config.relays {
        if let Some(link) = node.peers.link(relay) {
            let observing = node.clone();
            let relay = *relay;
            node.tasks.spawn(async move {
                crate::net::observation::learn_from(&observing, relay, &link.connection).await;
            });
        }
    }
    crate::net::hole_punch::network_changed(node);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_interfaces_that_are_up_count() {
        let up = InterfaceAddr {
            ip: "10.0.0.2".parse().unwrap(),
            up: true,
        };
        let down = InterfaceAddr {
            ip: "10.0.0.3".parse().unwrap(),
            up: false,
        };
        assert_eq!(usable(&[up, down]), BTreeSet::from([up.ip]));
    }
}
