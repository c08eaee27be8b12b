//! What ferry's tests share, kept out of the `ferry` library and the `ferry` binary (this crate
//! is never a normal dependency of either; `publish = false`):
//!
//! - [`fake_peer`]: a QUIC endpoint with a ferry identity that speaks the wire protocol by
//!   hand, to play peers that misbehave against a real node;
//! - [`hostile_peer`]: the hostile peer process (binary `hostile_peer`): a fresh identity after
//!   another, each attacking a node in its own way until thrown out;
//! - [`lossy`]: a UDP forwarder between two endpoints that drops, delays, reorders,
//!   duplicates, rate-limits and partitions packets;
//! - [`harness`]: real processes (the `ferry` binary, SDK programs) with their output read line
//!   by line;
//! - [`nats`]: a real `nats-server -js` on a free loopback port;
//! - [`wait`]: waiting on a condition with a deadline instead of sleeping;
//! - [`files`]: a service that takes uploads (counting and hashing them) and sends downloads
//!   (a known pattern), for the gateway's data streams (docs/GATEWAY.md §13.11);
//! - [`webdriver`]: headless Chromium driven through chromedriver, for pages served by the
//!   gateway.
//!
//! Used by the SDK's integration tests (sdk/tests/hostile.rs and others), the node's, the
//! multi-process tests, the lab and the benchmark (interop-tests).

pub mod fake_peer;
pub mod files;
pub mod harness;
pub mod hostile_peer;
pub mod lossy;
pub mod nats;
pub mod wait;
pub mod webdriver;
