//! One CA at work: its certificate, its key, its database. Every operator command (`qsi ca issue`,
//! `revoke`, `crl`, `list`) and every HTTP request of `qsi ca serve` ends here, whether it came
//! straight from the CLI or through the admin socket of a running service.

use crate::ca::crl::build_crl;
use crate::ca::csr::{CsrError, check_requested, parse_and_verify};
use crate::ca::db::{CaDb, CertRecord, DbError, Revocation, Status, unix};
use crate::ca::issue::{IssueError, Issuer, Template, prepare};
use crate::ca::ocsp::Responder;
use crate::ca::p7c;
use crate::ca::signer::CaSigner;
use crate::profiles::{CrossParamsFile, Profile, ProfileError, Publication, SubjectIds};
use const_oid::ObjectIdentifier;
use der::{Decode, Encode};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};
use x509_cert::Certificate;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;

/// Why an operation was refused. Nothing is written when it is.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The request is not a valid, well-signed PKCS#10 request, or asks for forbidden extensions.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// Issuance refused (profile rules, expired CA, key failure).
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// The database refused (unknown serial, file locked, ...).
    #[error(transparent)]
    Db(#[from] DbError),
    /// The profile refused.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// An input field is wrong.
    #[error("{0}")]
    Invalid(String),
    /// DER encoding failed.
    #[error("DER: {0}")]
    Der(#[from] der::Error),
}

/// An issuance request as the CLI and the admin socket carry it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    /// Profile name (`piv-auth`, `tls-server`, ...).
    pub profile: String,
    /// The PKCS#10 request, DER, hex. Either this or `spki_hex` (a key the CA generated on a
    /// card token, whose possession the CA itself witnessed).
    #[serde(default)]
    pub csr_hex: Option<String>,
    /// DER SubjectPublicKeyInfo, hex (key generated on a token by the operator's command).
    #[serde(default)]
    pub spki_hex: Option<String>,
    /// Subject DN (RFC 4514); defaults to the CSR's subject.
    #[serde(default)]
    pub subject: Option<String>,
    /// subjectAltName content.
    #[serde(default)]
    pub ids: SubjectIds,
    /// Validity in days (default: the profile's).
    #[serde(default)]
    pub days: Option<u32>,
    /// Cross-certificate parameters.
    #[serde(default)]
    pub cross: Option<CrossParamsFile>,
    /// Policies of a subordinate CA (dotted OIDs).
    #[serde(default)]
    pub ca_policies: Vec<String>,
    /// Short name of a subordinate CA.
    #[serde(default)]
    pub subject_ca_name: Option<String>,
}

impl IssueRequest {
    /// Digest identifying a submission (idempotency key): SHA-256 over its canonical JSON.
    pub fn digest(&self) -> Result<String, CaError> {
        let json = serde_json::to_vec(self).map_err(|e| CaError::Invalid(e.to_string()))?;
        Ok(hex::encode(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &json).as_ref(),
        ))
    }
}

/// A running CA.
pub struct Authority {
    /// Short name (stem of its CRL and .p7c URLs).
    pub name: String,
    /// Its certificate.
    pub cert: Certificate,
    /// Certificates issued to this CA by others (its path towards a root), DER.
    pub issued_to: Vec<Vec<u8>>,
    /// Its key.
    pub signer: Box<dyn CaSigner>,
    /// Its database.
    pub db: CaDb,
    /// Where it publishes.
    pub publication: Publication,
    /// How long a CRL is valid (nextUpdate - thisUpdate).
    pub crl_validity: Duration,
    responder: Responder,
}

impl core::fmt::Debug for Authority {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Authority")
            .field("name", &self.name)
            .finish()
    }
}

/// Serial bytes to the hex form the database keys by.
pub fn serial_hex(s: &SerialNumber) -> String {
    hex::encode(s.as_bytes())
}

impl Authority {
    /// Assembles a CA from its parts.
    pub fn new(
        name: String,
        cert: Certificate,
        issued_to: Vec<Vec<u8>>,
        signer: Box<dyn CaSigner>,
        db: CaDb,
        publication: Publication,
    ) -> Result<Self, CaError> {
        if cert.tbs_certificate().subject_public_key_info() != signer.public_key() {
            return Err(IssueError::KeyMismatch.into());
        }
        let responder = Responder::new(&cert).map_err(|e| CaError::Invalid(e.to_string()))?;
        Ok(Authority {
            name,
            cert,
            issued_to,
            signer,
            db,
            publication,
            crl_validity: Duration::from_secs(24 * 3600),
            responder,
        })
    }

    /// Issues under `req` at `now`: verifies the CSR, refuses forbidden extensions, reserves a
    /// serial, signs, records. A repeated submission returns the first certificate.
    pub fn issue(&self, req: &IssueRequest, now: SystemTime) -> Result<CertRecord, CaError> {
        let profile = Profile::from_name(&req.profile).ok_or_else(|| {
            CaError::Invalid(format!(
                "unknown profile {:?}; one of: {}",
                req.profile,
                Profile::ALL.map(|p| p.name()).join(", ")
            ))
        })?;
        if profile == Profile::Root {
            return Err(CaError::Invalid(
                "a root is made by `qsi ca init`, not issued".into(),
            ));
        }
        let digest = req.digest()?;
        if let Some(done) = self.db.find_request(&digest)? {
            tracing::info!(serial = %done.serial, "repeated submission: returning the certificate already issued");
            return Ok(done);
        }
        let unhex = |what: &str, h: &str| {
            hex::decode(h).map_err(|_| CaError::Invalid(format!("{what} is not hex")))
        };
        let (mut subject, spki, mut ids, csr) = match (&req.csr_hex, &req.spki_hex) {
            (Some(csr_hex), None) => {
                let csr = parse_and_verify(&unhex("csr_hex", csr_hex)?)?;
                (
                    csr.subject.clone(),
                    csr.spki.clone(),
                    req.ids.clone(),
                    Some(csr),
                )
            }
            (None, Some(spki_hex)) => {
                let spki = spki::SubjectPublicKeyInfoOwned::from_der(&unhex("spki_hex", spki_hex)?)
                    .map_err(|e| CaError::Invalid(format!("spki_hex: {e}")))?;
                (Name::default(), spki, req.ids.clone(), None)
            }
            _ => {
                return Err(CaError::Invalid(
                    "give exactly one of a CSR or a token-generated public key".into(),
                ));
            }
        };
        if let Some(s) = &req.subject {
            subject = s
                .parse()
                .map_err(|e| CaError::Invalid(format!("subject {s:?}: {e}")))?;
        }
        if subject.to_string().is_empty() {
            return Err(CaError::Invalid(
                "the certificate needs a subject DN".into(),
            ));
        }
        if let Some(csr) = &csr {
            let (dns, ips) = csr.requested_names();
            if matches!(profile, Profile::TlsServer | Profile::TlsClient) {
                ids.dns
                    .extend(dns.into_iter().filter(|d| !req.ids.dns.contains(d)));
                ids.ips
                    .extend(ips.into_iter().filter(|i| !req.ids.ips.contains(i)));
            }
        }
        let cross = req.cross.as_ref().map(|c| c.validate()).transpose()?;
        let ca_policies = req
            .ca_policies
            .iter()
            .map(|p| {
                p.parse::<ObjectIdentifier>()
                    .map_err(|_| CaError::Invalid(format!("policy {p:?} is not an OID")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let days = req.days.unwrap_or(profile.default_validity_days());
        let not_before = now - Duration::from_secs(300); // tolerate relying-party clock skew
        let template = Template {
            profile,
            subject,
            spki,
            ids,
            not_before,
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
            serial: SerialNumber::new(&[0x40])?, // placeholder: checked before a serial is spent
            cross,
            ca_policies,
            subject_ca_name: req.subject_ca_name.clone(),
        };
        let issuer = Issuer {
            cert: &self.cert,
            signer: self.signer.as_ref(),
            name: &self.name,
            publication: &self.publication,
        };
        // Every refusal (profile, CSR extensions, expired CA) happens here, before a serial is
        // reserved or anything is written.
        let mut prepared = prepare(&issuer, &template, now)?;
        if let Some(csr) = &csr {
            check_requested(profile, csr, prepared.extensions())?;
        }
        prepared.set_serial(SerialNumber::new(&self.db.reserve_serial(now)?)?);
        let cert = prepared.sign(self.signer.as_ref())?;
        let rec = CertRecord {
            serial: serial_hex(cert.tbs_certificate().serial_number()),
            profile: profile.name().to_string(),
            subject: cert.tbs_certificate().subject().to_string(),
            not_after: unix(cert.tbs_certificate().validity().not_after.to_system_time()),
            issued_at: unix(now),
            der_hex: hex::encode(cert.to_der()?),
        };
        Ok(self.db.record_issued(Some(&digest), &rec)?)
    }

    /// Revokes a serial (hex) this CA issued.
    pub fn revoke(
        &self,
        serial: &str,
        reason: u32,
        now: SystemTime,
    ) -> Result<Revocation, CaError> {
        Ok(self
            .db
            .revoke(serial.trim_start_matches("0x"), reason, now)?)
    }

    /// Signs a fresh CRL (DER) valid for [`Authority::crl_validity`].
    pub fn crl(&self, now: SystemTime) -> Result<Vec<u8>, CaError> {
        let revoked = self
            .db
            .revocations()?
            .into_iter()
            .map(|(s, r)| {
                hex::decode(&s)
                    .map(|b| (b, r))
                    .map_err(|_| CaError::Invalid(format!("stored serial {s} is not hex")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let number = self.db.next_crl_number(now)?;
        let crl = build_crl(
            &self.cert,
            self.signer.as_ref(),
            number,
            &revoked,
            now,
            now + self.crl_validity,
        )?;
        Ok(crl.to_der()?)
    }

    /// Answers an OCSP request (DER in, DER out).
    pub fn ocsp(&self, request: &[u8], now: SystemTime) -> Vec<u8> {
        let lookup = |serial: &str| self.db.status(serial).map_err(|e| e.to_string());
        self.responder
            .respond(request, self.signer.as_ref(), &lookup, now)
    }

    /// Status of a serial.
    pub fn status(&self, serial: &str) -> Result<Status, CaError> {
        Ok(self.db.status(serial)?)
    }

    /// Every issued certificate.
    pub fn list(&self) -> Result<Vec<(CertRecord, Option<Revocation>)>, CaError> {
        Ok(self.db.list()?)
    }

    /// `.p7c` of the CA certificates this CA issued (SIA caRepository).
    pub fn p7c_issued_by(&self) -> Result<Vec<u8>, CaError> {
        let mut certs = Vec::new();
        for (rec, _) in self.db.list()? {
            if rec.profile == Profile::IssuingCa.name()
                || rec.profile == Profile::CrossCertificate.name()
            {
                certs.push(rec.der()?);
            }
        }
        Ok(p7c::certs_only(&certs))
    }

    /// `.p7c` of the certificates issued to this CA (AIA caIssuers of what it issues): its own
    /// certificate and any it was given by others.
    pub fn p7c_issued_to(&self) -> Result<Vec<u8>, CaError> {
        let mut certs = self.issued_to.clone();
        certs.push(self.cert.to_der()?);
        Ok(p7c::certs_only(&certs))
    }
}
