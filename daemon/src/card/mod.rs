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
        Ok(Card {
            store,
            key,
            cert_der,
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

/// Writes a certificate onto a card as the PIV Authentication certificate (public token object with the
/// key's `CKA_ID`), as a card management system does after issuance.
pub fn write_certificate(
    module: &Path,
    token: &str,
    pin: &Pin,
    id: &[u8],
    cert_der: &[u8],
) -> Result<(), CardError> {
    let ctx = qsi_hsm::pkcs11::shared_context(module)?;
    let slot = qsi_hsm::pkcs11::find_slot(module, &TokenSelector::Label(token.to_owned()))?;
    let session = ctx
        .open_rw_session(slot)
        .map_err(|e| p11(token, "C_OpenSession", e))?;
    match session.login(
        UserType::User,
        Some(&AuthPin::new(pin.expose().to_string())),
    ) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {
        }
        Err(e) => return Err(p11(token, "C_Login", e)),
    }
    let subject = subject_der(cert_der).map_err(|detail| CardError::Pkcs11 {
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
            Attribute::Label(PIV_AUTH_CERT_LABEL.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
            Attribute::Subject(subject),
            Attribute::Value(cert_der.to_vec()),
        ])
        .map_err(|e| p11(token, "C_CreateObject", e))?;
    Ok(())
}

fn subject_der(cert_der: &[u8]) -> Result<Vec<u8>, String> {
    use der::{Decode, Encode};
    let cert = x509_cert::Certificate::from_der(cert_der).map_err(|e| e.to_string())?;
    cert.tbs_certificate()
        .subject()
        .to_der()
        .map_err(|e| e.to_string())
}

/// Provisions a card as a card management system would: generates a P-256 PIV Authentication key on the
/// token (it never leaves), has `ca` certify it with `spec`'s FASC-N and UUID, and writes the certificate
/// to the token. Returns the certificate (DER) and its serial. For tests, the benchmark and demos; real
/// cards are issued with `qsi ca issue`.
pub fn provision_with_test_ca(
    module: &Path,
    token: &str,
    pin: &Pin,
    ca: &crate::access::testpki::TestCa,
    spec: &crate::access::testpki::CardSpec,
) -> anyhow::Result<(Vec<u8>, u64)> {
    use der::Decode;
    let store = Pkcs11Store::open(Pkcs11Config::new(
        module,
        TokenSelector::Label(token.to_owned()),
        pin.clone(),
    ))?;
    let key = store.generate(PIV_AUTH_KEY_LABEL, KeyAlgorithm::EcP256)?;
    let spki = store.public_key_spki(&key)?;
    let spki = x509_cert::spki::SubjectPublicKeyInfoOwned::from_der(&spki)
        .map_err(|e| anyhow::anyhow!("card public key: {e}"))?;
    let public = crate::access::testpki::ForeignPublicKey {
        raw: spki.subject_public_key.raw_bytes().to_vec(),
        alg: &rcgen::PKCS_ECDSA_P256_SHA256,
    };
    let (cert, serial) = ca.issue_card(&public, spec)?;
    write_certificate(module, token, pin, &key.id, &cert)?;
    Ok((cert, serial))
}
