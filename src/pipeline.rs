//! The replay pipeline: plan -> read -> assemble -> parse -> derive -> store, for archived logs.
//! The same stages serve the live path; only the source differs.
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

use crate::assemble::Assembler;
use crate::derive::alerts::{Engine, Rules, Signal};
use crate::derive::{ContainerState, Op, Position};
use crate::error::{SourceError, StoreError};
use crate::event::{Key, Record, Stream};
use crate::parse::Parser;
use crate::source::files::{self, Format};
use crate::source::jsonfile::JsonFileReader;
use crate::source::text::{self, TextReader};
use crate::source::{LineSource, Skips};
use crate::store::{self, AlertSink, WriteStats, WriterHandle, WriterOptions};

/// Ops per transaction.
pub const BATCH_OPS: usize = 4_000;

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
}

/// Replays `inputs` into the database at `db`, evaluating the default alert rules.
pub fn replay(
    inputs: &[String],
    container: Option<&str>,
    db: PathBuf,
    parser: &Parser,
) -> Result<Summary, ReplayError> {
    replay_with(inputs, container, db, parser, &Rules::default())
}

/// Replays `inputs` into the database at `db`. Alerts are evaluated on the log's times and
/// recorded (origin `replay`), never notified: archived logs do not page anyone.
pub fn replay_with(
    inputs: &[String],
    container: Option<&str>,
    db: PathBuf,
    parser: &Parser,
    rules: &Rules,
) -> Result<Summary, ReplayError> {
    let sets = files::plan(inputs, container)?;
    // The writer creates and migrates the database; the state of containers already in it is
    // read on a separate read-only connection.
    let engine = Engine::new(rules.clone(), false, "");
    let writer = WriterHandle::spawn_with(
        db.clone(),
        WriterOptions {
            alerts: Some(AlertSink::new(engine, Vec::new(), None)),
            retry: false,
            health: None,
        },
    )?;
    let conn = store::open_ro(&db)?;
    let mut summary = Summary::default();
    let mut states: HashMap<String, ContainerState> = HashMap::new();
    let mut cursors: HashMap<String, HashMap<(Stream, String), Key>> = HashMap::new();
    let mut ops: Vec<Op> = Vec::with_capacity(BATCH_OPS + 64);
    let read = (|| -> Result<(), ReplayError> {
        for set in sets {
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
            let state = states.get_mut(&set.container).expect("inserted above");
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
            // What earlier runs stored: lines it covers are skipped. Compared with the position
            // at the start, not the advancing one, so a line whose time went backwards within
            // this run is still read.
            let stored = Position::new(
                origin.clone(),
                cur.get(&(Stream::Stdout, origin.to_string())).copied(),
                cur.get(&(Stream::Stderr, origin.to_string())).copied(),
            );
            let mut ctx = SetRun {
                parser,
                state,
                ops: &mut ops,
                writer: &writer,
                summary: &mut summary,
                emitted: Position::new(origin.clone(), None, None),
            };
            let mut grouper = Assembler::new();
            let mut recs: Vec<Record> = Vec::new();
            for raw in source.by_ref() {
                ctx.summary.lines += 1;
                if stored.covers(raw.stream, raw.key) {
                    ctx.summary.already_stored += 1;
                    continue;
                }
                grouper.push(raw, &mut recs);
                ctx.process(&mut recs)?;
            }
            grouper.finish(&mut recs);
            ctx.process(&mut recs)?;
            ctx.flush(true)?;
            for s in Stream::ALL {
                if let Some(k) = ctx.emitted.key(s) {
                    cur.insert((s, origin.to_string()), k);
                }
            }
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

struct SetRun<'a> {
    parser: &'a Parser,
    state: &'a mut ContainerState,
    ops: &'a mut Vec<Op>,
    writer: &'a WriterHandle,
    summary: &'a mut Summary,
    /// How far records have been handed to the store: the cursor committed with each batch.
    emitted: Position,
}

impl SetRun<'_> {
    fn process(&mut self, recs: &mut Vec<Record>) -> Result<(), ReplayError> {
        for rec in recs.drain(..) {
            self.summary.records += 1;
            let p = self.parser.parse(&rec);
            if let Some(skip) = p.skip {
                crate::telemetry::COUNTERS.skip(skip.reason());
                *self
                    .summary
                    .skips
                    .by_reason
                    .entry(skip.reason())
                    .or_insert(0) += 1;
            }
            let before = self.ops.len();
            self.state.apply(&rec, p, self.ops);
            for op in &self.ops[before..] {
                if let Op::Event(e) = op {
                    *self.summary.by_kind.entry(e.kind).or_insert(0) += 1;
                }
            }
            self.emitted.advance(&rec);
            if self.ops.len() >= BATCH_OPS {
                self.flush(false)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self, last: bool) -> Result<(), ReplayError> {
        if self.ops.is_empty() && !last {
            return Ok(());
        }
        // A queue sample of the current second stays held across batches (it is part of the
        // state committed with the cursor), so where a batch ends changes no row; the input's
        // end emits it.
        if last {
            self.state.flush_metrics(self.ops);
            // The archive ends here: the rules that need the container to be watched while it
            // runs learn that it no longer is.
            self.ops.push(Op::Signal(
                i64::MIN,
                Signal::LogEnded {
                    container: self.state.container().clone(),
                },
            ));
        }
        self.emitted.cursor_ops(self.state.container(), self.ops);
        self.ops.push(self.state.snapshot_op());
        let batch = std::mem::replace(self.ops, self.writer.empty_batch(BATCH_OPS + 64));
        self.writer.send(batch)?;
        Ok(())
    }
}
