//! Docker `json-file` logs: one JSON object per line,
//! `{"log":"...\n","stream":"stdout","time":"<RFC3339Nano>"}` (optional `attrs` before `time`).
//!
//! Partial messages are merged by [`super::partial::Merger`].
//!
//! A rotated set (`.N.gz` ... `.1`, current) is read as one stream of entries, oldest first,
//! so a line split across a rotation is still merged.

use std::borrow::Cow;
use std::path::PathBuf;

use serde::Deserialize;

use super::partial::{Merger, Note};
use super::{FileChain, LineSource, Skips};
use crate::event::{RawLine, Stream};

/// Largest physical json-file line accepted (dockerd writes at most ~100 KiB per entry).
const MAX_ENTRY: usize = 16 * 1024 * 1024;

#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(borrow)]
    log: Option<Cow<'a, str>>,
    #[serde(borrow)]
    stream: Option<Cow<'a, str>>,
    #[serde(borrow)]
    time: Option<Cow<'a, str>>,
}

/// Reads an ordered set of json-file logs of one container.
pub struct JsonFileReader {
    chain: FileChain,
    buf: Vec<u8>,
    merger: Merger,
    skips: Skips,
}

impl JsonFileReader {
    pub fn new(files: Vec<PathBuf>) -> Self {
        JsonFileReader {
            chain: FileChain::new(files, MAX_ENTRY),
            buf: Vec::with_capacity(64 * 1024),
            merger: Merger::new(),
            skips: Skips::default(),
        }
    }

    fn entry(&mut self, path: &std::path::Path) {
        let line_no = self.chain.line_no();
        let parsed: Result<Entry<'_>, _> = serde_json::from_slice(&self.buf);
        let (log, stream, time) = match parsed {
            Ok(e) => (
                e.log.map(Cow::into_owned),
                e.stream.map(Cow::into_owned),
                e.time.map(Cow::into_owned),
            ),
            Err(_) => {
                // Raw invalid UTF-8 (dockerd itself writes \ufffd, but files get damaged):
                // retry lossily before calling the line broken.
                let lossy = String::from_utf8_lossy(&self.buf);
                if matches!(lossy, Cow::Owned(_)) {
                    match serde_json::from_str::<Entry<'_>>(&lossy) {
                        Ok(e) => {
                            self.skips.record(
                                "invalid_utf8_replaced",
                                path,
                                line_no,
                                "invalid UTF-8 replaced with U+FFFD",
                            );
                            (
                                e.log.map(Cow::into_owned),
                                e.stream.map(Cow::into_owned),
                                e.time.map(Cow::into_owned),
                            )
                        }
                        Err(err) => {
                            self.skips
                                .record("invalid_json", path, line_no, &err.to_string());
                            return;
                        }
                    }
                } else {
                    let err = serde_json::from_slice::<serde_json::Value>(&self.buf).err();
                    let detail = err
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "not a json-file entry".into());
                    self.skips.record("invalid_json", path, line_no, &detail);
                    return;
                }
            }
        };
        let Some(ts) = time.as_deref().and_then(crate::time::parse_rfc3339) else {
            self.skips.record(
                "bad_time",
                path,
                line_no,
                time.as_deref().unwrap_or("missing time"),
            );
            return;
        };
        let stream = match stream.as_deref().map(Stream::parse) {
            Some(Some(s)) => s,
            None => Stream::Stdout,
            Some(None) => {
                self.skips
                    .record("bad_stream", path, line_no, stream.as_deref().unwrap_or(""));
                return;
            }
        };
        let log = log.unwrap_or_default();
        match self.merger.push(stream, ts, log, line_no) {
            Note::ClockSkew => self.skips.record(
                "clock_skew",
                path,
                line_no,
                "time went backwards; record kept",
            ),
            Note::Capped => self.skips.record(
                "merge_capped",
                path,
                line_no,
                "merged partial message over 8 MiB; rest dropped",
            ),
            Note::None => {}
        }
    }
}

impl Iterator for JsonFileReader {
    type Item = RawLine;

    fn next(&mut self) -> Option<RawLine> {
        loop {
            if let Some(l) = self.merger.pop() {
                return Some(l);
            }
            let mut buf = std::mem::take(&mut self.buf);
            let line = self.chain.next_line(&mut buf, &mut self.skips);
            self.buf = buf;
            let Some(line) = line else {
                // End of the set: what is still pending never got its newline.
                self.merger.finish();
                return self.merger.pop();
            };
            let path = self.chain.path().to_path_buf();
            if line.cut {
                self.skips.record(
                    "line_too_long",
                    &path,
                    self.chain.line_no(),
                    "json-file entry over 16 MiB",
                );
                continue;
            }
            if self.buf.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            // A file cut mid-entry (crash, disk full, copy in progress) ends with an entry
            // without newline: it is parsed as is and counted as invalid JSON if incomplete.
            self.entry(&path);
        }
    }
}

impl LineSource for JsonFileReader {
    fn origin(&self) -> &str {
        ""
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
    use std::io::Write;

    fn read(content: &str) -> (Vec<RawLine>, Skips) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc-json.log");
        std::fs::write(&p, content).unwrap();
        let mut r = JsonFileReader::new(vec![p]);
        let lines: Vec<RawLine> = r.by_ref().collect();
        (lines, r.skips.clone())
    }

    fn entry(log: &str, stream: &str, time: &str) -> String {
        format!(
            "{{\"log\":{},\"stream\":\"{stream}\",\"time\":\"{time}\"}}\n",
            serde_json::to_string(log).unwrap()
        )
    }

    #[test]
    fn merges_partials_sharing_a_timestamp() {
        let a = "a".repeat(16 * 1024);
        let t = "2026-03-28T14:30:00.5Z";
        let data = entry(&a, "stdout", t)
            + &entry("tail\n", "stderr", "2026-03-28T14:30:00.6Z")
            + &entry("bc\n", "stdout", t);
        let (lines, _) = read(&data);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].text, format!("{a}bc"));
        assert!(lines[1].terminated);
    }

    #[test]
    fn short_tail_then_later_entry_is_not_glued() {
        let data = entry("      3/5   0G   1.2", "stdout", "2026-03-28T14:30:00Z")
            + &entry("Ultralytics 8.4.190 🚀\n", "stdout", "2026-03-28T14:31:00Z");
        let (lines, _) = read(&data);
        assert_eq!(lines.len(), 2);
        assert!(!lines[0].terminated);
        assert_eq!(lines[1].text, "Ultralytics 8.4.190 🚀");
    }

    #[test]
    fn full_pieces_with_later_timestamps_still_merge() {
        let a = "a".repeat(16 * 1024);
        let data = entry(&a, "stdout", "2026-03-28T14:30:00Z")
            + &entry("z\n", "stdout", "2026-03-28T14:30:01Z");
        let (lines, _) = read(&data);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].text.len(), 16 * 1024 + 1);
        assert_eq!(
            lines[0].ts,
            crate::time::parse_rfc3339("2026-03-28T14:30:00Z").unwrap()
        );
    }

    #[test]
    fn bad_lines_are_counted_and_good_ones_kept() {
        let mut data = entry("one\n", "stdout", "2026-03-28T14:30:00Z");
        data += "{\"log\":\"trunc\n";
        data += "not json\n";
        data += &entry("two\n", "stdout", "bad time");
        data += &entry("three\n", "stdout", "2026-03-28T14:30:00Z");
        let (lines, skips) = read(&data);
        assert_eq!(
            lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            vec!["one", "three"]
        );
        assert_eq!(lines[1].key.seq, 1, "same time, next position");
        assert_eq!(skips.by_reason.get("invalid_json"), Some(&2));
        assert_eq!(skips.by_reason.get("bad_time"), Some(&1));
    }

    #[test]
    fn moby_escapes_and_invalid_utf8() {
        let raw = b"{\"log\":\"\\u003cb\\u003e \\u001b[1mx\\u001b[0m \\ufffd\\n\",\"stream\":\"stderr\",\"time\":\"2026-03-28T14:30:00.1Z\"}\n{\"log\":\"bad \xff\\n\",\"stream\":\"stdout\",\"attrs\":{\"tag\":\"x\"},\"time\":\"2026-03-28T14:30:00.2Z\"}\n";
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x-json.log");
        std::fs::File::create(&p).unwrap().write_all(raw).unwrap();
        let mut r = JsonFileReader::new(vec![p]);
        let lines: Vec<RawLine> = r.by_ref().collect();
        assert_eq!(lines[0].text, "<b> \x1b[1mx\x1b[0m \u{fffd}");
        assert_eq!(lines[0].stream, Stream::Stderr);
        assert_eq!(lines[1].text, "bad \u{fffd}");
        assert_eq!(r.skips.by_reason.get("invalid_utf8_replaced"), Some(&1));
    }

    #[test]
    fn truncated_gzip_keeps_what_was_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x-json.log.1.gz");
        let mut data = String::new();
        for i in 0..2000 {
            data += &entry(
                &format!("line {i}\n"),
                "stdout",
                &format!("2026-03-28T14:30:{:02}.{:04}Z", i / 1000, i % 1000 + 1),
            );
        }
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data.as_bytes()).unwrap();
        let gz = enc.finish().unwrap();
        std::fs::write(&p, &gz[..gz.len() * 2 / 3]).unwrap();
        let mut r = JsonFileReader::new(vec![p]);
        let n = r.by_ref().count();
        assert!(n > 100 && n < 2000, "read {n} lines before the cut");
        assert_eq!(r.skips.by_reason.get("truncated_gzip"), Some(&1));
    }
}
