//! The audit log: one record per key event, hash-chained, with checkpoints signed by an HSM key.
//!
//! Record n carries `hash_n = SHA-256("qsi-kms-audit-v1" || n || time || hash_{n-1} || event)`. A
//! checkpoint signs `(n, hash_n)`. Editing a record breaks its hash or the next record's link; deleting
//! one breaks the sequence; truncating the tail removes records a checkpoint names; re-hashing after an
//! edit breaks the checkpoint signatures, which only the HSM can make. Records after the last
//! checkpoint are reported as unsigned (the service signs a checkpoint periodically and when it stops).
//! This module is pure: the store feeds it records and a signer.

use aws_lc_rs::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};

use crate::kek::{CheckpointSigner, SealError};

/// Every event the KMS records. Key IDs appear; key bytes never do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum AuditEvent {
    /// The service opened the store (after recovery).
    Started {
        /// Batches written off by recovery.
        written_off_batches: u64,
    },
    /// A fetch is about to be sent to the KME (write-ahead).
    FetchRequested {
        /// Link name.
        link: String,
        /// Batch number.
        batch: u64,
        /// `enc_keys` (master) or `dec_keys` (slave).
        call: String,
        /// Keys asked for.
        number: u32,
        /// Key size in bits.
        size: u32,
        /// IDs asked for (dec_keys).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ids: Vec<String>,
    },
    /// The KME's answer was recorded.
    Fetched {
        /// Link name.
        link: String,
        /// Batch number.
        batch: u64,
        /// Key IDs stored.
        ids: Vec<String>,
    },
    /// The KME answered with an error: it delivered nothing.
    FetchFailed {
        /// Link name.
        link: String,
        /// Batch number.
        batch: u64,
        /// What went wrong.
        reason: String,
    },
    /// A fetch whose answer may have left the KME but was never recorded: its keys are never used.
    WrittenOff {
        /// Link name.
        link: String,
        /// Batch number.
        batch: u64,
        /// Keys that may have been delivered.
        number: u32,
        /// IDs, where known (dec_keys).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ids: Vec<String>,
        /// Why.
        reason: String,
    },
    /// Keys in a KME answer that were refused (duplicate ID, wrong size, undecodable).
    Refused {
        /// Link name.
        link: String,
        /// Batch number.
        batch: u64,
        /// The offending key ID.
        key_id: String,
        /// Why.
        reason: String,
    },
    /// Key IDs offered to the peer (master) or received from it (slave).
    Announced {
        /// Link name.
        link: String,
        /// Key IDs.
        ids: Vec<String>,
    },
    /// A key was handed to a consumer (and is gone from the store). Written by the first version;
    /// deliveries are now recorded as [`AuditEvent::DeliveredKeys`].
    Delivered {
        /// Link name.
        link: String,
        /// Key ID.
        key_id: String,
        /// Who took it (a tunnel, an SAE ID).
        consumer: String,
    },
    /// Keys handed to one consumer in one request (and gone from the store). One record per request,
    /// not per key: the chain costs a hash per delivery, whatever its size.
    DeliveredKeys {
        /// Link name.
        link: String,
        /// Key IDs, in the order the consumer received them.
        key_ids: Vec<String>,
        /// Who took them (a tunnel, an SAE ID).
        consumer: String,
    },
    /// A key a tunnel had claimed (recorded as delivered to it) keyed one handshake; recorded after
    /// the handshake, asynchronously, so no disk write sits inside it.
    UsedInHandshake {
        /// Link name.
        link: String,
        /// Key ID.
        key_id: String,
        /// The tunnel (peer) and the connection.
        by: String,
    },
    /// A batch's data key was destroyed: nothing of it can be decrypted any more.
    Erased {
        /// Link name.
        link: String,
        /// Batch number.
        batch: u64,
    },
    /// A managed key changed state.
    StateChanged {
        /// Managed key ID.
        key: String,
        /// Operation or cause.
        cause: String,
        /// New state.
        state: String,
    },
    /// A request was refused (unknown SAE, wrong link, used key ID).
    AccessRefused {
        /// Who asked.
        who: String,
        /// What.
        what: String,
    },
}

/// One stored record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Sequence number, from 1, without gaps.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Hash of the previous record (hex), zeros for the first.
    pub prev: String,
    /// The event, as the exact JSON that was hashed.
    pub event: String,
    /// This record's hash (hex).
    pub hash: String,
}

/// A signed checkpoint over a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Sequence number of the record signed.
    pub seq: u64,
    /// Its hash (hex).
    pub hash: String,
    /// Signature (hex) over [`checkpoint_message`].
    pub sig: String,
    /// Which signing key.
    pub signer: String,
}

/// What [`verify`] found wrong.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A record's stored hash does not match its content.
    #[error("record {0} was altered: its hash does not match its content")]
    Altered(u64),
    /// A record does not link to its predecessor.
    #[error("record {0} does not link to record {prev}: a record was altered or removed", prev = .0 - 1)]
    BrokenLink(u64),
    /// The sequence has a gap or starts elsewhere than 1.
    #[error("record {expected} is missing (next found: {found})")]
    Missing {
        /// Expected sequence number.
        expected: u64,
        /// Found instead.
        found: u64,
    },
    /// A checkpoint names a record that is no longer there.
    #[error("checkpoint at record {0} names a record that is gone: the log was truncated")]
    Truncated(u64),
    /// A checkpoint's hash differs from the record's.
    #[error("checkpoint at record {0} does not match the record: the log was rewritten")]
    CheckpointMismatch(u64),
    /// A checkpoint's signature does not verify.
    #[error("checkpoint at record {0} has an invalid signature")]
    BadSignature(u64),
    /// A stored record does not parse.
    #[error("record {0} is not valid JSON: {1}")]
    Malformed(u64, String),
    /// The signing key failed.
    #[error(transparent)]
    Signer(#[from] SealError),
}

/// Summary of a successful verification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// Last record covered by a valid checkpoint.
    pub signed_through: u64,
    /// Records after the last checkpoint (chained, not yet signed).
    pub unsigned_tail: u64,
}

/// Hash of the record before the first one.
pub const GENESIS: [u8; 32] = [0; 32];

/// The chain hash of one record.
pub fn chain_hash(seq: u64, time_ms: u64, prev: &[u8; 32], event: &str) -> [u8; 32] {
    let mut buf = Vec::with_capacity(64 + event.len());
    buf.extend_from_slice(b"qsi-kms-audit-v1");
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&time_ms.to_be_bytes());
    buf.extend_from_slice(prev);
    buf.extend_from_slice(event.as_bytes());
    let d = digest(&SHA256, &buf);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// What a checkpoint signs.
pub fn checkpoint_message(seq: u64, hash: &str) -> Vec<u8> {
    let mut m = b"qsi-kms-checkpoint-v1".to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash.as_bytes());
    m
}

/// Builds the next record after `(prev_seq, prev_hash)`.
pub fn next_record(
    prev_seq: u64,
    prev_hash: &[u8; 32],
    time_ms: u64,
    event: &AuditEvent,
) -> (AuditRecord, [u8; 32]) {
    // serde_json of our own enum cannot fail (no maps with non-string keys, no foreign Serialize).
    let event = serde_json::to_string(event).unwrap_or_else(|e| {
        format!(
            "{{\"event\":\"unserializable\",\"error\":{:?}}}",
            e.to_string()
        )
    });
    let seq = prev_seq + 1;
    let hash = chain_hash(seq, time_ms, prev_hash, &event);
    (
        AuditRecord {
            seq,
            time_ms,
            prev: hex::encode(prev_hash),
            event,
            hash: hex::encode(hash),
        },
        hash,
    )
}

/// Signs a checkpoint over `record`.
pub fn sign_checkpoint(
    seq: u64,
    hash: &str,
    signer: &dyn CheckpointSigner,
) -> Result<Checkpoint, SealError> {
    let sig = signer.sign(&checkpoint_message(seq, hash))?;
    Ok(Checkpoint {
        seq,
        hash: hash.to_string(),
        sig: hex::encode(sig),
        signer: signer.label(),
    })
}

/// Checks the chain and the checkpoints. `records` in sequence order, `checkpoints` in any order.
pub fn verify(
    records: &[AuditRecord],
    checkpoints: &[Checkpoint],
    signer: &dyn CheckpointSigner,
) -> Result<VerifyReport, AuditError> {
    let mut prev = GENESIS;
    for (i, r) in records.iter().enumerate() {
        let expected = i as u64 + 1;
        if r.seq != expected {
            return Err(AuditError::Missing {
                expected,
                found: r.seq,
            });
        }
        if r.prev != hex::encode(prev) {
            return Err(AuditError::BrokenLink(r.seq));
        }
        let h = chain_hash(r.seq, r.time_ms, &prev, &r.event);
        if hex::encode(h) != r.hash {
            return Err(AuditError::Altered(r.seq));
        }
        serde_json::from_str::<AuditEvent>(&r.event)
            .map_err(|e| AuditError::Malformed(r.seq, e.to_string()))?;
        prev = h;
    }
    let last = records.len() as u64;
    let mut signed_through = 0;
    for c in checkpoints {
        if c.seq == 0 || c.seq > last {
            return Err(AuditError::Truncated(c.seq));
        }
        let rec = &records[(c.seq - 1) as usize];
        if rec.hash != c.hash {
            return Err(AuditError::CheckpointMismatch(c.seq));
        }
        let sig = hex::decode(&c.sig).map_err(|_| AuditError::BadSignature(c.seq))?;
        if !signer.verify(&checkpoint_message(c.seq, &c.hash), &sig)? {
            return Err(AuditError::BadSignature(c.seq));
        }
        signed_through = signed_through.max(c.seq);
    }
    Ok(VerifyReport {
        records: last,
        checkpoints: checkpoints.len() as u64,
        signed_through,
        unsigned_tail: last - signed_through,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kek::{SoftSigner, random_key};

    fn log(n: u64, signer: &SoftSigner) -> (Vec<AuditRecord>, Vec<Checkpoint>) {
        let mut recs = Vec::new();
        let mut cps = Vec::new();
        let mut prev = GENESIS;
        for i in 0..n {
            let ev = AuditEvent::Delivered {
                link: "ab".into(),
                key_id: format!("k{i}"),
                consumer: "t".into(),
            };
            let (r, h) = next_record(i, &prev, 1000 + i, &ev);
            prev = h;
            if (i + 1) % 4 == 0 {
                cps.push(sign_checkpoint(r.seq, &r.hash, signer).unwrap());
            }
            recs.push(r);
        }
        (recs, cps)
    }

    #[test]
    fn intact_log_verifies() {
        let s = SoftSigner::new(&random_key(32).unwrap(), "s");
        let (r, c) = log(10, &s);
        let rep = verify(&r, &c, &s).unwrap();
        assert_eq!(rep.records, 10);
        assert_eq!(rep.signed_through, 8);
        assert_eq!(rep.unsigned_tail, 2);
    }

    #[test]
    fn edit_delete_truncate_and_rehash_are_detected() {
        let s = SoftSigner::new(&random_key(32).unwrap(), "s");
        let (r, c) = log(10, &s);

        let mut edited = r.clone();
        edited[3].event = edited[3].event.replace("k3", "k9");
        assert!(matches!(
            verify(&edited, &c, &s),
            Err(AuditError::Altered(4))
        ));

        let mut deleted = r.clone();
        deleted.remove(5);
        assert!(matches!(
            verify(&deleted, &c, &s),
            Err(AuditError::Missing { expected: 6, .. })
        ));

        let truncated = r[..6].to_vec();
        assert!(matches!(
            verify(&truncated, &c, &s),
            Err(AuditError::Truncated(8))
        ));

        // an attacker rewrites record 3 and recomputes every hash after it: the signatures catch it
        let mut rehashed = r[..2].to_vec();
        let mut prev = <[u8; 32]>::try_from(hex::decode(&r[1].hash).unwrap()).unwrap();
        for old in &r[2..] {
            let mut ev = old.event.clone();
            if old.seq == 3 {
                ev = ev.replace("k2", "kX");
            }
            let h = chain_hash(old.seq, old.time_ms, &prev, &ev);
            rehashed.push(AuditRecord {
                seq: old.seq,
                time_ms: old.time_ms,
                prev: hex::encode(prev),
                event: ev,
                hash: hex::encode(h),
            });
            prev = h;
        }
        assert!(matches!(
            verify(&rehashed, &c, &s),
            Err(AuditError::CheckpointMismatch(4))
        ));

        // ... and re-signing needs the HSM key
        let other = SoftSigner::new(&random_key(32).unwrap(), "s");
        let forged: Vec<_> = c
            .iter()
            .map(|cp| {
                sign_checkpoint(cp.seq, &rehashed[(cp.seq - 1) as usize].hash, &other).unwrap()
            })
            .collect();
        assert!(matches!(
            verify(&rehashed, &forged, &s),
            Err(AuditError::BadSignature(4))
        ));
    }
}
