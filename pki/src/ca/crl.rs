//! CRLs (RFC 5280 section 5; CP-SSP 2.2 worksheet "CRL Profile"): v2, authorityKeyIdentifier and
//! cRLNumber (non-critical), nextUpdate always present, reasonCode entry extension (absent for
//! `unspecified`, as RFC 5280 5.3.1 recommends).

use crate::ca::db::Revocation;
use crate::ca::issue::{IssueError, to_time};
use crate::ca::signer::CaSigner;
use crate::profiles::key_id;
use const_oid::db::rfc5280 as ce;
use der::asn1::{BitString, OctetString};
use der::{Decode, Encode};
use std::time::{Duration, SystemTime};
use x509_cert::Certificate;
use x509_cert::certificate::Version;
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, CrlReason};
use x509_cert::serial_number::SerialNumber;

fn reason(code: u32) -> Option<CrlReason> {
    Some(match code {
        1 => CrlReason::KeyCompromise,
        2 => CrlReason::CaCompromise,
        3 => CrlReason::AffiliationChanged,
        4 => CrlReason::Superseded,
        5 => CrlReason::CessationOfOperation,
        6 => CrlReason::CertificateHold,
        9 => CrlReason::PrivilegeWithdrawn,
        10 => CrlReason::AaCompromise,
        _ => return None,
    })
}

/// Parses a reason name as the CLI takes it (RFC 5280 names, kebab or camel case) into its code.
pub fn reason_code(name: &str) -> Option<u32> {
    let n = name.to_ascii_lowercase().replace(['-', '_'], "");
    Some(match n.as_str() {
        "unspecified" => 0,
        "keycompromise" => 1,
        "cacompromise" => 2,
        "affiliationchanged" => 3,
        "superseded" => 4,
        "cessationofoperation" => 5,
        "certificatehold" => 6,
        "privilegewithdrawn" => 9,
        "aacompromise" => 10,
        _ => return None,
    })
}

fn ext<T: Encode>(oid: const_oid::ObjectIdentifier, v: &T) -> Result<Extension, IssueError> {
    Ok(Extension {
        extn_id: oid,
        critical: false,
        extn_value: OctetString::new(v.to_der()?)?,
    })
}

/// Builds and signs a CRL for `ca` listing `revoked` (serial as DER INTEGER content bytes).
pub fn build_crl(
    ca: &Certificate,
    signer: &dyn CaSigner,
    number: u64,
    revoked: &[(Vec<u8>, Revocation)],
    this_update: SystemTime,
    next_update: SystemTime,
) -> Result<CertificateList, IssueError> {
    let aki = AuthorityKeyIdentifier {
        key_identifier: Some(OctetString::new(key_id(
            ca.tbs_certificate().subject_public_key_info(),
        )?)?),
        authority_cert_issuer: None,
        authority_cert_serial_number: None,
    };
    let number = der::asn1::Uint::new(&number.to_be_bytes())?;
    let crl_exts = vec![
        ext(ce::ID_CE_AUTHORITY_KEY_IDENTIFIER, &aki)?,
        ext(ce::ID_CE_CRL_NUMBER, &number)?,
    ];
    let mut entries: Vec<RevokedCert> = Vec::with_capacity(revoked.len());
    for (serial, r) in revoked {
        let entry_exts = match reason(r.reason) {
            Some(code) => Some(vec![ext(ce::ID_CE_CRL_REASONS, &code)?]),
            None => None,
        };
        entries.push(RevokedCert {
            serial_number: SerialNumber::new(serial)?,
            revocation_date: to_time(SystemTime::UNIX_EPOCH + Duration::from_secs(r.time))?,
            crl_entry_extensions: entry_exts,
        });
    }
    let tbs: TbsCertList = TbsCertList {
        version: Version::V2,
        signature: signer.algorithm().algorithm_identifier(),
        issuer: ca.tbs_certificate().subject().clone(),
        this_update: to_time(this_update)?,
        next_update: Some(to_time(next_update)?),
        revoked_certificates: (!entries.is_empty()).then_some(entries),
        crl_extensions: Some(crl_exts),
    };
    let sig = signer.sign(&tbs.to_der()?)?;
    let crl = CertificateList {
        tbs_cert_list: tbs,
        signature_algorithm: signer.algorithm().algorithm_identifier(),
        signature: BitString::from_bytes(&sig)?,
    };
    // Round-trip through the decoder so what we publish is what we parse.
    Ok(CertificateList::from_der(&crl.to_der()?)?)
}
