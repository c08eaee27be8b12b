//! The parts of the `ferry` daemon that tests and embedders use as a library: the durable
//! store that backs `ferry run`'s and `ferry listen --data`'s mailboxes.

pub mod store;
