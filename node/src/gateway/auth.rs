//! Authentication of browsers (Riverside's `authenticate`): credentials from a bearer token,
//! basic auth or `?token=`, verified by static tokens, JWTs (HS256, EdDSA) or the
//! embedder's hook. Failure is HTTP 401 with `WWW-Authenticate`.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::config::AuthConfig;

/// What a browser presented, for the `authenticate` hook.
#[derive(Debug, Clone, Default)]
pub struct AuthRequest {
    /// The HTTP headers of the upgrade request.
    pub headers: HeaderMap,
    /// The query parameters of the upgrade request.
    pub query: HashMap<String, String>,
    /// The bearer token (`Authorization: Bearer …`, else `?token=`), if any.
    pub bearer: Option<String>,
    /// User name and password of `Authorization: Basic …`, if any.
    pub basic: Option<(String, String)>,
}

impl AuthRequest {
    /// Reads the credentials out of an upgrade request.
    pub fn new(headers: HeaderMap, query: HashMap<String, String>) -> Self {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .map(str::trim);
        let mut bearer = None;
        let mut basic = None;
        if let Some(value) = authorization {
            if let Some((scheme, rest)) = value.split_once(' ') {
                let rest = rest.trim();
                if scheme.eq_ignore_ascii_case("bearer") {
                    bearer = Some(rest.to_owned());
                } else if scheme.eq_ignore_ascii_case("basic") {
                    basic = data_encoding::BASE64
                        .decode(rest.as_bytes())
                        .ok()
                        .and_then(|bytes| String::from_utf8(bytes).ok())
                        .and_then(|text| {
                            text.split_once(':')
                                .map(|(user, password)| (user.to_owned(), password.to_owned()))
                        });
                }
            }
        }
        if bearer.is_none() {
            bearer = query.get("token").cloned();
        }
        Self {
            headers,
            query,
            bearer,
            basic,
        }
    }

    /// A request that carries only `token` (for `refresh`).
    pub fn token(token: String) -> Self {
        Self {
            bearer: Some(token),
            ..Self::default()
        }
    }

    /// Whether it carries any credentials.
    pub fn has_credentials(&self) -> bool {
        self.bearer.is_some() || self.basic.is_some()
    }
}

/// Who a browser is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id (a JWT's `sub`, a static token's `user`).
    pub user: String,
    /// When the credentials expire (unix seconds): the connection is closed then unless the
    /// client sends a fresh token first.
    pub expires: Option<u64>,
}

/// Why authentication failed. The upgrade is answered 401 with `WWW-Authenticate`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Credentials are required and none were given.
    #[error("credentials required")]
    Missing,
    /// The credentials were refused.
    #[error("invalid credentials: {0}")]
    Invalid(#[source] InvalidCredentials),
    /// The credentials are valid but expired.
    #[error("credentials expired")]
    Expired,
}

/// Why credentials were refused ([`AuthError::Invalid`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidCredentials {
    /// HTTP Basic credentials that match no static token's user and token.
    #[error("unknown user or password")]
    UnknownUser,
    /// A bearer token that is no static token, and no JWT (or no JWT key is configured).
    #[error("unknown token")]
    UnknownToken,
    /// A JWT signed with an algorithm no configured key is for (HS256 and EdDSA are accepted).
    #[error("JWT algorithm {0:?} not accepted")]
    Algorithm(Algorithm),
    /// A JWT that is malformed, badly signed, or whose claims do not validate.
    #[error(transparent)]
    Jwt(#[from] jsonwebtoken::errors::Error),
    /// A JWT whose `sub` (the user id) is empty.
    #[error("empty `sub`")]
    EmptySubject,
}

impl AuthError {
    /// The 401 response.
    pub fn response(&self, basic: bool) -> Response {
        let bearer = match self {
            Self::Missing => r#"Bearer realm="ferry""#.to_owned(),
            Self::Invalid(_) => {
                r#"Bearer realm="ferry", error="invalid_token", error_description="invalid credentials""#.to_owned()
            }
            Self::Expired => {
                r#"Bearer realm="ferry", error="invalid_token", error_description="token expired""#.to_owned()
            }
        };
        let mut response = (StatusCode::UNAUTHORIZED, format!("{self}\n")).into_response();
        let headers = response.headers_mut();
        if let Ok(value) = bearer.parse() {
            headers.append(header::WWW_AUTHENTICATE, value);
        }
        if basic {
            if let Ok(value) = r#"Basic realm="ferry""#.parse() {
                headers.append(header::WWW_AUTHENTICATE, value);
            }
        }
        response
    }
}

/// The configured verifiers.
pub(crate) struct Verifier {
    config: AuthConfig,
    hs256: Option<DecodingKey>,
    ed25519: Option<DecodingKey>,
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    exp: Option<u64>,
}

fn sha256(bytes: &[u8]) -> ring::digest::Digest {
    ring::digest::digest(&ring::digest::SHA256, bytes)
}

/// Compares secrets by their digests, so the time taken says nothing about the secret.
fn same_secret(a: &str, b: &str) -> bool {
    sha256(a.as_bytes()).as_ref() == sha256(b.as_bytes()).as_ref()
}

impl Verifier {
    pub(crate) fn new(config: &AuthConfig) -> Self {
        let hs256 = config
            .jwt_hs256_secret
            .as_deref()
            .map(DecodingKey::from_secret);
        let ed25519 = config.jwt_ed25519_public_key.map(|key| {
            DecodingKey::from_ed_components(&data_encoding::BASE64URL_NOPAD.encode(&key))
                .unwrap_or_else(|_| DecodingKey::from_secret(&[]))
        });
        Self {
            config: config.clone(),
            hs256,
            ed25519,
        }
    }

    /// Whether credentials are required.
    pub(crate) fn required(&self) -> bool {
        self.config.any()
    }

    /// Whether basic auth is accepted (static tokens are configured).
    pub(crate) fn basic(&self) -> bool {
        !self.config.tokens.is_empty()
    }

    /// Verifies the request with the configured verifiers; `Ok(None)` when none is
    /// configured (anonymous).
    pub(crate) fn verify(&self, request: &AuthRequest) -> Result<Option<Identity>, AuthError> {
        if !self.required() {
            return Ok(None);
        }
        if let Some((user, password)) = &request.basic {
            let known = self
                .config
                .tokens
                .iter()
                .any(|entry| entry.user == *user && same_secret(&entry.token, password));
            return if known {
                Ok(Some(Identity {
                    user: user.clone(),
                    expires: None,
                }))
            } else {
                Err(AuthError::Invalid(InvalidCredentials::UnknownUser))
            };
        }
        let token = request.bearer.as_deref().ok_or(AuthError::Missing)?;
        if let Some(entry) = self
            .config
            .tokens
            .iter()
            .find(|entry| same_secret(&entry.token, token))
        {
            return Ok(Some(Identity {
                user: entry.user.clone(),
                expires: None,
            }));
        }
        if token.split('.').count() == 3 && (self.hs256.is_some() || self.ed25519.is_some()) {
            return self.verify_jwt(token).map(Some);
        }
        Err(AuthError::Invalid(InvalidCredentials::UnknownToken))
    }

    fn verify_jwt(&self, token: &str) -> Result<Identity, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.into()))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::EdDSA => self.ed25519.as_ref(),
            _ => None,
        }
        .ok_or(AuthError::Invalid(InvalidCredentials::Algorithm(
            header.alg,
        )))?;
        let mut validation = Validation::new(header.alg);
        validation.set_required_spec_claims(&["sub"]);
        validation.leeway = 5;
        match &self.config.jwt_audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|error| match error
                .kind()
            {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(error.into()),
            })?;
        if data.claims.sub.is_empty() {
            return Err(AuthError::Invalid(InvalidCredentials::EmptySubject));
        }
        Ok(Identity {
            user: data.claims.sub,
            expires: data.claims.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

    use super::*;
    use crate::gateway::config::StaticToken;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn credentials_are_read() {
        let request = AuthRequest::new(headers(&[("authorization", "Bearer abc")]), HashMap::new());
        assert_eq!(request.bearer.as_deref(), Some("abc"));
        let request = AuthRequest::new(
            headers(&[("authorization", "Basic YWxpY2U6czNjcjN0")]),
            HashMap::new(),
        );
        assert_eq!(request.basic, Some(("alice".into(), "s3cr3t".into())));
        let query = [("token".to_owned(), "q".to_owned())].into_iter().collect();
        let request = AuthRequest::new(HeaderMap::new(), query);
        assert_eq!(request.bearer.as_deref(), Some("q"));
        let request = AuthRequest::new(headers(&[("authorization", "Basic ###")]), HashMap::new());
        assert!(!request.has_credentials());
    }

    #[test]
    fn static_tokens() {
        let verifier = Verifier::new(&AuthConfig {
            tokens: vec![StaticToken {
                user: "alice".into(),
                token: "s3cr3t".into(),
            }],
            ..AuthConfig::default()
        });
        assert_eq!(
            verifier
                .verify(&AuthRequest::token("s3cr3t".into()))
                .unwrap()
                .unwrap()
                .user,
            "alice"
        );
        assert!(matches!(
            verifier.verify(&AuthRequest::token("nope".into())),
            Err(AuthError::Invalid(_))
        ));
        assert_eq!(
            verifier.verify(&AuthRequest::default()),
            Err(AuthError::Missing)
        );
        let basic = AuthRequest {
            basic: Some(("alice".into(), "s3cr3t".into())),
            ..AuthRequest::default()
        };
        assert!(verifier.verify(&basic).is_ok());
        let wrong = AuthRequest {
            basic: Some(("bob".into(), "s3cr3t".into())),
            ..AuthRequest::default()
        };
        assert!(verifier.verify(&wrong).is_err());
    }

    #[test]
    fn anonymous_without_verifiers() {
        let verifier = Verifier::new(&AuthConfig::default());
        assert_eq!(verifier.verify(&AuthRequest::default()), Ok(None));
    }

    #[test]
    fn jwt_hs256() {
        let secret = b"0123456789abcdef0123456789abcdef".to_vec();
        let verifier = Verifier::new(&AuthConfig {
            jwt_hs256_secret: Some(secret.clone()),
            ..AuthConfig::default()
        });
        let sign = |claims: serde_json::Value| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(&secret),
            )
            .unwrap()
        };
        let now = crate::clock::unix_now();
        let good = sign(serde_json::json!({"sub": "carol", "exp": now + 60}));
        let identity = verifier.verify(&AuthRequest::token(good)).unwrap().unwrap();
        assert_eq!(identity.user, "carol");
        assert_eq!(identity.expires, Some(now + 60));
        let expired = sign(serde_json::json!({"sub": "carol", "exp": now - 600}));
        assert_eq!(
            verifier.verify(&AuthRequest::token(expired)),
            Err(AuthError::Expired)
        );
        let no_sub = sign(serde_json::json!({"exp": now + 60}));
        assert!(verifier.verify(&AuthRequest::token(no_sub)).is_err());
        let forged = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "mallory"}),
            &jsonwebtoken::EncodingKey::from_secret(b"other"),
        )
        .unwrap();
        assert!(verifier.verify(&AuthRequest::token(forged)).is_err());
    }

    #[test]
    fn unauthorized_has_www_authenticate() {
        let response = AuthError::Missing.response(true);
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let values: Vec<_> = response
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            values,
            [r#"Bearer realm="ferry""#, r#"Basic realm="ferry""#]
        );
    }
}
