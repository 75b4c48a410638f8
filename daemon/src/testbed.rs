//! Throw-away sites on loopback: a CA and site certificates (rcgen), site configs, and running `qsid`
//! processes. Used by `qsi demo`, `qsi bench tunnel` and the end-to-end tests, so all three exercise the
//! same real daemon the same way.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

pub mod qkd;

/// The DNS identity of a test site's certificate.
pub fn dns_identity(site: &str) -> String {
    format!("{site}.qsi.test")
}

/// Writes `ca.crt`, an empty `ca.crl` (valid 30 days) and, per site, `<site>.crt` / `<site>.key` (ECDSA
/// P-256, SANs `<site>.qsi.test` and `urn:qsi:site:<site>`, client and server auth) into `dir`.
pub fn write_pki(dir: &Path, sites: &[&str]) -> anyhow::Result<()> {
    write_test_pki(dir, sites, &PkiOptions::default()).map(|_| ())
}

/// As [`write_pki`], with the CA's key supplied by the caller: `qsi demo` passes a key held in a
/// SoftHSM2 token or the file key store, so the CA key never exists in this process's memory.
pub fn write_pki_signed_by<K: rcgen::SigningKey>(
    dir: &Path,
    sites: &[&str],
    ca_key: K,
) -> anyhow::Result<()> {
    TestCa::write(dir, sites, &PkiOptions::default(), ca_key).map(|_| ())
}

/// As [`write_pki`] with options, returning the CA so a test can revoke a site later.
pub fn write_test_pki(
    dir: &Path,
    sites: &[&str],
    opts: &PkiOptions,
) -> anyhow::Result<TestCa<rcgen::KeyPair>> {
    let ca_key =
        rcgen::KeyPair::generate_for(opts.ca_alg.unwrap_or(&rcgen::PKCS_ECDSA_P256_SHA256))?;
    TestCa::write(dir, sites, opts, ca_key)
}

/// Variations of the throw-away PKI.
#[derive(Debug, Clone, Default)]
pub struct PkiOptions {
    /// A CRL distribution point (http:// URI) put in every site certificate.
    pub crl_uri: Option<String>,
    /// The CA's key algorithm (default ECDSA P-256).
    pub ca_alg: Option<&'static rcgen::SignatureAlgorithm>,
    /// Per-site key algorithms (default ECDSA P-256), e.g. `("site-a", &rcgen::PKCS_ML_DSA_87)`.
    pub site_algs: Vec<(String, &'static rcgen::SignatureAlgorithm)>,
}

/// The throw-away CA: it can issue CRLs revoking the sites it certified.
pub struct TestCa<K> {
    issuer: rcgen::Issuer<'static, K>,
    serials: Vec<(String, rcgen::SerialNumber)>,
}

impl<K: rcgen::SigningKey> TestCa<K> {
    /// Writes the CA certificate, an empty CRL and the sites' certificates and keys into `dir`.
    pub fn write(dir: &Path, sites: &[&str], opts: &PkiOptions, ca_key: K) -> anyhow::Result<Self> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyIdMethod, KeyUsagePurpose,
        };
        std::fs::create_dir_all(dir)?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "QSI throw-away test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca.key_identifier_method = KeyIdMethod::Sha256;
        let ca_cert = ca.self_signed(&ca_key)?;
        std::fs::write(dir.join("ca.crt"), ca_cert.pem())?;
        let mut me = TestCa {
            issuer: Issuer::new(ca, ca_key),
            serials: Vec::new(),
        };
        for site in sites {
            let alg = opts
                .site_algs
                .iter()
                .find(|(s, _)| s == site)
                .map_or(&rcgen::PKCS_ECDSA_P256_SHA256, |(_, a)| *a);
            let key = rcgen::KeyPair::generate_for(alg)?;
            me.issue(dir, site, &key, opts)?;
            write_private(
                &dir.join(format!("{site}.key")),
                key.serialize_pem().as_bytes(),
            )?;
        }
        std::fs::write(dir.join("ca.crl"), me.crl(&[])?)?;
        Ok(me)
    }

    /// Issues `<site>.crt` for `key` (a key pair, or a key in a token via `qsi_hsm::HsmRcgenKey`) and
    /// rewrites `ca.crl` (empty) so it stays in step.
    pub fn issue(
        &mut self,
        dir: &Path,
        site: &str,
        key: &impl rcgen::PublicKeyData,
        opts: &PkiOptions,
    ) -> anyhow::Result<()> {
        use rcgen::{
            CertificateParams, CrlDistributionPoint, DnType, ExtendedKeyUsagePurpose, KeyIdMethod,
            KeyUsagePurpose, SanType, SerialNumber,
        };
        let mut p = CertificateParams::new(vec![dns_identity(site)])?;
        p.subject_alt_names
            .push(SanType::URI(format!("urn:qsi:site:{site}").try_into()?));
        p.distinguished_name.push(DnType::CommonName, site);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        p.key_identifier_method = KeyIdMethod::Sha256;
        let mut serial = [0u8; 16];
        aws_lc_rs::rand::fill(&mut serial).map_err(|_| anyhow::anyhow!("no randomness"))?;
        serial[0] &= 0x7f;
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        if let Some(uri) = &opts.crl_uri {
            p.crl_distribution_points = vec![CrlDistributionPoint {
                uris: vec![uri.clone()],
            }];
        }
        let cert = p.signed_by(key, &self.issuer)?;
        std::fs::write(dir.join(format!("{site}.crt")), cert.pem())?;
        self.serials.retain(|(s, _)| s != site);
        self.serials
            .push((site.to_string(), SerialNumber::from_slice(&serial)));
        std::fs::write(dir.join("ca.crl"), self.crl(&[])?)?;
        Ok(())
    }

    /// A DER CRL (valid 30 days from now) listing the certificates of `revoked` sites.
    pub fn crl(&self, revoked: &[&str]) -> anyhow::Result<Vec<u8>> {
        use rcgen::{
            CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams,
            SerialNumber,
        };
        let now = time::OffsetDateTime::now_utc();
        let number = u64::try_from(now.unix_timestamp()).unwrap_or(1);
        let revoked_certs = self
            .serials
            .iter()
            .filter(|(s, _)| revoked.contains(&s.as_str()))
            .map(|(_, serial)| RevokedCertParams {
                serial_number: serial.clone(),
                revocation_time: now - time::Duration::minutes(1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(1),
            next_update: now + time::Duration::days(30),
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.der().to_vec())
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    Ok(())
}

/// A free loopback port for both TCP and UDP (best effort: another process may take it afterwards).
pub fn free_port() -> anyhow::Result<u16> {
    for _ in 0..50 {
        let t = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = t.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port found")
}

/// A free loopback address.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// One `[[peer]]` of a test site.
#[derive(Debug, Clone)]
pub struct PeerToml {
    /// Peer site name.
    pub name: String,
    /// `quic` or `tls`.
    pub transport: String,
    /// Dial address, if we dial.
    pub address: Option<SocketAddr>,
    /// Key-exchange override.
    pub key_exchange: Option<Vec<String>>,
    /// More lines of the `[[peer]]` table, as TOML (e.g. `qkd = "require"`).
    pub extra: String,
}

/// A site config to write as TOML.
#[derive(Debug, Clone)]
pub struct SiteToml {
    /// Site name (also its certificate file names).
    pub site: String,
    /// listen.quic
    pub quic: Option<SocketAddr>,
    /// listen.tls
    pub tls: Option<SocketAddr>,
    /// admin.socket
    pub admin: Option<PathBuf>,
    /// metrics.listen
    pub metrics: Option<SocketAddr>,
    /// tls.key_exchange
    pub key_exchange: Option<Vec<String>>,
    /// Extra `[tls]` lines (validator settings, a pkcs11 key); without a `crls` line, `crls = ["ca.crl"]`
    /// is written.
    pub tls_extra: Vec<String>,
    /// Peers.
    pub peers: Vec<PeerToml>,
    /// (name, peer, listen, protocol)
    pub forwards: Vec<(String, String, SocketAddr, String)>,
    /// (name, peer, target, protocol)
    pub exposes: Vec<(String, String, SocketAddr, String)>,
    /// More TOML at the end of the file (e.g. a `[kms]` table).
    pub extra: String,
}

fn list(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", items.join(", "))
}

impl SiteToml {
    /// The TOML text (certificate paths relative to the config's directory).
    pub fn render(&self) -> String {
        let mut s = format!("site = {:?}\n\n[listen]\n", self.site);
        if let Some(a) = self.quic {
            s += &format!("quic = \"{a}\"\n");
        }
        if let Some(a) = self.tls {
            s += &format!("tls = \"{a}\"\n");
        }
        s += &format!(
            "\n[tls]\ncertificate = \"{0}.crt\"\nprivate_key = \"{0}.key\"\ntrust_anchors = [\"ca.crt\"]\n",
            self.site
        );
        if let Some(k) = &self.key_exchange {
            s += &format!("key_exchange = {}\n", list(k));
        }
        if !self.tls_extra.iter().any(|l| l.starts_with("crls")) {
            s += "crls = [\"ca.crl\"]\n";
        }
        // `private_key` given here replaces the file default written above (TOML refuses duplicate keys).
        if self.tls_extra.iter().any(|l| l.starts_with("private_key")) {
            s = s.replace(&format!("private_key = \"{}.key\"\n", self.site), "");
        }
        // In order: a `[tls.pkcs11]` header and its keys go last.
        for l in &self.tls_extra {
            s += l;
            s += "\n";
        }
        if let Some(a) = &self.admin {
            s += &format!("\n[admin]\nsocket = {:?}\n", a.display().to_string());
        }
        if let Some(a) = self.metrics {
            s += &format!("\n[metrics]\nlisten = \"{a}\"\n");
        }
        for p in &self.peers {
            s += &format!(
                "\n[[peer]]\nname = {:?}\nidentity = {{ dns = {:?} }}\ntransport = {:?}\n",
                p.name,
                dns_identity(&p.name),
                p.transport
            );
            if let Some(a) = p.address {
                s += &format!("address = \"{a}\"\n");
            }
            if let Some(k) = &p.key_exchange {
                s += &format!("key_exchange = {}\n", list(k));
            }
            s += &p.extra;
        }
        for (name, peer, listen, proto) in &self.forwards {
            s += &format!(
                "\n[[forward]]\nname = {name:?}\npeer = {peer:?}\nlisten = \"{listen}\"\nprotocol = {proto:?}\n"
            );
        }
        for (name, peer, target, proto) in &self.exposes {
            s += &format!(
                "\n[[expose]]\nname = {name:?}\npeer = {peer:?}\ntarget = \"{target}\"\nprotocol = {proto:?}\n"
            );
        }
        if !self.extra.is_empty() {
            s += "\n";
            s += &self.extra;
        }
        s
    }

    /// Writes `<dir>/<site>.toml` and returns its path.
    pub fn write(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let p = dir.join(format!("{}.toml", self.site));
        std::fs::write(&p, self.render())?;
        Ok(p)
    }
}

/// Two sites, `site-a` dialing `site-b`, both listening on both transports, with admin sockets and
/// metrics. Credentials are written into `dir`; add forwards/exposes, then write the configs.
pub fn pair(dir: &Path, transport: &str) -> anyhow::Result<(SiteToml, SiteToml)> {
    write_pki(dir, &["site-a", "site-b"])?;
    pair_configs(dir, transport)
}

/// The two site configs of [`pair`], for credentials already written into `dir`.
pub fn pair_configs(dir: &Path, transport: &str) -> anyhow::Result<(SiteToml, SiteToml)> {
    let (pa, pb) = (free_port()?, free_port()?);
    let lo = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let site =
        |name: &str, port: u16, peer: &str, dial: Option<SocketAddr>| -> anyhow::Result<SiteToml> {
            Ok(SiteToml {
                site: name.into(),
                quic: Some(lo(port)),
                tls: Some(lo(port)),
                admin: Some(dir.join(format!("{name}.sock"))),
                metrics: Some(free_addr()?),
                key_exchange: None,
                tls_extra: vec![],
                peers: vec![PeerToml {
                    name: peer.into(),
                    transport: transport.into(),
                    address: dial,
                    key_exchange: None,
                    extra: String::new(),
                }],
                forwards: vec![],
                exposes: vec![],
                extra: String::new(),
            })
        };
    Ok((
        site("site-a", pa, "site-b", Some(lo(pb)))?,
        site("site-b", pb, "site-a", None)?,
    ))
}

/// Carries TCP service `name` from a listener on `from` (at `listen`) to `target` behind `to`.
pub fn carry(
    from: &mut SiteToml,
    to: &mut SiteToml,
    name: &str,
    listen: SocketAddr,
    target: SocketAddr,
) {
    from.forwards
        .push((name.into(), to.site.clone(), listen, "tcp".into()));
    to.exposes
        .push((name.into(), from.site.clone(), target, "tcp".into()));
}

/// Writes both configs into `dir`, starts B then A, and waits until A reports its peer connected.
pub fn start_pair(
    launcher: &Launcher,
    dir: &Path,
    a: &SiteToml,
    b: &SiteToml,
) -> anyhow::Result<(Qsid, Qsid)> {
    let qb = Qsid::launch(launcher, &b.write(dir)?)?;
    let qa = Qsid::launch(launcher, &a.write(dir)?)?;
    let sock = a.admin.clone().context("site A has no admin socket")?;
    if !wait_until(Duration::from_secs(15), || all_connected(&sock)) {
        bail!(
            "the tunnel {} -> {} did not come up; log of {}:\n{}",
            a.site,
            b.site,
            a.site,
            qa.log_tail()
        );
    }
    Ok((qa, qb))
}

/// A running `qsid` (killed on drop). Its log goes to `<config>.log`.
pub struct Qsid {
    child: Child,
    /// Config file.
    pub config: PathBuf,
    /// Log file.
    pub log: PathBuf,
}

/// How to start a site daemon: the `qsid` binary, or this executable's hidden `qsid` subcommand.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// Program to run.
    pub program: PathBuf,
    /// Arguments before `--config <file>`.
    pub pre_args: Vec<String>,
}

/// `qsid` beside the running executable if it was built, else `<this qsi> qsid` (same daemon code).
pub fn qsid_launcher() -> anyhow::Result<Launcher> {
    let exe = std::env::current_exe()?;
    if let Some(dir) = exe.parent() {
        let p = dir.join("qsid");
        if p.is_file() {
            return Ok(Launcher {
                program: p,
                pre_args: vec![],
            });
        }
    }
    Ok(Launcher {
        program: exe,
        pre_args: vec!["qsid".into()],
    })
}

impl Qsid {
    /// Starts `bin --config config` and waits until it reports ready (or fails).
    pub fn start(bin: &Path, config: &Path) -> anyhow::Result<Qsid> {
        Self::launch(
            &Launcher {
                program: bin.to_path_buf(),
                pre_args: vec![],
            },
            config,
        )
    }

    /// Starts the daemon as `launcher` says, with `--config config`, and waits until it is ready.
    pub fn launch(launcher: &Launcher, config: &Path) -> anyhow::Result<Qsid> {
        let bin = &launcher.program;
        let log = config.with_extension("log");
        let mut child = Command::new(bin)
            .args(&launcher.pre_args)
            .arg("--config")
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("QSID_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stderr = child.stderr.take().context("qsid stderr")?;
        let (tx, rx) = mpsc::channel();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                if line.contains("ready") {
                    let _ = tx.send(());
                }
            }
        });
        let mut q = Qsid {
            child,
            config: config.to_path_buf(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if rx.recv_timeout(Duration::from_millis(50)).is_ok() {
                return Ok(q);
            }
            if let Some(status) = q.child.try_wait()? {
                bail!(
                    "qsid exited with {status} before it was ready; log:\n{}",
                    q.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!("qsid not ready after 15 s; log:\n{}", q.log_tail());
            }
        }
    }

    /// Last lines of the log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal by name (`HUP`, `TERM`) with `kill(1)`.
    pub fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()?;
        if !st.success() {
            bail!("kill -{sig} failed");
        }
        Ok(())
    }

    /// Kills the process and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Qsid {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Blocking admin request (for tests and the demo), on a throw-away runtime.
pub fn admin(socket: &Path, cmd: &str) -> anyhow::Result<serde_json::Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(crate::admin::request(socket, cmd))
}

/// True once the site's admin socket reports every peer connected.
pub fn all_connected(socket: &Path) -> bool {
    match admin(socket, "peers") {
        Ok(v) => v
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|p| p["state"] == "connected")),
        Err(_) => false,
    }
}
