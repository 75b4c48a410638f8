//! `qsi kms ...`: run the key management service, and ask a running one (over its admin socket) for its
//! status, its keys and its audit log. `qsi kms audit verify --offline` checks a stopped service's log
//! directly from its database, with the audit key from the HSM.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use qsi_kms::admin::{AdminRequest, request};
use qsi_kms::config::KmsConfig;
use serde_json::Value;

/// Default admin socket when neither `--socket` nor `--config` is given.
const DEFAULT_SOCKET: &str = "/run/qsi/kms.sock";

/// Where the running service is.
#[derive(Args, Clone)]
pub struct Target {
    /// The service's configuration (its admin socket is read from it)
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The admin socket, if not from --config
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Machine-readable output
    #[arg(long, global = true)]
    json: bool,
}

/// `qsi kms` subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Run the KMS standalone: KME links, ETSI 014 server for local SAEs, admin socket
    Serve {
        /// Configuration file (see config/kms.toml)
        #[arg(long)]
        config: PathBuf,
    },
    /// Links, pools, alarms and store counts of the running service
    Status(Target),
    /// Key IDs held (never key bytes) and managed keys; lifecycle operations on managed keys
    Keys {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        op: Option<KeyOp>,
    },
    /// The audit log: list records, or verify the chain and the signed checkpoints
    Audit {
        #[command(flatten)]
        target: Target,
        /// First record to list
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Most records to list
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(subcommand)]
        op: Option<AuditOp>,
    },
}

/// Managed-key operations.
#[derive(Subcommand)]
pub enum KeyOp {
    /// Create a managed AES-256 key (pre-active unless --activate)
    Create {
        /// Name
        name: String,
        /// Cryptoperiod in days
        #[arg(long, default_value_t = 365)]
        cryptoperiod_days: u64,
        /// Activate at once
        #[arg(long)]
        activate: bool,
    },
    /// pre-active -> active
    Activate { id: String },
    /// active -> deactivated
    Deactivate { id: String },
    /// -> compromised (key compromise)
    Compromise { id: String },
    /// pre-active, deactivated or compromised -> destroyed (material erased)
    Destroy { id: String },
    /// Replace an active key by a new active one (the old one is deactivated, superseded)
    Rotate { id: String },
}

/// Audit operations.
#[derive(Subcommand)]
pub enum AuditOp {
    /// Verify the hash chain and every checkpoint signature
    Verify {
        /// Read the database directly (the service must be stopped); needs --config for the HSM
        #[arg(long)]
        offline: bool,
    },
}

fn socket(t: &Target) -> anyhow::Result<PathBuf> {
    if let Some(s) = &t.socket {
        return Ok(s.clone());
    }
    if let Some(c) = &t.config {
        let cfg = KmsConfig::load(c).with_context(|| format!("reading {}", c.display()))?;
        return Ok(cfg.admin_socket);
    }
    Ok(PathBuf::from(DEFAULT_SOCKET))
}

fn ask(t: &Target, req: AdminRequest) -> anyhow::Result<Value> {
    let path = socket(t)?;
    super::block_on(async move { request(&path, &req).await })?.map_err(|e| anyhow::anyhow!(e))
}

fn print(t: &Target, v: &Value, human: impl FnOnce(&Value) -> String) -> anyhow::Result<()> {
    if t.json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        print!("{}", human(v));
    }
    Ok(())
}

/// Runs a `qsi kms` command.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Serve { config } => serve(&config),
        Command::Status(t) => {
            let v = ask(&t, AdminRequest::Status)?;
            print(&t, &v, status_text)
        }
        Command::Keys { target, op } => {
            let req = match op {
                None => AdminRequest::Keys,
                Some(KeyOp::Create {
                    name,
                    cryptoperiod_days,
                    activate,
                }) => AdminRequest::Create {
                    name,
                    cryptoperiod_s: cryptoperiod_days.saturating_mul(86_400),
                    activate,
                },
                Some(KeyOp::Activate { id }) => lifecycle(id, "activate"),
                Some(KeyOp::Deactivate { id }) => lifecycle(id, "deactivate"),
                Some(KeyOp::Compromise { id }) => lifecycle(id, "compromise"),
                Some(KeyOp::Destroy { id }) => lifecycle(id, "destroy"),
                Some(KeyOp::Rotate { id }) => AdminRequest::Rotate { id },
            };
            let listing = matches!(req, AdminRequest::Keys);
            let v = ask(&target, req)?;
            if listing {
                print(&target, &v, keys_text)
            } else {
                print(&target, &v, |v| {
                    format!(
                        "{}  {}  {}\n",
                        v["id"].as_str().unwrap_or("?"),
                        v["name"].as_str().unwrap_or("?"),
                        v["lifecycle"]["state"].as_str().unwrap_or("?")
                    )
                })
            }
        }
        Command::Audit {
            target,
            from,
            limit,
            op,
        } => match op {
            None => {
                let v = ask(&target, AdminRequest::Audit { from, limit })?;
                print(&target, &v, audit_text)
            }
            Some(AuditOp::Verify { offline: false }) => {
                let v = ask(&target, AdminRequest::AuditVerify)?;
                print(&target, &v, verify_text)
            }
            Some(AuditOp::Verify { offline: true }) => {
                let Some(c) = &target.config else {
                    bail!(
                        "--offline needs --config: the audit key's public half comes from the HSM it names"
                    );
                };
                let v = verify_offline(c)?;
                print(&target, &v, verify_text)
            }
        },
    }
}

fn lifecycle(id: String, op: &str) -> AdminRequest {
    AdminRequest::Lifecycle { id, op: op.into() }
}

fn serve(config: &Path) -> anyhow::Result<()> {
    let cfg = KmsConfig::load(config).with_context(|| format!("reading {}", config.display()))?;
    let (kek, signer) = qsi_kms::hsmkeys::open(&cfg.hsm).context(
        "opening the KEK and the audit key in the HSM (check [hsm]: token, pin, labels)",
    )?;
    super::block_on(async move {
        let running = qsi_kms::daemon::start(&cfg, kek, signer)
            .await
            .context("starting the KMS")?;
        if let Some(a) = running.etsi_addr {
            eprintln!("qsi kms: ETSI 014 server on https://{a}");
        }
        eprintln!("qsi kms: admin socket {}", cfg.admin_socket.display());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        running.shutdown().await;
        let _ = std::fs::remove_file(&cfg.admin_socket);
        Ok(())
    })?
}

fn verify_offline(config: &Path) -> anyhow::Result<Value> {
    let cfg = KmsConfig::load(config).with_context(|| format!("reading {}", config.display()))?;
    let (_, signer) =
        qsi_kms::hsmkeys::open(&cfg.hsm).context("opening the audit key in the HSM")?;
    let db = qsi_kms::store::open_db(&cfg.store_path).with_context(|| {
        format!(
            "opening {} (is the service still running? stop it or drop --offline)",
            cfg.store_path.display()
        )
    })?;
    let report =
        qsi_kms::store::verify_db(&db, signer.as_ref()).context("the audit log does NOT verify")?;
    Ok(serde_json::to_value(report)?)
}

fn status_text(v: &Value) -> String {
    let mut s = String::new();
    for l in v["links"].as_array().into_iter().flatten() {
        let m = &l["metrics"];
        let alarms: Vec<String> = m["alarms"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        s.push_str(&format!(
            "link {:<16} {:<6} {:>4} bit  stored {:>6}/{:<6} announced {:>5}  fetched {:>8}  consumed {:>8}  written off {:>5}  rate {:>8.1}/s  fetch {} ms  {}\n",
            l["name"].as_str().unwrap_or("?"),
            l["role"].as_str().unwrap_or("?"),
            l["key_bits"],
            m["stored"],
            l["capacity"],
            m["announced"],
            m["fetched_total"],
            m["consumed_total"],
            m["written_off_total"],
            m["key_rate_per_s"].as_f64().unwrap_or(0.0),
            m["mean_fetch_ms"].as_f64().map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into()),
            if alarms.is_empty() { "ok".to_string() } else { format!("ALARM {}", alarms.join(", ")) },
        ));
        if let Some(e) = m["last_error"].as_str() {
            s.push_str(&format!("  last error: {e}\n"));
        }
    }
    let st = &v["store"];
    s.push_str(&format!(
        "store: {} keys stored, {} delivered, {} written off in {} batches; audit {} records, {} checkpoints\n",
        st["live_keys"], st["spent_keys"], st["written_off_keys"], st["written_off_batches"], st["audit_records"], st["checkpoints"]
    ));
    s
}

fn keys_text(v: &Value) -> String {
    let mut s = String::new();
    let qkd = v["qkd"].as_array().cloned().unwrap_or_default();
    s.push_str(&format!("QKD keys held: {}\n", qkd.len()));
    for k in qkd.iter().take(50) {
        s.push_str(&format!(
            "  {}  link {}  batch {}{}\n",
            k["key_id"].as_str().unwrap_or("?"),
            k["link"].as_str().unwrap_or("?"),
            k["batch"],
            if k["announced"].as_bool() == Some(true) {
                "  announced"
            } else {
                ""
            }
        ));
    }
    if qkd.len() > 50 {
        s.push_str(&format!("  ... {} more (--json for all)\n", qkd.len() - 50));
    }
    let managed = v["managed"].as_array().cloned().unwrap_or_default();
    s.push_str(&format!("managed keys: {}\n", managed.len()));
    for m in managed {
        s.push_str(&format!(
            "  {}  {:<20} {}\n",
            m["id"].as_str().unwrap_or("?"),
            m["name"].as_str().unwrap_or("?"),
            m["lifecycle"]["state"].as_str().unwrap_or("?")
        ));
    }
    s
}

fn audit_text(v: &Value) -> String {
    let mut s = String::new();
    for r in v.as_array().into_iter().flatten() {
        s.push_str(&format!(
            "{:>8}  {}  {}\n",
            r["seq"],
            r["time_ms"],
            r["event"].as_str().unwrap_or("?")
        ));
    }
    s
}

fn verify_text(v: &Value) -> String {
    format!(
        "audit log verifies: {} records, {} signed checkpoints, signed through record {}, {} records after the last checkpoint\n",
        v["records"], v["checkpoints"], v["signed_through"], v["unsigned_tail"]
    )
}
