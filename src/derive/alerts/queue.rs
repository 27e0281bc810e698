//! The annotation queue's rules: `QueueContainerDown`, `QueueOffsetStale`,
//! `QueueFailureRateHigh`. What they know of the containers (their role and whether they run),
//! the offsets and the messages' outcomes is kept here.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::clock::Scope;
use super::lifecycle::{Ctx, When};
use super::vocabulary::{AlertName, labels};
use crate::derive::{EventRow, MetricRow};
use crate::event::{kind, metric};
use crate::time::human_duration;

/// The role of the annotation queue's containers.
const QUEUE: &str = "queue";

/// The containers' states and the queues' offsets; part of the snapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct State {
    containers: BTreeMap<Arc<str>, ContainerFacts>,
    /// Each queue's latest offset and when it took that value.
    offsets: BTreeMap<Arc<str>, (f64, i64)>,
    /// Each queue's messages processed and failed, per minute, over the failure window.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    outcomes: BTreeMap<Arc<str>, Vec<Minute>>,
}

/// The messages of one minute: (its start in ns, processed, failed).
type Minute = (i64, u32, u32);

const MINUTE_NS: i64 = 60_000_000_000;

/// The processed and failed messages of the minutes in the window ending at `now`.
fn totals(minutes: &[Minute], window: i64, now: i64) -> (u32, u32) {
    minutes
        .iter()
        .filter(|m| m.0 + MINUTE_NS > now - window)
        .fold((0, 0), |(p, f), m| (p + m.1, f + m.2))
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ContainerFacts {
    role: String,
    running: bool,
    since: i64,
}

impl State {
    /// A followed container's state, since `ts` when it changed.
    pub(super) fn container(&mut self, name: &Arc<str>, role: &str, running: bool, ts: i64) {
        let f = self
            .containers
            .entry(name.clone())
            .or_insert_with(|| ContainerFacts {
                role: role.to_string(),
                running,
                since: ts,
            });
        f.role = role.to_string();
        if f.running != running {
            f.running = running;
            f.since = ts;
        }
    }

    /// A container the daemon reported started (`running`) or stopped: its new state; its
    /// rules are to be evaluated again.
    pub(super) fn on_daemon_event(&mut self, e: &EventRow, running: bool) -> Scope {
        let ctx: serde_json::Value = serde_json::from_str(&e.context).unwrap_or_default();
        let role = ctx
            .get("role")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("other");
        self.container(&e.container, role, running, e.ts);
        Scope::Container(e.container.clone())
    }

    /// Restores each queue's offset and when it last changed (ns).
    pub(super) fn restore_offsets(&mut self, offsets: Vec<(Arc<str>, f64, i64)>) {
        for (container, value, changed) in offsets {
            self.offsets.insert(container, (value, changed));
        }
    }

    pub(super) fn on_metric(&mut self, cx: &mut Ctx<'_>, m: &MetricRow) {
        if m.name != metric::QUEUE_OFFSET {
            return;
        }
        let e = self
            .offsets
            .entry(m.container.clone())
            .or_insert((m.value, m.ts));
        if e.0 != m.value {
            *e = (m.value, m.ts);
            cx.resolve_named(AlertName::QueueOffsetStale, &m.container, m.ts);
        }
    }

    /// A queue message processed or failed (`annotation_processed`, `annotation_failed`):
    /// the failure rate over the window is tested again.
    pub(super) fn on_event(&mut self, cx: &mut Ctx<'_>, e: &EventRow) {
        let failed = match e.kind {
            kind::ANNOTATION_PROCESSED => false,
            kind::ANNOTATION_FAILED => true,
            _ => return,
        };
        let window = cx.rules.queue_failure_window.0;
        let minutes = self.outcomes.entry(e.container.clone()).or_default();
        let start = e.ts - e.ts.rem_euclid(MINUTE_NS);
        match minutes.iter_mut().find(|m| m.0 == start) {
            Some(m) if failed => m.2 += 1,
            Some(m) => m.1 += 1,
            None => {
                minutes.push((start, u32::from(!failed), u32::from(failed)));
                minutes.sort_unstable_by_key(|m| m.0);
            }
        }
        // A clock that went forward keeps what is still in its window.
        let newest = minutes.last().map_or(start, |m| m.0);
        minutes.retain(|m| m.0 + MINUTE_NS > newest - window);
        self.failure_rate(cx, &e.container, e.ts);
    }

    /// `QueueFailureRateHigh` for `container` at `now`: fires while more than
    /// `queue_failure_ratio` of at least `queue_failure_min` messages in the window failed.
    fn failure_rate(&self, cx: &mut Ctx<'_>, container: &Arc<str>, now: i64) {
        let Some(minutes) = self.outcomes.get(container) else {
            return;
        };
        let r = cx.rules;
        let (window, ratio, min) = (
            r.queue_failure_window.0,
            r.queue_failure_ratio,
            r.queue_failure_min,
        );
        let (processed, failed) = totals(minutes, window, now);
        let total = processed + failed;
        let high = total >= min.max(1) && f64::from(failed) > ratio * f64::from(total);
        if high {
            let l = labels(AlertName::QueueFailureRateHigh, &[("container", container)]);
            let summary = format!(
                "{failed} of {total} queue messages failed in {container} in the last {} ({:.0} %)",
                human_duration(window),
                100.0 * f64::from(failed) / f64::from(total)
            );
            let when = When::sample(now, 0);
            cx.condition(AlertName::QueueFailureRateHigh, l, summary, when, now);
        } else {
            cx.resolve_named(AlertName::QueueFailureRateHigh, container, now);
        }
    }

    /// Forgets a container removed long ago.
    pub(super) fn forget(&mut self, container: &str) {
        self.containers.remove(container);
        self.offsets.remove(container);
        self.outcomes.remove(container);
    }

    /// An archived log ended: whether the offset moves, and how many messages fail, is no
    /// longer known.
    pub(super) fn log_ended(&mut self, cx: &mut Ctx<'_>, container: &Arc<str>, at: i64) {
        cx.resolve_named(AlertName::QueueOffsetStale, container, at);
        cx.resolve_named(AlertName::QueueFailureRateHigh, container, at);
        self.offsets.remove(container);
        self.outcomes.remove(container);
    }

    /// The time-based rules: queues down for `queue_down_for`, offsets that have not moved
    /// for `queue_offset_stale_after` while the queue runs.
    pub(super) fn evaluate(&self, cx: &mut Ctx<'_>, scope: &Scope) {
        // Evaluated once per second of log time: the lists below stay empty (and allocate
        // nothing) unless something is down, stale, or active.
        let down: Vec<(Arc<str>, i64)> = self
            .containers
            .iter()
            .filter(|(n, f)| f.role == QUEUE && !f.running && scope.holds(n))
            .map(|(n, f)| (n.clone(), f.since))
            .collect();
        for (name, since) in down {
            let now = cx.now(Some(&name));
            let l = labels(AlertName::QueueContainerDown, &[("container", &name)]);
            let summary = format!(
                "Annotation queue container {name} is not running (since {})",
                crate::time::format_ns(since)
            );
            let when = When {
                since,
                for_ns: cx.rules.queue_down_for.0,
                evidence: now,
            };
            cx.condition(AlertName::QueueContainerDown, l, summary, when, now);
        }
        if cx.any_active(AlertName::QueueContainerDown) {
            let running: Vec<Arc<str>> = self
                .containers
                .iter()
                .filter(|(n, f)| f.role == QUEUE && f.running && scope.holds(n))
                .map(|(n, _)| n.clone())
                .collect();
            for name in running {
                let now = cx.now(Some(&name));
                cx.resolve_named(AlertName::QueueContainerDown, &name, now);
            }
        }
        let stale_after = cx.rules.queue_offset_stale_after.0;
        let stale: Vec<(Arc<str>, f64, i64)> = self
            .offsets
            .iter()
            .filter(|(c, (_, t))| scope.holds(c) && self.offset_stale(cx, c, *t))
            .map(|(c, (v, t))| (c.clone(), *v, *t))
            .collect();
        for (container, value, changed) in stale {
            let now = cx.now(Some(&container));
            let l = labels(AlertName::QueueOffsetStale, &[("container", &container)]);
            let summary = format!(
                "Queue offset of {container} stuck at {value} for {}",
                human_duration(now - changed)
            );
            let when = When {
                since: changed + stale_after,
                for_ns: 0,
                evidence: now,
            };
            cx.condition(AlertName::QueueOffsetStale, l, summary, when, now);
        }
        if cx.any_active(AlertName::QueueOffsetStale) {
            let moving: Vec<Arc<str>> = self
                .offsets
                .iter()
                .filter(|(c, (_, t))| scope.holds(c) && !self.offset_stale(cx, c, *t))
                .map(|(c, _)| c.clone())
                .collect();
            for c in moving {
                let now = cx.now(Some(&c));
                cx.resolve_named(AlertName::QueueOffsetStale, &c, now);
            }
        }
        self.evaluate_failure_rates(cx, scope);
    }

    /// The failure rates of the queues whose alert fires, as the window slides past their
    /// failures.
    fn evaluate_failure_rates(&self, cx: &mut Ctx<'_>, scope: &Scope) {
        if !cx.any_active(AlertName::QueueFailureRateHigh) {
            return;
        }
        let firing: Vec<Arc<str>> = self
            .outcomes
            .keys()
            .filter(|c| scope.holds(c))
            .filter(|c| {
                let l = labels(AlertName::QueueFailureRateHigh, &[("container", c)]);
                cx.active(&l).is_some()
            })
            .cloned()
            .collect();
        for c in firing {
            let now = cx.now(Some(&c));
            self.failure_rate(cx, &c, now);
        }
    }

    fn queue_running(&self, container: &str) -> bool {
        if let Some(f) = self.containers.get(container) {
            return f.running;
        }
        // Without knowledge of the container (e.g. in replay), assume it runs.
        let mut queues = self
            .containers
            .values()
            .filter(|f| f.role == QUEUE)
            .peekable();
        queues.peek().is_none() || queues.any(|f| f.running)
    }

    /// Whether `container`'s offset, unchanged since `changed`, counts as stale now.
    fn offset_stale(&self, cx: &Ctx<'_>, container: &str, changed: i64) -> bool {
        cx.now(Some(container)) - changed > cx.rules.queue_offset_stale_after.0
            && self.queue_running(container)
    }
}
