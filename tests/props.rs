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
        // Other logging layouts after a time, with any characters where the level is sought.
        "20[0-9]{2}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}([,.][0-9]{1,6})? ?(\\[|\\| )?.{0,12}(INFO|ERROR|WARNING|DEBUG)?.{0,40}",
        // Ultralytics-like rows: an epoch column, then anything.
        " {0,12}[0-9]{1,3}/[0-9]{1,3} .{0,80}",
        " {0,20}(all|Class) .{0,60}",
    ]
}

/// 2026-03-28T14:30:00Z, ns.
const T0: i64 = 1_774_708_200 * 1_000_000_000;

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

fn arb_smi_value() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![3 => (0u32..100_000).prop_map(Some), 1 => Just(None)]
}

fn smi_field(v: Option<u32>, placeholder: usize) -> String {
    match v {
        Some(n) => n.to_string(),
        None => ["[N/A]", "[Not Supported]", "[Insufficient Permissions]"][placeholder % 3].into(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// nvidia-smi rows: names with commas, placeholders anywhere; garbage never panics.
    #[test]
    fn nvidia_smi_rows_round_trip(
        index in 0u32..16,
        name in "[A-Za-z0-9]([A-Za-z0-9 ]{0,10}[A-Za-z0-9])?(, [A-Za-z0-9]([A-Za-z0-9 ]{0,6}[A-Za-z0-9])?){0,2}",
        values in proptest::collection::vec(arb_smi_value(), 4),
        ph in 0usize..3,
        junk in any::<String>(),
    ) {
        let row = format!(
            "{index}, GPU-0000, {name}, {}, {}, {}, {}\n{junk}",
            smi_field(values[0], ph), smi_field(values[1], ph), smi_field(values[2], ph), smi_field(values[3], ph)
        );
        let (gpus, _) = trainwatch::source::probes::gpu::parse(&row);
        let g = &gpus[0];
        prop_assert_eq!(g.index, index);
        prop_assert_eq!(&g.name, &name.split(',').map(str::trim).collect::<Vec<_>>().join(", "));
        prop_assert_eq!(g.temperature_c, values[0].map(f64::from));
        prop_assert_eq!(g.utilization_pct, values[1].map(f64::from));
        prop_assert_eq!(g.memory_used_mb, values[2].map(f64::from));
        prop_assert_eq!(g.memory_total_mb, values[3].map(f64::from));
    }

    #[test]
    fn offset_file_parser_never_panics(text in any::<String>(), n in any::<i64>()) {
        let _ = trainwatch::source::probes::offset::parse(&text);
        prop_assert_eq!(trainwatch::source::probes::offset::parse(&format!("offset: {n}\n")), Some(n));
    }

    /// Whatever the ops, the rules never panic, keep one firing alert per fingerprint, and
    /// resolve only what fired.
    #[test]
    fn alert_rules_keep_their_invariants(
        steps in proptest::collection::vec(arb_alert_step(), 1..120)
    ) {
        use std::collections::HashSet;
        use trainwatch::derive::alerts::{Change, Engine, Rules};
        let mut e = Engine::new(Rules::default(), true, "/azaion");
        let mut firing: HashSet<String> = HashSet::new();
        let mut out = Vec::new();
        for op in alert_ops(&steps, T0) {
            e.observe(&op, &mut out);
            for ch in out.drain(..) {
                match ch {
                    Change::Fired { alert, .. } => {
                        prop_assert!(firing.insert(alert.fingerprint.clone()), "fired twice: {:?}", alert);
                    }
                    Change::Resolved { alert, .. } => {
                        prop_assert!(firing.remove(&alert.fingerprint), "resolved without firing: {:?}", alert);
                        prop_assert!(alert.resolved_at.unwrap() >= alert.started_at);
                    }
                    Change::Repeat { alert } => {
                        prop_assert!(firing.contains(&alert.fingerprint));
                    }
                }
            }
        }
        let now: HashSet<String> = e.firing().into_iter().map(|a| a.fingerprint).collect();
        prop_assert_eq!(now, firing);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// A crash between two commits loses nothing of the rules' state: evaluating a prefix,
    /// keeping the engine's snapshot, resuming a new engine from it and evaluating the rest
    /// gives the same changes, and the same state, as evaluating the whole at once; for
    /// `replay` as for `watch` (within the grace period: ticks here are at most 2 h apart,
    /// the clock is the ops' own).
    #[test]
    fn alert_rules_resume_exactly_from_a_snapshot(
        steps in proptest::collection::vec(arb_alert_step(), 1..150),
        cuts in proptest::collection::vec(0usize..150, 1..4),
        live in any::<bool>(),
    ) {
        use trainwatch::derive::alerts::{Engine, Rules};
        let ops = alert_ops(&steps, T0);
        let engine = || Engine::new(Rules::default(), live, "/azaion");
        let mut whole = engine();
        let mut expected = Vec::new();
        for op in &ops {
            whole.observe(op, &mut expected);
        }
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(ops.len())).collect();
        cuts.sort_unstable();
        let mut got = Vec::new();
        let mut e = engine();
        let mut from = 0;
        for cut in cuts.into_iter().chain([ops.len()]) {
            for op in &ops[from..cut] {
                e.observe(op, &mut got);
            }
            from = cut;
            let snapshot = e.snapshot();
            e = engine();
            prop_assert_eq!(e.resume(&snapshot), Ok(()));
            prop_assert_eq!(e.snapshot(), snapshot);
        }
        prop_assert_eq!(got, expected);
        prop_assert_eq!(e.snapshot(), whole.snapshot());
        prop_assert_eq!(e.firing(), whole.firing());
    }
}

/// One op for the alert rules: (what, which container, seconds later, a value).
pub(crate) fn arb_alert_step() -> impl Strategy<Value = (u8, u8, i64, u32)> {
    (0u8..9, 0u8..3, 0i64..7200, 0u32..120)
}

/// The ops of `steps`, in time order from `t0` (ns).
#[expect(clippy::too_many_lines, reason = "the generator's table of ops")]
pub(crate) fn alert_ops(steps: &[(u8, u8, i64, u32)], t0: i64) -> Vec<trainwatch::derive::Op> {
    use trainwatch::derive::alerts::Signal;
    use trainwatch::derive::{EpochRow, EventRow, Op, RunKey, RunRow, RunStatus};
    const S: i64 = 1_000_000_000;
    let mut t = t0;
    let key = |c: &str, v: u32| RunKey {
        container: c.into(),
        stream: trainwatch::event::Stream::Stdout,
        ts: t0 + (v / 40) as i64,
        seq: 0,
    };
    let mut started = std::collections::HashSet::new();
    let mut out = Vec::new();
    for &(what, who, dt, v) in steps {
        out.push({
            t += dt * S;
            let c = ["yolo", "annotation-queue", "gpu0"][who as usize];
            match what {
                0 => Op::metric(t, "gpu0", "gpu_temperature_c", 60.0 + v as f64 / 2.0),
                1 => Op::metric(t, "host", "disk_usage_azaion_pct", v as f64),
                2 => Op::metric(t, c, "queue_offset", (v % 3) as f64),
                3 => Op::Tick(t),
                4 => Op::Signal(
                    t,
                    Signal::Container {
                        name: c.into(),
                        role: "queue".into(),
                        running: v % 2 == 0,
                    },
                ),
                5 => Op::Event(EventRow {
                    ts: t,
                    container: c.into(),
                    stream: "stdout",
                    seq: 0,
                    key_ts: t,
                    level: trainwatch::parse::Level::Error,
                    kind: [
                        "loss_non_finite",
                        "gpu_oom",
                        "checkpoint_save_failed",
                        "checkpoint_saved",
                    ][v as usize % 4],
                    message: "m".into(),
                    context: "{}".into(),
                }),
                6 => Op::Run(RunRow {
                    key: key(c, v),
                    started_at: t0,
                    ended_at: (v % 2 == 1).then_some(t),
                    status: if v % 2 == 1 {
                        RunStatus::Failed
                    } else {
                        RunStatus::Running
                    },
                    epochs_total: Some(40),
                    best_epoch_reported: None,
                    save_dir: None,
                    model: None,
                    loss_names: vec!["box_loss".into()],
                    params: None,
                    ultralytics_version: None,
                    failure: None,
                }),
                _ => Op::Epoch(
                    key(c, v),
                    EpochRow {
                        epoch: v % 40,
                        ended_at: t,
                        losses: Some(vec![(
                            "box_loss".into(),
                            if v % 17 == 0 {
                                f64::NAN
                            } else {
                                v as f64 / 10.0
                            },
                        )]),
                        ..Default::default()
                    },
                ),
            }
        });
        // A run's row comes before its epochs, as derivation emits them.
        if let Some(Op::Epoch(key, e)) = out.last()
            && started.insert(key.clone())
        {
            let (key, ended_at) = (key.clone(), e.ended_at);
            out.insert(
                out.len() - 1,
                Op::Run(RunRow {
                    key,
                    started_at: ended_at,
                    ended_at: None,
                    status: RunStatus::Running,
                    epochs_total: Some(40),
                    best_epoch_reported: None,
                    save_dir: None,
                    model: None,
                    loss_names: vec!["box_loss".into()],
                    params: None,
                    ultralytics_version: None,
                    failure: None,
                }),
            );
        }
    }
    out
}
