-- 0010: why a run ended badly. runs.failure holds the exception's last line of the uncaught
-- traceback that ended it (`RuntimeError: Dataset 'data/missing.yaml' error`,
-- `KeyboardInterrupt`), or how its container died (`exited with code 137 (SIGKILL)`, the
-- kernel's OOM killer), with the NaN/inf loss that came before it; NULL while the run runs or
-- when it ended well. The training_runs view gains it as its last column.
ALTER TABLE runs ADD COLUMN failure TEXT;

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
    r.ultralytics_version,
    r.failure
FROM runs r;
