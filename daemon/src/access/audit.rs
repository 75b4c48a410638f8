//! The access audit log: every login, refusal, grant and revocation, hash-chained so that an edited,
//! reordered or deleted record (other than the tail) breaks the chain. Pure code: the store appends.

use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum AuditEvent {
    /// The first security officer was named.
    Bootstrap {
        /// The officer's person key.
        officer: String,
        /// Display name.
        name: String,
    },
    /// A clearance was granted or changed.
    Grant {
        /// Person key.
        person: String,
        /// The clearance, as a banner marking.
        clearance: String,
        /// Whether the person is now an officer.
        officer: bool,
        /// The signing officer's person key.
        by: String,
    },
    /// A clearance was revoked.
    Revoke {
        /// Person key.
        person: String,
        /// The signing officer's person key.
        by: String,
    },
    /// A clearance assignment was refused (forged, unsigned, not an officer, replayed ...).
    AssignmentRefused {
        /// Why, as shown to the submitter.
        reason: String,
        /// The signer's card identity, when it could be read.
        signer: Option<String>,
    },
    /// A card logged in.
    Login {
        /// Person key.
        person: String,
        /// The session's clearance.
        clearance: String,
        /// Session id (not the token).
        session: String,
        /// Peer address.
        peer: String,
    },
    /// A login was refused.
    LoginRefused {
        /// Why.
        reason: String,
        /// The card identity, when it could be read.
        card: Option<String>,
        /// Peer address.
        peer: String,
    },
    /// A session ended by logout.
    Logout {
        /// Person key.
        person: String,
        /// Session id.
        session: String,
    },
    /// A session token was refused (unknown, expired, logged out, or replayed on another connection).
    TokenRefused {
        /// Why.
        reason: String,
        /// Session id, when the token was known.
        session: Option<String>,
        /// Peer address.
        peer: String,
    },
    /// A card refused its PIN on the person's workstation (recorded locally by `qsi login`).
    CardUnlockFailed {
        /// Token label.
        token: String,
        /// The token's PIN flags after the attempt.
        flags: String,
    },
    /// A request for data or a service the session does not dominate (answered as not found).
    AccessDenied {
        /// Person key.
        person: String,
        /// What was asked for.
        resource: String,
        /// Its label.
        label: String,
        /// The session's clearance.
        clearance: String,
    },
}

/// One record of the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// When (Unix seconds).
    pub at: i64,
    /// What.
    #[serde(flatten)]
    pub event: AuditEvent,
    /// Hash of the previous record (hex; 64 zeros for the first).
    pub prev: String,
    /// SHA-256 over `prev`, `seq`, `at` and the event (hex).
    pub hash: String,
}

/// Hash of "no previous record".
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn digest(prev: &str, seq: u64, at: i64, event: &AuditEvent) -> String {
    let body = serde_json::to_string(event).unwrap_or_default();
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"QSI access audit v1\0");
    ctx.update(prev.as_bytes());
    ctx.update(&seq.to_be_bytes());
    ctx.update(&at.to_be_bytes());
    ctx.update(body.as_bytes());
    hex::encode(ctx.finish())
}

impl AuditRecord {
    /// The record that follows `prev` (or starts the chain).
    pub fn next(prev: Option<&AuditRecord>, at: i64, event: AuditEvent) -> AuditRecord {
        let (seq, prev) = match prev {
            Some(p) => (p.seq + 1, p.hash.clone()),
            None => (1, GENESIS.to_owned()),
        };
        let hash = digest(&prev, seq, at, &event);
        AuditRecord {
            seq,
            at,
            event,
            prev,
            hash,
        }
    }
}

/// Where a chain breaks.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A record's hash does not match its content (edited).
    #[error("audit record {seq} was altered: its hash does not match its content")]
    Altered {
        /// The record.
        seq: u64,
    },
    /// A record does not follow its predecessor (deleted, inserted or reordered).
    #[error(
        "audit record {seq} does not follow record {prev_seq}: records were removed or reordered"
    )]
    Broken {
        /// The record.
        seq: u64,
        /// The record before it.
        prev_seq: u64,
    },
}

/// Verifies a chain from its first record; returns the number of records.
pub fn verify_chain<'a>(
    records: impl IntoIterator<Item = &'a AuditRecord>,
) -> Result<u64, ChainError> {
    let mut prev: Option<&AuditRecord> = None;
    let mut n = 0;
    for r in records {
        let (want_seq, want_prev) = match prev {
            Some(p) => (p.seq + 1, p.hash.as_str()),
            None => (1, GENESIS),
        };
        if r.seq != want_seq || r.prev != want_prev {
            return Err(ChainError::Broken {
                seq: r.seq,
                prev_seq: want_seq.saturating_sub(1),
            });
        }
        if digest(&r.prev, r.seq, r.at, &r.event) != r.hash {
            return Err(ChainError::Altered { seq: r.seq });
        }
        prev = Some(r);
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<AuditRecord> {
        let mut v: Vec<AuditRecord> = Vec::new();
        for i in 0..n {
            let e = AuditEvent::Logout {
                person: format!("uuid:{i}"),
                session: "s".into(),
            };
            let r = AuditRecord::next(v.last(), 1000 + i as i64, e);
            v.push(r);
        }
        v
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify_chain(&chain(5)), Ok(5));
    }

    #[test]
    fn an_edited_record_is_detected() {
        let mut c = chain(5);
        c[2].event = AuditEvent::Logout {
            person: "uuid:someone-else".into(),
            session: "s".into(),
        };
        assert_eq!(verify_chain(&c), Err(ChainError::Altered { seq: 3 }));
    }

    #[test]
    fn a_deleted_record_is_detected() {
        let mut c = chain(5);
        c.remove(1);
        assert_eq!(
            verify_chain(&c),
            Err(ChainError::Broken {
                seq: 3,
                prev_seq: 1
            })
        );
    }
}
