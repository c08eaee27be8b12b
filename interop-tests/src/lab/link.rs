//! Impairments of one lab link: loss, partition and delay as nftables rules in the namespace
//! at the link's inner end (a host's `eth0`, a router's `wan`), bandwidth as `tc tbf` on both
//! ends.
//!
//! Every link of the lab joins a namespace with an IP stack (its inner end: one link per such
//! namespace) to a bridge one level up (a router's network or the public segment). The rules sit
//! at the inner end's prerouting hook (packets arriving over the link, before connection
//! tracking sees them) and postrouting hook (packets leaving over it, after NAT), so each
//! impairment applies to both directions.

use std::time::Duration;

/// A link's impairments; the default is a perfect link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkShape {
    /// Percent of packets dropped in each direction (0 to 100).
    pub loss_percent: u8,
    /// Every packet dropped, both ways.
    pub partitioned: bool,
    /// One-way delay added in each direction by the lab's user-space stage.
    pub delay: Duration,
    /// Rate limit of each direction.
    pub bandwidth: Option<Bandwidth>,
}

/// A rate limit, in kilobits per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bandwidth {
    /// Kilobits (1000 bits) per second.
    pub kbit_per_second: u32,
}

/// The nftables queue the delay stage of a namespace reads (queues are per namespace, and each
/// namespace has one link inner end).
pub(crate) const DELAY_QUEUE: u16 = 0;

/// The table `inet lab_link` for a link whose inner end is `interface`: applied whole, so each
/// change replaces the previous rules in one transaction.
pub(crate) fn ruleset(interface: &str, shape: &LinkShape) -> String {
    let mut rules = String::new();
    if shape.partitioned {
        rules.push_str("    drop\n");
    }
    if shape.loss_percent > 0 {
        rules.push_str(&format!(
            "    numgen random mod 100 < {} drop\n",
            shape.loss_percent.min(100)
        ));
    }
    if !shape.delay.is_zero() {
        // No `bypass`: without its stage the link carries nothing, which shows.
        rules.push_str(&format!("    queue num {DELAY_QUEUE}\n"));
    }
    let chain = |name: &str, hook: &str, priority: i32, matching: &str| {
        let body: String = rules
            .lines()
            .map(|rule| format!("    {matching} \"{interface}\" {}\n", rule.trim()))
            .collect();
        format!(
            "  chain {name} {{\n    type filter hook {hook} priority {priority}; policy accept;\n{body}  }}\n"
        )
    };
    format!(
        "add table inet lab_link\ndelete table inet lab_link\ntable inet lab_link {{\n{}{}}}\n",
        // Before connection tracking (-200): a dropped packet leaves no state.
        chain("arriving", "prerouting", -300, "iifname"),
        // After NAT (100): what leaves is what the wire carries.
        chain("leaving", "postrouting", 300, "oifname"),
    )
}

/// `tc` arguments that shape `interface`'s egress to `bandwidth`, or remove the shaping.
pub(crate) fn tbf_args(interface: &str, bandwidth: Option<Bandwidth>) -> Vec<String> {
    match bandwidth {
        Some(Bandwidth { kbit_per_second }) => {
            // A burst of at least 10 ms at the rate (the kernel needs rate / HZ) and of a few
            // full-size packets; up to 100 ms of queue before tail drop, like a modest router.
            let burst = (u64::from(kbit_per_second) * 1000 / 8 / 100).max(16 * 1024);
            [
                "qdisc",
                "replace",
                "dev",
                interface,
                "root",
                "tbf",
                "rate",
                &format!("{kbit_per_second}kbit"),
                "burst",
                &burst.to_string(),
                "latency",
                "100ms",
            ]
            .map(str::to_string)
            .to_vec()
        }
        None => ["qdisc", "del", "dev", interface, "root"]
            .map(str::to_string)
            .to_vec(),
    }
}
