//! `qsi hsm init-token|list|keygen|pubkey|test`: keys in PKCS#11 tokens (or the development file store).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::Subcommand;
use qsi_hsm::pkcs11::{self, TokenSelector};
use qsi_hsm::{
    FileStore, GenerateOptions, KeyAlgorithm, KeyStorage, KeyStore, MlDsaMode, Pin, Pkcs11Config,
    Pkcs11Store, verify_signature,
};
use serde_json::{Value, json};

/// Key and token operations.
#[derive(Subcommand)]
pub enum Command {
    /// Initialize a token in a free slot and set its user PIN (never re-initializes a token)
    InitToken(InitTokenArgs),
    /// The module's tokens and, with --token (or --file-store), the keys on it: labels, ids, types, never values
    List(Common),
    /// Generate a key on the token (non-extractable, sensitive)
    Keygen(KeygenArgs),
    /// Print a key's public key (SubjectPublicKeyInfo, PEM)
    Pubkey(PubkeyArgs),
    /// Sign and verify with a fresh key of each type, seal and open with AES-GCM, list the token's mechanisms
    Test(Common),
}

/// Where the keys are and how to log in.
#[derive(clap::Args, Clone)]
pub struct Common {
    /// PKCS#11 module (default: SoftHSM2's, wherever it is installed)
    #[arg(long, env = "QSI_PKCS11_MODULE")]
    pub module: Option<PathBuf>,
    /// Token label
    #[arg(long, env = "QSI_HSM_TOKEN")]
    pub token: Option<String>,
    /// Token serial number (instead of --token)
    #[arg(long, conflicts_with = "token")]
    pub serial: Option<String>,
    /// File holding the user PIN (or the file store's passphrase); first line
    #[arg(long, conflicts_with = "pin_env")]
    pub pin_file: Option<PathBuf>,
    /// Environment variable holding the user PIN (default QSI_HSM_PIN)
    #[arg(long)]
    pub pin_env: Option<String>,
    /// Use the development file store in this directory instead of a token (NOT FOR PRODUCTION)
    #[arg(long, conflicts_with_all = ["module", "token", "serial"])]
    pub file_store: Option<PathBuf>,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// Options of `qsi hsm init-token`.
#[derive(clap::Args)]
pub struct InitTokenArgs {
    #[command(flatten)]
    pub common: Common,
    /// Label of the new token (1 to 32 bytes)
    #[arg(long)]
    pub label: String,
    /// File holding the security officer PIN
    #[arg(long, conflicts_with = "so_pin_env")]
    pub so_pin_file: Option<PathBuf>,
    /// Environment variable holding the security officer PIN (default QSI_HSM_SO_PIN)
    #[arg(long)]
    pub so_pin_env: Option<String>,
}

/// Options of `qsi hsm keygen`.
#[derive(clap::Args)]
pub struct KeygenArgs {
    #[command(flatten)]
    pub common: Common,
    /// Key label
    #[arg(long)]
    pub label: String,
    /// Key type: ec-p256, ec-p384, rsa-3072, aes-256, ml-dsa-65, ml-dsa-87
    #[arg(long = "type", value_parser = parse_alg)]
    pub algorithm: KeyAlgorithm,
    /// Allow an AES key to leave the token wrapped under a key-encryption key (never in clear)
    #[arg(long)]
    pub extractable: bool,
    /// ML-DSA keys: auto (the token's own PKCS#11 3.2 ML-DSA where it has CKM_ML_DSA, else sealed),
    /// native (fail on a token without ML-DSA), or sealed (the wrapped path: sealed by the token's AES key,
    /// signed on the host, even where the token has ML-DSA)
    #[arg(long = "ml-dsa", default_value = "auto", value_parser = parse_ml_dsa_mode)]
    pub ml_dsa: MlDsaMode,
}

/// Options of `qsi hsm pubkey`.
#[derive(clap::Args)]
pub struct PubkeyArgs {
    #[command(flatten)]
    pub common: Common,
    /// The key: label or PKCS#11 URI (pkcs11:object=...;type=private)
    pub key: String,
    /// Write the PEM to this file instead of stdout
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn parse_alg(s: &str) -> Result<KeyAlgorithm, String> {
    s.parse()
}

fn parse_ml_dsa_mode(s: &str) -> Result<MlDsaMode, String> {
    s.parse()
}

/// How a store holds ML-DSA keys, for people.
fn ml_dsa_path(storage: KeyStorage) -> &'static str {
    match storage {
        KeyStorage::Token => "native (the token's PKCS#11 3.2 CKM_ML_DSA)",
        KeyStorage::SealedByToken => "sealed (by the token's AES key; signed on the host)",
        KeyStorage::File => "file store (host)",
    }
}

/// Runs one `qsi hsm` command.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::InitToken(a) => init_token(a),
        Command::List(c) => list(c),
        Command::Keygen(a) => keygen(a),
        Command::Pubkey(a) => pubkey(a),
        Command::Test(c) => test(c),
    }
}

fn module(c: &Common) -> anyhow::Result<PathBuf> {
    let module = match &c.module {
        Some(m) => m.clone(),
        None => pkcs11::default_module_path()?,
    };
    // A development SOFTHSM2_CONF (cargo sets one) that does not exist yet is written with its token
    // directory beside it; production uses /etc/softhsm/softhsm2.conf or the vendor's module.
    if module.to_string_lossy().contains("softhsm")
        && std::env::var_os("SOFTHSM2_CONF").is_some_and(|c| !std::path::Path::new(&c).exists())
    {
        qsi_hsm::softhsm::ensure_softhsm_conf()?;
    }
    Ok(module)
}

fn read_pin(
    file: &Option<PathBuf>,
    env: &Option<String>,
    default_env: &str,
    what: &str,
) -> anyhow::Result<Pin> {
    match (file, env) {
        (Some(f), _) => Pin::from_file(f).with_context(|| format!("reading the {what}")),
        (None, Some(e)) => Pin::from_env(e).with_context(|| format!("reading the {what}")),
        (None, None) => Pin::from_env(default_env).with_context(|| {
            format!(
                "no {what}: pass --{}-file PATH or set {default_env}",
                if what.contains("officer") {
                    "so-pin"
                } else {
                    "pin"
                }
            )
        }),
    }
}

fn user_pin(c: &Common) -> anyhow::Result<Pin> {
    read_pin(&c.pin_file, &c.pin_env, "QSI_HSM_PIN", "user PIN")
}

/// Opens the store the options name: a PKCS#11 token, or the development file store.
pub fn open_store(c: &Common) -> anyhow::Result<Arc<dyn KeyStore>> {
    Ok(open_with_mechanisms(c)?.0)
}

/// Opens the store and, for a token, the names of the mechanisms it offers.
fn open_with_mechanisms(c: &Common) -> anyhow::Result<(Arc<dyn KeyStore>, Vec<String>)> {
    let pin = user_pin(c)?;
    if let Some(dir) = &c.file_store {
        eprintln!(
            "warning: using the file key store at {}: NOT FOR PRODUCTION",
            dir.display()
        );
        let store = FileStore::open_or_create(dir, &pin)?;
        return Ok((
            Arc::new(store),
            vec!["(file store: aws-lc-rs on the host)".into()],
        ));
    }
    let selector = match (&c.token, &c.serial) {
        (Some(label), _) => TokenSelector::Label(label.clone()),
        (None, Some(serial)) => TokenSelector::Serial(serial.clone()),
        (None, None) => bail!(
            "which token? pass --token LABEL (or --serial, or set QSI_HSM_TOKEN); `qsi hsm list` shows the tokens"
        ),
    };
    let store = Pkcs11Store::open(Pkcs11Config::new(module(c)?, selector, pin))?;
    let mechanisms = store.mechanisms();
    Ok((Arc::new(store), mechanisms))
}

fn print(json: bool, value: &Value, text: String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{text}");
    }
    Ok(())
}

fn init_token(a: InitTokenArgs) -> anyhow::Result<()> {
    let module = module(&a.common)?;
    let so_pin = read_pin(
        &a.so_pin_file,
        &a.so_pin_env,
        "QSI_HSM_SO_PIN",
        "security officer PIN",
    )?;
    let pin = user_pin(&a.common)?;
    let t = pkcs11::init_token(&module, &a.label, &so_pin, &pin)?;
    let text = format!(
        "initialized token {:?} (serial {}, slot {}) in {}\n",
        t.label,
        t.serial,
        t.slot,
        module.display()
    );
    print(
        a.common.json,
        &json!({ "module": module, "token": t }),
        text,
    )
}

fn key_row(k: &qsi_hsm::KeyInfo) -> Value {
    json!({
        "label": k.label,
        "id": hex::encode(&k.id),
        "type": k.algorithm.name(),
        "storage": k.storage,
        "extractable": k.extractable,
        "uri": k.uri(),
    })
}

fn list(c: Common) -> anyhow::Result<()> {
    let mut out = serde_json::Map::new();
    let mut text = String::new();
    if c.file_store.is_none() {
        let module = module(&c)?;
        let tokens = pkcs11::list_tokens(&module)?;
        text.push_str(&format!("module {}\n", module.display()));
        if tokens.is_empty() {
            text.push_str(
                "  no initialized token (create one with `qsi hsm init-token --label NAME`)\n",
            );
        }
        for t in &tokens {
            text.push_str(&format!(
                "  token {:<32} serial {:<18} {} {}  {}\n",
                t.label, t.serial, t.manufacturer, t.model, t.pin_flags
            ));
        }
        out.insert("module".into(), json!(module));
        out.insert("tokens".into(), serde_json::to_value(&tokens)?);
    }
    if c.token.is_some() || c.serial.is_some() || c.file_store.is_some() {
        let store = open_store(&c)?;
        let keys = store.list()?;
        let info = store.info();
        text.push_str(&format!(
            "keys on {} ({} key{}):\n",
            info.token,
            keys.len(),
            if keys.len() == 1 { "" } else { "s" }
        ));
        for k in &keys {
            text.push_str(&format!(
                "  {:<28} {:<10} id {:<32} {:?}{}\n",
                k.label,
                k.algorithm.name(),
                hex::encode(&k.id),
                k.storage,
                if k.extractable { " extractable" } else { "" }
            ));
        }
        out.insert("store".into(), serde_json::to_value(&info)?);
        out.insert(
            "keys".into(),
            Value::Array(keys.iter().map(key_row).collect()),
        );
    }
    print(c.json, &Value::Object(out), text)
}

fn keygen(a: KeygenArgs) -> anyhow::Result<()> {
    let store = open_store(&a.common)?;
    let key = store.generate_with(
        &a.label,
        a.algorithm,
        GenerateOptions {
            extractable: a.extractable,
            ml_dsa: a.ml_dsa,
        },
    )?;
    let mut text = format!(
        "generated {} key {:?}\n  uri {}\n",
        key.algorithm,
        key.label,
        key.uri()
    );
    if key.algorithm.is_ml_dsa() {
        text.push_str(&format!("  ml-dsa {}\n", ml_dsa_path(key.storage)));
    }
    print(a.common.json, &key_row(&key), text)
}

/// PEM of a DER SubjectPublicKeyInfo.
pub fn spki_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}

fn pubkey(a: PubkeyArgs) -> anyhow::Result<()> {
    let store = open_store(&a.common)?;
    let key = store.find(&a.key)?;
    let der = store.public_key_spki(&key)?;
    let pem = spki_pem(&der);
    if let Some(path) = &a.out {
        std::fs::write(path, &pem).with_context(|| format!("writing {}", path.display()))?;
    }
    let value = json!({ "label": key.label, "type": key.algorithm.name(), "uri": key.uri(), "spki_pem": pem });
    let text = if a.out.is_some() {
        String::new()
    } else {
        pem.clone()
    };
    print(a.common.json, &value, text)
}

fn test(c: Common) -> anyhow::Result<()> {
    let (store, mechanisms) = open_with_mechanisms(&c)?;
    let mut suffix = [0u8; 4];
    store.random(&mut suffix)?;
    let suffix = hex::encode(suffix);
    let mut results = Vec::new();
    let mut failures = 0;
    // Every algorithm on the store's default path; on a token with native ML-DSA, the sealed (wrapped)
    // path too, which stays available for keys that must move to tokens without ML-DSA.
    let ml_dsa = store.info().ml_dsa;
    let mut cases: Vec<(KeyAlgorithm, MlDsaMode, &str)> = KeyAlgorithm::ALL
        .iter()
        .map(|a| (*a, MlDsaMode::Auto, ""))
        .collect();
    if ml_dsa == KeyStorage::Token {
        cases.push((KeyAlgorithm::MlDsa65, MlDsaMode::Sealed, "-sealed"));
        cases.push((KeyAlgorithm::MlDsa87, MlDsaMode::Sealed, "-sealed"));
    }
    for &(alg, mode, variant) in &cases {
        let name = format!("{}{variant}", alg.name());
        let label = format!("qsi-hsm-test-{name}-{suffix}");
        let started = Instant::now();
        let outcome = (|| -> anyhow::Result<String> {
            let options = GenerateOptions {
                ml_dsa: mode,
                ..GenerateOptions::default()
            };
            let key = store.generate_with(&label, alg, options)?;
            let result = (|| -> anyhow::Result<String> {
                if alg.is_signing() {
                    let spki = store.public_key_spki(&key)?;
                    let msg = format!("qsi hsm test {suffix}");
                    let sig = store.sign(&key, msg.as_bytes())?;
                    let scheme = alg
                        .default_scheme()
                        .context("signing key without a scheme")?;
                    verify_signature(&spki, scheme, msg.as_bytes(), &sig)?;
                    if verify_signature(&spki, scheme, b"another message", &sig).is_ok() {
                        bail!("a signature verified for the wrong message");
                    }
                    Ok(format!(
                        "signed and verified ({} byte signature, {:?})",
                        sig.len(),
                        key.storage
                    ))
                } else {
                    let sealed = store.encrypt(&key, b"qsi hsm test", b"data key")?;
                    let opened = store.decrypt(&key, b"qsi hsm test", &sealed)?;
                    if opened.as_slice() != b"data key" {
                        bail!("AES-GCM round trip returned other bytes");
                    }
                    if store.decrypt(&key, b"other aad", &sealed).is_ok() {
                        bail!("AES-GCM opened with the wrong associated data");
                    }
                    Ok("AES-GCM sealed, opened, and refused altered associated data".into())
                }
            })();
            store.delete(&key)?;
            result
        })();
        let ms = started.elapsed().as_secs_f64() * 1e3;
        match outcome {
            Ok(detail) => {
                results.push(json!({ "type": name, "ok": true, "detail": detail, "ms": ms }))
            }
            Err(e) => {
                failures += 1;
                results.push(
                    json!({ "type": name, "ok": false, "detail": format!("{e:#}"), "ms": ms }),
                );
            }
        }
    }
    let mut random = [0u8; 32];
    store.random(&mut random)?;
    let info = store.info();
    let mut text = format!(
        "{} ({}):\n  ml-dsa path: {}{}\n",
        info.token,
        info.description,
        ml_dsa_path(ml_dsa),
        if ml_dsa == KeyStorage::SealedByToken {
            ", the token has no CKM_ML_DSA"
        } else {
            ""
        }
    );
    for r in &results {
        text.push_str(&format!(
            "  {:<17} {:<4} {:>8.1} ms  {}\n",
            r["type"].as_str().unwrap_or(""),
            if r["ok"].as_bool().unwrap_or(false) {
                "ok"
            } else {
                "FAIL"
            },
            r["ms"].as_f64().unwrap_or(0.0),
            r["detail"].as_str().unwrap_or("")
        ));
    }
    text.push_str(&format!(
        "  random: 32 bytes from the store's generator\n  mechanisms ({}): {}\n",
        mechanisms.len(),
        mechanisms.join(" ")
    ));
    let value = json!({
        "store": info, "ml_dsa_path": ml_dsa, "results": results, "mechanisms": mechanisms, "ok": failures == 0
    });
    print(c.json, &value, text)?;
    if failures > 0 {
        bail!(
            "{failures} of {} key types failed on {}",
            cases.len(),
            info.token
        );
    }
    Ok(())
}
