//! The WebTransport endpoint's certificates.
//!
//! Browsers accept a certificate without a CA when the page names its SHA-256 hash
//! (`serverCertificateHashes`), provided it is ECDSA P-256 and valid for less than 14 days. So
//! the gateway makes its own: each valid for [`VALIDITY`] (13 days), served for
//! [`ROTATE_EVERY`] (6 days), and the **next** one made (and its hash published) a whole
//! period before it is served. The published hashes are always the served certificate's and
//! the next one's: a page that fetched them connects across a rotation.
//!
//! Rotation follows a [`Clock`]: whenever the certificate is needed (a TLS handshake, the JSON
//! endpoint) and the clock is past the rotation time, the next certificate is served and a new
//! next one is made. Tests drive a [`ManualClock`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How long a self-made certificate is valid: under the 14 days browsers accept for
/// certificates pinned by hash.
pub const VALIDITY: Duration = Duration::from_secs(13 * 24 * 3600);

/// How long a self-made certificate is served before the next one takes over (it then has
/// a day of validity left at least, for clocks that disagree).
pub const ROTATE_EVERY: Duration = Duration::from_secs(6 * 24 * 3600);

/// How far before "now" a certificate's validity starts, for clients whose clock is behind.
const BACKDATE: Duration = Duration::from_secs(3600);

/// The time, for certificate rotation.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<SystemTime>>);

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: SystemTime) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a certificate could not be made or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// rcgen could not make the certificate.
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the key.
    #[error("the certificate's key: {0}")]
    Key(#[from] rustls::Error),
    /// A PEM file could not be read or has no certificate or key.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// One certificate with its key and hash.
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    pub(crate) key: Arc<CertifiedKey>,
    /// SHA-256 of the certificate's DER.
    pub(crate) hash: [u8; 32],
    pub(crate) not_after: SystemTime,
}

/// A certificate hash as a page passes it to `serverCertificateHashes`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertificateHash {
    /// Always `"sha-256"`.
    pub algorithm: &'static str,
    /// The hash, base64 (standard alphabet, padded).
    pub value: String,
}

impl CertificateHash {
    fn of(hash: &[u8; 32]) -> Self {
        Self {
            algorithm: "sha-256",
            value: data_encoding::BASE64.encode(hash),
        }
    }

    /// The hash's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        data_encoding::BASE64
            .decode(self.value.as_bytes())
            .unwrap_or_default()
    }
}

#[derive(Debug)]
struct Rotation {
    current: Issued,
    next: Issued,
    /// When `next` is served.
    rotate_at: SystemTime,
}

/// The endpoint's certificates: self-made and rotated, or one configured (CA-signed).
#[derive(Debug)]
pub struct Certificates {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Rotating {
        clock: Arc<dyn Clock>,
        names: Vec<String>,
        state: Mutex<Rotation>,
    },
    Fixed(Arc<CertifiedKey>),
}

fn sha256(der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut hash = [0; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

fn signing_key(
    key: &PrivateKeyDer<'_>,
) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
    rustls::crypto::ring::sign::any_supported_type(key)
}

/// Makes an ECDSA P-256 certificate for `names`, valid from `now` − 1 h for [`VALIDITY`].
fn issue(names: &[String], now: SystemTime) -> Result<Issued, CertificateError> {
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    let not_before = now.checked_sub(BACKDATE).unwrap_or(now);
    let not_after = not_before + VALIDITY;
    params.not_before = time::OffsetDateTime::from(not_before);
    params.not_after = time::OffsetDateTime::from(not_after);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ferry gateway");
    let certificate = params.self_signed(&key_pair)?;
    let der = certificate.der().clone();
    let hash = sha256(&der);
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
    let key = Arc::new(CertifiedKey::new(vec![der], signing_key(&private)?));
    Ok(Issued {
        key,
        hash,
        not_after,
    })
}

impl Certificates {
    /// Self-made certificates for `names` (DNS names or IP addresses), rotated on `clock`.
    pub fn self_signed(
        names: Vec<String>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, CertificateError> {
        let now = clock.now();
        let current = issue(&names, now)?;
        let next = issue(&names, now)?;
        Ok(Self {
            inner: Inner::Rotating {
                clock,
                names,
                state: Mutex::new(Rotation {
                    current,
                    next,
                    rotate_at: now + ROTATE_EVERY,
                }),
            },
        })
    }

    /// One configured certificate chain and key (PEM files), e.g. CA-signed: no hashes are
    /// published, browsers verify it as any web certificate.
    pub fn from_pem_files(
        chain: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<Self, CertificateError> {
        use rustls::pki_types::pem::PemObject;
        let pem_error = |path: &std::path::Path, message: String| CertificateError::Pem {
            path: path.to_owned(),
            message,
        };
        let certs = CertificateDer::pem_file_iter(chain)
            .map_err(|e| pem_error(chain, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(chain, e.to_string()))?;
        if certs.is_empty() {
            return Err(pem_error(chain, "no certificate in the file".into()));
        }
        let private =
            PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, e.to_string()))?;
        Ok(Self {
            inner: Inner::Fixed(Arc::new(CertifiedKey::new(certs, signing_key(&private)?))),
        })
    }

    /// Serves the next certificate if the clock is past its time (and makes a new next
    /// one). Returns the served certificate.
    fn rotated(&self) -> Arc<CertifiedKey> {
        match &self.inner {
            Inner::Fixed(key) => key.clone(),
            Inner::Rotating {
                clock,
                names,
                state,
            } => {
                let now = clock.now();
                let mut rotation = state.lock().unwrap_or_else(|p| p.into_inner());
                // A clock that jumped several periods: one step per period, at most a few.
                let mut steps = 0;
                while now >= rotation.rotate_at && steps < 4 {
                    steps += 1;
                    match issue(names, now) {
                        Ok(fresh) => {
                            let next = std::mem::replace(&mut rotation.next, fresh);
                            rotation.current = next;
                            rotation.rotate_at += ROTATE_EVERY;
                        }
                        Err(error) => {
                            tracing::error!(%error, "making the next WebTransport certificate");
                            break;
                        }
                    }
                }
                if now >= rotation.rotate_at {
                    // Far behind (a clock jump): start the schedule from now.
                    rotation.rotate_at = now + ROTATE_EVERY;
                }
                rotation.current.key.clone()
            }
        }
    }

    /// The hashes a page passes to `serverCertificateHashes`: the served certificate's and the
    /// next one's; none for a configured certificate.
    pub fn hashes(&self) -> Vec<CertificateHash> {
        let _ = self.rotated();
        match &self.inner {
            Inner::Fixed(_) => Vec::new(),
            Inner::Rotating { state, .. } => {
                let rotation = state.lock().unwrap_or_else(|p| p.into_inner());
                vec![
                    CertificateHash::of(&rotation.current.hash),
                    CertificateHash::of(&rotation.next.hash),
                ]
            }
        }
    }

    /// When the served certificate is replaced (self-made certificates only).
    pub fn rotates_at(&self) -> Option<SystemTime> {
        match &self.inner {
            Inner::Fixed(_) => None,
            Inner::Rotating { state, .. } => {
                Some(state.lock().unwrap_or_else(|p| p.into_inner()).rotate_at)
            }
        }
    }

    /// When the served self-made certificate expires.
    pub fn expires_at(&self) -> Option<SystemTime> {
        match &self.inner {
            Inner::Fixed(_) => None,
            Inner::Rotating { state, .. } => Some(
                state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .current
                    .not_after,
            ),
        }
    }

    /// Whether the certificates are self-made (pinned by hash).
    pub fn is_self_signed(&self) -> bool {
        matches!(self.inner, Inner::Rotating { .. })
    }
}

/// The TLS side: every handshake gets the certificate served at that moment.
#[derive(Debug)]
pub(crate) struct Resolver(pub(crate) Arc<Certificates>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.rotated())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn rotation_publishes_the_next_hash_in_advance() {
        let clock = ManualClock::new(SystemTime::now());
        let certs =
            Certificates::self_signed(vec!["localhost".into()], Arc::new(clock.clone())).unwrap();
        let first = certs.hashes();
        assert_eq!(first.len(), 2);
        assert_ne!(first[0], first[1]);
        assert_eq!(first[0].bytes().len(), 32);
        clock.advance(ROTATE_EVERY - Duration::from_secs(1));
        assert_eq!(certs.hashes(), first);
        clock.advance(Duration::from_secs(1));
        let second = certs.hashes();
        // The announced next certificate is served now, and a new next one announced.
        assert_eq!(second[0], first[1]);
        assert_ne!(second[1], first[0]);
        assert_ne!(second[1], first[1]);
        // Every certificate served is valid under 14 days and still has a day left.
        let expires = certs.expires_at().unwrap();
        let left = expires.duration_since(clock.now()).unwrap();
        assert!(left >= Duration::from_secs(24 * 3600), "{left:?}");
        assert!(VALIDITY < Duration::from_secs(14 * 24 * 3600));
    }

    #[test]
    fn certificates_are_ecdsa_p256_valid_under_14_days() {
        let now = SystemTime::now();
        let issued = issue(&["localhost".into()], now).unwrap();
        let der = &issued.key.cert[0];
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let validity = cert.validity();
        let span = validity.not_after.timestamp() - validity.not_before.timestamp();
        assert!(span < 14 * 24 * 3600, "{span}");
        assert_eq!(
            cert.signature_algorithm.algorithm.to_id_string(),
            "1.2.840.10045.4.3.2" // ecdsa-with-SHA256
        );
        let key = cert.public_key();
        assert_eq!(
            key.algorithm.algorithm.to_id_string(),
            "1.2.840.10045.2.1" // id-ecPublicKey
        );
    }
}
