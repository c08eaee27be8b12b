//! The gateway's configuration: typed, every field with its default and unit.
//!
//! Each part deserializes (serde) from its field names, as the `ferry` config file writes them
//! after the `gateway_` prefix: an absent key keeps its default; durations are strings with a
//! unit (`"10s"`, see [`ferry::duration`]). [`GatewayConfig`]'s own fields deserialize apart
//! from its `auth`, `permissions` and `limits`, because the config file writes all of them in
//! one flat list (`gateway_session_ttl`, `gateway_tokens`, `gateway_join`,
//! `gateway_max_connections`, …).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A static credential: a token (bearer or `?token=`), or a user name and password (basic
/// auth, the password being the token).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticToken {
    /// The user id the token authenticates as.
    pub user: String,
    /// The secret.
    pub token: String,
}

/// How browsers authenticate. With nothing configured (and no `authenticate` hook), every
/// connection is anonymous: a random user id per session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Static tokens. Default none.
    pub tokens: Vec<StaticToken>,
    /// The HS256 secret of JWTs (their `sub` is the user id); written as text. Default none.
    #[serde(deserialize_with = "text_bytes")]
    pub jwt_hs256_secret: Option<Vec<u8>>,
    /// The Ed25519 public key (32 bytes) of EdDSA JWTs; written in base64 or base64url.
    /// Default none.
    #[serde(deserialize_with = "ed25519_key")]
    pub jwt_ed25519_public_key: Option<[u8; 32]>,
    /// The audience JWTs must name (`aud`); unchecked when `None`. Default none.
    pub jwt_audience: Option<String>,
}

impl AuthConfig {
    /// Whether any verifier is configured (credentials are then required).
    pub fn any(&self) -> bool {
        !self.tokens.is_empty()
            || self.jwt_hs256_secret.is_some()
            || self.jwt_ed25519_public_key.is_some()
    }
}

/// What browsers may do besides sending to addresses they hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Permissions {
    /// Channels browsers may join: exact names, or prefixes ending in `*` (`"room.*"`), and
    /// `"user.{user}"`-style patterns where `{user}` stands for the session's user id.
    /// Default none (the `authorize` hook may still allow).
    pub join: Vec<String>,
    /// Channels browsers may publish to (same patterns); only members may publish. Default
    /// none.
    pub publish: Vec<String>,
    /// Whether browsers may send to `{user}` and `{session}` targets. Default false.
    pub direct: bool,
    /// Whether members of a channel are told when a session joins or leaves it (`join` and
    /// `leave` frames; in a cluster, sessions of every node). Default false.
    pub join_leave: bool,
}

/// Limits of the gateway. Every one is enforced; none is unlimited unless it says so.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Connected browsers at most; further upgrades are answered 503. Default 10,000.
    pub max_connections: usize,
    /// Sessions at most, connected or waiting to be resumed. Default 100,000.
    pub max_sessions: usize,
    /// A connection is closed (code 4001, to be resumed at once) after this long; `None`
    /// (written `"off"`) for no limit. Default none.
    #[serde(deserialize_with = "duration_or_off")]
    pub max_connection_age: Option<Duration>,
    /// A connection that sends nothing (not even a pong) for this long is closed (4000).
    /// Default 60 s.
    #[serde(with = "ferry::duration")]
    pub idle_timeout: Duration,
    /// The gateway sends each connection a heartbeat frame and a WebSocket ping this often
    /// (clients call a connection dead after a silence a little longer than this). Default 5 s.
    #[serde(with = "ferry::duration")]
    pub ping_interval: Duration,
    /// Frames a connection may send per `rate_window`; more closes it (4029). Default 200.
    pub rate_limit: u32,
    /// The window of `rate_limit`. Default 1 s.
    #[serde(with = "ferry::duration")]
    pub rate_window: Duration,
    /// Largest WebSocket message a browser may send, bytes (frame header included); a
    /// payload is also bounded by the node's `max_message_size`. Default 1 MiB.
    pub max_message_size: usize,
    /// Bytes queued for one connection at most. Default 1 MiB.
    pub max_queue_bytes: usize,
    /// A connection whose queue stays full this long, or one of whose writes takes this long,
    /// is a slow consumer and is closed (4008). A write is the frames queued when the writer
    /// wakes: up to 64 frames, and no more once 64 KiB are taken. Default 10 s.
    #[serde(with = "ferry::duration")]
    pub write_timeout: Duration,
    /// New connections per second at most (one second of burst); beyond, 503. Default 500.
    pub connection_rate: u32,
    /// Channels one session may be a member of. Default 64. (The config file's key is
    /// `gateway_max_channels`.)
    #[serde(alias = "max_channels")]
    pub max_channels_per_session: usize,
    /// Calls and sends of one connection in flight at once. Default 64.
    pub max_inflight: usize,
    /// Longest call a browser may ask for; also the default. Default 30 s.
    #[serde(with = "ferry::duration")]
    pub max_call_timeout: Duration,
    /// Answers a session's journal keeps for requests sent again (the oldest forgotten
    /// first). Default 1024.
    pub max_remembered_answers: usize,
    /// Bytes of answers a session's journal keeps at most. Default 256 KiB.
    pub max_remembered_answer_bytes: usize,
    /// Grants one session may revoke (its `revoke` requests); each revoked grant is kept, in
    /// memory and in the store, for as long as the session lives. Beyond, `revoke` is
    /// answered `forbidden`. Also bounded by the node's `max_revocations`. Default 64; 0
    /// forbids revoking.
    pub max_revocations: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_sessions: 100_000,
            max_connection_age: None,
            idle_timeout: Duration::from_secs(60),
            ping_interval: Duration::from_secs(5),
            rate_limit: 200,
            rate_window: Duration::from_secs(1),
            max_message_size: 1 << 20,
            max_queue_bytes: 1 << 20,
            write_timeout: Duration::from_secs(10),
            connection_rate: 500,
            max_channels_per_session: 64,
            max_inflight: 64,
            max_call_timeout: Duration::from_secs(30),
            max_remembered_answers: 1024,
            max_remembered_answer_bytes: 256 * 1024,
            max_revocations: 64,
        }
    }
}

/// The gateway's configuration. Its serde form holds its own fields only (see the module's
/// documentation): `auth`, `permissions` and `limits` deserialize each on their own, and
/// `drain` is the daemon's `shutdown_grace`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// How browsers authenticate.
    #[serde(skip)]
    pub auth: AuthConfig,
    /// What browsers may do.
    #[serde(skip)]
    pub permissions: Permissions,
    /// The limits.
    #[serde(skip)]
    pub limits: Limits,
    /// How long a disconnected session is kept (its address valid, its messages stored)
    /// for the browser to resume. Default 5 min.
    #[serde(with = "ferry::duration")]
    pub session_ttl: Duration,
    /// Origins allowed to connect (`Origin` header), e.g. `"https://app.example"`; `"*"` for
    /// any. Empty (the default): the gateway's own origin, and clients without `Origin`.
    pub origins: Vec<String>,
    /// The configuration object every client receives (GenBrowser's `client.config`), e.g.
    /// addresses of services. Default `{}`.
    pub client_config: serde_json::Value,
    /// A directory served at `/` (pages using `/ferry.js`); none by default.
    pub static_dir: Option<std::path::PathBuf>,
    /// At shutdown, how long connections get to close before sessions end. Default 2 s.
    #[serde(skip)]
    pub drain: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            auth: AuthConfig::default(),
            permissions: Permissions::default(),
            limits: Limits::default(),
            session_ttl: Duration::from_secs(300),
            origins: Vec::new(),
            client_config: serde_json::Value::Object(serde_json::Map::new()),
            static_dir: None,
            drain: Duration::from_secs(2),
        }
    }
}

/// `jwt_hs256_secret`: the secret's text, as bytes.
fn text_bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<u8>>, D::Error> {
    Ok(Some(String::deserialize(deserializer)?.into_bytes()))
}

/// `jwt_ed25519_public_key`: 32 bytes in base64url or base64, padded or not.
fn ed25519_key<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<[u8; 32]>, D::Error> {
    use serde::de::Error;
    let text = String::deserialize(deserializer)?;
    let text = text.trim_end_matches('=');
    let bytes = data_encoding::BASE64URL_NOPAD
        .decode(text.as_bytes())
        .or_else(|_| data_encoding::BASE64_NOPAD.decode(text.as_bytes()))
        .map_err(D::Error::custom)?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map(Some)
        .map_err(|_| D::Error::custom(format!("{} bytes, expected 32", bytes.len())))
}

/// `max_connection_age`: a duration, or `"off"` for none.
fn duration_or_off<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text == "off" {
        return Ok(None);
    }
    ferry::duration::parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// Why a configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayConfigError {
    /// A limit that must be at least 1 is 0.
    #[error("gateway limit `{0}` must be at least 1")]
    Zero(&'static str),
    /// `ping_interval` is not below `idle_timeout`, so a live browser could be closed as idle.
    #[error("gateway ping_interval must be below idle_timeout")]
    PingInterval,
    /// The client configuration is not a JSON object.
    #[error("gateway client_config must be a table (JSON object)")]
    ClientConfig,
}

impl GatewayConfig {
    /// Checks that the values work together.
    pub fn validate(&self) -> Result<(), GatewayConfigError> {
        let l = &self.limits;
        for (name, value) in [
            ("max_connections", l.max_connections as u64),
            ("max_sessions", l.max_sessions as u64),
            ("rate_limit", u64::from(l.rate_limit)),
            ("max_message_size", l.max_message_size as u64),
            ("max_queue_bytes", l.max_queue_bytes as u64),
            ("connection_rate", u64::from(l.connection_rate)),
            ("max_inflight", l.max_inflight as u64),
            ("max_remembered_answers", l.max_remembered_answers as u64),
            (
                "max_remembered_answer_bytes",
                l.max_remembered_answer_bytes as u64,
            ),
            ("rate_window", l.rate_window.as_millis() as u64),
            ("idle_timeout", l.idle_timeout.as_millis() as u64),
            ("ping_interval", l.ping_interval.as_millis() as u64),
            ("write_timeout", l.write_timeout.as_millis() as u64),
        ] {
            if value == 0 {
                return Err(GatewayConfigError::Zero(name));
            }
        }
        if l.ping_interval >= l.idle_timeout {
            return Err(GatewayConfigError::PingInterval);
        }
        if !self.client_config.is_object() {
            return Err(GatewayConfigError::ClientConfig);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(GatewayConfig::default().validate(), Ok(()));
        let mut config = GatewayConfig::default();
        config.limits.ping_interval = config.limits.idle_timeout;
        assert_eq!(config.validate(), Err(GatewayConfigError::PingInterval));
        config.limits.rate_limit = 0;
        assert_eq!(
            config.validate(),
            Err(GatewayConfigError::Zero("rate_limit"))
        );
    }
}
