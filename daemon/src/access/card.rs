//! Card identity: the FASC-N and card UUID a PIV or PIV-I certificate carries in its subjectAltName
//! (FIPS 201-3 section 4.4.2: FASC-N as otherName `id-piv-FASC-N` (2.16.840.1.101.3.6.6), an OCTET STRING of
//! 25 bytes; card UUID as a URI `urn:uuid:...`). A person is keyed by these, never by a name the client
//! chooses.

use std::fmt;

use der::{Decode, Encode};
use x509_cert::Certificate;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

/// `id-piv-FASC-N`.
pub const ID_PIV_FASCN: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("2.16.840.1.101.3.6.6");
/// Length of a binary FASC-N (SP 800-73-4: 200 bits in 5-bit BCD with parity).
pub const FASCN_LEN: usize = 25;

/// Why no card identity could be taken from a certificate.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    /// The certificate is not DER X.509.
    #[error("the certificate is not DER X.509: {0}")]
    Certificate(String),
    /// The subjectAltName extension is malformed.
    #[error("the certificate's subjectAltName is malformed: {0}")]
    SubjectAltName(String),
    /// The FASC-N otherName is not an OCTET STRING of 25 bytes.
    #[error("the FASC-N in the subjectAltName is not an OCTET STRING of 25 bytes")]
    BadFascn,
    /// Neither a FASC-N nor a `urn:uuid:` URI: not a card certificate.
    #[error(
        "the certificate carries no FASC-N and no card UUID in its subjectAltName: it is not a PIV or PIV-I card certificate"
    )]
    NoCardIdentity,
}

/// What identifies a card: its FASC-N, its UUID, or both. PIV cards carry both; PIV-I cards carry a UUID
/// (their FASC-N, when present, has agency code 9999).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CardIdentity {
    /// The 25-byte binary FASC-N, upper-case hex.
    pub fascn: Option<String>,
    /// The card UUID.
    pub uuid: Option<uuid::Uuid>,
}

impl CardIdentity {
    /// The keys under which a person may be found, most specific first: `uuid:<uuid>` then `fascn:<hex>`.
    pub fn keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        if let Some(u) = self.uuid {
            keys.push(format!("uuid:{u}"));
        }
        if let Some(f) = &self.fascn {
            keys.push(format!("fascn:{f}"));
        }
        keys
    }

    /// Takes the card identity from a DER certificate's subjectAltName.
    pub fn from_cert_der(der: &[u8]) -> Result<Self, CardError> {
        let cert = Certificate::from_der(der).map_err(|e| CardError::Certificate(e.to_string()))?;
        Self::from_cert(&cert)
    }

    /// Takes the card identity from a parsed certificate's subjectAltName.
    pub fn from_cert(cert: &Certificate) -> Result<Self, CardError> {
        let san = cert
            .tbs_certificate()
            .get_extension::<SubjectAltName>()
            .map_err(|e| CardError::SubjectAltName(e.to_string()))?;
        let mut id = CardIdentity::default();
        if let Some((_, san)) = san {
            for name in san.0 {
                match name {
                    GeneralName::OtherName(on) if on.type_id == ID_PIV_FASCN => {
                        let os = on
                            .value
                            .decode_as::<der::asn1::OctetString>()
                            .map_err(|_| CardError::BadFascn)?;
                        if os.as_bytes().len() != FASCN_LEN {
                            return Err(CardError::BadFascn);
                        }
                        id.fascn = Some(hex::encode_upper(os.as_bytes()));
                    }
                    GeneralName::UniformResourceIdentifier(uri) => {
                        let s = uri.as_str();
                        if let Some(rest) = s.strip_prefix("urn:uuid:") {
                            if let Ok(u) = uuid::Uuid::parse_str(rest) {
                                id.uuid = Some(u);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        if id.fascn.is_none() && id.uuid.is_none() {
            return Err(CardError::NoCardIdentity);
        }
        Ok(id)
    }
}

impl fmt::Display for CardIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.keys().join(" "))
    }
}

/// The DER subjectAltName extension value for a card: the FASC-N otherName and the `urn:uuid:` URI.
/// Used to issue test cards and by anyone writing a card profile without the CA at hand.
pub fn card_san_der(
    fascn: Option<&[u8; FASCN_LEN]>,
    uuid: Option<uuid::Uuid>,
) -> Result<Vec<u8>, CardError> {
    let mut names = Vec::new();
    if let Some(f) = fascn {
        let os = der::asn1::OctetString::new(f.to_vec()).map_err(|_| CardError::BadFascn)?;
        let value = der::Any::encode_from(&os).map_err(|_| CardError::BadFascn)?;
        names.push(GeneralName::OtherName(
            x509_cert::ext::pkix::name::OtherName {
                type_id: ID_PIV_FASCN,
                value,
            },
        ));
    }
    if let Some(u) = uuid {
        let uri = der::asn1::Ia5String::new(&format!("urn:uuid:{u}"))
            .map_err(|e| CardError::SubjectAltName(e.to_string()))?;
        names.push(GeneralName::UniformResourceIdentifier(uri));
    }
    SubjectAltName(names)
        .to_der()
        .map_err(|e| CardError::SubjectAltName(e.to_string()))
}
