//! A lab of real hosts (issue 12, points 1 and 2): topologies built from Linux network
//! namespaces — hosts, NAT routers, a public segment — running the real `ferry` binary or SDK
//! agents, with link impairments and the changes a real network goes through. Needs root,
//! iproute2 and nftables, iptables for link delay and conntrack for NAT rebinding; LAB.md in
//! this crate describes the addresses, the NAT kinds' nftables rules and how to run it.
//!
//! Everything the lab makes lives in namespaces named `ferrylab-<pid>-<random>-public` (the
//! public segment), `…-h-<host>` and `…-r-<router>`: dropping the [`Lab`] (also while a panic
//! unwinds) removes them and kills what runs there; [`tear_down_all`] does it from a signal
//! handler; [`Lab::new`] removes those of runs that no longer run.

mod agent;
mod delay;
mod link;
pub mod matrix;
mod namespace;
mod nat;
pub mod nat_check;
mod registry;
mod shell;
mod tally;
mod topology;

pub use agent::{AgentError, LabAgent, PathState, Received};
pub use delay::DelayError;
pub use link::{Bandwidth, LinkShape};
pub use namespace::Namespace;
pub use nat::{Filtering, Mapping, NatKind, RouterNat, UnknownNatKind};
pub use registry::{remove_stale, tear_down_all};
pub use shell::CommandError;
pub use tally::Tally;
pub use topology::{Host, HostId, Lab, Link, RouterId, Upstream};

/// Why the lab could not be built or changed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Creating namespaces needs root.
    #[error(
        "the lab needs root: it creates network namespaces (run the tests as root, as CI does)"
    )]
    NotRoot,
    /// A tool the lab needs is missing.
    #[error(
        "{tool} is missing (install the Debian package {package}; scripts/test.sh does): {source}"
    )]
    MissingTool {
        /// The command.
        tool: &'static str,
        /// The package that has it.
        package: &'static str,
        /// What running it said.
        source: CommandError,
    },
    /// A network tool failed while building or changing the lab.
    #[error("building the lab's network: {0}")]
    Command(#[from] CommandError),
    /// A link's delay stage could not start.
    #[error(transparent)]
    Delay(#[from] DelayError),
    /// More of something than the address plan holds.
    #[error("too many {what} for the lab's address plan")]
    TooMany {
        /// What ran out.
        what: &'static str,
    },
    /// A host id from another lab.
    #[error("no host {0:?} in this lab")]
    UnknownHost(HostId),
    /// A router id from another lab.
    #[error("no router {0:?} in this lab")]
    UnknownRouter(RouterId),
}
