//! Proof that each NAT kind behaves as it claims, with plain UDP sockets and no ferry: a
//! STUN-like measurement (RFC 4787's tests) of the lab itself.
//!
//! A host behind the kind sends from one socket to three observers on the public segment (two
//! ports of one address, one port of another); each reports the source address it saw: all
//! the same is endpoint-independent mapping, the same per address is address-dependent,
//! otherwise address-and-port-dependent. Then a fresh socket of the host sends to one observer
//! port only, and three packets come to the mapping that observer saw: from a stranger
//! (another address), from another port of the observer, and last a marker from the observer
//! port itself (which any NAT lets in). Whatever arrived before the marker says the filtering:
//! the stranger's packet means endpoint-independent, the other port's address-dependent,
//! neither address-and-port-dependent. The three are sent one after another from this
//! process, each forwarded by the kernel before its `send_to` returns, so a packet the NAT lets
//! in is there before the marker.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use super::nat::{Filtering, Mapping, NatKind};
use super::topology::{HostId, Lab};
use super::LabError;

/// How long one expected datagram may take (it takes microseconds; this only bounds a broken
/// lab).
const ANSWER: Duration = Duration::from_secs(5);

/// What the measurement found for one NAT kind.
#[derive(Debug, Clone)]
pub struct NatBehaviour {
    /// The kind measured.
    pub kind: NatKind,
    /// Measured mapping behaviour.
    pub mapping: Mapping,
    /// Measured filtering behaviour.
    pub filtering: Filtering,
    /// The host socket's own address.
    pub local: SocketAddr,
    /// The source addresses the three observers saw (observer 1 port a, port b, observer 2).
    pub seen: [SocketAddr; 3],
    /// The public address of the outermost router (the host's own address without NAT): the
    /// address the observers must see.
    pub public_address: Ipv4Addr,
}

/// Why a measurement could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NatCheckError {
    /// The lab could not be built.
    #[error(transparent)]
    Lab(#[from] LabError),
    /// A socket could not be opened or used.
    #[error("{what}: {source}")]
    Socket {
        /// Which socket operation.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

fn socket_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NatCheckError {
    let what = what.into();
    move |source| NatCheckError::Socket { what, source }
}

/// Builds a lab with a host behind `kind` and measures its NAT.
pub fn check(kind: NatKind) -> Result<NatBehaviour, NatCheckError> {
    let mut lab = Lab::new()?;
    let observer1 = lab.add_public_host("observer1")?;
    let observer2 = lab.add_public_host("observer2")?;
    let stranger = lab.add_public_host("stranger")?;
    let host = lab.add_host_behind("host", kind)?;
    let socket = |id: HostId, port: u16| -> Result<UdpSocket, NatCheckError> {
        let host = lab.host(id)?;
        let socket = host
            .namespace()
            .udp_socket(SocketAddr::new(host.address().into(), port))
            .map_err(socket_error(format!("binding a socket on {}", host.name())))?;
        socket
            .set_read_timeout(Some(ANSWER))
            .map_err(socket_error("setting a read timeout"))?;
        Ok(socket)
    };
    let observers = [
        socket(observer1, 3478)?,
        socket(observer1, 3479)?,
        socket(observer2, 3478)?,
    ];
    let other_port = socket(observer1, 3480)?;
    let strangers = socket(stranger, 3478)?;

    let mapped = socket(host, 0)?;
    let local = mapped.local_addr().map_err(socket_error("local address"))?;
    let mut seen = [local; 3];
    for (observer, seen) in observers.iter().zip(&mut seen) {
        *seen = exchange(&mapped, observer)?;
    }
    let mapping = if seen.iter().all(|addr| *addr == local) {
        Mapping::NoTranslation
    } else if seen[0] == seen[1] && seen[1] == seen[2] {
        Mapping::EndpointIndependent
    } else if seen[0] == seen[1] {
        Mapping::AddressDependent
    } else {
        Mapping::AddressAndPortDependent
    };

    let filtered = socket(host, 0)?;
    let mapping_seen = exchange(&filtered, &observers[0])?;
    send(&strangers, b"stranger", mapping_seen)?;
    send(&other_port, b"other-port", mapping_seen)?;
    send(&observers[0], b"marker", mapping_seen)?;
    let arrived = receive_until_marker(&filtered)?;
    let filtering = if arrived.iter().any(|payload| payload == "stranger") {
        Filtering::EndpointIndependent
    } else if arrived.iter().any(|payload| payload == "other-port") {
        Filtering::AddressDependent
    } else {
        Filtering::AddressAndPortDependent
    };
    Ok(NatBehaviour {
        kind,
        mapping,
        filtering,
        local,
        seen,
        public_address: lab.public_address(host)?,
    })
}

/// Sends from `from` to `observer`, which answers; returns the source address it saw.
fn exchange(from: &UdpSocket, observer: &UdpSocket) -> Result<SocketAddr, NatCheckError> {
    let target = observer
        .local_addr()
        .map_err(socket_error("observer address"))?;
    send(from, b"probe", target)?;
    let mut buffer = [0u8; 64];
    let (_, seen) = observer
        .recv_from(&mut buffer)
        .map_err(socket_error(format!(
            "observer {target} waiting for the probe"
        )))?;
    // The answer makes the flow two-way, as any real exchange is.
    send(observer, b"answer", seen)?;
    from.recv_from(&mut buffer)
        .map_err(socket_error(format!("waiting for {target}'s answer")))?;
    Ok(seen)
}

fn send(from: &UdpSocket, payload: &[u8], to: SocketAddr) -> Result<(), NatCheckError> {
    from.send_to(payload, to)
        .map(drop)
        .map_err(socket_error(format!("sending to {to}")))
}

/// Every payload `socket` receives up to and including the marker.
fn receive_until_marker(socket: &UdpSocket) -> Result<Vec<String>, NatCheckError> {
    let mut arrived = Vec::new();
    let mut buffer = [0u8; 64];
    loop {
        let (len, _) = socket
            .recv_from(&mut buffer)
            .map_err(socket_error("waiting for the marker"))?;
        let payload = String::from_utf8_lossy(buffer.get(..len).unwrap_or_default()).into_owned();
        if payload == "marker" {
            return Ok(arrived);
        }
        arrived.push(payload);
        if arrived.len() > 16 {
            return Err(NatCheckError::Socket {
                what: "waiting for the marker".to_string(),
                source: std::io::Error::other(format!("unexpected datagrams: {arrived:?}")),
            });
        }
    }
}
