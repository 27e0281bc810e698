//! The final validation of an ended run's `best.pt` (Ultralytics' `Validating .../best.pt...`
//! and its `all` row, printed after the last epoch): logged as Ultralytics' own MLflow
//! callback logs it, the box metrics (and a segmentation or pose run's second group) one step
//! after the last epoch. It is printed a while after the run's end (best.pt is validated again),
//! so a run waits for it up to [`FINAL_WAIT`] after its end.

use serde_json::{Value, json};

use super::{Exporter, Summary, metric_name, metric_value, ms};
use crate::error::MlflowError;
use crate::store::OutboxChange;
use crate::store::mlflow::{self as store, ExportRun};

/// How long after a run's end its final validation is waited for.
pub const FINAL_WAIT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// The metric points of a final validation's event context, named as results.csv's columns
/// (`metrics/mAP50-95(B)`) the run has; none for a run without them (YOLOv5, classify).
pub fn final_points(context: &str, columns: &[String]) -> Vec<(String, f64)> {
    let Ok(ctx) = serde_json::from_str::<Value>(context) else {
        return Vec::new();
    };
    let number = |v: &Value| match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse::<f64>().ok(),
        _ => None,
    };
    let mut out = Vec::new();
    for (group, suffix) in [(None, "B"), (Some("mask"), "M"), (Some("pose"), "P")] {
        let g = match group {
            None => &ctx,
            Some(name) => &ctx[name],
        };
        for (key, column) in [
            ("precision", "precision"),
            ("recall", "recall"),
            ("map50", "mAP50"),
            ("map50_95", "mAP50-95"),
        ] {
            let column = format!("metrics/{column}({suffix})");
            if !columns.contains(&column) {
                continue;
            }
            if let Some(v) = number(&g[key]) {
                out.push((metric_name(&column), v));
            }
        }
    }
    out
}

impl Exporter {
    /// Logs the run's final validation one step after its last epoch, or records that there
    /// is none once [`FINAL_WAIT`] has passed since its end.
    pub(super) async fn send_final(
        &self,
        run: &ExportRun,
        mlflow_run: &str,
        columns: &[String],
        s: &mut Summary,
    ) -> Result<(), MlflowError> {
        let run_id = run.run_id;
        let found = self
            .conn
            .call(move |c| store::final_validation(c, run_id))
            .await?;
        match found {
            Some((ts, context)) => {
                let points = final_points(&context, columns);
                if !points.is_empty() {
                    let step = self.cfg.step.of(run.epochs_done + 1);
                    let metrics: Vec<Value> = points
                        .iter()
                        .map(|(k, v)| {
                            json!({ "key": k, "value": metric_value(*v), "timestamp": ms(&ts), "step": step })
                        })
                        .collect();
                    self.post(
                        "runs/log-batch",
                        json!({ "run_id": mlflow_run, "metrics": metrics }),
                        s,
                    )
                    .await?;
                    s.points += points.len() as u64;
                }
            }
            None => {
                let ended = run.ended_at.as_deref().map_or(0, ms) * 1_000_000;
                let waited = crate::time::now_ns().saturating_sub(ended);
                if waited < FINAL_WAIT.as_nanos() as i64 {
                    return Ok(());
                }
            }
        }
        self.writer
            .record(OutboxChange::MlflowFinal {
                target: self.target.clone(),
                run_id,
            })
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_final_validation_is_named_as_the_callback_names_it() {
        let columns: Vec<String> = [
            "epoch",
            "metrics/precision(B)",
            "metrics/recall(B)",
            "metrics/mAP50(B)",
            "metrics/mAP50-95(B)",
            "metrics/mAP50-95(M)",
        ]
        .map(String::from)
        .to_vec();
        let ctx = r#"{"images":16,"precision":0.5,"recall":0.25,"map50":0.125,"map50_95":0.0625,
            "mask":{"precision":0.4,"recall":0.2,"map50":0.1,"map50_95":0.05},"final":true}"#;
        assert_eq!(
            final_points(ctx, &columns),
            [
                ("metrics/precisionB".to_string(), 0.5),
                ("metrics/recallB".into(), 0.25),
                ("metrics/mAP50B".into(), 0.125),
                ("metrics/mAP50-95B".into(), 0.0625),
                ("metrics/mAP50-95M".into(), 0.05),
            ]
        );
        // YOLOv5's columns: none.
        assert!(final_points(ctx, &["metrics/mAP_0.5".to_string()]).is_empty());
    }
}
