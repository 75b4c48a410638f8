//! At most once, and every key accounted for, under SIGKILL: 200 rounds of killing the KMS worker
//! (`qsi-kms-crashtest`, the real store, pools and ETSI 014 client over HTTPS) at a random moment while
//! consumers take keys, then restarting it. The KME (the test KME of `qsi_kms::testkit`, which outlives
//! the worker) logs every key it hands over.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qsi_kms::KeyMaterial;
use qsi_kms::kek::{SoftKek, SoftSigner, random_key};
use qsi_kms::service::Kms;
use qsi_kms::store::{StoreOptions, SystemClock};
use qsi_kms::testkit::{TestKme, TestPki};

const ROUNDS: usize = 200;

#[test]
fn sigkill_at_random_moments_never_delivers_a_key_twice_and_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(dir.path()).unwrap();
    let server = pki.issue("kme", &["localhost", "127.0.0.1"]).unwrap();
    pki.issue("sae-a", &["sae-a"]).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let kme = rt.block_on(async {
        let tls = qsi_kms::tls::server_config(&server.cert, &server.key, &pki.ca()).unwrap();
        TestKme::start(tls, 256).await.unwrap()
    });
    let keys = random_key(64).unwrap();
    let keyfile = dir.path().join("keys.bin");
    std::fs::write(&keyfile, keys.expose()).unwrap();
    let db = dir.path().join("kms.redb");

    let mut seed: u64 = std::env::var("QSI_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test seed {seed} (QSI_CRASH_SEED to replay)");
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };

    let mut delivered: HashMap<String, String> = HashMap::new();
    let mut killed_before_ready = 0;
    let mut rounds_with_deliveries = 0;
    let started = Instant::now();
    for round in 0..ROUNDS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_qsi-kms-crashtest"))
            .args([
                "--db",
                db.to_str().unwrap(),
                "--kme",
                &kme.url(),
                "--dir",
                dir.path().to_str().unwrap(),
            ])
            .args(["--keys", keyfile.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let t0 = Instant::now();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if std::env::var("QSI_CRASH_TRACE").is_ok() {
                    eprintln!("{:?} {l}", t0.elapsed());
                }
                if l == "READY" {
                    let _ = ready_tx.send(());
                }
                lines.push(l);
            }
            lines
        });
        // One kill in five lands during start-up and recovery; the others at a random moment of the
        // consumers' run (the first fetch after a restart takes tens of milliseconds).
        if rand() % 5 == 0 {
            std::thread::sleep(Duration::from_micros(rand() % 40_000));
        } else {
            let _ = ready_rx.recv_timeout(Duration::from_secs(5));
            std::thread::sleep(Duration::from_micros(rand() % 150_000));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        if !lines.iter().any(|l| l == "READY") {
            killed_before_ready += 1;
        }
        if lines.iter().any(|l| l.starts_with("DELIVERED ")) {
            rounds_with_deliveries += 1;
        }
        for l in lines.iter().filter_map(|l| l.strip_prefix("DELIVERED ")) {
            let (id, hash) = l.split_once(' ').unwrap();
            if let Some(prev) = delivered.insert(id.to_string(), hash.to_string()) {
                panic!("round {round}: key {id} delivered twice (first hash {prev})");
            }
            // what the consumer got is the key the KME issued under that ID
            let key = kme
                .key_of(id)
                .unwrap_or_else(|| panic!("{id} was never issued by the KME"));
            let h = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &key);
            assert_eq!(
                hex::encode(h.as_ref()),
                hash,
                "round {round}: wrong bytes for {id}"
            );
        }
    }
    eprintln!(
        "{ROUNDS} rounds in {:?}: {} keys delivered in {rounds_with_deliveries} rounds, {killed_before_ready} kills before READY",
        started.elapsed(),
        delivered.len()
    );
    assert!(
        rounds_with_deliveries >= ROUNDS / 4,
        "the kills must land while consumers take keys, not only at start-up"
    );
    assert!(
        killed_before_ready > 0,
        "some kills must land during start-up and recovery"
    );

    // Restart once more and account for every key the KME handed over.
    let kms = Kms::open(
        &db,
        Arc::new(
            SoftKek::new(&KeyMaterial::new(keys.expose()[..32].to_vec()), "crash-kek").unwrap(),
        ),
        Arc::new(SoftSigner::new(
            &KeyMaterial::new(keys.expose()[32..].to_vec()),
            "crash-audit",
        )),
        Arc::new(SystemClock),
        StoreOptions::default(),
        vec![],
    )
    .unwrap();
    let store = kms.store();
    let live: HashSet<String> = store
        .live_keys()
        .unwrap()
        .into_iter()
        .map(|k| k.key_id)
        .collect();
    let spent: HashSet<String> = store
        .spent_keys()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let handed: HashSet<String> = kme.handed_over().into_iter().collect();
    assert!(
        live.is_disjoint(&spent),
        "a key is both available and delivered"
    );
    for id in delivered.keys() {
        assert!(
            spent.contains(id),
            "{id} reached a consumer but is not recorded as delivered"
        );
    }
    assert!(
        live.is_subset(&handed) && spent.is_subset(&handed),
        "keys the KME never handed over"
    );
    // every key handed over and neither available nor delivered belongs to a written-off batch
    let unaccounted = handed
        .difference(&live)
        .filter(|id| !spent.contains(*id))
        .count() as u64;
    let counts = store.counts().unwrap();
    eprintln!(
        "KME handed over {}, available {}, delivered {} (printed {}), written off {} keys in {} batches",
        handed.len(),
        live.len(),
        spent.len(),
        delivered.len(),
        counts.written_off_keys,
        counts.written_off_batches
    );
    assert!(
        unaccounted <= counts.written_off_keys,
        "{unaccounted} keys left the KME but are neither stored, delivered nor written off ({counts:?})"
    );
    let report = store.verify_audit().unwrap();
    assert!(report.records > 0);
}
