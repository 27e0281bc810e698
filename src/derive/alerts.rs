//! Alert rules: the store's ops in commit order (and clock ticks) -> alert state changes.
//!
//! Like Prometheus, every alert is a set of labels (`alertname`, `severity`, `container`,
//! `gpu`, `mount`) with a fingerprint computed from them, and goes pending (while its `for`
//! duration runs) -> firing -> resolved. There is at most one active alert per fingerprint.
//! The [`Engine`] is a plain state machine without I/O or clock of its own: the store's writer
//! feeds it each op it commits and persists the [`Change`]s it returns in the same
//! transaction, so alerts follow exactly the data that was stored, during `replay` (with the
//! log's times, each container's rules on that container's own) as during `watch` (where
//! [`Op::Tick`] brings the wall clock). Everything it has learnt is one serializable value,
//! committed with each batch ([`Engine::snapshot`], [`Engine::resume`]): a restart after a
//! crash continues as if it had never stopped.
//!
//! The rules and their defaults (all configurable in `[alerts]`):
//!
//! | alertname | severity | fires when | resolves when |
//! |---|---|---|---|
//! | `GpuTemperatureHigh` | critical | `gpu_temperature_c` > 90 | a sample ≤ 90 |
//! | `QueueContainerDown` | critical | a `queue` container not running for 5 min | it runs again |
//! | `DiskUsageCritical` | critical | `disk_usage_azaion_pct` > 95 | a sample ≤ 95 |
//! | `DiskUsageHigh` | medium | `disk_usage_azaion_pct` > 80 | a sample ≤ 80 |
//! | `TrainingLossNonFinite` | high | `loss_non_finite`, or an epoch with a NaN/inf loss; at once | a finite epoch, or the run ends |
//! | `TrainingLossDiverging` | high | see [`Diverging`] | the test passes again, or the run ends |
//! | `GpuOutOfMemory` | high | `gpu_oom` | a later training epoch, or 1 h without another |
//! | `QueueOffsetStale` | medium | `queue_offset` unchanged for 1 h while the queue runs | the offset moves |
//! | `CheckpointSaveFailed` | low | `checkpoint_save_failed` | `checkpoint_saved`, or 1 h |
//! | `DockerUnreachable` | critical | `docker_unreachable` | the daemon answers again |
//! | `LogStreamSilent` | medium | a running container's stream silent too long | data flows again |
//! | `StoreNotWritable` | critical | a batch cannot be committed | a batch commits |
//! | `TrainingContainerDied` | high | a container stopped (non-zero exit, OOM kill) while its run was running | it starts again, or a new run starts |
//! | `TrainingStalled` | high | no epoch completed for max(3x the median epoch time, 15 min) while the run runs | an epoch completes, the run ends, or its log ends (replay) |

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{MetricRow, Op, RunKey, RunStatus};
use crate::time::{Age, human_duration};

/// How urgent an alert is; the `severity` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        Some(match s {
            "critical" => Severity::Critical,
            "high" => Severity::High,
            "medium" => Severity::Medium,
            "low" => Severity::Low,
            _ => return None,
        })
    }
}

/// The alert names: the `alertname` label, a public contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AlertName {
    GpuTemperatureHigh,
    QueueContainerDown,
    DiskUsageCritical,
    DiskUsageHigh,
    TrainingLossNonFinite,
    TrainingLossDiverging,
    GpuOutOfMemory,
    QueueOffsetStale,
    CheckpointSaveFailed,
    DockerUnreachable,
    LogStreamSilent,
    StoreNotWritable,
    TrainingContainerDied,
    TrainingStalled,
}

impl AlertName {
    pub const ALL: [AlertName; 14] = [
        AlertName::GpuTemperatureHigh,
        AlertName::QueueContainerDown,
        AlertName::DiskUsageCritical,
        AlertName::DiskUsageHigh,
        AlertName::TrainingLossNonFinite,
        AlertName::TrainingLossDiverging,
        AlertName::GpuOutOfMemory,
        AlertName::QueueOffsetStale,
        AlertName::CheckpointSaveFailed,
        AlertName::DockerUnreachable,
        AlertName::LogStreamSilent,
        AlertName::StoreNotWritable,
        AlertName::TrainingContainerDied,
        AlertName::TrainingStalled,
    ];

    /// The name with this `alertname` label.
    pub fn parse(s: &str) -> Option<AlertName> {
        Self::ALL.into_iter().find(|n| n.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AlertName::GpuTemperatureHigh => "GpuTemperatureHigh",
            AlertName::QueueContainerDown => "QueueContainerDown",
            AlertName::DiskUsageCritical => "DiskUsageCritical",
            AlertName::DiskUsageHigh => "DiskUsageHigh",
            AlertName::TrainingLossNonFinite => "TrainingLossNonFinite",
            AlertName::TrainingLossDiverging => "TrainingLossDiverging",
            AlertName::GpuOutOfMemory => "GpuOutOfMemory",
            AlertName::QueueOffsetStale => "QueueOffsetStale",
            AlertName::CheckpointSaveFailed => "CheckpointSaveFailed",
            AlertName::DockerUnreachable => "DockerUnreachable",
            AlertName::LogStreamSilent => "LogStreamSilent",
            AlertName::StoreNotWritable => "StoreNotWritable",
            AlertName::TrainingContainerDied => "TrainingContainerDied",
            AlertName::TrainingStalled => "TrainingStalled",
        }
    }

    pub fn severity(self) -> Severity {
        use AlertName::*;
        match self {
            GpuTemperatureHigh | QueueContainerDown | DiskUsageCritical | DockerUnreachable
            | StoreNotWritable => Severity::Critical,
            TrainingLossNonFinite
            | TrainingLossDiverging
            | GpuOutOfMemory
            | TrainingContainerDied
            | TrainingStalled => Severity::High,
            DiskUsageHigh | QueueOffsetStale | LogStreamSilent => Severity::Medium,
            CheckpointSaveFailed => Severity::Low,
        }
    }
}

/// "Diverging", checkable by a reader: after the warm-up epochs (Ultralytics' default
/// `warmup_epochs=3`, whose rising learning rate raises the loss on its own), the epoch's
/// training loss (the sum of its loss columns) is above `factor` x its running minimum since
/// the warm-up for `above_for_epochs` consecutive epochs, or has risen `rising_epochs` epochs
/// in a row.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Diverging {
    pub warmup_epochs: u32,
    pub factor: f64,
    pub above_for_epochs: u32,
    pub rising_epochs: u32,
}

impl Default for Diverging {
    fn default() -> Self {
        Diverging {
            warmup_epochs: 3,
            factor: 2.0,
            above_for_epochs: 3,
            rising_epochs: 5,
        }
    }
}

/// How old the newest probe sample may be at a restart for the `for` durations running at the
/// stop to be continued (Prometheus' default `rules.alert.for-grace-period`).
pub const FOR_GRACE_NS: i64 = 10 * 60 * 1_000_000_000;

/// Thresholds and durations of the rules (`[alerts]` in the config).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rules {
    pub gpu_temperature_c: f64,
    pub gpu_temperature_for: Age,
    pub disk_critical_pct: f64,
    pub disk_high_pct: f64,
    pub disk_for: Age,
    pub queue_down_for: Age,
    pub queue_offset_stale_after: Age,
    /// `GpuOutOfMemory` and `CheckpointSaveFailed` resolve after this long without another.
    pub event_resolve_after: Age,
    /// A firing alert is notified again after this long.
    pub repeat_interval: Age,
    /// `watch` notifies only alerts whose newest evidence is at most this old: reading a
    /// container's old logs for the first time must not page anyone for last week.
    pub notify_backlog: Age,
    pub diverging: Diverging,
    /// `TrainingStalled`: no epoch completed for this many times the run's median epoch
    /// time...
    pub training_stalled_factor: f64,
    /// ... and at least this long.
    pub training_stalled_min: Age,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            gpu_temperature_c: 90.0,
            gpu_temperature_for: Age(0),
            disk_critical_pct: 95.0,
            disk_high_pct: 80.0,
            disk_for: Age(0),
            queue_down_for: Age::secs(300),
            queue_offset_stale_after: Age::secs(3600),
            event_resolve_after: Age::secs(3600),
            repeat_interval: Age::secs(4 * 3600),
            notify_backlog: Age::secs(3600),
            diverging: Diverging::default(),
            training_stalled_factor: 3.0,
            training_stalled_min: Age::secs(15 * 60),
        }
    }
}

/// Labels of an alert, sorted by name.
pub type Labels = BTreeMap<String, String>;

/// The fingerprint of a label set: FNV-1a over the sorted `name\0value\0` pairs, in hex.
pub fn fingerprint(labels: &Labels) -> String {
    let mut bytes = Vec::with_capacity(128);
    for (k, v) in labels {
        bytes.extend_from_slice(k.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(v.as_bytes());
        bytes.push(0);
    }
    format!("{:016x}", crate::hash::fnv1a(&bytes))
}

/// An alert as stored and notified.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    pub fingerprint: String,
    pub alertname: &'static str,
    pub severity: Severity,
    pub labels: Labels,
    pub summary: String,
    /// When the condition began (the start of the pending time), ns.
    pub started_at: i64,
    pub resolved_at: Option<i64>,
}

/// An [`Alert`] as read back from a snapshot: its name becomes the name's static string.
#[derive(Deserialize)]
struct StoredAlert {
    fingerprint: String,
    alertname: String,
    severity: Severity,
    labels: Labels,
    summary: String,
    started_at: i64,
    resolved_at: Option<i64>,
}

fn stored_alert<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Alert, D::Error> {
    let a = StoredAlert::deserialize(d)?;
    let name = AlertName::parse(&a.alertname)
        .ok_or_else(|| serde::de::Error::custom(format!("unknown alertname {:?}", a.alertname)))?;
    Ok(Alert {
        fingerprint: a.fingerprint,
        alertname: name.as_str(),
        severity: a.severity,
        labels: a.labels,
        summary: a.summary,
        started_at: a.started_at,
        resolved_at: a.resolved_at,
    })
}

/// What the store must record.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Became firing; `notify` when it is to be sent to the receivers.
    Fired { alert: Alert, notify: bool },
    /// A firing alert resolved at `alert.resolved_at`.
    Resolved { alert: Alert, notify: bool },
    /// Still firing after the repeat interval: notify again.
    Repeat { alert: Alert },
}

/// Signals that are not rows: container states from discovery, the daemon and stream
/// health, the store's own health.
#[derive(Clone, Debug, PartialEq)]
pub enum Signal {
    /// A followed container's state as discovery saw it.
    Container {
        name: Arc<str>,
        role: String,
        running: bool,
    },
    DockerReachable,
    StreamSilent {
        container: Arc<str>,
        silent: bool,
    },
    /// `replay` read a container's archived log to its end: what needs the container to be
    /// watched while it runs (a stuck queue offset, a stalled run) is no longer known, and
    /// resolves at the log's last time.
    LogEnded {
        container: Arc<str>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Phase {
    Pending { since: i64 },
    Firing,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Active {
    #[serde(deserialize_with = "stored_alert")]
    alert: Alert,
    state: Phase,
    /// When it was last notified (or, if never, when it fired).
    last_notified: i64,
    /// Whether notifications go out for it (live and recent).
    notify: bool,
    /// The run it is about (loss alerts), to resolve when that run ends.
    run: Option<RunKey>,
    /// Last time its event recurred (event alerts).
    last_seen: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ContainerFacts {
    role: String,
    running: bool,
    since: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct LossTrack {
    run: Option<RunKey>,
    /// (epoch, total training loss) in epoch order.
    epochs: Vec<(u32, f64)>,
}

/// The rule engine. See the module documentation.
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
/// deterministic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct EngineState {
    /// Format of the snapshot; another version is not resumed.
    version: u32,
    /// The newest time seen: ticks (the wall clock, in `watch`) and log times.
    clock: i64,
    next_eval: i64,
    /// The newest tick (the wall clock).
    wall: i64,
    /// Each container's own newest log time (`replay`).
    clocks: BTreeMap<Arc<str>, Clock>,
    active: BTreeMap<String, Active>,
    containers: BTreeMap<Arc<str>, ContainerFacts>,
    /// Each queue's latest offset and when it took that value.
    offsets: BTreeMap<Arc<str>, (f64, i64)>,
    losses: BTreeMap<Arc<str>, LossTrack>,
    /// When each container's latest run ended (absent while it runs).
    run_ended: BTreeMap<Arc<str>, i64>,
    /// When the last instance of each fingerprint resolved: the next one starts after it.
    resolved: BTreeMap<String, i64>,
    /// The pace of each container's running run, for `TrainingStalled`.
    #[serde(default)]
    pace: BTreeMap<Arc<str>, Pace>,
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

const PACE_KEPT: usize = 64;

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

/// Fingerprints whose last resolution is kept (the oldest are forgotten beyond).
const RESOLVED_KEPT: usize = 4096;

const SNAPSHOT_VERSION: u32 = 1;

/// The time-based rules are evaluated once per second of (log) time.
const EVAL_EVERY_NS: i64 = 1_000_000_000;

/// A container's own clock in `replay`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Clock {
    at: i64,
    next_eval: i64,
}

impl Default for EngineState {
    fn default() -> Self {
        EngineState {
            version: SNAPSHOT_VERSION,
            clock: i64::MIN,
            next_eval: i64::MIN,
            wall: i64::MIN,
            clocks: BTreeMap::new(),
            active: BTreeMap::new(),
            containers: BTreeMap::new(),
            offsets: BTreeMap::new(),
            losses: BTreeMap::new(),
            run_ended: BTreeMap::new(),
            resolved: BTreeMap::new(),
            pace: BTreeMap::new(),
        }
    }
}

/// When a condition holds: since when, how long it must hold before firing, and the time of
/// its newest evidence (what decides whether `watch` pages for it).
#[derive(Clone, Copy, Debug)]
struct When {
    since: i64,
    for_ns: i64,
    evidence: i64,
}

impl When {
    /// A condition seen in a sample or event at `ts`.
    fn sample(ts: i64, for_ns: i64) -> When {
        When {
            since: ts,
            for_ns,
            evidence: ts,
        }
    }
}

/// A firing alert loaded from the store at start.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub alert: Alert,
    pub last_notified: Option<i64>,
    /// Whether it came from `watch` (and so is to be repeated and resolved with notices).
    pub live: bool,
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

    /// Restores the alerts that were firing when trainwatch stopped: a restart neither fires
    /// them again nor forgets them.
    pub fn restore(&mut self, loaded: Vec<Loaded>) {
        for l in loaded {
            let seen = l.last_notified.unwrap_or(l.alert.started_at);
            self.st.active.insert(
                l.alert.fingerprint.clone(),
                Active {
                    state: Phase::Firing,
                    last_notified: seen,
                    notify: self.live && l.live,
                    run: None,
                    last_seen: l.alert.started_at,
                    alert: l.alert,
                },
            );
        }
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
        let live = self.live;
        for a in self.st.active.values_mut() {
            a.notify &= live;
        }
        Ok(())
    }

    /// After [`Engine::resume`]: agrees with the alerts the store holds as firing. One that
    /// another engine closed since (a replay into the same database) is forgotten, one that
    /// another engine fired is taken on as [`Engine::restore`] does.
    pub fn reconcile(&mut self, firing: Vec<Loaded>) {
        let same = |a: &Active, l: &Loaded| a.alert.started_at == l.alert.started_at;
        self.st.active.retain(|fp, a| {
            !matches!(a.state, Phase::Firing)
                || firing
                    .iter()
                    .any(|l| l.alert.fingerprint == *fp && same(a, l))
        });
        let unknown = firing
            .into_iter()
            .filter(|l| {
                !self
                    .st
                    .active
                    .get(&l.alert.fingerprint)
                    .is_some_and(|a| same(a, l))
            })
            .collect();
        self.restore(unknown);
    }

    /// After a stop longer than [`FOR_GRACE_NS`] at `now`, nobody knows what held meanwhile:
    /// the `for` durations that were running start again (as in Prometheus).
    pub fn expire_pending(&mut self, now: i64) {
        if now - self.st.clock > FOR_GRACE_NS {
            self.st
                .active
                .retain(|_, a| !matches!(a.state, Phase::Pending { .. }));
        }
    }

    /// Restores each container's queue offset and when it last changed (ns), so that a
    /// restart does not start the staleness clock again.
    pub fn restore_offsets(&mut self, offsets: Vec<(Arc<str>, f64, i64)>) {
        for (container, value, changed) in offsets {
            self.st.offsets.insert(container, (value, changed));
        }
    }

    /// The probe samples a restart reads back to continue the rules that wait a `for`
    /// duration on them: the metric names and how far back (ns), or `None` when no rule waits.
    pub fn pending_window(&self) -> Option<(Vec<&'static str>, i64)> {
        let r = &self.rules;
        let waits = [
            ("gpu_temperature_c", r.gpu_temperature_for.0),
            ("disk_usage_azaion_pct", r.disk_for.0),
        ];
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
            self.st.clock = self.st.clock.max(m.ts);
            self.on_metric(m, out);
        }
    }

    /// Whether this engine notifies (it runs in `watch`).
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// The firing alerts, most severe first.
    pub fn firing(&self) -> Vec<Alert> {
        let mut v: Vec<Alert> = self
            .st
            .active
            .values()
            .filter(|a| matches!(a.state, Phase::Firing))
            .map(|a| a.alert.clone())
            .collect();
        v.sort_by_key(|a| (a.severity, a.started_at));
        v
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
                self.on_epoch(key, e, out);
            }
            Op::Run(r) => {
                let ts = r.ended_at.unwrap_or(r.started_at);
                self.advance(ts, Some(&r.key.container), out);
                self.on_run(&r.key, r.status, ts, out);
            }
            Op::Cursor(_)
            | Op::Container(..)
            | Op::State(..)
            | Op::ContainerState(..)
            | Op::ForgetOrigin(_)
            | Op::Prune { .. } => {}
            Op::Tick(now) => {
                // Like any op, a tick evaluates once a second of time has passed: a tick that
                // brings no new time (a restart's first) changes nothing, so where a restart
                // falls does not move the evaluations.
                self.st.clock = self.st.clock.max(*now);
                self.st.wall = self.st.wall.max(*now);
                if self.st.clock >= self.st.next_eval {
                    self.evaluate(None, out);
                }
            }
            Op::Signal(_, Signal::LogEnded { container }) => {
                let at = self.now_for(Some(container));
                for name in [AlertName::QueueOffsetStale, AlertName::TrainingStalled] {
                    self.resolve_named(name, container, at, out);
                }
                self.st.offsets.remove(container);
                self.st.pace.remove(container);
            }
            Op::Signal(ts, s) => {
                let scope = match s {
                    Signal::Container { name, .. } => Some(name),
                    Signal::StreamSilent { container, .. } | Signal::LogEnded { container } => {
                        Some(container)
                    }
                    Signal::DockerReachable => None,
                };
                self.advance(*ts, scope, out);
                self.on_signal(*ts, s, out);
            }
        }
    }

    /// The store could not commit (`Err`) or committed again (`Ok`).
    pub fn store_health(&mut self, now: i64, error: Option<&str>, out: &mut Vec<Change>) {
        self.st.clock = self.st.clock.max(now);
        let labels = labels(AlertName::StoreNotWritable, &[]);
        match error {
            Some(e) => {
                let from = out.len();
                self.fire_now(
                    AlertName::StoreNotWritable,
                    labels,
                    format!("The database cannot be written: {e}"),
                    now,
                    None,
                    out,
                );
                // The notifier sends the firing itself (the outbox cannot be written now);
                // the resolution goes through the outbox once the store is back.
                for c in &mut out[from..] {
                    if let Change::Fired { notify, .. } = c {
                        *notify = false;
                    }
                }
            }
            None => self.resolve(&labels, now, out),
        }
    }

    /// The time it is for the alerts about `container`. In `watch`, one clock for all: the
    /// wall clock of the ticks, or a newer log time. In `replay`, each container's own log
    /// time: archives of several containers are replayed one after another, and the hour a
    /// queue's offset has not moved is an hour of the queue's log, not of the training's.
    fn now_for(&self, container: Option<&str>) -> i64 {
        match container.and_then(|c| self.st.clocks.get(c)) {
            Some(c) if !self.live => c.at.max(self.st.wall),
            _ => self.st.clock,
        }
    }

    fn advance(&mut self, ts: i64, container: Option<&Arc<str>>, out: &mut Vec<Change>) {
        self.st.clock = self.st.clock.max(ts);
        match container {
            Some(c) if !self.live => {
                let clock = self.st.clocks.entry(c.clone()).or_insert(Clock {
                    at: ts,
                    next_eval: i64::MIN,
                });
                clock.at = clock.at.max(ts);
                if clock.at >= clock.next_eval {
                    clock.next_eval = clock.at.saturating_add(EVAL_EVERY_NS);
                    self.evaluate(Some(&c.clone()), out);
                }
            }
            _ if self.st.clock >= self.st.next_eval => self.evaluate(None, out),
            _ => {}
        }
    }

    /// Evaluates the time-based rules, each at the time of the container it is about
    /// ([`Engine::now_for`]): those of `scope` only, or all.
    fn evaluate(&mut self, scope: Option<&Arc<str>>, out: &mut Vec<Change>) {
        if scope.is_none() {
            self.st.next_eval = self.st.clock.saturating_add(EVAL_EVERY_NS);
        }
        let in_scope = |c: &str| scope.is_none_or(|s| **s == *c);
        // Evaluated once per second of log time: the lists below stay empty (and allocate
        // nothing) unless something is down, stale, or active.
        // Queue containers that are down.
        let down: Vec<(Arc<str>, i64)> = self
            .st
            .containers
            .iter()
            .filter(|(n, f)| f.role == "queue" && !f.running && in_scope(n))
            .map(|(n, f)| (n.clone(), f.since))
            .collect();
        for (name, since) in down {
            let now = self.now_for(Some(&name));
            let l = labels(AlertName::QueueContainerDown, &[("container", &name)]);
            let summary = format!(
                "Annotation queue container {name} is not running (since {})",
                crate::time::format_ns(since)
            );
            self.condition(
                AlertName::QueueContainerDown,
                l,
                summary,
                When {
                    since,
                    for_ns: self.rules.queue_down_for.0,
                    evidence: now,
                },
                now,
                out,
            );
        }
        if self.any_active(AlertName::QueueContainerDown) {
            let running: Vec<Arc<str>> = self
                .st
                .containers
                .iter()
                .filter(|(n, f)| f.role == "queue" && f.running && in_scope(n))
                .map(|(n, _)| n.clone())
                .collect();
            for name in running {
                let now = self.now_for(Some(&name));
                self.resolve_named(AlertName::QueueContainerDown, &name, now, out);
            }
        }
        // Offsets that stopped moving while the queue runs.
        let stale_after = self.rules.queue_offset_stale_after.0;
        let stale: Vec<(Arc<str>, f64, i64)> = self
            .st
            .offsets
            .iter()
            .filter(|(c, (_, t))| in_scope(c) && self.offset_stale(c, *t))
            .map(|(c, (v, t))| (c.clone(), *v, *t))
            .collect();
        for (container, value, changed) in stale {
            let now = self.now_for(Some(&container));
            let l = labels(AlertName::QueueOffsetStale, &[("container", &container)]);
            let summary = format!(
                "Queue offset of {container} stuck at {value} for {}",
                human_duration(now - changed)
            );
            self.condition(
                AlertName::QueueOffsetStale,
                l,
                summary,
                When {
                    since: changed + stale_after,
                    for_ns: 0,
                    evidence: now,
                },
                now,
                out,
            );
        }
        if self.any_active(AlertName::QueueOffsetStale) {
            let moving: Vec<Arc<str>> = self
                .st
                .offsets
                .iter()
                .filter(|(c, (_, t))| in_scope(c) && !self.offset_stale(c, *t))
                .map(|(c, _)| c.clone())
                .collect();
            for c in moving {
                let now = self.now_for(Some(&c));
                self.resolve_named(AlertName::QueueOffsetStale, &c, now, out);
            }
        }
        // Runs that stopped completing epochs.
        let (factor, min) = (
            self.rules.training_stalled_factor,
            self.rules.training_stalled_min.0,
        );
        let stalled: Vec<(Arc<str>, i64, i64, Option<u32>)> = self
            .st
            .pace
            .iter()
            .filter(|(c, _)| in_scope(c))
            .filter_map(|(c, p)| {
                let limit = p.limit(factor, min)?;
                (self.now_for(Some(c)) - p.at > limit).then(|| (c.clone(), p.at, limit, p.epoch))
            })
            .collect();
        for (container, at, limit, epoch) in stalled {
            let now = self.now_for(Some(&container));
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
            self.condition(AlertName::TrainingStalled, l, summary, when, now, out);
        }
        // Event alerts that did not recur (resolved when the hour without another ended);
        // repeats of firing alerts.
        let ttl = self.rules.event_resolve_after.0;
        let repeat = self.rules.repeat_interval.0;
        let mut expired = Vec::new();
        let nows: Vec<(String, i64)> = self
            .st
            .active
            .iter()
            .filter_map(|(fp, a)| {
                let container = a.alert.labels.get("container").map(String::as_str);
                match container {
                    Some(c) if in_scope(c) => Some((fp.clone(), self.now_for(Some(c)))),
                    None if scope.is_none() => Some((fp.clone(), self.now_for(None))),
                    _ => None,
                }
            })
            .collect();
        for (fp, now) in nows {
            let Some(a) = self.st.active.get_mut(&fp) else {
                continue;
            };
            let event_alert =
                matches!(a.alert.alertname, "GpuOutOfMemory" | "CheckpointSaveFailed");
            if event_alert && now - a.last_seen > ttl {
                expired.push((a.alert.labels.clone(), a.last_seen.saturating_add(ttl)));
                continue;
            }
            if matches!(a.state, Phase::Firing) && a.notify && now - a.last_notified >= repeat {
                a.last_notified = now;
                out.push(Change::Repeat {
                    alert: a.alert.clone(),
                });
            }
        }
        for (l, at) in expired {
            self.resolve(&l, at, out);
        }
    }

    fn queue_running(&self, container: &str) -> bool {
        if let Some(f) = self.st.containers.get(container) {
            return f.running;
        }
        // Without knowledge of the container (e.g. in replay), assume it runs.
        let mut queues = self
            .st
            .containers
            .values()
            .filter(|f| f.role == "queue")
            .peekable();
        queues.peek().is_none() || queues.any(|f| f.running)
    }

    /// Whether `container`'s offset, unchanged since `changed`, counts as stale now.
    fn offset_stale(&self, container: &str, changed: i64) -> bool {
        self.now_for(Some(container)) - changed > self.rules.queue_offset_stale_after.0
            && self.queue_running(container)
    }

    fn on_signal(&mut self, ts: i64, s: &Signal, out: &mut Vec<Change>) {
        match s {
            Signal::Container {
                name,
                role,
                running,
            } => self.container_state(name, role, *running, ts),
            Signal::DockerReachable => {
                self.resolve(&labels(AlertName::DockerUnreachable, &[]), ts, out);
            }
            // Handled in `observe`, without moving any clock.
            Signal::LogEnded { .. } => {}
            Signal::StreamSilent { container, silent } => {
                let l = labels(AlertName::LogStreamSilent, &[("container", container)]);
                if *silent {
                    self.fire_now(
                        AlertName::LogStreamSilent,
                        l,
                        format!("The log stream of running container {container} went silent; re-attached"),
                        ts,
                        None,
                        out,
                    );
                } else {
                    self.resolve(&l, ts, out);
                }
            }
        }
        match s {
            Signal::Container { name, .. } => self.evaluate(Some(name), out),
            Signal::StreamSilent { container, .. } | Signal::LogEnded { container } => {
                self.evaluate(Some(container), out)
            }
            Signal::DockerReachable => self.evaluate(None, out),
        }
    }

    fn container_state(&mut self, name: &Arc<str>, role: &str, running: bool, ts: i64) {
        let f = self
            .st
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

    fn on_event(&mut self, e: &super::EventRow, out: &mut Vec<Change>) {
        let c: &str = &e.container;
        match e.kind {
            // The message a run dies with (`NaN persisted`) once it has ended is no news.
            "loss_non_finite" if self.st.run_ended.get(c).is_some_and(|t| e.ts <= *t) => {}
            "loss_non_finite" => {
                let ctx: Value = serde_json::from_str(&e.context).unwrap_or(Value::Null);
                let epoch = ctx.get("epoch").and_then(Value::as_u64);
                let summary = match epoch {
                    Some(ep) => format!("Training loss is NaN/inf in {c} at epoch {ep}"),
                    None => format!("Training loss is NaN/inf in {c}"),
                };
                let run = self.st.losses.get(c).and_then(|t| t.run.clone());
                self.fire_now(
                    AlertName::TrainingLossNonFinite,
                    labels(AlertName::TrainingLossNonFinite, &[("container", c)]),
                    summary,
                    e.ts,
                    run,
                    out,
                );
            }
            "gpu_oom" => self.fire_now(
                AlertName::GpuOutOfMemory,
                labels(AlertName::GpuOutOfMemory, &[("container", c)]),
                format!("GPU out of memory in {c}: {}", first_line(&e.message)),
                e.ts,
                None,
                out,
            ),
            "checkpoint_save_failed" => self.fire_now(
                AlertName::CheckpointSaveFailed,
                labels(AlertName::CheckpointSaveFailed, &[("container", c)]),
                format!("Checkpoint save failed in {c}: {}", first_line(&e.message)),
                e.ts,
                None,
                out,
            ),
            "training_container_died" => self.fire_now(
                AlertName::TrainingContainerDied,
                labels(AlertName::TrainingContainerDied, &[("container", c)]),
                first_line(&e.message).to_string(),
                e.ts,
                None,
                out,
            ),
            "checkpoint_saved" => {
                let l = labels(AlertName::CheckpointSaveFailed, &[("container", c)]);
                self.resolve(&l, e.ts, out);
            }
            "docker_unreachable" => self.fire_now(
                AlertName::DockerUnreachable,
                labels(AlertName::DockerUnreachable, &[]),
                first_line(&e.message).to_string(),
                e.ts,
                None,
                out,
            ),
            "container_started" | "container_died" | "container_oom_killed"
                if e.stream == "docker" =>
            {
                self.resolve(&labels(AlertName::DockerUnreachable, &[]), e.ts, out);
                let ctx: Value = serde_json::from_str(&e.context).unwrap_or(Value::Null);
                let role = ctx
                    .get("role")
                    .and_then(Value::as_str)
                    .unwrap_or("other")
                    .to_string();
                let running = e.kind == "container_started";
                if running {
                    self.resolve_named(AlertName::TrainingContainerDied, c, e.ts, out);
                }
                self.container_state(&e.container, &role, running, e.ts);
                self.evaluate(Some(&e.container), out);
            }
            _ => {}
        }
    }

    fn on_metric(&mut self, m: &MetricRow, out: &mut Vec<Change>) {
        match m.name {
            "gpu_temperature_c" => {
                let gpu = m.container.strip_prefix("gpu").unwrap_or(&m.container);
                let l = labels(AlertName::GpuTemperatureHigh, &[("gpu", gpu)]);
                if m.value > self.rules.gpu_temperature_c {
                    let summary = format!(
                        "GPU {gpu} at {} °C (limit {} °C)",
                        m.value, self.rules.gpu_temperature_c
                    );
                    let f = self.rules.gpu_temperature_for.0;
                    let when = When::sample(m.ts, f);
                    let now = self.now_for(Some(&m.container));
                    self.condition(AlertName::GpuTemperatureHigh, l, summary, when, now, out);
                } else {
                    self.resolve(&l, m.ts, out);
                }
            }
            "disk_usage_azaion_pct" => {
                let mount = self.mount.clone();
                for (name, limit) in [
                    (AlertName::DiskUsageCritical, self.rules.disk_critical_pct),
                    (AlertName::DiskUsageHigh, self.rules.disk_high_pct),
                ] {
                    let l = labels(name, &[("mount", &mount)]);
                    if m.value > limit {
                        let summary =
                            format!("Disk {mount} is {:.1} % full (limit {limit} %)", m.value);
                        let f = self.rules.disk_for.0;
                        let now = self.now_for(Some(&m.container));
                        self.condition(name, l, summary, When::sample(m.ts, f), now, out);
                    } else {
                        self.resolve(&l, m.ts, out);
                    }
                }
            }
            "queue_offset" => {
                let e = self
                    .st
                    .offsets
                    .entry(m.container.clone())
                    .or_insert((m.value, m.ts));
                if e.0 != m.value {
                    *e = (m.value, m.ts);
                    self.resolve_named(AlertName::QueueOffsetStale, &m.container, m.ts, out);
                }
            }
            _ => {}
        }
    }

    fn on_epoch(&mut self, key: &RunKey, e: &super::EpochRow, out: &mut Vec<Change>) {
        // Any row of a new epoch is progress (the training and validation rows of one epoch
        // count once).
        if let Some(p) = self.st.pace.get_mut(&key.container)
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
            self.resolve_named(AlertName::TrainingStalled, &key.container, e.ended_at, out);
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
        self.resolve_named(AlertName::GpuOutOfMemory, cs, e.ended_at, out);
        if !total.is_finite() {
            self.fire_now(
                AlertName::TrainingLossNonFinite,
                labels(AlertName::TrainingLossNonFinite, &[("container", cs)]),
                format!(
                    "Training loss is NaN/inf in {cs} at epoch {} (loss {total})",
                    e.epoch
                ),
                e.ended_at,
                Some(key.clone()),
                out,
            );
            return;
        }
        self.resolve_named(AlertName::TrainingLossNonFinite, cs, e.ended_at, out);
        let d = self.rules.diverging.clone();
        let track = self.st.losses.entry(c.clone()).or_default();
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
        let verdict = diverging(&after, &d);
        match verdict {
            Some(why) => self.fire_now(
                AlertName::TrainingLossDiverging,
                labels(AlertName::TrainingLossDiverging, &[("container", cs)]),
                format!(
                    "Training loss diverging in {cs} at epoch {}: {why}",
                    e.epoch
                ),
                e.ended_at,
                Some(key.clone()),
                out,
            ),
            None => self.resolve_named(AlertName::TrainingLossDiverging, cs, e.ended_at, out),
        }
    }

    fn on_run(&mut self, key: &RunKey, status: RunStatus, ts: i64, out: &mut Vec<Change>) {
        let c: &str = &key.container;
        if status == RunStatus::Running {
            self.st.run_ended.remove(c);
            if self.st.pace.get(c).is_none_or(|p| p.run != *key) {
                // A new run: the container that died is training again.
                self.st.pace.insert(
                    key.container.clone(),
                    Pace {
                        run: key.clone(),
                        epoch: None,
                        at: ts,
                        durations: Vec::new(),
                    },
                );
                self.resolve_named(AlertName::TrainingContainerDied, c, ts, out);
            }
        } else {
            self.st.run_ended.insert(key.container.clone(), ts);
            if self.st.pace.get(c).is_some_and(|p| p.run == *key) {
                self.st.pace.remove(c);
            }
            self.resolve_named(AlertName::TrainingStalled, c, ts, out);
        }
        for name in [
            AlertName::TrainingLossNonFinite,
            AlertName::TrainingLossDiverging,
        ] {
            if !self.any_active(name) {
                continue;
            }
            let l = labels(name, &[("container", c)]);
            let ended_here = status != RunStatus::Running;
            let other_run = self
                .st
                .active
                .get(&fingerprint(&l))
                .and_then(|a| a.run.as_ref())
                .is_some_and(|r| r != key);
            if ended_here || other_run {
                self.resolve(&l, ts, out);
            }
        }
        if let Some(t) = self.st.losses.get_mut(c)
            && t.run.as_ref() != Some(key)
        {
            t.run = Some(key.clone());
            t.epochs.clear();
        }
    }

    /// A condition that holds at `since`: pending until `for_ns` has passed, then firing.
    fn condition(
        &mut self,
        name: AlertName,
        labels: Labels,
        summary: String,
        when: When,
        now: i64,
        out: &mut Vec<Change>,
    ) {
        let When {
            since,
            for_ns,
            evidence,
        } = when;
        let fp = fingerprint(&labels);
        // An instance that fires again after it resolved (a queue that stopped and runs again
        // with its offset still stuck) is a new one, begun after the last one ended: it never
        // reopens or shares the stored row of the old one.
        let since = match self.st.resolved.get(&fp) {
            Some(&ended) if since <= ended && !self.st.active.contains_key(&fp) => ended + 1,
            _ => since,
        };
        let a = self.st.active.entry(fp.clone()).or_insert_with(|| Active {
            alert: Alert {
                fingerprint: fp,
                alertname: name.as_str(),
                severity: name.severity(),
                labels,
                summary: summary.clone(),
                started_at: since,
                resolved_at: None,
            },
            state: Phase::Pending { since },
            last_notified: now,
            notify: false,
            run: None,
            last_seen: since,
        });
        if let Phase::Pending { since } = a.state {
            a.alert.summary = summary;
            if now.max(since) - since >= for_ns {
                a.state = Phase::Firing;
                a.last_notified = now;
                // In `watch` the clock is the wall clock (ticks): an alert whose newest
                // evidence is old (found in a container's old logs) is recorded without
                // paging anyone; a state that holds now (a queue down for hours) pages.
                a.notify = self.live && now - evidence <= self.rules.notify_backlog.0;
                out.push(Change::Fired {
                    alert: a.alert.clone(),
                    notify: a.notify,
                });
            }
        }
    }

    /// An event-like condition that fires at once.
    fn fire_now(
        &mut self,
        name: AlertName,
        labels: Labels,
        summary: String,
        ts: i64,
        run: Option<RunKey>,
        out: &mut Vec<Change>,
    ) {
        let fp = fingerprint(&labels);
        let recurring = self.st.active.contains_key(&fp);
        let now = self.now_for(labels.get("container").map(String::as_str));
        self.condition(name, labels, summary, When::sample(ts, 0), now, out);
        if let Some(a) = self.st.active.get_mut(&fp) {
            a.last_seen = a.last_seen.max(ts);
            if run.is_some() && (!recurring || a.run.is_none()) {
                a.run = run;
            }
        }
    }

    /// Whether an alert of `name` is pending or firing (a cheap test before building labels).
    fn any_active(&self, name: AlertName) -> bool {
        self.st
            .active
            .values()
            .any(|a| a.alert.alertname == name.as_str())
    }

    /// Resolves `name` for `container`, if active.
    fn resolve_named(&mut self, name: AlertName, container: &str, at: i64, out: &mut Vec<Change>) {
        if self.any_active(name) {
            self.resolve(&labels(name, &[("container", container)]), at, out);
        }
    }

    /// Resolves the active instance of `labels` with evidence from `at`. Evidence older than
    /// the instance (a line whose time stepped back) is about an earlier one: it resolves
    /// nothing.
    fn resolve(&mut self, labels: &Labels, at: i64, out: &mut Vec<Change>) {
        let fp = fingerprint(labels);
        if self
            .st
            .active
            .get(&fp)
            .is_none_or(|a| at < a.alert.started_at)
        {
            return;
        }
        let Some(a) = self.st.active.remove(&fp) else {
            return;
        };
        if let Phase::Firing = a.state {
            let mut alert = a.alert;
            let at = at.max(alert.started_at);
            alert.resolved_at = Some(at);
            if self.st.resolved.len() >= RESOLVED_KEPT
                && !self.st.resolved.contains_key(&fp)
                && let Some(oldest) = self
                    .st
                    .resolved
                    .iter()
                    .min_by_key(|(_, t)| **t)
                    .map(|(k, _)| k.clone())
            {
                self.st.resolved.remove(&oldest);
            }
            self.st.resolved.insert(fp, at);
            out.push(Change::Resolved {
                alert,
                notify: a.notify,
            });
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

/// The labels of an alert: `alertname`, `severity`, and `extra`.
pub fn labels(name: AlertName, extra: &[(&str, &str)]) -> Labels {
    let mut l = Labels::new();
    l.insert("alertname".into(), name.as_str().into());
    l.insert("severity".into(), name.severity().as_str().into());
    for (k, v) in extra {
        l.insert((*k).into(), (*v).into());
    }
    l
}

fn first_line(s: &str) -> &str {
    let l = s.lines().next().unwrap_or("");
    match l.char_indices().nth(200) {
        Some((i, _)) => &l[..i],
        None => l,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::derive::{EpochRow, EventRow};
    use crate::event::Stream;
    use crate::parse::Level;

    const S: i64 = 1_000_000_000;
    const T0: i64 = 1_774_708_200 * S;

    fn metric(container: &str, name: &'static str, ts: i64, value: f64) -> Op {
        Op::metric(ts, container, name, value)
    }

    fn event(container: &str, kind: &'static str, ts: i64, context: &str) -> Op {
        Op::Event(EventRow {
            ts,
            container: Arc::from(container),
            stream: "stdout",
            seq: 0,
            key_ts: ts,
            level: Level::Error,
            kind,
            message: format!("{kind} happened"),
            context: context.into(),
        })
    }

    fn run_key(container: &str, ts: i64) -> RunKey {
        RunKey {
            container: Arc::from(container),
            stream: Stream::Stdout,
            ts,
            seq: 0,
        }
    }

    fn epoch(key: &RunKey, epoch: u32, ts: i64, loss: f64) -> Op {
        Op::Epoch(
            key.clone(),
            EpochRow {
                epoch,
                ended_at: ts,
                losses: Some(vec![("box_loss".into(), loss)]),
                ..Default::default()
            },
        )
    }

    fn feed(e: &mut Engine, ops: &[Op]) -> Vec<Change> {
        let mut out = Vec::new();
        for op in ops {
            e.observe(op, &mut out);
        }
        out
    }

    fn names(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Fired { alert, .. } => format!("fired {}", alert.alertname),
                Change::Resolved { alert, .. } => format!("resolved {}", alert.alertname),
                Change::Repeat { alert } => format!("repeat {}", alert.alertname),
            })
            .collect()
    }

    #[test]
    fn gpu_temperature_fires_above_90_and_resolves() {
        let mut e = Engine::new(Rules::default(), false, "/azaion");
        assert!(feed(&mut e, &[metric("gpu0", "gpu_temperature_c", T0, 90.0)]).is_empty());
        let c = feed(&mut e, &[metric("gpu0", "gpu_temperature_c", T0 + S, 91.0)]);
        assert_eq!(names(&c), ["fired GpuTemperatureHigh"]);
        let Change::Fired { alert, .. } = &c[0] else {
            unreachable!()
        };
        assert_eq!(alert.labels["gpu"], "0");
        assert_eq!(alert.severity, Severity::Critical);
        // Still hot: no second alert for the same fingerprint.
        assert!(
            feed(
                &mut e,
                &[metric("gpu0", "gpu_temperature_c", T0 + 2 * S, 95.0)]
            )
            .is_empty()
        );
        // Another GPU is another alert.
        let c = feed(
            &mut e,
            &[metric("gpu1", "gpu_temperature_c", T0 + 2 * S, 92.0)],
        );
        assert_eq!(names(&c), ["fired GpuTemperatureHigh"]);
        let c = feed(
            &mut e,
            &[metric("gpu0", "gpu_temperature_c", T0 + 3 * S, 70.0)],
        );
        assert_eq!(names(&c), ["resolved GpuTemperatureHigh"]);
        let Change::Resolved { alert, .. } = &c[0] else {
            unreachable!()
        };
        assert_eq!(alert.resolved_at, Some(T0 + 3 * S));
        assert_eq!(alert.started_at, T0 + S);
        assert_eq!(e.firing().len(), 1);
    }

    #[test]
    fn a_for_duration_keeps_the_alert_pending() {
        let rules = Rules {
            gpu_temperature_for: Age::secs(60),
            ..Rules::default()
        };
        let mut e = Engine::new(rules, false, "/azaion");
        assert!(feed(&mut e, &[metric("gpu0", "gpu_temperature_c", T0, 95.0)]).is_empty());
        assert!(
            feed(
                &mut e,
                &[metric("gpu0", "gpu_temperature_c", T0 + 59 * S, 95.0)]
            )
            .is_empty()
        );
        // A dip while pending forgets it without a notification.
        assert!(
            feed(
                &mut e,
                &[metric("gpu0", "gpu_temperature_c", T0 + 60 * S, 80.0)]
            )
            .is_empty()
        );
        assert!(
            feed(
                &mut e,
                &[metric("gpu0", "gpu_temperature_c", T0 + 61 * S, 95.0)]
            )
            .is_empty()
        );
        let c = feed(
            &mut e,
            &[metric("gpu0", "gpu_temperature_c", T0 + 121 * S, 95.0)],
        );
        assert_eq!(names(&c), ["fired GpuTemperatureHigh"]);
    }

    #[test]
    fn disk_levels_fire_separately() {
        let mut e = Engine::new(Rules::default(), false, "/azaion");
        let c = feed(&mut e, &[metric("host", "disk_usage_azaion_pct", T0, 85.0)]);
        assert_eq!(names(&c), ["fired DiskUsageHigh"]);
        let Change::Fired { alert, .. } = &c[0] else {
            unreachable!()
        };
        assert_eq!(alert.labels["mount"], "/azaion");
        assert_eq!(alert.severity, Severity::Medium);
        let c = feed(
            &mut e,
            &[metric("host", "disk_usage_azaion_pct", T0 + S, 96.0)],
        );
        assert_eq!(names(&c), ["fired DiskUsageCritical"]);
        let c = feed(
            &mut e,
            &[metric("host", "disk_usage_azaion_pct", T0 + 2 * S, 50.0)],
        );
        assert_eq!(
            names(&c),
            ["resolved DiskUsageCritical", "resolved DiskUsageHigh"]
        );
    }

    fn queue(running: bool, ts: i64) -> Op {
        Op::Signal(
            ts,
            Signal::Container {
                name: Arc::from("annotation-queue"),
                role: "queue".into(),
                running,
            },
        )
    }

    #[test]
    fn evidence_older_than_an_alert_does_not_resolve_it() {
        let mut e = Engine::new(Rules::default(), false, "/azaion");
        let t = |s: i64, v: f64| metric("gpu0", "gpu_temperature_c", T0 + s * S, v);
        assert_eq!(
            names(&feed(&mut e, &[t(10, 95.0)])),
            ["fired GpuTemperatureHigh"]
        );
        // A sample stamped before the alert began (its line's time stepped back).
        assert!(feed(&mut e, &[t(5, 60.0)]).is_empty());
        let c = feed(&mut e, &[t(11, 60.0)]);
        assert!(
            matches!(&c[..], [Change::Resolved { alert, .. }] if alert.resolved_at == Some(T0 + 11 * S)),
            "{c:?}"
        );
    }

    #[test]
    fn an_alert_that_fires_again_after_resolving_is_a_new_one() {
        // The queue stops (the stuck offset is not its fault), runs again with the offset
        // still stuck: a second QueueOffsetStale, begun after the first ended.
        let mut e = Engine::new(Rules::default(), false, "/azaion");
        let off = |ts, v| metric("annotation-queue", "queue_offset", ts, v);
        feed(&mut e, &[queue(true, T0), off(T0, 100.0)]);
        let c = feed(&mut e, &[off(T0 + 3601 * S, 100.0)]);
        assert_eq!(names(&c), ["fired QueueOffsetStale"]);
        let first = match &c[0] {
            Change::Fired { alert, .. } => alert.started_at,
            _ => unreachable!(),
        };
        let c = feed(
            &mut e,
            &[queue(false, T0 + 3700 * S), Op::Tick(T0 + 3701 * S)],
        );
        assert_eq!(names(&c), ["resolved QueueOffsetStale"]);
        let Change::Resolved { alert, .. } = &c[0] else {
            unreachable!()
        };
        assert_eq!(
            (alert.started_at, alert.resolved_at),
            (first, Some(T0 + 3700 * S))
        );
        let c = feed(
            &mut e,
            &[queue(true, T0 + 3702 * S), Op::Tick(T0 + 3703 * S)],
        );
        assert_eq!(names(&c), ["fired QueueOffsetStale"]);
        let Change::Fired { alert, .. } = &c[0] else {
            unreachable!()
        };
        assert_eq!(
            alert.started_at,
            T0 + 3700 * S + 1,
            "just after the first ended"
        );
    }

    fn run_op(key: &RunKey, status: RunStatus, ts: i64) -> Op {
        Op::Run(super::super::RunRow {
            key: key.clone(),
            started_at: key.ts,
            ended_at: (status != RunStatus::Running).then_some(ts),
            status,
            epochs_total: Some(10),
            best_epoch_reported: None,
            save_dir: None,
            model: None,
            loss_names: vec![],
            params: None,
            ultralytics_version: None,
        })
    }

    #[test]
    fn a_run_that_stops_completing_epochs_is_stalled() {
        let mut e = Engine::new(Rules::default(), false, "/azaion");
        let k = run_key("yolo", T0);
        let min = 60 * S;
        // Epochs every 10 minutes: the limit is max(3 x 10 min, 15 min) = 30 min.
        let mut ops = vec![run_op(&k, RunStatus::Running, T0)];
        for ep in 1..=3 {
            ops.push(epoch(&k, ep, T0 + ep as i64 * 10 * min, 1.0));
        }
        assert!(feed(&mut e, &ops).is_empty());
        let line = |ts| event("yolo", "log", ts, "{}");
        assert!(feed(&mut e, &[line(T0 + 60 * min)]).is_empty());
        let c = feed(&mut e, &[line(T0 + 60 * min + S)]);
        assert_eq!(names(&c), ["fired TrainingStalled"]);
        let Change::Fired { alert, .. } = &c[0] else {
            unreachable!()
        };
        assert_eq!(alert.started_at, T0 + 60 * min, "30 min after epoch 3");
        assert!(alert.summary.contains("since epoch 3"), "{}", alert.summary);
        let c = feed(&mut e, &[epoch(&k, 4, T0 + 70 * min, 1.0)]);
        assert_eq!(names(&c), ["resolved TrainingStalled"]);
        // The run ends: nothing more to wait for, however long the log goes on.
        feed(&mut e, &[run_op(&k, RunStatus::Completed, T0 + 71 * min)]);
        assert!(feed(&mut e, &[line(T0 + 600 * min)]).is_empty());
    }

    #[test]
    fn a_replayed_archive_that_ends_resolves_what_needs_it_running() {
        let mut e = Engine::new(Rules::default(), false, "/azaion");
        let off = |ts, v| metric("q", "queue_offset", ts, v);
        feed(&mut e, &[off(T0, 5.0)]);
        let c = feed(&mut e, &[off(T0 + 3601 * S, 5.0)]);
        assert_eq!(names(&c), ["fired QueueOffsetStale"]);
        let c = feed(
            &mut e,
            &[Op::Signal(
                i64::MIN,
                Signal::LogEnded {
                    container: "q".into(),
                },
            )],
        );
        assert!(
            matches!(&c[..], [Change::Resolved { alert, .. }] if alert.resolved_at == Some(T0 + 3601 * S)),
            "{c:?}"
        );
        assert!(e.firing().is_empty());
    }

    #[test]
    fn a_training_container_that_dies_fires_until_it_trains_again() {
        let mut e = Engine::new(Rules::default(), false, "/azaion");
        let k = run_key("yolo", T0);
        feed(&mut e, &[run_op(&k, RunStatus::Running, T0)]);
        let c = feed(
            &mut e,
            &[
                run_op(&k, RunStatus::Failed, T0 + 60 * S),
                event("yolo", "training_container_died", T0 + 60 * S, "{}"),
            ],
        );
        assert_eq!(names(&c), ["fired TrainingContainerDied"]);
        let k2 = run_key("yolo", T0 + 120 * S);
        let c = feed(&mut e, &[run_op(&k2, RunStatus::Running, T0 + 120 * S)]);
        assert_eq!(names(&c), ["resolved TrainingContainerDied"]);
    }

    #[test]
    fn queue_container_down_for_five_minutes() {
        let mut e = Engine::new(Rules::default(), false, "/azaion");
        assert!(feed(&mut e, &[queue(true, T0)]).is_empty());
        let died = event(
            "annotation-queue",
            "container_died",
            T0 + S,
            r#"{"role":"queue"}"#,
        );
        let Op::Event(mut d) = died else {
            unreachable!()
        };
        d.stream = "docker";
        assert!(feed(&mut e, &[Op::Event(d.clone()), Op::Tick(T0 + 300 * S)]).is_empty());
        let c = feed(&mut e, &[Op::Tick(T0 + 301 * S)]);
        assert_eq!(names(&c), ["fired QueueContainerDown"]);
        let Change::Fired { alert, .. } = &c[0] else {
            unreachable!()
        };
        assert_eq!(alert.started_at, T0 + S, "started when it died");
        assert_eq!(alert.labels["container"], "annotation-queue");
        let c = feed(&mut e, &[queue(true, T0 + 400 * S)]);
        assert_eq!(names(&c), ["resolved QueueContainerDown"]);
        // A training container that stops is not the queue.
        d.container = Arc::from("yolo");
        d.context = r#"{"role":"training"}"#.into();
        assert!(feed(&mut e, &[Op::Event(d), Op::Tick(T0 + 2000 * S)]).is_empty());
    }

    #[test]
    fn a_queue_found_down_for_hours_at_start_pages_at_once() {
        let mut e = Engine::new(Rules::default(), true, "/azaion");
        feed(&mut e, &[Op::Tick(T0 + 3 * 3600 * S)]);
        // Discovery: stopped since T0 (its FinishedAt).
        let c = feed(&mut e, &[queue(false, T0)]);
        assert!(
            matches!(&c[..], [Change::Fired { alert, notify: true }] if alert.started_at == T0),
            "{c:?}"
        );
    }

    #[test]
    fn queue_offset_stale_only_while_the_queue_runs() {
        let mut e = Engine::new(Rules::default(), false, "/azaion");
        let off = |ts, v| metric("annotation-queue", "queue_offset", ts, v);
        assert!(feed(&mut e, &[queue(true, T0), off(T0, 100.0)]).is_empty());
        assert!(
            feed(
                &mut e,
                &[off(T0 + 1800 * S, 100.0), Op::Tick(T0 + 3600 * S)]
            )
            .is_empty()
        );
        let c = feed(&mut e, &[off(T0 + 3601 * S, 100.0)]);
        assert_eq!(names(&c), ["fired QueueOffsetStale"]);
        let c = feed(&mut e, &[off(T0 + 3700 * S, 101.0)]);
        assert_eq!(names(&c), ["resolved QueueOffsetStale"]);
        // Stopped queue: its offset cannot move; QueueContainerDown tells that story.
        let c = feed(
            &mut e,
            &[queue(false, T0 + 3800 * S), Op::Tick(T0 + 9000 * S)],
        );
        assert_eq!(names(&c), ["fired QueueContainerDown"]);
    }

    #[test]
    fn non_finite_loss_fires_at_once_and_a_finite_epoch_resolves_it() {
        let mut e = Engine::new(Rules::default(), false, "/azaion");
        let k = run_key("yolo", T0);
        let c = feed(
            &mut e,
            &[
                epoch(&k, 1, T0 + S, 2.0),
                event("yolo", "loss_non_finite", T0 + 2 * S, r#"{"epoch":2}"#),
                event("yolo", "loss_non_finite", T0 + 3 * S, r#"{"epoch":2}"#),
            ],
        );
        assert_eq!(names(&c), ["fired TrainingLossNonFinite"]);
        let Change::Fired { alert, .. } = &c[0] else {
            unreachable!()
        };
        assert_eq!(alert.summary, "Training loss is NaN/inf in yolo at epoch 2");
        assert_eq!(alert.started_at, T0 + 2 * S);
        let c = feed(&mut e, &[epoch(&k, 2, T0 + 4 * S, f64::NAN)]);
        assert!(c.is_empty(), "{c:?}");
        let c = feed(&mut e, &[epoch(&k, 3, T0 + 5 * S, 1.9)]);
        assert_eq!(names(&c), ["resolved TrainingLossNonFinite"]);
    }

    #[test]
    fn oom_and_checkpoint_alerts_resolve_on_recovery_or_after_an_hour() {
        let mut e = Engine::new(Rules::default(), false, "/azaion");
        let k = run_key("yolo", T0);
        let c = feed(
            &mut e,
            &[
                event("yolo", "gpu_oom", T0, "{}"),
                event("yolo", "checkpoint_save_failed", T0, "{}"),
            ],
        );
        assert_eq!(
            names(&c),
            ["fired GpuOutOfMemory", "fired CheckpointSaveFailed"]
        );
        let c = feed(&mut e, &[epoch(&k, 1, T0 + 60 * S, 3.0)]);
        assert_eq!(names(&c), ["resolved GpuOutOfMemory"]);
        assert!(feed(&mut e, &[Op::Tick(T0 + 3600 * S)]).is_empty());
        let c = feed(&mut e, &[Op::Tick(T0 + 3601 * S)]);
        assert_eq!(names(&c), ["resolved CheckpointSaveFailed"]);
    }

    #[test]
    fn divergence_definition() {
        let d = Diverging::default();
        // Above 2x the running minimum for 3 epochs.
        assert!(diverging(&[1.0, 0.8, 1.7, 1.8], &d).is_none());
        let why = diverging(&[1.0, 0.8, 1.7, 1.8, 1.65], &d).unwrap();
        assert!(why.contains("above 2x"), "{why}");
        // Rising five epochs in a row.
        assert!(diverging(&[1.0, 1.01, 1.02, 1.03, 1.04], &d).is_none());
        let why = diverging(&[1.0, 1.01, 1.02, 1.03, 1.04, 1.05], &d).unwrap();
        assert!(why.contains("rose 5"), "{why}");
        // A dip ends the streak.
        assert!(diverging(&[1.0, 1.01, 1.02, 1.0, 1.03, 1.04, 1.05], &d).is_none());
    }

    /// The training losses of the real captured runs (fixtures/ultralytics/*.results.csv).
    fn real_curve(name: &str) -> Vec<(u32, f64)> {
        let path = format!(
            "{}/fixtures/ultralytics/{name}.results.csv",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut r = csv::Reader::from_path(path).unwrap();
        let h = r.headers().unwrap().clone();
        let col = |n: &str| h.iter().position(|c| c.trim() == n).unwrap();
        let (ep, b, c, d) = (
            col("epoch"),
            col("train/box_loss"),
            col("train/cls_loss"),
            col("train/dfl_loss"),
        );
        r.records()
            .map(|rec| {
                let rec = rec.unwrap();
                let f = |i: usize| rec[i].trim().parse::<f64>().unwrap();
                (rec[ep].trim().parse().unwrap(), f(b) + f(c) + f(d))
            })
            .collect()
    }

    #[test]
    fn real_runs_do_not_count_as_diverging() {
        for name in ["normal", "earlystop", "interrupted"] {
            let mut e = Engine::new(Rules::default(), false, "/azaion");
            let k = run_key(name, T0);
            let ops: Vec<Op> = real_curve(name)
                .into_iter()
                .map(|(ep, loss)| epoch(&k, ep, T0 + ep as i64 * 60 * S, loss))
                .collect();
            assert!(ops.len() >= 5);
            assert_eq!(feed(&mut e, &ops), vec![], "{name}");
        }
    }

    #[test]
    fn a_diverging_run_fires_and_a_new_run_resolves() {
        let mut e = Engine::new(Rules::default(), false, "/azaion");
        let k = run_key("yolo", T0);
        // The normal run's curve, then its loss blowing up after epoch 10.
        let mut curve = real_curve("normal");
        curve.extend([(11, 18.0), (12, 22.0), (13, 30.0)]);
        let ops: Vec<Op> = curve
            .into_iter()
            .map(|(ep, loss)| epoch(&k, ep, T0 + ep as i64 * 60 * S, loss))
            .collect();
        let c = feed(&mut e, &ops);
        assert_eq!(names(&c), ["fired TrainingLossDiverging"]);
        let Change::Fired { alert, .. } = &c[0] else {
            unreachable!()
        };
        assert_eq!(alert.started_at, T0 + 13 * 60 * S, "fires at epoch 13");
        assert!(alert.summary.contains("epoch 13"), "{}", alert.summary);
        let c = feed(
            &mut e,
            &[Op::Run(crate::derive::RunRow {
                key: run_key("yolo", T0 + 3600 * S),
                started_at: T0 + 3600 * S,
                ended_at: None,
                status: RunStatus::Running,
                epochs_total: Some(10),
                best_epoch_reported: None,
                save_dir: None,
                model: None,
                loss_names: vec![],
                params: None,
                ultralytics_version: None,
            })],
        );
        assert_eq!(names(&c), ["resolved TrainingLossDiverging"]);
    }

    #[test]
    fn live_alerts_repeat_and_old_ones_are_not_notified() {
        let mut e = Engine::new(Rules::default(), true, "/azaion");
        feed(&mut e, &[Op::Tick(T0)]);
        let c = feed(&mut e, &[metric("gpu0", "gpu_temperature_c", T0, 95.0)]);
        assert!(matches!(&c[0], Change::Fired { notify: true, .. }));
        assert!(feed(&mut e, &[Op::Tick(T0 + 4 * 3600 * S - S)]).is_empty());
        let c = feed(&mut e, &[Op::Tick(T0 + 4 * 3600 * S)]);
        assert_eq!(names(&c), ["repeat GpuTemperatureHigh"]);
        // An OOM found in a container's old logs is recorded, not paged.
        let c = feed(
            &mut e,
            &[
                event("yolo", "gpu_oom", T0 - 2 * 3600 * S, "{}"),
                Op::Tick(T0 + 4 * 3600 * S + 5 * S),
            ],
        );
        assert!(
            matches!(
                &c[..],
                [
                    Change::Fired { notify: false, .. },
                    Change::Resolved { notify: false, .. }
                ]
            ),
            "{c:?}"
        );
    }

    #[test]
    fn restored_alerts_are_neither_fired_again_nor_forgotten() {
        let mut e = Engine::new(Rules::default(), true, "/azaion");
        let l = labels(AlertName::GpuTemperatureHigh, &[("gpu", "0")]);
        e.restore(vec![Loaded {
            alert: Alert {
                fingerprint: fingerprint(&l),
                alertname: "GpuTemperatureHigh",
                severity: Severity::Critical,
                labels: l,
                summary: "GPU 0 at 95 °C".into(),
                started_at: T0,
                resolved_at: None,
            },
            last_notified: Some(T0),
            live: true,
        }]);
        feed(&mut e, &[Op::Tick(T0 + 60 * S)]);
        assert!(
            feed(
                &mut e,
                &[metric("gpu0", "gpu_temperature_c", T0 + 61 * S, 96.0)]
            )
            .is_empty()
        );
        let c = feed(
            &mut e,
            &[metric("gpu0", "gpu_temperature_c", T0 + 62 * S, 60.0)],
        );
        assert!(
            matches!(&c[..], [Change::Resolved { alert, notify: true }] if alert.started_at == T0),
            "{c:?}"
        );
    }

    #[test]
    fn store_health_fires_and_resolves() {
        let mut e = Engine::new(Rules::default(), true, "/azaion");
        let mut out = Vec::new();
        e.store_health(T0, Some("disk I/O error"), &mut out);
        e.store_health(T0 + S, Some("disk I/O error"), &mut out);
        e.store_health(T0 + 2 * S, None, &mut out);
        assert_eq!(
            names(&out),
            ["fired StoreNotWritable", "resolved StoreNotWritable"]
        );
    }

    #[test]
    fn fingerprints_depend_on_labels_only() {
        let a = labels(AlertName::DiskUsageHigh, &[("mount", "/azaion")]);
        let b = labels(AlertName::DiskUsageHigh, &[("mount", "/data")]);
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_eq!(fingerprint(&a).len(), 16);
    }
}
