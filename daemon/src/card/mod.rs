//! A smart card (PIV or PIV-I) seen through PKCS#11: SoftHSM2 tokens in tests, OpenSC with a reader in
//! production. The PIV Authentication key signs on the card through the [`qsi_hsm::KeyStore`] seam and
//! never leaves it; `qsi_hsm::HsmSigningKey` makes it a rustls client key, and the same key signs clearance
//! assignments. The certificate is read from the card (a `CKO_CERTIFICATE` object with the key's
//! `CKA_ID`), as a PIV middleware exposes it.

use std::path::Path;
use std::sync::Arc;

use cryptoki::object::{Attribute, AttributeType, CertificateType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use qsi_hsm::{KeyAlgorithm, KeyInfo, KeyStore, Pin, Pkcs11Config, Pkcs11Store, TokenSelector};
use rustls::SignatureScheme as Tls;

use crate::access::AssignmentSigner;

/// The `CKA_ID` PIV middleware (OpenSC) gives the PIV Authentication key and certificate (key reference 9A).
pub const PIV_AUTH_ID: &[u8] = &[0x01];
/// Label of the PIV Authentication key on cards this project provisions.
pub const PIV_AUTH_KEY_LABEL: &str = "PIV AUTH key";
/// Label of the PIV Authentication certificate on cards this project provisions.
pub const PIV_AUTH_CERT_LABEL: &str = "Certificate for PIV Authentication";
/// Label and application of the CHUID data object, as OpenSC's PIV emulation names it.
pub const CHUID_LABEL: &str = "Card Holder Unique Identifier";
/// `CKA_OBJECT_ID` of the CHUID data object: 2.16.840.1.101.3.7.2.48.0, the OID OpenSC's PIV emulation
/// gives the CHUID container (SP 800-73-4 part 1, table 3), as the OID's content octets, which is how
/// OpenSC encodes it (`sc_asn1_encode_object_id`) and how `pkcs11-tool` reads and writes it.
pub const CHUID_OBJECT_ID: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x07, 0x02, 0x30, 0x00];

/// A PIV key slot as OpenSC's PIV emulation exposes it through PKCS#11: the key reference of the card
/// edge, the `CKA_ID` shared by key and certificate, and their labels (OpenSC 0.23 `pkcs15-piv.c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PivSlot {
    /// Key reference on a real card (9A, 9C, 9E).
    pub key_ref: u8,
    /// `CKA_ID` of the key pair and certificate.
    pub id: u8,
    /// `CKA_LABEL` of the private and public key.
    pub key_label: &'static str,
    /// `CKA_LABEL` of the certificate.
    pub cert_label: &'static str,
}

/// PIV Authentication (9A): the key `qsi login` uses.
pub const SLOT_PIV_AUTH: PivSlot = PivSlot {
    key_ref: 0x9a,
    id: 0x01,
    key_label: PIV_AUTH_KEY_LABEL,
    cert_label: PIV_AUTH_CERT_LABEL,
};
/// Digital Signature (9C).
pub const SLOT_SIGN: PivSlot = PivSlot {
    key_ref: 0x9c,
    id: 0x02,
    key_label: "SIGN key",
    cert_label: "Certificate for Digital Signature",
};
/// Card Authentication (9E).
pub const SLOT_CARD_AUTH: PivSlot = PivSlot {
    key_ref: 0x9e,
    id: 0x04,
    key_label: "CARD AUTH key",
    cert_label: "Certificate for Card Authentication",
};

/// The card slot a `qsi ca issue` profile fills, for the profiles whose key is a signing key on the card.
/// Key management (9D, a key-agreement key) and content signing (a CA-side key) have none.
pub fn slot_for_profile(profile: &str) -> Option<PivSlot> {
    match profile {
        "piv-auth" | "piv-i-auth" => Some(SLOT_PIV_AUTH),
        "piv-digital-signature" | "piv-i-digital-signature" => Some(SLOT_SIGN),
        "piv-card-auth" | "piv-i-card-auth" => Some(SLOT_CARD_AUTH),
        _ => None,
    }
}

/// Why a card cannot be used. Wrong-PIN and locked-PIN errors come from the key store with the token's
/// PIN flags.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    /// The key store (module, token, PIN) failed.
    #[error(transparent)]
    Hsm(#[from] qsi_hsm::Error),
    /// A raw PKCS#11 call failed.
    #[error("PKCS#11 {function} on card {token:?}: {detail}")]
    Pkcs11 {
        /// Token label.
        token: String,
        /// The function.
        function: &'static str,
        /// The module's answer.
        detail: String,
    },
    /// No certificate on the card.
    #[error(
        "card {token:?} holds no PIV Authentication certificate (CKO_CERTIFICATE with CKA_ID 01, or any certificate): was it provisioned with `qsi ca issue`?"
    )]
    NoCertificate {
        /// Token label.
        token: String,
    },
    /// No private key matches the certificate.
    #[error("card {token:?} holds no private key with the certificate's CKA_ID")]
    NoKey {
        /// Token label.
        token: String,
    },
    /// The card slot already holds a key or certificate.
    #[error(
        "card {token:?} already holds a key or certificate in the {slot} slot (CKA_ID {id:02X}): provision a fresh card, or delete the old objects first (pkcs11-tool --delete-object --type privkey|pubkey|cert --id {id:02X})"
    )]
    SlotOccupied {
        /// Token label.
        token: String,
        /// The slot's key label.
        slot: &'static str,
        /// Its `CKA_ID`.
        id: u8,
    },
    /// The key type cannot sign TLS 1.3 handshakes.
    #[error(
        "the card key is {0}, which cannot authenticate TLS 1.3 here (use P-256, P-384 or RSA)"
    )]
    UnsupportedKey(String),
}

/// A card opened with its PIN.
#[derive(Debug)]
pub struct Card {
    store: Arc<Pkcs11Store>,
    key: KeyInfo,
    /// The PIV Authentication certificate (DER) read from the card.
    pub cert_der: Vec<u8>,
    /// The card's signed CHUID (the data object [`CHUID_LABEL`]), when the card has one.
    pub chuid: Option<Vec<u8>>,
    /// Token label.
    pub token: String,
}

fn p11(token: &str, function: &'static str, e: cryptoki::error::Error) -> CardError {
    CardError::Pkcs11 {
        token: token.to_owned(),
        function,
        detail: e.to_string(),
    }
}

impl Card {
    /// Opens the card: loads the module, finds the token, logs in with `pin` (a wrong PIN fails here, with
    /// the token's PIN flags), reads the PIV Authentication certificate and finds its key.
    pub fn open(module: &Path, token: &str, pin: Pin) -> Result<Card, CardError> {
        let selector = TokenSelector::Label(token.to_owned());
        let store = Arc::new(Pkcs11Store::open(Pkcs11Config::new(
            module,
            selector.clone(),
            pin,
        ))?);
        Self::from_token_certificate(store, module, token)
    }

    /// Opens the card with a certificate given from outside (e.g. the file `qsi ca issue --out` wrote when
    /// the card holds only the key): the key is the card's private key whose public key is the
    /// certificate's.
    pub fn open_with_certificate(
        module: &Path,
        token: &str,
        pin: Pin,
        cert_der: Vec<u8>,
    ) -> Result<Card, CardError> {
        use der::{Decode, Encode};
        let selector = TokenSelector::Label(token.to_owned());
        let store = Arc::new(Pkcs11Store::open(Pkcs11Config::new(module, selector, pin))?);
        let spki = x509_cert::Certificate::from_der(&cert_der)
            .and_then(|c| c.tbs_certificate().subject_public_key_info().to_der())
            .map_err(|e| CardError::Pkcs11 {
                token: token.to_owned(),
                function: "certificate",
                detail: format!("the given certificate is not DER X.509: {e}"),
            })?;
        let mut key = None;
        for k in store.list()? {
            let same = store.public_key_spki(&k).ok().as_deref() == Some(&spki[..]);
            if k.algorithm.is_signing() && same {
                key = Some(k);
                break;
            }
        }
        let key = key.ok_or_else(|| CardError::NoKey {
            token: token.to_owned(),
        })?;
        scheme_for(key.algorithm)?;
        let chuid = read_chuid(module, token)?;
        Ok(Card {
            store,
            key,
            cert_der,
            chuid,
            token: token.to_owned(),
        })
    }

    fn from_token_certificate(
        store: Arc<Pkcs11Store>,
        module: &Path,
        token: &str,
    ) -> Result<Card, CardError> {
        let selector = TokenSelector::Label(token.to_owned());
        let ctx = qsi_hsm::pkcs11::shared_context(module)?;
        let slot = qsi_hsm::pkcs11::find_slot(module, &selector)?;
        let session = ctx
            .open_ro_session(slot)
            .map_err(|e| p11(token, "C_OpenSession", e))?;
        let certs = session
            .find_objects(&[Attribute::Class(ObjectClass::CERTIFICATE)])
            .map_err(|e| p11(token, "C_FindObjects", e))?;
        let mut found: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for h in certs {
            let attrs = session
                .get_attributes(h, &[AttributeType::Id, AttributeType::Value])
                .map_err(|e| p11(token, "C_GetAttributeValue", e))?;
            let (mut id, mut value) = (Vec::new(), Vec::new());
            for a in attrs {
                match a {
                    Attribute::Id(v) => id = v,
                    Attribute::Value(v) => value = v,
                    _ => {}
                }
            }
            found.push((id, value));
        }
        let pick = found
            .iter()
            .position(|(id, _)| id == PIV_AUTH_ID)
            .or_else(|| (found.len() == 1).then_some(0));
        let Some(i) = pick else {
            return Err(CardError::NoCertificate {
                token: token.to_owned(),
            });
        };
        let (cert_id, cert_der) = found.swap_remove(i);
        drop(session);
        let chuid = read_chuid(module, token)?;
        let key = store
            .list()?
            .into_iter()
            .find(|k| k.id == cert_id && k.algorithm.is_signing())
            .ok_or_else(|| CardError::NoKey {
                token: token.to_owned(),
            })?;
        scheme_for(key.algorithm)?;
        Ok(Card {
            store,
            key,
            cert_der,
            chuid,
            token: token.to_owned(),
        })
    }

    /// The rustls client key backed by this card (`qsi_hsm::HsmSigningKey`: every TLS 1.3
    /// CertificateVerify is signed by the token with `C_Sign`).
    pub fn signing_key(&self) -> Result<Arc<dyn rustls::sign::SigningKey>, CardError> {
        let store: Arc<dyn KeyStore> = self.store.clone();
        Ok(Arc::new(qsi_hsm::HsmSigningKey::new(
            store,
            self.key.clone(),
        )?))
    }

    /// The card key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.key.algorithm
    }
}

impl AssignmentSigner for Card {
    fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }

    fn sign(&self, message: &[u8]) -> anyhow::Result<Vec<u8>> {
        let scheme = match self.key.algorithm {
            KeyAlgorithm::Rsa3072 => qsi_hsm::SignatureScheme::RsaPkcs1Sha256,
            other => other
                .default_scheme()
                .ok_or_else(|| anyhow::anyhow!("the card key ({}) cannot sign", other.name()))?,
        };
        Ok(self.store.sign_with(&self.key, scheme, message)?)
    }
}

fn scheme_for(alg: KeyAlgorithm) -> Result<(Tls, qsi_hsm::SignatureScheme), CardError> {
    use qsi_hsm::SignatureScheme as H;
    match alg {
        KeyAlgorithm::EcP256 => Ok((Tls::ECDSA_NISTP256_SHA256, H::EcdsaP256Sha256)),
        KeyAlgorithm::EcP384 => Ok((Tls::ECDSA_NISTP384_SHA384, H::EcdsaP384Sha384)),
        KeyAlgorithm::Rsa3072 => Ok((Tls::RSA_PSS_SHA256, H::RsaPssSha256)),
        other => Err(CardError::UnsupportedKey(other.name().to_owned())),
    }
}

/// Reads the CHUID data object (public: no login needed), if the card has one.
pub fn read_chuid(module: &Path, token: &str) -> Result<Option<Vec<u8>>, CardError> {
    let ctx = qsi_hsm::pkcs11::shared_context(module)?;
    let slot = qsi_hsm::pkcs11::find_slot(module, &TokenSelector::Label(token.to_owned()))?;
    let session = ctx
        .open_ro_session(slot)
        .map_err(|e| p11(token, "C_OpenSession", e))?;
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Label(CHUID_LABEL.as_bytes().to_vec()),
        ])
        .map_err(|e| p11(token, "C_FindObjects", e))?;
    let Some(h) = found.first() else {
        return Ok(None);
    };
    let attrs = session
        .get_attributes(*h, &[AttributeType::Value])
        .map_err(|e| p11(token, "C_GetAttributeValue", e))?;
    Ok(attrs.into_iter().find_map(|a| match a {
        Attribute::Value(v) => Some(v),
        _ => None,
    }))
}

/// A read-write session on the card, logged in as the user.
fn user_session(
    module: &Path,
    token: &str,
    pin: &Pin,
) -> Result<cryptoki::session::Session, CardError> {
    let ctx = qsi_hsm::pkcs11::shared_context(module)?;
    let slot = qsi_hsm::pkcs11::find_slot(module, &TokenSelector::Label(token.to_owned()))?;
    let session = ctx
        .open_rw_session(slot)
        .map_err(|e| p11(token, "C_OpenSession", e))?;
    match session.login(UserType::User, Some(&AuthPin::from(pin.expose()))) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {
        }
        Err(e) => return Err(p11(token, "C_Login", e)),
    }
    Ok(session)
}

/// Generates the key of a PIV slot on the card (non-extractable, sensitive; through the key store, so a
/// wrong PIN says how the PIN counter stands), gives both halves the slot's `CKA_ID`, and returns its
/// public key (DER SubjectPublicKeyInfo). Refuses a slot that already holds a key or certificate.
pub fn generate_slot_key(
    module: &Path,
    token: &str,
    pin: &Pin,
    slot: PivSlot,
    algorithm: KeyAlgorithm,
) -> Result<Vec<u8>, CardError> {
    if !matches!(
        algorithm,
        KeyAlgorithm::EcP256 | KeyAlgorithm::EcP384 | KeyAlgorithm::Rsa3072
    ) {
        return Err(CardError::UnsupportedKey(algorithm.name().to_owned()));
    }
    let store = Pkcs11Store::open(Pkcs11Config::new(
        module,
        TokenSelector::Label(token.to_owned()),
        pin.clone(),
    ))?;
    let session = user_session(module, token, pin)?;
    let taken = session
        .find_objects(&[Attribute::Id(vec![slot.id])])
        .map_err(|e| p11(token, "C_FindObjects", e))?;
    let label_taken = store.list()?.iter().any(|k| k.label == slot.key_label);
    if !taken.is_empty() || label_taken {
        return Err(CardError::SlotOccupied {
            token: token.to_owned(),
            slot: slot.key_label,
            id: slot.id,
        });
    }
    let key = store.generate(slot.key_label, algorithm)?;
    let spki = store.public_key_spki(&key)?;
    let halves = session
        .find_objects(&[Attribute::Id(key.id.clone())])
        .map_err(|e| p11(token, "C_FindObjects", e))?;
    for h in halves {
        session
            .update_attributes(h, &[Attribute::Id(vec![slot.id])])
            .map_err(|e| p11(token, "C_SetAttributeValue(CKA_ID)", e))?;
    }
    Ok(spki)
}

/// Writes a certificate onto a card in `slot` (public token object with the key's `CKA_ID`, the slot's
/// label, `CKA_SUBJECT`, `CKA_ISSUER` and `CKA_SERIAL_NUMBER`), as a card management system does after
/// issuance.
pub fn write_certificate(
    module: &Path,
    token: &str,
    pin: &Pin,
    slot: PivSlot,
    cert_der: &[u8],
) -> Result<(), CardError> {
    let session = user_session(module, token, pin)?;
    let (subject, issuer, serial) = cert_names(cert_der).map_err(|detail| CardError::Pkcs11 {
        token: token.to_owned(),
        function: "C_CreateObject",
        detail,
    })?;
    session
        .create_object(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::CertificateType(CertificateType::X_509),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Modifiable(true),
            Attribute::Label(slot.cert_label.as_bytes().to_vec()),
            Attribute::Id(vec![slot.id]),
            Attribute::Subject(subject),
            Attribute::Issuer(issuer),
            Attribute::SerialNumber(serial),
            Attribute::Value(cert_der.to_vec()),
        ])
        .map_err(|e| p11(token, "C_CreateObject(certificate)", e))?;
    Ok(())
}

/// Writes the signed CHUID onto the card as a public `CKO_DATA` object named as OpenSC's PIV emulation
/// names the CHUID container: `CKA_LABEL` and `CKA_APPLICATION` "Card Holder Unique Identifier",
/// `CKA_OBJECT_ID` 2.16.840.1.101.3.7.2.48.0, `CKA_VALUE` the container's content (data elements, 0x3E
/// signature, 0xFE). A CHUID already on the card is replaced (one per card).
pub fn write_chuid(module: &Path, token: &str, pin: &Pin, chuid: &[u8]) -> Result<(), CardError> {
    let session = user_session(module, token, pin)?;
    let old = session
        .find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Label(CHUID_LABEL.as_bytes().to_vec()),
        ])
        .map_err(|e| p11(token, "C_FindObjects", e))?;
    session
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Modifiable(true),
            Attribute::Label(CHUID_LABEL.as_bytes().to_vec()),
            Attribute::Application(CHUID_LABEL.as_bytes().to_vec()),
            Attribute::ObjectId(CHUID_OBJECT_ID.to_vec()),
            Attribute::Value(chuid.to_vec()),
        ])
        .map_err(|e| p11(token, "C_CreateObject(CHUID data object)", e))?;
    for h in old {
        session
            .destroy_object(h)
            .map_err(|e| p11(token, "C_DestroyObject(old CHUID)", e))?;
    }
    Ok(())
}

/// (subject, issuer, serial number) of a certificate, each DER-encoded as PKCS#11 wants them.
type CertNames = (Vec<u8>, Vec<u8>, Vec<u8>);

fn cert_names(cert_der: &[u8]) -> Result<CertNames, String> {
    use der::{Decode, Encode};
    let cert = x509_cert::Certificate::from_der(cert_der).map_err(|e| e.to_string())?;
    let tbs = cert.tbs_certificate();
    let enc = |r: der::Result<Vec<u8>>| r.map_err(|e| e.to_string());
    Ok((
        enc(tbs.subject().to_der())?,
        enc(tbs.issuer().to_der())?,
        enc(tbs.serial_number().to_der())?,
    ))
}

/// Provisions a card as a card management system would: generates a P-256 PIV Authentication key on the
/// token (it never leaves), has `ca` certify it with `spec`'s FASC-N and UUID, and writes the certificate
/// and the CHUID signed by `ca`'s content signer to the token. Returns the certificate (DER) and its serial. For tests, the benchmark and demos; real
/// cards are issued with `qsi ca issue`.
pub fn provision_with_test_ca(
    module: &Path,
    token: &str,
    pin: &Pin,
    ca: &crate::access::testpki::TestCa,
    spec: &crate::access::testpki::CardSpec,
) -> anyhow::Result<(Vec<u8>, u64)> {
    use der::Decode;
    let spki = generate_slot_key(module, token, pin, SLOT_PIV_AUTH, KeyAlgorithm::EcP256)?;
    let spki = x509_cert::spki::SubjectPublicKeyInfoOwned::from_der(&spki)
        .map_err(|e| anyhow::anyhow!("card public key: {e}"))?;
    let public = crate::access::testpki::ForeignPublicKey {
        raw: spki.subject_public_key.raw_bytes().to_vec(),
        alg: &rcgen::PKCS_ECDSA_P256_SHA256,
    };
    let (cert, serial) = ca.issue_card(&public, spec)?;
    write_certificate(module, token, pin, SLOT_PIV_AUTH, &cert)?;
    if let Some(chuid) = ca.sign_chuid(spec)? {
        write_chuid(module, token, pin, &chuid)?;
    }
    Ok((cert, serial))
}
