//! Derivation: parsed records in log order -> rows for the store ([`Op`]s).
//!
//! One [`ContainerState`] per container holds what a single line cannot know: the loss column
//! names of the latest epoch header, the current training run, whether the final validation of
//! `best.pt` is under way, and the queue counters. Fed by the parser, it feeds the store's
//! writer. It is a plain state machine (no I/O, no clock), so replay and live follow share it.

pub mod alerts;
pub mod paths;
mod runs;

pub use runs::{
    ContainerState, Exit, RUN_FOLDER, Resume, RunFolder, RunKey, RunStatus, args_params,
};

use std::sync::Arc;

use serde_json::Value;

pub use crate::event::{ContainerRun, EventRow, MetricRow};
use crate::event::{Key, Record, Stream};

/// A JSON number, or the text `nan`/`inf`/`-inf` when not finite (SQLite and JSON would
/// otherwise turn it into NULL and hide it).
pub fn json_num(v: f64) -> Value {
    match serde_json::Number::from_f64(v) {
        Some(n) => Value::Number(n),
        None if v.is_nan() => Value::String("nan".into()),
        None if v > 0.0 => Value::String("inf".into()),
        None => Value::String("-inf".into()),
    }
}

/// How far one source (an origin: a container id, or a text file's fingerprint) has been
/// handed to the store: the key of the last record per stream. Committed as cursor rows with
/// each batch, it is what a restart resumes from.
#[derive(Clone, Debug, PartialEq)]
pub struct Position {
    origin: Arc<str>,
    keys: [Option<Key>; 2],
}

impl Position {
    pub fn new(origin: Arc<str>, stdout: Option<Key>, stderr: Option<Key>) -> Self {
        Position {
            origin,
            keys: [stdout, stderr],
        }
    }

    pub fn key(&self, stream: Stream) -> Option<Key> {
        self.keys[stream.index()]
    }

    /// Whether a line at `key` on `stream` is at or before this position (already stored).
    pub fn covers(&self, stream: Stream, key: Key) -> bool {
        self.keys[stream.index()].is_some_and(|k| key <= k)
    }

    /// Moves past `rec` (and every line grouped into it).
    pub fn advance(&mut self, rec: &Record) {
        self.advance_to(rec.stream, rec.last_key);
    }

    /// Moves past the line at `key` on `stream`.
    pub fn advance_to(&mut self, stream: Stream, key: Key) {
        let k = &mut self.keys[stream.index()];
        if k.is_none_or(|k| key > k) {
            *k = Some(key);
        }
    }

    /// The oldest log time among the streams, if any is positioned.
    pub fn oldest_ts(&self) -> Option<i64> {
        self.keys.iter().flatten().map(|k| k.ts).min()
    }

    /// Appends the cursor rows that commit this position with a batch.
    pub fn cursor_ops(&self, container: &Arc<str>, out: &mut Vec<Op>) {
        for s in Stream::ALL {
            if let Some(key) = self.key(s) {
                out.push(Op::Cursor(CursorRow {
                    container: container.clone(),
                    stream: s,
                    origin: self.origin.clone(),
                    key,
                }));
            }
        }
    }
}

/// A training run's current state, upserted by its natural key.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunRow {
    pub key: RunKey,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub status: RunStatus,
    pub epochs_total: Option<u32>,
    /// The best epoch as Ultralytics' EarlyStopping reported it.
    pub best_epoch_reported: Option<u32>,
    pub save_dir: Option<String>,
    pub model: Option<String>,
    pub loss_names: Vec<String>,
    /// Every `key=value` of the settings line that started the run, as printed (redacted), as
    /// JSON object text; a resume's settings line does not change it.
    #[serde(default)]
    pub params: Option<String>,
    /// The Ultralytics version its banner (`Ultralytics 8.3.40 🚀 ...`) printed before the run.
    #[serde(default)]
    pub ultralytics_version: Option<String>,
    /// Why a `failed` (or `interrupted`) run ended: the exception's last line, the exit code
    /// or signal, or the NaN loss that ended it. `None` while it runs or when it ended well.
    #[serde(default)]
    pub failure: Option<String>,
}

/// Values of one epoch, merged into the stored row: `None` leaves a column as it is, so the
/// training row and the validation row of an epoch can arrive separately.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EpochRow {
    pub epoch: u32,
    pub epochs_total: Option<u32>,
    pub ended_at: i64,
    /// Loss columns by name, in header order; values may be non-finite.
    pub losses: Option<Vec<(String, f64)>>,
    /// A single total loss when only that is known (service JSON `loss`).
    pub loss: Option<f64>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub map50: Option<f64>,
    pub map50_95: Option<f64>,
    pub gpu_mem_gb: Option<f64>,
    /// The validation row's second metric group (segmentation masks, pose keypoints), as the
    /// JSON object stored in `epochs.metrics`.
    pub metrics: Option<String>,
    /// Seconds from the start of training to this row (results.csv's `time`).
    pub train_time_s: Option<f64>,
    /// A value other than the losses was NaN/inf (a validation loss in results.csv).
    pub non_finite: Option<bool>,
}

/// A source position that is fully stored once the batch carrying it commits.
#[derive(Clone, Debug, PartialEq)]
pub struct CursorRow {
    pub container: Arc<str>,
    pub stream: Stream,
    pub origin: Arc<str>,
    pub key: crate::event::Key,
}

impl Op {
    /// A metric sample.
    pub fn metric(ts: i64, container: &str, name: &'static str, value: f64) -> Op {
        Op::Metric(MetricRow {
            ts,
            container: Arc::from(container),
            name,
            value,
        })
    }
}

/// A change to a stored run beyond its row ([`Op::RunPatch`]).
#[derive(Clone, Debug, PartialEq)]
pub enum RunPatch {
    /// Parameters that fill what the run lacks (its folder's `args.yaml`): a JSON object.
    ParamsFill(String),
    /// Parameters that replace what was printed (the optimizer the training resolved): a
    /// JSON object.
    ParamsOverride(String),
    /// Where its run folder is read here (the local path its `save_dir` maps to).
    Folder(String),
    /// Ultralytics' own MLflow run of it: its run id and tracking URI.
    Mlflow { run_id: String, uri: String },
    /// Its results.csv was replaced: the rows read of it before no longer hold.
    ResultsRestarted,
}

/// What derivation asks the store to write. A batch of ops is committed in one transaction.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Event(EventRow),
    Run(RunRow),
    Epoch(RunKey, EpochRow),
    Metric(MetricRow),
    Cursor(CursorRow),
    /// The wall clock in `watch` (ns): time-based alert rules are evaluated. Stores nothing.
    Tick(i64),
    /// A fact for the alert rules that is not a row (ns, signal). Stores nothing.
    Signal(i64, alerts::Signal),
    /// A followed container and its role, as the Docker source found it (ns).
    Container(i64, Arc<str>, String),
    /// A container's derivation state (JSON), committed with its cursor.
    State(Arc<str>, String),
    /// A followed container's state as the daemon reports it (ns).
    ContainerState(i64, Arc<str>, ContainerRun),
    /// A row of a run's `results.csv` (run, row index in the file, epoch, header, cells as
    /// written).
    ResultsRow(RunKey, u32, u32, Arc<[String]>, Vec<String>),
    /// A change to a stored run that its row does not carry.
    RunPatch(RunKey, RunPatch),
    /// A source that is gone for good (a destroyed container's id): its cursors are removed.
    ForgetOrigin(Arc<str>),
    /// Retention: rows older than the cutoffs (stored time text) are deleted, history only
    /// when a cutoff is given. Sent alone; the writer runs it between batches, in batches of
    /// its own ([`crate::store::retention`]).
    Prune {
        events: String,
        history: Option<String>,
    },
}

impl From<crate::event::Notice> for Op {
    fn from(n: crate::event::Notice) -> Op {
        use crate::event::Notice;
        match n {
            Notice::Sample(m) => Op::Metric(m),
            Notice::Tick(now) => Op::Tick(now),
            Notice::Container(ts, name, role) => Op::Container(ts, name, role),
            Notice::State(ts, name, run) => Op::ContainerState(ts, name, run),
            Notice::Up {
                ts,
                name,
                role,
                running,
            } => Op::Signal(
                ts,
                alerts::Signal::Container {
                    name,
                    role,
                    running,
                },
            ),
            Notice::Daemon(e) => Op::Event(e),
            Notice::DaemonReachable(ts) => Op::Signal(ts, alerts::Signal::DockerReachable),
            Notice::Gone(origin) => Op::ForgetOrigin(origin),
        }
    }
}
