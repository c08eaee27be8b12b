//! `ferry keygen` and `ferry id`.

use std::path::PathBuf;

use ferry::SecretKey;

use crate::daemon_config::default_data_dir;

fn key_path(key: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match key {
        Some(key) => Ok(key),
        None => Ok(default_data_dir()?.join("key")),
    }
}

/// Writes a new key (mode 0600) and prints its node id.
pub(super) fn keygen(out: Option<PathBuf>) -> anyhow::Result<()> {
    let path = key_path(out)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let key = SecretKey::generate();
    ferry_node::keyfile::save(&key, &path)?;
    println!("{}", key.public());
    Ok(())
}

/// Prints the node id of a key file.
pub(super) fn id(key: Option<PathBuf>) -> anyhow::Result<()> {
    let key = ferry_node::keyfile::load(&key_path(key)?)?;
    println!("{}", key.public());
    Ok(())
}
