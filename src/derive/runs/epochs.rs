//! Epochs: from the progress bar's last frame, from the validation `all` rows (and a
//! classifier's accuracy row), and from the service's JSON `Epoch k/N completed` lines.

use serde_json::{Map, Value, json};

use super::{ContainerState, RunStatus, is_yolov5};
use crate::derive::{EpochRow, Op, json_num};
use crate::event::{Record, kind, metric};
use crate::parse::ultralytics::{Progress, Validation};
use crate::parse::{Level, Parsed};

/// The context key of the second metric group of a validation row, named by the task the
/// loss columns tell: segmentation validates masks, pose keypoints.
fn second_metric_group(loss_names: &[String]) -> &'static str {
    if loss_names.iter().any(|n| n == "seg_loss") {
        "mask"
    } else if loss_names
        .iter()
        .any(|n| n == "pose_loss" || n == "kobj_loss")
    {
        "pose"
    } else {
        "extra"
    }
}

impl ContainerState {
    /// An epoch header (`Epoch GPU_mem box_loss ...`): the loss columns' names, and an epoch
    /// open until a row ends it.
    pub(super) fn header(&mut self, names: &[String], out: &mut Vec<Op>) {
        self.loss_names = names.to_vec();
        if let Some(run) = self.run.as_mut() {
            run.header_open = run.row.status == RunStatus::Running && !self.final_validation;
            if run.row.loss_names != names {
                run.row.loss_names = names.to_vec();
                out.push(Op::Run(run.row.clone()));
            }
        }
    }

    /// A progress row: a non-finite loss in any of its frames, and the epoch once its bar is
    /// complete.
    pub(super) fn progress(&mut self, rec: &Record, p: &Parsed, pr: &Progress, out: &mut Vec<Op>) {
        if let Some(frame) = &rec.nonfinite_frame {
            let ctx = json!({ "epoch": pr.epoch, "epochs": pr.epochs, "source": "progress" });
            out.push(self.event(rec, Level::Error, kind::LOSS_NON_FINITE, frame, ctx));
        }
        if let Some(run) = self.run.as_mut() {
            run.bars_seen = true;
        }
        if pr.complete() || (rec.terminated && pr.batches.is_none()) {
            self.epoch_from_progress(rec, p, pr, out);
        }
    }

    /// A detection (or segmentation, pose) validation `all` row.
    pub(super) fn validation(
        &mut self,
        rec: &Record,
        message: &str,
        v: &Validation,
        out: &mut Vec<Op>,
    ) {
        let num = |x: Option<f64>| x.map_or(Value::Null, json_num);
        let mut ctx = json!({
            "images": v.images, "instances": v.instances,
            "precision": num(v.precision), "recall": num(v.recall),
            "map50": num(v.map50), "map50_95": num(v.map50_95),
        });
        let group = match v.more[..] {
            [p_, r_, m50, m5095] => {
                let g = json!({
                    "precision": json_num(p_), "recall": json_num(r_),
                    "map50": json_num(m50), "map50_95": json_num(m5095),
                });
                let name = second_metric_group(&self.loss_names);
                ctx[name] = g.clone();
                Some(json!({ name: g }).to_string())
            }
            _ => None,
        };
        let row = EpochRow {
            precision: v.precision,
            recall: v.recall,
            map50: v.map50,
            map50_95: v.map50_95,
            metrics: group,
            ..Default::default()
        };
        let samples: Vec<(&'static str, f64)> = [
            (metric::TRAINING_MAP50, v.map50),
            (metric::TRAINING_MAP50_95, v.map50_95),
        ]
        .into_iter()
        .filter_map(|(name, x)| Some((name, x?)))
        .collect();
        self.validation_row(rec, message, ctx, row, &samples, out);
    }

    /// A classifier's validation row: top-1 and top-5 accuracy.
    pub(super) fn accuracy(
        &mut self,
        rec: &Record,
        message: &str,
        top1: f64,
        top5: f64,
        out: &mut Vec<Op>,
    ) {
        let acc = json!({ "top1_acc": json_num(top1), "top5_acc": json_num(top5) });
        let row = EpochRow {
            metrics: Some(json!({ "classify": acc }).to_string()),
            ..Default::default()
        };
        self.validation_row(rec, message, acc, row, &[], out);
    }

    /// A validation `all` row: its event, and the metrics of the epoch it validated (`row`
    /// without its epoch and time) with their `samples`. With the bars off (no progress row
    /// since the epoch header) the row ends the next epoch; the final validation of best.pt
    /// after the run's end belongs to no epoch.
    pub(super) fn validation_row(
        &mut self,
        rec: &Record,
        message: &str,
        mut ctx: Value,
        row: EpochRow,
        samples: &[(&'static str, f64)],
        out: &mut Vec<Op>,
    ) {
        let final_val = self.final_validation;
        // With the bars on, a validation row is the epoch's whose rows preceded it, even when
        // it comes after the next epoch's header or first frame (YOLOv7/YOLOR/YOLOv9 print it
        // on buffered stdout, the bars on stderr).
        let counted = match self.run.as_mut() {
            Some(r) if r.header_open && !r.bars_seen && !final_val => {
                r.header_open = false;
                r.last_epoch = Some(r.next_epoch());
                true
            }
            _ => false,
        };
        let epoch = self
            .run
            .as_ref()
            .and_then(|r| r.last_epoch)
            .filter(|_| !final_val);
        ctx["epoch"] = json!(epoch);
        if final_val {
            ctx["final"] = Value::Bool(true);
        }
        out.push(self.event(rec, Level::Info, "validation", message, ctx));
        if let (Some(epoch), Some(run)) = (epoch, self.run.as_ref()) {
            let key = run.row.key.clone();
            let epochs_total = run.row.epochs_total.filter(|_| counted);
            if counted {
                // No progress row completed this epoch: its validation does, so the epoch
                // has its `epoch_completed` as with the bars on.
                let ctx = json!({ "epoch": epoch, "epochs": epochs_total, "source": "validation" });
                out.push(self.event(rec, Level::Info, "epoch_completed", message, ctx));
            }
            out.push(Op::Epoch(
                key,
                EpochRow {
                    epoch,
                    epochs_total,
                    ended_at: rec.ts,
                    ..row
                },
            ));
            if counted {
                self.metric(rec.ts, metric::TRAINING_EPOCH, epoch as f64, out);
            }
            for (name, value) in samples {
                self.metric(rec.ts, name, *value, out);
            }
        }
    }

    fn epoch_from_progress(&mut self, rec: &Record, p: &Parsed, pr: &Progress, out: &mut Vec<Op>) {
        let zero_based = pr.epoch == 0
            || is_yolov5(&self.loss_names)
            || self.run.as_ref().is_some_and(|r| r.zero_based);
        let epochs_total = if zero_based {
            pr.epochs.saturating_add(1)
        } else {
            pr.epochs
        };
        self.ensure_run(rec, epochs_total, pr.epoch, out);
        // Columns by the header's names, read from the left (a row cut at the terminal width
        // lacks its right-hand columns); YOLOv5's `total` is their sum, not a loss of its own.
        let values = pr.losses(Some(self.loss_names.len()));
        let losses: Vec<(String, f64)> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                (
                    self.loss_names
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| format!("loss{}", i + 1)),
                    *v,
                )
            })
            .filter(|(name, _)| name != "total")
            .collect();
        let total: f64 = losses.iter().map(|(_, v)| v).sum();
        let non_finite = losses.iter().any(|(_, v)| !v.is_finite());
        let run = self.run.as_mut().expect("ensure_run");
        run.zero_based |= zero_based;
        run.starting = false;
        let mut changed = false;
        if run.row.status != RunStatus::Running {
            run.row.status = RunStatus::Running;
            run.row.ended_at = None;
            changed = true;
        }
        if run.row.epochs_total != Some(epochs_total) {
            run.row.epochs_total = Some(epochs_total);
            changed = true;
        }
        if changed {
            out.push(Op::Run(run.row.clone()));
        }
        run.last_epoch = Some(pr.epoch);
        run.header_open = false;
        let key = run.row.key.clone();
        let mut ctx = Map::new();
        ctx.insert("epoch".into(), json!(pr.epoch));
        ctx.insert("epochs".into(), json!(epochs_total));
        ctx.insert("gpu_mem_gb".into(), json_num(pr.gpu_mem_gb));
        for (name, v) in &losses {
            ctx.insert(name.clone(), json_num(*v));
        }
        ctx.insert("loss".into(), json_num(total));
        out.push(Op::Epoch(
            key,
            EpochRow {
                epoch: pr.epoch,
                epochs_total: Some(epochs_total),
                ended_at: rec.ts,
                losses: Some(losses),
                gpu_mem_gb: Some(pr.gpu_mem_gb),
                ..Default::default()
            },
        ));
        out.push(self.event(
            rec,
            Level::Info,
            "epoch_completed",
            &p.message,
            Value::Object(ctx),
        ));
        if non_finite && rec.nonfinite_frame.is_none() {
            out.push(self.event(
                rec,
                Level::Error,
                kind::LOSS_NON_FINITE,
                &p.message,
                json!({ "epoch": pr.epoch, "epochs": pr.epochs, "source": "epoch" }),
            ));
        }
        self.metric(rec.ts, metric::TRAINING_EPOCH, pr.epoch as f64, out);
        self.metric(rec.ts, metric::TRAINING_LOSS, total, out);
    }

    pub(super) fn service_epoch(
        &mut self,
        rec: &Record,
        p: &mut Parsed,
        epoch: u32,
        epochs: u32,
        out: &mut Vec<Op>,
    ) {
        use crate::parse::json::num;
        let c = &p.context;
        let get = |keys: &[&str]| keys.iter().find_map(|k| c.get(*k).and_then(num));
        let loss = get(&["loss", "train_loss"]);
        let map50 = get(&["mAP50", "map50", "metrics/mAP50(B)"]);
        let map50_95 = get(&["mAP50_95", "mAP50-95", "map50_95", "metrics/mAP50-95(B)"]);
        let precision = get(&["precision", "P"]);
        let recall = get(&["recall", "R"]);
        let named: Vec<(String, f64)> = c
            .iter()
            .filter(|(k, _)| k.ends_with("_loss"))
            .filter_map(|(k, v)| Some((k.clone(), num(v)?)))
            .collect();
        // An epoch already derived from the progress bar of this run is the same epoch.
        let same = self
            .run
            .as_ref()
            .is_some_and(|r| r.last_epoch == Some(epoch) && !self.final_validation);
        if !same {
            self.ensure_run(rec, epochs, epoch, out);
        }
        let run = self.run.as_mut().expect("ensure_run");
        run.last_epoch = Some(run.last_epoch.map_or(epoch, |l| l.max(epoch)));
        run.starting = false;
        let key = run.row.key.clone();
        let non_finite =
            loss.is_some_and(|l| !l.is_finite()) || named.iter().any(|(_, v)| !v.is_finite());
        out.push(Op::Epoch(
            key,
            EpochRow {
                epoch,
                epochs_total: Some(epochs),
                ended_at: rec.ts,
                losses: (!named.is_empty()).then_some(named),
                loss,
                precision,
                recall,
                map50,
                map50_95,
                gpu_mem_gb: None,
                metrics: None,
                train_time_s: None,
                non_finite: None,
            },
        ));
        if same {
            // The training wrapper's line for an epoch the progress bar already completed:
            // its values are merged into that epoch, not counted as another one.
            if non_finite {
                let ctx = json!({ "epoch": epoch, "epochs": epochs, "source": "service" });
                out.push(self.event(rec, Level::Error, kind::LOSS_NON_FINITE, &p.message, ctx));
            }
            return;
        }
        let mut ctx = std::mem::take(&mut p.context);
        ctx.insert("epochs".into(), json!(epochs));
        out.push(self.event(
            rec,
            p.level,
            "epoch_completed",
            &p.message,
            Value::Object(ctx),
        ));
        if non_finite {
            out.push(self.event(
                rec,
                Level::Error,
                kind::LOSS_NON_FINITE,
                &p.message,
                json!({ "epoch": epoch, "epochs": epochs, "source": "service" }),
            ));
        }
        self.metric(rec.ts, metric::TRAINING_EPOCH, epoch as f64, out);
        if let Some(l) = loss {
            self.metric(rec.ts, metric::TRAINING_LOSS, l, out);
        }
        if let Some(m) = map50 {
            self.metric(rec.ts, metric::TRAINING_MAP50, m, out);
        }
        if let Some(m) = map50_95 {
            self.metric(rec.ts, metric::TRAINING_MAP50_95, m, out);
        }
        // The service's last epoch, N/N: the run is complete.
        if let Some(run) = self.run.as_mut()
            && epoch == epochs
            && !run.zero_based
            && run.row.status.is_running()
        {
            run.row.status = RunStatus::Completed;
            run.row.ended_at = Some(rec.ts);
            out.push(Op::Run(run.row.clone()));
        }
    }
}
