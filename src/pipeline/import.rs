//! `import`: run folders with no log kept (months of past trainings under `/azaion/models`).
//! One run per folder from its `results.csv` and `args.yaml`: merged with the run a log
//! already gave for the same folder, else a run of its own (container `import` unless named),
//! keyed by the folder so that importing again adds nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::derive::{ContainerState, Op, Resume, RunFolder, RunKey, RunRow, RunStatus};
use crate::error::StoreError;
use crate::event::Stream;
use crate::source::runfolder::{self, CsvRow, PathMap, ResultsCsv};
use crate::store::{self, WriterHandle};

use super::replay::ReplayError;

/// How deep under a given folder run folders are looked for.
const MAX_DEPTH: usize = 3;

/// A folder written to this recently is a training still running.
const STILL_WRITTEN_NS: i64 = 10 * 60 * 1_000_000_000;

/// What an import did.
#[derive(Clone, Debug, Default)]
pub struct ImportSummary {
    /// Run folders found (holding a results.csv).
    pub folders: usize,
    /// Runs created for folders no log had named.
    pub new_runs: usize,
    /// Folders merged into the run a log had named.
    pub merged: usize,
    /// results.csv rows read.
    pub rows: usize,
    /// Rows without their epoch or cells.
    pub bad_rows: usize,
    /// results.csv files that could not be read, and why.
    pub unreadable: Vec<(PathBuf, String)>,
}

/// The run folders at or under `dir` (folders holding a `results.csv`), sorted.
fn run_folders(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if dir.join("results.csv").is_file() {
        out.push(dir.to_path_buf());
        return;
    }
    if depth == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut subdirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    for d in subdirs {
        run_folders(&d, depth - 1, out);
    }
}

/// A stable key time for a folder: the same folder is the same run at every import.
fn folder_key_ts(dir: &Path) -> i64 {
    (crate::hash::fnv1a(dir.to_string_lossy().as_bytes()) >> 1) as i64
}

/// Ultralytics' fitness of an epoch (what `best.pt` is kept by): 0.1 mAP50 + 0.9 mAP50-95.
fn fitness(columns: &[String], row: &CsvRow) -> Option<f64> {
    let v = |name: &str| {
        columns
            .iter()
            .position(|c| c == name)
            .and_then(|i| row.cells.get(i))
            .and_then(|c| c.parse::<f64>().ok())
    };
    Some(0.1 * v("metrics/mAP50(B)")? + 0.9 * v("metrics/mAP50-95(B)")?)
}

/// How a run with no log ended, from its rows and arguments: all its epochs (completed), still
/// written (running), stopped `patience` epochs after its best (early stopped), else
/// interrupted.
fn status_of(
    columns: &[String],
    rows: &[CsvRow],
    args: &[(String, String)],
    written_at: i64,
    now: i64,
) -> RunStatus {
    let arg = |k: &str| {
        args.iter()
            .find(|(n, _)| n == k)
            .and_then(|(_, v)| v.parse::<u32>().ok())
    };
    let last = rows.iter().map(|r| r.epoch).max().unwrap_or(0);
    if arg("epochs").is_some_and(|n| last >= n) {
        return RunStatus::Completed;
    }
    if now - written_at < STILL_WRITTEN_NS {
        return RunStatus::Running;
    }
    let best = rows
        .iter()
        .filter_map(|r| Some((r.epoch, fitness(columns, r)?)))
        .fold(None::<(u32, f64)>, |b, (e, f)| match b {
            Some((_, bf)) if bf >= f => b,
            _ => Some((e, f)),
        });
    match (arg("patience"), best) {
        (Some(p), Some((b, _))) if p > 0 && last >= b + p => RunStatus::EarlyStopped,
        _ => RunStatus::Interrupted,
    }
}

/// Imports the run folders at or under `dirs`.
pub fn import(
    dirs: &[PathBuf],
    container: &str,
    db: PathBuf,
    path_map: &[PathMap],
) -> Result<ImportSummary, ReplayError> {
    let mut folders = Vec::new();
    for d in dirs {
        if !d.is_dir() {
            return Err(crate::error::SourceError::Open {
                path: d.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a folder"),
            }
            .into());
        }
        run_folders(d, MAX_DEPTH, &mut folders);
    }
    let _lock = store::lock::IngestLock::acquire(&db, store::lock::Ingestor::Replay, |holder| {
        tracing::warn!(
            holder,
            "Database in use by another ingestor; waiting for it to end."
        );
    })
    .map_err(StoreError::from)?;
    let writer = WriterHandle::spawn(db.clone())?;
    let conn = store::open_ro(&db)?;
    let known = store::queries::runs_with_save_dir(&conn)?;
    drop(conn);
    let mut summary = ImportSummary {
        folders: folders.len(),
        ..ImportSummary::default()
    };
    let container: Arc<str> = Arc::from(container);
    let now = crate::time::now_ns();
    for dir in &folders {
        let path = dir.join("results.csv");
        let mut csv = ResultsCsv::new(&path);
        let polled = match csv.poll() {
            Ok(p) => p,
            Err(e) => {
                summary.unreadable.push((path, e.to_string()));
                continue;
            }
        };
        let Some(columns) = csv.columns() else {
            continue;
        };
        let columns: Arc<[String]> = columns.into();
        summary.rows += polled.rows.len();
        summary.bad_rows += polled.bad_rows as usize;
        let mut ops = Vec::new();
        let args = runfolder::read_args(dir).ok().flatten().unwrap_or_default();
        // The run a log named with this folder (as printed there, mapped here).
        let same = |save_dir: &str| {
            let mapped = runfolder::map_path(save_dir, path_map);
            mapped == *dir || std::fs::canonicalize(&mapped).ok() == std::fs::canonicalize(dir).ok()
        };
        let folder = match known
            .iter()
            .find(|r| r.save_dir.as_deref().is_some_and(same))
        {
            Some(run) => {
                summary.merged += 1;
                RunFolder {
                    key: run.key.clone(),
                    save_dir: run.save_dir.clone().unwrap_or_default(),
                    train_start: run.started_at,
                }
            }
            None => {
                summary.new_runs += 1;
                let row = new_run(dir, &container, &columns, &polled.rows, &args, now);
                let folder = RunFolder {
                    key: row.key.clone(),
                    save_dir: row.save_dir.clone().unwrap_or_default(),
                    train_start: row.started_at,
                };
                ops.push(Op::Run(row));
                folder
            }
        };
        folder.found(dir, Some(&args), &mut ops);
        let mut state = ContainerState::new(folder.key.container.clone(), Resume::default());
        state.results_rows(
            &folder,
            &path.to_string_lossy(),
            &columns,
            &polled.rows,
            false,
            &mut ops,
        );
        writer.send(ops)?;
    }
    writer.finish()?;
    Ok(summary)
}

/// The run of a folder no log named: from its args.yaml (settings, epochs, model) and its
/// results.csv (losses, times, how far it got).
fn new_run(
    dir: &Path,
    container: &Arc<str>,
    columns: &[String],
    rows: &[CsvRow],
    args: &[(String, String)],
    now: i64,
) -> RunRow {
    let arg = |k: &str| {
        args.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty() && v != "null")
    };
    let written_at = std::fs::metadata(dir.join("results.csv"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(now, |d| d.as_nanos() as i64);
    // Training started `time` seconds (its last row's) before the file was last written.
    let time = columns.iter().position(|c| c == "time");
    let last_time = rows
        .last()
        .and_then(|r| time.and_then(|i| r.cells.get(i)))
        .and_then(|t| t.parse::<f64>().ok())
        .filter(|t| t.is_finite() && *t >= 0.0)
        .unwrap_or(0.0);
    let started_at = written_at - (last_time * 1e9) as i64;
    let status = status_of(columns, rows, args, written_at, now);
    RunRow {
        key: RunKey {
            container: container.clone(),
            stream: Stream::Stdout,
            ts: folder_key_ts(dir),
            seq: 0,
        },
        started_at,
        ended_at: (status != RunStatus::Running).then_some(written_at),
        status,
        epochs_total: arg("epochs").and_then(|e| e.parse().ok()),
        best_epoch_reported: None,
        save_dir: Some(arg("save_dir").unwrap_or_else(|| dir.to_string_lossy().into_owned())),
        model: arg("model"),
        loss_names: columns
            .iter()
            .filter_map(|c| c.strip_prefix("train/"))
            .map(str::to_string)
            .collect(),
        params: Some(crate::derive::args_params(args)),
        ultralytics_version: None,
        failure: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_yaml_is_read_flat() {
        let args = runfolder::parse_args_yaml(
            "task: detect\nmode: train\nmodel: yolo11n.yaml\nepochs: 40\nname: 'earlystop'\nsave_dir: /work/fx/runs/earlystop\ncfg: null\nmixup: 0.0\n",
        );
        assert_eq!(args[0], ("task".into(), "detect".into()));
        assert_eq!(args[4], ("name".into(), "earlystop".into()));
        assert_eq!(
            args[5],
            ("save_dir".into(), "/work/fx/runs/earlystop".into())
        );
        assert_eq!(args.len(), 8);
    }

    #[test]
    fn how_a_run_without_a_log_ended() {
        let columns: Vec<String> = ["epoch", "metrics/mAP50(B)", "metrics/mAP50-95(B)"]
            .map(String::from)
            .to_vec();
        let rows: Vec<CsvRow> = [
            (1, "0.1", "0.05"),
            (2, "0.3", "0.2"),
            (3, "0.2", "0.1"),
            (4, "0.2", "0.1"),
        ]
        .map(|(e, a, b)| CsvRow {
            row: e - 1,
            epoch: e,
            cells: vec![e.to_string(), a.into(), b.into()],
        })
        .to_vec();
        let args = |e: &str, p: &str| {
            vec![
                ("epochs".to_string(), e.to_string()),
                ("patience".to_string(), p.to_string()),
            ]
        };
        let old = 0;
        let now = 3_600_000_000_000;
        assert_eq!(
            status_of(&columns, &rows, &args("4", "100"), old, now),
            RunStatus::Completed
        );
        assert_eq!(
            status_of(&columns, &rows, &args("40", "2"), old, now),
            RunStatus::EarlyStopped
        );
        assert_eq!(
            status_of(&columns, &rows, &args("40", "3"), old, now),
            RunStatus::Interrupted
        );
        assert_eq!(
            status_of(&columns, &rows, &args("40", "3"), now - 1, now),
            RunStatus::Running
        );
    }
}
