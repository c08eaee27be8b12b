//! The parts of the `ferry` daemon that tests and embedders use as a library: a whole
//! `ferry run` in-process ([`server`]), its config file ([`config`]), the durable store that
//! backs `ferry run`'s and `ferry listen --data`'s mailboxes, the HTTP endpoint with
//! `/health` and `/metrics`, the browser gateway, and the node's key file.

mod clock;
pub mod cluster;
pub mod config;
pub mod gateway;
pub mod http;
pub mod keyfile;
mod random;
pub mod server;
pub mod store;
mod sync;
