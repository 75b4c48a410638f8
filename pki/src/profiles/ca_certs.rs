//! CA certificate profiles: self-signed root, subordinate issuing CA, cross-certificate.

use super::{Profile, ProfileError, Publication, ext, oid, uri};
use const_oid::ObjectIdentifier;
use const_oid::db::rfc5280 as ce;
use der::referenced::OwnedToRef;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::SubjectKeyIdentifier;
use x509_cert::ext::pkix::certpolicy::PolicyInformation;
use x509_cert::ext::pkix::constraints::name::GeneralSubtree;
use x509_cert::ext::pkix::crl::dp::DistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{
    AccessDescription, AuthorityInfoAccessSyntax, AuthorityKeyIdentifier, BasicConstraints,
    CertificatePolicies, CrlDistributionPoints, KeyUsage, KeyUsages, NameConstraints,
    PolicyConstraints, PolicyMapping, PolicyMappings, SubjectInfoAccessSyntax,
};
use x509_cert::name::Name;

/// Key identifier of a public key: SHA-1 of the subjectPublicKey BIT STRING (RFC 5280 4.2.1.2
/// method 1, which the FPKI profiles name).
pub fn key_id(spki: &SubjectPublicKeyInfoOwned) -> Result<Vec<u8>, ProfileError> {
    let ski =
        SubjectKeyIdentifier::try_from(spki.owned_to_ref()).map_err(|_| ProfileError::Missing {
            profile: Profile::Root,
            what: "an encodable public key",
        })?;
    Ok(ski.0.as_bytes().to_vec())
}

pub(crate) fn ski_ext(spki: &SubjectPublicKeyInfoOwned) -> Result<Extension, ProfileError> {
    let id = key_id(spki)?;
    ext(
        ce::ID_CE_SUBJECT_KEY_IDENTIFIER,
        false,
        &der::asn1::OctetString::new(id)?,
    )
}

pub(crate) fn aki_ext(issuer_spki: &SubjectPublicKeyInfoOwned) -> Result<Extension, ProfileError> {
    let aki = AuthorityKeyIdentifier {
        key_identifier: Some(der::asn1::OctetString::new(key_id(issuer_spki)?)?),
        authority_cert_issuer: None,
        authority_cert_serial_number: None,
    };
    ext(ce::ID_CE_AUTHORITY_KEY_IDENTIFIER, false, &aki)
}

pub(crate) fn policies_ext(policies: &[ObjectIdentifier]) -> Result<Extension, ProfileError> {
    let cp = CertificatePolicies(
        policies
            .iter()
            .map(|p| PolicyInformation {
                policy_identifier: *p,
                policy_qualifiers: None,
            })
            .collect(),
    );
    ext(ce::ID_CE_CERTIFICATE_POLICIES, false, &cp)
}

pub(crate) fn crldp_ext(url: &str) -> Result<Extension, ProfileError> {
    let dp = CrlDistributionPoints(vec![DistributionPoint {
        distribution_point: Some(DistributionPointName::FullName(vec![uri(url)?])),
        reasons: None,
        crl_issuer: None,
    }]);
    ext(ce::ID_CE_CRL_DISTRIBUTION_POINTS, false, &dp)
}

/// AIA: caIssuers to the .p7c of certificates issued to the issuer, and optionally OCSP.
pub(crate) fn aia_ext(ca_issuers: &str, ocsp: Option<&str>) -> Result<Extension, ProfileError> {
    let mut ads = Vec::new();
    if let Some(o) = ocsp {
        ads.push(AccessDescription {
            access_method: oid::AD_OCSP,
            access_location: uri(o)?,
        });
    }
    ads.push(AccessDescription {
        access_method: oid::AD_CA_ISSUERS,
        access_location: uri(ca_issuers)?,
    });
    ext(
        ce::ID_PE_AUTHORITY_INFO_ACCESS,
        false,
        &AuthorityInfoAccessSyntax(ads),
    )
}

/// SIA: caRepository to the .p7c of certificates issued by the subject CA.
pub(crate) fn sia_ext(repo: &str) -> Result<Extension, ProfileError> {
    let sia = SubjectInfoAccessSyntax(vec![AccessDescription {
        access_method: oid::AD_CA_REPOSITORY,
        access_location: uri(repo)?,
    }]);
    ext(ce::ID_PE_SUBJECT_INFO_ACCESS, false, &sia)
}

fn ca_key_usage() -> Result<Extension, ProfileError> {
    let ku = KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign);
    ext(ce::ID_CE_KEY_USAGE, true, &ku)
}

fn basic_ca(path_len: Option<u8>) -> Result<Extension, ProfileError> {
    ext(
        ce::ID_CE_BASIC_CONSTRAINTS,
        true,
        &BasicConstraints {
            ca: true,
            path_len_constraint: path_len,
        },
    )
}

/// Self-signed root CA (CP-SSP 2.2 worksheet "Self-Signed CA Certificate"):
///
/// | extension | critical | value |
/// |---|---|---|
/// | subjectKeyIdentifier | no | SHA-1 of subjectPublicKey |
/// | keyUsage | yes | keyCertSign, cRLSign |
/// | basicConstraints | yes | cA TRUE, no pathLenConstraint |
/// | subjectInfoAccess | no | id-ad-caRepository, HTTP URI of a .p7c (certs issued by this CA) |
///
/// No certificatePolicies, authorityInfoAccess or cRLDistributionPoints (a trust anchor).
pub fn root(
    spki: &SubjectPublicKeyInfoOwned,
    ca_name: &str,
    publication: &Publication,
) -> Result<Vec<Extension>, ProfileError> {
    Ok(vec![
        ski_ext(spki)?,
        ca_key_usage()?,
        basic_ca(None)?,
        sia_ext(&publication.issued_by_url(ca_name))?,
    ])
}

/// Subordinate issuing CA (CP-SSP 2.2 worksheet "Subordinate CA Certificate"):
///
/// | extension | critical | value |
/// |---|---|---|
/// | authorityKeyIdentifier | no | keyIdentifier of the issuer |
/// | subjectKeyIdentifier | no | SHA-1 of subjectPublicKey |
/// | keyUsage | yes | keyCertSign, cRLSign |
/// | basicConstraints | yes | cA TRUE, pathLenConstraint 0 (issues end entities only) |
/// | certificatePolicies | no | the policies the CA issues under |
/// | cRLDistributionPoints | no | HTTP URI of the issuer's CRL |
/// | authorityInfoAccess | no | id-ad-caIssuers HTTP .p7c; id-ad-ocsp |
/// | subjectInfoAccess | no | id-ad-caRepository HTTP .p7c |
#[allow(clippy::too_many_arguments)]
pub fn issuing_ca(
    spki: &SubjectPublicKeyInfoOwned,
    subject_ca_name: &str,
    issuer_spki: &SubjectPublicKeyInfoOwned,
    issuer_ca_name: &str,
    policies: &[ObjectIdentifier],
    publication: &Publication,
) -> Result<Vec<Extension>, ProfileError> {
    if policies.is_empty() {
        return Err(ProfileError::Missing {
            profile: Profile::IssuingCa,
            what: "at least one certificate policy",
        });
    }
    Ok(vec![
        aki_ext(issuer_spki)?,
        ski_ext(spki)?,
        ca_key_usage()?,
        basic_ca(Some(0))?,
        policies_ext(policies)?,
        crldp_ext(&publication.crl_url(issuer_ca_name))?,
        aia_ext(&publication.issued_to_url(issuer_ca_name), None)?,
        sia_ext(&publication.issued_by_url(subject_ca_name))?,
    ])
}

/// What a cross-certificate says about the other PKI (typed; see [`CrossParamsFile`] for the
/// operator's TOML form).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrossParams {
    /// Policies of our domain asserted in certificatePolicies (issuerDomainPolicy side).
    pub policies: Vec<ObjectIdentifier>,
    /// (issuerDomainPolicy, subjectDomainPolicy) pairs: ours mapped to theirs.
    pub mappings: Vec<(ObjectIdentifier, ObjectIdentifier)>,
    /// Permitted directoryName subtrees (RFC 4514 strings).
    pub permitted_dn: Vec<String>,
    /// Excluded directoryName subtrees (RFC 4514 strings).
    pub excluded_dn: Vec<String>,
    /// Permitted dNSName subtrees.
    pub permitted_dns: Vec<String>,
    /// Excluded dNSName subtrees.
    pub excluded_dns: Vec<String>,
    /// policyConstraints requireExplicitPolicy (SkipCerts).
    pub require_explicit_policy: Option<u32>,
    /// policyConstraints inhibitPolicyMapping (SkipCerts).
    pub inhibit_policy_mapping: Option<u32>,
    /// inhibitAnyPolicy SkipCerts.
    pub inhibit_any_policy: Option<u32>,
    /// basicConstraints pathLenConstraint.
    pub path_len: Option<u8>,
    /// The subject CA's short name (SIA: certificates issued by it). Defaults to `bridge`.
    pub subject_name: Option<String>,
}

/// The operator's cross-certification file (TOML), for example:
///
/// ```toml
/// policies = ["2.16.840.1.101.3.2.1.3.13"]
/// mappings = [["2.16.840.1.101.3.2.1.3.13", "1.3.6.1.4.1.99999.1.1"]]
/// permitted_dn = ["O=Bridge,C=US"]
/// require_explicit_policy = 0
/// inhibit_policy_mapping = 1
/// inhibit_any_policy = 0
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossParamsFile {
    /// Policies of our domain (dotted OIDs).
    pub policies: Vec<String>,
    /// Pairs [ours, theirs] (dotted OIDs).
    #[serde(default)]
    pub mappings: Vec<(String, String)>,
    /// Permitted directoryName subtrees.
    #[serde(default)]
    pub permitted_dn: Vec<String>,
    /// Excluded directoryName subtrees.
    #[serde(default)]
    pub excluded_dn: Vec<String>,
    /// Permitted dNSName subtrees.
    #[serde(default)]
    pub permitted_dns: Vec<String>,
    /// Excluded dNSName subtrees.
    #[serde(default)]
    pub excluded_dns: Vec<String>,
    /// requireExplicitPolicy.
    #[serde(default)]
    pub require_explicit_policy: Option<u32>,
    /// inhibitPolicyMapping.
    #[serde(default)]
    pub inhibit_policy_mapping: Option<u32>,
    /// inhibitAnyPolicy.
    #[serde(default)]
    pub inhibit_any_policy: Option<u32>,
    /// pathLenConstraint.
    #[serde(default)]
    pub path_len: Option<u8>,
    /// Short name of the subject CA.
    #[serde(default)]
    pub subject_name: Option<String>,
}

impl CrossParamsFile {
    /// Checks the file and gives the typed parameters; errors name the field.
    pub fn validate(&self) -> Result<CrossParams, ProfileError> {
        let parse = |field: &'static str, s: &str| {
            s.parse::<ObjectIdentifier>()
                .map_err(|_| ProfileError::BadField {
                    field,
                    value: s.to_string(),
                })
        };
        let policies = self
            .policies
            .iter()
            .map(|p| parse("policies", p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut mappings = Vec::new();
        for (i, s) in &self.mappings {
            let (i, s) = (parse("mappings", i)?, parse("mappings", s)?);
            // RFC 5280 4.2.1.5: anyPolicy must not be mapped either way.
            let any = const_oid::db::rfc5280::ANY_POLICY;
            if i == any || s == any {
                return Err(ProfileError::BadField {
                    field: "mappings",
                    value: "anyPolicy cannot be mapped".into(),
                });
            }
            mappings.push((i, s));
        }
        for dn in self.permitted_dn.iter().chain(&self.excluded_dn) {
            dn.parse::<Name>().map_err(|_| ProfileError::BadField {
                field: "permitted_dn/excluded_dn",
                value: dn.clone(),
            })?;
        }
        Ok(CrossParams {
            policies,
            mappings,
            permitted_dn: self.permitted_dn.clone(),
            excluded_dn: self.excluded_dn.clone(),
            permitted_dns: self.permitted_dns.clone(),
            excluded_dns: self.excluded_dns.clone(),
            require_explicit_policy: self.require_explicit_policy,
            inhibit_policy_mapping: self.inhibit_policy_mapping,
            inhibit_any_policy: self.inhibit_any_policy,
            path_len: self.path_len,
            subject_name: self.subject_name.clone(),
        })
    }
}

fn dn_subtrees(dns: &[String], names: &[String]) -> Result<Vec<GeneralSubtree>, ProfileError> {
    let mut out = Vec::new();
    for s in dns {
        let name: Name = s.parse()?;
        out.push(GeneralSubtree {
            base: GeneralName::DirectoryName(name),
            minimum: 0,
            maximum: None,
        });
    }
    for s in names {
        out.push(GeneralSubtree {
            base: GeneralName::DnsName(
                der::asn1::Ia5String::new(s).map_err(|_| ProfileError::NotAscii(s.clone()))?,
            ),
            minimum: 0,
            maximum: None,
        });
    }
    Ok(out)
}

/// Cross-certificate (FBCA profile and CP-SSP 2.2 worksheet "Cross Certificate"), as the real FBCA
/// G4 cross-certificates in `shared/testdata/fpki` carry them:
///
/// | extension | critical | value |
/// |---|---|---|
/// | authorityKeyIdentifier | no | keyIdentifier of the issuer |
/// | subjectKeyIdentifier | no | SHA-1 of subjectPublicKey |
/// | keyUsage | yes | keyCertSign, cRLSign |
/// | basicConstraints | yes | cA TRUE, pathLenConstraint optional |
/// | certificatePolicies | no | our policies recognised for the subject domain |
/// | policyMappings | no | issuerDomainPolicy to subjectDomainPolicy (non-critical per FPKI) |
/// | nameConstraints | yes | permitted/excluded subtrees, directoryName included |
/// | policyConstraints | yes | requireExplicitPolicy, inhibitPolicyMapping |
/// | inhibitAnyPolicy | yes | SkipCerts (RFC 5280 MUST critical; FPKI accepts either) |
/// | cRLDistributionPoints | no | HTTP URI of the issuer's CRL |
/// | authorityInfoAccess | no | id-ad-caIssuers HTTP .p7c |
/// | subjectInfoAccess | no | id-ad-caRepository HTTP .p7c of the subject CA |
pub fn cross_certificate(
    spki: &SubjectPublicKeyInfoOwned,
    issuer_spki: &SubjectPublicKeyInfoOwned,
    issuer_ca_name: &str,
    params: &CrossParams,
    publication: &Publication,
) -> Result<Vec<Extension>, ProfileError> {
    if params.policies.is_empty() {
        return Err(ProfileError::Missing {
            profile: Profile::CrossCertificate,
            what: "at least one certificate policy",
        });
    }
    let mut exts = vec![
        aki_ext(issuer_spki)?,
        ski_ext(spki)?,
        ca_key_usage()?,
        basic_ca(params.path_len)?,
        policies_ext(&params.policies)?,
    ];
    if !params.mappings.is_empty() {
        let pm = PolicyMappings(
            params
                .mappings
                .iter()
                .map(|(i, s)| PolicyMapping {
                    issuer_domain_policy: *i,
                    subject_domain_policy: *s,
                })
                .collect(),
        );
        exts.push(ext(ce::ID_CE_POLICY_MAPPINGS, false, &pm)?);
    }
    let permitted = dn_subtrees(&params.permitted_dn, &params.permitted_dns)?;
    let excluded = dn_subtrees(&params.excluded_dn, &params.excluded_dns)?;
    if !permitted.is_empty() || !excluded.is_empty() {
        let nc = NameConstraints {
            permitted_subtrees: (!permitted.is_empty()).then_some(permitted),
            excluded_subtrees: (!excluded.is_empty()).then_some(excluded),
        };
        exts.push(ext(ce::ID_CE_NAME_CONSTRAINTS, true, &nc)?);
    }
    if params.require_explicit_policy.is_some() || params.inhibit_policy_mapping.is_some() {
        let pc = PolicyConstraints {
            require_explicit_policy: params.require_explicit_policy,
            inhibit_policy_mapping: params.inhibit_policy_mapping,
        };
        exts.push(ext(ce::ID_CE_POLICY_CONSTRAINTS, true, &pc)?);
    }
    if let Some(skip) = params.inhibit_any_policy {
        exts.push(ext(oid::INHIBIT_ANY_POLICY, true, &skip)?);
    }
    exts.push(crldp_ext(&publication.crl_url(issuer_ca_name))?);
    exts.push(aia_ext(&publication.issued_to_url(issuer_ca_name), None)?);
    let subject_name = params.subject_name.as_deref().unwrap_or("bridge");
    exts.push(sia_ext(&publication.issued_by_url(subject_name))?);
    Ok(exts)
}
