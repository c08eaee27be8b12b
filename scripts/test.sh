#!/usr/bin/env bash
# The whole test suite: formatting, lints, every unit, integration and doc test, and the
# examples. Installs what the tests need when it is missing, so it runs on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (https://rustup.rs); the toolchain is pinned in rust-toolchain.toml" >&2
  exit 1
fi

# The browser tests (node/tests/browser/) drive Debian's headless Chromium with
# chromedriver; install them when missing. The tests fail, never skip, without them.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "installing chromium and chromium-driver for the browser test" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    chromium chromium-driver
fi

# The lab of real hosts (interop-tests/LAB.md) builds network namespaces with nftables NAT
# routers, delays links through an iptables NFQUEUE rule and flushes NAT mappings with
# conntrack; install them when missing. Its tests fail, never skip, without them (or root).
if ! command -v nft >/dev/null 2>&1 || ! command -v iptables-nft >/dev/null 2>&1 \
  || ! command -v conntrack >/dev/null 2>&1; then
  echo "installing nftables, iptables and conntrack for the lab tests" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nftables iptables conntrack
fi

# The cluster tests (node/tests/cluster/) start Debian's nats-server (with JetStream, -js) on
# free loopback ports; install it when missing. The tests fail, never skip, without it.
if [ ! -x /usr/sbin/nats-server ]; then
  echo "installing nats-server for the cluster tests" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Every public item documented, every intra-doc link resolving.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
test_log="$(mktemp)"
trap 'rm -f "$test_log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$test_log"
# The JS client's package (clients/js): its declarations checked with tsc, and its tests under
# Node's test runner against the `ferry` binary the cargo tests built (target/debug/ferry).
if ! command -v npm >/dev/null 2>&1; then
  echo "installing nodejs and npm for the JS client's tests" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm
fi
(
  cd clients/js
  npm ci --no-audit --no-fund
  npm run typecheck
  npm test
) 2>&1 | tee -a "$test_log"
# Examples must run, not only compile.
cargo run --locked --example ping_pong
cargo run --locked --example file_transfer -- --bytes 20000000
cargo run --locked -p ferry-node --example playground -- --smoke
# The benchmark suite once, as a smoke check: figures are printed, nothing passes or fails on
# speed. NATS (Debian's nats-server) is one of its baselines; without it those rows say so.
if ! command -v nats-server >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server \
    || echo "nats-server could not be installed; the bench skips its NATS rows" >&2
fi
# The cluster and browser figures run the `ferry` binary of the same profile.
cargo build --release --locked -p ferry-node --bin ferry
cargo run --release --locked -p ferry-interop --bin bench -- --quick
# One closing line for the whole suite (cargo prints one summary per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /^# pass / { p += $3 } /^# fail / { f += $3 }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$test_log"
