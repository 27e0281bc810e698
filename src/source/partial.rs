//! Docker's partial messages, merged. Shared by the json-file reader and the live Engine API
//! follower: both see the same daemon-side split.
//!
//! dockerd's copier cuts a line at its 16 KiB buffer and writes each piece without the trailing
//! `\n`; since moby 18.06 every piece carries the first piece's timestamp (`partialTS` in
//! `daemon/logger/copier.go`), and neither json-file nor the logs API keep a partial id. Pieces
//! are merged per stream while the next piece has the same timestamp or the previous piece was a
//! full buffer (older daemons stamped each piece anew). A short piece followed by a later entry
//! is the unterminated tail of a process that died: it is emitted on its own, and the next
//! process's line is not glued onto it.
//!
//! Also assigns each merged line its dedup key, which follows file order, not the clock: a
//! line later than every earlier one is `(its time, 0)`; any other line (the same time, or a
//! time that stepped backwards) is the previous key's next position `(previous time, seq + 1)`.
//! Keys therefore only ever grow along a stream, so "at or before the cursor" means "earlier in
//! the file" even after the host's clock stepped back (the line keeps its own time for display).

use std::collections::VecDeque;

use crate::event::{Key, RawLine, Stream};

/// dockerd's copier buffer: a piece this long (give or take the `\ufffd` a cut multi-byte
/// character becomes) was cut by the daemon, not by a dying process.
const DOCKER_PIECE: usize = 16 * 1024;
const PIECE_SLACK: usize = 64;
/// Largest merged message kept; the rest is dropped and the line marked truncated.
pub const MAX_MERGED: usize = 8 * 1024 * 1024;

struct Pending {
    line: RawLine,
    last_piece: usize,
}

/// What [`Merger::push`] noticed about a piece, for the caller to count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    None,
    /// The piece's time is earlier than the stream's previous one.
    ClockSkew,
    /// The merged message reached [`MAX_MERGED`]; the rest of it is dropped.
    Capped,
}

/// The key of a line at time `ts` after a line keyed `last` (`ts: i64::MIN` before any).
fn next_key(last: Key, ts: i64) -> Key {
    if last.ts != i64::MIN && ts <= last.ts {
        Key {
            ts: last.ts,
            seq: last.seq + 1,
        }
    } else {
        Key { ts, seq: 0 }
    }
}

/// Merges pieces into lines, per stream.
pub struct Merger {
    pending: [Option<Pending>; 2],
    last: [Key; 2],
    ready: VecDeque<RawLine>,
}

impl Default for Merger {
    fn default() -> Self {
        Merger {
            pending: [None, None],
            last: [Key {
                ts: i64::MIN,
                seq: 0,
            }; 2],
            ready: VecDeque::new(),
        }
    }
}

impl Merger {
    pub fn new() -> Self {
        Self::default()
    }

    fn keyed(&mut self, mut line: RawLine) -> RawLine {
        let last = &mut self.last[line.stream.index()];
        *last = next_key(*last, line.ts);
        line.key = *last;
        line
    }

    fn emit_pending(&mut self, i: usize) {
        if let Some(p) = self.pending[i].take() {
            let line = self.keyed(p.line);
            self.ready.push_back(line);
        }
    }

    /// Adds one piece: `text` is the message with its trailing `\n` (if any) still on.
    pub fn push(&mut self, stream: Stream, ts: i64, mut text: String, line_no: u64) -> Note {
        let i = stream.index();
        let mut note = Note::None;
        if self.last[i].ts != i64::MIN && ts < self.last[i].ts {
            note = Note::ClockSkew;
        }
        let ended = text.ends_with('\n');
        if ended {
            text.pop();
        }
        let piece_len = text.len();
        if let Some(p) = self.pending[i].as_mut() {
            if ts == p.line.ts || p.last_piece + PIECE_SLACK >= DOCKER_PIECE {
                if p.line.text.len() + text.len() > MAX_MERGED {
                    if !p.line.truncated {
                        note = Note::Capped;
                    }
                    p.line.truncated = true;
                } else {
                    p.line.text.push_str(&text);
                }
                p.last_piece = piece_len;
                if ended {
                    p.line.terminated = true;
                    self.emit_pending(i);
                }
                return note;
            }
            // The earlier process died mid-line: its tail stands alone.
            self.emit_pending(i);
        }
        let line = RawLine {
            key: Key::default(),
            ts,
            stream,
            text,
            terminated: ended,
            line_no,
            truncated: false,
        };
        if ended {
            let line = self.keyed(line);
            self.ready.push_back(line);
        } else {
            self.pending[i] = Some(Pending {
                line,
                last_piece: piece_len,
            });
        }
        note
    }

    /// The next complete line, if any.
    pub fn pop(&mut self) -> Option<RawLine> {
        self.ready.pop_front()
    }

    /// The key the stream's unfinished line will have when it is emitted.
    pub fn pending_key(&self, stream: Stream) -> Option<Key> {
        let p = self.pending[stream.index()].as_ref()?;
        Some(next_key(self.last[stream.index()], p.line.ts))
    }

    /// End of input: unfinished lines are emitted as unterminated, oldest first.
    pub fn finish(&mut self) {
        let mut rest: Vec<Pending> = self.pending.iter_mut().filter_map(Option::take).collect();
        rest.sort_by_key(|p| p.line.ts);
        for p in rest {
            let line = self.keyed(p.line);
            self.ready.push_back(line);
        }
    }
}
