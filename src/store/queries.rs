//! Named read queries: what derivation needs to continue a container where the store left it,
//! the source cursors, and the history views.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};

use crate::derive::{Resume, RunKey, RunRow, RunStatus};
use crate::error::StoreError;
use crate::event::{Key, Stream};

const RUN_COLUMNS: &str =
    "run_id, start_stream, start_key_ts, start_seq, started_at, ended_at, status,
    epochs_total, best_epoch_reported, save_dir, model, loss_names, params, ultralytics_version,
    failure";

fn run_from_row(container: &Arc<str>, r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, RunRow)> {
    let parse_ts = |s: Option<String>| s.and_then(|s| crate::time::parse_rfc3339(&s));
    let names: String = r.get(11)?;
    Ok((
        r.get(0)?,
        RunRow {
            key: RunKey {
                container: container.clone(),
                stream: Stream::parse(&r.get::<_, String>(1)?).unwrap_or(Stream::Stdout),
                ts: r.get(2)?,
                seq: r.get(3)?,
            },
            started_at: parse_ts(r.get(4)?).unwrap_or(0),
            ended_at: parse_ts(r.get(5)?),
            status: RunStatus::parse(&r.get::<_, String>(6)?).unwrap_or(RunStatus::Running),
            epochs_total: r.get(7)?,
            best_epoch_reported: r.get(8)?,
            save_dir: r.get(9)?,
            model: r.get(10)?,
            loss_names: serde_json::from_str(&names).unwrap_or_default(),
            params: r.get(12)?,
            ultralytics_version: r.get(13)?,
            failure: r.get(14)?,
        },
    ))
}

/// Loads what derivation needs to continue `container`.
pub fn resume_state(conn: &Connection, container: &Arc<str>) -> Result<Resume, StoreError> {
    let q = StoreError::sql("load container state");
    let mut stmt = conn
        // The run a restart continues is the last one in log order: source keys only grow
        // along a source (even where the clock stepped back), so they order first; the log
        // time orders runs of untimed text files (key time 0), then the position.
        .prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE container = ?1 ORDER BY start_key_ts DESC, started_at DESC, start_seq DESC, run_id DESC LIMIT 50"))
        .map_err(StoreError::sql("load container state"))?;
    let runs: Vec<(i64, RunRow)> = stmt
        .query_map(params![&**container], |r| run_from_row(container, r))
        .and_then(|it| it.collect())
        .map_err(q)?;
    let mut resume = Resume {
        snapshot: conn
            .query_row(
                "SELECT state FROM derive_state WHERE container = ?1",
                [&**container],
                |r| r.get(0),
            )
            .optional()
            .map_err(StoreError::sql("load derivation state"))?,
        ..Resume::default()
    };
    let mut first = true;
    for (id, row) in runs {
        if first {
            let last: Option<u32> = conn
                .query_row(
                    "SELECT max(epoch) FROM epochs WHERE run_id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .map_err(StoreError::sql("load last epoch"))?;
            resume.run = Some((row, last));
            first = false;
        } else if let Some(dir) = row.save_dir.clone()
            && !resume.save_dirs.iter().any(|(d, _)| *d == dir)
        {
            resume.save_dirs.push((dir, row));
        }
    }
    for name in ["queue_messages_processed", "queue_messages_failed"] {
        let v: Option<f64> = conn
            .query_row(
                // Counters only grow, so the latest value is the largest, whatever the log
                // times of the samples did.
                "SELECT max(value) FROM metric_log WHERE container = ?1 AND name = ?2",
                params![&**container, name],
                |r| r.get(0),
            )
            .map_err(StoreError::sql("load counters"))?;
        if let Some(v) = v {
            resume.counters.push((name.to_string(), v));
        }
    }
    Ok(resume)
}

/// Why a run's folder cannot be read (the latest said), unless a row of its results.csv was
/// read after all.
pub const RUN_FOLDER_PROBLEM: &str = "SELECT e.message FROM events e JOIN runs r ON r.run_id = ?1
     WHERE e.kind = 'run_folder_unreadable' AND e.container = r.container
       AND e.ts >= r.started_at
       AND NOT EXISTS (SELECT 1 FROM results_rows rr WHERE rr.run_id = ?1)
     ORDER BY e.ts DESC LIMIT 1";

/// Every run with a run folder (`save_dir`), of any container.
pub fn runs_with_save_dir(conn: &Connection) -> Result<Vec<RunRow>, StoreError> {
    let q = StoreError::sql("list runs with a run folder");
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {RUN_COLUMNS}, container FROM runs WHERE save_dir IS NOT NULL ORDER BY run_id"
        ))
        .map_err(StoreError::sql("list runs with a run folder"))?;
    stmt.query_map([], |r| {
        let container: Arc<str> = Arc::from(r.get::<_, String>(15)?.as_str());
        run_from_row(&container, r).map(|(_, row)| row)
    })
    .and_then(|it| it.collect())
    .map_err(q)
}

/// The stored cursors of `container`: (stream, origin) -> last stored key.
pub fn cursors(
    conn: &Connection,
    container: &str,
) -> Result<HashMap<(Stream, String), Key>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT stream, origin, key_ts, seq FROM cursors WHERE container = ?1")
        .map_err(StoreError::sql("load cursors"))?;
    let rows = stmt
        .query_map([container], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                Key {
                    ts: r.get(2)?,
                    seq: r.get(3)?,
                },
            ))
        })
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(StoreError::sql("load cursors"))?;
    Ok(rows
        .into_iter()
        .filter_map(|(s, o, k)| Some(((Stream::parse(&s)?, o), k)))
        .collect())
}

/// The running ingestor's last sign of life: when, its process id, and when it started.
#[derive(Clone, Debug, PartialEq)]
pub struct Heartbeat {
    pub at: String,
    pub pid: i64,
    pub started_at: String,
}

/// The heartbeat row, if an ingestor (`watch`) ever ran on this database.
pub fn heartbeat(conn: &Connection) -> Result<Option<Heartbeat>, StoreError> {
    use rusqlite::OptionalExtension;
    conn.query_row(
        "SELECT at, pid, started_at FROM heartbeat WHERE id = 1",
        [],
        |r| {
            Ok(Heartbeat {
                at: r.get(0)?,
                pid: r.get(1)?,
                started_at: r.get(2)?,
            })
        },
    )
    .optional()
    .map_err(StoreError::sql("read heartbeat"))
}

/// The role of every container live follow has found (`containers`).
pub fn container_roles(conn: &Connection) -> Result<HashMap<String, String>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT container, role FROM containers")
        .map_err(StoreError::sql("read container roles"))?;
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|it| it.collect())
        .map_err(StoreError::sql("read container roles"))
}

/// A followed container as live follow last saw it (table `containers`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FollowedContainer {
    pub container: String,
    pub role: String,
    /// `running`, `exited` or `removed` (`None` before the daemon said).
    pub state: Option<String>,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub state_at: Option<String>,
    pub last_line_at: Option<String>,
}

impl FollowedContainer {
    /// `running`, `exited 137`, `OOM-killed (137)`, `removed`, `unknown`.
    pub fn state_text(&self) -> String {
        match (self.state.as_deref(), self.oom_killed, self.exit_code) {
            (Some("running"), _, _) => "running".into(),
            (Some("removed"), _, _) => "removed".into(),
            (Some(_), true, Some(c)) => format!("OOM-killed ({c})"),
            (Some(_), true, None) => "OOM-killed".into(),
            (Some(_), false, Some(c)) => format!("exited {c}"),
            (Some(s), false, None) => s.to_string(),
            (None, _, _) => "unknown".into(),
        }
    }

    pub fn is_down(&self) -> bool {
        self.state.as_deref() == Some("exited")
    }
}

/// The containers live follow has seen, by role then name; at most `limit`.
pub fn followed_containers(
    conn: &Connection,
    limit: usize,
) -> Result<Vec<FollowedContainer>, StoreError> {
    let q = StoreError::sql("read followed containers");
    let mut stmt = conn
        .prepare_cached(
            "SELECT container, role, state, exit_code, oom_killed, state_at, last_line_at
             FROM containers ORDER BY role, container LIMIT ?1",
        )
        .map_err(q)?;
    stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
        Ok(FollowedContainer {
            container: r.get(0)?,
            role: r.get(1)?,
            state: r.get(2)?,
            exit_code: r.get(3)?,
            oom_killed: r.get::<_, i64>(4)? != 0,
            state_at: r.get(5)?,
            last_line_at: r.get(6)?,
        })
    })
    .and_then(|it| it.collect())
    .map_err(StoreError::sql("read followed containers"))
}

/// One stored line, as evidence in a notification.
#[derive(Clone, Debug, PartialEq)]
pub struct Evidence {
    pub ts: String,
    pub level: String,
    pub message: String,
}

/// The last `limit` events of `container` at or before `until` (RFC 3339), oldest first.
pub fn evidence(
    conn: &Connection,
    container: &str,
    until: &str,
    limit: usize,
) -> Result<Vec<Evidence>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT ts, level, message FROM event_log WHERE container = ?1 AND ts <= ?2
             ORDER BY ts DESC, id DESC LIMIT ?3",
        )
        .map_err(StoreError::sql("read evidence"))?;
    let mut rows: Vec<Evidence> = stmt
        .query_map(params![container, until, limit as i64], |r| {
            Ok(Evidence {
                ts: r.get(0)?,
                level: r.get(1)?,
                message: r.get(2)?,
            })
        })
        .and_then(|it| it.collect())
        .map_err(StoreError::sql("read evidence"))?;
    rows.reverse();
    Ok(rows)
}

/// `history`: one row per run, newest first (`?1`: a container, or NULL for all),
/// comparable side by side: progress, best epoch, how long it took, and the
// last epoch's metrics. Every subquery is a primary-key lookup on `epochs`.
pub const HISTORY_RUNS: &str =
    "SELECT r.run_id, r.container, r.status, r.epochs_done, r.epochs_total,
        r.best_epoch, round(r.best_map50_95, 5) AS best_map50_95,
        CAST(round((julianday(COALESCE(r.ended_at, l.ended_at, r.started_at))
                    - julianday(r.started_at)) * 86400) AS INTEGER) AS duration_s,
        round(l.loss, 5) AS final_loss, round(l.map50, 5) AS final_map50,
        round(l.map50_95, 5) AS final_map50_95,
        r.started_at, r.ended_at, r.save_dir, r.failure
    FROM training_runs r
    LEFT JOIN epochs l ON l.run_id = r.run_id
        AND l.epoch = (SELECT max(epoch) FROM epochs WHERE run_id = r.run_id)
    WHERE (?1 IS NULL OR r.container = ?1) ORDER BY r.started_at DESC, r.run_id DESC";

// The same runs for a person, within 120 columns: rounded as the console prints them (losses
// to 4 decimals, mAP to 3), durations and times in human units (UTC, to the minute), long
// container names shortened.
pub const HISTORY_RUNS_TABLE: &str = "WITH h AS (SELECT r.*, l.loss AS l_loss, l.map50 AS l_map50,
        l.map50_95 AS l_map50_95,
        CAST(round((julianday(COALESCE(r.ended_at, l.ended_at, r.started_at))
                    - julianday(r.started_at)) * 86400) AS INTEGER) AS s
    FROM training_runs r
    LEFT JOIN epochs l ON l.run_id = r.run_id
        AND l.epoch = (SELECT max(epoch) FROM epochs WHERE run_id = r.run_id)
    WHERE (?1 IS NULL OR r.container = ?1))
    SELECT run_id AS run,
        CASE WHEN length(container) > 20 THEN substr(container, 1, 19) || '…' ELSE container END
            AS container,
        status, epochs_done || '/' || COALESCE(epochs_total, '?') AS epochs,
        best_epoch AS best, iif(best_map50_95 IS NULL, NULL, printf('%.3f', best_map50_95)) AS best_map,
        CASE WHEN s >= 86400 THEN printf('%dd%02dh', s / 86400, s % 86400 / 3600)
             WHEN s >= 3600 THEN printf('%dh%02dm', s / 3600, s % 3600 / 60)
             WHEN s >= 60 THEN printf('%dm%02ds', s / 60, s % 60)
             ELSE s || 's' END AS time,
        iif(l_loss IS NULL, NULL, printf('%.4f', l_loss)) AS loss,
        iif(l_map50 IS NULL, NULL, printf('%.3f', l_map50)) AS map50,
        iif(l_map50_95 IS NULL, NULL, printf('%.3f', l_map50_95)) AS map50_95,
        substr(replace(started_at, 'T', ' '), 1, 16) AS started_utc
    FROM h ORDER BY started_at DESC, run_id DESC";

/// Why the runs of `history`'s table failed or were interrupted (`?1`: a container, or NULL),
/// newest first.
pub const HISTORY_FAILURES: &str = "SELECT run_id, status, failure FROM training_runs
    WHERE failure IS NOT NULL AND (?1 IS NULL OR container = ?1)
    ORDER BY started_at DESC, run_id DESC";

pub const HISTORY_EPOCHS: &str =
    "SELECT epoch, epochs_total, ended_at, box_loss, cls_loss, dfl_loss, loss, losses,
        precision, recall, map50, map50_95, gpu_mem_gb, non_finite, metrics, train_time_s
    FROM training_epochs WHERE run_id = ?1 ORDER BY epoch";

/// Whether a run with this id is stored.
pub fn run_exists(conn: &Connection, run_id: i64) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT count(*) FROM runs WHERE run_id = ?1",
        [run_id],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
    .map_err(StoreError::sql("find run"))
}

/// A run's loss column names (JSON) and start, for its results.csv.
pub fn run_loss_names_and_start(
    conn: &Connection,
    run_id: i64,
) -> Result<(String, String), StoreError> {
    conn.query_row(
        "SELECT loss_names, started_at FROM runs WHERE run_id = ?1",
        [run_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .map_err(StoreError::sql("read run"))
}

/// `alerts` as a table: labels other than alertname and severity as `k=v` pairs; every alert
/// newest first (`all`), or the firing ones most severe first. `?1`: the limit.
pub fn alerts_table_sql(all: bool) -> String {
    format!(
        "SELECT id, severity, alertname, status,
            (SELECT group_concat(key || '=' || value, ' ') FROM json_each(labels)
             WHERE key NOT IN ('alertname', 'severity')) AS labels,
            started_at, resolved_at, last_notified_at, summary
         FROM alerts {} LIMIT ?1",
        if all {
            "ORDER BY started_at DESC, id DESC".to_string()
        } else {
            format!(
                "WHERE status = 'firing' ORDER BY {}, started_at",
                crate::store::alerts::SEVERITY_ORDER
            )
        }
    )
}

// The status document and page (output::status, output::page).

/// A run's epochs for the page's loss and mAP charts.
pub const CHART_EPOCHS: &str =
    "SELECT epoch, losses, map50, map50_95 FROM epochs WHERE run_id = ?1 ORDER BY epoch";

/// One metric of one container since ?3, for a chart.
pub const CHART_SAMPLES: &str =
    "SELECT ts, value FROM metric_log WHERE container = ?1 AND name = ?2 AND ts >= ?3
    ORDER BY ts";

/// The run before ?1, one of the same container (?2) first: the page's faint comparison.
pub const PREVIOUS_RUN: &str =
    "SELECT run_id FROM runs WHERE started_at < (SELECT started_at FROM runs WHERE run_id = ?1)
    ORDER BY (container = ?2) DESC, started_at DESC LIMIT 1";

/// Every gauge's latest value.
pub const STATUS_GAUGES: &str =
    "SELECT container, name, value, ts FROM gauges ORDER BY name, container";

/// Run ?1, or the newest run when ?1 is NULL.
pub const STATUS_RUN: &str =
    "SELECT run_id, container, status, epochs_done, epochs_total, started_at, best_epoch,
           best_map50_95, save_dir, failure
    FROM training_runs WHERE run_id = COALESCE(?1,
       (SELECT run_id FROM runs ORDER BY started_at DESC, run_id DESC LIMIT 1))";

/// A run's last six epochs, newest first.
pub const STATUS_LAST_EPOCHS: &str =
    "SELECT epoch, ended_at, losses, loss, map50, map50_95, metrics FROM epochs
    WHERE run_id = ?1 ORDER BY epoch DESC LIMIT 6";

/// The newest queue offset sample of ?1 with another value than ?2.
pub const OFFSET_BEFORE: &str =
    "SELECT ts FROM metric_log WHERE container = ?1 AND name = 'queue_offset'
    AND value <> ?2 ORDER BY ts DESC LIMIT 1";

/// The first queue offset sample of ?1 after ?2: when the offset last changed.
pub const OFFSET_CHANGED: &str =
    "SELECT ts FROM metric_log WHERE container = ?1 AND name = 'queue_offset'
    AND ts > COALESCE(?2, '') ORDER BY ts LIMIT 1";

/// The newest checkpoint saved or failed in container ?1 since ?2.
pub const LAST_CHECKPOINT: &str = "SELECT ts, container, kind, message FROM (
       SELECT ts, container, kind, message FROM event_log WHERE kind = 'checkpoint_saved'
           AND container = ?1 AND ts >= ?2
       ORDER BY ts DESC LIMIT 1)
    UNION ALL SELECT * FROM (
       SELECT ts, container, kind, message FROM event_log WHERE kind = 'checkpoint_save_failed'
           AND container = ?1 AND ts >= ?2
       ORDER BY ts DESC LIMIT 1)
    ORDER BY ts DESC LIMIT 1";

/// The ingestor's heartbeat.
pub const HEARTBEAT_AT: &str = "SELECT at FROM heartbeat WHERE id = 1";

/// The newest stored event's time.
/// The newest event's time at most ?1 (now + the allowed skew): one stamped in the future says
/// nothing of what is read now.
pub const NEWEST_EVENT_AT: &str = "SELECT max(ts) FROM event_log WHERE ts <= ?1";

/// A result set: column names and rows of SQLite values.
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<rusqlite::types::Value>>,
}

impl Rows {
    /// Runs `sql` with `params` and collects the result.
    pub fn query(
        conn: &Connection,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> rusqlite::Result<Rows> {
        let mut stmt = conn.prepare(sql)?;
        let columns: Vec<String> = stmt.column_names().map(|c| c.to_string()).collect();
        let n = columns.len();
        let rows = stmt
            .query_map(params, |r| {
                (0..n)
                    .map(|i| r.get::<_, rusqlite::types::Value>(i))
                    .collect::<rusqlite::Result<Vec<rusqlite::types::Value>>>()
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Rows { columns, rows })
    }
}
