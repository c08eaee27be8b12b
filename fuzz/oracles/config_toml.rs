//! The daemon's TOML config file (`ferry run --config PATH`): `FileConfig::parse`, then the
//! node and gateway configurations validated, exactly as `ferry run` does.
//!
//! One copy, included by fuzz target `config_toml` and by the replay of its
//! committed corpus on the stable toolchain (node/tests/fuzz_corpus.rs).

use ferry_node::config::FileConfig;

/// Checks one input; panics on a finding.
pub(crate) fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match FileConfig::parse(text) {
        Ok(file) => {
            let _ = file.node.validate();
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
}
