//! What an output's peer acknowledged, recorded by the writer: a notification delivered,
//! failed or given up (table `outbox`), and the MLflow export's progress (`mlflow_runs`,
//! `mlflow_epochs`). The output tasks read their queues on read-only connections and send
//! these changes to the writer ([`super::WriterSender::record`]), which commits each in a
//! transaction of its own between batches and answers once it is committed: the next read of
//! the queue then shows it, so nothing acknowledged is sent again.

use rusqlite::Connection;

use super::{alerts, mlflow};
use crate::error::StoreError;

/// One outbox change. `target` is an MLflow export target (tracking URI and experiment).
#[derive(Clone, Debug, PartialEq)]
pub enum OutboxChange {
    /// A notification (outbox row) was delivered; its alert is marked notified.
    Delivered { id: i64, alert_id: i64, at: i64 },
    /// A delivery failed; it is tried again at `retry_at`.
    Failed {
        id: i64,
        error: String,
        retry_at: i64,
    },
    /// The receiver refused the notification for good.
    Abandoned { id: i64, error: String, at: i64 },
    /// A training run is this MLflow run (nothing else of it acknowledged yet).
    MlflowRun {
        target: String,
        run_id: i64,
        experiment_id: String,
        mlflow_run_id: String,
        name: String,
        /// The training's own MLflow run (its callback's), found and linked.
        linked: bool,
    },
    /// A run's artifacts were acknowledged (JSON object: path -> size).
    MlflowArtifacts {
        target: String,
        run_id: i64,
        sent: String,
    },
    /// A run's final validation was logged (or there is none to log).
    MlflowFinal { target: String, run_id: i64 },
    /// A run's parameters were acknowledged.
    MlflowParams { target: String, run_id: i64 },
    /// A run's status, end and name were acknowledged.
    MlflowStatus {
        target: String,
        run_id: i64,
        status: String,
        ended_at: Option<String>,
        name: String,
    },
    /// Epochs (epoch, digest) of a run were acknowledged.
    MlflowEpochs {
        target: String,
        run_id: i64,
        epochs: Vec<(i64, i64)>,
    },
    /// The server refused a run for good.
    MlflowRefused {
        target: String,
        run_id: i64,
        error: String,
    },
    /// The refusals of a target are forgotten (to send those runs again).
    MlflowClearRefused { target: String },
    /// What was exported of a run is forgotten (its MLflow run is gone).
    MlflowForget { target: String, run_id: i64 },
}

impl OutboxChange {
    /// Applies the change on `conn` (the caller holds the transaction). Returns the rows it
    /// concerns where that is asked for (the refusals cleared), else 0.
    pub fn apply(&self, conn: &Connection) -> Result<usize, StoreError> {
        use OutboxChange::*;
        match self {
            Delivered { id, alert_id, at } => alerts::mark_delivered(conn, *id, *alert_id, *at)?,
            Failed {
                id,
                error,
                retry_at,
            } => alerts::mark_failed(conn, *id, error, *retry_at)?,
            Abandoned { id, error, at } => alerts::mark_abandoned(conn, *id, error, *at)?,
            MlflowRun {
                target,
                run_id,
                experiment_id,
                mlflow_run_id,
                name,
                linked,
            } => mlflow::map_run(
                conn,
                target,
                *run_id,
                experiment_id,
                mlflow_run_id,
                name,
                *linked,
            )?,
            MlflowArtifacts {
                target,
                run_id,
                sent,
            } => mlflow::mark_artifacts(conn, target, *run_id, sent)?,
            MlflowParams { target, run_id } => mlflow::mark_params(conn, target, *run_id)?,
            MlflowFinal { target, run_id } => mlflow::mark_final(conn, target, *run_id)?,
            MlflowStatus {
                target,
                run_id,
                status,
                ended_at,
                name,
            } => mlflow::mark_status(conn, target, *run_id, status, ended_at.as_deref(), name)?,
            MlflowEpochs {
                target,
                run_id,
                epochs,
            } => mlflow::mark_epochs(conn, target, *run_id, epochs)?,
            MlflowRefused {
                target,
                run_id,
                error,
            } => mlflow::mark_error(conn, target, *run_id, error)?,
            MlflowClearRefused { target } => return mlflow::clear_errors(conn, target),
            MlflowForget { target, run_id } => mlflow::forget(conn, target, *run_id)?,
        }
        Ok(0)
    }
}
