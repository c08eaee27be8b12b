#!/usr/bin/env bash
# The whole test suite: formatting, lints, every unit, integration and doc test, and the
# examples. Installs what the tests need when it is missing, so it runs on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (https://rustup.rs); the toolchain is pinned in rust-toolchain.toml" >&2
  exit 1
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
# Examples must run, not only compile.
cargo run --locked --example ping_pong
cargo run --locked --example file_transfer -- --bytes 20000000
