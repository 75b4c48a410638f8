//! ETSI GS QKD 014 v1.1.1 conformance of the simulated KMEs, end to end: the real `qkd-sim serve`
//! process, real HTTPS with client certificates, every function with GET and POST, and every
//! error the issue lists, each checked to leave the pool undisturbed.

#![allow(clippy::unwrap_used, clippy::panic)] // test helpers outside #[test] fns
mod common;

use common::{Server, json, start};
use qsi_etsi014::{KeyContainer, KeyIds, Status, dec_keys_path, enc_keys_path, status_path};

const LIMITS: &str = "key_size = 256\nmax_key_count = 48\nmax_key_per_request = 16\nmin_key_size = 64\nmax_key_size = 1024\nmax_sae_id_count = 1";
const LINK: &str = "params = \"gys\"\ndistance_km = 5.0\nseed = 11\nspeedup = 200.0";

/// One error case: what, at Bob's KME?, client SAE, method, path, body, status, message.
struct Case<'a>(
    &'a str,
    bool,
    Option<&'a str>,
    &'a str,
    String,
    Option<Vec<u8>>,
    u16,
    &'a str,
);

fn full(s: &Server) -> serde_json::Value {
    s.wait_for(60, "a full pool", |v| v["stored_key_count"] == 48)
}

async fn stored(s: &Server) -> u64 {
    let mut c = s.client(false, Some("sae-a")).await;
    let (code, body) = c.request("GET", &status_path("sae-b"), None).await.unwrap();
    assert_eq!(code, 200);
    serde_json::from_slice::<Status>(&body)
        .unwrap()
        .stored_key_count
}

fn keys(body: &[u8], n: usize, bits: u32) -> Vec<(String, Vec<u8>)> {
    let c = KeyContainer::from_json(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)));
    c.validate(Some(n), Some(bits))
        .unwrap()
        .into_iter()
        .map(|(id, k)| (id.to_string(), k.to_vec()))
        .collect()
}

fn post_ids(ids: &[&str]) -> Option<Vec<u8>> {
    Some(serde_json::to_vec(&KeyIds::new(ids.iter().copied())).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_function_and_every_error_over_mutual_tls() {
    let s = start(LINK, LIMITS);
    full(&s);
    let mut a = s.client(false, Some("sae-a")).await;
    let mut b = s.client(true, Some("sae-b")).await;
    let mut c = s.client(true, Some("sae-c")).await;

    // Status: the exact field names, the limits, and the link's state and QBER.
    let (code, body) = a.request("GET", &status_path("sae-b"), None).await.unwrap();
    assert_eq!(code, 200);
    let v = json(&body);
    for f in [
        "source_KME_ID",
        "target_KME_ID",
        "master_SAE_ID",
        "slave_SAE_ID",
        "key_size",
        "stored_key_count",
        "max_key_count",
        "max_key_per_request",
        "max_key_size",
        "min_key_size",
        "max_SAE_ID_count",
    ] {
        assert!(v.get(f).is_some(), "status lacks {f}: {v}");
    }
    let st: Status = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(
        (st.source_kme_id.as_str(), st.target_kme_id.as_str()),
        ("KME-Alice", "KME-Bob")
    );
    assert_eq!(
        (st.master_sae_id.as_str(), st.slave_sae_id.as_str()),
        ("sae-a", "sae-b")
    );
    assert_eq!(
        (
            st.key_size,
            st.max_key_count,
            st.max_key_per_request,
            st.min_key_size,
            st.max_key_size,
            st.max_sae_id_count
        ),
        (256, 48, 16, 64, 1024, 1)
    );
    assert_eq!(v["status_extension"]["qsi_link"]["state"], "producing");
    assert!(v["status_extension"]["qsi_link"]["qber"].as_f64().is_some());

    // Every error, each leaving the pool full and nothing pending.
    let bad_json = Some(b"{\"number\": 2,".to_vec());
    let cases = vec![
        Case(
            "malformed JSON",
            false,
            Some("sae-a"),
            "POST",
            enc_keys_path("sae-b"),
            bad_json,
            400,
            "malformed request",
        ),
        Case(
            "unknown field",
            false,
            Some("sae-a"),
            "POST",
            enc_keys_path("sae-b"),
            Some(b"{\"count\":1}".to_vec()),
            400,
            "malformed request",
        ),
        Case(
            "size not a multiple of 8",
            false,
            Some("sae-a"),
            "POST",
            enc_keys_path("sae-b"),
            Some(b"{\"size\":100}".to_vec()),
            400,
            "requested parameters do not adhere to KME rules",
        ),
        Case(
            "size below min",
            false,
            Some("sae-a"),
            "GET",
            format!("{}?size=56", enc_keys_path("sae-b")),
            None,
            400,
            "requested parameters do not adhere to KME rules",
        ),
        Case(
            "size above max",
            false,
            Some("sae-a"),
            "POST",
            enc_keys_path("sae-b"),
            Some(b"{\"size\":2048}".to_vec()),
            400,
            "requested parameters do not adhere to KME rules",
        ),
        Case(
            "more keys than max_key_per_request",
            false,
            Some("sae-a"),
            "GET",
            format!("{}?number=17", enc_keys_path("sae-b")),
            None,
            400,
            "requested parameters do not adhere to KME rules",
        ),
        Case(
            "zero keys",
            false,
            Some("sae-a"),
            "POST",
            enc_keys_path("sae-b"),
            Some(b"{\"number\":0}".to_vec()),
            400,
            "requested parameters do not adhere to KME rules",
        ),
        Case(
            "too many additional slaves",
            false,
            Some("sae-a"),
            "POST",
            enc_keys_path("sae-b"),
            Some(b"{\"additional_slave_SAE_IDs\":[\"sae-c\",\"sae-d\"]}".to_vec()),
            400,
            "requested parameters do not adhere to KME rules",
        ),
        Case(
            "unsupported mandatory extension",
            false,
            Some("sae-a"),
            "POST",
            enc_keys_path("sae-b"),
            Some(b"{\"extension_mandatory\":[{\"abc_route\":\"direct\"}]}".to_vec()),
            400,
            "requested parameters do not adhere to KME rules",
        ),
        Case(
            "unknown slave SAE",
            false,
            Some("sae-a"),
            "POST",
            enc_keys_path("sae-zz"),
            Some(b"{}".to_vec()),
            400,
            "unknown SAE ID",
        ),
        Case(
            "unknown slave SAE in status",
            false,
            Some("sae-a"),
            "GET",
            status_path("sae-zz"),
            None,
            400,
            "unknown SAE ID",
        ),
        Case(
            "unknown additional slave",
            false,
            Some("sae-a"),
            "POST",
            enc_keys_path("sae-b"),
            Some(b"{\"additional_slave_SAE_IDs\":[\"sae-zz\"]}".to_vec()),
            400,
            "unknown SAE ID",
        ),
        Case(
            "bad query value",
            false,
            Some("sae-a"),
            "GET",
            format!("{}?number=two", enc_keys_path("sae-b")),
            None,
            400,
            "malformed request",
        ),
        Case(
            "unknown key ID",
            true,
            Some("sae-b"),
            "POST",
            dec_keys_path("sae-a"),
            post_ids(&["550e8400-e29b-41d4-a716-446655440000"]),
            400,
            "key not found",
        ),
        Case(
            "key ID not a UUID",
            true,
            Some("sae-b"),
            "GET",
            format!("{}?key_ID=42", dec_keys_path("sae-a")),
            None,
            400,
            "requested parameters do not adhere to KME rules",
        ),
        Case(
            "dec_keys without IDs",
            true,
            Some("sae-b"),
            "GET",
            dec_keys_path("sae-a"),
            None,
            400,
            "malformed request",
        ),
        Case(
            "unknown master SAE",
            true,
            Some("sae-b"),
            "POST",
            dec_keys_path("sae-zz"),
            post_ids(&["550e8400-e29b-41d4-a716-446655440000"]),
            400,
            "unknown SAE ID",
        ),
        Case(
            "more keys than the pool holds",
            false,
            Some("sae-a"),
            "POST",
            enc_keys_path("sae-b"),
            Some(b"{\"number\":16,\"size\":1024}".to_vec()),
            503,
            "not enough key material available",
        ),
        Case(
            "client without a certificate",
            false,
            None,
            "GET",
            status_path("sae-b"),
            None,
            401,
            "unauthorized",
        ),
        Case(
            "certificate of no SAE here",
            false,
            Some("sae-stranger"),
            "POST",
            enc_keys_path("sae-b"),
            Some(b"{}".to_vec()),
            401,
            "unauthorized",
        ),
        Case(
            "SAE of the other KME",
            false,
            Some("sae-b"),
            "POST",
            enc_keys_path("sae-a"),
            Some(b"{}".to_vec()),
            401,
            "unauthorized",
        ),
    ];
    for Case(what, bob, sae, method, path, body, code, message) in cases {
        let mut cl = s.client(bob, sae).await;
        let (got, resp) = cl.request(method, &path, body).await.unwrap();
        let v = json(&resp);
        assert_eq!(
            (got, v["message"].as_str().unwrap_or_default()),
            (code, message),
            "{what}: {v}"
        );
        assert!(
            v["details"].as_array().is_some_and(|d| !d.is_empty()),
            "{what}: details explain the error: {v}"
        );
    }
    let after = s.status();
    assert_eq!(after["stored_key_count"], 48, "errors took no key: {after}");
    assert_eq!(
        (
            after["pending_alice"].as_u64(),
            after["pending_bob"].as_u64()
        ),
        (Some(0), Some(0))
    );
    assert_eq!(stored(&s).await, 48);

    // Methods outside the API: 405 with Allow.
    let (code, _) = a
        .request("POST", &status_path("sae-b"), Some(b"{}".to_vec()))
        .await
        .unwrap();
    assert_eq!(code, 405);

    // enc_keys POST, then dec_keys POST: the same keys under the same IDs, once.
    let (code, body) = a
        .request(
            "POST",
            &enc_keys_path("sae-b"),
            Some(b"{\"number\":3,\"size\":512}".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(code, 200);
    let issued = keys(&body, 3, 512);
    assert_eq!(
        s.status()["pending_bob"],
        3,
        "3 keys wait at Bob's KME for sae-b"
    );
    let ids: Vec<&str> = issued.iter().map(|k| k.0.as_str()).collect();
    // Only the slave named in the request may fetch them: sae-c gets 401, and the keys stay.
    let (code, resp) = c
        .request("POST", &dec_keys_path("sae-a"), post_ids(&ids))
        .await
        .unwrap();
    assert_eq!(code, 401, "{}", String::from_utf8_lossy(&resp));
    // A request with one unknown ID fails as a whole and takes nothing.
    let mut with_unknown = ids.clone();
    with_unknown.push("550e8400-e29b-41d4-a716-446655440000");
    let (code, _) = b
        .request("POST", &dec_keys_path("sae-a"), post_ids(&with_unknown))
        .await
        .unwrap();
    assert_eq!(code, 400);
    let (code, body) = b
        .request("POST", &dec_keys_path("sae-a"), post_ids(&ids[..2]))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(keys(&body, 2, 512), issued[..2]);
    // GET dec_keys with one key_ID (the path names the master SAE, as Table 7 says).
    let (code, body) = b
        .request(
            "GET",
            &format!("{}?key_ID={}", dec_keys_path("sae-a"), ids[2]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(keys(&body, 1, 512), issued[2..]);
    // Delivered keys are gone.
    let (code, resp) = b
        .request("POST", &dec_keys_path("sae-a"), post_ids(&ids[..1]))
        .await
        .unwrap();
    assert_eq!(
        (code, json(&resp)["message"].as_str().unwrap()),
        (400, "key not found")
    );
    assert_eq!(s.status()["pending_bob"], 0);

    // enc_keys GET with and without parameters (defaults: 1 key of key_size).
    let (code, body) = a
        .request(
            "GET",
            &format!("{}?number=2&size=128", enc_keys_path("sae-b")),
            None,
        )
        .await
        .unwrap();
    assert_eq!(code, 200);
    let two = keys(&body, 2, 128);
    let (code, body) = a
        .request("GET", &enc_keys_path("sae-b"), None)
        .await
        .unwrap();
    assert_eq!(code, 200);
    let one = keys(&body, 1, 256);
    let ids: Vec<&str> = two.iter().chain(&one).map(|k| k.0.as_str()).collect();
    let (code, body) = b
        .request("POST", &dec_keys_path("sae-a"), post_ids(&ids))
        .await
        .unwrap();
    assert_eq!(code, 200);
    let got = KeyContainer::from_json(&body)
        .unwrap()
        .validate(Some(3), None)
        .unwrap();
    for (g, want) in got.iter().zip(two.iter().chain(&one)) {
        assert_eq!((g.0.to_string(), g.1.to_vec()), *want);
    }

    // additional_slave_SAE_IDs: both slaves fetch the same key, each once.
    let (code, body) = a
        .request(
            "POST",
            &enc_keys_path("sae-b"),
            Some(b"{\"number\":1,\"additional_slave_SAE_IDs\":[\"sae-c\"]}".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(code, 200);
    let shared = keys(&body, 1, 256);
    for cl in [&mut b, &mut c] {
        let (code, body) = cl
            .request("POST", &dec_keys_path("sae-a"), post_ids(&[&shared[0].0]))
            .await
            .unwrap();
        assert_eq!(code, 200);
        assert_eq!(keys(&body, 1, 256), shared);
    }

    // The other direction: Bob's SAE as master, Alice's as slave.
    let (code, body) = b
        .request(
            "POST",
            &enc_keys_path("sae-a"),
            Some(b"{\"number\":1}".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(code, 200);
    let back = keys(&body, 1, 256);
    let (code, body) = a
        .request("POST", &dec_keys_path("sae-b"), post_ids(&[&back[0].0]))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(keys(&body, 1, 256), back);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_clients_are_served_and_foreign_certificates_refused() {
    let s = start(LINK, LIMITS);
    let ca = s.path("ca.pem");
    let roots = qsi_qkd_sim::kme::tls::roots(&ca).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(qsi_qkd_sim::kme::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            qsi_qkd_sim::kme::tls::load_certs(&s.path("sae-a.pem")).unwrap(),
            qsi_qkd_sim::kme::tls::load_key(&s.path("sae-a.key")).unwrap(),
        )
        .unwrap();
    let mut a = qsi_qkd_sim::kme::client::SaeClient::connect(s.alice, std::sync::Arc::new(cfg))
        .await
        .unwrap();
    let (code, body) = a.request("GET", &status_path("sae-b"), None).await.unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));

    // A certificate from another CA fails the TLS handshake: the KME never sees a request.
    let other = tempfile::tempdir().unwrap();
    qsi_qkd_sim::kme::certs::generate(other.path(), 0, 0).unwrap();
    let foreign = qsi_qkd_sim::kme::tls::client_config(
        &ca,
        Some((
            &other.path().join("sae-a.pem"),
            &other.path().join("sae-a.key"),
        )),
    )
    .unwrap();
    let r = async {
        let mut c = qsi_qkd_sim::kme::client::SaeClient::connect(s.alice, foreign).await?;
        c.request("GET", &status_path("sae-b"), None).await
    }
    .await;
    assert!(
        r.is_err(),
        "a certificate of a foreign CA must not get an answer: {r:?}"
    );
}
