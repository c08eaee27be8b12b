//! The kinds of NAT a lab host can sit behind (issue 12, point 2), and the nftables rules that
//! make each router behave so. LAB.md explains the rules; [`super::nat_check`] proves them.

use std::fmt;
use std::str::FromStr;

/// How a host reaches the lab's public segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatKind {
    /// No NAT: the host has an address on the public segment.
    None,
    /// Endpoint-independent mapping and endpoint-independent filtering ("full cone"): once the
    /// host sent from a port, anyone may send to its mapping.
    FullCone,
    /// Endpoint-independent mapping with address-and-port-dependent filtering: the common home
    /// router (nftables masquerade, a stateful forward filter).
    Home,
    /// Address-and-port-dependent mapping ("symmetric"): every destination gets its own random
    /// port; filtering is address-and-port-dependent too.
    Symmetric,
    /// A home router behind a carrier-grade NAT (RFC 6598 addresses between them), both
    /// endpoint-independent mapping with address-and-port-dependent filtering.
    TwoLayers,
}

impl NatKind {
    /// Every kind, in the order of the matrix's rows and columns.
    pub const ALL: [NatKind; 5] = [
        NatKind::None,
        NatKind::FullCone,
        NatKind::Home,
        NatKind::Symmetric,
        NatKind::TwoLayers,
    ];

    /// The kind's name on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            NatKind::None => "none",
            NatKind::FullCone => "full-cone",
            NatKind::Home => "home",
            NatKind::Symmetric => "symmetric",
            NatKind::TwoLayers => "two-layers",
        }
    }

    /// The mapping and filtering this kind claims, which [`super::nat_check`] measures.
    pub fn claimed(self) -> (Mapping, Filtering) {
        match self {
            NatKind::None => (Mapping::NoTranslation, Filtering::EndpointIndependent),
            NatKind::FullCone => (Mapping::EndpointIndependent, Filtering::EndpointIndependent),
            NatKind::Home | NatKind::TwoLayers => (
                Mapping::EndpointIndependent,
                Filtering::AddressAndPortDependent,
            ),
            NatKind::Symmetric => (
                Mapping::AddressAndPortDependent,
                Filtering::AddressAndPortDependent,
            ),
        }
    }

    /// Whether two hosts behind these kinds can have a direct path at all: not when one side
    /// maps every destination to a new port (symmetric) and the other accepts packets only from
    /// the exact address and port it sent to (symmetric, home router, two layers): the port the
    /// symmetric side uses towards the other is unknown to it. The matrix's goal.
    pub fn direct_possible(self, other: NatKind) -> bool {
        let strict = |kind: NatKind| kind.claimed().1 == Filtering::AddressAndPortDependent;
        !(self == NatKind::Symmetric && strict(other)
            || other == NatKind::Symmetric && strict(self))
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A NAT kind's name that is not one of [`NatKind::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown NAT kind {0:?} (expected none, full-cone, home, symmetric or two-layers)")]
pub struct UnknownNatKind(String);

impl FromStr for NatKind {
    type Err = UnknownNatKind;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        NatKind::ALL
            .into_iter()
            .find(|kind| kind.name() == text)
            .ok_or_else(|| UnknownNatKind(text.to_string()))
    }
}

/// Mapping behaviour (RFC 4787 §4.1): which external address a host's one socket gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mapping {
    /// The host's own address is seen: no NAT.
    NoTranslation,
    /// One external address and port for every destination.
    EndpointIndependent,
    /// One per destination address.
    AddressDependent,
    /// One per destination address and port.
    AddressAndPortDependent,
}

/// Filtering behaviour (RFC 4787 §5): who may send to a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Filtering {
    /// Anyone.
    EndpointIndependent,
    /// Any port of an address the host sent to.
    AddressDependent,
    /// Only the addresses and ports the host sent to.
    AddressAndPortDependent,
}

/// What one router does; [`NatKind::TwoLayers`] is two routers of kind [`RouterNat::Home`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterNat {
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    Home,
    /// Address-and-port-dependent mapping and filtering.
    Symmetric,
}

/// The interface of a router towards the public side.
pub(crate) const WAN: &str = "wan";
/// The bridge of a router's own network.
pub(crate) const LAN: &str = "lan";

/// The external ports a router maps to in `generation` (each rebinding is a new generation, on
/// ports its predecessor never used, so every mapping visibly changes).
fn port_range(generation: u32) -> (u16, u16) {
    let base = 20_000 + (generation % 4) as u16 * 10_000;
    (base, base + 9_999)
}

/// The nftables table `ip lab_nat` of a router: its NAT and its forward filter. Applied whole
/// (deleted and re-created in one transaction), so a new generation replaces the old.
pub(crate) fn ruleset(nat: RouterNat, generation: u32) -> String {
    let (low, high) = port_range(generation);
    // Replies and related ICMP errors pass; what the router's network sends out passes.
    let forward = format!(
        "  chain filter_forwarded {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname \"{LAN}\" oifname \"{WAN}\" accept
{extra}  }}
",
        extra = match nat {
            // Whatever the full cone's map sent in is allowed in.
            RouterNat::FullCone => "    ct status dnat accept\n",
            RouterNat::Home | RouterNat::Symmetric => "",
        }
    );
    let masquerade = match nat {
        RouterNat::FullCone | RouterNat::Home => format!(
            "    oifname \"{WAN}\" meta l4proto {{ tcp, udp }} masquerade to :{low}-{high}
    oifname \"{WAN}\" masquerade
"
        ),
        RouterNat::Symmetric => format!(
            "    oifname \"{WAN}\" meta l4proto {{ tcp, udp }} masquerade to :{low}-{high} random
    oifname \"{WAN}\" masquerade random
"
        ),
    };
    let full_cone = match nat {
        RouterNat::FullCone => format!(
            "  map full_cone {{
    type inet_service : ipv4_addr . inet_service
    flags dynamic,timeout
    timeout 2m
    size 65535
  }}
  chain remember_mapping {{
    type filter hook postrouting priority srcnat + 10; policy accept;
    oifname \"{WAN}\" meta l4proto udp update @full_cone {{ udp sport : ct original ip saddr . ct original proto-src }}
  }}
  chain open_mapping {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname \"{WAN}\" dnat ip to udp dport map @full_cone
  }}
"
        ),
        RouterNat::Home | RouterNat::Symmetric => String::new(),
    };
    // Unsolicited packets to the router itself vanish too, as they do at a real router (no
    // ICMP port unreachable telling a peer that a mapping is gone).
    let input = format!(
        "  chain filter_to_router {{
    type filter hook input priority filter; policy accept;
    iifname \"{WAN}\" ct state established,related accept
    iifname \"{WAN}\" drop
  }}
"
    );
    format!(
        "add table ip lab_nat
delete table ip lab_nat
table ip lab_nat {{
{full_cone}  chain translate {{
    type nat hook postrouting priority srcnat; policy accept;
{masquerade}  }}
{forward}{input}}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_symmetric_facing_strict_filtering_cannot_be_direct() {
        let mut impossible: Vec<(NatKind, NatKind)> = Vec::new();
        for from in NatKind::ALL {
            for to in NatKind::ALL {
                if !from.direct_possible(to) {
                    impossible.push((from, to));
                }
            }
        }
        use NatKind::{Home, Symmetric, TwoLayers};
        assert_eq!(
            impossible,
            vec![
                (Home, Symmetric),
                (Symmetric, Home),
                (Symmetric, Symmetric),
                (Symmetric, TwoLayers),
                (TwoLayers, Symmetric),
            ]
        );
    }

    #[test]
    fn kinds_parse_from_their_names() {
        for kind in NatKind::ALL {
            assert_eq!(kind.name().parse::<NatKind>().ok(), Some(kind));
        }
        assert!("cone".parse::<NatKind>().is_err());
    }
}
