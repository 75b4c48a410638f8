//! A QKD link for two throw-away sites: qkd-sim's certificates and config (`qkd-sim certs`), the
//! simulated device pair as a real `qkd-sim serve` process, each site's KMS config (its keys in a
//! SoftHSM2 token or the file key store) and the site-config lines that run the KMS inside `qsid` and key
//! the peer's data connections with QKD. Used by `qsi demo` and `qsi bench tunnel`.
//!
//! Site A dials, so it is the QKD master (`sae-a` at Alice's KME); site B is the slave (`sae-b` at Bob's).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::{Launcher, SiteToml};

/// `qkd-sim` beside the running executable (or one directory up, for test binaries in `deps/`), else
/// `<this qsi> qkd-sim` (the same simulator code, linked into `qsi` so `cargo run --bin qsi -- demo`
/// needs nothing else built).
pub fn qkd_sim_launcher() -> anyhow::Result<Launcher> {
    let exe = std::env::current_exe()?;
    for dir in exe
        .parent()
        .into_iter()
        .chain(exe.parent().and_then(Path::parent))
    {
        let p = dir.join("qkd-sim");
        if p.is_file() {
            return Ok(Launcher {
                program: p,
                pre_args: vec![],
            });
        }
    }
    Ok(Launcher {
        program: exe,
        pre_args: vec!["qkd-sim".into()],
    })
}

/// How to run the simulated link.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// Fibre length in km.
    pub distance_km: f64,
    /// Link time per wall-clock time (the demo speeds a 20 km link up so keys arrive in seconds).
    pub speedup: f64,
    /// Keys each KME holds at most.
    pub max_keys: u32,
}

impl Default for LinkOptions {
    fn default() -> Self {
        Self {
            distance_km: 20.0,
            speedup: 100.0,
            max_keys: 4096,
        }
    }
}

/// A running `qkd-sim serve` (killed on drop). Its log goes to `qkd-sim.log` beside its config.
pub struct SimLink {
    child: Child,
    launcher: Launcher,
    /// The link config (`link.toml` written by `qkd-sim certs`, distance and speed-up set).
    pub config: PathBuf,
    /// The directory with the testbed's CA (`ca.pem`), KME and SAE certificates.
    pub dir: PathBuf,
    /// Alice's KME (site A's KMS talks to it).
    pub alice: SocketAddr,
    /// Bob's KME (site B's KMS talks to it).
    pub bob: SocketAddr,
    /// The options it runs with.
    pub options: LinkOptions,
}

impl Drop for SimLink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SimLink {
    /// Writes the testbed's certificates and `link.toml` into `dir` with `qkd-sim certs`, sets the
    /// link's distance and speed-up, and starts `qkd-sim serve`; returns once both KMEs listen.
    pub fn start(launcher: &Launcher, dir: &Path, o: &LinkOptions) -> anyhow::Result<SimLink> {
        std::fs::create_dir_all(dir)?;
        let out = Command::new(&launcher.program)
            .args(&launcher.pre_args)
            .arg("certs")
            .arg(dir)
            .args(["--alice-port", "0", "--bob-port", "0"])
            .output()
            .with_context(|| format!("cannot run {} certs", launcher.program.display()))?;
        if !out.status.success() {
            bail!(
                "qkd-sim certs failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let config = dir.join("link.toml");
        let text = std::fs::read_to_string(&config)
            .with_context(|| format!("qkd-sim certs wrote no {}", config.display()))?;
        std::fs::write(&config, set_link(&text, o)?)?;
        let log = dir.join("qkd-sim.log");
        let mut child = Command::new(&launcher.program)
            .args(&launcher.pre_args)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {} serve", launcher.program.display()))?;
        let stdout = child.stdout.take().context("qkd-sim stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let kme = |who: &str| -> anyhow::Result<SocketAddr> {
            let line = rx.recv_timeout(Duration::from_secs(15)).map_err(|_| {
                let why = std::fs::read_to_string(&log).unwrap_or_default();
                anyhow::anyhow!("qkd-sim serve did not announce its {who} KME; its log:\n{why}")
            })?;
            if !line.contains(who) {
                bail!("qkd-sim serve said {line:?}, expected its {who} KME's address");
            }
            line.rsplit("https://")
                .next()
                .and_then(|a| a.parse().ok())
                .with_context(|| format!("no address in {line:?}"))
        };
        let alice = kme("(alice)");
        let bob = kme("(bob)");
        // Keep draining stdout so the simulator never blocks on a full pipe.
        std::thread::spawn(move || for _ in rx {});
        let mut me = SimLink {
            child,
            launcher: launcher.clone(),
            config,
            dir: dir.to_path_buf(),
            alice: SocketAddr::from(([127, 0, 0, 1], 0)),
            bob: SocketAddr::from(([127, 0, 0, 1], 0)),
            options: o.clone(),
        };
        me.alice = alice?;
        me.bob = bob?;
        Ok(me)
    }

    /// `qkd-sim status --config <link.toml>`: the link's state, QBER, secret key rate and pool.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let out = Command::new(&self.launcher.program)
            .args(&self.launcher.pre_args)
            .args(["status", "--config"])
            .arg(&self.config)
            .output()
            .context("cannot run qkd-sim status")?;
        if !out.status.success() {
            bail!(
                "qkd-sim status failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).context("qkd-sim status did not print JSON")
    }

    /// True while the simulator runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// `link.toml` from `qkd-sim certs` with the link's distance, speed-up and pool size set.
fn set_link(text: &str, o: &LinkOptions) -> anyhow::Result<String> {
    let mut v: toml::Table = toml::from_str(text).context("link.toml from qkd-sim certs")?;
    let table = |v: &mut toml::Table, name: &str| -> anyhow::Result<toml::Table> {
        v.remove(name)
            .and_then(|t| t.as_table().cloned())
            .with_context(|| format!("link.toml from qkd-sim certs has no [{name}]"))
    };
    let mut link = table(&mut v, "link")?;
    link.insert("distance_km".into(), o.distance_km.into());
    link.insert("speedup".into(), o.speedup.into());
    v.insert("link".into(), link.into());
    let mut limits = table(&mut v, "limits")?;
    limits.insert("max_key_count".into(), i64::from(o.max_keys).into());
    v.insert("limits".into(), limits.into());
    Ok(toml::to_string(&v)?)
}

/// Where a site's KMS keeps its key-encryption and audit keys.
#[derive(Debug, Clone)]
pub enum KmsKeys {
    /// A PKCS#11 token (SoftHSM2 here) with this label; the user PIN is in `pin_file`.
    Pkcs11 {
        /// Token label.
        token: String,
        /// File holding the user PIN.
        pin_file: PathBuf,
    },
    /// The file key store in `dir` (development only), passphrase in `pin_file`.
    File {
        /// Key store directory.
        dir: PathBuf,
        /// File holding the passphrase.
        pin_file: PathBuf,
    },
}

/// Writes `<dir>/kms-<site>.toml`: a store, an admin socket, keys as `keys` says, and one link `ab` to
/// the KME at `kme` as `sae-a` (role `master`) or `sae-b` (role `slave`), with the testbed's SAE
/// certificates from `sim`'s directory. Returns the file.
pub fn write_kms(
    dir: &Path,
    site: &str,
    master: bool,
    kme: SocketAddr,
    sim_dir: &Path,
    keys: &KmsKeys,
) -> anyhow::Result<PathBuf> {
    let (role, me, peer) = if master {
        ("master", "sae-a", "sae-b")
    } else {
        ("slave", "sae-b", "sae-a")
    };
    let hsm = match keys {
        KmsKeys::Pkcs11 { token, pin_file } => format!(
            "backend = \"pkcs11\"\ntoken = {token:?}\npin = \"file:{}\"\n",
            pin_file.display()
        ),
        KmsKeys::File { dir, pin_file } => format!(
            "backend = \"file\"\ndir = {:?}\npin = \"file:{}\"\n",
            dir.display().to_string(),
            pin_file.display()
        ),
    };
    let f = |p: &str| format!("{:?}", sim_dir.join(p).display().to_string());
    let text = format!(
        r#"[store]
path = "kms-{site}.redb"
[admin]
socket = "kms-{site}.sock"
[hsm]
{hsm}create_missing = true

[[link]]
name = "ab"
role = "{role}"
kme_url = "https://{kme}"
server_name = "localhost"
peer_sae_id = "{peer}"
ca = {ca}
cert = {cert}
key = {key}
key_bits = 256
capacity = 64
low_water = 16
batch = 16
timeout_ms = 2000
connect_timeout_ms = 500
retries = 1
"#,
        ca = f("ca.pem"),
        cert = f(&format!("{me}.pem")),
        key = f(&format!("{me}.key")),
    );
    let path = dir.join(format!("kms-{site}.toml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Puts site A's and site B's KMS (configs `kms_a`, `kms_b`) into their `qsid` and keys the tunnel
/// between them with QKD under `policy` (`require` or `prefer`), `reserve` keys announced ahead.
pub fn use_qkd(
    a: &mut SiteToml,
    b: &mut SiteToml,
    kms_a: &Path,
    kms_b: &Path,
    policy: &str,
    reserve: usize,
) {
    a.extra += &format!(
        "[kms]\nconfig = {:?}\nsae_id = \"sae-a\"\n",
        kms_a.display().to_string()
    );
    b.extra += &format!(
        "[kms]\nconfig = {:?}\nsae_id = \"sae-b\"\n",
        kms_b.display().to_string()
    );
    a.peers[0].extra += &format!(
        "qkd = {policy:?}\nqkd_link = \"ab\"\nsae_id = \"sae-b\"\nqkd_reserve = {reserve}\n"
    );
    b.peers[0].extra += &format!("qkd = {policy:?}\nqkd_link = \"ab\"\nqkd_reserve = {reserve}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_config_gets_distance_speedup_and_pool_size() {
        let text = "admin_socket = \"s\"\n[link]\nparams = \"gys\"\ndistance_km = 25.0\nspeedup = 1.0\n[limits]\nkey_size = 256\nmax_key_count = 100000\n";
        let out = set_link(
            text,
            &LinkOptions {
                distance_km: 20.0,
                speedup: 50.0,
                max_keys: 64,
            },
        )
        .unwrap();
        let v: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(v["link"]["distance_km"].as_float(), Some(20.0));
        assert_eq!(v["link"]["speedup"].as_float(), Some(50.0));
        assert_eq!(v["link"]["params"].as_str(), Some("gys"));
        assert_eq!(v["limits"]["max_key_count"].as_integer(), Some(64));
        assert_eq!(v["admin_socket"].as_str(), Some("s"));
        assert!(set_link("[limits]\n", &LinkOptions::default()).is_err());
    }
}
