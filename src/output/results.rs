//! A run's epochs as Ultralytics' `results.csv` columns: what `history --run N --format csv`
//! writes and what the MLflow export logs, from one mapping.

use rusqlite::Connection;
use rusqlite::types::Value;

use crate::error::StoreError;
use crate::store::queries::{self, Rows};

/// A run's results.csv table, and when each of its rows (epochs) ended (ns), in the same order.
pub struct ResultsCsv {
    pub table: Rows,
    pub ended_at: Vec<Option<i64>>,
}

/// The run's own results.csv as its run folder had it (every column, every cell as written),
/// when it was read ([`crate::derive::ContainerState::results_rows`]).
pub fn results_csv_as_written(conn: &Connection, run_id: i64) -> Result<Option<Rows>, StoreError> {
    use rusqlite::OptionalExtension;
    let q = StoreError::sql("read the run's results.csv");
    let columns: Option<String> = conn
        .query_row(
            "SELECT results_columns FROM runs WHERE run_id = ?1",
            [run_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(q)?
        .flatten();
    let Some(columns) = columns.and_then(|c| serde_json::from_str::<Vec<String>>(&c).ok()) else {
        return Ok(None);
    };
    let mut stmt = conn
        .prepare("SELECT cells FROM results_rows WHERE run_id = ?1 ORDER BY row")
        .map_err(StoreError::sql("read the run's results.csv"))?;
    let rows = stmt
        .query_map([run_id], |r| r.get::<_, String>(0))
        .and_then(|it| it.collect::<Result<Vec<String>, _>>())
        .map_err(StoreError::sql("read the run's results.csv"))?
        .into_iter()
        .map(|cells| {
            let cells: Vec<String> = serde_json::from_str(&cells).unwrap_or_default();
            (0..columns.len())
                .map(|i| cells.get(i).map_or(Value::Null, |c| Value::Text(c.clone())))
                .collect()
        })
        .collect();
    Ok(Some(Rows { columns, rows }))
}

/// The results.csv table the MLflow export logs: the run folder's own rows as written (full
/// precision, validation losses and learning rates; the latest row of an epoch a resume
/// repeated), each at its epoch's end; the console's
/// epochs where there is no folder. While a run whose folder holds a results.csv has none of
/// its rows read yet, nothing: the console's rounded values would be logged at the same steps
/// as the csv's a moment later.
pub fn for_export(
    conn: &Connection,
    run_id: i64,
    folder: Option<&str>,
    running: bool,
) -> Result<ResultsCsv, StoreError> {
    let console = results_csv(conn, run_id, epochs(conn, run_id)?)?;
    match results_csv_as_written(conn, run_id)? {
        Some(mut table) if !table.rows.is_empty() => {
            // A resumed run's results.csv repeats the epoch it resumed at: the latest row of
            // each epoch is the one its weights went on from.
            let epoch_of = |r: &Vec<Value>| match r.first() {
                Some(Value::Text(t)) => t.trim().parse::<i64>().ok(),
                _ => None,
            };
            let mut last_row = std::collections::HashMap::new();
            for (i, r) in table.rows.iter().enumerate() {
                last_row.insert(epoch_of(r), i);
            }
            let mut i = 0;
            table.rows.retain(|r| {
                i += 1;
                last_row.get(&epoch_of(r)) == Some(&(i - 1))
            });
            let ends: std::collections::HashMap<i64, Option<i64>> = console
                .table
                .rows
                .iter()
                .zip(&console.ended_at)
                .filter_map(|(r, e)| match r.first() {
                    Some(Value::Integer(n)) => Some((*n, *e)),
                    _ => None,
                })
                .collect();
            let ended_at = table
                .rows
                .iter()
                .map(|r| match r.first() {
                    Some(Value::Text(t)) => t
                        .trim()
                        .parse::<i64>()
                        .ok()
                        .and_then(|n| ends.get(&n).copied().flatten()),
                    _ => None,
                })
                .collect();
            Ok(ResultsCsv { table, ended_at })
        }
        _ if running
            && folder.is_some_and(|f| std::path::Path::new(f).join("results.csv").exists()) =>
        {
            Ok(ResultsCsv {
                table: Rows {
                    columns: console.table.columns,
                    rows: Vec::new(),
                },
                ended_at: Vec::new(),
            })
        }
        _ => Ok(console),
    }
}

/// A run's epochs as stored ([`queries::HISTORY_EPOCHS`]), the input of [`results_csv`].
pub fn epochs(conn: &Connection, run_id: i64) -> Result<Rows, StoreError> {
    Rows::query(conn, queries::HISTORY_EPOCHS, &[&run_id]).map_err(StoreError::sql("list epochs"))
}

/// Rebuilds results.csv's columns: epoch, time (seconds since training started, as
/// Ultralytics counts it),
/// `train/<loss>` for each loss column, metrics/precision(B) ... metrics/mAP50-95(B), and for
/// segmentation and pose runs the same four of their second group, `(M)` or `(P)`; for
/// classification runs metrics/accuracy_top1 and metrics/accuracy_top5 instead of the box four;
/// for YOLOv5 runs YOLOv5's own columns (epoch, train/box_loss, train/obj_loss, train/cls_loss,
/// metrics/precision, metrics/recall, metrics/mAP_0.5, metrics/mAP_0.5:0.95).
#[expect(
    clippy::too_many_lines,
    reason = "one results.csv column after another, in Ultralytics' order"
)]
pub fn results_csv(conn: &Connection, run_id: i64, rows: Rows) -> Result<ResultsCsv, StoreError> {
    let (names, started) = queries::run_loss_names_and_start(conn, run_id)?;
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
    let start = crate::time::parse_rfc3339(&started).unwrap_or(0);
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
            (_, Value::Text(s)) => crate::time::parse_rfc3339(s)
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
    let ended_at = rows
        .rows
        .iter()
        .map(|r| match &r[idx("ended_at")] {
            Value::Text(s) => crate::time::parse_rfc3339(s),
            _ => None,
        })
        .collect();
    Ok(ResultsCsv {
        table: Rows { columns, rows: out },
        ended_at,
    })
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
