//! The URL paths of ETSI GS QKD 014 v1.1.1 (clause 5) and their parsing.
//!
//! | method | path | body / query | answer |
//! |---|---|---|---|
//! | GET | `/api/v1/keys/{slave_SAE_ID}/status` | none | [`Status`](crate::Status) |
//! | POST | `/api/v1/keys/{slave_SAE_ID}/enc_keys` | [`KeyRequest`](crate::KeyRequest) | [`KeyContainer`](crate::KeyContainer) |
//! | GET | `/api/v1/keys/{slave_SAE_ID}/enc_keys` | `?number=N&size=S` | [`KeyContainer`](crate::KeyContainer) |
//! | POST | `/api/v1/keys/{master_SAE_ID}/dec_keys` | [`KeyIds`](crate::KeyIds) | [`KeyContainer`](crate::KeyContainer) |
//! | GET | `/api/v1/keys/{master_SAE_ID}/dec_keys` | `?key_ID=UUID` | [`KeyContainer`](crate::KeyContainer) |
//!
//! Two slips of the spec are resolved here: clause 5.1 says "KME ID" in the status path where the
//! parameter is the slave SAE ID (Table 2 and every example use the SAE ID), and the GET example of
//! clause 5.3 puts the slave SAE ID in the dec_keys path against Table 7, which names the master SAE
//! ID. We follow the tables: status and enc_keys take the slave SAE ID, dec_keys the master SAE ID.

use crate::error::Etsi014Error;

/// The common prefix of every ETSI GS QKD 014 v1.1.1 path.
pub const API_PREFIX: &str = "/api/v1/keys/";

/// One of the three API functions, with the SAE ID taken from the path (percent-decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Get status (clause 5.1): the path names the slave SAE.
    Status {
        /// SAE ID of the slave SAE.
        slave_sae_id: String,
    },
    /// Get key (clause 5.2), called by the master SAE: the path names the slave SAE.
    EncKeys {
        /// SAE ID of the slave SAE.
        slave_sae_id: String,
    },
    /// Get key with key IDs (clause 5.3), called by the slave SAE: the path names the master SAE.
    DecKeys {
        /// SAE ID of the master SAE.
        master_sae_id: String,
    },
}

impl Endpoint {
    /// Parses the path part of a request URI (without the query) into an endpoint.
    ///
    /// Answers [`Etsi014Error::NotFound`] for a path outside the API (the caller answers it with
    /// HTTP 404, which is not an ETSI status but what any HTTP server says for an unknown path).
    pub fn parse(path: &str) -> Result<Self, Etsi014Error> {
        let rest = path
            .strip_prefix(API_PREFIX)
            .ok_or(Etsi014Error::NotFound)?;
        let (sae, func) = rest.split_once('/').ok_or(Etsi014Error::NotFound)?;
        if sae.is_empty() {
            return Err(Etsi014Error::NotFound);
        }
        let sae_id = percent_decode(sae)?;
        match func {
            "status" => Ok(Endpoint::Status {
                slave_sae_id: sae_id,
            }),
            "enc_keys" => Ok(Endpoint::EncKeys {
                slave_sae_id: sae_id,
            }),
            "dec_keys" => Ok(Endpoint::DecKeys {
                master_sae_id: sae_id,
            }),
            _ => Err(Etsi014Error::NotFound),
        }
    }

    /// The path of this endpoint, with the SAE ID percent-encoded.
    pub fn path(&self) -> String {
        match self {
            Endpoint::Status { slave_sae_id } => status_path(slave_sae_id),
            Endpoint::EncKeys { slave_sae_id } => enc_keys_path(slave_sae_id),
            Endpoint::DecKeys { master_sae_id } => dec_keys_path(master_sae_id),
        }
    }
}

/// `/api/v1/keys/{slave_SAE_ID}/status`
pub fn status_path(slave_sae_id: &str) -> String {
    format!("{API_PREFIX}{}/status", percent_encode(slave_sae_id))
}

/// `/api/v1/keys/{slave_SAE_ID}/enc_keys`
pub fn enc_keys_path(slave_sae_id: &str) -> String {
    format!("{API_PREFIX}{}/enc_keys", percent_encode(slave_sae_id))
}

/// `/api/v1/keys/{master_SAE_ID}/dec_keys`
pub fn dec_keys_path(master_sae_id: &str) -> String {
    format!("{API_PREFIX}{}/dec_keys", percent_encode(master_sae_id))
}

/// The query of a GET enc_keys request: `number` and `size`, both optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncKeysQuery {
    /// Number of keys requested.
    pub number: Option<i64>,
    /// Size of each key in bits.
    pub size: Option<i64>,
}

impl EncKeysQuery {
    /// Parses `number=N&size=S` (either may be absent; any other parameter is an error).
    pub fn parse(query: Option<&str>) -> Result<Self, Etsi014Error> {
        let mut out = EncKeysQuery::default();
        for (name, value) in query_pairs(query)? {
            let slot = match name.as_str() {
                "number" => &mut out.number,
                "size" => &mut out.size,
                _ => return Err(Etsi014Error::UnknownQueryParameter { name }),
            };
            if slot.is_some() {
                return Err(Etsi014Error::RepeatedQueryParameter { name });
            }
            let n = value
                .parse::<i64>()
                .map_err(|_| Etsi014Error::BadQueryValue {
                    name: name.clone(),
                    value: value.clone(),
                })?;
            *slot = Some(n);
        }
        Ok(out)
    }

    /// The same request as a [`KeyRequest`](crate::KeyRequest) body.
    pub fn to_key_request(self) -> crate::KeyRequest {
        crate::KeyRequest {
            number: self.number,
            size: self.size,
            ..Default::default()
        }
    }

    /// Renders the query string (without `?`), empty when both are absent.
    pub fn to_query(self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.number {
            parts.push(format!("number={n}"));
        }
        if let Some(s) = self.size {
            parts.push(format!("size={s}"));
        }
        parts.join("&")
    }
}

/// Parses the query of a GET dec_keys request: one or more `key_ID=UUID` into a
/// [`KeyIds`](crate::KeyIds) body (the spec shows one; repeating the parameter is accepted).
pub fn parse_dec_keys_query(query: Option<&str>) -> Result<crate::KeyIds, Etsi014Error> {
    let mut ids = Vec::new();
    for (name, value) in query_pairs(query)? {
        if name != "key_ID" {
            return Err(Etsi014Error::UnknownQueryParameter { name });
        }
        ids.push(crate::KeyIdRef {
            key_id: value,
            key_id_extension: None,
        });
    }
    if ids.is_empty() {
        return Err(Etsi014Error::MissingKeyIds);
    }
    Ok(crate::KeyIds {
        key_ids: ids,
        key_ids_extension: None,
    })
}

fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, Etsi014Error> {
    let Some(q) = query else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for part in q.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        out.push((percent_decode(name)?, percent_decode(value)?));
    }
    Ok(out)
}

/// Percent-encodes an SAE ID for a path segment (RFC 3986 unreserved characters pass unchanged).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (and `+` as a space, as form-encoded queries use it).
pub fn percent_decode(s: &str) -> Result<String, Etsi014Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| Etsi014Error::BadPercentEncoding { text: s.to_owned() })?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| Etsi014Error::BadPercentEncoding { text: s.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_functions_with_the_sae_of_the_tables() {
        assert_eq!(
            Endpoint::parse("/api/v1/keys/SAE%20B/status").unwrap(),
            Endpoint::Status {
                slave_sae_id: "SAE B".into()
            }
        );
        assert_eq!(
            Endpoint::parse("/api/v1/keys/sae-b/enc_keys").unwrap(),
            Endpoint::EncKeys {
                slave_sae_id: "sae-b".into()
            }
        );
        assert_eq!(
            Endpoint::parse("/api/v1/keys/sae-a/dec_keys").unwrap(),
            Endpoint::DecKeys {
                master_sae_id: "sae-a".into()
            }
        );
        for bad in [
            "/api/v1/keys//status",
            "/api/v2/keys/a/status",
            "/api/v1/keys/a/keys",
            "/api/v1/keys/a",
            "/",
        ] {
            assert!(
                matches!(Endpoint::parse(bad), Err(Etsi014Error::NotFound)),
                "{bad}"
            );
        }
    }

    #[test]
    fn paths_round_trip_through_percent_encoding() {
        for id in ["sae-a", "SAE B/1", "ü"] {
            for ep in [
                Endpoint::Status {
                    slave_sae_id: id.into(),
                },
                Endpoint::EncKeys {
                    slave_sae_id: id.into(),
                },
                Endpoint::DecKeys {
                    master_sae_id: id.into(),
                },
            ] {
                assert_eq!(Endpoint::parse(&ep.path()).unwrap(), ep);
            }
        }
        assert_eq!(enc_keys_path("a b"), "/api/v1/keys/a%20b/enc_keys");
    }

    #[test]
    fn enc_keys_query_parses_and_rejects_strangers() {
        let q = EncKeysQuery::parse(Some("number=3&size=256")).unwrap();
        assert_eq!((q.number, q.size), (Some(3), Some(256)));
        assert_eq!(q.to_query(), "number=3&size=256");
        assert_eq!(EncKeysQuery::parse(None).unwrap(), EncKeysQuery::default());
        assert!(matches!(
            EncKeysQuery::parse(Some("count=3")),
            Err(Etsi014Error::UnknownQueryParameter { .. })
        ));
        assert!(matches!(
            EncKeysQuery::parse(Some("number=x")),
            Err(Etsi014Error::BadQueryValue { .. })
        ));
        assert!(matches!(
            EncKeysQuery::parse(Some("number=1&number=2")),
            Err(Etsi014Error::RepeatedQueryParameter { .. })
        ));
    }

    #[test]
    fn dec_keys_query_needs_a_key_id() {
        let ids =
            parse_dec_keys_query(Some("key_ID=550e8400-e29b-41d4-a716-446655440000")).unwrap();
        assert_eq!(ids.key_ids.len(), 1);
        assert!(matches!(
            parse_dec_keys_query(None),
            Err(Etsi014Error::MissingKeyIds)
        ));
        assert!(matches!(
            parse_dec_keys_query(Some("id=1")),
            Err(Etsi014Error::UnknownQueryParameter { .. })
        ));
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("%e").is_err());
    }
}
