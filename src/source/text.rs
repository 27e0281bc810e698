//! Plain text logs: what `docker logs` or `python train.py > log 2>&1` writes, and the
//! annotation queue's own files from Python's rotating handlers. One record per `\n`.
//!
//! Times come from the line where it carries one (Python `asctime`, an RFC3339 prefix, the
//! `docker logs --timestamps` prefix, which is removed, or a JSON line's time field), else from
//! file order: the last time seen, or the file's modification time before any. The dedup key
//! of a line is (latest time seen in the file so far, position since it), so keys only grow in
//! file order even where the clock stepped backwards; the origin is a fingerprint of the
//! file's first 4 KiB, so a renamed rotated file is still the same file.

use std::path::{Path, PathBuf};

use super::{FileChain, LineSource, Skips};
use crate::event::{Key, RawLine, Stream};

/// Longest line kept whole; longer ones are cut and counted.
pub const MAX_LINE: usize = 4 * 1024 * 1024;
const FINGERPRINT_BYTES: usize = 4096;

/// The fingerprint of a file whose first bytes (up to 4 KiB) are `head`.
pub fn fingerprint_head(head: &[u8]) -> String {
    format!(
        "txt:{:016x}",
        crate::hash::fnv1a(&head[..head.len().min(FINGERPRINT_BYTES)])
    )
}

/// A content fingerprint of a file's first 4 KiB (decompressed for `.gz`).
pub fn fingerprint(path: &Path) -> std::io::Result<String> {
    let (mut r, _) = super::open_maybe_gz(path)?;
    let mut head = vec![0u8; FINGERPRINT_BYTES];
    let mut n = 0;
    while n < head.len() {
        match r.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    Ok(fingerprint_head(&head[..n]))
}

use std::io::Read;

use crate::time::{TIME_KEYS, epoch_number_to_ns};

/// The value of JSON key `key` in `line` as a time: a string the loose parser reads, or an
/// epoch number (seconds, milliseconds, ...). Found by its quoted name followed by `:`, without
/// parsing the line (the parse stage does that later).
fn json_time(line: &str, key: &str) -> Option<i64> {
    let mut from = 0;
    while let Some(i) = line[from..].find(key).map(|i| from + i) {
        from = i + key.len();
        let quoted = line[..i].ends_with('"') && line[from..].starts_with('"');
        let Some(value) = quoted
            .then(|| line[from + 1..].trim_start().strip_prefix(':'))
            .flatten()
            .map(str::trim_start)
        else {
            continue;
        };
        return match value.strip_prefix('"') {
            Some(s) => crate::time::parse_loose(&s[..s.find('"')?]),
            None => {
                let end = value
                    .find(|c: char| {
                        !(c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
                    })
                    .unwrap_or(value.len());
                value[..end].parse().ok().and_then(epoch_number_to_ns)
            }
        };
    }
    None
}

/// The time a line states at its start (or in its JSON time field, by the keys the service-line
/// parser reads), and how many leading bytes are a `docker logs --timestamps` prefix to remove.
pub fn line_time(line: &str) -> (Option<i64>, usize) {
    let b = line.as_bytes();
    match b.first() {
        Some(c) if c.is_ascii_digit() => {
            // `2026-03-28T14:30:00.123456789Z message` (docker logs -t): strip the prefix.
            if b.len() > 20
                && b[10] == b'T'
                && let Some(sp) = line.find(' ')
                && let Some(t) = crate::time::parse_rfc3339(&line[..sp])
            {
                return (Some(t), sp + 1);
            }
            // Python asctime `2026-03-28 14:30:00,123` (with or without the milliseconds).
            for len in [23, 19] {
                if let Some(t) = line.get(..len).and_then(crate::time::parse_loose) {
                    return (Some(t), 0);
                }
            }
            (None, 0)
        }
        Some(b'{') => (TIME_KEYS.iter().find_map(|k| json_time(line, k)), 0),
        _ => (None, 0),
    }
}

/// Reads an ordered set of plain text logs of one source.
pub struct TextReader {
    chain: FileChain,
    origin: String,
    /// The latest time seen so far: the time part of the key.
    anchor: Option<i64>,
    since_anchor: u32,
    /// The time of the last line that carried one: the time of the lines after it.
    last_time: Option<i64>,
    file_time: i64,
    buf: Vec<u8>,
    skips: Skips,
}

fn mtime_ns(path: &Path) -> i64 {
    let path = if path.as_os_str() == "-" {
        Path::new("/dev/stdin")
    } else {
        path
    };
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl TextReader {
    /// Reads one input that can be read only once (see [`super::Piped`]); `origin` is the
    /// [`fingerprint_head`] of its first bytes.
    pub fn piped(path: PathBuf, reader: Box<dyn std::io::Read + Send>, origin: String) -> Self {
        TextReader {
            chain: FileChain::piped(path, reader, MAX_LINE),
            ..TextReader::new(Vec::new(), origin)
        }
    }

    /// `origin` identifies the set (see [`fingerprint`]).
    pub fn new(files: Vec<PathBuf>, origin: String) -> Self {
        TextReader {
            chain: FileChain::new(files, MAX_LINE),
            origin,
            anchor: None,
            since_anchor: 0,
            last_time: None,
            file_time: 0,
            buf: Vec::with_capacity(64 * 1024),
            skips: Skips::default(),
        }
    }
}

impl Iterator for TextReader {
    type Item = RawLine;

    fn next(&mut self) -> Option<RawLine> {
        let mut buf = std::mem::take(&mut self.buf);
        let line = self.chain.next_line(&mut buf, &mut self.skips);
        self.buf = buf;
        let line = line?;
        let path = self.chain.path().to_path_buf();
        let line_no = self.chain.line_no();
        if line.new_file {
            self.file_time = mtime_ns(&path);
        }
        if line.cut {
            self.skips
                .record("line_too_long", &path, line_no, "line over 4 MiB cut");
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        let text = match super::utf8_string(std::mem::take(&mut self.buf)) {
            Ok(s) => s,
            Err(bytes) => {
                self.skips.record(
                    "invalid_utf8_replaced",
                    &path,
                    line_no,
                    "invalid UTF-8 replaced with U+FFFD",
                );
                String::from_utf8_lossy(&bytes).into_owned()
            }
        };
        let (t, strip) = line_time(&text);
        let text = if strip > 0 {
            text[strip..].to_string()
        } else {
            text
        };
        // The key follows file order: a time that stepped backwards does not move the anchor
        // back (see the module docs), the line keeps its own time for display.
        let key = match (t, self.anchor) {
            (Some(t), Some(a)) if t <= a => {
                if t < a {
                    self.skips.record(
                        "clock_skew",
                        &path,
                        line_no,
                        "time went backwards; record kept",
                    );
                }
                self.since_anchor += 1;
                Key {
                    ts: a,
                    seq: self.since_anchor,
                }
            }
            (Some(t), _) => {
                self.anchor = Some(t);
                self.since_anchor = 0;
                Key { ts: t, seq: 0 }
            }
            (None, _) => {
                self.since_anchor += 1;
                Key {
                    ts: self.anchor.unwrap_or(0),
                    seq: self.since_anchor,
                }
            }
        };
        if t.is_some() {
            self.last_time = t;
        }
        let ts = self.last_time.unwrap_or(self.file_time);
        Some(RawLine {
            key,
            ts,
            stream: Stream::Stdout,
            text,
            terminated: line.ended,
            line_no,
            truncated: line.cut,
        })
    }
}

impl LineSource for TextReader {
    fn origin(&self) -> &str {
        &self.origin
    }
    fn skips(&self) -> &Skips {
        &self.skips
    }
    fn bytes_read(&self) -> u64 {
        self.chain.bytes_read()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_from_lines() {
        let (t, s) = line_time("2026-03-28T14:30:00.123456789Z Processed 10 messages");
        assert_eq!(
            t,
            crate::time::parse_rfc3339("2026-03-28T14:30:00.123456789Z")
        );
        assert_eq!(s, 31);
        let (t, s) = line_time("2026-11-29 05:00:48,263 - consumer - INFO - x");
        assert_eq!(t, crate::time::parse_loose("2026-11-29 05:00:48,263"));
        assert_eq!(s, 0);
        let (t, _) = line_time(r#"{"timestamp": "2026-03-28T14:30:00Z","message":"m"}"#);
        assert_eq!(t, crate::time::parse_rfc3339("2026-03-28T14:30:00Z"));
        // The other keys the service-line parser reads, as text or as epoch numbers.
        let at = crate::time::parse_rfc3339("2026-03-28T14:33:00Z");
        for line in [
            r#"{"time":"2026-03-28T14:33:00Z","severity":"WARNING","msg":"m"}"#,
            r#"{"@timestamp":"2026-03-28T14:33:00.000Z","log.level":"info","message":"m"}"#,
            r#"{"asctime": "2026-03-28 14:33:00,000", "levelname": "ERROR", "message": "m"}"#,
            r#"{"event":"m","ts":1774708380.0}"#,
            r#"{"msg":"m","time":1774708380000}"#,
        ] {
            assert_eq!(line_time(line).0, at, "{line}");
        }
        // A key's name inside another key or a value is not the key.
        assert_eq!(
            line_time(r#"{"message":"time","timeout":"2026-03-28T14:33:00Z"}"#).0,
            None
        );
        assert_eq!(line_time("      1/3   0G").0, None);
    }

    #[test]
    fn keys_follow_the_last_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("queue.log");
        std::fs::write(&p, "no time\n2026-11-29 05:00:48,263 - q - INFO - a\ncontinued\n2026-11-29 05:00:48,263 - q - INFO - b\r\n").unwrap();
        let fp = fingerprint(&p).unwrap();
        let lines: Vec<RawLine> = TextReader::new(vec![p], fp).collect();
        let t = crate::time::parse_loose("2026-11-29 05:00:48,263").unwrap();
        let keys: Vec<Key> = lines.iter().map(|l| l.key).collect();
        assert_eq!(
            keys,
            vec![
                Key { ts: 0, seq: 1 },
                Key { ts: t, seq: 0 },
                Key { ts: t, seq: 1 },
                Key { ts: t, seq: 2 }
            ]
        );
        assert_eq!(lines[3].text, "2026-11-29 05:00:48,263 - q - INFO - b");
        assert_eq!(lines[2].ts, t);
    }
}
