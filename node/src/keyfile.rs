//! The node's key file: its ed25519 secret key as one line of 64 lower-case hex characters,
//! readable by its owner only (mode 0600 on Unix).

use std::path::{Path, PathBuf};

use ferry::{NodeId, NodeIdError, SecretKey};

/// Why a key file could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// No file at the path.
    #[error("key file {0} does not exist")]
    Missing(PathBuf),
    /// The file exists but could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file does not hold a ferry secret key.
    #[error("key file {0} is malformed: expected one line of 64 lower-case hex characters")]
    Malformed(PathBuf),
    /// Group or others may read the file, so the key may be known to others.
    #[error("key file {path} is too open (mode {mode:o}): run chmod 600 on it")]
    TooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key's public half is weak or non-canonical (cannot happen for generated keys).
    #[error("key file {0} holds a key whose public half is not usable: {1}")]
    BadKey(PathBuf, NodeIdError),
}

/// Writes the key as one line of hex to `path`, creating it with mode 0600.
/// Fails if the file exists, so a key is never overwritten by accident.
pub fn save(key: &SecretKey, path: &Path) -> Result<(), KeyFileError> {
    use std::io::Write;
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    let mut line = hex(&key.to_bytes());
    line.push('\n');
    file.write_all(line.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Reads a key written by [`save`].
pub fn load(path: &Path) -> Result<SecretKey, KeyFileError> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(KeyFileError::Missing(path.to_owned()))
        }
        Err(source) => {
            return Err(KeyFileError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::TooOpen {
                path: path.to_owned(),
                mode,
            });
        }
    }
    let text = std::fs::read(path).map_err(|source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    let malformed = || KeyFileError::Malformed(path.to_owned());
    let line = text.strip_suffix(b"\n").unwrap_or(&text);
    let bytes = unhex32(line).ok_or_else(malformed)?;
    let key = SecretKey::from_bytes(&bytes);
    NodeId::from_bytes(key.public().as_bytes())
        .map_err(|e| KeyFileError::BadKey(path.to_owned(), e))?;
    Ok(key)
}

/// Loads the key at `path`, or generates and saves a new one if there is none.
pub fn load_or_generate(path: &Path) -> Result<SecretKey, KeyFileError> {
    match load(path) {
        Err(KeyFileError::Missing(_)) => {
            let key = SecretKey::generate();
            save(&key, path)?;
            Ok(key)
        }
        other => other,
    }
}

fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

fn unhex32(text: &[u8]) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    data_encoding::HEXLOWER.decode(text).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        assert!(matches!(load(&path), Err(KeyFileError::Missing(_))));
        let key = SecretKey::generate();
        save(&key, &path).unwrap();
        assert_eq!(load(&path).unwrap().public(), key.public());
        assert!(matches!(save(&key, &path), Err(KeyFileError::Io { .. })));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                load(&path),
                Err(KeyFileError::TooOpen { mode: 0o644, .. })
            ));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::write(&path, "not a key\n").unwrap();
        assert!(matches!(load(&path), Err(KeyFileError::Malformed(_))));
    }
}
