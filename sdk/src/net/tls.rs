//! TLS 1.3 configuration that binds a QUIC connection to the peers' [`NodeId`]s.
//!
//! Each node presents a self-signed X.509 certificate made by rcgen from its own ed25519 key.
//! Neither chain nor validity dates matter: what proves the identity is the TLS 1.3
//! `CertificateVerify` signature made with that key over the handshake transcript. Each side
//! takes the peer's NodeId from the certificate's subject public key; the dialer additionally
//! requires it to equal the NodeId it passed as the server name.
// Certificates come from any peer: no input may panic (docs/SECURITY.md).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::error::TlsSetupError;
use crate::identity::{NodeId, SecretKey};
use crate::sync::lock;

/// The ALPN protocol id; the protocol version lives here.
pub const ALPN: &[u8] = b"ferry/1";

/// The crypto provider ferry uses everywhere (ring), passed explicitly to every config.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a certificate says about the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerCert {
    pub(crate) node: NodeId,
    /// Random per process start (the certificate serial): tells a restarted peer from a
    /// second connection of the same run.
    pub(crate) incarnation: u64,
}

/// Reads the NodeId and incarnation from a ferry certificate.
pub(crate) fn parse_cert(der: &[u8]) -> Result<PeerCert, CertError> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|_| CertError::Malformed)?;
    if !rest.is_empty() {
        return Err(CertError::Malformed);
    }
    let spki = cert.public_key();
    if spki.algorithm.algorithm != x509_parser::oid_registry::OID_SIG_ED25519 {
        return Err(CertError::NotEd25519);
    }
    let key: [u8; 32] = spki
        .subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| CertError::NotEd25519)?;
    let node = NodeId::from_bytes(&key).map_err(|_| CertError::BadKey)?;
    // The incarnation is the serial's last (at most) 8 bytes, big-endian.
    let serial = cert.raw_serial();
    let incarnation = serial
        .iter()
        .skip(serial.len().saturating_sub(8))
        .fold(0u64, |value, &byte| (value << 8) | u64::from(byte));
    Ok(PeerCert { node, incarnation })
}

/// Why a peer's certificate is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CertError {
    #[error("certificate is not valid DER X.509")]
    Malformed,
    #[error("certificate key is not ed25519")]
    NotEd25519,
    #[error("certificate key is a weak or non-canonical ed25519 key")]
    BadKey,
    #[error("peer is {actual}, expected {expected}")]
    WrongNode { expected: NodeId, actual: NodeId },
}

impl From<CertError> for rustls::Error {
    fn from(err: CertError) -> Self {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            Arc::new(err),
        )))
    }
}

/// Records which NodeId actually answered when a dial found the wrong node, so the dialer can
/// report a typed error (the TLS alert itself carries no detail).
#[derive(Debug, Default)]
pub(crate) struct Mismatches(Mutex<HashMap<NodeId, NodeId>>);

impl Mismatches {
    pub(crate) fn take(&self, expected: &NodeId) -> Option<NodeId> {
        lock(&self.0).remove(expected)
    }
}

/// Both ends offer TLS 1.3 only.
const NO_TLS12: rustls::Error =
    rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered);

/// The handshake's signature, by the key of the peer's certificate (ed25519, the only scheme
/// either end offers): the same check on both ends.
fn verify_handshake_signature(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

#[derive(Debug)]
struct ServerVerifier {
    provider: Arc<CryptoProvider>,
    mismatches: Arc<Mismatches>,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ServerName::DnsName(name) = server_name else {
            return Err(rustls::Error::General(
                "server name is not a node id".into(),
            ));
        };
        let expected: NodeId = name
            .as_ref()
            .parse()
            .map_err(|_| rustls::Error::General("server name is not a node id".into()))?;
        let actual = parse_cert(end_entity.as_ref())?.node;
        if actual != expected {
            // Keep the map small: only the latest mismatch per expected node matters.
            let mut map = lock(&self.mismatches.0);
            if map.len() > 1024 {
                map.clear();
            }
            map.insert(expected, actual);
            return Err(CertError::WrongNode { expected, actual }.into());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(NO_TLS12)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_handshake_signature(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

#[derive(Debug)]
struct ClientVerifier {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        parse_cert(end_entity.as_ref())?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(NO_TLS12)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_handshake_signature(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The QUIC crypto configs of one node.
pub(crate) struct TlsConfigs {
    pub(crate) server: quinn::crypto::rustls::QuicServerConfig,
    pub(crate) client: quinn::crypto::rustls::QuicClientConfig,
    pub(crate) mismatches: Arc<Mismatches>,
}

/// Makes the node's certificate and both TLS configs. `alpn` is normally [`ALPN`]; tests pass
/// others to check version negotiation.
/// The key in PKCS#8 DER, the form rcgen and rustls take.
fn pkcs8_of(key: &SecretKey) -> Result<ed25519_dalek::pkcs8::SecretDocument, TlsSetupError> {
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    ed25519_dalek::SigningKey::from_bytes(&key.to_bytes())
        .to_pkcs8_der()
        .map_err(TlsSetupError::KeyEncoding)
}

pub(crate) fn configs(
    key: &SecretKey,
    incarnation: u64,
    alpn: &[u8],
) -> Result<TlsConfigs, TlsSetupError> {
    let provider = provider();
    let pkcs8 = pkcs8_of(key)?;
    let pkcs8 = PrivatePkcs8KeyDer::from(pkcs8.as_bytes().to_vec());
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)?;
    let mut params = rcgen::CertificateParams::new(vec![key.public().to_string()])?;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(
        &incarnation_as_serial(incarnation).to_be_bytes(),
    ));
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(9999, 12, 31);
    let cert = params.self_signed(&key_pair)?;
    let chain = vec![cert.der().clone()];
    let private = PrivateKeyDer::Pkcs8(pkcs8);

    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(ClientVerifier {
            provider: provider.clone(),
        }))
        .with_single_cert(chain.clone(), private.clone_key())?;
    server.alpn_protocols = vec![alpn.to_vec()];
    server.max_early_data_size = 0;

    let mismatches = Arc::new(Mismatches::default());
    let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerVerifier {
            provider,
            mismatches: mismatches.clone(),
        }))
        .with_client_auth_cert(chain, private)?;
    client.alpn_protocols = vec![alpn.to_vec()];

    Ok(TlsConfigs {
        server: quinn::crypto::rustls::QuicServerConfig::try_from(server)
            .map_err(TlsSetupError::Quic)?,
        client: quinn::crypto::rustls::QuicClientConfig::try_from(client)
            .map_err(TlsSetupError::Quic)?,
        mismatches,
    })
}

/// QUIC configurations that present `key` as a ferry node does, for another QUIC endpoint of
/// an application that wants its node's identity: a protocol of its own next to ferry's, a
/// tool, a test peer. They are quinn's (the quinn version ferry depends on), with quinn's
/// default transport parameters; set `transport_config` on them as needed.
///
/// - The certificate is self-signed from `key`, made as a node's is (docs/PROTOCOL.md §2.3).
/// - [`EndpointConfigs::server`] asks every client for such a certificate: a connection it
///   accepts has a client proving a [`NodeId`] (read it from the certificate).
/// - [`EndpointConfigs::client`] dials a node by its [`NodeId`] as the server name (its text
///   form): the handshake fails unless the server proves exactly that id.
///
/// Both speak only TLS 1.3 and only the ALPN protocol id `alpn` ([`ALPN`] to speak with
/// ferry nodes).
///
/// # Errors
///
/// If rcgen, rustls or quinn refuse the key or the configuration ([`TlsSetupError`]).
pub fn endpoint_configs(key: &SecretKey, alpn: &[u8]) -> Result<EndpointConfigs, TlsSetupError> {
    let mut incarnation = [0u8; 8];
    crate::identity::fill_random(&mut incarnation);
    let tls = configs(key, u64::from_be_bytes(incarnation), alpn)?;
    Ok(EndpointConfigs {
        server: quinn::ServerConfig::with_crypto(Arc::new(tls.server)),
        client: quinn::ClientConfig::new(Arc::new(tls.client)),
    })
}

/// What [`endpoint_configs`] makes: both sides of a QUIC endpoint with a node's identity.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EndpointConfigs {
    /// For accepting connections (`quinn::Endpoint::server`).
    pub server: quinn::ServerConfig,
    /// For dialing nodes (`quinn::Endpoint::set_default_client_config`), with a node id's text
    /// as the server name.
    pub client: quinn::ClientConfig,
}

/// The serial an incarnation number becomes, as [`parse_cert`] reads it back: a positive DER
/// integer (top bit clear) that is never zero.
pub(crate) fn incarnation_as_serial(incarnation: u64) -> u64 {
    let mut serial = incarnation.to_be_bytes();
    serial[0] = (serial[0] & 0x7f) | 0x01;
    u64::from_be_bytes(serial)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_carries_node_id_and_incarnation() {
        let key = SecretKey::generate();
        let pkcs8 = pkcs8_of(&key).unwrap();
        let pkcs8 = PrivatePkcs8KeyDer::from(pkcs8.as_bytes().to_vec());
        let key_pair =
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519).unwrap();
        let mut params = rcgen::CertificateParams::new(vec![key.public().to_string()]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(
            &incarnation_as_serial(42).to_be_bytes(),
        ));
        let cert = params.self_signed(&key_pair).unwrap();
        let parsed = parse_cert(cert.der()).unwrap();
        assert_eq!(parsed.node, key.public());
        assert_eq!(parsed.incarnation, incarnation_as_serial(42));
        assert_eq!(parse_cert(b"junk"), Err(CertError::Malformed));
    }
}
