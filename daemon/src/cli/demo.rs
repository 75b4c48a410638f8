//! `qsi demo`: the README's first command. Two real `qsid` sites on loopback with throw-away credentials,
//! a service forwarded both ways over QUIC and over TLS 1.3, proof that the negotiated group is
//! post-quantum and that a classical-only client is refused, and a short summary.
//!
//! The demo is a sequence of numbered steps; later issues add theirs (a CA, the QKD simulator, the KMS).

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
    _token: Option<qsi_hsm::SoftHsmToken>,
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
                _token: Some(token),
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
                _token: None,
            })
        }
    }
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
        "QSI demo: two sites on loopback, throw-away credentials in {}",
        path.display()
    );
    let qsid = testbed::qsid_launcher()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut rows = Vec::new();

    // Step 1: credentials. The CA key is generated in, and signs from, the key store.
    let keys = open_key_store(&path, args.key_store)?;
    let ca_key = keys
        .store
        .generate("demo-ca", qsi_hsm::KeyAlgorithm::EcP256)
        .context("generating the demo CA key in the key store")?;
    println!(
        "[1/4] credentials: a throw-away CA whose ECDSA P-256 key is in {}, and site certificates (SANs dns + uri)",
        keys.description
    );
    rows.push(Row {
        what: "key store".into(),
        result: keys.description.clone(),
    });

    // Steps 2 and 3: one tunnel per transport, a service each way.
    for (step, transport) in [(2, "quic"), (3, "tls")] {
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
        let t = Instant::now();
        let (qa, qb) = testbed::start_pair(&qsid, &sub, &a, &b)?;
        let sock_a = a.admin.clone().context("admin socket")?;
        let up = t.elapsed();
        let peers = testbed::admin(&sock_a, "peers")?;
        let group = peers[0]["group"].as_str().unwrap_or("-").to_string();
        let pq = KxGroup::parse(&group).is_some();
        if !pq {
            bail!("the {transport} tunnel negotiated {group}, which is not a post-quantum group");
        }
        let ab = rt.block_on(ask(a_to_b))?;
        let ba = rt.block_on(ask(b_to_a))?;
        if !ab.contains("site-b") || !ba.contains("site-a") {
            bail!("unexpected answers through the {transport} tunnel: {ab:?} / {ba:?}");
        }
        let t = Instant::now();
        rt.block_on(bulk(a_to_b, 16 << 20))?;
        let mbps = (16.0 * 8.0 * 2.0) / t.elapsed().as_secs_f64();
        println!(
            "[{step}/4] {transport:<4}: tunnel up in {} ms, group {group} (post-quantum), site-a -> site-b says {ab:?}, site-b -> site-a says {ba:?}",
            up.as_millis()
        );
        rows.push(Row {
            what: format!("{transport} tunnel"),
            result: format!("{group}, up in {} ms", up.as_millis()),
        });
        rows.push(Row {
            what: format!("{transport} both ways"),
            result: format!("ok, 16 MiB echoed at {mbps:.0} Mbit/s (debug builds are slower)"),
        });

        // Step 4 (once, on the TLS listener): a classical-only client is refused.
        if transport == "tls" {
            let port = b.tls.context("tls listener")?;
            let refused = rt.block_on(classical_client_refused(&sub, port))?;
            println!("[4/4] a classical-only (X25519) TLS 1.3 client is refused: {refused}");
            rows.push(Row {
                what: "classical-only client".into(),
                result: format!("refused ({refused})"),
            });
        }
        drop(qa);
        drop(qb);
    }

    println!("\nSummary");
    for r in &rows {
        println!("  {:<24} {}", r.what, r.result);
    }
    if args.keep {
        let kept = dir.keep();
        println!(
            "\nkept {} (configs, credentials, qsid logs)",
            kept.display()
        );
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
