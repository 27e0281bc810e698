//! Retention: deletes rows older than a cutoff in small batches, each its own transaction, then
//! returns free pages with `incremental_vacuum`. Never a full `VACUUM`: on a large database it
//! blocks every writer for minutes (Uptime Kuma issues #1994, #2470, #4041).

use std::time::Duration;

use super::WriterSender;
use rusqlite::{Connection, params};
use tokio_util::sync::CancellationToken;

use crate::derive::Op;
use crate::error::StoreError;
use crate::time::Age;
use serde::Deserialize;

/// Rows per delete batch: small enough that the writer lock is held for milliseconds.
pub const BATCH: i64 = 5_000;

/// What a prune removed (or, in a dry run, would remove).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub events: u64,
    pub metric_samples: u64,
    pub runs: u64,
    pub epochs: u64,
    /// Resolved alerts (with their notifications).
    pub alerts: u64,
    /// Delivered or abandoned notifications of alerts that are kept.
    pub notifications: u64,
    pub freed_pages: u64,
}

#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
/// `[retention]`: how long events and samples, and training history, are kept.
pub struct Retention {
    #[serde(default = "default_events_age")]
    pub events: String,
    #[serde(default = "default_history")]
    pub history: String,
    /// How often `watch` prunes (the first time a minute after it starts).
    #[serde(default = "default_every")]
    pub every: Age,
}

fn default_every() -> Age {
    Age::secs(86_400)
}

fn default_events_age() -> String {
    "30d".into()
}

fn default_history() -> String {
    "keep".into()
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            events: default_events_age(),
            history: default_history(),
            every: default_every(),
        }
    }
}

impl Retention {
    /// The cutoffs as of `now`: events and samples, and training history unless kept.
    pub fn cutoffs(&self, now: i64) -> (String, Option<String>) {
        let at = |age: &str| crate::time::parse_age(age).map(|ns| crate::time::format_ns(now - ns));
        let events = at(&self.events).unwrap_or_else(|| crate::time::format_ns(0));
        let history = if self.history == "keep" {
            None
        } else {
            at(&self.history)
        };
        (events, history)
    }
}

/// `watch`'s retention: asks the writer to prune a minute after start, then every
/// `retention.every`, with the config's ages taken back from the time of each prune.
pub async fn schedule(writer: WriterSender, cfg: Retention, shutdown: CancellationToken) {
    let every = cfg.every.as_duration().max(Duration::from_secs(1));
    let mut next = tokio::time::Instant::now() + every.min(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        next = tokio::time::Instant::now() + every;
        let (events, history) = cfg.cutoffs(crate::time::now_ns());
        if writer
            .send(vec![Op::Prune { events, history }])
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Logs what a prune run by the writer did.
pub fn log_pruned(r: Result<PruneReport, StoreError>) {
    match r {
        Ok(r) => tracing::info!(
            events = r.events,
            metric_samples = r.metric_samples,
            alerts = r.alerts,
            notifications = r.notifications,
            runs = r.runs,
            freed_pages = r.freed_pages,
            "Retention pruned old rows."
        ),
        Err(e) => tracing::warn!(error = %e, "Retention failed; will try again next time."),
    }
}

/// Events and samples stamped in the future (beyond the allowed skew of now) that arrived
/// before the cutoff (?2, ns): they go by when they arrived, as their own time never comes.
const FUTURE_EVENTS: &str = "event_log WHERE ts > ?1 AND arrived_at < ?2";
const FUTURE_SAMPLES: &str = "metric_log WHERE ts > ?1 AND arrived_at < ?2";

/// Prunes (or with `dry_run` counts) the events and samples stamped in the future that arrived
/// before `cutoff`.
fn prune_future(conn: &Connection, cutoff: &str, dry_run: bool) -> Result<(u64, u64), StoreError> {
    let ahead = crate::time::format_ns(crate::time::now_ns() + crate::time::FUTURE_SKEW_NS);
    let cutoff_ns = crate::time::parse_rfc3339(cutoff).unwrap_or(i64::MIN);
    let rows = |rows: &str| -> Result<u64, StoreError> {
        let args = params![ahead, cutoff_ns];
        let n = if dry_run {
            conn.query_row(&format!("SELECT count(*) FROM {rows}"), args, |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
        } else {
            conn.execute(&format!("DELETE FROM {rows}"), args)
                .map(|n| n as u64)
        };
        n.map_err(StoreError::sql("prune rows stamped in the future"))
    };
    Ok((rows(FUTURE_EVENTS)?, rows(FUTURE_SAMPLES)?))
}

/// Prunes events and metric samples older than `cutoff` (fixed-width UTC text), and training
/// history (runs that ended, with their epochs) older than `history_cutoff` when given. Rows
/// stamped in the future (a clock set ahead) are pruned by when they arrived.
pub fn prune(
    conn: &Connection,
    cutoff: &str,
    history_cutoff: Option<&str>,
    dry_run: bool,
) -> Result<PruneReport, StoreError> {
    let mut rep = PruneReport::default();
    let count = |sql: &str, arg: &str| -> Result<u64, StoreError> {
        conn.query_row(sql, [arg], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(StoreError::sql("count prunable rows"))
    };
    let (future_events, future_samples) = prune_future(conn, cutoff, dry_run)?;
    if dry_run {
        rep.events = count("SELECT count(*) FROM event_log WHERE ts < ?1", cutoff)? + future_events;
        rep.metric_samples =
            count("SELECT count(*) FROM metric_log WHERE ts < ?1", cutoff)? + future_samples;
        rep.alerts = count(
            "SELECT count(*) FROM alert_log WHERE status = 'resolved' AND resolved_at < ?1",
            cutoff,
        )?;
        rep.notifications = count(
            "SELECT count(*) FROM outbox WHERE COALESCE(delivered_at, abandoned_at) < ?1",
            cutoff,
        )?;
        if let Some(h) = history_cutoff {
            rep.runs = count(
                "SELECT count(*) FROM runs WHERE status <> 'running' AND COALESCE(ended_at, started_at) < ?1",
                h,
            )?;
            rep.epochs = count(
                "SELECT count(*) FROM epochs WHERE run_id IN (SELECT run_id FROM runs WHERE status <> 'running' AND COALESCE(ended_at, started_at) < ?1)",
                h,
            )?;
        }
        return Ok(rep);
    }
    let pages_before: i64 = conn
        .query_row("PRAGMA freelist_count", [], |r| r.get(0))
        .unwrap_or(0);
    loop {
        let n = conn
            .execute("DELETE FROM event_log WHERE id IN (SELECT id FROM event_log WHERE ts < ?1 LIMIT ?2)", params![cutoff, BATCH])
            .map_err(StoreError::sql("prune events"))?;
        rep.events += n as u64;
        if (n as i64) < BATCH {
            break;
        }
    }
    loop {
        let n = conn
            .execute(
                "DELETE FROM metric_log WHERE (container, name, ts) IN
                   (SELECT container, name, ts FROM metric_log WHERE ts < ?1 LIMIT ?2)",
                params![cutoff, BATCH],
            )
            .map_err(StoreError::sql("prune metric samples"))?;
        rep.metric_samples += n as u64;
        if (n as i64) < BATCH {
            break;
        }
    }
    rep.events += future_events;
    rep.metric_samples += future_samples;
    rep.notifications = conn
        .execute(
            "DELETE FROM outbox WHERE COALESCE(delivered_at, abandoned_at) < ?1",
            [cutoff],
        )
        .map_err(StoreError::sql("prune notifications"))? as u64;
    rep.alerts = conn
        .execute(
            "DELETE FROM alert_log WHERE status = 'resolved' AND resolved_at < ?1",
            [cutoff],
        )
        .map_err(StoreError::sql("prune alerts"))? as u64;
    if let Some(h) = history_cutoff {
        conn.execute("DELETE FROM results_rows WHERE run_id IN (SELECT run_id FROM runs WHERE status <> 'running' AND COALESCE(ended_at, started_at) < ?1)", [h])
            .map_err(StoreError::sql("prune results.csv rows"))?;
        rep.epochs = conn
            .execute("DELETE FROM epochs WHERE run_id IN (SELECT run_id FROM runs WHERE status <> 'running' AND COALESCE(ended_at, started_at) < ?1)", [h])
            .map_err(StoreError::sql("prune epochs"))? as u64;
        rep.runs = conn
            .execute("DELETE FROM runs WHERE status <> 'running' AND COALESCE(ended_at, started_at) < ?1", [h])
            .map_err(StoreError::sql("prune runs"))? as u64;
    }
    let free: i64 = conn
        .query_row("PRAGMA freelist_count", [], |r| r.get(0))
        .unwrap_or(0);
    // Return the freed pages in steps so no single statement holds the lock for long.
    let mut left = free;
    while left > 0 {
        // execute_batch steps the pragma to completion (a single step frees one page only).
        conn.execute_batch("PRAGMA incremental_vacuum(2000)")
            .map_err(StoreError::sql("incremental vacuum"))?;
        let now: i64 = conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))
            .unwrap_or(0);
        if now >= left {
            break;
        }
        left = now;
    }
    rep.freed_pages = (free.max(pages_before) - left).max(0) as u64;
    Ok(rep)
}
