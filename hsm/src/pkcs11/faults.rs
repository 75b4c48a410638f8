//! A fault injector between QSI and a real PKCS#11 module, for the PIN-lockout path.
//!
//! SoftHSM2 never locks a user PIN: after wrong PINs it only raises `CKF_USER_PIN_COUNT_LOW`. Hardware
//! tokens and HSMs lock after a few tries (a PIV card after 3 to 10). [`PinRetryLimit`] applies such a
//! limit on top of the real module: every login still goes to the module, whose answer is counted; after
//! `limit` consecutive wrong PINs the injector answers `CKR_PIN_LOCKED` with the locked flag, even for the
//! right PIN, exactly as a locking token would. It exists for tests and drills, never for production use.

use std::sync::Mutex;

use crate::error::PinFlags;

/// Counts wrong PINs reported by the real module and locks after `limit` of them in a row.
#[derive(Debug)]
pub struct PinRetryLimit {
    limit: u32,
    failures: Mutex<u32>,
}

impl PinRetryLimit {
    /// A limit of `limit` consecutive wrong PINs (at least 1).
    pub fn new(limit: u32) -> Self {
        PinRetryLimit {
            limit: limit.max(1),
            failures: Mutex::new(0),
        }
    }

    fn failures(&self) -> u32 {
        self.failures.lock().map(|f| *f).unwrap_or(self.limit)
    }

    /// The flags a token with this retry limit would report now.
    pub fn flags(&self) -> PinFlags {
        let failures = self.failures();
        PinFlags {
            count_low: failures > 0,
            final_try: failures + 1 == self.limit,
            locked: failures >= self.limit,
        }
    }

    /// Whether the PIN is locked (logins are refused without reaching the module).
    pub fn locked(&self) -> bool {
        self.failures() >= self.limit
    }

    pub(crate) fn record_failure(&self) {
        if let Ok(mut f) = self.failures.lock() {
            *f = f.saturating_add(1);
        }
    }

    pub(crate) fn record_success(&self) {
        if let Ok(mut f) = self.failures.lock() {
            *f = 0;
        }
    }

    /// Merges the injector's flags into the flags the real token reported.
    pub(crate) fn merge(&self, real: PinFlags) -> PinFlags {
        let own = self.flags();
        PinFlags {
            count_low: real.count_low || own.count_low,
            final_try: real.final_try || own.final_try,
            locked: real.locked || own.locked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_progress_to_locked_and_reset_on_success() {
        let limit = PinRetryLimit::new(3);
        assert_eq!(limit.flags(), PinFlags::default());
        limit.record_failure();
        assert_eq!(
            limit.flags(),
            PinFlags {
                count_low: true,
                final_try: false,
                locked: false
            }
        );
        limit.record_failure();
        assert_eq!(
            limit.flags(),
            PinFlags {
                count_low: true,
                final_try: true,
                locked: false
            }
        );
        limit.record_success();
        assert!(!limit.flags().count_low);
        for _ in 0..3 {
            limit.record_failure();
        }
        assert!(limit.locked());
        assert!(limit.flags().locked);
    }
}
