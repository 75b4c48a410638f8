//! A synthetic bridge PKI for tests, the demo and `qsi bench pki`: two agencies, A and B, each with a
//! self-signed root, cross-certified in both directions with a bridge CA, with policy mappings on every
//! cross-certificate (B-pol <-> bridge-pol <-> A-pol), `requireExplicitPolicy 0` where B trusts the
//! bridge, one issuing CA under A and one end entity, and a CRL from every CA.
//!
//! The path a relying party of agency B builds for A's end entity is
//! `B root -> [B->bridge] -> [bridge->A root] -> [A root->A CA] -> [A CA->EE]`: four certificates under the
//! anchor, each checked against a CRL. Variants put the mapping under `inhibitPolicyMapping 0` or exclude
//! agency A's names in B's cross-certificate, the two ways B's policy can refuse A.

use const_oid::ObjectIdentifier;
use der::Encode;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CrlDistributionPoint,
    CustomExtension, DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyIdMethod,
    KeyPair, KeyUsagePurpose, NameConstraints, RevocationReason, RevokedCertParams, SanType,
    SerialNumber, SignatureAlgorithm, date_time_ymd,
};
use x509_cert::ext::pkix::PolicyMapping;
use x509_cert::ext::pkix::certpolicy::PolicyInformation;
use x509_cert::ext::pkix::{CertificatePolicies, PolicyConstraints, PolicyMappings};

/// Agency B's policy (the relying party's domain).
pub const B_POLICY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.55555.2.1");
/// The bridge's policy.
pub const BRIDGE_POLICY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.55555.9.1");
/// Agency A's policy.
pub const A_POLICY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.55555.1.1");
/// The end entity's DNS name.
pub const EE_DNS: &str = "alice.agency-a.example";

/// Validity of everything in the fixture: 2025-01-01 to 2035-01-01. Validate inside it.
pub const NOT_BEFORE: (i32, u8, u8) = (2025, 1, 1);
/// End of validity.
pub const NOT_AFTER: (i32, u8, u8) = (2035, 1, 1);

/// Variants of the scenario.
#[derive(Clone, Debug, Default)]
pub struct BridgeOptions {
    /// B's cross-certificate to the bridge carries `inhibitPolicyMapping 0`.
    pub inhibit_mapping_in_b_cross: bool,
    /// B's cross-certificate to the bridge excludes agency A's names (DNS `agency-a.example` and the
    /// directory subtree `O=Agency A`).
    pub exclude_agency_a: bool,
    /// The end entity is listed on A's issuing CA's CRL.
    pub revoke_ee: bool,
    /// Base URI of the CRL distribution points put in every certificate (e.g. `http://127.0.0.1:8080`);
    /// files are named `<ca>.crl`. None: `http://pki.example/<ca>.crl`.
    pub crl_base: Option<String>,
    /// Base URI for AIA caIssuers of the end entity (`<base>/a-ca.p7c`); None: no AIA.
    pub aia_base: Option<String>,
    /// Base URI for SIA caRepository of B's root (`<base>/b-issued.p7c`, what B's root issued).
    pub sia_base: Option<String>,
    /// Signature algorithm of every key (default ECDSA P-256).
    pub ml_dsa_65: bool,
}

/// One certificate or CRL of the fixture, by name.
#[derive(Clone, Debug)]
pub struct Item {
    /// File-style name (`b-root`, `b-to-bridge`, ...).
    pub name: &'static str,
    /// DER.
    pub der: Vec<u8>,
}

/// The generated PKI.
#[derive(Clone)]
pub struct BridgeFixture {
    /// B's root (the relying party's anchor).
    pub b_root: Vec<u8>,
    /// A's root (self-signed).
    pub a_root: Vec<u8>,
    /// The bridge (self-signed).
    pub bridge: Vec<u8>,
    /// Cross-certificates in both directions and A's issuing CA, by name.
    pub intermediates: Vec<Item>,
    /// The end entity of agency A.
    pub ee: Vec<u8>,
    /// One CRL per CA (`b-root`, `bridge`, `a-root`, `a-ca`).
    pub crls: Vec<Item>,
    /// The end entity's private key (PKCS#8 PEM), so a test can present it in a TLS handshake.
    pub ee_key_pem: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for BridgeFixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeFixture")
            .field("intermediates", &self.intermediates)
            .field("crls", &self.crls)
            .field("ee_key_pem", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl BridgeFixture {
    /// The four certificates of B's path to the end entity, anchor first (not included).
    pub fn b_path(&self) -> Vec<&[u8]> {
        ["b-to-bridge", "bridge-to-a", "a-ca"]
            .iter()
            .filter_map(|n| self.intermediates.iter().find(|i| i.name == *n))
            .map(|i| i.der.as_slice())
            .chain(std::iter::once(self.ee.as_slice()))
            .collect()
    }
}

/// Errors building the fixture.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// rcgen refused.
    #[error("generating the bridge fixture: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// Encoding an extension failed.
    #[error("encoding an extension: {0}")]
    Der(#[from] der::Error),
}

fn arcs(oid: &ObjectIdentifier) -> Vec<u64> {
    oid.arcs().map(u64::from).collect()
}

fn policies_ext(p: &[ObjectIdentifier]) -> Result<CustomExtension, der::Error> {
    let v = CertificatePolicies(
        p.iter()
            .map(|o| PolicyInformation {
                policy_identifier: *o,
                policy_qualifiers: None,
            })
            .collect(),
    );
    Ok(CustomExtension::from_oid_content(
        &[2, 5, 29, 32],
        v.to_der()?,
    ))
}

fn mapping_ext(
    from: ObjectIdentifier,
    to: ObjectIdentifier,
) -> Result<CustomExtension, der::Error> {
    let v = PolicyMappings(vec![PolicyMapping {
        issuer_domain_policy: from,
        subject_domain_policy: to,
    }]);
    let mut e = CustomExtension::from_oid_content(&[2, 5, 29, 33], v.to_der()?);
    e.set_criticality(true);
    Ok(e)
}

fn constraints_ext(
    require_explicit: Option<u32>,
    inhibit_mapping: Option<u32>,
) -> Result<CustomExtension, der::Error> {
    let v = PolicyConstraints {
        require_explicit_policy: require_explicit,
        inhibit_policy_mapping: inhibit_mapping,
    };
    let mut e = CustomExtension::from_oid_content(&[2, 5, 29, 36], v.to_der()?);
    e.set_criticality(true);
    Ok(e)
}

/// An AIA or SIA extension with one URI.
fn access_ext(
    ext: ObjectIdentifier,
    method: ObjectIdentifier,
    uri: &str,
) -> Result<CustomExtension, der::Error> {
    use x509_cert::ext::pkix::name::GeneralName;
    let v = x509_cert::ext::pkix::AuthorityInfoAccessSyntax(vec![
        x509_cert::ext::pkix::AccessDescription {
            access_method: method,
            access_location: GeneralName::UniformResourceIdentifier(der::asn1::Ia5String::new(
                uri,
            )?),
        },
    ]);
    Ok(CustomExtension::from_oid_content(&arcs(&ext), v.to_der()?))
}

struct Ca {
    params: CertificateParams,
    key: KeyPair,
}

fn base_params(
    org: &str,
    cn: &str,
    serial: u64,
    crl: &str,
    opts: &BridgeOptions,
) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CountryName, "US");
    p.distinguished_name.push(DnType::OrganizationName, org);
    p.distinguished_name.push(DnType::CommonName, cn);
    p.not_before = date_time_ymd(NOT_BEFORE.0, NOT_BEFORE.1, NOT_BEFORE.2);
    p.not_after = date_time_ymd(NOT_AFTER.0, NOT_AFTER.1, NOT_AFTER.2);
    p.serial_number = Some(SerialNumber::from_slice(&serial.to_be_bytes()));
    p.use_authority_key_identifier_extension = true;
    p.key_identifier_method = KeyIdMethod::Sha256;
    let base = opts
        .crl_base
        .clone()
        .unwrap_or_else(|| "http://pki.example".to_string());
    p.crl_distribution_points = vec![CrlDistributionPoint {
        uris: vec![format!("{base}/{crl}.crl")],
    }];
    p
}

fn ca_params(
    org: &str,
    cn: &str,
    serial: u64,
    crl: &str,
    opts: &BridgeOptions,
) -> CertificateParams {
    let mut p = base_params(org, cn, serial, crl, opts);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn alg(opts: &BridgeOptions) -> &'static SignatureAlgorithm {
    if opts.ml_dsa_65 {
        &rcgen::PKCS_ML_DSA_65
    } else {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

fn new_ca(
    org: &str,
    cn: &str,
    serial: u64,
    opts: &BridgeOptions,
    sia: Option<String>,
) -> Result<(Ca, Vec<u8>), FixtureError> {
    let key = KeyPair::generate_for(alg(opts))?;
    // Self-signed certificates carry no CRL distribution point (nobody checks an anchor).
    let mut params = ca_params(org, cn, serial, "unused", opts);
    params.crl_distribution_points.clear();
    params.use_authority_key_identifier_extension = false;
    if let Some(uri) = sia {
        params.custom_extensions.push(access_ext(
            const_oid::db::rfc5280::ID_PE_SUBJECT_INFO_ACCESS,
            crate::validate::cert::AD_CA_REPOSITORY,
            &uri,
        )?);
    }
    let cert = params.self_signed(&key)?;
    Ok((Ca { params, key }, cert.der().to_vec()))
}

/// Builds the fixture (fresh keys each time).
pub fn build(opts: &BridgeOptions) -> Result<BridgeFixture, FixtureError> {
    let sia = opts.sia_base.as_ref().map(|b| format!("{b}/b-issued.p7c"));
    let (b, b_root) = new_ca("Agency B", "Agency B Root CA", 1, opts, sia)?;
    let (a, a_root) = new_ca("Agency A", "Agency A Root CA", 2, opts, None)?;
    let (br, bridge) = new_ca("Bridge", "Bridge CA", 3, opts, None)?;
    let b_issuer = Issuer::from_params(&b.params, &b.key);
    let a_issuer = Issuer::from_params(&a.params, &a.key);
    let br_issuer = Issuer::from_params(&br.params, &br.key);

    let mut intermediates = Vec::new();
    // B -> bridge: B's policy maps to the bridge's; B requires an explicit policy from here on.
    let mut p = ca_params("Bridge", "Bridge CA", 10, "b-root", opts);
    p.custom_extensions = vec![
        policies_ext(&[B_POLICY])?,
        mapping_ext(B_POLICY, BRIDGE_POLICY)?,
        constraints_ext(Some(0), opts.inhibit_mapping_in_b_cross.then_some(0))?,
    ];
    if opts.exclude_agency_a {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(DnType::CountryName, "US");
        dn.push(DnType::OrganizationName, "Agency A");
        p.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![],
            excluded_subtrees: vec![
                GeneralSubtree::DnsName("agency-a.example".into()),
                GeneralSubtree::DirectoryName(dn),
            ],
        });
    }
    intermediates.push(Item {
        name: "b-to-bridge",
        der: p.signed_by(&br.key, &b_issuer)?.der().to_vec(),
    });
    // The other three cross-certificates: bridge -> B, bridge -> A, A -> bridge.
    struct Cross<'k> {
        name: &'static str,
        subject: (&'static str, &'static str),
        serial: u64,
        crl: &'static str,
        map: (ObjectIdentifier, ObjectIdentifier),
        key: &'k KeyPair,
    }
    let crosses = [
        (
            Cross {
                name: "bridge-to-b",
                subject: ("Agency B", "Agency B Root CA"),
                serial: 11,
                crl: "bridge",
                map: (BRIDGE_POLICY, B_POLICY),
                key: &b.key,
            },
            &br_issuer,
        ),
        (
            Cross {
                name: "bridge-to-a",
                subject: ("Agency A", "Agency A Root CA"),
                serial: 12,
                crl: "bridge",
                map: (BRIDGE_POLICY, A_POLICY),
                key: &a.key,
            },
            &br_issuer,
        ),
        (
            Cross {
                name: "a-to-bridge",
                subject: ("Bridge", "Bridge CA"),
                serial: 13,
                crl: "a-root",
                map: (A_POLICY, BRIDGE_POLICY),
                key: &br.key,
            },
            &a_issuer,
        ),
    ];
    for (c, issuer) in crosses {
        let mut p = ca_params(c.subject.0, c.subject.1, c.serial, c.crl, opts);
        p.custom_extensions = vec![policies_ext(&[c.map.0])?, mapping_ext(c.map.0, c.map.1)?];
        intermediates.push(Item {
            name: c.name,
            der: p.signed_by(c.key, issuer)?.der().to_vec(),
        });
    }
    // A's issuing CA.
    let ca_key = KeyPair::generate_for(alg(opts))?;
    let mut ca_p = ca_params("Agency A", "Agency A Issuing CA", 20, "a-root", opts);
    ca_p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_p.custom_extensions = vec![policies_ext(&[A_POLICY])?];
    intermediates.push(Item {
        name: "a-ca",
        der: ca_p.signed_by(&ca_key, &a_issuer)?.der().to_vec(),
    });
    let ca_issuer = Issuer::from_params(&ca_p, &ca_key);
    // The end entity.
    let ee_key = KeyPair::generate_for(alg(opts))?;
    let mut p = base_params("Agency A", "Alice", 30, "a-ca", opts);
    p.subject_alt_names = vec![SanType::DnsName(EE_DNS.try_into()?)];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    p.custom_extensions = vec![policies_ext(&[A_POLICY])?];
    if let Some(base) = &opts.aia_base {
        p.custom_extensions.push(access_ext(
            const_oid::db::rfc5280::ID_PE_AUTHORITY_INFO_ACCESS,
            crate::validate::cert::AD_CA_ISSUERS,
            &format!("{base}/a-ca.p7c"),
        )?);
    }
    let ee = p.signed_by(&ee_key, &ca_issuer)?.der().to_vec();

    // CRLs.
    let crl = |issuer: &Issuer<'_, &KeyPair>, revoked: Vec<u64>| -> Result<Vec<u8>, FixtureError> {
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2025, 6, 1),
            next_update: date_time_ymd(2034, 12, 1),
            crl_number: SerialNumber::from_slice(&[1]),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .into_iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&s.to_be_bytes()),
                    revocation_time: date_time_ymd(2025, 6, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(issuer)?.der().to_vec())
    };
    let crls = vec![
        Item {
            name: "b-root",
            der: crl(&b_issuer, vec![])?,
        },
        Item {
            name: "bridge",
            der: crl(&br_issuer, vec![])?,
        },
        Item {
            name: "a-root",
            der: crl(&a_issuer, vec![])?,
        },
        Item {
            name: "a-ca",
            der: crl(&ca_issuer, if opts.revoke_ee { vec![30] } else { vec![] })?,
        },
    ];
    Ok(BridgeFixture {
        b_root,
        a_root,
        bridge,
        intermediates,
        ee,
        crls,
        ee_key_pem: zeroize::Zeroizing::new(ee_key.serialize_pem()),
    })
}
