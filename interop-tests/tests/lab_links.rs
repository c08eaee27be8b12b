//! The lab's link impairments and network changes, each measured with plain sockets: loss,
//! partitions, delay (the user-space stage), bandwidth, renumbering a host, moving it to
//! another router, and a NAT rebinding its mappings.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use ferry_interop::lab::{Bandwidth, HostId, Lab, Link, NatKind, RouterId, RouterNat, Upstream};

const WAIT: Duration = Duration::from_secs(10);

fn lab() -> Lab {
    Lab::new().unwrap_or_else(|error| panic!("building the lab: {error}"))
}

/// A UDP socket on `host`, on its address (or the wildcard address) and `port`.
fn udp(lab: &Lab, host: HostId, wildcard: bool, port: u16) -> UdpSocket {
    let host = lab.host(host).unwrap();
    let ip = if wildcard {
        std::net::Ipv4Addr::UNSPECIFIED
    } else {
        host.address()
    };
    let socket = host
        .namespace()
        .udp_socket(SocketAddr::new(ip.into(), port))
        .unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    socket
}

fn address(lab: &Lab, host: HostId, socket: &UdpSocket) -> SocketAddr {
    SocketAddr::new(
        lab.host(host).unwrap().address().into(),
        socket.local_addr().unwrap().port(),
    )
}

/// A host behind a home router and a public peer, each with a socket on port 5000.
struct HomeAndPeer {
    host: HostId,
    router: RouterId,
    h: UdpSocket,
    p: UdpSocket,
    p_addr: SocketAddr,
}

fn home_and_peer(lab: &mut Lab) -> HomeAndPeer {
    let host = lab.add_host_behind("host", NatKind::Home).unwrap();
    let router = lab.router_of(host).unwrap().unwrap();
    let peer = lab.add_public_host("peer").unwrap();
    let h = udp(lab, host, false, 5000);
    let p = udp(lab, peer, false, 5000);
    let p_addr = address(lab, peer, &p);
    HomeAndPeer {
        host,
        router,
        h,
        p,
        p_addr,
    }
}

/// Receives one datagram; returns its payload and source.
fn receive(socket: &UdpSocket) -> (String, SocketAddr) {
    let mut buffer = [0u8; 2048];
    let (len, from) = socket.recv_from(&mut buffer).unwrap();
    (String::from_utf8_lossy(&buffer[..len]).into_owned(), from)
}

/// Payloads `to` receives up to (not including) "marker".
fn until_marker(to: &UdpSocket) -> Vec<String> {
    let mut payloads = Vec::new();
    loop {
        let (payload, _) = receive(to);
        if payload == "marker" {
            return payloads;
        }
        payloads.push(payload);
    }
}

/// Sends `total` datagrams through `link` with `loss` percent, in bursts the receive buffer
/// holds: each burst ends by healing the link and sending a marker, which arrives after every
/// datagram of the burst that got through. Returns how many got through.
fn through_lossy(
    lab: &mut Lab,
    link: Link,
    loss: u8,
    from: &UdpSocket,
    to: &UdpSocket,
    to_addr: SocketAddr,
) -> usize {
    let mut through = 0;
    for _ in 0..20 {
        lab.set_loss(link, loss).unwrap();
        for _ in 0..100 {
            from.send_to(b"data", to_addr).unwrap();
        }
        lab.set_loss(link, 0).unwrap();
        from.send_to(b"marker", to_addr).unwrap();
        through += until_marker(to).len();
    }
    through
}

#[test]
fn loss_drops_a_share_of_packets_in_each_direction() {
    let mut lab = lab();
    let host = lab.add_public_host("host").unwrap();
    let peer = lab.add_public_host("peer").unwrap();
    let (h, p) = (udp(&lab, host, false, 5000), udp(&lab, peer, false, 5000));
    let (h_addr, p_addr) = (address(&lab, host, &h), address(&lab, peer, &p));
    // 2000 datagrams at 30 %: 1400 expected, 20 the standard deviation; 5 of them either way.
    let arriving = through_lossy(&mut lab, Link::Host(host), 30, &p, &h, h_addr);
    assert!(
        (1300..=1500).contains(&arriving),
        "arriving: {arriving} of 2000"
    );
    let leaving = through_lossy(&mut lab, Link::Host(host), 30, &h, &p, p_addr);
    assert!(
        (1300..=1500).contains(&leaving),
        "leaving: {leaving} of 2000"
    );
    // Healed, nothing is lost.
    let healed = through_lossy(&mut lab, Link::Host(host), 0, &h, &p, p_addr);
    assert_eq!(healed, 2000);
}

#[test]
fn a_router_partition_drops_everything_until_it_heals() {
    let mut lab = lab();
    let pair = home_and_peer(&mut lab);
    let (h, p, p_addr) = (&pair.h, &pair.p, pair.p_addr);
    h.send_to(b"open", p_addr).unwrap();
    let (_, mapped) = receive(p);
    lab.set_partitioned(Link::Uplink(pair.router), true)
        .unwrap();
    h.send_to(b"out during", p_addr).unwrap();
    p.send_to(b"in during", mapped).unwrap();
    lab.set_partitioned(Link::Uplink(pair.router), false)
        .unwrap();
    // The mapping outlived the partition: both ways work again, and nothing sent during it
    // arrives.
    h.send_to(b"marker", p_addr).unwrap();
    assert_eq!(until_marker(p), Vec::<String>::new());
    p.send_to(b"marker", mapped).unwrap();
    assert_eq!(until_marker(h), Vec::<String>::new());
}

#[test]
fn delay_holds_packets_in_order_for_the_set_time_each_way() {
    let mut lab = lab();
    let pair = home_and_peer(&mut lab);
    let (h, p, p_addr) = (&pair.h, &pair.p, pair.p_addr);
    let round_trip = || {
        let started = Instant::now();
        h.send_to(b"ping", p_addr).unwrap();
        let (_, mapped) = receive(p);
        p.send_to(b"pong", mapped).unwrap();
        receive(h);
        (started.elapsed(), mapped)
    };
    lab.set_delay(Link::Host(pair.host), Duration::from_millis(20))
        .unwrap();
    let (elapsed, mapped) = round_trip();
    assert!(elapsed >= Duration::from_millis(40), "{elapsed:?}");
    lab.set_delay(Link::Uplink(pair.router), Duration::from_millis(15))
        .unwrap();
    let (elapsed, _) = round_trip();
    assert!(elapsed >= Duration::from_millis(70), "{elapsed:?}");
    // A burst leaves the stage whole and in order.
    for n in 0..100 {
        p.send_to(format!("{n}").as_bytes(), mapped).unwrap();
    }
    let got: Vec<String> = (0..100).map(|_| receive(h).0).collect();
    let sent: Vec<String> = (0..100).map(|n| n.to_string()).collect();
    assert_eq!(got, sent);
    // Without delay the stage is gone and the link still carries packets.
    lab.set_delay(Link::Host(pair.host), Duration::ZERO)
        .unwrap();
    lab.set_delay(Link::Uplink(pair.router), Duration::ZERO)
        .unwrap();
    round_trip();
}

/// Sends `bytes` over TCP from `from` to `to` (listening on `port`); returns the time it took.
fn tcp_transfer(lab: &Lab, from: HostId, to: HostId, port: u16, bytes: usize) -> Duration {
    let to_host = lab.host(to).unwrap();
    let listen = SocketAddr::new(to_host.address().into(), port);
    let listener = to_host
        .namespace()
        .enter(|| TcpListener::bind(listen))
        .unwrap()
        .unwrap();
    let receiver = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut received = Vec::new();
        stream.read_to_end(&mut received).unwrap();
        received.len()
    });
    let mut stream = lab
        .host(from)
        .unwrap()
        .namespace()
        .enter(|| TcpStream::connect(listen))
        .unwrap()
        .unwrap();
    let started = Instant::now();
    stream.write_all(&vec![7u8; bytes]).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(receiver.join().unwrap(), bytes);
    started.elapsed()
}

#[test]
fn bandwidth_limits_each_direction() {
    let mut lab = lab();
    let host = lab.add_public_host("host").unwrap();
    let peer = lab.add_public_host("peer").unwrap();
    lab.set_bandwidth(
        Link::Host(host),
        Some(Bandwidth {
            kbit_per_second: 8000,
        }),
    )
    .unwrap();
    // 1 MB at 1 MB/s: at least 0.9 s even with a full burst allowance at each end.
    const BYTES: usize = 1_000_000;
    let floor = Duration::from_millis(900);
    let up = tcp_transfer(&lab, host, peer, 6000, BYTES);
    assert!(up >= floor, "host -> peer took {up:?}");
    let down = tcp_transfer(&lab, peer, host, 6001, BYTES);
    assert!(down >= floor, "peer -> host took {down:?}");
    // The limit can be lifted.
    lab.set_bandwidth(Link::Host(host), None).unwrap();
    tcp_transfer(&lab, peer, host, 6002, BYTES);
}

#[test]
fn a_renumbered_host_sends_from_its_new_address() {
    let mut lab = lab();
    let host = lab.add_public_host("host").unwrap();
    let peer = lab.add_public_host("peer").unwrap();
    let h = udp(&lab, host, true, 5000);
    let p = udp(&lab, peer, false, 5000);
    let p_addr = address(&lab, peer, &p);
    let before = lab.host(host).unwrap().address();
    h.send_to(b"before", p_addr).unwrap();
    assert_eq!(receive(&p).1.ip(), before);
    let after = lab.renumber(host).unwrap();
    assert_ne!(after, before);
    assert_eq!(lab.host(host).unwrap().address(), after);
    h.send_to(b"after", p_addr).unwrap();
    assert_eq!(receive(&p).1, SocketAddr::new(after.into(), 5000));
}

#[test]
fn a_host_moved_to_another_router_comes_out_of_that_router() {
    let mut lab = lab();
    let first = lab
        .add_router("first", RouterNat::Home, Upstream::Public)
        .unwrap();
    let second = lab
        .add_router("second", RouterNat::Home, Upstream::Public)
        .unwrap();
    let host = lab.add_host("host", Upstream::Router(first)).unwrap();
    let peer = lab.add_public_host("peer").unwrap();
    let h = udp(&lab, host, true, 5000);
    let p = udp(&lab, peer, false, 5000);
    let p_addr = address(&lab, peer, &p);
    h.send_to(b"before", p_addr).unwrap();
    let (_, seen) = receive(&p);
    assert_eq!(seen.ip(), lab.router_address(first).unwrap());
    // Set only once the datagram above is through: even 1 % loss drops it one run in 100.
    lab.set_loss(Link::Host(host), 1).unwrap();
    let old_address = lab.host(host).unwrap().address();
    let new_address = lab.move_host(host, Upstream::Router(second)).unwrap();
    assert_ne!(new_address, old_address);
    assert_eq!(lab.router_of(host).unwrap(), Some(second));
    // The link's impairments moved with it.
    assert_eq!(lab.shape(Link::Host(host)).unwrap().loss_percent, 1);
    lab.set_loss(Link::Host(host), 0).unwrap();
    h.send_to(b"after", p_addr).unwrap();
    let (_, seen) = receive(&p);
    assert_eq!(seen.ip(), lab.router_address(second).unwrap());
}

#[test]
fn a_nat_rebinding_gives_every_flow_a_new_mapping_and_closes_the_old() {
    let mut lab = lab();
    let pair = home_and_peer(&mut lab);
    let (h, p, p_addr) = (&pair.h, &pair.p, pair.p_addr);
    h.send_to(b"before", p_addr).unwrap();
    let (_, old_mapping) = receive(p);
    lab.rebind_nat(pair.router).unwrap();
    h.send_to(b"after", p_addr).unwrap();
    let (_, new_mapping) = receive(p);
    assert_eq!(new_mapping.ip(), old_mapping.ip());
    assert_ne!(new_mapping.port(), old_mapping.port());
    // The old mapping leads nowhere; the new one to the host.
    p.send_to(b"to the old mapping", old_mapping).unwrap();
    p.send_to(b"marker", new_mapping).unwrap();
    assert_eq!(until_marker(h), Vec::<String>::new());
}
