//! `qsi access`: the security officer's commands. Every change is an assignment signed with the
//! officer's card here, on the client side, and checked by the store (signature, officer, record
//! number) before it is applied. While the service that owns the store runs (the portal, standalone or
//! inside qsid), the commands go through its access admin socket (`access.sock` beside `access.redb`,
//! peer credentials checked); only when no service answers do they open the redb file directly, and say
//! so.

use std::path::PathBuf;

use anyhow::Context as _;
use base64::Engine as _;
use clap::{Args, Subcommand};
use qsi_labels::Label;

use super::card::CardArgs;
use crate::access::{
    AccessStore, Action, Assignment, AuditRecord, CardIdentity, PersonRecord, SignedAssignment,
    Subject,
};
use crate::portal::admin::{AccessRequest, AccessResponse, default_socket, request};

/// `qsi access ...`.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Name the first security officer (installation step, once, on an empty store), signed by the
    /// officer's own card
    Bootstrap(Bootstrap),
    /// Grant or change a person's clearance (signed with the officer's card)
    Grant(Grant),
    /// Withdraw a person's clearance (signed with the officer's card)
    Revoke(Revoke),
    /// Show persons and their clearances, or the audit log (and verify its chain)
    Show(Show),
    /// Run the login portal described by a portal.toml
    Serve(Serve),
}

/// The person an assignment is about.
#[derive(Args, Debug)]
pub struct Who {
    /// The person's card UUID
    #[arg(long)]
    pub uuid: Option<uuid::Uuid>,
    /// The person's FASC-N (25 bytes in hex)
    #[arg(long)]
    pub fascn: Option<String>,
    /// The person's card certificate (PEM or DER): identity taken from its subjectAltName
    #[arg(long)]
    pub person_cert: Option<PathBuf>,
    /// Display name for the audit log
    #[arg(long, default_value = "")]
    pub name: String,
}

/// `qsi access bootstrap`.
#[derive(Args, Debug)]
pub struct Bootstrap {
    /// The access store (redb file)
    #[arg(long)]
    pub db: PathBuf,
    /// The running service's access admin socket (default: the store's path with `.sock`)
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// The first officer's card
    #[command(flatten)]
    pub card: CardArgs,
    /// The officer's display name
    #[arg(long)]
    pub name: String,
    /// The officer's own clearance (banner marking)
    #[arg(long)]
    pub clearance: Label,
}

/// `qsi access grant`.
#[derive(Args, Debug)]
pub struct Grant {
    /// The access store (redb file)
    #[arg(long)]
    pub db: PathBuf,
    /// The running service's access admin socket (default: the store's path with `.sock`)
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// The signing officer's card
    #[command(flatten)]
    pub card: CardArgs,
    /// Who
    #[command(flatten)]
    pub who: Who,
    /// The clearance (banner marking, e.g. "SECRET//X//Y" or "S//X")
    #[arg(long)]
    pub clearance: Label,
    /// Make the person a security officer (needs --person-cert: their card key is pinned)
    #[arg(long)]
    pub officer: bool,
}

/// `qsi access revoke`.
#[derive(Args, Debug)]
pub struct Revoke {
    /// The access store (redb file)
    #[arg(long)]
    pub db: PathBuf,
    /// The running service's access admin socket (default: the store's path with `.sock`)
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// The signing officer's card
    #[command(flatten)]
    pub card: CardArgs,
    /// Who
    #[command(flatten)]
    pub who: Who,
}

/// `qsi access show`.
#[derive(Args, Debug)]
pub struct Show {
    /// The access store (redb file)
    #[arg(long)]
    pub db: PathBuf,
    /// The running service's access admin socket (default: the store's path with `.sock`)
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Show the audit log (after verifying its hash chain) instead of the persons
    #[arg(long)]
    pub audit: bool,
    /// JSON output
    #[arg(long)]
    pub json: bool,
}

/// `qsi access serve`.
#[derive(Args, Debug)]
pub struct Serve {
    /// The portal's configuration (TOML)
    #[arg(long)]
    pub config: PathBuf,
}

/// Runs `qsi access`.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Bootstrap(b) => bootstrap(b),
        Command::Grant(g) => {
            let action = Action::Grant {
                clearance: g.clearance,
                officer: g.officer,
            };
            let store = Backend::open(&g.db, g.socket.as_deref())?;
            change(&store, &g.card, &g.who, action, g.officer)
        }
        Command::Revoke(r) => {
            let store = Backend::open(&r.db, r.socket.as_deref())?;
            change(&store, &r.card, &r.who, Action::Revoke, false)
        }
        Command::Show(s) => show(s),
        Command::Serve(s) => {
            let config = crate::portal::PortalConfig::load(&s.config)?;
            super::block_on(crate::portal::server::serve_config(config))?
        }
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Where the access store is reached: the running service's admin socket, or the file itself.
enum Backend {
    /// A service owns the store and answers here.
    Socket(PathBuf),
    /// No service answered: the store is opened directly.
    Direct(AccessStore),
}

impl Backend {
    /// The service's socket when one answers, else the file (saying so on stderr).
    fn open(db: &std::path::Path, socket: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let socket = socket.map_or_else(|| default_socket(db), std::path::Path::to_path_buf);
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            tracing::info!(socket = %socket.display(), "using the running service's access admin socket");
            return Ok(Backend::Socket(socket));
        }
        eprintln!(
            "qsi access: no service answers on {}: opening the store {} directly (it must be stopped)",
            socket.display(),
            db.display()
        );
        AccessStore::open(db)
            .map(Backend::Direct)
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    fn call(socket: &std::path::Path, req: &AccessRequest) -> anyhow::Result<AccessResponse> {
        let resp = request(socket, req)?.ok_or_else(|| {
            anyhow::anyhow!(
                "the service on {} stopped answering; run the command again",
                socket.display()
            )
        })?;
        match &resp.error {
            Some(e) => anyhow::bail!("{e}"),
            None => Ok(resp),
        }
    }

    fn person_for(&self, id: &CardIdentity) -> anyhow::Result<Option<PersonRecord>> {
        match self {
            Backend::Direct(s) => Ok(s.person_for(id)?),
            Backend::Socket(p) => {
                let req = AccessRequest::Person {
                    uuid: id.uuid,
                    fascn: id.fascn.clone(),
                };
                Ok(Self::call(p, &req)?.person)
            }
        }
    }

    fn apply(&self, signed: SignedAssignment) -> anyhow::Result<PersonRecord> {
        match self {
            Backend::Direct(s) => Ok(s.apply(&signed, now())?),
            Backend::Socket(p) => Self::call(p, &AccessRequest::Apply { assignment: signed })?
                .person
                .ok_or_else(|| anyhow::anyhow!("the service returned no record")),
        }
    }

    fn bootstrap(&self, signed: SignedAssignment) -> anyhow::Result<PersonRecord> {
        match self {
            Backend::Direct(s) => Ok(s.bootstrap(&signed, now())?),
            Backend::Socket(p) => Self::call(p, &AccessRequest::Bootstrap { assignment: signed })?
                .person
                .ok_or_else(|| anyhow::anyhow!("the service returned no record")),
        }
    }

    fn persons(&self) -> anyhow::Result<Vec<PersonRecord>> {
        match self {
            Backend::Direct(s) => Ok(s.persons()?),
            Backend::Socket(p) => Ok(Self::call(p, &AccessRequest::Persons)?
                .persons
                .unwrap_or_default()),
        }
    }

    /// The audit log after its hash chain verified.
    fn audit(&self) -> anyhow::Result<Vec<AuditRecord>> {
        match self {
            Backend::Direct(s) => {
                s.verify_audit()?;
                Ok(s.audit_log()?)
            }
            Backend::Socket(p) => Ok(Self::call(p, &AccessRequest::Audit)?
                .audit
                .unwrap_or_default()),
        }
    }
}

fn cert_der(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.starts_with(b"-----") {
        let der = rustls_pemfile::certs(&mut bytes.as_slice())
            .next()
            .ok_or_else(|| anyhow::anyhow!("{} holds no PEM certificate", path.display()))??;
        return Ok(der.to_vec());
    }
    Ok(bytes)
}

fn bootstrap(b: Bootstrap) -> anyhow::Result<()> {
    let card = b.card.open()?;
    let id = CardIdentity::from_cert_der(&card.cert_der)?;
    let store = Backend::open(&b.db, b.socket.as_deref())?;
    let signed = Assignment {
        subject: Subject {
            name: b.name,
            uuid: id.uuid,
            fascn: id.fascn.clone(),
        },
        action: Action::Grant {
            clearance: b.clearance,
            officer: true,
        },
        seq: 1,
        issued_at: now(),
        subject_cert: Some(base64::engine::general_purpose::STANDARD.encode(&card.cert_der)),
    }
    .sign(&card)?;
    let rec = store
        .bootstrap(signed)
        .context("the bootstrap was refused")?;
    println!(
        "first security officer named: {} ({}), clearance {}",
        rec.name,
        rec.key,
        rec.clearance.map(|c| c.to_string()).unwrap_or_default()
    );
    Ok(())
}

fn change(
    store: &Backend,
    card: &CardArgs,
    who: &Who,
    action: Action,
    officer: bool,
) -> anyhow::Result<()> {
    let (subject, subject_cert) = match &who.person_cert {
        Some(p) => {
            let der = cert_der(p)?;
            let id = CardIdentity::from_cert_der(&der)?;
            let s = Subject {
                name: who.name.clone(),
                uuid: id.uuid,
                fascn: id.fascn,
            };
            (
                s,
                Some(base64::engine::general_purpose::STANDARD.encode(der)),
            )
        }
        None => {
            if who.uuid.is_none() && who.fascn.is_none() {
                anyhow::bail!("name the person: --uuid, --fascn or --person-cert");
            }
            let s = Subject {
                name: who.name.clone(),
                uuid: who.uuid,
                fascn: who.fascn.as_ref().map(|f| f.to_ascii_uppercase()),
            };
            (s, None)
        }
    };
    if officer && subject_cert.is_none() {
        anyhow::bail!("--officer needs --person-cert, so the new officer's card key can be pinned");
    }
    let seq = store
        .person_for(&subject.identity())?
        .map_or(1, |p| p.seq + 1);
    let card = card.open()?;
    let signed = Assignment {
        subject,
        action,
        seq,
        issued_at: now(),
        subject_cert: if officer { subject_cert } else { None },
    }
    .sign(&card)?;
    let rec = store
        .apply(signed)
        .context("the assignment was refused (and the refusal audited)")?;
    match rec.clearance {
        Some(c) => println!(
            "{} ({}) is cleared {}{} (record {})",
            rec.name,
            rec.key,
            c,
            if rec.officer_key.is_some() {
                ", security officer"
            } else {
                ""
            },
            rec.seq
        ),
        None => println!(
            "{} ({}) has no clearance (record {})",
            rec.name, rec.key, rec.seq
        ),
    }
    Ok(())
}

fn show(s: Show) -> anyhow::Result<()> {
    let store = Backend::open(&s.db, s.socket.as_deref())?;
    if s.audit {
        let log = store
            .audit()
            .context("the audit log's hash chain is broken")?;
        let n = log.len();
        if s.json {
            println!("{}", serde_json::to_string(&log)?);
        } else {
            for r in &log {
                println!("{}", serde_json::to_string(r)?);
            }
            eprintln!("{n} audit records, hash chain intact");
        }
        return Ok(());
    }
    let persons = store.persons()?;
    if s.json {
        println!("{}", serde_json::to_string(&persons)?);
        return Ok(());
    }
    for p in persons {
        println!(
            "{:<50} {:<24} {:<28} {}",
            p.key,
            p.name,
            p.clearance
                .map_or("(revoked)".to_owned(), |c| c.to_string()),
            if p.officer_key.is_some() {
                "officer"
            } else {
                ""
            }
        );
    }
    Ok(())
}
