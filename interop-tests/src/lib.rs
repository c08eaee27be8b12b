//! Multi-process interop tests, the lossy link utility, the lab of real hosts (network
//! namespaces and NAT routers, see LAB.md) and the benchmark suite for ferry.

pub mod harness;
pub mod lab;
pub mod lossy;
