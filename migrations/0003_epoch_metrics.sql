-- 0003: the metrics of a validation row beyond the box four, per epoch.
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
