//! The JSON data formats of ETSI GS QKD 014 v1.1.1 (clause 6), with the spec's exact field names.
//!
//! Requests from SAEs ([`KeyRequest`], [`KeyIds`]) reject unknown fields, so a typo in a client
//! is a clear 400 rather than a silently ignored parameter. Answers from KMEs ([`Status`],
//! [`KeyContainer`]) accept unknown fields, since vendor KMEs add their own.
//! Table 11 spells the key container's array `Keys` where every example uses `keys`: we write
//! `keys` and read either.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::error::Etsi014Error;

/// A JSON object, as used for `details` entries and extension parameters.
pub type JsonObject = Map<String, Value>;

/// A key ID with its decoded key bytes.
pub type DecodedKey = (crate::KeyId, Zeroizing<Vec<u8>>);

/// Status data format (clause 6.1, Table 10): what a KME says about the link to one slave SAE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// KME ID of the KME answering.
    #[serde(rename = "source_KME_ID")]
    pub source_kme_id: String,
    /// KME ID of the KME on the other end of the link.
    #[serde(rename = "target_KME_ID")]
    pub target_kme_id: String,
    /// SAE ID of the calling master SAE.
    #[serde(rename = "master_SAE_ID")]
    pub master_sae_id: String,
    /// SAE ID of the specified slave SAE.
    #[serde(rename = "slave_SAE_ID")]
    pub slave_sae_id: String,
    /// Default size of a key, in bits.
    pub key_size: u32,
    /// Number of keys of `key_size` bits stored in the KME for this link.
    pub stored_key_count: u64,
    /// Maximum number of stored keys of `key_size` bits.
    pub max_key_count: u64,
    /// Maximum number of keys per request.
    pub max_key_per_request: u32,
    /// Maximum size of a key the KME can deliver, in bits.
    pub max_key_size: u32,
    /// Minimum size of a key the KME can deliver, in bits.
    pub min_key_size: u32,
    /// Maximum number of additional slave SAEs in one request (0: no multicast).
    #[serde(rename = "max_SAE_ID_count")]
    pub max_sae_id_count: u32,
    /// Vendor extension (our simulator puts the link's QBER and state here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_extension: Option<Value>,
}

/// Key request data format (clause 6.2, Table 11 of the request): the body of POST enc_keys.
///
/// `number` and `size` are kept as signed integers so that a negative or zero value reaches
/// validation and gets a precise message instead of a JSON type error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    /// Number of keys requested (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<i64>,
    /// Size of each key in bits (default: `key_size` of [`Status`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// Further slave SAEs that shall receive the same keys.
    #[serde(
        rename = "additional_slave_SAE_IDs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub additional_slave_sae_ids: Option<Vec<String>>,
    /// Extension parameters the KME shall handle or refuse with an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_mandatory: Option<Vec<JsonObject>>,
    /// Extension parameters the KME may ignore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_optional: Option<Vec<JsonObject>>,
}

impl KeyRequest {
    /// A request for `number` keys of `size` bits each.
    pub fn new(number: u32, size: u32) -> Self {
        KeyRequest {
            number: Some(i64::from(number)),
            size: Some(i64::from(size)),
            ..Default::default()
        }
    }

    /// Parses a request body. An empty body is the request with every default (as GET sends).
    pub fn from_json(body: &[u8]) -> Result<Self, Etsi014Error> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(KeyRequest::default());
        }
        serde_json::from_slice(body).map_err(|e| Etsi014Error::MalformedJson {
            detail: e.to_string(),
        })
    }
}

/// Key material as standard base64 (RFC 4648), zeroized on drop and redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyMaterial(Zeroizing<String>);

impl KeyMaterial {
    /// Encodes raw key bytes.
    pub fn encode(bytes: &[u8]) -> Self {
        KeyMaterial(Zeroizing::new(B64.encode(bytes)))
    }

    /// Wraps an already base64-encoded string (not checked until [`KeyMaterial::decode`]).
    pub fn from_base64(text: String) -> Self {
        KeyMaterial(Zeroizing::new(text))
    }

    /// The base64 text (a secret: do not log it).
    pub fn expose_base64(&self) -> &str {
        &self.0
    }

    /// Decodes the key bytes.
    pub fn decode(&self) -> Result<Zeroizing<Vec<u8>>, Etsi014Error> {
        B64.decode(self.0.as_bytes())
            .map(Zeroizing::new)
            .map_err(|e| Etsi014Error::BadBase64 {
                detail: e.to_string(),
            })
    }
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyMaterial([redacted])")
    }
}

impl Serialize for KeyMaterial {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for KeyMaterial {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(KeyMaterial::from_base64)
    }
}

/// One key of a [`KeyContainer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Key {
    /// ID of the key, a UUID (RFC 4122 text form).
    #[serde(rename = "key_ID")]
    pub key_id: String,
    /// Extension of the key ID (unused by us).
    #[serde(
        rename = "key_ID_extension",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub key_id_extension: Option<Value>,
    /// The key, base64.
    pub key: KeyMaterial,
    /// Extension of the key (unused by us).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_extension: Option<Value>,
}

impl Key {
    /// A key with its ID and raw bytes.
    pub fn new(key_id: impl Into<String>, bytes: &[u8]) -> Self {
        Key {
            key_id: key_id.into(),
            key_id_extension: None,
            key: KeyMaterial::encode(bytes),
            key_extension: None,
        }
    }
}

/// Key container data format (clause 6.3): the answer to enc_keys and dec_keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyContainer {
    /// The keys (Table 11 spells it `Keys`, the examples `keys`; we write `keys`, read both).
    #[serde(alias = "Keys")]
    pub keys: Vec<Key>,
    /// Extension of the container (unused by us).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_container_extension: Option<Value>,
}

impl KeyContainer {
    /// Parses a KME's answer.
    pub fn from_json(body: &[u8]) -> Result<Self, Etsi014Error> {
        serde_json::from_slice(body).map_err(|e| Etsi014Error::MalformedJson {
            detail: e.to_string(),
        })
    }

    /// Checks a container as a client must before using it: `expected` keys (if given), each with
    /// a UUID key_ID, no ID twice, valid base64 and, if `size_bits` is given, exactly that size.
    /// Returns the decoded keys in order.
    pub fn validate(
        &self,
        expected: Option<usize>,
        size_bits: Option<u32>,
    ) -> Result<Vec<DecodedKey>, Etsi014Error> {
        if let Some(n) = expected {
            if self.keys.len() != n {
                return Err(Etsi014Error::WrongKeyCount {
                    expected: n,
                    got: self.keys.len(),
                });
            }
        }
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(self.keys.len());
        for k in &self.keys {
            let id = crate::KeyId::parse(&k.key_id)?;
            if !seen.insert(id) {
                return Err(Etsi014Error::DuplicateKeyId {
                    key_id: k.key_id.clone(),
                });
            }
            let bytes = k.key.decode()?;
            if let Some(bits) = size_bits {
                let got = bytes.len() * 8;
                if got != bits as usize {
                    return Err(Etsi014Error::WrongKeySize {
                        key_id: k.key_id.clone(),
                        expected_bits: bits,
                        got_bits: got,
                    });
                }
            }
            out.push((id, bytes));
        }
        Ok(out)
    }
}

/// One entry of [`KeyIds`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyIdRef {
    /// ID of the key.
    #[serde(rename = "key_ID")]
    pub key_id: String,
    /// Extension of the key ID (unused by us).
    #[serde(
        rename = "key_ID_extension",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub key_id_extension: Option<Value>,
}

/// Key IDs data format (clause 6.4): the body of POST dec_keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyIds {
    /// The IDs of the keys wanted.
    #[serde(rename = "key_IDs")]
    pub key_ids: Vec<KeyIdRef>,
    /// Extension (unused by us).
    #[serde(
        rename = "key_IDs_extension",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub key_ids_extension: Option<Value>,
}

impl KeyIds {
    /// A request for these key IDs.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(ids: I) -> Self {
        KeyIds {
            key_ids: ids
                .into_iter()
                .map(|id| KeyIdRef {
                    key_id: id.into(),
                    key_id_extension: None,
                })
                .collect(),
            key_ids_extension: None,
        }
    }

    /// Parses a request body.
    pub fn from_json(body: &[u8]) -> Result<Self, Etsi014Error> {
        serde_json::from_slice(body).map_err(|e| Etsi014Error::MalformedJson {
            detail: e.to_string(),
        })
    }
}

/// Error data format (clause 6.5): the body of every 400, 401 and 503 answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Error message.
    pub message: String,
    /// Further details, one object per problem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<JsonObject>>,
}

impl ErrorBody {
    /// Parses a KME's error answer.
    pub fn from_json(body: &[u8]) -> Result<Self, Etsi014Error> {
        serde_json::from_slice(body).map_err(|e| Etsi014Error::MalformedJson {
            detail: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_uses_the_spec_field_names() {
        let s = Status {
            source_kme_id: "kme-a".into(),
            target_kme_id: "kme-b".into(),
            master_sae_id: "sae-a".into(),
            slave_sae_id: "sae-b".into(),
            key_size: 256,
            stored_key_count: 25000,
            max_key_count: 100000,
            max_key_per_request: 128,
            max_key_size: 1024,
            min_key_size: 64,
            max_sae_id_count: 0,
            status_extension: None,
        };
        let v: Value = serde_json::to_value(&s).unwrap();
        let mut names: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "key_size",
                "master_SAE_ID",
                "max_SAE_ID_count",
                "max_key_count",
                "max_key_per_request",
                "max_key_size",
                "min_key_size",
                "slave_SAE_ID",
                "source_KME_ID",
                "stored_key_count",
                "target_KME_ID"
            ]
        );
        let back: Status = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn key_request_reads_the_spec_example_and_refuses_unknown_fields() {
        let r = KeyRequest::from_json(
            br#"{"number":2,"size":1024,"additional_slave_SAE_IDs":["sae-c"],
                 "extension_mandatory":[{"abc_route_type":"direct"}],
                 "extension_optional":[{"abc_max_age":30000}]}"#,
        )
        .unwrap();
        assert_eq!(r.number, Some(2));
        assert_eq!(r.size, Some(1024));
        assert_eq!(
            r.additional_slave_sae_ids.as_deref(),
            Some(&["sae-c".to_string()][..])
        );
        assert_eq!(r.extension_mandatory.as_ref().map(Vec::len), Some(1));
        assert_eq!(KeyRequest::from_json(b"").unwrap(), KeyRequest::default());
        assert!(matches!(
            KeyRequest::from_json(br#"{"numbre":2}"#),
            Err(Etsi014Error::MalformedJson { .. })
        ));
        assert!(matches!(
            KeyRequest::from_json(b"{\"number\":"),
            Err(Etsi014Error::MalformedJson { .. })
        ));
        let json = serde_json::to_string(&KeyRequest::new(3, 256)).unwrap();
        assert_eq!(json, r#"{"number":3,"size":256}"#);
    }

    #[test]
    fn key_container_writes_keys_and_reads_the_table_11_spelling() {
        let c = KeyContainer {
            keys: vec![Key::new(
                "bc490419-7d60-487f-adc1-4ddcc177c139",
                &[1, 2, 3, 4],
            )],
            key_container_extension: None,
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(
            json,
            r#"{"keys":[{"key_ID":"bc490419-7d60-487f-adc1-4ddcc177c139","key":"AQIDBA=="}]}"#
        );
        let slip = json.replace("\"keys\"", "\"Keys\"");
        assert_eq!(KeyContainer::from_json(slip.as_bytes()).unwrap(), c);
        let keys = c.validate(Some(1), Some(32)).unwrap();
        assert_eq!(&keys[0].1[..], &[1, 2, 3, 4]);
        assert!(matches!(
            c.validate(Some(2), None),
            Err(Etsi014Error::WrongKeyCount { .. })
        ));
        assert!(matches!(
            c.validate(None, Some(64)),
            Err(Etsi014Error::WrongKeySize { .. })
        ));
    }

    #[test]
    fn key_container_validation_catches_bad_ids_and_base64() {
        let mut c = KeyContainer {
            keys: vec![Key::new("not-a-uuid", &[0; 4])],
            key_container_extension: None,
        };
        assert!(matches!(
            c.validate(None, None),
            Err(Etsi014Error::BadKeyId { .. })
        ));
        c.keys[0].key_id = "550e8400-e29b-41d4-a716-446655440000".into();
        c.keys[0].key = KeyMaterial::from_base64("@@@".into());
        assert!(matches!(
            c.validate(None, None),
            Err(Etsi014Error::BadBase64 { .. })
        ));
        c.keys = vec![
            Key::new("550e8400-e29b-41d4-a716-446655440000", &[0]),
            Key::new("550E8400-E29B-41D4-A716-446655440000", &[0]),
        ];
        assert!(matches!(
            c.validate(None, None),
            Err(Etsi014Error::DuplicateKeyId { .. })
        ));
    }

    #[test]
    fn key_material_is_redacted() {
        let k = Key::new("550e8400-e29b-41d4-a716-446655440000", b"secret!!");
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(k.key.expose_base64()), "{dbg}");
        assert!(dbg.contains("redacted"));
    }

    #[test]
    fn key_ids_and_error_bodies_use_the_spec_names() {
        let ids = KeyIds::new(["550e8400-e29b-41d4-a716-446655440000"]);
        assert_eq!(
            serde_json::to_string(&ids).unwrap(),
            r#"{"key_IDs":[{"key_ID":"550e8400-e29b-41d4-a716-446655440000"}]}"#
        );
        assert_eq!(
            KeyIds::from_json(serde_json::to_string(&ids).unwrap().as_bytes()).unwrap(),
            ids
        );
        assert!(KeyIds::from_json(br#"{"key_ids":[]}"#).is_err());
        let e = ErrorBody::from_json(br#"{"message":"m","details":[{"a":"b"}]}"#).unwrap();
        assert_eq!(e.message, "m");
        assert_eq!(e.details.unwrap().len(), 1);
    }
}
