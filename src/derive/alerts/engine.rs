//! The engine: the time, the dispatch of each committed op to the rule families, their
//! evaluation (one call per family), and the snapshot a restart resumes from.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::clock::{Clocks, Scope};
use super::lifecycle::{Ctx, Lifecycle};
use super::settings::{FOR_GRACE_NS, Rules};
use super::vocabulary::{Alert, Change, Loaded, Signal};
use super::{events, host, queue, training};
use crate::derive::{ContainerRun, EventRow, MetricRow, Op};
use crate::event::kind;

/// Format of the snapshot; another version is not resumed.
const SNAPSHOT_VERSION: u32 = 1;

/// The rule engine. See the [module documentation](super).
pub struct Engine {
    rules: Rules,
    /// Whether changes are to be notified (`watch`), or only recorded (`replay`).
    live: bool,
    /// The data root the disk probe measures: the `mount` label.
    mount: String,
    st: EngineState,
}

/// Everything the engine has learnt from the ops it saw: what it is a fold of. The writer
/// stores it with every batch it commits ([`Engine::snapshot`]), so that a restart after a
/// crash continues from exactly what was committed ([`Engine::resume`]), as if never stopped.
/// Ordered maps, so that evaluation (and the order of its changes) and the snapshot are
/// deterministic. One flat JSON object: each part's fields sit at the top level.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct EngineState {
    version: u32,
    #[serde(flatten)]
    time: Clocks,
    #[serde(flatten)]
    life: Lifecycle,
    #[serde(flatten)]
    queue: queue::State,
    #[serde(flatten)]
    training: training::State,
    /// Containers the daemon removed, and when: their alerts resolve, and what the families
    /// know of them is forgotten, `forget_removed_after` later (unless one of the name starts
    /// again).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    removed: BTreeMap<Arc<str>, i64>,
}

impl Default for EngineState {
    fn default() -> Self {
        EngineState {
            version: SNAPSHOT_VERSION,
            time: Clocks::default(),
            life: Lifecycle::default(),
            queue: queue::State::default(),
            training: training::State::default(),
            removed: BTreeMap::new(),
        }
    }
}

/// A container the daemon reported started (`Some(true)`) or stopped (`Some(false)`).
fn daemon_container_event(e: &EventRow) -> Option<bool> {
    if e.stream != "docker" {
        return None;
    }
    match e.kind {
        kind::CONTAINER_STARTED => Some(true),
        kind::CONTAINER_DIED | kind::CONTAINER_OOM_KILLED => Some(false),
        _ => None,
    }
}

impl Engine {
    pub fn new(rules: Rules, live: bool, mount: impl Into<String>) -> Self {
        Engine {
            rules,
            live,
            mount: mount.into(),
            st: EngineState::default(),
        }
    }

    /// Runs `f` with a family's context and the families' states.
    fn with<R>(
        &mut self,
        out: &mut Vec<Change>,
        f: impl FnOnce(&mut Ctx<'_>, &mut queue::State, &mut training::State) -> R,
    ) -> R {
        let EngineState {
            time,
            life,
            queue,
            training,
            ..
        } = &mut self.st;
        let mut cx = Ctx::new(&self.rules, &self.mount, self.live, time, life, out);
        f(&mut cx, queue, training)
    }

    /// Restores the alerts that were firing when trainwatch stopped: a restart neither fires
    /// them again nor forgets them.
    pub fn restore(&mut self, loaded: Vec<Loaded>) {
        self.st.life.restore(loaded, self.live);
    }

    /// The engine's state, for the store to commit with each batch: the one thing a restart
    /// needs to continue exactly ([`Engine::resume`]).
    pub fn snapshot(&self) -> String {
        // Nothing in the state is a map with non-string keys or a non-finite number (only
        // finite losses and offsets are kept), so this cannot fail.
        serde_json::to_string(&self.st).unwrap_or_default()
    }

    /// Continues from a [`Engine::snapshot`] committed by an earlier run of the same kind
    /// (`watch` or `replay`): pending clocks, the last recurrence of event alerts, the run each
    /// loss alert is about, container states, offsets, the loss history. An unreadable
    /// snapshot (another version) is refused and the engine left as it was.
    pub fn resume(&mut self, snapshot: &str) -> Result<(), String> {
        let st: EngineState = serde_json::from_str(snapshot).map_err(|e| e.to_string())?;
        if st.version != SNAPSHOT_VERSION {
            return Err(format!(
                "snapshot version {} (known: {SNAPSHOT_VERSION})",
                st.version
            ));
        }
        self.st = st;
        self.st.life.notify_only_if(self.live);
        Ok(())
    }

    /// After [`Engine::resume`]: agrees with the alerts the store holds as firing. One that
    /// another engine closed since (a replay into the same database) is forgotten, one that
    /// another engine fired is taken on as [`Engine::restore`] does.
    pub fn reconcile(&mut self, firing: Vec<Loaded>) {
        self.st.life.reconcile(firing, self.live);
    }

    /// After a stop longer than [`FOR_GRACE_NS`] at `now`, nobody knows what held meanwhile:
    /// the `for` durations that were running start again (as in Prometheus).
    pub fn expire_pending(&mut self, now: i64) {
        if now - self.st.time.clock > FOR_GRACE_NS {
            self.st.life.forget_pending();
        }
    }

    /// Restores each container's queue offset and when it last changed (ns), so that a
    /// restart does not start the staleness clock again.
    pub fn restore_offsets(&mut self, offsets: Vec<(Arc<str>, f64, i64)>) {
        self.st.queue.restore_offsets(offsets);
    }

    /// The probe samples a restart reads back to continue the rules that wait a `for`
    /// duration on them: the metric names and how far back (ns), or `None` when no rule waits.
    pub fn pending_window(&self) -> Option<(Vec<&'static str>, i64)> {
        let waits = host::waits(&self.rules);
        let window = waits.iter().map(|w| w.1).max().unwrap_or(0);
        let names = waits.iter().filter(|w| w.1 > 0).map(|w| w.0).collect();
        (window > 0).then_some((names, window + FOR_GRACE_NS))
    }

    /// Continues the `for` durations that were running when trainwatch stopped, from the
    /// stored probe samples of [`Engine::pending_window`] (oldest first): a restart does not
    /// start a GPU's two minutes over 90 °C again. As Prometheus does with its
    /// `for-grace-period`, this is only done when the newest sample is at most
    /// [`FOR_GRACE_NS`] old at `now`, and only from the samples after the last gap longer
    /// than that (an earlier stop); after a longer stop nobody knows what held meanwhile, and
    /// the durations start again.
    pub fn restore_pending(&mut self, samples: &[MetricRow], now: i64, out: &mut Vec<Change>) {
        let Some(newest) = samples.last().map(|m| m.ts) else {
            return;
        };
        if now - newest > FOR_GRACE_NS {
            return;
        }
        let from = samples
            .windows(2)
            .rposition(|w| w[1].ts - w[0].ts > FOR_GRACE_NS)
            .map_or(0, |i| i + 1);
        for m in &samples[from..] {
            self.st.time.reach(m.ts);
            self.on_metric(m, out);
        }
    }

    /// The thresholds and durations it applies.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Whether this engine notifies (it runs in `watch`).
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// The firing alerts, most severe first.
    pub fn firing(&self) -> Vec<Alert> {
        self.st.life.firing()
    }

    /// Feeds one committed op. `out` receives the resulting changes.
    pub fn observe(&mut self, op: &Op, out: &mut Vec<Change>) {
        match op {
            Op::Event(e) => {
                self.advance(e.ts, Some(&e.container), out);
                self.on_event(e, out);
            }
            Op::Metric(m) => {
                self.advance(m.ts, Some(&m.container), out);
                self.on_metric(m, out);
            }
            Op::Epoch(key, e) => {
                self.advance(e.ended_at, Some(&key.container), out);
                self.with(out, |cx, _, t| t.on_epoch(cx, key, e));
            }
            Op::Run(r) => {
                let ts = r.ended_at.unwrap_or(r.started_at);
                self.advance(ts, Some(&r.key.container), out);
                self.with(out, |cx, _, t| t.on_run(cx, r, ts));
            }
            Op::ContainerState(ts, name, ContainerRun::Removed) => {
                self.advance(*ts, Some(name), out);
                self.st.removed.insert(name.clone(), *ts);
            }
            Op::Cursor(_)
            | Op::ResultsRow(..)
            | Op::RunPatch(..)
            | Op::Container(..)
            | Op::State(..)
            | Op::ContainerState(..)
            | Op::ForgetOrigin(_)
            | Op::Prune { .. } => {}
            Op::Tick(now) => {
                if self.st.time.tick(*now) {
                    self.evaluate(&Scope::All, out);
                }
            }
            // What needs the container watched while it runs is no longer known: it resolves
            // at the log's own last time, without moving any clock.
            Op::Signal(_, Signal::LogEnded { container }) => {
                let idle = self.with(out, |cx, q, t| {
                    let at = cx.now(Some(container));
                    q.log_ended(cx, container, at);
                    t.log_ended(cx, container, at);
                    cx.active_in(&Scope::Container(container.clone()))
                        .is_empty()
                });
                // What the families know of it is history now: forgotten (a replay of
                // thousands of archives keeps a state, and a snapshot per batch, of the
                // containers still being read), unless an alert about it still fires.
                if idle {
                    self.st.time.forget(container);
                    self.st.queue.forget(container);
                    self.st.training.forget(container);
                }
            }
            Op::Signal(ts, s) => {
                let ts = *ts;
                let scope = match s {
                    Signal::Container { name, .. } => Some(name),
                    Signal::StreamSilent { container, .. } | Signal::LogEnded { container } => {
                        Some(container)
                    }
                    Signal::DockerReachable => None,
                };
                self.advance(ts, scope, out);
                let again = self.with(out, |cx, q, _| match s {
                    Signal::Container {
                        name,
                        role,
                        running,
                    } => {
                        q.container(name, role, *running, ts);
                        Scope::Container(name.clone())
                    }
                    Signal::DockerReachable => {
                        events::daemon_answered(cx, ts);
                        Scope::All
                    }
                    Signal::StreamSilent { container, silent } => {
                        events::stream_silent(cx, container, *silent, ts);
                        Scope::Container(container.clone())
                    }
                    Signal::LogEnded { container } => Scope::Container(container.clone()),
                });
                self.evaluate(&again, out);
            }
        }
    }

    /// The store could not commit (`Err`) or committed again (`Ok`).
    pub fn store_health(&mut self, now: i64, error: Option<&str>, out: &mut Vec<Change>) {
        self.st.time.reach(now);
        self.with(out, |cx, _, _| events::store_health(cx, now, error));
    }

    fn advance(&mut self, ts: i64, container: Option<&Arc<str>>, out: &mut Vec<Change>) {
        if let Some(scope) = self.st.time.advance(self.live, ts, container) {
            self.evaluate(&scope, out);
        }
    }

    /// Evaluates the time-based rules of every family, each at the time of the container it
    /// is about: those of `scope` only, or all; then repeats what is due.
    fn evaluate(&mut self, scope: &Scope, out: &mut Vec<Change>) {
        if *scope == Scope::All {
            self.st.time.evaluating_all();
        }
        self.forget_removed(scope, out);
        self.with(out, |cx, q, t| {
            q.evaluate(cx, scope);
            t.evaluate(cx, scope);
            events::evaluate(cx, scope);
            cx.repeat(scope);
        });
    }

    /// The containers removed `forget_removed_after` ago: their alerts resolve (nobody can
    /// act on them any more) and the families forget them.
    fn forget_removed(&mut self, scope: &Scope, out: &mut Vec<Change>) {
        if self.st.removed.is_empty() {
            return;
        }
        let after = self.rules.forget_removed_after.0;
        let clocks = &self.st.time;
        let due: Vec<(Arc<str>, i64)> = self
            .st
            .removed
            .iter()
            .filter(|(c, _)| scope.holds(c))
            .map(|(c, t)| (c.clone(), t.saturating_add(after)))
            .filter(|(c, at)| clocks.now(self.live, Some(c)) >= *at)
            .collect();
        for (c, at) in due {
            self.st.removed.remove(&c);
            self.with(out, |cx, q, t| {
                cx.resolve_container(&c, at);
                q.forget(&c);
                t.forget(&c);
            });
            self.st.time.forget(&c);
        }
    }

    fn on_event(&mut self, e: &EventRow, out: &mut Vec<Change>) {
        if daemon_container_event(e) == Some(true) {
            // A container of that name again: not the removed one.
            self.st.removed.remove(&e.container);
        }
        let again = self.with(out, |cx, q, t| match daemon_container_event(e) {
            Some(running) => {
                events::daemon_answered(cx, e.ts);
                if running {
                    t.container_started(cx, &e.container, e.ts);
                }
                Some(q.on_daemon_event(e, running))
            }
            None => {
                events::on_event(cx, e);
                q.on_event(cx, e);
                t.on_event(cx, e);
                None
            }
        });
        if let Some(scope) = again {
            self.evaluate(&scope, out);
        }
    }

    fn on_metric(&mut self, m: &MetricRow, out: &mut Vec<Change>) {
        self.with(out, |cx, q, _| {
            host::on_metric(cx, m);
            q.on_metric(cx, m);
            events::on_metric(cx, m);
        });
    }
}
