//! `qsi access`: the security officer's commands. Every change is an assignment signed with the
//! officer's card and checked by the store (signature, officer, record number) before it is applied.
//! The store is the portal's redb file: these commands open it directly, so stop the portal first.

use std::path::PathBuf;

use anyhow::Context as _;
use base64::Engine as _;
use clap::{Args, Subcommand};
use qsi_labels::Label;

use super::card::CardArgs;
use crate::access::{AccessStore, Action, Assignment, CardIdentity, Subject};

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
            change(&g.db, &g.card, &g.who, action, g.officer)
        }
        Command::Revoke(r) => change(&r.db, &r.card, &r.who, Action::Revoke, false),
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

fn open_store(db: &std::path::Path) -> anyhow::Result<AccessStore> {
    AccessStore::open(db).map_err(|e| anyhow::anyhow!("{e}"))
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
    let store = open_store(&b.db)?;
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
        .bootstrap(&signed, now())
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
    db: &std::path::Path,
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
    let store = open_store(db)?;
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
        .apply(&signed, now())
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
    let store = open_store(&s.db)?;
    if s.audit {
        let n = store
            .verify_audit()
            .context("the audit log's hash chain is broken")?;
        let log = store.audit_log()?;
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
