//! The lab's topology: a public segment, routers with their networks, hosts; and the changes
//! tests make to it (impairments, partitions, renumbering, moving a host, NAT rebinding).
//!
//! ```text
//!              public namespace: bridge "pub", 198.18.0.1/16 ("the internet's core":
//!              everything not on the segment is blackholed, as private addresses are)
//!      ┌────────────┬─────────────────┴──────────┬──────────────────────┐
//!   public host   router (wan 198.18.0.x)      carrier (wan 198.18.0.y)
//!   198.18.0.z     │ bridge "lan" 10.R.0.1/24    │ bridge "lan" 100.64.C.1/24
//!                  host (eth0 10.R.0.2)          router (wan 100.64.C.2)
//!                                                  │ bridge "lan" 10.R'.0.1/24
//!                                                  host (eth0 10.R'.0.2)
//! ```
//!
//! Every station (host or router) is a namespace with one uplink, a veth pair whose other end
//! is a port of the bridge above it. Addresses are RFC 2544 (198.18.0.0/15, never routed on the
//! internet) for the public segment, RFC 6598 (100.64.0.0/10) inside carrier NATs and RFC 1918
//! (10.0.0.0/8) for home networks, and only ever exist inside the lab's own namespaces.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::delay::DelayStage;
use super::link::{self, Bandwidth, LinkShape};
use super::namespace::{ip_in, Namespace};
use super::nat::{self, NatKind, RouterNat, LAN, WAN};
use super::registry;
use super::shell::run;
use super::LabError;

/// The public segment's bridge, in the public namespace.
const PUBLIC_BRIDGE: &str = "pub";
/// The core's address on the public segment: every public station's default gateway.
const CORE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The public segment's prefix length (198.18.0.0/16).
const PUBLIC_PREFIX: u8 = 16;
/// A host's uplink interface.
const HOST_INTERFACE: &str = "eth0";

/// A router of a [`Lab`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RouterId(usize);

/// A host of a [`Lab`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostId(usize);

/// A link of a [`Lab`]: a host's access link or a router's uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Link {
    /// The link between a host and its router (or the public segment).
    Host(HostId),
    /// The link between a router and the network above it.
    Uplink(RouterId),
}

/// Where a station's uplink goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// The public segment.
    Public,
    /// A router's network.
    Router(RouterId),
}

/// A namespace with an uplink: a host or a router.
#[derive(Debug)]
struct Station {
    name: String,
    /// Stopped before the namespace goes (fields drop in order).
    stage: Option<DelayStage>,
    namespace: Namespace,
    /// The uplink's interface in `namespace`.
    interface: &'static str,
    uplink: Uplink,
    shape: LinkShape,
}

/// Where a station's uplink goes and what it has there.
#[derive(Debug)]
struct Uplink {
    upstream: Upstream,
    /// The uplink's other end: a port of the upstream bridge.
    port: String,
    address: Ipv4Addr,
}

/// A router: a station that forwards and NATs for its own network (bridge "lan").
#[derive(Debug)]
struct Router {
    station: Station,
    nat: RouterNat,
    /// The network's base address; the router is `.1`, hosts from `.2`.
    network: Ipv4Addr,
    next_host: u8,
    /// NAT generation: each rebinding moves the router to a new port range.
    generation: u32,
}

/// A host of the lab, where programs run.
#[derive(Debug)]
pub struct Host {
    station: Station,
}

impl Host {
    /// The host's name in the lab.
    pub fn name(&self) -> &str {
        &self.station.name
    }

    /// The host's address on its uplink (private behind a router).
    pub fn address(&self) -> Ipv4Addr {
        self.station.uplink.address
    }

    /// The host's namespace: commands and sockets inside it.
    pub fn namespace(&self) -> &Namespace {
        &self.station.namespace
    }
}

/// A lab of namespaces; dropping it removes every namespace it made and kills what runs there.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    // Drop order: hosts, then routers, then the public segment.
    hosts: Vec<Host>,
    routers: Vec<Router>,
    public: Namespace,
    next_public: u32,
    next_port: u32,
}

impl Lab {
    /// A lab with an empty public segment. Removes the namespaces of earlier runs that were
    /// killed before they could remove their own. Fails (never skips) without root or the
    /// tools, saying so.
    pub fn new() -> Result<Self, LabError> {
        if !rustix::process::geteuid().is_root() {
            return Err(LabError::NotRoot);
        }
        let removed = registry::remove_stale()?;
        if !removed.is_empty() {
            tracing::info!(
                ?removed,
                "removed namespaces of lab runs that no longer run"
            );
        }
        // Fail early and clearly when nftables is missing, before any namespace exists.
        run("nft", &["--version"], None).map_err(|source| LabError::MissingTool {
            tool: "nft",
            package: "nftables",
            source,
        })?;
        let prefix = registry::new_run_prefix();
        let public = Namespace::create(&format!("{prefix}-public"), true)?;
        public.ip(&["link", "add", PUBLIC_BRIDGE, "type", "bridge"])?;
        public.ip(&[
            "addr",
            "add",
            &format!("{CORE}/{PUBLIC_PREFIX}"),
            "dev",
            PUBLIC_BRIDGE,
        ])?;
        public.ip(&["link", "set", PUBLIC_BRIDGE, "up"])?;
        // Packets for addresses not on the segment (private ones) vanish without an answer,
        // as they do on the internet.
        public.ip(&["route", "add", "blackhole", "default"])?;
        Ok(Self {
            prefix,
            hosts: Vec::new(),
            routers: Vec::new(),
            public,
            next_public: 10,
            next_port: 0,
        })
    }

    /// The prefix of this lab's namespace names (`ferrylab-<pid>-<random>`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The public segment's namespace (its bridge and the core).
    pub fn public_namespace(&self) -> &Namespace {
        &self.public
    }

    /// Adds a host on the public segment.
    pub fn add_public_host(&mut self, name: &str) -> Result<HostId, LabError> {
        self.add_host(name, Upstream::Public)
    }

    /// Adds a host on `upstream`'s network.
    pub fn add_host(&mut self, name: &str, upstream: Upstream) -> Result<HostId, LabError> {
        let namespace = Namespace::create(&format!("{}-h-{name}", self.prefix), false)?;
        let uplink = self.attach(namespace.name(), HOST_INTERFACE, upstream)?;
        self.hosts.push(Host {
            station: Station::new(name, namespace, HOST_INTERFACE, uplink),
        });
        Ok(HostId(self.hosts.len() - 1))
    }

    /// Adds a router doing `nat` for a new home network of its own (10.R.0.0/24), its uplink on
    /// `upstream`.
    pub fn add_router(
        &mut self,
        name: &str,
        nat: RouterNat,
        upstream: Upstream,
    ) -> Result<RouterId, LabError> {
        let third = self.next_network_number()?;
        self.add_router_on(name, nat, upstream, Ipv4Addr::new(10, third, 0, 0))
    }

    /// Adds a carrier-grade NAT on the public segment: endpoint-independent mapping,
    /// address-and-port-dependent filtering, for a network of shared address space (RFC 6598,
    /// 100.64.C.0/24) where home routers go.
    pub fn add_carrier_nat(&mut self, name: &str) -> Result<RouterId, LabError> {
        let third = self.next_network_number()?;
        let network = Ipv4Addr::new(100, 64, third, 0);
        self.add_router_on(name, RouterNat::Home, Upstream::Public, network)
    }

    fn next_network_number(&self) -> Result<u8, LabError> {
        u8::try_from(self.routers.len() + 1).map_err(|_| LabError::TooMany { what: "routers" })
    }

    fn add_router_on(
        &mut self,
        name: &str,
        nat: RouterNat,
        upstream: Upstream,
        network: Ipv4Addr,
    ) -> Result<RouterId, LabError> {
        let namespace = Namespace::create(&format!("{}-r-{name}", self.prefix), true)?;
        namespace.ip(&["link", "add", LAN, "type", "bridge"])?;
        let [a, b, c, _] = network.octets();
        namespace.ip(&["addr", "add", &format!("{a}.{b}.{c}.1/24"), "dev", LAN])?;
        namespace.ip(&["link", "set", LAN, "up"])?;
        namespace.nft(&nat::ruleset(nat, 0))?;
        let uplink = self.attach(namespace.name(), WAN, upstream)?;
        self.routers.push(Router {
            station: Station::new(name, namespace, WAN, uplink),
            nat,
            network,
            next_host: 2,
            generation: 0,
        });
        Ok(RouterId(self.routers.len() - 1))
    }

    /// Adds a host behind `kind`, with the routers that kind needs (named after the host).
    pub fn add_host_behind(&mut self, name: &str, kind: NatKind) -> Result<HostId, LabError> {
        let gateway = format!("{name}-gw");
        let upstream = match kind {
            NatKind::None => Upstream::Public,
            NatKind::FullCone => Upstream::Router(self.add_router(
                &gateway,
                RouterNat::FullCone,
                Upstream::Public,
            )?),
            NatKind::Home => {
                Upstream::Router(self.add_router(&gateway, RouterNat::Home, Upstream::Public)?)
            }
            NatKind::Symmetric => Upstream::Router(self.add_router(
                &gateway,
                RouterNat::Symmetric,
                Upstream::Public,
            )?),
            NatKind::TwoLayers => {
                let carrier = self.add_carrier_nat(&format!("{name}-cgn"))?;
                Upstream::Router(self.add_router(
                    &gateway,
                    RouterNat::Home,
                    Upstream::Router(carrier),
                )?)
            }
        };
        self.add_host(name, upstream)
    }

    /// The host `id`.
    pub fn host(&self, id: HostId) -> Result<&Host, LabError> {
        self.hosts.get(id.0).ok_or(LabError::UnknownHost(id))
    }

    /// The router a host is attached to, if any.
    pub fn router_of(&self, id: HostId) -> Result<Option<RouterId>, LabError> {
        Ok(match self.host(id)?.station.uplink.upstream {
            Upstream::Public => None,
            Upstream::Router(router) => Some(router),
        })
    }

    /// The address the public segment sees for `id`'s traffic: its own when it is a public
    /// host, else the public address of the outermost router above it.
    pub fn public_address(&self, id: HostId) -> Result<Ipv4Addr, LabError> {
        let mut station = &self.host(id)?.station;
        while let Upstream::Router(router) = station.uplink.upstream {
            station = &self.router(router)?.station;
        }
        Ok(station.uplink.address)
    }

    /// A router's address on its uplink.
    pub fn router_address(&self, id: RouterId) -> Result<Ipv4Addr, LabError> {
        Ok(self.router(id)?.station.uplink.address)
    }

    /// A router's namespace.
    pub fn router_namespace(&self, id: RouterId) -> Result<&Namespace, LabError> {
        Ok(&self.router(id)?.station.namespace)
    }

    /// What every router knows, for diagnosing a failure: its nftables ruleset (with the full
    /// cone's map) and its connection tracking table (the NAT mappings). Best effort: a
    /// tool's failure is written in its place.
    pub fn router_state(&self) -> String {
        let mut text = String::new();
        for router in &self.routers {
            let namespace = &router.station.namespace;
            text.push_str(&format!(
                "== router {} ({}, wan {})\n",
                router.station.name,
                namespace.name(),
                router.station.uplink.address
            ));
            for (program, args) in [
                ("nft", &["list", "ruleset"][..]),
                ("conntrack", &["-L"][..]),
            ] {
                match namespace.exec(program, args) {
                    Ok(output) => text.push_str(&output),
                    Err(error) => text.push_str(&format!("{error}\n")),
                }
            }
        }
        text
    }

    /// The impairments `link` has now.
    pub fn shape(&self, link: Link) -> Result<LinkShape, LabError> {
        Ok(self.station(link)?.shape)
    }

    /// Drops `percent` of the packets in each direction of `link` (0 heals).
    pub fn set_loss(&mut self, link: Link, percent: u8) -> Result<(), LabError> {
        let shape = LinkShape {
            loss_percent: percent.min(100),
            ..self.shape(link)?
        };
        self.reshape(link, shape)
    }

    /// Cuts `link` (every packet dropped, both ways) or heals it.
    pub fn set_partitioned(&mut self, link: Link, partitioned: bool) -> Result<(), LabError> {
        let shape = LinkShape {
            partitioned,
            ..self.shape(link)?
        };
        self.reshape(link, shape)
    }

    /// Delays each direction of `link` by `delay` (zero removes the delay).
    pub fn set_delay(&mut self, link: Link, delay: Duration) -> Result<(), LabError> {
        let shape = LinkShape {
            delay,
            ..self.shape(link)?
        };
        self.reshape(link, shape)
    }

    /// Limits each direction of `link` to `bandwidth` (`None` removes the limit).
    pub fn set_bandwidth(
        &mut self,
        link: Link,
        bandwidth: Option<Bandwidth>,
    ) -> Result<(), LabError> {
        let shape = LinkShape {
            bandwidth,
            ..self.shape(link)?
        };
        self.reshape(link, shape)
    }

    /// Gives `link` all of `shape`'s impairments at once.
    pub fn reshape(&mut self, link: Link, shape: LinkShape) -> Result<(), LabError> {
        let upstream_namespace =
            self.upstream_namespace_name(self.station(link)?.uplink.upstream)?;
        let station = self.station_mut(link)?;
        let before = station.shape;
        let namespace = &station.namespace;
        let port = &station.uplink.port;
        // Arriving over the link: dropped at the inner end; leaving: at the bridge port.
        namespace.nft(&link::drop_ruleset("lab_link", station.interface, &shape))?;
        run(
            "ip",
            &["netns", "exec", &upstream_namespace, "nft", "-f", "-"],
            Some(&link::drop_ruleset(
                &format!("lab_link_{port}"),
                port,
                &shape,
            )),
        )?;
        // The stage exists before any rule queues packets to it, and goes after they stop.
        let delayed = !shape.delay.is_zero();
        match &station.stage {
            None if delayed => {
                station.stage = Some(DelayStage::start(namespace.name(), shape.delay)?)
            }
            Some(stage) if delayed => stage.set_delay(shape.delay),
            _ => {}
        }
        let was_delayed = !before.delay.is_zero();
        if delayed != was_delayed {
            for args in link::delay_rules(station.interface, delayed) {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                namespace
                    .exec("iptables-nft", &args)
                    .map_err(|source| LabError::MissingTool {
                        tool: "iptables-nft",
                        package: "iptables",
                        source,
                    })?;
            }
        }
        if !delayed {
            station.stage = None;
        }
        if shape.bandwidth != before.bandwidth {
            let inner = link::tbf_args(station.interface, shape.bandwidth);
            let inner: Vec<&str> = inner.iter().map(String::as_str).collect();
            run_tc(namespace.name(), &inner)?;
            let outer = link::tbf_args(port, shape.bandwidth);
            let outer: Vec<&str> = outer.iter().map(String::as_str).collect();
            run_tc(&upstream_namespace, &outer)?;
        }
        station.shape = shape;
        Ok(())
    }

    /// Gives host `id` a new address on the same network (its router, or the public segment,
    /// sees a different host); sockets bound to the old address stop working, wildcard ones
    /// send from the new one. Returns the new address.
    pub fn renumber(&mut self, id: HostId) -> Result<Ipv4Addr, LabError> {
        let upstream = self.host(id)?.station.uplink.upstream;
        let (address, prefix_len, gateway) = self.allocate(upstream)?;
        let station = &mut self
            .hosts
            .get_mut(id.0)
            .ok_or(LabError::UnknownHost(id))?
            .station;
        let namespace = &station.namespace;
        namespace.ip(&["addr", "flush", "dev", station.interface])?;
        namespace.ip(&[
            "addr",
            "add",
            &format!("{address}/{prefix_len}"),
            "dev",
            station.interface,
        ])?;
        namespace.ip(&["route", "replace", "default", "via", &gateway.to_string()])?;
        station.uplink.address = address;
        Ok(address)
    }

    /// Moves host `id` to `upstream` (another router's network, or the public segment): its
    /// old link goes, a new one comes up, with a new address and the old link's impairments.
    /// Returns the new address.
    pub fn move_host(&mut self, id: HostId, upstream: Upstream) -> Result<Ipv4Addr, LabError> {
        let station = &self.host(id)?.station;
        let shape = station.shape;
        // The old port's drop rules go with it; deleting one end of a veth pair deletes both
        // (and their bandwidth limits).
        let port = station.uplink.port.clone();
        let upstream_namespace = self.upstream_namespace_name(station.uplink.upstream)?;
        run(
            "ip",
            &["netns", "exec", &upstream_namespace, "nft", "-f", "-"],
            Some(&format!(
                "add table netdev lab_link_{port}\ndelete table netdev lab_link_{port}\n"
            )),
        )?;
        let station = &self.host(id)?.station;
        station.namespace.ip(&["link", "del", station.interface])?;
        let namespace = self.host(id)?.station.namespace.name().to_string();
        let uplink = self.attach(&namespace, HOST_INTERFACE, upstream)?;
        let address = uplink.address;
        let station = self.station_mut(Link::Host(id))?;
        station.uplink = uplink;
        // Everything but the delay is gone with the old link (the delay rules name the
        // interface, which has the same name again).
        station.shape = LinkShape {
            delay: station.shape.delay,
            ..LinkShape::default()
        };
        self.reshape(Link::Host(id), shape)?;
        Ok(address)
    }

    /// Makes router `id` forget its NAT mappings and map from a new port range: every flow
    /// through it gets a new external port from its next packet on (what a NAT does when its
    /// mappings time out or it restarts). Needs the `conntrack` tool.
    pub fn rebind_nat(&mut self, id: RouterId) -> Result<(), LabError> {
        let router = self
            .routers
            .get_mut(id.0)
            .ok_or(LabError::UnknownRouter(id))?;
        router.generation += 1;
        let namespace = &router.station.namespace;
        namespace.nft(&nat::ruleset(router.nat, router.generation))?;
        namespace
            .exec("conntrack", &["-F"])
            .map_err(|source| LabError::MissingTool {
                tool: "conntrack",
                package: "conntrack",
                source,
            })?;
        Ok(())
    }

    fn router(&self, id: RouterId) -> Result<&Router, LabError> {
        self.routers.get(id.0).ok_or(LabError::UnknownRouter(id))
    }

    fn station(&self, link: Link) -> Result<&Station, LabError> {
        match link {
            Link::Host(id) => Ok(&self.host(id)?.station),
            Link::Uplink(id) => Ok(&self.router(id)?.station),
        }
    }

    fn station_mut(&mut self, link: Link) -> Result<&mut Station, LabError> {
        match link {
            Link::Host(id) => self
                .hosts
                .get_mut(id.0)
                .map(|host| &mut host.station)
                .ok_or(LabError::UnknownHost(id)),
            Link::Uplink(id) => self
                .routers
                .get_mut(id.0)
                .map(|router| &mut router.station)
                .ok_or(LabError::UnknownRouter(id)),
        }
    }

    fn upstream_namespace_name(&self, upstream: Upstream) -> Result<String, LabError> {
        Ok(match upstream {
            Upstream::Public => self.public.name().to_string(),
            Upstream::Router(id) => self.router(id)?.station.namespace.name().to_string(),
        })
    }

    /// A fresh address on `upstream`'s network, its prefix length and the gateway.
    fn allocate(&mut self, upstream: Upstream) -> Result<(Ipv4Addr, u8, Ipv4Addr), LabError> {
        match upstream {
            Upstream::Public => {
                let n = self.next_public;
                if n >= 65_000 {
                    return Err(LabError::TooMany {
                        what: "public addresses",
                    });
                }
                self.next_public += 1;
                let [a, b, _, _] = CORE.octets();
                let address = Ipv4Addr::new(a, b, (n >> 8) as u8, (n & 0xff) as u8);
                Ok((address, PUBLIC_PREFIX, CORE))
            }
            Upstream::Router(id) => {
                let router = self
                    .routers
                    .get_mut(id.0)
                    .ok_or(LabError::UnknownRouter(id))?;
                let n = router.next_host;
                if n == 255 {
                    return Err(LabError::TooMany {
                        what: "addresses on one router's network",
                    });
                }
                router.next_host += 1;
                let [a, b, c, _] = router.network.octets();
                Ok((Ipv4Addr::new(a, b, c, n), 24, Ipv4Addr::new(a, b, c, 1)))
            }
        }
    }

    /// Connects `namespace` to `upstream` with a veth pair (`interface` inside, a new bridge
    /// port outside), an address and a default route.
    fn attach(
        &mut self,
        namespace: &str,
        interface: &'static str,
        upstream: Upstream,
    ) -> Result<Uplink, LabError> {
        let (address, prefix_len, gateway) = self.allocate(upstream)?;
        let upstream_namespace = self.upstream_namespace_name(upstream)?;
        let bridge = match upstream {
            Upstream::Public => PUBLIC_BRIDGE,
            Upstream::Router(_) => LAN,
        };
        let port = format!("p{}", self.next_port);
        self.next_port += 1;
        // Made inside the station's namespace, the far end moved straight to the upstream one:
        // nothing of the lab ever appears in the namespace the tests run in.
        ip_in(
            namespace,
            &[
                "link",
                "add",
                interface,
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &upstream_namespace,
            ],
        )?;
        ip_in(
            &upstream_namespace,
            &["link", "set", &port, "master", bridge, "up"],
        )?;
        ip_in(
            namespace,
            &[
                "addr",
                "add",
                &format!("{address}/{prefix_len}"),
                "dev",
                interface,
            ],
        )?;
        ip_in(namespace, &["link", "set", interface, "up"])?;
        ip_in(
            namespace,
            &["route", "add", "default", "via", &gateway.to_string()],
        )?;
        Ok(Uplink {
            upstream,
            port,
            address,
        })
    }
}

impl Station {
    fn new(name: &str, namespace: Namespace, interface: &'static str, uplink: Uplink) -> Self {
        Self {
            name: name.to_string(),
            stage: None,
            namespace,
            interface,
            uplink,
            shape: LinkShape::default(),
        }
    }
}

fn run_tc(namespace: &str, args: &[&str]) -> Result<(), LabError> {
    let mut all = vec!["netns", "exec", namespace, "tc"];
    all.extend_from_slice(args);
    run("ip", &all, None)?;
    Ok(())
}
