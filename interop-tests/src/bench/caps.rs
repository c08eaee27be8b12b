//! What checking a capability costs the receiving node, per chain length (docs/PROTOCOL.md
//! §4.11), against `verify_strict` of a plain `ferry1` address, which every new plain
//! address costs (the baseline column):
//!
//! - "cached root": an attenuated address whose base (grant, expiry) the node has seen: the
//!   stateless caveat checks and one HMAC-SHA256 per caveat (plus one per counting caveat for
//!   its counter key). What every stream under a known grant costs, and what a flood of junk
//!   chains on a known base costs.
//! - "cold": the same with the chain's root computed first: one ed25519 signing of the base
//!   by the node's own key, then the chain. What the first chain on a base costs.
//!
//! Pure CPU on one thread, no network: each value is the mean over `caps_checks` checks.

use std::hint::black_box;
use std::time::Instant;

use anyhow::{ensure, Result};
use ferry::address::{Caveat, GrantId, Usage};
use ferry::{Address, MailboxId, SecretKey};

use super::{Better, Row, Settings};

/// Chain lengths measured (0: a grant's signed base, which costs a `verify_strict`).
const LENGTHS: [usize; 5] = [1, 2, 4, 6, 8];

fn chain(key: &SecretKey, length: usize) -> Result<Address> {
    let base = Address::mint_grant(key, MailboxId(7), GrantId(42), Some(u64::MAX - 1), vec![]);
    let holder = SecretKey::from_bytes(&[2; 32]).public();
    let mut address = base;
    for i in 0..length {
        let caveat = match i % 4 {
            0 => Caveat::MaxMessages(1_000_000),
            1 => Caveat::Holder(holder),
            2 => Caveat::ExpiresBefore(u64::MAX - 2 - i as u64),
            _ => Caveat::Rate {
                messages: 1000,
                per_secs: 1,
            },
        };
        address = address.with_caveats(&[caveat])?;
    }
    Ok(address)
}

/// Mean microseconds of `check` over `n` calls.
fn mean_us(n: u64, mut check: impl FnMut() -> bool) -> Result<f64> {
    let started = Instant::now();
    for _ in 0..n {
        ensure!(black_box(check()), "a valid capability was refused");
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / n as f64)
}

pub(super) async fn figure_caps(settings: Settings) -> Result<Vec<Row>> {
    let key = SecretKey::from_bytes(&[1; 32]);
    let node = key.public();
    let peer = SecretKey::from_bytes(&[2; 32]).public();
    let plain = Address::mint(&key, MailboxId(7), None, vec![]);
    let n = settings.caps_checks;
    let mut rows = Vec::new();
    for length in LENGTHS {
        let address = chain(&key, length)?;
        let root = address.root_tag(&key);
        let mut warm = Row::new(
            format!("capability check, {length} caveats, cached root"),
            "µs",
            Better::Lower,
        )
        .against("verify_strict of a ferry1 address");
        let mut cold = Row::new(
            format!("capability check, {length} caveats, cold (signs the base)"),
            "µs",
            Better::Lower,
        )
        .against("verify_strict of a ferry1 address");
        for _ in 0..settings.runs {
            let stateless = |a: &Address| {
                a.check_cheap(&node, 0).is_ok() && a.check_usage(&peer, Usage::Messages).is_ok()
            };
            warm.push(
                true,
                mean_us(n, || {
                    stateless(&address) && address.verify_chain(black_box(&root)).is_ok()
                })?,
            );
            cold.push(
                true,
                mean_us(n, || {
                    stateless(&address) && address.verify(black_box(&key)).is_ok()
                })?,
            );
            if !settings.ferry_only {
                let baseline = mean_us(n, || plain.verify_signature().is_ok())?;
                warm.push(false, baseline);
                cold.push(false, baseline);
            }
        }
        rows.push(warm);
        rows.push(cold);
    }
    Ok(rows)
}
