//! The CA database (redb): issued certificates, serial numbers, revocations, CRL numbers and a
//! hash-chained audit trail of every operation.
//!
//! - Serials are 128-bit random positive integers (>= 64 bits of entropy as CA/B and FPKI ask). A
//!   serial is **reserved** in its own committed transaction before anything is signed, so a crash
//!   between signing and recording can never hand the same serial out twice.
//! - Issuance is idempotent: each request has a digest (profile, subject, key, names, parameters);
//!   submitting the same request again returns the certificate already issued for it.
//! - Every write appends an audit record `{seq, time, op, detail, prev, hash}` with
//!   `hash = SHA-256(prev || canonical JSON of the record without hash)`, so an altered or removed
//!   record breaks the chain ([`CaDb::verify_audit`]).

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

const CERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("certs");
const SERIALS: TableDefinition<&str, &str> = TableDefinition::new("serials");
const REQUESTS: TableDefinition<&str, &str> = TableDefinition::new("requests");
const REVOKED: TableDefinition<&str, &[u8]> = TableDefinition::new("revoked");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Why a database operation failed. A failed operation writes nothing.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// redb failed (I/O, or another process has the file open: stop `qsi ca serve` or use its
    /// admin socket).
    #[error("CA database: {0}")]
    Redb(String),
    /// A stored record does not decode.
    #[error("CA database record {0} is corrupt")]
    Corrupt(String),
    /// No certificate with this serial was issued by this CA.
    #[error("no certificate with serial {0} was issued by this CA")]
    UnknownSerial(String),
    /// The random generator failed.
    #[error("random generator failed")]
    Rng,
    /// The audit chain does not verify at this sequence number.
    #[error("audit chain broken at record {0}")]
    AuditBroken(u64),
}

fn db_err(e: impl std::fmt::Display) -> DbError {
    DbError::Redb(e.to_string())
}

/// One issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// Serial number, lowercase hex of the DER INTEGER content.
    pub serial: String,
    /// Profile name.
    pub profile: String,
    /// Subject DN (RFC 4514).
    pub subject: String,
    /// notAfter, seconds since the epoch.
    pub not_after: u64,
    /// When it was issued, seconds since the epoch.
    pub issued_at: u64,
    /// The certificate, hex DER.
    pub der_hex: String,
}

impl CertRecord {
    /// The certificate DER.
    pub fn der(&self) -> Result<Vec<u8>, DbError> {
        hex::decode(&self.der_hex).map_err(|_| DbError::Corrupt(self.serial.clone()))
    }
}

/// A revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Seconds since the epoch.
    pub time: u64,
    /// RFC 5280 CRLReason code.
    pub reason: u32,
}

/// What the CA knows about a serial (for OCSP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Issued and not revoked.
    Good,
    /// Revoked.
    Revoked(Revocation),
    /// Never issued by this CA.
    Unknown,
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Sequence number from 1.
    pub seq: u64,
    /// Seconds since the epoch.
    pub time: u64,
    /// Operation (`init`, `reserve-serial`, `issue`, `revoke`, `crl`, ...).
    pub op: String,
    /// Details (serial, profile, subject, reason; never key material).
    pub detail: String,
    /// Hash of the previous record (hex), empty for the first.
    pub prev: String,
    /// Hash of this record (hex).
    pub hash: String,
}

fn audit_hash(prev: &str, seq: u64, time: u64, op: &str, detail: &str) -> String {
    let body =
        serde_json::json!({"seq": seq, "time": time, "op": op, "detail": detail, "prev": prev});
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(prev.as_bytes());
    ctx.update(body.to_string().as_bytes());
    hex::encode(ctx.finish().as_ref())
}

/// Seconds since the epoch (0 before it).
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The CA database.
pub struct CaDb {
    db: Database,
}

impl core::fmt::Debug for CaDb {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("CaDb")
    }
}

fn append_audit(
    audit: &mut redb::Table<'_, u64, &'static [u8]>,
    now: u64,
    op: &str,
    detail: &str,
) -> Result<(), DbError> {
    let (seq, prev) = match audit.last().map_err(db_err)? {
        Some((k, v)) => {
            let rec: AuditRecord = serde_json::from_slice(v.value())
                .map_err(|_| DbError::Corrupt(format!("audit {}", k.value())))?;
            (rec.seq + 1, rec.hash)
        }
        None => (1, String::new()),
    };
    let rec = AuditRecord {
        seq,
        time: now,
        op: op.to_string(),
        detail: detail.to_string(),
        hash: audit_hash(&prev, seq, now, op, detail),
        prev,
    };
    let bytes = serde_json::to_vec(&rec).map_err(|_| DbError::Corrupt("audit".into()))?;
    audit.insert(seq, bytes.as_slice()).map_err(db_err)?;
    Ok(())
}

impl CaDb {
    /// Opens or creates the database file (one process at a time, as redb allows).
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let db = Database::create(path).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(CERTS).map_err(db_err)?;
            txn.open_table(SERIALS).map_err(db_err)?;
            txn.open_table(REQUESTS).map_err(db_err)?;
            txn.open_table(REVOKED).map_err(db_err)?;
            txn.open_table(AUDIT).map_err(db_err)?;
            txn.open_table(META).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(CaDb { db })
    }

    /// Appends an audit record on its own (for operations that write nothing else).
    pub fn audit(&self, now: SystemTime, op: &str, detail: &str) -> Result<(), DbError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut audit = txn.open_table(AUDIT).map_err(db_err)?;
            append_audit(&mut audit, unix(now), op, detail)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Draws a fresh random serial (16 bytes, positive, first byte in 0x40..=0x7f so the DER
    /// INTEGER is always 16 octets) and reserves it durably before it is used.
    pub fn reserve_serial(&self, now: SystemTime) -> Result<Vec<u8>, DbError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        loop {
            let mut bytes = [0u8; 16];
            aws_lc_rs::rand::SecureRandom::fill(&rng, &mut bytes).map_err(|_| DbError::Rng)?;
            bytes[0] = (bytes[0] & 0x3f) | 0x40;
            let key = hex::encode(bytes);
            let txn = self.db.begin_write().map_err(db_err)?;
            {
                let mut serials = txn.open_table(SERIALS).map_err(db_err)?;
                if serials.get(key.as_str()).map_err(db_err)?.is_some() {
                    continue; // never reuse, whatever state it is in
                }
                serials.insert(key.as_str(), "reserved").map_err(db_err)?;
                let mut audit = txn.open_table(AUDIT).map_err(db_err)?;
                append_audit(&mut audit, unix(now), "reserve-serial", &key)?;
            }
            txn.commit().map_err(db_err)?;
            return Ok(bytes.to_vec());
        }
    }

    /// The certificate already issued for this request digest, if any.
    pub fn find_request(&self, digest: &str) -> Result<Option<CertRecord>, DbError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let requests = txn.open_table(REQUESTS).map_err(db_err)?;
        let Some(serial) = requests.get(digest).map_err(db_err)? else {
            return Ok(None);
        };
        let serial = serial.value().to_string();
        let certs = txn.open_table(CERTS).map_err(db_err)?;
        match certs.get(serial.as_str()).map_err(db_err)? {
            Some(v) => Ok(Some(
                serde_json::from_slice(v.value()).map_err(|_| DbError::Corrupt(serial))?,
            )),
            None => Ok(None),
        }
    }

    /// Records an issued certificate. If another submission of the same request was recorded in
    /// between, returns that one instead (and the new serial stays reserved, never reused).
    pub fn record_issued(
        &self,
        digest: Option<&str>,
        rec: &CertRecord,
    ) -> Result<CertRecord, DbError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let out;
        {
            let mut requests = txn.open_table(REQUESTS).map_err(db_err)?;
            let mut certs = txn.open_table(CERTS).map_err(db_err)?;
            let existing = match digest {
                Some(d) => requests
                    .get(d)
                    .map_err(db_err)?
                    .map(|s| s.value().to_string()),
                None => None,
            };
            if let Some(serial) = existing {
                let v = certs
                    .get(serial.as_str())
                    .map_err(db_err)?
                    .ok_or_else(|| DbError::Corrupt(serial.clone()))?;
                out = serde_json::from_slice(v.value()).map_err(|_| DbError::Corrupt(serial))?;
            } else {
                let bytes =
                    serde_json::to_vec(rec).map_err(|_| DbError::Corrupt(rec.serial.clone()))?;
                certs
                    .insert(rec.serial.as_str(), bytes.as_slice())
                    .map_err(db_err)?;
                let mut serials = txn.open_table(SERIALS).map_err(db_err)?;
                serials
                    .insert(rec.serial.as_str(), "issued")
                    .map_err(db_err)?;
                if let Some(d) = digest {
                    requests.insert(d, rec.serial.as_str()).map_err(db_err)?;
                }
                let mut audit = txn.open_table(AUDIT).map_err(db_err)?;
                append_audit(
                    &mut audit,
                    rec.issued_at,
                    "issue",
                    &format!(
                        "serial={} profile={} subject={}",
                        rec.serial, rec.profile, rec.subject
                    ),
                )?;
                out = rec.clone();
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(out)
    }

    /// Revokes a certificate issued by this CA. Revoking again keeps the first revocation.
    pub fn revoke(
        &self,
        serial_hex: &str,
        reason: u32,
        now: SystemTime,
    ) -> Result<Revocation, DbError> {
        let serial = serial_hex.to_ascii_lowercase();
        let txn = self.db.begin_write().map_err(db_err)?;
        let out;
        {
            let certs = txn.open_table(CERTS).map_err(db_err)?;
            if certs.get(serial.as_str()).map_err(db_err)?.is_none() {
                return Err(DbError::UnknownSerial(serial));
            }
            let mut revoked = txn.open_table(REVOKED).map_err(db_err)?;
            let prior = revoked
                .get(serial.as_str())
                .map_err(db_err)?
                .map(|v| serde_json::from_slice::<Revocation>(v.value()));
            if let Some(prior) = prior {
                return prior.map_err(|_| DbError::Corrupt(serial));
            }
            let r = Revocation {
                time: unix(now),
                reason,
            };
            let bytes = serde_json::to_vec(&r).map_err(|_| DbError::Corrupt(serial.clone()))?;
            revoked
                .insert(serial.as_str(), bytes.as_slice())
                .map_err(db_err)?;
            let mut audit = txn.open_table(AUDIT).map_err(db_err)?;
            append_audit(
                &mut audit,
                r.time,
                "revoke",
                &format!("serial={serial} reason={reason}"),
            )?;
            out = r;
        }
        txn.commit().map_err(db_err)?;
        Ok(out)
    }

    /// The status of a serial.
    pub fn status(&self, serial_hex: &str) -> Result<Status, DbError> {
        let serial = serial_hex.to_ascii_lowercase();
        let txn = self.db.begin_read().map_err(db_err)?;
        let revoked = txn.open_table(REVOKED).map_err(db_err)?;
        if let Some(v) = revoked.get(serial.as_str()).map_err(db_err)? {
            return Ok(Status::Revoked(
                serde_json::from_slice(v.value()).map_err(|_| DbError::Corrupt(serial.clone()))?,
            ));
        }
        let certs = txn.open_table(CERTS).map_err(db_err)?;
        Ok(if certs.get(serial.as_str()).map_err(db_err)?.is_some() {
            Status::Good
        } else {
            Status::Unknown
        })
    }

    /// Every issued certificate with its revocation, if any.
    pub fn list(&self) -> Result<Vec<(CertRecord, Option<Revocation>)>, DbError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let certs = txn.open_table(CERTS).map_err(db_err)?;
        let revoked = txn.open_table(REVOKED).map_err(db_err)?;
        let mut out = Vec::new();
        for item in certs.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let rec: CertRecord = serde_json::from_slice(v.value())
                .map_err(|_| DbError::Corrupt(k.value().to_string()))?;
            let rev = match revoked.get(k.value()).map_err(db_err)? {
                Some(r) => Some(
                    serde_json::from_slice(r.value())
                        .map_err(|_| DbError::Corrupt(k.value().to_string()))?,
                ),
                None => None,
            };
            out.push((rec, rev));
        }
        out.sort_by_key(|(r, _)| r.issued_at);
        Ok(out)
    }

    /// Every revocation, by serial (hex).
    pub fn revocations(&self) -> Result<Vec<(String, Revocation)>, DbError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let revoked = txn.open_table(REVOKED).map_err(db_err)?;
        let mut out = Vec::new();
        for item in revoked.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            out.push((
                k.value().to_string(),
                serde_json::from_slice(v.value())
                    .map_err(|_| DbError::Corrupt(k.value().to_string()))?,
            ));
        }
        Ok(out)
    }

    /// Takes the next CRL number (monotonic, starting at 1) and audits it.
    pub fn next_crl_number(&self, now: SystemTime) -> Result<u64, DbError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let n;
        {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            n = meta
                .get("crl_number")
                .map_err(db_err)?
                .map(|v| v.value())
                .unwrap_or(0)
                + 1;
            meta.insert("crl_number", n).map_err(db_err)?;
            let mut audit = txn.open_table(AUDIT).map_err(db_err)?;
            append_audit(&mut audit, unix(now), "crl", &format!("number={n}"))?;
        }
        txn.commit().map_err(db_err)?;
        Ok(n)
    }

    /// Serials reserved but never recorded as issued (a crash between the two steps).
    pub fn orphan_serials(&self) -> Result<Vec<String>, DbError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let serials = txn.open_table(SERIALS).map_err(db_err)?;
        let mut out = Vec::new();
        for item in serials.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            if v.value() == "reserved" {
                out.push(k.value().to_string());
            }
        }
        Ok(out)
    }

    /// The whole audit trail, in order.
    pub fn audit_trail(&self) -> Result<Vec<AuditRecord>, DbError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let audit = txn.open_table(AUDIT).map_err(db_err)?;
        let mut out = Vec::new();
        for item in audit.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            out.push(
                serde_json::from_slice(v.value())
                    .map_err(|_| DbError::Corrupt(format!("audit {}", k.value())))?,
            );
        }
        Ok(out)
    }

    /// Checks the audit hash chain end to end.
    pub fn verify_audit(&self) -> Result<u64, DbError> {
        let mut prev = String::new();
        let mut n = 0;
        for rec in self.audit_trail()? {
            if rec.prev != prev
                || rec.hash != audit_hash(&rec.prev, rec.seq, rec.time, &rec.op, &rec.detail)
            {
                return Err(DbError::AuditBroken(rec.seq));
            }
            prev = rec.hash;
            n = rec.seq;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(serial: &str) -> CertRecord {
        CertRecord {
            serial: serial.into(),
            profile: "piv-auth".into(),
            subject: "CN=a".into(),
            not_after: 2,
            issued_at: 1,
            der_hex: "3000".into(),
        }
    }

    #[test]
    fn serials_are_random_positive_128_bit_and_reserved_before_use() {
        let dir = tempfile::tempdir().unwrap();
        let db = CaDb::open(&dir.path().join("ca.redb")).unwrap();
        let a = db.reserve_serial(SystemTime::now()).unwrap();
        let b = db.reserve_serial(SystemTime::now()).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert!(a[0] & 0x80 == 0 && a[0] >= 0x40);
        assert_eq!(db.orphan_serials().unwrap().len(), 2);
    }

    #[test]
    fn a_reserved_serial_survives_a_crash_and_is_never_handed_out_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.redb");
        let first = {
            let db = CaDb::open(&path).unwrap();
            hex::encode(db.reserve_serial(SystemTime::now()).unwrap())
            // dropped without recording: the "crash" between signing and recording
        };
        let db = CaDb::open(&path).unwrap();
        assert_eq!(db.orphan_serials().unwrap(), vec![first.clone()]);
        for _ in 0..200 {
            assert_ne!(
                hex::encode(db.reserve_serial(SystemTime::now()).unwrap()),
                first
            );
        }
    }

    #[test]
    fn issuing_twice_for_one_request_returns_the_first_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let db = CaDb::open(&dir.path().join("ca.redb")).unwrap();
        let first = db.record_issued(Some("req1"), &rec("aa")).unwrap();
        let second = db.record_issued(Some("req1"), &rec("bb")).unwrap();
        assert_eq!(first, second);
        assert_eq!(db.list().unwrap().len(), 1);
        assert_eq!(db.find_request("req1").unwrap().unwrap().serial, "aa");
    }

    #[test]
    fn revocation_of_unknown_serial_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = CaDb::open(&dir.path().join("ca.redb")).unwrap();
        db.record_issued(None, &rec("aa")).unwrap();
        let before = db.audit_trail().unwrap().len();
        assert!(matches!(
            db.revoke("ff", 1, SystemTime::now()),
            Err(DbError::UnknownSerial(_))
        ));
        assert_eq!(db.audit_trail().unwrap().len(), before);
        let r = db.revoke("AA", 1, SystemTime::now()).unwrap();
        assert_eq!(db.status("aa").unwrap(), Status::Revoked(r.clone()));
        assert_eq!(db.revoke("aa", 4, SystemTime::now()).unwrap(), r);
        assert_eq!(db.status("ab").unwrap(), Status::Unknown);
    }

    #[test]
    fn audit_chain_verifies_and_crl_numbers_increase() {
        let dir = tempfile::tempdir().unwrap();
        let db = CaDb::open(&dir.path().join("ca.redb")).unwrap();
        assert_eq!(db.next_crl_number(SystemTime::now()).unwrap(), 1);
        assert_eq!(db.next_crl_number(SystemTime::now()).unwrap(), 2);
        db.record_issued(None, &rec("aa")).unwrap();
        assert_eq!(db.verify_audit().unwrap(), 3);
    }
}
