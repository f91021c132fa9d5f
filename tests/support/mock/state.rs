//! What a mock keeps between requests: the records, the scripts waiting
//! their turn, and the count of requests in flight per key.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::{Arc, Mutex, atomic::AtomicUsize},
};

use super::{FaultFn, Recorded, Script};

/// How the in-flight counters and [`super::MockUpstream::keys_seen`] name
/// requests without a key.
pub(super) const NO_KEY: &str = "<no key>";

/// Scripts for one key.
#[derive(Default)]
pub(super) struct KeyScripts {
    pub(super) queue: VecDeque<Script>,
    pub(super) always: Option<FaultFn>,
}

/// Requests in flight with one key, now and at most.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Flight {
    pub(super) now: usize,
    pub(super) max: usize,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) requests: Mutex<Vec<Recorded>>,
    pub(super) scripts: Mutex<VecDeque<Script>>,
    pub(super) per_key: Mutex<HashMap<String, KeyScripts>>,
    pub(super) flights: Mutex<HashMap<String, Flight>>,
    /// Streams whose last event has been handed to the connection.
    pub(super) streams_finished: AtomicUsize,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

impl State {
    /// The script for a request with `key`: its own queue first, then its
    /// fault function, then the queue for any key.
    pub(super) fn next_script(&self, key: &str, req: &Recorded) -> Option<Script> {
        let always = {
            let mut per_key = self.per_key.lock().unwrap();
            match per_key.get_mut(key) {
                Some(scripts) => match scripts.queue.pop_front() {
                    Some(script) => return Some(script),
                    None => scripts.always.clone(),
                },
                None => None,
            }
        };
        // Called without the lock, so that it may do anything.
        if let Some(pick) = always {
            return Some(pick(req));
        }
        self.scripts.lock().unwrap().pop_front()
    }
}

/// Counts one request in flight for its key until dropped.
pub(super) struct Flying {
    state: Arc<State>,
    key: String,
}

impl Flying {
    pub(super) fn new(state: Arc<State>, key: &str) -> Self {
        {
            let mut flights = state.flights.lock().unwrap();
            let flight = flights.entry(key.to_owned()).or_default();
            flight.now += 1;
            flight.max = flight.max.max(flight.now);
        }
        Self { state, key: key.to_owned() }
    }
}

impl Drop for Flying {
    fn drop(&mut self) {
        let mut flights = self.state.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = flights.get_mut(&self.key) {
            flight.now -= 1;
        }
    }
}
