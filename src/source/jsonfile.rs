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

    /// Reads one input that can be read only once (see [`super::Piped`]).
    pub fn piped(path: PathBuf, reader: Box<dyn std::io::Read + Send>) -> Self {
        JsonFileReader {
            chain: FileChain::piped(path, reader, MAX_ENTRY),
            ..JsonFileReader::new(Vec::new())
        }
    }

    fn entry(&mut self, path: &std::path::Path) {
        let line_no = self.chain.line_no();
        // The line is taken out of `self` while its fields are borrowed from it.
        let buf = std::mem::take(&mut self.buf);
        let mut log = Vec::with_capacity(buf.len());
        match decode_fast(&buf, &mut log) {
            Some((stream, time)) => match super::utf8_string(log) {
                Ok(log) => self.accept(
                    path,
                    line_no,
                    Some(log),
                    std::str::from_utf8(stream).ok(),
                    std::str::from_utf8(time).ok(),
                ),
                Err(_) => self.entry_slow(path, line_no, &buf),
            },
            None => self.entry_slow(path, line_no, &buf),
        }
        self.buf = buf;
    }

    /// Any entry [`decode_fast`] declined: serde_json, then a lossy retry for raw invalid
    /// UTF-8 (dockerd itself writes \ufffd, but files get damaged).
    fn entry_slow(&mut self, path: &std::path::Path, line_no: u64, buf: &[u8]) {
        match serde_json::from_slice::<Entry<'_>>(buf) {
            Ok(e) => self.accept(
                path,
                line_no,
                e.log.map(Cow::into_owned),
                e.stream.as_deref(),
                e.time.as_deref(),
            ),
            Err(_) => {
                let lossy = String::from_utf8_lossy(buf);
                if matches!(lossy, Cow::Owned(_)) {
                    match serde_json::from_str::<Entry<'_>>(&lossy) {
                        Ok(e) => {
                            self.skips.record(
                                "invalid_utf8_replaced",
                                path,
                                line_no,
                                "invalid UTF-8 replaced with U+FFFD",
                            );
                            self.accept(
                                path,
                                line_no,
                                e.log.map(Cow::into_owned),
                                e.stream.as_deref(),
                                e.time.as_deref(),
                            );
                        }
                        Err(err) => {
                            self.skips
                                .record("invalid_json", path, line_no, &err.to_string());
                        }
                    }
                } else {
                    let err = serde_json::from_slice::<serde_json::Value>(buf).err();
                    let detail = err
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "not a json-file entry".into());
                    self.skips.record("invalid_json", path, line_no, &detail);
                }
            }
        }
    }

    fn accept(
        &mut self,
        path: &std::path::Path,
        line_no: u64,
        log: Option<String>,
        stream: Option<&str>,
        time: Option<&str>,
    ) {
        let Some(ts) = time.and_then(crate::time::parse_rfc3339) else {
            self.skips
                .record("bad_time", path, line_no, time.unwrap_or("missing time"));
            return;
        };
        let stream = match stream.map(Stream::parse) {
            Some(Some(s)) => s,
            None => Stream::Stdout,
            Some(None) => {
                self.skips
                    .record("bad_stream", path, line_no, stream.unwrap_or(""));
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

/// Decodes an entry in the exact shape dockerd's encoder writes (`{"log":"...","stream":"...",
/// "time":"..."}`, no whitespace, no `attrs`) in one pass, appending the unescaped `log` to
/// `out` (empty on entry). Returns `(stream, time)`, or `None` for anything else, which then
/// goes through serde_json: this is only the common case made cheap, not a second JSON parser
/// to trust. Nearly all of a replay's bytes are inside `log`, most of them progress frames.
fn decode_fast<'a>(line: &'a [u8], out: &mut Vec<u8>) -> Option<(&'a [u8], &'a [u8])> {
    let mut rest = line.strip_prefix(b"{\"log\":\"")?;
    loop {
        let i = memchr::memchr2(b'"', b'\\', rest)?;
        out.extend_from_slice(&rest[..i]);
        if rest[i] == b'"' {
            rest = &rest[i + 1..];
            break;
        }
        let (&esc, after) = rest[i + 1..].split_first()?;
        rest = after;
        let byte = match esc {
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'u' => {
                let (c, after) = unicode_escape(rest)?;
                rest = after;
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                continue;
            }
            _ => return None,
        };
        out.push(byte);
    }
    let rest = rest.strip_prefix(b",\"stream\":\"")?;
    let i = memchr::memchr2(b'"', b'\\', rest)?;
    let (stream, rest) = (&rest[..i], &rest[i..]);
    let rest = rest.strip_prefix(b"\",\"time\":\"")?;
    let i = memchr::memchr2(b'"', b'\\', rest)?;
    let (time, rest) = (&rest[..i], &rest[i..]);
    if rest
        .strip_prefix(b"\"}")?
        .iter()
        .all(u8::is_ascii_whitespace)
    {
        Some((stream, time))
    } else {
        None
    }
}

/// The character of a `\uXXXX` escape (the `\u` already consumed), joining a surrogate pair.
fn unicode_escape(s: &[u8]) -> Option<(char, &[u8])> {
    let hex = |s: &[u8]| -> Option<u32> {
        s.get(..4)?
            .iter()
            .try_fold(0u32, |acc, &b| Some(acc << 4 | char::from(b).to_digit(16)?))
    };
    let hi = hex(s)?;
    if (0xD800..0xDC00).contains(&hi) {
        let s = s[4..].strip_prefix(b"\\u")?;
        let lo = hex(s)?;
        if !(0xDC00..0xE000).contains(&lo) {
            return None;
        }
        let c = char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))?;
        return Some((c, &s[4..]));
    }
    Some((char::from_u32(hi)?, &s[4..]))
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

    /// dockerd's escaping (moby's jsonlog): `"` `\\` `\n` `\r` `\t`, other controls and
    /// `<>&` as `\u00XX`, U+2028/9 escaped, the rest raw.
    fn moby_escape(s: &str) -> String {
        let mut o = String::new();
        for c in s.chars() {
            match c {
                '"' => o.push_str("\\\""),
                '\\' => o.push_str("\\\\"),
                '\n' => o.push_str("\\n"),
                '\r' => o.push_str("\\r"),
                '\t' => o.push_str("\\t"),
                '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                    o.push_str(&format!("\\u{:04x}", c as u32))
                }
                c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
                c => o.push(c),
            }
        }
        o
    }

    fn serde_entry(line: &[u8]) -> Option<(String, String, String)> {
        let e: Entry<'_> = serde_json::from_slice(line).ok()?;
        Some((
            e.log?.into_owned(),
            e.stream?.into_owned(),
            e.time?.into_owned(),
        ))
    }

    fn fast_entry(line: &[u8]) -> Option<(String, String, String)> {
        let mut out = Vec::new();
        let (s, t) = decode_fast(line, &mut out)?;
        Some((
            String::from_utf8(out).ok()?,
            String::from_utf8(s.to_vec()).ok()?,
            String::from_utf8(t.to_vec()).ok()?,
        ))
    }

    #[test]
    fn fast_path_declines_what_it_does_not_know() {
        let t = "2026-03-28T14:30:00.5Z";
        let attrs = format!(
            "{{\"log\":\"a\\n\",\"stream\":\"stdout\",\"attrs\":{{\"k\":\"v\"}},\"time\":\"{t}\"}}"
        );
        assert_eq!(fast_entry(attrs.as_bytes()), None);
        assert!(serde_entry(attrs.as_bytes()).is_some());
        let spaced = format!("{{ \"log\":\"a\\n\",\"stream\":\"stdout\",\"time\":\"{t}\"}}");
        assert_eq!(fast_entry(spaced.as_bytes()), None);
        for bad in [
            "{\"log\":\"a\\x\",\"stream\":\"stdout\",\"time\":\"t\"}",
            "{\"log\":\"\\ud800\",\"stream\":\"stdout\",\"time\":\"t\"}",
            "{\"log\":\"cut",
            "{\"log\":\"a\",\"stream\":\"stdout\",\"time\":\"t\"}x",
        ] {
            assert_eq!(fast_entry(bad.as_bytes()), None, "{bad}");
        }
        let pair = "{\"log\":\"\\ud83d\\ude80 \\u003c\\u001b[K\\r\",\"stream\":\"stderr\",\"time\":\"t\"}\n";
        assert_eq!(
            fast_entry(pair.as_bytes()),
            Some(("🚀 <\u{1b}[K\r".into(), "stderr".into(), "t".into()))
        );
    }

    proptest::proptest! {
        /// Whatever dockerd writes, the fast path decodes exactly as serde_json does.
        #[test]
        fn fast_path_agrees_with_serde(log in "\\PC*|[\\x00-\\x7f]*|.*", err in proptest::bool::ANY, nano in 0u32..1_000_000_000) {
            let stream = if err { "stderr" } else { "stdout" };
            let line = format!(
                "{{\"log\":\"{}\",\"stream\":\"{stream}\",\"time\":\"2026-03-28T14:30:00.{nano:09}Z\"}}",
                moby_escape(&log)
            );
            let fast = fast_entry(line.as_bytes());
            proptest::prop_assert!(fast.is_some());
            proptest::prop_assert_eq!(fast, serde_entry(line.as_bytes()));
            // serde_json's own escaping too.
            let line = format!(
                "{{\"log\":{},\"stream\":\"{stream}\",\"time\":\"t\"}}",
                serde_json::to_string(&log).unwrap()
            );
            proptest::prop_assert_eq!(fast_entry(line.as_bytes()), serde_entry(line.as_bytes()));
        }

        /// On arbitrary bytes the fast path either declines or agrees with serde_json.
        #[test]
        fn fast_path_never_disagrees(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80), tail in "[a-z\\\\\"u0-9]{0,12}") {
            let mut line = b"{\"log\":\"".to_vec();
            line.extend_from_slice(&bytes);
            line.extend_from_slice(tail.as_bytes());
            line.extend_from_slice(b"\",\"stream\":\"stdout\",\"time\":\"t\"}");
            if let (Some(f), Some(s)) = (fast_entry(&line), serde_entry(&line)) {
                proptest::prop_assert_eq!(f, s);
            }
        }
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
