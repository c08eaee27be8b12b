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
//! - [`wait`]: waiting on a condition with a deadline instead of sleeping;
//! - [`webdriver`]: headless Chromium driven through chromedriver, for pages served by the
//!   gateway.
//!
//! Used by the SDK's integration tests (sdk/tests/hostile.rs and others), the node's, the
//! multi-process tests, the lab and the benchmark (interop-tests).

pub mod fake_peer;
pub mod harness;
pub mod hostile_peer;
pub mod lossy;
pub mod wait;
pub mod webdriver;
