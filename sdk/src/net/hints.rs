//! The socket-address hints a node puts into the addresses it mints (docs/PROTOCOL.md §4.2,
//! "Hints in minted addresses"): where other nodes should dial it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::address::{Hints, MAX_HINTS};
use crate::config::NodeConfig;

/// One IP address of one of the machine's network interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InterfaceAddr {
    /// The address.
    pub(crate) ip: IpAddr,
    /// Whether its interface is operationally up (Linux: `IFF_RUNNING`).
    pub(crate) up: bool,
}

/// The machine's interface addresses, as the operating system lists them. An enumeration
/// that fails is logged and counts as no interface (the hints fall back to loopback).
pub(crate) fn machine_interfaces() -> Vec<InterfaceAddr> {
    match if_addrs::get_if_addrs() {
        Ok(interfaces) => interfaces
            .iter()
            .map(|interface| InterfaceAddr {
                ip: interface.ip(),
                up: interface.is_oper_up(),
            })
            .collect(),
        Err(error) => {
            tracing::warn!(%error, "listing the network interfaces failed");
            Vec::new()
        }
    }
}

/// Whether `socket`, bound to `[::]`, also takes IPv4 traffic (`IPV6_V6ONLY` off, Linux's
/// default). A socket of another family, or one that cannot be asked, counts as not.
pub(crate) fn is_dual_stack(socket: &std::net::UdpSocket) -> bool {
    let is_v6 = socket.local_addr().is_ok_and(|addr| addr.is_ipv6());
    is_v6
        && socket2::SockRef::from(socket)
            .only_v6()
            .is_ok_and(|only| !only)
}

/// How many socket-address hints minted addresses carry at most when `advertise` is empty: the
/// 4-hint limit less one per relay hint, but always one, so that a direct route is named.
fn derived_limit(config: &NodeConfig) -> usize {
    MAX_HINTS.saturating_sub(config.relays.len()).max(1)
}

/// Whether other hosts could dial `ip`: not unspecified, loopback, link-local or multicast.
fn is_dialable_elsewhere(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            !(ip.is_unspecified() || ip.is_loopback() || ip.is_link_local() || ip.is_multicast())
        }
        IpAddr::V6(ip) => {
            !(ip.is_unspecified()
                || ip.is_loopback()
                || ip.is_unicast_link_local()
                || ip.is_multicast()
                || ip.to_ipv4_mapped().is_some())
        }
    }
}

/// Whether `ip` is in a private range (RFC 1918, carrier-grade NAT 100.64.0.0/10, IPv6 unique
/// local fc00::/7): reachable only inside its network, so it comes after public addresses.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            let [first, second, ..] = ip.octets();
            ip.is_private() || (first == 100 && (second & 0xc0) == 64)
        }
        IpAddr::V6(ip) => ip.is_unique_local(),
    }
}

/// The hints derived from the bound address when `advertise` is empty, the rule of
/// docs/PROTOCOL.md §4.2:
///
/// - bound to a specific IP: exactly the bound address;
/// - bound to a wildcard IP: the addresses of `interfaces` that are up and that other hosts
///   can dial (no loopback, no link-local), of the bound family (`[::]` taking IPv4 too when
///   `dual_stack`), with the bound port. Public addresses come before private ones; the best
///   address of each family comes first, IPv4 before IPv6, then the others in the same
///   order. At most [`derived_limit`] of them;
/// - bound to a wildcard IP on a machine without such an interface: loopback of the bound
///   family, which at least works on this host.
pub(crate) fn derived_hints(
    config: &NodeConfig,
    bound: SocketAddr,
    dual_stack: bool,
    interfaces: &[InterfaceAddr],
) -> Vec<SocketAddr> {
    if !bound.ip().is_unspecified() {
        return vec![bound];
    }
    let wanted = |ip: &IpAddr| match ip {
        IpAddr::V4(_) => bound.is_ipv4() || dual_stack,
        IpAddr::V6(_) => bound.is_ipv6(),
    };
    let mut usable: Vec<IpAddr> = Vec::new();
    for interface in interfaces {
        if interface.up
            && is_dialable_elsewhere(interface.ip)
            && wanted(&interface.ip)
            && !usable.contains(&interface.ip)
        {
            usable.push(interface.ip);
        }
    }
    // Stable: the operating system's order within equal ranks.
    usable.sort_by_key(|ip| (is_private(*ip), ip.is_ipv6()));
    let best_v4 = usable.iter().position(IpAddr::is_ipv4);
    let best_v6 = usable.iter().position(IpAddr::is_ipv6);
    let mut ordered: Vec<IpAddr> = [best_v4, best_v6]
        .into_iter()
        .flatten()
        .filter_map(|index| usable.get(index).copied())
        .collect();
    ordered.sort_by_key(IpAddr::is_ipv6);
    for ip in usable {
        if !ordered.contains(&ip) {
            ordered.push(ip);
        }
    }
    ordered.truncate(derived_limit(config));
    if ordered.is_empty() {
        ordered.push(match bound.ip() {
            IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    ordered
        .into_iter()
        .map(|ip| SocketAddr::new(ip, bound.port()))
        .collect()
}

/// The socket-address hints of the addresses a node mints from now on: `advertise` if it is
/// set (exactly those), else the [`derived_hints`] with the public addresses peers observed
/// for this node in front.
#[derive(Debug)]
pub(crate) struct MintedHints {
    /// `advertise`, or the derived hints.
    base: Vec<SocketAddr>,
    /// Whether `base` is `advertise`: the operator's exact list, which observations never
    /// change.
    advertised: bool,
    /// Observed public addresses, newest first, one per IP family: a newer observation of a
    /// family replaces the older one, which a NAT that rebinds or renumbers made stale.
    observed: Vec<SocketAddr>,
    /// Hints at most, with the relay hints minted next to them.
    limit: usize,
    /// Whether the socket is a dual-stack `[::]` one.
    dual_stack: bool,
    /// [`MintedHints::current`], shared by the addresses minted with it; made again after a
    /// change.
    shared: Option<Hints>,
}

impl MintedHints {
    /// The hints of a node configured with `config` and bound to `bound`.
    pub(crate) fn new(
        config: &NodeConfig,
        bound: SocketAddr,
        dual_stack: bool,
        interfaces: &[InterfaceAddr],
    ) -> Self {
        if config.advertise.is_empty() {
            Self {
                base: derived_hints(config, bound, dual_stack, interfaces),
                advertised: false,
                observed: Vec::new(),
                limit: derived_limit(config),
                dual_stack,
                shared: None,
            }
        } else {
            Self {
                base: config.advertise.clone(),
                advertised: true,
                observed: Vec::new(),
                limit: MAX_HINTS,
                dual_stack,
                shared: None,
            }
        }
    }

    /// Derives the base hints again from the machine's `interfaces` (unless `advertise` is
    /// set), after they changed.
    pub(crate) fn set_interfaces(
        &mut self,
        config: &NodeConfig,
        bound: SocketAddr,
        interfaces: &[InterfaceAddr],
    ) {
        if !self.advertised {
            self.base = derived_hints(config, bound, self.dual_stack, interfaces);
            self.shared = None;
        }
    }

    /// [`MintedHints::current`], as the addresses minted with them share it.
    pub(crate) fn shared(&mut self) -> Hints {
        if let Some(shared) = &self.shared {
            return shared.clone();
        }
        let shared = Hints::from(self.current());
        self.shared = Some(shared.clone());
        shared
    }

    /// The hints to mint with now: observed addresses first, then the base ones, without
    /// repeats, within the limit (so an observation pushes out the last derived hint).
    pub(crate) fn current(&self) -> Vec<SocketAddr> {
        let mut hints: Vec<SocketAddr> = Vec::with_capacity(self.limit);
        for addr in self.observed.iter().chain(&self.base) {
            if hints.len() < self.limit && !hints.contains(addr) {
                hints.push(*addr);
            }
        }
        // Every address minted keeps these: not the room for `limit` of them.
        hints.shrink_to_fit();
        hints
    }

    /// Puts `addr`, an address a peer saw this node's packets come from, first. Ignored when
    /// `advertise` is set, and for addresses no other host could dial (unspecified, loopback,
    /// link-local, port 0). An IPv4-mapped IPv6 address counts as the IPv4 address. Returns
    /// whether the hints changed.
    pub(crate) fn add_observed(&mut self, addr: SocketAddr) -> bool {
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        if self.advertised || addr.port() == 0 || !is_dialable_elsewhere(addr.ip()) {
            return false;
        }
        if self.observed.first() == Some(&addr) {
            return false;
        }
        self.observed
            .retain(|known| known.is_ipv4() != addr.is_ipv4());
        self.observed.insert(0, addr);
        self.shared = None;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SecretKey;

    fn up(ip: &str) -> InterfaceAddr {
        InterfaceAddr {
            ip: ip.parse().unwrap(),
            up: true,
        }
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|addr| addr.parse().unwrap()).collect()
    }

    fn with_relays(count: usize) -> NodeConfig {
        let relay = SecretKey::generate().public();
        NodeConfig {
            relays: vec![(relay, "192.0.2.1:4433".parse().unwrap()); count],
            ..NodeConfig::default()
        }
    }

    /// A laptop: loopback, a link-local address, Wi-Fi (private), a VPN (private), a down
    /// bridge, and IPv6 (global, unique local, link-local).
    fn laptop() -> Vec<InterfaceAddr> {
        let mut list = vec![
            up("127.0.0.1"),
            up("::1"),
            up("169.254.10.20"),
            up("192.168.1.23"),
            up("fe80::1234"),
            up("2001:db8::23"),
            up("10.8.0.2"),
            up("fd00::23"),
        ];
        list.push(InterfaceAddr {
            ip: "172.17.0.1".parse().unwrap(),
            up: false,
        });
        list
    }

    #[test]
    fn a_specific_ip_is_advertised_as_bound() {
        let config = NodeConfig::default();
        for bound in ["127.0.0.1:4433", "10.0.0.2:4433", "[2001:db8::2]:4433"] {
            let bound: SocketAddr = bound.parse().unwrap();
            assert_eq!(derived_hints(&config, bound, false, &laptop()), vec![bound]);
        }
    }

    #[test]
    fn an_ipv4_wildcard_advertises_the_up_interfaces_never_loopback() {
        let hints = derived_hints(
            &NodeConfig::default(),
            "0.0.0.0:4433".parse().unwrap(),
            false,
            &laptop(),
        );
        assert_eq!(hints, addrs(&["192.168.1.23:4433", "10.8.0.2:4433"]));
    }

    #[test]
    fn public_addresses_come_before_private_ones() {
        let interfaces = [
            up("10.0.0.5"),
            up("100.64.3.4"),
            up("203.0.113.7"),
            up("172.20.0.1"),
        ];
        let hints = derived_hints(
            &NodeConfig::default(),
            "0.0.0.0:7000".parse().unwrap(),
            false,
            &interfaces,
        );
        assert_eq!(
            hints,
            addrs(&[
                "203.0.113.7:7000",
                "10.0.0.5:7000",
                "100.64.3.4:7000",
                "172.20.0.1:7000"
            ])
        );
    }

    #[test]
    fn a_dual_stack_wildcard_advertises_both_families_ipv4_first() {
        let bound: SocketAddr = "[::]:4433".parse().unwrap();
        let hints = derived_hints(&NodeConfig::default(), bound, true, &laptop());
        assert_eq!(
            hints,
            addrs(&[
                "192.168.1.23:4433",
                "[2001:db8::23]:4433",
                "10.8.0.2:4433",
                "[fd00::23]:4433"
            ])
        );
        // IPV6_V6ONLY: IPv6 only.
        let hints = derived_hints(&NodeConfig::default(), bound, false, &laptop());
        assert_eq!(hints, addrs(&["[2001:db8::23]:4433", "[fd00::23]:4433"]));
        // Two places left next to relays: one of each family.
        let hints = derived_hints(&with_relays(2), bound, true, &laptop());
        assert_eq!(hints, addrs(&["192.168.1.23:4433", "[2001:db8::23]:4433"]));
    }

    #[test]
    fn relays_leave_fewer_places_but_one_direct_hint_stays() {
        let interfaces = [
            up("10.0.0.1"),
            up("10.0.0.2"),
            up("10.0.0.3"),
            up("10.0.0.4"),
        ];
        let bound: SocketAddr = "0.0.0.0:1".parse().unwrap();
        for (relays, expected) in [(0, 4), (1, 3), (3, 1), (4, 1)] {
            let hints = derived_hints(&with_relays(relays), bound, false, &interfaces);
            assert_eq!(hints.len(), expected, "{relays} relays");
        }
        // The minted address: relay hints after the socket addresses, 4 in all.
        let config = with_relays(1);
        let key = SecretKey::generate();
        let mut address = crate::Address::mint(
            &key,
            crate::MailboxId(1),
            None,
            derived_hints(&config, bound, false, &interfaces),
        );
        for (relay, relay_addr) in &config.relays {
            address = address.with_relay(*relay, *relay_addr);
        }
        assert_eq!(address.hints().len(), 3);
        assert_eq!(address.relays().len(), 1);
    }

    #[test]
    fn without_a_usable_interface_the_hint_is_loopback() {
        let only_local = [
            up("127.0.0.1"),
            up("::1"),
            up("fe80::1"),
            InterfaceAddr {
                ip: "192.168.1.5".parse().unwrap(),
                up: false,
            },
        ];
        let config = NodeConfig::default();
        assert_eq!(
            derived_hints(&config, "0.0.0.0:9".parse().unwrap(), false, &only_local),
            addrs(&["127.0.0.1:9"])
        );
        assert_eq!(
            derived_hints(&config, "[::]:9".parse().unwrap(), true, &[]),
            addrs(&["[::1]:9"])
        );
    }

    #[test]
    fn advertise_is_used_exactly_and_observations_do_not_change_it() {
        let config = NodeConfig {
            advertise: addrs(&["198.51.100.1:4433", "10.0.0.1:4433"]),
            ..NodeConfig::default()
        };
        let mut hints =
            MintedHints::new(&config, "0.0.0.0:4433".parse().unwrap(), false, &laptop());
        assert_eq!(hints.current(), config.advertise);
        assert!(!hints.add_observed("203.0.113.9:5000".parse().unwrap()));
        assert_eq!(hints.current(), config.advertise);
    }

    #[test]
    fn an_observed_address_goes_first_within_the_limit() {
        let interfaces = [
            up("10.0.0.1"),
            up("10.0.0.2"),
            up("10.0.0.3"),
            up("10.0.0.4"),
        ];
        let bound: SocketAddr = "0.0.0.0:4433".parse().unwrap();
        let mut hints = MintedHints::new(&NodeConfig::default(), bound, false, &interfaces);
        let all = addrs(&[
            "10.0.0.1:4433",
            "10.0.0.2:4433",
            "10.0.0.3:4433",
            "10.0.0.4:4433",
        ]);
        assert_eq!(hints.current(), all);

        // The last interface hint makes room.
        assert!(hints.add_observed("203.0.113.9:5000".parse().unwrap()));
        let expected = addrs(&[
            "203.0.113.9:5000",
            "10.0.0.1:4433",
            "10.0.0.2:4433",
            "10.0.0.3:4433",
        ]);
        assert_eq!(hints.current(), expected);
        // The same again: nothing changes.
        assert!(!hints.add_observed("203.0.113.9:5000".parse().unwrap()));
        // As an IPv4-mapped IPv6 address (a dual-stack socket's view): the same address.
        assert!(!hints.add_observed("[::ffff:203.0.113.9]:5000".parse().unwrap()));
        assert_eq!(hints.current(), expected);

        // A newer observation of the family replaces the older one (the NAT rebound).
        assert!(hints.add_observed("203.0.113.9:6000".parse().unwrap()));
        assert_eq!(hints.current()[0], "203.0.113.9:6000".parse().unwrap());
        assert_eq!(hints.current().len(), 4);
        assert!(!hints
            .current()
            .contains(&"203.0.113.9:5000".parse().unwrap()));

        // One per family: an IPv6 observation goes first, the IPv4 one stays.
        assert!(hints.add_observed("[2001:db8::9]:6000".parse().unwrap()));
        assert_eq!(
            hints.current(),
            addrs(&[
                "[2001:db8::9]:6000",
                "203.0.113.9:6000",
                "10.0.0.1:4433",
                "10.0.0.2:4433"
            ])
        );

        // An observed address that is an interface address is not repeated.
        let mut hints = MintedHints::new(&NodeConfig::default(), bound, false, &interfaces);
        assert!(hints.add_observed("10.0.0.3:4433".parse().unwrap()));
        assert_eq!(
            hints.current(),
            addrs(&[
                "10.0.0.3:4433",
                "10.0.0.1:4433",
                "10.0.0.2:4433",
                "10.0.0.4:4433"
            ])
        );
    }

    #[test]
    fn minted_addresses_share_the_hints_until_they_change() {
        let bound: SocketAddr = "0.0.0.0:4433".parse().unwrap();
        let mut hints = MintedHints::new(&NodeConfig::default(), bound, false, &[up("10.0.0.1")]);
        let key = SecretKey::generate();
        let mint = |hints: Hints| {
            crate::address::Address::mint(&key, crate::address::MailboxId::random(), None, hints)
        };
        let (first, second) = (mint(hints.shared()), mint(hints.shared()));
        assert_eq!(first.hints(), hints.current());
        assert!(
            std::ptr::eq(first.hints(), second.hints()),
            "one allocation for both"
        );
        assert!(hints.add_observed("203.0.113.9:5000".parse().unwrap()));
        let third = mint(hints.shared());
        assert_eq!(third.hints(), hints.current());
        assert_eq!(third.hints()[0], "203.0.113.9:5000".parse().unwrap());
        assert_eq!(
            first.hints(),
            addrs(&["10.0.0.1:4433"]),
            "minted before: unchanged"
        );
        hints.set_interfaces(&NodeConfig::default(), bound, &[up("10.0.0.2")]);
        assert_eq!(mint(hints.shared()).hints(), hints.current());
        assert!(hints.current().contains(&"10.0.0.2:4433".parse().unwrap()));
    }

    #[test]
    fn observations_respect_the_relays_share_and_ignore_undialable_addresses() {
        let bound: SocketAddr = "0.0.0.0:4433".parse().unwrap();
        let mut hints = MintedHints::new(&with_relays(3), bound, false, &[up("10.0.0.1")]);
        assert_eq!(hints.current(), addrs(&["10.0.0.1:4433"]));
        for undialable in [
            "127.0.0.1:5000",
            "0.0.0.0:5000",
            "169.254.1.1:5000",
            "[fe80::1]:5000",
            "203.0.113.9:0",
        ] {
            assert!(
                !hints.add_observed(undialable.parse().unwrap()),
                "{undialable}"
            );
        }
        assert!(hints.add_observed("203.0.113.9:5000".parse().unwrap()));
        assert_eq!(hints.current(), addrs(&["203.0.113.9:5000"]));

        // A node bound to a specific (private) IP behind a NAT learns its public address too.
        let mut hints = MintedHints::new(
            &NodeConfig::default(),
            "10.0.0.2:4433".parse().unwrap(),
            false,
            &[],
        );
        assert!(hints.add_observed("203.0.113.9:5000".parse().unwrap()));
        assert_eq!(
            hints.current(),
            addrs(&["203.0.113.9:5000", "10.0.0.2:4433"])
        );
    }

    #[test]
    fn dual_stack_is_read_from_the_socket() {
        let v4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(!is_dual_stack(&v4));
        for only_v6 in [false, true] {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None).unwrap();
            socket.set_only_v6(only_v6).unwrap();
            let wildcard: SocketAddr = "[::]:0".parse().unwrap();
            socket.bind(&wildcard.into()).unwrap();
            let socket: std::net::UdpSocket = socket.into();
            assert_eq!(is_dual_stack(&socket), !only_v6, "IPV6_V6ONLY {only_v6}");
        }
    }

    #[test]
    fn the_machine_lists_its_interfaces() {
        // Every machine running the tests has loopback up.
        let interfaces = machine_interfaces();
        assert!(
            interfaces
                .iter()
                .any(|interface| interface.ip.is_loopback()),
            "{interfaces:?}"
        );
    }

    #[tokio::test]
    async fn a_node_mints_with_its_hints_and_the_observed_address_from_then_on() {
        let key = SecretKey::generate();
        let config = NodeConfig {
            listen: "0.0.0.0:0".parse().unwrap(),
            ..NodeConfig::default()
        };
        let node = crate::Node::bind(key, config.clone()).await.unwrap();
        let bound = node.local_addr();
        let expected = derived_hints(&config, bound, false, &machine_interfaces());
        let before = node.mailbox();
        assert_eq!(before.address().hints(), expected.as_slice());
        let usable = machine_interfaces().iter().any(|interface| {
            interface.up && is_dialable_elsewhere(interface.ip) && interface.ip.is_ipv4()
        });
        // Loopback only on a machine without another interface address that is up.
        let loopback_hints = expected.iter().all(|hint| hint.ip().is_loopback());
        assert_eq!(loopback_hints, !usable, "{expected:?}");

        let observed: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        node.inner().net.add_observed_addr(observed);
        let after = node.mailbox();
        assert_eq!(after.address().hints().first(), Some(&observed));
        assert!(after.address().hints().len() <= MAX_HINTS);
        // Addresses minted before keep their hints.
        assert_eq!(before.address().hints(), expected.as_slice());
        node.shutdown(std::time::Duration::from_millis(100)).await;

        // Bound to a specific IP: exactly that.
        let node = crate::Node::bind(SecretKey::generate(), NodeConfig::default())
            .await
            .unwrap();
        assert_eq!(node.mailbox().address().hints(), &[node.local_addr()]);
        node.shutdown(std::time::Duration::from_millis(100)).await;
    }
}
