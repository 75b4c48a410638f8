//! TLS for the KMEs: server configs with optional client certificates (an SAE without one gets
//! the ETSI 401, not a handshake failure), TLS 1.2 and 1.3 (vendor KMEs often speak 1.2), and
//! the map from client certificate to SAE ID.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("malformed PEM in {}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", path.display());
    }
    Ok(certs)
}

/// Reads a private key (PKCS#8, SEC1 or PKCS#1) from a PEM file.
pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("cannot read a private key from {}", path.display()))
}

/// A root store holding the certificates of `ca`.
pub fn roots(ca: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots
            .add(c)
            .context("CA certificate not usable as a trust anchor")?;
    }
    Ok(roots)
}

/// The crypto provider everything here uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A KME's server config: its certificate, SAE certificates from `ca` verified when presented.
pub fn server_config(
    cert: &Path,
    key: &Path,
    ca: &Path,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
        .allow_unauthenticated()
        .build()
        .context("building the client certificate verifier")?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .with_context(|| {
            format!(
                "certificate {} and key {} do not match",
                cert.display(),
                key.display()
            )
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// An SAE's client config: trusts `ca` for the KME, presents `cert`/`key` (or nothing).
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_root_certificates(roots(ca)?);
    let mut cfg = match identity {
        Some((cert, key)) => b
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .context("client certificate and key do not match")?,
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Map from an SAE's certificate (DER of its end-entity certificate) to its SAE ID.
pub type SaeMap = HashMap<Vec<u8>, String>;

/// Builds the map for the SAEs of one KME.
pub fn sae_map(saes: &[super::config::SaeConfig]) -> anyhow::Result<SaeMap> {
    let mut map = SaeMap::new();
    for s in saes {
        let certs = load_certs(&s.cert).with_context(|| format!("certificate of SAE {}", s.id))?;
        if let Some(c) = certs.first() {
            map.insert(c.as_ref().to_vec(), s.id.clone());
        }
    }
    Ok(map)
}
