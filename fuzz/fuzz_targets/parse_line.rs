//! Fuzzes the line path: arbitrary bytes as a Docker json-file entry's text, split into lines,
//! through frame selection, ANSI stripping, grouping, parsing and derivation. Must never panic.
//!
//! Run: `cargo +nightly fuzz run parse_line` (from the repository root).
#![no_main]

use libfuzzer_sys::fuzz_target;
use trainwatch::assemble::Assembler;
use trainwatch::derive::ContainerState;
use trainwatch::event::{Key, RawLine, Stream};
use trainwatch::parse::Parser;

/// Built once: compiling the patterns per input held the target to a few runs per second.
static PARSER: std::sync::LazyLock<Parser> = std::sync::LazyLock::new(Parser::default);

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parser = &*PARSER;
    let mut grouper = Assembler::new();
    let mut state = ContainerState::new("fuzz".into(), Default::default());
    let mut recs = Vec::new();
    let mut ops = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let raw = RawLine {
            key: Key { ts: i as i64, seq: 0 },
            ts: i as i64,
            stream: if line.len() % 2 == 0 { Stream::Stdout } else { Stream::Stderr },
            text: line.to_string(),
            terminated: true,
            line_no: i as u64 + 1,
            truncated: false,
        };
        grouper.push(raw, &mut recs);
    }
    grouper.finish(&mut recs);
    for rec in &recs {
        let parsed = parser.parse(rec);
        state.apply(rec, parsed, &mut ops);
    }
    let _ = trainwatch::redact::text(&text);
});
