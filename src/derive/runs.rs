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

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::{EpochRow, EventRow, MetricRow, Op, RunRow, json_num, paths};
use crate::event::{Record, Stream};
use crate::parse::{Detail, Format, Level, Parsed};
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
    /// When training (re)started: its `Starting training for N epochs...` line.
    #[serde(default)]
    train_start: Option<i64>,
}

impl Run {
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
}

/// Width of a metric sample bucket.
const SAMPLE_BUCKET_NS: i64 = 1_000_000_000;

const DEFAULT_LOSS_NAMES: [&str; 3] = ["box_loss", "cls_loss", "dfl_loss"];

/// The context key of the second metric group of a validation row, named by the task the
/// loss columns tell: segmentation validates masks, pose keypoints.
fn second_metric_group(loss_names: &[String]) -> &'static str {
    if loss_names.iter().any(|n| n == "seg_loss") {
        "mask"
    } else if loss_names
        .iter()
        .any(|n| n == "pose_loss" || n == "kobj_loss")
    {
        "pose"
    } else {
        "extra"
    }
}

/// The run folder of a checkpoint path (`runs/detect/train/weights/last.pt` ->
/// `runs/detect/train`), if it is one.
fn checkpoint_dir(model: &str) -> Option<String> {
    let m = model.trim().replace('\\', "/");
    let in_weights = m.contains("/weights/") || m.starts_with("weights/");
    (in_weights && m.ends_with(".pt")).then(|| paths::run_dir(model))
}

fn truthy(v: &str) -> bool {
    !matches!(v.trim(), "" | "False" | "false" | "None" | "null" | "0")
}

/// A [`ContainerState`] as committed with each batch (next to its cursor), so that a restart
/// continues the derivation exactly where the committed rows end: a run between its settings
/// line and its first epoch, an open epoch header, a queue sample of the current second.
/// What a run is opened with, as far as the line that opens it tells.
#[derive(Default)]
struct Opening {
    epochs: Option<u32>,
    save_dir: Option<String>,
    model: Option<String>,
    /// The settings line's `key=value`s as a JSON object (redacted).
    params: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    version: u32,
    loss_names: Vec<String>,
    run: Option<Run>,
    by_save_dir: Vec<(String, RunRow)>,
    final_validation: bool,
    #[serde(default)]
    banner: Option<String>,
    counters: Vec<(String, f64)>,
    /// Samples held for their second: (ts, name, value).
    pending: Vec<(i64, String, f64)>,
}

const SAVED_VERSION: u32 = 1;

/// Finished runs a snapshot keeps for resumes (the most recent), as the row-based rebuild does.
const SAVED_SAVE_DIRS: usize = 50;

/// ` (SIGKILL)` for an exit code of 128 + a signal's number, as shells report it.
fn signal_name(code: i64) -> &'static str {
    match code {
        129 => " (SIGHUP)",
        130 => " (SIGINT)",
        134 => " (SIGABRT)",
        135 => " (SIGBUS)",
        137 => " (SIGKILL)",
        139 => " (SIGSEGV)",
        143 => " (SIGTERM)",
        _ => "",
    }
}

fn intern_counter(name: &str) -> &'static str {
    match name {
        "queue_messages_processed" => "queue_messages_processed",
        "queue_messages_failed" => "queue_messages_failed",
        "queue_offset" => "queue_offset",
        other => Box::leak(other.to_string().into_boxed_str()),
    }
}

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
                train_start: None,
            });
        }
        for (name, v) in resume.counters {
            st.counters.insert(intern_counter(&name), v);
        }
        st
    }

    pub fn container(&self) -> &Arc<str> {
        &self.container
    }

    /// The state as committed with a batch: the op that stores it.
    pub fn snapshot_op(&self) -> Op {
        let mut by_save_dir: Vec<(String, RunRow)> = self
            .by_save_dir
            .iter()
            .map(|(d, r)| (d.clone(), r.clone()))
            .collect();
        by_save_dir.sort_by(|a, b| (b.1.started_at, &b.0).cmp(&(a.1.started_at, &a.0)));
        by_save_dir.truncate(SAVED_SAVE_DIRS);
        let saved = Saved {
            version: SAVED_VERSION,
            loss_names: self.loss_names.clone(),
            run: self.run.clone(),
            by_save_dir,
            final_validation: self.final_validation,
            banner: self.banner.clone(),
            counters: self
                .counters
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            pending: self
                .pending
                .iter()
                .map(|m| (m.ts, m.name.to_string(), m.value))
                .collect(),
        };
        // Only strings, integers and finite numbers (non-finite values are never kept).
        Op::State(
            self.container.clone(),
            serde_json::to_string(&saved).unwrap_or_default(),
        )
    }

    /// The state a [`ContainerState::snapshot_op`] committed, if it can be read (this version).
    pub fn resumed(container: Arc<str>, snapshot: &str) -> Option<Self> {
        let saved: Saved = serde_json::from_str(snapshot).ok()?;
        if saved.version != SAVED_VERSION {
            return None;
        }
        Some(ContainerState {
            loss_names: saved.loss_names,
            run: saved.run,
            by_save_dir: saved.by_save_dir.into_iter().collect(),
            final_validation: saved.final_validation,
            banner: saved.banner,
            counters: saved
                .counters
                .into_iter()
                .map(|(k, v)| (intern_counter(&k), v))
                .collect(),
            pending: saved
                .pending
                .into_iter()
                .map(|(ts, name, value)| MetricRow {
                    ts,
                    container: container.clone(),
                    name: intern_counter(&name),
                    value,
                })
                .collect(),
            container,
        })
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
        Op::Event(EventRow {
            ts: rec.ts,
            container: self.container.clone(),
            stream: rec.stream.as_str(),
            seq: rec.key.seq,
            key_ts: rec.key.ts,
            level,
            kind,
            message: redact::text(message).into_owned(),
            context,
        })
    }

    /// A validation `all` row: its event, and the metrics of the epoch it validated (`row`
    /// without its epoch and time) with their `samples`. With the bars off (no progress row
    /// since the epoch header) the row ends the next epoch; the final validation of best.pt
    /// after the run's end belongs to no epoch.
    fn validation_row(
        &mut self,
        rec: &Record,
        message: &str,
        mut ctx: Value,
        row: EpochRow,
        samples: &[(&'static str, f64)],
        out: &mut Vec<Op>,
    ) {
        let final_val = self.final_validation;
        let counted = match self.run.as_mut() {
            Some(r) if r.header_open && !final_val => {
                r.header_open = false;
                r.last_epoch = Some(r.next_epoch());
                true
            }
            _ => false,
        };
        let epoch = self
            .run
            .as_ref()
            .and_then(|r| r.last_epoch)
            .filter(|_| !final_val);
        ctx["epoch"] = json!(epoch);
        if final_val {
            ctx["final"] = Value::Bool(true);
        }
        out.push(self.event(rec, Level::Info, "validation", message, ctx));
        if let (Some(epoch), Some(run)) = (epoch, self.run.as_ref()) {
            let key = run.row.key.clone();
            let epochs_total = run.row.epochs_total.filter(|_| counted);
            if counted {
                // No progress row completed this epoch: its validation does, so the epoch
                // has its `epoch_completed` as with the bars on.
                let ctx = json!({ "epoch": epoch, "epochs": epochs_total, "source": "validation" });
                out.push(self.event(rec, Level::Info, "epoch_completed", message, ctx));
            }
            out.push(Op::Epoch(
                key,
                EpochRow {
                    epoch,
                    epochs_total,
                    ended_at: rec.ts,
                    ..row
                },
            ));
            if counted {
                self.metric(rec.ts, "training_epoch", epoch as f64, out);
            }
            for (name, value) in samples {
                self.metric(rec.ts, name, *value, out);
            }
        }
    }

    /// Records a sample. Training metrics (one per epoch) are emitted as they come; queue
    /// metrics, which can change with every message, are kept at one sample per second.
    fn metric(&mut self, ts: i64, name: &'static str, value: f64, out: &mut Vec<Op>) {
        if !value.is_finite() {
            return;
        }
        let sample = MetricRow {
            ts,
            container: self.container.clone(),
            name,
            value,
        };
        if !name.starts_with("queue_") {
            out.push(Op::Metric(sample));
            return;
        }
        let bucket = ts.div_euclid(SAMPLE_BUCKET_NS);
        match self.pending.iter_mut().find(|p| p.name == name) {
            Some(p) if p.ts.div_euclid(SAMPLE_BUCKET_NS) == bucket => *p = sample,
            Some(p) => out.push(Op::Metric(std::mem::replace(p, sample))),
            None => self.pending.push(sample),
        }
    }

    /// Emits the samples still held for the current second. Called before every batch is
    /// committed, so a cursor never covers a record whose sample is not stored.
    pub fn flush_metrics(&mut self, out: &mut Vec<Op>) {
        out.extend(self.pending.drain(..).map(Op::Metric));
    }

    /// Ends the current run as interrupted if it is still running (a new process started).
    fn interrupt_current(&mut self, out: &mut Vec<Op>) {
        if let Some(run) = self.run.as_mut()
            && run.row.status == RunStatus::Running
        {
            run.row.status = RunStatus::Interrupted;
            run.row.ended_at = Some(run.last_ts);
            out.push(Op::Run(run.row.clone()));
        }
        if let Some(run) = self.run.take()
            && let Some(dir) = &run.row.save_dir
        {
            self.by_save_dir.insert(dir.clone(), run.row);
        }
    }

    /// The container stopped and its log was read to the end (at `ts`, its `FinishedAt`): a
    /// run still running ended with it, as `interrupted` when the process was stopped on
    /// purpose (exit 0, or SIGINT / SIGTERM: 130, 143), else as `failed` (another code, or the
    /// kernel's OOM killer), and a `training_container_died` event tells how.
    pub fn container_exited(
        &mut self,
        ts: i64,
        exit_code: Option<i64>,
        oom_killed: bool,
        out: &mut Vec<Op>,
    ) {
        let Some(run) = self
            .run
            .as_mut()
            .filter(|r| r.row.status == RunStatus::Running)
        else {
            return;
        };
        let stopped = !oom_killed && matches!(exit_code, Some(0 | 130 | 143));
        run.row.status = if stopped {
            RunStatus::Interrupted
        } else {
            RunStatus::Failed
        };
        let ended = ts.max(run.last_ts);
        run.row.ended_at = Some(ended);
        out.push(Op::Run(run.row.clone()));
        if exit_code == Some(0) && !oom_killed {
            return;
        }
        let epoch = match (run.last_epoch, run.row.epochs_total) {
            (Some(e), Some(n)) => format!(" after epoch {e}/{n}"),
            (Some(e), None) => format!(" after epoch {e}"),
            (None, _) => " before its first epoch".into(),
        };
        let how = if oom_killed {
            "was killed by the kernel's OOM killer".to_string()
        } else {
            match exit_code {
                Some(c) => format!("exited with code {c}{}", signal_name(c)),
                None => "stopped (exit code unknown)".into(),
            }
        };
        let message = format!(
            "Training container {} {how}{epoch} while its run was running; the run is {}",
            self.container,
            run.row.status.as_str()
        );
        let context = json!({
            "exit_code": exit_code,
            "oom_killed": oom_killed,
            "epoch": run.last_epoch,
            "epochs_total": run.row.epochs_total,
            "status": run.row.status.as_str(),
        });
        out.push(Op::Event(EventRow {
            ts: ended,
            container: self.container.clone(),
            stream: "docker",
            // The daemon's own `container_died` is at seq 0 of its event time.
            seq: 1,
            key_ts: ended,
            level: if oom_killed {
                Level::Critical
            } else {
                Level::Error
            },
            kind: "training_container_died",
            message,
            context: context.to_string(),
        }));
    }

    fn new_run(&mut self, rec: &Record, opening: Opening, starting: bool, out: &mut Vec<Op>) {
        let Opening {
            epochs,
            save_dir,
            model,
            params,
        } = opening;
        self.interrupt_current(out);
        let row = RunRow {
            key: RunKey {
                container: self.container.clone(),
                stream: rec.stream,
                ts: rec.key.ts,
                seq: rec.key.seq,
            },
            started_at: rec.ts,
            ended_at: None,
            status: RunStatus::Running,
            epochs_total: epochs,
            best_epoch_reported: None,
            save_dir,
            model,
            loss_names: self.loss_names.clone(),
            params,
            ultralytics_version: self.banner.clone(),
        };
        out.push(Op::Run(row.clone()));
        self.final_validation = false;
        self.run = Some(Run {
            row,
            last_epoch: None,
            zero_based: is_yolov5(&self.loss_names),
            last_ts: rec.ts,
            starting,
            header_open: false,
            train_start: None,
        });
    }

    /// Continues the run with `save_dir` (or the latest one) after a resume.
    fn continue_run(
        &mut self,
        rec: &Record,
        save_dir: Option<&str>,
        epochs: Option<u32>,
        out: &mut Vec<Op>,
    ) -> bool {
        let same_dir = |r: &RunRow| match (save_dir, r.save_dir.as_deref()) {
            (Some(a), Some(b)) => paths::same(a, b),
            _ => true,
        };
        let current_matches = self.run.as_ref().is_some_and(|r| same_dir(&r.row));
        if !current_matches {
            let Some(row) = save_dir.and_then(|d| self.take_by_save_dir(d)) else {
                return false;
            };
            self.interrupt_current(out);
            let zero_based = is_yolov5(&row.loss_names);
            self.run = Some(Run {
                row,
                last_epoch: None,
                zero_based,
                last_ts: rec.ts,
                starting: false,
                header_open: false,
                train_start: None,
            });
        }
        let run = self.run.as_mut().expect("run set above");
        run.row.status = RunStatus::Running;
        run.row.ended_at = None;
        if epochs.is_some() {
            run.row.epochs_total = epochs;
        }
        if run.row.save_dir.is_none() {
            run.row.save_dir = save_dir.map(str::to_string);
        }
        run.last_ts = rec.ts;
        run.starting = true;
        self.final_validation = false;
        out.push(Op::Run(run.row.clone()));
        true
    }

    /// Removes and returns the earlier run whose save_dir `dir` names (the best match: an
    /// exact path before the longest shared tail).
    fn take_by_save_dir(&mut self, dir: &str) -> Option<RunRow> {
        let best = self
            .by_save_dir
            .keys()
            .filter_map(|k| Some((paths::match_score(k, dir)?, k)))
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
            .map(|(_, k)| k.clone())?;
        self.by_save_dir.remove(&best)
    }

    /// Makes sure there is a running run for an epoch line that arrived without a start.
    fn ensure_run(&mut self, rec: &Record, epochs: u32, epoch: u32, out: &mut Vec<Op>) {
        let usable = self.run.as_ref().is_some_and(|r| {
            r.row.status == RunStatus::Running
                || r.row.status == RunStatus::Failed
                || (r.last_epoch.is_none_or(|last| epoch > last)
                    && !matches!(r.row.status, RunStatus::Completed | RunStatus::EarlyStopped))
        });
        if !usable || self.final_validation {
            self.new_run(
                rec,
                Opening {
                    epochs: Some(epochs),
                    ..Opening::default()
                },
                false,
                out,
            );
        }
    }

    /// Feeds one parsed record (taken by value: its context moves into the event).
    pub fn apply(&mut self, rec: &Record, p: Parsed, out: &mut Vec<Op>) {
        let from = out.len();
        self.apply_record(rec, p, out);
        // results.csv's `time`: seconds since training started (the run's start before its
        // `Starting training` line is seen).
        if let Some(run) = &self.run {
            let start = run.train_start.unwrap_or(run.row.started_at);
            for op in &mut out[from..] {
                if let Op::Epoch(key, e) = op
                    && *key == run.row.key
                    && e.train_time_s.is_none()
                    && e.ended_at >= start
                {
                    e.train_time_s = Some((e.ended_at - start) as f64 / 1e9);
                }
            }
        }
    }

    fn apply_record(&mut self, rec: &Record, mut p: Parsed, out: &mut Vec<Op>) {
        if let Some(run) = self.run.as_mut()
            && run.row.status == RunStatus::Running
        {
            run.last_ts = rec.ts;
        }
        match &p.detail {
            Detail::None => {}
            Detail::Banner(v) => self.banner = Some(v.clone()),
            Detail::Header(names) => {
                self.loss_names = names.clone();
                if let Some(run) = self.run.as_mut() {
                    run.header_open =
                        run.row.status == RunStatus::Running && !self.final_validation;
                    if run.row.loss_names != *names {
                        run.row.loss_names = names.clone();
                        out.push(Op::Run(run.row.clone()));
                    }
                }
            }
            Detail::TrainerSettings(kv) => self.settings(rec, &p, kv, out),
            Detail::StartingTraining(epochs) => {
                let starting = self
                    .run
                    .as_ref()
                    .is_some_and(|r| r.starting && r.row.status == RunStatus::Running);
                if starting {
                    let run = self.run.as_mut().expect("checked");
                    run.starting = false;
                    run.train_start = Some(rec.ts);
                    if epochs.is_some() && run.row.epochs_total != *epochs {
                        run.row.epochs_total = *epochs;
                        out.push(Op::Run(run.row.clone()));
                    }
                } else {
                    self.new_run(
                        rec,
                        Opening {
                            epochs: *epochs,
                            ..Opening::default()
                        },
                        false,
                        out,
                    );
                    if let Some(run) = self.run.as_mut() {
                        run.train_start = Some(rec.ts);
                    }
                    out.push(self.event(
                        rec,
                        Level::Info,
                        "training_started",
                        &p.message,
                        json!({ "epochs": epochs }),
                    ));
                }
            }
            Detail::Resuming {
                model,
                from_epoch,
                epochs,
            } => {
                let dir = checkpoint_dir(model);
                if !self.continue_run(rec, dir.as_deref(), Some(*epochs), out) {
                    let opening = Opening {
                        epochs: Some(*epochs),
                        save_dir: dir,
                        model: Some(model.clone()),
                        params: None,
                    };
                    self.new_run(rec, opening, true, out);
                }
                out.push(self.event(
                    rec,
                    Level::Info,
                    "training_resumed",
                    &p.message,
                    json!({ "model": model, "from_epoch": from_epoch, "epochs": epochs }),
                ));
            }
            Detail::Progress(pr) => {
                if let Some(frame) = &rec.nonfinite_frame {
                    out.push(self.event(
                        rec,
                        Level::Error,
                        "loss_non_finite",
                        frame,
                        json!({ "epoch": pr.epoch, "epochs": pr.epochs, "source": "progress" }),
                    ));
                }
                if pr.complete() || (rec.terminated && pr.batches.is_none()) {
                    self.epoch_from_progress(rec, &p, pr, out);
                }
            }
            Detail::Validation(v) => {
                let mut ctx = json!({
                    "images": v.images, "instances": v.instances,
                    "precision": json_num(v.precision), "recall": json_num(v.recall),
                    "map50": json_num(v.map50), "map50_95": json_num(v.map50_95),
                });
                let group = match v.more[..] {
                    [p_, r_, m50, m5095] => {
                        let g = json!({
                            "precision": json_num(p_), "recall": json_num(r_),
                            "map50": json_num(m50), "map50_95": json_num(m5095),
                        });
                        let name = second_metric_group(&self.loss_names);
                        ctx[name] = g.clone();
                        Some(json!({ name: g }).to_string())
                    }
                    _ => None,
                };
                let row = EpochRow {
                    precision: Some(v.precision),
                    recall: Some(v.recall),
                    map50: Some(v.map50),
                    map50_95: Some(v.map50_95),
                    metrics: group,
                    ..Default::default()
                };
                let samples = [
                    ("training_mAP50", v.map50),
                    ("training_mAP50_95", v.map50_95),
                ];
                self.validation_row(rec, &p.message, ctx, row, &samples, out);
            }
            Detail::Accuracy { top1, top5 } => {
                let acc = json!({ "top1_acc": json_num(*top1), "top5_acc": json_num(*top5) });
                let row = EpochRow {
                    metrics: Some(json!({ "classify": acc }).to_string()),
                    ..Default::default()
                };
                self.validation_row(rec, &p.message, acc, row, &[], out);
            }
            Detail::ServiceEpoch { epoch, epochs } => {
                let (epoch, epochs) = (*epoch, *epochs);
                self.service_epoch(rec, &mut p, epoch, epochs, out)
            }
            Detail::EpochsCompleted { epochs, hours } => {
                if let Some(run) = self.run.as_mut() {
                    if run.row.status != RunStatus::EarlyStopped {
                        run.row.status = RunStatus::Completed;
                    }
                    run.row.ended_at = Some(rec.ts);
                    run.starting = false;
                    out.push(Op::Run(run.row.clone()));
                }
                self.final_validation = true;
                out.push(self.event(
                    rec,
                    Level::Info,
                    "training_completed",
                    &p.message,
                    json!({ "epochs": epochs, "hours": json_num(*hours) }),
                ));
            }
            Detail::EarlyStopped {
                best_epoch,
                patience,
            } => {
                if let Some(run) = self.run.as_mut() {
                    run.row.status = RunStatus::EarlyStopped;
                    run.row.best_epoch_reported = Some(*best_epoch);
                    run.row.ended_at = Some(rec.ts);
                    out.push(Op::Run(run.row.clone()));
                }
                out.push(self.event(
                    rec,
                    Level::Info,
                    "early_stopped",
                    &p.message,
                    json!({ "best_epoch": best_epoch, "patience": patience }),
                ));
            }
            Detail::ValidatingBest => self.final_validation = true,
            Detail::ResultsDir(dir) => {
                if let Some(run) = self.run.as_mut()
                    && run.row.save_dir.is_none()
                {
                    run.row.save_dir = Some(dir.clone());
                    out.push(Op::Run(run.row.clone()));
                }
            }
            Detail::Traceback { .. } => {
                // Only an uncaught traceback ends the process; one inside a logging record
                // (`logger.exception`) was handled by the program.
                if p.format == Format::Traceback
                    && let Some(run) = self.run.as_mut()
                    && run.row.status == RunStatus::Running
                {
                    run.row.status = RunStatus::Failed;
                    run.row.ended_at = Some(rec.ts);
                    out.push(Op::Run(run.row.clone()));
                }
            }
        }
        if let Some(kind) = p.kind {
            self.generic_event(rec, &mut p, kind, out);
        }
    }

    fn settings(&mut self, rec: &Record, p: &Parsed, kv: &[(String, String)], out: &mut Vec<Op>) {
        let get = |k: &str| kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        let epochs = get("epochs").and_then(|v| v.parse().ok());
        let resume = get("resume").filter(|v| truthy(v));
        // YOLOv5's `train: weights=...` names the model by its weights.
        let yolov5 = get("weights").is_some() && get("task").is_none();
        let model = get("model").or(get("weights")).map(str::to_string);
        let save_dir = get("save_dir")
            .map(str::to_string)
            .or_else(|| resume.and_then(checkpoint_dir));
        let mut ctx = Map::new();
        for k in [
            "task", "mode", "model", "data", "epochs", "batch", "imgsz", "device", "resume",
            "save_dir", "project", "name",
        ] {
            if let Some(v) = get(k) {
                ctx.insert(k.into(), Value::String(v.to_string()));
            }
        }
        // Every setting as printed, for the run's parameters (an MLflow export logs them).
        let mut params = Value::Object(
            kv.iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        );
        redact::json(&mut params);
        let params = Some(params.to_string());
        let opening = Opening {
            epochs,
            save_dir,
            model,
            params,
        };
        if resume.is_some() {
            // The `Resuming training ... from epoch K` line that follows is the
            // training_resumed event; here the run is only picked up (or, when its start is not
            // in the store, opened).
            if !self.continue_run(rec, opening.save_dir.as_deref(), epochs, out) {
                self.new_run(rec, opening, true, out);
            }
            if yolov5 && let Some(run) = self.run.as_mut() {
                run.zero_based = true;
            }
            return;
        }
        self.new_run(rec, opening, true, out);
        if yolov5 && let Some(run) = self.run.as_mut() {
            run.zero_based = true;
        }
        out.push(self.event(
            rec,
            Level::Info,
            "training_started",
            &p.message,
            Value::Object(ctx),
        ));
    }

    fn epoch_from_progress(
        &mut self,
        rec: &Record,
        p: &Parsed,
        pr: &crate::parse::ultralytics::Progress,
        out: &mut Vec<Op>,
    ) {
        let zero_based = pr.epoch == 0
            || is_yolov5(&self.loss_names)
            || self.run.as_ref().is_some_and(|r| r.zero_based);
        let epochs_total = if zero_based {
            pr.epochs.saturating_add(1)
        } else {
            pr.epochs
        };
        self.ensure_run(rec, epochs_total, pr.epoch, out);
        // Columns by the header's names, read from the left (a row cut at the terminal width
        // lacks its right-hand columns); YOLOv5's `total` is their sum, not a loss of its own.
        let values = pr.losses(Some(self.loss_names.len()));
        let losses: Vec<(String, f64)> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                (
                    self.loss_names
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| format!("loss{}", i + 1)),
                    *v,
                )
            })
            .filter(|(name, _)| name != "total")
            .collect();
        let total: f64 = losses.iter().map(|(_, v)| v).sum();
        let non_finite = losses.iter().any(|(_, v)| !v.is_finite());
        let run = self.run.as_mut().expect("ensure_run");
        run.zero_based |= zero_based;
        run.starting = false;
        let mut changed = false;
        if run.row.status != RunStatus::Running {
            run.row.status = RunStatus::Running;
            run.row.ended_at = None;
            changed = true;
        }
        if run.row.epochs_total != Some(epochs_total) {
            run.row.epochs_total = Some(epochs_total);
            changed = true;
        }
        if changed {
            out.push(Op::Run(run.row.clone()));
        }
        run.last_epoch = Some(pr.epoch);
        run.header_open = false;
        let key = run.row.key.clone();
        let mut ctx = Map::new();
        ctx.insert("epoch".into(), json!(pr.epoch));
        ctx.insert("epochs".into(), json!(epochs_total));
        ctx.insert("gpu_mem_gb".into(), json_num(pr.gpu_mem_gb));
        for (name, v) in &losses {
            ctx.insert(name.clone(), json_num(*v));
        }
        ctx.insert("loss".into(), json_num(total));
        out.push(Op::Epoch(
            key,
            EpochRow {
                epoch: pr.epoch,
                epochs_total: Some(epochs_total),
                ended_at: rec.ts,
                losses: Some(losses),
                gpu_mem_gb: Some(pr.gpu_mem_gb),
                ..Default::default()
            },
        ));
        out.push(self.event(
            rec,
            Level::Info,
            "epoch_completed",
            &p.message,
            Value::Object(ctx),
        ));
        if non_finite && rec.nonfinite_frame.is_none() {
            out.push(self.event(
                rec,
                Level::Error,
                "loss_non_finite",
                &p.message,
                json!({ "epoch": pr.epoch, "epochs": pr.epochs, "source": "epoch" }),
            ));
        }
        self.metric(rec.ts, "training_epoch", pr.epoch as f64, out);
        self.metric(rec.ts, "training_loss", total, out);
    }

    fn service_epoch(
        &mut self,
        rec: &Record,
        p: &mut Parsed,
        epoch: u32,
        epochs: u32,
        out: &mut Vec<Op>,
    ) {
        use crate::parse::json::num;
        let c = &p.context;
        let get = |keys: &[&str]| keys.iter().find_map(|k| c.get(*k).and_then(num));
        let loss = get(&["loss", "train_loss"]);
        let map50 = get(&["mAP50", "map50", "metrics/mAP50(B)"]);
        let map50_95 = get(&["mAP50_95", "mAP50-95", "map50_95", "metrics/mAP50-95(B)"]);
        let precision = get(&["precision", "P"]);
        let recall = get(&["recall", "R"]);
        let named: Vec<(String, f64)> = c
            .iter()
            .filter(|(k, _)| k.ends_with("_loss"))
            .filter_map(|(k, v)| Some((k.clone(), num(v)?)))
            .collect();
        // An epoch already derived from the progress bar of this run is the same epoch.
        let same = self
            .run
            .as_ref()
            .is_some_and(|r| r.last_epoch == Some(epoch) && !self.final_validation);
        if !same {
            self.ensure_run(rec, epochs, epoch, out);
        }
        let run = self.run.as_mut().expect("ensure_run");
        run.last_epoch = Some(run.last_epoch.map_or(epoch, |l| l.max(epoch)));
        run.starting = false;
        let key = run.row.key.clone();
        let non_finite =
            loss.is_some_and(|l| !l.is_finite()) || named.iter().any(|(_, v)| !v.is_finite());
        out.push(Op::Epoch(
            key,
            EpochRow {
                epoch,
                epochs_total: Some(epochs),
                ended_at: rec.ts,
                losses: (!named.is_empty()).then_some(named),
                loss,
                precision,
                recall,
                map50,
                map50_95,
                gpu_mem_gb: None,
                metrics: None,
                train_time_s: None,
            },
        ));
        if same {
            // The training wrapper's line for an epoch the progress bar already completed:
            // its values are merged into that epoch, not counted as another one.
            if non_finite {
                let ctx = json!({ "epoch": epoch, "epochs": epochs, "source": "service" });
                out.push(self.event(rec, Level::Error, "loss_non_finite", &p.message, ctx));
            }
            return;
        }
        let mut ctx = std::mem::take(&mut p.context);
        ctx.insert("epochs".into(), json!(epochs));
        out.push(self.event(
            rec,
            p.level,
            "epoch_completed",
            &p.message,
            Value::Object(ctx),
        ));
        if non_finite {
            out.push(self.event(
                rec,
                Level::Error,
                "loss_non_finite",
                &p.message,
                json!({ "epoch": epoch, "epochs": epochs, "source": "service" }),
            ));
        }
        self.metric(rec.ts, "training_epoch", epoch as f64, out);
        if let Some(l) = loss {
            self.metric(rec.ts, "training_loss", l, out);
        }
        if let Some(m) = map50 {
            self.metric(rec.ts, "training_mAP50", m, out);
        }
        if let Some(m) = map50_95 {
            self.metric(rec.ts, "training_mAP50_95", m, out);
        }
    }

    fn generic_event(
        &mut self,
        rec: &Record,
        p: &mut Parsed,
        kind: &'static str,
        out: &mut Vec<Op>,
    ) {
        if let Some((name, add)) = p.counter {
            let v = self.counters.entry(name).or_insert(0.0);
            *v += add;
            let v = *v;
            self.metric(rec.ts, name, v, out);
        }
        let run_scoped = matches!(
            kind,
            "loss_non_finite" | "gpu_oom" | "checkpoint_save_failed"
        );
        if let Some(raw) = p.raw_context.take() {
            // A service line's context is stored as it came unless something is added to
            // it or it may hold a secret.
            if p.offset.is_none() && !(run_scoped && self.run.is_some()) && redact::is_clean(&raw) {
                out.push(self.event_raw(rec, p.level, kind, &p.message, raw));
                return;
            }
            p.context = crate::parse::json::context_map(&raw);
        }
        let mut ctx = std::mem::take(&mut p.context);
        if let Detail::Traceback { exception } = &p.detail {
            ctx.insert("exception".into(), Value::String(exception.clone()));
        }
        if let Some(off) = p.offset {
            ctx.insert("offset".into(), json!(off));
            self.metric(rec.ts, "queue_offset", off as f64, out);
        }
        if p.skip.is_some() {
            ctx.insert("unparsed".into(), Value::String("invalid_json".into()));
        }
        if run_scoped && let Some(run) = self.run.as_ref() {
            ctx.insert("epoch".into(), json!(run.last_epoch));
        }
        let also = p.also.map(|also| {
            // What the exception says happened, as an event of its own (the traceback itself
            // is the `error`): its message is the exception.
            let mut actx = Map::new();
            let message = match &p.detail {
                Detail::Traceback { exception } => exception.clone(),
                _ => p.message.clone(),
            };
            if let Some(run) = self.run.as_ref()
                && matches!(also, "gpu_oom" | "checkpoint_save_failed")
            {
                actx.insert("epoch".into(), json!(run.last_epoch));
            }
            actx.insert("source".into(), Value::String("traceback".into()));
            (also, message, actx)
        });
        out.push(self.event(rec, p.level, kind, &p.message, Value::Object(ctx)));
        if let Some((also, message, actx)) = also {
            out.push(self.event(rec, p.level, also, &message, Value::Object(actx)));
        }
    }

    /// The loss column names in effect (for tests and status views).
    pub fn loss_names(&self) -> &[String] {
        &self.loss_names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Key;
    use crate::parse::Parser;

    struct Harness {
        st: ContainerState,
        parser: Parser,
        ops: Vec<Op>,
        n: i64,
    }

    impl Harness {
        fn new() -> Self {
            Harness {
                st: ContainerState::new("c".into(), Resume::default()),
                parser: Parser::default(),
                ops: Vec::new(),
                n: 0,
            }
        }
        fn line(&mut self, text: &str) {
            self.n += 1;
            let rec = Record {
                key: Key { ts: self.n, seq: 0 },
                ts: self.n,
                stream: Stream::Stdout,
                text: text.into(),
                nonfinite_frame: None,
                terminated: true,
                line_no: self.n as u64,
                lines: 1,
                last_key: Key { ts: self.n, seq: 0 },
            };
            let p = self.parser.parse(&rec);
            self.st.apply(&rec, p, &mut self.ops);
        }
        fn runs(&self) -> Vec<RunRow> {
            let mut last: Vec<RunRow> = Vec::new();
            for op in &self.ops {
                if let Op::Run(r) = op {
                    match last.iter_mut().find(|x| x.key == r.key) {
                        Some(x) => *x = r.clone(),
                        None => last.push(r.clone()),
                    }
                }
            }
            last
        }
        /// The metric samples emitted so far, as (name, value).
        fn metrics(&self) -> Vec<(&'static str, f64)> {
            self.ops
                .iter()
                .filter_map(|o| {
                    if let Op::Metric(m) = o {
                        Some((m.name, m.value))
                    } else {
                        None
                    }
                })
                .collect()
        }
        fn kinds(&self) -> Vec<&'static str> {
            self.ops
                .iter()
                .filter_map(|o| {
                    if let Op::Event(e) = o {
                        Some(e.kind)
                    } else {
                        None
                    }
                })
                .collect()
        }
    }

    const HEADER: &str =
        "      Epoch    GPU_mem   box_loss   cls_loss   dfl_loss  Instances       Size";

    fn epoch(h: &mut Harness, e: u32, n: u32, loss: &str) {
        h.line(HEADER);
        h.line(&format!("      {e}/{n}      2.41G      {loss}      2.345      1.123         49        640: 100% ━━━━━━━━━━━━ 5/5 8.3it/s 0.6s"));
        h.line("                   all        128        929      0.386     0.0348     0.0324     0.0135");
    }

    #[test]
    fn completed_run() {
        let mut h = Harness::new();
        h.line("engine/trainer: task=detect, mode=train, model=yolo11n.yaml, epochs=2, resume=False, save_dir=/r/train");
        h.line("Starting training for 2 epochs...");
        epoch(&mut h, 1, 2, "1.194");
        epoch(&mut h, 2, 2, "1.100");
        h.line("2 epochs completed in 0.010 hours.");
        h.line("Validating /r/train/weights/best.pt...");
        h.line("Ultralytics 8.3.40 🚀 Python-3.11.7 torch-2.5.1 CPU");
        h.line("                   all        128        929      0.5     0.05     0.05     0.02");
        let runs = h.runs();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].status, RunStatus::Completed);
        assert_eq!(runs[0].epochs_total, Some(2));
        assert_eq!(runs[0].save_dir.as_deref(), Some("/r/train"));
        let epochs: Vec<u32> = h
            .ops
            .iter()
            .filter_map(|o| {
                if let Op::Epoch(_, e) = o {
                    Some(e.epoch)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(epochs, vec![1, 1, 2, 2]);
        let kinds = h.kinds();
        assert_eq!(
            kinds.iter().filter(|k| **k == "training_started").count(),
            1
        );
        assert_eq!(kinds.iter().filter(|k| **k == "epoch_completed").count(), 2);
        assert_eq!(kinds.iter().filter(|k| **k == "validation").count(), 3);
        assert!(kinds.contains(&"training_completed"));
    }

    #[test]
    fn killed_then_new_process_interrupts_and_resume_continues() {
        let mut h = Harness::new();
        h.line("engine/trainer: task=detect, epochs=10, resume=False, save_dir=/r/train");
        epoch(&mut h, 1, 10, "1.2");
        // The process is killed; the next one resumes the same save_dir.
        h.line("engine/trainer: task=detect, epochs=10, resume=/r/train/weights/last.pt, save_dir=/r/train");
        h.line("Resuming training /r/train/weights/last.pt from epoch 2 to 10 total epochs");
        epoch(&mut h, 2, 10, "1.1");
        assert_eq!(h.runs().len(), 1);
        assert_eq!(h.runs()[0].status, RunStatus::Running);
        // A fresh training without resume: the running one is interrupted.
        h.line("engine/trainer: task=detect, epochs=5, resume=False, save_dir=/r/train2");
        let runs = h.runs();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].status, RunStatus::Interrupted);
        assert_eq!(runs[1].status, RunStatus::Running);
    }

    #[test]
    fn failure_before_first_epoch_is_a_failed_run() {
        let mut h = Harness::new();
        h.line("engine/trainer: task=detect, epochs=10, resume=False, save_dir=/r/t");
        h.line("Traceback (most recent call last):\n  File \"train.py\", line 3\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.");
        let runs = h.runs();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].status, RunStatus::Failed);
        assert!(h.kinds().contains(&"gpu_oom"));
    }

    #[test]
    fn early_stop_and_nan_epoch() {
        let mut h = Harness::new();
        h.line("Starting training for 300 epochs...");
        epoch(&mut h, 1, 300, "nan");
        h.line("EarlyStopping: Training stopped early as no improvement observed in last 1 epochs. Best results observed at epoch 1, best model saved as best.pt.");
        h.line("1 epochs completed in 0.001 hours.");
        let runs = h.runs();
        assert_eq!(runs[0].status, RunStatus::EarlyStopped);
        assert_eq!(runs[0].best_epoch_reported, Some(1));
        assert!(h.kinds().contains(&"loss_non_finite"));
        assert!(h.kinds().contains(&"early_stopped"));
    }

    #[test]
    fn queue_counters_accumulate() {
        let mut h = Harness::new();
        h.line(
            "2026-03-28 14:30:00,000 - annotation_queue - INFO - Annotation saved: id=1 offset=10",
        );
        h.line("Processed 5 messages");
        h.line("WARNING:annotation_queue:Failed to process message offset=12");
        h.st.flush_metrics(&mut h.ops);
        let mut metrics = h.metrics();
        // All three lines fall in one second: one sample per metric, the latest value.
        metrics.sort_by(|a, b| a.0.cmp(b.0));
        assert_eq!(
            metrics,
            vec![
                ("queue_messages_failed", 1.0),
                ("queue_messages_processed", 6.0),
                ("queue_offset", 12.0),
            ]
        );
        assert_eq!(
            h.kinds(),
            vec![
                "annotation_processed",
                "annotation_processed",
                "annotation_failed"
            ]
        );
        // A line in a later second emits the held samples and starts new ones.
        h.ops.clear();
        h.n += 2_000_000_000;
        h.line("Processed 3 messages");
        h.st.flush_metrics(&mut h.ops);
        let metrics = h.metrics();
        assert_eq!(metrics, vec![("queue_messages_processed", 9.0)]);
        assert_eq!(h.kinds(), vec!["annotation_processed"]);
    }
}
