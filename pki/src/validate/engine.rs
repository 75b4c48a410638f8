//! The state machine of RFC 5280 section 6.1 over one candidate path, and the glue that tries candidate
//! paths until one holds. Revocation (section 6.3) is checked for every certificate as it is processed;
//! a CRL signed by someone other than the certificate's issuer key gets its own path validated from the
//! same anchor, as 6.3.3 (f) requires.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::ControlFlow;

use const_oid::ObjectIdentifier;
use der::asn1::Any;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::pkix::name::GeneralName;

use super::cert::{ANY_EKU, ANY_POLICY, Cert};
use super::name::{ConstrainedName, EMAIL_ADDRESS, NameConstraintState, NameViolation};
use super::policy::{PolicyGraph, empty_set};
use super::{
    FailureReason, PathFailure, RevocationMode, RevocationStatus, TrustAnchor, ValidatedPath,
    ValidationError, ValidationInput, ValidationOptions, sig, unix_secs,
};
use crate::path::{CertPool, for_each_path};
use crate::revocation::crl::{ALL_REASONS, reason_bit};
use crate::revocation::{Crl, ocsp};

/// Paths tried per validation before giving up.
const MAX_PATHS: usize = 64;
/// Nesting of CRL-signer path validations.
const MAX_CRL_SIGNER_DEPTH: usize = 3;

/// The key that signs for the next certificate: a public key and, for DSA, inherited parameters.
#[derive(Clone)]
struct IssuerKey {
    spki: SubjectPublicKeyInfoOwned,
    params: Option<Any>,
    cert: Option<Cert>,
}

/// (hash of signed bytes, hash of key).
type SigKey = ([u8; 32], [u8; 32]);

pub(crate) struct Ctx<'a> {
    input: &'a ValidationInput<'a>,
    time: u64,
    pool: RefCell<CertPool>,
    /// Signature results keyed by (signed object TBS hash, key DER hash).
    sig_cache: RefCell<HashMap<SigKey, bool>>,
}

fn h(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

enum Revocation {
    Status(RevocationStatus),
    Revoked(String),
    Unknown(String),
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(input: &'a ValidationInput<'a>) -> Self {
        Ctx {
            input,
            time: unix_secs(input.time),
            pool: RefCell::new(CertPool::new(input.candidates)),
            sig_cache: RefCell::new(HashMap::new()),
        }
    }

    /// Verifies a signature, remembering the answer (CRLs are checked once per path, paths share certs).
    fn verify(
        &self,
        alg: &spki::AlgorithmIdentifierOwned,
        signature: &[u8],
        tbs: &[u8],
        key: &IssuerKey,
    ) -> Result<(), sig::SigError> {
        let spki_der = der::Encode::to_der(&key.spki).unwrap_or_default();
        let mut kh = spki_der;
        if let Some(p) = &key.params {
            kh.extend(der::Encode::to_der(p).unwrap_or_default());
        }
        let k = (h(tbs), h(&kh));
        if let Some(ok) = self.sig_cache.borrow().get(&k) {
            return if *ok {
                Ok(())
            } else {
                Err(sig::SigError::Invalid)
            };
        }
        let r = sig::verify(alg, signature, tbs, &key.spki, key.params.as_ref());
        self.sig_cache.borrow_mut().insert(k, r.is_ok());
        r
    }

    /// Builds candidate paths from `target` (to `only_anchor` when given) and validates each.
    pub(crate) fn build_and_validate(
        &self,
        target: &Cert,
        only_anchor: Option<&TrustAnchor>,
        options: &ValidationOptions,
        depth: usize,
    ) -> Result<ValidatedPath, ValidationError> {
        let anchors: Vec<TrustAnchor> = match only_anchor {
            Some(a) => vec![a.clone()],
            None => self.input.anchors.to_vec(),
        };
        let mut best: Option<Box<PathFailure>> = None;
        let mut result = None;
        let mut pool = self.pool.borrow().clone();
        let tried = for_each_path(
            target,
            &anchors,
            &mut pool,
            options.max_depth.max(1),
            MAX_PATHS,
            self.input.fetcher,
            &mut |anchor, path| match self.validate_path(anchor, path, options, depth) {
                Ok(v) => {
                    result = Some(v);
                    ControlFlow::Break(())
                }
                Err(f) => {
                    // Keep the failure that got furthest from the anchor.
                    let better = best.as_ref().is_none_or(|b| {
                        f.index > b.index && f.reason != FailureReason::NameChaining
                    });
                    if better {
                        best = Some(f);
                    }
                    ControlFlow::Continue(())
                }
            },
        );
        // Keep what the fetcher brought in for later paths (CRL signers).
        if pool.len() > self.pool.borrow().len() {
            *self.pool.borrow_mut() = pool;
        }
        if let Some(v) = result {
            return Ok(v);
        }
        match best {
            Some(f) => Err(ValidationError::Invalid {
                failure: f,
                paths_tried: tried,
            }),
            None => Err(ValidationError::NoPath {
                target: target.subject_string(),
                issuer: target.issuer_string(),
            }),
        }
    }

    /// RFC 5280 6.1 over one path.
    fn validate_path(
        &self,
        anchor: &TrustAnchor,
        path: &[Cert],
        opts: &ValidationOptions,
        depth: usize,
    ) -> Result<ValidatedPath, Box<PathFailure>> {
        let n = path.len();
        let fail = |i: usize, reason: FailureReason| {
            Box::new(PathFailure {
                index: i,
                path_len: n,
                subject: path.get(i).map(Cert::subject_string).unwrap_or_default(),
                serial: path.get(i).map(Cert::serial_hex).unwrap_or_default(),
                reason,
            })
        };
        if n > opts.max_depth {
            return Err(fail(n - 1, FailureReason::TooDeep(opts.max_depth)));
        }
        // 6.1.2 initialisation.
        let mut graph = Some(PolicyGraph::new());
        let mut nc = NameConstraintState::default();
        nc.add_subtrees(
            opts.permitted_subtrees.clone(),
            opts.excluded_subtrees.clone(),
        );
        let counter = |inhibit: bool| if inhibit { 0 } else { n + 1 };
        let mut explicit_policy = counter(opts.explicit_policy);
        let mut inhibit_any = counter(opts.inhibit_any_policy);
        let mut policy_mapping = counter(opts.inhibit_policy_mapping);
        let mut key = IssuerKey {
            spki: anchor.spki().clone(),
            params: sig::dsa_parameters(anchor.spki()),
            cert: anchor.cert().cloned(),
        };
        let mut working_issuer = anchor.norm_name().clone();
        let mut max_path_length = n;
        let mut statuses = Vec::with_capacity(n);

        for (idx, cert) in path.iter().enumerate() {
            let last = idx + 1 == n;
            let x = cert.x509();
            let tbs = x.tbs_certificate();
            // (a)(1) signature.
            if opts.require_matching_signature_algorithms
                && tbs.signature() != x.signature_algorithm()
            {
                return Err(fail(idx, FailureReason::SignatureAlgorithmMismatch));
            }
            self.verify(
                x.signature_algorithm(),
                x.signature().raw_bytes(),
                cert.tbs_der(),
                &key,
            )
            .map_err(|e| fail(idx, FailureReason::Signature(e)))?;
            // (a)(2) validity.
            let (nb, na) = cert.validity_secs();
            if self.time < nb {
                return Err(fail(idx, FailureReason::NotYetValid));
            }
            if self.time > na {
                return Err(fail(idx, FailureReason::Expired));
            }
            // (a)(4) name chaining (checked before revocation: a wrong issuer makes the CRL meaningless).
            if cert.issuer() != &working_issuer {
                return Err(fail(idx, FailureReason::NameChaining));
            }
            // (a)(3) revocation.
            match self.revocation(cert, &key, anchor, opts, depth) {
                Revocation::Status(s) => statuses.push(s),
                Revocation::Revoked(r) => return Err(fail(idx, FailureReason::Revoked(r))),
                Revocation::Unknown(why) => {
                    if opts.revocation == RevocationMode::Require {
                        return Err(fail(idx, FailureReason::RevocationUnknown(why)));
                    }
                    tracing::warn!(subject = %cert.subject_string(), reason = %why,
                        "revocation status unknown; accepted (best effort)");
                    statuses.push(RevocationStatus::Unknown);
                }
            }
            // (b)(c) name constraints.
            if last || !cert.is_self_issued() {
                check_names(cert, &nc).map_err(|r| fail(idx, r))?;
            }
            // (d)-(f) policies.
            if let Some(g) = graph.as_mut() {
                match &cert.ext().policies {
                    Some(p) => {
                        let oids: Vec<ObjectIdentifier> = p.iter().map(|pi| pi.oid).collect();
                        let any_allowed = inhibit_any > 0 || (!last && cert.is_self_issued());
                        if !g.add_certificate(&oids, any_allowed) {
                            graph = None;
                        }
                    }
                    None => graph = None,
                }
            }
            if explicit_policy == 0 && graph.is_none() {
                return Err(fail(idx, FailureReason::NoValidPolicy));
            }
            let ext = cert.ext();
            if !last {
                // 6.1.4 (a)-(b) policy mappings.
                if let Some(maps) = &ext.policy_mappings {
                    if maps
                        .iter()
                        .any(|(a, b)| *a == ANY_POLICY || *b == ANY_POLICY)
                    {
                        return Err(fail(idx, FailureReason::AnyPolicyMapping));
                    }
                    if let Some(g) = graph.as_mut() {
                        if !g.apply_mappings(maps, policy_mapping > 0) {
                            graph = None;
                        }
                    }
                }
                // (c)-(f) working issuer and key.
                working_issuer = cert.subject().clone();
                let spki = tbs.subject_public_key_info().clone();
                let params = if sig::dsa_without_parameters(&spki) {
                    key.params.clone()
                } else {
                    sig::dsa_parameters(&spki)
                };
                key = IssuerKey {
                    spki,
                    params,
                    cert: Some(cert.clone()),
                };
                // (g) name constraints.
                if let Some(c) = &ext.name_constraints {
                    nc.add(c.permitted_subtrees.as_ref(), c.excluded_subtrees.as_ref());
                }
                // (h) counters.
                if !cert.is_self_issued() {
                    explicit_policy = explicit_policy.saturating_sub(1);
                    policy_mapping = policy_mapping.saturating_sub(1);
                    inhibit_any = inhibit_any.saturating_sub(1);
                }
                // (i) policy constraints.
                if let Some(pc) = &ext.policy_constraints {
                    if let Some(r) = pc.require_explicit_policy {
                        explicit_policy = explicit_policy.min(r as usize);
                    }
                    if let Some(m) = pc.inhibit_policy_mapping {
                        policy_mapping = policy_mapping.min(m as usize);
                    }
                }
                // (j) inhibitAnyPolicy.
                if let Some(v) = ext.inhibit_any_policy {
                    inhibit_any = inhibit_any.min(v as usize);
                }
                // (k) a CA.
                if cert.version() < 3 || !cert.is_ca() {
                    return Err(fail(idx, FailureReason::NotCa));
                }
                // (l)-(m) path length.
                if !cert.is_self_issued() {
                    if max_path_length == 0 {
                        return Err(fail(idx, FailureReason::PathLength));
                    }
                    max_path_length -= 1;
                }
                if let Some(pl) = ext.basic.and_then(|b| b.path_len) {
                    max_path_length = max_path_length.min(usize::from(pl));
                }
                // (n) key usage.
                if ext.key_usage.is_some_and(|k| !k.key_cert_sign) {
                    return Err(fail(idx, FailureReason::KeyUsage));
                }
            }
            // (o) / 6.1.5 (f): unrecognised critical extensions.
            if let Some(oid) = ext.unknown_critical.first() {
                return Err(fail(
                    idx,
                    FailureReason::UnknownCriticalExtension(oid.to_string()),
                ));
            }
        }
        // 6.1.5 wrap-up.
        let ee_idx = n - 1;
        let ee = &path[ee_idx];
        explicit_policy = explicit_policy.saturating_sub(1);
        if ee
            .ext()
            .policy_constraints
            .and_then(|p| p.require_explicit_policy)
            == Some(0)
        {
            explicit_policy = 0;
        }
        let valid = match &graph {
            Some(g) => g.user_constrained(&opts.initial_policy_set),
            None => empty_set(),
        };
        if explicit_policy == 0 && valid.is_empty() {
            return Err(fail(ee_idx, FailureReason::NoValidPolicy));
        }
        check_ee(ee, opts).map_err(|r| fail(ee_idx, r))?;
        Ok(ValidatedPath {
            anchor: anchor.clone(),
            certs: path.to_vec(),
            valid_policy_set: valid,
            revocation: statuses,
        })
    }

    /// RFC 5280 6.3: the revocation status of `cert`, whose issuer key is `key`.
    fn revocation(
        &self,
        cert: &Cert,
        key: &IssuerKey,
        anchor: &TrustAnchor,
        opts: &ValidationOptions,
        depth: usize,
    ) -> Revocation {
        if opts.revocation == RevocationMode::Off {
            return Revocation::Status(RevocationStatus::NotChecked);
        }
        // OCSP first: a signed, fresh answer about this very certificate.
        let issuer_spki = der::Encode::to_der(&key.spki).unwrap_or_default();
        for resp in self.input.ocsp {
            match resp.status_for(
                cert,
                &key.spki,
                key.cert.as_ref(),
                self.time,
                &|alg, s, tbs, spki| {
                    let k = IssuerKey {
                        spki: spki.clone(),
                        params: None,
                        cert: None,
                    };
                    self.verify(alg, s, tbs, &k).is_ok()
                },
            ) {
                Some(ocsp::CertStatus::Good) => {
                    return Revocation::Status(RevocationStatus::GoodByOcsp);
                }
                Some(ocsp::CertStatus::Revoked(r)) => return Revocation::Revoked(r),
                Some(ocsp::CertStatus::Unknown) | None => {}
            }
        }
        let _ = issuer_spki;
        self.crl_status(cert, key, anchor, opts, depth)
    }

    fn crl_status(
        &self,
        cert: &Cert,
        key: &IssuerKey,
        anchor: &TrustAnchor,
        opts: &ValidationOptions,
        depth: usize,
    ) -> Revocation {
        let dps: Vec<Option<&x509_cert::ext::pkix::crl::dp::DistributionPoint>> =
            match &cert.ext().crl_dps {
                Some(v) => v.iter().map(Some).collect(),
                None => vec![None],
            };
        let mut complete: Vec<&Crl> = self
            .input
            .crls
            .iter()
            .filter(|c| !c.is_delta() && !c.has_unknown_critical())
            .collect();
        complete.sort_by_key(|c| std::cmp::Reverse(c.this_update()));
        let mut mask = 0u16;
        let mut why = String::from("no CRL or OCSP response covers it");
        for dp in dps {
            let dp_reasons = dp
                .and_then(|d| d.reasons)
                .map_or(ALL_REASONS, |r| r.bits() & ALL_REASONS);
            for crl in &complete {
                if mask == ALL_REASONS {
                    break;
                }
                if !crl.covers(cert, dp) {
                    continue;
                }
                if crl.this_update() > self.time {
                    why = "the covering CRL is not yet valid".into();
                    continue;
                }
                let interim = crl.reasons() & dp_reasons;
                if interim & !mask == 0 {
                    continue;
                }
                let Some(signer) = self.crl_signer(crl, cert, key, anchor, depth) else {
                    why = format!("no valid signer for the CRL of \"{}\"", crl.issuer_string());
                    continue;
                };
                let past = crl.next_update().is_some_and(|nu| nu < self.time);
                let stale = crl
                    .next_update()
                    .is_some_and(|nu| nu.saturating_add(opts.crl_grace_secs) < self.time);
                if past && !stale {
                    tracing::warn!(issuer = %crl.issuer_string(),
                        "CRL past nextUpdate accepted within the configured grace period");
                }
                let delta = if opts.use_deltas {
                    self.find_delta(crl, &signer)
                } else {
                    None
                };
                if stale && delta.is_none() {
                    why = format!(
                        "the CRL of \"{}\" is past its nextUpdate",
                        crl.issuer_string()
                    );
                    continue;
                }
                let entry = delta
                    .and_then(|d| d.lookup(cert))
                    .or_else(|| crl.lookup(cert));
                if let Some(e) = entry {
                    match e.reason {
                        Some(x509_cert::ext::pkix::CrlReason::RemoveFromCRL) => {}
                        r => {
                            let reason = r.map_or("unspecified".to_string(), |r| format!("{r:?}"));
                            let _ = reason_bit;
                            return Revocation::Revoked(format!(
                                "{reason}, on the CRL of \"{}\"",
                                crl.issuer_string()
                            ));
                        }
                    }
                }
                mask |= interim;
            }
        }
        if mask == ALL_REASONS {
            Revocation::Status(RevocationStatus::GoodByCrl)
        } else if mask != 0 {
            Revocation::Unknown("the CRLs found do not cover every revocation reason".into())
        } else {
            Revocation::Unknown(why)
        }
    }

    /// The newest usable delta CRL for a complete CRL, signed by the same key.
    fn find_delta(&self, complete: &Crl, signer: &IssuerKey) -> Option<&Crl> {
        let mut deltas: Vec<&Crl> = self
            .input
            .crls
            .iter()
            .filter(|d| d.is_delta() && !d.has_unknown_critical() && complete.accepts_delta(d))
            .filter(|d| {
                d.this_update() <= self.time && d.next_update().is_none_or(|n| n >= self.time)
            })
            .filter(|d| self.verify_crl(d, signer))
            .collect();
        deltas.sort_by_key(|d| std::cmp::Reverse(d.this_update()));
        deltas.first().copied()
    }

    fn verify_crl(&self, crl: &Crl, key: &IssuerKey) -> bool {
        let x = crl.x509();
        (!self.input.options.require_matching_signature_algorithms
            || x.tbs_cert_list.signature == x.signature_algorithm)
            && self
                .verify(
                    &x.signature_algorithm,
                    x.signature.raw_bytes(),
                    crl.tbs_der(),
                    key,
                )
                .is_ok()
    }

    /// Finds and validates the key that signed `crl` (6.3.3 f): the certificate's issuer key when the
    /// CRL is direct and that key may sign CRLs; otherwise a certificate of the CRL issuer with a valid
    /// path from the same anchor.
    fn crl_signer(
        &self,
        crl: &Crl,
        cert: &Cert,
        key: &IssuerKey,
        anchor: &TrustAnchor,
        depth: usize,
    ) -> Option<IssuerKey> {
        let may_sign =
            |c: Option<&Cert>| c.is_none_or(|c| c.ext().key_usage.is_none_or(|k| k.crl_sign));
        if crl.issuer() == cert.issuer() && may_sign(key.cert.as_ref()) && self.verify_crl(crl, key)
        {
            return Some(key.clone());
        }
        // The anchor itself, when it issued the CRL.
        if crl.issuer() == anchor.norm_name() {
            let k = IssuerKey {
                spki: anchor.spki().clone(),
                params: sig::dsa_parameters(anchor.spki()),
                cert: anchor.cert().cloned(),
            };
            if may_sign(anchor.cert()) && self.verify_crl(crl, &k) {
                return Some(k);
            }
        }
        if depth >= MAX_CRL_SIGNER_DEPTH {
            return None;
        }
        let candidates: Vec<Cert> = self
            .pool
            .borrow()
            .by_subject(crl.issuer())
            .into_iter()
            .cloned()
            .collect();
        for c in candidates {
            if !may_sign(Some(&c)) {
                continue;
            }
            if &c == cert {
                // A CRL issuer's certificate covered by its own CRL (PKITS 4.14.30): the key is the one
                // whose path is being validated right now, so it is trusted exactly as far as that path.
                let k = IssuerKey {
                    spki: c.x509().tbs_certificate().subject_public_key_info().clone(),
                    params: key.params.clone(),
                    cert: Some(c.clone()),
                };
                if depth > 0 && self.verify_crl(crl, &k) {
                    return Some(k);
                }
                continue;
            }
            let spki = c.x509().tbs_certificate().subject_public_key_info().clone();
            let params = if sig::dsa_without_parameters(&spki) {
                key.params.clone()
            } else {
                sig::dsa_parameters(&spki)
            };
            let k = IssuerKey {
                spki,
                params,
                cert: Some(c.clone()),
            };
            if !self.verify_crl(crl, &k) {
                continue;
            }
            let signer_opts = ValidationOptions {
                revocation: self.input.options.revocation,
                use_deltas: self.input.options.use_deltas,
                crl_grace_secs: self.input.options.crl_grace_secs,
                require_matching_signature_algorithms: self
                    .input
                    .options
                    .require_matching_signature_algorithms,
                ..ValidationOptions::default()
            };
            if self
                .build_and_validate(&c, Some(anchor), &signer_opts, depth + 1)
                .is_ok()
            {
                return Some(k);
            }
        }
        None
    }
}

/// Name constraints on the subject DN, its emailAddress attributes and the subjectAltName.
fn check_names(cert: &Cert, nc: &NameConstraintState) -> Result<(), FailureReason> {
    if nc.is_empty() {
        return Ok(());
    }
    let mut names: Vec<(ConstrainedName, String)> = Vec::new();
    if !cert.subject().is_empty() {
        names.push((
            ConstrainedName::Dn(cert.subject().clone()),
            cert.subject_string(),
        ));
        for e in cert.subject().text_values(&EMAIL_ADDRESS) {
            names.push((ConstrainedName::Email(e.clone()), e));
        }
    }
    for gn in cert.ext().san.iter().flatten() {
        names.push((ConstrainedName::from_general(gn), describe_gn(gn)));
    }
    for (n, shown) in names {
        match nc.check(&n) {
            Ok(()) => {}
            Err(NameViolation::Excluded(subtree)) => {
                return Err(FailureReason::NameExcluded {
                    name: shown,
                    subtree,
                });
            }
            Err(NameViolation::NotPermitted(subtrees)) => {
                return Err(FailureReason::NameNotPermitted {
                    name: shown,
                    subtrees,
                });
            }
        }
    }
    Ok(())
}

/// Shows a GeneralName for messages.
pub(crate) fn describe_gn(gn: &GeneralName) -> String {
    match gn {
        GeneralName::DirectoryName(n) => n.to_string(),
        GeneralName::Rfc822Name(s) => format!("email:{s}"),
        GeneralName::DnsName(s) => format!("DNS:{s}"),
        GeneralName::UniformResourceIdentifier(s) => format!("URI:{s}"),
        GeneralName::IpAddress(o) => {
            let b = o.as_bytes();
            match b.len() {
                4 => <[u8; 4]>::try_from(b)
                    .map(|a| format!("IP:{}", std::net::IpAddr::from(a)))
                    .unwrap_or_default(),
                16 => <[u8; 16]>::try_from(b)
                    .map(|a| format!("IP:{}", std::net::IpAddr::from(a)))
                    .unwrap_or_default(),
                _ => "IP:?".into(),
            }
        }
        GeneralName::OtherName(o) => format!("otherName:{}", o.type_id),
        GeneralName::RegisteredId(o) => format!("RID:{o}"),
        GeneralName::EdiPartyName(_) => "ediPartyName".into(),
    }
}

/// The relying party's extra checks on the end entity: EKU and names.
fn check_ee(ee: &Cert, opts: &ValidationOptions) -> Result<(), FailureReason> {
    if let Some(eku) = &ee.ext().eku {
        for want in &opts.required_eku {
            if !eku.contains(want) && !eku.contains(&ANY_EKU) {
                return Err(FailureReason::ExtendedKeyUsage(want.to_string()));
            }
        }
    }
    for want in &opts.required_names {
        let wanted = ConstrainedName::from_general(want);
        let have = ee.ext().san.iter().flatten().any(|gn| {
            let got = ConstrainedName::from_general(gn);
            match (&wanted, &got) {
                (ConstrainedName::Dns(w), ConstrainedName::Dns(g)) => dns_name_matches(g, w),
                (ConstrainedName::Email(w), ConstrainedName::Email(g)) => w.eq_ignore_ascii_case(g),
                _ => wanted == got,
            }
        });
        if !have {
            return Err(FailureReason::NameMismatch(describe_gn(want)));
        }
    }
    Ok(())
}

/// A presented dNSName (possibly `*.example.com`) against a reference name.
fn dns_name_matches(presented: &str, reference: &str) -> bool {
    let p = presented.trim_end_matches('.').to_ascii_lowercase();
    let r = reference.trim_end_matches('.').to_ascii_lowercase();
    if let Some(rest) = p.strip_prefix("*.") {
        return r
            .split_once('.')
            .is_some_and(|(label, tail)| !label.is_empty() && tail == rest);
    }
    p == r
}
