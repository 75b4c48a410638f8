//! The access admin socket: how `qsi access` reaches the running service that owns the access store (redb
//! admits one process per file). A Unix socket beside the store (`access.sock` for `access.redb`, or
//! `admin_socket` in the portal config), mode 0600, and only the service's own user (or root) is served:
//! the peer's credentials are checked on accept. One JSON request line in, one JSON answer line out.
//!
//! Assignments arrive already signed by the officer's card on the client side; the store checks them
//! exactly as when it is opened directly (signature, current officer, record number) and audits
//! refusals. A change to a person's record also ends their live sessions, so a withdrawn or lowered
//! clearance takes effect at once.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::Portal;
use crate::access::{AccessStore, AuditRecord, CardIdentity, PersonRecord, SignedAssignment};

/// One request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum AccessRequest {
    /// Name the first officer (a self-signed officer grant on an empty store).
    Bootstrap {
        /// The signed assignment.
        assignment: SignedAssignment,
    },
    /// Apply a signed assignment.
    Apply {
        /// The signed assignment.
        assignment: SignedAssignment,
    },
    /// The person a card belongs to.
    Person {
        /// Card UUID.
        uuid: Option<uuid::Uuid>,
        /// FASC-N hex.
        fascn: Option<String>,
    },
    /// Every person.
    Persons,
    /// The audit log, after verifying its hash chain.
    Audit,
}

/// One answer.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AccessResponse {
    /// What went wrong (the store's message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// One person (bootstrap, apply, person).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person: Option<PersonRecord>,
    /// Persons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persons: Option<Vec<PersonRecord>>,
    /// The audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<Vec<AuditRecord>>,
}

/// The socket that belongs to a store when none is configured: `<store>.sock` (`access.sock` for
/// `access.redb`).
pub fn default_socket(store: &Path) -> PathBuf {
    store.with_extension("sock")
}

fn answer(portal: &Portal, req: AccessRequest) -> AccessResponse {
    let now = portal.clock_now();
    let store: &AccessStore = portal.store();
    let mut out = AccessResponse::default();
    let result = match req {
        AccessRequest::Bootstrap { assignment } => store
            .bootstrap(&assignment, now)
            .map(|p| out.person = Some(p)),
        AccessRequest::Apply { assignment } => store.apply(&assignment, now).map(|p| {
            portal.person_changed(&p.key);
            out.person = Some(p);
        }),
        AccessRequest::Person { uuid, fascn } => store
            .person_for(&CardIdentity { fascn, uuid })
            .map(|p| out.person = p),
        AccessRequest::Persons => store.persons().map(|p| out.persons = Some(p)),
        AccessRequest::Audit => store
            .verify_audit()
            .and_then(|_| store.audit_log())
            .map(|l| out.audit = Some(l)),
    };
    if let Err(e) = result {
        out.error = Some(e.to_string());
    }
    out
}

/// Binds the socket (replacing a stale one) with mode 0600. Needs a tokio runtime.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "access admin socket {} is in use: another service owns this access store",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot bind the access admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(socket = %path.display(), "access admin socket listening");
    Ok(listener)
}

/// Serves the bound socket until the task is dropped.
pub async fn serve(portal: Arc<Portal>, listener: UnixListener) {
    let me = crate::admin::my_uid();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let uid = stream.peer_cred().ok().map(|c| c.uid());
        if uid.is_none() || (uid != me && uid != Some(0)) {
            tracing::warn!(?uid, "access admin connection from another user refused");
            continue;
        }
        let portal = portal.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(30), handle(portal, stream)).await;
        });
    }
}

async fn handle(portal: Arc<Portal>, stream: UnixStream) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = Vec::new();
    BufReader::new(r)
        .take(1 << 20)
        .read_until(b'\n', &mut line)
        .await?;
    let resp = match serde_json::from_slice::<AccessRequest>(&line) {
        Err(e) => AccessResponse {
            error: Some(format!("bad request: {e}")),
            ..Default::default()
        },
        // The store's writes fsync: keep them off the runtime's workers.
        Ok(req) => {
            let p = portal.clone();
            tokio::task::spawn_blocking(move || answer(&p, req))
                .await
                .unwrap_or_else(|e| AccessResponse {
                    error: Some(format!("the request failed: {e}")),
                    ..Default::default()
                })
        }
    };
    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
    out.push(b'\n');
    w.write_all(&out).await?;
    w.shutdown().await
}

/// Client side: sends one request; `Ok(None)` when no service answers on `socket` (the caller then
/// opens the store directly).
pub fn request(socket: &Path, req: &AccessRequest) -> anyhow::Result<Option<AccessResponse>> {
    use std::io::{BufRead, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return Ok(None);
    };
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)
        .with_context(|| format!("writing to {}", socket.display()))?;
    let mut answer = String::new();
    std::io::BufReader::new(s)
        .read_line(&mut answer)
        .with_context(|| format!("reading from {}", socket.display()))?;
    if answer.is_empty() {
        anyhow::bail!(
            "the service on {} closed the connection without answering: it serves only its own user (run as that user, or root)",
            socket.display()
        );
    }
    Ok(Some(
        serde_json::from_str(&answer).context("the service sent an unreadable answer")?,
    ))
}
