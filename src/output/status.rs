//! The status document: what the person on call wants to know at a glance, read from the
//! store with indexed queries only. `watch` rewrites it atomically as the status file (write
//! to a temporary file beside it, fsync, rename) so a cron job never sees half a file;
//! `trainwatch health --format json` prints the same document; `trainwatch status` and the
//! HTML page render it.

use crate::event::metric;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::store::alerts::{self as store_alerts, AlertRow};
use crate::store::queries;
use crate::time::{Age, format_ns, human_duration, parse_rfc3339};

/// `[status]` in the config.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// The status file `watch` rewrites (default: `trainwatch-status.json` beside the
    /// database); `""` turns it off.
    pub file: Option<PathBuf>,
    /// The HTML status page `watch` rewrites (default: `trainwatch-status.html` beside the
    /// database); `""` turns it off.
    pub html: Option<PathBuf>,
    /// How often both are rewritten.
    pub interval: Age,
    /// Data older than this makes `health` critical: the ingestor is not running.
    pub max_age: Age,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            file: None,
            html: None,
            interval: Age::secs(15),
            max_age: Age::secs(600),
        }
    }
}

fn beside(configured: &Option<PathBuf>, db: &Path, name: &str) -> Option<PathBuf> {
    match configured {
        Some(p) if p.as_os_str().is_empty() => None,
        Some(p) => Some(p.clone()),
        None => Some(db.with_file_name(name)),
    }
}

impl StatusConfig {
    /// The status file for the database at `db`, or `None` when turned off.
    pub fn path(&self, db: &Path) -> Option<PathBuf> {
        beside(&self.file, db, "trainwatch-status.json")
    }

    /// The HTML page for the database at `db`, or `None` when turned off.
    pub fn html_path(&self, db: &Path) -> Option<PathBuf> {
        beside(&self.html, db, "trainwatch-status.html")
    }
}

/// The latest value of one metric.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Gauge {
    pub container: String,
    pub name: String,
    pub value: f64,
    pub ts: String,
}

/// The current (latest) training run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Training {
    pub run_id: i64,
    pub container: String,
    pub status: crate::derive::RunStatus,
    pub epoch: i64,
    pub epochs_total: Option<i64>,
    pub started_at: String,
    pub last_epoch_at: Option<String>,
    /// Median duration of the last (up to 5) epochs.
    pub epoch_seconds: Option<f64>,
    /// Time left for the whole run at that pace (while it runs), counted down from the last
    /// epoch's end.
    pub eta_seconds: Option<f64>,
    /// How long ago the last epoch ended.
    pub last_epoch_age_seconds: Option<f64>,
    /// The run is running but has not completed an epoch for max(3x the epoch time, 15 min)
    /// (the `TrainingStalled` rule): the ETA means nothing.
    pub eta_stale: bool,
    /// Loss columns of the last epoch by name (`"nan"` when not finite).
    pub losses: serde_json::Value,
    pub loss: Option<f64>,
    pub map50: Option<f64>,
    pub map50_95: Option<f64>,
    /// The last epoch's metrics beyond the box four (`epochs.metrics`): a segmentation or pose
    /// run's second group, a classification run's accuracies.
    pub metrics: serde_json::Value,
    pub best_epoch: Option<i64>,
    pub best_map50_95: Option<f64>,
    pub save_dir: Option<String>,
    /// Why it failed or was interrupted (`training_runs.failure`).
    pub failure: Option<String>,
    /// Why its run folder cannot be read (while none of its results.csv was).
    pub folder_problem: Option<String>,
}

impl Training {
    /// The last epoch's metrics beyond the box four, for people: `mask mAP50 0.071
    /// mAP50-95 0.023`, `top-1 0.688  top-5 1`.
    pub fn metrics_summary(&self) -> Option<String> {
        let serde_json::Value::Object(groups) = &self.metrics else {
            return None;
        };
        let num = |g: &serde_json::Value, k: &str| match g.get(k) {
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(serde_json::Value::String(s)) => s.clone(),
            _ => "–".into(),
        };
        let parts: Vec<String> = groups
            .iter()
            .map(|(name, g)| match name.as_str() {
                "classify" => format!("top-1 {}  top-5 {}", num(g, "top1_acc"), num(g, "top5_acc")),
                _ => format!(
                    "{name} mAP50 {}  mAP50-95 {}",
                    num(g, "map50"),
                    num(g, "map50_95")
                ),
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join("  "))
    }
}

/// One annotation queue's counters.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Queue {
    pub container: String,
    pub processed: Option<f64>,
    pub failed: Option<f64>,
    pub offset: Option<f64>,
    /// When the offset last changed (the first sample with its current value).
    pub offset_changed_at: Option<String>,
    pub offset_age_seconds: Option<f64>,
    /// Its container is followed and not running.
    pub down: bool,
}

/// One GPU.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Gpu {
    pub gpu: String,
    pub temperature_c: Option<f64>,
    pub utilization_pct: Option<f64>,
    pub memory_used_mb: Option<f64>,
    pub memory_total_mb: Option<f64>,
}

/// One followed container's latest Docker stats.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContainerStats {
    pub container: String,
    /// `training`, `queue`, ... (`null` when live follow has not recorded it).
    pub role: Option<String>,
    pub cpu_pct: Option<f64>,
    pub memory_used_bytes: Option<f64>,
    pub memory_limit_bytes: Option<f64>,
    pub network_rx_bytes: Option<f64>,
    pub network_tx_bytes: Option<f64>,
    pub block_read_bytes: Option<f64>,
    pub block_write_bytes: Option<f64>,
    pub pids: Option<f64>,
    /// When the newest of these was sampled.
    pub sampled_at: String,
}

/// The data root's disk.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Disk {
    pub used_pct: Option<f64>,
    pub used_gb: Option<f64>,
    pub total_gb: Option<f64>,
    pub datasets_gb: Option<f64>,
    pub models_gb: Option<f64>,
}

/// The last checkpoint event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Checkpoint {
    pub ts: String,
    pub container: String,
    pub kind: String,
    pub message: String,
}

impl Checkpoint {
    /// `saved`, or `save FAILED`.
    pub fn outcome(&self) -> &'static str {
        if self.kind == "checkpoint_save_failed" {
            "save FAILED"
        } else {
            "saved"
        }
    }
}

/// The verdict for cron: 0 ok, 1 warning, 2 critical.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Health {
    pub code: u8,
    pub level: &'static str,
    /// The one line a person reads.
    pub line: String,
    /// Now minus the newest of the heartbeat and the newest stored record's log time.
    pub data_age_seconds: Option<f64>,
}

/// How many of the followed containers the document lists.
pub const FOLLOWED_LISTED: usize = 1000;

/// The secrets redacted from one container's logs since it was first read.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Redactions {
    pub container: String,
    /// Counts by kind (`token`, `password`, `key`, `image_payload`).
    pub kinds: Vec<(String, u64)>,
}

impl Redactions {
    /// `3 token, 1 password`.
    pub fn text(&self) -> String {
        self.kinds
            .iter()
            .map(|(k, n)| format!("{n} {}", k.replace('_', " ")))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The redaction counters among the gauges, by container.
fn redactions(all: &[Gauge]) -> Vec<Redactions> {
    let mut out: Vec<Redactions> = Vec::new();
    for g in all {
        let Some(kind) = metric::redaction_kind(&g.name) else {
            continue;
        };
        let n = (kind.to_string(), g.value.max(0.0) as u64);
        match out.iter_mut().find(|r| r.container == g.container) {
            Some(r) => r.kinds.push(n),
            None => out.push(Redactions {
                container: g.container.clone(),
                kinds: vec![n],
            }),
        }
    }
    out.sort_by(|a, b| a.container.cmp(&b.container));
    // Kinds in the order of the counters (token, password, key, image payload).
    let rank = |k: &str| {
        metric::REDACTIONS
            .iter()
            .position(|m| metric::redaction_kind(m) == Some(k))
    };
    for r in &mut out {
        r.kinds.sort_by_key(|(k, _)| rank(k));
    }
    out
}

/// The status document.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub generated_at: String,
    pub health: Health,
    /// The running ingestor's last heartbeat.
    pub heartbeat_at: Option<String>,
    /// The log time of the newest stored event.
    pub newest_record_at: Option<String>,
    pub training: Option<Training>,
    pub queues: Vec<Queue>,
    pub gpus: Vec<Gpu>,
    /// Docker stats of the containers sampled within `max_age`, by role then name.
    pub containers: Vec<ContainerStats>,
    pub disk: Option<Disk>,
    pub last_checkpoint: Option<Checkpoint>,
    /// The followed containers: role, state (running, exited 137, OOM-killed), newest line;
    /// the first [`FOLLOWED_LISTED`] by role and name.
    pub followed: Vec<crate::store::queries::FollowedContainer>,
    /// How many containers are followed, and how many of them are not running (all of them,
    /// not only those listed).
    pub followed_total: usize,
    pub followed_down: usize,
    /// Secrets redacted from each container's logs, by kind (`SecretsInLogs`).
    pub redactions: Vec<Redactions>,
    pub alerts_firing: Vec<AlertRow>,
    pub alerts_resolved_recently: Vec<AlertRow>,
    pub gauges: Vec<Gauge>,
}

fn gauges(conn: &Connection) -> Result<Vec<Gauge>, StoreError> {
    let mut stmt = conn
        .prepare_cached(queries::STATUS_GAUGES)
        .map_err(StoreError::sql("read gauges"))?;
    stmt.query_map([], |r| {
        Ok(Gauge {
            container: r.get(0)?,
            name: r.get(1)?,
            value: r.get(2)?,
            ts: r.get(3)?,
        })
    })
    .and_then(|it| it.collect())
    .map_err(StoreError::sql("read gauges"))
}

/// The value of one gauge; `all` is sorted by (name, container), as [`gauges`] reads it
/// (SQLite's binary collation is byte order, as `str`'s), so this is a binary search: the
/// status of thousands of containers stays O(n log n).
fn gauge(all: &[Gauge], container: &str, name: &str) -> Option<f64> {
    all.binary_search_by(|g| (g.name.as_str(), g.container.as_str()).cmp(&(name, container)))
        .ok()
        .map(|i| all[i].value)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// The latest run (by start), or the one with `run_id`.
#[expect(
    clippy::too_many_lines,
    reason = "the training section's queries and fields, in the document's order"
)]
pub fn training(
    conn: &Connection,
    run_id: Option<i64>,
    now: i64,
) -> Result<Option<Training>, StoreError> {
    let q = StoreError::sql("read the current run");
    let row = conn
        .query_row(queries::STATUS_RUN, [run_id], |r| {
            Ok(Training {
                run_id: r.get(0)?,
                container: r.get(1)?,
                status: r.get(2)?,
                epoch: r.get(3)?,
                epochs_total: r.get(4)?,
                started_at: r.get(5)?,
                best_epoch: r.get(6)?,
                best_map50_95: r.get(7)?,
                save_dir: r.get(8)?,
                failure: r.get(9)?,
                folder_problem: None,
                last_epoch_at: None,
                epoch_seconds: None,
                eta_seconds: None,
                last_epoch_age_seconds: None,
                eta_stale: false,
                losses: serde_json::Value::Null,
                loss: None,
                map50: None,
                map50_95: None,
                metrics: serde_json::Value::Null,
            })
        })
        .optional()
        .map_err(q)?;
    let Some(mut t) = row else { return Ok(None) };
    t.folder_problem = conn
        .query_row(queries::RUN_FOLDER_PROBLEM, params![t.run_id], |r| r.get(0))
        .optional()
        .map_err(StoreError::sql("read the run folder's state"))?;
    // The last six epochs: the last one's values, and five durations.
    let mut stmt = conn
        .prepare_cached(queries::STATUS_LAST_EPOCHS)
        .map_err(StoreError::sql("read the last epochs"))?;
    type Row = (
        i64,
        String,
        Option<String>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<String>,
    );
    let last: Vec<Row> = stmt
        .query_map([t.run_id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .and_then(|it| it.collect())
        .map_err(StoreError::sql("read the last epochs"))?;
    if let Some((_, ended, losses, loss, m50, m5095, metrics)) = last.first() {
        let json = |v: &Option<String>| {
            v.as_deref()
                .and_then(|l| serde_json::from_str(l).ok())
                .unwrap_or(serde_json::Value::Null)
        };
        t.last_epoch_at = Some(ended.clone());
        t.losses = json(losses);
        t.loss = *loss;
        t.map50 = *m50;
        t.map50_95 = *m5095;
        t.metrics = json(metrics);
    }
    let mut times: Vec<i64> = last
        .iter()
        .filter_map(|(_, e, ..)| parse_rfc3339(e))
        .collect();
    if times.len() == 1
        && let Some(s) = parse_rfc3339(&t.started_at)
    {
        times.push(s);
    }
    let durations: Vec<f64> = times
        .windows(2)
        .map(|w| (w[0] - w[1]) as f64 / 1e9)
        .filter(|d| *d > 0.0)
        .collect();
    t.epoch_seconds = median(durations);
    if t.status.is_running()
        && let (Some(total), Some(per)) = (t.epochs_total, t.epoch_seconds)
    {
        let left = (total - t.epoch).max(0) as f64 * per;
        // Time already spent in the epoch under way counts against it.
        let since_last = t
            .last_epoch_at
            .as_deref()
            .and_then(parse_rfc3339)
            .map(|l| (now - l) as f64 / 1e9)
            .unwrap_or(0.0);
        t.eta_seconds = Some((left - since_last.min(per)).max(0.0));
        t.eta_stale = since_last > (3.0 * per).max(15.0 * 60.0);
    }
    t.last_epoch_age_seconds = t
        .last_epoch_at
        .as_deref()
        .and_then(parse_rfc3339)
        .map(|l| ((now - l) as f64 / 1e9).max(0.0));
    Ok(Some(t))
}

fn queues(conn: &Connection, all: &[Gauge], now: i64) -> Result<Vec<Queue>, StoreError> {
    let mut names: Vec<&str> = all
        .iter()
        .filter(|g| g.name.starts_with("queue_"))
        .map(|g| g.container.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut out = Vec::new();
    for c in names {
        let offset = gauge(all, c, metric::QUEUE_OFFSET);
        let mut changed = None;
        if let Some(v) = offset {
            // The newest sample with another value; the first one after it is the change.
            let before: Option<String> = conn
                .query_row(queries::OFFSET_BEFORE, params![c, v], |r| r.get(0))
                .optional()
                .map_err(StoreError::sql("read offset history"))?;
            changed = conn
                .query_row(queries::OFFSET_CHANGED, params![c, before], |r| {
                    r.get::<_, String>(0)
                })
                .optional()
                .map_err(StoreError::sql("read offset history"))?;
        }
        out.push(Queue {
            container: c.to_string(),
            processed: gauge(all, c, metric::QUEUE_MESSAGES_PROCESSED),
            failed: gauge(all, c, metric::QUEUE_MESSAGES_FAILED),
            offset,
            offset_age_seconds: changed
                .as_deref()
                .and_then(parse_rfc3339)
                .map(|t| (now - t).max(0) as f64 / 1e9),
            offset_changed_at: changed,
            down: false,
        });
    }
    Ok(out)
}

fn gpus(all: &[Gauge]) -> Vec<Gpu> {
    let mut ids: Vec<&str> = all
        .iter()
        .filter(|g| g.name.starts_with("gpu_"))
        .map(|g| g.container.as_str())
        .collect();
    ids.sort_by_key(|c| (c.len(), *c));
    ids.dedup();
    ids.into_iter()
        .map(|c| Gpu {
            gpu: c.strip_prefix("gpu").unwrap_or(c).to_string(),
            temperature_c: gauge(all, c, metric::GPU_TEMPERATURE_C),
            utilization_pct: gauge(all, c, metric::GPU_UTILIZATION_PCT),
            memory_used_mb: gauge(all, c, metric::GPU_MEMORY_USED_MB),
            memory_total_mb: gauge(all, c, metric::GPU_MEMORY_TOTAL_MB),
        })
        .collect()
}

/// Bytes for people, in binary units as `docker stats` prints them: `512.0 KiB`, `1.21 GiB`.
pub fn human_bytes(v: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = v.max(0.0);
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{v:.0} B"),
        _ if v >= 100.0 => format!("{v:.0} {}", UNITS[unit]),
        _ if v >= 10.0 => format!("{v:.1} {}", UNITS[unit]),
        _ => format!("{v:.2} {}", UNITS[unit]),
    }
}

fn containers(
    conn: &Connection,
    all: &[Gauge],
    now: i64,
    max_age_ns: i64,
) -> Result<Vec<ContainerStats>, StoreError> {
    let roles = crate::store::queries::container_roles(conn)?;
    let mut newest: Vec<(&str, &str)> = Vec::new();
    for g in all.iter().filter(|g| g.name.starts_with("container_")) {
        match newest.iter_mut().find(|(c, _)| *c == g.container) {
            Some(n) if n.1 < g.ts.as_str() => n.1 = &g.ts,
            Some(_) => {}
            None => newest.push((&g.container, &g.ts)),
        }
    }
    let mut out: Vec<ContainerStats> = newest
        .into_iter()
        .filter(|(_, ts)| parse_rfc3339(ts).is_some_and(|t| now - t <= max_age_ns))
        .map(|(c, ts)| ContainerStats {
            container: c.to_string(),
            role: roles.get(c).cloned(),
            cpu_pct: gauge(all, c, "container_cpu_pct"),
            memory_used_bytes: gauge(all, c, "container_memory_used_bytes"),
            memory_limit_bytes: gauge(all, c, "container_memory_limit_bytes"),
            network_rx_bytes: gauge(all, c, "container_network_rx_bytes"),
            network_tx_bytes: gauge(all, c, "container_network_tx_bytes"),
            block_read_bytes: gauge(all, c, "container_block_read_bytes"),
            block_write_bytes: gauge(all, c, "container_block_write_bytes"),
            pids: gauge(all, c, "container_pids"),
            sampled_at: ts.to_string(),
        })
        .collect();
    out.sort_by(|a, b| (&a.role, &a.container).cmp(&(&b.role, &b.container)));
    Ok(out)
}

fn disk(all: &[Gauge]) -> Option<Disk> {
    let d = Disk {
        used_pct: gauge(all, "host", metric::DISK_USAGE_AZAION_PCT),
        used_gb: gauge(all, "host", metric::DISK_USAGE_AZAION_GB),
        total_gb: gauge(all, "host", metric::DISK_TOTAL_AZAION_GB),
        datasets_gb: gauge(all, "host", "disk_usage_datasets_gb"),
        models_gb: gauge(all, "host", "disk_usage_models_gb"),
    };
    (d.used_pct.is_some() || d.datasets_gb.is_some()).then_some(d)
}

/// The current run's last checkpoint (saved or failed): of its container, since it started;
/// never another container's or an earlier run's.
fn last_checkpoint(
    conn: &Connection,
    run: Option<&Training>,
) -> Result<Option<Checkpoint>, StoreError> {
    let Some(run) = run else {
        return Ok(None);
    };
    conn.query_row(
        queries::LAST_CHECKPOINT,
        rusqlite::params![run.container, run.started_at],
        |r| {
            Ok(Checkpoint {
                ts: r.get(0)?,
                container: r.get(1)?,
                kind: r.get(2)?,
                message: r.get(3)?,
            })
        },
    )
    .optional()
    .map_err(StoreError::sql("read the last checkpoint"))
}

fn fmt_count(v: f64) -> String {
    // 1 204 with a thin space between thousands, as people write them.
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(ch);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// The verdict and its line.
/// Alert names shown in the health line before "and N more".
const FIRING_NAMES_SHOWN: usize = 4;

/// `3 alerts firing: GpuOutOfMemory, LossNotFinite x2`: names in order of first firing, one
/// entry per name with its count, at most [`FIRING_NAMES_SHOWN`] of them.
fn firing_summary(all: &[AlertRow]) -> String {
    let quiet = all.iter().filter(|a| !a.pages()).count();
    let quiet = if quiet > 0 {
        format!(" ({quiet} more acknowledged or silenced)")
    } else {
        String::new()
    };
    let firing: Vec<&AlertRow> = all.iter().filter(|a| a.pages()).collect();
    if firing.is_empty() {
        return format!("0 alerts firing{quiet}");
    }
    // Alert names come from the rule set (a dozen or so): a short list, searched in place.
    let mut names: Vec<(&str, usize)> = Vec::new();
    for a in &firing {
        match names.iter_mut().find(|(n, _)| *n == a.alertname) {
            Some((_, c)) => *c += 1,
            None => names.push((a.alertname.as_str(), 1)),
        }
    }
    let mut shown: Vec<String> = names
        .iter()
        .take(FIRING_NAMES_SHOWN)
        .map(|(n, c)| {
            if *c > 1 {
                format!("{n} x{c}")
            } else {
                n.to_string()
            }
        })
        .collect();
    if names.len() > FIRING_NAMES_SHOWN {
        shown.push(format!("and {} more", names.len() - FIRING_NAMES_SHOWN));
    }
    let n = firing.len();
    let noun = if n == 1 { "alert" } else { "alerts" };
    format!("{n} {noun} firing: {}{quiet}", shown.join(", "))
}

/// How far ahead of now a record's time may be and still count as fresh data: a record stamped
/// later (a host clock set ahead, then corrected) says nothing of whether anything is read now.
pub use crate::time::FUTURE_SKEW_NS;

pub fn health(s: &Status, max_age_ns: i64, now: i64) -> Health {
    let heartbeat = s.heartbeat_at.as_deref().and_then(parse_rfc3339);
    let record = s
        .newest_record_at
        .as_deref()
        .and_then(parse_rfc3339)
        .filter(|t| *t <= now + FUTURE_SKEW_NS);
    let newest = heartbeat.into_iter().chain(record).max();
    let age = newest.map(|t| (now - t).max(0));
    // An acknowledged or silenced alert is known to someone: it does not page.
    let paging: Vec<&AlertRow> = s.alerts_firing.iter().filter(|a| a.pages()).collect();
    let crit = paging
        .iter()
        .filter(|a| a.severity == "critical" || a.severity == "high")
        .count();
    let warn = paging.len() - crit;
    let stale = age.is_none_or(|a| a > max_age_ns);
    let mut parts = Vec::new();
    match &s.training {
        Some(t) => {
            let of = t.epochs_total.map(|n| format!("/{n}")).unwrap_or_default();
            let mut p = if t.status.is_running() {
                format!("training run {} epoch {}{of}", t.run_id, t.epoch)
            } else {
                format!(
                    "training run {} {} at epoch {}{of}",
                    t.run_id, t.status, t.epoch
                )
            };
            match (t.eta_stale, t.last_epoch_age_seconds, t.eta_seconds) {
                (true, Some(age), _) => p.push_str(&format!(
                    ", no epoch for {} (stalled?)",
                    human_duration((age * 1e9) as i64)
                )),
                (_, _, Some(eta)) => {
                    p.push_str(&format!(", ETA {}", human_duration((eta * 1e9) as i64)))
                }
                _ => {}
            }
            parts.push(p);
        }
        None => parts.push("no training run".into()),
    }
    // One line whatever the number of containers: more than two queues are summed.
    if s.queues.len() <= 2 {
        for q in &s.queues {
            parts.push(format!(
                "queue processed {} ({} failed)",
                fmt_count(q.processed.unwrap_or(0.0)),
                fmt_count(q.failed.unwrap_or(0.0))
            ));
        }
    } else {
        let sum = |f: fn(&Queue) -> Option<f64>| s.queues.iter().filter_map(f).sum::<f64>();
        parts.push(format!(
            "{} queues processed {} ({} failed)",
            s.queues.len(),
            fmt_count(sum(|q| q.processed)),
            fmt_count(sum(|q| q.failed))
        ));
    }
    if let Some(p) = s.disk.as_ref().and_then(|d| d.used_pct) {
        parts.push(format!("disk {:.0} %", p));
    }
    if let Some(t) = s
        .gpus
        .iter()
        .filter_map(|g| g.temperature_c)
        .reduce(f64::max)
    {
        parts.push(format!("GPU {t:.0} °C"));
    }
    parts.push(firing_summary(&s.alerts_firing));
    if stale {
        parts.push(match age {
            Some(a) => format!("no data for {} (ingestor not running?)", human_duration(a)),
            None => "no data yet (ingestor not running?)".into(),
        });
    }
    let (code, level) = if crit > 0 || stale {
        (2, "CRITICAL")
    } else if warn > 0 {
        (1, "WARNING")
    } else {
        (0, "OK")
    };
    Health {
        code,
        level,
        line: format!("{level}: {}", parts.join("; ")),
        data_age_seconds: age.map(|a| a as f64 / 1e9),
    }
}

/// Reads the status from the store; `max_age_ns` decides staleness.
pub fn collect(conn: &Connection, now: i64, max_age_ns: i64) -> Result<Status, StoreError> {
    let heartbeat_at: Option<String> = conn
        .query_row(queries::HEARTBEAT_AT, [], |r| r.get(0))
        .optional()
        .map_err(StoreError::sql("read heartbeat"))?;
    let newest_record_at: Option<String> = conn
        .query_row(
            queries::NEWEST_EVENT_AT,
            [format_ns(now + FUTURE_SKEW_NS)],
            |r| r.get(0),
        )
        .map_err(StoreError::sql("read newest record"))?;
    let all = gauges(conn)?;
    let mut s = Status {
        generated_at: format_ns(now),
        health: Health {
            code: 0,
            level: "OK",
            line: String::new(),
            data_age_seconds: None,
        },
        heartbeat_at,
        newest_record_at,
        training: training(conn, None, now)?,
        queues: queues(conn, &all, now)?,
        gpus: gpus(&all),
        containers: containers(conn, &all, now, max_age_ns)?,
        disk: disk(&all),
        last_checkpoint: None,
        followed: crate::store::queries::followed_containers(conn, usize::MAX)?,
        followed_total: 0,
        followed_down: 0,
        redactions: redactions(&all),
        // Every firing alert: the health line counts them all.
        alerts_firing: store_alerts::list(conn, false, usize::MAX)?,
        alerts_resolved_recently: store_alerts::recently_resolved(conn, 10)?,
        gauges: all,
    };
    s.last_checkpoint = last_checkpoint(conn, s.training.as_ref())?;
    let down: std::collections::HashSet<&str> = s
        .followed
        .iter()
        .filter(|f| f.is_down())
        .map(|f| f.container.as_str())
        .collect();
    for q in &mut s.queues {
        q.down = down.contains(q.container.as_str());
    }
    s.followed_total = s.followed.len();
    s.followed_down = down.len();
    s.followed.truncate(FOLLOWED_LISTED);
    s.health = health(&s, max_age_ns, now);
    Ok(s)
}

/// The status as `watch` shows it: the store's, with in front the `StoreNotWritable` of an
/// outage the store itself cannot record.
pub fn collect_live(
    conn: &Connection,
    now: i64,
    max_age_ns: i64,
    store: &crate::store::StoreHealth,
) -> Result<Status, StoreError> {
    let outage = store.lock().unwrap_or_else(|e| e.into_inner()).clone();
    collect_with(conn, now, max_age_ns, outage.as_ref())
}

/// The status as another process (`health`, `status`) sees it: the store's, with the outage
/// the running `watch` of `db` noted in its lock file ([`crate::store::lock::held_outage`]).
pub fn collect_beside(
    conn: &Connection,
    db: &std::path::Path,
    now: i64,
    max_age_ns: i64,
) -> Result<Status, StoreError> {
    let outage = crate::store::lock::held_outage(db);
    collect_with(conn, now, max_age_ns, outage.as_ref())
}

fn collect_with(
    conn: &Connection,
    now: i64,
    max_age_ns: i64,
    outage: Option<&crate::store::StoreOutage>,
) -> Result<Status, StoreError> {
    let mut s = collect(conn, now, max_age_ns)?;
    if let Some(o) = outage {
        s.alerts_firing.insert(0, crate::store::outage_alert(o));
        s.health = health(&s, max_age_ns, now);
    }
    Ok(s)
}

/// The status document as pretty JSON with a final newline.
pub fn to_json(s: &Status) -> Vec<u8> {
    let mut text = serde_json::to_vec_pretty(s).unwrap_or_default();
    text.push(b'\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;
    const NOW: i64 = 1_774_708_200 * S;

    fn alert(severity: &str, name: &str) -> AlertRow {
        AlertRow {
            id: 1,
            fingerprint: "f".into(),
            alertname: name.into(),
            severity: severity.into(),
            status: "firing".into(),
            labels: serde_json::json!({}),
            summary: "s".into(),
            started_at: format_ns(NOW - 60 * S),
            resolved_at: None,
            last_notified_at: None,
            silenced: None,
        }
    }

    fn status() -> Status {
        Status {
            generated_at: format_ns(NOW),
            health: health_placeholder(),
            heartbeat_at: Some(format_ns(NOW - 5 * S)),
            newest_record_at: Some(format_ns(NOW - 3600 * S)),
            training: Some(Training {
                run_id: 7,
                container: "yolo".into(),
                status: crate::derive::RunStatus::Running,
                epoch: 45,
                epochs_total: Some(120),
                started_at: format_ns(NOW - 10 * 3600 * S),
                last_epoch_at: Some(format_ns(NOW)),
                epoch_seconds: Some(150.0),
                eta_seconds: Some(75.0 * 150.0),
                last_epoch_age_seconds: Some(0.0),
                eta_stale: false,
                losses: serde_json::Value::Null,
                loss: None,
                map50: None,
                map50_95: None,
                metrics: serde_json::Value::Null,
                best_epoch: None,
                best_map50_95: None,
                save_dir: None,
                failure: None,
                folder_problem: None,
            }),
            queues: vec![Queue {
                container: "annotation-queue".into(),
                processed: Some(1204.0),
                failed: Some(3.0),
                offset: Some(10.0),
                offset_changed_at: None,
                offset_age_seconds: None,
                down: false,
            }],
            gpus: vec![],
            containers: vec![],
            disk: Some(Disk {
                used_pct: Some(71.2),
                used_gb: None,
                total_gb: None,
                datasets_gb: None,
                models_gb: None,
            }),
            last_checkpoint: None,
            followed: vec![],
            followed_total: 0,
            followed_down: 0,
            redactions: vec![],
            alerts_firing: vec![],
            alerts_resolved_recently: vec![],
            gauges: vec![],
        }
    }

    fn health_placeholder() -> Health {
        Health {
            code: 0,
            level: "OK",
            line: String::new(),
            data_age_seconds: None,
        }
    }

    #[test]
    fn health_line_and_codes() {
        let mut s = status();
        let h = health(&s, 600 * S, NOW);
        assert_eq!(h.code, 0);
        assert_eq!(
            h.line,
            "OK: training run 7 epoch 45/120, ETA 3h07m; queue processed 1 204 (3 failed); disk 71 %; 0 alerts firing"
        );
        assert_eq!(h.data_age_seconds, Some(5.0));
        s.alerts_firing.push(alert("medium", "DiskUsageHigh"));
        let h = health(&s, 600 * S, NOW);
        assert_eq!((h.code, h.level), (1, "WARNING"));
        assert!(
            h.line.ends_with("1 alert firing: DiskUsageHigh"),
            "{}",
            h.line
        );
        s.alerts_firing.push(alert("high", "GpuOutOfMemory"));
        assert_eq!(health(&s, 600 * S, NOW).code, 2);
        // No alerts, but the ingestor is gone: critical.
        s.alerts_firing.clear();
        s.heartbeat_at = None;
        let h = health(&s, 600 * S, NOW);
        assert_eq!(h.code, 2);
        assert!(h.line.contains("no data for 1h00m"), "{}", h.line);
        s.newest_record_at = None;
        assert!(health(&s, 600 * S, NOW).line.contains("no data yet"));
        // A record stamped in 2099 (a clock set ahead, then corrected) does not keep a dead
        // ingestor green; one a minute ahead (skew) still counts.
        s.newest_record_at = Some("2099-01-01T00:00:00.000000000Z".into());
        let h = health(&s, 600 * S, NOW);
        assert_eq!(h.code, 2, "{}", h.line);
        assert!(h.line.contains("no data yet"), "{}", h.line);
        s.newest_record_at = Some(crate::time::format_ns(NOW + 60 * S));
        assert_eq!(health(&s, 600 * S, NOW).code, 0);
    }

    #[test]
    fn health_stays_one_short_line_with_thousands_of_containers() {
        let mut s = status();
        let q = s.queues[0].clone();
        s.queues = (0..5000)
            .map(|i| Queue {
                container: format!("queue-{i}"),
                ..q.clone()
            })
            .collect();
        for i in 0..3000 {
            let name = [
                "QueueContainerDown",
                "LogStreamSilent",
                "GpuTemperatureHigh",
                "DiskUsageHigh",
                "GpuOutOfMemory",
                "LossNotFinite",
            ][i % 6];
            s.alerts_firing.push(alert("medium", name));
        }
        let h = health(&s, 600 * S, NOW);
        assert!(!h.line.contains('\n'));
        assert!(h.line.len() < 300, "{}", h.line);
        assert!(
            h.line
                .contains("5000 queues processed 6 020 000 (15 000 failed)"),
            "{}",
            h.line
        );
        assert!(
            h.line.ends_with("3000 alerts firing: QueueContainerDown x500, LogStreamSilent x500, GpuTemperatureHigh x500, DiskUsageHigh x500, and 2 more"),
            "{}",
            h.line
        );
    }

    #[test]
    fn gauges_are_found_among_many_containers() {
        let mut all: Vec<Gauge> = (0..1000)
            .flat_map(|i| {
                ["queue_offset", "queue_messages_processed"].map(|n| Gauge {
                    container: format!("q{i}"),
                    name: n.into(),
                    value: i as f64,
                    ts: String::new(),
                })
            })
            .collect();
        all.sort_by(|a, b| (&a.name, &a.container).cmp(&(&b.name, &b.container)));
        assert_eq!(gauge(&all, "q737", "queue_offset"), Some(737.0));
        assert_eq!(gauge(&all, "q0", "queue_messages_processed"), Some(0.0));
        assert_eq!(gauge(&all, "q1000", "queue_offset"), None);
        assert_eq!(gauge(&all, "q5", "gpu_temperature_c"), None);
    }

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(fmt_count(1204.0), "1 204");
        assert_eq!(fmt_count(12.0), "12");
        assert_eq!(fmt_count(1_234_567.0), "1 234 567");
    }
}
