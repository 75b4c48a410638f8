//! `qsi tunnel status|peers|flows|reload`: talks to a running qsid over its admin socket.

use clap::Subcommand;
use serde_json::Value;

/// Tunnel operations on a running qsid.
#[derive(Subcommand)]
pub enum Command {
    /// Site, uptime and a one-line summary per peer
    Status(Common),
    /// Each peer: transport, state, negotiated group, sessions, bytes
    Peers(Common),
    /// Each open flow: peer, service, direction, age, bytes
    Flows(Common),
    /// Re-read the config file; tunnels that did not change stay up (same as SIGHUP)
    Reload(Common),
}

/// Options every tunnel command takes.
#[derive(clap::Args)]
pub struct Common {
    /// Admin socket of the running qsid (its config's `admin.socket`)
    #[arg(long, env = "QSI_ADMIN_SOCKET", default_value = "/run/qsi/qsid.sock")]
    pub socket: std::path::PathBuf,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

/// Runs one tunnel command.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    let (name, common) = match &cmd {
        Command::Status(c) => ("status", c),
        Command::Peers(c) => ("peers", c),
        Command::Flows(c) => ("flows", c),
        Command::Reload(c) => ("reload", c),
    };
    let v = super::block_on(crate::admin::request(&common.socket, name))??;
    if common.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print!("{}", render(name, &v));
    Ok(())
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn peer_rows(peers: &Value) -> String {
    let mut out = format!(
        "{:<16} {:<5} {:<8} {:<11} {:<18} {:>8} {:>6} {:>12} {:>12}\n",
        "PEER", "TRANS", "ROLE", "STATE", "GROUP", "SESSIONS", "FLOWS", "SENT", "RECEIVED"
    );
    for p in peers.as_array().into_iter().flatten() {
        out += &format!(
            "{:<16} {:<5} {:<8} {:<11} {:<18} {:>8} {:>6} {:>12} {:>12}\n",
            s(&p["name"]),
            s(&p["transport"]),
            s(&p["role"]),
            s(&p["state"]),
            s(&p["group"]),
            s(&p["sessions"]),
            s(&p["flows_active"]),
            s(&p["bytes_sent"]),
            s(&p["bytes_received"])
        );
        if p["state"] != "connected"
            && let Some(e) = p["last_error"].as_str()
        {
            out += &format!("    last error: {e}\n");
        }
        let q = &p["qkd"];
        if q.is_object() {
            out += &format!(
                "    qkd {} ({} on link {}): reserve {}/{}  used {}  fallbacks {}  refused {}  last key IDs {}\n",
                s(&q["policy"]),
                s(&q["role"]),
                s(&q["link"]),
                s(&q["reserve"]),
                s(&q["reserve_target"]),
                s(&q["keys_used"]),
                s(&q["fallbacks"]),
                s(&q["refused"]),
                q["last_key_ids"]
                    .as_array()
                    .map(|a| a.iter().map(s).collect::<Vec<_>>().join(" "))
                    .unwrap_or_default()
            );
            if let Some(why) = q["problem"].as_str() {
                out += &format!("    qkd problem: {why}\n");
            }
        }
    }
    out
}

/// Human-readable rendering of an admin answer.
pub fn render(cmd: &str, v: &Value) -> String {
    match cmd {
        "status" => format!(
            "site {}  up {} s  peers {}/{} connected  forwards {}  exposed {}\n{}",
            s(&v["site"]),
            s(&v["uptime_s"]),
            s(&v["peers_connected"]),
            s(&v["peers_total"]),
            s(&v["forwards"]),
            s(&v["exposes"]),
            peer_rows(&v["peers"])
        ),
        "peers" => peer_rows(v),
        "flows" => {
            let mut out = format!(
                "{:<16} {:>8} {:<16} {:<4} {:>10} {:>12} {:>12}\n",
                "PEER", "ID", "SERVICE", "DIR", "AGE_MS", "SENT", "RECEIVED"
            );
            for f in v.as_array().into_iter().flatten() {
                out += &format!(
                    "{:<16} {:>8} {:<16} {:<4} {:>10} {:>12} {:>12}\n",
                    s(&f["peer"]),
                    s(&f["id"]),
                    s(&f["service"]),
                    s(&f["direction"]),
                    s(&f["age_ms"]),
                    s(&f["bytes_sent"]),
                    s(&f["bytes_received"])
                );
            }
            out
        }
        _ => {
            let list = |k: &str| {
                v[k].as_array()
                    .map(|a| a.iter().map(s).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            };
            let mut out = format!(
                "reloaded: kept [{}], restarted [{}], added [{}], removed [{}]\n",
                list("kept"),
                list("restarted"),
                list("added"),
                list("removed")
            );
            if !list("needs_restart").is_empty() {
                out += &format!("restart qsid to apply: {}\n", list("needs_restart"));
            }
            out
        }
    }
}

/// Options of the hidden `qsi qsid` (the daemon, as `qsid --config`).
#[derive(clap::Args)]
pub struct QsidArgs {
    /// Site configuration (TOML)
    #[arg(long, short)]
    pub config: std::path::PathBuf,
}

/// Runs the site daemon in this process until SIGTERM/SIGINT.
pub fn run_qsid(args: QsidArgs) -> anyhow::Result<()> {
    super::block_on(crate::server::run(&args.config))?
}
