//! The admin socket: a Unix socket beside the daemon, one JSON request line in, one JSON answer line out.
//! Only the daemon's own user (or root) may talk to it: the peer's credentials are checked on accept.
//!
//! Requests: `{"cmd":"status"}`, `{"cmd":"peers"}`, `{"cmd":"flows"}`, `{"cmd":"reload"}`, `{"cmd":"metrics"}`.
//! Answers: `{"ok":true,"data":...}` or `{"ok":false,"error":"..."}`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::warn;

use crate::tunnel::Daemon;

/// One request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminRequest {
    /// status, peers, flows, reload or metrics.
    pub cmd: String,
}

/// One answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct AdminResponse {
    /// True on success.
    pub ok: bool,
    /// The answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The effective uid of this process, without libc: the owner of /proc/self.
pub(crate) fn my_uid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Binds the socket (replacing a stale one) with mode 0600 and serves it until shutdown.
pub async fn serve(d: Arc<Daemon>, path: PathBuf) -> anyhow::Result<()> {
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            anyhow::bail!(
                "admin socket {} is in use: another qsid is running with this config",
                path.display()
            );
        }
        std::fs::remove_file(&path)
            .with_context(|| format!("cannot remove stale admin socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("cannot bind admin socket {} (admin.socket)", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let me = my_uid();
    let shutdown = d.shutdown.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = listener.accept() => match a { Ok(a) => a, Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue } },
            };
            let uid = stream.peer_cred().ok().map(|c| c.uid());
            if uid.is_none() || (uid != me && uid != Some(0)) {
                warn!(?uid, "admin connection from another user refused");
                d.metrics.failure("-", "admin_denied");
                continue;
            }
            let d = d.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(30), handle(d, stream)).await;
            });
        }
        let _ = std::fs::remove_file(&path);
    });
    Ok(())
}

async fn handle(d: Arc<Daemon>, stream: UnixStream) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = Vec::new();
    let mut r = BufReader::new(r).take(64 * 1024);
    use tokio::io::AsyncReadExt as _;
    r.read_until(b'\n', &mut line).await?;
    let resp = match serde_json::from_slice::<AdminRequest>(&line) {
        Err(e) => AdminResponse {
            ok: false,
            data: None,
            error: Some(format!("bad request: {e}")),
        },
        Ok(req) => match req.cmd.as_str() {
            "status" => ok(d.status_json()),
            "peers" => ok(d.peers_json()),
            "flows" => ok(d.flows_json()),
            "metrics" => ok(serde_json::Value::String(d.metrics_text())),
            "reload" => match d.reload().await {
                Ok(sum) => ok(serde_json::to_value(sum).unwrap_or_default()),
                Err(e) => AdminResponse {
                    ok: false,
                    data: None,
                    error: Some(format!("reload refused, old config kept: {e:#}")),
                },
            },
            other => AdminResponse {
                ok: false,
                data: None,
                error: Some(format!("unknown command {other:?}")),
            },
        },
    };
    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
    out.push(b'\n');
    w.write_all(&out).await?;
    w.shutdown().await
}

fn ok(data: serde_json::Value) -> AdminResponse {
    AdminResponse {
        ok: true,
        data: Some(data),
        error: None,
    }
}

/// Client side: sends one command and returns the data, or the daemon's error.
pub async fn request(socket: &Path, cmd: &str) -> anyhow::Result<serde_json::Value> {
    let mut s = UnixStream::connect(socket).await.with_context(|| {
        format!("cannot connect to the admin socket {}: is qsid running, and is this its admin.socket? (use --socket)", socket.display())
    })?;
    let mut req = serde_json::to_vec(&AdminRequest { cmd: cmd.into() })?;
    req.push(b'\n');
    s.write_all(&req).await?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).await?;
    if line.is_empty() {
        anyhow::bail!(
            "qsid closed the admin connection without answering (is it running as another user?)"
        );
    }
    let resp: AdminResponse =
        serde_json::from_str(&line).context("qsid sent an unreadable answer")?;
    if resp.ok {
        Ok(resp.data.unwrap_or(serde_json::Value::Null))
    } else {
        anyhow::bail!(
            "{}",
            resp.error
                .unwrap_or_else(|| "qsid refused the request".into())
        )
    }
}
