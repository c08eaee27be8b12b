//! The `ferry` command-line tool and daemon.

fn main() {}
