//! Certificate, CRL, PKCS #7 bundle and OCSP parsing of qsi-pki: no panic on any input, and whatever
//! parses can be validated (as its own anchor's subordinate) without panicking either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qsi_pki::revocation::{Crl, OcspResponse};
use qsi_pki::validate::{Cert, TrustAnchor, ValidationInput, ValidationOptions, load_certs, validate};

fuzz_target!(|data: &[u8]| {
    let certs = load_certs(data).unwrap_or_default();
    let crls = Crl::load(data).unwrap_or_default();
    let _ = qsi_pki::path::bundle::crls_from_p7c(data);
    let _ = OcspResponse::from_der(data);
    if let Ok(c) = Cert::from_der(data) {
        let _ = (c.subject_string(), c.crl_uris(), c.ca_issuers_uris(), c.validity_secs());
        let anchors = [TrustAnchor::from_cert(c.clone())];
        let opts = ValidationOptions::default();
        let mut input = ValidationInput::new(&anchors, &c, std::time::SystemTime::UNIX_EPOCH, &opts);
        input.candidates = &certs;
        input.crls = &crls;
        let _ = validate(&input);
    }
});
