//! What `qsi login` and `qsi access` share: opening the card (PIN from a file or asked on the terminal
//! without echo), with messages that say what to do next, and the local audit of failed card unlocks.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use qsi_hsm::Pin;

use crate::access::{AuditEvent, AuditRecord};
use crate::card::{Card, CardError};

/// Which card, and how to unlock it.
#[derive(Args, Debug, Clone)]
pub struct CardArgs {
    /// PKCS#11 module of the card reader middleware (OpenSC: /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so;
    /// SoftHSM2: /usr/lib/softhsm/libsofthsm2.so)
    #[arg(long)]
    pub pkcs11_module: PathBuf,
    /// Token label of the card
    #[arg(long)]
    pub token: String,
    /// File holding the PIN (otherwise it is asked on the terminal, without echo)
    #[arg(long)]
    pub pin_file: Option<PathBuf>,
    /// The card's certificate (PEM or DER), when the card holds only the key (as `qsi ca issue --out`
    /// leaves it); by default the certificate is read from the card
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Local audit log of failed card unlocks (JSON lines, hash-chained)
    #[arg(long, env = "QSI_LOGIN_AUDIT", default_value = "qsi-login-audit.jsonl")]
    pub audit_log: PathBuf,
}

/// Reads a line from the terminal with echo off.
fn ask_pin(prompt: &str) -> anyhow::Result<Pin> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("no terminal to ask the PIN on: give --pin-file")?;
    let saved = tcgetattr(&tty).context("reading the terminal mode")?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    tcsetattr(&tty, OptionalActions::Flush, &quiet).context("turning terminal echo off")?;
    let mut out = &tty;
    let _ = write!(out, "{prompt}");
    let _ = out.flush();
    let mut line = zeroize::Zeroizing::new(String::new());
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    let _ = tcsetattr(&tty, OptionalActions::Flush, &saved);
    let _ = writeln!(out);
    read.context("reading the PIN")?;
    Ok(Pin::new(line.trim_end_matches(['\r', '\n']).to_owned()))
}

/// Appends an event to a local hash-chained audit file.
pub fn local_audit(path: &Path, event: AuditEvent) -> anyhow::Result<()> {
    let prev: Option<AuditRecord> = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.lines().last().and_then(|l| serde_json::from_str(l).ok()));
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let rec = AuditRecord::next(prev.as_ref(), now, event);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot write the audit log {}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(&rec)?)?;
    Ok(())
}

impl CardArgs {
    /// Opens the card. A wrong PIN says how the token's PIN counter stands and is audited locally.
    pub fn open(&self) -> anyhow::Result<Card> {
        let pin = match &self.pin_file {
            Some(f) => Pin::from_file(f)
                .with_context(|| format!("reading the PIN from {}", f.display()))?,
            None => ask_pin(&format!("PIN for card {:?}: ", self.token))?,
        };
        let opened = match &self.cert {
            Some(path) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("cannot read --cert {}", path.display()))?;
                let der = if bytes.starts_with(b"-----") {
                    rustls_pemfile::certs(&mut bytes.as_slice())
                        .next()
                        .ok_or_else(|| {
                            anyhow::anyhow!("{} holds no PEM certificate", path.display())
                        })??
                        .to_vec()
                } else {
                    bytes
                };
                Card::open_with_certificate(&self.pkcs11_module, &self.token, pin, der)
            }
            None => Card::open(&self.pkcs11_module, &self.token, pin),
        };
        match opened {
            Ok(c) => Ok(c),
            Err(e) => {
                if let CardError::Hsm(
                    qsi_hsm::Error::WrongPin { flags, .. }
                    | qsi_hsm::Error::PinLocked { flags, .. },
                ) = &e
                {
                    let event = AuditEvent::CardUnlockFailed {
                        token: self.token.clone(),
                        flags: flags.to_string(),
                    };
                    if let Err(a) = local_audit(&self.audit_log, event) {
                        tracing::warn!(error = %a, "could not record the failed unlock");
                    }
                }
                Err(anyhow::Error::new(e).context(format!(
                    "cannot unlock card {:?}; nothing was sent to the portal",
                    self.token
                )))
            }
        }
    }
}
