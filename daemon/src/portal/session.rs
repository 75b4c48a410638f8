//! Sessions (pure: no I/O, the caller passes the time and the random token). A session token is only
//! good on the TLS connection it was issued on: each session holds that connection's exporter value
//! (RFC 8446 section 7.5) and a request is accepted only when its own connection exports the same value.
//! A token presented on another connection is treated as stolen: refused, and the session is ended.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64U;
use qsi_labels::Label;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::tls::BINDING_LEN;

/// A logged-in person on one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Public session id (for logs and audit; not a credential).
    pub id: String,
    /// Person key.
    pub person: String,
    /// Display name.
    pub name: String,
    /// The clearance read from the access store at login.
    pub clearance: Label,
    /// Certificate policies the card was validated under.
    pub policies: Vec<String>,
    /// Unix time the session ends.
    pub expires_at: i64,
    binding: [u8; BINDING_LEN],
}

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// No `Authorization: Bearer` header.
    #[error("no session token: log in first (POST /login)")]
    Missing,
    /// The token is not one the portal issued, or its session ended.
    #[error("unknown or ended session: log in again")]
    Unknown,
    /// The session expired.
    #[error("the session has expired: log in again")]
    Expired {
        /// Its id.
        session: String,
    },
    /// The token was presented on another TLS connection than the one it was issued on.
    #[error("this session token belongs to another connection; it has been ended. Log in again")]
    OtherConnection {
        /// Its id.
        session: String,
    },
}

impl TokenRefusal {
    /// The session id, when known.
    pub fn session(&self) -> Option<String> {
        match self {
            TokenRefusal::Expired { session } | TokenRefusal::OtherConnection { session } => {
                Some(session.clone())
            }
            _ => None,
        }
    }
}

/// A session token as handed to the client. Zeroized on drop, redacted in Debug.
pub struct Token(Zeroizing<String>);

impl Token {
    /// The bearer string.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token([redacted])")
    }
}

/// The sessions of a portal, keyed by the SHA-256 of their token.
#[derive(Debug, Default)]
pub struct Sessions {
    by_hash: HashMap<[u8; 32], Session>,
}

fn token_hash(token: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// What a new session needs.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// Person key.
    pub person: String,
    /// Display name.
    pub name: String,
    /// Clearance.
    pub clearance: Label,
    /// Validated policies.
    pub policies: Vec<String>,
}

impl Sessions {
    /// Opens a session bound to `binding`, lasting `ttl_secs`. `random` is 48 fresh random bytes: 32 for
    /// the token, 16 for the public id.
    pub fn create(
        &mut self,
        new: NewSession,
        binding: [u8; BINDING_LEN],
        now: i64,
        ttl_secs: i64,
        random: &[u8; 48],
    ) -> (Token, Session) {
        let token = Token(Zeroizing::new(B64U.encode(&random[..32])));
        let session = Session {
            id: hex::encode(&random[32..]),
            person: new.person,
            name: new.name,
            clearance: new.clearance,
            policies: new.policies,
            expires_at: now + ttl_secs,
            binding,
        };
        self.by_hash
            .insert(token_hash(token.expose()), session.clone());
        (token, session)
    }

    /// The session of `token` if it is live and bound to this connection's `binding`.
    pub fn check(
        &mut self,
        token: Option<&str>,
        binding: &[u8; BINDING_LEN],
        now: i64,
    ) -> Result<Session, TokenRefusal> {
        let token = token.ok_or(TokenRefusal::Missing)?;
        let h = token_hash(token);
        let s = self.by_hash.get(&h).ok_or(TokenRefusal::Unknown)?;
        if !bool::from(s.binding.ct_eq(binding)) {
            let session = s.id.clone();
            self.by_hash.remove(&h);
            return Err(TokenRefusal::OtherConnection { session });
        }
        if now >= s.expires_at {
            let session = s.id.clone();
            self.by_hash.remove(&h);
            return Err(TokenRefusal::Expired { session });
        }
        Ok(s.clone())
    }

    /// Ends the session of `token` (after the same checks as [`Sessions::check`]).
    pub fn logout(
        &mut self,
        token: Option<&str>,
        binding: &[u8; BINDING_LEN],
        now: i64,
    ) -> Result<Session, TokenRefusal> {
        let s = self.check(token, binding, now)?;
        if let Some(t) = token {
            self.by_hash.remove(&token_hash(t));
        }
        Ok(s)
    }

    /// Ends every session of a connection that closed; returns them.
    pub fn connection_closed(&mut self, binding: &[u8; BINDING_LEN]) -> Vec<Session> {
        let gone: Vec<[u8; 32]> = self
            .by_hash
            .iter()
            .filter(|(_, s)| bool::from(s.binding.ct_eq(binding)))
            .map(|(h, _)| *h)
            .collect();
        gone.iter().filter_map(|h| self.by_hash.remove(h)).collect()
    }

    /// Ends every session of `person` (their clearance changed); returns them.
    pub fn end_person(&mut self, person: &str) -> Vec<Session> {
        let gone: Vec<[u8; 32]> = self
            .by_hash
            .iter()
            .filter(|(_, s)| s.person == person)
            .map(|(h, _)| *h)
            .collect();
        gone.iter().filter_map(|h| self.by_hash.remove(h)).collect()
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// True when no session is live.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new() -> NewSession {
        NewSession {
            person: "uuid:1".into(),
            name: "A".into(),
            clearance: "S//X".parse().unwrap(),
            policies: vec![],
        }
    }

    #[test]
    fn a_token_works_only_on_its_connection_and_until_expiry() {
        let mut s = Sessions::default();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let (tok, sess) = s.create(new(), a, 1000, 60, &[7u8; 48]);
        assert_eq!(s.check(Some(tok.expose()), &a, 1001).unwrap().id, sess.id);
        assert_eq!(s.check(None, &a, 1001), Err(TokenRefusal::Missing));
        assert_eq!(s.check(Some("nope"), &a, 1001), Err(TokenRefusal::Unknown));
        // Expiry.
        let (tok2, _) = s.create(new(), a, 1000, 60, &[8u8; 48]);
        assert!(matches!(
            s.check(Some(tok2.expose()), &a, 1060),
            Err(TokenRefusal::Expired { .. })
        ));
        assert_eq!(
            s.check(Some(tok2.expose()), &a, 1001),
            Err(TokenRefusal::Unknown)
        );
        // Replay on another connection ends the session.
        assert!(matches!(
            s.check(Some(tok.expose()), &b, 1002),
            Err(TokenRefusal::OtherConnection { .. })
        ));
        assert_eq!(
            s.check(Some(tok.expose()), &a, 1002),
            Err(TokenRefusal::Unknown)
        );
        assert!(s.is_empty());
    }

    #[test]
    fn logout_and_connection_close_end_sessions() {
        let mut s = Sessions::default();
        let a = [1u8; 32];
        let (t1, _) = s.create(new(), a, 0, 60, &[1u8; 48]);
        s.logout(Some(t1.expose()), &a, 1).unwrap();
        assert_eq!(
            s.check(Some(t1.expose()), &a, 2),
            Err(TokenRefusal::Unknown)
        );
        let (_t2, _) = s.create(new(), a, 0, 60, &[2u8; 48]);
        let (_t3, _) = s.create(new(), [9u8; 32], 0, 60, &[3u8; 48]);
        assert_eq!(s.connection_closed(&a).len(), 1);
        assert_eq!(s.len(), 1);
        assert_eq!(format!("{t1:?}"), "Token([redacted])");
    }
}
