-- 0003: the metrics of a validation row beyond the box four, per epoch, and the best epoch of
-- a classification run.
--
-- metrics is a JSON object keyed by the group: "mask", "pose" or "extra" (the second group of
-- segmentation and pose rows) holding precision, recall, map50 and map50_95, e.g.
-- {"mask":{"precision":0.75,"recall":0.11,"map50":0.07,"map50_95":0.023}}; or "classify" with
-- top1_acc and top5_acc. NULL for detection runs. The box metrics stay in their own columns.

ALTER TABLE epochs ADD COLUMN metrics TEXT;

DROP VIEW training_epochs;
CREATE VIEW training_epochs AS
SELECT
    e.run_id, r.container, e.epoch, e.epochs_total, e.ended_at,
    e.box_loss, e.cls_loss, e.dfl_loss, e.loss, e.losses,
    e.precision, e.recall, e.map50, e.map50_95, e.gpu_mem_gb, e.non_finite, e.metrics
FROM epochs e JOIN runs r USING (run_id);

-- best_epoch of a classification run (no mAP) is the epoch with the highest
-- (top-1 + top-5) / 2, the fitness Ultralytics keeps best.pt by.
DROP VIEW training_runs;
CREATE VIEW training_runs AS
SELECT
    r.run_id,
    r.container,
    r.started_at,
    r.ended_at,
    r.status,
    r.epochs_total,
    COALESCE((SELECT max(e.epoch) FROM epochs e WHERE e.run_id = r.run_id), 0) AS epochs_done,
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
    r.loss_names
FROM runs r;
