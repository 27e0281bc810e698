//! `trainwatch history`: training runs, or one run's epochs. `--run ID --format csv` writes
//! Ultralytics' `results.csv` columns so tools that read results.csv work on it.

use std::path::Path;

use anyhow::Context;
use clap::Args;
use rusqlite::types::Value;

use super::render::{self, OutputFormat, Rows};

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Show the epochs of this run.
    #[arg(long)]
    pub run: Option<i64>,
    /// Only runs of this container.
    #[arg(long)]
    pub container: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
}

// One row per run, comparable side by side: progress, best epoch, how long it took, and the
// last epoch's metrics. Every subquery is a primary-key lookup on `epochs`.
const RUNS: &str = "SELECT r.run_id, r.container, r.status, r.epochs_done, r.epochs_total,
        r.best_epoch, round(r.best_map50_95, 5) AS best_map50_95,
        CAST(round((julianday(COALESCE(r.ended_at, l.ended_at, r.started_at))
                    - julianday(r.started_at)) * 86400) AS INTEGER) AS duration_s,
        round(l.loss, 5) AS final_loss, round(l.map50, 5) AS final_map50,
        round(l.map50_95, 5) AS final_map50_95,
        r.started_at, r.ended_at, r.save_dir
    FROM training_runs r
    LEFT JOIN epochs l ON l.run_id = r.run_id
        AND l.epoch = (SELECT max(epoch) FROM epochs WHERE run_id = r.run_id)
    WHERE (?1 IS NULL OR r.container = ?1) ORDER BY r.started_at DESC, r.run_id DESC";

// The same runs for a person, within 120 columns: rounded as the console prints them (losses
// to 4 decimals, mAP to 3), durations and times in human units (UTC, to the minute), long
// container names shortened.
const RUNS_TABLE: &str = "WITH h AS (SELECT r.*, l.loss AS l_loss, l.map50 AS l_map50,
        l.map50_95 AS l_map50_95,
        CAST(round((julianday(COALESCE(r.ended_at, l.ended_at, r.started_at))
                    - julianday(r.started_at)) * 86400) AS INTEGER) AS s
    FROM training_runs r
    LEFT JOIN epochs l ON l.run_id = r.run_id
        AND l.epoch = (SELECT max(epoch) FROM epochs WHERE run_id = r.run_id)
    WHERE (?1 IS NULL OR r.container = ?1))
    SELECT run_id AS run,
        CASE WHEN length(container) > 20 THEN substr(container, 1, 19) || '…' ELSE container END
            AS container,
        status, epochs_done || '/' || COALESCE(epochs_total, '?') AS epochs,
        best_epoch AS best, iif(best_map50_95 IS NULL, NULL, printf('%.3f', best_map50_95)) AS best_map,
        CASE WHEN s >= 86400 THEN printf('%dd%02dh', s / 86400, s % 86400 / 3600)
             WHEN s >= 3600 THEN printf('%dh%02dm', s / 3600, s % 3600 / 60)
             WHEN s >= 60 THEN printf('%dm%02ds', s / 60, s % 60)
             ELSE s || 's' END AS time,
        iif(l_loss IS NULL, NULL, printf('%.4f', l_loss)) AS loss,
        iif(l_map50 IS NULL, NULL, printf('%.3f', l_map50)) AS map50,
        iif(l_map50_95 IS NULL, NULL, printf('%.3f', l_map50_95)) AS map50_95,
        substr(replace(started_at, 'T', ' '), 1, 16) AS started_utc
    FROM h ORDER BY started_at DESC, run_id DESC";

const EPOCHS: &str =
    "SELECT epoch, epochs_total, ended_at, box_loss, cls_loss, dfl_loss, loss, losses,
        precision, recall, map50, map50_95, gpu_mem_gb, non_finite, metrics, train_time_s
    FROM training_epochs WHERE run_id = ?1 ORDER BY epoch";

pub fn run(args: HistoryArgs, db: &Path, config: Option<&Path>) -> anyhow::Result<()> {
    // Read for its errors: a missing or malformed config fails every command alike.
    super::load_config(config)?;
    let conn = super::open_ro(db)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.run {
        None => {
            let sql = if args.format == OutputFormat::Table {
                RUNS_TABLE
            } else {
                RUNS
            };
            let rows = Rows::query(&conn, sql, &[&args.container]).context("listing runs")?;
            render::write(&mut out, &rows, args.format)?;
        }
        Some(id) => {
            let exists: i64 =
                conn.query_row("SELECT count(*) FROM runs WHERE run_id = ?1", [id], |r| {
                    r.get(0)
                })?;
            if exists == 0 {
                anyhow::bail!("no training run with id {id} (see `trainwatch history`)");
            }
            let rows = Rows::query(&conn, EPOCHS, &[&id])
                .with_context(|| format!("listing epochs of run {id}"))?;
            if args.format == OutputFormat::Csv {
                render::write(&mut out, &results_csv(&conn, id, &rows)?, OutputFormat::Csv)?;
            } else {
                render::write(&mut out, &rows, args.format)?;
            }
        }
    }
    Ok(())
}

/// Rebuilds results.csv's columns: epoch, time (seconds since training started, as
/// Ultralytics counts it),
/// train/<loss> for each loss column, metrics/precision(B) ... metrics/mAP50-95(B), and for
/// segmentation and pose runs the same four of their second group, `(M)` or `(P)`; for
/// classification runs metrics/accuracy_top1 and metrics/accuracy_top5 instead of the box four;
/// for YOLOv5 runs YOLOv5's own columns (epoch, train/box_loss, train/obj_loss, train/cls_loss,
/// metrics/precision, metrics/recall, metrics/mAP_0.5, metrics/mAP_0.5:0.95).
fn results_csv(conn: &rusqlite::Connection, run_id: i64, rows: &Rows) -> anyhow::Result<Rows> {
    let (names, started): (String, String) = conn.query_row(
        "SELECT loss_names, started_at FROM runs WHERE run_id = ?1",
        [run_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut names: Vec<String> = serde_json::from_str(&names).unwrap_or_default();
    let idx = |c: &str| {
        rows.columns
            .iter()
            .position(|x| x == c)
            .expect("known column")
    };
    // Loss names: the header's, else whatever the first epoch recorded.
    if names.is_empty()
        && let Some(Value::Text(l)) = rows.rows.first().map(|r| &r[idx("losses")])
        && let Ok(serde_json::Value::Object(m)) = serde_json::from_str(l)
    {
        names = m.keys().cloned().collect();
    }
    // YOLOv5 (an objectness loss) writes its own names: no time column, and
    // metrics/precision, metrics/recall, metrics/mAP_0.5, metrics/mAP_0.5:0.95.
    let yolov5 = names.iter().any(|n| n == "obj_loss");
    names.retain(|n| n != "total");
    let start = trainwatch::time::parse_rfc3339(&started).unwrap_or(0);
    // The metric groups the epochs hold besides the box metrics, in the order they first
    // appear: a segmentation or pose run's second group, a classification run's accuracy.
    let metrics: Vec<serde_json::Map<String, serde_json::Value>> = rows
        .rows
        .iter()
        .map(|r| match &r[idx("metrics")] {
            Value::Text(m) => serde_json::from_str(m).unwrap_or_default(),
            _ => Default::default(),
        })
        .collect();
    let mut groups: Vec<&String> = Vec::new();
    for g in metrics.iter().flat_map(|m| m.keys()) {
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    // (results.csv column, key in the group) for each group, as Ultralytics names them.
    const BOX: [(&str, &str); 4] = [
        ("precision", "precision"),
        ("recall", "recall"),
        ("mAP50", "map50"),
        ("mAP50-95", "map50_95"),
    ];
    let group_columns: Vec<Vec<(String, &str)>> = groups
        .iter()
        .map(|g| match g.as_str() {
            "classify" => vec![
                ("metrics/accuracy_top1".to_string(), "top1_acc"),
                ("metrics/accuracy_top5".to_string(), "top5_acc"),
            ],
            other => {
                let suffix = match other {
                    "mask" => "M",
                    "pose" => "P",
                    other => other,
                };
                BOX.iter()
                    .map(|(m, key)| (format!("metrics/{m}({suffix})"), *key))
                    .collect()
            }
        })
        .collect();
    // A classification run has no box metrics, and its results.csv no (B) columns.
    let boxes = !groups.iter().any(|g| *g == "classify");
    let mut columns = vec!["epoch".to_string()];
    if !yolov5 {
        columns.push("time".to_string());
    }
    columns.extend(names.iter().map(|n| format!("train/{n}")));
    if yolov5 {
        columns.extend(
            ["precision", "recall", "mAP_0.5", "mAP_0.5:0.95"].map(|m| format!("metrics/{m}")),
        );
    } else if boxes {
        columns.extend(BOX.iter().map(|(m, _)| format!("metrics/{m}(B)")));
    }
    columns.extend(group_columns.iter().flatten().map(|(c, _)| c.clone()));
    let mut out = Vec::new();
    for (r, extra) in rows.rows.iter().zip(&metrics) {
        let mut row = vec![r[idx("epoch")].clone()];
        // Ultralytics' own: seconds since training started (again after a resume); for
        // epochs stored before that was kept, since the run's first line.
        let t = match (&r[idx("train_time_s")], &r[idx("ended_at")]) {
            (Value::Real(t), _) => Some(Value::Real((t * 1e3).round() / 1e3)),
            (_, Value::Text(s)) => trainwatch::time::parse_rfc3339(s)
                .map(|e| Value::Real(((e - start) as f64 / 1e9 * 1e3).round() / 1e3)),
            _ => None,
        };
        if !yolov5 {
            row.push(t.unwrap_or(Value::Null));
        }
        let losses: serde_json::Map<String, serde_json::Value> = match &r[idx("losses")] {
            Value::Text(l) => serde_json::from_str(l).unwrap_or_default(),
            _ => Default::default(),
        };
        for n in &names {
            row.push(json_cell(losses.get(n)));
        }
        if boxes {
            for (_, c) in BOX {
                row.push(r[idx(c)].clone());
            }
        }
        for (g, cols) in groups.iter().zip(&group_columns) {
            for (_, key) in cols {
                row.push(json_cell(extra.get(*g).and_then(|m| m.get(*key))));
            }
        }
        out.push(row);
    }
    Ok(Rows { columns, rows: out })
}

/// A loss or metric stored in JSON as a cell: a number, or the text `"nan"`/`"inf"` a
/// non-finite value is kept as.
fn json_cell(v: Option<&serde_json::Value>) -> Value {
    match v {
        Some(serde_json::Value::Number(x)) => Value::Real(x.as_f64().unwrap_or(f64::NAN)),
        Some(serde_json::Value::String(s)) => Value::Text(s.clone()),
        _ => Value::Null,
    }
}
