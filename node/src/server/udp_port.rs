//! The UDP port a node with a data directory keeps across restarts, so that the addresses it
//! printed (whose dial hints carry the port) stay valid: when `listen` asks for any free port
//! (port 0), the node binds the port it had last time, remembered in the file [`PORT_FILE`] of
//! the data directory, if that port is free (docs/CONFIG.md, `listen`).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::Write as _;
use std::path::{Path, PathBuf};

use ferry::{BindError, Node, NodeConfig, SecretKey};

/// The file in the data directory holding the UDP port of the last run: the port number in
/// decimal, then a newline.
pub const PORT_FILE: &str = "udp-port";

/// Why the remembered port was not bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PortChange {
    /// The port the node had last time, which it no longer has.
    pub(crate) previous: u16,
    /// Why it could not be bound (e.g. "Address already in use").
    pub(crate) reason: String,
}

/// Binds a paused node (see [`ferry::Builder::paused`]) with `config`, on the remembered port if
/// `config.listen` has port 0 and the data directory `dir` remembers one that is free, and
/// remembers the port bound. When the remembered port cannot be bound, a free port is, and the
/// change is logged (a warning: addresses printed before no longer reach the node) and
/// returned. A port given explicitly (non-zero) is always used as given.
pub(crate) async fn bind_keeping_port(
    key: SecretKey,
    config: &NodeConfig,
    dir: &Path,
) -> Result<(Node, Option<PortChange>), BindError> {
    let remembered = if config.listen.port() == 0 {
        remembered_port(dir)
    } else {
        None
    };
    let mut change = None;
    if let Some(previous) = remembered {
        let mut wanted = config.clone();
        wanted.listen.set_port(previous);
        match Node::builder(key.clone())
            .config(wanted)
            .paused()
            .bind()
            .await
        {
            Ok(node) => {
                remember(dir, &node);
                return Ok((node, None));
            }
            // The port is taken (or no longer allowed): any free one will do.
            Err(BindError::Socket { source, .. }) => {
                change = Some(PortChange {
                    previous,
                    reason: source.to_string(),
                });
            }
            Err(other) => return Err(other),
        }
    }
    let node = Node::builder(key)
        .config(config.clone())
        .paused()
        .bind()
        .await?;
    if let Some(PortChange { previous, reason }) = &change {
        tracing::warn!(
            "UDP port {previous}, which this node had before, cannot be bound ({reason}): \
             listening on {} instead, so addresses it printed before no longer reach it",
            node.local_addr()
        );
    }
    remember(dir, &node);
    Ok((node, change))
}

fn port_file(dir: &Path) -> PathBuf {
    dir.join(PORT_FILE)
}

/// The port remembered in `dir`: none if the file is missing; a file that cannot be read or
/// does not hold a port from 1 to 65535 is logged and ignored (it is rewritten after the bind).
fn remembered_port(dir: &Path) -> Option<u16> {
    let path = port_file(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read the remembered UDP port");
            return None;
        }
    };
    match text.trim().parse::<u16>() {
        Ok(port) if port != 0 => Some(port),
        _ => {
            tracing::warn!(
                path = %path.display(),
                content = text.trim(),
                "ignoring the remembered UDP port: not a port from 1 to 65535"
            );
            None
        }
    }
}

/// Writes the node's port to `dir` (a new file renamed over the old one, so a crash leaves
/// the old or the new port, never a torn file). A failure is logged: the node runs, and only
/// its next start may get another port.
fn remember(dir: &Path, node: &Node) {
    let port = node.local_addr().port();
    let path = port_file(dir);
    let partial = dir.join(format!("{PORT_FILE}.new"));
    let written = std::fs::File::create(&partial)
        .and_then(|mut file| {
            writeln!(file, "{port}")?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&partial, &path));
    if let Err(error) = written {
        tracing::warn!(
            path = %path.display(),
            %error,
            "cannot remember the UDP port: the next start may listen on another one"
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

    use super::*;
    use std::time::Duration;

    fn config(listen: &str) -> NodeConfig {
        NodeConfig {
            listen: listen.parse().unwrap(),
            ..NodeConfig::default()
        }
    }

    /// Binds as a start of the daemon does, in a runtime of its own that is dropped at the end
    /// (the process's exit, which releases the socket); returns the bound port and the change.
    fn start_and_stop(key: &SecretKey, dir: &Path) -> (u16, Option<PortChange>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (node, change) = bind_keeping_port(key.clone(), &config("127.0.0.1:0"), dir)
                .await
                .unwrap();
            let port = node.local_addr().port();
            node.shutdown(Duration::from_millis(100)).await;
            (port, change)
        })
    }

    #[test]
    fn the_port_is_remembered_and_bound_again() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate();
        let (port, change) = start_and_stop(&key, dir.path());
        assert_eq!(change, None);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(PORT_FILE)).unwrap(),
            format!("{port}\n")
        );
        assert_eq!(start_and_stop(&key, dir.path()), (port, None));
    }

    #[tokio::test]
    async fn a_taken_port_gives_way_to_a_free_one_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        std::fs::write(dir.path().join(PORT_FILE), format!("{port}\n")).unwrap();
        let (node, change) =
            bind_keeping_port(SecretKey::generate(), &config("127.0.0.1:0"), dir.path())
                .await
                .unwrap();
        let change = change.unwrap();
        assert_eq!(change.previous, port);
        assert!(!change.reason.is_empty());
        let new_port = node.local_addr().port();
        assert_ne!(new_port, port);
        // The new port is remembered for the next start.
        assert_eq!(
            std::fs::read_to_string(dir.path().join(PORT_FILE)).unwrap(),
            format!("{new_port}\n")
        );
        node.shutdown(Duration::from_millis(100)).await;
    }

    #[tokio::test]
    async fn an_explicit_port_is_used_as_given() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(PORT_FILE), "1\n").unwrap();
        let free = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let listen = format!("127.0.0.1:{port}");
        let (node, change) = bind_keeping_port(SecretKey::generate(), &config(&listen), dir.path())
            .await
            .unwrap();
        assert_eq!((node.local_addr().port(), change), (port, None));
        node.shutdown(Duration::from_millis(100)).await;

        // Taken: an error, not another port.
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let listen = taken.local_addr().unwrap().to_string();
        let result = bind_keeping_port(SecretKey::generate(), &config(&listen), dir.path()).await;
        assert!(
            matches!(result, Err(BindError::Socket { .. })),
            "{:?}",
            result.map(|(node, _)| node.local_addr())
        );
    }

    #[test]
    fn a_bad_port_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(remembered_port(dir.path()), None);
        for bad in ["", "0\n", "65536\n", "port\n", "-1"] {
            std::fs::write(dir.path().join(PORT_FILE), bad).unwrap();
            assert_eq!(remembered_port(dir.path()), None, "{bad:?}");
        }
        std::fs::write(dir.path().join(PORT_FILE), " 4433 \n").unwrap();
        assert_eq!(remembered_port(dir.path()), Some(4433));
    }
}
