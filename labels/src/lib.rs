//! Classification labels for QSI: one small library that every service uses to decide who may see what.
//!
//! A [`Label`] is a hierarchical [`Level`] (UNCLASSIFIED < CUI < CONFIDENTIAL < SECRET < TOP SECRET) plus a
//! set of need-to-know [`Compartment`]s. Labels form a lattice under *dominance*: `a` dominates `b` when
//! `a`'s level is at least `b`'s and `a` holds every compartment of `b`. A subject (a person's clearance,
//! a tunnel's or a service's accreditation) may read an object only when the subject's label dominates the
//! object's (the Bell-LaPadula "no read up" rule). [`Label::lub`] and [`Label::glb`] give the least upper
//! and greatest lower bounds, e.g. the label a combined document must carry.
//!
//! Labels are written as banner markings: the level, then each compartment after `//`:
//!
//! ```
//! use qsi_labels::{Label, Level};
//!
//! let clearance: Label = "TS//SI//TK".parse()?;          // abbreviations accepted on input
//! let report: Label = "SECRET//SI".parse()?;
//! assert!(clearance.dominates(&report));
//! assert!(!report.dominates(&clearance));
//! assert_eq!(clearance.to_string(), "TOP SECRET//SI//TK"); // printed in full, compartments sorted
//!
//! let combined = report.lub(&"CONFIDENTIAL//HCS".parse()?);
//! assert_eq!(combined.to_string(), "SECRET//HCS//SI");
//! assert_eq!(combined.level(), Level::Secret);
//! # Ok::<(), qsi_labels::MarkingError>(())
//! ```
//!
//! Why this shape: the level is a total order and the compartments a powerset, so their product is a
//! lattice with no top (the set of compartments is open) and bottom `UNCLASSIFIED`. Parsing is strict about
//! structure (empty segments, single slashes, unknown levels and bad compartment names are errors with a
//! position) and lenient only about letter case and the standard level abbreviations. Dissemination
//! controls (NOFORN, REL TO ...) are not modelled: every `//` segment after the level is a compartment.

#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// Longest accepted compartment name, in characters.
pub const MAX_COMPARTMENT_LEN: usize = 32;
/// Most compartments accepted in one marking (bounds the work done on untrusted input).
pub const MAX_COMPARTMENTS: usize = 64;

/// A hierarchical classification level. The derived order is the classification order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// UNCLASSIFIED (U).
    Unclassified,
    /// CONTROLLED UNCLASSIFIED INFORMATION, written CUI.
    Cui,
    /// CONFIDENTIAL (C).
    Confidential,
    /// SECRET (S).
    Secret,
    /// TOP SECRET (TS).
    TopSecret,
}

impl Level {
    /// All levels, lowest first.
    pub const ALL: [Level; 5] = [
        Level::Unclassified,
        Level::Cui,
        Level::Confidential,
        Level::Secret,
        Level::TopSecret,
    ];

    /// The full banner name, e.g. `TOP SECRET`.
    pub fn name(self) -> &'static str {
        match self {
            Level::Unclassified => "UNCLASSIFIED",
            Level::Cui => "CUI",
            Level::Confidential => "CONFIDENTIAL",
            Level::Secret => "SECRET",
            Level::TopSecret => "TOP SECRET",
        }
    }

    /// The portion-marking abbreviation, e.g. `TS`.
    pub fn abbrev(self) -> &'static str {
        match self {
            Level::Unclassified => "U",
            Level::Cui => "CUI",
            Level::Confidential => "C",
            Level::Secret => "S",
            Level::TopSecret => "TS",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Level {
    type Err = MarkingError;

    /// Accepts the full name or the abbreviation, in any letter case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let up = s.to_ascii_uppercase();
        Level::ALL
            .into_iter()
            .find(|l| l.name() == up || l.abbrev() == up)
            .ok_or_else(|| MarkingError::UnknownLevel(s.to_owned()))
    }
}

/// A need-to-know compartment: 1 to [`MAX_COMPARTMENT_LEN`] characters `A-Z`, `0-9` or `-`, starting with a
/// letter. Stored upper case.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Compartment(String);

impl Compartment {
    /// Validates and upper-cases a compartment name.
    pub fn new(name: &str) -> Result<Self, MarkingError> {
        let bad = |reason| MarkingError::InvalidCompartment {
            name: name.to_owned(),
            reason,
        };
        if name.is_empty() {
            return Err(bad("it is empty"));
        }
        if name.chars().count() > MAX_COMPARTMENT_LEN {
            return Err(bad("it is longer than 32 characters"));
        }
        if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(bad("it must start with a letter"));
        }
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(bad("only letters, digits and '-' are allowed"));
        }
        Ok(Compartment(name.to_ascii_uppercase()))
    }

    /// The upper-case name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Compartment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Compartment {
    type Err = MarkingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Compartment::new(s)
    }
}

/// Why a banner marking or a compartment name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MarkingError {
    /// The marking is empty or only whitespace.
    #[error(
        "empty marking: write a level such as UNCLASSIFIED, CUI, CONFIDENTIAL, SECRET or TOP SECRET"
    )]
    Empty,
    /// The first segment is not a known level.
    #[error(
        "unknown classification level {0:?}: use UNCLASSIFIED (U), CUI, CONFIDENTIAL (C), SECRET (S) or TOP SECRET (TS)"
    )]
    UnknownLevel(String),
    /// A single `/` separates the level from what follows; segments are separated by `//`.
    #[error("{0:?}: separate the level from compartments with '//', not '/'")]
    SingleSlash(String),
    /// Two separators with nothing between them, or a separator at the start or end.
    #[error("empty segment at byte {position} of the marking (a stray '/' or '//')")]
    EmptySegment {
        /// Byte offset of the empty segment in the input.
        position: usize,
    },
    /// A compartment name breaks the naming rules.
    #[error("invalid compartment {name:?}: {reason}")]
    InvalidCompartment {
        /// The name as given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The same compartment appears twice.
    #[error("compartment {0} appears twice")]
    DuplicateCompartment(String),
    /// More than [`MAX_COMPARTMENTS`] compartments.
    #[error("more than {MAX_COMPARTMENTS} compartments in one marking")]
    TooManyCompartments,
}

/// A classification label (or a clearance: the same lattice element seen from the subject's side).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Label {
    level: Level,
    compartments: BTreeSet<Compartment>,
}

/// A subject's clearance is a label; the alias documents which side of a check a value is on.
pub type Clearance = Label;

impl Label {
    /// A label with a level and compartments.
    pub fn new(level: Level, compartments: impl IntoIterator<Item = Compartment>) -> Self {
        Label {
            level,
            compartments: compartments.into_iter().collect(),
        }
    }

    /// UNCLASSIFIED with no compartments: the bottom of the lattice, dominated by every label.
    pub fn bottom() -> Self {
        Label::from(Level::Unclassified)
    }

    /// The hierarchical level.
    pub fn level(&self) -> Level {
        self.level
    }

    /// The compartments, in sorted order.
    pub fn compartments(&self) -> impl ExactSizeIterator<Item = &Compartment> {
        self.compartments.iter()
    }

    /// True when the label holds this compartment.
    pub fn has_compartment(&self, c: &Compartment) -> bool {
        self.compartments.contains(c)
    }

    /// `self` dominates `other`: level at least as high and every compartment of `other` held. A subject
    /// may read an object exactly when the subject's clearance dominates the object's label.
    pub fn dominates(&self, other: &Label) -> bool {
        self.level >= other.level && self.compartments.is_superset(&other.compartments)
    }

    /// Least upper bound: the lowest label that dominates both (higher level, union of compartments).
    pub fn lub(&self, other: &Label) -> Label {
        Label {
            level: self.level.max(other.level),
            compartments: self
                .compartments
                .union(&other.compartments)
                .cloned()
                .collect(),
        }
    }

    /// Greatest lower bound: the highest label both dominate (lower level, common compartments).
    pub fn glb(&self, other: &Label) -> Label {
        Label {
            level: self.level.min(other.level),
            compartments: self
                .compartments
                .intersection(&other.compartments)
                .cloned()
                .collect(),
        }
    }

    /// True when one of the two dominates the other.
    pub fn comparable(&self, other: &Label) -> bool {
        self.dominates(other) || other.dominates(self)
    }

    /// The portion marking, e.g. `(TS//SI)`.
    pub fn portion(&self) -> String {
        let mut s = format!("({}", self.level.abbrev());
        for c in &self.compartments {
            s.push_str("//");
            s.push_str(c.as_str());
        }
        s.push(')');
        s
    }
}

impl From<Level> for Label {
    fn from(level: Level) -> Self {
        Label {
            level,
            compartments: BTreeSet::new(),
        }
    }
}

impl fmt::Display for Label {
    /// The banner marking: full level name, then `//` and each compartment in sorted order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.level.name())?;
        for c in &self.compartments {
            write!(f, "//{c}")?;
        }
        Ok(())
    }
}

impl FromStr for Label {
    type Err = MarkingError;

    /// Parses a banner marking `LEVEL[//C1[//C2...]]`. Within a segment, several compartments may also be
    /// separated by a single `/` (`TS//SI/TK`), as in CAPCO SCI blocks. Leading and trailing whitespace is
    /// ignored; letter case is not significant.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lead = s.len() - s.trim_start().len();
        let s = s.trim();
        if s.is_empty() {
            return Err(MarkingError::Empty);
        }
        let mut pos = lead;
        let mut segments = s.split("//");
        let level_seg = segments.next().unwrap_or_default();
        if level_seg.is_empty() {
            return Err(MarkingError::EmptySegment { position: pos });
        }
        if level_seg.contains('/') {
            return Err(MarkingError::SingleSlash(level_seg.to_owned()));
        }
        let level: Level = level_seg.parse()?;
        pos += level_seg.len() + 2;
        let mut compartments = BTreeSet::new();
        for seg in segments {
            for name in seg.split('/') {
                if name.is_empty() {
                    return Err(MarkingError::EmptySegment { position: pos });
                }
                let c = Compartment::new(name)?;
                if compartments.len() == MAX_COMPARTMENTS {
                    return Err(MarkingError::TooManyCompartments);
                }
                if !compartments.insert(c) {
                    return Err(MarkingError::DuplicateCompartment(
                        name.to_ascii_uppercase(),
                    ));
                }
                pos += name.len() + 1;
            }
            pos += 1;
        }
        Ok(Label {
            level,
            compartments,
        })
    }
}

impl serde::Serialize for Label {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Label {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(s: &str) -> Label {
        s.parse().unwrap()
    }

    #[test]
    fn abbreviations_and_case_parse_to_the_same_label() {
        for (a, b) in [
            ("U", "UNCLASSIFIED"),
            ("cui", "CUI"),
            ("C", "CONFIDENTIAL"),
            ("s//x", "SECRET//X"),
            ("TS//SI/TK", "TOP SECRET//SI//TK"),
            ("  top secret//TK//SI ", "TOP SECRET//SI//TK"),
        ] {
            assert_eq!(l(a), l(b), "{a} vs {b}");
            assert_eq!(l(a).to_string(), b);
        }
    }

    #[test]
    fn malformed_markings_say_what_is_wrong() {
        use MarkingError::*;
        assert_eq!("".parse::<Label>(), Err(Empty));
        assert_eq!("   ".parse::<Label>(), Err(Empty));
        assert_eq!(
            "SEKRET".parse::<Label>(),
            Err(UnknownLevel("SEKRET".into()))
        );
        assert_eq!(
            "TOP  SECRET".parse::<Label>(),
            Err(UnknownLevel("TOP  SECRET".into()))
        );
        assert_eq!(
            "SECRET/X".parse::<Label>(),
            Err(SingleSlash("SECRET/X".into()))
        );
        assert_eq!(
            "SECRET//".parse::<Label>(),
            Err(EmptySegment { position: 8 })
        );
        assert_eq!(
            "SECRET//X////Y".parse::<Label>(),
            Err(EmptySegment { position: 11 })
        );
        assert_eq!("//X".parse::<Label>(), Err(EmptySegment { position: 0 }));
        assert!(matches!(
            "SECRET//1X".parse::<Label>(),
            Err(InvalidCompartment { .. })
        ));
        assert!(matches!(
            "SECRET//X Y".parse::<Label>(),
            Err(InvalidCompartment { .. })
        ));
        assert!(matches!(
            format!("S//{}", "A".repeat(33)).parse::<Label>(),
            Err(InvalidCompartment { .. })
        ));
        assert_eq!(
            "S//X//x".parse::<Label>(),
            Err(DuplicateCompartment("X".into()))
        );
        let many: Vec<String> = (0..65).map(|i| format!("C{i}")).collect();
        assert_eq!(
            format!("S//{}", many.join("//")).parse::<Label>(),
            Err(TooManyCompartments)
        );
        // The messages name the fix.
        assert!(SingleSlash("S/X".into()).to_string().contains("'//'"));
        assert!(
            UnknownLevel("Q".into())
                .to_string()
                .contains("TOP SECRET (TS)")
        );
    }

    #[test]
    fn no_read_up_and_need_to_know() {
        let analyst = l("SECRET//X");
        assert!(analyst.dominates(&l("SECRET//X")));
        assert!(analyst.dominates(&l("CONFIDENTIAL")));
        assert!(analyst.dominates(&l("U//X")));
        assert!(!analyst.dominates(&l("TOP SECRET")), "no read up");
        assert!(!analyst.dominates(&l("SECRET//Y")), "need-to-know");
        assert!(!analyst.dominates(&l("CUI//X//Y")), "every compartment");
        assert!(!l("S//X").comparable(&l("S//Y")));
    }

    #[test]
    fn lub_and_glb_of_incomparable_labels() {
        let a = l("SECRET//X");
        let b = l("CONFIDENTIAL//Y");
        assert_eq!(a.lub(&b), l("SECRET//X//Y"));
        assert_eq!(a.glb(&b), l("CONFIDENTIAL"));
        assert_eq!(Label::bottom().lub(&a), a);
    }

    #[test]
    fn portion_marking_and_serde_round_trip() {
        assert_eq!(l("TOP SECRET//SI//TK").portion(), "(TS//SI//TK)");
        let json = serde_json::to_string(&l("S//Y//X")).unwrap();
        assert_eq!(json, "\"SECRET//X//Y\"");
        assert_eq!(serde_json::from_str::<Label>(&json).unwrap(), l("S//X//Y"));
        assert!(serde_json::from_str::<Label>("\"SECRET/X\"").is_err());
    }
}
