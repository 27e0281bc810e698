-- 0014: what a run's folder and log say beyond its row.
-- `runs.folder`: where its run folder (`save_dir`) is read on this host, once found (through
-- the container's mounts, `--path-map`, or `import`); the MLflow export reads its artifacts
-- there. `runs.mlflow_run_id`, `runs.mlflow_uri`: Ultralytics' own MLflow callback logs the
-- run itself (`MLflow: logging run_id(<id>) to <uri>`).
ALTER TABLE runs ADD COLUMN folder TEXT;
ALTER TABLE runs ADD COLUMN mlflow_run_id TEXT;
ALTER TABLE runs ADD COLUMN mlflow_uri TEXT;
-- The export's artifacts acknowledged by the tracking server (JSON object: path -> size);
-- whether the MLflow run is the training's own (linked, not created by trainwatch); whether the
-- final validation of best.pt was logged (or there was none to log).
ALTER TABLE mlflow_runs ADD COLUMN artifacts_sent TEXT;
ALTER TABLE mlflow_runs ADD COLUMN linked INTEGER NOT NULL DEFAULT 0;
ALTER TABLE mlflow_runs ADD COLUMN final_sent INTEGER NOT NULL DEFAULT 0;
