//! A throw-away card PKI for tests, the login benchmark and demos: a root CA held in memory that issues
//! PIV-style card certificates (FASC-N and card UUID in the subjectAltName) for keys that live anywhere
//! (on a SoftHSM2 card, or in memory), a TLS server certificate for the portal, and CRLs. Production
//! cards come from `qsi ca issue`.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, PublicKeyData, RevocationReason, RevokedCertParams, SerialNumber,
    SignatureAlgorithm,
};
use time::OffsetDateTime;

use super::card::{FASCN_LEN, card_san_der};

/// A test certificate authority, with a PIV content signer (in memory) that signs its cards' CHUIDs.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    content_signer: Option<(qsi_pki::ca::signer::SoftSigner, x509_cert::Certificate)>,
    /// The CA's name (common name of its DN).
    pub name: String,
    public: ForeignPublicKey,
    /// The CA certificate (DER).
    pub cert_der: Vec<u8>,
    next_serial: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCa { [secret key elided] }")
    }
}

/// A public key from elsewhere (e.g. read from a card) in the shape rcgen signs over.
#[derive(Debug, Clone)]
pub struct ForeignPublicKey {
    /// The raw public key (for EC: the uncompressed point).
    pub raw: Vec<u8>,
    /// Its algorithm.
    pub alg: &'static SignatureAlgorithm,
}

impl PublicKeyData for ForeignPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// What a card certificate says.
#[derive(Debug, Clone)]
pub struct CardSpec {
    /// Common name.
    pub name: String,
    /// FASC-N (binary, 25 bytes).
    pub fascn: Option<[u8; FASCN_LEN]>,
    /// Card UUID.
    pub uuid: Option<uuid::Uuid>,
    /// Validity start.
    pub not_before: OffsetDateTime,
    /// Validity end.
    pub not_after: OffsetDateTime,
    /// Certificate policies (dotted OIDs) asserted by the card certificate.
    pub policies: Vec<String>,
}

impl CardSpec {
    /// A card valid from an hour ago for a year, with a random UUID and a FASC-N whose credential and
    /// person numbers are derived from it (a well-formed FASC-N: 5-bit BCD, parity, LRC).
    pub fn new(name: &str) -> Self {
        let uuid = uuid::Uuid::new_v4();
        let digits: String = uuid
            .as_bytes()
            .iter()
            .map(|b| char::from(b'0' + b % 10))
            .collect();
        let fascn = qsi_pki::fascn::Fascn {
            agency: "4701".into(),
            system: "0007".into(),
            credential: digits[..6].into(),
            cs: "0".into(),
            ici: "1".into(),
            pi: digits[6..16].into(),
            oc: "1".into(),
            oi: "4701".into(),
            poa: "1".into(),
        }
        .encode()
        .ok();
        let now = OffsetDateTime::now_utc();
        CardSpec {
            name: name.to_owned(),
            fascn,
            uuid: Some(uuid),
            not_before: now - time::Duration::hours(1),
            not_after: now + time::Duration::days(365),
            policies: Vec::new(),
        }
    }
}

fn rc(e: rcgen::Error) -> anyhow::Error {
    anyhow::anyhow!("test PKI: {e}")
}

impl TestCa {
    /// A self-signed P-256 root CA.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rc)?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.key_identifier_method = KeyIdMethod::Sha256;
        p.not_before = OffsetDateTime::now_utc() - time::Duration::days(1);
        p.not_after = OffsetDateTime::now_utc() + time::Duration::days(3650);
        let cert = p.self_signed(&key).map_err(rc)?;
        let public = ForeignPublicKey {
            raw: key.public_key_raw().to_vec(),
            alg: &rcgen::PKCS_ECDSA_P256_SHA256,
        };
        let mut ca = TestCa {
            issuer: Issuer::new(p, key),
            content_signer: None,
            name: name.to_owned(),
            public,
            cert_der: cert.der().to_vec(),
            next_serial: std::sync::atomic::AtomicU64::new(2),
        };
        ca.content_signer = Some(ca.new_content_signer()?);
        Ok(ca)
    }

    /// A P-256 content signer certified by this CA (EKU id-PIV-content-signing).
    fn new_content_signer(
        &self,
    ) -> anyhow::Result<(qsi_pki::ca::signer::SoftSigner, x509_cert::Certificate)> {
        use der::Decode;
        use qsi_pki::ca::signer::{CaSigner, SigAlg, SoftSigner};
        let key = SoftSigner::generate(SigAlg::EcdsaP256Sha256)
            .map_err(|e| anyhow::anyhow!("content signer: {e}"))?;
        let public = ForeignPublicKey {
            raw: key.public_key().subject_public_key.raw_bytes().to_vec(),
            alg: &rcgen::PKCS_ECDSA_P256_SHA256,
        };
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(&format!("{} content signer", self.name));
        p.serial_number = Some(SerialNumber::from(self.serial()));
        p.not_before = OffsetDateTime::now_utc() - time::Duration::days(1);
        p.not_after = OffsetDateTime::now_utc() + time::Duration::days(3000);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // id-PIV-content-signing 2.16.840.1.101.3.6.7
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::Other(vec![
            2, 16, 840, 1, 101, 3, 6, 7,
        ])];
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&public, &self.issuer).map_err(rc)?;
        let cert = x509_cert::Certificate::from_der(cert.der())
            .map_err(|e| anyhow::anyhow!("content signer certificate: {e}"))?;
        Ok((key, cert))
    }

    /// The signed CHUID of a card `spec` describes (FASC-N, UUID, expiry = notAfter), as a card management
    /// system writes it; None for a card without a UUID. A card without a FASC-N gets the agency-9999
    /// placeholder, as `qsi ca issue` does.
    pub fn sign_chuid(&self, spec: &CardSpec) -> anyhow::Result<Option<Vec<u8>>> {
        use qsi_pki::fascn::Fascn;
        let (Some(guid), Some((key, cert))) = (spec.uuid, &self.content_signer) else {
            return Ok(None);
        };
        let fascn = match &spec.fascn {
            Some(b) => Fascn::decode(b)?,
            None => "S9999F9999F999999F0F1F0000000000300001E".parse()?,
        };
        let t = spec.not_after;
        let chuid = qsi_pki::chuid::Chuid {
            fascn,
            guid,
            expiry: format!("{:04}{:02}{:02}", t.year(), u8::from(t.month()), t.day()),
        };
        Ok(Some(chuid.sign(key, cert)?))
    }

    fn serial(&self) -> u64 {
        self.next_serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Issues a PIV Authentication-style card certificate for `public_key`. Returns (DER, serial).
    pub fn issue_card(
        &self,
        public_key: &impl PublicKeyData,
        spec: &CardSpec,
    ) -> anyhow::Result<(Vec<u8>, u64)> {
        let serial = self.serial();
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(&spec.name);
        p.serial_number = Some(SerialNumber::from(serial));
        p.not_before = spec.not_before;
        p.not_after = spec.not_after;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.use_authority_key_identifier_extension = true;
        let san = card_san_der(spec.fascn.as_ref(), spec.uuid)?;
        p.custom_extensions
            .push(CustomExtension::from_oid_content(&[2, 5, 29, 17], san));
        if !spec.policies.is_empty() {
            p.custom_extensions.push(policies_ext(&spec.policies)?);
        }
        let cert = p.signed_by(public_key, &self.issuer).map_err(rc)?;
        Ok((cert.der().to_vec(), serial))
    }

    /// Cross-certifies `subject` (another CA, e.g. a bridge or a partner's root): a CA certificate for its
    /// name and key asserting `policies` of this CA's domain, mapped to the subject's domain by
    /// `mappings` (issuerDomainPolicy, subjectDomainPolicy), as the FBCA does.
    pub fn cross_certify(
        &self,
        subject: &TestCa,
        policies: &[&str],
        mappings: &[(&str, &str)],
    ) -> anyhow::Result<Vec<u8>> {
        use der::Encode;
        use x509_cert::ext::pkix::{PolicyMapping, PolicyMappings};
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(&subject.name);
        p.serial_number = Some(SerialNumber::from(self.serial()));
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.key_identifier_method = KeyIdMethod::Sha256;
        p.use_authority_key_identifier_extension = true;
        p.not_before = OffsetDateTime::now_utc() - time::Duration::days(1);
        p.not_after = OffsetDateTime::now_utc() + time::Duration::days(365);
        let policies: Vec<String> = policies.iter().map(|s| (*s).to_owned()).collect();
        p.custom_extensions.push(policies_ext(&policies)?);
        if !mappings.is_empty() {
            let oid = |s: &str| {
                s.parse::<der::asn1::ObjectIdentifier>()
                    .map_err(|_| anyhow::anyhow!("{s:?} is not an OID"))
            };
            let pm = PolicyMappings(
                mappings
                    .iter()
                    .map(|(i, s)| {
                        Ok(PolicyMapping {
                            issuer_domain_policy: oid(i)?,
                            subject_domain_policy: oid(s)?,
                        })
                    })
                    .collect::<anyhow::Result<_>>()?,
            );
            p.custom_extensions.push(CustomExtension::from_oid_content(
                &[2, 5, 29, 33],
                pm.to_der()
                    .map_err(|e| anyhow::anyhow!("policyMappings: {e}"))?,
            ));
        }
        let cert = p.signed_by(&subject.public, &self.issuer).map_err(rc)?;
        Ok(cert.der().to_vec())
    }

    /// Issues a TLS server certificate for `dns` with a fresh in-memory key. Returns (cert DER, key PKCS#8).
    pub fn issue_server(&self, dns: &str) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rc)?;
        let mut p = CertificateParams::new(vec![dns.to_owned()]).map_err(rc)?;
        p.distinguished_name = dn(dns);
        p.serial_number = Some(SerialNumber::from(self.serial()));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &self.issuer).map_err(rc)?;
        Ok((cert.der().to_vec(), key.serialize_der()))
    }

    /// A CRL revoking the given serials, valid for a day.
    pub fn crl(&self, revoked: &[u64]) -> anyhow::Result<Vec<u8>> {
        let now = OffsetDateTime::now_utc();
        let p = CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(5),
            next_update: now + time::Duration::days(1),
            crl_number: SerialNumber::from(self.serial()),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: now - time::Duration::minutes(1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(p.signed_by(&self.issuer).map_err(rc)?.der().to_vec())
    }
}

fn policies_ext(policies: &[String]) -> anyhow::Result<CustomExtension> {
    use der::Encode;
    use x509_cert::ext::pkix::CertificatePolicies;
    use x509_cert::ext::pkix::certpolicy::PolicyInformation;
    let infos = policies
        .iter()
        .map(|s| {
            Ok(PolicyInformation {
                policy_identifier: s
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{s:?} is not an OID"))?,
                policy_qualifiers: None,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let der = CertificatePolicies(infos)
        .to_der()
        .map_err(|e| anyhow::anyhow!("certificatePolicies: {e}"))?;
    Ok(CustomExtension::from_oid_content(&[2, 5, 29, 32], der))
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::OrganizationName, "QSI test");
    d.push(DnType::CommonName, cn);
    d
}

/// A card whose key is held in memory (unit tests of the store; never for the login tests, which use
/// SoftHSM2 tokens).
pub struct MemoryCard {
    key: KeyPair,
    /// The card certificate (DER).
    pub cert_der: Vec<u8>,
    /// The certificate's serial.
    pub serial: u64,
    /// What the certificate says.
    pub spec: CardSpec,
}

impl std::fmt::Debug for MemoryCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemoryCard({})", self.spec.name)
    }
}

impl MemoryCard {
    /// Issues a card from `ca`.
    pub fn issue(ca: &TestCa, spec: CardSpec) -> anyhow::Result<Self> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rc)?;
        let (cert_der, serial) = ca.issue_card(&key, &spec)?;
        Ok(MemoryCard {
            key,
            cert_der,
            serial,
            spec,
        })
    }

    /// The card's subject, for assignments.
    pub fn subject(&self) -> super::Subject {
        super::Subject {
            name: self.spec.name.clone(),
            uuid: self.spec.uuid,
            fascn: self.spec.fascn.map(hex::encode_upper),
        }
    }
}

impl super::AssignmentSigner for MemoryCard {
    fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }
    fn sign(&self, message: &[u8]) -> anyhow::Result<Vec<u8>> {
        rcgen::SigningKey::sign(&self.key, message).map_err(rc)
    }
}
