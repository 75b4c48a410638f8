//! The QKD key-exchange group in real handshakes on loopback sockets: TLS 1.3 over TCP (tokio-rustls) and
//! QUIC (quinn), with the daemon's own config builders, certificates from the testbed CA, and the in-memory
//! key store. Each case checks what happened to the key pools on both sides, not only that a handshake
//! passed or failed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test crate: failures should be loud

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use qsi_daemon::config::{Config, KxGroup, PeerConfig};
use qsi_daemon::qkd::kx::{hybrid_client_share_len, qkd_codepoint};
use qsi_daemon::qkd::{
    MemoryKeyLookup, MemoryKeySource, QkdHandshake, QkdKey, QkdKeyLookup, QkdKeySource, QkdPolicy,
    memory_link, random_key,
};
use qsi_daemon::testbed;
use qsi_daemon::tls::{self, ClientQkd, NegotiatedKx};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TIMEOUT: Duration = Duration::from_secs(10);

/// The SAE of each test site (in the daemon this is the peer entry's `sae_id`).
fn sae_of(site: &str) -> String {
    format!("sae-{site}")
}

/// Site A dials site B (A is the QKD master); site C is another peer B knows, with its own SAE.
struct Sites {
    _dir: tempfile::TempDir,
    a: Config,
    b: Config,
    c: Config,
}

impl Sites {
    fn new(transport: &str) -> Sites {
        Sites::with(transport, false)
    }

    /// `cnsa`: every site holds an ML-DSA-87 certificate and every peer link is MLKEM1024 only.
    fn with(transport: &str, cnsa: bool) -> Sites {
        let dir = tempfile::tempdir().unwrap();
        let sites = ["site-a", "site-b", "site-c"];
        let mut opts = testbed::PkiOptions::default();
        if cnsa {
            opts.site_algs = sites
                .iter()
                .map(|s| (s.to_string(), &rcgen::PKCS_ML_DSA_87))
                .collect();
        }
        testbed::write_test_pki(dir.path(), &sites, &opts).unwrap();
        let (mut a, mut b) = testbed::pair_configs(dir.path(), transport).unwrap();
        if cnsa {
            for p in a.peers.iter_mut().chain(b.peers.iter_mut()) {
                p.key_exchange = Some(vec!["MLKEM1024".into()]);
            }
        }
        let mut c = a.clone();
        c.site = "site-c".into();
        let mut peer_c = b.peers[0].clone();
        peer_c.name = "site-c".into();
        b.peers.push(peer_c);
        let load = |s: &testbed::SiteToml, d: &Path| Config::load(&s.write(d).unwrap()).unwrap();
        Sites {
            a: load(&a, dir.path()),
            b: load(&b, dir.path()),
            c: load(&c, dir.path()),
            _dir: dir,
        }
    }

    /// The dialer's view of site B.
    fn peer_b(&self) -> &PeerConfig {
        self.a.peer("site-b").unwrap()
    }
}

/// What one side saw of a handshake.
#[derive(Debug)]
struct Side {
    result: Result<(NegotiatedKx, String), String>,
    qkd: Option<QkdHandshake>,
}

fn link() -> (Arc<MemoryKeySource>, Arc<MemoryKeyLookup>) {
    let (s, l) = memory_link(&sae_of("site-a"), &sae_of("site-b"), 3, 32).unwrap();
    (Arc::new(s), Arc::new(l))
}

fn source_of(keys: &[QkdKey]) -> Arc<MemoryKeySource> {
    let s = MemoryKeySource::new();
    for k in keys {
        s.push(k.clone());
    }
    Arc::new(s)
}

fn cert_site(peers: &[PeerConfig], certs: &[CertificateDer<'static>]) -> String {
    certs
        .first()
        .and_then(|c| tls::peer_for_cert(peers, c))
        .map(|p| p.name.clone())
        .unwrap_or_else(|| "?".into())
}

#[test]
fn policy_accepts_qkd_variants_and_reports_them() {
    use qsi_daemon::qkd::kx::qkd_named_group;
    let sites = Sites::new("tls");
    let mut peer = sites.peer_b().clone();
    peer.key_exchange = vec![KxGroup::MlKem1024];
    let aes256 = Some(rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
    let g = Some(qkd_named_group(KxGroup::MlKem1024));
    let n = tls::check_policy_kx(&peer, g, aes256).unwrap();
    assert_eq!((n.group, n.qkd), (KxGroup::MlKem1024, true));
    assert_eq!(n.to_string(), "MLKEM1024+QKD");
    assert_eq!(
        tls::check_policy(&peer, g, aes256).unwrap(),
        KxGroup::MlKem1024
    );
    let plain = Some(tls::kx_group(KxGroup::MlKem1024).name());
    assert!(!tls::check_policy_kx(&peer, plain, aes256).unwrap().qkd);
    // The QKD variant of a group outside the policy is refused like the group itself.
    let other = Some(qkd_named_group(KxGroup::X25519MlKem768));
    assert!(tls::check_policy_kx(&peer, other, aes256).is_err());
    // CNSA still demands AES-256 with QKD; classical groups stay refused.
    let aes128 = Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    assert!(tls::check_policy_kx(&peer, g, aes128).is_err());
    assert!(tls::check_policy(&peer, Some(rustls::NamedGroup::X25519), aes256).is_err());
}

// ---------- TLS over TCP ----------

/// Accepts one TLS connection on `l` with a per-connection QKD config (or a plain one when `lookup` is
/// None), completes the handshake, echoes one message, and reports.
async fn tls_accept_one(
    l: TcpListener,
    b: Arc<Config>,
    lookup: Option<Arc<dyn QkdKeyLookup>>,
) -> Side {
    let (tcp, _) = l.accept().await.unwrap();
    let (cfg, qkd) = tls::server_config_qkd(
        &b.peers,
        &b.credentials,
        tls::verifier_for(&b.trust).unwrap(),
        lookup,
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let result = async {
        let mut s = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let (_, conn) = s.get_ref();
        let certs: Vec<_> = conn
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| c.clone().into_owned())
            .collect();
        let site = cert_site(&b.peers, &certs);
        let peer = b.peer(&site).ok_or("unknown peer")?;
        let n = tls::check_policy_kx(
            peer,
            conn.negotiated_key_exchange_group().map(|g| g.name()),
            conn.negotiated_cipher_suite().map(|s| s.suite()),
        )?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        s.write_all(&buf).await.map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())?;
        Ok((n, site))
    };
    let result = tokio::time::timeout(TIMEOUT, result)
        .await
        .unwrap_or_else(|_| Err("server timed out".into()));
    Side { result, qkd }
}

/// Dials `to` as site `me` towards site B with QKD, sends one message and waits for its echo.
async fn tls_dial(me: &Config, peer: &PeerConfig, to: SocketAddr, qkd: Option<&ClientQkd>) -> Side {
    let cfg = match tls::client_config_qkd(
        peer,
        &me.credentials,
        tls::verifier_for(&me.trust).unwrap(),
        tls::ALPN_DATA,
        qkd,
    ) {
        Ok(c) => c,
        Err(e) => {
            return Side {
                result: Err(e.to_string()),
                qkd: None,
            };
        }
    };
    let hs = cfg.qkd.clone();
    let result = async {
        let tcp = TcpStream::connect(to).await.map_err(|e| e.to_string())?;
        let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg.config))
            .connect(tls::server_name_for(peer), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (_, conn) = s.get_ref();
        let n = tls::check_policy_kx(
            peer,
            conn.negotiated_key_exchange_group().map(|g| g.name()),
            conn.negotiated_cipher_suite().map(|s| s.suite()),
        )?;
        s.write_all(b"hello").await.map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"hello");
        Ok((n, peer.name.clone()))
    };
    let result = tokio::time::timeout(TIMEOUT, result)
        .await
        .unwrap_or_else(|_| Err("client timed out".into()));
    Side { result, qkd: hs }
}

/// One TLS handshake: A (or `me`) dials B, which holds `lookup`.
async fn tls_once(
    me: &Config,
    b: &Config,
    peer: &PeerConfig,
    lookup: Option<Arc<dyn QkdKeyLookup>>,
    qkd: Option<&ClientQkd>,
) -> (Side, Side) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(tls_accept_one(l, Arc::new(b.clone()), lookup));
    let client = tls_dial(me, peer, addr, qkd).await;
    (client, server.await.unwrap())
}

/// The usual direction: A dials B.
async fn a_to_b(
    sites: &Sites,
    lookup: Option<Arc<dyn QkdKeyLookup>>,
    qkd: Option<&ClientQkd>,
) -> (Side, Side) {
    tls_once(&sites.a, &sites.b, sites.peer_b(), lookup, qkd).await
}

/// A source holding a key with an already used ID (a replayed share, or a master that reuses a key).
fn replay_of(key_id: &str) -> Arc<MemoryKeySource> {
    source_of(&[QkdKey {
        master_sae_id: sae_of("site-a"),
        slave_sae_id: sae_of("site-b"),
        key_id: key_id.to_string(),
        key: zeroize::Zeroizing::new(vec![0; 32]),
    }])
}

fn require(source: &Arc<MemoryKeySource>) -> ClientQkd {
    ClientQkd {
        source: source.clone(),
        policy: QkdPolicy::Require,
    }
}

fn as_lookup(l: &Arc<MemoryKeyLookup>) -> Option<Arc<dyn QkdKeyLookup>> {
    Some(l.clone())
}

fn assert_qkd_ok(client: &Side, server: &Side) -> String {
    let (cn, _) = client.result.as_ref().expect("client handshake");
    let (sn, site) = server.result.as_ref().expect("server handshake");
    assert!(cn.qkd && sn.qkd, "QKD group negotiated: {cn} / {sn}");
    assert_eq!(cn.group, KxGroup::X25519MlKem768);
    assert_eq!(cn.to_string(), "X25519MLKEM768+QKD");
    let c = client.qkd.as_ref().unwrap();
    let s = server.qkd.as_ref().unwrap();
    let used = c.used().unwrap();
    assert_eq!(s.used().unwrap(), used, "both sides name the same key");
    // Each side checks the SAE at the other end against the peer its certificate matched.
    c.check_peer_sae(&sae_of("site-b")).unwrap();
    s.check_peer_sae(&sae_of(site)).unwrap();
    used.key_id
}

#[tokio::test]
async fn tls_three_source_handshake_uses_one_key_once_on_both_sides() {
    let sites = Sites::new("tls");
    let (source, lookup) = link();
    let (c, s) = a_to_b(&sites, as_lookup(&lookup), Some(&require(&source))).await;
    let key_id = assert_qkd_ok(&c, &s);
    assert_eq!(
        (source.len(), lookup.len()),
        (2, 2),
        "one key gone from each side"
    );
    assert!(!lookup.contains(&sae_of("site-a"), &key_id));

    // The same ID again (a replayed share, or a master that reuses a key): refused, nothing else consumed.
    let replay = replay_of(&key_id);
    let (c, s) = a_to_b(&sites, as_lookup(&lookup), Some(&require(&replay))).await;
    assert!(c.result.is_err() && s.result.is_err(), "{c:?} {s:?}");
    assert_eq!(s.qkd.unwrap().failure().unwrap().label(), "already_used");
    assert_eq!(lookup.len(), 2, "a refused ID consumes nothing");

    // The pool still works for the next dial.
    let (c, s) = a_to_b(&sites, as_lookup(&lookup), Some(&require(&source))).await;
    assert_ne!(assert_qkd_ok(&c, &s), key_id);
}

#[tokio::test]
async fn tls_unannounced_id_fails_and_consumes_nothing() {
    let sites = Sites::new("tls");
    let (_, lookup) = link();
    let stray = source_of(&[random_key(&sae_of("site-a"), &sae_of("site-b"), 32).unwrap()]);
    let (c, s) = a_to_b(&sites, as_lookup(&lookup), Some(&require(&stray))).await;
    let err = s.result.unwrap_err();
    assert!(err.contains("never announced"), "{err}");
    assert!(c.result.is_err());
    assert_eq!(s.qkd.unwrap().failure().unwrap().label(), "unannounced");
    assert_eq!(lookup.len(), 3);
    assert!(c.qkd.unwrap().used().is_none());
}

#[tokio::test]
async fn tls_wrong_key_for_the_right_id_fails() {
    let sites = Sites::new("tls");
    let (source, lookup) = link();
    // The server's store returns different key bytes for the ID the client names.
    let k = source.take().unwrap();
    let mut wrong = k.clone();
    wrong.key[0] ^= 1;
    let bad = Arc::new(MemoryKeyLookup::new());
    bad.announce(wrong);
    let (c, s) = a_to_b(&sites, as_lookup(&bad), Some(&require(&source_of(&[k])))).await;
    assert!(c.result.is_err(), "{c:?}");
    assert!(s.result.is_err(), "{s:?}");
    // Only the QKD key differed: both groups ran to completion with the same ID.
    assert!(s.qkd.unwrap().used().is_some());
    assert!(c.qkd.unwrap().used().is_some());
    assert_eq!(lookup.len(), 3);
}

/// A TCP relay that flips one byte in the X25519 part of the QKD group's share in the first ClientHello
/// record (a fault injector around the real handshake: no real attacker tool produces this case here).
async fn flipping_proxy(listen: TcpListener, to: SocketAddr) -> bool {
    let (mut inbound, _) = listen.accept().await.unwrap();
    let mut outbound = TcpStream::connect(to).await.unwrap();
    let mut head = [0u8; 5];
    inbound.read_exact(&mut head).await.unwrap();
    let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
    let mut body = vec![0u8; len];
    inbound.read_exact(&mut body).await.unwrap();
    let cp = qkd_codepoint(KxGroup::X25519MlKem768).to_be_bytes();
    let hybrid = hybrid_client_share_len(KxGroup::X25519MlKem768);
    // key_share entry: group (2) || length (2) || share. ML-KEM-768 key first, then X25519 (last 32).
    let at = body
        .windows(4)
        .position(|w| w[..2] == cp && usize::from(u16::from_be_bytes([w[2], w[3]])) > hybrid);
    let flipped = if let Some(i) = at {
        body[i + 4 + hybrid - 10] ^= 0x01;
        true
    } else {
        false
    };
    outbound.write_all(&head).await.unwrap();
    outbound.write_all(&body).await.unwrap();
    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    flipped
}

#[tokio::test]
async fn tls_hybrid_share_altered_in_flight_fails() {
    let sites = Sites::new("tls");
    let (source, lookup) = link();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = l.local_addr().unwrap();
    let server = tokio::spawn(tls_accept_one(
        l,
        Arc::new(sites.b.clone()),
        as_lookup(&lookup),
    ));
    let p = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = p.local_addr().unwrap();
    let proxy = tokio::spawn(flipping_proxy(p, server_addr));
    let c = tls_dial(
        &sites.a,
        sites.peer_b(),
        proxy_addr,
        Some(&require(&source)),
    )
    .await;
    let s = server.await.unwrap();
    assert!(
        proxy.await.unwrap(),
        "the proxy found and altered our key share"
    );
    assert!(c.result.is_err(), "{c:?}");
    assert!(s.result.is_err(), "{s:?}");
    // The IDs were intact, so the server did take the key: the failure comes from the hybrid part.
    let used = s.qkd.unwrap().used().unwrap();
    assert_eq!(c.qkd.unwrap().used().unwrap(), used);
    assert_eq!(lookup.len(), 2);
}

#[tokio::test]
async fn tls_peer_certificate_of_another_sae_is_refused() {
    let sites = Sites::new("tls");
    let (source, lookup) = link();
    // Site C (a configured peer of B, SAE sae-site-c) holds a key of the A-B link and names A's SAE.
    let k = source.take().unwrap();
    let peer_b_of_c = sites.c.peer("site-b").unwrap();
    let (c, s) = tls_once(
        &sites.c,
        &sites.b,
        peer_b_of_c,
        as_lookup(&lookup),
        Some(&require(&source_of(&[k]))),
    )
    .await;
    let (_, site) = s.result.as_ref().unwrap();
    assert_eq!(site, "site-c");
    let err = s
        .qkd
        .as_ref()
        .unwrap()
        .check_peer_sae(&sae_of(site))
        .unwrap_err();
    assert_eq!(err.label(), "wrong_sae", "{err}");
    assert!(err.to_string().contains("sae-site-a"), "{err}");
    // The dialer's own check: the key was shared with the SAE of the server it reached.
    c.qkd
        .as_ref()
        .unwrap()
        .check_peer_sae("sae-site-b")
        .unwrap();
    assert!(
        c.qkd
            .as_ref()
            .unwrap()
            .check_peer_sae("sae-site-x")
            .is_err()
    );
}

#[tokio::test]
async fn tls_policies_against_a_server_without_qkd() {
    let sites = Sites::new("tls");
    let (source, lookup) = link();
    // prefer + a server that does not offer the group: HelloRetryRequest to the plain hybrid; the one key
    // whose ID went out is reported as wasted, and no second key is taken.
    let prefer = ClientQkd {
        source: source.clone(),
        policy: QkdPolicy::Prefer,
    };
    let (c, s) = a_to_b(&sites, None, Some(&prefer)).await;
    let (n, _) = c.result.as_ref().unwrap();
    assert!(!n.qkd && !s.result.unwrap().0.qkd);
    let hs = c.qkd.unwrap();
    assert!(hs.used().is_none());
    assert!(hs.wasted().is_some());
    assert_eq!(source.len(), 2);
    assert_eq!(lookup.len(), 3);

    // require + the same server: the handshake fails, one key written off.
    let (c, _) = a_to_b(&sites, None, Some(&require(&source))).await;
    assert!(c.result.is_err());
    assert_eq!(source.len(), 1);

    // prefer with an empty reserve: plain hybrid, and the config says why.
    let empty = Arc::new(MemoryKeySource::new());
    let cfg = tls::client_config_qkd(
        sites.peer_b(),
        &sites.a.credentials,
        tls::verifier_for(&sites.a.trust).unwrap(),
        tls::ALPN_DATA,
        Some(&ClientQkd {
            source: empty.clone(),
            policy: QkdPolicy::Prefer,
        }),
    )
    .unwrap();
    assert!(cfg.qkd.is_none());
    assert_eq!(cfg.fallback.unwrap().label(), "no_key");
    // require with an empty reserve: no config at all.
    let err = tls::client_config_qkd(
        sites.peer_b(),
        &sites.a.credentials,
        tls::verifier_for(&sites.a.trust).unwrap(),
        tls::ALPN_DATA,
        Some(&require(&empty)),
    )
    .unwrap_err();
    assert!(err.to_string().contains("QKD required"), "{err}");

    // prefer + a QKD-capable server: the QKD group wins, no retry, no waste.
    let (c, s) = a_to_b(&sites, as_lookup(&lookup), Some(&prefer)).await;
    assert!(c.result.as_ref().unwrap().0.qkd, "{c:?}");
    assert!(s.result.unwrap().0.qkd);
    assert!(c.qkd.as_ref().unwrap().wasted().is_none());
    assert_eq!(s.qkd.unwrap().used(), c.qkd.unwrap().used());
    assert_eq!(lookup.len(), 2);

    // A QKD-capable server still serves plain dials (control connections, prefer without a key).
    let (c, s) = a_to_b(&sites, as_lookup(&lookup), None).await;
    assert!(!c.result.unwrap().0.qkd);
    assert!(s.qkd.unwrap().used().is_none());
    assert_eq!(lookup.len(), 2);
}

// ---------- QUIC ----------

fn quic_base(b: &Config) -> quinn::ServerConfig {
    let tls_cfg = tls::server_config(
        &b.peers,
        &b.credentials,
        tls::verifier_for(&b.trust).unwrap(),
    )
    .unwrap();
    let mut cfg =
        quinn::ServerConfig::with_crypto(Arc::new(tls::quic_server_config(tls_cfg).unwrap()));
    cfg.transport_config(short_idle());
    cfg
}

/// QUIC drops packets it cannot decrypt, so a key mismatch ends in an idle timeout: keep it short here.
fn short_idle() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(Duration::from_secs(2).try_into().unwrap()));
    Arc::new(t)
}

/// One QUIC handshake A -> B over a fresh pair of endpoints; the server accepts with a per-connection
/// config (`Incoming::accept_with`), as the daemon does.
async fn quic_once(
    sites: &Sites,
    lookup: Option<Arc<dyn QkdKeyLookup>>,
    qkd: Option<&ClientQkd>,
) -> (Side, Side) {
    let b = sites.b.clone();
    let base = quic_base(&b);
    let server_ep = quinn::Endpoint::server(base.clone(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server_ep.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let incoming = server_ep.accept().await.unwrap();
        let (tls_cfg, hs) = tls::server_config_qkd(
            &b.peers,
            &b.credentials,
            tls::verifier_for(&b.trust).unwrap(),
            lookup,
        )
        .unwrap();
        let cfg = tls::quic_server_config_for(&base, tls_cfg).unwrap();
        let result = async {
            let conn = incoming
                .accept_with(Arc::new(cfg))
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            let certs = conn
                .peer_identity()
                .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok())
                .map(|b| *b)
                .unwrap_or_default();
            let site = cert_site(&b.peers, &certs);
            let named = conn
                .handshake_data()
                .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .map(|h| h.negotiated_key_exchange_group);
            let n = tls::check_policy_kx(b.peer(&site).ok_or("unknown peer")?, named, None)?;
            let (mut s, mut r) = conn.accept_bi().await.map_err(|e| e.to_string())?;
            let msg = r.read_to_end(64).await.map_err(|e| e.to_string())?;
            s.write_all(&msg).await.map_err(|e| e.to_string())?;
            s.finish().map_err(|e| e.to_string())?;
            conn.closed().await;
            Ok((n, site))
        };
        let result = tokio::time::timeout(TIMEOUT, result)
            .await
            .unwrap_or_else(|_| Err("server timed out".into()));
        Side { result, qkd: hs }
    });

    let a = &sites.a;
    let peer = sites.peer_b();
    let client = async {
        let cfg = tls::client_config_qkd(
            peer,
            &a.credentials,
            tls::verifier_for(&a.trust).unwrap(),
            tls::ALPN_DATA,
            qkd,
        )
        .map_err(|e| e.to_string());
        let cfg = match cfg {
            Ok(c) => c,
            Err(e) => {
                return Side {
                    result: Err(e),
                    qkd: None,
                };
            }
        };
        let hs = cfg.qkd.clone();
        let result = async {
            let mut qc = quinn::ClientConfig::new(Arc::new(
                tls::quic_client_config(cfg.config).map_err(|e| e.to_string())?,
            ));
            qc.transport_config(short_idle());
            let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap())
                .map_err(|e| e.to_string())?;
            let sni = tls::server_name_for(peer).to_str().into_owned();
            let conn = ep
                .connect_with(qc, addr, &sni)
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            let named = conn
                .handshake_data()
                .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                .map(|h| h.negotiated_key_exchange_group);
            let n = tls::check_policy_kx(peer, named, None)?;
            let (mut s, mut r) = conn.open_bi().await.map_err(|e| e.to_string())?;
            s.write_all(b"hello").await.map_err(|e| e.to_string())?;
            s.finish().map_err(|e| e.to_string())?;
            let echo = r.read_to_end(64).await.map_err(|e| e.to_string())?;
            assert_eq!(echo, b"hello");
            conn.close(0u32.into(), b"done");
            Ok((n, peer.name.clone()))
        };
        let result = tokio::time::timeout(TIMEOUT, result)
            .await
            .unwrap_or_else(|_| Err("client timed out".into()));
        Side { result, qkd: hs }
    }
    .await;
    (client, server.await.unwrap())
}

#[tokio::test]
async fn quic_three_source_handshake_and_refusals() {
    let sites = Sites::new("quic");
    let (source, lookup) = link();
    let (c, s) = quic_once(&sites, as_lookup(&lookup), Some(&require(&source))).await;
    let key_id = assert_qkd_ok(&c, &s);
    assert_eq!((source.len(), lookup.len()), (2, 2));

    // Replay of the used ID.
    let replay = replay_of(&key_id);
    let (c, s) = quic_once(&sites, as_lookup(&lookup), Some(&require(&replay))).await;
    assert!(c.result.is_err() && s.result.is_err(), "{c:?} {s:?}");
    assert_eq!(s.qkd.unwrap().failure().unwrap().label(), "already_used");
    assert_eq!(lookup.len(), 2);

    // Unannounced ID.
    let stray = source_of(&[random_key(&sae_of("site-a"), &sae_of("site-b"), 32).unwrap()]);
    let (c, s) = quic_once(&sites, as_lookup(&lookup), Some(&require(&stray))).await;
    assert!(c.result.is_err() && s.result.is_err());
    assert_eq!(s.qkd.unwrap().failure().unwrap().label(), "unannounced");
    assert_eq!(lookup.len(), 2);

    // Wrong key for the right ID. Both sides derive different handshake keys; QUIC discards what it
    // cannot decrypt (RFC 9000 §12.2), so the handshake ends in the idle timeout, never in a connection.
    let k = source.take().unwrap();
    let mut wrong = k.clone();
    wrong.key[5] ^= 0x80;
    let bad = Arc::new(MemoryKeyLookup::new());
    bad.announce(wrong);
    let (c, s) = quic_once(&sites, as_lookup(&bad), Some(&require(&source_of(&[k])))).await;
    let (ce, se) = (c.result.unwrap_err(), s.result.unwrap_err());
    assert!(
        ce.contains("timed out") && se.contains("timed out"),
        "{ce} / {se}"
    );
    assert!(s.qkd.unwrap().used().is_some());

    // prefer against a server without QKD: plain hybrid after a retry, the key reported as wasted.
    let prefer = ClientQkd {
        source: source.clone(),
        policy: QkdPolicy::Prefer,
    };
    let (c, _) = quic_once(&sites, None, Some(&prefer)).await;
    assert!(!c.result.unwrap().0.qkd);
    assert!(c.qkd.unwrap().wasted().is_some());
    assert_eq!(source.len(), 0);
}

/// CNSA 2.0: ML-DSA-87 certificates, MLKEM1024 + QKD, AES-256, over both transports.
#[tokio::test]
async fn cnsa_profile_with_qkd_over_tls_and_quic() {
    for transport in ["tls", "quic"] {
        let sites = Sites::with(transport, true);
        let (source, lookup) = link();
        let (c, s) = if transport == "tls" {
            a_to_b(&sites, as_lookup(&lookup), Some(&require(&source))).await
        } else {
            quic_once(&sites, as_lookup(&lookup), Some(&require(&source))).await
        };
        let (n, _) = c.result.as_ref().expect("client handshake");
        assert_eq!((n.group, n.qkd), (KxGroup::MlKem1024, true), "{transport}");
        assert_eq!(n.to_string(), "MLKEM1024+QKD");
        assert!(s.result.as_ref().unwrap().0.qkd);
        assert_eq!(c.qkd.unwrap().used(), s.qkd.unwrap().used());
        assert_eq!((source.len(), lookup.len()), (2, 2));
    }
}
