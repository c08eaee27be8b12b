//! `ferry address attenuate` and `ferry address inspect`: offline work on capability
//! addresses (docs/PROTOCOL.md §4.11). Nothing here contacts a node or needs a key.

use std::process::ExitCode;

use ferry::address::Caveat;
use ferry::Address;

use crate::cli::{AddressCommand, AttenuateArgs};
use crate::exit;

pub(super) fn address(command: AddressCommand) -> ExitCode {
    match command {
        AddressCommand::Attenuate(args) => attenuate(args),
        AddressCommand::Inspect { address, json } => inspect(&address, json),
    }
}

fn parse(address: &str, command: &str) -> Result<Address, ExitCode> {
    address.trim().parse().map_err(|error| {
        eprintln!("ferry address {command}: malformed address: {error}");
        ExitCode::from(exit::INPUT)
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

fn attenuate(args: AttenuateArgs) -> ExitCode {
    let address = match parse(&args.address, "attenuate") {
        Ok(address) => address,
        Err(code) => return code,
    };
    let mut builder = address.attenuate();
    let expires = args
        .expires
        .map(|after| unix_now().saturating_add(after.as_secs().max(1)))
        .or(args.expires_at);
    if let Some(at) = expires {
        builder = builder.expires_at(at);
    }
    if let Some(max) = args.max {
        builder = builder.max_messages(max);
    }
    if let Some((messages, per_secs)) = args.rate {
        builder = builder.rate(messages, per_secs);
    }
    if let Some(service) = &args.service {
        builder = builder.service(service);
    }
    if let Some(node) = args.only {
        builder = builder.only(node);
    }
    match builder.build() {
        Ok(narrower) => {
            println!("{narrower}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("ferry address attenuate: {error}");
            ExitCode::from(exit::INPUT)
        }
    }
}

fn caveat_json(caveat: &Caveat) -> serde_json::Value {
    match caveat {
        Caveat::ExpiresBefore(at) => serde_json::json!({"expires_before": at}),
        Caveat::MaxMessages(n) => serde_json::json!({"max_messages": n}),
        Caveat::Rate { messages, per_secs } => {
            serde_json::json!({"rate": {"messages": messages, "per_secs": per_secs}})
        }
        Caveat::Service(name) => serde_json::json!({"service": name}),
        Caveat::Holder(node) => serde_json::json!({"only": node.to_string()}),
        other => serde_json::json!({"unknown": other.kind()}),
    }
}

fn inspect(text: &str, json: bool) -> ExitCode {
    let address = match parse(text, "inspect") {
        Ok(address) => address,
        Err(code) => return code,
    };
    let expiry = |at: Option<u64>| at.map_or_else(|| "never".to_string(), |at| at.to_string());
    let hints: Vec<String> = address.hints().iter().map(ToString::to_string).collect();
    let relays: Vec<String> = address
        .relays()
        .iter()
        .map(|(node, addr)| format!("{node}@{addr}"))
        .collect();
    if json {
        let value = serde_json::json!({
            "format": if address.is_plain() { "ferry1" } else { "ferry2" },
            "node": address.node().to_string(),
            "mailbox": address.mailbox().to_string(),
            "grant": address.grant().to_string(),
            "expires": address.expires(),
            "effective_expiry": address.effective_expiry(),
            "caveats": address.caveats().iter().map(caveat_json).collect::<Vec<_>>(),
            "proof": if address.caveats().is_empty() { "signature" } else { "chain" },
            "hints": hints,
            "relays": relays,
            "length": address.to_string().len(),
        });
        println!("{value}");
        return ExitCode::SUCCESS;
    }
    println!(
        "format: {}",
        if address.is_plain() {
            "ferry1"
        } else {
            "ferry2"
        }
    );
    println!("node: {}", address.node());
    println!("mailbox: {}", address.mailbox());
    println!("grant: {}", address.grant());
    println!("expires: {}", expiry(address.expires()));
    println!("effective expiry: {}", expiry(address.effective_expiry()));
    if address.caveats().is_empty() {
        println!("caveats: none (signed by the node)");
    }
    for caveat in address.caveats() {
        println!("caveat: {caveat}");
    }
    for hint in hints {
        println!("hint: {hint}");
    }
    for relay in relays {
        println!("relay: {relay}");
    }
    println!("length: {} characters", address.to_string().len());
    ExitCode::SUCCESS
}
