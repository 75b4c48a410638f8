//! The QKD key-exchange group: one of our hybrid groups with a QKD key folded into its shared secret.
//!
//! rustls has no external-PSK support, so the QKD key enters the handshake as a key-exchange group of our
//! own under a private-use codepoint (RFC 8446 §4.2.7 reserves 0xFE00-0xFEFF), one per base group:
//!
//! | group | base | codepoint |
//! |---|---|---|
//! | X25519MLKEM768+QKD | X25519MLKEM768 (0x11EC) | 0xFEEC |
//! | SECP256R1MLKEM768+QKD | SECP256R1MLKEM768 (0x11EB) | 0xFEEB |
//! | MLKEM1024+QKD | MLKEM1024 (0x0202) | 0xFE02 |
//!
//! Client key share (the wire format; lengths are single bytes):
//!
//! ```text
//! hybrid_share  (exactly the base group's client share length)
//! u8 sae_len    (1..=128)   master SAE ID, printable ASCII
//! u8 id_len     (1..=128)   key_ID, printable ASCII
//! ```
//!
//! with no trailing bytes. The server's share is the base group's server share, unchanged. Both sides'
//! shared secret is `hybrid_secret || qkd_key`, which TLS 1.3 feeds into HKDF-Extract as its (EC)DHE input;
//! the IDs sit in the ClientHello and so in the transcript both sides sign. docs/qkd-construction.md has
//! the argument.
//!
//! # Per-connection state
//! rustls holds key-exchange groups as `&'static dyn SupportedKxGroup`, yet each connection needs its own
//! key (client) and must learn which key it used (both sides). So the group objects are *cells*: allocated
//! once, kept in a free list, and leased to one connection at a time. A lease ([`QkdHandshake`]) is held
//! by the connection's config (through its peer verifier) and by the tunnel code; when both let go, the
//! cell is cleared and returned. Cells in existence never exceed the peak number of connections whose
//! configs are alive at once.
//!
//! # What happens to the key when the group is not chosen
//! The client takes its key when the config is built, so `prefer` can fall back before the dial if no key
//! is there (no race with the reserve running dry). The key_ID goes on the wire when rustls builds the
//! ClientHello (`start`). If the server then answers with a HelloRetryRequest for the plain hybrid group
//! (it does not offer ours), that one key is written off: its ID was on the wire, so it is never reused,
//! and [`QkdHandshake::wasted`] reports it for the logs and metrics. No further key is taken: the retry
//! uses the plain group. A config dropped before its ClientHello was built hands its key back to the
//! source ([`crate::qkd::QkdKeySource::give_back`]). The server never consumes a key unless the client's
//! hybrid share was well formed and the ID was announced and unused.

use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::crypto::{ActiveKeyExchange, CompletedKeyExchange, SharedSecret, SupportedKxGroup};
use rustls::ffdhe_groups::FfdheGroup;
use rustls::{NamedGroup, ProtocolVersion};
use zeroize::Zeroizing;

use super::{
    MAX_ID_LEN, MAX_KEY_LEN, MIN_KEY_LEN, QkdKey, QkdKeyLookup, QkdKeyRef, QkdKeySource,
    QkdKxError, lock,
};
use crate::config::KxGroup;
use crate::tls::kx_group;

/// All base groups, in our preference order.
const BASES: [KxGroup; 3] = [
    KxGroup::X25519MlKem768,
    KxGroup::Secp256r1MlKem768,
    KxGroup::MlKem1024,
];

/// The private-use codepoint of the QKD variant of `base`.
pub fn qkd_codepoint(base: KxGroup) -> u16 {
    match base {
        KxGroup::X25519MlKem768 => 0xFEEC,
        KxGroup::Secp256r1MlKem768 => 0xFEEB,
        KxGroup::MlKem1024 => 0xFE02,
    }
}

/// The rustls name of the QKD variant of `base`.
pub fn qkd_named_group(base: KxGroup) -> NamedGroup {
    NamedGroup::from(qkd_codepoint(base))
}

/// The base group of a QKD group name, `None` for any other group.
pub fn qkd_base(named: NamedGroup) -> Option<KxGroup> {
    BASES
        .into_iter()
        .find(|b| qkd_codepoint(*b) == u16::from(named))
}

/// The name used in logs, metrics and status for the QKD variant of `base`.
pub fn qkd_group_name(base: KxGroup) -> String {
    format!("{}+QKD", base.name())
}

/// Length of the base group's client key share (fixed by the group).
pub fn hybrid_client_share_len(base: KxGroup) -> usize {
    match base {
        KxGroup::X25519MlKem768 => 1184 + 32,
        KxGroup::Secp256r1MlKem768 => 65 + 1184,
        KxGroup::MlKem1024 => 1568,
    }
}

fn check_id(what: &str, id: &str) -> Result<(), QkdKxError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(QkdKxError::Malformed(format!(
            "{what} must be 1 to {MAX_ID_LEN} bytes, got {}",
            id.len()
        )));
    }
    if !id.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(QkdKxError::Malformed(format!(
            "{what} must be printable ASCII without spaces"
        )));
    }
    Ok(())
}

/// Builds the client share: `hybrid || u8 len || master SAE ID || u8 len || key_ID`.
pub fn encode_client_share(
    hybrid: &[u8],
    master_sae_id: &str,
    key_id: &str,
) -> Result<Vec<u8>, QkdKxError> {
    check_id("master SAE ID", master_sae_id)?;
    check_id("key_ID", key_id)?;
    let mut out = Vec::with_capacity(hybrid.len() + 2 + master_sae_id.len() + key_id.len());
    out.extend_from_slice(hybrid);
    for id in [master_sae_id, key_id] {
        // check_id bounds the length to MAX_ID_LEN (< 256).
        out.push(u8::try_from(id.len()).map_err(|_| QkdKxError::Malformed("ID too long".into()))?);
        out.extend_from_slice(id.as_bytes());
    }
    Ok(out)
}

/// A parsed client share: the base group's share and the two IDs.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientShare<'a> {
    /// The base group's client share.
    pub hybrid: &'a [u8],
    /// Master SAE ID.
    pub master_sae_id: &'a str,
    /// key_ID.
    pub key_id: &'a str,
}

/// Parses a client share for the QKD variant of `base`; refuses wrong lengths and trailing bytes.
pub fn decode_client_share(base: KxGroup, share: &[u8]) -> Result<ClientShare<'_>, QkdKxError> {
    let n = hybrid_client_share_len(base);
    let (hybrid, mut rest) = share.split_at_checked(n).ok_or_else(|| {
        QkdKxError::Malformed(format!(
            "share of {} bytes is shorter than the {} share ({n} bytes)",
            share.len(),
            base.name()
        ))
    })?;
    let mut ids = [""; 2];
    for (slot, what) in ids.iter_mut().zip(["master SAE ID", "key_ID"]) {
        let (&len, tail) = rest
            .split_first()
            .ok_or_else(|| QkdKxError::Malformed(format!("{what} missing")))?;
        let (id, tail) = tail
            .split_at_checked(usize::from(len))
            .ok_or_else(|| QkdKxError::Malformed(format!("{what} truncated")))?;
        let id = std::str::from_utf8(id)
            .map_err(|_| QkdKxError::Malformed(format!("{what} is not ASCII")))?;
        check_id(what, id)?;
        *slot = id;
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(QkdKxError::Malformed(format!(
            "{} trailing bytes after the key_ID",
            rest.len()
        )));
    }
    Ok(ClientShare {
        hybrid,
        master_sae_id: ids[0],
        key_id: ids[1],
    })
}

fn check_key(key: &QkdKey) -> Result<(), QkdKxError> {
    if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&key.key.len()) {
        return Err(QkdKxError::Malformed(format!(
            "QKD key {} is {} bytes; {MIN_KEY_LEN} to {MAX_KEY_LEN} are accepted",
            key.key_id,
            key.key.len()
        )));
    }
    Ok(())
}

/// `hybrid || qkd`, as one secret.
fn concat(hybrid: &SharedSecret, qkd: &[u8]) -> SharedSecret {
    let h = hybrid.secret_bytes();
    let mut v = Vec::with_capacity(h.len() + qkd.len());
    v.extend_from_slice(h);
    v.extend_from_slice(qkd);
    // SharedSecret zeroizes its buffer on drop.
    SharedSecret::from(v)
}

fn tls_error(e: QkdKxError) -> rustls::Error {
    rustls::Error::General(format!("QKD key exchange: {e}"))
}

/// What a connection did with its QKD group.
#[derive(Debug, Clone, Default)]
enum Outcome {
    /// Nothing yet.
    #[default]
    Idle,
    /// Client: the key_ID went out in the ClientHello.
    Offered(QkdKeyRef),
    /// The QKD key entered the key schedule.
    Used(QkdKeyRef),
    /// The group refused (server: bad share or ID; client: bad server share).
    Failed(QkdKxError),
}

/// Which side a connection's state serves.
enum Role {
    /// Dialer: the key taken for this connection (until `start` moves it into the ClientHello).
    Client {
        key: Mutex<Option<QkdKey>>,
        source: Arc<dyn QkdKeySource>,
    },
    /// Acceptor: where keys are found.
    Server { lookup: Arc<dyn QkdKeyLookup> },
}

/// One connection's QKD state, reachable from the leased cells.
struct ConnState {
    role: Role,
    outcome: Mutex<Outcome>,
}

impl ConnState {
    fn set(&self, o: Outcome) {
        *lock(&self.outcome) = o;
    }
}

impl Drop for ConnState {
    fn drop(&mut self) {
        // A key whose ID never went on the wire goes back to the source.
        if let Role::Client { key, source } = &mut self.role {
            let k = key.get_mut().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(k) = k {
                source.give_back(k);
            }
        }
    }
}

/// A `'static` group object, leased to one connection at a time.
struct Cell {
    base: KxGroup,
    name: NamedGroup,
    state: Mutex<Option<Arc<ConnState>>>,
}

impl fmt::Debug for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&qkd_group_name(self.base))
    }
}

/// Cells not leased to any connection.
static FREE: Mutex<Vec<&'static Cell>> = Mutex::new(Vec::new());
/// How many cells were ever allocated (they live for the process).
static ALLOCATED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Number of cells allocated so far (bounded by the peak number of live QKD configs).
pub fn cells_allocated() -> usize {
    ALLOCATED.load(std::sync::atomic::Ordering::Relaxed)
}

fn lease_cell(base: KxGroup, state: &Arc<ConnState>) -> &'static Cell {
    let free = {
        let mut f = lock(&FREE);
        f.iter()
            .position(|c| c.base == base)
            .map(|i| f.swap_remove(i))
    };
    let cell = free.unwrap_or_else(|| {
        ALLOCATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::leak(Box::new(Cell {
            base,
            name: qkd_named_group(base),
            state: Mutex::new(None),
        }))
    });
    *lock(&cell.state) = Some(state.clone());
    cell
}

/// The lease on one connection's cells; dropping the last handle clears and frees them.
struct Lease {
    cells: Vec<&'static Cell>,
    state: Arc<ConnState>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        for c in self.cells.drain(..) {
            *lock(&c.state) = None;
            lock(&FREE).push(c);
        }
    }
}

/// One connection's QKD handshake: the groups to put in its provider, and afterwards which key it used.
///
/// Keep it (or the config built from it) alive until the handshake is over; clones share the state.
#[derive(Clone)]
pub struct QkdHandshake {
    lease: Arc<Lease>,
}

impl fmt::Debug for QkdHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QkdHandshake")
            .field("groups", &self.lease.cells)
            .field("outcome", &*lock(&self.lease.state.outcome))
            .finish()
    }
}

impl QkdHandshake {
    /// Dialer side: the QKD variants of `bases` carrying `key` (taken from `source`, which gets it back if
    /// no ClientHello is ever built).
    pub fn client(bases: &[KxGroup], key: QkdKey, source: Arc<dyn QkdKeySource>) -> Self {
        Self::new(
            bases,
            Role::Client {
                key: Mutex::new(Some(key)),
                source,
            },
        )
    }

    /// Acceptor side: the QKD variants of `bases`, finding keys through `lookup`.
    pub fn server(bases: &[KxGroup], lookup: Arc<dyn QkdKeyLookup>) -> Self {
        Self::new(bases, Role::Server { lookup })
    }

    fn new(bases: &[KxGroup], role: Role) -> Self {
        let state = Arc::new(ConnState {
            role,
            outcome: Mutex::new(Outcome::Idle),
        });
        let mut cells = Vec::new();
        for b in bases {
            if !cells.iter().any(|c: &&Cell| c.base == *b) {
                cells.push(lease_cell(*b, &state));
            }
        }
        QkdHandshake {
            lease: Arc::new(Lease { cells, state }),
        }
    }

    /// The groups to list in the connection's provider (QKD variants, in the order given).
    pub fn groups(&self) -> Vec<&'static dyn SupportedKxGroup> {
        self.lease
            .cells
            .iter()
            .map(|c| *c as &'static dyn SupportedKxGroup)
            .collect()
    }

    /// The key that entered this connection's key schedule, if the QKD group was negotiated.
    pub fn used(&self) -> Option<QkdKeyRef> {
        match &*lock(&self.lease.state.outcome) {
            Outcome::Used(r) => Some(r.clone()),
            _ => None,
        }
    }

    /// Dialer side: a key whose ID was sent but which never entered a key schedule (the server chose
    /// another group). It is written off, never reused.
    pub fn wasted(&self) -> Option<QkdKeyRef> {
        match &*lock(&self.lease.state.outcome) {
            Outcome::Offered(r) => Some(r.clone()),
            _ => None,
        }
    }

    /// Why the QKD group refused the handshake, if it did (for logs and the metric label).
    pub fn failure(&self) -> Option<QkdKxError> {
        match &*lock(&self.lease.state.outcome) {
            Outcome::Failed(e) => Some(e.clone()),
            _ => None,
        }
    }

    /// After the handshake: the QKD key was used, and the SAE at the other end of it is `expected_sae`
    /// (the `sae_id` of the peer entry the certificate matched). On the acceptor that is the master SAE
    /// named in the share; on the dialer, the slave SAE the key was shared with.
    pub fn check_peer_sae(&self, expected_sae: &str) -> Result<QkdKeyRef, QkdKxError> {
        let used = self.used().ok_or(QkdKxError::NotUsed)?;
        let named = match self.lease.state.role {
            Role::Client { .. } => &used.slave_sae_id,
            Role::Server { .. } => &used.master_sae_id,
        };
        if named != expected_sae {
            return Err(QkdKxError::WrongSae {
                expected: expected_sae.to_string(),
                named: named.clone(),
            });
        }
        Ok(used)
    }

    /// An opaque token that keeps this connection's cells leased; [`crate::tls`] hands it to the config.
    pub(crate) fn keep_alive(&self) -> Arc<dyn std::any::Any + Send + Sync> {
        self.lease.clone()
    }
}

impl Cell {
    fn current(&self) -> Result<Arc<ConnState>, rustls::Error> {
        lock(&self.state).clone().ok_or_else(|| {
            rustls::Error::General(
                "QKD group used outside the connection it was leased to (config outlived its handshake state)"
                    .into(),
            )
        })
    }
}

impl SupportedKxGroup for Cell {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        let st = self.current()?;
        let Role::Client { key, .. } = &st.role else {
            return Err(tls_error(QkdKxError::Store(
                "the acceptor's QKD group cannot start a key exchange".into(),
            )));
        };
        let key = lock(key).take().ok_or_else(|| {
            tls_error(QkdKxError::NoKey(
                "this connection's QKD key was already offered".into(),
            ))
        })?;
        check_key(&key).map_err(tls_error)?;
        let inner = kx_group(self.base).start()?;
        let share = encode_client_share(inner.pub_key(), &key.master_sae_id, &key.key_id)
            .map_err(tls_error)?;
        let used = QkdKeyRef::from(&key);
        st.set(Outcome::Offered(used.clone()));
        Ok(Box::new(ClientKx {
            name: self.name,
            inner,
            share,
            key: key.key,
            used,
            state: st,
        }))
    }

    fn start_and_complete(
        &self,
        peer_pub_key: &[u8],
    ) -> Result<CompletedKeyExchange, rustls::Error> {
        let st = self.current()?;
        let Role::Server { lookup } = &st.role else {
            return Err(tls_error(QkdKxError::Store(
                "the dialer's QKD group cannot answer a key share".into(),
            )));
        };
        let fail = |e: QkdKxError| {
            st.set(Outcome::Failed(e.clone()));
            tls_error(e)
        };
        let share = decode_client_share(self.base, peer_pub_key).map_err(fail)?;
        // The hybrid part first: a share it refuses costs the pool nothing.
        let inner = kx_group(self.base).start_and_complete(share.hybrid)?;
        let key = lookup
            .take(share.master_sae_id, share.key_id)
            .map_err(fail)?;
        if key.master_sae_id != share.master_sae_id || key.key_id != share.key_id {
            return Err(fail(QkdKxError::Store(format!(
                "lookup for {}/{} returned key {}/{}",
                share.master_sae_id, share.key_id, key.master_sae_id, key.key_id
            ))));
        }
        check_key(&key).map_err(fail)?;
        let secret = concat(&inner.secret, &key.key);
        st.set(Outcome::Used(QkdKeyRef::from(&key)));
        Ok(CompletedKeyExchange {
            group: self.name,
            pub_key: inner.pub_key,
            secret,
        })
    }

    fn ffdhe_group(&self) -> Option<FfdheGroup<'static>> {
        None
    }

    fn name(&self) -> NamedGroup {
        self.name
    }

    fn usable_for_version(&self, version: ProtocolVersion) -> bool {
        version == ProtocolVersion::TLSv1_3
    }
}

/// The dialer's key exchange in flight: the base group's, plus the QKD key named in the share.
struct ClientKx {
    name: NamedGroup,
    inner: Box<dyn ActiveKeyExchange>,
    share: Vec<u8>,
    key: Zeroizing<Vec<u8>>,
    used: QkdKeyRef,
    state: Arc<ConnState>,
}

impl ActiveKeyExchange for ClientKx {
    fn complete(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, rustls::Error> {
        let inner = self.inner.complete(peer_pub_key).inspect_err(|e| {
            self.state
                .set(Outcome::Failed(QkdKxError::Malformed(format!(
                    "server share refused by {}: {e}",
                    self.name.as_str().unwrap_or("the base group")
                ))))
        })?;
        let secret = concat(&inner, &self.key);
        self.state.set(Outcome::Used(self.used.clone()));
        Ok(secret)
    }

    fn pub_key(&self) -> &[u8] {
        &self.share
    }

    fn group(&self) -> NamedGroup {
        self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qkd::{MemoryKeyLookup, MemoryKeySource, memory_link};

    fn pair(n: usize) -> (Arc<MemoryKeySource>, Arc<MemoryKeyLookup>) {
        let (s, l) = memory_link("sae-a", "sae-b", n, 32).unwrap();
        (Arc::new(s), Arc::new(l))
    }

    fn client_for(base: KxGroup, source: &Arc<MemoryKeySource>) -> QkdHandshake {
        let key = source.take().unwrap();
        QkdHandshake::client(&[base], key, source.clone())
    }

    #[test]
    fn codepoints_are_private_use_and_distinct() {
        let mut seen = Vec::new();
        for b in BASES {
            let c = qkd_codepoint(b);
            assert!((0xFE00..=0xFEFF).contains(&c));
            assert_eq!(qkd_base(qkd_named_group(b)), Some(b));
            assert_eq!(qkd_base(kx_group(b).name()), None);
            assert!(!seen.contains(&c));
            seen.push(c);
            // The fixed share length matches what the group actually produces.
            let kx = kx_group(b).start().unwrap();
            assert_eq!(kx.pub_key().len(), hybrid_client_share_len(b), "{b}");
        }
    }

    #[test]
    fn share_roundtrip_and_refusals() {
        let base = KxGroup::X25519MlKem768;
        let hybrid = vec![7u8; hybrid_client_share_len(base)];
        let s = encode_client_share(&hybrid, "sae-a", "0f6e-id").unwrap();
        assert_eq!(s.len(), hybrid.len() + 1 + 5 + 1 + 7);
        let d = decode_client_share(base, &s).unwrap();
        assert_eq!(
            (d.hybrid, d.master_sae_id, d.key_id),
            (&hybrid[..], "sae-a", "0f6e-id")
        );

        let mut trailing = s.clone();
        trailing.push(0);
        assert!(decode_client_share(base, &trailing).is_err());
        assert!(decode_client_share(base, &s[..s.len() - 1]).is_err());
        assert!(decode_client_share(base, &s[..hybrid.len()]).is_err());
        assert!(decode_client_share(base, &s[..100]).is_err());
        // Wrong base group: the hybrid length no longer lines up.
        assert!(decode_client_share(KxGroup::MlKem1024, &s).is_err());
        let mut zero_len = hybrid.clone();
        zero_len.extend_from_slice(&[0, 1, b'x']);
        assert!(decode_client_share(base, &zero_len).is_err());
        let mut bad_char = hybrid.clone();
        bad_char.extend_from_slice(&[1, b' ', 1, b'x']);
        assert!(decode_client_share(base, &bad_char).is_err());
        assert!(encode_client_share(&hybrid, "", "x").is_err());
        assert!(encode_client_share(&hybrid, "a", &"x".repeat(MAX_ID_LEN + 1)).is_err());
    }

    proptest::proptest! {
        /// Any byte string parses or is refused (never a panic), and what parses re-encodes to itself.
        #[test]
        fn share_parser_is_total_and_exact(
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            base_i in 0usize..3,
        ) {
            let base = BASES[base_i];
            let mut data = vec![3u8; hybrid_client_share_len(base)];
            data.extend_from_slice(&tail);
            if let Ok(s) = decode_client_share(base, &data) {
                let wire = encode_client_share(s.hybrid, s.master_sae_id, s.key_id).unwrap();
                proptest::prop_assert_eq!(wire, data);
            }
            let _ = decode_client_share(base, &tail);
        }

        /// Every valid pair of IDs round-trips.
        #[test]
        fn share_roundtrip(sae in "[!-~]{1,128}", id in "[!-~]{1,128}") {
            let base = KxGroup::Secp256r1MlKem768;
            let hybrid = vec![9u8; hybrid_client_share_len(base)];
            let wire = encode_client_share(&hybrid, &sae, &id).unwrap();
            let d = decode_client_share(base, &wire).unwrap();
            proptest::prop_assert_eq!((d.master_sae_id, d.key_id), (sae.as_str(), id.as_str()));
        }
    }

    /// The group's output is exactly the hybrid secret followed by the QKD key, on each side. The other
    /// side of each exchange is the plain base group, so the hybrid part is computed independently of ours.
    #[test]
    fn secret_is_hybrid_then_qkd_key() {
        for base in BASES {
            let (source, lookup) = pair(2);
            // Server side: a plain base-group client builds the hybrid share; we wrap it with IDs.
            let k1 = source.take().unwrap();
            let plain_client = kx_group(base).start().unwrap();
            let share =
                encode_client_share(plain_client.pub_key(), &k1.master_sae_id, &k1.key_id).unwrap();
            let server = QkdHandshake::server(&[base], lookup.clone());
            let done = server.groups()[0].start_and_complete(&share).unwrap();
            assert_eq!(done.group, qkd_named_group(base));
            let hybrid = plain_client.complete(&done.pub_key).unwrap();
            let mut want = hybrid.secret_bytes().to_vec();
            want.extend_from_slice(&k1.key);
            assert_eq!(done.secret.secret_bytes(), &want[..], "{base} server");
            assert_eq!(server.used().unwrap().key_id, k1.key_id);

            // Client side: a plain base-group server answers the hybrid part of our share.
            let k2 = source.take().unwrap();
            source.give_back(k2.clone());
            let client = client_for(base, &source);
            let active = client.groups()[0].start().unwrap();
            assert_eq!(active.group(), qkd_named_group(base));
            let parsed = decode_client_share(base, active.pub_key()).unwrap();
            assert_eq!(parsed.key_id, k2.key_id);
            let plain_server = kx_group(base).start_and_complete(parsed.hybrid).unwrap();
            let got = active.complete(&plain_server.pub_key).unwrap();
            let mut want = plain_server.secret.secret_bytes().to_vec();
            want.extend_from_slice(&k2.key);
            assert_eq!(got.secret_bytes(), &want[..], "{base} client");
            assert_eq!(client.used().unwrap().key_id, k2.key_id);
        }
    }

    #[test]
    fn unannounced_and_used_ids_fail_without_consuming() {
        let base = KxGroup::X25519MlKem768;
        let (source, lookup) = pair(2);
        // A client whose key the server never received.
        let stray = crate::qkd::random_key("sae-a", "sae-b", 32).unwrap();
        let c = QkdHandshake::client(&[base], stray, source.clone());
        let s = QkdHandshake::server(&[base], lookup.clone());
        let share = c.groups()[0].start().unwrap().pub_key().to_vec();
        let err = s.groups()[0].start_and_complete(&share).err().unwrap();
        assert!(err.to_string().contains("never announced"), "{err}");
        assert_eq!(s.failure().unwrap().label(), "unannounced");
        assert_eq!(lookup.len(), 2);

        // Used once, then replayed.
        let c = client_for(base, &source);
        let share = c.groups()[0].start().unwrap().pub_key().to_vec();
        let s1 = QkdHandshake::server(&[base], lookup.clone());
        s1.groups()[0].start_and_complete(&share).unwrap();
        let s2 = QkdHandshake::server(&[base], lookup.clone());
        let err = s2.groups()[0].start_and_complete(&share).err().unwrap();
        assert!(err.to_string().contains("already used"), "{err}");
        assert_eq!(lookup.len(), 1);

        // A malformed hybrid share consumes nothing even with a valid ID.
        let c = client_for(base, &source);
        let mut share = c.groups()[0].start().unwrap().pub_key().to_vec();
        share[0..1184].fill(0xFF); // not a valid ML-KEM-768 encapsulation key
        let s3 = QkdHandshake::server(&[base], lookup.clone());
        assert!(s3.groups()[0].start_and_complete(&share).is_err());
        assert_eq!(lookup.len(), 1);
    }

    #[test]
    fn cells_are_recycled_and_unsent_keys_go_back() {
        let base = KxGroup::MlKem1024;
        let (source, _lookup) = pair(1);
        let before = {
            let h = client_for(base, &source);
            drop(h);
            cells_allocated()
        };
        assert_eq!(
            source.len(),
            1,
            "a key never offered goes back to the source"
        );
        for _ in 0..200 {
            let h = client_for(base, &source);
            assert_eq!(source.len(), 0);
            drop(h);
        }
        // Other tests lease cells concurrently, so allow a few; without recycling this would be +200.
        assert!(
            cells_allocated() < before + 20,
            "sequential connections reuse cells: {before} -> {}",
            cells_allocated()
        );
        // Once offered, the key is written off (reported as wasted), never given back.
        let h = client_for(base, &source);
        let active = h.groups()[0].start().unwrap();
        assert!(h.wasted().is_some());
        drop(active);
        drop(h);
        assert_eq!(source.len(), 0);
    }

    #[test]
    fn peer_sae_check() {
        let base = KxGroup::X25519MlKem768;
        let (source, lookup) = pair(1);
        let c = client_for(base, &source);
        let s = QkdHandshake::server(&[base], lookup);
        assert_eq!(s.check_peer_sae("sae-a").unwrap_err(), QkdKxError::NotUsed);
        let a = c.groups()[0].start().unwrap();
        let done = s.groups()[0].start_and_complete(a.pub_key()).unwrap();
        a.complete(&done.pub_key).unwrap();
        assert!(s.check_peer_sae("sae-a").is_ok());
        assert_eq!(s.check_peer_sae("sae-z").unwrap_err().label(), "wrong_sae");
        assert!(c.check_peer_sae("sae-b").is_ok());
        assert!(c.check_peer_sae("sae-a").is_err());
    }
}
