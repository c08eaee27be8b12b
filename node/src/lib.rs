//! The parts of the `ferry` daemon that tests and embedders use as a library: the durable
//! store that backs `ferry run`'s and `ferry listen --data`'s mailboxes, and the HTTP endpoint
//! with `/health` and `/metrics`.

pub mod http;
pub mod store;
