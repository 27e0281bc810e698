-- 0013: a run folder's results.csv, every cell as written. `runs.results_columns` is its header
-- (JSON array), `results_rows.cells` each epoch's cells (JSON array of text, in header order):
-- `history --run N --format csv` writes them back as they were. The view `training_results`
-- has one row per epoch and column, for plain SQL:
--   SELECT epoch, value FROM training_results WHERE run_id = 3 AND name = 'val/box_loss';
ALTER TABLE runs ADD COLUMN results_columns TEXT;
CREATE TABLE results_rows (
    run_id INTEGER NOT NULL,
    epoch  INTEGER NOT NULL,
    cells  TEXT NOT NULL,
    PRIMARY KEY (run_id, epoch)
) WITHOUT ROWID;
CREATE VIEW training_results AS
SELECT rr.run_id, rr.epoch, c.value AS name, v.value AS value
FROM results_rows rr
JOIN runs r ON r.run_id = rr.run_id
JOIN json_each(r.results_columns) c
JOIN json_each(rr.cells) v ON v.key = c.key;
