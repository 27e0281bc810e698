//! The engine's time: the wall clock of `watch`'s ticks, the newest log time, and in
//! `replay` each container's own log time.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The time-based rules are evaluated once per second of (log) time.
const EVAL_EVERY_NS: i64 = 1_000_000_000;

/// The times the engine has seen; part of its snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Clocks {
    /// The newest time seen: ticks (the wall clock, in `watch`) and log times.
    pub(super) clock: i64,
    next_eval: i64,
    /// The newest tick (the wall clock).
    wall: i64,
    /// Each container's own newest log time (`replay`).
    clocks: BTreeMap<Arc<str>, Clock>,
}

/// A container's own clock in `replay`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Clock {
    at: i64,
    next_eval: i64,
}

impl Default for Clocks {
    fn default() -> Self {
        Clocks {
            clock: i64::MIN,
            next_eval: i64::MIN,
            wall: i64::MIN,
            clocks: BTreeMap::new(),
        }
    }
}

impl Clocks {
    /// The time it is for the alerts about `container`. In `watch` (`live`), one clock for
    /// all: the wall clock of the ticks, or a newer log time. In `replay`, each container's
    /// own log time: archives of several containers are replayed one after another, and the
    /// hour a queue's offset has not moved is an hour of the queue's log, not of the
    /// training's.
    pub(super) fn now(&self, live: bool, container: Option<&str>) -> i64 {
        match container.and_then(|c| self.clocks.get(c)) {
            Some(c) if !live => c.at.max(self.wall),
            _ => self.clock,
        }
    }

    /// Moves the clock to a log time `ts` of `container` and says which rules are due for
    /// evaluation, once per second of time: that container's in `replay`, all in `watch`.
    pub(super) fn advance(
        &mut self,
        live: bool,
        ts: i64,
        container: Option<&Arc<str>>,
    ) -> Option<Scope> {
        self.clock = self.clock.max(ts);
        match container {
            Some(c) if !live => {
                let clock = self.clocks.entry(c.clone()).or_insert(Clock {
                    at: ts,
                    next_eval: i64::MIN,
                });
                clock.at = clock.at.max(ts);
                (clock.at >= clock.next_eval).then(|| {
                    clock.next_eval = clock.at.saturating_add(EVAL_EVERY_NS);
                    Scope::Container(c.clone())
                })
            }
            _ => self.due().then_some(Scope::All),
        }
    }

    /// Forgets a container's own clock (its archive was read, or it was removed): its next
    /// log time starts it again.
    pub(super) fn forget(&mut self, container: &str) {
        self.clocks.remove(container);
    }

    /// A tick of the wall clock: whether all rules are due.
    pub(super) fn tick(&mut self, now: i64) -> bool {
        // Like any op, a tick evaluates once a second of time has passed: a tick that brings
        // no new time (a restart's first) changes nothing, so where a restart falls does not
        // move the evaluations.
        self.clock = self.clock.max(now);
        self.wall = self.wall.max(now);
        self.due()
    }

    /// Moves the clock to `now` without evaluating (the store's health, a restart).
    pub(super) fn reach(&mut self, now: i64) {
        self.clock = self.clock.max(now);
    }

    fn due(&self) -> bool {
        self.clock >= self.next_eval
    }

    /// All rules are being evaluated now: the next time is a second later.
    pub(super) fn evaluating_all(&mut self) {
        self.next_eval = self.clock.saturating_add(EVAL_EVERY_NS);
    }
}

/// Which rules an evaluation is about: one container's (in `replay`, at that container's own
/// time), or all.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Scope {
    All,
    Container(Arc<str>),
}

impl Scope {
    pub(super) fn holds(&self, container: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Container(c) => **c == *container,
        }
    }
}
