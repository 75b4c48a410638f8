//! Parsed CRLs and the scope rules of RFC 5280 section 6.3.3 (b): which CRL may speak for which
//! certificate, through which distribution point, for which reasons.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use const_oid::db::rfc5280 as oids;
use der::{Decode, Encode};
use x509_cert::crl::CertificateList;
use x509_cert::ext::pkix::crl::dp::{DistributionPoint, IssuingDistributionPoint, Reasons};
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{BaseCrlNumber, CrlNumber, CrlReason};
use x509_cert::name::Name;

use crate::validate::cert::{Cert, ParseError, tbs_range};
use crate::validate::name::NormName;

/// All nine reasons of RFC 5280's ReasonFlags except `unused`, as a bit mask.
pub const ALL_REASONS: u16 = 0x1fe;

/// One revoked entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The reason code, if any.
    pub reason: Option<CrlReason>,
    /// Seconds since the epoch of revocationDate.
    pub revoked_at: u64,
    /// An entry extension marked critical that we do not understand.
    pub unknown_critical: bool,
}

struct Inner {
    der: Vec<u8>,
    tbs: std::ops::Range<usize>,
    crl: CertificateList,
    issuer: NormName,
    this_update: u64,
    next_update: Option<u64>,
    crl_number: Option<Vec<u8>>,
    base_crl_number: Option<Vec<u8>>,
    idp: Option<IssuingDistributionPoint>,
    idp_der: Option<Vec<u8>>,
    has_freshest: bool,
    unknown_critical: bool,
    /// (certificate issuer, serial as encoded: DER integers are minimal, so equal bytes = equal values).
    entries: HashMap<(NormName, Vec<u8>), Entry>,
}

/// A parsed CRL. Cheap to clone.
#[derive(Clone)]
pub struct Crl(Arc<Inner>);

impl fmt::Debug for Crl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crl")
            .field("issuer", &self.issuer_string())
            .field("this_update", &self.0.this_update)
            .field("delta", &self.is_delta())
            .finish()
    }
}

/// Big-endian unsigned bytes without leading zeros.
pub(crate) fn strip_zeros(b: &[u8]) -> Vec<u8> {
    let i = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    b[i..].to_vec()
}

/// Compares two big-endian unsigned integers.
fn cmp_uint(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let (a, b) = (strip_zeros(a), strip_zeros(b));
    a.len().cmp(&b.len()).then_with(|| a.cmp(&b))
}

impl Crl {
    /// Parses a DER CRL.
    pub fn from_der(der: &[u8]) -> Result<Self, ParseError> {
        let crl = CertificateList::from_der(der).map_err(ParseError::Crl)?;
        let tbs = tbs_range(der).map_err(ParseError::Crl)?;
        let t = &crl.tbs_cert_list;
        let issuer = NormName::new(&t.issuer);
        let mut crl_number = None;
        let mut base_crl_number = None;
        let mut idp = None;
        let mut idp_der = None;
        let mut has_freshest = false;
        let mut unknown_critical = false;
        for e in t.crl_extensions.iter().flatten() {
            let v = e.extn_value.as_bytes();
            match e.extn_id {
                oids::ID_CE_CRL_NUMBER => {
                    let n = CrlNumber::from_der(v).map_err(ParseError::Crl)?;
                    crl_number = Some(n.0.as_bytes().to_vec());
                }
                oids::ID_CE_DELTA_CRL_INDICATOR => {
                    let n = BaseCrlNumber::from_der(v).map_err(ParseError::Crl)?;
                    base_crl_number = Some(n.0.as_bytes().to_vec());
                }
                oids::ID_CE_ISSUING_DISTRIBUTION_POINT => {
                    idp = Some(IssuingDistributionPoint::from_der(v).map_err(ParseError::Crl)?);
                    idp_der = Some(v.to_vec());
                }
                oids::ID_CE_FRESHEST_CRL => has_freshest = true,
                oids::ID_CE_AUTHORITY_KEY_IDENTIFIER | oids::ID_CE_ISSUER_ALT_NAME => {}
                _ => unknown_critical |= e.critical,
            }
        }
        let indirect = idp.as_ref().is_some_and(|i| i.indirect_crl);
        let mut entries = HashMap::new();
        let mut current_issuer = issuer.clone();
        for rc in t.revoked_certificates.iter().flatten() {
            let mut entry = Entry {
                reason: None,
                revoked_at: rc.revocation_date.to_unix_duration().as_secs(),
                unknown_critical: false,
            };
            for e in rc.crl_entry_extensions.iter().flatten() {
                let v = e.extn_value.as_bytes();
                match e.extn_id {
                    oids::ID_CE_CRL_REASONS => {
                        entry.reason = Some(CrlReason::from_der(v).map_err(ParseError::Crl)?);
                    }
                    oids::ID_CE_CERTIFICATE_ISSUER if indirect => {
                        let names = Vec::<GeneralName>::from_der(v).map_err(ParseError::Crl)?;
                        if let Some(GeneralName::DirectoryName(n)) = names
                            .iter()
                            .find(|g| matches!(g, GeneralName::DirectoryName(_)))
                        {
                            current_issuer = NormName::new(n);
                        }
                    }
                    oids::ID_CE_INVALIDITY_DATE | oids::ID_CE_HOLD_INSTRUCTION_CODE => {}
                    _ => entry.unknown_critical |= e.critical,
                }
            }
            unknown_critical |= entry.unknown_critical;
            entries.insert(
                (current_issuer.clone(), rc.serial_number.as_bytes().to_vec()),
                entry,
            );
        }
        Ok(Crl(Arc::new(Inner {
            der: der.to_vec(),
            tbs,
            this_update: t.this_update.to_unix_duration().as_secs(),
            next_update: t.next_update.map(|n| n.to_unix_duration().as_secs()),
            issuer,
            crl_number,
            base_crl_number,
            idp,
            idp_der,
            has_freshest,
            unknown_critical,
            entries,
            crl,
        })))
    }

    /// Loads one or more CRLs from PEM or DER.
    pub fn load(bytes: &[u8]) -> Result<Vec<Crl>, ParseError> {
        crate::validate::cert::pem_or_der(bytes, "X509 CRL")?
            .iter()
            .map(|d| Crl::from_der(d))
            .collect()
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.0.der
    }
    /// The signed part.
    pub fn tbs_der(&self) -> &[u8] {
        self.0.der.get(self.0.tbs.clone()).unwrap_or_default()
    }
    /// The x509-cert view.
    pub fn x509(&self) -> &CertificateList {
        &self.0.crl
    }
    /// Normalised issuer.
    pub fn issuer(&self) -> &NormName {
        &self.0.issuer
    }
    /// The issuer as an x509 Name.
    pub fn issuer_name(&self) -> &Name {
        &self.0.crl.tbs_cert_list.issuer
    }
    /// The issuer in RFC 4514 form.
    pub fn issuer_string(&self) -> String {
        self.0.crl.tbs_cert_list.issuer.to_string()
    }
    /// thisUpdate, seconds since the epoch.
    pub fn this_update(&self) -> u64 {
        self.0.this_update
    }
    /// nextUpdate, seconds since the epoch.
    pub fn next_update(&self) -> Option<u64> {
        self.0.next_update
    }
    /// True for a delta CRL (deltaCRLIndicator present).
    pub fn is_delta(&self) -> bool {
        self.0.base_crl_number.is_some()
    }
    /// The cRLNumber.
    pub fn crl_number(&self) -> Option<&[u8]> {
        self.0.crl_number.as_deref()
    }
    /// True when the CRL carries a critical extension we do not process (it must not be used).
    pub fn has_unknown_critical(&self) -> bool {
        self.0.unknown_critical
    }
    /// True when the CRL points to delta CRLs (freshestCRL).
    pub fn has_freshest(&self) -> bool {
        self.0.has_freshest
    }
    /// The issuing distribution point.
    pub fn idp(&self) -> Option<&IssuingDistributionPoint> {
        self.0.idp.as_ref()
    }
    /// True for an indirect CRL.
    pub fn is_indirect(&self) -> bool {
        self.0.idp.as_ref().is_some_and(|i| i.indirect_crl)
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.entries.len()
    }
    /// True when the CRL lists nothing.
    pub fn is_empty(&self) -> bool {
        self.0.entries.is_empty()
    }

    /// The entry for a certificate, matched on its issuer and serial (indirect CRLs name other issuers).
    pub fn lookup(&self, cert: &Cert) -> Option<&Entry> {
        self.0
            .entries
            .get(&(cert.issuer().clone(), cert.serial().to_vec()))
    }

    /// True when `delta` can be applied on top of this complete CRL (5280 5.2.4 and 6.3.3 c): same issuer
    /// and scope, and this CRL is at least as new as the delta's base.
    pub fn accepts_delta(&self, delta: &Crl) -> bool {
        let (Some(base), Some(num)) = (delta.0.base_crl_number.as_deref(), self.crl_number())
        else {
            return false;
        };
        delta.issuer() == self.issuer()
            && delta.0.idp_der == self.0.idp_der
            && cmp_uint(num, base) != std::cmp::Ordering::Less
            && delta
                .crl_number()
                .is_some_and(|d| cmp_uint(d, num) == std::cmp::Ordering::Greater)
    }

    /// The reasons this CRL covers (onlySomeReasons, or all).
    pub fn reasons(&self) -> u16 {
        self.0
            .idp
            .as_ref()
            .and_then(|i| i.only_some_reasons)
            .map_or(ALL_REASONS, |r| r.bits() & ALL_REASONS)
    }

    /// RFC 5280 6.3.3 (b): does this CRL's scope cover `cert` as listed under distribution point `dp`
    /// (None: the certificate has no CRL distribution point extension)? `dp_issuer` is the name the DP
    /// expects as CRL issuer (its cRLIssuer, or the certificate's issuer).
    pub fn covers(&self, cert: &Cert, dp: Option<&DistributionPoint>) -> bool {
        let crl_issuer_names: Option<Vec<NormName>> = dp.and_then(|d| {
            d.crl_issuer.as_ref().map(|names| {
                names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DirectoryName(n) => Some(NormName::new(n)),
                        _ => None,
                    })
                    .collect()
            })
        });
        // (b)(1): the issuer.
        match &crl_issuer_names {
            Some(names) => {
                if !names.iter().any(|n| n == self.issuer()) || !self.is_indirect() {
                    return false;
                }
            }
            None => {
                if self.issuer() != cert.issuer() {
                    return false;
                }
            }
        }
        // (b)(2): the issuing distribution point.
        if let Some(idp) = &self.0.idp {
            if let Some(idp_name) = &idp.distribution_point {
                let idp_names = dp_names(idp_name, self.issuer_name());
                let cert_names: Vec<DpName> = match dp {
                    Some(d) => match &d.distribution_point {
                        Some(n) => {
                            // A relative name hangs under the DP's cRLIssuer when it has one.
                            let base = d.crl_issuer.iter().flatten().find_map(|g| match g {
                                GeneralName::DirectoryName(n) => Some(n),
                                _ => None,
                            });
                            dp_names(n, base.unwrap_or(cert.issuer_name()))
                        }
                        None => crl_issuer_names
                            .clone()
                            .unwrap_or_else(|| vec![cert.issuer().clone()])
                            .into_iter()
                            .map(DpName::Dn)
                            .collect(),
                    },
                    None => vec![DpName::Dn(cert.issuer().clone())],
                };
                if !idp_names.iter().any(|a| cert_names.contains(a)) {
                    return false;
                }
            }
            if idp.only_contains_user_certs && cert.is_ca() {
                return false;
            }
            if idp.only_contains_ca_certs && !cert.is_ca() {
                return false;
            }
            if idp.only_contains_attribute_certs {
                return false;
            }
        }
        true
    }
}

/// A distribution-point name in comparable form.
#[derive(Clone, Debug, PartialEq, Eq)]
enum DpName {
    Dn(NormName),
    Uri(String),
    Other(Vec<u8>),
}

fn dp_names(n: &DistributionPointName, issuer: &Name) -> Vec<DpName> {
    match n {
        DistributionPointName::FullName(names) => names
            .iter()
            .map(|g| match g {
                GeneralName::DirectoryName(d) => DpName::Dn(NormName::new(d)),
                GeneralName::UniformResourceIdentifier(u) => DpName::Uri(u.to_string()),
                other => DpName::Other(other.to_der().unwrap_or_default()),
            })
            .collect(),
        DistributionPointName::NameRelativeToCRLIssuer(rdn) => {
            vec![DpName::Dn(NormName::new(issuer).with_rdn(rdn))]
        }
    }
}

/// The ReasonFlags bits of one reason code (unspecified counts as all reasons are unknown: it maps to
/// no particular flag, so callers treat it as revoked whatever the mask).
pub fn reason_bit(r: CrlReason) -> u16 {
    let flag = match r {
        CrlReason::KeyCompromise => Reasons::KeyCompromise,
        CrlReason::CaCompromise => Reasons::CaCompromise,
        CrlReason::AffiliationChanged => Reasons::AffiliationChanged,
        CrlReason::Superseded => Reasons::Superseded,
        CrlReason::CessationOfOperation => Reasons::CessationOfOperation,
        CrlReason::CertificateHold => Reasons::CertificateHold,
        CrlReason::PrivilegeWithdrawn => Reasons::PrivilegeWithdrawn,
        CrlReason::AaCompromise => Reasons::AaCompromise,
        CrlReason::Unspecified | CrlReason::RemoveFromCRL => Reasons::Unused,
    };
    flag as u16
}
