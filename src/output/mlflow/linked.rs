//! A training that logs itself: Ultralytics' own MLflow callback (on whenever the `mlflow`
//! package is installed) prints `MLflow: logging run_id(<id>) to <uri>`. When that run is on
//! this export's tracking server, trainwatch creates no second run: it tags the training's run
//! with where it comes from, and ends it when the training died (the callback ends a run only
//! when training ends normally, so a crashed training's run stays RUNNING forever). Its
//! params, metrics and artifacts are the callback's own.

use reqwest::Method;
use serde_json::json;

use super::{Exporter, MAX_TAG_VALUE, Summary, clip, end_tags, mlflow_status, ms, run_key};
use crate::derive::RunStatus;
use crate::error::MlflowError;
use crate::store::OutboxChange;
use crate::store::mlflow::{ExportRun, Exported};

impl Exporter {
    /// The training's own MLflow run, when its log named one that this tracking server has
    /// (run ids are unique, whatever host name the training used for the server): tagged,
    /// and its id. `None`: no such line, another server (a local `runs/mlflow` store), or a
    /// deleted run.
    pub(super) async fn own_run(
        &self,
        run: &ExportRun,
        s: &mut Summary,
    ) -> Result<Option<String>, MlflowError> {
        let Some((id, uri)) = &run.own_mlflow else {
            return Ok(None);
        };
        if !(uri.starts_with("http://") || uri.starts_with("https://")) {
            return Ok(None);
        }
        let found = match self
            .call(Method::GET, "runs/get", &[("run_id", id)], None, s)
            .await
        {
            Ok(v) => v,
            Err(e) if !e.transient() => return Ok(None),
            Err(e) => return Err(e),
        };
        if found["run"]["info"]["lifecycle_stage"] == "deleted" {
            return Ok(None);
        }
        let tags: Vec<_> = [
            ("host", self.host.clone()),
            ("container", run.container.clone()),
            ("trainwatch.run_id", run.run_id.to_string()),
            ("trainwatch.run_key", run_key(run)),
            ("trainwatch.linked", "true".into()),
        ]
        .into_iter()
        .map(|(k, v)| json!({ "key": k, "value": clip(&v, MAX_TAG_VALUE) }))
        .collect();
        self.post("runs/log-batch", json!({ "run_id": id, "tags": tags }), s)
            .await?;
        s.runs_linked += 1;
        tracing::info!(
            run_id = run.run_id,
            mlflow_run_id = %id,
            "The training logs itself to this MLflow server; its run is linked, not created again."
        );
        Ok(Some(id.clone()))
    }

    /// What trainwatch adds to a linked run: its status tags, and its end when the training
    /// failed or was interrupted.
    pub(super) async fn send_linked(
        &self,
        run: &ExportRun,
        exported: &Exported,
        s: &mut Summary,
    ) -> Result<(), MlflowError> {
        let mlflow_run = exported.mlflow_run_id.as_str();
        if !exported.params_sent {
            // The callback logged them.
            self.writer
                .record(OutboxChange::MlflowParams {
                    target: self.target.clone(),
                    run_id: run.run_id,
                })
                .await?;
        }
        let ended = if run.status.is_running() {
            None
        } else {
            run.ended_at.clone()
        };
        if exported.status_sent.as_deref() == Some(run.status.as_str())
            && exported.ended_sent == ended
        {
            return Ok(());
        }
        self.post(
            "runs/log-batch",
            json!({ "run_id": mlflow_run, "tags": end_tags(run) }),
            s,
        )
        .await?;
        if matches!(run.status, RunStatus::Failed | RunStatus::Interrupted) {
            let mut update = json!({ "run_id": mlflow_run, "status": mlflow_status(run.status) });
            if let Some(e) = &ended {
                update["end_time"] = json!(ms(e));
            }
            self.post("runs/update", update, s).await?;
            s.runs_updated += 1;
        }
        self.writer
            .record(OutboxChange::MlflowStatus {
                target: self.target.clone(),
                run_id: run.run_id,
                status: run.status.as_str().to_string(),
                ended_at: ended,
                name: exported.name_sent.clone().unwrap_or_default(),
            })
            .await?;
        Ok(())
    }
}
