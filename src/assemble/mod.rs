//! Line assembly: turns a source's [`RawLine`]s into [`Record`]s the parsers can read.
//!
//! Fed by the sources (Docker partial pieces are merged there, where the entry boundaries are
//! known), it feeds the parsers. Three jobs, in order:
//! 1. [`frames`]: a tqdm/Ultralytics bar redraws itself with `\r` and writes `\n` only when it
//!    closes, so one line holds every frame of an epoch. The text after the last `\r` is the
//!    line's final state, but a NaN in any frame is remembered.
//! 2. [`ansi`]: colour and erase-line escapes are removed.
//! 3. [`paste`]: line prefixes (a paste's `> `, an export's 4 spaces, a DDP worker's
//!    `[rankN]: `) are taken off, and a record glued onto the end of a finished bar is split
//!    off.
//! 4. [`multiline`]: Python tracebacks and multi-line logging records are grouped into one
//!    record per stream.
//!
//! [`Assembler`] holds the per-source state of all of them.

pub mod ansi;
pub mod frames;
pub mod multiline;
pub mod paste;

use crate::event::{RawLine, Record};

/// The line assembly of one source: raw lines in source order, records out.
#[derive(Debug, Default)]
pub struct Assembler {
    paste: paste::Paste,
    grouper: multiline::Grouper,
}

impl Assembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Assembles one raw line; completed records are appended to `out` in completion order.
    pub fn push(&mut self, raw: RawLine, out: &mut Vec<Record>) {
        let mut rec = clean(raw);
        self.paste.normalise(&mut rec.text);
        let grouper = &mut self.grouper;
        paste::split_glued(rec, &mut |r| grouper.push(r, out));
    }

    /// See [`multiline::Grouper::flush_older_than`].
    pub fn flush_older_than(&mut self, before: i64, out: &mut Vec<Record>) {
        self.grouper.flush_older_than(before, out);
    }

    /// Closes every open group (end of input).
    pub fn finish(&mut self, out: &mut Vec<Record>) {
        self.grouper.finish(out);
    }
}

/// Applies frame selection and ANSI stripping to one raw line (grouping comes after).
pub fn clean(line: RawLine) -> Record {
    // Most lines have neither redraws nor escapes (a TTY's trailing `\r` aside): keep their
    // text as it is instead of copying it.
    let plain = memchr::memchr2(b'\r', 0x1b, line.text.as_bytes()).is_none();
    let (text, nonfinite_frame) = if plain {
        (line.text, None)
    } else {
        frames::final_frame(&line.text)
    };
    Record {
        key: line.key,
        ts: line.ts,
        stream: line.stream,
        text,
        nonfinite_frame,
        terminated: line.terminated,
        line_no: line.line_no,
        lines: 1,
        last_key: line.key,
    }
}
