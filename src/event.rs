//! The values that flow through the pipeline, from a source's raw line to the rows the store
//! writes. Sources produce [`RawLine`]s and [`Notice`]s, assembly turns lines into [`Record`]s,
//! the parsers give a [`crate::parse::Parsed`], and derivation emits [`crate::derive::Op`]s for
//! the store. The plain rows and facts every floor shares ([`Level`], [`EventRow`],
//! [`MetricRow`], [`ContainerRun`]) live here, below all of them.

use std::fmt;
use std::sync::Arc;

/// Which of a container's output streams a line came from.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    pub fn parse(s: &str) -> Option<Stream> {
        match s {
            "stdout" => Some(Stream::Stdout),
            "stderr" => Some(Stream::Stderr),
            _ => None,
        }
    }

    pub const ALL: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

    /// Position in per-stream arrays (`[stdout, stderr]`), in the order of [`Stream::ALL`].
    pub fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record's position in its source: the log time in nanoseconds since the Unix epoch and its
/// position among the records of the same stream carrying that same time.
///
/// Together with the container, the stream and the source's origin this is the natural key
/// that makes ingestion idempotent: Docker's `since` is inclusive and rotated sets overlap, so
/// the same line can be offered twice and must be recognised as already stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub ts: i64,
    pub seq: u32,
}

/// One logical line from a source: Docker's 16 KiB partial pieces already merged, the trailing
/// newline removed. The text may still hold `\r` progress redraws and ANSI escapes.
#[derive(Clone, Debug, PartialEq)]
pub struct RawLine {
    pub key: Key,
    /// Log time (ns since the epoch) used for display and retention; equals `key.ts` for
    /// Docker sources.
    pub ts: i64,
    pub stream: Stream,
    pub text: String,
    /// False for the unterminated tail of a process that died mid-line (no `\n` ever came).
    pub terminated: bool,
    /// 1-based physical line of the first piece in its file, for error messages.
    pub line_no: u64,
    /// True when the merge of partial pieces hit the size cap and the rest was dropped.
    pub truncated: bool,
}

/// A line after assembly: the final `\r` frame, ANSI stripped, continuation lines grouped.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub key: Key,
    pub ts: i64,
    pub stream: Stream,
    /// Clean text; a grouped traceback or multi-line logging record keeps all its lines,
    /// joined with `\n`.
    pub text: String,
    /// The first progress frame of this line that showed a non-finite loss, when one did
    /// (a NaN in an intermediate frame is still a NaN, even if the final frame recovered).
    pub nonfinite_frame: Option<String>,
    pub terminated: bool,
    pub line_no: u64,
    /// Number of physical lines grouped into this record.
    pub lines: u32,
    /// The key of the last physical line grouped into this record: once the record is
    /// stored, the source is stored up to here.
    pub last_key: Key,
}

/// Severity of a record, from its own level field or prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Debug,
    Info,
    Warning,
    Error,
    Critical,
}

impl Level {
    /// A level name in any case (compared in place: this runs for every service line).
    pub fn parse(s: &str) -> Option<Level> {
        const NAMES: [(&str, Level); 10] = [
            ("INFO", Level::Info),
            ("DEBUG", Level::Debug),
            ("WARNING", Level::Warning),
            ("ERROR", Level::Error),
            ("CRITICAL", Level::Critical),
            ("WARN", Level::Warning),
            ("TRACE", Level::Debug),
            ("NOTICE", Level::Info),
            ("ERR", Level::Error),
            ("FATAL", Level::Critical),
        ];
        let s = s.trim();
        NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|&(_, level)| level)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
            Level::Critical => "CRITICAL",
        }
    }
}

/// One event row (view `events`).
#[derive(Clone, Debug, PartialEq)]
pub struct EventRow {
    pub ts: i64,
    pub container: Arc<str>,
    /// `stdout`, `stderr`, or `docker` for the daemon's own events.
    pub stream: &'static str,
    pub seq: u32,
    pub key_ts: i64,
    pub level: Level,
    pub kind: &'static str,
    pub message: String,
    /// JSON object text.
    pub context: String,
}

/// One metric sample (view `metric_samples`).
#[derive(Clone, Debug, PartialEq)]
pub struct MetricRow {
    pub ts: i64,
    pub container: Arc<str>,
    pub name: &'static str,
    pub value: f64,
}

/// What the daemon says a container is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerRun {
    Running,
    /// Stopped, with its exit code when known.
    Exited(Option<i64>),
    /// The kernel's OOM killer hit it (its `die` follows).
    OomKilled,
    /// Removed (`destroy`): its log and stats are gone with it.
    Removed,
}

/// What a source reports besides log lines: samples, the clock, and what the Docker daemon
/// says about containers. Sources yield these; the pipeline turns them into store operations
/// (`derive::Op`), so no source depends on derivation or the store.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// One sample of a gauge or counter (host probes, Docker stats).
    Sample(MetricRow),
    /// The wall clock in `watch` (ns): time-based rules are evaluated.
    Tick(i64),
    /// A followed container and its role, as discovery found it (ns).
    Container(i64, Arc<str>, String),
    /// A followed container's state as the daemon reports it (ns).
    State(i64, Arc<str>, ContainerRun),
    /// Whether a selected container (name, role) runs (ns), for the rules on containers that
    /// are down.
    Up {
        ts: i64,
        name: Arc<str>,
        role: String,
        running: bool,
    },
    /// Something the daemon did or suffered, stored as an event of stream `docker`.
    Daemon(EventRow),
    /// The daemon answers again after an outage that was reported (ns).
    DaemonReachable(i64),
    /// A source gone for good (a destroyed container's id): its cursors can go.
    Gone(Arc<str>),
}

/// Metric names: the `metrics.name` column and the `/metrics` series, a public contract.
pub mod metric {
    pub const TRAINING_EPOCH: &str = "training_epoch";
    pub const TRAINING_LOSS: &str = "training_loss";
    pub const TRAINING_MAP50: &str = "training_mAP50";
    pub const TRAINING_MAP50_95: &str = "training_mAP50_95";
    pub const QUEUE_OFFSET: &str = "queue_offset";
    pub const QUEUE_MESSAGES_PROCESSED: &str = "queue_messages_processed";
    pub const QUEUE_MESSAGES_FAILED: &str = "queue_messages_failed";
    pub const GPU_TEMPERATURE_C: &str = "gpu_temperature_c";
    pub const GPU_UTILIZATION_PCT: &str = "gpu_utilization_pct";
    pub const GPU_MEMORY_USED_MB: &str = "gpu_memory_used_mb";
    pub const GPU_MEMORY_TOTAL_MB: &str = "gpu_memory_total_mb";
    pub const DISK_USAGE_AZAION_GB: &str = "disk_usage_azaion_gb";
    pub const DISK_USAGE_AZAION_PCT: &str = "disk_usage_azaion_pct";
    pub const DISK_TOTAL_AZAION_GB: &str = "disk_total_azaion_gb";
    /// Redactions in a container's logs, one counter per kind of secret (`redact::Kind`).
    pub const REDACTIONS: [&str; 4] = [
        "redactions_token",
        "redactions_password",
        "redactions_key",
        "redactions_image_payload",
    ];

    /// The counter of redactions of a kind (`token`, `password`, `key`, `image_payload`).
    pub fn redactions(kind: &str) -> &'static str {
        REDACTIONS
            .iter()
            .find(|m| m.strip_prefix("redactions_") == Some(kind))
            .copied()
            .unwrap_or(REDACTIONS[0])
    }

    /// The kind of secret a redactions counter counts.
    pub fn redaction_kind(name: &str) -> Option<&str> {
        name.strip_prefix("redactions_")
    }
}

/// Event kinds: the `events.kind` column, a public contract. (Only those more than one floor
/// speaks of.)
pub mod kind {
    pub const ERROR: &str = "error";
    pub const WARNING: &str = "warning";
    pub const LOG: &str = "log";
    pub const LOSS_NON_FINITE: &str = "loss_non_finite";
    pub const GPU_OOM: &str = "gpu_oom";
    pub const CHECKPOINT_SAVED: &str = "checkpoint_saved";
    pub const CHECKPOINT_SAVE_FAILED: &str = "checkpoint_save_failed";
    pub const TRAINING_CONTAINER_DIED: &str = "training_container_died";
    pub const TRAINING_FAILED: &str = "training_failed";
    pub const DOCKER_UNREACHABLE: &str = "docker_unreachable";
    pub const CONTAINER_STARTED: &str = "container_started";
    pub const CONTAINER_DIED: &str = "container_died";
    pub const CONTAINER_OOM_KILLED: &str = "container_oom_killed";
    pub const QUEUE_OFFSET: &str = "queue_offset";
    pub const ANNOTATION_PROCESSED: &str = "annotation_processed";
    pub const ANNOTATION_FAILED: &str = "annotation_failed";
    /// Lines that are gone before they were read: rotated away by the daemon, or removed
    /// with their container.
    pub const LOG_LOST: &str = "log_lost";
    /// A run's folder (its `save_dir`) that cannot be read: why, once.
    pub const RUN_FOLDER_UNREADABLE: &str = "run_folder_unreadable";
}

/// A kind or metric name as a `&'static str` (rows carry their names as such): the known
/// names are themselves, another (from the config's patterns, or a resumed snapshot of one)
/// is leaked once for the life of the process, so their number is bounded by the config's.
pub fn intern(name: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    const KNOWN: [&str; 13] = [
        kind::GPU_OOM,
        kind::CHECKPOINT_SAVE_FAILED,
        kind::ANNOTATION_PROCESSED,
        kind::ANNOTATION_FAILED,
        kind::QUEUE_OFFSET,
        kind::LOSS_NON_FINITE,
        metric::QUEUE_MESSAGES_PROCESSED,
        metric::QUEUE_MESSAGES_FAILED,
        metric::TRAINING_LOSS,
        metric::REDACTIONS[0],
        metric::REDACTIONS[1],
        metric::REDACTIONS[2],
        metric::REDACTIONS[3],
    ];
    if let Some(k) = KNOWN.iter().find(|k| **k == name) {
        return k;
    }
    static OTHERS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut others = OTHERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    match others.get(name) {
        Some(s) => s,
        None => {
            let s: &'static str = Box::leak(name.to_string().into_boxed_str());
            others.insert(s);
            s
        }
    }
}

#[cfg(test)]
mod intern_tests {
    use super::*;

    #[test]
    fn names_are_interned_once() {
        assert_eq!(intern("gpu_oom"), kind::GPU_OOM);
        let a = intern("labels_exported");
        let b = intern(&String::from("labels_exported"));
        assert!(std::ptr::eq(a, b));
        assert_eq!(a, "labels_exported");
    }
}
