//! Distinguished-name comparison (RFC 5280 section 7.1) and name constraints (section 4.2.1.10, 6.1.3 b-c,
//! 6.1.4 g).
//!
//! Names are compared after the RFC 4518 "insignificant space" and case folding that RFC 5280 asks for:
//! string attribute values are decoded from whatever DirectoryString type they use, trimmed, runs of spaces
//! collapsed and case-folded, so `PrintableString "Good  CA"` matches `UTF8String "good ca"`. Values of
//! other types compare by their DER bytes.

use std::fmt;
use std::net::IpAddr;

use const_oid::ObjectIdentifier;
use der::asn1::Any;
use der::{Encode, Tag, Tagged};
use x509_cert::ext::pkix::constraints::name::GeneralSubtrees;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::name::{Name, RelativeDistinguishedName};

/// PKCS #9 emailAddress, which legacy certificates carry in the subject DN.
pub const EMAIL_ADDRESS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.1");

/// One attribute value, normalised for comparison.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum NormValue {
    /// A string type, prepared (trimmed, spaces collapsed, case-folded).
    Text(String),
    /// Anything else: the DER encoding.
    Bytes(Vec<u8>),
}

/// A distinguished name in normalised form: a sequence of RDNs, each a sorted set of (type, value).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NormName(Vec<Vec<(ObjectIdentifier, NormValue)>>);

impl fmt::Debug for NormName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NormName({} RDNs)", self.0.len())
    }
}

impl NormName {
    /// Normalises a name.
    pub fn new(name: &Name) -> Self {
        NormName(name.as_ref().iter().map(norm_rdn).collect())
    }

    /// True for the empty sequence (an absent subject).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when `self` lies within the subtree rooted at `base` (base is a prefix of self).
    pub fn within(&self, base: &NormName) -> bool {
        base.0.len() <= self.0.len() && self.0.iter().zip(base.0.iter()).all(|(a, b)| a == b)
    }

    /// This name with one more RDN appended (for nameRelativeToCRLIssuer).
    pub fn with_rdn(&self, rdn: &RelativeDistinguishedName) -> Self {
        let mut v = self.0.clone();
        v.push(norm_rdn(rdn));
        NormName(v)
    }

    /// The values of every attribute of the given type, as prepared text.
    pub fn text_values(&self, oid: &ObjectIdentifier) -> Vec<String> {
        self.0
            .iter()
            .flatten()
            .filter(|(t, _)| t == oid)
            .filter_map(|(_, v)| match v {
                NormValue::Text(s) => Some(s.clone()),
                NormValue::Bytes(_) => None,
            })
            .collect()
    }
}

fn norm_rdn(rdn: &RelativeDistinguishedName) -> Vec<(ObjectIdentifier, NormValue)> {
    let mut v: Vec<_> = rdn
        .iter()
        .map(|atv| (atv.oid, norm_value(&atv.value)))
        .collect();
    v.sort();
    v
}

fn norm_value(value: &Any) -> NormValue {
    match decode_string(value) {
        Some(s) => NormValue::Text(prepare(&s)),
        None => NormValue::Bytes(value.to_der().unwrap_or_default()),
    }
}

/// Decodes the DirectoryString-ish types to text.
fn decode_string(value: &Any) -> Option<String> {
    let bytes = value.value();
    match value.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::VisibleString => {
            String::from_utf8(bytes.to_vec()).ok()
        }
        // T.61: treat as Latin-1, which covers what real certificates put there.
        Tag::TeletexString => Some(bytes.iter().map(|&b| char::from(b)).collect()),
        Tag::BmpString => {
            if bytes.len() % 2 != 0 {
                return None;
            }
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

/// Trims, collapses internal whitespace to one space and case-folds.
fn prepare(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The kinds of names that constraints apply to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConstrainedName {
    /// A directory name (subject DN or a directoryName in subjectAltName).
    Dn(NormName),
    /// An rfc822Name or a subject emailAddress.
    Email(String),
    /// A dNSName.
    Dns(String),
    /// A URI.
    Uri(String),
    /// An IP address (4 or 16 bytes).
    Ip(Vec<u8>),
    /// A name of a type we do not constrain (otherName, registeredID, ...): only a constraint of the same
    /// type could apply, and we keep none, so these never match nor violate.
    Other,
}

impl ConstrainedName {
    /// Converts a GeneralName.
    pub fn from_general(gn: &GeneralName) -> Self {
        match gn {
            GeneralName::DirectoryName(n) => ConstrainedName::Dn(NormName::new(n)),
            GeneralName::Rfc822Name(s) => ConstrainedName::Email(s.to_string()),
            GeneralName::DnsName(s) => ConstrainedName::Dns(s.to_string()),
            GeneralName::UniformResourceIdentifier(s) => ConstrainedName::Uri(s.to_string()),
            GeneralName::IpAddress(o) => ConstrainedName::Ip(o.as_bytes().to_vec()),
            _ => ConstrainedName::Other,
        }
    }
}

/// One subtree of a name-constraints extension, in a form ready for matching.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subtree {
    /// directoryName: names under this DN.
    Dn(NormName),
    /// rfc822Name: a mailbox, a host, or `.domain`.
    Email(String),
    /// dNSName: the domain and every subdomain.
    Dns(String),
    /// URI: the host, or `.domain`.
    Uri(String),
    /// iPAddress: address and mask of equal length (8 or 32 bytes).
    Ip(Vec<u8>),
    /// A type we cannot evaluate (otherName, x400, EDI, registeredID).
    Unsupported,
}

impl Subtree {
    fn from_general(gn: &GeneralName) -> Self {
        match gn {
            GeneralName::DirectoryName(n) => Subtree::Dn(NormName::new(n)),
            GeneralName::Rfc822Name(s) => Subtree::Email(s.to_string()),
            GeneralName::DnsName(s) => Subtree::Dns(s.to_string()),
            GeneralName::UniformResourceIdentifier(s) => Subtree::Uri(s.to_string()),
            GeneralName::IpAddress(o) => Subtree::Ip(o.as_bytes().to_vec()),
            _ => Subtree::Unsupported,
        }
    }

    /// Converts the subtrees of one extension field.
    pub fn list(subtrees: &GeneralSubtrees) -> Vec<Subtree> {
        subtrees
            .iter()
            .map(|s| Subtree::from_general(&s.base))
            .collect()
    }

    /// True when the subtree is of the same type as the name.
    fn same_type(&self, name: &ConstrainedName) -> bool {
        matches!(
            (self, name),
            (Subtree::Dn(_), ConstrainedName::Dn(_))
                | (Subtree::Email(_), ConstrainedName::Email(_))
                | (Subtree::Dns(_), ConstrainedName::Dns(_))
                | (Subtree::Uri(_), ConstrainedName::Uri(_))
                | (Subtree::Ip(_), ConstrainedName::Ip(_))
        )
    }

    /// True when the name lies in this subtree (false for a name of another type).
    pub fn matches(&self, name: &ConstrainedName) -> bool {
        match (self, name) {
            (Subtree::Dn(base), ConstrainedName::Dn(n)) => n.within(base),
            (Subtree::Email(c), ConstrainedName::Email(n)) => email_matches(c, n),
            (Subtree::Dns(c), ConstrainedName::Dns(n)) => dns_matches(c, n),
            (Subtree::Uri(c), ConstrainedName::Uri(n)) => match uri_host(n) {
                Some(host) => host_matches(c, &host),
                None => false,
            },
            (Subtree::Ip(c), ConstrainedName::Ip(n)) => ip_matches(c, n),
            _ => false,
        }
    }

    /// A human-readable form for error messages and the CLI.
    pub fn describe(&self) -> String {
        match self {
            Subtree::Dn(n) => format!("directoryName ({} RDNs)", n.0.len()),
            Subtree::Email(s) => format!("rfc822Name {s}"),
            Subtree::Dns(s) => format!("dNSName {s}"),
            Subtree::Uri(s) => format!("URI {s}"),
            Subtree::Ip(b) => format!("iPAddress {}", describe_ip_subtree(b)),
            Subtree::Unsupported => "unsupported name form".to_string(),
        }
    }
}

/// Prints an address/mask pair as `addr/prefix`.
pub fn describe_ip_subtree(b: &[u8]) -> String {
    let half = b.len() / 2;
    let (addr, mask) = b.split_at(half);
    let prefix: u32 = mask.iter().map(|m| m.count_ones()).sum();
    let ip = match half {
        4 => <[u8; 4]>::try_from(addr)
            .map(|a| IpAddr::from(a).to_string())
            .ok(),
        16 => <[u8; 16]>::try_from(addr)
            .map(|a| IpAddr::from(a).to_string())
            .ok(),
        _ => None,
    };
    match ip {
        Some(ip) => format!("{ip}/{prefix}"),
        None => hex_bytes(b),
    }
}

fn hex_bytes(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn email_matches(constraint: &str, name: &str) -> bool {
    let Some((_, host)) = name.rsplit_once('@') else {
        return false;
    };
    if constraint.contains('@') {
        // A particular mailbox: local part exact, host case-insensitive.
        let (cl, ch) = constraint.rsplit_once('@').unwrap_or((constraint, ""));
        let (nl, _) = name.rsplit_once('@').unwrap_or((name, ""));
        return cl == nl && ch.eq_ignore_ascii_case(host);
    }
    host_matches(constraint, host)
}

/// `.domain` matches hosts strictly below it; `host` matches that host only.
fn host_matches(constraint: &str, host: &str) -> bool {
    let c = constraint.to_ascii_lowercase();
    let h = host.to_ascii_lowercase();
    if let Some(domain) = c.strip_prefix('.') {
        h.len() > domain.len() + 1 && h.ends_with(&c)
    } else {
        h == c
    }
}

/// A dNSName constraint matches the name and any name made by adding labels on the left.
fn dns_matches(constraint: &str, name: &str) -> bool {
    let c = constraint.trim_end_matches('.').to_ascii_lowercase();
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    if c.is_empty() {
        return true;
    }
    if let Some(domain) = c.strip_prefix('.') {
        return n.ends_with(&c) && n.len() > domain.len() + 1;
    }
    n == c || n.ends_with(&format!(".{c}"))
}

/// The host part of a URI, lower-cased, without userinfo and port; None when the URI has no authority.
fn uri_host(uri: &str) -> Option<String> {
    let (_, rest) = uri.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        hostport.split(':').next()?
    };
    if host.is_empty() {
        None
    } else {
        Some(host.to_ascii_lowercase())
    }
}

fn ip_matches(constraint: &[u8], addr: &[u8]) -> bool {
    if constraint.len() != addr.len() * 2 {
        return false;
    }
    let (base, mask) = constraint.split_at(addr.len());
    addr.iter()
        .zip(base.iter().zip(mask.iter()))
        .all(|(a, (b, m))| a & m == b & m)
}

/// The name-constraints state of RFC 5280 6.1.2 (b)-(c): permitted subtrees are kept as one list per
/// certificate that set them (a name must lie in one subtree of its type in each list that has subtrees of
/// that type, which is exactly the intersection), excluded subtrees as their union.
#[derive(Clone, Debug, Default)]
pub struct NameConstraintState {
    permitted: Vec<Vec<Subtree>>,
    excluded: Vec<Subtree>,
}

/// Why a name fell outside the constraints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameViolation {
    /// The name lies in an excluded subtree.
    Excluded(String),
    /// The name lies outside every permitted subtree of its type.
    NotPermitted(String),
}

impl NameConstraintState {
    /// Adds a certificate's name constraints (6.1.4 g).
    pub fn add(&mut self, permitted: Option<&GeneralSubtrees>, excluded: Option<&GeneralSubtrees>) {
        if let Some(p) = permitted {
            self.permitted.push(Subtree::list(p));
        }
        if let Some(e) = excluded {
            self.excluded.extend(Subtree::list(e));
        }
    }

    /// Adds subtrees given directly (initial constraints of the relying party).
    pub fn add_subtrees(&mut self, permitted: Option<Vec<Subtree>>, excluded: Vec<Subtree>) {
        if let Some(p) = permitted {
            self.permitted.push(p);
        }
        self.excluded.extend(excluded);
    }

    /// True when no constraint has been set.
    pub fn is_empty(&self) -> bool {
        self.permitted.is_empty() && self.excluded.is_empty()
    }

    /// Checks one name.
    pub fn check(&self, name: &ConstrainedName) -> Result<(), NameViolation> {
        if matches!(name, ConstrainedName::Other) {
            return Ok(());
        }
        if let Some(ex) = self.excluded.iter().find(|s| s.matches(name)) {
            return Err(NameViolation::Excluded(ex.describe()));
        }
        for set in &self.permitted {
            let of_type: Vec<&Subtree> = set.iter().filter(|s| s.same_type(name)).collect();
            if !of_type.is_empty() && !of_type.iter().any(|s| s.matches(name)) {
                return Err(NameViolation::NotPermitted(
                    of_type
                        .iter()
                        .map(|s| s.describe())
                        .collect::<Vec<_>>()
                        .join(", "),
                ));
            }
            // A URI without a host cannot satisfy URI constraints.
            if let ConstrainedName::Uri(u) = name {
                if uri_host(u).is_none() && !of_type.is_empty() {
                    return Err(NameViolation::NotPermitted(format!("URI without host {u}")));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_constraints_follow_label_boundaries() {
        assert!(dns_matches("example.com", "example.com"));
        assert!(dns_matches("example.com", "a.b.example.com"));
        assert!(!dns_matches("example.com", "badexample.com"));
        assert!(!dns_matches(".example.com", "example.com"));
        assert!(dns_matches(".example.com", "www.example.com"));
    }

    #[test]
    fn email_constraints_cover_mailbox_host_and_domain() {
        assert!(email_matches("alice@example.com", "alice@EXAMPLE.com"));
        assert!(!email_matches("alice@example.com", "bob@example.com"));
        assert!(email_matches("example.com", "bob@example.com"));
        assert!(!email_matches("example.com", "bob@mail.example.com"));
        assert!(email_matches(".example.com", "bob@mail.example.com"));
        assert!(!email_matches(".example.com", "bob@example.com"));
    }

    #[test]
    fn uri_and_ip_constraints() {
        assert_eq!(
            uri_host("http://user@Host.Example.com:80/x").as_deref(),
            Some("host.example.com")
        );
        assert_eq!(uri_host("urn:uuid:1234"), None);
        assert!(ip_matches(&[10, 1, 0, 0, 255, 255, 0, 0], &[10, 1, 2, 3]));
        assert!(!ip_matches(&[10, 1, 0, 0, 255, 255, 0, 0], &[10, 2, 2, 3]));
        assert!(!ip_matches(&[10, 1, 0, 0, 255, 255, 0, 0], &[0; 16]));
    }

    #[test]
    fn prepared_strings_ignore_case_and_spacing() {
        assert_eq!(prepare("  Good   CA "), "good ca");
    }
}
