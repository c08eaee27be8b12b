//! Replays the committed fuzz corpora of the node's decoders (fuzz/corpus/gateway_frame,
//! webtransport_frame and config_toml, see fuzz/README.md) through the oracles of the fuzz
//! targets (fuzz/oracles/, the same files) on the stable toolchain: every input the fuzzer
//! found interesting stays a regression test.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::PathBuf;

#[path = "../../fuzz/oracles/config_toml.rs"]
mod config_toml;
#[path = "../../fuzz/oracles/gateway_frame.rs"]
mod gateway_frame;
#[path = "../../fuzz/oracles/webtransport_frame.rs"]
mod webtransport_frame;

/// Runs `check` on every input of `target`'s committed corpus, naming the input that fails.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the {target} corpus at {}: {e}", dir.display()));
    let mut count = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
            eprintln!("{target}: the input {} fails", path.display());
            std::panic::resume_unwind(panic);
        }
        count += 1;
    }
    assert!(count > 0, "an empty corpus at {}", dir.display());
}

#[test]
fn gateway_frame_corpus() {
    replay("gateway_frame", gateway_frame::check);
}

#[test]
fn webtransport_frame_corpus() {
    replay("webtransport_frame", webtransport_frame::check);
}

#[test]
fn config_toml_corpus() {
    replay("config_toml", config_toml::check);
}
