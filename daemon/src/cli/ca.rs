//! `qsi ca`: the CA operator's commands. A CA lives in a directory (`ca.toml`, `ca.der`,
//! `issued-to/`, `ca.redb`); its key lives in a PKCS#11 token. While `qsi ca serve` runs it owns
//! the database (redb admits one process), so the other commands go through its admin socket
//! (`admin.sock` in the CA directory, peer credentials checked) and open the database directly
//! only when no service answers.

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use der::{Decode, Encode};
use qsi_hsm::{KeyStore, Pin, Pkcs11Config, Pkcs11Store, TokenSelector};
use qsi_pki::ca::authority::{Authority, IssueRequest};
use qsi_pki::ca::db::{CaDb, CertRecord, Status};
use qsi_pki::ca::hsm_signer::HsmSigner;
use qsi_pki::ca::issue::{self_signed_root, verify_cert_signature};
use qsi_pki::ca::signer::{CaSigner, SigAlg};
use qsi_pki::fascn::Fascn;
use qsi_pki::profiles::{CrossParamsFile, Publication, SubjectIds};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use x509_cert::Certificate;

/// `qsi ca` subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a CA: a self-signed root, or (with --parent) an issuing CA signed by another CA
    Init(Box<InitArgs>),
    /// Issue a certificate under a profile from a PKCS#10 request or a key generated on a token
    Issue(Box<IssueArgs>),
    /// Create the CA's PIV (or PIV-I) content signer, which signs the CHUID of every card it issues
    ContentSigner(ContentSignerArgs),
    /// Cross-certify another CA (a bridge): mappings and constraints from a TOML file
    CrossCertify(CrossArgs),
    /// Revoke a certificate this CA issued
    Revoke(RevokeArgs),
    /// Sign a fresh CRL
    Crl(CrlArgs),
    /// List the certificates this CA issued
    List(ListArgs),
    /// Serve OCSP (RFC 6960), the CRL and .p7c bundles over HTTP; re-issue CRLs before nextUpdate
    Serve(ServeArgs),
}

/// Where the CA's key lives.
#[derive(Args, Debug, Clone)]
pub struct TokenArgs {
    /// PKCS#11 module (default: the SoftHSM2 module found on this machine)
    #[arg(long)]
    module: Option<PathBuf>,
    /// Token label
    #[arg(long)]
    token: String,
    /// Where the user PIN comes from: `env:NAME` or `file:PATH` (never the PIN itself)
    #[arg(long, default_value = "env:QSI_HSM_PIN")]
    pin: String,
}

/// `qsi ca init`.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// The CA's directory (created)
    #[arg(long)]
    dir: PathBuf,
    /// Short name: the stem of its CRL and .p7c URLs
    #[arg(long)]
    name: String,
    /// Subject DN, RFC 4514 (`CN=QSI Root CA,O=QSI,C=US`)
    #[arg(long)]
    subject: String,
    /// Key algorithm: p256, p384, rsa3072, ml-dsa-65, ml-dsa-87
    #[arg(long, default_value = "p384")]
    key_alg: String,
    #[command(flatten)]
    token: TokenArgs,
    /// Base URL where `qsi ca serve` publishes (AIA, SIA, CRL DP, OCSP)
    #[arg(long, default_value = "http://127.0.0.1:8480")]
    base_url: String,
    /// Address `qsi ca serve` listens on
    #[arg(long, default_value = "127.0.0.1:8480")]
    listen: String,
    /// Directory of the parent CA: make an issuing CA signed by it
    #[arg(long)]
    parent: Option<PathBuf>,
    /// Policies of the issuing CA (dotted OIDs, comma-separated; default: every policy the
    /// profiles assert)
    #[arg(long, value_delimiter = ',')]
    policies: Vec<String>,
    /// Validity in days (default: 20 years for a root, 10 for an issuing CA)
    #[arg(long)]
    days: Option<u32>,
}

/// `qsi ca issue`.
#[derive(Args, Debug)]
pub struct IssueArgs {
    /// The CA's directory
    #[arg(long)]
    dir: PathBuf,
    /// Profile: piv-auth, piv-card-auth, piv-digital-signature, piv-key-management,
    /// piv-content-signing, piv-i-auth, piv-i-card-auth, piv-i-digital-signature,
    /// piv-i-key-management, piv-i-content-signing, tls-server, tls-client, ocsp-signer
    #[arg(long)]
    profile: String,
    /// PKCS#10 request (PEM or DER)
    #[arg(long, conflicts_with = "generate_key")]
    csr: Option<PathBuf>,
    /// Generate the subject's key on a token (a card token for PIV): p256, p384, rsa3072, ml-dsa-65, ml-dsa-87
    #[arg(long)]
    generate_key: Option<String>,
    /// Token that gets the generated key (with --generate-key). For the card profiles (piv-auth,
    /// piv-i-auth, *-card-auth, *-digital-signature) this is the card: the key goes into its PIV slot,
    /// and the certificate and the CHUID signed by the CA's content signer are written onto it
    #[arg(long)]
    key_token: Option<String>,
    /// PKCS#11 module of that token (default: the CA's module; OpenSC's opensc-pkcs11.so for a card in
    /// a reader)
    #[arg(long)]
    key_module: Option<PathBuf>,
    /// PIN source of that token
    #[arg(long, default_value = "env:QSI_CARD_PIN")]
    key_pin: String,
    /// Subject DN (default: the request's)
    #[arg(long)]
    subject: Option<String>,
    /// The card's FASC-N, human form `S9999F9999F999999F0F1F0000000000300001E`
    #[arg(long)]
    fascn: Option<String>,
    /// The card UUID
    #[arg(long)]
    uuid: Option<String>,
    /// User principal name (smart-card logon)
    #[arg(long)]
    upn: Option<String>,
    /// E-mail address (signature and key-management certificates)
    #[arg(long)]
    email: Vec<String>,
    /// DNS name (TLS)
    #[arg(long)]
    dns: Vec<String>,
    /// IP address (TLS)
    #[arg(long)]
    ip: Vec<std::net::IpAddr>,
    /// Validity in days (default: the profile's)
    #[arg(long)]
    days: Option<u32>,
    /// Where to write the certificate (DER)
    #[arg(long)]
    out: PathBuf,
}

/// `qsi ca content-signer`.
#[derive(Args, Debug)]
pub struct ContentSignerArgs {
    /// The CA's directory
    #[arg(long)]
    dir: PathBuf,
    /// piv-content-signing (signs PIV cards' CHUIDs) or piv-i-content-signing (PIV-I cards)
    #[arg(long, default_value = "piv-content-signing")]
    profile: String,
    /// Key algorithm of the content signing key (in the CA's token)
    #[arg(long, default_value = "p256")]
    key_alg: String,
    /// Subject DN (default `CN=<ca name> <profile>`)
    #[arg(long)]
    subject: Option<String>,
    /// Validity in days (default: the profile's)
    #[arg(long)]
    days: Option<u32>,
}

/// `qsi ca cross-certify`.
#[derive(Args, Debug)]
pub struct CrossArgs {
    /// The CA's directory
    #[arg(long)]
    dir: PathBuf,
    /// The other CA's self-signed certificate (DER or PEM): its subject and key are certified
    #[arg(long)]
    subject_cert: PathBuf,
    /// TOML with policies, mappings, name constraints, policy constraints, inhibitAnyPolicy
    #[arg(long)]
    config: PathBuf,
    /// Validity in days (default 3 years)
    #[arg(long)]
    days: Option<u32>,
    /// Where to write the cross-certificate (DER)
    #[arg(long)]
    out: PathBuf,
}

/// `qsi ca revoke`.
#[derive(Args, Debug)]
pub struct RevokeArgs {
    /// The CA's directory
    #[arg(long)]
    dir: PathBuf,
    /// Serial number (hex, as `qsi ca list` prints it)
    #[arg(long)]
    serial: String,
    /// RFC 5280 reason: unspecified, keyCompromise, affiliationChanged, superseded,
    /// cessationOfOperation, certificateHold, privilegeWithdrawn
    #[arg(long, default_value = "unspecified")]
    reason: String,
}

/// `qsi ca crl`.
#[derive(Args, Debug)]
pub struct CrlArgs {
    /// The CA's directory
    #[arg(long)]
    dir: PathBuf,
    /// Where to write the CRL (DER)
    #[arg(long)]
    out: PathBuf,
}

/// `qsi ca list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// The CA's directory
    #[arg(long)]
    dir: PathBuf,
    /// JSON output
    #[arg(long)]
    json: bool,
}

/// `qsi ca serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The CA's directory
    #[arg(long)]
    dir: PathBuf,
    /// Listen address (default: the one in ca.toml)
    #[arg(long)]
    listen: Option<String>,
    /// CRL validity in seconds (nextUpdate - thisUpdate); a new CRL is signed at half of it
    #[arg(long, default_value_t = 86_400)]
    crl_validity_secs: u64,
}

/// `ca.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// Short name.
    pub name: String,
    /// Label of the CA key in the token.
    pub key: String,
    /// PKCS#11 module.
    pub module: PathBuf,
    /// Token label.
    pub token: String,
    /// PIN source (`env:NAME` or `file:PATH`).
    pub pin: String,
    /// Publication base URL.
    pub base_url: String,
    /// Listen address of `serve`.
    pub listen: String,
}

fn module_path(m: &Option<PathBuf>) -> Result<PathBuf> {
    match m {
        Some(p) => Ok(p.clone()),
        None => qsi_hsm::pkcs11::default_module_path().map_err(|e| {
            anyhow!(
                "no PKCS#11 module given and none found ({e}); pass --module /path/to/module.so"
            )
        }),
    }
}

fn open_store(module: &Path, token: &str, pin: &str) -> Result<Arc<dyn KeyStore>> {
    let pin = Pin::from_source(pin).with_context(|| format!("reading the PIN from {pin}"))?;
    let store = Pkcs11Store::open(Pkcs11Config::new(
        module,
        TokenSelector::Label(token.to_string()),
        pin,
    ))
    .with_context(|| {
        format!("opening token {token:?} through {}: is it initialised (softhsm2-util --init-token) and is SOFTHSM2_CONF set?", module.display())
    })?;
    Ok(Arc::new(store))
}

fn read_config(dir: &Path) -> Result<CaConfig> {
    let path = dir.join("ca.toml");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {}: is this a CA directory made by `qsi ca init`?",
            path.display()
        )
    })?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn read_cert(path: &Path) -> Result<Certificate> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.starts_with(b"-----BEGIN") {
        use der::DecodePem;
        Certificate::from_pem(&bytes).with_context(|| format!("parsing {}", path.display()))
    } else {
        Certificate::from_der(&bytes).with_context(|| format!("parsing {}", path.display()))
    }
}

/// Opens the CA in `dir` directly (database and key).
pub fn open_authority(dir: &Path) -> Result<Authority> {
    let cfg = read_config(dir)?;
    let store = open_store(&cfg.module, &cfg.token, &cfg.pin)?;
    let signer = HsmSigner::find(store, &cfg.key).map_err(|e| {
        anyhow!(
            "CA key {:?} not found in token {:?}: {e}",
            cfg.key,
            cfg.token
        )
    })?;
    let cert = read_cert(&dir.join("ca.der"))?;
    let mut issued_to = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir.join("issued-to")) {
        let mut paths: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            issued_to.push(std::fs::read(&p)?);
        }
    }
    let db = CaDb::open(&dir.join("ca.redb")).map_err(|e| {
        anyhow!("{e}; if `qsi ca serve` runs for this CA, its admin socket should have answered: check {}", dir.join("admin.sock").display())
    })?;
    Authority::new(
        cfg.name,
        cert,
        issued_to,
        Box::new(signer),
        db,
        Publication {
            base_url: cfg.base_url,
        },
    )
    .map_err(|e| anyhow!("{e}"))
}

/// A request on the admin socket (one JSON line).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum AdminRequest {
    /// Issue.
    Issue(Box<IssueRequest>),
    /// Revoke.
    Revoke {
        /// Serial hex.
        serial: String,
        /// Reason code.
        reason: u32,
    },
    /// New CRL.
    Crl,
    /// List.
    List,
}

/// The answer (one JSON line).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AdminResponse {
    /// Error text, when refused.
    pub error: Option<String>,
    /// Issued certificate record.
    pub record: Option<CertRecord>,
    /// DER (CRL), hex.
    pub der_hex: Option<String>,
    /// Listing: (record, revoked reason if revoked).
    pub list: Option<Vec<(CertRecord, Option<u32>)>>,
}

/// Handles one admin request against a CA.
pub fn handle(ca: &Authority, req: AdminRequest, now: SystemTime) -> AdminResponse {
    let mut out = AdminResponse::default();
    let res: Result<(), String> = (|| {
        match req {
            AdminRequest::Issue(r) => {
                out.record = Some(ca.issue(&r, now).map_err(|e| e.to_string())?)
            }
            AdminRequest::Revoke { serial, reason } => {
                ca.revoke(&serial, reason, now).map_err(|e| e.to_string())?;
            }
            AdminRequest::Crl => {
                out.der_hex = Some(hex::encode(ca.crl(now).map_err(|e| e.to_string())?))
            }
            AdminRequest::List => {
                out.list = Some(
                    ca.list()
                        .map_err(|e| e.to_string())?
                        .into_iter()
                        .map(|(r, rev)| (r, rev.map(|x| x.reason)))
                        .collect(),
                )
            }
        }
        Ok(())
    })();
    if let Err(e) = res {
        out.error = Some(e);
    }
    out
}

/// Sends `req` to a running `serve` if one answers on the CA's admin socket, else runs it on the
/// database directly.
fn dispatch(dir: &Path, req: AdminRequest) -> Result<AdminResponse> {
    let sock = dir.join("admin.sock");
    let resp = match std::os::unix::net::UnixStream::connect(&sock) {
        Ok(mut s) => {
            tracing::info!(socket = %sock.display(), "sending to the running CA service");
            let mut line = serde_json::to_vec(&req)?;
            line.push(b'\n');
            s.write_all(&line)?;
            let mut reader = BufReader::new(s);
            let mut answer = String::new();
            reader.read_line(&mut answer)?;
            serde_json::from_str(&answer).context("reading the CA service's answer")?
        }
        Err(_) => {
            let ca = open_authority(dir)?;
            handle(&ca, req, SystemTime::now())
        }
    };
    if let Some(e) = &resp.error {
        bail!("refused: {e}");
    }
    Ok(resp)
}

/// Writes `bytes` to `path` atomically (temp file + rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

fn sig_alg(name: &str) -> Result<SigAlg> {
    SigAlg::from_name(name).ok_or_else(|| {
        anyhow!("unknown key algorithm {name:?}: use p256, p384, rsa3072, ml-dsa-65 or ml-dsa-87")
    })
}

fn init(a: InitArgs) -> Result<()> {
    if a.dir.join("ca.toml").exists() {
        bail!(
            "{} already holds a CA; choose another --dir",
            a.dir.display()
        );
    }
    let module = module_path(&a.token.module)?;
    let alg = sig_alg(&a.key_alg)?;
    let store = open_store(&module, &a.token.token, &a.token.pin)?;
    let label = format!("{}-ca-key", a.name);
    let signer = HsmSigner::generate(store, &label, alg)
        .map_err(|e| anyhow!("generating the CA key in token {:?}: {e}", a.token.token))?;
    let subject: x509_cert::name::Name = a
        .subject
        .parse()
        .map_err(|e| anyhow!("--subject {:?}: {e}", a.subject))?;
    let publication = Publication {
        base_url: a.base_url.trim_end_matches('/').to_string(),
    };
    let now = SystemTime::now();
    let mut issued_to: Vec<(String, Vec<u8>)> = Vec::new();
    let cert_der = match &a.parent {
        None => {
            let days = a.days.unwrap_or(20 * 365);
            let mut serial = [0u8; 16];
            aws_lc_rs::rand::fill(&mut serial).map_err(|_| anyhow!("random generator failed"))?;
            serial[0] = (serial[0] & 0x3f) | 0x40;
            let cert = self_signed_root(
                &signer,
                subject,
                &a.name,
                &publication,
                x509_cert::serial_number::SerialNumber::new(&serial)?,
                now - Duration::from_secs(300),
                now + Duration::from_secs(u64::from(days) * 86_400),
            )
            .map_err(|e| anyhow!("{e}"))?;
            cert.to_der()?
        }
        Some(parent) => {
            let policies = if a.policies.is_empty() {
                use qsi_pki::profiles::Profile;
                let mut all: Vec<String> = Profile::ALL
                    .iter()
                    .flat_map(|p| p.policies().iter().map(|o| o.to_string()))
                    .collect();
                all.sort();
                all.dedup();
                all
            } else {
                a.policies.clone()
            };
            let req = IssueRequest {
                profile: "issuing-ca".into(),
                spki_hex: Some(hex::encode(signer.public_key().to_der()?)),
                subject: Some(a.subject.clone()),
                days: a.days,
                ca_policies: policies,
                subject_ca_name: Some(a.name.clone()),
                ..Default::default()
            };
            let resp = dispatch(parent, AdminRequest::Issue(Box::new(req)))?;
            let rec = resp
                .record
                .ok_or_else(|| anyhow!("the parent CA returned no certificate"))?;
            let parent_cfg = read_config(parent)?;
            issued_to.push((
                format!("{}.der", parent_cfg.name),
                std::fs::read(parent.join("ca.der"))?,
            ));
            if let Ok(rd) = std::fs::read_dir(parent.join("issued-to")) {
                for e in rd.flatten() {
                    issued_to.push((
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read(e.path())?,
                    ));
                }
            }
            rec.der().map_err(|e| anyhow!("{e}"))?
        }
    };
    std::fs::create_dir_all(a.dir.join("issued-to"))?;
    for (name, der) in issued_to {
        write_atomic(&a.dir.join("issued-to").join(name), &der)?;
    }
    write_atomic(&a.dir.join("ca.der"), &cert_der)?;
    let cfg = CaConfig {
        name: a.name.clone(),
        key: label,
        module,
        token: a.token.token.clone(),
        pin: a.token.pin.clone(),
        base_url: publication.base_url.clone(),
        listen: a.listen.clone(),
    };
    let db = CaDb::open(&a.dir.join("ca.redb")).map_err(|e| anyhow!("{e}"))?;
    db.audit(
        now,
        "init",
        &format!("name={} key={} alg={:?}", a.name, signer.uri(), alg),
    )
    .map_err(|e| anyhow!("{e}"))?;
    write_atomic(&a.dir.join("ca.toml"), toml::to_string(&cfg)?.as_bytes())?;
    println!(
        "CA {} created in {} (key {})",
        a.name,
        a.dir.display(),
        signer.uri()
    );
    Ok(())
}

fn parse_ids(a: &IssueArgs) -> Result<SubjectIds> {
    Ok(SubjectIds {
        fascn: a
            .fascn
            .as_deref()
            .map(|f| {
                f.parse::<Fascn>()
                    .map_err(|e| anyhow!("--fascn {f:?}: {e}"))
            })
            .transpose()?,
        uuid: a
            .uuid
            .as_deref()
            .map(|u| u.parse().map_err(|e| anyhow!("--uuid {u:?}: {e}")))
            .transpose()?,
        upn: a.upn.clone(),
        emails: a.email.clone(),
        dns: a.dns.clone(),
        ips: a.ip.clone(),
    })
}

fn issue_cmd(a: IssueArgs) -> Result<()> {
    let ids = parse_ids(&a)?;
    let mut req = IssueRequest {
        profile: a.profile.clone(),
        subject: a.subject.clone(),
        ids,
        days: a.days,
        ..Default::default()
    };
    let mut card = None;
    match (&a.csr, &a.generate_key) {
        (Some(csr), None) => {
            let bytes = std::fs::read(csr).with_context(|| format!("reading {}", csr.display()))?;
            let der = if bytes.starts_with(b"-----BEGIN") {
                der::pem::decode_vec(&bytes)
                    .map_err(|e| anyhow!("{}: not a PEM request: {e}", csr.display()))?
                    .1
            } else {
                bytes
            };
            req.csr_hex = Some(hex::encode(der));
        }
        (None, Some(alg)) => {
            let token = a.key_token.as_deref().ok_or_else(|| {
                anyhow!("--generate-key needs --key-token (the card token that gets the key)")
            })?;
            let cfg = read_config(&a.dir)?;
            let module = a.key_module.clone().unwrap_or(cfg.module.clone());
            let slot = crate::card::slot_for_profile(&a.profile);
            // A PIV card edge has no ML-DSA slot: such keys stay sealed objects on the token, and no
            // certificate or CHUID is written to it.
            let slot = slot.filter(|_| !sig_alg(alg).is_ok_and(|s| s.is_ml_dsa()));
            if let Some(slot) = slot {
                if a.uuid.is_none() {
                    bail!("a card needs --uuid (its certificate's and CHUID's card UUID)");
                }
                // Fail before touching the card when the CHUID could not be signed.
                let content = content_signer(&a.dir, content_profile(&a.profile))?;
                let key_alg = sig_alg(alg)?;
                let key_alg =
                    qsi_pki::ca::hsm_signer::key_algorithm(key_alg).map_err(|e| anyhow!("{e}"))?;
                let pin = Pin::from_source(&a.key_pin)
                    .with_context(|| format!("reading the card PIN from {}", a.key_pin))?;
                let spki = crate::card::generate_slot_key(&module, token, &pin, slot, key_alg)
                    .with_context(|| {
                        format!("generating the {} on card {token:?}", slot.key_label)
                    })?;
                eprintln!(
                    "generated {} (CKA_ID {:02X}) on card {token}",
                    slot.key_label, slot.id
                );
                req.spki_hex = Some(hex::encode(spki));
                card = Some((module, token.to_owned(), pin, slot, content));
            } else {
                let store = open_store(&module, token, &a.key_pin)?;
                let label = format!(
                    "{}-{}-{}",
                    a.profile,
                    alg,
                    a.uuid.as_deref().unwrap_or("key")
                );
                let key = HsmSigner::generate(store, &label, sig_alg(alg)?)
                    .map_err(|e| anyhow!("generating the key on token {token:?}: {e}"))?;
                eprintln!("generated {} on token {token}", key.uri());
                req.spki_hex = Some(hex::encode(key.public_key().to_der()?));
            }
        }
        _ => bail!("give --csr FILE or --generate-key ALG --key-token LABEL"),
    }
    let resp = dispatch(&a.dir, AdminRequest::Issue(Box::new(req)))?;
    let rec = resp
        .record
        .ok_or_else(|| anyhow!("no certificate returned"))?;
    let der = rec.der().map_err(|e| anyhow!("{e}"))?;
    write_atomic(&a.out, &der)?;
    println!(
        "issued {} serial {} -> {}",
        rec.profile,
        rec.serial,
        a.out.display()
    );
    if let Some((module, token, pin, slot, content)) = card {
        write_card(&a, &module, &token, &pin, slot, &der, &content)?;
        println!(
            "card {token}: {} (CKA_ID {:02X}) and signed CHUID ({}) written",
            slot.cert_label,
            slot.id,
            content.1.tbs_certificate().subject()
        );
    }
    Ok(())
}

/// The content-signing profile whose signer signs the CHUID of cards issued under `profile`.
fn content_profile(profile: &str) -> &'static str {
    if profile.starts_with("piv-i-") {
        "piv-i-content-signing"
    } else {
        "piv-content-signing"
    }
}

/// The content signer of a CA: its certificate (`<profile>.der` in the CA directory) and its key (label
/// `<ca name>-<profile>` in the CA's token).
fn content_signer(dir: &Path, profile: &str) -> Result<(HsmSigner, Certificate)> {
    let cfg = read_config(dir)?;
    let path = dir.join(format!("{profile}.der"));
    if !path.exists() {
        bail!(
            "this CA has no {profile} content signer to sign the card's CHUID: run `qsi ca content-signer --dir {} --profile {profile}` first",
            dir.display()
        );
    }
    let cert = read_cert(&path)?;
    let store = open_store(&cfg.module, &cfg.token, &cfg.pin)?;
    let label = format!("{}-{profile}", cfg.name);
    let signer = HsmSigner::find(store, &label).map_err(|e| {
        anyhow!(
            "content signing key {label:?} not found in token {:?}: {e}",
            cfg.token
        )
    })?;
    if signer.public_key() != cert.tbs_certificate().subject_public_key_info() {
        bail!(
            "{} does not certify the key {label:?}: re-run `qsi ca content-signer`",
            path.display()
        );
    }
    Ok((signer, cert))
}

fn content_signer_cmd(a: ContentSignerArgs) -> Result<()> {
    if !matches!(
        a.profile.as_str(),
        "piv-content-signing" | "piv-i-content-signing"
    ) {
        bail!(
            "--profile {:?}: use piv-content-signing or piv-i-content-signing",
            a.profile
        );
    }
    let cfg = read_config(&a.dir)?;
    let path = a.dir.join(format!("{}.der", a.profile));
    if path.exists() {
        bail!(
            "{} exists: this CA already has a {} content signer",
            path.display(),
            a.profile
        );
    }
    let store = open_store(&cfg.module, &cfg.token, &cfg.pin)?;
    let label = format!("{}-{}", cfg.name, a.profile);
    let key = HsmSigner::generate(store, &label, sig_alg(&a.key_alg)?)
        .map_err(|e| anyhow!("generating {label:?} in token {:?}: {e}", cfg.token))?;
    let req = IssueRequest {
        profile: a.profile.clone(),
        spki_hex: Some(hex::encode(key.public_key().to_der()?)),
        subject: Some(
            a.subject
                .clone()
                .unwrap_or_else(|| format!("CN={} {}", cfg.name, a.profile)),
        ),
        days: a.days,
        ..Default::default()
    };
    let resp = dispatch(&a.dir, AdminRequest::Issue(Box::new(req)))?;
    let rec = resp
        .record
        .ok_or_else(|| anyhow!("no certificate returned"))?;
    write_atomic(&path, &rec.der().map_err(|e| anyhow!("{e}"))?)?;
    println!(
        "content signer {} serial {} (key {}) -> {}",
        a.profile,
        rec.serial,
        key.uri(),
        path.display()
    );
    Ok(())
}

/// Writes an issued card certificate into its PIV slot and the CHUID, signed by the CA's content signer,
/// onto the card.
fn write_card(
    a: &IssueArgs,
    module: &Path,
    token: &str,
    pin: &Pin,
    slot: crate::card::PivSlot,
    cert_der: &[u8],
    content: &(HsmSigner, Certificate),
) -> Result<()> {
    crate::card::write_certificate(module, token, pin, slot, cert_der)
        .with_context(|| format!("writing the certificate onto card {token:?}"))?;
    let cert = Certificate::from_der(cert_der)?;
    let ids = parse_ids(a)?;
    // PIV-I cards without a FASC-N of their own carry the non-federal placeholder in the CHUID
    // (agency 9999); the portal then matches the UUID only.
    let fascn = match ids.fascn {
        Some(f) => f,
        None => "S9999F9999F999999F0F1F0000000000300001E"
            .parse()
            .map_err(|e| anyhow!("placeholder FASC-N: {e}"))?,
    };
    let guid = ids
        .uuid
        .ok_or_else(|| anyhow!("a card needs --uuid (the CHUID's GUID)"))?;
    let not_after = cert
        .tbs_certificate()
        .validity()
        .not_after
        .to_unix_duration();
    let secs = i64::try_from(not_after.as_secs()).unwrap_or(i64::MAX);
    let expiry = time::OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|e| anyhow!("certificate notAfter: {e}"))?;
    let chuid = qsi_pki::chuid::Chuid {
        fascn,
        guid,
        expiry: format!(
            "{:04}{:02}{:02}",
            expiry.year(),
            u8::from(expiry.month()),
            expiry.day()
        ),
    };
    let buf = chuid
        .sign(&content.0, &content.1)
        .map_err(|e| anyhow!("signing the CHUID: {e}"))?;
    crate::card::write_chuid(module, token, pin, &buf)
        .with_context(|| format!("writing the CHUID onto card {token:?}"))?;
    Ok(())
}

fn cross_cmd(a: CrossArgs) -> Result<()> {
    let other = read_cert(&a.subject_cert)?;
    // The other CA proves possession of its key by its self-signature.
    verify_cert_signature(&other, other.tbs_certificate().subject_public_key_info()).map_err(
        |e| {
            anyhow!(
                "{} is not a valid self-signed CA certificate: {e}",
                a.subject_cert.display()
            )
        },
    )?;
    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("reading {}", a.config.display()))?;
    let cross: CrossParamsFile =
        toml::from_str(&text).with_context(|| format!("parsing {}", a.config.display()))?;
    cross
        .validate()
        .map_err(|e| anyhow!("{}: {e}", a.config.display()))?;
    let req = IssueRequest {
        profile: "cross-certificate".into(),
        spki_hex: Some(hex::encode(
            other.tbs_certificate().subject_public_key_info().to_der()?,
        )),
        subject: Some(other.tbs_certificate().subject().to_string()),
        days: a.days,
        cross: Some(cross),
        ..Default::default()
    };
    let resp = dispatch(&a.dir, AdminRequest::Issue(Box::new(req)))?;
    let rec = resp
        .record
        .ok_or_else(|| anyhow!("no certificate returned"))?;
    write_atomic(&a.out, &rec.der().map_err(|e| anyhow!("{e}"))?)?;
    println!(
        "cross-certified {} serial {} -> {}",
        rec.subject,
        rec.serial,
        a.out.display()
    );
    Ok(())
}

fn revoke_cmd(a: RevokeArgs) -> Result<()> {
    let reason = qsi_pki::ca::crl::reason_code(&a.reason)
        .ok_or_else(|| anyhow!("unknown reason {:?}", a.reason))?;
    dispatch(
        &a.dir,
        AdminRequest::Revoke {
            serial: a.serial.clone(),
            reason,
        },
    )?;
    println!("revoked {} ({})", a.serial, a.reason);
    Ok(())
}

fn crl_cmd(a: CrlArgs) -> Result<()> {
    let resp = dispatch(&a.dir, AdminRequest::Crl)?;
    let der = hex::decode(resp.der_hex.unwrap_or_default())?;
    write_atomic(&a.out, &der)?;
    println!("CRL -> {}", a.out.display());
    Ok(())
}

fn list_cmd(a: ListArgs) -> Result<()> {
    let resp = dispatch(&a.dir, AdminRequest::List)?;
    let list = resp.list.unwrap_or_default();
    if a.json {
        let rows: Vec<_> = list
            .iter()
            .map(|(r, rev)| serde_json::json!({"serial": r.serial, "profile": r.profile, "subject": r.subject, "not_after": r.not_after, "revoked_reason": rev}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        for (r, rev) in list {
            let state = match rev {
                Some(code) => format!("revoked({code})"),
                None => "good".into(),
            };
            println!(
                "{}  {:<24} {:<12} {}",
                r.serial, r.profile, state, r.subject
            );
        }
    }
    Ok(())
}

/// Runs a `qsi ca` command.
pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Init(a) => init(*a),
        Command::Issue(a) => issue_cmd(*a),
        Command::ContentSigner(a) => content_signer_cmd(a),
        Command::CrossCertify(a) => cross_cmd(a),
        Command::Revoke(a) => revoke_cmd(a),
        Command::Crl(a) => crl_cmd(a),
        Command::List(a) => list_cmd(a),
        Command::Serve(a) => super::ca_serve::run(a.dir, a.listen, a.crl_validity_secs),
    }
}

/// Status as text (for logs).
pub fn status_name(s: &Status) -> &'static str {
    match s {
        Status::Good => "good",
        Status::Revoked(_) => "revoked",
        Status::Unknown => "unknown",
    }
}
