//! RFC 7512 PKCS#11 URIs: `pkcs11:token=qsi-ca;object=root-2026;type=private`.
//!
//! Only the attributes that name a key are interpreted (`token`, `serial`, `object`, `id`, `type`,
//! and the query attributes `pin-source`, `module-path`); others are accepted and kept, as RFC 7512
//! asks a consumer to ignore what it does not know... except that an unknown *path* attribute narrows the
//! match, so we refuse it rather than match too much.

use std::fmt;

use crate::error::{Error, Result};

/// A parsed PKCS#11 URI. Attribute values are decoded (percent-escapes resolved).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `token=`: token label.
    pub token: Option<String>,
    /// `serial=`: token serial number.
    pub serial: Option<String>,
    /// `manufacturer=`: token manufacturer.
    pub manufacturer: Option<String>,
    /// `model=`: token model.
    pub model: Option<String>,
    /// `object=`: object label (`CKA_LABEL`).
    pub object: Option<String>,
    /// `id=`: object id (`CKA_ID`), raw bytes.
    pub id: Option<Vec<u8>>,
    /// `type=`: `private`, `public`, `secret`, `cert` or `data`.
    pub object_type: Option<String>,
    /// `?pin-source=`: where to read the PIN (a file path or URI).
    pub pin_source: Option<String>,
    /// `?module-path=`: the PKCS#11 module to load.
    pub module_path: Option<String>,
}

const PATH_ATTRS: &[&str] = &[
    "token",
    "serial",
    "manufacturer",
    "model",
    "object",
    "id",
    "type",
    "library-manufacturer",
    "library-description",
    "library-version",
    "slot-manufacturer",
    "slot-description",
    "slot-id",
];

impl Pkcs11Uri {
    /// Parses a `pkcs11:` URI.
    pub fn parse(uri: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidUri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        let rest = uri
            .strip_prefix("pkcs11:")
            .or_else(|| uri.strip_prefix("PKCS11:"))
            .ok_or_else(|| bad("must start with `pkcs11:`"))?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut out = Pkcs11Uri::default();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| bad("a path attribute lacks `=`"))?;
            let name = name.to_ascii_lowercase();
            if !PATH_ATTRS.contains(&name.as_str()) {
                return Err(bad(&format!("unknown path attribute `{name}`")));
            }
            let bytes = decode(value).map_err(|r| bad(&r))?;
            let text = || {
                String::from_utf8(bytes.clone()).map_err(|_| bad("attribute value is not UTF-8"))
            };
            let slot = match name.as_str() {
                "token" => &mut out.token,
                "serial" => &mut out.serial,
                "manufacturer" => &mut out.manufacturer,
                "model" => &mut out.model,
                "object" => &mut out.object,
                "type" => {
                    let t = text()?;
                    if !["private", "public", "secret", "cert", "data"].contains(&t.as_str()) {
                        return Err(bad("type must be private, public, secret, cert or data"));
                    }
                    if out.object_type.replace(t).is_some() {
                        return Err(bad("attribute `type` given twice"));
                    }
                    continue;
                }
                "id" => {
                    if out.id.replace(bytes).is_some() {
                        return Err(bad("attribute `id` given twice"));
                    }
                    continue;
                }
                _ => continue, // library-* and slot-*: accepted, not used to select
            };
            if slot.replace(text()?).is_some() {
                return Err(bad(&format!("attribute `{name}` given twice")));
            }
        }
        for attr in query.unwrap_or("").split('&').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| bad("a query attribute lacks `=`"))?;
            let value = String::from_utf8(decode(value).map_err(|r| bad(&r))?)
                .map_err(|_| bad("query value is not UTF-8"))?;
            match name.to_ascii_lowercase().as_str() {
                "pin-source" => out.pin_source = Some(value),
                "module-path" => out.module_path = Some(value),
                "pin-value" => {
                    return Err(bad(
                        "pin-value puts a PIN in clear into a URI; use pin-source",
                    ));
                }
                _ => {} // module-name and vendor query attributes: ignored
            }
        }
        Ok(out)
    }
}

fn decode(value: &str) -> std::result::Result<Vec<u8>, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or("truncated percent-escape")?;
                let hex = std::str::from_utf8(hex).map_err(|_| "bad percent-escape")?;
                out.push(
                    u8::from_str_radix(hex, 16)
                        .map_err(|_| format!("bad percent-escape %{hex}"))?,
                );
                i += 3;
            }
            b if b.is_ascii_control() || b == b' ' => {
                return Err("unescaped space or control character".into());
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

fn encode_into(out: &mut String, bytes: &[u8], escape_all: bool) {
    for &b in bytes {
        let keep = !escape_all && (b.is_ascii_alphanumeric() || b"-._~:[]@!$'()*+,".contains(&b));
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

impl fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::from("pkcs11:");
        let mut parts: Vec<String> = Vec::new();
        let text_attrs = [
            ("token", &self.token),
            ("manufacturer", &self.manufacturer),
            ("model", &self.model),
            ("serial", &self.serial),
            ("object", &self.object),
        ];
        for (name, value) in text_attrs {
            if let Some(v) = value {
                let mut p = format!("{name}=");
                encode_into(&mut p, v.as_bytes(), false);
                parts.push(p);
            }
        }
        if let Some(id) = &self.id {
            let mut p = String::from("id=");
            encode_into(&mut p, id, true);
            parts.push(p);
        }
        if let Some(t) = &self.object_type {
            parts.push(format!("type={t}"));
        }
        s.push_str(&parts.join(";"));
        let mut query: Vec<String> = Vec::new();
        if let Some(v) = &self.pin_source {
            let mut p = String::from("pin-source=");
            encode_into(&mut p, v.as_bytes(), false);
            query.push(p);
        }
        if let Some(v) = &self.module_path {
            let mut p = String::from("module-path=");
            encode_into(&mut p, v.as_bytes(), false);
            query.push(p);
        }
        if !query.is_empty() {
            s.push('?');
            s.push_str(&query.join("&"));
        }
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc7512_examples() {
        // RFC 7512 section 7 examples (the ones that name objects).
        let u = Pkcs11Uri::parse("pkcs11:object=my-pubkey;type=public").unwrap();
        assert_eq!(u.object.as_deref(), Some("my-pubkey"));
        assert_eq!(u.object_type.as_deref(), Some("public"));
        let u = Pkcs11Uri::parse(
            "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;model=1.0;\
             object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial=?pin-source=file:/etc/token_pin",
        )
        .unwrap();
        assert_eq!(u.token.as_deref(), Some("The Software PKCS#11 Softtoken"));
        assert_eq!(u.manufacturer.as_deref(), Some("Snake Oil, Inc."));
        assert_eq!(
            u.id.as_deref(),
            Some(&[0x69, 0x95, 0x3e, 0x5c, 0xf4, 0xbd, 0xec, 0x91][..])
        );
        assert_eq!(u.serial.as_deref(), Some(""));
        assert_eq!(u.pin_source.as_deref(), Some("file:/etc/token_pin"));
        let u = Pkcs11Uri::parse("pkcs11:token=Software%20PKCS%2311%20softtoken;object=my%20key?module-path=/mnt/libmypkcs11.so.1").unwrap();
        assert_eq!(u.module_path.as_deref(), Some("/mnt/libmypkcs11.so.1"));
        assert_eq!(u.object.as_deref(), Some("my key"));
    }

    #[test]
    fn formats_and_reparses() {
        let u = Pkcs11Uri {
            token: Some("qsi ca;1".into()),
            object: Some("root-2026".into()),
            id: Some(vec![0, 1, 0xfe]),
            object_type: Some("private".into()),
            ..Default::default()
        };
        let s = u.to_string();
        assert_eq!(
            s,
            "pkcs11:token=qsi%20ca%3B1;object=root-2026;id=%00%01%FE;type=private"
        );
        assert_eq!(Pkcs11Uri::parse(&s).unwrap(), u);
    }

    #[test]
    fn rejects_what_would_match_wrongly() {
        for bad in [
            "object=x",
            "pkcs11:object",
            "pkcs11:object=a;object=b",
            "pkcs11:type=key",
            "pkcs11:colour=red",
            "pkcs11:id=%zz",
            "pkcs11:id=%0",
            "pkcs11:object=x?pin-value=1234",
        ] {
            assert!(Pkcs11Uri::parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
