-- 0009: what a run was started with, and what was exported of it to an MLflow tracking server.
--
-- runs.params keeps every `key=value` of the trainer's settings line that started the run (as
-- printed, redacted; JSON object text), runs.ultralytics_version the version the banner before
-- it printed: an exported run's parameters and tags, and plain SQL's.
--
-- mlflow_runs and mlflow_epochs are the export's durable progress, per target (tracking URI and
-- experiment): which MLflow run a training run is, what of it the server has acknowledged. The
-- exporter compares them with runs and epochs and sends only the difference, so a server that
-- is down loses nothing and a restart sends nothing twice.
ALTER TABLE runs ADD COLUMN params TEXT;
ALTER TABLE runs ADD COLUMN ultralytics_version TEXT;

CREATE TABLE mlflow_runs (
    target        TEXT NOT NULL,    -- '<tracking_uri>#<experiment>'
    run_id        INTEGER NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    experiment_id TEXT NOT NULL,
    mlflow_run_id TEXT NOT NULL,
    params_sent   INTEGER NOT NULL DEFAULT 0,
    -- The run's status and end as last acknowledged by the server (NULL: not yet).
    status_sent   TEXT,
    ended_sent    TEXT,
    name_sent     TEXT,
    -- A permanent refusal (HTTP 4xx) of this run's data: it is not retried until cleared
    -- (`export mlflow --retry-failed`).
    error         TEXT,
    updated_at    TEXT NOT NULL,
    PRIMARY KEY (target, run_id)
) WITHOUT ROWID;
CREATE INDEX mlflow_runs_by_run ON mlflow_runs (run_id);

CREATE TABLE mlflow_epochs (
    target  TEXT NOT NULL,
    run_id  INTEGER NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    epoch   INTEGER NOT NULL,
    -- FNV-1a of the metric points sent for this epoch: another value is sent again.
    digest  INTEGER NOT NULL,
    PRIMARY KEY (target, run_id, epoch)
) WITHOUT ROWID;
CREATE INDEX mlflow_epochs_by_run ON mlflow_epochs (run_id);

DROP VIEW training_runs;
CREATE VIEW training_runs AS
SELECT
    r.run_id,
    r.container,
    r.started_at,
    r.ended_at,
    r.status,
    r.epochs_total,
    -- A 0-based run (YOLOv5 prints epochs 0..N-1) has done one more than its highest epoch.
    COALESCE((SELECT max(e.epoch) + (min(e.epoch) = 0) FROM epochs e WHERE e.run_id = r.run_id), 0)
        AS epochs_done,
    COALESCE(r.best_epoch_reported,
             (SELECT e.epoch FROM epochs e WHERE e.run_id = r.run_id AND e.map50_95 IS NOT NULL
              ORDER BY e.map50_95 DESC, e.epoch LIMIT 1),
             (SELECT e.epoch FROM epochs e WHERE e.run_id = r.run_id
                 AND json_extract(e.metrics, '$.classify.top1_acc') IS NOT NULL
              ORDER BY json_extract(e.metrics, '$.classify.top1_acc')
                     + json_extract(e.metrics, '$.classify.top5_acc') DESC, e.epoch
              LIMIT 1)) AS best_epoch,
    (SELECT e.map50_95 FROM epochs e WHERE e.run_id = r.run_id AND e.epoch =
        COALESCE(r.best_epoch_reported,
                 (SELECT e2.epoch FROM epochs e2 WHERE e2.run_id = r.run_id AND e2.map50_95 IS NOT NULL
                  ORDER BY e2.map50_95 DESC, e2.epoch LIMIT 1))) AS best_map50_95,
    r.save_dir,
    r.model,
    r.loss_names,
    r.params,
    r.ultralytics_version
FROM runs r;
