//! The `qsid` process: load and validate the config, start the tunnels, the admin socket and the metrics
//! endpoint, and react to signals (SIGHUP reloads, SIGTERM/SIGINT stop).

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

/// Runs qsid until SIGTERM/SIGINT.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let cfg = Config::load(config_path)?;
    let d = Daemon::start(cfg.clone(), Some(config_path.to_path_buf())).await?;
    if let Some(sock) = &cfg.admin_socket {
        crate::admin::serve(d.clone(), sock.clone()).await?;
    }
    if let Some(addr) = cfg.metrics_listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind metrics.listen {addr}; pick a free port"))?;
        tokio::spawn(serve_metrics(d.clone(), l));
    }
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
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
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
