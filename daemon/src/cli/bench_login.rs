//! `qsi bench login`: smart-card logins per second through the portal (post-quantum mutual TLS 1.3 with a
//! card-held P-256 key on a SoftHSM2 token, then path validation, person lookup, session and audit
//! record), beside the same mutual TLS handshake and request to a server that does none of the portal's
//! checks, in the same run, with the ratio.
//!
//! A login is: new TCP connection, TLS 1.3 handshake (X25519MLKEM768; the card signs CertificateVerify),
//! `POST /login`, answer read. Rounds alternate between the two servers; each figure is the median of
//! the rounds. Without SOFTHSM2_CONF the program re-runs itself with a private SoftHSM2 configuration.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hyper::StatusCode;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;

use crate::portal::client::PortalClient;
use crate::portal::testbed::{SERVER_NAME, Testbed, TestbedOptions};

/// Options of `qsi bench login`.
#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
    /// Short run (CI): a few short rounds
    #[arg(long)]
    pub quick: bool,
    /// Logins in flight at once
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
}

const CHILD_MARK: &str = "QSI_BENCH_LOGIN_CHILD";

/// Runs the benchmark.
pub fn run(args: Args) -> anyhow::Result<()> {
    if std::env::var_os("SOFTHSM2_CONF").is_none() && std::env::var_os(CHILD_MARK).is_none() {
        let dir = tempfile::tempdir().context("temporary SoftHSM2 directory")?;
        let exe = std::env::current_exe().context("finding the qsi executable")?;
        let status = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("SOFTHSM2_CONF", dir.path().join("softhsm2.conf"))
            .env(CHILD_MARK, "1")
            .status()
            .context("re-running qsi bench login with a private SoftHSM2 configuration")?;
        if !status.success() {
            bail!("qsi bench login failed");
        }
        return Ok(());
    }
    super::block_on(bench(args))?
}

/// A server with the portal's TLS configuration that answers every request at once: the comparison peer.
async fn bare_server(tb: &Testbed) -> anyhow::Result<std::net::SocketAddr> {
    let (cert, key) = tb.ca.issue_server(SERVER_NAME)?;
    let tls = crate::portal::tls::server_config(
        vec![CertificateDer::from(cert)],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
    )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|_req| async {
                    let body =
                        http_body_util::Full::new(bytes::Bytes::from_static(b"{\"token\":\"-\"}"));
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Logins per second against `addr` for `dur`, `conc` at a time.
async fn round(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    chuid: Option<Vec<u8>>,
    conc: usize,
    dur: Duration,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let config = config.clone();
        let chuid = chuid.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            // At least one login per task, so a zero-length round checks that logins work.
            loop {
                let mut c = PortalClient::connect(addr, SERVER_NAME, config.clone())
                    .await?
                    .with_chuid(chuid.clone());
                let a = c.login().await?;
                if a.status != StatusCode::OK {
                    bail!("login refused during the benchmark: {:?}", a.body);
                }
                n += 1;
                if start.elapsed() >= dur {
                    break;
                }
            }
            Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let (rounds, dur) = if args.quick {
        (3, Duration::from_millis(300))
    } else {
        (7, Duration::from_secs(3))
    };
    let conc = args.concurrency.max(1);
    let tb = Testbed::start(TestbedOptions::default()).await.context(
        "starting the loopback portal (is softhsm2 installed? `apt-get install softhsm2`)",
    )?;
    let analyst = tb.enrol("Bench Analyst", Some("SECRET//X"))?;
    let card = analyst.open()?;
    let config = tb.client_config(&card)?;
    // The card's signed CHUID goes with every login (the portal verifies it); the bare server gets the
    // same request.
    let chuid = card.chuid.clone();
    let bare = bare_server(&tb).await?;
    // Both must work before they are timed.
    round(tb.addr, config.clone(), chuid.clone(), 1, Duration::ZERO).await?;
    round(bare, config.clone(), chuid.clone(), 1, Duration::ZERO).await?;
    let (mut portal, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        portal.push(round(tb.addr, config.clone(), chuid.clone(), conc, dur).await?);
        plain.push(round(bare, config.clone(), chuid.clone(), conc, dur).await?);
    }
    let (p, b) = (median(&mut portal), median(&mut plain));
    let ratio = if b > 0.0 { p / b } else { 0.0 };
    if args.json {
        println!(
            "{}",
            json!({
                "bench": "login", "quick": args.quick, "rounds": rounds, "round_secs": dur.as_secs_f64(),
                "concurrency": conc, "card": "SoftHSM2 token, P-256", "group": "X25519MLKEM768",
                "portal_logins_per_s": p, "mtls_only_logins_per_s": b, "ratio": ratio,
            })
        );
    } else {
        println!(
            "smart-card login, card-held P-256 key (SoftHSM2), X25519MLKEM768, {conc} in flight, median of {rounds} rounds of {:.1}s",
            dur.as_secs_f64()
        );
        println!("  portal (validation, lookup, session, audit): {p:>8.1} logins/s");
        println!("  same mutual TLS, no portal checks:           {b:>8.1} logins/s");
        println!("  ratio portal / bare mutual TLS:               {ratio:>8.2}");
    }
    Ok(())
}
