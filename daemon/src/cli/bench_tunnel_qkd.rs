//! The QKD-keyed variants of `qsi bench tunnel`.
//!
//! - Handshakes: data-connection handshakes with the hybrid group alone and with the hybrid group plus a
//!   QKD key, same transport, same machine, same run. Both sides are built with qsid's own config code
//!   (`tls::client_config_qkd` per dial, `tls::server_config_qkd` per accepted connection, as the tunnel
//!   does), over real TCP and UDP sockets on loopback, with keys already announced in memory (the
//!   handshake never touches the network or the disk for its key, in qsid as here). Each dial also
//!   sends one byte each way, so the server has verified the client before the dial counts.
//! - Throughput: a real `qsid` pair whose tunnel requires QKD (`qkd-sim serve` at 20 km, each site's
//!   KMS inside its qsid), against the plain pair of the same run.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::config::Config;
use crate::qkd::{QkdKeyLookup, QkdKeySource, QkdPolicy, memory_link};
use crate::testbed;
use crate::tls::{self, ClientQkd};

/// Handshake figures of one variant.
#[derive(Debug, Default, Clone)]
pub struct KxFigures {
    /// Full handshakes per second from 2 concurrent dialers.
    pub handshakes_per_s: f64,
    /// Setup latency (config, connect, handshake, one byte each way), median.
    pub setup_p50_ms: f64,
    /// Setup latency, 99th percentile.
    pub setup_p99_ms: f64,
}

/// The two sites of the in-process handshake benchmark, loaded from configs the testbed wrote.
pub struct KxSites {
    a: Arc<Config>,
    b: Arc<Config>,
}

impl KxSites {
    /// Writes throw-away credentials and configs for `transport` into `dir` and loads them.
    pub fn new(dir: &Path, transport: &str) -> anyhow::Result<KxSites> {
        std::fs::create_dir_all(dir)?;
        testbed::write_pki(dir, &["site-a", "site-b"])?;
        let (a, b) = testbed::pair_configs(dir, transport)?;
        let load = |s: &testbed::SiteToml| -> anyhow::Result<Arc<Config>> {
            Ok(Arc::new(Config::load(&s.write(dir)?)?))
        };
        Ok(KxSites {
            a: load(&a)?,
            b: load(&b)?,
        })
    }
}

/// A dialer's per-connection QKD, if the variant uses QKD.
#[derive(Clone)]
struct Keys {
    source: Option<Arc<dyn QkdKeySource>>,
    lookup: Option<Arc<dyn QkdKeyLookup>>,
}

fn keys(qkd: bool, count: usize) -> anyhow::Result<Keys> {
    if !qkd {
        return Ok(Keys {
            source: None,
            lookup: None,
        });
    }
    let (s, l) = memory_link("sae-a", "sae-b", count, 32)?;
    Ok(Keys {
        source: Some(Arc::new(s)),
        lookup: Some(Arc::new(l)),
    })
}

/// Measures one variant: `qkd` false is the hybrid group alone, true the hybrid group plus QKD.
pub async fn handshakes(
    sites: &KxSites,
    transport: &str,
    qkd: bool,
    setups: usize,
    secs: f64,
) -> anyhow::Result<KxFigures> {
    // Enough announced keys for the whole run (a dial that finds none fails: `require`).
    let k = keys(
        qkd,
        setups + 200_000usize.min((secs * 20_000.0) as usize) + 100,
    )?;
    let dialer: Arc<dyn Dialer> = match transport {
        "tls" => Arc::new(TlsSide::start(sites, k.clone()).await?),
        _ => Arc::new(QuicSide::start(sites, k.clone())?),
    };
    // Warm up, and prove the variant: the negotiated group carries a QKD key exactly when asked.
    let warm = dialer.dial().await?;
    if warm != qkd {
        bail!("{transport}: asked for qkd={qkd} but the handshake negotiated qkd={warm}");
    }
    let mut lat = Vec::with_capacity(setups);
    for _ in 0..setups {
        let t = Instant::now();
        dialer.dial().await?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(f64::total_cmp);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let d = dialer.clone();
        set.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                d.dial().await?;
                n += 1;
            }
            Ok::<u64, anyhow::Error>(n)
        });
    }
    let mut total = 0;
    while let Some(r) = set.join_next().await {
        total += r??;
    }
    Ok(KxFigures {
        handshakes_per_s: total as f64 / t.elapsed().as_secs_f64(),
        setup_p50_ms: percentile(&lat, 0.5),
        setup_p99_ms: percentile(&lat, 0.99),
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One data-connection dial, start to first byte back; returns whether QKD was in the handshake.
trait Dialer: Send + Sync {
    fn dial(&self) -> futures::future::BoxFuture<'_, anyhow::Result<bool>>;
}

fn client_qkd(keys: &Keys) -> Option<ClientQkd> {
    keys.source.clone().map(|source| ClientQkd {
        source,
        policy: QkdPolicy::Require,
    })
}

/// TLS 1.3 over TCP: an acceptor task with a per-connection server config, as qsid's listener.
struct TlsSide {
    sites: (Arc<Config>, Arc<dyn tls::PeerVerifier>),
    keys: Keys,
    addr: SocketAddr,
}

impl TlsSide {
    async fn start(s: &KxSites, keys: Keys) -> anyhow::Result<TlsSide> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        let b = s.b.clone();
        let vb = tls::verifier_for(&b.trust)?;
        let lookup = keys.lookup.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let (b, vb, lookup) = (b.clone(), vb.clone(), lookup.clone());
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let Ok((cfg, _hs)) =
                        tls::server_config_qkd(&b.peers, &b.credentials, vb, lookup)
                    else {
                        return;
                    };
                    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
                    if let Ok(mut s) = acceptor.accept(tcp).await {
                        let mut x = [0u8; 1];
                        if s.read_exact(&mut x).await.is_ok() {
                            let _ = s.write_all(b"k").await;
                            let _ = s.shutdown().await;
                        }
                    }
                });
            }
        });
        Ok(TlsSide {
            sites: (s.a.clone(), tls::verifier_for(&s.a.trust)?),
            keys,
            addr,
        })
    }
}

impl Dialer for TlsSide {
    fn dial(&self) -> futures::future::BoxFuture<'_, anyhow::Result<bool>> {
        Box::pin(async move {
            let (a, va) = &self.sites;
            let peer = a.peer("site-b").context("no peer site-b")?;
            let cfg = tls::client_config_qkd(
                peer,
                &a.credentials,
                va.clone(),
                tls::ALPN_DATA,
                client_qkd(&self.keys).as_ref(),
            )?;
            let tcp = TcpStream::connect(self.addr).await?;
            let _ = tcp.set_nodelay(true);
            let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg.config))
                .connect(tls::server_name_for(peer), tcp)
                .await?;
            let qkd = s
                .get_ref()
                .1
                .negotiated_key_exchange_group()
                .and_then(|g| tls::negotiated_kx(g.name()))
                .is_some_and(|n| n.qkd);
            s.write_all(b"x").await?;
            let mut k = [0u8; 1];
            s.read_exact(&mut k)
                .await
                .context("the server did not answer")?;
            Ok(qkd)
        })
    }
}

/// QUIC: one server endpoint accepting each connection with its own config (`accept_with`), as qsid.
struct QuicSide {
    sites: (Arc<Config>, Arc<dyn tls::PeerVerifier>),
    keys: Keys,
    addr: SocketAddr,
    client: quinn::Endpoint,
    _server: quinn::Endpoint,
}

impl QuicSide {
    fn start(s: &KxSites, keys: Keys) -> anyhow::Result<QuicSide> {
        let b = s.b.clone();
        let vb = tls::verifier_for(&b.trust)?;
        let base = quinn::ServerConfig::with_crypto(Arc::new(tls::quic_server_config(
            tls::server_config(&b.peers, &b.credentials, vb.clone())?,
        )?));
        let server = quinn::Endpoint::server(base.clone(), SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = server.local_addr()?;
        let lookup = keys.lookup.clone();
        let ep = server.clone();
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let (b, vb, lookup, base) = (b.clone(), vb.clone(), lookup.clone(), base.clone());
                tokio::spawn(async move {
                    let Ok((cfg, _hs)) =
                        tls::server_config_qkd(&b.peers, &b.credentials, vb, lookup)
                    else {
                        return;
                    };
                    let Ok(cfg) = tls::quic_server_config_for(&base, cfg) else {
                        return;
                    };
                    let Ok(connecting) = incoming.accept_with(Arc::new(cfg)) else {
                        return;
                    };
                    if let Ok(conn) = connecting.await
                        && let Ok((mut s, mut r)) = conn.accept_bi().await
                        && r.read_to_end(16).await.is_ok()
                    {
                        let _ = s.write_all(b"k").await;
                        let _ = s.finish();
                        conn.closed().await;
                    }
                });
            }
        });
        let client = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        Ok(QuicSide {
            sites: (s.a.clone(), tls::verifier_for(&s.a.trust)?),
            keys,
            addr,
            client,
            _server: server,
        })
    }
}

impl Dialer for QuicSide {
    fn dial(&self) -> futures::future::BoxFuture<'_, anyhow::Result<bool>> {
        Box::pin(async move {
            let (a, va) = &self.sites;
            let peer = a.peer("site-b").context("no peer site-b")?;
            let cfg = tls::client_config_qkd(
                peer,
                &a.credentials,
                va.clone(),
                tls::ALPN_DATA,
                client_qkd(&self.keys).as_ref(),
            )?;
            let qc = quinn::ClientConfig::new(Arc::new(tls::quic_client_config(cfg.config)?));
            let sni = tls::server_name_for(peer).to_str().into_owned();
            let conn = self.client.connect_with(qc, self.addr, &sni)?.await?;
            let qkd = conn
                .handshake_data()
                .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .map(|h| h.negotiated_key_exchange_group)
                .and_then(tls::negotiated_kx)
                .is_some_and(|n| n.qkd);
            let (mut s, mut r) = conn.open_bi().await?;
            s.write_all(b"x").await?;
            s.finish()?;
            let k = r.read_to_end(16).await?;
            if k != b"k" {
                bail!("the QUIC server did not answer");
            }
            conn.close(0u32.into(), b"bench");
            Ok(qkd)
        })
    }
}

/// A running `qsid` pair whose tunnel requires QKD, with the simulator and both KMSs.
pub struct QkdPair {
    _sim: testbed::qkd::SimLink,
    _sites: (testbed::Qsid, testbed::Qsid),
    /// Group the data connection negotiated (as site-a reports it).
    pub group: String,
    /// Site A's admin socket (`peers` shows rekeys and QKD keys used).
    pub admin_a: std::path::PathBuf,
}

impl QkdPair {
    /// Site A's (the dialer's) rekeys, key updates and QKD keys used so far.
    pub fn rekey_counts(&self) -> anyhow::Result<(u64, u64, u64)> {
        let peers = testbed::admin(&self.admin_a, "peers")?;
        let p = &peers[0];
        Ok((
            p["rekey"]["rekeys"].as_u64().unwrap_or(0),
            p["rekey"]["key_updates"].as_u64().unwrap_or(0),
            p["qkd"]["keys_used"].as_u64().unwrap_or(0),
        ))
    }
}

/// Starts a QKD-keyed pair over `transport` in `dir`, carrying `name` from `listen` (on A) to `target`
/// (behind B). The KMSs keep their keys in the file key store: the bench measures the tunnel, and
/// runs outside cargo (no SoftHSM2 configuration); `qsi demo` shows the SoftHSM2 setup.
pub fn start_qkd_pair(
    dir: &Path,
    transport: &str,
    services: &[(&str, SocketAddr, SocketAddr)],
    rekey_bytes: Option<u64>,
) -> anyhow::Result<QkdPair> {
    std::fs::create_dir_all(dir)?;
    let sim = testbed::qkd::SimLink::start(
        &testbed::qkd::qkd_sim_launcher()?,
        &dir.join("qkd"),
        &testbed::qkd::LinkOptions::default(),
    )?;
    let (mut a, mut b) = testbed::pair(dir, transport)?;
    for (name, listen, target) in services {
        testbed::carry(&mut a, &mut b, name, *listen, *target);
    }
    let mut kms = Vec::new();
    for (site, master, kme) in [("a", true, sim.alice), ("b", false, sim.bob)] {
        let pin_file = dir.join(format!("kms-{site}.pin"));
        std::fs::write(&pin_file, format!("bench-{site}-{}", uuid::Uuid::new_v4()))?;
        let keys = testbed::qkd::KmsKeys::File {
            dir: dir.join(format!("kms-{site}-keys")),
            pin_file,
        };
        kms.push(testbed::qkd::write_kms(
            dir, site, master, kme, &sim.dir, &keys,
        )?);
    }
    testbed::qkd::use_qkd(&mut a, &mut b, &kms[0], &kms[1], "require", 4);
    if let Some(n) = rekey_bytes {
        // The dialer re-keys: a new data connection with a fresh QKD key after every n bytes one way.
        a.peers[0].extra += &format!("rekey_bytes = \"{}MiB\"\n", (n >> 20).max(1));
    }
    let pair = testbed::start_pair(&testbed::qsid_launcher()?, dir, &a, &b)
        .with_context(|| format!("the QKD-keyed {transport} pair did not come up"))?;
    let sock = a.admin.clone().context("admin socket")?;
    let peers = testbed::admin(&sock, "peers")?;
    let group = peers[0]["group"].as_str().unwrap_or("-").to_string();
    if !group.ends_with("+QKD") {
        bail!(
            "the QKD-keyed {transport} pair negotiated {group}: no QKD key in its handshake (qsid's data connections are not keyed by QKD on this build)"
        );
    }
    Ok(QkdPair {
        _sim: sim,
        _sites: pair,
        group,
        admin_a: sock,
    })
}
