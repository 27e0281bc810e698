//! The run folder of a followed container's running training: found through the container's
//! mounts (and trainwatch's own, when it runs in a container), its `results.csv` read as it
//! grows and merged into the run ([`crate::derive::ContainerState::results_rows`]).

use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::InspectContainerOptions;

use crate::derive::{ContainerState, Op, RunFolder};
use crate::source::docker::{ContainerInfo, Shared};
use crate::source::runfolder::{self, Checkpoints, Mapping, PathMap, Polled, ResultsCsv};
use crate::telemetry::events::{InternalEvent, ParseSkipped};

use super::ingest::Ingest;

/// How often a running run's results.csv is looked at.
const FOLDER_POLL: Duration = Duration::from_secs(2);

/// Where a container's paths are here: its mounts and working directory (one inspect), and
/// trainwatch's own mounts when it runs in a container.
pub(super) async fn folder_mapping(
    shared: &Shared,
    info: &ContainerInfo,
    maps: &[PathMap],
) -> Mapping {
    let mounts = |i: &bollard::models::ContainerInspectResponse| -> Vec<(String, String)> {
        i.mounts
            .iter()
            .flatten()
            .filter_map(|m| Some((m.destination.clone()?, m.source.clone()?)))
            .collect()
    };
    let mut mapping = Mapping {
        maps: maps.to_vec(),
        ..Mapping::default()
    };
    if let Ok(i) = shared
        .docker
        .inspect_container(&info.id, None::<InspectContainerOptions>)
        .await
    {
        mapping.workdir = i.config.as_ref().and_then(|c| c.working_dir.clone());
        mapping.mounts = mounts(&i);
    }
    if let Some(own) = crate::source::docker::own_id()
        && let Ok(i) = shared
            .docker
            .inspect_container(own, None::<InspectContainerOptions>)
            .await
    {
        // (source on the host, destination here)
        mapping.own = Some(mounts(&i).into_iter().map(|(d, s)| (s, d)).collect());
    }
    mapping
}

/// The folder of the running run as read here.
struct Tailed {
    folder: RunFolder,
    dir: std::path::PathBuf,
    csv: ResultsCsv,
    checkpoints: Checkpoints,
    /// Its `args.yaml` was read (it is written once, at the trainer's start).
    args_read: bool,
    /// The run was told where its folder is.
    found_said: bool,
}

/// The running run's results.csv, read as it grows ([`crate::derive::runs`] merges it).
pub(super) struct FolderTail {
    mapping: Mapping,
    tail: Option<Tailed>,
    /// Folders already said to be unreadable (said once).
    said: std::collections::HashSet<String>,
    last: Option<tokio::time::Instant>,
}

impl FolderTail {
    pub(super) fn new(mapping: Mapping) -> Self {
        FolderTail {
            mapping,
            tail: None,
            said: Default::default(),
            last: None,
        }
    }

    /// Reads what the running run's results.csv gained (at most every [`FOLDER_POLL`]); the
    /// run that just ended gets a last read.
    pub(super) fn poll(&mut self, f: &mut Ingest<'_>) {
        if self.last.is_some_and(|t| t.elapsed() < FOLDER_POLL) {
            return;
        }
        self.last = Some(tokio::time::Instant::now());
        let (state, ops) = f.state_and_ops();
        let running = state.running_folder();
        if let Some(t) = &mut self.tail {
            let same = running.as_ref().is_some_and(|r| r.key == t.folder.key);
            if !t.args_read {
                read_args(state, t, ops);
            }
            read_csv(state, &t.folder, &mut t.csv, ops, &mut self.said);
            let saved = t.checkpoints.poll();
            state.checkpoints(&t.folder, &saved, t.checkpoints.written_at("last.pt"), ops);
            // An ended run's folder is still looked at (its last checkpoints are rewritten
            // after its end) until another run starts.
            if same || running.is_none() {
                return;
            }
            self.tail = None;
        }
        let Some(folder) = running else {
            return;
        };
        match self.mapping.local(&folder.save_dir) {
            Ok(dir) => {
                let mut csv = ResultsCsv::new(dir.join("results.csv"));
                read_csv(state, &folder, &mut csv, ops, &mut self.said);
                let mut t = Tailed {
                    checkpoints: Checkpoints::new(&dir),
                    folder,
                    dir,
                    csv,
                    args_read: false,
                    found_said: false,
                };
                read_args(state, &mut t, ops);
                self.tail = Some(t);
            }
            Err(why) => say_unreadable(state, &folder, &why, &mut self.said, ops),
        }
    }
}

impl FolderTail {
    /// The container stopped: what its folder gained last (the final results.csv rows, the
    /// checkpoints rewritten at the end), every checkpoint write taken as settled.
    pub(super) fn last_look(&mut self, f: &mut Ingest<'_>) {
        let (state, ops) = f.state_and_ops();
        if let Some(t) = &mut self.tail {
            read_csv(state, &t.folder, &mut t.csv, ops, &mut self.said);
            let saved = t.checkpoints.last_look();
            state.checkpoints(&t.folder, &saved, t.checkpoints.written_at("last.pt"), ops);
        }
    }
}

/// The folder's `args.yaml`, once it is there: the run's params are filled from it, and the
/// run learns where its folder is read.
fn read_args(state: &mut ContainerState, t: &mut Tailed, ops: &mut Vec<Op>) {
    let args = match runfolder::read_args(&t.dir) {
        Ok(Some(args)) => Some(args),
        // Not written yet (or a trainer that writes none, YOLOv5's `opt.yaml`): looked for
        // again at the next poll.
        Ok(None) => None,
        Err(e) => {
            t.args_read = true;
            tracing::warn!(
                container = %state.container(),
                dir = %t.dir.display(),
                error = %e,
                "Cannot read the run folder's args.yaml; the run keeps the parameters its log printed."
            );
            None
        }
    };
    if args.is_some() {
        t.args_read = true;
    } else if t.found_said || !t.dir.is_dir() {
        return;
    }
    t.found_said = true;
    state.run_folder_found(&t.folder, &t.dir, args.as_deref(), ops);
}

/// Merges what `csv` gained; a file not written yet (no epoch ended) is waited for.
fn read_csv(
    state: &mut ContainerState,
    folder: &RunFolder,
    csv: &mut ResultsCsv,
    ops: &mut Vec<Op>,
    said: &mut std::collections::HashSet<String>,
) {
    match csv.poll() {
        Ok(polled) => {
            merge(state, folder, csv, &polled, ops);
        }
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && csv.path().parent().is_some_and(std::path::Path::is_dir) => {}
        Err(e) => {
            let why = format!("{}: {e}", csv.path().display());
            say_unreadable(state, folder, &why, said, ops);
        }
    }
}

/// Merges what a poll of `csv` read into `folder`'s run (once its header is known; rows
/// without their epoch or cells are counted as `bad_results_row`). Whether it merged.
pub(super) fn merge(
    state: &mut ContainerState,
    folder: &RunFolder,
    csv: &ResultsCsv,
    polled: &Polled,
    ops: &mut Vec<Op>,
) -> bool {
    let Some(columns) = csv.columns() else {
        return false;
    };
    let columns: Arc<[String]> = columns.into();
    let file = csv.path().to_string_lossy().into_owned();
    state.results_rows(folder, &file, &columns, &polled.rows, polled.restarted, ops);
    for _ in 0..polled.bad_rows {
        ParseSkipped("bad_results_row").emit();
    }
    true
}

/// A run folder that cannot be read, said once: a warning and the skip `run_folder_unreadable`.
/// The `run_folder_unreadable` event says it on `status` and the page.
fn say_unreadable(
    state: &ContainerState,
    folder: &RunFolder,
    why: &str,
    said: &mut std::collections::HashSet<String>,
    ops: &mut Vec<Op>,
) {
    if said.insert(folder.save_dir.clone()) {
        ParseSkipped("run_folder_unreadable").emit();
        tracing::warn!(
            container = %state.container(),
            save_dir = folder.save_dir,
            why,
            "Cannot read the run folder; the history from the log stays as it is."
        );
        state.folder_unreadable(folder, why, ops);
    }
}
