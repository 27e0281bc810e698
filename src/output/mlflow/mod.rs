//! Training history to an MLflow tracking server, through its REST API
//! (`/api/2.0/mlflow/...`): every training run becomes an MLflow run of one experiment, with
//! its settings as params, its epochs as metric points (`step` = epoch) and its status and times.
//!
//! Delivery is an outbox like the alerts': the store keeps what the server acknowledged
//! ([`crate::store::mlflow`]) and each pass sends only the difference, after which it is
//! recorded. A server that is down or restarts loses nothing (the next pass sends it), and
//! nothing is counted twice: a run is found again by its `trainwatch.run_key` tag before one is
//! created, params are immutable and sent with their printed values, and a metric point sent
//! again is the same (key, value, timestamp, step), which MLflow's SQL store keeps once.
//!
//! What is sent of a run:
//! - `runs/create`: named from its `save_dir` (`runs/detect/train3` -> `train3`), started at its
//!   first line, tagged `host`, `container`, `model`, `ultralytics_version`, `save_dir`,
//!   `trainwatch.run_id`, `trainwatch.run_key`.
//! - `runs/log-batch` of params: every `key=value` of the trainer's settings line as printed
//!   (redacted), at most 100 per request (MLflow's limit).
//! - `runs/log-batch` of metrics: results.csv's columns ([`crate::output::results`]) with MLflow's
//!   allowed names (the parentheses removed, as Ultralytics' own MLflow callback does:
//!   `metrics/mAP50-95(B)` -> `metrics/mAP50-95B`), `step` = epoch, timestamp = the epoch's
//!   end; at most 1000 per request. An epoch is sent once it is settled: validated, followed by
//!   another, or its run has ended; an epoch whose values change later (a resumed run trains
//!   it again) is sent again.
//! - `runs/update`: status (`running` -> RUNNING, `completed` and `early_stopped` ->
//!   FINISHED, `failed` -> FAILED, `interrupted` -> KILLED), `end_time`, and tags
//!   `trainwatch.status`, `best_epoch`, and `failure` (why a failed or interrupted run ended).
//!
//! A run the server refuses (HTTP 4xx other than 408/429) is recorded with the refusal and
//! left until `trainwatch export mlflow --retry-failed`; every other failure ends the pass and
//! is retried with backoff.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::Method;
use rusqlite::types::Value as Cell;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::error::{MlflowError, OutputError, StoreError};
use crate::store::mlflow::{self as store, ExportRun, Exported};
use crate::store::{OutboxChange, WriterSender};
use crate::telemetry::events::{InternalEvent, MlflowPointsExported, MlflowRequestFailed};
use crate::time::{Age, parse_rfc3339};

mod artifacts;
mod final_val;
mod linked;

/// MLflow's `runs/log-batch` limits: 1000 metrics, 100 params, 100 tags per request.
const MAX_METRICS: usize = 1000;
const MAX_PARAMS: usize = 100;
/// MLflow's limits on a param's key and value, and a tag's value (in characters).
const MAX_KEY: usize = 250;
const MAX_PARAM_VALUE: usize = 6000;
const MAX_TAG_VALUE: usize = 5000;

/// `[mlflow]` in the config. Export is on when `tracking_uri` is set.
#[derive(Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlflowConfig {
    /// The tracking server, `http://mlflow:5000` (its REST API is below `/api/2.0/mlflow/`).
    pub tracking_uri: Option<String>,
    /// The experiment the runs go to; created if missing.
    pub experiment: String,
    /// Sent as `Authorization: Bearer ...`; prefer `token_env`.
    #[serde(serialize_with = "crate::redact::serialize_secret")]
    pub token: Option<String>,
    /// The name of an environment variable holding the token (default `MLFLOW_TRACKING_TOKEN`,
    /// the MLflow client's own).
    pub token_env: Option<String>,
    /// HTTP basic auth (MLflow's `--app-name basic-auth`): the user, with `password_env`
    /// (default `MLFLOW_TRACKING_PASSWORD`).
    pub username: Option<String>,
    pub password_env: Option<String>,
    /// The `host` tag of every run (default: this host's name).
    pub host: Option<String>,
    /// How often `watch` sends what is new.
    pub interval: Age,
    /// Per-request timeout.
    pub timeout: Age,
    /// The `step` of an epoch's metric points: `epoch` (as printed, from 1) or `zero_based`
    /// (from 0, as Ultralytics' own MLflow callback logs them, so the two overlay).
    pub step: Step,
    /// Upload an ended run's `weights/`, `args.yaml`, `results.csv` and plots as its
    /// artifacts (through the tracking server's artifact proxy, `mlflow server
    /// --serve-artifacts`, the default since MLflow 2).
    pub artifacts: bool,
}

/// The `step` of an epoch's metric points (`[mlflow] step`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// The epoch as printed, `1..=N`.
    #[default]
    Epoch,
    /// The epoch from 0, `0..N`, as Ultralytics' MLflow callback logs it.
    ZeroBased,
}

impl Step {
    fn of(self, epoch: i64) -> i64 {
        match self {
            Step::Epoch => epoch,
            Step::ZeroBased => epoch - 1,
        }
    }
}

impl Default for MlflowConfig {
    fn default() -> Self {
        MlflowConfig {
            tracking_uri: None,
            experiment: "trainwatch".into(),
            token: None,
            token_env: None,
            username: None,
            password_env: None,
            host: None,
            interval: Age::secs(30),
            timeout: Age::secs(30),
            step: Step::Epoch,
            artifacts: true,
        }
    }
}

// Never print the token.
impl std::fmt::Debug for MlflowConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlflowConfig")
            .field("tracking_uri", &self.tracking_uri)
            .field("experiment", &self.experiment)
            .finish_non_exhaustive()
    }
}

impl MlflowConfig {
    pub fn enabled(&self) -> bool {
        self.tracking_uri.is_some()
    }

    /// What is wrong with this section, if anything (checked when the config loads).
    pub fn problem(&self) -> Option<String> {
        let uri = self.tracking_uri.as_deref()?;
        if self.experiment.trim().is_empty() {
            return Some("mlflow.experiment must not be empty".into());
        }
        match reqwest::Url::parse(uri) {
            Ok(u) if !matches!(u.scheme(), "http" | "https") || u.host().is_none() => Some(format!(
                "mlflow.tracking_uri must be http:// or https:// with a host (got scheme {:?})",
                u.scheme()
            )),
            Ok(u) if !u.username().is_empty() || u.password().is_some() => Some(
                "mlflow.tracking_uri must not hold credentials: use token_env, or username and password_env".into(),
            ),
            Ok(_) => None,
            // Not repeated: it may hold credentials.
            Err(e) => Some(format!("mlflow.tracking_uri is not a URL ({e})")),
        }
    }

    /// The key of this export's progress in the store: the server and the experiment.
    pub fn target(&self) -> String {
        format!(
            "{}#{}",
            self.tracking_uri
                .as_deref()
                .unwrap_or_default()
                .trim_end_matches('/'),
            self.experiment
        )
    }

    fn token(&self) -> Option<String> {
        self.token.clone().or_else(|| {
            std::env::var(self.token_env.as_deref().unwrap_or("MLFLOW_TRACKING_TOKEN"))
                .ok()
                .filter(|t| !t.is_empty())
        })
    }

    fn basic(&self) -> Option<(String, String)> {
        let user = self
            .username
            .clone()
            .or_else(|| std::env::var("MLFLOW_TRACKING_USERNAME").ok())?;
        let password = std::env::var(
            self.password_env
                .as_deref()
                .unwrap_or("MLFLOW_TRACKING_PASSWORD"),
        )
        .unwrap_or_default();
        Some((user, password))
    }
}

/// What one or more passes sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub runs_created: u64,
    pub runs_updated: u64,
    pub params: u64,
    pub points: u64,
    pub requests: u64,
    /// Artifact files uploaded, and their bytes.
    pub artifacts: u64,
    pub artifact_bytes: u64,
    /// Runs found to be logged by the training's own MLflow callback, linked.
    pub runs_linked: u64,
    /// Runs the server refused in these passes: (run_id, why).
    pub refused: Vec<(i64, String)>,
}

impl Summary {
    pub fn sent_anything(&self) -> bool {
        self.runs_created
            + self.runs_updated
            + self.params
            + self.points
            + self.artifacts
            + self.runs_linked
            > 0
    }
}

/// The exporter: one per target, used by `watch` (every interval) and `export mlflow`.
pub struct Exporter {
    cfg: MlflowConfig,
    api: String,
    target: String,
    host: String,
    client: reqwest::Client,
    /// Reads what is stored and what the server has acknowledged.
    conn: crate::store::AsyncConn,
    /// Records what the server acknowledged.
    writer: WriterSender,
    experiment_id: Mutex<Option<String>>,
}

impl Exporter {
    pub fn new(cfg: MlflowConfig, db: PathBuf, writer: WriterSender) -> Result<Self, OutputError> {
        let conn = crate::store::AsyncConn::open_ro(&db)?;
        // Never a redirect: a followed 302 turns a POST into a GET without its body.
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("trainwatch/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| OutputError::Http(e.to_string()))?;
        let api = format!(
            "{}/api/2.0/mlflow/",
            cfg.tracking_uri
                .as_deref()
                .unwrap_or_default()
                .trim_end_matches('/')
        );
        Ok(Exporter {
            target: cfg.target(),
            host: cfg.host.clone().unwrap_or_else(crate::sys::hostname),
            cfg,
            api,
            client,
            conn,
            writer,
            experiment_id: Mutex::new(None),
        })
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    /// A request to `url` with this export's timeout and credentials.
    fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        let req = self
            .client
            .request(method, url)
            .timeout(self.cfg.timeout.as_duration());
        if let Some(t) = self.cfg.token() {
            req.bearer_auth(t)
        } else if let Some((u, p)) = self.cfg.basic() {
            req.basic_auth(u, Some(p))
        } else {
            req
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        s: &mut Summary,
    ) -> Result<Value, MlflowError> {
        s.requests += 1;
        let mut req = self.request(method, &format!("{}{path}", self.api));
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(b) = body {
            // MLflow refuses a body without `Content-Type: application/json`.
            req = req.json(b);
        }
        answer(req.send().await).await
    }

    async fn post(&self, path: &str, body: Value, s: &mut Summary) -> Result<Value, MlflowError> {
        self.call(Method::POST, path, &[], Some(&body), s).await
    }

    /// The experiment's id, created if missing.
    async fn experiment(&self, s: &mut Summary) -> Result<String, MlflowError> {
        if let Some(id) = self.experiment_id.lock().unwrap().clone() {
            return Ok(id);
        }
        let name = self.cfg.experiment.as_str();
        let q = [("experiment_name", name)];
        let found = match self
            .call(Method::GET, "experiments/get-by-name", &q, None, s)
            .await
        {
            Ok(v) => v,
            Err(e) if e.not_found() => {
                match self
                    .post("experiments/create", json!({ "name": name }), s)
                    .await
                {
                    Ok(v) => {
                        tracing::info!(experiment = name, "MLflow experiment created.");
                        json!({ "experiment": { "experiment_id": v["experiment_id"] } })
                    }
                    // Created by another exporter meanwhile.
                    Err(MlflowError::Refused { code, .. }) if code == "RESOURCE_ALREADY_EXISTS" => {
                        self.call(Method::GET, "experiments/get-by-name", &q, None, s)
                            .await?
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let e = &found["experiment"];
        if e["lifecycle_stage"] == "deleted" {
            return Err(MlflowError::Refused {
                status: 400,
                code: "EXPERIMENT_DELETED".into(),
                message: format!(
                    "experiment {name:?} is deleted on the tracking server: restore it, or set another mlflow.experiment"
                ),
            });
        }
        let id = e["experiment_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| MlflowError::Refused {
                status: 200,
                code: "BAD_RESPONSE".into(),
                message: "no experiment_id in the answer".into(),
            })?;
        *self.experiment_id.lock().unwrap() = Some(id.clone());
        Ok(id)
    }

    /// Sends everything the server lacks. A transient failure ends the pass (what was
    /// acknowledged before it is kept); a run refused for good is recorded and skipped.
    pub async fn pass(&self, s: &mut Summary) -> Result<(), MlflowError> {
        let experiment = self.experiment(s).await?;
        let target = self.target.clone();
        let due = self.conn.call(move |c| store::due_runs(c, &target)).await?;
        for run_id in due {
            if let Err(e) = self.export_run(run_id, &experiment, s).await {
                if e.transient() {
                    return Err(e);
                }
                tracing::warn!(
                    run_id,
                    error = %e,
                    "The MLflow tracking server refused a run; it is not sent again until `trainwatch export mlflow --retry-failed`."
                );
                let error = e.to_string();
                s.refused.push((run_id, error.clone()));
                self.writer
                    .record(OutboxChange::MlflowRefused {
                        target: self.target.clone(),
                        run_id,
                        error,
                    })
                    .await?;
            }
        }
        Ok(())
    }

    async fn export_run(
        &self,
        run_id: i64,
        experiment_id: &str,
        s: &mut Summary,
    ) -> Result<(), MlflowError> {
        // A run deleted on the server is created again, once per pass.
        for attempt in 0..2 {
            let Some(run) = self.conn.call(move |c| store::run(c, run_id)).await? else {
                return Ok(()); // pruned meanwhile
            };
            let target = self.target.clone();
            let mut exported = self
                .conn
                .call(move |c| store::exported(c, &target, run_id))
                .await?;
            // A mapping into another experiment (deleted and made again under the same name)
            // is of no use. (A linked run is the training's own, in whatever experiment it
            // chose; its mapping records the export's.)
            if exported
                .as_ref()
                .is_some_and(|e| e.experiment_id != experiment_id || e.mlflow_run_id.is_empty())
            {
                self.forget(run_id).await?;
                exported = None;
            }
            let name = run_name(&run);
            let exported = match exported {
                Some(e) => e,
                // A run is created once it has an epoch or has ended: by then its log has said
                // whether the training logs itself (`MLflow: logging run_id(...)` comes before
                // the first epoch), and its parameters are the resolved ones.
                None if run.status.is_running() && run.epochs_done == 0 => return Ok(()),
                None => {
                    let (id, linked) = match self.own_run(&run, s).await? {
                        Some(id) => (id, true),
                        None => (
                            self.find_or_create(&run, experiment_id, &name, s).await?,
                            false,
                        ),
                    };
                    self.writer
                        .record(OutboxChange::MlflowRun {
                            target: self.target.clone(),
                            run_id,
                            experiment_id: experiment_id.to_string(),
                            mlflow_run_id: id.clone(),
                            name: name.clone(),
                            linked,
                        })
                        .await?;
                    Exported {
                        experiment_id: experiment_id.to_string(),
                        mlflow_run_id: id,
                        name_sent: Some(name.clone()),
                        linked,
                        ..Exported::default()
                    }
                }
            };
            let sent = if exported.linked {
                self.send_linked(&run, &exported, s).await
            } else {
                self.send_run(&run, &exported, &name, s).await
            };
            match sent {
                Err(e) if e.not_found() && attempt == 0 => {
                    tracing::info!(
                        run_id,
                        "The run's MLflow run is gone from the tracking server; creating it again."
                    );
                    self.forget(run_id).await?;
                }
                other => return other,
            }
        }
        Ok(())
    }

    async fn forget(&self, run_id: i64) -> Result<(), StoreError> {
        self.writer
            .record(OutboxChange::MlflowForget {
                target: self.target.clone(),
                run_id,
            })
            .await
            .map(drop)
    }

    /// The MLflow run of `run`: the one tagged with its key (created by an earlier pass whose
    /// record was lost), else a new one.
    async fn find_or_create(
        &self,
        run: &ExportRun,
        experiment_id: &str,
        name: &str,
        s: &mut Summary,
    ) -> Result<String, MlflowError> {
        let key = run_key(run);
        let found = self
            .post(
                "runs/search",
                json!({
                    "experiment_ids": [experiment_id],
                    "filter": format!("tags.`trainwatch.run_key` = '{key}'"),
                    "max_results": 1,
                }),
                s,
            )
            .await?;
        if let Some(id) = found["runs"][0]["info"]["run_id"].as_str() {
            return Ok(id.to_string());
        }
        let mut tags = vec![
            ("host", Some(self.host.clone())),
            ("container", Some(run.container.clone())),
            ("model", run.model.clone()),
            ("ultralytics_version", run.ultralytics_version.clone()),
            ("save_dir", run.save_dir.clone()),
            ("trainwatch.run_id", Some(run.run_id.to_string())),
            ("trainwatch.run_key", Some(key)),
        ];
        if let Some(n) = run.epochs_total {
            tags.push(("epochs_total", Some(n.to_string())));
        }
        // The training logs itself elsewhere (its callback's own tracking URI): the link.
        if let Some((id, uri)) = &run.own_mlflow {
            tags.push(("ultralytics.mlflow_run_id", Some(id.clone())));
            tags.push(("ultralytics.mlflow_uri", Some(uri.clone())));
        }
        let tags: Vec<Value> = tags
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| json!({ "key": k, "value": clip(&v, MAX_TAG_VALUE) })))
            .collect();
        let created = self
            .post(
                "runs/create",
                json!({
                    "experiment_id": experiment_id,
                    "run_name": name,
                    "start_time": ms(&run.started_at),
                    "tags": tags,
                }),
                s,
            )
            .await?;
        s.runs_created += 1;
        tracing::info!(run_id = run.run_id, name, "MLflow run created.");
        created["run"]["info"]["run_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| MlflowError::Refused {
                status: 200,
                code: "BAD_RESPONSE".into(),
                message: "no run_id in the answer".into(),
            })
    }

    async fn send_run(
        &self,
        run: &ExportRun,
        exported: &Exported,
        name: &str,
        s: &mut Summary,
    ) -> Result<(), MlflowError> {
        let run_id = run.run_id;
        let mlflow_run = exported.mlflow_run_id.as_str();
        if !exported.params_sent {
            self.send_params(run, mlflow_run, s).await?;
        }

        // The epochs the server lacks, in batches within MLflow's limit.
        let target = self.target.clone();
        let folder = run.folder.clone();
        let running = run.status.is_running();
        let (csv, sent) = self
            .conn
            .call(move |c| {
                let csv =
                    crate::output::results::for_export(c, run_id, folder.as_deref(), running)?;
                Ok((csv, store::epoch_digests(c, &target, run_id)?))
            })
            .await?;
        let epochs = epoch_points(&csv, run.status.is_running(), ms(&run.started_at));
        let mut batch: Vec<Value> = Vec::new();
        let mut marks: Vec<(i64, i64)> = Vec::new();
        for e in epochs {
            if sent.get(&e.epoch) == Some(&e.digest) {
                continue;
            }
            if batch.len() + e.points.len() > MAX_METRICS {
                self.send_points(run_id, mlflow_run, &mut batch, &mut marks, s)
                    .await?;
            }
            for (key, value) in &e.points {
                batch.push(json!({
                    "key": key,
                    "value": metric_value(*value),
                    "timestamp": e.timestamp,
                    "step": self.cfg.step.of(e.epoch),
                }));
            }
            marks.push((e.epoch, e.digest));
        }
        self.send_points(run_id, mlflow_run, &mut batch, &mut marks, s)
            .await?;
        if !exported.final_sent
            && matches!(
                run.status,
                crate::derive::RunStatus::Completed | crate::derive::RunStatus::EarlyStopped
            )
        {
            self.send_final(run, mlflow_run, &csv.table.columns, s)
                .await?;
        }

        let ended = if run.status.is_running() {
            None
        } else {
            run.ended_at.clone()
        };
        if exported.status_sent.as_deref() != Some(run.status.as_str())
            || exported.ended_sent != ended
            || exported.name_sent.as_deref() != Some(name)
        {
            let tags = end_tags(run);
            self.post(
                "runs/log-batch",
                json!({ "run_id": mlflow_run, "tags": tags }),
                s,
            )
            .await?;
            let mut update = json!({
                "run_id": mlflow_run,
                "status": mlflow_status(run.status),
                "run_name": name,
            });
            if let Some(e) = &ended {
                update["end_time"] = json!(ms(e));
            }
            self.post("runs/update", update, s).await?;
            s.runs_updated += 1;
            self.writer
                .record(OutboxChange::MlflowStatus {
                    target: self.target.clone(),
                    run_id,
                    status: run.status.as_str().to_string(),
                    ended_at: ended,
                    name: name.to_string(),
                })
                .await?;
        }
        if !run.status.is_running() && exported.artifacts_sent.is_none() && run.folder.is_some() {
            self.send_artifacts(run, exported, s).await?;
        }
        Ok(())
    }

    /// Sends the run's params within MLflow's limit per request, and records them.
    async fn send_params(
        &self,
        run: &ExportRun,
        mlflow_run: &str,
        s: &mut Summary,
    ) -> Result<(), MlflowError> {
        let run_id = run.run_id;
        let params = params(run.params.as_deref());
        for chunk in params.chunks(MAX_PARAMS) {
            let body: Vec<Value> = chunk
                .iter()
                .map(|(k, v)| json!({ "key": k, "value": v }))
                .collect();
            self.post(
                "runs/log-batch",
                json!({ "run_id": mlflow_run, "params": body }),
                s,
            )
            .await?;
            s.params += chunk.len() as u64;
        }
        self.writer
            .record(OutboxChange::MlflowParams {
                target: self.target.clone(),
                run_id,
            })
            .await?;
        Ok(())
    }

    /// Sends one batch of metric points and records their epochs as acknowledged.
    async fn send_points(
        &self,
        run_id: i64,
        mlflow_run: &str,
        batch: &mut Vec<Value>,
        marks: &mut Vec<(i64, i64)>,
        s: &mut Summary,
    ) -> Result<(), MlflowError> {
        if marks.is_empty() {
            return Ok(());
        }
        let points = std::mem::take(batch);
        let n = points.len() as u64;
        if n > 0 {
            self.post(
                "runs/log-batch",
                json!({ "run_id": mlflow_run, "metrics": points }),
                s,
            )
            .await?;
            s.points += n;
            MlflowPointsExported(n).emit();
        }
        self.writer
            .record(OutboxChange::MlflowEpochs {
                target: self.target.clone(),
                run_id,
                epochs: std::mem::take(marks),
            })
            .await?;
        Ok(())
    }

    /// Clears the recorded refusals, so those runs are sent again. Returns how many.
    pub async fn retry_refused(&self) -> Result<usize, StoreError> {
        self.writer
            .record(OutboxChange::MlflowClearRefused {
                target: self.target.clone(),
            })
            .await
    }

    /// The refusals recorded for this target: (run_id, why).
    pub async fn refused(&self) -> Result<Vec<(i64, String)>, StoreError> {
        let target = self.target.clone();
        self.conn.call(move |c| store::errors(c, &target)).await
    }

    /// `watch`'s task: a pass every `interval`, retried with backoff after a failure, until
    /// `shutdown`. A pass cut short by shutdown loses nothing: what was not recorded as
    /// acknowledged is sent again.
    pub async fn run(self, shutdown: CancellationToken) {
        let interval = self.cfg.interval.as_duration().max(Duration::from_secs(1));
        let mut failures = 0u32;
        tracing::info!(
            tracking_uri = self.cfg.tracking_uri.as_deref().unwrap_or_default(),
            experiment = %self.cfg.experiment,
            "Exporting training history to MLflow."
        );
        loop {
            let mut s = Summary::default();
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.pass(&mut s) => r,
            };
            let wait = match result {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!("The MLflow tracking server takes the export again.");
                    }
                    failures = 0;
                    if s.sent_anything() {
                        tracing::info!(
                            runs_created = s.runs_created,
                            runs_updated = s.runs_updated,
                            points = s.points,
                            "Training history exported to MLflow."
                        );
                    }
                    interval
                }
                Err(e) if e.transient() => {
                    tracing::warn!(error = %e, attempt = failures + 1, "MLflow export failed; retrying.");
                    failures += 1;
                    crate::backoff::DELIVERY.delay(failures - 1)
                }
                Err(e) => {
                    tracing::error!(error = %e, "MLflow export refused.");
                    // Checked again in a while: the experiment may be restored.
                    *self.experiment_id.lock().unwrap() = None;
                    interval.max(Duration::from_secs(300))
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// The run's MLflow name: the last part of its save_dir (`runs/detect/train3` -> `train3`),
/// else its container and start.
pub fn run_name(run: &ExportRun) -> String {
    run.save_dir
        .as_deref()
        .map(|d| d.trim_end_matches(['/', '\\']))
        .and_then(|d| d.rsplit(['/', '\\']).next())
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| {
            format!(
                "{}-{}",
                run.container,
                &run.started_at[..16.min(run.started_at.len())]
            )
        })
}

/// The run's identity on the server (tag `trainwatch.run_key`): its container and the
/// position of its first line, the natural key the store keeps it by.
pub fn run_key(run: &ExportRun) -> String {
    let key = format!(
        "{}\0{}\0{}\0{}",
        run.container, run.start_stream, run.start_key_ts, run.start_seq
    );
    format!("{:016x}", crate::hash::fnv1a(key.as_bytes()))
}

pub fn mlflow_status(status: crate::derive::RunStatus) -> &'static str {
    use crate::derive::RunStatus::*;
    match status {
        Running => "RUNNING",
        Completed | EarlyStopped => "FINISHED",
        Failed => "FAILED",
        Interrupted => "KILLED",
    }
}

/// A settings JSON object as params: every key and value as printed, within MLflow's sizes.
fn params(json: Option<&str>) -> Vec<(String, String)> {
    let Some(Ok(Value::Object(m))) = json.map(serde_json::from_str::<Value>) else {
        return Vec::new();
    };
    m.into_iter()
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (
                clip(&k, MAX_KEY).to_string(),
                clip(&v, MAX_PARAM_VALUE).to_string(),
            )
        })
        .collect()
}

/// One epoch's metric points.
#[derive(Debug, PartialEq)]
pub struct EpochPoints {
    pub epoch: i64,
    /// Milliseconds since the epoch (Unix): the epoch's end.
    pub timestamp: i64,
    pub points: Vec<(String, f64)>,
    /// What was sent of it: another digest means other values, sent again.
    pub digest: i64,
}

/// The settled epochs of a results.csv table as metric points: all of them when the run has
/// ended, else those validated or followed by another.
pub fn epoch_points(
    csv: &crate::output::results::ResultsCsv,
    running: bool,
    fallback_ts: i64,
) -> Vec<EpochPoints> {
    let cols = &csv.table.columns;
    let n = csv.table.rows.len();
    let mut out = Vec::with_capacity(n);
    for (i, row) in csv.table.rows.iter().enumerate() {
        let Some(epoch) = cell_number(&row[0]).map(|e| e as i64) else {
            continue;
        };
        let mut points = Vec::new();
        let mut validated = false;
        // Not `time`: Ultralytics' callback does not log it (the points' timestamps carry it).
        for (c, v) in cols.iter().zip(row).skip(1) {
            if c == "time" {
                continue;
            }
            if let Some(x) = cell_number(v) {
                validated |= c.starts_with("metrics/");
                points.push((metric_name(c), x));
            }
        }
        if running && i + 1 == n && !validated {
            continue;
        }
        let timestamp = csv.ended_at[i].map_or(fallback_ts, |t| t.div_euclid(1_000_000));
        let mut bytes = Vec::with_capacity(points.len() * 32 + 8);
        for (k, v) in &points {
            bytes.extend_from_slice(k.as_bytes());
            bytes.push(0);
            bytes.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        bytes.extend_from_slice(&timestamp.to_le_bytes());
        out.push(EpochPoints {
            epoch,
            timestamp,
            points,
            digest: crate::hash::fnv1a(&bytes) as i64,
        });
    }
    out
}

/// A results.csv column as an MLflow metric name: MLflow allows letters, digits, `_ - . : /`
/// and spaces, so the parentheses go (`metrics/mAP50-95(B)` -> `metrics/mAP50-95B`), as in
/// Ultralytics' own MLflow callback; anything else not allowed becomes `_`.
pub fn metric_name(column: &str) -> String {
    column
        .chars()
        .filter(|c| !matches!(c, '(' | ')'))
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ' | ':' | '/') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A results.csv cell as a number: NaN and infinities are kept as the text `nan`/`inf`.
fn cell_number(v: &Cell) -> Option<f64> {
    match v {
        Cell::Real(f) => Some(*f),
        Cell::Integer(i) => Some(*i as f64),
        Cell::Text(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
}

/// A metric value in MLflow's JSON: non-finite values as protobuf's JSON names them (the
/// server keeps NaN, and stores infinities as the largest double).
fn metric_value(v: f64) -> Value {
    if v.is_nan() {
        json!("NaN")
    } else if v == f64::INFINITY {
        json!("Infinity")
    } else if v == f64::NEG_INFINITY {
        json!("-Infinity")
    } else {
        json!(v)
    }
}

/// The server's answer as JSON, or why there is none: no answer, or a status other than 2xx
/// with MLflow's `error_code` and `message`.
async fn answer(resp: Result<reqwest::Response, reqwest::Error>) -> Result<Value, MlflowError> {
    let failed = |e: reqwest::Error| {
        MlflowRequestFailed.emit();
        MlflowError::Unreachable(with_causes(&e.without_url()))
    };
    let resp = resp.map_err(failed)?;
    let status = resp.status();
    let text = resp.text().await.map_err(failed)?;
    if status.is_success() {
        return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
    }
    MlflowRequestFailed.emit();
    let v: Value = serde_json::from_str(&text).unwrap_or_default();
    let message = v["message"].as_str().unwrap_or(&text);
    // The first line: SQL errors follow on the next ones.
    let message = message.lines().next().unwrap_or_default();
    Err(MlflowError::Refused {
        status: status.as_u16(),
        code: v["error_code"].as_str().unwrap_or_default().to_string(),
        message: clip(message, 300).to_string(),
    })
}

/// An error and its causes (reqwest's own text is only `error sending request`).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !out.contains(&c_text) {
            out.push_str(": ");
            out.push_str(&c_text);
        }
        cause = c.source();
    }
    out
}

fn ms(ts: &str) -> i64 {
    parse_rfc3339(ts).map_or(0, |t| t.div_euclid(1_000_000))
}

/// The tags a run's status update sets: its status, best epoch, and why it failed.
fn end_tags(run: &ExportRun) -> Vec<Value> {
    let mut tags = vec![json!({ "key": "trainwatch.status", "value": run.status.as_str() })];
    if let Some(b) = run.best_epoch {
        tags.push(json!({ "key": "best_epoch", "value": b.to_string() }));
    }
    if let Some(f) = &run.failure {
        tags.push(json!({ "key": "failure", "value": clip(f, MAX_TAG_VALUE) }));
    }
    tags
}

fn clip(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(uri: &str) -> MlflowConfig {
        MlflowConfig {
            tracking_uri: Some(uri.into()),
            ..MlflowConfig::default()
        }
    }

    #[test]
    fn tracking_uris_are_checked() {
        assert_eq!(cfg("http://mlflow:5000").problem(), None);
        assert_eq!(cfg("https://mlflow.example.com/").problem(), None);
        assert_eq!(MlflowConfig::default().problem(), None);
        assert!(!MlflowConfig::default().enabled());
        let ftp = cfg("ftp://h").problem().unwrap();
        assert!(ftp.contains("http:// or https://"), "{ftp}");
        let creds = cfg("http://u:s3cr3t@mlflow:5000").problem().unwrap();
        assert!(creds.contains("must not hold credentials"), "{creds}");
        assert!(!creds.contains("s3cr3t"), "{creds}");
        assert_eq!(
            cfg("http://mlflow:5000/").target(),
            "http://mlflow:5000#trainwatch"
        );
    }

    #[test]
    fn results_columns_become_names_mlflow_accepts() {
        assert_eq!(metric_name("metrics/mAP50-95(B)"), "metrics/mAP50-95B");
        assert_eq!(metric_name("train/box_loss"), "train/box_loss");
        assert_eq!(metric_name("metrics/mAP_0.5:0.95"), "metrics/mAP_0.5:0.95");
        assert_eq!(metric_name("metrics/precision(M)"), "metrics/precisionM");
        assert_eq!(metric_name("a*b"), "a_b");
    }

    #[test]
    fn statuses_map_to_mlflow_statuses() {
        let pairs = [
            ("running", "RUNNING"),
            ("completed", "FINISHED"),
            ("early_stopped", "FINISHED"),
            ("failed", "FAILED"),
            ("interrupted", "KILLED"),
        ];
        for (ours, theirs) in pairs {
            assert_eq!(
                mlflow_status(crate::derive::RunStatus::parse(ours).unwrap()),
                theirs
            );
        }
    }

    #[test]
    fn non_finite_values_use_protobuf_json_names() {
        assert_eq!(metric_value(f64::NAN), json!("NaN"));
        assert_eq!(metric_value(f64::INFINITY), json!("Infinity"));
        assert_eq!(metric_value(f64::NEG_INFINITY), json!("-Infinity"));
        assert_eq!(metric_value(0.25), json!(0.25));
    }

    #[test]
    fn params_keep_printed_values_within_limits() {
        let long = "x".repeat(7000);
        let p = params(Some(&format!(r#"{{"lr0":"0.01","data":"{long}","":"y"}}"#)));
        assert_eq!(p.len(), 2);
        assert_eq!(p[1], ("lr0".to_string(), "0.01".to_string()));
        assert_eq!(p[0].1.len(), MAX_PARAM_VALUE);
        assert!(params(Some("not json")).is_empty());
        assert!(params(None).is_empty());
    }

    fn run(save_dir: Option<&str>) -> ExportRun {
        ExportRun {
            run_id: 1,
            container: "yolo".into(),
            start_stream: "stdout".into(),
            start_key_ts: 1,
            start_seq: 0,
            started_at: "2026-03-28T14:30:00.000000000Z".into(),
            ended_at: None,
            status: crate::derive::RunStatus::Running,
            save_dir: save_dir.map(str::to_string),
            model: None,
            params: None,
            ultralytics_version: None,
            epochs_total: None,
            best_epoch: None,
            failure: None,
            epochs_done: 0,
            folder: None,
            own_mlflow: None,
        }
    }

    #[test]
    fn runs_are_named_from_their_save_dir() {
        assert_eq!(run_name(&run(Some("/w/runs/detect/train3"))), "train3");
        assert_eq!(run_name(&run(Some("runs\\train2\\"))), "train2");
        assert_eq!(run_name(&run(None)), "yolo-2026-03-28T14:30");
        // The key is the run's first line, so a second replay finds the same MLflow run.
        assert_eq!(run_key(&run(None)), run_key(&run(Some("x"))));
        let mut other = run(None);
        other.start_seq = 1;
        assert_ne!(run_key(&run(None)), run_key(&other));
    }

    #[test]
    fn only_settled_epochs_are_points() {
        let csv = crate::output::results::ResultsCsv {
            table: crate::store::queries::Rows {
                columns: vec![
                    "epoch".into(),
                    "train/box_loss".into(),
                    "metrics/mAP50(B)".into(),
                ],
                rows: vec![
                    vec![Cell::Integer(1), Cell::Real(0.5), Cell::Real(0.1)],
                    vec![Cell::Integer(2), Cell::Text("nan".into()), Cell::Null],
                ],
            },
            ended_at: vec![Some(2_000_000_000), None],
        };
        let running = epoch_points(&csv, true, 7);
        assert_eq!(running.len(), 1);
        assert_eq!(running[0].epoch, 1);
        assert_eq!(running[0].timestamp, 2000);
        assert_eq!(
            running[0].points,
            vec![
                ("train/box_loss".to_string(), 0.5),
                ("metrics/mAP50B".to_string(), 0.1)
            ]
        );
        let ended = epoch_points(&csv, false, 7);
        assert_eq!(ended.len(), 2);
        assert_eq!(ended[1].timestamp, 7);
        assert!(ended[1].points[0].1.is_nan());
        assert_eq!(ended[0].digest, running[0].digest);
        assert_ne!(ended[0].digest, ended[1].digest);
    }
}
