//! `qkd-sim certs OUTDIR`: a throw-away CA, certificates for both KMEs and a few SAEs, and a
//! `link.toml` that uses them, for trying the simulator out. Not for production: the CA key is
//! discarded, every key is ECDSA P-256 in a file.

use std::path::Path;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};

/// SAEs the generated config attaches: (SAE ID, "alice" or "bob"). `sae-stranger` gets a
/// certificate from the same CA but is attached to no KME (for the 401 case).
pub const SAES: [(&str, Option<&str>); 4] = [
    ("sae-a", Some("alice")),
    ("sae-b", Some("bob")),
    ("sae-c", Some("bob")),
    ("sae-stranger", None),
];

fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `ca.pem`, `kme-{alice,bob}.{pem,key}`, `sae-*.{pem,key}` and `link.toml` into `out`.
/// The KMEs listen on `alice_port` and `bob_port` of 127.0.0.1 (0: any free port).
pub fn generate(out: &Path, alice_port: u16, bob_port: u16) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "qkd-sim throw-away CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, ca_key)?;
    write(&out.join("ca.pem"), &ca.pem())?;

    let leaf = |cn: &str, sans: Vec<String>, server: bool| -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut p = CertificateParams::new(sans)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = p.signed_by(&key, &ca)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let sans = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    for side in ["alice", "bob"] {
        let (cert, key) = leaf(&format!("KME-{side}"), sans.clone(), true)?;
        write(&out.join(format!("kme-{side}.pem")), &cert)?;
        write_secret(&out.join(format!("kme-{side}.key")), &key)?;
    }
    for (sae, _) in SAES {
        let (cert, key) = leaf(sae, vec![], false)?;
        write(&out.join(format!("{sae}.pem")), &cert)?;
        write_secret(&out.join(format!("{sae}.key")), &key)?;
    }
    let saes_of = |side: &str| {
        SAES.iter()
            .filter(|(_, s)| *s == Some(side))
            .map(|(id, _)| format!("{{ id = \"{id}\", cert = \"{id}.pem\" }}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let toml = format!(
        r#"# qkd-sim serve --config link.toml   (made by `qkd-sim certs`; paths are relative to this file)
admin_socket = "qkd-sim.sock"

[link]
params = "gys"          # gys, lmc05, modern, or a parameter TOML file
distance_km = 25.0
seed = 1
speedup = 1.0           # link time per wall-clock time
eve_fraction = 0.0

[limits]
key_size = 256
max_key_count = 100000
max_key_per_request = 1024
min_key_size = 64
max_key_size = 8192
max_sae_id_count = 2

[tls]
ca = "ca.pem"

[alice]
kme_id = "KME-Alice"
listen = "127.0.0.1:{alice_port}"
cert = "kme-alice.pem"
key = "kme-alice.key"
sae = [{}]

[bob]
kme_id = "KME-Bob"
listen = "127.0.0.1:{bob_port}"
cert = "kme-bob.pem"
key = "kme-bob.key"
sae = [{}]
"#,
        saes_of("alice"),
        saes_of("bob"),
    );
    write(&out.join("link.toml"), &toml)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_material_loads_as_a_config_and_tls_configs() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), 0, 0).unwrap();
        let cfg = super::super::config::ServeConfig::load(&dir.path().join("link.toml")).unwrap();
        assert_eq!(cfg.alice.saes.len(), 1);
        assert_eq!(cfg.bob.saes.len(), 2);
        super::super::tls::server_config(&cfg.alice.cert, &cfg.alice.key, &cfg.ca).unwrap();
        let map = super::super::tls::sae_map(&cfg.bob.saes).unwrap();
        assert_eq!(map.len(), 2);
        let p = dir.path();
        super::super::tls::client_config(
            &p.join("ca.pem"),
            Some((&p.join("sae-a.pem"), &p.join("sae-a.key"))),
        )
        .unwrap();
    }
}
