//! The `qsid` process: load and validate the config, start the site's KMS (if `[kms]` is configured), the
//! tunnels, the admin socket and the metrics endpoint, and react to signals (SIGHUP reloads, SIGTERM/SIGINT
//! stop).
//!
//! The KMS runs in-process exactly as `qsi kms serve` would run it from the same file: its KME links and
//! fetchers, the ETSI 014 server towards local SAEs, and its own admin socket, so `qsi kms status|keys|
//! audit --config <kms file>` talk to qsid's KMS (redb admits one process: those commands never open the
//! database while qsid runs). The tunnels take its keys in memory.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::config::Config;
use crate::tunnel::Daemon;
use crate::tunnel::qkd::QkdSite;

/// Runs qsid until SIGTERM/SIGINT.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let cfg = Config::load(config_path)?;
    let kms = start_kms(&cfg).await?;
    let qkd = kms
        .as_ref()
        .zip(cfg.kms.as_ref())
        .map(|(k, s)| Arc::new(QkdSite::new(k.kms.clone(), &s.sae_id)));
    let d = Daemon::start_with(cfg.clone(), Some(config_path.to_path_buf()), qkd).await?;
    if let Some(sock) = &cfg.admin_socket {
        crate::admin::serve(d.clone(), sock.clone()).await?;
    }
    if let Some(addr) = cfg.metrics_listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind metrics.listen {addr}; pick a free port"))?;
        tokio::spawn(serve_metrics(d.clone(), l));
    }
    // The login portal, when the site config has a [portal] section (stopped when `_portal` drops).
    let _portal = match cfg.portal.clone() {
        Some(p) => {
            let running = crate::portal::server::start(p).await?;
            eprintln!("qsid: portal listening on {}", running.addr);
            Some(running)
        }
        None => None,
    };
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // Tests and scripts wait for this line on stderr.
    eprintln!("qsid: site {} ready", cfg.site);
    loop {
        tokio::select! {
            _ = hup.recv() => match d.reload().await {
                Ok(sum) => info!(?sum, "SIGHUP: configuration reloaded"),
                Err(e) => warn!(error = %format!("{e:#}"), "SIGHUP: reload refused, old configuration kept"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!("qsid stopping");
    d.stop();
    if let Some(k) = kms {
        let sock = cfg.kms.as_ref().map(|s| s.settings.admin_socket.clone());
        k.shutdown().await;
        if let Some(sock) = sock {
            let _ = std::fs::remove_file(sock);
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

/// Opens the KMS's keys in the HSM and starts it, if the site config has `[kms]`.
pub async fn start_kms(cfg: &Config) -> anyhow::Result<Option<qsi_kms::daemon::Running>> {
    let Some(site) = &cfg.kms else {
        return Ok(None);
    };
    let settings = site.settings.clone();
    let hsm = settings.hsm.clone();
    let (kek, signer) = tokio::task::spawn_blocking(move || qsi_kms::hsmkeys::open(&hsm))
        .await
        .context("the KMS key opening task failed")?
        .with_context(|| {
            format!(
                "cannot open the KMS keys named in {} [hsm] (is the token there and the PIN right? `qsi hsm list` shows the token)",
                site.config_path.display()
            )
        })?;
    let running = qsi_kms::daemon::start(&settings, kek, signer)
        .await
        .with_context(|| {
            format!(
                "cannot start the KMS of {} (if `qsi kms serve` runs with the same file, stop it: one process owns the store)",
                site.config_path.display()
            )
        })?;
    if let Some(a) = running.etsi_addr {
        eprintln!("qsid: KMS ETSI 014 server on https://{a}");
    }
    info!(config = %site.config_path.display(), sae = %site.sae_id, admin = %settings.admin_socket.display(), "KMS running inside qsid");
    Ok(Some(running))
}

async fn serve_metrics(d: Arc<Daemon>, l: TcpListener) {
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let d = d.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while n < buf.len() {
                    let m = s.read(&mut buf[n..]).await?;
                    if m == 0 {
                        break;
                    }
                    n += m;
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let req = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if req.starts_with("GET /metrics ") || req.starts_with("GET / ") {
                ("200 OK", d.metrics_text())
            } else {
                ("404 Not Found", "try GET /metrics\n".to_string())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}
