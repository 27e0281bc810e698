//! The per-container state machine for training runs, epochs, queue counters and the events
//! they produce.
//!
//! Rules (from how Ultralytics behaves; see `../shared/reference/log-formats.md` §1):
//! - A run starts at the trainer's settings line (`engine/trainer: ...`) or, without one, at
//!   `Starting training for N epochs...`, or implicitly at the first epoch seen without a run.
//!   The `Ultralytics 8.x 🚀` banner is not a start: it is printed again before the final
//!   validation of `best.pt`.
//! - `resume=<path>` in the settings, or `Resuming training ... from epoch K`, continues the run
//!   with the same `save_dir` (else the latest run of the container).
//! - A new start while a run is still `running` means the earlier process died without an end
//!   message: that run becomes `interrupted`.
//! - An epoch is complete when its bar's last frame shows all batches (or the line was closed
//!   with `\n`); the following `all` row is that epoch's validation. After
//!   `N epochs completed` / `Validating best.pt...`, `all` rows belong to the final validation.
//! - An uncaught traceback (not inside a logging record) while a run is running fails it; an
//!   epoch seen later in the same run sets it back to running.
//!
//! # Layout
//! - this file: the container's state ([`ContainerState`]) and the dispatch of each parsed
//!   record to the step it makes;
//! - `lifecycle`: a run's start (settings line, `Starting training`), resume, and end
//!   (completed, early stopped, failed, interrupted, the container's exit);
//! - `epochs`: epochs from progress bars, validation rows and the service's JSON epochs;
//! - `counters`: metric samples, queue counters and the events of single lines;
//! - `params`: the resolved optimizer, `args.yaml` and the MLflow link, merged into params;
//! - `saved`: the snapshot committed with each batch, and its resumption.

mod counters;
mod epochs;
mod folder;
mod lifecycle;
mod params;

pub use folder::{RUN_FOLDER, RunFolder};
pub use params::args_params;

pub use lifecycle::Exit;
mod saved;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::{EventRow, MetricRow, Op, RunRow};
use crate::event::{Record, Stream};
use crate::parse::{Detail, Level, Parsed};
use crate::redact;

/// A run's natural key: the container and the position of the line that started it. Replaying
/// the same log finds the same key, so the run is updated, never duplicated.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct RunKey {
    pub container: Arc<str>,
    pub stream: Stream,
    pub ts: i64,
    pub seq: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Completed,
    EarlyStopped,
    Failed,
    Interrupted,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::EarlyStopped => "early_stopped",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
        }
    }

    /// Whether the run still runs (the one status that is not an end).
    pub fn is_running(self) -> bool {
        self == RunStatus::Running
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        Some(match s {
            "running" => RunStatus::Running,
            "completed" => RunStatus::Completed,
            "early_stopped" => RunStatus::EarlyStopped,
            "failed" => RunStatus::Failed,
            "interrupted" => RunStatus::Interrupted,
            _ => return None,
        })
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status column as stored (`runs.status`); an unknown word is an error.
impl rusqlite::types::FromSql for RunStatus {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let s = v.as_str()?;
        RunStatus::parse(s).ok_or_else(|| {
            rusqlite::types::FromSqlError::Other(format!("unknown run status {s:?}").into())
        })
    }
}

/// What the store remembers of a container, to continue derivation where an earlier replay or
/// follow stopped.
#[derive(Clone, Debug, Default)]
pub struct Resume {
    /// The latest run and its last epoch (none stored yet: `None`).
    pub run: Option<(RunRow, Option<u32>)>,
    /// Earlier runs' save_dir -> key, for resumes of older runs.
    pub save_dirs: Vec<(String, RunRow)>,
    pub counters: Vec<(String, f64)>,
    /// The state committed with the last batch ([`ContainerState::snapshot_op`]): when it can
    /// be read, it is resumed exactly and the rest is not needed.
    pub snapshot: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Run {
    row: RunRow,
    /// The latest epoch ended, as printed (`None` before the first).
    last_epoch: Option<u32>,
    /// Epochs are printed 0-based, `k/N-1` (YOLOv5's `train.py`): its header has `obj_loss`,
    /// its settings line is `train: weights=...`, or an epoch 0 was seen.
    zero_based: bool,
    /// Log time of the latest record that belonged to this run.
    last_ts: i64,
    /// Set by the settings line until `Starting training` or the first epoch arrives, so the
    /// start is not counted twice.
    starting: bool,
    /// An epoch header was printed and no epoch has ended since. With progress bars off
    /// (`YOLO_VERBOSE=False` with the logger still at INFO) the header and the validation
    /// `all` row are all an epoch prints: the row then ends the epoch after `last_epoch`.
    header_open: bool,
    /// A progress row of this run was seen: its bars are on, so a validation row never ends
    /// an epoch of its own (it validates the epoch its rows ended).
    #[serde(default)]
    bars_seen: bool,
    /// When training (re)started: its `Starting training for N epochs...` line.
    #[serde(default)]
    train_start: Option<i64>,
    /// The epoch of the latest training row whose loss was NaN/inf, until a finite one: what
    /// most likely ended a run that fails with no exception of its own.
    #[serde(default)]
    nan_epoch: Option<u32>,
    /// The latest ERROR (or worse) record while it ran, until an epoch shows it recovered: a
    /// service that logs its failure and exits 0 failed.
    #[serde(default)]
    last_error: Option<String>,
    /// How many rows of its run folder's results.csv were merged: a restarted `watch` reading
    /// the file again from the start takes only the rows after them. (An older snapshot's
    /// `csv_epoch`, the last epoch merged, is the same count for a file without a resume.)
    #[serde(default, alias = "csv_epoch")]
    csv_rows: Option<u32>,
    /// When its latest epochs ended (epoch, log time), the last few: whether `last.pt` was
    /// rewritten after them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ends: Vec<(u32, i64)>,
    /// The `last.pt` time a stall was said for (said once per stall).
    #[serde(default)]
    stall_said: Option<i64>,
}

impl Run {
    fn is_running(&self) -> bool {
        self.row.status.is_running()
    }

    /// `after epoch 5/10`, `after epoch 5`, `before its first epoch`: where it got to.
    fn when(&self) -> String {
        match (self.last_epoch, self.row.epochs_total) {
            (Some(e), Some(n)) => format!("after epoch {e}/{n}"),
            (Some(e), None) => format!("after epoch {e}"),
            (None, _) => "before its first epoch".into(),
        }
    }

    /// The number the next epoch will be printed with.
    fn next_epoch(&self) -> u32 {
        self.last_epoch
            .map_or(if self.zero_based { 0 } else { 1 }, |e| e + 1)
    }
}

/// YOLOv5 (`train.py`) prints an objectness loss, which Ultralytics' YOLOv8+ heads do not have.
fn is_yolov5(loss_names: &[String]) -> bool {
    loss_names.iter().any(|n| n == "obj_loss")
}

/// Derivation state of one container.
#[derive(Debug)]
pub struct ContainerState {
    container: Arc<str>,
    loss_names: Vec<String>,
    run: Option<Run>,
    /// Finished runs by save_dir, so `resume` finds the run it continues.
    by_save_dir: HashMap<String, RunRow>,
    final_validation: bool,
    /// The version the latest `Ultralytics 8.x 🚀` banner printed, for the next run.
    banner: Option<String>,
    counters: HashMap<&'static str, f64>,
    /// The latest sample of each queue metric within the current second, not yet emitted: one
    /// sample per metric per second is kept (the last), like a scrape interval, so a queue
    /// logging every message does not write two rows per message.
    pending: Vec<MetricRow>,
    /// `model.tune()` announced the iteration whose training comes next: (k, of n).
    tune: Option<(u32, u32)>,
}

const DEFAULT_LOSS_NAMES: [&str; 3] = ["box_loss", "cls_loss", "dfl_loss"];

impl ContainerState {
    pub fn new(container: Arc<str>, resume: Resume) -> Self {
        if let Some(st) = resume
            .snapshot
            .as_deref()
            .and_then(|s| ContainerState::resumed(container.clone(), s))
        {
            return st;
        }
        let mut st = ContainerState {
            container,
            loss_names: DEFAULT_LOSS_NAMES.iter().map(|s| s.to_string()).collect(),
            run: None,
            by_save_dir: HashMap::new(),
            final_validation: false,
            banner: None,
            counters: HashMap::new(),
            pending: Vec::new(),
            tune: None,
        };
        for (dir, row) in resume.save_dirs {
            st.by_save_dir.insert(dir, row);
        }
        if let Some((row, last_epoch)) = resume.run {
            if !row.loss_names.is_empty() {
                st.loss_names = row.loss_names.clone();
            }
            let last_ts = row.ended_at.unwrap_or(row.started_at);
            let zero_based = is_yolov5(&row.loss_names) || last_epoch == Some(0);
            st.run = Some(Run {
                row,
                last_epoch,
                zero_based,
                last_ts,
                starting: false,
                header_open: false,
                bars_seen: false,
                train_start: None,
                nan_epoch: None,
                last_error: None,
                csv_rows: None,
                ends: Vec::new(),
                stall_said: None,
            });
        }
        for (name, v) in resume.counters {
            st.counters.insert(crate::event::intern(&name), v);
        }
        st
    }

    pub fn container(&self) -> &Arc<str> {
        &self.container
    }

    fn event(
        &self,
        rec: &Record,
        level: Level,
        kind: &'static str,
        message: &str,
        context: Value,
    ) -> Op {
        let mut context = context;
        redact::json(&mut context);
        // Written straight to bytes: `Display` goes through a formatter per token (more than
        // half the cost of an event with a context, callgrind).
        let context = serde_json::to_string(&context).unwrap_or_else(|_| "{}".into());
        self.event_raw(rec, level, kind, message, context)
    }

    /// An event whose context is JSON text already redacted or needing none (see
    /// [`redact::is_clean`]).
    fn event_raw(
        &self,
        rec: &Record,
        level: Level,
        kind: &'static str,
        message: &str,
        context: String,
    ) -> Op {
        let message = redact::text(message).into_owned();
        Op::Event(EventRow {
            ts: rec.ts,
            container: self.container.clone(),
            stream: rec.stream.as_str(),
            seq: rec.key.seq,
            key_ts: rec.key.ts,
            level,
            kind,
            message,
            context,
        })
    }

    /// Feeds one parsed record (taken by value: its context moves into the event).
    pub fn apply(&mut self, rec: &Record, p: Parsed, out: &mut Vec<Op>) {
        let from = out.len();
        let level = p.level;
        self.apply_record(rec, p, out);
        self.count_redactions(rec, level, out);
        // results.csv's `time`: seconds since training started (the run's start before its
        // `Starting training` line is seen).
        // A training row's losses say whether the run's last loss was NaN/inf.
        if let Some(run) = &mut self.run {
            let start = run.train_start.unwrap_or(run.row.started_at);
            for op in &mut out[from..] {
                let Op::Epoch(key, e) = op else { continue };
                if *key != run.row.key {
                    continue;
                }
                if e.train_time_s.is_none() && e.ended_at >= start {
                    e.train_time_s = Some((e.ended_at - start) as f64 / 1e9);
                }
                let finite = match (&e.losses, e.loss) {
                    (Some(l), _) if !l.is_empty() => Some(l.iter().all(|(_, v)| v.is_finite())),
                    (_, Some(v)) => Some(v.is_finite()),
                    _ => None,
                };
                match finite {
                    Some(false) => run.nan_epoch = Some(e.epoch),
                    Some(true) => run.nan_epoch = None,
                    None => {}
                }
                // An epoch after an error: the run recovered from it.
                run.last_error = None;
                match run.ends.iter_mut().find(|(ep, _)| *ep == e.epoch) {
                    Some(end) => end.1 = end.1.max(e.ended_at),
                    None => {
                        run.ends.push((e.epoch, e.ended_at));
                        run.ends.sort_unstable();
                        if run.ends.len() > 4 {
                            run.ends.remove(0);
                        }
                    }
                }
            }
        }
    }

    fn apply_record(&mut self, rec: &Record, mut p: Parsed, out: &mut Vec<Op>) {
        if let Some(run) = self.run.as_mut()
            && run.row.status == RunStatus::Running
        {
            run.last_ts = rec.ts;
            if p.level >= Level::Error {
                let text = match &p.detail {
                    Detail::Traceback { exception } => exception.as_str(),
                    _ => p.message.as_str(),
                };
                run.last_error = Some(lifecycle::exception_line(text));
            }
        }
        match &p.detail {
            Detail::None => {}
            Detail::Banner(v) => self.banner = Some(v.clone()),
            Detail::Header(names) => self.header(names, out),
            Detail::TrainerSettings(kv) => self.settings(rec, &p, kv, out),
            Detail::StartingTraining(epochs) => {
                self.starting_training(rec, &p.message, *epochs, out)
            }
            Detail::Resuming {
                model,
                from_epoch,
                epochs,
            } => self.resuming(rec, &p.message, model, *from_epoch, *epochs, out),
            Detail::Progress(pr) => self.progress(rec, &p, pr, out),
            Detail::Validation(v) => self.validation(rec, &p.message, v, out),
            Detail::Accuracy { top1, top5 } => self.accuracy(rec, &p.message, *top1, *top5, out),
            Detail::ServiceEpoch { epoch, epochs } => {
                let (epoch, epochs) = (*epoch, *epochs);
                self.service_epoch(rec, &mut p, epoch, epochs, out)
            }
            Detail::EpochsCompleted { epochs, hours } => {
                self.epochs_completed(rec, &p.message, *epochs, *hours, out)
            }
            Detail::EarlyStopped {
                best_epoch,
                patience,
            } => self.early_stopped(rec, &p.message, *best_epoch, *patience, out),
            Detail::ValidatingBest => self.final_validation = true,
            Detail::ResultsDir(dir) => self.results_dir(dir, out),
            Detail::Optimizer(o) => self.optimizer(o, out),
            Detail::MlflowRun { run_id, uri } => self.mlflow_link(run_id, uri, out),
            Detail::TuneIteration {
                iteration,
                iterations,
            } => self.tune = Some((*iteration, *iterations)),
            Detail::Traceback { .. } => self.traceback(rec, &p, out),
            Detail::ServiceRun(what) => self.service_run(rec, &p, *what, out),
        }
        if let Some(kind) = p.kind {
            self.generic_event(rec, &mut p, kind, out);
        }
    }

    /// The loss column names in effect (for tests and status views).
    pub fn loss_names(&self) -> &[String] {
        &self.loss_names
    }
}
