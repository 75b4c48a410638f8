//! Interop with a client we did not write: the PyPI package `etsi-qkd-014-client` (installed by
//! .ci/run from .ci/requirements.txt) gets keys from Alice's KME and the same keys by ID from
//! Bob's, over mutual TLS, against the real `qkd-sim serve` process.

#![allow(clippy::unwrap_used, clippy::panic)] // test helpers outside #[test] fns
mod common;

use std::process::Command;

use qsi_etsi014::{KeyIds, dec_keys_path};

const SCRIPT: &str = r#"
import json, sys
from etsi_qkd_014_client import QKD014Client
alice_addr, bob_addr = sys.argv[1], sys.argv[2]
a = QKD014Client(alice_addr, "sae-a.pem", "sae-a.key", "ca.pem")
b = QKD014Client(bob_addr, "sae-b.pem", "sae-b.key", "ca.pem")
out = {}
code, st = a.get_status("sae-b")
out["status"] = [code, st.source_kme_id, st.target_kme_id, st.key_size, st.max_key_per_request]
code, kc = a.get_key("sae-b", number=4, size=256)
out["enc_code"] = code
out["alice"] = [[k.key_id, k.key] for k in kc.keys]
code, kb = b.get_key_with_key_IDs("sae-a", [k.key_id for k in kc.keys][:3])
out["dec_code"] = code
out["bob"] = [[k.key_id, k.key] for k in kb.keys]
code, default = a.get_key("sae-b")
out["default"] = [code, len(default.keys)]
code, err = a.get_key("sae-b", number=1, size=100)
out["bad_size"] = [code, err.message]
code, err = b.get_key_with_key_IDs("sae-a", [kc.keys[0].key_id])
out["again"] = [code, err.message]
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pypi_client_gets_the_same_keys_from_both_kmes() {
    let probe = Command::new("python3")
        .args(["-c", "import etsi_qkd_014_client"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "python3 with the PyPI package etsi-qkd-014-client is required: pip install -r .ci/requirements.txt"
        ),
    }
    let s = common::start(
        "params = \"gys\"\ndistance_km = 5.0\nseed = 3\nspeedup = 200.0",
        "key_size = 256\nmax_key_count = 64\nmax_key_per_request = 16",
    );
    s.wait_for(60, "key in the pool", |v| {
        v["stored_key_count"].as_u64().unwrap_or(0) >= 8
    });
    let out = Command::new("python3")
        .current_dir(s.dir.path())
        .args(["-c", SCRIPT])
        .arg(format!("localhost:{}", s.alice.port()))
        .arg(format!("localhost:{}", s.bob.port()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = common::json(&out.stdout);
    assert_eq!(
        v["status"],
        serde_json::json!([200, "KME-Alice", "KME-Bob", 256, 16])
    );
    assert_eq!(v["enc_code"], 200);
    assert_eq!(v["dec_code"], 200);
    let alice = v["alice"].as_array().unwrap();
    assert_eq!(alice.len(), 4);
    assert_eq!(
        v["bob"].as_array().unwrap()[..],
        alice[..3],
        "Bob's KME gives the same keys under the same IDs"
    );
    assert_eq!(v["default"], serde_json::json!([200, 1]));
    assert_eq!(
        v["bad_size"],
        serde_json::json!([400, "requested parameters do not adhere to KME rules"])
    );
    assert_eq!(v["again"], serde_json::json!([400, "key not found"]));

    // The fourth key, which Python did not fetch, is still there for sae-b, exactly once.
    let id = alice[3][0].as_str().unwrap();
    let mut b = s.client(true, Some("sae-b")).await;
    let body = serde_json::to_vec(&KeyIds::new([id])).unwrap();
    let (code, resp) = b
        .request("POST", &dec_keys_path("sae-a"), Some(body))
        .await
        .unwrap();
    assert_eq!(code, 200);
    let got = common::json(&resp);
    assert_eq!(got["keys"][0]["key"], alice[3][1]);
}
