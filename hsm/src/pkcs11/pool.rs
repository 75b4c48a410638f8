//! A bounded pool of PKCS#11 sessions: a session serves one thread at a time, so a pool of N lets N
//! threads use the token at once, and the N+1st waits instead of opening sessions without limit.

use std::sync::{Condvar, Mutex};

use cryptoki::session::Session;

use crate::error::{Error, Result};

pub(crate) struct Pool {
    state: Mutex<State>,
    freed: Condvar,
    max: usize,
}

struct State {
    idle: Vec<Session>,
    open: usize,
}

impl Pool {
    pub fn new(max: usize) -> Self {
        Pool {
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
            max: max.max(1),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Sessions open now (idle or lent out).
    pub fn open_count(&self) -> usize {
        self.state.lock().map(|s| s.open).unwrap_or(0)
    }

    /// Takes an idle session, opens a new one with `open` while under the bound, or waits.
    pub fn get(&self, open: impl FnOnce() -> Result<Session>) -> Result<Pooled<'_>> {
        let poisoned = || Error::Pkcs11 {
            token: String::new(),
            function: "session pool".into(),
            detail: "a thread panicked while holding the pool".into(),
        };
        let mut state = self.state.lock().map_err(|_| poisoned())?;
        loop {
            if let Some(session) = state.idle.pop() {
                return Ok(Pooled {
                    session: Some(session),
                    pool: self,
                    discard: false,
                });
            }
            if state.open < self.max {
                state.open += 1;
                drop(state);
                return match open() {
                    Ok(session) => Ok(Pooled {
                        session: Some(session),
                        pool: self,
                        discard: false,
                    }),
                    Err(e) => {
                        self.release_slot();
                        Err(e)
                    }
                };
            }
            state = self.freed.wait(state).map_err(|_| poisoned())?;
        }
    }

    fn release_slot(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.open = state.open.saturating_sub(1);
        }
        self.freed.notify_one();
    }
}

/// A session on loan from the pool; returned on drop (or closed, if marked broken).
pub(crate) struct Pooled<'a> {
    session: Option<Session>,
    pool: &'a Pool,
    discard: bool,
}

impl Pooled<'_> {
    pub fn session(&self) -> &Session {
        // The session is only taken out in Drop.
        match &self.session {
            Some(s) => s,
            None => unreachable_session(),
        }
    }

    /// Closes the session instead of returning it (after a session or device error).
    pub fn discard(&mut self) {
        self.discard = true;
    }
}

#[allow(clippy::panic)] // invariant: `session` is Some until Drop
fn unreachable_session() -> ! {
    panic!("pooled session used after drop")
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            if self.discard {
                drop(session);
                self.pool.release_slot();
            } else {
                if let Ok(mut state) = self.pool.state.lock() {
                    state.idle.push(session);
                }
                self.pool.freed.notify_one();
            }
        }
    }
}
