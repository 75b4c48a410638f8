//! Property tests of the label lattice: dominance is a partial order, lub is the least upper bound and
//! glb the greatest lower bound, and banner markings round-trip through print and parse.

use proptest::prelude::*;
use qsi_labels::{Compartment, Label, Level};

/// A small compartment alphabet, so that random labels often share compartments and comparable pairs
/// (and equal pairs, for antisymmetry) actually occur.
fn label() -> impl Strategy<Value = Label> {
    (
        0usize..Level::ALL.len(),
        prop::collection::btree_set(prop::sample::select(vec!["A", "B", "C", "SI", "TK"]), 0..4),
    )
        .prop_map(|(lvl, cs)| {
            Label::new(
                Level::ALL[lvl],
                cs.into_iter().filter_map(|c| Compartment::new(c).ok()),
            )
        })
}

proptest! {
    #[test]
    fn dominance_is_reflexive(a in label()) {
        prop_assert!(a.dominates(&a));
    }

    #[test]
    fn dominance_is_antisymmetric(a in label(), b in label()) {
        if a.dominates(&b) && b.dominates(&a) {
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn dominance_is_transitive(a in label(), b in label(), c in label()) {
        if a.dominates(&b) && b.dominates(&c) {
            prop_assert!(a.dominates(&c));
        }
    }

    #[test]
    fn lub_is_an_upper_bound_and_least(a in label(), b in label(), c in label()) {
        let j = a.lub(&b);
        prop_assert!(j.dominates(&a) && j.dominates(&b));
        if c.dominates(&a) && c.dominates(&b) {
            prop_assert!(c.dominates(&j), "{c} bounds {a} and {b} but not their lub {j}");
        }
        prop_assert_eq!(&j, &b.lub(&a));
    }

    #[test]
    fn glb_is_a_lower_bound_and_greatest(a in label(), b in label(), c in label()) {
        let m = a.glb(&b);
        prop_assert!(a.dominates(&m) && b.dominates(&m));
        if a.dominates(&c) && b.dominates(&c) {
            prop_assert!(m.dominates(&c), "{c} is below {a} and {b} but not below their glb {m}");
        }
    }

    #[test]
    fn dominance_agrees_with_lub_and_glb(a in label(), b in label()) {
        prop_assert_eq!(a.dominates(&b), a.lub(&b) == a);
        prop_assert_eq!(a.dominates(&b), a.glb(&b) == b);
    }

    #[test]
    fn banner_marking_round_trips(a in label()) {
        let printed = a.to_string();
        prop_assert_eq!(printed.parse::<Label>().unwrap(), a.clone());
        prop_assert_eq!(printed.to_lowercase().parse::<Label>().unwrap(), a);
    }

    #[test]
    fn parser_never_panics(s in "[ A-Za-z0-9/-]{0,40}") {
        let _ = s.parse::<Label>();
    }
}

/// The strategy does produce the cases the conditional properties need (otherwise they could not fail).
#[test]
fn strategy_produces_comparable_and_equal_pairs() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut comparable, mut equal) = (0, 0);
    for _ in 0..500 {
        let a = label().new_tree(&mut runner).unwrap().current();
        let b = label().new_tree(&mut runner).unwrap().current();
        comparable += usize::from(a.dominates(&b) && a != b);
        equal += usize::from(a == b);
    }
    assert!(
        comparable > 50,
        "only {comparable} strictly comparable pairs"
    );
    assert!(equal > 0, "no equal pairs");
}
