//! Replays the committed fuzz corpus (fuzz/corpus/, see fuzz/README.md) through the oracles of
//! the fuzz targets (fuzz/oracles/, the same files), on the stable toolchain: every input the
//! fuzzer found interesting stays a regression test, also where cargo-fuzz is not installed.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::PathBuf;

use ferry::Address;

#[path = "../../fuzz/oracles/address_bytes.rs"]
mod address_bytes;
#[path = "../../fuzz/oracles/address_cap.rs"]
mod address_cap;
#[path = "../../fuzz/oracles/address_text.rs"]
mod address_text;
#[path = "../../fuzz/oracles/frame.rs"]
mod frame;
#[path = "../../fuzz/oracles/frame_stream.rs"]
mod frame_stream;
#[path = "../../fuzz/oracles/punch_candidates.rs"]
mod punch_candidates;
#[path = "../../fuzz/oracles/relay_datagram.rs"]
mod relay_datagram;

/// The inputs of one target's corpus, in name order.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the {target} corpus at {}: {e}", dir.display()));
    let mut inputs: Vec<_> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "the {target} corpus is committed");
    inputs
}

/// Runs `check` on every input of `target`'s corpus, naming the input that fails.
fn replay(target: &str, check: fn(&[u8])) {
    for (path, data) in corpus(target) {
        if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
            eprintln!("{target}: the input {} fails", path.display());
            std::panic::resume_unwind(panic);
        }
    }
}

#[test]
fn address_text_corpus() {
    replay("address_text", address_text::check);
}

#[test]
fn address_bytes_corpus() {
    replay("address_bytes", address_bytes::check);
}

#[test]
fn frame_corpus() {
    replay("frame", frame::check);
}

#[test]
fn frame_stream_corpus() {
    replay("frame_stream", frame_stream::check);
}

#[test]
fn relay_datagram_corpus() {
    replay("relay_datagram", relay_datagram::check);
}

#[test]
fn punch_candidates_corpus() {
    replay("punch_candidates", punch_candidates::check);
}

#[test]
fn address_cap_corpus() {
    replay("address_cap", address_cap::check);
    // The committed seeds reach the chain checks: valid narrowed capabilities are among them.
    assert!(corpus("address_cap")
        .iter()
        .any(|(_, data)| data.first() == Some(&0)
            && Address::from_cap_bytes(&data[1..]).is_ok_and(|a| !a.caveats().is_empty())));
}
