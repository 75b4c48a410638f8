//! Path building: from the target up to a trust anchor through whatever the candidates offer — several
//! issuers of one name, cross-certificates in both directions of a bridge, self-issued key rollovers —
//! depth-first, preferring issuers whose subjectKeyIdentifier matches the authorityKeyIdentifier, cutting
//! loops (the same subject and key twice in one path), and asking a [`BundleFetcher`] for the .p7c bundles
//! that AIA caIssuers and SIA caRepository name when the candidates run out.

pub mod bridge_fixture;
pub mod bundle;
pub mod fetch;

use std::collections::HashMap;
use std::ops::ControlFlow;

use crate::validate::name::NormName;
use crate::validate::{Cert, TrustAnchor};

/// Fetches certificate bundles by URI (the I/O edge of path building).
pub trait BundleFetcher: Send + Sync {
    /// The certificates at `uri` (a .p7c bundle or a single certificate); empty when unreachable.
    fn fetch(&self, uri: &str) -> Vec<Cert>;
}

/// An indexed set of untrusted candidate certificates.
#[derive(Clone, Debug, Default)]
pub struct CertPool {
    certs: Vec<Cert>,
    by_subject: HashMap<NormName, Vec<usize>>,
}

impl CertPool {
    /// A pool of these certificates (duplicates dropped).
    pub fn new(certs: &[Cert]) -> Self {
        let mut p = CertPool::default();
        for c in certs {
            p.add(c.clone());
        }
        p
    }

    /// Adds a certificate unless it is already there. Returns true when added.
    pub fn add(&mut self, cert: Cert) -> bool {
        let list = self.by_subject.entry(cert.subject().clone()).or_default();
        if list.iter().any(|&i| self.certs.get(i) == Some(&cert)) {
            return false;
        }
        list.push(self.certs.len());
        self.certs.push(cert);
        true
    }

    /// Number of certificates.
    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// Certificates whose subject is `name`.
    pub fn by_subject(&self, name: &NormName) -> Vec<&Cert> {
        self.by_subject
            .get(name)
            .map(|v| v.iter().filter_map(|&i| self.certs.get(i)).collect())
            .unwrap_or_default()
    }

    /// Possible issuers of `cert`, those whose key identifier matches first.
    pub fn issuers_of(&self, cert: &Cert) -> Vec<Cert> {
        let mut v: Vec<Cert> = self
            .by_subject(cert.issuer())
            .into_iter()
            .cloned()
            .collect();
        let aki = cert.ext().aki.clone();
        v.sort_by_key(|c| match (&aki, &c.ext().ski) {
            (Some(a), Some(s)) if a == s => 0,
            (Some(_), Some(_)) => 2,
            _ => 1,
        });
        v
    }
}

/// Enumerates candidate paths for `target`, calling `visit(anchor, path)` for each (path ordered from
/// the certificate the anchor issued down to the target) until it breaks, `max_paths` were offered, or
/// the candidates are exhausted. Returns the number of paths offered.
pub fn for_each_path(
    target: &Cert,
    anchors: &[TrustAnchor],
    pool: &mut CertPool,
    max_depth: usize,
    max_paths: usize,
    fetcher: Option<&dyn BundleFetcher>,
    visit: &mut dyn FnMut(&TrustAnchor, &[Cert]) -> ControlFlow<()>,
) -> usize {
    let mut b = Builder {
        anchors,
        pool,
        max_depth,
        max_paths,
        fetcher,
        offered: 0,
        steps: 0,
        fetched: Vec::new(),
    };
    let mut chain = vec![target.clone()];
    let _ = b.dfs(&mut chain, visit);
    b.offered
}

struct Builder<'a> {
    anchors: &'a [TrustAnchor],
    pool: &'a mut CertPool,
    max_depth: usize,
    max_paths: usize,
    fetcher: Option<&'a dyn BundleFetcher>,
    offered: usize,
    /// Partial paths explored: a mesh of cross-certificates must not cost exponential time.
    steps: usize,
    fetched: Vec<String>,
}

/// Partial paths explored per build before giving up.
const MAX_STEPS: usize = 4096;

impl Builder<'_> {
    fn dfs(
        &mut self,
        chain: &mut Vec<Cert>,
        visit: &mut dyn FnMut(&TrustAnchor, &[Cert]) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let Some(last) = chain.last().cloned() else {
            return ControlFlow::Continue(());
        };
        self.steps += 1;
        if self.steps > MAX_STEPS {
            tracing::warn!(target_subject = %chain.first().map(Cert::subject_string).unwrap_or_default(),
                "path building stopped after {MAX_STEPS} partial paths");
            return ControlFlow::Break(());
        }
        // Anchors that issued the last certificate (a certificate that *is* an anchor ends nothing).
        let mut anchors: Vec<&TrustAnchor> = self
            .anchors
            .iter()
            .filter(|a| a.norm_name() == last.issuer() && !a.is_cert_of(&last))
            .collect();
        anchors.sort_by_key(|a| {
            let ski = a.cert().and_then(|c| c.ext().ski.clone());
            match (&last.ext().aki, ski) {
                (Some(x), Some(y)) if *x == y => 0,
                (Some(_), Some(_)) => 2,
                _ => 1,
            }
        });
        for a in anchors {
            if self.offered >= self.max_paths {
                return ControlFlow::Break(());
            }
            self.offered += 1;
            let path: Vec<Cert> = chain.iter().rev().cloned().collect();
            visit(a, &path)?;
        }
        if chain.len() >= self.max_depth {
            return ControlFlow::Continue(());
        }
        let mut issuers = self.usable_issuers(chain, &last);
        if issuers.is_empty() {
            self.fetch_for(&last);
            issuers = self.usable_issuers(chain, &last);
        }
        for c in issuers {
            chain.push(c);
            let r = self.dfs(chain, visit);
            chain.pop();
            r?;
        }
        ControlFlow::Continue(())
    }

    /// Candidate issuers of `last` that neither loop back into the chain (the same subject and key
    /// twice) nor are an anchor's own certificate (the anchor ends the path instead).
    fn usable_issuers(&self, chain: &[Cert], last: &Cert) -> Vec<Cert> {
        self.pool
            .issuers_of(last)
            .into_iter()
            .filter(|c| {
                let spki = c.spki_der();
                let loops = chain
                    .iter()
                    .any(|x| x == c || (x.subject() == c.subject() && x.spki_der() == spki));
                !loops && !self.anchors.iter().any(|a| a.is_cert_of(c))
            })
            .collect()
    }

    /// Pulls in the bundles named by the certificate's AIA caIssuers and, for anchors and pool CAs of the
    /// wanted name, their SIA caRepository.
    fn fetch_for(&mut self, cert: &Cert) {
        let Some(f) = self.fetcher else { return };
        let mut uris = cert.ca_issuers_uris();
        for a in self.anchors {
            if let Some(c) = a.cert() {
                uris.extend(c.ca_repository_uris());
            }
        }
        for uri in uris {
            if self.fetched.contains(&uri) {
                continue;
            }
            self.fetched.push(uri.clone());
            let got = f.fetch(&uri);
            tracing::debug!(uri = %uri, certs = got.len(), "fetched certificate bundle");
            for c in got {
                self.pool.add(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::bridge_fixture::{self, BridgeOptions};

    #[test]
    fn a_mesh_of_cross_certificates_is_explored_within_budget() {
        // Twenty copies of the bridge PKI's cross-certificates (fresh keys each, same names): the
        // number of paths through them explodes, the search must not.
        let mut pool = CertPool::default();
        let mut anchors = Vec::new();
        let mut target = None;
        for _ in 0..20 {
            let f = bridge_fixture::build(&BridgeOptions::default()).unwrap();
            for i in &f.intermediates {
                pool.add(Cert::from_der(&i.der).unwrap());
            }
            anchors = vec![TrustAnchor::from_cert(Cert::from_der(&f.b_root).unwrap())];
            target = Some(Cert::from_der(&f.ee).unwrap());
        }
        let target = target.unwrap();
        let start = std::time::Instant::now();
        let mut seen = 0;
        let offered = for_each_path(&target, &anchors, &mut pool, 10, 64, None, &mut |_, _| {
            seen += 1;
            ControlFlow::Continue(())
        });
        assert_eq!(offered, seen);
        assert!(offered <= 64);
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
    }
}
