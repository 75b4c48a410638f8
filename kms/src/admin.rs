//! The admin socket: a Unix socket where `qsi kms status|keys|audit` (and the tunnels' control code in
//! tests) talk to the running service, one JSON request per line, one JSON answer per line. Only the
//! service's own user and root may connect (peer credentials are checked on every connection).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::audit::AuditEvent;
use crate::error::KmsError;
use crate::lifecycle::{Operation, RevocationReason};
use crate::service::Kms;

/// A request on the admin socket.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum AdminRequest {
    /// Links, pools, alarms, store counts.
    Status,
    /// Live QKD key IDs and managed keys (never key bytes).
    Keys,
    /// Audit records from `from`, at most `limit`.
    Audit {
        /// First sequence number.
        from: u64,
        /// Most records.
        limit: usize,
    },
    /// Verify the audit log now.
    AuditVerify,
    /// Sign an audit checkpoint now.
    Checkpoint,
    /// Create a managed key.
    Create {
        /// Name.
        name: String,
        /// Cryptoperiod in seconds.
        cryptoperiod_s: u64,
        /// Activate at once.
        activate: bool,
    },
    /// A lifecycle operation on a managed key: activate, deactivate, compromise, destroy.
    Lifecycle {
        /// Managed key ID.
        id: String,
        /// Operation name.
        op: String,
    },
    /// Replace an active managed key.
    Rotate {
        /// Managed key ID.
        id: String,
    },
    /// Master: offer key IDs for announcement.
    Offer {
        /// Link.
        link: String,
        /// How many.
        n: usize,
    },
    /// Slave: the peer announced these IDs.
    Announce {
        /// Link.
        link: String,
        /// Key IDs.
        ids: Vec<String>,
    },
}

fn op_named(op: &str) -> Option<Operation> {
    Some(match op {
        "activate" => Operation::Activate,
        "deactivate" => Operation::Deactivate,
        "compromise" | "revoke" => Operation::Revoke(RevocationReason::KeyCompromise),
        "supersede" => Operation::Revoke(RevocationReason::Superseded),
        "destroy" => Operation::Destroy,
        _ => return None,
    })
}

/// Answers one request.
pub async fn answer(kms: &Kms, req: AdminRequest) -> Result<Value, KmsError> {
    let to = |v: &dyn erased::Ser| v.to_value();
    Ok(match req {
        AdminRequest::Status => json!({
            "links": kms.status(),
            "store": kms.store().counts()?,
        }),
        AdminRequest::Keys => json!({
            "qkd": kms.store().live_keys()?,
            "managed": kms.store().managed_keys()?,
        }),
        AdminRequest::Audit { from, limit } => {
            to(&kms.store().audit_records(from.max(1), limit.min(100_000))?)
        }
        AdminRequest::AuditVerify => to(&kms.store().verify_audit()?),
        AdminRequest::Checkpoint => {
            kms.checkpoint().await?;
            json!({"checkpoint": "signed"})
        }
        AdminRequest::Create {
            name,
            cryptoperiod_s,
            activate,
        } => {
            let now = crate::store::SystemClock;
            let at = activate.then(|| crate::store::Clock::now_ms(&now));
            to(&kms
                .create_managed(&name, at, cryptoperiod_s.saturating_mul(1000))
                .await?)
        }
        AdminRequest::Lifecycle { id, op } => {
            let Some(o) = op_named(&op) else {
                return Err(KmsError::Corrupt(format!(
                    "unknown operation {op:?}: use activate, deactivate, compromise, supersede or destroy"
                )));
            };
            to(&kms.managed_op(&id, o).await?)
        }
        AdminRequest::Rotate { id } => to(&kms.rotate(&id).await?),
        AdminRequest::Offer { link, n } => {
            json!({"ids": kms.offer_for_announcement(&link, n).await?})
        }
        AdminRequest::Announce { link, ids } => json!({"new": kms.announce(&link, ids).await?}),
    })
}

mod erased {
    /// Serializes anything serde can into a JSON value (errors become a string).
    pub trait Ser {
        fn to_value(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_value(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or_else(|e| serde_json::Value::String(e.to_string()))
        }
    }
}

/// Binds the socket (replacing a stale one), owner-only permissions.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        // A live service would answer; a stale socket file from a crash is removed.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "{} is in use: is another `qsi kms serve` running?",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves the admin socket until the task is aborted.
pub async fn serve(listener: UnixListener, kms: Arc<Kms>) {
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let uid = stream.peer_cred().map(|c| c.uid()).ok();
        if uid.is_none() || (uid != Some(0) && uid != me) {
            warn!(?uid, "admin connection from another user refused");
            let _ = kms
                .audit(AuditEvent::AccessRefused {
                    who: format!("uid {uid:?}"),
                    what: "admin socket".into(),
                })
                .await;
            continue;
        }
        let kms = kms.clone();
        tokio::spawn(async move {
            if let Err(e) = session(stream, &kms).await {
                debug!(error = %e, "admin session ended");
            }
        });
    }
}

async fn session(stream: UnixStream, kms: &Kms) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = match serde_json::from_str::<AdminRequest>(&line) {
            Ok(req) => match answer(kms, req).await {
                Ok(v) => json!({"ok": true, "data": v}),
                Err(e) => json!({"ok": false, "error": e.to_string()}),
            },
            Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
        };
        let mut bytes = serde_json::to_vec(&reply).unwrap_or_default();
        bytes.push(b'\n');
        w.write_all(&bytes).await?;
    }
    Ok(())
}

/// Client side: sends one request and returns the `data` of a successful answer.
pub async fn request(socket: &Path, req: &AdminRequest) -> Result<Value, String> {
    let stream = UnixStream::connect(socket).await.map_err(|e| {
        format!(
            "cannot reach the KMS admin socket {}: {e} (is `qsi kms serve` running?)",
            socket.display()
        )
    })?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    line.push(b'\n');
    w.write_all(&line).await.map_err(|e| e.to_string())?;
    let mut lines = BufReader::new(r).lines();
    let answer = lines
        .next_line()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the KMS closed the admin connection without answering (connection refused by peer-credential check?)")?;
    let v: Value = serde_json::from_str(&answer).map_err(|e| e.to_string())?;
    if v["ok"].as_bool() == Some(true) {
        Ok(v["data"].clone())
    } else {
        Err(v["error"].as_str().unwrap_or("unknown error").to_string())
    }
}
