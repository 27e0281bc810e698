//! Property tests: the line parsers and assembly never panic, whatever the input.

use proptest::prelude::*;
use trainwatch::assemble::{self, multiline::Grouper};
use trainwatch::event::{Key, RawLine, Stream};
use trainwatch::parse::Parser;

fn arb_line() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ 0-9./Ga-z:%|━─╸\r\x1b\\[K-]{0,200}",
        "\\{\"(level|message|context|timestamp)\":[\"0-9a-zA-Z{}:, NaInfity-]{0,80}",
        "(Traceback \\(most recent call last\\):|  File \"x\", line 1|[A-Za-z]+Error: .{0,20}|)",
        "20[0-9]{2}-[0-9]{2}-[0-9]{2} [0-9:,]{0,14} - [a-z]{0,5} - (INFO|ERROR|WARN)? - .{0,30}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parsers_never_panic(lines in proptest::collection::vec(arb_line(), 1..20)) {
        let parser = Parser::default();
        let mut g = Grouper::new();
        let mut out = Vec::new();
        for (i, text) in lines.into_iter().enumerate() {
            let raw = RawLine { key: Key { ts: i as i64, seq: 0 }, ts: i as i64, stream: if i % 3 == 0 { Stream::Stderr } else { Stream::Stdout }, text, terminated: true, line_no: i as u64, truncated: false };
            g.push(assemble::clean(raw), &mut out);
        }
        g.finish(&mut out);
        let mut state = trainwatch::derive::ContainerState::new("c".into(), Default::default());
        let mut ops = Vec::new();
        for rec in &out {
            let p = parser.parse(rec);
            state.apply(rec, p, &mut ops);
        }
    }

    #[test]
    fn grouping_loses_no_line(lines in proptest::collection::vec(arb_line(), 1..30)) {
        let mut g = Grouper::new();
        let mut out = Vec::new();
        let mut n = 0u32;
        for (i, text) in lines.into_iter().enumerate() {
            let text = text.replace(['\r', '\n'], " ");
            n += 1;
            let raw = RawLine { key: Key { ts: i as i64, seq: 0 }, ts: i as i64, stream: Stream::Stderr, text, terminated: true, line_no: i as u64, truncated: false };
            g.push(assemble::clean(raw), &mut out);
        }
        g.finish(&mut out);
        prop_assert_eq!(out.iter().map(|r| r.lines).sum::<u32>(), n);
    }
}
