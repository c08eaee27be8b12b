//! The daemon's TOML config file (`ferry run --config PATH`): `FileConfig::parse`, then the
//! node and gateway configurations validated, exactly as `ferry run` does.
#![no_main]

#[path = "../oracles/config_toml.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracle::check(data));
