//! One KME's answer to one ETSI GS QKD 014 request: a plain function of the caller (from its
//! certificate), the method, path, query and body, over the shared [`LinkPool`]. No I/O; the
//! pool's lock is held only while keys are taken, never while bytes move.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use qsi_etsi014::{
    EncKeysQuery, Endpoint, Etsi014Error, KeyId, KeyIds, KeyRequest, Limits, Status,
    parse_dec_keys_query, validate_key_ids, validate_key_request,
};
use rand::RngCore;
use zeroize::Zeroizing;

use super::pool::{LinkPool, Side};

/// Who is calling, as the TLS layer established it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'a> {
    /// No client certificate was presented.
    Anonymous,
    /// A certificate from the trusted CA that no SAE of this KME is registered with.
    Unregistered,
    /// The SAE the certificate is registered to.
    Sae(&'a str),
}

/// An HTTP answer: status, JSON body (zeroized on drop: it may hold keys), `Allow` for 405.
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// JSON body.
    pub body: Zeroizing<Vec<u8>>,
    /// Value of the `Allow` header for a 405.
    pub allow: Option<&'static str>,
}

impl Answer {
    fn error(e: &Etsi014Error) -> Self {
        Answer {
            status: e.status(),
            body: Zeroizing::new(e.body_json()),
            allow: None,
        }
    }
}

/// One KME of the simulated pair.
pub struct Kme {
    /// Which side of the link this KME sits on.
    pub side: Side,
    /// This KME's ID.
    pub kme_id: String,
    /// The other KME's ID.
    pub peer_kme_id: String,
    /// SAEs attached to this KME.
    pub local_saes: HashSet<String>,
    /// SAEs attached to the other KME (the possible slaves of our masters, and masters of our slaves).
    pub remote_saes: HashSet<String>,
    /// The link's pool, shared with the other KME.
    pub pool: Arc<Mutex<LinkPool>>,
    /// Copy of the pool's limits (read without the lock).
    pub limits: Limits,
    /// A deliberate fault (test fault injector; never set in normal operation).
    pub fault: Option<Fault>,
}

/// Faults `qkd-sim serve --fault` injects into Bob's KME, to test what its clients do with a KME that
/// misbehaves in ways a healthy simulator never would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// `dec_keys` answers the right key IDs with wrong key bytes (the first byte of each key flipped):
    /// the two SAEs then hold different keys under the same ID.
    WrongKey,
}

impl Kme {
    /// Answers one request. `rng` makes the key IDs.
    pub fn handle(
        &self,
        caller: Caller<'_>,
        method: &str,
        path: &str,
        query: Option<&str>,
        body: &[u8],
        rng: &mut dyn RngCore,
    ) -> Answer {
        match self.route(caller, method, path, query, body, rng) {
            Ok(a) => a,
            Err(e) => {
                let mut a = Answer::error(&e);
                if matches!(e, Etsi014Error::MethodNotAllowed) {
                    a.allow = Some(if path.ends_with("/status") {
                        "GET"
                    } else {
                        "GET, POST"
                    });
                }
                tracing::debug!(kme = %self.kme_id, status = a.status, error = %e, "request refused");
                a
            }
        }
    }

    fn route(
        &self,
        caller: Caller<'_>,
        method: &str,
        path: &str,
        query: Option<&str>,
        body: &[u8],
        rng: &mut dyn RngCore,
    ) -> Result<Answer, Etsi014Error> {
        let endpoint = Endpoint::parse(path)?;
        let caller = match caller {
            Caller::Anonymous => return Err(Etsi014Error::NoClientCertificate),
            Caller::Unregistered => return Err(Etsi014Error::UnknownClientCertificate),
            Caller::Sae(s) if self.local_saes.contains(s) => s,
            Caller::Sae(_) => return Err(Etsi014Error::UnknownClientCertificate),
        };
        match (endpoint, method) {
            (Endpoint::Status { slave_sae_id }, "GET") => {
                if query.is_some_and(|q| !q.is_empty()) {
                    return Err(Etsi014Error::UnknownQueryParameter {
                        name: query.unwrap_or_default().to_owned(),
                    });
                }
                self.status(caller, &slave_sae_id)
            }
            (Endpoint::EncKeys { slave_sae_id }, "GET") => {
                let req = EncKeysQuery::parse(query)?.to_key_request();
                self.enc_keys(caller, &slave_sae_id, &req, rng)
            }
            (Endpoint::EncKeys { slave_sae_id }, "POST") => {
                let req = KeyRequest::from_json(body)?;
                self.enc_keys(caller, &slave_sae_id, &req, rng)
            }
            (Endpoint::DecKeys { master_sae_id }, "GET") => {
                let ids = parse_dec_keys_query(query)?;
                self.dec_keys(caller, &master_sae_id, &ids)
            }
            (Endpoint::DecKeys { master_sae_id }, "POST") => {
                let ids = KeyIds::from_json(body)?;
                self.dec_keys(caller, &master_sae_id, &ids)
            }
            _ => Err(Etsi014Error::MethodNotAllowed),
        }
    }

    fn known_remote(&self, sae: &str) -> Result<(), Etsi014Error> {
        if self.remote_saes.contains(sae) {
            Ok(())
        } else {
            Err(Etsi014Error::UnknownSae {
                sae_id: sae.to_owned(),
            })
        }
    }

    /// The Status for master `caller` and slave `slave`.
    pub fn status_of(&self, caller: &str, slave: &str) -> Status {
        let (stored, report) = match self.pool.lock() {
            Ok(p) => (p.stored_key_count(), serde_json::to_value(p.report()).ok()),
            Err(_) => (0, None),
        };
        let l = &self.limits;
        Status {
            source_kme_id: self.kme_id.clone(),
            target_kme_id: self.peer_kme_id.clone(),
            master_sae_id: caller.to_owned(),
            slave_sae_id: slave.to_owned(),
            key_size: l.key_size,
            stored_key_count: stored,
            max_key_count: l.max_key_count,
            max_key_per_request: l.max_key_per_request,
            max_key_size: l.max_key_size,
            min_key_size: l.min_key_size,
            max_sae_id_count: l.max_sae_id_count,
            status_extension: report.map(|r| serde_json::json!({ "qsi_link": r })),
        }
    }

    fn status(&self, caller: &str, slave: &str) -> Result<Answer, Etsi014Error> {
        self.known_remote(slave)?;
        let body = serde_json::to_vec(&self.status_of(caller, slave)).map_err(|e| {
            Etsi014Error::Internal {
                detail: e.to_string(),
            }
        })?;
        Ok(Answer {
            status: 200,
            body: Zeroizing::new(body),
            allow: None,
        })
    }

    fn enc_keys(
        &self,
        caller: &str,
        slave: &str,
        req: &KeyRequest,
        rng: &mut dyn RngCore,
    ) -> Result<Answer, Etsi014Error> {
        self.known_remote(slave)?;
        let valid = validate_key_request(req, &self.limits, slave)?;
        for extra in &valid.additional_slave_sae_ids {
            self.known_remote(extra)?;
        }
        let keys = self
            .pool
            .lock()
            .map_err(|_| poisoned())?
            .issue(self.side, caller, slave, &valid, rng)?;
        tracing::debug!(kme = %self.kme_id, sae = caller, slave, number = keys.ids.len(), "keys issued");
        Ok(container(keys.iter()))
    }

    fn dec_keys(&self, caller: &str, master: &str, ids: &KeyIds) -> Result<Answer, Etsi014Error> {
        self.known_remote(master)?;
        let ids: Vec<KeyId> = validate_key_ids(ids, &self.limits)?;
        let keys = self
            .pool
            .lock()
            .map_err(|_| poisoned())?
            .redeem(self.side, caller, master, &ids)?;
        tracing::debug!(kme = %self.kme_id, sae = caller, master, number = keys.len(), "keys delivered");
        if self.fault == Some(Fault::WrongKey) {
            tracing::warn!(kme = %self.kme_id, number = keys.len(), "FAULT INJECTOR: answering dec_keys with wrong key bytes");
            let wrong: Vec<(KeyId, Zeroizing<Vec<u8>>)> = keys
                .iter()
                .map(|(id, k)| {
                    let mut w = Zeroizing::new(k.to_vec());
                    if let Some(b) = w.first_mut() {
                        *b ^= 0xff;
                    }
                    (*id, w)
                })
                .collect();
            return Ok(container(wrong.iter().map(|(id, k)| (*id, &k[..]))));
        }
        Ok(container(keys.iter().map(|(id, k)| (*id, &k[..]))))
    }
}

fn poisoned() -> Etsi014Error {
    Etsi014Error::Internal {
        detail: "key pool lock poisoned".into(),
    }
}

/// Writes the Key container straight into a zeroizing buffer: the same bytes serde would write
/// (`{"keys":[{"key_ID":..,"key":..}]}`), without intermediate strings holding key material.
fn container<'a>(keys: impl ExactSizeIterator<Item = (KeyId, &'a [u8])>) -> Answer {
    let n = keys.len();
    let mut keys = keys.peekable();
    let per_key = keys.peek().map_or(0, |k| 4 * k.1.len().div_ceil(3) + 64);
    let mut out = Zeroizing::new(Vec::with_capacity(16 + n * per_key));
    out.extend_from_slice(b"{\"keys\":[");
    for (i, (id, key)) in keys.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"key_ID\":\"");
        let mut text = [0u8; 36];
        out.extend_from_slice(id.hyphenated(&mut text));
        out.extend_from_slice(b"\",\"key\":\"");
        let start = out.len();
        let b64_len = 4 * key.len().div_ceil(3);
        out.resize(start + b64_len, 0);
        // The slice is exactly the encoded length, so encoding cannot fail.
        let _ = B64.encode_slice(key, &mut out[start..]);
        out.extend_from_slice(b"\"}");
    }
    out.extend_from_slice(b"]}");
    Answer {
        status: 200,
        body: out,
        allow: None,
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;

    pub fn pair() -> (Kme, Kme) {
        let limits = Limits {
            key_size: 256,
            max_key_count: 64,
            max_key_per_request: 8,
            max_key_size: 1024,
            min_key_size: 64,
            max_sae_id_count: 1,
        };
        let mut pool = LinkPool::new(limits);
        let bits: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        pool.add_block(Zeroizing::new(bits.clone()), Zeroizing::new(bits), 0.03);
        let pool = Arc::new(Mutex::new(pool));
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
        let a = Kme {
            side: Side::Alice,
            kme_id: "kme-a".into(),
            peer_kme_id: "kme-b".into(),
            local_saes: set(&["sae-a"]),
            remote_saes: set(&["sae-b", "sae-c"]),
            pool: pool.clone(),
            limits,
            fault: None,
        };
        let b = Kme {
            side: Side::Bob,
            kme_id: "kme-b".into(),
            peer_kme_id: "kme-a".into(),
            local_saes: set(&["sae-b", "sae-c"]),
            remote_saes: set(&["sae-a"]),
            pool,
            limits,
            fault: None,
        };
        (a, b)
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::pair;
    use super::*;
    use qsi_etsi014::KeyContainer;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn container_bytes_match_serde() {
        let keys = [
            (
                KeyId::from_random_bytes([1; 16]),
                Zeroizing::new(vec![1, 2, 3]),
            ),
            (
                KeyId::from_random_bytes([2; 16]),
                Zeroizing::new(vec![0xff; 32]),
            ),
        ];
        let a = container(keys.iter().map(|(id, k)| (*id, &k[..])));
        let parsed = KeyContainer::from_json(&a.body).unwrap();
        let again = serde_json::to_vec(&parsed).unwrap();
        assert_eq!(&again[..], &a.body[..]);
        assert_eq!(parsed.validate(Some(2), None).unwrap()[1].1.len(), 32);
    }

    #[test]
    fn get_and_post_reach_the_same_functions() {
        let (a, b) = pair();
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let r = a.handle(
            Caller::Sae("sae-a"),
            "GET",
            "/api/v1/keys/sae-b/enc_keys",
            Some("number=2&size=128"),
            b"",
            &mut rng,
        );
        assert_eq!(r.status, 200);
        let c = KeyContainer::from_json(&r.body).unwrap();
        let keys = c.validate(Some(2), Some(128)).unwrap();
        let q = format!("key_ID={}", keys[0].0);
        let r = b.handle(
            Caller::Sae("sae-b"),
            "GET",
            "/api/v1/keys/sae-a/dec_keys",
            Some(&q),
            b"",
            &mut rng,
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let got = KeyContainer::from_json(&r.body)
            .unwrap()
            .validate(Some(1), Some(128))
            .unwrap();
        assert_eq!(got[0].1, keys[0].1);
        let body = serde_json::to_vec(&KeyIds::new([keys[1].0.to_string()])).unwrap();
        let r = b.handle(
            Caller::Sae("sae-c"),
            "POST",
            "/api/v1/keys/sae-a/dec_keys",
            None,
            &body,
            &mut rng,
        );
        assert_eq!(r.status, 401, "sae-c is not the slave of these keys");
        let r = b.handle(
            Caller::Sae("sae-b"),
            "POST",
            "/api/v1/keys/sae-a/dec_keys",
            None,
            &body,
            &mut rng,
        );
        assert_eq!(r.status, 200);
    }

    #[test]
    fn authentication_comes_before_everything_but_the_path() {
        let (a, _) = pair();
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let p = "/api/v1/keys/sae-b/status";
        assert_eq!(
            a.handle(Caller::Anonymous, "GET", p, None, b"", &mut rng)
                .status,
            401
        );
        assert_eq!(
            a.handle(Caller::Unregistered, "GET", p, None, b"", &mut rng)
                .status,
            401
        );
        assert_eq!(
            a.handle(Caller::Sae("sae-b"), "GET", p, None, b"", &mut rng)
                .status,
            401,
            "sae-b is not attached to Alice's KME"
        );
        assert_eq!(
            a.handle(Caller::Sae("sae-a"), "GET", "/x", None, b"", &mut rng)
                .status,
            404
        );
        let r = a.handle(Caller::Sae("sae-a"), "POST", p, None, b"", &mut rng);
        assert_eq!((r.status, r.allow), (405, Some("GET")));
        let r = a.handle(Caller::Sae("sae-a"), "GET", p, None, b"", &mut rng);
        assert_eq!(r.status, 200);
        let s: Status = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            (
                s.source_kme_id.as_str(),
                s.master_sae_id.as_str(),
                s.stored_key_count
            ),
            ("kme-a", "sae-a", 31)
        );
        assert_eq!(
            s.status_extension.unwrap()["qsi_link"]["state"],
            "producing"
        );
    }

    #[test]
    fn bad_requests_leave_the_pool_alone() {
        let (a, _) = pair();
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let before = a.pool.lock().unwrap().available_bits();
        for (path, body, code) in [
            ("/api/v1/keys/sae-b/enc_keys", &b"{\"number\":"[..], 400),
            ("/api/v1/keys/sae-b/enc_keys", b"{\"size\":100}", 400),
            ("/api/v1/keys/sae-b/enc_keys", b"{\"number\":9}", 400),
            ("/api/v1/keys/sae-x/enc_keys", b"{}", 400),
            (
                "/api/v1/keys/sae-b/enc_keys",
                b"{\"additional_slave_SAE_IDs\":[\"sae-x\"]}",
                400,
            ),
            (
                "/api/v1/keys/sae-b/enc_keys",
                b"{\"number\":8,\"size\":1024}",
                503,
            ),
        ] {
            let r = a.handle(Caller::Sae("sae-a"), "POST", path, None, body, &mut rng);
            assert_eq!(r.status, code, "{}", String::from_utf8_lossy(&r.body));
            assert!(qsi_etsi014::ErrorBody::from_json(&r.body).is_ok());
        }
        assert_eq!(a.pool.lock().unwrap().available_bits(), before);
    }
}

#[cfg(test)]
mod properties {
    use super::tests_support::pair;
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Whatever arrives, the KME answers with a status of the spec (or 404/405 outside the
        /// API), a JSON body, and a refused request leaves the pool as it was.
        #[test]
        fn refused_requests_never_touch_the_pool(
            method in prop_oneof![Just("GET"), Just("POST"), Just("PUT")],
            sae in prop_oneof![Just("sae-b"), Just("sae-a"), Just("x")],
            func in prop_oneof![Just("status"), Just("enc_keys"), Just("dec_keys"), Just("keys")],
            query in proptest::option::of("[a-zA-Z_=&0-9%-]{0,30}"),
            body in proptest::collection::vec(any::<u8>(), 0..64),
            json_body in proptest::option::of(r#"\{"(number|size|key_IDs)":(-?[0-9]{1,5}|\[\]|"x")\}"#),
        ) {
            let (a, _) = pair();
            let mut rng = ChaCha20Rng::seed_from_u64(9);
            let before = a.pool.lock().unwrap().available_bits();
            let body = json_body.map(String::into_bytes).unwrap_or(body);
            let path = format!("/api/v1/keys/{sae}/{func}");
            let r = a.handle(Caller::Sae("sae-a"), method, &path, query.as_deref(), &body, &mut rng);
            prop_assert!([200, 400, 401, 404, 405, 503].contains(&r.status));
            prop_assert!(serde_json::from_slice::<serde_json::Value>(&r.body).is_ok());
            if r.status != 200 {
                prop_assert_eq!(a.pool.lock().unwrap().available_bits(), before);
                prop_assert_eq!(a.pool.lock().unwrap().pending_count(Side::Bob), 0);
            }
        }
    }
}
