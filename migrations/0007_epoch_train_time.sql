-- 0007: each epoch's `train_time_s`, the seconds from the start of training (Ultralytics'
-- `Starting training for N epochs...`; a resumed training starts again) to the epoch's end:
-- what results.csv's `time` column holds.

ALTER TABLE epochs ADD COLUMN train_time_s REAL;

DROP VIEW training_epochs;
CREATE VIEW training_epochs AS
SELECT
    e.run_id, r.container, e.epoch, e.epochs_total, e.ended_at,
    e.box_loss, e.cls_loss, e.dfl_loss, e.loss, e.losses,
    e.precision, e.recall, e.map50, e.map50_95, e.gpu_mem_gb, e.non_finite, e.metrics,
    e.train_time_s
FROM epochs e JOIN runs r USING (run_id);
