//! Impairments of one lab link: loss and partition as nftables rules on both ends' ingress,
//! delay as an NFQUEUE rule at the inner end read by the lab's stage, bandwidth as `tc tbf` on
//! both ends' egress.
//!
//! Every link of the lab joins a namespace with an IP stack (its inner end: a host's `eth0`, a
//! router's `wan`; one link per such namespace) to a port of a bridge one level up (a router's
//! network or the public segment). Drops happen where a packet comes off the wire, at the
//! ingress hook of the end that receives it, so a sender never learns of them (a drop in the
//! sender's own output path would fail its `send` with EPERM, which no real network does).
//!
//! This kernel has no `nft_queue` expression, so the delay rule is the iptables NFQUEUE target
//! (`iptables-nft`, from the Debian package iptables): mangle PREROUTING for packets arriving
//! over the link, mangle POSTROUTING for packets leaving over it.

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

/// The netfilter queue the delay stage of a namespace reads (queues are per namespace, and each
/// namespace has one link inner end).
pub(crate) const DELAY_QUEUE: u16 = 0;

/// The nftables table that drops what `shape` drops of the packets arriving on `device`:
/// applied whole, so each change replaces the previous rules in one transaction.
pub(crate) fn drop_ruleset(table: &str, device: &str, shape: &LinkShape) -> String {
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
    format!(
        "add table netdev {table}
delete table netdev {table}
table netdev {table} {{
  chain arriving {{
    type filter hook ingress device \"{device}\" priority 0; policy accept;
{rules}  }}
}}
"
    )
}

/// The `iptables` commands (arguments) that make the delay rules of `interface`: the mangle
/// chains flushed, then, with a delay, every packet arriving or leaving over `interface` sent
/// to [`DELAY_QUEUE`] (no `--queue-bypass`: without its stage the link carries nothing, which
/// shows).
pub(crate) fn delay_rules(interface: &str, delayed: bool) -> Vec<Vec<String>> {
    let mut commands = vec![
        vec!["-w", "-t", "mangle", "-F", "PREROUTING"],
        vec!["-w", "-t", "mangle", "-F", "POSTROUTING"],
    ];
    let queue = DELAY_QUEUE.to_string();
    if delayed {
        commands.push(vec![
            "-w",
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-i",
            interface,
            "-j",
            "NFQUEUE",
            "--queue-num",
            &queue,
        ]);
        commands.push(vec![
            "-w",
            "-t",
            "mangle",
            "-A",
            "POSTROUTING",
            "-o",
            interface,
            "-j",
            "NFQUEUE",
            "--queue-num",
            &queue,
        ]);
    }
    commands
        .into_iter()
        .map(|args| args.into_iter().map(str::to_string).collect())
        .collect()
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
