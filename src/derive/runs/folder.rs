//! A run folder's `results.csv`, merged into the run's epochs. It is the only place holding
//! the validation losses, the learning rates and full-precision values: where it and the
//! console disagree, the csv wins; every cell is kept as written (`Op::ResultsRow`); a NaN or
//! infinity in any column (validation losses included, under a console that printed none) is a
//! `loss_non_finite` event naming the column and the epoch, and marks the epoch non-finite (so
//! `TrainingLossNonFinite` fires as for a NaN on the console).

use std::sync::Arc;

use serde_json::json;

use super::{ContainerState, RunKey};
use crate::derive::{EpochRow, EventRow, Op, RunPatch};
use crate::event::{Level, kind};
use crate::source::runfolder::{Checkpoint, CsvRow};

/// The `stream` of what a run folder says (its events are no line of the container's log).
pub const RUN_FOLDER: &str = "run_folder";

/// A run with a run folder: its key, its `save_dir` as printed, and when its training started.
#[derive(Clone, Debug, PartialEq)]
pub struct RunFolder {
    pub key: RunKey,
    pub save_dir: String,
    pub train_start: i64,
}

/// A cell as a number: `nan`, `inf`, `-inf` in any case included; `None` when it is none.
fn number(cell: &str) -> Option<f64> {
    let c = cell.trim();
    if c.is_empty() {
        return None;
    }
    c.parse::<f64>()
        .ok()
        .or_else(|| c.to_ascii_lowercase().parse::<f64>().ok())
}

/// Box-metric columns: Ultralytics 8.x `(B)`, YOLOv5's own names.
const PRECISION: [&str; 2] = ["metrics/precision(B)", "metrics/precision"];
const RECALL: [&str; 2] = ["metrics/recall(B)", "metrics/recall"];
const MAP50: [&str; 2] = ["metrics/mAP50(B)", "metrics/mAP_0.5"];
const MAP50_95: [&str; 2] = ["metrics/mAP50-95(B)", "metrics/mAP_0.5:0.95"];

impl ContainerState {
    /// The runs this container knows that have a run folder: the running one and the ended
    /// ones it may be resumed from.
    pub fn run_folders(&self) -> Vec<RunFolder> {
        let mut out: Vec<RunFolder> = Vec::new();
        if let Some(run) = &self.run
            && let Some(dir) = &run.row.save_dir
        {
            out.push(RunFolder {
                key: run.row.key.clone(),
                save_dir: dir.clone(),
                train_start: run.train_start.unwrap_or(run.row.started_at),
            });
        }
        for row in self.by_save_dir.values() {
            if let Some(dir) = &row.save_dir
                && !out.iter().any(|f| f.key == row.key)
            {
                out.push(RunFolder {
                    key: row.key.clone(),
                    save_dir: dir.clone(),
                    train_start: row.started_at,
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// The running run's folder, if it printed one.
    pub fn running_folder(&self) -> Option<RunFolder> {
        let run = self.run.as_ref().filter(|r| r.is_running())?;
        Some(RunFolder {
            key: run.row.key.clone(),
            save_dir: run.row.save_dir.clone()?,
            train_start: run.train_start.unwrap_or(run.row.started_at),
        })
    }

    /// Merges rows of the run folder's `results.csv` (`file`, with its header `columns`) into
    /// the epochs of `run`. For the container's latest run, rows up to the last one merged are
    /// passed over (a restarted `watch` reads the file from its start) unless the file was
    /// `restarted` (rewritten).
    pub fn results_rows(
        &mut self,
        run: &RunFolder,
        file: &str,
        columns: &Arc<[String]>,
        rows: &[CsvRow],
        restarted: bool,
        out: &mut Vec<Op>,
    ) {
        if restarted {
            out.push(Op::RunPatch(run.key.clone(), RunPatch::ResultsRestarted));
        }
        let latest = self.run.as_mut().filter(|r| r.row.key == run.key);
        let done = match latest {
            Some(r) => {
                if restarted {
                    r.csv_rows = None;
                }
                let done = r.csv_rows;
                if let Some(last) = rows.iter().map(|r| r.row + 1).max() {
                    r.csv_rows = Some(r.csv_rows.map_or(last, |e| e.max(last)));
                }
                done
            }
            None => None,
        };
        let rows: Vec<&CsvRow> = rows
            .iter()
            .filter(|r| done.is_none_or(|d| r.row >= d))
            .collect();
        let at = |names: &[&str]| columns.iter().position(|c| names.contains(&c.as_str()));
        let time = at(&["time"]);
        let (precision, recall, map50, map50_95) =
            (at(&PRECISION), at(&RECALL), at(&MAP50), at(&MAP50_95));
        for row in rows {
            let cell = |i: Option<usize>| i.and_then(|i| row.cells.get(i)).and_then(|c| number(c));
            let train_time_s = cell(time).filter(|t| t.is_finite() && *t >= 0.0);
            let ended_at = run
                .train_start
                .saturating_add(train_time_s.map_or(0, |t| (t * 1e9) as i64));
            let losses: Vec<(String, f64)> = columns
                .iter()
                .zip(&row.cells)
                .filter_map(|(c, v)| Some((c.strip_prefix("train/")?.to_string(), number(v)?)))
                .collect();
            let non_finite: Vec<(usize, &String)> = columns
                .iter()
                .enumerate()
                .filter(|(i, _)| number(&row.cells[*i]).is_some_and(|v| !v.is_finite()))
                .collect();
            out.push(Op::ResultsRow(
                run.key.clone(),
                row.row,
                row.epoch,
                columns.clone(),
                row.cells.clone(),
            ));
            out.push(Op::Epoch(
                run.key.clone(),
                EpochRow {
                    epoch: row.epoch,
                    ended_at,
                    losses: (!losses.is_empty()).then_some(losses),
                    precision: cell(precision),
                    recall: cell(recall),
                    map50: cell(map50),
                    map50_95: cell(map50_95),
                    train_time_s,
                    // Some: a row of results.csv (finite or not), which the alert rules
                    // weigh above the console's.
                    non_finite: Some(!non_finite.is_empty()),
                    ..EpochRow::default()
                },
            ));
            for (i, column) in non_finite {
                let value = &row.cells[i];
                out.push(Op::Event(EventRow {
                    ts: ended_at,
                    container: self.container.clone(),
                    stream: RUN_FOLDER,
                    seq: u32::try_from(i).unwrap_or(u32::MAX),
                    key_ts: ended_at,
                    level: Level::Error,
                    kind: kind::LOSS_NON_FINITE,
                    message: format!("{column} is {value} at epoch {} in {file}", row.epoch),
                    context: json!({
                        "epoch": row.epoch, "column": column, "value": value,
                        "non_finite": column, "file": file, "source": "results.csv",
                    })
                    .to_string(),
                }));
            }
        }
    }

    /// Checkpoint writes of the run folder that settled (`checkpoint_saved`: file, size, the
    /// epoch it followed; a `best.pt` write of the running run makes that epoch its best), and
    /// whether `last.pt` stopped being rewritten: `last_pt` is when it
    /// was last written (ns). Two epochs of the running run ended after it without a rewrite
    /// (it was being rewritten before: it exists) is a `checkpoint_save_failed`, said once.
    pub fn checkpoints(
        &mut self,
        folder: &RunFolder,
        saved: &[Checkpoint],
        last_pt: Option<i64>,
        out: &mut Vec<Op>,
    ) {
        let Some(run) = self.run.as_mut().filter(|r| r.row.key == folder.key) else {
            return;
        };
        let mut best = None;
        for c in saved {
            if c.name == "last.pt" {
                run.stall_said = None;
            }
            // The epoch it followed: the latest that ended before it was written (a look may
            // come after the next epoch ended).
            let epoch = run
                .ends
                .iter()
                .filter(|(_, end)| *end <= c.written_at)
                .max_by_key(|(_, end)| *end)
                .map(|(e, _)| *e)
                .or(run.last_epoch);
            // Ultralytics rewrites best.pt when an epoch's fitness is the best so far (ties
            // included): the run's best epoch. (After the run's end it is only stripped.)
            if c.name == "best.pt" && run.is_running() && epoch.is_some() {
                best = epoch;
            }
            let at = match epoch {
                Some(e) => format!(", epoch {e}"),
                None => String::new(),
            };
            out.push(Op::Event(EventRow {
                ts: c.written_at,
                container: self.container.clone(),
                stream: RUN_FOLDER,
                seq: crate::hash::fnv1a(c.name.as_bytes()) as u32,
                key_ts: c.written_at,
                level: Level::Info,
                kind: kind::CHECKPOINT_SAVED,
                message: format!("{}{at}, {:.1} MB", c.name, c.size as f64 / 1e6),
                context: json!({
                    "file": c.name, "path": c.path.to_string_lossy(), "size": c.size,
                    "epoch": epoch, "source": "run_folder",
                })
                .to_string(),
            }));
        }
        if let Some(b) = best
            && run.row.best_epoch_reported != Some(b)
        {
            run.row.best_epoch_reported = Some(b);
            out.push(Op::Run(run.row.clone()));
        }
        let (Some(written), true) = (last_pt, run.is_running()) else {
            return;
        };
        let n = run.ends.len();
        if n < 2 || run.stall_said == Some(written) {
            return;
        }
        let ((before, before_end), (now, now_end)) = (run.ends[n - 2], run.ends[n - 1]);
        if written >= before_end || written < folder.train_start {
            return;
        }
        run.stall_said = Some(written);
        out.push(Op::Event(EventRow {
            ts: now_end,
            container: self.container.clone(),
            stream: RUN_FOLDER,
            seq: now,
            key_ts: now_end,
            level: Level::Error,
            kind: kind::CHECKPOINT_SAVE_FAILED,
            message: format!(
                "weights/last.pt was not rewritten after epoch {before} (last written {}); the run is at epoch {now}",
                crate::time::format_ns(written)
            ),
            context: json!({
                "file": "last.pt", "last_written": crate::time::format_ns(written),
                "epoch": now, "source": "run_folder",
            })
            .to_string(),
        }));
    }

    /// Says that `folder` cannot be read (and why): a `run_folder_unreadable` warning at the
    /// run's start, which `status` and the page show with the run.
    pub fn folder_unreadable(&self, folder: &RunFolder, why: &str, out: &mut Vec<Op>) {
        out.push(Op::Event(EventRow {
            ts: folder.train_start,
            container: self.container.clone(),
            stream: RUN_FOLDER,
            seq: u32::MAX,
            key_ts: folder.train_start,
            level: Level::Warning,
            kind: kind::RUN_FOLDER_UNREADABLE,
            message: format!("The run folder {} cannot be read: {why}", folder.save_dir),
            context: json!({ "save_dir": folder.save_dir, "why": why }).to_string(),
        }));
    }
}
