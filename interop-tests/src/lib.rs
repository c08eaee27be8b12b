//! Multi-process interop tests, the lossy link utility and the benchmark suite for ferry.

pub mod harness;
pub mod lab;
pub mod lossy;
