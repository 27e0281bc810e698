//! Groups Python tracebacks and multi-line logging records into one record per stream.
//!
//! A traceback is `Traceback (most recent call last):`, indented frame and source lines (3.11
//! adds `~~~^^^` caret lines, also indented), then the unindented exception line. Chained
//! exceptions continue after a blank line with `The above exception was the direct cause of the
//! following exception:` or `During handling of the above exception, another exception
//! occurred:`. A logging record (`... - ERROR - msg`) followed by a traceback owns it
//! (`logger.exception`), and a logging record whose message is empty owns the next line (a
//! message that starts with `\n`).
//!
//! Streams are grouped separately: stdout and stderr interleave in a Docker log. A group still
//! open on one stream is closed when the other stream moves [`MAX_HOLD_NS`] past its newest
//! line, so a quiet stream never holds a record back for long, and a slow writer (a line every
//! second) never has its traceback split.

use crate::event::{Record, Stream};
use crate::grammar::pylog;

/// How long (in log time) a group may stay open while the other stream advances.
pub const MAX_HOLD_NS: i64 = 2_000_000_000;
/// Bounds that keep a runaway group (a never-ending indented dump) from growing without limit.
const MAX_GROUP_LINES: u32 = 500;
const MAX_GROUP_BYTES: usize = 256 * 1024;

const TRACEBACK: &str = "Traceback (most recent call last):";

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Inside frames: indented lines continue, the first unindented line is the exception.
    Frames,
    /// After the exception line: a blank line may lead into a chained traceback.
    AfterException,
    /// After "The above exception ..." / "During handling ...": expecting `Traceback`.
    ChainIntro,
    /// A logging record that may own a following traceback (or, if empty, the next line).
    LogHead { empty: bool },
}

#[derive(Debug)]
struct Group {
    rec: Record,
    state: State,
    /// Blank lines seen after an exception line, kept until we know whether a chain follows.
    held: Vec<Record>,
    /// Lines of the current exception's message after its first.
    message_lines: u32,
    /// The log time of its newest line: how long it has waited is counted from there, so a
    /// traceback written slowly is never split.
    last_ts: i64,
}

/// The per-source grouping state. Feed records in source order with [`Grouper::push`]; call
/// [`Grouper::finish`] at the end of input.
#[derive(Debug, Default)]
pub struct Grouper {
    open: [Option<Group>; 2],
}

fn is_indented(t: &str) -> bool {
    t.starts_with(' ') || t.starts_with('\t')
}

fn is_chain_intro(t: &str) -> bool {
    t.starts_with("The above exception was the direct cause of the following exception")
        || t.starts_with("During handling of the above exception, another exception occurred")
}

fn append(g: &mut Record, line: Record) {
    g.text.push('\n');
    g.text.push_str(&line.text);
    g.lines += line.lines;
    g.terminated = line.terminated;
    g.last_key = g.last_key.max(line.last_key);
    if g.nonfinite_frame.is_none() {
        g.nonfinite_frame = line.nonfinite_frame;
    }
}

impl Grouper {
    pub fn new() -> Self {
        Self::default()
    }

    /// Pushes one cleaned record; completed records are appended to `out` in completion order.
    pub fn push(&mut self, rec: Record, out: &mut Vec<Record>) {
        let other = 1 - rec.stream.index();
        if let Some(g) = &self.open[other]
            && rec.ts > g.last_ts.saturating_add(MAX_HOLD_NS)
        {
            self.close(other, out);
        }
        self.feed(rec, out);
    }

    fn feed(&mut self, rec: Record, out: &mut Vec<Record>) {
        let i = rec.stream.index();
        let Some(mut g) = self.open[i].take() else {
            self.start(rec, out);
            return;
        };
        if g.rec.lines >= MAX_GROUP_LINES || g.rec.text.len() >= MAX_GROUP_BYTES {
            self.emit(g, out);
            self.start(rec, out);
            return;
        }
        let t = rec.text.as_str();
        let ts = rec.ts;
        match g.state {
            State::Frames => {
                if is_indented(t) {
                    append(&mut g.rec, rec);
                } else if t.trim().is_empty() {
                    // A blank line inside frames ends the traceback without an exception line.
                    self.emit(g, out);
                    self.start(rec, out);
                    return;
                } else {
                    append(&mut g.rec, rec);
                    g.state = State::AfterException;
                    g.message_lines = 0;
                }
                g.last_ts = g.last_ts.max(ts);
                self.open[i] = Some(g);
            }
            State::AfterException => {
                if g.held.is_empty()
                    && g.message_lines < MAX_MESSAGE_LINES
                    && continues_message(t)
                    && rec.key.ts <= g.rec.last_key.ts.saturating_add(MESSAGE_GAP_NS)
                {
                    // The exception's message goes on over several lines (Ultralytics'
                    // `FileNotFoundError: ...` + `Note dataset download directory is ...`).
                    append(&mut g.rec, rec);
                    g.message_lines += 1;
                    g.last_ts = g.last_ts.max(ts);
                    self.open[i] = Some(g);
                } else if t.trim().is_empty() && g.held.len() < 2 {
                    g.held.push(rec);
                    g.last_ts = g.last_ts.max(ts);
                    self.open[i] = Some(g);
                } else if is_chain_intro(t) && !g.held.is_empty() {
                    for h in std::mem::take(&mut g.held) {
                        append(&mut g.rec, h);
                    }
                    append(&mut g.rec, rec);
                    g.state = State::ChainIntro;
                    g.last_ts = g.last_ts.max(ts);
                    self.open[i] = Some(g);
                } else {
                    let held = std::mem::take(&mut g.held);
                    self.emit(g, out);
                    for h in held {
                        self.start(h, out);
                    }
                    self.feed(rec, out);
                }
            }
            State::ChainIntro => {
                if t.trim().is_empty() {
                    append(&mut g.rec, rec);
                    g.last_ts = g.last_ts.max(ts);
                    self.open[i] = Some(g);
                } else if t.trim_end() == TRACEBACK {
                    append(&mut g.rec, rec);
                    g.state = State::Frames;
                    g.last_ts = g.last_ts.max(ts);
                    self.open[i] = Some(g);
                } else {
                    self.emit(g, out);
                    self.feed(rec, out);
                }
            }
            State::LogHead { empty } => {
                if t.trim_end() == TRACEBACK {
                    append(&mut g.rec, rec);
                    g.state = State::Frames;
                    g.last_ts = g.last_ts.max(ts);
                    self.open[i] = Some(g);
                } else if empty && !starts_record(t) {
                    append(&mut g.rec, rec);
                    g.state = State::LogHead { empty: false };
                    g.last_ts = g.last_ts.max(ts);
                    self.open[i] = Some(g);
                } else {
                    self.emit(g, out);
                    self.feed(rec, out);
                }
            }
        }
    }

    fn start(&mut self, rec: Record, out: &mut Vec<Record>) {
        let t = rec.text.as_str();
        let state = if t.trim_end() == TRACEBACK {
            State::Frames
        } else if let Some(head) = pylog::parse(t) {
            State::LogHead {
                empty: head.message.trim().is_empty(),
            }
        } else if t.starts_with("Exception in thread ") {
            State::LogHead { empty: false }
        } else {
            out.push(rec);
            return;
        };
        let i = rec.stream.index();
        self.open[i] = Some(Group {
            last_ts: rec.ts,
            rec,
            state,
            held: Vec::new(),
            message_lines: 0,
        });
    }

    fn emit(&mut self, g: Group, out: &mut Vec<Record>) {
        out.push(g.rec);
        for h in g.held {
            out.push(h);
        }
    }

    fn close(&mut self, i: usize, out: &mut Vec<Record>) {
        if let Some(g) = self.open[i].take() {
            self.emit(g, out);
        }
    }

    /// Closes open groups whose newest line is older than `before` (log time): used by the
    /// live path so a traceback at the end of a stream is not held until the next line.
    pub fn flush_older_than(&mut self, before: i64, out: &mut Vec<Record>) {
        for i in 0..2 {
            if self.open[i].as_ref().is_some_and(|g| g.last_ts < before) {
                self.close(i, out);
            }
        }
    }

    /// Closes every open group (end of input).
    pub fn finish(&mut self, out: &mut Vec<Record>) {
        let mut rest: Vec<Group> = self.open.iter_mut().filter_map(Option::take).collect();
        rest.sort_by_key(|g| g.rec.key);
        for g in rest {
            self.emit(g, out);
        }
    }

    /// The key of the oldest record still held in an open group, if any: a resumable cursor
    /// must not move past it.
    pub fn oldest_open(&self, stream: Stream) -> Option<crate::event::Key> {
        self.open[stream.index()].as_ref().map(|g| g.rec.key)
    }
}

/// Longest exception message, in lines after its first, grouped with its traceback.
const MAX_MESSAGE_LINES: u32 = 20;
/// Python writes a traceback in one go: a message line logged later than this after the line
/// before it belongs to something else (a restarted process).
const MESSAGE_GAP_NS: i64 = 1_000_000_000;

/// Whether an unindented line after an exception's line goes on with its message: Python
/// prints `str(exc)` whole, so a message with `\n` in it continues on unindented lines. Lines
/// that begin something of their own (a record, a logging line, Ultralytics' output) do not.
fn continues_message(t: &str) -> bool {
    let trimmed = t.trim_start();
    if trimmed.is_empty() || is_indented(t) || starts_record(t) || is_chain_intro(t) {
        return false;
    }
    let first = trimmed.as_bytes()[0];
    if first.is_ascii_digit() {
        // Progress rows, `N epochs completed`, times.
        return false;
    }
    if crate::grammar::ultralytics::strip_trainer_prefix(trimmed).is_some() {
        return false;
    }
    const OWN_LINES: [&str; 8] = [
        "Ultralytics ",
        "Exception in thread ",
        "WARNING",
        "ERROR",
        "Epoch ",
        "Traceback",
        "Starting training",
        "Resuming training",
    ];
    !OWN_LINES.iter().any(|p| trimmed.starts_with(p))
}

/// Whether a line begins a new record of its own (so an empty logging message must not swallow
/// it).
fn starts_record(t: &str) -> bool {
    t.starts_with('{') || t.trim_end() == TRACEBACK || pylog::parse(t).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Key;

    fn rec(ts: i64, stream: Stream, text: &str) -> Record {
        Record {
            key: Key { ts, seq: 0 },
            ts,
            stream,
            text: text.to_string(),
            nonfinite_frame: None,
            terminated: true,
            line_no: ts as u64,
            lines: 1,
            last_key: Key { ts, seq: 0 },
        }
    }

    fn group(lines: &[&str]) -> Vec<String> {
        let mut g = Grouper::new();
        let mut out = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            g.push(rec(i as i64, Stream::Stderr, l), &mut out);
        }
        g.finish(&mut out);
        out.into_iter().map(|r| r.text).collect()
    }

    #[test]
    fn chained_traceback_with_carets_is_one_record() {
        let lines = [
            "Traceback (most recent call last):",
            "  File \"/app/consumer.py\", line 4, in handle",
            "    return data[\"image\"][\"name\"] + 1",
            "           ~~~~~~~~~~~~~~~~~~~~~~^~~",
            "TypeError: can only concatenate str (not \"int\") to str",
            "",
            "The above exception was the direct cause of the following exception:",
            "",
            "Traceback (most recent call last):",
            "  File \"/app/consumer.py\", line 10, in <module>",
            "    main()",
            "RuntimeError: failed to process annotation",
            "2026-11-29 05:00:49,000 - consumer - INFO - next record",
        ];
        let out = group(&lines);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], lines[..12].join("\n"));
        assert_eq!(out[1], lines[12]);
    }

    #[test]
    fn exception_messages_over_several_lines_stay_in_the_chain() {
        // Ultralytics 8.4.190, a dataset whose images are missing (fixtures/ultralytics-users).
        let lines = [
            "Traceback (most recent call last):",
            "  File \"/u/ultralytics/engine/trainer.py\", line 862, in get_dataset",
            "    data = check_det_dataset(self.args.data, split=self.args.split)",
            "FileNotFoundError: Dataset 'x.yaml' images not found, missing path '/d/images/val'",
            "Note dataset download directory is '/d/datasets'. You can update this in '/c/settings.json'",
            "",
            "The above exception was the direct cause of the following exception:",
            "",
            "Traceback (most recent call last):",
            "  File \"/u/bin/yolo\", line 8, in <module>",
            "    sys.exit(entrypoint())",
            "RuntimeError: Dataset 'x.yaml' error ❌ Dataset 'x.yaml' images not found, missing path '/d/images/val'",
            "Note dataset download directory is '/d/datasets'. You can update this in '/c/settings.json'",
            "Ultralytics 8.4.190 🚀 Python-3.11.7 torch-2.15.0 CPU",
        ];
        let out = group(&lines);
        assert_eq!(out, vec![lines[..13].join("\n"), lines[13].to_string()]);
        // The same with "During handling ...", a message that starts with its newline, and a
        // record of its own after it.
        let lines = [
            "Traceback (most recent call last):",
            "  File \"a.py\", line 1, in <module>",
            "KeyError: 'image'",
            "",
            "During handling of the above exception, another exception occurred:",
            "",
            "Traceback (most recent call last):",
            "  File \"a.py\", line 3, in <module>",
            "ValueError: ",
            "bad annotation",
            "second line",
            "2026-11-29 05:00:49,000 - consumer - INFO - Processed 10 messages",
        ];
        let out = group(&lines);
        assert_eq!(out, vec![lines[..11].join("\n"), lines[11].to_string()]);
    }

    #[test]
    fn a_line_logged_later_is_not_the_message() {
        let mut g = Grouper::new();
        let mut out = Vec::new();
        for (ts, l) in [
            (0, "Traceback (most recent call last):"),
            (0, "  File \"a\""),
            (0, "E: x"),
            (0, "more of x"),
            (5_000_000_000, "a restarted process prints"),
        ] {
            g.push(rec(ts, Stream::Stderr, l), &mut out);
        }
        g.finish(&mut out);
        let texts: Vec<&str> = out.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "Traceback (most recent call last):\n  File \"a\"\nE: x\nmore of x",
                "a restarted process prints"
            ]
        );
    }

    #[test]
    fn logger_exception_owns_its_traceback() {
        let out = group(&[
            "2026-11-29 05:00:48,263 - consumer - ERROR - Error handling message",
            "Traceback (most recent call last):",
            "  File \"<stdin>\", line 14, in f",
            "KeyError: 'x'",
            "2026-11-29 05:00:49,000 - consumer - INFO - Processed 10 messages",
        ]);
        assert_eq!(out.len(), 2);
        assert!(out[0].starts_with("2026-11-29 05:00:48,263 - consumer - ERROR"));
        assert!(out[0].ends_with("KeyError: 'x'"));
    }

    #[test]
    fn blank_after_exception_without_chain_is_kept_separately() {
        let out = group(&[
            "Traceback (most recent call last):",
            "  File \"a\"",
            "E: x",
            "",
            "after",
        ]);
        assert_eq!(
            out,
            vec![
                "Traceback (most recent call last):\n  File \"a\"\nE: x",
                "",
                "after"
            ]
        );
    }

    #[test]
    fn empty_logging_message_owns_next_line() {
        let out = group(&[
            "2026-04-22 15:39:47 - exp01 - INFO - ",
            "[Step 4/5] Evaluating model on test set...",
            "plain",
        ]);
        assert_eq!(
            out,
            vec![
                "2026-04-22 15:39:47 - exp01 - INFO - \n[Step 4/5] Evaluating model on test set...",
                "plain"
            ]
        );
    }

    #[test]
    fn other_stream_advancing_closes_a_quiet_group() {
        let mut g = Grouper::new();
        let mut out = Vec::new();
        g.push(
            rec(0, Stream::Stderr, "Traceback (most recent call last):"),
            &mut out,
        );
        g.push(rec(1, Stream::Stderr, "  File \"x\""), &mut out);
        g.push(rec(10, Stream::Stdout, "progress"), &mut out);
        assert_eq!(out.len(), 1);
        g.push(rec(MAX_HOLD_NS + 5, Stream::Stdout, "later"), &mut out);
        assert_eq!(out.len(), 3);
        assert!(out[1].text.starts_with("Traceback"));
    }

    /// A traceback written a line every 0.7 s (5.6 s in all) while the other stream prints
    /// and the live path flushes: one record, waited for from its newest line.
    #[test]
    fn a_slow_traceback_waits_from_its_last_line() {
        let mut g = Grouper::new();
        let mut out = Vec::new();
        let step = 700_000_000;
        let lines = [
            "Traceback (most recent call last):",
            "  File \"train.py\", line 3, in <module>",
            "    main()",
            "  File \"train.py\", line 2, in main",
            "    raise RuntimeError(\"Dataset 'data/missing.yaml' error\")",
            "RuntimeError: Dataset 'data/missing.yaml' error",
        ];
        for (i, l) in lines.iter().enumerate() {
            let ts = i as i64 * step;
            g.push(rec(ts, Stream::Stderr, l), &mut out);
            g.push(rec(ts + 1, Stream::Stdout, "tick"), &mut out);
            // What `watch` does on its timer, at the line's time plus a little.
            g.flush_older_than(ts + step / 2 - MAX_HOLD_NS, &mut out);
        }
        assert!(out.iter().all(|r| r.text == "tick"), "split: {out:?}");
        let last = (lines.len() as i64 - 1) * step;
        g.flush_older_than(last + 1 - MAX_HOLD_NS, &mut out);
        assert!(out.iter().all(|r| r.text == "tick"), "closed too early");
        g.flush_older_than(last + 1, &mut out);
        let tb: Vec<&Record> = out.iter().filter(|r| r.text != "tick").collect();
        assert_eq!(tb.len(), 1);
        assert_eq!(tb[0].text, lines.join("\n"));
    }
}
