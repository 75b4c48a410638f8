//! Lifecycle of managed keys, after NIST SP 800-57 Part 1 (section 7) and the KMIP object states.
//!
//! A pure state machine: every function takes the current time (milliseconds since the Unix epoch) and
//! returns either the new record or the reason the step is not allowed. The store persists the records
//! and writes every transition to the audit log.
//!
//! ```text
//!            activate / activation date reached
//! PreActive ------------------------------------> Active
//!    |  \                                          |   \  deactivate / cryptoperiod over / superseded
//!    |   \ compromise            compromise        |    v
//!    |    `----------> Compromised <---------------'  Deactivated
//!    | destroy              | destroy      compromise ^    | destroy
//!    v                      v                         |    v
//! Destroyed <---------------'-------------------------'-- Destroyed
//! ```
//!
//! Destroying a key erases its material but keeps its metadata (KMIP keeps destroyed objects' attributes);
//! a key destroyed after a compromise keeps `compromised_at`, which is KMIP's "Destroyed Compromised".

use serde::{Deserialize, Serialize};

/// The states of SP 800-57 / KMIP that this KMS uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyState {
    /// Generated, not yet to be used.
    PreActive,
    /// May protect (encrypt, sign, derive) and process.
    Active,
    /// Past its originator-usage period: may only process (decrypt, verify) what it protected.
    Deactivated,
    /// Suspected or known to be disclosed: not to be used at all.
    Compromised,
    /// Material erased; only metadata remains.
    Destroyed,
}

impl KeyState {
    /// Name as printed by `qsi kms keys`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PreActive => "pre-active",
            Self::Active => "active",
            Self::Deactivated => "deactivated",
            Self::Compromised => "compromised",
            Self::Destroyed => "destroyed",
        }
    }
}

/// Why a key was revoked (KMIP Revocation Reason Code, the subset an appliance needs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RevocationReason {
    /// The key is (suspected to be) known to someone else.
    KeyCompromise,
    /// Replaced by a newer key.
    Superseded,
    /// The service that used it stopped.
    CessationOfOperation,
}

/// Operations that move a key between states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    /// PreActive -> Active.
    Activate,
    /// Active -> Deactivated.
    Deactivate,
    /// -> Compromised (key compromise) or Active -> Deactivated (other reasons).
    Revoke(RevocationReason),
    /// PreActive, Deactivated or Compromised -> Destroyed. An Active key must be deactivated first.
    Destroy,
}

/// A step that the state machine refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    /// The operation is not allowed from the key's current state.
    #[error("cannot {op:?} a key in state {from}: allowed from {allowed}")]
    NotAllowed {
        /// The refused operation.
        op: Operation,
        /// The key's state.
        from: &'static str,
        /// The states the operation is allowed from.
        allowed: &'static str,
    },
    /// A cryptoperiod of zero length, or a deactivation date before the activation date.
    #[error("invalid cryptoperiod: {0}")]
    BadCryptoperiod(&'static str),
    /// The key may not be used for the requested purpose in its state or at this time.
    #[error("key in state {state} may not be used to {purpose}")]
    UseRefused {
        /// The key's state.
        state: &'static str,
        /// What the caller wanted to do.
        purpose: &'static str,
    },
}

/// What the caller wants to do with a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// Apply protection: encrypt, sign, derive new keys. Only while active.
    Protect,
    /// Process protected data: decrypt, verify. Active or deactivated.
    Process,
}

/// The lifecycle metadata of one managed key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    /// Current state.
    pub state: KeyState,
    /// When it was created.
    pub created_ms: u64,
    /// When it becomes (or became) active; `None` until an operator or the schedule decides.
    pub activation_ms: Option<u64>,
    /// Length of the originator-usage period (the cryptoperiod), after activation.
    pub cryptoperiod_ms: u64,
    /// When it was deactivated, if it was.
    pub deactivated_ms: Option<u64>,
    /// When it was marked compromised, if it was.
    pub compromised_ms: Option<u64>,
    /// When it was destroyed, if it was.
    pub destroyed_ms: Option<u64>,
    /// Last revocation reason.
    pub revocation: Option<RevocationReason>,
}

impl Lifecycle {
    /// A new key, pre-active, optionally with a scheduled activation.
    pub fn new(
        now_ms: u64,
        activation_ms: Option<u64>,
        cryptoperiod_ms: u64,
    ) -> Result<Self, LifecycleError> {
        if cryptoperiod_ms == 0 {
            return Err(LifecycleError::BadCryptoperiod("must be longer than zero"));
        }
        let mut l = Self {
            state: KeyState::PreActive,
            created_ms: now_ms,
            activation_ms,
            cryptoperiod_ms,
            deactivated_ms: None,
            compromised_ms: None,
            destroyed_ms: None,
            revocation: None,
        };
        l.tick(now_ms);
        Ok(l)
    }

    /// End of the originator-usage period, once the activation time is known.
    pub fn deactivation_due_ms(&self) -> Option<u64> {
        self.activation_ms
            .map(|a| a.saturating_add(self.cryptoperiod_ms))
    }

    /// Applies the transitions that time alone causes: a scheduled activation, the end of the
    /// cryptoperiod. Returns the states passed through, for the audit log.
    pub fn tick(&mut self, now_ms: u64) -> Vec<KeyState> {
        let mut passed = Vec::new();
        if self.state == KeyState::PreActive
            && let Some(a) = self.activation_ms
            && a <= now_ms
        {
            self.state = KeyState::Active;
            passed.push(KeyState::Active);
        }
        if self.state == KeyState::Active
            && let Some(d) = self.deactivation_due_ms()
            && d <= now_ms
        {
            self.state = KeyState::Deactivated;
            self.deactivated_ms = Some(d);
            passed.push(KeyState::Deactivated);
        }
        passed
    }

    /// Applies an operator operation at `now_ms`, or says why it is not allowed.
    pub fn apply(&mut self, op: Operation, now_ms: u64) -> Result<KeyState, LifecycleError> {
        self.tick(now_ms);
        use KeyState::*;
        let refuse = |from: KeyState, allowed: &'static str| LifecycleError::NotAllowed {
            op,
            from: from.as_str(),
            allowed,
        };
        match (op, self.state) {
            (Operation::Activate, PreActive) => {
                self.state = Active;
                self.activation_ms = Some(now_ms);
            }
            (Operation::Activate, s) => return Err(refuse(s, "pre-active")),
            (Operation::Deactivate, Active) => {
                self.state = Deactivated;
                self.deactivated_ms = Some(now_ms);
            }
            (Operation::Deactivate, s) => return Err(refuse(s, "active")),
            (
                Operation::Revoke(RevocationReason::KeyCompromise),
                PreActive | Active | Deactivated,
            ) => {
                self.state = Compromised;
                self.compromised_ms = Some(now_ms);
                self.revocation = Some(RevocationReason::KeyCompromise);
            }
            (Operation::Revoke(RevocationReason::KeyCompromise), Destroyed)
                if self.compromised_ms.is_none() =>
            {
                // KMIP "Destroyed Compromised": material is gone, the record says it leaked.
                self.compromised_ms = Some(now_ms);
                self.revocation = Some(RevocationReason::KeyCompromise);
            }
            (Operation::Revoke(RevocationReason::KeyCompromise), s) => {
                return Err(refuse(s, "pre-active, active, deactivated, destroyed"));
            }
            (Operation::Revoke(reason), Active) => {
                self.state = Deactivated;
                self.deactivated_ms = Some(now_ms);
                self.revocation = Some(reason);
            }
            (Operation::Revoke(_), s) => return Err(refuse(s, "active")),
            (Operation::Destroy, PreActive | Deactivated | Compromised) => {
                self.state = Destroyed;
                self.destroyed_ms = Some(now_ms);
            }
            (Operation::Destroy, s) => {
                return Err(refuse(s, "pre-active, deactivated, compromised"));
            }
        }
        Ok(self.state)
    }

    /// Whether the key may be used for `usage` at `now_ms` (after applying time-driven transitions).
    pub fn check_use(&mut self, usage: Usage, now_ms: u64) -> Result<(), LifecycleError> {
        self.tick(now_ms);
        let ok = match usage {
            Usage::Protect => self.state == KeyState::Active,
            Usage::Process => matches!(self.state, KeyState::Active | KeyState::Deactivated),
        };
        if ok {
            Ok(())
        } else {
            Err(LifecycleError::UseRefused {
                state: self.state.as_str(),
                purpose: match usage {
                    Usage::Protect => "protect (encrypt, sign)",
                    Usage::Process => "process (decrypt, verify)",
                },
            })
        }
    }

    /// True when a successor should be created: the key is active and less than `lead_ms` of its
    /// cryptoperiod remains.
    pub fn rotation_due(&self, now_ms: u64, lead_ms: u64) -> bool {
        self.state == KeyState::Active
            && self
                .deactivation_due_ms()
                .is_some_and(|d| now_ms.saturating_add(lead_ms) >= d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;

    #[test]
    fn scheduled_activation_and_cryptoperiod_end_follow_the_clock() {
        let mut l = Lifecycle::new(0, Some(HOUR), 24 * HOUR).unwrap();
        assert_eq!(l.state, KeyState::PreActive);
        assert!(l.check_use(Usage::Protect, HOUR - 1).is_err());
        l.check_use(Usage::Protect, HOUR).unwrap();
        assert_eq!(l.state, KeyState::Active);
        assert!(!l.rotation_due(20 * HOUR, HOUR));
        assert!(l.rotation_due(24 * HOUR, HOUR));
        // cryptoperiod over: may still decrypt, may not encrypt
        assert!(l.check_use(Usage::Protect, 25 * HOUR).is_err());
        assert_eq!(l.state, KeyState::Deactivated);
        assert_eq!(l.deactivated_ms, Some(25 * HOUR));
        l.check_use(Usage::Process, 26 * HOUR).unwrap();
    }

    #[test]
    fn every_transition_outside_the_graph_is_refused() {
        use KeyState::*;
        let ops = [
            Operation::Activate,
            Operation::Deactivate,
            Operation::Revoke(RevocationReason::KeyCompromise),
            Operation::Revoke(RevocationReason::Superseded),
            Operation::Destroy,
        ];
        // (from, op) -> expected state, for every allowed pair; everything else must fail
        let allowed = |from: KeyState, op: Operation| -> Option<KeyState> {
            match (from, op) {
                (PreActive, Operation::Activate) => Some(Active),
                (Active, Operation::Deactivate) => Some(Deactivated),
                (
                    PreActive | Active | Deactivated,
                    Operation::Revoke(RevocationReason::KeyCompromise),
                ) => Some(Compromised),
                (Destroyed, Operation::Revoke(RevocationReason::KeyCompromise)) => Some(Destroyed),
                (Active, Operation::Revoke(_)) => Some(Deactivated),
                (PreActive | Deactivated | Compromised, Operation::Destroy) => Some(Destroyed),
                _ => None,
            }
        };
        let reach = |target: KeyState| -> Lifecycle {
            let mut l = Lifecycle::new(0, None, 10 * HOUR).unwrap();
            let path: &[Operation] = match target {
                PreActive => &[],
                Active => &[Operation::Activate],
                Deactivated => &[Operation::Activate, Operation::Deactivate],
                Compromised => &[Operation::Revoke(RevocationReason::KeyCompromise)],
                Destroyed => &[Operation::Destroy],
            };
            for op in path {
                l.apply(*op, 1).unwrap();
            }
            assert_eq!(l.state, target);
            l
        };
        for from in [PreActive, Active, Deactivated, Compromised, Destroyed] {
            for op in ops {
                let mut l = reach(from);
                let got = l.apply(op, 2);
                match allowed(from, op) {
                    Some(to) => assert_eq!(got, Ok(to), "{from:?} --{op:?}-->"),
                    None => {
                        assert!(got.is_err(), "{from:?} --{op:?}--> must be refused");
                        assert_eq!(l.state, from, "a refused step changes nothing");
                    }
                }
            }
        }
    }

    #[test]
    fn active_key_cannot_be_destroyed_without_deactivation() {
        let mut l = Lifecycle::new(0, Some(0), HOUR).unwrap();
        assert_eq!(l.state, KeyState::Active);
        let e = l.apply(Operation::Destroy, 1).unwrap_err();
        assert!(e.to_string().contains("deactivated"), "{e}");
        l.apply(Operation::Deactivate, 2).unwrap();
        l.apply(Operation::Destroy, 3).unwrap();
        assert!(l.check_use(Usage::Process, 4).is_err());
    }

    #[test]
    fn compromised_key_is_never_usable() {
        let mut l = Lifecycle::new(0, Some(0), HOUR).unwrap();
        l.apply(Operation::Revoke(RevocationReason::KeyCompromise), 1)
            .unwrap();
        assert!(l.check_use(Usage::Protect, 2).is_err());
        assert!(l.check_use(Usage::Process, 2).is_err());
        l.apply(Operation::Destroy, 3).unwrap();
        assert_eq!(l.compromised_ms, Some(1));
    }

    #[test]
    fn zero_cryptoperiod_is_refused() {
        assert!(Lifecycle::new(0, None, 0).is_err());
    }
}
