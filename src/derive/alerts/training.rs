//! The rules about training runs: `TrainingFailed`, `TrainingLossNonFinite`,
//! `TrainingLossDiverging`, `TrainingStalled`, `TrainingContainerDied`. What they know of each container's run (its
//! losses, its pace, when it ended) is kept here.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::clock::Scope;
use super::lifecycle::{Ctx, When};
use super::settings::Diverging;
use super::vocabulary::{AlertName, first_line, labels};
use crate::derive::{EpochRow, EventRow, RunKey, RunRow, RunStatus, paths};
use crate::event::kind;
use crate::time::human_duration;

/// The epochs' durations kept per run for its pace.
const PACE_KEPT: usize = 64;

/// The runs' losses and pace; part of the snapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct State {
    losses: BTreeMap<Arc<str>, LossTrack>,
    /// When each container's latest run ended (absent while it runs).
    run_ended: BTreeMap<Arc<str>, i64>,
    /// The pace of each container's running run, for `TrainingStalled`.
    #[serde(default)]
    pace: BTreeMap<Arc<str>, Pace>,
    /// The run folders of failed runs whose alerts are still about them -> their container:
    /// the folder training again in another container resolves them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    failed_dirs: BTreeMap<String, Arc<str>>,
    /// Containers whose run folder's results.csv last said NaN/inf (a validation loss the
    /// console does not print): only a finite row of it resolves `TrainingLossNonFinite`, not
    /// the console's next epoch, which comes first.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    csv_non_finite: BTreeSet<Arc<str>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct LossTrack {
    run: Option<RunKey>,
    /// (epoch, total training loss) in epoch order.
    epochs: Vec<(u32, f64)>,
}

/// How a running run has been completing its epochs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Pace {
    run: RunKey,
    /// The latest epoch completed, and when (the run's start before the first).
    epoch: Option<u32>,
    at: i64,
    /// The latest epochs' durations (ns), at most [`PACE_KEPT`].
    durations: Vec<i64>,
}

impl Pace {
    /// How long without a completed epoch counts as stalled, once an epoch's time is known.
    fn limit(&self, factor: f64, min: i64) -> Option<i64> {
        let mut d = self.durations.clone();
        if d.is_empty() {
            return None;
        }
        d.sort_unstable();
        let median = d[d.len() / 2];
        Some(((median as f64 * factor) as i64).max(min))
    }
}

impl State {
    pub(super) fn on_event(&mut self, cx: &mut Ctx<'_>, e: &EventRow) {
        let c: &str = &e.container;
        match e.kind {
            // The message a run dies with (`NaN persisted`) once it has ended is no news.
            kind::LOSS_NON_FINITE if self.run_ended.get(c).is_some_and(|t| e.ts <= *t) => {}
            kind::LOSS_NON_FINITE => {
                let ctx: Value = serde_json::from_str(&e.context).unwrap_or(Value::Null);
                let epoch = ctx.get("epoch").and_then(Value::as_u64);
                let summary = match epoch {
                    Some(ep) => format!("Training loss is NaN/inf in {c} at epoch {ep}"),
                    None => format!("Training loss is NaN/inf in {c}"),
                };
                let run = self.losses.get(c).and_then(|t| t.run.clone());
                let l = labels(AlertName::TrainingLossNonFinite, &[("container", c)]);
                cx.fire_now(AlertName::TrainingLossNonFinite, l, summary, e.ts, run);
            }
            // A death that ended a run is that run's failure (`TrainingFailed`); one with no
            // run running (`status` null) pages by itself.
            kind::TRAINING_CONTAINER_DIED => {
                let ctx: Value = serde_json::from_str(&e.context).unwrap_or(Value::Null);
                if ctx.get("status").is_some_and(|s| !s.is_null()) {
                    return;
                }
                let l = labels(AlertName::TrainingContainerDied, &[("container", c)]);
                let summary = first_line(&e.message).to_string();
                cx.fire_now(AlertName::TrainingContainerDied, l, summary, e.ts, None);
            }
            kind::TRAINING_FAILED => {
                let l = labels(AlertName::TrainingFailed, &[("container", c)]);
                let summary = first_line(&e.message).to_string();
                let run = self.losses.get(c).and_then(|t| t.run.clone());
                cx.fire_now(AlertName::TrainingFailed, l, summary, e.ts, run);
            }
            _ => {}
        }
    }

    /// The daemon started `container` again: a training container that died runs again.
    pub(super) fn container_started(&self, cx: &mut Ctx<'_>, container: &str, ts: i64) {
        cx.resolve_named(AlertName::TrainingContainerDied, container, ts);
    }

    pub(super) fn on_epoch(&mut self, cx: &mut Ctx<'_>, key: &RunKey, e: &EpochRow) {
        // Any row of a new epoch is progress (the training and validation rows of one epoch
        // count once).
        if let Some(p) = self.pace.get_mut(&key.container)
            && p.run == *key
            && p.epoch != Some(e.epoch)
        {
            if e.ended_at > p.at {
                if p.durations.len() == PACE_KEPT {
                    p.durations.remove(0);
                }
                p.durations.push(e.ended_at - p.at);
            }
            p.epoch = Some(e.epoch);
            p.at = p.at.max(e.ended_at);
            cx.resolve_named(AlertName::TrainingStalled, &key.container, e.ended_at);
        }
        // Only the training row of an epoch carries losses; validation rows do not.
        let total = match (&e.losses, e.loss) {
            (Some(l), _) if !l.is_empty() => l.iter().map(|(_, v)| v).sum::<f64>(),
            (_, Some(v)) => v,
            _ => return,
        };
        let c = key.container.clone();
        let cs: &str = &c;
        // Any training epoch shows the GPU has memory again.
        cx.resolve_named(AlertName::GpuOutOfMemory, cs, e.ended_at);
        if e.non_finite == Some(true) {
            self.csv_non_finite.insert(c.clone());
        } else if e.non_finite == Some(false) {
            self.csv_non_finite.remove(cs);
        }
        if !total.is_finite() || e.non_finite == Some(true) {
            let l = labels(AlertName::TrainingLossNonFinite, &[("container", cs)]);
            let summary = if total.is_finite() {
                format!(
                    "A loss is NaN/inf in {cs} at epoch {} (in results.csv; training loss {total})",
                    e.epoch
                )
            } else {
                format!(
                    "Training loss is NaN/inf in {cs} at epoch {} (loss {total})",
                    e.epoch
                )
            };
            let name = AlertName::TrainingLossNonFinite;
            cx.fire_now(name, l, summary, e.ended_at, Some(key.clone()));
            return;
        }
        if !self.csv_non_finite.contains(cs) {
            cx.resolve_named(AlertName::TrainingLossNonFinite, cs, e.ended_at);
        }
        let rules = cx.rules;
        let d = &rules.diverging;
        let track = self.losses.entry(c.clone()).or_default();
        if track.run.as_ref() != Some(key) {
            track.run = Some(key.clone());
            track.epochs.clear();
        }
        // A re-run epoch (resume, NaN recovery) replaces what followed it.
        track.epochs.retain(|(ep, _)| *ep < e.epoch);
        track.epochs.push((e.epoch, total));
        let after: Vec<f64> = track
            .epochs
            .iter()
            .filter(|(ep, _)| *ep > d.warmup_epochs)
            .map(|(_, v)| *v)
            .collect();
        match diverging(&after, d) {
            Some(why) => {
                let l = labels(AlertName::TrainingLossDiverging, &[("container", cs)]);
                let summary = format!(
                    "Training loss diverging in {cs} at epoch {}: {why}",
                    e.epoch
                );
                let name = AlertName::TrainingLossDiverging;
                cx.fire_now(name, l, summary, e.ended_at, Some(key.clone()));
            }
            None => cx.resolve_named(AlertName::TrainingLossDiverging, cs, e.ended_at),
        }
    }

    /// A run's row changed. Its end resolves what needs it running (`TrainingStalled`), and a
    /// good end (completed, early stopped) what was about its losses; a failed or interrupted
    /// run keeps its alerts (the training is dead, its cause not gone) until it runs again
    /// (resumed, or a new run in its container or its run folder), or they are acknowledged.
    pub(super) fn on_run(&mut self, cx: &mut Ctx<'_>, r: &RunRow, ts: i64) {
        let key = &r.key;
        let c: &str = &key.container;
        let status = r.status;
        if status == RunStatus::Running {
            let was_ended = self.run_ended.remove(c).is_some();
            let new_run = self.pace.get(c).is_none_or(|p| p.run != *key);
            if new_run {
                self.pace.insert(
                    key.container.clone(),
                    Pace {
                        run: key.clone(),
                        epoch: None,
                        at: ts,
                        durations: Vec::new(),
                    },
                );
                // The container that died is training again.
                cx.resolve_named(AlertName::TrainingContainerDied, c, ts);
            }
            if was_ended || new_run {
                // A resumed run's row carries its first start: the time is the container's.
                let at = ts.max(cx.now(Some(c)));
                resolve_run_alerts(cx, c, at);
                self.csv_non_finite.remove(c);
            }
            // The same run folder trains again, in another container.
            if let Some(dir) = &r.save_dir {
                let others: Vec<String> = self
                    .failed_dirs
                    .iter()
                    .filter(|(d, other)| **other != key.container && paths::same(d, dir))
                    .map(|(d, _)| d.clone())
                    .collect();
                for d in others {
                    if let Some(other) = self.failed_dirs.remove(&d) {
                        resolve_run_alerts(cx, &other, ts);
                    }
                }
            }
        } else {
            self.run_ended.insert(key.container.clone(), ts);
            if self.pace.get(c).is_some_and(|p| p.run == *key) {
                self.pace.remove(c);
            }
            if status != RunStatus::Failed {
                cx.resolve_named(AlertName::TrainingStalled, c, ts);
            }
            if matches!(status, RunStatus::Completed | RunStatus::EarlyStopped) {
                for name in [
                    AlertName::TrainingLossNonFinite,
                    AlertName::TrainingLossDiverging,
                ] {
                    let l = labels(name, &[("container", c)]);
                    if cx.active(&l).is_some_and(|a| a.run.as_ref() == Some(key)) {
                        cx.resolve(&l, ts);
                    }
                }
            }
            if status == RunStatus::Failed
                && let Some(dir) = &r.save_dir
            {
                self.failed_dirs.insert(dir.clone(), key.container.clone());
            }
        }
        if let Some(t) = self.losses.get_mut(c)
            && t.run.as_ref() != Some(key)
        {
            t.run = Some(key.clone());
            t.epochs.clear();
        }
    }

    /// Forgets a container removed long ago.
    pub(super) fn forget(&mut self, container: &str) {
        self.losses.remove(container);
        self.run_ended.remove(container);
        self.pace.remove(container);
        self.failed_dirs.retain(|_, c| &**c != container);
        self.csv_non_finite.remove(container);
    }

    /// An archived log ended (`replay`): whether the run goes on is no longer known, and
    /// what was about its runs is history: it resolves at the log's last time (a replayed
    /// crash of last month is recorded, firing until its archive ends, and pages nobody).
    pub(super) fn log_ended(&mut self, cx: &mut Ctx<'_>, container: &Arc<str>, at: i64) {
        resolve_run_alerts(cx, container, at);
        self.pace.remove(container);
    }

    /// The time-based rule: runs that completed no epoch for max(`training_stalled_factor` x
    /// their median epoch time, `training_stalled_min`).
    pub(super) fn evaluate(&self, cx: &mut Ctx<'_>, scope: &Scope) {
        let (factor, min) = (
            cx.rules.training_stalled_factor,
            cx.rules.training_stalled_min.0,
        );
        let stalled: Vec<(Arc<str>, i64, i64, Option<u32>)> = self
            .pace
            .iter()
            .filter(|(c, _)| scope.holds(c))
            .filter_map(|(c, p)| {
                let limit = p.limit(factor, min)?;
                (cx.now(Some(c)) - p.at > limit).then(|| (c.clone(), p.at, limit, p.epoch))
            })
            .collect();
        for (container, at, limit, epoch) in stalled {
            let now = cx.now(Some(&container));
            let l = labels(AlertName::TrainingStalled, &[("container", &container)]);
            let after = epoch.map_or_else(String::new, |e| format!(" since epoch {e}"));
            let summary = format!(
                "Training in {container} has completed no epoch for {}{after} (limit {})",
                human_duration(now - at),
                human_duration(limit)
            );
            let when = When {
                since: at + limit,
                for_ns: 0,
                evidence: now,
            };
            cx.condition(AlertName::TrainingStalled, l, summary, when, now);
        }
    }
}

/// The run `container` trains again (resumed, or a new run): what was about its last run
/// resolves.
fn resolve_run_alerts(cx: &mut Ctx<'_>, container: &str, ts: i64) {
    for name in [
        AlertName::TrainingFailed,
        AlertName::TrainingLossNonFinite,
        AlertName::TrainingLossDiverging,
        AlertName::TrainingStalled,
    ] {
        if cx.any_active(name) {
            cx.resolve_named(name, container, ts);
        }
    }
}

/// Why the losses after warm-up count as diverging, if they do.
pub fn diverging(losses: &[f64], d: &Diverging) -> Option<String> {
    let mut min = f64::INFINITY;
    let mut above = 0u32;
    let mut rising = 0u32;
    let mut prev: Option<f64> = None;
    let mut why = None;
    for &v in losses {
        min = min.min(v);
        above = if v > d.factor * min { above + 1 } else { 0 };
        rising = match prev {
            Some(p) if v > p => rising + 1,
            _ => 0,
        };
        prev = Some(v);
        why = if d.above_for_epochs > 0 && above >= d.above_for_epochs {
            Some(format!(
                "loss {v:.4} above {}x its minimum {min:.4} for {above} epochs",
                d.factor
            ))
        } else if d.rising_epochs > 0 && rising >= d.rising_epochs {
            Some(format!("loss {v:.4} rose {rising} epochs in a row"))
        } else {
            None
        };
    }
    why
}
