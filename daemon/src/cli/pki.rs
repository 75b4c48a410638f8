//! `qsi pki verify`: validate a certificate against trust anchors with RFC 5280 path validation (policy
//! graph, mappings, name constraints, CRLs, OCSP), building the path through whatever untrusted
//! certificates and bundles are given. Exit status: 0 valid, 1 invalid, 2 unusable input.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context, anyhow};
use qsi_pki::path::fetch::HttpBundleFetcher;
use qsi_pki::revocation::{Crl, CrlCache, HttpSource, OcspResponse, StalePolicy};
use qsi_pki::validate::{
    Cert, PolicySet, RevocationMode, TrustAnchor, ValidationError, ValidationInput,
    ValidationOptions, load_certs, validate,
};
use serde_json::json;
use x509_cert::ext::pkix::name::GeneralName;

/// `qsi pki` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Validate a certificate path (exit 0 valid, 1 invalid, 2 unusable input)
    Verify(Box<VerifyArgs>),
}

/// Revocation checking.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Revocation {
    /// Every certificate needs a CRL or OCSP status
    Require,
    /// Check what is available, accept unknown status
    BestEffort,
    /// Do not check
    Off,
}

/// Options of `qsi pki verify`.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Trust anchor certificate(s) (PEM, DER or .p7c); repeatable
    #[arg(long, required = true)]
    pub anchor: Vec<PathBuf>,
    /// The certificate to validate (PEM or DER)
    #[arg(long)]
    pub cert: PathBuf,
    /// Untrusted intermediates / cross-certificates (PEM, DER, .p7c bundles); repeatable
    #[arg(long)]
    pub untrusted: Vec<PathBuf>,
    /// CRLs (PEM or DER, complete or delta); repeatable
    #[arg(long)]
    pub crl: Vec<PathBuf>,
    /// OCSP responses (DER); repeatable
    #[arg(long)]
    pub ocsp: Vec<PathBuf>,
    /// Validation time, RFC 3339 (default: now)
    #[arg(long)]
    pub time: Option<String>,
    /// Acceptable policy OID (user-initial-policy-set); repeatable; default anyPolicy
    #[arg(long)]
    pub policy: Vec<String>,
    /// Require an explicit policy (initial-explicit-policy)
    #[arg(long)]
    pub explicit_policy: bool,
    /// Inhibit policy mapping (initial-policy-mapping-inhibit)
    #[arg(long)]
    pub inhibit_mapping: bool,
    /// Inhibit anyPolicy (initial-any-policy-inhibit)
    #[arg(long)]
    pub inhibit_any: bool,
    /// DNS name the certificate must carry (subjectAltName); repeatable
    #[arg(long)]
    pub dns_name: Vec<String>,
    /// E-mail address the certificate must carry; repeatable
    #[arg(long)]
    pub email: Vec<String>,
    /// IP address the certificate must carry; repeatable
    #[arg(long)]
    pub ip: Vec<std::net::IpAddr>,
    /// Extended key usage required: serverAuth, clientAuth, codeSigning, emailProtection, OCSPSigning,
    /// or a dotted OID; repeatable
    #[arg(long)]
    pub eku: Vec<String>,
    /// Most certificates below the anchor
    #[arg(long, default_value_t = 10)]
    pub max_depth: usize,
    /// Revocation checking
    #[arg(long, value_enum, default_value = "require")]
    pub revocation: Revocation,
    /// Fetch CRLs from distribution points and bundles from AIA/SIA over HTTP
    #[arg(long)]
    pub fetch: bool,
    /// Accept CRLs this many seconds past nextUpdate (logged)
    #[arg(long, default_value_t = 0)]
    pub crl_grace: u64,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
}

/// Runs a `qsi pki` command.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Verify(args) => {
            let code = match verify(&args) {
                Ok(code) => code,
                Err(e) => {
                    if args.json {
                        println!("{}", json!({"valid": false, "error": format!("{e:#}")}));
                    } else {
                        eprintln!("qsi pki verify: unusable input: {e:#}");
                    }
                    2
                }
            };
            std::process::exit(code)
        }
    }
}

fn read(p: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("cannot read {}: check the path", p.display()))
}

fn certs_from(paths: &[PathBuf]) -> anyhow::Result<Vec<Cert>> {
    let mut out = Vec::new();
    for p in paths {
        out.extend(load_certs(&read(p)?).with_context(|| {
            format!(
                "{} holds no usable certificate (PEM, DER or .p7c)",
                p.display()
            )
        })?);
    }
    Ok(out)
}

fn eku_oid(s: &str) -> anyhow::Result<const_oid::ObjectIdentifier> {
    let dotted = match s {
        "serverAuth" => "1.3.6.1.5.5.7.3.1",
        "clientAuth" => "1.3.6.1.5.5.7.3.2",
        "codeSigning" => "1.3.6.1.5.5.7.3.3",
        "emailProtection" => "1.3.6.1.5.5.7.3.4",
        "OCSPSigning" => "1.3.6.1.5.5.7.3.9",
        other => other,
    };
    dotted
        .parse()
        .map_err(|_| anyhow!("--eku {s}: not a known name nor a dotted OID"))
}

fn parse_time(s: &str) -> anyhow::Result<SystemTime> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("--time {s}: expected RFC 3339, e.g. 2026-06-01T00:00:00Z"))?;
    Ok(SystemTime::from(t))
}

/// Validates; returns the exit code (0 valid, 1 invalid).
fn verify(a: &VerifyArgs) -> anyhow::Result<i32> {
    let anchors: Vec<TrustAnchor> = certs_from(&a.anchor)?
        .into_iter()
        .map(TrustAnchor::from_cert)
        .collect();
    let target = certs_from(std::slice::from_ref(&a.cert))?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("{} holds no certificate", a.cert.display()))?;
    let candidates = certs_from(&a.untrusted)?;
    let mut crls = Vec::new();
    for p in &a.crl {
        crls.extend(Crl::load(&read(p)?).with_context(|| format!("{} is not a CRL", p.display()))?);
    }
    let mut ocsp = Vec::new();
    for p in &a.ocsp {
        ocsp.push(
            OcspResponse::from_der(&read(p)?)
                .with_context(|| format!("{} is not a successful OCSP response", p.display()))?,
        );
    }
    let time = match &a.time {
        Some(t) => parse_time(t)?,
        None => SystemTime::now(),
    };
    let mut required_names = Vec::new();
    for d in &a.dns_name {
        required_names.push(GeneralName::DnsName(
            der::asn1::Ia5String::new(d).map_err(|_| anyhow!("--dns-name {d}: not ASCII"))?,
        ));
    }
    for e in &a.email {
        required_names.push(GeneralName::Rfc822Name(
            der::asn1::Ia5String::new(e).map_err(|_| anyhow!("--email {e}: not ASCII"))?,
        ));
    }
    for ip in &a.ip {
        required_names.push(GeneralName::from(*ip));
    }
    let mut initial_policy_set = Vec::new();
    for p in &a.policy {
        initial_policy_set.push(
            p.parse()
                .map_err(|_| anyhow!("--policy {p}: not a dotted OID"))?,
        );
    }
    let options = ValidationOptions {
        initial_policy_set,
        explicit_policy: a.explicit_policy,
        inhibit_policy_mapping: a.inhibit_mapping,
        inhibit_any_policy: a.inhibit_any,
        required_eku: a
            .eku
            .iter()
            .map(|e| eku_oid(e))
            .collect::<anyhow::Result<_>>()?,
        required_names,
        max_depth: a.max_depth,
        revocation: match a.revocation {
            Revocation::Require => RevocationMode::Require,
            Revocation::BestEffort => RevocationMode::BestEffort,
            Revocation::Off => RevocationMode::Off,
        },
        crl_grace_secs: a.crl_grace,
        ..ValidationOptions::default()
    };
    let fetcher = HttpBundleFetcher::default();
    if a.fetch {
        let cache = CrlCache::new(
            std::sync::Arc::new(HttpSource::default()),
            std::time::Duration::from_secs(0),
            StalePolicy::Grace(std::time::Duration::from_secs(a.crl_grace)),
        );
        let mut wanted = candidates.clone();
        wanted.push(target.clone());
        crls.extend(cache.crls_for(&wanted, time));
    }
    let mut input = ValidationInput::new(&anchors, &target, time, &options);
    input.candidates = &candidates;
    input.crls = &crls;
    input.ocsp = &ocsp;
    if a.fetch {
        input.fetcher = Some(&fetcher);
    }
    let result = validate(&input);
    print_result(&result, a.json);
    Ok(if result.is_ok() { 0 } else { 1 })
}

fn policies(p: &PolicySet) -> serde_json::Value {
    match p {
        PolicySet::Any => json!("anyPolicy"),
        PolicySet::Set(s) => json!(s),
    }
}

fn print_result(r: &Result<qsi_pki::validate::ValidatedPath, ValidationError>, as_json: bool) {
    match r {
        Ok(v) => {
            let path: Vec<serde_json::Value> = v
                .certs
                .iter()
                .zip(v.revocation.iter())
                .map(|(c, s)| {
                    json!({
                        "subject": c.subject_string(),
                        "issuer": c.issuer_string(),
                        "serial": c.serial_hex(),
                        "sha256": c.fingerprint().iter().map(|b| format!("{b:02x}")).collect::<String>(),
                        "revocation": s,
                    })
                })
                .collect();
            if as_json {
                println!(
                    "{}",
                    json!({
                        "valid": true,
                        "anchor": v.anchor.name().to_string(),
                        "path": path,
                        "valid_policy_set": policies(&v.valid_policy_set),
                    })
                );
            } else {
                println!("valid");
                println!("  anchor: {}", v.anchor.name());
                for (i, c) in v.certs.iter().enumerate() {
                    println!(
                        "  [{}] {} (serial {})",
                        i + 1,
                        c.subject_string(),
                        c.serial_hex()
                    );
                }
                match &v.valid_policy_set {
                    PolicySet::Any => println!("  valid policy set: anyPolicy"),
                    PolicySet::Set(s) if s.is_empty() => println!("  valid policy set: (none)"),
                    PolicySet::Set(s) => {
                        println!(
                            "  valid policy set: {}",
                            s.iter().cloned().collect::<Vec<_>>().join(", ")
                        )
                    }
                }
            }
        }
        Err(e) => {
            if as_json {
                let failed = e.failure().map(|f| {
                    json!({
                        "index": f.index,
                        "path_len": f.path_len,
                        "subject": f.subject,
                        "serial": f.serial,
                    })
                });
                println!(
                    "{}",
                    json!({
                        "valid": false,
                        "reason": e.failure().map_or_else(|| e.to_string(), |f| f.reason.to_string()),
                        "failed_certificate": failed,
                        "error": e.to_string(),
                    })
                );
            } else {
                println!("invalid: {e}");
            }
        }
    }
}
