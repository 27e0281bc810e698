//! Consoles as people keep them: logs pasted into an issue, exported from a notebook or an IDE,
//! captured with `script`. Two things happen to them that a container's own log never shows:
//! - **Prefixes.** A quoted paste starts every line with `> ` (`>` on an empty one); a notebook
//!   or Markdown export indents every line by 4 spaces. Python's tracebacks and logging lines
//!   are recognised by what starts at column 0, so the prefix is taken off: `> ` on any line,
//!   and 4 spaces while every non-blank line of the source so far starts with them (one line
//!   at column 0 shows the source is not indented, and the rule is off for good; until then
//!   only leading spaces of right-aligned rows are taken, which no parser reads).
//! - **Rank prefixes.** PyTorch (2.2 and later) prints what a distributed (DDP) worker writes
//!   when it dies, its traceback included, with `[rankN]: ` before every line, and its C++
//!   warnings with `[rankN]:` (`[rank0]:[W403 ...] Warning: ...`). Taken off too, so the
//!   traceback is one record again and its exception (a CUDA OOM) is read.
//! - **Glued records.** With stdout and stderr written to one place, the record printed after
//!   a progress bar finished can land on the bar's own line (`... 8/8 [00:00<00:00, 9.27it/s]
//!   all  16  29  0.689 ...`). The text after a finished bar (100 %, all batches, then its
//!   rate and time) is a record of its own.

use crate::event::Record;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
enum Indent {
    /// Every non-blank line so far started with 4 spaces (or there was none).
    #[default]
    Indented,
    /// A non-blank line started before column 4: not an indented export.
    Off,
}

/// Per-source state for [`Paste::normalise`].
#[derive(Debug, Default)]
pub struct Paste {
    indent: Indent,
}

const INDENT: &str = "    ";

impl Paste {
    /// Takes a paste's prefix off `text`.
    pub fn normalise(&mut self, text: &mut String) {
        if text.starts_with("> ") {
            text.drain(..2);
        } else if text == ">" {
            text.clear();
        }
        if let Some(n) = rank_prefix(text) {
            text.drain(..n);
        }
        if self.indent == Indent::Off || text.trim().is_empty() {
            return;
        }
        if text.starts_with(INDENT) {
            text.drain(..INDENT.len());
        } else {
            self.indent = Indent::Off;
        }
    }
}

/// The length of a leading `[rankN]: ` (or `[rankN]:` alone on the line).
fn rank_prefix(text: &str) -> Option<usize> {
    let digits = text.strip_prefix("[rank")?;
    let n = digits.bytes().take_while(u8::is_ascii_digit).count();
    let rest = digits[n..].strip_prefix("]:").filter(|_| n > 0)?;
    let len = "[rank".len() + n + "]:".len();
    match rest.as_bytes().first() {
        None | Some(b'[') => Some(len), // `[rank0]:[W403 ... ProcessGroupNCCL.cpp:1250] ...`
        Some(b' ') => Some(len + 1),
        _ => None,
    }
}

/// Splits a record whose line holds another record after a finished progress bar; pieces go to
/// `out` in order. Both pieces keep the record's key: they come from one line.
pub fn split_glued(mut rec: Record, out: &mut impl FnMut(Record)) {
    // Bounded: a line holds a few bars at most.
    for _ in 0..8 {
        let Some(at) = glued_at(&rec.text) else { break };
        let rest = rec.text[at..].trim_start().to_string();
        rec.text.truncate(at);
        let mut tail = rec.clone();
        tail.text = rest;
        tail.nonfinite_frame = None;
        out(rec);
        rec = tail;
    }
    out(rec);
}

/// `100%`, searched with a finder built once (`memmem::find` sets one up on every call).
static FULL: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new("100%"));

/// Where text glued after a finished bar starts, if any does.
fn glued_at(text: &str) -> Option<usize> {
    // Most records hold no `%` at all.
    memchr::memchr(b'%', text.as_bytes())?;
    let mut from = 0;
    while let Some(i) = FULL.find(&text.as_bytes()[from..]).map(|i| from + i) {
        from = i + 4;
        if let Some(end) = bar_end(text, i + 4)
            && !text[end..].trim().is_empty()
        {
            return Some(end);
        }
    }
    None
}

/// The end of a finished bar whose percentage ends at `at`: the old tqdm bar
/// `|██████████| 8/8 [00:00<00:00,  9.27it/s]`, YOLOv5's `|██████████| 8/8 00:01`, Colab's
/// `85/85 [01:41<00:00,  1.19s/it]`, Ultralytics' own `━━━━━━━━━━━━ 8/8 4.4it/s 1.8s`.
fn bar_end(text: &str, at: usize) -> Option<usize> {
    let mut i = at;
    let b = text.as_bytes();
    // The bar itself: `|...|` or a run of Ultralytics' glyphs. Without either, a `[...]`
    // or a rate or time token must follow: `100% 3/3 tests passed` is not a bar.
    let mut bar = false;
    if b.get(i) == Some(&b'|') {
        i += 1 + text[i + 1..].find('|')? + 1;
        bar = true;
    }
    let glyphs = skip(text, i, |c| matches!(c, ' ' | '━' | '─' | '╸' | '╺'));
    bar |= text[i..glyphs].trim() != "";
    i = glyphs;
    // `n/total`, all batches done.
    let digits = |from: usize| from + text[from..].bytes().take_while(u8::is_ascii_digit).count();
    let n_end = digits(i);
    if n_end == i || b.get(n_end) != Some(&b'/') {
        return None;
    }
    let t_end = digits(n_end + 1);
    if t_end == n_end + 1 || text[i..n_end] != text[n_end + 1..t_end] {
        return None;
    }
    let mut end = t_end;
    let j = skip(text, end, |c| c == ' ');
    if b.get(j) == Some(&b'[') {
        return Some(j + text[j..].find(']')? + 1);
    }
    // Up to two tokens: a rate (`4.4it/s`, `1.2Kit/s`, `1.6s/it`) and the elapsed time
    // (`1.8s`, `1:10`, `1:02:03`), the last perhaps with the glued text right after it.
    let mut j = j;
    let mut tokens = 0;
    for _ in 0..2 {
        let num_end = j + text[j..]
            .bytes()
            .take_while(|c| c.is_ascii_digit() || *c == b'.' || *c == b':')
            .count();
        if num_end == j {
            break;
        }
        let unit = ["Kit/s", "Mit/s", "Git/s", "it/s", "s/it", "s"]
            .iter()
            .find(|u| text[num_end..].starts_with(**u))
            .map_or(0, |u| u.len());
        if unit == 0 && !text[j..num_end].contains(':') {
            break;
        }
        end = num_end + unit;
        j = skip(text, end, |c| c == ' ');
        tokens += 1;
    }
    (bar || tokens > 0).then_some(end)
}

fn skip(text: &str, from: usize, f: impl Fn(char) -> bool) -> usize {
    from + text[from..]
        .char_indices()
        .find(|(_, c)| !f(*c))
        .map_or(text.len() - from, |(k, _)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(text: &str) -> Vec<String> {
        let rec = Record {
            key: Default::default(),
            ts: 0,
            stream: crate::event::Stream::Stdout,
            text: text.into(),
            nonfinite_frame: None,
            terminated: true,
            line_no: 1,
            lines: 1,
            last_key: Default::default(),
        };
        let mut out = Vec::new();
        split_glued(rec, &mut |r| out.push(r.text));
        out
    }

    const ALL: &str =
        "                   all         16         29      0.689      0.107     0.0836     0.0472";

    #[test]
    fn records_glued_after_a_finished_bar_are_split() {
        for bar in [
            "       1/10         0G      2.057      1.758      1.263         20         64: 100%|██████████| 8/8 [00:00<00:00,  9.27it/s]",
            "                 Class     Images  Instances      Box(P          R      mAP50  mAP50-95): 100%|██████████| 1/1 [00:00<00:00,  5.61it/s]",
            "       1/10         0G      2.057      1.758      1.263         20         64: 100% ━━━━━━━━━━━━ 8/8 4.4it/s 1.8s",
            "                 Class     Images  Instances      Box(P          R      mAP50  mAP50-95): 100% ━━━━━━━━━━━━ 1/1 5.6it/s 0.2s",
            "        0/1      22.4G    0.07281    0.08384    0.06359        199        640: 100%|██████████| 1849/1849 13:15",
            "      20/20      14.9G     0.7806     0.7389     0.9101         12        640: 100% 85/85 [01:41<00:00,  1.19s/it]",
            "       3/10         0G      1.9      1.7      1.2         20         64: 100% ━━━━━━━━━━━━ 8/8 1.6s/it 12.9s",
        ] {
            assert_eq!(
                pieces(&format!("{bar}{ALL}")),
                [bar, ALL.trim_start()],
                "{bar}"
            );
            // Nothing glued: one record, as it came.
            assert_eq!(pieces(bar), [bar]);
        }
        // Glued without a space, and two records on one line.
        let bar = "      1/2      0G      1.2      1.1      1.0      8      64: 100% ━━━━━━━━━━━━ 8/8 4.4it/s 1.8s";
        assert_eq!(
            pieces(&format!("{bar}WARNING ⚠️ NMS time limit exceeded")),
            [bar, "WARNING ⚠️ NMS time limit exceeded"]
        );
        let val = "  Class  Images  Instances  Box(P  R  mAP50  mAP50-95): 100%|██████████| 1/1 [00:00<00:00,  5.61it/s]";
        assert_eq!(
            pieces(&format!("{bar}{val}{ALL}")),
            [bar, val.trim_start(), ALL.trim_start()]
        );
        // A bar still running is never split (its tail is its own).
        let running = "     82/120      6.66G     0.6647     0.3599      1.079         38        640: 28% ━━━───────── 43/154 2.2it/s 19.8s<49.8sCorrupt JPEG data";
        assert_eq!(pieces(running), [running]);
        assert_eq!(pieces("100% sure 3/4 of it"), ["100% sure 3/4 of it"]);
        assert_eq!(
            pieces("coverage 100% 3/3 tests passed"),
            ["coverage 100% 3/3 tests passed"]
        );
        // A download bar's sizes are not batches.
        let dl = "100%|██████████| 6.23M/6.23M [00:00<00:00, 75.8MB/s] done";
        assert_eq!(pieces(dl), [dl]);
    }

    #[test]
    fn rank_prefixes_are_taken_off() {
        let mut p = Paste::default();
        let mut t = |s: &str| {
            let mut s = s.to_string();
            p.normalise(&mut s);
            s
        };
        assert_eq!(
            t("[rank0]: Traceback (most recent call last):"),
            "Traceback (most recent call last):"
        );
        assert_eq!(
            t("[rank1]:   File \"x.py\", line 1, in <module>"),
            "  File \"x.py\", line 1, in <module>"
        );
        assert_eq!(t("[rank12]:"), "");
        // PyTorch's C++ warnings follow the prefix without a space.
        assert_eq!(
            t("[rank0]:[W403 11:42:02.380967152 ProcessGroupNCCL.cpp:1250] Warning: x"),
            "[W403 11:42:02.380967152 ProcessGroupNCCL.cpp:1250] Warning: x"
        );
        assert_eq!(
            t("> [rank0]: torch.OutOfMemoryError: CUDA out of memory."),
            "torch.OutOfMemoryError: CUDA out of memory."
        );
        // Not a rank prefix.
        assert_eq!(t("[rank]: x"), "[rank]: x");
        assert_eq!(t("[rank0]:x"), "[rank0]:x");
        assert_eq!(t("[ranking]: x"), "[ranking]: x");
    }

    #[test]
    fn quote_and_indent_prefixes_are_taken_off() {
        let run = |lines: &[&str]| {
            let mut p = Paste::default();
            lines
                .iter()
                .map(|l| {
                    let mut s = l.to_string();
                    p.normalise(&mut s);
                    s
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            run(&[
                "> Traceback (most recent call last):",
                ">   File \"a\"",
                ">",
                "> KeyError: 'x'"
            ]),
            [
                "Traceback (most recent call last):",
                "  File \"a\"",
                "",
                "KeyError: 'x'"
            ]
        );
        assert_eq!(
            run(&[
                "    Traceback (most recent call last):",
                "      File \"a\"",
                "",
                "    KeyError: 'x'"
            ]),
            [
                "Traceback (most recent call last):",
                "  File \"a\"",
                "",
                "KeyError: 'x'"
            ]
        );
        // A line at column 0 ends the rule: a traceback's indentation is kept.
        assert_eq!(
            run(&[
                "      Epoch    GPU_mem",
                "Traceback (most recent call last):",
                "    return x",
                "KeyError: 'x'"
            ]),
            [
                "  Epoch    GPU_mem",
                "Traceback (most recent call last):",
                "    return x",
                "KeyError: 'x'"
            ]
        );
    }
}
