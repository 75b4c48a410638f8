//! `qsi demo`: the README's first command, the whole chain on one machine with real processes: a CA whose
//! key is in SoftHSM2 (or the file key store) issues both sites' certificates; `qkd-sim serve` runs a
//! simulated 20 km QKD link with its two KMEs; each site's `qsid` runs its KMS, which takes keys from its
//! KME; the tunnels come up over QUIC and over TLS 1.3 keyed by ECDH + ML-KEM + QKD (`qkd = "require"`),
//! a service is forwarded both ways, a classical-only client is refused, and the summary shows the group,
//! the QKD key IDs both sides used, the link's secret key rate and QBER, and where the keys are held.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::config::KxGroup;
use crate::testbed;

/// Options of `qsi demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Keep the temporary directory (credentials, configs, logs) instead of deleting it
    #[arg(long)]
    pub keep: bool,
    /// Where the demo CA's key lives: `auto` (SoftHSM2 when installed, the file key store
    /// otherwise), `softhsm` (fail if SoftHSM2 is missing) or `file` (development only)
    #[arg(long, value_enum, default_value_t = KeyStoreChoice::Auto)]
    pub key_store: KeyStoreChoice,
    /// Length of the simulated QKD fibre in km (beyond about 140 km the link yields no key, and
    /// the `qkd = "require"` tunnels fail closed)
    #[arg(long, default_value_t = 20.0)]
    pub distance_km: f64,
}

/// The key store `qsi demo` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyStoreChoice {
    /// SoftHSM2 when its module is installed, the file key store otherwise.
    Auto,
    /// SoftHSM2 through PKCS#11; an error if it is not installed.
    Softhsm,
    /// The passphrase-encrypted file key store (not for production).
    File,
}

/// One line of the summary.
struct Row {
    what: String,
    result: String,
}

/// Marks the re-run of `qsi demo` that already has a private SoftHSM2 configuration.
const CHILD_MARK: &str = "QSI_DEMO_SOFTHSM_CHILD";

/// The key store that holds the demo CA's key: SoftHSM2 when its module is installed, the file key
/// store otherwise. The token (if any) is deleted when this is dropped.
struct DemoKeyStore {
    store: Arc<dyn qsi_hsm::KeyStore>,
    description: String,
    token: Option<qsi_hsm::SoftHsmToken>,
}

fn open_key_store(dir: &Path, choice: KeyStoreChoice) -> anyhow::Result<DemoKeyStore> {
    let module = match choice {
        KeyStoreChoice::File => Err(anyhow::anyhow!("--key-store file")),
        KeyStoreChoice::Auto => qsi_hsm::pkcs11::default_module_path().map_err(Into::into),
        KeyStoreChoice::Softhsm => Ok(qsi_hsm::pkcs11::default_module_path()?),
    };
    match module {
        Ok(module) => {
            let token = qsi_hsm::SoftHsmToken::create("qsi-demo")
                .context("creating a throw-away SoftHSM2 token for the demo CA")?;
            let store: Arc<dyn qsi_hsm::KeyStore> = Arc::new(token.open()?);
            Ok(DemoKeyStore {
                store,
                description: format!(
                    "SoftHSM2 (PKCS#11 module {}, token {})",
                    module.display(),
                    token.label
                ),
                token: Some(token),
            })
        }
        Err(e) => {
            tracing::debug!(reason = %e, "using the file key store");
            let mut raw = zeroize::Zeroizing::new([0u8; 16]);
            aws_lc_rs::rand::fill(&mut *raw)
                .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
            let passphrase = qsi_hsm::Pin::new(hex::encode(*raw));
            let store = qsi_hsm::FileStore::create(dir.join("keys"), &passphrase)?;
            Ok(DemoKeyStore {
                store: Arc::new(store),
                description: if choice == KeyStoreChoice::File {
                    "the file key store (chosen with --key-store file; NOT FOR PRODUCTION)".into()
                } else {
                    "the file key store (SoftHSM2 is not installed: apt-get install softhsm2; \
                     the file store is NOT FOR PRODUCTION)"
                        .into()
                },
                token: None,
            })
        }
    }
}

/// `qsi qkd-sim ...` (hidden): the simulator's `serve`, `certs` and `status`, linked into `qsi` so the
/// demo runs qkd-sim as a real process even when only `qsi` was built (`cargo run --bin qsi -- demo`).
#[derive(clap::Subcommand)]
pub enum QkdSimCommand {
    /// As `qkd-sim serve`.
    Serve(qsi_qkd_sim::kme::cli::ServeArgs),
    /// As `qkd-sim certs`.
    Certs(qsi_qkd_sim::kme::cli::CertsArgs),
    /// As `qkd-sim status`.
    Status(qsi_qkd_sim::kme::cli::StatusArgs),
}

/// Runs a hidden `qsi qkd-sim` subcommand.
pub fn run_qkd_sim(cmd: QkdSimCommand) -> anyhow::Result<()> {
    use qsi_qkd_sim::kme::cli;
    match cmd {
        QkdSimCommand::Serve(a) => cli::serve(&a),
        QkdSimCommand::Certs(a) => cli::certs(&a),
        QkdSimCommand::Status(a) => cli::status(&a),
    }
}

/// Steps the demo prints.
const STEPS: usize = 6;

/// Where each site's KMS keeps its key-encryption and audit keys: a SoftHSM2 token per site when the
/// demo CA's key is in SoftHSM2, the file key store otherwise. Tokens are deleted on drop.
fn kms_keys(
    dir: &Path,
    keys: &DemoKeyStore,
) -> anyhow::Result<(
    Vec<testbed::qkd::KmsKeys>,
    Vec<qsi_hsm::SoftHsmToken>,
    String,
)> {
    let mut out = Vec::new();
    let mut tokens = Vec::new();
    for site in ["a", "b"] {
        let pin_file = dir.join(format!("kms-{site}.pin"));
        if keys.token.is_some() {
            let token = qsi_hsm::SoftHsmToken::create(&format!("qsi-demo-kms-{site}"))
                .with_context(|| format!("creating a SoftHSM2 token for site {site}'s KMS"))?;
            write_secret(&pin_file, token.user_pin.expose().as_bytes())?;
            out.push(testbed::qkd::KmsKeys::Pkcs11 {
                token: token.label.clone(),
                pin_file,
            });
            tokens.push(token);
        } else {
            let mut raw = zeroize::Zeroizing::new([0u8; 16]);
            aws_lc_rs::rand::fill(&mut *raw)
                .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
            write_secret(&pin_file, hex::encode(*raw).as_bytes())?;
            out.push(testbed::qkd::KmsKeys::File {
                dir: dir.join(format!("kms-{site}-keys")),
                pin_file,
            });
        }
    }
    let held = if tokens.is_empty() {
        "each site's KMS: redb store encrypted under a KEK in the file key store (NOT FOR PRODUCTION); \
         in memory only in the tunnel's reserve, erased after one handshake"
            .to_string()
    } else {
        format!(
            "each site's KMS: redb store encrypted under a KEK that never leaves SoftHSM2 (tokens {}); \
             in memory only in the tunnel's reserve, erased after one handshake",
            tokens
                .iter()
                .map(|t| t.label.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Ok((out, tokens, held))
}

fn write_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

/// What one tunnel's handshakes used, as both sites report it (`qsi tunnel peers --json`).
struct Keyed {
    group: String,
    key_ids: Vec<String>,
}

/// Waits until both sites report the same group and the same QKD key IDs for their one peer, and that
/// the group carried a QKD key.
fn keyed_the_same(sock_a: &Path, sock_b: &Path, transport: &str) -> anyhow::Result<Keyed> {
    let read = |sock: &Path| -> anyhow::Result<(String, Vec<String>)> {
        let peers = testbed::admin(sock, "peers")?;
        let p = &peers[0];
        let group = p["group"].as_str().unwrap_or("-").to_string();
        let ids = p["qkd"]["last_key_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Ok((group, ids))
    };
    let mut last = None;
    let same = testbed::wait_until(Duration::from_secs(10), || {
        match (read(sock_a), read(sock_b)) {
            (Ok(a), Ok(b)) => {
                let ok = a == b && !a.1.is_empty();
                last = Some((a, b));
                ok
            }
            _ => false,
        }
    });
    let Some(((group, ids), (group_b, ids_b))) = last else {
        bail!("the {transport} sites' admin sockets did not answer");
    };
    if !same {
        bail!(
            "the {transport} tunnel's sites disagree: site-a reports group {group} with QKD key IDs {ids:?}, \
             site-b group {group_b} with {ids_b:?} (the keys never reached both reserves, or a handshake \
             did not use one; see the qsid logs with --keep)"
        );
    }
    let base = group.strip_suffix("+QKD");
    if base.and_then(KxGroup::parse).is_none() {
        bail!(
            "the {transport} tunnel negotiated {group}: not a post-quantum group carrying a QKD key"
        );
    }
    Ok(Keyed {
        group,
        key_ids: ids,
    })
}

/// Runs the demo.
pub fn run(args: Args) -> anyhow::Result<()> {
    // SoftHSM2 reads its configuration from SOFTHSM2_CONF when the module loads; without one, re-run
    // with a private configuration in a temporary directory so the demo never touches system tokens.
    if std::env::var_os("SOFTHSM2_CONF").is_none()
        && std::env::var_os(CHILD_MARK).is_none()
        && args.key_store != KeyStoreChoice::File
        && qsi_hsm::pkcs11::default_module_path().is_ok()
    {
        let conf_dir = tempfile::Builder::new()
            .prefix("qsi-demo-softhsm-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let exe = std::env::current_exe().context("finding the qsi executable")?;
        let status = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("SOFTHSM2_CONF", conf_dir.path().join("softhsm2.conf"))
            .env(CHILD_MARK, "1")
            .status()
            .context("re-running qsi demo with a private SoftHSM2 configuration")?;
        if !status.success() {
            bail!("qsi demo failed ({status})");
        }
        return Ok(());
    }
    let dir = tempfile::Builder::new()
        .prefix("qsi-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let path = dir.path().to_path_buf();
    println!(
        "QSI demo: a CA, a simulated {} km QKD link and two sites on loopback, throw-away credentials in {}",
        args.distance_km,
        path.display()
    );
    let result = run_in(&args, &path);
    if args.keep || result.is_err() {
        let kept = dir.keep();
        println!(
            "\nkept {} (configs, credentials, qsid and qkd-sim logs)",
            kept.display()
        );
    }
    result
}

fn run_in(args: &Args, path: &Path) -> anyhow::Result<()> {
    let qsid = testbed::qsid_launcher()?;
    let sim_bin = testbed::qkd::qkd_sim_launcher()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut rows = Vec::new();

    // Step 1: credentials. The CA key is generated in, and signs from, the key store.
    let keys = open_key_store(path, args.key_store)?;
    let ca_key = keys
        .store
        .generate("demo-ca", qsi_hsm::KeyAlgorithm::EcP256)
        .context("generating the demo CA key in the key store")?;
    println!(
        "[1/{STEPS}] credentials: a throw-away CA whose ECDSA P-256 key is in {}, and site certificates (SANs dns + uri)",
        keys.description
    );
    rows.push(Row {
        what: "key store".into(),
        result: keys.description.clone(),
    });

    // Step 2: the QKD link, a real qkd-sim process with its KME pair.
    let sim = testbed::qkd::SimLink::start(
        &sim_bin,
        &path.join("qkd"),
        &testbed::qkd::LinkOptions {
            distance_km: args.distance_km,
            ..Default::default()
        },
    )
    .context("starting the QKD simulator (qkd-sim serve)")?;
    println!(
        "[2/{STEPS}] qkd-sim ({}): a {} km decoy-state BB84 link (GYS parameters, sped up {}x), KMEs Alice at https://{} and Bob at https://{} (ETSI GS QKD 014, mutual TLS)",
        if sim_bin.pre_args.is_empty() {
            "the qkd-sim binary"
        } else {
            "qsi qkd-sim serve: no qkd-sim binary beside qsi"
        },
        sim.options.distance_km,
        sim.options.speedup,
        sim.alice,
        sim.bob
    );

    // Step 3: each site's KMS (inside its qsid) takes keys from its KME.
    let (kms_keys, _kms_tokens, held) = kms_keys(path, &keys)?;
    println!(
        "[3/{STEPS}] KMS: site-a's KMS takes keys from Alice (enc_keys) and announces their IDs; site-b's fetches them from Bob by ID (dec_keys); keys held in {held}"
    );

    // Steps 4 and 5: one tunnel per transport, QKD required, a service each way.
    let mut all_ids = Vec::new();
    for (step, transport) in [(4, "quic"), (5, "tls")] {
        let sub = path.join(transport);
        std::fs::create_dir_all(&sub)?;
        let signer = qsi_hsm::HsmRcgenKey::new(keys.store.clone(), ca_key.clone())?;
        testbed::write_pki_signed_by(&sub, &["site-a", "site-b"], signer)?;
        let (mut a, mut b) = testbed::pair_configs(&sub, transport)?;
        let svc_a = rt.block_on(service("site-a"))?;
        let svc_b = rt.block_on(service("site-b"))?;
        let (a_to_b, b_to_a) = (testbed::free_addr()?, testbed::free_addr()?);
        testbed::carry(&mut a, &mut b, "hello", a_to_b, svc_b);
        testbed::carry(&mut b, &mut a, "hello", b_to_a, svc_a);
        let kms_a = testbed::qkd::write_kms(&sub, "a", true, sim.alice, &sim.dir, &kms_keys[0])?;
        let kms_b = testbed::qkd::write_kms(&sub, "b", false, sim.bob, &sim.dir, &kms_keys[1])?;
        testbed::qkd::use_qkd(&mut a, &mut b, &kms_a, &kms_b, "require", 4);
        let t = Instant::now();
        let sock_a = a.admin.clone().context("admin socket")?;
        let sock_b = b.admin.clone().context("admin socket")?;
        let (qa, qb) = match testbed::start_pair(&qsid, &sub, &a, &b) {
            Ok(p) => p,
            Err(e) => {
                // Say why in one line: what site-a's tunnel and the QKD link report.
                let why = testbed::admin(&sock_a, "peers")
                    .ok()
                    .and_then(|p| p[0]["last_error"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "site-a's qsid did not answer".into());
                let link = sim
                    .status()
                    .map(|s| {
                        format!(
                            "{} (QBER {}, {} blocks)",
                            s["state"], s["qber"], s["blocks"]
                        )
                    })
                    .unwrap_or_else(|e| format!("unknown ({e})"));
                return Err(e.context(format!(
                    "the {transport} tunnel with qkd = require did not come up: {why}; the QKD link is {link}"
                )));
            }
        };
        let up = t.elapsed();
        let keyed = keyed_the_same(&sock_a, &sock_b, transport)?;
        let ab = rt.block_on(ask(a_to_b))?;
        let ba = rt.block_on(ask(b_to_a))?;
        if !ab.contains("site-b") || !ba.contains("site-a") {
            bail!("unexpected answers through the {transport} tunnel: {ab:?} / {ba:?}");
        }
        let t = Instant::now();
        rt.block_on(bulk(a_to_b, 16 << 20))?;
        let mbps = (16.0 * 8.0 * 2.0) / t.elapsed().as_secs_f64();
        let group = &keyed.group;
        println!(
            "[{step}/{STEPS}] {transport:<4}: tunnel up in {} ms (KMS start, key announcement, handshake), group {group} (ECDH + ML-KEM + QKD), QKD key IDs {} on both sites, site-a -> site-b says {ab:?}, site-b -> site-a says {ba:?}",
            up.as_millis(),
            keyed.key_ids.join(", ")
        );
        rows.push(Row {
            what: format!("{transport} tunnel"),
            result: format!("{group}, up in {} ms", up.as_millis()),
        });
        rows.push(Row {
            what: format!("{transport} QKD key IDs"),
            result: format!(
                "{} (the same on site-a and site-b)",
                keyed.key_ids.join(", ")
            ),
        });
        rows.push(Row {
            what: format!("{transport} both ways"),
            result: format!("ok, 16 MiB echoed at {mbps:.0} Mbit/s (debug builds are slower)"),
        });
        all_ids.extend(keyed.key_ids);

        // Step 6 (once, on the TLS listener): a classical-only client is refused.
        if transport == "tls" {
            let port = b.tls.context("tls listener")?;
            let refused = rt.block_on(classical_client_refused(&sub, port))?;
            println!("[6/{STEPS}] a classical-only (X25519) TLS 1.3 client is refused: {refused}");
            rows.push(Row {
                what: "classical-only client".into(),
                result: format!("refused ({refused})"),
            });
        }
        drop(qa);
        drop(qb);
    }
    let mut unique = all_ids.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != all_ids.len() {
        bail!("a QKD key ID was used by more than one handshake: {all_ids:?}");
    }

    let st = sim
        .status()
        .context("reading the link's state from qkd-sim status")?;
    let qber = st["qber"].as_f64();
    let rate = st["secret_key_rate_bps"].as_f64().unwrap_or(0.0);
    let Some(qber) = qber else {
        bail!("qkd-sim status reports no QBER: no block finished ({st})");
    };
    rows.push(Row {
        what: "QKD link".into(),
        result: format!(
            "{} km, secret key rate {rate:.0} bit/s, QBER {:.2}% ({} blocks, {} aborted; qkd-sim status)",
            sim.options.distance_km,
            qber * 100.0,
            st["blocks"],
            st["aborted_blocks"]
        ),
    });
    rows.push(Row {
        what: "QKD keys held".into(),
        result: held,
    });

    println!("\nSummary");
    for r in &rows {
        println!("  {:<24} {}", r.what, r.result);
    }
    Ok(())
}

/// A tiny service that names its site and echoes anything after the first line.
async fn service(site: &'static str) -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(format!("hello from {site}\n").as_bytes()).await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

async fn ask(addr: SocketAddr) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b))
        .await
        .is_ok_and(|r| r.is_ok())
    {
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

async fn bulk(addr: SocketAddr, len: usize) -> anyhow::Result<()> {
    let s = TcpStream::connect(addr).await?;
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![0x5au8; 1 << 20];
        for _ in 0..len / chunk.len() {
            w.write_all(&chunk).await?;
        }
        w.shutdown().await
    });
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let hello = "hello from site-b\n".len();
    while got < len + hello {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got += n;
    }
    writer.await??;
    if got < len + hello {
        bail!("bulk transfer short: {got} of {len} bytes");
    }
    Ok(())
}

/// Connects with a rustls client that offers only X25519 and expects the handshake to fail.
async fn classical_client_refused(dir: &Path, port: SocketAddr) -> anyhow::Result<String> {
    use rustls::crypto::aws_lc_rs;
    let mut provider = aws_lc_rs::default_provider();
    provider.kx_groups = vec![aws_lc_rs::kx_group::X25519];
    let anchors = crate::config::read_certs("ca", dir, Path::new("ca.crt"))?;
    let mut roots = rustls::RootCertStore::empty();
    for a in anchors {
        roots.add(a)?;
    }
    let chain = crate::config::read_certs("cert", dir, Path::new("site-a.crt"))?;
    let key_pem = std::fs::read(dir.join("site-a.key"))?;
    let key = rustls_pemfile::private_key(&mut &key_pem[..])?.context("no key")?;
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    let tcp = TcpStream::connect(port).await?;
    let name = rustls_pki_types::ServerName::try_from("site-b.qsi.test")?;
    match tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
    {
        Ok(_) => bail!("a classical-only client completed a handshake with qsid"),
        Err(e) => Ok(e.to_string()),
    }
}
