//! [`QkdKeySource`] and [`QkdKeyLookup`] over the KMS that qsid runs in-process: the per-peer reserves
//! of `tunnel::qkd` (keys already claimed from the KMS, announced and acknowledged). Both answer from
//! memory, so a handshake never waits for the network or the disk; the durable record of each key was
//! written when the key entered the reserve, and its use is recorded after the handshake.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::{QkdKey, QkdKeyLookup, QkdKeySource, QkdKxError};
use crate::tunnel::qkd::{PeerQkd, QkdSite, TakeError};

fn kx_error(e: TakeError, master_sae_id: &str) -> QkdKxError {
    match e {
        TakeError::Empty { .. } => QkdKxError::NoKey(e.to_string()),
        TakeError::Unannounced(key_id) => QkdKxError::Unannounced {
            master_sae_id: master_sae_id.to_string(),
            key_id,
        },
        TakeError::AlreadyUsed(key_id) => QkdKxError::AlreadyUsed {
            master_sae_id: master_sae_id.to_string(),
            key_id,
        },
    }
}

/// The dialing side's key source for one peer: the next acknowledged key of its reserve.
#[derive(Debug, Clone)]
pub struct KmsKeySource(pub Arc<PeerQkd>);

impl QkdKeySource for KmsKeySource {
    fn take(&self) -> Result<QkdKey, QkdKxError> {
        let p = &self.0;
        if !p.master {
            return Err(QkdKxError::Store(format!(
                "the tunnel to {} is the QKD slave side: it never dials with a key",
                p.peer
            )));
        }
        let (key_id, key) = p.take_next().map_err(|e| kx_error(e, &p.local_sae_id))?;
        Ok(QkdKey {
            master_sae_id: p.local_sae_id.clone(),
            slave_sae_id: p.cfg.peer_sae_id.clone(),
            key_id,
            key: Zeroizing::new(key.expose().to_vec()),
        })
    }

    fn give_back(&self, key: QkdKey) {
        let QkdKey { key_id, key, .. } = key;
        self.0
            .give_back(key_id, qsi_kms::KeyMaterial::new(key.to_vec()));
    }
}

/// The accepting side's lookup for the whole site: the peer is found by the master SAE ID in the share.
#[derive(Debug, Clone)]
pub struct KmsKeyLookup(pub Arc<QkdSite>);

impl QkdKeyLookup for KmsKeyLookup {
    fn take(&self, master_sae_id: &str, key_id: &str) -> Result<QkdKey, QkdKxError> {
        let p = self
            .0
            .by_master_sae(master_sae_id)
            .ok_or_else(|| QkdKxError::UnknownSae(master_sae_id.to_string()))?;
        let key = p.take_id(key_id).map_err(|e| kx_error(e, master_sae_id))?;
        Ok(QkdKey {
            master_sae_id: master_sae_id.to_string(),
            slave_sae_id: p.local_sae_id.clone(),
            key_id: key_id.to_string(),
            key: Zeroizing::new(key.expose().to_vec()),
        })
    }
}
