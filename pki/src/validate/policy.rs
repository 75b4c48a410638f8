//! The policy graph of RFC 9618, which replaces RFC 5280's valid_policy_tree: one node per (depth,
//! policy) with any number of parents, so a path whose certificates each carry many policies and mappings
//! costs a graph linear in its size instead of a tree exponential in its depth.

use std::collections::{BTreeMap, BTreeSet};

use const_oid::ObjectIdentifier;
use serde::Serialize;

use super::cert::ANY_POLICY;

#[derive(Clone, Debug)]
struct Node {
    policy: ObjectIdentifier,
    expected: Vec<ObjectIdentifier>,
    parents: Vec<usize>,
}

/// The valid policy graph of RFC 9618 section 4. `None` in the validator's state stands for the NULL
/// graph of RFC 5280.
#[derive(Clone, Debug)]
pub struct PolicyGraph {
    levels: Vec<Vec<Node>>,
}

/// A set of certificate policies that the path is valid for, in the trust anchor's policy domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicySet {
    /// Every policy (the path asserts anyPolicy throughout and the relying party asked for any).
    Any,
    /// Exactly these policies (possibly none).
    Set(BTreeSet<String>),
}

impl PolicySet {
    /// The policies as dotted OIDs; `Any` is `["2.5.29.32.0"]`.
    pub fn oids(&self) -> Vec<String> {
        match self {
            PolicySet::Any => vec![ANY_POLICY.to_string()],
            PolicySet::Set(s) => s.iter().cloned().collect(),
        }
    }

    /// True when the set is empty.
    pub fn is_empty(&self) -> bool {
        matches!(self, PolicySet::Set(s) if s.is_empty())
    }

    /// True when the path is valid for `oid`.
    pub fn contains(&self, oid: &ObjectIdentifier) -> bool {
        match self {
            PolicySet::Any => true,
            PolicySet::Set(s) => s.contains(&oid.to_string()),
        }
    }
}

impl Default for PolicyGraph {
    fn default() -> Self {
        Self::new()
    }
}

impl PolicyGraph {
    /// The initial graph: one anyPolicy node at depth 0 (6.1.2 a).
    pub fn new() -> Self {
        PolicyGraph {
            levels: vec![vec![Node {
                policy: ANY_POLICY,
                expected: vec![ANY_POLICY],
                parents: Vec::new(),
            }]],
        }
    }

    fn last(&self) -> &[Node] {
        self.levels.last().map(Vec::as_slice).unwrap_or_default()
    }

    /// Processes a certificate's policies (6.1.3 d). `any_allowed` is true when the certificate's
    /// anyPolicy may be used (inhibit_anyPolicy > 0, or a self-issued intermediate). Returns false when
    /// the graph became NULL.
    pub fn add_certificate(&mut self, policies: &[ObjectIdentifier], any_allowed: bool) -> bool {
        let prev = self.last().to_vec();
        let mut level: Vec<Node> = Vec::new();
        let prev_any = prev.iter().position(|n| n.policy == ANY_POLICY);
        for p in policies.iter().filter(|p| **p != ANY_POLICY) {
            let parents: Vec<usize> = prev
                .iter()
                .enumerate()
                .filter(|(_, n)| n.expected.contains(p))
                .map(|(i, _)| i)
                .collect();
            let parents = if parents.is_empty() {
                match prev_any {
                    Some(a) => vec![a],
                    None => continue,
                }
            } else {
                parents
            };
            level.push(Node {
                policy: *p,
                expected: vec![*p],
                parents,
            });
        }
        if any_allowed && policies.contains(&ANY_POLICY) {
            let mut wanted: Vec<ObjectIdentifier> = Vec::new();
            for n in &prev {
                for e in &n.expected {
                    if !wanted.contains(e) {
                        wanted.push(*e);
                    }
                }
            }
            for e in wanted {
                if level.iter().any(|n| n.policy == e) {
                    continue;
                }
                let parents = prev
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| n.expected.contains(&e))
                    .map(|(i, _)| i)
                    .collect();
                level.push(Node {
                    policy: e,
                    expected: vec![e],
                    parents,
                });
            }
        }
        self.levels.push(level);
        self.prune()
    }

    /// Applies a certificate's policy mappings (6.1.4 b). With mapping allowed, nodes of an issuer-domain
    /// policy now expect the subject-domain policies; with mapping inhibited, those nodes are deleted.
    /// Returns false when the graph became NULL.
    pub fn apply_mappings(
        &mut self,
        mappings: &[(ObjectIdentifier, ObjectIdentifier)],
        mapping_allowed: bool,
    ) -> bool {
        let mut map: BTreeMap<ObjectIdentifier, Vec<ObjectIdentifier>> = BTreeMap::new();
        for (issuer, subject) in mappings {
            let v = map.entry(*issuer).or_default();
            if !v.contains(subject) {
                v.push(*subject);
            }
        }
        let Some(level) = self.levels.last_mut() else {
            return false;
        };
        if mapping_allowed {
            let any_parents = level
                .iter()
                .find(|n| n.policy == ANY_POLICY)
                .map(|n| n.parents.clone());
            for (p, targets) in map {
                if let Some(node) = level.iter_mut().find(|n| n.policy == p) {
                    node.expected = targets;
                } else if let Some(parents) = &any_parents {
                    level.push(Node {
                        policy: p,
                        expected: targets,
                        parents: parents.clone(),
                    });
                }
            }
            true
        } else {
            level.retain(|n| !map.contains_key(&n.policy));
            self.prune()
        }
    }

    /// Removes nodes without descendants at the deepest level. Returns false when nothing is left.
    fn prune(&mut self) -> bool {
        for k in (1..self.levels.len()).rev() {
            let mut used = vec![false; self.levels[k - 1].len()];
            for n in &self.levels[k] {
                for &p in &n.parents {
                    if let Some(u) = used.get_mut(p) {
                        *u = true;
                    }
                }
            }
            let mut remap = vec![usize::MAX; used.len()];
            let mut next = 0;
            for (i, u) in used.iter().enumerate() {
                if *u {
                    remap[i] = next;
                    next += 1;
                }
            }
            let mut i = 0;
            self.levels[k - 1].retain(|_| {
                let keep = used[i];
                i += 1;
                keep
            });
            for n in &mut self.levels[k] {
                for p in &mut n.parents {
                    *p = remap.get(*p).copied().unwrap_or(usize::MAX);
                }
            }
        }
        !self.last().is_empty()
    }

    /// The authority-constrained policies of every node at the deepest level, in the trust anchor's
    /// domain: a node reached from anyPolicy stands for its own policy, one reached through mappings for
    /// the policies its ancestors entered with. anyPolicy throughout gives `ANY_POLICY`.
    fn authority_policies(&self) -> BTreeSet<ObjectIdentifier> {
        let mut prev: Vec<BTreeSet<ObjectIdentifier>> = vec![BTreeSet::from([ANY_POLICY])];
        for level in self.levels.iter().skip(1) {
            let mut cur = Vec::with_capacity(level.len());
            for n in level {
                let mut set = BTreeSet::new();
                for &p in &n.parents {
                    let Some(pset) = prev.get(p) else { continue };
                    if pset.contains(&ANY_POLICY) && pset.len() == 1 {
                        // Parent is an all-anyPolicy chain: this node enters with its own policy.
                        set.insert(n.policy);
                    } else {
                        set.extend(pset.iter().copied());
                    }
                }
                cur.push(set);
            }
            prev = cur;
        }
        prev.into_iter().flatten().collect()
    }

    /// The user-constrained policy set (6.1.5 g): the authority-constrained set intersected with the
    /// relying party's initial policy set (empty or containing anyPolicy means any).
    pub fn user_constrained(&self, initial: &[ObjectIdentifier]) -> PolicySet {
        let auth = self.authority_policies();
        let initial_any = initial.is_empty() || initial.contains(&ANY_POLICY);
        if auth.contains(&ANY_POLICY) {
            if initial_any {
                return PolicySet::Any;
            }
            return PolicySet::Set(initial.iter().map(|o| o.to_string()).collect());
        }
        PolicySet::Set(
            auth.iter()
                .filter(|p| initial_any || initial.contains(p))
                .map(|o| o.to_string())
                .collect(),
        )
    }
}

/// The user-constrained set for a NULL graph: empty.
pub fn empty_set() -> PolicySet {
    PolicySet::Set(BTreeSet::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    const P1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.3.1");
    const P2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.3.2");
    const P3: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.3.3");

    #[test]
    fn mapping_reports_the_anchor_domain() {
        let mut g = PolicyGraph::new();
        assert!(g.add_certificate(&[P1], true));
        assert!(g.apply_mappings(&[(P1, P3)], true));
        assert!(g.add_certificate(&[P3], true));
        assert_eq!(
            g.user_constrained(&[]),
            PolicySet::Set(BTreeSet::from([P1.to_string()]))
        );
        assert_eq!(g.user_constrained(&[P2]), empty_set());
    }

    #[test]
    fn inhibited_mapping_deletes_the_node() {
        let mut g = PolicyGraph::new();
        assert!(g.add_certificate(&[P1], true));
        assert!(!g.apply_mappings(&[(P1, P3)], false));
    }

    #[test]
    fn any_policy_throughout_is_any() {
        let mut g = PolicyGraph::new();
        assert!(g.add_certificate(&[ANY_POLICY], true));
        assert!(g.add_certificate(&[ANY_POLICY], true));
        assert_eq!(g.user_constrained(&[]), PolicySet::Any);
        assert_eq!(
            g.user_constrained(&[P2]),
            PolicySet::Set(BTreeSet::from([P2.to_string()]))
        );
        // anyPolicy not allowed: the graph dies.
        assert!(!g.add_certificate(&[ANY_POLICY], false));
    }

    #[test]
    fn graph_stays_linear_with_many_policies() {
        // 10 levels of 20 policies, each mapping to all: a tree would have 20^10 nodes.
        let pols: Vec<ObjectIdentifier> = (0..20u32)
            .map(|i| {
                ObjectIdentifier::new_unwrap("1.2.3")
                    .push_arc(i)
                    .unwrap_or(P1)
            })
            .collect();
        let maps: Vec<_> = pols
            .iter()
            .flat_map(|a| pols.iter().map(move |b| (*a, *b)))
            .collect();
        let mut g = PolicyGraph::new();
        for _ in 0..10 {
            assert!(g.add_certificate(&pols, true));
            assert!(g.apply_mappings(&maps, true));
        }
        assert!(g.levels.iter().all(|l| l.len() <= 20));
    }
}
