//! Multi-process interop tests, the lab of real hosts (network namespaces and NAT routers, see
//! LAB.md) and the benchmark suite for ferry. What the tests share (the lossy link, the process
//! harness, the fake and hostile peers) is in the `ferry-testkit` crate (testkit/).

pub mod lab;
