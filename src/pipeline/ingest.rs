//! The one ingest driver, shared by replay (archived files) and live follow (the Docker
//! source): position check -> assemble (multi-line grouping) -> parse -> derive -> batch with
//! the cursor. Both paths count the same things the same way ([`Counts`]).
//!
//! Exactly once: `stored` is what earlier runs (or an earlier connection) committed; lines it
//! covers are dropped before assembly. `emitted` is how far records have been handed to the
//! store, committed as the cursor with each batch. They are kept apart so that a line whose
//! time went backwards within one read is still taken.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::assemble::Assembler;
use crate::derive::{ContainerState, EventRow, Op, Position};
use crate::event::{Key, Level, RawLine, Record, Stream, kind};
use crate::parse::Parser;
use crate::telemetry::events::{InternalEvent, ParseSkipped};

/// Ops per transaction.
pub const BATCH_OPS: usize = 4_000;

/// What one ingest counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Lines offered (after partial merge).
    pub lines: u64,
    /// Lines dropped because they were stored before.
    pub already_stored: u64,
    /// Records after grouping.
    pub records: u64,
    /// Parse skips by reason (also counted process-wide for `/metrics`).
    pub skips: BTreeMap<&'static str, u64>,
    /// Events derived, by kind.
    pub by_kind: BTreeMap<&'static str, u64>,
}

impl Counts {
    pub fn merge(&mut self, other: &Counts) {
        self.lines += other.lines;
        self.already_stored += other.already_stored;
        self.records += other.records;
        for (k, v) in &other.skips {
            *self.skips.entry(k).or_insert(0) += v;
        }
        for (k, v) in &other.by_kind {
            *self.by_kind.entry(k).or_insert(0) += v;
        }
    }
}

/// How often `watch` commits a cursor that moved past lines it did not store.
pub const CURSOR_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// One container's ingest from one origin (a file set, a container id).
pub struct Ingest<'p> {
    parser: &'p Parser,
    state: ContainerState,
    stored: Position,
    emitted: Position,
    /// The last line taken in (it may still wait in an open group): a re-attach drops what
    /// it re-delivers up to here.
    pushed: Position,
    /// The position the last batch committed, and when it was made.
    batched: Position,
    batched_at: std::time::Instant,
    grouper: Assembler,
    recs: Vec<Record>,
    ops: Vec<Op>,
    pub counts: Counts,
    /// Whether a record stamped in the future was said (once per container).
    ahead_said: bool,
    /// Per stream, whether this read (since the start or a restart) has not yet delivered a
    /// line: its first line says whether the cursor's own line is still there.
    fresh: [bool; 2],
}

impl<'p> Ingest<'p> {
    /// Starts at the committed cursor of `origin` (`stdout`, `stderr`).
    pub fn new(
        parser: &'p Parser,
        state: ContainerState,
        origin: Arc<str>,
        stdout: Option<Key>,
        stderr: Option<Key>,
    ) -> Self {
        Ingest {
            parser,
            state,
            stored: Position::new(origin.clone(), stdout, stderr),
            pushed: Position::new(origin.clone(), stdout, stderr),
            emitted: Position::new(origin.clone(), stdout, stderr),
            batched: Position::new(origin, stdout, stderr),
            batched_at: std::time::Instant::now(),
            grouper: Assembler::new(),
            recs: Vec::new(),
            ops: Vec::with_capacity(256),
            counts: Counts::default(),
            ahead_said: false,
            fresh: [true; 2],
        }
    }

    pub fn container(&self) -> &Arc<str> {
        self.state.container()
    }

    pub fn into_state(self) -> ContainerState {
        self.state
    }

    /// How far records have been handed to the store.
    pub fn emitted(&self) -> &Position {
        &self.emitted
    }

    /// Takes one complete line. Returns whether a batch is due.
    pub fn push(&mut self, raw: RawLine) -> bool {
        self.counts.lines += 1;
        let first = &mut self.fresh[raw.stream.index()];
        if std::mem::take(first)
            && let Some(cursor) = self.stored.key(raw.stream)
            && raw.key.ts > cursor.ts
        {
            // A read starts at the cursor's instant, which re-delivers the cursor's own line:
            // it is gone, so the log was rotated past what was read.
            self.rotated_past(&raw, cursor);
        }
        if self.stored.covers(raw.stream, raw.key) {
            self.counts.already_stored += 1;
            return false;
        }
        self.pushed.advance_to(raw.stream, raw.key);
        self.grouper.push(raw, &mut self.recs);
        self.process();
        self.ops.len() >= BATCH_OPS
    }

    /// Lets groups out that have waited since before `ts` (a traceback at a quiet stream's end).
    pub fn flush_older_than(&mut self, ts: i64) {
        self.grouper.flush_older_than(ts, &mut self.recs);
        self.process();
    }

    /// The input ended: every open group is complete.
    pub fn finish(&mut self) {
        self.grouper.finish(&mut self.recs);
        self.process();
    }

    /// A new read of the same origin (a re-attach, the drain of a stopped container) starts
    /// at the cursor and re-delivers what was taken in since: that is dropped, and open groups
    /// go on with what comes after it. (Dropping them to read them again would lose them when
    /// the new read fails: a `--rm` container's log is gone once it has exited.)
    pub fn restart(&mut self) {
        self.stored = self.pushed.clone();
        self.fresh = [true; 2];
    }

    /// Whether this ingest has taken in any line, now or in an earlier run (a cursor).
    pub fn read_any(&self) -> bool {
        Stream::ALL.iter().any(|s| self.pushed.key(*s).is_some())
    }

    /// The lines of `raw`'s stream after the `cursor` and before `raw` were rotated away
    /// before they were read (the daemon's `max-size`/`max-file`, or between two replays).
    fn rotated_past(&mut self, raw: &RawLine, cursor: Key) {
        let (after, until) = (
            crate::time::format_ns(cursor.ts),
            crate::time::format_ns(raw.key.ts),
        );
        let message = format!(
            "Lines of {} on {} after {after} and before {until} are lost: the log was rotated away before they were read",
            self.state.container(),
            raw.stream.as_str(),
        );
        let context = serde_json::json!({
            "reason": "rotated", "stream": raw.stream.as_str(), "after": after, "until": until,
        });
        self.lost(raw.key, raw.stream.as_str(), message, context);
    }

    /// A `log_lost` event (a warning) at `key`, counted as a skip and logged.
    pub fn lost(
        &mut self,
        key: Key,
        stream: &'static str,
        message: String,
        context: serde_json::Value,
    ) {
        ParseSkipped("log_lost").emit();
        *self.counts.skips.entry("log_lost").or_insert(0) += 1;
        tracing::warn!(container = %self.state.container(), %context, "{message}");
        self.ops.push(Op::Event(EventRow {
            ts: key.ts,
            container: self.state.container().clone(),
            stream,
            seq: key.seq,
            key_ts: key.ts,
            level: Level::Warning,
            kind: kind::LOG_LOST,
            message,
            context: context.to_string(),
        }));
        *self.counts.by_kind.entry(kind::LOG_LOST).or_insert(0) += 1;
    }

    /// Reports a non-finite loss seen in an unfinished progress line. The event carries the
    /// key the whole line will have, so when the line ends its own `loss_non_finite` is the
    /// same row (stored once). The cursor does not move: the line itself is not stored yet.
    pub fn unfinished_nonfinite(&mut self, stream: Stream, key: Key, frame: String) {
        let rec = Record {
            key,
            ts: key.ts,
            stream,
            text: frame.clone(),
            nonfinite_frame: Some(frame),
            terminated: false,
            line_no: 0,
            lines: 1,
            last_key: key,
        };
        let p = self.parser.parse(&rec);
        self.state.apply(&rec, p, &mut self.ops);
    }

    /// The container's state and the ops of the next batch, for what does not come from a
    /// line (a container's exit, the end of an archive).
    pub fn state_and_ops(&mut self) -> (&mut ContainerState, &mut Vec<Op>) {
        (&mut self.state, &mut self.ops)
    }

    fn process(&mut self) {
        // Later than this is the future: a clock set ahead (the record is kept, and counted).
        let ahead = crate::time::now_ns() + crate::time::FUTURE_SKEW_NS;
        for rec in self.recs.drain(..) {
            self.counts.records += 1;
            if rec.ts > ahead {
                ParseSkipped("clock_skew").emit();
                *self.counts.skips.entry("clock_skew").or_insert(0) += 1;
                if !self.ahead_said {
                    self.ahead_said = true;
                    tracing::warn!(
                        container = %self.state.container(),
                        ts = %crate::time::format_ns(rec.ts),
                        "A record is stamped in the future (a clock set ahead?): kept, counted as clock_skew, pruned by when it arrived; it does not count as fresh data."
                    );
                }
            }
            let p = self.parser.parse(&rec);
            if let Some(skip) = p.skip {
                ParseSkipped(skip.reason()).emit();
                *self.counts.skips.entry(skip.reason()).or_insert(0) += 1;
            }
            let before = self.ops.len();
            self.state.apply(&rec, p, &mut self.ops);
            for op in &self.ops[before..] {
                if let Op::Event(e) = op {
                    *self.counts.by_kind.entry(e.kind).or_insert(0) += 1;
                }
            }
            self.emitted.advance(&rec);
        }
    }

    /// The batch to commit now, with the cursor and the container's state, `next` taking its
    /// place: `None` when there is nothing to write and `always` is false. `metrics` emits the
    /// samples held for their second (live: time has moved on; replay: only at the input's
    /// end, so where a batch ends changes no row).
    pub fn batch(&mut self, metrics: bool, always: bool, next: Vec<Op>) -> Option<Vec<Op>> {
        if metrics {
            self.state.flush_metrics(&mut self.ops);
        }
        if self.ops.is_empty() && !always {
            return None;
        }
        self.emitted
            .cursor_ops(self.state.container(), &mut self.ops);
        self.ops.push(self.state.snapshot_op());
        self.batched = self.emitted.clone();
        self.batched_at = std::time::Instant::now();
        Some(std::mem::replace(&mut self.ops, next))
    }

    /// The batch `watch` commits now: what is ready, with the held samples of past seconds;
    /// or, when lines were read and none stored (a progress bar's frames, plain text), the
    /// cursor alone at most every [`CURSOR_EVERY`], so the container's last line read stays
    /// current without a transaction per flush.
    pub fn live_batch(&mut self) -> Option<Vec<Op>> {
        let cursor_due = self.emitted != self.batched && self.batched_at.elapsed() >= CURSOR_EVERY;
        self.batch(true, cursor_due, Vec::with_capacity(256))
    }
}
