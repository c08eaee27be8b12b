//! The lab's NAT kinds behave as they claim, measured with plain UDP sockets (no ferry): the
//! mapping and filtering of each, and the public address its traffic leaves with.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use ferry_interop::lab::nat_check::{check, NatBehaviour};
use ferry_interop::lab::{Filtering, Mapping, NatKind};

fn measured(kind: NatKind) -> NatBehaviour {
    check(kind).unwrap_or_else(|error| panic!("measuring {kind}: {error}"))
}

/// The kind's claimed behaviour, and the observers saw the outermost public address.
fn assert_as_claimed(behaviour: &NatBehaviour) {
    let (mapping, filtering) = behaviour.kind.claimed();
    assert_eq!(
        (behaviour.mapping, behaviour.filtering),
        (mapping, filtering),
        "{behaviour:?}"
    );
    for seen in behaviour.seen {
        assert_eq!(seen.ip(), behaviour.public_address, "{behaviour:?}");
    }
}

#[test]
fn a_public_host_is_seen_as_itself_and_reached_by_anyone() {
    let behaviour = measured(NatKind::None);
    assert_as_claimed(&behaviour);
    assert_eq!(behaviour.mapping, Mapping::NoTranslation);
}

#[test]
fn a_full_cone_keeps_one_mapping_and_lets_anyone_in() {
    let behaviour = measured(NatKind::FullCone);
    assert_as_claimed(&behaviour);
    assert_ne!(behaviour.seen[0], behaviour.local, "translated");
}

#[test]
fn a_home_router_keeps_one_mapping_and_lets_in_only_whom_the_host_sent_to() {
    let behaviour = measured(NatKind::Home);
    assert_as_claimed(&behaviour);
    assert_eq!(behaviour.filtering, Filtering::AddressAndPortDependent);
}

#[test]
fn a_symmetric_nat_maps_every_destination_to_its_own_port() {
    let behaviour = measured(NatKind::Symmetric);
    assert_as_claimed(&behaviour);
    let ports: std::collections::HashSet<u16> =
        behaviour.seen.iter().map(|seen| seen.port()).collect();
    assert_eq!(ports.len(), 3, "{behaviour:?}");
}

#[test]
fn two_layers_of_nat_show_the_carriers_address() {
    let behaviour = measured(NatKind::TwoLayers);
    assert_as_claimed(&behaviour);
}
