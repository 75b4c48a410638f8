use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::kek::{SoftKek, SoftSigner};

struct TestClock(AtomicU64);
impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    kek: Arc<SoftKek>,
    signer: Arc<SoftSigner>,
}

impl Fixture {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            kek: Arc::new(SoftKek::new(&random_key(32).unwrap(), "kek-1").unwrap()),
            signer: Arc::new(SoftSigner::new(&random_key(32).unwrap(), "audit-1")),
        }
    }
    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("kms.redb")
    }
    fn open(&self) -> (Store, Loaded) {
        Store::open(
            &self.path(),
            self.kek.clone(),
            self.signer.clone(),
            Arc::new(TestClock(AtomicU64::new(1_000))),
            StoreOptions {
                checkpoint_every: 8,
            },
        )
        .unwrap()
    }
}

fn key(b: u8) -> KeyMaterial {
    KeyMaterial::new(vec![b; 32])
}

fn begin(s: &Store, role: Role, n: u32, ids: Vec<String>) -> u64 {
    match s
        .submit_blocking(Op::BeginFetch {
            link: "ab".into(),
            role,
            number: n,
            size: 256,
            ids,
        })
        .unwrap()
    {
        Out::Batch(b) => b,
        _ => panic!("not a batch"),
    }
}

fn complete(s: &Store, batch: u64, keys: Vec<DeliveredKey>) -> Completed {
    match s
        .submit_blocking(Op::CompleteFetch {
            batch,
            keys,
            sealed: None,
        })
        .unwrap()
    {
        Out::Completed(c) => c,
        _ => panic!("not completed"),
    }
}

fn events(s: &Store) -> Vec<AuditEvent> {
    s.audit_records(1, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(&r.event).unwrap())
        .collect()
}

#[test]
fn a_fetch_recorded_but_never_answered_is_written_off_at_restart() {
    let f = Fixture::new();
    {
        let (s, loaded) = f.open();
        assert!(loaded.keys.is_empty());
        begin(&s, Role::Master, 5, vec![]);
        // the process dies here: the answer is never recorded
    }
    let (s, loaded) = f.open();
    assert_eq!(loaded.written_off, vec![(1, "ab".to_string(), 5)]);
    assert!(events(&s).iter().any(|e| matches!(
        e,
        AuditEvent::WrittenOff {
            batch: 1,
            number: 5,
            ..
        }
    )));
    let c = s.counts().unwrap();
    assert_eq!((c.written_off_batches, c.written_off_keys), (1, 5));
    // a late answer for a written-off batch is refused, never stored
    assert!(matches!(
        s.submit_blocking(Op::CompleteFetch {
            batch: 1,
            keys: vec![("late".into(), key(1))],
            sealed: None,
        }),
        Err(KmsError::UnknownBatch(1))
    ));
    drop(s);
    let (_, loaded) = f.open();
    assert!(loaded.written_off.is_empty(), "written off once, not again");
    assert!(loaded.keys.is_empty());
}

#[test]
fn keys_survive_restart_sealed_and_delivered_keys_never_come_back() {
    let f = Fixture::new();
    {
        let (s, _) = f.open();
        let b = begin(&s, Role::Master, 3, vec![]);
        let c = complete(
            &s,
            b,
            vec![
                ("k1".into(), key(1)),
                ("k2".into(), key(2)),
                ("k3".into(), key(3)),
            ],
        );
        assert_eq!(c.accepted.len(), 3);
        s.submit_blocking(Op::Deliver {
            key_ids: vec!["k2".into()],
            consumer: "t".into(),
        })
        .unwrap();
        assert!(matches!(
            s.submit_blocking(Op::Deliver {
                key_ids: vec!["k2".into()],
                consumer: "u".into()
            }),
            Err(KmsError::NotAvailable(_))
        ));
    }
    let (s, loaded) = f.open();
    let ids: Vec<_> = loaded.keys.iter().map(|k| k.id.as_str()).collect();
    assert_eq!(ids, vec!["k1", "k3"]);
    assert!(loaded.keys[0].key.ct_eq(&key(1)));
    assert!(loaded.keys[1].key.ct_eq(&key(3)));
    assert!(s.is_spent("k2").unwrap());
    // no key bytes in the file in clear
    drop(s);
    let raw = std::fs::read(f.path()).unwrap();
    assert!(
        !raw.windows(32).any(|w| w == [1u8; 32] || w == [3u8; 32]),
        "plaintext key on disk"
    );
}

#[test]
fn a_batch_whose_last_key_is_delivered_loses_its_data_key() {
    let f = Fixture::new();
    let (s, _) = f.open();
    let b = begin(&s, Role::Master, 2, vec![]);
    complete(&s, b, vec![("x1".into(), key(1)), ("x2".into(), key(2))]);
    let wrapped = |s: &Store| -> Option<String> {
        let txn = s.db.begin_read().unwrap();
        let t = txn.open_table(BATCHES).unwrap();
        let rec: BatchRecord = serde_json::from_slice(t.get(b).unwrap().unwrap().value()).unwrap();
        rec.wrapped_dk
    };
    assert!(wrapped(&s).is_some());
    s.submit_blocking(Op::Deliver {
        key_ids: vec!["x1".into()],
        consumer: "t".into(),
    })
    .unwrap();
    assert!(wrapped(&s).is_some(), "one key still live");
    s.submit_blocking(Op::Deliver {
        key_ids: vec!["x2".into()],
        consumer: "t".into(),
    })
    .unwrap();
    assert!(wrapped(&s).is_none(), "data key destroyed with the batch");
    assert!(
        events(&s)
            .iter()
            .any(|e| matches!(e, AuditEvent::Erased { batch, .. } if *batch == b))
    );
}

#[test]
fn misbehaving_answers_are_refused_key_by_key_and_audited() {
    let f = Fixture::new();
    let (s, _) = f.open();
    let b = begin(&s, Role::Master, 4, vec![]);
    complete(&s, b, vec![("old".into(), key(9))]);
    s.submit_blocking(Op::Deliver {
        key_ids: vec!["old".into()],
        consumer: "t".into(),
    })
    .unwrap();
    let b = begin(&s, Role::Master, 4, vec![]);
    let c = complete(
        &s,
        b,
        vec![
            ("ok".into(), key(1)),
            ("short".into(), KeyMaterial::new(vec![1; 16])),
            ("ok".into(), key(2)),
            ("old".into(), key(9)),
            ("".into(), key(3)),
        ],
    );
    assert_eq!(
        c.accepted
            .iter()
            .map(|(i, _)| i.as_str())
            .collect::<Vec<_>>(),
        vec!["ok"]
    );
    let reasons: Vec<_> = c.refused.iter().map(|(i, r)| format!("{i}:{r}")).collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(reasons[0].starts_with("short:key is 128 bits"));
    assert!(reasons[1].contains("duplicate key_ID within"));
    assert!(reasons[2].contains("already received"));
    assert_eq!(
        events(&s)
            .iter()
            .filter(|e| matches!(e, AuditEvent::Refused { .. }))
            .count(),
        4
    );

    // slave: an ID nobody asked for, and an asked one missing
    let b = begin(&s, Role::Slave, 2, vec!["s1".into(), "s2".into()]);
    let c = complete(&s, b, vec![("s1".into(), key(4)), ("zz".into(), key(5))]);
    assert_eq!(c.accepted.len(), 1);
    assert!(
        c.refused
            .iter()
            .any(|(i, r)| i == "zz" && r.contains("not asked"))
    );
    assert!(
        c.refused
            .iter()
            .any(|(i, r)| i == "s2" && r.contains("missing"))
    );
}

#[test]
fn audit_log_verifies_and_detects_edit_delete_truncate() {
    let f = Fixture::new();
    {
        let (s, _) = f.open();
        for i in 0..5u8 {
            let b = begin(&s, Role::Master, 1, vec![]);
            complete(&s, b, vec![(format!("a{i}"), key(i))]);
            s.submit_blocking(Op::Deliver {
                key_ids: vec![format!("a{i}")],
                consumer: "t".into(),
            })
            .unwrap();
        }
        let rep = s.verify_audit().unwrap();
        assert!(rep.records >= 20 && rep.checkpoints >= 2, "{rep:?}");
    }
    // closed cleanly: fully signed
    let db = open_db(&f.path()).unwrap();
    let rep = verify_db(&db, f.signer.as_ref()).unwrap();
    assert_eq!(rep.unsigned_tail, 0, "{rep:?}");
    let n = rep.records;

    let copy = |name: &str| {
        let p = f.dir.path().join(name);
        std::fs::copy(f.path(), &p).unwrap();
        Database::open(&p).unwrap()
    };
    drop(db);
    let edited = copy("edited.redb");
    tamper::edit_audit(&edited, 7, "a1", "a7").unwrap();
    let e = verify_db(&edited, f.signer.as_ref()).unwrap_err();
    assert!(e.to_string().contains("record 7 was altered"), "{e}");

    let deleted = copy("deleted.redb");
    tamper::delete_audit(&deleted, 4).unwrap();
    assert!(
        verify_db(&deleted, f.signer.as_ref())
            .unwrap_err()
            .to_string()
            .contains("record 4 is missing")
    );

    let truncated = copy("truncated.redb");
    tamper::truncate_audit(&truncated, n - 2).unwrap();
    let e = verify_db(&truncated, f.signer.as_ref()).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");

    let other = SoftSigner::new(&random_key(32).unwrap(), "audit-1");
    assert!(
        verify_db(&copy("ok.redb"), &other)
            .unwrap_err()
            .to_string()
            .contains("invalid signature")
    );
}

#[test]
fn managed_keys_follow_the_lifecycle_and_destroy_erases_material() {
    let f = Fixture::new();
    let (s, _) = f.open();
    let m = match s
        .submit_blocking(Op::CreateManaged {
            name: "db-tde".into(),
            activation_ms: None,
            cryptoperiod_ms: 1_000_000,
        })
        .unwrap()
    {
        Out::Managed(m) => m,
        _ => panic!(),
    };
    assert_eq!(m.lifecycle.state, crate::lifecycle::KeyState::PreActive);
    assert!(
        s.submit_blocking(Op::ManagedUse {
            id: m.id.clone(),
            usage: Usage::Protect
        })
        .is_err()
    );
    s.submit_blocking(Op::Lifecycle {
        id: m.id.clone(),
        op: Operation::Activate,
    })
    .unwrap();
    let k1 = match s
        .submit_blocking(Op::ManagedUse {
            id: m.id.clone(),
            usage: Usage::Protect,
        })
        .unwrap()
    {
        Out::Key(k) => k,
        _ => panic!(),
    };
    let new = match s.submit_blocking(Op::Rotate { id: m.id.clone() }).unwrap() {
        Out::Managed(n) => n,
        _ => panic!(),
    };
    assert_eq!(new.replaces.as_deref(), Some(m.id.as_str()));
    assert_eq!(new.lifecycle.state, crate::lifecycle::KeyState::Active);
    // the old one may still decrypt, not encrypt
    assert!(
        s.submit_blocking(Op::ManagedUse {
            id: m.id.clone(),
            usage: Usage::Protect
        })
        .is_err()
    );
    let again = match s
        .submit_blocking(Op::ManagedUse {
            id: m.id.clone(),
            usage: Usage::Process,
        })
        .unwrap()
    {
        Out::Key(k) => k,
        _ => panic!(),
    };
    assert!(again.ct_eq(&k1));
    s.submit_blocking(Op::Lifecycle {
        id: m.id.clone(),
        op: Operation::Destroy,
    })
    .unwrap();
    assert!(
        s.submit_blocking(Op::ManagedUse {
            id: m.id.clone(),
            usage: Usage::Process
        })
        .is_err()
    );
    let list = s.managed_keys().unwrap();
    let old = list.iter().find(|x| x.id == m.id).unwrap();
    assert_eq!(old.lifecycle.state, crate::lifecycle::KeyState::Destroyed);
    assert_eq!(old.replaced_by.as_deref(), Some(new.id.as_str()));
    let txn = s.db.begin_read().unwrap();
    let rec: ManagedRecord = serde_json::from_slice(
        txn.open_table(MANAGED)
            .unwrap()
            .get(m.id.as_str())
            .unwrap()
            .unwrap()
            .value(),
    )
    .unwrap();
    assert!(rec.wrapped.is_none());
}

#[test]
fn concurrent_deliveries_are_group_committed_and_each_key_goes_once() {
    let f = Fixture::new();
    let (s, _) = f.open();
    let b = begin(&s, Role::Master, 200, vec![]);
    complete(
        &s,
        b,
        (0..200).map(|i| (format!("g{i}"), key(i as u8))).collect(),
    );
    let s = Arc::new(s);
    let ok = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let s = s.clone();
            let ok = ok.clone();
            std::thread::spawn(move || {
                // every thread tries every key: exactly one delivery each must succeed
                for i in 0..200 {
                    if s.submit_blocking(Op::Deliver {
                        key_ids: vec![format!("g{i}")],
                        consumer: format!("t{t}"),
                    })
                    .is_ok()
                    {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(ok.load(Ordering::Relaxed), 200);
    assert_eq!(s.counts().unwrap().spent_keys, 200);
    s.verify_audit().unwrap();
}

#[test]
fn a_request_of_several_keys_is_one_audit_record() {
    let f = Fixture::new();
    let (s, _) = f.open();
    let b = begin(&s, Role::Master, 3, vec![]);
    complete(
        &s,
        b,
        vec![
            ("m1".into(), key(1)),
            ("m2".into(), key(2)),
            ("m3".into(), key(3)),
        ],
    );
    let before = events(&s).len();
    s.submit_blocking(Op::Deliver {
        key_ids: vec!["m3".into(), "m1".into()],
        consumer: "app".into(),
    })
    .unwrap();
    let evs = events(&s);
    assert_eq!(
        &evs[before..],
        &[AuditEvent::DeliveredKeys {
            link: "ab".into(),
            key_ids: vec!["m3".into(), "m1".into()],
            consumer: "app".into(),
        }]
    );
    // the same ID twice in one request delivers nothing
    assert!(matches!(
        s.submit_blocking(Op::Deliver {
            key_ids: vec!["m2".into(), "m2".into()],
            consumer: "app".into(),
        }),
        Err(KmsError::NotAvailable(_))
    ));
    assert_eq!(s.spent_keys().unwrap().len(), 2);
    assert_eq!(s.live_keys().unwrap().len(), 1);
    s.verify_audit().unwrap();
}

#[test]
fn a_file_of_the_first_version_is_migrated_to_slot_keyed_rows() {
    let f = Fixture::new();
    // Write what the first version wrote: one batch of three keys, rows keyed by key_ID in JSON,
    // one of them already delivered.
    {
        let db = Database::create(f.path()).unwrap();
        let keys: Vec<DeliveredKey> = vec![
            ("o1".into(), key(1)),
            ("o2".into(), key(2)),
            ("o3".into(), key(3)),
        ];
        let sealed = seal_batch(f.kek.as_ref(), 1, &keys).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut batches = txn.open_table(BATCHES).unwrap();
            let b = BatchRecord {
                id: 1,
                link: "ab".into(),
                role: Role::Master,
                state: BatchState::Received,
                number: 3,
                size: 256,
                ids: vec![],
                kek: "kek-1".into(),
                wrapped_dk: Some(hex::encode(&sealed.wrapped_dk)),
                live: 2,
                created_ms: 5,
            };
            batches.insert(1, enc(&b).unwrap().as_slice()).unwrap();
            let mut live = txn.open_table(OLD_LIVE).unwrap();
            for i in [0usize, 2] {
                let r = LiveRecord {
                    link: "ab".into(),
                    batch: 1,
                    index: i as u64,
                    ct: hex::encode(&sealed.cts[i]),
                    announced: i == 2,
                };
                live.insert(keys[i].0.as_str(), enc(&r).unwrap().as_slice())
                    .unwrap();
            }
            let mut spent = txn.open_table(OLD_SPENT).unwrap();
            let r = SpentRecord {
                link: "ab".into(),
                batch: 1,
                consumer: "old-tunnel".into(),
                at_ms: 7,
            };
            spent.insert("o2", enc(&r).unwrap().as_slice()).unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("next_batch", 2)
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let (s, loaded) = f.open();
    let got: Vec<_> = loaded
        .keys
        .iter()
        .map(|k| (k.id.as_str(), k.announced))
        .collect();
    assert_eq!(got, vec![("o1", false), ("o3", true)]);
    assert!(loaded.keys[0].key.ct_eq(&key(1)));
    assert!(loaded.keys[1].key.ct_eq(&key(3)));
    assert!(s.is_spent("o2").unwrap());
    assert!(!s.is_spent("o1").unwrap());
    assert_eq!(
        s.spent_keys().unwrap(),
        vec![("o2".to_string(), "old-tunnel".to_string())]
    );
    // the old tables are gone, and a KME repeating a migrated ID is still refused
    {
        use redb::TableHandle;
        let txn = s.db.begin_read().unwrap();
        let names: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|h| h.name().to_string())
            .collect();
        assert!(!names.iter().any(|n| n == "live_keys" || n == "spent_keys"));
    }
    let b = begin(&s, Role::Master, 2, vec![]);
    let c = complete(&s, b, vec![("o2".into(), key(9)), ("o3".into(), key(9))]);
    assert!(c.accepted.is_empty());
    assert_eq!(c.refused.len(), 2);
    // migrated keys are delivered like any other, and the batch is erased with its last key
    s.submit_blocking(Op::Deliver {
        key_ids: vec!["o1".into(), "o3".into()],
        consumer: "t".into(),
    })
    .unwrap();
    assert!(
        events(&s)
            .iter()
            .any(|e| matches!(e, AuditEvent::Erased { batch: 1, .. }))
    );
    drop(s);
    let (s, loaded) = f.open();
    assert!(loaded.keys.is_empty());
    assert_eq!(s.spent_keys().unwrap().len(), 3);
    s.verify_audit().unwrap();
}
