//! Resume tokens: what a browser presents to get its session back on a new connection. The
//! token proves the session (an HMAC under a key the gateway keeps in its store, so tokens
//! stay valid across restarts); the cursor travels beside it, unsigned, and only chooses
//! where to restart.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use ferry::MailboxId;

/// Resume tokens: `mailbox id (8) | session id (16) | HMAC-SHA256 (first 16 bytes)`,
/// base64url. The cursor travels beside it, unsigned (GenBrowser's proposal): the token
/// proves the session, the cursor only chooses where to restart.
pub(crate) struct ResumeKeys {
    key: ring::hmac::Key,
}

impl ResumeKeys {
    /// Keys made from `secret` (the gateway keeps a random one in its store, so that tokens
    /// stay valid across restarts).
    pub(crate) fn new(secret: &[u8]) -> Self {
        Self {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        }
    }

    fn tag(&self, mailbox: MailboxId, session: &[u8]) -> [u8; 16] {
        let mut context = ring::hmac::Context::with_key(&self.key);
        context.update(b"ferry/gateway-resume/v1");
        context.update(&mailbox.0.to_be_bytes());
        context.update(session);
        let mut tag = [0u8; 16];
        // The first 16 bytes of the 32-byte HMAC-SHA256.
        for (out, byte) in tag.iter_mut().zip(context.sign().as_ref()) {
            *out = *byte;
        }
        tag
    }

    pub(crate) fn token(&self, mailbox: MailboxId, session_id: &str) -> String {
        let session = data_encoding::BASE64URL_NOPAD
            .decode(session_id.as_bytes())
            .unwrap_or_default();
        let mut bytes = Vec::with_capacity(40);
        bytes.extend_from_slice(&mailbox.0.to_be_bytes());
        bytes.extend_from_slice(&session);
        bytes.extend_from_slice(&self.tag(mailbox, &session));
        data_encoding::BASE64URL_NOPAD.encode(&bytes)
    }

    /// The session id a token names, unverified (another node of the cluster, which made
    /// it, verifies it).
    pub(crate) fn session_of(token: &str) -> Option<String> {
        let bytes = data_encoding::BASE64URL_NOPAD
            .decode(token.as_bytes())
            .ok()?;
        let session = bytes.get(8..24).filter(|_| bytes.len() == 40)?;
        Some(data_encoding::BASE64URL_NOPAD.encode(session))
    }

    /// The (mailbox, session id) of a genuine token.
    pub(crate) fn verify(&self, token: &str) -> Option<(MailboxId, String)> {
        let bytes = data_encoding::BASE64URL_NOPAD
            .decode(token.as_bytes())
            .ok()?;
        if bytes.len() != 40 {
            return None;
        }
        let (mailbox, rest) = bytes.split_at(8);
        let (session, tag) = rest.split_at(16);
        let mailbox = MailboxId(u64::from_be_bytes(mailbox.try_into().ok()?));
        let expected = self.tag(mailbox, session);
        // Constant time: the comparison must not tell how much of a guessed tag was right.
        let mut difference = 0u8;
        for (a, b) in expected.iter().zip(tag) {
            difference |= a ^ b;
        }
        (difference == 0).then(|| (mailbox, data_encoding::BASE64URL_NOPAD.encode(session)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

    use super::*;
    use crate::gateway::session::new_session_id;
    use crate::random::random;

    #[test]
    fn resume_tokens() {
        let keys = ResumeKeys::new(&random::<32>());
        let id = new_session_id();
        let token = keys.token(MailboxId(42), &id);
        assert_eq!(keys.verify(&token), Some((MailboxId(42), id.clone())));
        let mut forged = token.into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(keys.verify(&String::from_utf8(forged).unwrap()), None);
        assert_eq!(keys.verify("short"), None);
        assert_eq!(
            ResumeKeys::new(&random::<32>()).verify(&keys.token(MailboxId(1), &id)),
            None
        );
    }
}
