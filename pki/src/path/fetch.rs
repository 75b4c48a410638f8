//! Fetching certificate bundles (.p7c) over HTTP for the path builder.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::BundleFetcher;
use crate::revocation::fetch::http_get;
use crate::validate::{Cert, load_certs};

/// Fetches .p7c bundles (or single certificates) over plain HTTP, remembering what it got.
#[derive(Debug)]
pub struct HttpBundleFetcher {
    timeout: Duration,
    max_bytes: usize,
    cache: Mutex<HashMap<String, Vec<Cert>>>,
}

impl Default for HttpBundleFetcher {
    fn default() -> Self {
        HttpBundleFetcher {
            timeout: Duration::from_secs(5),
            max_bytes: 4 << 20,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

impl HttpBundleFetcher {
    /// A fetcher with this timeout per request.
    pub fn new(timeout: Duration) -> Self {
        HttpBundleFetcher {
            timeout,
            ..Default::default()
        }
    }
}

impl BundleFetcher for HttpBundleFetcher {
    fn fetch(&self, uri: &str) -> Vec<Cert> {
        if let Ok(c) = self.cache.lock() {
            if let Some(v) = c.get(uri) {
                return v.clone();
            }
        }
        let certs = match http_get(uri, self.timeout, self.max_bytes) {
            Ok(body) => load_certs(&body).unwrap_or_else(|e| {
                tracing::warn!(uri, error = %e, "bundle does not parse");
                Vec::new()
            }),
            Err(e) => {
                tracing::warn!(uri, error = %e, "bundle fetch failed");
                Vec::new()
            }
        };
        if let Ok(mut c) = self.cache.lock() {
            c.insert(uri.to_string(), certs.clone());
        }
        certs
    }
}
