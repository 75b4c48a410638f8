//! The access store (redb): persons keyed by card identity, their clearances as signed assignments, the
//! officers and their pinned card keys, and the hash-chained audit log. One file, owned by the process
//! that serves the portal; `qsi access` opens it directly while that process is stopped.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use der::Decode;
use qsi_labels::Label;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use x509_cert::Certificate;

use super::audit::{AuditEvent, AuditRecord, ChainError, verify_chain};
use super::card::{CardError, CardIdentity};
use super::record::{Action, RecordError, SignedAssignment, Verified, spki_sha256};

/// person key -> [`PersonRecord`] (JSON).
const PERSONS: TableDefinition<&str, &[u8]> = TableDefinition::new("persons");
/// card key (`uuid:..`, `fascn:..`) -> person key.
const CARDS: TableDefinition<&str, &str> = TableDefinition::new("cards");
/// (person key, seq) -> the [`SignedAssignment`] (JSON) that made that record.
const ASSIGNMENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("assignments");
/// seq -> [`AuditRecord`] (JSON).
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// Assignments dated further than this in the future are refused (clock skew allowance).
pub const MAX_FUTURE_SKEW_SECS: i64 = 300;

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The database could not be read or written.
    #[error("access store: {0}")]
    Storage(String),
    /// The assignment's signature or content is bad (forged, altered, unsigned).
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A certificate has no card identity.
    #[error(transparent)]
    Card(#[from] CardError),
    /// The signer is not a current security officer.
    #[error(
        "the signer ({signer}) is not a current security officer: only an officer's card may sign assignments"
    )]
    NotOfficer {
        /// The signer's card identity.
        signer: String,
    },
    /// The signer claims an officer's card identity but with another key.
    #[error(
        "the signer's card key is not the key registered for officer {signer}: refused as forged"
    )]
    OfficerKeyMismatch {
        /// The claimed identity.
        signer: String,
    },
    /// The signer's certificate is outside its validity period.
    #[error("the signer's card certificate is not valid now (expired or not yet valid)")]
    SignerCertNotValidNow,
    /// The assignment's sequence number is not the next one for the person (replayed or out of order).
    #[error(
        "assignment number {got} for {person} is not the next one (expected {expected}): replayed or out of order; run `qsi access show` and sign again"
    )]
    OutOfSequence {
        /// The person key.
        person: String,
        /// The number the store expects.
        expected: u64,
        /// The number in the assignment.
        got: u64,
    },
    /// The assignment is dated in the future.
    #[error("the assignment is dated in the future; check the officer workstation's clock")]
    FutureDated,
    /// An officer tried to change their own clearance.
    #[error("an officer may not change their own clearance; another officer must sign it")]
    SelfAssignment,
    /// The change would leave no officer.
    #[error("this would remove the last security officer; name another officer first")]
    LastOfficer,
    /// An officer grant without the new officer's certificate.
    #[error(
        "an officer grant must carry the new officer's card certificate (--person-cert), so their card key is pinned"
    )]
    OfficerCertMissing,
    /// The carried certificate is not the subject's card.
    #[error("the certificate in the assignment is not the card of the person it names")]
    SubjectCertMismatch,
    /// No officer exists yet.
    #[error("no security officer has been named yet: run `qsi access bootstrap` first (see docs)")]
    NotBootstrapped,
    /// Bootstrap on a store that already has officers or persons.
    #[error("the access store is already bootstrapped; the first officer can be named only once")]
    AlreadyBootstrapped,
    /// The bootstrap record is not a self-signed officer grant.
    #[error(
        "the bootstrap record must be an officer grant, number 1, signed by the named officer's own card"
    )]
    BadBootstrap,
    /// The audit chain is broken.
    #[error(transparent)]
    Chain(#[from] ChainError),
}

fn st<E: Into<redb::Error>>(e: E) -> AccessError {
    AccessError::Storage(e.into().to_string())
}

/// What the store knows about a person.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonRecord {
    /// The primary key: `uuid:<uuid>` if the card has one, else `fascn:<hex>`.
    pub key: String,
    /// Display name.
    pub name: String,
    /// The card identifiers.
    pub uuid: Option<uuid::Uuid>,
    /// FASC-N hex.
    pub fascn: Option<String>,
    /// Current clearance; `None` after a revocation.
    pub clearance: Option<Label>,
    /// SHA-256 of the officer's card SPKI when the person is a security officer.
    pub officer_key: Option<String>,
    /// Number of the last assignment applied.
    pub seq: u64,
    /// When it was signed.
    pub updated_at: i64,
    /// Who signed it (person key).
    pub updated_by: String,
}

/// The access store.
#[derive(Debug)]
pub struct AccessStore {
    db: std::sync::Arc<redb::Database>,
    /// Sender to the group-commit writer of stand-alone audit records (started on first use).
    audit_tx: std::sync::Mutex<Option<std::sync::mpsc::Sender<PendingAudit>>>,
    audit_thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for AccessStore {
    /// Stops the audit writer and waits for it, so the database file is closed when the store is gone.
    fn drop(&mut self) {
        let sender = self.audit_tx.get_mut().map(Option::take);
        drop(sender);
        if let Ok(slot) = self.audit_thread.get_mut() {
            if let Some(h) = slot.take() {
                let _ = h.join();
            }
        }
    }
}

/// An audit record waiting for the group commit, with where to send its outcome.
type PendingAudit = (
    i64,
    AuditEvent,
    std::sync::mpsc::SyncSender<Result<AuditRecord, String>>,
);

/// Appends every pending record in one write transaction (one fsync for the batch), then answers each
/// caller. Ends when the store is dropped.
fn group_commit(db: &redb::Database, rx: &std::sync::mpsc::Receiver<PendingAudit>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let result = (|| -> Result<Vec<AuditRecord>, AccessError> {
            let tx = db.begin_write().map_err(st)?;
            let mut out = Vec::with_capacity(batch.len());
            for (now, event, _) in &batch {
                out.push(append_audit(&tx, *now, event.clone())?);
            }
            tx.commit().map_err(st)?;
            Ok(out)
        })();
        match result {
            Ok(records) => {
                for ((_, _, reply), r) in batch.into_iter().zip(records) {
                    let _ = reply.send(Ok(r));
                }
            }
            Err(e) => {
                for (_, _, reply) in batch {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
    }
}

impl AccessStore {
    /// Opens or creates the store.
    pub fn open(path: &Path) -> Result<Self, AccessError> {
        let db = redb::Database::create(path).map_err(|e| {
            AccessError::Storage(format!(
                "cannot open {}: {e} (is the portal running? stop it, or use its admin interface)",
                path.display()
            ))
        })?;
        let tx = db.begin_write().map_err(db_err)?;
        {
            tx.open_table(PERSONS).map_err(st)?;
            tx.open_table(CARDS).map_err(st)?;
            tx.open_table(ASSIGNMENTS).map_err(st)?;
            tx.open_table(AUDIT).map_err(st)?;
        }
        tx.commit().map_err(st)?;
        Ok(AccessStore {
            db: std::sync::Arc::new(db),
            audit_tx: std::sync::Mutex::new(None),
            audit_thread: std::sync::Mutex::new(None),
        })
    }

    /// Finds the person a card belongs to.
    pub fn person_for(&self, card: &CardIdentity) -> Result<Option<PersonRecord>, AccessError> {
        let tx = self.db.begin_read().map_err(st)?;
        let cards = tx.open_table(CARDS).map_err(st)?;
        let persons = tx.open_table(PERSONS).map_err(st)?;
        for k in card.keys() {
            if let Some(pk) = cards.get(k.as_str()).map_err(st)? {
                if let Some(p) = persons.get(pk.value()).map_err(st)? {
                    return decode(p.value()).map(Some);
                }
            }
        }
        Ok(None)
    }

    /// Every person, sorted by key.
    pub fn persons(&self) -> Result<Vec<PersonRecord>, AccessError> {
        let tx = self.db.begin_read().map_err(st)?;
        let persons = tx.open_table(PERSONS).map_err(st)?;
        let mut out = Vec::new();
        for row in persons.iter().map_err(st)? {
            let (_, v) = row.map_err(st)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// The signed assignments that made a person's records, oldest first (the evidence behind a clearance).
    pub fn history(&self, person: &str) -> Result<Vec<SignedAssignment>, AccessError> {
        let tx = self.db.begin_read().map_err(st)?;
        let t = tx.open_table(ASSIGNMENTS).map_err(st)?;
        let mut out = Vec::new();
        for row in t.range((person, 0)..=(person, u64::MAX)).map_err(st)? {
            let (_, v) = row.map_err(st)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// Names the first security officer. Accepted only on an empty store, and only for an officer grant
    /// numbered 1 that the named person signed with their own card (the certificate in the record is the
    /// signer's). Whoever can write the store file before the portal first starts is trusted to run this:
    /// that is the installation step; there is no default account.
    pub fn bootstrap(
        &self,
        signed: &SignedAssignment,
        now: i64,
    ) -> Result<PersonRecord, AccessError> {
        let v = signed.verify_signature()?;
        let signer_id = CardIdentity::from_cert(&v.signer)?;
        let a = &v.assignment;
        let is_officer_grant = matches!(a.action, Action::Grant { officer: true, .. });
        let cert_is_signer = a.subject_cert.as_deref() == Some(signed.signer_cert.as_str());
        if !is_officer_grant || a.seq != 1 || a.subject.identity() != signer_id || !cert_is_signer {
            return Err(AccessError::BadBootstrap);
        }
        check_time(&v, now)?;
        let tx = self.db.begin_write().map_err(st)?;
        {
            let persons = tx.open_table(PERSONS).map_err(st)?;
            if persons.iter().map_err(st)?.next().is_some() {
                return Err(AccessError::AlreadyBootstrapped);
            }
        }
        let rec = self.write_assignment(&tx, &v, signed, "bootstrap".into())?;
        append_audit(
            &tx,
            now,
            AuditEvent::Bootstrap {
                officer: rec.key.clone(),
                name: rec.name.clone(),
            },
        )?;
        tx.commit().map_err(st)?;
        Ok(rec)
    }

    /// Verifies and applies an assignment signed by a current officer. Every refusal is audited before it
    /// is returned.
    pub fn apply(&self, signed: &SignedAssignment, now: i64) -> Result<PersonRecord, AccessError> {
        match self.try_apply(signed, now) {
            Ok(r) => Ok(r),
            Err(e) => {
                let signer = B64
                    .decode(&signed.signer_cert)
                    .ok()
                    .and_then(|d| CardIdentity::from_cert_der(&d).ok())
                    .map(|c| c.to_string());
                self.audit(
                    now,
                    AuditEvent::AssignmentRefused {
                        reason: e.to_string(),
                        signer,
                    },
                )?;
                Err(e)
            }
        }
    }

    fn try_apply(&self, signed: &SignedAssignment, now: i64) -> Result<PersonRecord, AccessError> {
        let v = signed.verify_signature()?;
        check_time(&v, now)?;
        let signer_id = CardIdentity::from_cert(&v.signer)?;
        let officer = self
            .person_for(&signer_id)?
            .filter(|p| p.officer_key.is_some() && p.clearance.is_some());
        let Some(officer) = officer else {
            if self.persons()?.is_empty() {
                return Err(AccessError::NotBootstrapped);
            }
            return Err(AccessError::NotOfficer {
                signer: signer_id.to_string(),
            });
        };
        if officer.officer_key.as_deref() != Some(v.signer_spki_sha256.as_str()) {
            return Err(AccessError::OfficerKeyMismatch {
                signer: signer_id.to_string(),
            });
        }
        let subject = v.assignment.subject.identity();
        let current = self.person_for(&subject)?;
        if current.as_ref().is_some_and(|p| p.key == officer.key) {
            return Err(AccessError::SelfAssignment);
        }
        let expected = current.as_ref().map_or(1, |p| p.seq + 1);
        if v.assignment.seq != expected {
            return Err(AccessError::OutOfSequence {
                person: person_key(&subject),
                expected,
                got: v.assignment.seq,
            });
        }
        let removes_officer = current.as_ref().is_some_and(|p| p.officer_key.is_some())
            && !matches!(v.assignment.action, Action::Grant { officer: true, .. });
        if removes_officer {
            let officers = self
                .persons()?
                .into_iter()
                .filter(|p| p.officer_key.is_some())
                .count();
            if officers <= 1 {
                return Err(AccessError::LastOfficer);
            }
        }
        let tx = self.db.begin_write().map_err(st)?;
        let rec = self.write_assignment(&tx, &v, signed, officer.key.clone())?;
        let event = match &v.assignment.action {
            Action::Grant {
                clearance,
                officer: o,
            } => AuditEvent::Grant {
                person: rec.key.clone(),
                clearance: clearance.to_string(),
                officer: *o,
                by: officer.key.clone(),
            },
            Action::Revoke => AuditEvent::Revoke {
                person: rec.key.clone(),
                by: officer.key.clone(),
            },
        };
        append_audit(&tx, now, event)?;
        tx.commit().map_err(st)?;
        Ok(rec)
    }

    /// Writes the person's new record, card index and the assignment itself.
    fn write_assignment(
        &self,
        tx: &redb::WriteTransaction,
        v: &Verified,
        signed: &SignedAssignment,
        by: String,
    ) -> Result<PersonRecord, AccessError> {
        let a = &v.assignment;
        let id = a.subject.identity();
        let key = person_key(&id);
        let (clearance, officer_key) = match &a.action {
            Action::Grant { clearance, officer } => {
                let pin = if *officer {
                    let der = a
                        .subject_cert
                        .as_deref()
                        .ok_or(AccessError::OfficerCertMissing)
                        .and_then(|c| {
                            B64.decode(c).map_err(|_| {
                                RecordError::Base64 {
                                    field: "subject_cert",
                                }
                                .into()
                            })
                        })?;
                    let cert = Certificate::from_der(&der)
                        .map_err(|e| RecordError::Certificate(e.to_string()))?;
                    let cert_id = CardIdentity::from_cert(&cert)?;
                    if !same_card(&cert_id, &id) {
                        return Err(AccessError::SubjectCertMismatch);
                    }
                    Some(spki_sha256(&cert)?)
                } else {
                    None
                };
                (Some(clearance.clone()), pin)
            }
            Action::Revoke => (None, None),
        };
        let rec = PersonRecord {
            key: key.clone(),
            name: a.subject.name.clone(),
            uuid: id.uuid,
            fascn: id.fascn.clone(),
            clearance,
            officer_key,
            seq: a.seq,
            updated_at: a.issued_at,
            updated_by: by,
        };
        let mut persons = tx.open_table(PERSONS).map_err(st)?;
        persons
            .insert(key.as_str(), encode(&rec)?.as_slice())
            .map_err(st)?;
        let mut cards = tx.open_table(CARDS).map_err(st)?;
        for k in id.keys() {
            cards.insert(k.as_str(), key.as_str()).map_err(st)?;
        }
        let mut hist = tx.open_table(ASSIGNMENTS).map_err(st)?;
        hist.insert((key.as_str(), a.seq), encode(signed)?.as_slice())
            .map_err(st)?;
        Ok(rec)
    }

    /// Appends an audit record.
    ///
    /// Concurrent callers are group-committed: records that arrive while a commit is running go into the
    /// next transaction together, so many logins share one fsync. Each call returns only after its record
    /// is durable.
    pub fn audit(&self, now: i64, event: AuditEvent) -> Result<AuditRecord, AccessError> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        {
            let mut guard = self
                .audit_tx
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let sender = guard.get_or_insert_with(|| {
                let (tx, rx) = std::sync::mpsc::channel::<PendingAudit>();
                let db = self.db.clone();
                let handle = std::thread::spawn(move || group_commit(&db, &rx));
                if let Ok(mut slot) = self.audit_thread.lock() {
                    *slot = Some(handle);
                }
                tx
            });
            sender
                .send((now, event, reply))
                .map_err(|_| AccessError::Storage("the audit writer stopped".into()))?;
        }
        answer
            .recv()
            .map_err(|_| AccessError::Storage("the audit writer stopped".into()))?
            .map_err(AccessError::Storage)
    }

    /// The whole audit log, oldest first.
    pub fn audit_log(&self) -> Result<Vec<AuditRecord>, AccessError> {
        let tx = self.db.begin_read().map_err(st)?;
        let t = tx.open_table(AUDIT).map_err(st)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(st)? {
            let (_, v) = row.map_err(st)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// Verifies the audit chain; returns its length.
    pub fn verify_audit(&self) -> Result<u64, AccessError> {
        Ok(verify_chain(&self.audit_log()?)?)
    }
}

fn db_err(e: redb::TransactionError) -> AccessError {
    st(e)
}

fn append_audit(
    tx: &redb::WriteTransaction,
    now: i64,
    event: AuditEvent,
) -> Result<AuditRecord, AccessError> {
    let mut t = tx.open_table(AUDIT).map_err(st)?;
    let last: Option<AuditRecord> = match t.last().map_err(st)? {
        Some((_, v)) => Some(decode(v.value())?),
        None => None,
    };
    let r = AuditRecord::next(last.as_ref(), now, event);
    tracing::info!(seq = r.seq, event = ?r.event, "access audit");
    t.insert(r.seq, encode(&r)?.as_slice()).map_err(st)?;
    Ok(r)
}

fn check_time(v: &Verified, now: i64) -> Result<(), AccessError> {
    if v.assignment.issued_at > now + MAX_FUTURE_SKEW_SECS {
        return Err(AccessError::FutureDated);
    }
    let validity = v.signer.tbs_certificate().validity();
    let nb = validity.not_before.to_unix_duration().as_secs() as i64;
    let na = validity.not_after.to_unix_duration().as_secs() as i64;
    if now < nb || now > na {
        return Err(AccessError::SignerCertNotValidNow);
    }
    Ok(())
}

/// The primary key of a person: their card UUID if any, else their FASC-N.
pub fn person_key(id: &CardIdentity) -> String {
    id.keys().into_iter().next().unwrap_or_default()
}

/// True when two identities name the same card (every identifier both carry agrees, at least one shared).
fn same_card(a: &CardIdentity, b: &CardIdentity) -> bool {
    let uuid_ok = match (a.uuid, b.uuid) {
        (Some(x), Some(y)) => Some(x == y),
        _ => None,
    };
    let fascn_ok = match (&a.fascn, &b.fascn) {
        (Some(x), Some(y)) => Some(x == y),
        _ => None,
    };
    uuid_ok != Some(false) && fascn_ok != Some(false) && (uuid_ok.is_some() || fascn_ok.is_some())
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, AccessError> {
    serde_json::to_vec(v).map_err(|e| AccessError::Storage(e.to_string()))
}

fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, AccessError> {
    serde_json::from_slice(b).map_err(|e| AccessError::Storage(format!("corrupt record: {e}")))
}
