//! Clearance assignments: what a security officer decides about a person, signed with the officer's card.
//!
//! The signed bytes are the JSON payload exactly as the officer's tool wrote it, prefixed with a domain
//! separator, so no canonical re-encoding is needed and a record can be re-verified from storage forever.
//! Pure code: no I/O, no clock (the caller passes `now`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use der::{Decode, Encode};
use qsi_labels::Label;
use x509_cert::Certificate;

use super::card::CardIdentity;

/// Prefix of every signed assignment, so a card signature made for anything else (a TLS handshake, a
/// document) can never pass as an assignment.
pub const SIGNING_CONTEXT: &[u8] = b"QSI clearance assignment v1\0";

/// What the officer decides.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Action {
    /// Sets the person's clearance (level and compartments), and whether they are a security officer.
    Grant {
        /// The clearance, as a banner marking.
        clearance: Label,
        /// The person may sign assignments.
        #[serde(default)]
        officer: bool,
    },
    /// Withdraws every clearance and the officer role: the person can no longer log in.
    Revoke,
}

/// Who the assignment is about. At least one of `uuid` and `fascn` is set.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    /// Display name, for people reading the audit log (not used for any decision).
    pub name: String,
    /// Card UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<uuid::Uuid>,
    /// Binary FASC-N, upper-case hex (50 digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fascn: Option<String>,
}

impl Subject {
    /// The identity as the store keys it.
    pub fn identity(&self) -> CardIdentity {
        CardIdentity {
            fascn: self.fascn.as_ref().map(|f| f.to_ascii_uppercase()),
            uuid: self.uuid,
        }
    }
}

/// The signed content of an assignment.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    /// The person.
    pub subject: Subject,
    /// Grant or revoke.
    pub action: Action,
    /// The person's record number this assignment creates: one more than the current one (1 for a person
    /// never seen). A replayed or out-of-order assignment does not match and is refused.
    pub seq: u64,
    /// When the officer signed it (Unix seconds).
    pub issued_at: i64,
    /// For an officer grant: the new officer's card certificate (base64 DER), whose key is pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_cert: Option<String>,
}

/// An assignment with its signature and the signer's certificate, as stored and as exchanged.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedAssignment {
    /// The JSON of an [`Assignment`], exactly the bytes signed (after [`SIGNING_CONTEXT`]).
    pub payload: String,
    /// Signature (base64; DER ECDSA-Sig-Value or PKCS#1 v1.5).
    pub signature: String,
    /// The signer's card certificate (base64 DER).
    pub signer_cert: String,
}

/// Why an assignment does not verify.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A base64 field does not decode.
    #[error("{field} is not valid base64")]
    Base64 {
        /// The field.
        field: &'static str,
    },
    /// The payload is not a valid assignment.
    #[error("the assignment payload is malformed: {0}")]
    Payload(String),
    /// The signer's certificate cannot be read.
    #[error("the signer certificate cannot be read: {0}")]
    Certificate(String),
    /// The key type of the signer's certificate is not one a card holds.
    #[error("the signer's key type is not supported (P-256, P-384 or RSA)")]
    UnsupportedKey,
    /// The signature does not verify under the signer's certificate: forged or altered.
    #[error("the signature does not verify: the assignment was altered or not signed by this card")]
    BadSignature,
    /// The subject names no card.
    #[error("the assignment names no card: give the person's card UUID or FASC-N")]
    NoSubject,
}

/// Signs assignments with a card (or any key whose certificate the store can check).
pub trait AssignmentSigner {
    /// The signer's certificate, DER.
    fn certificate_der(&self) -> &[u8];
    /// Signs `message` with the card key: DER ECDSA-Sig-Value (SHA-256 for P-256, SHA-384 for P-384) or
    /// RSA PKCS#1 v1.5 with SHA-256.
    fn sign(&self, message: &[u8]) -> anyhow::Result<Vec<u8>>;
}

impl Assignment {
    /// Checks the fields that need no store.
    pub fn check(&self) -> Result<(), RecordError> {
        if self.subject.uuid.is_none() && self.subject.fascn.is_none() {
            return Err(RecordError::NoSubject);
        }
        if let Some(f) = &self.subject.fascn {
            if f.len() != 50 || !f.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(RecordError::Payload(
                    "fascn must be the 25-byte FASC-N in hex (50 digits)".into(),
                ));
            }
        }
        Ok(())
    }

    /// Serializes and signs.
    pub fn sign(&self, signer: &dyn AssignmentSigner) -> anyhow::Result<SignedAssignment> {
        self.check()?;
        let payload = serde_json::to_string(self)?;
        let signature = signer.sign(&signed_message(payload.as_bytes()))?;
        Ok(SignedAssignment {
            payload,
            signature: B64.encode(signature),
            signer_cert: B64.encode(signer.certificate_der()),
        })
    }
}

fn signed_message(payload: &[u8]) -> Vec<u8> {
    [SIGNING_CONTEXT, payload].concat()
}

/// A signed assignment whose signature verified.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The content.
    pub assignment: Assignment,
    /// The signer's certificate.
    pub signer: Certificate,
    /// SHA-256 of the signer's SubjectPublicKeyInfo (hex), to compare with a pinned officer key.
    pub signer_spki_sha256: String,
}

impl SignedAssignment {
    /// Decodes the payload and verifies the signature under the signer's certificate. Says nothing yet
    /// about whether the signer may sign: that is the store's job.
    pub fn verify_signature(&self) -> Result<Verified, RecordError> {
        let cert_der = B64
            .decode(&self.signer_cert)
            .map_err(|_| RecordError::Base64 {
                field: "signer_cert",
            })?;
        let sig = B64
            .decode(&self.signature)
            .map_err(|_| RecordError::Base64 { field: "signature" })?;
        let signer = Certificate::from_der(&cert_der)
            .map_err(|e| RecordError::Certificate(e.to_string()))?;
        verify_with_cert(&signer, &signed_message(self.payload.as_bytes()), &sig)?;
        let assignment: Assignment =
            serde_json::from_str(&self.payload).map_err(|e| RecordError::Payload(e.to_string()))?;
        assignment.check()?;
        let signer_spki_sha256 = spki_sha256(&signer)?;
        Ok(Verified {
            assignment,
            signer,
            signer_spki_sha256,
        })
    }
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo, hex: the pin of an officer's card key.
pub fn spki_sha256(cert: &Certificate) -> Result<String, RecordError> {
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| RecordError::Certificate(e.to_string()))?;
    Ok(hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        &spki,
    )))
}

const EC_PUBLIC_KEY: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: der::asn1::ObjectIdentifier = der::asn1::ObjectIdentifier::new_unwrap("1.3.132.0.34");
const RSA: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// Verifies `sig` over `msg` with the public key of `cert` (P-256/SHA-256, P-384/SHA-384 ECDSA in DER, or
/// RSA PKCS#1 v1.5 SHA-256).
pub fn verify_with_cert(cert: &Certificate, msg: &[u8], sig: &[u8]) -> Result<(), RecordError> {
    use aws_lc_rs::signature as s;
    let spki = cert.tbs_certificate().subject_public_key_info();
    let alg: &dyn s::VerificationAlgorithm = if spki.algorithm.oid == EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<der::asn1::ObjectIdentifier>().ok());
        match curve {
            Some(c) if c == P256 => &s::ECDSA_P256_SHA256_ASN1,
            Some(c) if c == P384 => &s::ECDSA_P384_SHA384_ASN1,
            _ => return Err(RecordError::UnsupportedKey),
        }
    } else if spki.algorithm.oid == RSA {
        &s::RSA_PKCS1_2048_8192_SHA256
    } else {
        return Err(RecordError::UnsupportedKey);
    };
    let key = spki
        .subject_public_key
        .as_bytes()
        .ok_or(RecordError::UnsupportedKey)?;
    s::UnparsedPublicKey::new(alg, key)
        .verify(msg, sig)
        .map_err(|_| RecordError::BadSignature)
}
