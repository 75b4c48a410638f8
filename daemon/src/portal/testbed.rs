//! A login site on loopback with throw-away credentials: a test root CA, an access store with a
//! bootstrapped officer, a portal with labelled data and services, and SoftHSM2 tokens as cards. Used by
//! the end-to-end tests and `qsi bench login`; every part is real (PKCS#11, sockets, TLS, redb).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use base64::Engine as _;
use qsi_hsm::SoftHsmToken;
use qsi_labels::Label;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::config::{DataObject, PortalConfig, Service};
use super::server::{Clock, Portal};
use super::validate::CardValidator;
use crate::access::testpki::{CardSpec, TestCa};
use crate::access::{AccessStore, Action, Assignment, AssignmentSigner, Subject};
use crate::card::Card;

/// The portal's DNS name in the testbed.
pub const SERVER_NAME: &str = "portal.test";

/// A card on a SoftHSM2 token, provisioned by the testbed's CA.
#[derive(Debug)]
pub struct TestCard {
    /// The token (deleted on drop).
    pub token: SoftHsmToken,
    /// The card certificate.
    pub cert_der: Vec<u8>,
    /// Its serial (for CRLs).
    pub serial: u64,
    /// What it says.
    pub spec: CardSpec,
}

impl TestCard {
    /// Provisions a new token as a card.
    pub fn provision(ca: &TestCa, spec: CardSpec) -> anyhow::Result<Self> {
        let token = SoftHsmToken::create("card")?;
        let (cert_der, serial) = crate::card::provision_with_test_ca(
            &token.module,
            &token.label,
            &token.user_pin,
            ca,
            &spec,
        )?;
        Ok(TestCard {
            token,
            cert_der,
            serial,
            spec,
        })
    }

    /// Opens the card with its PIN.
    pub fn open(&self) -> anyhow::Result<Card> {
        Ok(Card::open(
            &self.token.module,
            &self.token.label,
            self.token.user_pin.clone(),
        )?)
    }

    /// The card holder as the subject of an assignment.
    pub fn subject(&self) -> Subject {
        Subject {
            name: self.spec.name.clone(),
            uuid: self.spec.uuid,
            fascn: self.spec.fascn.map(hex::encode_upper),
        }
    }
}

/// Signs an officer's grant of `clearance` to `who` (record number `seq`).
pub fn grant(
    officer: &dyn AssignmentSigner,
    who: Subject,
    clearance: &str,
    seq: u64,
    now: i64,
) -> anyhow::Result<crate::access::SignedAssignment> {
    let clearance: Label = clearance.parse()?;
    Assignment {
        subject: who,
        action: Action::Grant {
            clearance,
            officer: false,
        },
        seq,
        issued_at: now,
        subject_cert: None,
    }
    .sign(officer)
}

/// A running portal on loopback.
pub struct Testbed {
    /// Files of the site (certificates, CRL, store, data).
    pub dir: tempfile::TempDir,
    /// The site's root CA (cards and the portal's certificate).
    pub ca: TestCa,
    /// The access store the portal uses.
    pub store: Arc<AccessStore>,
    /// The officer's card.
    pub officer: TestCard,
    /// Where the portal listens.
    pub addr: SocketAddr,
    /// Seconds added to the portal's clock (tests move time with it).
    pub clock_offset: Arc<AtomicI64>,
    /// The portal's access admin socket (what `qsi access` talks to).
    pub admin_socket: PathBuf,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    admin: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Testbed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Testbed")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.server.abort();
        self.admin.abort();
    }
}

/// What a testbed holds besides its root: extra trust anchors and revoked card serials.
#[derive(Default, Debug)]
pub struct TestbedOptions {
    /// Serials of the root CA's cards to list on its CRL.
    pub revoked: Vec<u64>,
    /// Upstream address of the labelled `cti` service (`SECRET//X`), if any.
    pub cti_upstream: Option<SocketAddr>,
    /// A validator to use instead of the PKI validator over the root and its CRL.
    pub validator: Option<Arc<dyn CardValidator>>,
    /// The site's root CA, when the caller made it (to build a validator around it).
    pub ca: Option<TestCa>,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, bytes)?;
    Ok(p)
}

/// PEM of a DER certificate.
pub fn cert_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(&String::from_utf8_lossy(chunk));
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

impl Testbed {
    /// Starts a site cleared to `TOP SECRET//X//Y` with objects `u` (U), `s-x` (S//X), `s-y` (S//Y) and
    /// `ts` (TS), services `cti` (S//X, when an upstream is given) and `ts-feed` (TS), and an officer
    /// (cleared TS//X//Y) named by the signed bootstrap.
    pub async fn start(opts: TestbedOptions) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = match opts.ca {
            Some(ca) => ca,
            None => TestCa::new("QSI test root")?,
        };
        let root = write(dir.path(), "root.pem", cert_pem(&ca.cert_der).as_bytes())?;
        let crl = write(dir.path(), "root.crl", &ca.crl(&opts.revoked)?)?;
        let (srv_cert, srv_key) = ca.issue_server(SERVER_NAME)?;

        let mut objects = std::collections::BTreeMap::new();
        for (id, label) in [("u", "U"), ("s-x", "S//X"), ("s-y", "S//Y"), ("ts", "TS")] {
            let file = write(
                dir.path(),
                &format!("{id}.txt"),
                format!("content of {id}").as_bytes(),
            )?;
            objects.insert(
                id.to_owned(),
                DataObject {
                    label: label.parse()?,
                    file,
                },
            );
        }
        let mut services = std::collections::BTreeMap::new();
        if let Some(up) = opts.cti_upstream {
            services.insert(
                "cti".to_owned(),
                Service {
                    label: "S//X".parse()?,
                    upstream: up,
                },
            );
        }
        services.insert(
            "ts-feed".to_owned(),
            Service {
                label: "TS".parse()?,
                upstream: "127.0.0.1:9".parse()?,
            },
        );
        let store_path = dir.path().join("access.redb");
        let config = PortalConfig {
            listen: "127.0.0.1:0".parse()?,
            clearance: "TS//X//Y".parse()?,
            store: store_path.clone(),
            admin_socket: super::admin::default_socket(&store_path),
            session_ttl_secs: 600,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            anchors: vec![root],
            crls: vec![crl],
            accepted_policies: vec![],
            intermediates: vec![],
            revocation: qsi_pki::validate::RevocationMode::Require,
            // Testbed cards carry a CHUID signed by the test CA's content signer.
            chuid: super::config::ChuidMode::Require,
            objects,
            services,
        };

        let store = Arc::new(AccessStore::open(&store_path)?);
        let officer = TestCard::provision(&ca, CardSpec::new("Olivia Officer"))?;
        let card = officer.open()?;
        let boot = Assignment {
            subject: officer.subject(),
            action: Action::Grant {
                clearance: "TS//X//Y".parse()?,
                officer: true,
            },
            seq: 1,
            issued_at: now(),
            subject_cert: Some(base64::engine::general_purpose::STANDARD.encode(&officer.cert_der)),
        }
        .sign(&card)?;
        store.bootstrap(&boot, now())?;

        let validator: Arc<dyn CardValidator> = match opts.validator {
            Some(v) => v,
            None => Arc::new(
                super::validate::PkiCardValidator::new(
                    std::slice::from_ref(&ca.cert_der),
                    &[],
                    &[std::fs::read(&config.crls[0])?],
                    &[],
                    qsi_pki::validate::RevocationMode::Require,
                )
                .map_err(|e| anyhow::anyhow!(e))?,
            ),
        };
        let clock_offset = Arc::new(AtomicI64::new(0));
        let off = clock_offset.clone();
        let clock: Clock = Arc::new(move || now() + off.load(Ordering::Relaxed));
        let tls = super::tls::server_config(
            vec![CertificateDer::from(srv_cert)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(srv_key)),
        )?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let admin_socket = config.admin_socket.clone();
        let portal = Arc::new(Portal::new(config, store.clone(), validator, clock));
        let admin = tokio::spawn(super::admin::serve(
            portal.clone(),
            super::admin::bind(&admin_socket)?,
        ));
        let server = tokio::spawn(portal.serve(listener, Arc::new(tls)));
        Ok(Testbed {
            dir,
            ca,
            store,
            officer,
            addr,
            clock_offset,
            admin_socket,
            server,
            admin,
        })
    }

    /// Provisions a card from the site's CA and has the officer grant it `clearance` (None: no grant).
    pub fn enrol(&self, name: &str, clearance: Option<&str>) -> anyhow::Result<TestCard> {
        let card = TestCard::provision(&self.ca, CardSpec::new(name))?;
        if let Some(c) = clearance {
            let officer = self.officer.open()?;
            self.store
                .apply(&grant(&officer, card.subject(), c, 1, now())?, now())?;
        }
        Ok(card)
    }

    /// A client configuration that authenticates with `card` and trusts the site's root.
    pub fn client_config(&self, card: &Card) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        Ok(Arc::new(super::tls::client_config(
            &[CertificateDer::from(self.ca.cert_der.clone())],
            vec![CertificateDer::from(card.cert_der.clone())],
            card.signing_key()?,
        )?))
    }

    /// Connects with `card`.
    pub async fn connect(&self, card: &Card) -> anyhow::Result<super::client::PortalClient> {
        Ok(
            super::client::PortalClient::connect(self.addr, SERVER_NAME, self.client_config(card)?)
                .await?
                .with_chuid(card.chuid.clone()),
        )
    }
}
