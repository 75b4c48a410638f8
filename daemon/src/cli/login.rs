//! `qsi login`: log in to a site's portal with a smart card (mutual post-quantum TLS 1.3; the card signs
//! the handshake), show the session, fetch labelled objects on the same connection, and log out.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args as ClapArgs;
use hyper::{Method, StatusCode};
use rustls::pki_types::CertificateDer;

use super::card::CardArgs;
use crate::portal::client::PortalClient;

/// `qsi login`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The portal's address (host:port)
    #[arg(long)]
    pub portal: SocketAddr,
    /// The portal's DNS name (in its certificate)
    #[arg(long)]
    pub server_name: String,
    /// PEM file with the CA certificate(s) that issued the portal's certificate
    #[arg(long)]
    pub ca: PathBuf,
    /// The card
    #[command(flatten)]
    pub card: CardArgs,
    /// Paths to fetch on the session's connection, e.g. /data or /data/report-7 (repeatable)
    #[arg(long = "get")]
    pub get: Vec<String>,
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

/// Runs `qsi login`.
pub fn run(args: Args) -> anyhow::Result<()> {
    super::block_on(login(args))?
}

async fn login(args: Args) -> anyhow::Result<()> {
    let pem = std::fs::read(&args.ca)
        .with_context(|| format!("cannot read --ca {}", args.ca.display()))?;
    let anchors: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .with_context(|| format!("--ca {} is not a PEM certificate file", args.ca.display()))?;
    if anchors.is_empty() {
        anyhow::bail!("--ca {} holds no certificate", args.ca.display());
    }
    let card = args.card.open()?;
    let config = crate::portal::tls::client_config(
        &anchors,
        vec![CertificateDer::from(card.cert_der.clone())],
        card.signing_key()?,
    )?;
    let mut client =
        PortalClient::connect(args.portal, &args.server_name, Arc::new(config)).await?;
    let login = client.login_with_chuid(card.chuid.as_deref()).await?;
    if login.status != StatusCode::OK {
        let why = login.error().unwrap_or("no reason given").to_owned();
        anyhow::bail!("the portal refused the login: {why}");
    }
    let mut results = Vec::new();
    for path in &args.get {
        let a = client.request(Method::GET, path).await?;
        results
            .push(serde_json::json!({ "path": path, "status": a.status.as_u16(), "body": a.body }));
    }
    let logout = client.logout().await?;
    let mut session = login.body.clone();
    if let Some(o) = session.as_object_mut() {
        o.remove("token"); // bound to the connection that just closed; never printed
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "session": session, "group": client.group, "results": results, "logged_out": logout.status == StatusCode::OK })
        );
        return Ok(());
    }
    println!(
        "logged in as {} ({}) with clearance {} over {}; session {} until {}",
        session["name"].as_str().unwrap_or(""),
        session["person"].as_str().unwrap_or(""),
        session["clearance"].as_str().unwrap_or(""),
        client.group,
        session["session"].as_str().unwrap_or(""),
        session["expires_at"],
    );
    for r in &results {
        println!(
            "GET {} -> {}\n{}",
            r["path"].as_str().unwrap_or(""),
            r["status"],
            serde_json::to_string_pretty(&r["body"])?
        );
    }
    println!("logged out");
    Ok(())
}
