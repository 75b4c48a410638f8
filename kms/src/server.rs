//! The ETSI GS QKD 014 server towards local SAEs (an encryptor, a database): they get QKD keys from the
//! KMS through the same API a KME offers, over HTTPS with mutual TLS. Each local SAE is known by its
//! pinned certificate; the SAE ID in the path names the application at the peer site, which selects the
//! link. `enc_keys` takes keys from a master link's reserve; `dec_keys` takes the announced (or, if
//! needed, fetched) keys of a slave link. Every refusal is audited.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use qsi_etsi014::{
    EncKeysQuery, Endpoint, Etsi014Error, Key, KeyContainer, KeyIds, KeyRequest, Limits,
    ParamProblem, Status, parse_dec_keys_query, validate_key_ids,
};

use crate::audit::AuditEvent;
use crate::config::ServerSettings;
use crate::error::KmsError;
use crate::http::{Handler, Req, Resp};
use crate::service::Kms;
use crate::source::BoxFuture;
use crate::store::Role;
use crate::tls::{TlsError, fingerprint, load_certs};

/// Routing and access rules of the server.
pub struct EtsiServer {
    kms: Arc<Kms>,
    saes: HashMap<String, String>,
    routes: HashMap<(String, Role), String>,
    allowed: HashMap<String, HashSet<String>>,
    max_per_request: u32,
}

/// One link's routing: remote SAE IDs and allowed local SAEs.
pub struct Route {
    /// Link name.
    pub link: String,
    /// SAE IDs of applications at the peer site.
    pub remote_saes: Vec<String>,
    /// Local SAE IDs allowed to use the link.
    pub local_saes: Vec<String>,
}

fn fail(e: Etsi014Error) -> Resp {
    Resp::Json(e.status(), e.body_json())
}

impl EtsiServer {
    /// Builds the server's tables; pins each local SAE's certificate by its SHA-256 fingerprint.
    pub fn new(
        kms: Arc<Kms>,
        settings: &ServerSettings,
        routes: Vec<Route>,
    ) -> Result<Self, TlsError> {
        let mut saes = HashMap::new();
        for (id, path) in &settings.saes {
            let cert = load_certs(path)?;
            if let Some(leaf) = cert.first() {
                saes.insert(fingerprint(leaf), id.clone());
            }
        }
        let mut map = HashMap::new();
        let mut allowed = HashMap::new();
        for r in routes {
            let Ok((role, _)) = kms.link_info(&r.link) else {
                continue;
            };
            for s in r.remote_saes {
                map.insert((s, role), r.link.clone());
            }
            allowed.insert(r.link, r.local_saes.into_iter().collect());
        }
        Ok(Self {
            kms,
            saes,
            routes: map,
            allowed,
            max_per_request: settings.max_keys_per_request,
        })
    }

    async fn refuse(&self, who: &str, what: String, e: Etsi014Error) -> Resp {
        let _ = self
            .kms
            .audit(AuditEvent::AccessRefused {
                who: who.to_string(),
                what,
            })
            .await;
        fail(e)
    }

    /// The link for `remote` in `role`, if `caller` may use it.
    fn route(&self, caller: &str, remote: &str, role: Role) -> Result<String, Etsi014Error> {
        let link = self
            .routes
            .get(&(remote.to_string(), role))
            .ok_or_else(|| Etsi014Error::UnknownSae {
                sae_id: remote.to_string(),
            })?;
        if !self.allowed.get(link).is_some_and(|s| s.contains(caller)) {
            return Err(Etsi014Error::Forbidden {
                caller: caller.to_string(),
                action: format!("use link {link} towards {remote}"),
            });
        }
        Ok(link.clone())
    }

    async fn answer(&self, req: Req) -> Resp {
        let Some(caller) = req.peer.as_ref().and_then(|fp| self.saes.get(fp)).cloned() else {
            return self
                .refuse(
                    "unknown certificate",
                    format!("{} {}", req.method, req.path),
                    Etsi014Error::UnknownClientCertificate,
                )
                .await;
        };
        let ep = match Endpoint::parse(&req.path) {
            Ok(e) => e,
            Err(e) => return fail(e),
        };
        let get = req.method == hyper::Method::GET;
        let post = req.method == hyper::Method::POST;
        match ep {
            Endpoint::Status { slave_sae_id } if get => {
                let link = match self.route(&caller, &slave_sae_id, Role::Master) {
                    Ok(l) => l,
                    Err(e) => {
                        return self
                            .refuse(&caller, format!("status for {slave_sae_id}"), e)
                            .await;
                    }
                };
                let view = self.kms.status().into_iter().find(|v| v.name == link);
                let (bits, stored, cap) = view
                    .map(|v| (v.key_bits, v.metrics.stored, v.capacity))
                    .unwrap_or((256, 0, 0));
                let s = Status {
                    source_kme_id: "qsi-kms".into(),
                    target_kme_id: link,
                    master_sae_id: caller,
                    slave_sae_id,
                    key_size: bits,
                    stored_key_count: stored as u64,
                    max_key_count: cap as u64,
                    max_key_per_request: self.max_per_request,
                    max_key_size: bits,
                    min_key_size: bits,
                    max_sae_id_count: 0,
                    status_extension: None,
                };
                Resp::Json(200, serde_json::to_vec(&s).unwrap_or_default())
            }
            Endpoint::EncKeys { slave_sae_id } if get || post => {
                let link = match self.route(&caller, &slave_sae_id, Role::Master) {
                    Ok(l) => l,
                    Err(e) => {
                        return self
                            .refuse(&caller, format!("enc_keys for {slave_sae_id}"), e)
                            .await;
                    }
                };
                let request = if post {
                    KeyRequest::from_json(&req.body)
                } else {
                    EncKeysQuery::parse(req.query.as_deref()).map(EncKeysQuery::to_key_request)
                };
                let request = match request {
                    Ok(r) => r,
                    Err(e) => return fail(e),
                };
                self.enc_keys(&caller, &link, request).await
            }
            Endpoint::DecKeys { master_sae_id } if get || post => {
                let link = match self.route(&caller, &master_sae_id, Role::Slave) {
                    Ok(l) => l,
                    Err(e) => {
                        return self
                            .refuse(&caller, format!("dec_keys from {master_sae_id}"), e)
                            .await;
                    }
                };
                let ids = if post {
                    KeyIds::from_json(&req.body)
                } else {
                    parse_dec_keys_query(req.query.as_deref())
                };
                let ids = match ids {
                    Ok(i) => i,
                    Err(e) => return fail(e),
                };
                self.dec_keys(&caller, &link, ids).await
            }
            _ => fail(Etsi014Error::MethodNotAllowed),
        }
    }

    async fn enc_keys(&self, caller: &str, link: &str, r: KeyRequest) -> Resp {
        let Ok((_, bits)) = self.kms.link_info(link) else {
            return fail(Etsi014Error::Internal {
                detail: "link vanished".into(),
            });
        };
        let mut problems = Vec::new();
        let number = r.number.unwrap_or(1);
        if number < 1 || number > i64::from(self.max_per_request) {
            problems.push(ParamProblem {
                parameter: "number",
                message: format!(
                    "number = {number}: from 1 to max_key_per_request = {}",
                    self.max_per_request
                ),
            });
        }
        let size = r.size.unwrap_or(i64::from(bits));
        if size != i64::from(bits) {
            problems.push(ParamProblem {
                parameter: "size",
                message: format!("size = {size}: this link delivers {bits}-bit keys only"),
            });
        }
        if r.additional_slave_sae_ids
            .as_ref()
            .is_some_and(|v| !v.is_empty())
        {
            problems.push(ParamProblem {
                parameter: "additional_slave_SAE_IDs",
                message: "multicast is not supported (max_SAE_ID_count = 0)".into(),
            });
        }
        if r.extension_mandatory
            .as_ref()
            .is_some_and(|v| !v.is_empty())
        {
            problems.push(ParamProblem {
                parameter: "extension_mandatory",
                message: "no extension is supported".into(),
            });
        }
        if !problems.is_empty() {
            return fail(Etsi014Error::InvalidParameters(problems));
        }
        match self.kms.take_keys(link, caller, number as usize).await {
            Ok(keys) => container(
                keys.iter()
                    .map(|(id, k)| Key::new(id.clone(), k.expose()))
                    .collect(),
            ),
            Err(KmsError::Exhausted { .. }) => {
                let stored = self
                    .kms
                    .status()
                    .into_iter()
                    .find(|v| v.name == link)
                    .map(|v| v.metrics.stored)
                    .unwrap_or(0);
                fail(Etsi014Error::NotEnoughKey {
                    requested_bits: number as u64 * u64::from(bits),
                    available_bits: stored as u64 * u64::from(bits),
                })
            }
            Err(e) => fail(Etsi014Error::Internal {
                detail: e.to_string(),
            }),
        }
    }

    async fn dec_keys(&self, caller: &str, link: &str, ids: KeyIds) -> Resp {
        let limits = Limits {
            max_key_per_request: self.max_per_request,
            ..Limits::default()
        };
        if let Err(e) = validate_key_ids(&ids, &limits) {
            return fail(e);
        }
        let wanted: Vec<String> = ids.key_ids.into_iter().map(|r| r.key_id).collect();
        match self.kms.take_ids(link, &wanted, caller).await {
            Ok(keys) => container(
                wanted
                    .iter()
                    .zip(keys.iter())
                    .map(|(id, k)| Key::new(id.clone(), k.expose()))
                    .collect(),
            ),
            Err(KmsError::NotAvailable(which)) => {
                self.refuse(
                    caller,
                    format!("dec_keys {which}: unknown or already delivered"),
                    Etsi014Error::KeysNotFound {
                        key_ids: which.split(", ").map(str::to_string).collect(),
                    },
                )
                .await
            }
            Err(KmsError::Fetch(crate::source::FetchError::Kme { status: 400, .. })) => {
                fail(Etsi014Error::KeysNotFound { key_ids: wanted })
            }
            Err(e) => fail(Etsi014Error::Internal {
                detail: e.to_string(),
            }),
        }
    }
}

fn container(keys: Vec<Key>) -> Resp {
    let c = KeyContainer {
        keys,
        key_container_extension: None,
    };
    Resp::Json(200, serde_json::to_vec(&c).unwrap_or_default())
}

impl Handler for EtsiServer {
    fn handle(&self, req: Req) -> BoxFuture<'_, Resp> {
        Box::pin(self.answer(req))
    }
}
