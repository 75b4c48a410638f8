//! End-entity profiles: PIV and PIV-I card certificates, content signing, TLS, OCSP signer.
//!
//! Every end entity carries authorityKeyIdentifier, subjectKeyIdentifier (both non-critical),
//! certificatePolicies (non-critical), cRLDistributionPoints (HTTP) and authorityInfoAccess
//! (caIssuers .p7c and OCSP), except the OCSP signer, which carries id-pkix-ocsp-nocheck instead of
//! revocation pointers (RFC 6960 4.2.2.2.1, CP-SSP worksheet "OCSP Responder Certificate").

use super::ca_certs::{aia_ext, aki_ext, crldp_ext, policies_ext, ski_ext};
use super::{Profile, ProfileError, Publication, ext, oid, uri};
use crate::ca::signer::{SigAlg, key_sig_alg};
use crate::fascn::Fascn;
use const_oid::ObjectIdentifier;
use const_oid::db::rfc5280 as ce;
use der::Any;
use der::asn1::{Ia5String, Null, OctetString};
use flagset::FlagSet;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::name::{GeneralName, OtherName};
use x509_cert::ext::pkix::{ExtendedKeyUsage, KeyUsage, KeyUsages};

/// The names an end-entity certificate carries in subjectAltName.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubjectIds {
    /// The card's FASC-N (PIV: mandatory in Authentication and Card Authentication).
    pub fascn: Option<Fascn>,
    /// The card UUID (FIPS 201-3: mandatory; PIV-I: mandatory), as `urn:uuid:` URI.
    pub uuid: Option<uuid::Uuid>,
    /// User principal name for smart-card logon (optional).
    pub upn: Option<String>,
    /// rfc822Name(s) (signature and key-management certificates).
    pub emails: Vec<String>,
    /// dNSName(s) (TLS).
    pub dns: Vec<String>,
    /// iPAddress(es) (TLS).
    pub ips: Vec<std::net::IpAddr>,
}

fn ia5(s: &str) -> Result<Ia5String, ProfileError> {
    Ia5String::new(s).map_err(|_| ProfileError::NotAscii(s.to_string()))
}

/// Builds the subjectAltName GeneralNames in the order FASC-N, UUID URI, UPN, e-mail, DNS, IP.
pub fn san_names(ids: &SubjectIds) -> Result<Vec<GeneralName>, ProfileError> {
    let mut names = Vec::new();
    if let Some(f) = &ids.fascn {
        let bytes = f.encode().map_err(|_| ProfileError::Missing {
            profile: Profile::PivAuth,
            what: "a valid FASC-N",
        })?;
        names.push(GeneralName::OtherName(OtherName {
            type_id: oid::PIV_FASCN,
            value: Any::encode_from(&OctetString::new(bytes.to_vec())?)?,
        }));
    }
    if let Some(u) = &ids.uuid {
        names.push(uri(&u.urn().to_string())?);
    }
    if let Some(upn) = &ids.upn {
        names.push(GeneralName::OtherName(OtherName {
            type_id: oid::MS_UPN,
            value: Any::encode_from(&der::asn1::Utf8StringRef::new(upn)?)?,
        }));
    }
    for e in &ids.emails {
        names.push(GeneralName::Rfc822Name(ia5(e)?));
    }
    for d in &ids.dns {
        names.push(GeneralName::DnsName(ia5(d)?));
    }
    for ip in &ids.ips {
        names.push(GeneralName::from(*ip));
    }
    Ok(names)
}

fn ku(usages: FlagSet<KeyUsages>) -> Result<Extension, ProfileError> {
    ext(ce::ID_CE_KEY_USAGE, true, &KeyUsage(usages))
}

fn eku(critical: bool, purposes: &[ObjectIdentifier]) -> Result<Extension, ProfileError> {
    ext(
        ce::ID_CE_EXT_KEY_USAGE,
        critical,
        &ExtendedKeyUsage(purposes.to_vec()),
    )
}

/// Which kinds of subjectAltName a profile carries (the rest of [`SubjectIds`] is ignored).
#[derive(Clone, Copy)]
struct San {
    card: bool,
    email: bool,
    net: bool,
}

impl San {
    fn of(profile: Profile) -> San {
        let (card, email, net) = match profile {
            Profile::PivAuth | Profile::PivCardAuth | Profile::PiviAuth | Profile::PiviCardAuth => {
                (true, false, false)
            }
            Profile::PivDigitalSignature
            | Profile::PivKeyManagement
            | Profile::PiviDigitalSignature
            | Profile::PiviKeyManagement => (false, true, false),
            Profile::TlsServer | Profile::TlsClient => (false, false, true),
            _ => (false, false, false),
        };
        San { card, email, net }
    }

    fn filter(self, ids: &SubjectIds) -> SubjectIds {
        SubjectIds {
            fascn: ids.fascn.clone().filter(|_| self.card),
            uuid: ids.uuid.filter(|_| self.card),
            upn: ids.upn.clone().filter(|_| self.card),
            emails: if self.email {
                ids.emails.clone()
            } else {
                vec![]
            },
            dns: if self.net { ids.dns.clone() } else { vec![] },
            ips: if self.net { ids.ips.clone() } else { vec![] },
        }
    }
}

/// The row-by-row content of one end-entity profile, before the pointers every profile shares.
struct Rows {
    san: San,
    key_usage: FlagSet<KeyUsages>,
    eku: Option<(bool, &'static [ObjectIdentifier])>,
    fascn_required: bool,
    uuid_required: bool,
    dns_required: bool,
}

const PIV_AUTH_EKUS: &[ObjectIdentifier] = &[
    oid::KP_CLIENT_AUTH,
    oid::PKINIT_CLIENT_AUTH,
    oid::MS_SMARTCARD_LOGON,
];
const CARD_AUTH_EKUS: &[ObjectIdentifier] = &[oid::PIV_CARD_AUTH];
const SIGNATURE_EKUS: &[ObjectIdentifier] = &[oid::KP_EMAIL_PROTECTION, oid::MS_DOCUMENT_SIGNING];
const KEY_MANAGEMENT_EKUS: &[ObjectIdentifier] = &[oid::KP_EMAIL_PROTECTION];
const CONTENT_SIGNING_EKUS: &[ObjectIdentifier] = &[oid::PIV_CONTENT_SIGNING];
const TLS_SERVER_EKUS: &[ObjectIdentifier] = &[oid::KP_SERVER_AUTH];
const TLS_CLIENT_EKUS: &[ObjectIdentifier] = &[oid::KP_CLIENT_AUTH];
const OCSP_EKUS: &[ObjectIdentifier] = &[oid::KP_OCSP_SIGNING];

/// The profile tables. Each arm is one worksheet (see [`Profile`] for the document):
///
/// | profile | keyUsage (critical) | extKeyUsage | policy | SAN |
/// |---|---|---|---|---|
/// | PIV Authentication | digitalSignature | clientAuth, pkinit-KPClientAuth, smartcardLogon (non-critical) | id-fpki-common-authentication | FASC-N + UUID, mandatory |
/// | Card Authentication | digitalSignature | id-PIV-cardAuth, critical | id-fpki-common-cardAuth | FASC-N + UUID, mandatory |
/// | Digital Signature | digitalSignature, nonRepudiation | emailProtection, documentSigning | id-fpki-common-hardware | rfc822Name if any |
/// | Key Management | keyEncipherment (RSA) / keyAgreement (EC) | emailProtection | id-fpki-common-hardware | rfc822Name if any |
/// | PIV Content Signing | digitalSignature | id-PIV-content-signing, critical | id-fpki-common-piv-contentSigning | none |
/// | PIV-I Authentication | digitalSignature | as PIV Authentication | id-fpki-certpcy-pivi-hardware | UUID mandatory, FASC-N if given |
/// | PIV-I Card Authentication | digitalSignature | id-PIV-cardAuth, critical | id-fpki-certpcy-pivi-cardAuth | UUID mandatory |
/// | PIV-I Digital Signature | digitalSignature, nonRepudiation | emailProtection, documentSigning | id-fpki-certpcy-pivi-hardware | rfc822Name if any |
/// | PIV-I Key Management | keyEncipherment / keyAgreement | emailProtection | id-fpki-certpcy-pivi-hardware | rfc822Name if any |
/// | PIV-I Content Signing | digitalSignature | id-PIV-content-signing, critical | id-fpki-certpcy-pivi-contentSigning | none |
/// | TLS server (device) | digitalSignature (+ keyEncipherment for RSA) | serverAuth | id-fpki-common-devicesHardware | dNSName mandatory |
/// | TLS client (device) | digitalSignature | clientAuth | id-fpki-common-devicesHardware | if given |
/// | OCSP signer | digitalSignature | id-kp-OCSPSigning | id-fpki-common-devicesHardware | none; id-pkix-ocsp-nocheck |
fn rows(profile: Profile, key: SigAlg) -> Result<Rows, ProfileError> {
    let sig = FlagSet::from(KeyUsages::DigitalSignature);
    let key_management = || match key {
        SigAlg::RsaPkcs1Sha256 => Ok(FlagSet::from(KeyUsages::KeyEncipherment)),
        SigAlg::EcdsaP256Sha256 | SigAlg::EcdsaP384Sha384 => {
            Ok(FlagSet::from(KeyUsages::KeyAgreement))
        }
        _ => Err(ProfileError::Key {
            profile,
            why: "key management needs an RSA or EC key (ML-DSA cannot encrypt or agree keys)",
        }),
    };
    let san = San::of(profile);
    let r = |key_usage, eku, fascn_required, uuid_required, dns_required| Rows {
        san,
        key_usage,
        eku,
        fascn_required,
        uuid_required,
        dns_required,
    };
    Ok(match profile {
        Profile::PivAuth => r(sig, Some((false, PIV_AUTH_EKUS)), true, true, false),
        Profile::PivCardAuth => r(sig, Some((true, CARD_AUTH_EKUS)), true, true, false),
        Profile::PivDigitalSignature | Profile::PiviDigitalSignature => r(
            KeyUsages::DigitalSignature | KeyUsages::NonRepudiation,
            Some((false, SIGNATURE_EKUS)),
            false,
            false,
            false,
        ),
        Profile::PivKeyManagement | Profile::PiviKeyManagement => r(
            key_management()?,
            Some((false, KEY_MANAGEMENT_EKUS)),
            false,
            false,
            false,
        ),
        Profile::PivContentSigning | Profile::PiviContentSigning => {
            r(sig, Some((true, CONTENT_SIGNING_EKUS)), false, false, false)
        }
        Profile::PiviAuth => r(sig, Some((false, PIV_AUTH_EKUS)), false, true, false),
        Profile::PiviCardAuth => r(sig, Some((true, CARD_AUTH_EKUS)), false, true, false),
        Profile::TlsServer => {
            let usage = if key == SigAlg::RsaPkcs1Sha256 {
                KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment
            } else {
                sig
            };
            r(usage, Some((false, TLS_SERVER_EKUS)), false, false, true)
        }
        Profile::TlsClient => r(sig, Some((false, TLS_CLIENT_EKUS)), false, false, false),
        Profile::OcspSigner => r(sig, Some((false, OCSP_EKUS)), false, false, false),
        Profile::Root | Profile::IssuingCa | Profile::CrossCertificate => {
            return Err(ProfileError::Key {
                profile,
                why: "a CA profile is not an end-entity profile",
            });
        }
    })
}

/// The extensions of an end-entity certificate of `profile` for the key `spki` and names `ids`,
/// issued by the CA `issuer_ca_name` whose key is `issuer_spki`.
pub fn end_entity(
    profile: Profile,
    spki: &SubjectPublicKeyInfoOwned,
    ids: &SubjectIds,
    issuer_spki: &SubjectPublicKeyInfoOwned,
    issuer_ca_name: &str,
    publication: &Publication,
) -> Result<Vec<Extension>, ProfileError> {
    let key = key_sig_alg(spki).map_err(|_| ProfileError::Key {
        profile,
        why: "unsupported public key algorithm",
    })?;
    let rows = rows(profile, key)?;
    if rows.fascn_required && ids.fascn.is_none() {
        return Err(ProfileError::Missing {
            profile,
            what: "the card's FASC-N (--fascn)",
        });
    }
    if rows.uuid_required && ids.uuid.is_none() {
        return Err(ProfileError::Missing {
            profile,
            what: "the card UUID (--uuid)",
        });
    }
    if rows.dns_required && ids.dns.is_empty() {
        return Err(ProfileError::Missing {
            profile,
            what: "at least one DNS name (--dns)",
        });
    }
    let mut exts = vec![aki_ext(issuer_spki)?, ski_ext(spki)?, ku(rows.key_usage)?];
    if let Some((critical, purposes)) = rows.eku {
        exts.push(eku(critical, purposes)?);
    }
    exts.push(policies_ext(profile.policies())?);
    let names = san_names(&rows.san.filter(ids))?;
    if !names.is_empty() {
        exts.push(ext(ce::ID_CE_SUBJECT_ALT_NAME, false, &names)?);
    }
    if profile == Profile::OcspSigner {
        exts.push(ext(oid::OCSP_NOCHECK, false, &Null)?);
    } else {
        exts.push(crldp_ext(&publication.crl_url(issuer_ca_name))?);
        exts.push(aia_ext(
            &publication.issued_to_url(issuer_ca_name),
            Some(&publication.ocsp_url()),
        )?);
    }
    Ok(exts)
}

/// Whether `e`, requested in a CSR, is acceptable for `profile`: subjectAltName for TLS (the CA
/// takes the names from it), keyUsage/extKeyUsage when they ask for no more than the profile grants
/// (the CA writes the profile's own values). Anything else is refused.
pub fn requestable(profile: Profile, e: &Extension, granted: &[Extension]) -> bool {
    let same_as_granted = |oid: ObjectIdentifier| {
        granted
            .iter()
            .any(|g| g.extn_id == oid && g.extn_value == e.extn_value)
    };
    match e.extn_id {
        o if o == ce::ID_CE_SUBJECT_ALT_NAME => {
            matches!(profile, Profile::TlsServer | Profile::TlsClient)
        }
        o if o == ce::ID_CE_KEY_USAGE || o == ce::ID_CE_EXT_KEY_USAGE => same_as_granted(o),
        _ => false,
    }
}
