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
-- results.csv rows by their place in the file: a resumed training appends the epoch it resumed
-- at again, and `history --format csv` writes the file back as it is. `training_results` shows
-- the latest row of each epoch (the one the run's weights went on from).
DROP VIEW training_results;
CREATE TABLE results_rows_by_row (
    run_id INTEGER NOT NULL,
    row    INTEGER NOT NULL,
    epoch  INTEGER NOT NULL,
    cells  TEXT NOT NULL,
    PRIMARY KEY (run_id, row)
) WITHOUT ROWID;
INSERT INTO results_rows_by_row (run_id, row, epoch, cells)
SELECT run_id, row_number() OVER (PARTITION BY run_id ORDER BY epoch) - 1, epoch, cells
FROM results_rows;
DROP TABLE results_rows;
ALTER TABLE results_rows_by_row RENAME TO results_rows;
CREATE VIEW training_results AS
SELECT rr.run_id, rr.epoch, c.value AS name, v.value AS value
FROM results_rows rr
JOIN runs r ON r.run_id = rr.run_id
JOIN json_each(r.results_columns) c
JOIN json_each(rr.cells) v ON v.key = c.key
WHERE NOT EXISTS (SELECT 1 FROM results_rows later
                  WHERE later.run_id = rr.run_id AND later.row > rr.row AND later.epoch = rr.epoch);
