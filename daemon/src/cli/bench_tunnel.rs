//! `qsi bench tunnel`: direct TCP, stunnel4 (TLS 1.3, a full handshake per flow), qsid over TLS 1.3 and
//! qsid over QUIC, side by side in one run on loopback.
//!
//! Figures: 1-flow and 8-flow throughput (bulk upload into a sink that acknowledges the end), new-flow setup
//! latency (connect, one byte each way) p50/p99, full handshakes per second against the listener, and CPU
//! seconds per GB of the tunnel processes (from /proc). Ratios to stunnel4 and to direct are printed.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::testbed;

use super::bench_tunnel_qkd as qkd;

/// Options of `qsi bench tunnel`.
#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object instead of the table
    #[arg(long)]
    pub json: bool,
    /// Short run (CI): small transfers, few samples
    #[arg(long)]
    pub quick: bool,
}

struct Sizes {
    bulk: usize,
    runs: usize,
    setups: usize,
    handshake_secs: f64,
}

/// Results of one configuration.
#[derive(Default, Clone)]
struct Figures {
    gbps_1: f64,
    gbps_8: f64,
    setup_p50_ms: f64,
    setup_p99_ms: f64,
    handshakes_per_s: f64,
    cpu_s_per_gb: f64,
}

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<()> {
    let sizes = if args.quick {
        Sizes {
            bulk: 32 << 20,
            runs: 1,
            setups: 30,
            handshake_secs: 0.5,
        }
    } else {
        Sizes {
            bulk: 1 << 30,
            runs: 3,
            setups: 300,
            handshake_secs: 3.0,
        }
    };
    let dir = tempfile::Builder::new().prefix("qsi-bench-").tempdir()?;
    let qsid = testbed::qsid_launcher()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let sink = rt.block_on(sink_server())?;
    let echo = rt.block_on(echo_server())?;
    let progress = |s: &str| {
        if !args.json {
            eprintln!("{s}");
        }
    };

    progress("direct TCP ...");
    let direct = rt.block_on(measure(sink, echo, sink, &sizes, &[], None))?;

    progress("stunnel4 (TLS 1.3) ...");
    let st = Stunnel::start(&dir.path().join("stunnel"), sink, echo)?;
    let stunnel = rt.block_on(measure(
        st.bulk,
        st.setup,
        st.server,
        &sizes,
        &[st.pid()],
        Some(HandshakeTarget::Stunnel(st.dir.clone())),
    ))?;
    drop(st);

    let mut qsid_figs = Vec::new();
    for transport in ["tls", "quic"] {
        progress(&format!("qsid over {transport} ..."));
        let sub = dir.path().join(transport);
        std::fs::create_dir_all(&sub)?;
        let (mut a, mut b) = testbed::pair(&sub, transport)?;
        let (bulk_l, setup_l) = (testbed::free_addr()?, testbed::free_addr()?);
        testbed::carry(&mut a, &mut b, "sink", bulk_l, sink);
        testbed::carry(&mut a, &mut b, "echo", setup_l, echo);
        let (qa, qb) = testbed::start_pair(&qsid, &sub, &a, &b)?;
        let server = if transport == "tls" { b.tls } else { b.quic }.context("listener")?;
        let target = if transport == "tls" {
            HandshakeTarget::QsidTls(sub.clone())
        } else {
            HandshakeTarget::QsidQuic(sub.clone())
        };
        let f = rt.block_on(measure(
            bulk_l,
            setup_l,
            server,
            &sizes,
            &[qa.pid(), qb.pid()],
            Some(target),
        ))?;
        qsid_figs.push(f);
    }
    let (tls, quic) = (qsid_figs[0].clone(), qsid_figs[1].clone());

    // QKD-keyed variants: handshakes with and without a QKD key (same transport, same run), then
    // the throughput of qsid pairs whose tunnels require QKD and re-key (a fresh QKD key) every quarter of
    // a transfer, so each measured transfer spans rekeys: new data connections opened under it, and TLS
    // KeyUpdates / QUIC key updates on the connection carrying it.
    let mut kx = Vec::new();
    for transport in ["tls", "quic"] {
        progress(&format!(
            "{transport} handshakes, hybrid alone and hybrid + QKD ..."
        ));
        let sites = qkd::KxSites::new(&dir.path().join(format!("kx-{transport}")), transport)?;
        let hybrid = rt.block_on(qkd::handshakes(
            &sites,
            transport,
            false,
            sizes.setups,
            sizes.handshake_secs,
        ))?;
        let with_qkd = rt.block_on(qkd::handshakes(
            &sites,
            transport,
            true,
            sizes.setups,
            sizes.handshake_secs,
        ))?;
        kx.push((hybrid, with_qkd));
    }
    let mut qkd_gbps = Vec::new();
    let mut qkd_rekeys = Vec::new();
    let mut qkd_group = String::new();
    for transport in ["tls", "quic"] {
        progress(&format!(
            "qsid over {transport} keyed by QKD (qkd-sim, KMS) ..."
        ));
        let bulk_l = testbed::free_addr()?;
        let pair = qkd::start_qkd_pair(
            &dir.path().join(format!("qkd-{transport}")),
            transport,
            &[("sink", bulk_l, sink)],
            Some((sizes.bulk as u64 / 4).max(1 << 20)),
        )?;
        qkd_group = pair.group.clone();
        rt.block_on(upload(bulk_l, 1 << 20))?;
        let before = pair.rekey_counts()?;
        let mut runs = Vec::new();
        for _ in 0..sizes.runs {
            runs.push(rt.block_on(throughput(bulk_l, sizes.bulk, 1))?);
        }
        let after = pair.rekey_counts()?;
        qkd_rekeys.push((
            after.0 - before.0.min(after.0),
            after.1 - before.1.min(after.1),
            after.2 - before.2.min(after.2),
        ));
        qkd_gbps.push(median(runs));
        drop(pair);
    }
    let ((tls_h, tls_q), (quic_h, quic_q)) = (kx[0].clone(), kx[1].clone());

    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let mut out = json!({
        "quick": args.quick,
        "bulk_bytes": sizes.bulk,
        "direct_gbps": direct.gbps_1,
        "stunnel_gbps": stunnel.gbps_1,
        "qsid_tls_gbps": tls.gbps_1,
        "qsid_quic_gbps": quic.gbps_1,
        "direct_8flow_gbps": direct.gbps_8,
        "stunnel_8flow_gbps": stunnel.gbps_8,
        "qsid_tls_8flow_gbps": tls.gbps_8,
        "qsid_quic_8flow_gbps": quic.gbps_8,
        "direct_setup_p50_ms": direct.setup_p50_ms,
        "stunnel_setup_p50_ms": stunnel.setup_p50_ms,
        "qsid_tls_setup_p50_ms": tls.setup_p50_ms,
        "qsid_quic_setup_p50_ms": quic.setup_p50_ms,
        "direct_setup_p99_ms": direct.setup_p99_ms,
        "stunnel_setup_p99_ms": stunnel.setup_p99_ms,
        "qsid_tls_setup_p99_ms": tls.setup_p99_ms,
        "qsid_quic_setup_p99_ms": quic.setup_p99_ms,
        "stunnel_handshakes_per_s": stunnel.handshakes_per_s,
        "qsid_tls_handshakes_per_s": tls.handshakes_per_s,
        "qsid_quic_handshakes_per_s": quic.handshakes_per_s,
        "stunnel_cpu_s_per_gb": stunnel.cpu_s_per_gb,
        "qsid_tls_cpu_s_per_gb": tls.cpu_s_per_gb,
        "qsid_quic_cpu_s_per_gb": quic.cpu_s_per_gb,
        "qsid_tls_vs_stunnel": ratio(tls.gbps_1, stunnel.gbps_1),
        "qsid_quic_vs_qsid_tls": ratio(quic.gbps_1, tls.gbps_1),
        "qsid_tls_vs_direct": ratio(tls.gbps_1, direct.gbps_1),
        "qsid_quic_vs_direct": ratio(quic.gbps_1, direct.gbps_1),
        "qsid_tls_setup_vs_stunnel": ratio(tls.setup_p50_ms, stunnel.setup_p50_ms),
        "qsid_quic_setup_vs_stunnel": ratio(quic.setup_p50_ms, stunnel.setup_p50_ms),
        "targets": {
            "qsid_tls_at_least_1_3x_stunnel": ratio(tls.gbps_1, stunnel.gbps_1) >= 1.3,
            "qsid_quic_at_least_0_5x_qsid_tls": ratio(quic.gbps_1, tls.gbps_1) >= 0.5,
            "qsid_setup_p50_at_most_half_stunnel": tls.setup_p50_ms <= stunnel.setup_p50_ms / 2.0 && quic.setup_p50_ms <= stunnel.setup_p50_ms / 2.0,
        },
    });
    let qkd_out = json!({
        "qkd_handshakes": "in-process, qsid's per-connection TLS/QUIC config code on loopback sockets, keys announced in memory",
        "qsid_tls_hybrid_handshakes_per_s": tls_h.handshakes_per_s,
        "qsid_tls_qkd_handshakes_per_s": tls_q.handshakes_per_s,
        "qsid_quic_hybrid_handshakes_per_s": quic_h.handshakes_per_s,
        "qsid_quic_qkd_handshakes_per_s": quic_q.handshakes_per_s,
        "qsid_tls_hybrid_setup_p50_ms": tls_h.setup_p50_ms,
        "qsid_tls_qkd_setup_p50_ms": tls_q.setup_p50_ms,
        "qsid_quic_hybrid_setup_p50_ms": quic_h.setup_p50_ms,
        "qsid_quic_qkd_setup_p50_ms": quic_q.setup_p50_ms,
        "qsid_tls_hybrid_setup_p99_ms": tls_h.setup_p99_ms,
        "qsid_tls_qkd_setup_p99_ms": tls_q.setup_p99_ms,
        "qsid_quic_hybrid_setup_p99_ms": quic_h.setup_p99_ms,
        "qsid_quic_qkd_setup_p99_ms": quic_q.setup_p99_ms,
        "qkd_vs_hybrid_handshake_ratio_tls": ratio(tls_q.handshakes_per_s, tls_h.handshakes_per_s),
        "qkd_vs_hybrid_handshake_ratio_quic": ratio(quic_q.handshakes_per_s, quic_h.handshakes_per_s),
        "qkd_vs_hybrid_setup_p50_ratio_tls": ratio(tls_q.setup_p50_ms, tls_h.setup_p50_ms),
        "qkd_vs_hybrid_setup_p50_ratio_quic": ratio(quic_q.setup_p50_ms, quic_h.setup_p50_ms),
        "qsid_qkd_group": qkd_group,
        "qsid_tls_qkd_gbps": qkd_gbps[0],
        "qsid_quic_qkd_gbps": qkd_gbps[1],
        "qkd_vs_hybrid_gbps_tls": ratio(qkd_gbps[0], tls.gbps_1),
        "qkd_vs_hybrid_gbps_quic": ratio(qkd_gbps[1], quic.gbps_1),
        "qkd_throughput_rekeys": true,
        "qsid_tls_qkd_rekeys_during_throughput": qkd_rekeys[0].0,
        "qsid_quic_qkd_rekeys_during_throughput": qkd_rekeys[1].0,
        "qsid_tls_qkd_key_updates_during_throughput": qkd_rekeys[0].1,
        "qsid_quic_qkd_key_updates_during_throughput": qkd_rekeys[1].1,
        "qsid_tls_qkd_keys_used_during_throughput": qkd_rekeys[0].2,
        "qsid_quic_qkd_keys_used_during_throughput": qkd_rekeys[1].2,
    });
    if let (Some(o), Some(q)) = (out.as_object_mut(), qkd_out.as_object()) {
        o.extend(q.clone());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "qsi bench tunnel{} (loopback, {} MiB per transfer, median of {})",
        if args.quick { " --quick" } else { "" },
        sizes.bulk >> 20,
        sizes.runs
    );
    println!(
        "{:<14} {:>10} {:>10} {:>10} {:>10} {:>12} {:>10} {:>9} {:>9}",
        "",
        "1-flow",
        "8-flow",
        "setup p50",
        "setup p99",
        "handshakes",
        "CPU s/GB",
        "vs stun",
        "vs direct"
    );
    for (name, f) in [
        ("direct TCP", &direct),
        ("stunnel4", &stunnel),
        ("qsid TLS 1.3", &tls),
        ("qsid QUIC", &quic),
    ] {
        println!(
            "{:<14} {:>7.2} Gb {:>7.2} Gb {:>7.3} ms {:>7.3} ms {:>10.0}/s {:>10.2} {:>8.2}x {:>8.2}x",
            name,
            f.gbps_1,
            f.gbps_8,
            f.setup_p50_ms,
            f.setup_p99_ms,
            f.handshakes_per_s,
            f.cpu_s_per_gb,
            ratio(f.gbps_1, stunnel.gbps_1),
            ratio(f.gbps_1, direct.gbps_1)
        );
    }
    println!(
        "\nQKD-keyed ({qkd_group}) vs hybrid alone, same transport, same run (handshakes in-process with qsid's config code):"
    );
    println!(
        "{:<6} {:>14} {:>14} {:>7} {:>13} {:>13} {:>7} {:>12} {:>12} {:>7}",
        "",
        "hybrid hs/s",
        "QKD hs/s",
        "ratio",
        "hybrid p50",
        "QKD p50",
        "ratio",
        "hybrid Gb/s",
        "QKD Gb/s",
        "ratio"
    );
    for (name, h, q, plain, with_qkd) in [
        ("TLS", &tls_h, &tls_q, tls.gbps_1, qkd_gbps[0]),
        ("QUIC", &quic_h, &quic_q, quic.gbps_1, qkd_gbps[1]),
    ] {
        println!(
            "{:<6} {:>12.0}/s {:>12.0}/s {:>6.2}x {:>10.3} ms {:>10.3} ms {:>6.2}x {:>12.2} {:>12.2} {:>6.2}x",
            name,
            h.handshakes_per_s,
            q.handshakes_per_s,
            ratio(q.handshakes_per_s, h.handshakes_per_s),
            h.setup_p50_ms,
            q.setup_p50_ms,
            ratio(q.setup_p50_ms, h.setup_p50_ms),
            plain,
            with_qkd,
            ratio(with_qkd, plain)
        );
    }
    println!(
        "(QKD throughput across rekeys every quarter transfer: TLS {} rekeys, {} key updates, {} QKD keys; QUIC {} rekeys, {} key updates, {} QKD keys)",
        qkd_rekeys[0].0,
        qkd_rekeys[0].1,
        qkd_rekeys[0].2,
        qkd_rekeys[1].0,
        qkd_rekeys[1].1,
        qkd_rekeys[1].2
    );
    println!(
        "targets: qsid TLS >= 1.3x stunnel4: {:.2}x; QUIC >= 0.5x qsid TLS: {:.2}x; setup p50 <= 0.5x stunnel4: TLS {:.2}x, QUIC {:.2}x",
        ratio(tls.gbps_1, stunnel.gbps_1),
        ratio(quic.gbps_1, tls.gbps_1),
        ratio(tls.setup_p50_ms, stunnel.setup_p50_ms),
        ratio(quic.setup_p50_ms, stunnel.setup_p50_ms)
    );
    Ok(())
}

/// Reads everything until EOF, then answers one byte.
async fn sink_server() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let a = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
                let _ = s.write_all(b"k").await;
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(a)
}

async fn echo_server() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let a = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(a)
}

/// Uploads `bytes` into the sink through `addr` and waits for its acknowledgement.
async fn upload(addr: SocketAddr, bytes: usize) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    let _ = s.set_nodelay(true);
    let chunk = vec![0x42u8; 256 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).await?;
        left -= n;
    }
    s.shutdown().await?;
    let mut k = [0u8; 1];
    s.read_exact(&mut k)
        .await
        .context("the sink did not acknowledge the transfer")?;
    Ok(())
}

async fn throughput(addr: SocketAddr, total: usize, flows: usize) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..flows {
        set.spawn(upload(addr, total / flows));
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(total as f64 * 8.0 / t.elapsed().as_secs_f64() / 1e9)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// CPU seconds (user + system) a process used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the comm field: state is index 0, utime index 11, stime index 12.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

enum HandshakeTarget {
    Stunnel(std::path::PathBuf),
    QsidTls(std::path::PathBuf),
    QsidQuic(std::path::PathBuf),
}

async fn measure(
    bulk: SocketAddr,
    setup: SocketAddr,
    server: SocketAddr,
    sizes: &Sizes,
    pids: &[u32],
    handshakes: Option<HandshakeTarget>,
) -> anyhow::Result<Figures> {
    let mut f = Figures::default();
    // Warm up (first connection, caches).
    upload(bulk, 1 << 20).await?;
    let cpu0: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let mut one = Vec::new();
    for _ in 0..sizes.runs {
        one.push(throughput(bulk, sizes.bulk, 1).await?);
    }
    let cpu1: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    f.gbps_1 = median(one);
    f.cpu_s_per_gb = (cpu1 - cpu0) / (sizes.bulk as f64 * sizes.runs as f64 / 1e9);
    let mut eight = Vec::new();
    for _ in 0..sizes.runs {
        eight.push(throughput(bulk, sizes.bulk, 8).await?);
    }
    f.gbps_8 = median(eight);
    let mut lat = Vec::with_capacity(sizes.setups);
    for _ in 0..sizes.setups {
        let t = Instant::now();
        let mut s = TcpStream::connect(setup).await?;
        let _ = s.set_nodelay(true);
        s.write_all(b"x").await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(f64::total_cmp);
    f.setup_p50_ms = percentile(&lat, 0.5);
    f.setup_p99_ms = percentile(&lat, 0.99);
    if let Some(target) = handshakes {
        f.handshakes_per_s = handshake_rate(&target, server, sizes.handshake_secs).await?;
    }
    Ok(f)
}

fn client_tls(dir: &Path, classical: bool, alpn: &[u8]) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::crypto::aws_lc_rs;
    let anchors = crate::config::read_certs("ca", dir, Path::new("ca.crt"))?;
    let mut roots = rustls::RootCertStore::empty();
    for a in anchors {
        roots.add(a)?;
    }
    let chain = crate::config::read_certs("cert", dir, Path::new("site-a.crt"))?;
    let key_pem = std::fs::read(dir.join("site-a.key"))?;
    let key = rustls_pemfile::private_key(&mut &key_pem[..])?.context("no key")?;
    let provider = if classical {
        let mut p = aws_lc_rs::default_provider();
        p.kx_groups = vec![aws_lc_rs::kx_group::X25519];
        p
    } else {
        crate::tls::provider_for(&[crate::config::KxGroup::X25519MlKem768])
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(cfg)
}

/// Full handshakes per second from 2 concurrent clients (no resumption).
async fn handshake_rate(
    target: &HandshakeTarget,
    server: SocketAddr,
    secs: f64,
) -> anyhow::Result<f64> {
    let name = rustls_pki_types::ServerName::try_from("site-b.qsi.test")?;
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    match target {
        HandshakeTarget::Stunnel(dir) | HandshakeTarget::QsidTls(dir) => {
            let classical = matches!(target, HandshakeTarget::Stunnel(_));
            let cfg = Arc::new(client_tls(dir, classical, crate::tls::ALPN_CONTROL)?);
            for _ in 0..2 {
                let cfg = cfg.clone();
                let name = name.clone();
                set.spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        let tcp = TcpStream::connect(server).await?;
                        let _ = tcp.set_nodelay(true);
                        let c = tokio_rustls::TlsConnector::from(cfg.clone())
                            .connect(name.clone(), tcp)
                            .await?;
                        drop(c);
                        n += 1;
                    }
                    Ok::<u64, anyhow::Error>(n)
                });
            }
        }
        HandshakeTarget::QsidQuic(dir) => {
            let tls = client_tls(dir, false, crate::tls::ALPN_CONTROL)?;
            let qc = quinn::ClientConfig::new(Arc::new(crate::tls::quic_client_config(tls)?));
            let mut ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            ep.set_default_client_config(qc);
            for _ in 0..2 {
                let ep = ep.clone();
                set.spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        let c = ep.connect(server, "site-b.qsi.test")?.await?;
                        c.close(0u32.into(), b"bench");
                        n += 1;
                    }
                    Ok::<u64, anyhow::Error>(n)
                });
            }
        }
    }
    let mut total = 0;
    while let Some(r) = set.join_next().await {
        total += r??;
    }
    Ok(total as f64 / t.elapsed().as_secs_f64())
}

/// stunnel4 as client and server in one process: bulk and setup listeners, TLS 1.3 with mutual auth.
struct Stunnel {
    child: Child,
    dir: std::path::PathBuf,
    bulk: SocketAddr,
    setup: SocketAddr,
    server: SocketAddr,
}

impl Stunnel {
    fn start(dir: &Path, sink: SocketAddr, echo: SocketAddr) -> anyhow::Result<Stunnel> {
        std::fs::create_dir_all(dir)?;
        testbed::write_pki(dir, &["site-a", "site-b"])?;
        let (bulk, setup, s_bulk, s_setup) = (
            testbed::free_addr()?,
            testbed::free_addr()?,
            testbed::free_addr()?,
            testbed::free_addr()?,
        );
        let d = dir.display();
        let client = |name: &str, accept: SocketAddr, connect: SocketAddr| {
            format!(
                "[{name}]\nclient = yes\naccept = {accept}\nconnect = {connect}\nsslVersionMin = TLSv1.3\nCAfile = {d}/ca.crt\nverifyChain = yes\ncheckHost = site-b.qsi.test\ncert = {d}/site-a.crt\nkey = {d}/site-a.key\nsessionCacheSize = 1\nsessionCacheTimeout = 1\n\n"
            )
        };
        let server = |name: &str, accept: SocketAddr, connect: SocketAddr| {
            format!(
                "[{name}]\naccept = {accept}\nconnect = {connect}\nsslVersionMin = TLSv1.3\nCAfile = {d}/ca.crt\nverifyChain = yes\ncert = {d}/site-b.crt\nkey = {d}/site-b.key\noptions = NO_TICKET\n\n"
            )
        };
        let conf = format!(
            "foreground = yes\npid =\ndebug = 3\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n\n{}{}{}{}",
            client("cbulk", bulk, s_bulk),
            client("csetup", setup, s_setup),
            server("sbulk", s_bulk, sink),
            server("ssetup", s_setup, echo)
        );
        let path = dir.join("stunnel.conf");
        std::fs::write(&path, conf)?;
        let bin = ["stunnel4", "stunnel"]
            .into_iter()
            .find(|b| Command::new(b).arg("-version").stderr(Stdio::null()).stdout(Stdio::null()).status().is_ok())
            .context("stunnel4 is not installed: apt-get install stunnel4 (the benchmark's comparison peer)")?;
        let child = Command::new(bin)
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stunnel.log"))?)
            .spawn()
            .context("cannot start stunnel4")?;
        let st = Stunnel {
            child,
            dir: dir.to_path_buf(),
            bulk,
            setup,
            server: s_setup,
        };
        let up = testbed::wait_until(Duration::from_secs(10), || {
            [bulk, setup, s_bulk, s_setup]
                .iter()
                .all(|a| std::net::TcpStream::connect(a).is_ok())
        });
        if !up {
            bail!(
                "stunnel4 did not start; see {}",
                dir.join("stunnel.log").display()
            );
        }
        Ok(st)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
