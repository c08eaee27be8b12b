//! The daemon's TOML config file (`ferry run --config PATH`): `FileConfig::parse`, then the
//! node and gateway configurations built from it, exactly as `ferry run` does.
//!
//! The parser lives in the `ferry` binary (node/src/config.rs), not in a library, so the
//! binary's modules it needs are compiled into this target as they are; nothing is copied.
#![no_main]

#[allow(dead_code, unused_imports)]
#[path = "../../node/src/cli.rs"]
mod cli;
#[allow(dead_code, unused_imports)]
#[path = "../../node/src/config.rs"]
mod config;
#[allow(dead_code)]
#[path = "../../node/src/duration.rs"]
mod duration;
#[allow(dead_code)]
#[path = "../../node/src/peer.rs"]
mod peer;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::FileConfig::parse(text) {
        Ok(file) => {
            let _ = file.node_config().validate();
            let _ = file.gateway_config();
        }
        Err(failure) => {
            // Errors are one line, with a line number inside the file.
            assert!(!failure.message.contains('\n'), "{failure:?}");
            if let Some(line) = failure.line {
                assert!(
                    line >= 1 && line <= text.lines().count().max(1) + 1,
                    "{failure:?}"
                );
            }
        }
    }
});
