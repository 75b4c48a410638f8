//! Errors, their HTTP status codes (clause 5: 400, 401, 503) and their Error bodies (clause 6.5).
//!
//! The spec fixes the format of an error (a `message` and optional `details`), not its wording;
//! the messages here are ours, one fixed `message` per kind of failure so that clients can match
//! on it, with the specifics in `details`.

use serde_json::{Value, json};

use crate::messages::{ErrorBody, JsonObject};

/// `message` of a 400 answer to parameters outside the KME's limits.
pub const MSG_BAD_PARAMETERS: &str = "requested parameters do not adhere to KME rules";
/// `message` of a 400 answer to a body or query that cannot be parsed.
pub const MSG_MALFORMED: &str = "malformed request";
/// `message` of a 400 answer naming an SAE the KME does not serve.
pub const MSG_UNKNOWN_SAE: &str = "unknown SAE ID";
/// `message` of a 400 answer to key IDs the KME does not hold (never issued or already delivered).
pub const MSG_KEY_NOT_FOUND: &str = "key not found";
/// `message` of every 401 answer.
pub const MSG_UNAUTHORIZED: &str = "unauthorized";
/// `message` of a 503 answer when the pool holds too little key.
pub const MSG_NOT_ENOUGH_KEY: &str = "not enough key material available";
/// `message` of a 503 answer when the QKD link does not produce key.
pub const MSG_LINK_DOWN: &str = "QKD link is not producing keys";

/// One parameter outside the KME's rules, reported in `details` as `{"parameter", "message"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamProblem {
    /// Name of the parameter as the spec spells it (`number`, `size`, `additional_slave_SAE_IDs`,
    /// `extension_mandatory`, `key_IDs`).
    pub parameter: &'static str,
    /// What is wrong and what is allowed.
    pub message: String,
}

/// Everything that can go wrong with an ETSI GS QKD 014 exchange, on either side.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Etsi014Error {
    /// The body is not JSON of the expected shape (syntax error, wrong type, unknown field).
    #[error("malformed JSON: {detail}")]
    MalformedJson {
        /// The parser's message.
        detail: String,
    },
    /// A query carries a parameter the function does not define.
    #[error("unknown query parameter {name:?}")]
    UnknownQueryParameter {
        /// The parameter's name.
        name: String,
    },
    /// A query repeats a parameter that may appear once.
    #[error("query parameter {name:?} given twice")]
    RepeatedQueryParameter {
        /// The parameter's name.
        name: String,
    },
    /// A query parameter's value is not an integer.
    #[error("query parameter {name:?} has the non-integer value {value:?}")]
    BadQueryValue {
        /// The parameter's name.
        name: String,
        /// The value given.
        value: String,
    },
    /// A `%` escape in the path or query is broken or decodes to invalid UTF-8.
    #[error("bad percent-encoding in {text:?}")]
    BadPercentEncoding {
        /// The offending text.
        text: String,
    },
    /// A dec_keys request names no key ID.
    #[error("no key_ID given")]
    MissingKeyIds,
    /// One or more parameters are outside the KME's limits.
    #[error("{}", problems_text(.0))]
    InvalidParameters(Vec<ParamProblem>),
    /// A key ID is not a UUID in its text form.
    #[error("key_ID {key_id:?} is not a UUID (8-4-4-4-12 hex digits)")]
    BadKeyId {
        /// The offending ID.
        key_id: String,
    },
    /// A key is not valid standard base64.
    #[error("key is not valid base64: {detail}")]
    BadBase64 {
        /// The decoder's message.
        detail: String,
    },
    /// A container holds a different number of keys than requested (client-side check).
    #[error("expected {expected} keys, got {got}")]
    WrongKeyCount {
        /// Keys requested.
        expected: usize,
        /// Keys received.
        got: usize,
    },
    /// A key has a different size than requested (client-side check).
    #[error("key {key_id} has {got_bits} bits, expected {expected_bits}")]
    WrongKeySize {
        /// The key's ID.
        key_id: String,
        /// Bits requested.
        expected_bits: u32,
        /// Bits received.
        got_bits: usize,
    },
    /// A container or request names the same key ID twice.
    #[error("key_ID {key_id} appears twice")]
    DuplicateKeyId {
        /// The repeated ID.
        key_id: String,
    },
    /// The SAE ID in the path is not one this KME serves.
    #[error("unknown SAE ID {sae_id:?}")]
    UnknownSae {
        /// The SAE ID from the path.
        sae_id: String,
    },
    /// The KME holds none of these key IDs for this master SAE (never issued, or delivered).
    #[error("key not found: {}", .key_ids.join(", "))]
    KeysNotFound {
        /// The IDs not found.
        key_ids: Vec<String>,
    },
    /// The client presented no certificate.
    #[error("no client certificate: the SAE must authenticate with its certificate")]
    NoClientCertificate,
    /// The client's certificate is valid but not mapped to an SAE of this KME.
    #[error("client certificate is not registered to any SAE of this KME")]
    UnknownClientCertificate,
    /// The calling SAE may not use this function for this SAE pair.
    #[error("SAE {caller:?} may not {action}")]
    Forbidden {
        /// The calling SAE (from its certificate).
        caller: String,
        /// What it tried, in words.
        action: String,
    },
    /// The pool holds fewer keys than requested.
    #[error("not enough key material: {requested_bits} bits requested, {available_bits} available")]
    NotEnoughKey {
        /// Bits requested (number x size).
        requested_bits: u64,
        /// Bits in the pool.
        available_bits: u64,
    },
    /// The QKD link does not produce key (e.g. QBER above the threshold).
    #[error("QKD link is not producing keys: {reason}")]
    LinkDown {
        /// Why, in words (state and QBER).
        reason: String,
    },
    /// The KME failed internally.
    #[error("internal error: {detail}")]
    Internal {
        /// What failed.
        detail: String,
    },
    /// The path is not one of the API's functions (answered 404, outside the ETSI codes).
    #[error("no such API function")]
    NotFound,
    /// The method is not defined for this function (answered 405, outside the ETSI codes).
    #[error("method not allowed for this API function")]
    MethodNotAllowed,
    /// Limits that contradict each other (a configuration error, never sent to a client).
    #[error("inconsistent KME limits: {detail}")]
    BadLimits {
        /// What is inconsistent and how to fix it.
        detail: String,
    },
}

fn problems_text(p: &[ParamProblem]) -> String {
    p.iter()
        .map(|p| format!("{}: {}", p.parameter, p.message))
        .collect::<Vec<_>>()
        .join("; ")
}

fn detail(pairs: &[(&str, Value)]) -> JsonObject {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

impl Etsi014Error {
    /// The HTTP status code a KME answers this error with: 400, 401 or 503 (404/405 for paths
    /// and methods outside the API).
    pub fn status(&self) -> u16 {
        use Etsi014Error::*;
        match self {
            NoClientCertificate | UnknownClientCertificate | Forbidden { .. } => 401,
            NotEnoughKey { .. } | LinkDown { .. } | Internal { .. } | BadLimits { .. } => 503,
            NotFound => 404,
            MethodNotAllowed => 405,
            MalformedJson { .. }
            | UnknownQueryParameter { .. }
            | RepeatedQueryParameter { .. }
            | BadQueryValue { .. }
            | BadPercentEncoding { .. }
            | MissingKeyIds
            | InvalidParameters(_)
            | BadKeyId { .. }
            | BadBase64 { .. }
            | WrongKeyCount { .. }
            | WrongKeySize { .. }
            | DuplicateKeyId { .. }
            | UnknownSae { .. }
            | KeysNotFound { .. } => 400,
        }
    }

    /// The Error body (clause 6.5) a KME sends with [`Etsi014Error::status`].
    pub fn body(&self) -> ErrorBody {
        use Etsi014Error::*;
        let text = |s: &str| Value::String(s.to_owned());
        let (message, details): (&str, Vec<JsonObject>) = match self {
            InvalidParameters(problems) => (
                MSG_BAD_PARAMETERS,
                problems
                    .iter()
                    .map(|p| {
                        detail(&[
                            ("parameter", text(p.parameter)),
                            ("message", text(&p.message)),
                        ])
                    })
                    .collect(),
            ),
            BadKeyId { key_id } => (
                MSG_BAD_PARAMETERS,
                vec![detail(&[
                    ("parameter", text("key_ID")),
                    ("message", text(&self.to_string())),
                    ("key_ID", text(key_id)),
                ])],
            ),
            DuplicateKeyId { key_id } => (
                MSG_BAD_PARAMETERS,
                vec![detail(&[
                    ("parameter", text("key_ID")),
                    ("message", text(&self.to_string())),
                    ("key_ID", text(key_id)),
                ])],
            ),
            UnknownSae { sae_id } => (MSG_UNKNOWN_SAE, vec![detail(&[("SAE_ID", text(sae_id))])]),
            KeysNotFound { key_ids } => (
                MSG_KEY_NOT_FOUND,
                key_ids
                    .iter()
                    .map(|id| {
                        detail(&[
                            ("key_ID", text(id)),
                            ("message", text("unknown, or already delivered")),
                        ])
                    })
                    .collect(),
            ),
            NoClientCertificate | UnknownClientCertificate | Forbidden { .. } => (
                MSG_UNAUTHORIZED,
                vec![detail(&[("message", text(&self.to_string()))])],
            ),
            NotEnoughKey {
                requested_bits,
                available_bits,
            } => (
                MSG_NOT_ENOUGH_KEY,
                vec![detail(&[
                    ("requested_bits", json!(requested_bits)),
                    ("available_bits", json!(available_bits)),
                ])],
            ),
            LinkDown { reason } => (MSG_LINK_DOWN, vec![detail(&[("reason", text(reason))])]),
            _ => {
                let msg = match self.status() {
                    503 => "internal error of the KME",
                    404 => "not found",
                    405 => "method not allowed",
                    _ => MSG_MALFORMED,
                };
                (msg, vec![detail(&[("message", text(&self.to_string()))])])
            }
        };
        ErrorBody {
            message: message.to_owned(),
            details: Some(details),
        }
    }

    /// The Error body serialized, ready to send.
    pub fn body_json(&self) -> Vec<u8> {
        // Serializing a struct of strings and JSON values cannot fail; fall back to a fixed body.
        serde_json::to_vec(&self.body())
            .unwrap_or_else(|_| br#"{"message":"internal error of the KME"}"#.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_spec() {
        assert_eq!(
            Etsi014Error::MalformedJson { detail: "x".into() }.status(),
            400
        );
        assert_eq!(Etsi014Error::InvalidParameters(vec![]).status(), 400);
        assert_eq!(
            Etsi014Error::UnknownSae { sae_id: "x".into() }.status(),
            400
        );
        assert_eq!(Etsi014Error::KeysNotFound { key_ids: vec![] }.status(), 400);
        assert_eq!(Etsi014Error::NoClientCertificate.status(), 401);
        assert_eq!(Etsi014Error::UnknownClientCertificate.status(), 401);
        let f = Etsi014Error::Forbidden {
            caller: "sae-c".into(),
            action: "fetch keys issued for sae-b".into(),
        };
        assert_eq!(f.status(), 401);
        assert_eq!(
            Etsi014Error::NotEnoughKey {
                requested_bits: 1,
                available_bits: 0
            }
            .status(),
            503
        );
        assert_eq!(Etsi014Error::LinkDown { reason: "x".into() }.status(), 503);
    }

    #[test]
    fn bodies_carry_a_fixed_message_and_specific_details() {
        let e = Etsi014Error::InvalidParameters(vec![ParamProblem {
            parameter: "size",
            message: "size 100 is not a multiple of 8".into(),
        }]);
        let b = e.body();
        assert_eq!(b.message, MSG_BAD_PARAMETERS);
        let d = &b.details.unwrap()[0];
        assert_eq!(d["parameter"], "size");
        assert_eq!(d["message"], "size 100 is not a multiple of 8");

        let e = Etsi014Error::KeysNotFound {
            key_ids: vec!["a".into(), "b".into()],
        };
        let body: ErrorBody = serde_json::from_slice(&e.body_json()).unwrap();
        assert_eq!(body.message, MSG_KEY_NOT_FOUND);
        assert_eq!(body.details.unwrap().len(), 2);

        let body = Etsi014Error::NoClientCertificate.body();
        assert_eq!(body.message, MSG_UNAUTHORIZED);
        assert!(
            body.details.unwrap()[0]["message"]
                .as_str()
                .unwrap()
                .contains("certificate")
        );
        assert_eq!(
            Etsi014Error::MalformedJson {
                detail: "eof".into()
            }
            .body()
            .message,
            MSG_MALFORMED
        );
    }
}
