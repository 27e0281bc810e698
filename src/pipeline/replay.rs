//! Replay of archived logs: plan the file sets, read each with its reader, and hand every line
//! to the one ingest driver ([`super::ingest`]) that live follow uses too.
//!
//! Threads: this one reads, assembles, parses and derives; the store's writer thread commits
//! batches behind a bounded channel, so a slow disk slows reading and nothing is dropped.
//!
//! Exactly once: each source position (container, stream, origin) has a cursor in the store,
//! committed in the same transaction as the rows it covers. Lines at or before the cursor were
//! stored by an earlier run and are skipped before derivation, so replaying the same files
//! again, or an overlapping rotated set, adds nothing and does not disturb run state.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use crate::derive::alerts::{Engine, Rules, Signal};
use crate::derive::{ContainerState, Op, RunFolder};
use crate::error::{SourceError, StoreError};
use crate::event::{Key, Stream};
use crate::parse::Parser;
use crate::source::files::{self, Format};
use crate::source::jsonfile::JsonFileReader;
use crate::source::runfolder::{self, PathMap};
use crate::source::text::{self, TextReader};
use crate::source::{LineSource, Skips};
use crate::store::{self, AlertSink, WriteStats, WriterHandle, WriterOptions};

use super::ingest::{BATCH_OPS, Ingest};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a replay did.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub files: usize,
    pub bytes: u64,
    /// Lines read from sources (after partial merge).
    pub lines: u64,
    /// Lines skipped because an earlier replay stored them.
    pub already_stored: u64,
    /// Records after grouping.
    pub records: u64,
    pub skips: Skips,
    pub write: WriteStats,
    pub by_kind: BTreeMap<&'static str, u64>,
    /// The run folders the logs named.
    pub folders: Folders,
}

/// The run folders a replay looked for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Folders {
    /// Folders whose results.csv was read, and its rows.
    pub read: usize,
    pub rows: usize,
    /// Rows without their epoch or cells.
    pub bad_rows: usize,
    /// Folders that could not be read: the folder as printed, where it was looked for, why.
    pub unreadable: Vec<(String, PathBuf, String)>,
}

/// Reads the `results.csv` of a run's folder (found through `path_map`) into `ops`. A folder
/// that cannot be read is said (a warning, counted as the skip `run_folder_unreadable`) and
/// changes nothing.
fn read_run_folder(
    state: &mut ContainerState,
    folder: &RunFolder,
    path_map: &[PathMap],
    ops: &mut Vec<Op>,
    said: &mut Folders,
) {
    use crate::telemetry::events::{InternalEvent, ParseSkipped};
    let dir = runfolder::map_path(&folder.save_dir, path_map);
    let path = dir.join("results.csv");
    let mut csv = runfolder::ResultsCsv::new(&path);
    match csv.poll() {
        Ok(polled) => {
            let args = runfolder::read_args(&dir).unwrap_or_else(|e| {
                tracing::warn!(dir = %dir.display(), error = %e, "Cannot read the run folder's args.yaml.");
                None
            });
            state.run_folder_found(folder, &dir, args.as_deref(), ops);
            if super::folders::merge(state, folder, &csv, &polled, ops) {
                said.read += 1;
                said.rows += polled.rows.len();
                said.bad_rows += polled.bad_rows as usize;
            }
        }
        Err(e) => {
            ParseSkipped("run_folder_unreadable").emit();
            tracing::warn!(
                container = %state.container(),
                save_dir = folder.save_dir,
                looked_at = %path.display(),
                error = %e,
                "Cannot read a run folder's results.csv; map it with --path-map CONTAINER_PREFIX=LOCAL_PREFIX. The history from the log stays as it is."
            );
            state.folder_unreadable(folder, &format!("{}: {e}", path.display()), ops);
            said.unreadable
                .push((folder.save_dir.clone(), path, e.to_string()));
        }
    }
}

/// Replays `inputs` into the database at `db`, evaluating the default alert rules.
pub fn replay(
    inputs: &[String],
    container: Option<&str>,
    db: PathBuf,
    parser: &Parser,
) -> Result<Summary, ReplayError> {
    replay_with(inputs, container, db, parser, &Rules::default(), &[])
}

/// Replays `inputs` into the database at `db`. Alerts are evaluated on the log's times and
/// recorded (origin `replay`), never notified: archived logs do not page anyone. The run
/// folders the logs name are found through `path_map` (else as printed) and their
/// `results.csv` merged into the runs' epochs.
#[expect(
    clippy::too_many_lines,
    reason = "replay's file loop: position check, read, group, parse, derive and batch in one place"
)]
pub fn replay_with(
    inputs: &[String],
    container: Option<&str>,
    db: PathBuf,
    parser: &Parser,
    rules: &Rules,
    path_map: &[PathMap],
) -> Result<Summary, ReplayError> {
    let sets = files::plan(inputs, container)?;
    // One ingestor per database: refused while a watch runs on it, after another replay.
    let _lock = store::lock::IngestLock::acquire(&db, store::lock::Ingestor::Replay, |holder| {
        tracing::warn!(
            holder,
            "Database in use by another replay; waiting for it to end."
        );
    })
    .map_err(StoreError::from)?;
    // The writer creates and migrates the database; the state of containers already in it is
    // read on a separate read-only connection.
    let engine = Engine::new(rules.clone(), false, "");
    let writer = WriterHandle::spawn_with(
        db.clone(),
        WriterOptions {
            alerts: Some(AlertSink::new(engine, Vec::new(), None)),
            retry: false,
            health: None,
            note: None,
        },
    )?;
    let conn = store::open_ro(&db)?;
    let mut summary = Summary::default();
    let mut states: HashMap<String, ContainerState> = HashMap::new();
    let mut cursors: HashMap<String, HashMap<(Stream, String), Key>> = HashMap::new();
    // Sets still to read per container: after its last, its archive has ended, and what is
    // kept of it is dropped (memory stays flat over thousands of archives).
    let mut sets_left: HashMap<String, usize> = HashMap::new();
    for set in &sets {
        *sets_left.entry(set.container.clone()).or_insert(0) += 1;
    }
    let read = (|| -> Result<(), ReplayError> {
        for set in sets {
            let last_set = {
                let left = sets_left.entry(set.container.clone()).or_insert(1);
                *left = left.saturating_sub(1);
                *left == 0
            };
            summary.files += set.files.len();
            let container: Arc<str> = Arc::from(set.container.as_str());
            if !states.contains_key(&set.container) {
                let resume = store::queries::resume_state(&conn, &container)?;
                states.insert(
                    set.container.clone(),
                    ContainerState::new(container.clone(), resume),
                );
                cursors.insert(
                    set.container.clone(),
                    store::queries::cursors(&conn, &set.container)?,
                );
            }
            let state = states.remove(&set.container).expect("inserted above");
            let cur = cursors.get_mut(&set.container).expect("inserted above");
            // A once-only input is read from what planning opened (and read only once).
            let taken = |p: &crate::source::Piped| {
                p.take()
                    .unwrap_or_else(|| Box::new(std::io::empty()) as Box<dyn std::io::Read + Send>)
            };
            let mut source: Box<dyn LineSource> = match (set.format, set.piped.as_deref()) {
                (Format::DockerJson, Some(p)) => {
                    Box::new(JsonFileReader::piped(set.files[0].clone(), taken(p)))
                }
                (Format::Text, Some(p)) => Box::new(TextReader::piped(
                    set.files[0].clone(),
                    taken(p),
                    text::fingerprint_head(p.head()),
                )),
                (Format::DockerJson, None) => Box::new(JsonFileReader::new(set.files.clone())),
                (Format::Text, None) => {
                    let fp =
                        text::fingerprint(&set.files[0]).map_err(|source| SourceError::Open {
                            path: set.files[0].clone(),
                            source,
                        })?;
                    Box::new(TextReader::new(set.files.clone(), fp))
                }
            };
            let origin: Arc<str> = Arc::from(source.origin());
            // What earlier runs stored: lines it covers are skipped.
            let mut ingest = Ingest::new(
                parser,
                state,
                origin.clone(),
                cur.get(&(Stream::Stdout, origin.to_string())).copied(),
                cur.get(&(Stream::Stderr, origin.to_string())).copied(),
            );
            let sent = (|| -> Result<(), ReplayError> {
                for raw in source.by_ref() {
                    if ingest.push(raw)
                        && let Some(batch) =
                            ingest.batch(false, false, writer.empty_batch(BATCH_OPS + 64))
                    {
                        writer.send(batch)?;
                    }
                }
                ingest.finish();
                // A queue sample of the current second is held across batches (it is part of
                // the state committed with the cursor), so where a batch ends changes no row;
                // the input's end emits it. The archive ends here: the rules that need the
                // container to be watched while it runs learn that it no longer is.
                let container = ingest.container().clone();
                let (state, ops) = ingest.state_and_ops();
                state.flush_metrics(ops);
                if last_set {
                    // The run folders the log named: their results.csv completes the runs'
                    // history before the archive's end resolves what was about its runs.
                    let folders = state.run_folders();
                    for folder in &folders {
                        read_run_folder(state, folder, path_map, ops, &mut summary.folders);
                    }
                    ops.push(Op::Signal(i64::MIN, Signal::LogEnded { container }));
                }
                if let Some(batch) = ingest.batch(false, true, writer.empty_batch(BATCH_OPS + 64)) {
                    writer.send(batch)?;
                }
                Ok(())
            })();
            for s in Stream::ALL {
                if let Some(k) = ingest.emitted().key(s) {
                    cur.insert((s, origin.to_string()), k);
                }
            }
            let counts = &ingest.counts;
            summary.lines += counts.lines;
            summary.already_stored += counts.already_stored;
            summary.records += counts.records;
            for (k, v) in &counts.skips {
                *summary.skips.by_reason.entry(k).or_insert(0) += v;
            }
            for (k, v) in &counts.by_kind {
                *summary.by_kind.entry(k).or_insert(0) += v;
            }
            if last_set {
                cursors.remove(&set.container);
            } else {
                states.insert(set.container.clone(), ingest.into_state());
            }
            sent?;
            summary.bytes += source.bytes_read();
            summary.skips.merge(source.skips());
        }
        Ok(())
    })();
    drop(conn);
    match read {
        // The writer stopped: its own error says why (a full disk, a lock held too long).
        Err(ReplayError::Store(StoreError::WriterGone)) => {
            return Err(writer
                .finish()
                .err()
                .unwrap_or(StoreError::WriterGone)
                .into());
        }
        Err(e) => return Err(e),
        Ok(()) => {}
    }
    summary.write = writer.finish()?;
    Ok(summary)
}
