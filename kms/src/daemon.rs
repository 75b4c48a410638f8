//! Running the KMS as a service: the links' ETSI 014 clients and fetchers, the ETSI 014 server towards
//! local SAEs, the admin socket and the periodic audit checkpoint. `qsi kms serve` calls [`start`];
//! `qsid` can do the same and keep the returned [`Kms`] handle for its tunnels.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::info;

use crate::client::{ClientSettings, Etsi014Client};
use crate::config::KmsConfig;
use crate::error::KmsError;
use crate::kek::{CheckpointSigner, Kek};
use crate::server::{EtsiServer, Route};
use crate::service::{Kms, LinkSpec};
use crate::source::FetchError;
use crate::store::{StoreOptions, SystemClock};
use crate::tls::{self, TlsError};

/// Why the service did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Certificates or keys of a link or of the server.
    #[error("{what}: {source}")]
    Tls {
        /// Which link or the server.
        what: String,
        /// The problem.
        source: TlsError,
    },
    /// The store or the HSM keys.
    #[error(transparent)]
    Kms(#[from] KmsError),
    /// A link's KME settings.
    #[error("link {link}: {source}")]
    Link {
        /// Link name.
        link: String,
        /// The problem.
        source: FetchError,
    },
    /// A socket could not be bound.
    #[error("cannot listen on {what}: {source}")]
    Bind {
        /// The address or path.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The running service.
pub struct Running {
    /// The KMS (the in-process API for tunnels).
    pub kms: Arc<Kms>,
    /// Where the ETSI 014 server listens, if configured.
    pub etsi_addr: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops serving, signs a final audit checkpoint.
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = self.kms.checkpoint().await;
    }
}

/// Starts everything the configuration names, with the KEK and signer already opened (from the HSM).
pub async fn start(
    cfg: &KmsConfig,
    kek: Arc<dyn Kek>,
    signer: Arc<dyn CheckpointSigner>,
) -> Result<Running, StartError> {
    let mut specs = Vec::new();
    for l in &cfg.links {
        let tls = tls::client_config(&l.ca, &l.cert, &l.key).map_err(|source| StartError::Tls {
            what: format!("link {}", l.name),
            source,
        })?;
        let client = Etsi014Client::new(ClientSettings {
            kme_url: l.kme_url.clone(),
            server_name: l.server_name.clone(),
            peer_sae_id: l.peer_sae_id.clone(),
            timeout: l.timeout,
            connect_timeout: l.connect_timeout,
            retries: l.retries,
            backoff: std::time::Duration::from_millis(100),
            tls,
        })
        .map_err(|source| StartError::Link {
            link: l.name.clone(),
            source,
        })?;
        specs.push(LinkSpec {
            name: l.name.clone(),
            role: l.role,
            key_bits: l.key_bits,
            policy: l.policy.clone(),
            source: Arc::new(client),
        });
    }
    let path = cfg.store_path.clone();
    let opts = StoreOptions {
        checkpoint_every: cfg.checkpoint_every,
    };
    let kms = tokio::task::spawn_blocking(move || {
        Kms::open(&path, kek, signer, Arc::new(SystemClock), opts, specs)
    })
    .await
    .map_err(|e| KmsError::Corrupt(format!("start-up task failed: {e}")))??;
    for (batch, link, n) in kms.recovered_write_offs() {
        info!(batch, %link, keys = n, "recovery wrote off a batch whose answer was never recorded");
    }
    let mut tasks = kms.spawn_fetchers();
    let mut etsi_addr = None;
    if let Some(s) = &cfg.server {
        let tls = tls::server_config(&s.cert, &s.key, &s.client_ca).map_err(|source| {
            StartError::Tls {
                what: "server".into(),
                source,
            }
        })?;
        let routes = cfg
            .links
            .iter()
            .map(|l| Route {
                link: l.name.clone(),
                remote_saes: l.remote_saes.clone(),
                local_saes: l.local_saes.clone(),
            })
            .collect();
        let handler =
            EtsiServer::new(kms.clone(), s, routes).map_err(|source| StartError::Tls {
                what: "server.sae".into(),
                source,
            })?;
        let listener = TcpListener::bind(s.listen)
            .await
            .map_err(|source| StartError::Bind {
                what: s.listen.to_string(),
                source,
            })?;
        etsi_addr = listener.local_addr().ok();
        tasks.push(tokio::spawn(crate::http::serve(
            listener,
            tls,
            Arc::new(handler),
        )));
    }
    let admin = crate::admin::bind(&cfg.admin_socket).map_err(|source| StartError::Bind {
        what: cfg.admin_socket.display().to_string(),
        source,
    })?;
    tasks.push(tokio::spawn(crate::admin::serve(admin, kms.clone())));
    let every = cfg.checkpoint_interval;
    let k = kms.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let _ = k.checkpoint().await;
        }
    }));
    info!(links = cfg.links.len(), etsi = ?etsi_addr, admin = %cfg.admin_socket.display(), "KMS running");
    Ok(Running {
        kms,
        etsi_addr,
        tasks,
    })
}
