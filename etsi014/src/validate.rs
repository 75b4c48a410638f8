//! Validation of requests against a KME's limits (the numbers its [`Status`] announces), and the
//! key ID format.

use crate::error::{Etsi014Error, ParamProblem};
use crate::messages::{KeyIds, KeyRequest, Status};

/// A key ID: a UUID (RFC 4122), written in the hyphenated lower-case form `8-4-4-4-12`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(uuid::Uuid);

impl KeyId {
    /// Parses the hyphenated text form only (36 characters; upper-case hex is accepted). The
    /// braced, URN and simple forms that the `uuid` crate would take are refused: the spec's
    /// examples and every KME use the hyphenated form.
    pub fn parse(text: &str) -> Result<Self, Etsi014Error> {
        let bad = || Etsi014Error::BadKeyId {
            key_id: text.to_owned(),
        };
        let b = text.as_bytes();
        if b.len() != 36 {
            return Err(bad());
        }
        for (i, c) in b.iter().enumerate() {
            let ok = if matches!(i, 8 | 13 | 18 | 23) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            };
            if !ok {
                return Err(bad());
            }
        }
        uuid::Uuid::try_parse(text).map(KeyId).map_err(|_| bad())
    }

    /// A version 4 (random) UUID from 16 random bytes (the caller brings the RNG).
    pub fn from_random_bytes(bytes: [u8; 16]) -> Self {
        KeyId(uuid::Builder::from_random_bytes(bytes).into_uuid())
    }

    /// Writes the text form into `buf` without allocating (for pre-serialized answers).
    pub fn hyphenated<'b>(&self, buf: &'b mut [u8; 36]) -> &'b [u8] {
        self.0.hyphenated().encode_lower(buf).as_bytes()
    }

    /// The 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// The limits a KME enforces, as announced in its [`Status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Default key size in bits (used when a request gives no `size`).
    pub key_size: u32,
    /// Maximum number of keys of `key_size` bits the KME stores for a link.
    pub max_key_count: u64,
    /// Maximum number of keys in one request.
    pub max_key_per_request: u32,
    /// Largest key size in bits.
    pub max_key_size: u32,
    /// Smallest key size in bits.
    pub min_key_size: u32,
    /// Maximum number of `additional_slave_SAE_IDs` (0: the KME does not multicast keys).
    pub max_sae_id_count: u32,
}

impl Default for Limits {
    /// 256-bit keys (an AES-256 key), sizes 64 to 8192 bits, 1024 keys a request.
    fn default() -> Self {
        Limits {
            key_size: 256,
            max_key_count: 1 << 20,
            max_key_per_request: 1024,
            max_key_size: 8192,
            min_key_size: 64,
            max_sae_id_count: 0,
        }
    }
}

impl Limits {
    /// The limits a KME's status announces.
    pub fn from_status(s: &Status) -> Self {
        Limits {
            key_size: s.key_size,
            max_key_count: s.max_key_count,
            max_key_per_request: s.max_key_per_request,
            max_key_size: s.max_key_size,
            min_key_size: s.min_key_size,
            max_sae_id_count: s.max_sae_id_count,
        }
    }

    /// Checks that the limits are consistent (for a KME's configuration).
    pub fn check(&self) -> Result<(), Etsi014Error> {
        let bad = |detail: String| Err(Etsi014Error::BadLimits { detail });
        for (name, v) in [
            ("key_size", self.key_size),
            ("min_key_size", self.min_key_size),
            ("max_key_size", self.max_key_size),
        ] {
            if v == 0 || v % 8 != 0 {
                return bad(format!("{name} = {v}: must be a positive multiple of 8"));
            }
        }
        if !(self.min_key_size <= self.key_size && self.key_size <= self.max_key_size) {
            return bad(format!(
                "key_size = {} must lie within min_key_size = {} and max_key_size = {}",
                self.key_size, self.min_key_size, self.max_key_size
            ));
        }
        if self.max_key_per_request == 0 {
            return bad("max_key_per_request must be at least 1".into());
        }
        if u64::from(self.max_key_per_request) > self.max_key_count {
            return bad(format!(
                "max_key_per_request = {} exceeds max_key_count = {}",
                self.max_key_per_request, self.max_key_count
            ));
        }
        Ok(())
    }
}

/// A key request that passed validation: concrete number and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidKeyRequest {
    /// Number of keys, 1..=max_key_per_request.
    pub number: u32,
    /// Size of each key in bits, a multiple of 8 within min_key_size..=max_key_size.
    pub size: u32,
    /// Further slave SAEs that may fetch these keys (at most max_SAE_ID_count, no repeats).
    pub additional_slave_sae_ids: Vec<String>,
}

impl ValidKeyRequest {
    /// Size of each key in bytes.
    pub fn size_bytes(&self) -> usize {
        (self.size / 8) as usize
    }
}

/// Validates a Get key request from a master SAE for `slave_sae_id` against `limits`, reporting
/// every problem at once. Since this KME handles no extension, any `extension_mandatory`
/// parameter is refused (clause 6.2: the KME shall handle it or return an error);
/// `extension_optional` is ignored.
pub fn validate_key_request(
    req: &KeyRequest,
    limits: &Limits,
    slave_sae_id: &str,
) -> Result<ValidKeyRequest, Etsi014Error> {
    let mut problems = Vec::new();
    let mut problem = |parameter: &'static str, message: String| {
        problems.push(ParamProblem { parameter, message })
    };
    let number = req.number.unwrap_or(1);
    if number < 1 {
        problem(
            "number",
            format!("number = {number}: at least 1 key must be requested"),
        );
    } else if number > i64::from(limits.max_key_per_request) {
        problem(
            "number",
            format!(
                "number = {number} exceeds max_key_per_request = {}",
                limits.max_key_per_request
            ),
        );
    } else if number as u64 > limits.max_key_count {
        problem(
            "number",
            format!(
                "number = {number} exceeds max_key_count = {}",
                limits.max_key_count
            ),
        );
    }
    let size = req.size.unwrap_or(i64::from(limits.key_size));
    if size % 8 != 0 {
        problem("size", format!("size = {size} bits is not a multiple of 8"));
    }
    if size < i64::from(limits.min_key_size) || size > i64::from(limits.max_key_size) {
        problem(
            "size",
            format!(
                "size = {size} bits is outside min_key_size = {} to max_key_size = {}",
                limits.min_key_size, limits.max_key_size
            ),
        );
    }
    let additional = req.additional_slave_sae_ids.clone().unwrap_or_default();
    if additional.len() > limits.max_sae_id_count as usize {
        problem(
            "additional_slave_SAE_IDs",
            format!(
                "{} additional slave SAEs requested, max_SAE_ID_count = {}",
                additional.len(),
                limits.max_sae_id_count
            ),
        );
    }
    let mut seen = std::collections::HashSet::new();
    for id in &additional {
        if id.is_empty() || id == slave_sae_id || !seen.insert(id.as_str()) {
            problem(
                "additional_slave_SAE_IDs",
                format!("{id:?} is empty, repeated or the slave SAE itself"),
            );
        }
    }
    for ext in req.extension_mandatory.iter().flatten() {
        let names: Vec<_> = ext.keys().cloned().collect();
        problem(
            "extension_mandatory",
            format!(
                "extension {} is not supported by this KME",
                names.join(", ")
            ),
        );
    }
    if !problems.is_empty() {
        return Err(Etsi014Error::InvalidParameters(problems));
    }
    // Both are within u32 bounds now: 1 <= number <= max_key_per_request, size <= max_key_size.
    Ok(ValidKeyRequest {
        number: u32::try_from(number).unwrap_or(1),
        size: u32::try_from(size).unwrap_or(limits.key_size),
        additional_slave_sae_ids: additional,
    })
}

/// Validates a Get key with key IDs request: at least one ID, at most max_key_per_request, each
/// a UUID, none twice. Returns the IDs in order.
pub fn validate_key_ids(ids: &KeyIds, limits: &Limits) -> Result<Vec<KeyId>, Etsi014Error> {
    if ids.key_ids.is_empty() {
        return Err(Etsi014Error::MissingKeyIds);
    }
    if ids.key_ids.len() > limits.max_key_per_request as usize {
        return Err(Etsi014Error::InvalidParameters(vec![ParamProblem {
            parameter: "key_IDs",
            message: format!(
                "{} key IDs exceed max_key_per_request = {}",
                ids.key_ids.len(),
                limits.max_key_per_request
            ),
        }]));
    }
    let mut out = Vec::with_capacity(ids.key_ids.len());
    let mut seen = std::collections::HashSet::new();
    for r in &ids.key_ids {
        let id = KeyId::parse(&r.key_id)?;
        if !seen.insert(id) {
            return Err(Etsi014Error::DuplicateKeyId {
                key_id: r.key_id.clone(),
            });
        }
        out.push(id);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            key_size: 256,
            max_key_count: 1000,
            max_key_per_request: 128,
            max_key_size: 1024,
            min_key_size: 64,
            max_sae_id_count: 1,
        }
    }

    fn params(e: Etsi014Error) -> Vec<&'static str> {
        match e {
            Etsi014Error::InvalidParameters(p) => p.into_iter().map(|p| p.parameter).collect(),
            other => panic!("expected InvalidParameters, got {other:?}"),
        }
    }

    #[test]
    fn key_ids_are_hyphenated_uuids() {
        let id = KeyId::parse("550e8400-e29b-41d4-a716-446655440000").unwrap();
        assert_eq!(id.to_string(), "550e8400-e29b-41d4-a716-446655440000");
        assert_eq!(
            KeyId::parse("550E8400-E29B-41D4-A716-446655440000").unwrap(),
            id
        );
        for bad in [
            "",
            "550e8400e29b41d4a716446655440000",
            "{550e8400-e29b-41d4-a716-446655440000}",
            "urn:uuid:550e8400-e29b-41d4-a716-446655440000",
            "550e8400-e29b-41d4-a716-44665544000g",
            "550e8400-e29b-41d4-a716_446655440000",
        ] {
            assert!(KeyId::parse(bad).is_err(), "{bad}");
        }
        let r = KeyId::from_random_bytes([7; 16]);
        let mut buf = [0u8; 36];
        assert_eq!(r.hyphenated(&mut buf), r.to_string().as_bytes());
        assert_eq!(KeyId::parse(&r.to_string()).unwrap(), r);
        assert_eq!(r.to_string().as_bytes()[14], b'4', "version 4");
    }

    #[test]
    fn defaults_come_from_the_limits() {
        let v = validate_key_request(&KeyRequest::default(), &limits(), "b").unwrap();
        assert_eq!((v.number, v.size, v.size_bytes()), (1, 256, 32));
        let v = validate_key_request(&KeyRequest::new(128, 1024), &limits(), "b").unwrap();
        assert_eq!((v.number, v.size), (128, 1024));
    }

    #[test]
    fn every_rule_is_enforced_and_reported_together() {
        let l = limits();
        assert_eq!(
            params(validate_key_request(&KeyRequest::new(0, 256), &l, "b").unwrap_err()),
            ["number"]
        );
        assert_eq!(
            params(validate_key_request(&KeyRequest::new(129, 256), &l, "b").unwrap_err()),
            ["number"]
        );
        assert_eq!(
            params(validate_key_request(&KeyRequest::new(1, 100), &l, "b").unwrap_err()),
            ["size"]
        );
        assert_eq!(
            params(validate_key_request(&KeyRequest::new(1, 56), &l, "b").unwrap_err()),
            ["size"]
        );
        assert_eq!(
            params(validate_key_request(&KeyRequest::new(1, 1032), &l, "b").unwrap_err()),
            ["size"]
        );
        let r = KeyRequest {
            number: Some(-3),
            size: Some(-9),
            ..Default::default()
        };
        assert_eq!(
            params(validate_key_request(&r, &l, "b").unwrap_err()),
            ["number", "size", "size"]
        );
        let r = KeyRequest {
            additional_slave_sae_ids: Some(vec!["c".into(), "d".into()]),
            ..Default::default()
        };
        assert_eq!(
            params(validate_key_request(&r, &l, "b").unwrap_err()),
            ["additional_slave_SAE_IDs"]
        );
        let r = KeyRequest {
            additional_slave_sae_ids: Some(vec!["b".into()]),
            ..Default::default()
        };
        assert_eq!(
            params(validate_key_request(&r, &l, "b").unwrap_err()),
            ["additional_slave_SAE_IDs"]
        );
        let r = KeyRequest {
            additional_slave_sae_ids: Some(vec!["c".into()]),
            extension_optional: Some(vec![serde_json::Map::new()]),
            ..Default::default()
        };
        assert_eq!(
            validate_key_request(&r, &l, "b")
                .unwrap()
                .additional_slave_sae_ids,
            ["c"]
        );
        let mut ext = serde_json::Map::new();
        ext.insert("abc_route_type".into(), "direct".into());
        let r = KeyRequest {
            extension_mandatory: Some(vec![ext]),
            ..Default::default()
        };
        assert_eq!(
            params(validate_key_request(&r, &l, "b").unwrap_err()),
            ["extension_mandatory"]
        );
    }

    #[test]
    fn max_key_count_bounds_a_request_too() {
        let l = Limits {
            max_key_count: 10,
            max_key_per_request: 10,
            ..limits()
        };
        assert!(l.check().is_ok());
        let l = Limits {
            max_key_count: 10,
            max_key_per_request: 20,
            ..limits()
        };
        assert!(l.check().is_err());
        assert_eq!(
            params(
                validate_key_request(
                    &KeyRequest::new(11, 256),
                    &Limits {
                        max_key_per_request: 20,
                        max_key_count: 10,
                        ..limits()
                    },
                    "b"
                )
                .unwrap_err()
            ),
            ["number"]
        );
    }

    #[test]
    fn limits_are_checked_for_consistency() {
        assert!(Limits::default().check().is_ok());
        assert!(limits().check().is_ok());
        for bad in [
            Limits {
                key_size: 100,
                ..limits()
            },
            Limits {
                min_key_size: 0,
                ..limits()
            },
            Limits {
                key_size: 2048,
                ..limits()
            },
            Limits {
                max_key_per_request: 0,
                ..limits()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn key_id_lists_are_validated() {
        let l = limits();
        let ok = KeyIds::new(["550e8400-e29b-41d4-a716-446655440000"]);
        assert_eq!(validate_key_ids(&ok, &l).unwrap().len(), 1);
        assert!(matches!(
            validate_key_ids(&KeyIds::new(Vec::<String>::new()), &l),
            Err(Etsi014Error::MissingKeyIds)
        ));
        assert!(matches!(
            validate_key_ids(&KeyIds::new(["x"]), &l),
            Err(Etsi014Error::BadKeyId { .. })
        ));
        let twice = KeyIds::new(["550e8400-e29b-41d4-a716-446655440000"; 2]);
        assert!(matches!(
            validate_key_ids(&twice, &l),
            Err(Etsi014Error::DuplicateKeyId { .. })
        ));
        let many: Vec<String> = (0..129)
            .map(|i| KeyId::from_random_bytes([i as u8; 16]).to_string())
            .collect();
        assert_eq!(
            params(validate_key_ids(&KeyIds::new(many), &l).unwrap_err()),
            ["key_IDs"]
        );
    }
}
