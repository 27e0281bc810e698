//! The MLflow export's progress in the store (tables `mlflow_runs`, `mlflow_epochs`): which
//! MLflow run each training run is, and what of it the tracking server has acknowledged, per
//! target (tracking URI and experiment). The exporter ([`crate::output::mlflow`]) compares it
//! with `runs` and `epochs` and sends only the difference.
//!
//! These two tables are the exporter's outbox: it reads them here, on its read-only
//! connection, and has the writer record what the server acknowledged
//! ([`super::outbox::OutboxChange`]), as the notifier does with its outbox.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::StoreError;
use crate::time::{format_ns, now_ns};

/// A training run as the export sends it (from view `training_runs` and table `runs`).
#[derive(Clone, Debug)]
pub struct ExportRun {
    pub run_id: i64,
    pub container: String,
    /// The run's first line, the key of a run across restarts: its stream, key time and seq.
    pub start_stream: String,
    pub start_key_ts: i64,
    pub start_seq: i64,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub status: crate::derive::RunStatus,
    pub save_dir: Option<String>,
    pub model: Option<String>,
    /// JSON object text of the settings line's `key=value`s.
    pub params: Option<String>,
    pub ultralytics_version: Option<String>,
    pub epochs_total: Option<i64>,
    pub best_epoch: Option<i64>,
    /// Why a failed or interrupted run ended (`training_runs.failure`).
    pub failure: Option<String>,
    /// Epochs it has done (`training_runs.epochs_done`).
    pub epochs_done: i64,
    /// Where its run folder is read here (`runs.folder`).
    pub folder: Option<String>,
    /// Ultralytics' own MLflow run of it: (run id, tracking URI) as its log printed them.
    pub own_mlflow: Option<(String, String)>,
}

/// What the server has of a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exported {
    pub experiment_id: String,
    pub mlflow_run_id: String,
    pub params_sent: bool,
    pub status_sent: Option<String>,
    pub ended_sent: Option<String>,
    pub name_sent: Option<String>,
    pub error: Option<String>,
    /// The artifacts acknowledged (JSON object: path -> size); `None`: not yet sent.
    pub artifacts_sent: Option<String>,
    /// The MLflow run is the training's own (its callback's), linked rather than created.
    pub linked: bool,
    /// The final validation of best.pt was logged (or given up: none was printed).
    pub final_sent: bool,
}

/// Runs with something the target lacks: never sent, parameters not acknowledged, another
/// status or end, still running (new epochs), an epoch without an acknowledged digest, or an
/// ended run with a folder whose artifacts were not sent.
/// Runs refused for good (`error`) are left until cleared. Oldest first.
const DUE_RUNS: &str = "SELECT r.run_id FROM runs r
    LEFT JOIN mlflow_runs m ON m.target = ?1 AND m.run_id = r.run_id
    WHERE m.error IS NULL AND (
        m.run_id IS NULL OR m.params_sent = 0 OR r.status = 'running'
        OR m.status_sent IS NOT r.status OR m.ended_sent IS NOT r.ended_at
        OR (r.status <> 'running' AND r.folder IS NOT NULL AND m.linked = 0
            AND m.artifacts_sent IS NULL)
        OR (r.status IN ('completed', 'early_stopped') AND m.linked = 0 AND m.final_sent = 0)
        OR (m.linked IS NOT 1 AND EXISTS (SELECT 1 FROM epochs e WHERE e.run_id = r.run_id AND NOT EXISTS (
            SELECT 1 FROM mlflow_epochs x
            WHERE x.target = ?1 AND x.run_id = r.run_id AND x.epoch = e.epoch))))
    ORDER BY r.started_at, r.run_id";

pub fn due_runs(conn: &Connection, target: &str) -> Result<Vec<i64>, StoreError> {
    let mut stmt = conn
        .prepare_cached(DUE_RUNS)
        .map_err(StoreError::sql("find runs to export"))?;
    stmt.query_map([target], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(StoreError::sql("find runs to export"))
}

pub fn run(conn: &Connection, run_id: i64) -> Result<Option<ExportRun>, StoreError> {
    conn.query_row(
        "SELECT v.run_id, v.container, r.start_stream, r.start_key_ts, r.start_seq, v.started_at,
            v.ended_at, v.status, v.save_dir, v.model, v.params, v.ultralytics_version,
            v.epochs_total, v.best_epoch, v.failure, v.epochs_done, r.folder, r.mlflow_run_id,
            r.mlflow_uri
         FROM training_runs v JOIN runs r ON r.run_id = v.run_id WHERE v.run_id = ?1",
        [run_id],
        |r| {
            Ok(ExportRun {
                run_id: r.get(0)?,
                container: r.get(1)?,
                start_stream: r.get(2)?,
                start_key_ts: r.get(3)?,
                start_seq: r.get(4)?,
                started_at: r.get(5)?,
                ended_at: r.get(6)?,
                status: r.get(7)?,
                save_dir: r.get(8)?,
                model: r.get(9)?,
                params: r.get(10)?,
                ultralytics_version: r.get(11)?,
                epochs_total: r.get(12)?,
                best_epoch: r.get(13)?,
                failure: r.get(14)?,
                epochs_done: r.get(15)?,
                folder: r.get(16)?,
                own_mlflow: match (r.get(17)?, r.get(18)?) {
                    (Some(id), Some(uri)) => Some((id, uri)),
                    _ => None,
                },
            })
        },
    )
    .optional()
    .map_err(StoreError::sql("read run to export"))
}

pub fn exported(
    conn: &Connection,
    target: &str,
    run_id: i64,
) -> Result<Option<Exported>, StoreError> {
    conn.query_row(
        "SELECT experiment_id, mlflow_run_id, params_sent, status_sent, ended_sent, name_sent,
            error, artifacts_sent, linked, final_sent
         FROM mlflow_runs WHERE target = ?1 AND run_id = ?2",
        params![target, run_id],
        |r| {
            Ok(Exported {
                experiment_id: r.get(0)?,
                mlflow_run_id: r.get(1)?,
                params_sent: r.get(2)?,
                status_sent: r.get(3)?,
                ended_sent: r.get(4)?,
                name_sent: r.get(5)?,
                error: r.get(6)?,
                artifacts_sent: r.get(7)?,
                linked: r.get(8)?,
                final_sent: r.get(9)?,
            })
        },
    )
    .optional()
    .map_err(StoreError::sql("read export progress"))
}

/// Records that `run_id` is MLflow run `mlflow_run_id` (nothing else acknowledged yet);
/// `linked`: the training's own run, found rather than created.
pub fn map_run(
    conn: &Connection,
    target: &str,
    run_id: i64,
    experiment_id: &str,
    mlflow_run_id: &str,
    name: &str,
    linked: bool,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO mlflow_runs (target, run_id, experiment_id, mlflow_run_id, name_sent,
            linked, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (target, run_id) DO UPDATE SET experiment_id = excluded.experiment_id,
            mlflow_run_id = excluded.mlflow_run_id, params_sent = 0, status_sent = NULL,
            ended_sent = NULL, name_sent = excluded.name_sent, error = NULL,
            artifacts_sent = NULL, linked = excluded.linked, final_sent = 0,
            updated_at = excluded.updated_at",
        params![
            target,
            run_id,
            experiment_id,
            mlflow_run_id,
            name,
            linked,
            format_ns(now_ns())
        ],
    )
    .map_err(StoreError::sql("record exported run"))?;
    Ok(())
}

pub fn mark_params(conn: &Connection, target: &str, run_id: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE mlflow_runs SET params_sent = 1, updated_at = ?3
         WHERE target = ?1 AND run_id = ?2",
        params![target, run_id, format_ns(now_ns())],
    )
    .map_err(StoreError::sql("record exported params"))?;
    Ok(())
}

/// Records that a run's final validation was logged (or that there is none to log).
pub fn mark_final(conn: &Connection, target: &str, run_id: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE mlflow_runs SET final_sent = 1, updated_at = ?3 WHERE target = ?1 AND run_id = ?2",
        params![target, run_id, format_ns(now_ns())],
    )
    .map_err(StoreError::sql("record exported final validation"))?;
    Ok(())
}

/// The final validation of a run's best.pt (the `validation` event marked `final` after its
/// last epoch and before the container's next run): when, and its context.
pub fn final_validation(
    conn: &Connection,
    run_id: i64,
) -> Result<Option<(String, String)>, StoreError> {
    conn.query_row(
        "SELECT e.ts, e.context FROM runs r JOIN event_log e
            ON e.kind = 'validation' AND e.container = r.container
         WHERE r.run_id = ?1
            AND e.ts >= COALESCE((SELECT max(x.ended_at) FROM epochs x WHERE x.run_id = ?1),
                                 r.started_at)
            AND e.ts < COALESCE((SELECT min(n.started_at) FROM runs n
                                 WHERE n.container = r.container AND n.started_at > r.started_at),
                                '9999')
            AND json_extract(e.context, '$.final') = 1
         ORDER BY e.ts LIMIT 1",
        [run_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map_err(StoreError::sql("read the final validation"))
}

/// Records the artifacts the server acknowledged for a run (JSON object: path -> size).
pub fn mark_artifacts(
    conn: &Connection,
    target: &str,
    run_id: i64,
    sent: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE mlflow_runs SET artifacts_sent = ?3, updated_at = ?4
         WHERE target = ?1 AND run_id = ?2",
        params![target, run_id, sent, format_ns(now_ns())],
    )
    .map_err(StoreError::sql("record exported artifacts"))?;
    Ok(())
}

pub fn mark_status(
    conn: &Connection,
    target: &str,
    run_id: i64,
    status: &str,
    ended_at: Option<&str>,
    name: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE mlflow_runs SET status_sent = ?3, ended_sent = ?4, name_sent = ?5,
            updated_at = ?6
         WHERE target = ?1 AND run_id = ?2",
        params![target, run_id, status, ended_at, name, format_ns(now_ns())],
    )
    .map_err(StoreError::sql("record exported status"))?;
    Ok(())
}

/// Records a permanent refusal of a run's data; the run is not tried again until cleared.
pub fn mark_error(
    conn: &Connection,
    target: &str,
    run_id: i64,
    error: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO mlflow_runs (target, run_id, experiment_id, mlflow_run_id, error, updated_at)
         VALUES (?1, ?2, '', '', ?3, ?4)
         ON CONFLICT (target, run_id) DO UPDATE SET error = excluded.error,
            updated_at = excluded.updated_at",
        params![target, run_id, error, format_ns(now_ns())],
    )
    .map_err(StoreError::sql("record export refusal"))?;
    Ok(())
}

/// Forgets the runs refused on a target, with what was acknowledged of them, so they are
/// looked up on the server and sent again from the start. Returns how many.
pub fn clear_errors(conn: &Connection, target: &str) -> Result<usize, StoreError> {
    conn.execute(
        "DELETE FROM mlflow_epochs WHERE target = ?1 AND run_id IN
            (SELECT run_id FROM mlflow_runs WHERE target = ?1 AND error IS NOT NULL)",
        [target],
    )
    .and_then(|_| {
        conn.execute(
            "DELETE FROM mlflow_runs WHERE target = ?1 AND error IS NOT NULL",
            [target],
        )
    })
    .map_err(StoreError::sql("clear export refusals"))
}

/// The refusals recorded for a target: (run_id, error).
pub fn errors(conn: &Connection, target: &str) -> Result<Vec<(i64, String)>, StoreError> {
    let mut stmt = conn
        .prepare(
            "SELECT run_id, error FROM mlflow_runs WHERE target = ?1 AND error IS NOT NULL
             ORDER BY run_id",
        )
        .map_err(StoreError::sql("list export refusals"))?;
    stmt.query_map([target], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|rows| rows.collect())
        .map_err(StoreError::sql("list export refusals"))
}

/// Forgets what was exported of a run (its MLflow run was deleted on the server).
pub fn forget(conn: &Connection, target: &str, run_id: i64) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM mlflow_epochs WHERE target = ?1 AND run_id = ?2",
        params![target, run_id],
    )
    .and_then(|_| {
        conn.execute(
            "DELETE FROM mlflow_runs WHERE target = ?1 AND run_id = ?2",
            params![target, run_id],
        )
    })
    .map_err(StoreError::sql("forget exported run"))?;
    Ok(())
}

/// The digests of a run's acknowledged epochs, by epoch.
pub fn epoch_digests(
    conn: &Connection,
    target: &str,
    run_id: i64,
) -> Result<HashMap<i64, i64>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT epoch, digest FROM mlflow_epochs WHERE target = ?1 AND run_id = ?2")
        .map_err(StoreError::sql("read exported epochs"))?;
    stmt.query_map(params![target, run_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|rows| rows.collect())
        .map_err(StoreError::sql("read exported epochs"))
}

/// Records acknowledged epochs (epoch, digest) of a run (the caller holds the transaction).
pub fn mark_epochs(
    conn: &Connection,
    target: &str,
    run_id: i64,
    epochs: &[(i64, i64)],
) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO mlflow_epochs (target, run_id, epoch, digest) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (target, run_id, epoch) DO UPDATE SET digest = excluded.digest",
        )
        .map_err(StoreError::sql("record exported epochs"))?;
    for (epoch, digest) in epochs {
        stmt.execute(params![target, run_id, epoch, digest])
            .map_err(StoreError::sql("record exported epochs"))?;
    }
    Ok(())
}
