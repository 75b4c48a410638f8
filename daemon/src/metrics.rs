//! Counters and the Prometheus text exposition (served by `qsid` on `metrics.listen`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Hot-path counters of one peer (atomics, cloned into every flow task).
#[derive(Debug, Default)]
pub struct PeerCounters {
    /// Flows open now.
    pub flows_active: AtomicU64,
    /// Flows opened since start (both directions).
    pub flows_total: AtomicU64,
    /// Flows that ended with an error.
    pub flows_failed: AtomicU64,
    /// Payload bytes sent into the tunnel.
    pub bytes_sent: AtomicU64,
    /// Payload bytes received from the tunnel.
    pub bytes_received: AtomicU64,
    /// Completed handshakes (control and data, both roles).
    pub handshakes: AtomicU64,
    /// UDP datagrams sent into the tunnel.
    pub datagrams_sent: AtomicU64,
    /// UDP datagrams received from the tunnel.
    pub datagrams_received: AtomicU64,
    /// Rekeys: data connections that replaced a live one (make-before-break).
    pub rekeys: AtomicU64,
    /// Attempts to open a replacement data connection that failed.
    pub rekey_failures: AtomicU64,
    /// In-place key updates sent (TLS 1.3 KeyUpdate, QUIC key phase) on connections past their byte limit.
    pub key_updates: AtomicU64,
    /// Generation (per-peer sequence number) of the current data connection; 0 when there is none.
    pub generation: AtomicU64,
    /// Data connections draining (replaced, still carrying old flows).
    pub draining: AtomicU64,
}

/// All metrics of a site.
#[derive(Debug, Default)]
pub struct Metrics {
    peers: Mutex<BTreeMap<String, Arc<PeerCounters>>>,
    failures: Mutex<BTreeMap<(String, String), u64>>,
    groups: Mutex<BTreeMap<(String, String), String>>,
}

/// Reads one counter of a peer.
type Getter = fn(&PeerCounters) -> &AtomicU64;

/// Adds one to a counter.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// The counters of `peer` (created on first use).
    pub fn peer(&self, peer: &str) -> Arc<PeerCounters> {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(peer.to_string())
            .or_default()
            .clone()
    }

    /// Counts a failure; `reason` is a short token (`handshake`, `certificate`, `kx_policy`, `connect` ...).
    pub fn failure(&self, peer: &str, reason: &str) {
        *self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((peer.to_string(), reason.to_string()))
            .or_default() += 1;
    }

    /// Failures so far, by (peer, reason).
    pub fn failures(&self) -> BTreeMap<(String, String), u64> {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records the group negotiated on the peer's current data connection.
    pub fn set_group(&self, peer: &str, transport: &str, group: Option<&str>) {
        let mut g = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let key = (peer.to_string(), transport.to_string());
        match group {
            Some(name) => {
                g.insert(key, name.to_string());
            }
            None => {
                g.remove(&key);
            }
        }
    }

    /// Prometheus text format 0.0.4.
    pub fn render(&self, site: &str) -> String {
        let mut out = String::new();
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let counters: [(&str, &str, &str, Getter); 8] = [
            ("qsi_tunnel_flows_active", "gauge", "Flows open now", |c| {
                &c.flows_active
            }),
            ("qsi_tunnel_flows_total", "counter", "Flows opened", |c| {
                &c.flows_total
            }),
            (
                "qsi_tunnel_flows_failed_total",
                "counter",
                "Flows that ended with an error",
                |c| &c.flows_failed,
            ),
            (
                "qsi_tunnel_bytes_sent_total",
                "counter",
                "Payload bytes sent into the tunnel",
                |c| &c.bytes_sent,
            ),
            (
                "qsi_tunnel_bytes_received_total",
                "counter",
                "Payload bytes received from the tunnel",
                |c| &c.bytes_received,
            ),
            (
                "qsi_tunnel_handshakes_total",
                "counter",
                "Completed TLS handshakes",
                |c| &c.handshakes,
            ),
            (
                "qsi_tunnel_datagrams_sent_total",
                "counter",
                "UDP datagrams sent into the tunnel",
                |c| &c.datagrams_sent,
            ),
            (
                "qsi_tunnel_datagrams_received_total",
                "counter",
                "UDP datagrams received from the tunnel",
                |c| &c.datagrams_received,
            ),
        ];
        render_series(&mut out, site, &peers, &counters);
        render_rekey(&mut out, site, &peers);
        let _ = writeln!(
            out,
            "# HELP qsi_tunnel_failures_total Failures by reason\n# TYPE qsi_tunnel_failures_total counter"
        );
        for ((peer, reason), n) in self.failures() {
            let _ = writeln!(
                out,
                "qsi_tunnel_failures_total{{site=\"{}\",peer=\"{}\",reason=\"{}\"}} {n}",
                esc(site),
                esc(&peer),
                esc(&reason)
            );
        }
        let _ = writeln!(
            out,
            "# HELP qsi_tunnel_kx_group Key-exchange group of the peer's current data connection\n# TYPE qsi_tunnel_kx_group gauge"
        );
        for ((peer, transport), group) in
            self.groups.lock().unwrap_or_else(|p| p.into_inner()).iter()
        {
            let _ = writeln!(
                out,
                "qsi_tunnel_kx_group{{site=\"{}\",peer=\"{}\",transport=\"{}\",group=\"{}\"}} 1",
                esc(site),
                esc(peer),
                esc(transport),
                esc(group)
            );
        }
        out
    }
}

/// The rekey series (issue 9): one block per metric, a line per peer.
fn render_rekey(out: &mut String, site: &str, peers: &BTreeMap<String, Arc<PeerCounters>>) {
    let series: [(&str, &str, &str, Getter); 5] = [
        (
            "qsi_tunnel_rekeys_total",
            "counter",
            "Data connections replaced make-before-break",
            |c| &c.rekeys,
        ),
        (
            "qsi_tunnel_rekey_failures_total",
            "counter",
            "Replacement data connections that could not be opened",
            |c| &c.rekey_failures,
        ),
        (
            "qsi_tunnel_key_updates_total",
            "counter",
            "In-place traffic key updates (TLS KeyUpdate, QUIC key phase) past the byte limit",
            |c| &c.key_updates,
        ),
        (
            "qsi_tunnel_data_generation",
            "gauge",
            "Generation of the current data connection",
            |c| &c.generation,
        ),
        (
            "qsi_tunnel_data_connections_draining",
            "gauge",
            "Replaced data connections still carrying flows",
            |c| &c.draining,
        ),
    ];
    render_series(out, site, peers, &series);
}

/// One block per metric (HELP, TYPE), a line per peer: every per-peer counter and gauge goes through here.
fn render_series(
    out: &mut String,
    site: &str,
    peers: &BTreeMap<String, Arc<PeerCounters>>,
    series: &[(&str, &str, &str, Getter)],
) {
    for (name, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (peer, c) in peers {
            let _ = writeln!(
                out,
                "{name}{{site=\"{}\",peer=\"{}\"}} {}",
                esc(site),
                esc(peer),
                get(c).load(Ordering::Relaxed)
            );
        }
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labels_and_values() {
        let m = Metrics::default();
        inc(&m.peer("site-b").flows_total);
        m.failure("site-b", "kx_policy");
        m.set_group("site-b", "quic", Some("X25519MLKEM768"));
        let t = m.render("site-a");
        assert!(
            t.contains("qsi_tunnel_flows_total{site=\"site-a\",peer=\"site-b\"} 1"),
            "{t}"
        );
        assert!(t.contains(
            "qsi_tunnel_failures_total{site=\"site-a\",peer=\"site-b\",reason=\"kx_policy\"} 1"
        ));
        assert!(t.contains("group=\"X25519MLKEM768\"} 1"));
    }
}
