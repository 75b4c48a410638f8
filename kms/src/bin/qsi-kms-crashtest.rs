//! Worker of the KMS crash test (`kms/tests/crash.rs`), not a product binary: opens the store (running
//! recovery), keeps a master pool filled from a KME over HTTPS, and lets consumers take keys as fast as
//! they can, printing `DELIVERED <key_ID> <SHA-256 of the key>` after each take returns. The test kills
//! it with SIGKILL at random moments and checks that no key is ever printed twice and that every key the
//! KME handed over is accounted for.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use qsi_kms::KeyMaterial;
use qsi_kms::client::{ClientSettings, Etsi014Client};
use qsi_kms::kek::{SoftKek, SoftSigner};
use qsi_kms::pool::PoolPolicy;
use qsi_kms::service::{Kms, LinkSpec};
use qsi_kms::store::{Role, StoreOptions, SystemClock};

fn arg(name: &str) -> Result<String, String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .ok_or_else(|| format!("missing {name}"))
}

fn main() -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(run())
}

async fn run() -> Result<(), String> {
    let keys = std::fs::read(arg("--keys")?).map_err(|e| e.to_string())?;
    if keys.len() != 64 {
        return Err("--keys must hold 64 bytes".into());
    }
    let kek = SoftKek::new(&KeyMaterial::new(keys[..32].to_vec()), "crash-kek")
        .map_err(|e| e.to_string())?;
    let signer = SoftSigner::new(&KeyMaterial::new(keys[32..].to_vec()), "crash-audit");
    let dir = PathBuf::from(arg("--dir")?);
    let tls = qsi_kms::tls::client_config(
        &dir.join("ca.pem"),
        &dir.join("sae-a.pem"),
        &dir.join("sae-a.key"),
    )
    .map_err(|e| e.to_string())?;
    let client = Etsi014Client::new(ClientSettings {
        kme_url: arg("--kme")?,
        server_name: Some("localhost".into()),
        peer_sae_id: "sae-b".into(),
        timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        retries: 1,
        backoff: Duration::from_millis(5),
        tls,
    })
    .map_err(|e| e.to_string())?;
    let db = PathBuf::from(arg("--db")?);
    let kms = Kms::open(
        &db,
        Arc::new(kek),
        Arc::new(signer),
        Arc::new(SystemClock),
        StoreOptions {
            checkpoint_every: 64,
        },
        vec![LinkSpec {
            name: "ab".into(),
            role: Role::Master,
            key_bits: 256,
            policy: PoolPolicy {
                capacity: 48,
                low_water: 8,
                batch: 8,
                stall_after_ms: 10_000,
            },
            source: Arc::new(client),
        }],
    )
    .map_err(|e| e.to_string())?;
    println!("READY");
    let _fetchers = kms.spawn_fetchers();
    let mut consumers = Vec::new();
    for c in 0..3 {
        let kms = kms.clone();
        consumers.push(tokio::spawn(async move {
            loop {
                // the tunnel's path: offer an ID, then take the announced key for a handshake
                if kms.offer_for_announcement("ab", 1).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                let k = kms.clone();
                let taken = tokio::task::spawn_blocking(move || {
                    k.take_key_for_handshake("ab", &format!("consumer-{c}"))
                })
                .await;
                match taken {
                    Ok(Ok((id, key))) => print_delivery(&id, &key),
                    _ => tokio::time::sleep(Duration::from_millis(1)).await,
                }
                // and the local-SAE path: several keys at once
                if let Ok(keys) = kms.take_keys("ab", "local-sae", 2).await {
                    for (id, key) in keys {
                        print_delivery(&id, &key);
                    }
                }
            }
        }));
    }
    for c in consumers {
        let _ = c.await;
    }
    Ok(())
}

fn print_delivery(id: &str, key: &KeyMaterial) {
    let h = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.expose());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "DELIVERED {id} {}", hex::encode(h.as_ref()));
    let _ = out.flush();
}
