//! The rules, each against the changes it makes.

use super::*;
use crate::derive::{EpochRow, EventRow, Op, RunKey, RunStatus};
use crate::event::Stream;
use crate::parse::Level;
use crate::time::Age;
use std::sync::Arc;

const S: i64 = 1_000_000_000;
const T0: i64 = 1_774_708_200 * S;

fn metric(container: &str, name: &'static str, ts: i64, value: f64) -> Op {
    Op::metric(ts, container, name, value)
}

fn event(container: &str, kind: &'static str, ts: i64, context: &str) -> Op {
    Op::Event(EventRow {
        ts,
        container: Arc::from(container),
        stream: "stdout",
        seq: 0,
        key_ts: ts,
        level: Level::Error,
        kind,
        message: format!("{kind} happened"),
        context: context.into(),
    })
}

fn run_key(container: &str, ts: i64) -> RunKey {
    RunKey {
        container: Arc::from(container),
        stream: Stream::Stdout,
        ts,
        seq: 0,
    }
}

fn epoch(key: &RunKey, epoch: u32, ts: i64, loss: f64) -> Op {
    Op::Epoch(
        key.clone(),
        EpochRow {
            epoch,
            ended_at: ts,
            losses: Some(vec![("box_loss".into(), loss)]),
            ..Default::default()
        },
    )
}

fn feed(e: &mut Engine, ops: &[Op]) -> Vec<Change> {
    let mut out = Vec::new();
    for op in ops {
        e.observe(op, &mut out);
    }
    out
}

fn names(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .map(|c| match c {
            Change::Fired { alert, .. } => format!("fired {}", alert.alertname),
            Change::Resolved { alert, .. } => format!("resolved {}", alert.alertname),
            Change::Repeat { alert } => format!("repeat {}", alert.alertname),
        })
        .collect()
}

#[test]
fn gpu_temperature_fires_above_90_and_resolves() {
    let mut e = Engine::new(Rules::default(), false, "/azaion");
    assert!(feed(&mut e, &[metric("gpu0", "gpu_temperature_c", T0, 90.0)]).is_empty());
    let c = feed(&mut e, &[metric("gpu0", "gpu_temperature_c", T0 + S, 91.0)]);
    assert_eq!(names(&c), ["fired GpuTemperatureHigh"]);
    let Change::Fired { alert, .. } = &c[0] else {
        unreachable!()
    };
    assert_eq!(alert.labels["gpu"], "0");
    assert_eq!(alert.severity, Severity::Critical);
    // Still hot: no second alert for the same fingerprint.
    assert!(
        feed(
            &mut e,
            &[metric("gpu0", "gpu_temperature_c", T0 + 2 * S, 95.0)]
        )
        .is_empty()
    );
    // Another GPU is another alert.
    let c = feed(
        &mut e,
        &[metric("gpu1", "gpu_temperature_c", T0 + 2 * S, 92.0)],
    );
    assert_eq!(names(&c), ["fired GpuTemperatureHigh"]);
    let c = feed(
        &mut e,
        &[metric("gpu0", "gpu_temperature_c", T0 + 3 * S, 70.0)],
    );
    assert_eq!(names(&c), ["resolved GpuTemperatureHigh"]);
    let Change::Resolved { alert, .. } = &c[0] else {
        unreachable!()
    };
    assert_eq!(alert.resolved_at, Some(T0 + 3 * S));
    assert_eq!(alert.started_at, T0 + S);
    assert_eq!(e.firing().len(), 1);
}

#[test]
fn a_for_duration_keeps_the_alert_pending() {
    let rules = Rules {
        gpu_temperature_for: Age::secs(60),
        ..Rules::default()
    };
    let mut e = Engine::new(rules, false, "/azaion");
    assert!(feed(&mut e, &[metric("gpu0", "gpu_temperature_c", T0, 95.0)]).is_empty());
    assert!(
        feed(
            &mut e,
            &[metric("gpu0", "gpu_temperature_c", T0 + 59 * S, 95.0)]
        )
        .is_empty()
    );
    // A dip while pending forgets it without a notification.
    assert!(
        feed(
            &mut e,
            &[metric("gpu0", "gpu_temperature_c", T0 + 60 * S, 80.0)]
        )
        .is_empty()
    );
    assert!(
        feed(
            &mut e,
            &[metric("gpu0", "gpu_temperature_c", T0 + 61 * S, 95.0)]
        )
        .is_empty()
    );
    let c = feed(
        &mut e,
        &[metric("gpu0", "gpu_temperature_c", T0 + 121 * S, 95.0)],
    );
    assert_eq!(names(&c), ["fired GpuTemperatureHigh"]);
}

#[test]
fn disk_levels_fire_separately() {
    let mut e = Engine::new(Rules::default(), false, "/azaion");
    let c = feed(&mut e, &[metric("host", "disk_usage_azaion_pct", T0, 85.0)]);
    assert_eq!(names(&c), ["fired DiskUsageHigh"]);
    let Change::Fired { alert, .. } = &c[0] else {
        unreachable!()
    };
    assert_eq!(alert.labels["mount"], "/azaion");
    assert_eq!(alert.severity, Severity::Medium);
    let c = feed(
        &mut e,
        &[metric("host", "disk_usage_azaion_pct", T0 + S, 96.0)],
    );
    assert_eq!(names(&c), ["fired DiskUsageCritical"]);
    let c = feed(
        &mut e,
        &[metric("host", "disk_usage_azaion_pct", T0 + 2 * S, 50.0)],
    );
    assert_eq!(
        names(&c),
        ["resolved DiskUsageCritical", "resolved DiskUsageHigh"]
    );
}

fn queue(running: bool, ts: i64) -> Op {
    Op::Signal(
        ts,
        Signal::Container {
            name: Arc::from("annotation-queue"),
            role: "queue".into(),
            running,
        },
    )
}

#[test]
fn evidence_older_than_an_alert_does_not_resolve_it() {
    let mut e = Engine::new(Rules::default(), false, "/azaion");
    let t = |s: i64, v: f64| metric("gpu0", "gpu_temperature_c", T0 + s * S, v);
    assert_eq!(
        names(&feed(&mut e, &[t(10, 95.0)])),
        ["fired GpuTemperatureHigh"]
    );
    // A sample stamped before the alert began (its line's time stepped back).
    assert!(feed(&mut e, &[t(5, 60.0)]).is_empty());
    let c = feed(&mut e, &[t(11, 60.0)]);
    assert!(
        matches!(&c[..], [Change::Resolved { alert, .. }] if alert.resolved_at == Some(T0 + 11 * S)),
        "{c:?}"
    );
}

#[test]
fn an_alert_that_fires_again_after_resolving_is_a_new_one() {
    // The queue stops (the stuck offset is not its fault), runs again with the offset
    // still stuck: a second QueueOffsetStale, begun after the first ended.
    let mut e = Engine::new(Rules::default(), false, "/azaion");
    let off = |ts, v| metric("annotation-queue", "queue_offset", ts, v);
    feed(&mut e, &[queue(true, T0), off(T0, 100.0)]);
    let c = feed(&mut e, &[off(T0 + 3601 * S, 100.0)]);
    assert_eq!(names(&c), ["fired QueueOffsetStale"]);
    let first = match &c[0] {
        Change::Fired { alert, .. } => alert.started_at,
        _ => unreachable!(),
    };
    let c = feed(
        &mut e,
        &[queue(false, T0 + 3700 * S), Op::Tick(T0 + 3701 * S)],
    );
    assert_eq!(names(&c), ["resolved QueueOffsetStale"]);
    let Change::Resolved { alert, .. } = &c[0] else {
        unreachable!()
    };
    assert_eq!(
        (alert.started_at, alert.resolved_at),
        (first, Some(T0 + 3700 * S))
    );
    let c = feed(
        &mut e,
        &[queue(true, T0 + 3702 * S), Op::Tick(T0 + 3703 * S)],
    );
    assert_eq!(names(&c), ["fired QueueOffsetStale"]);
    let Change::Fired { alert, .. } = &c[0] else {
        unreachable!()
    };
    assert_eq!(
        alert.started_at,
        T0 + 3700 * S + 1,
        "just after the first ended"
    );
}

fn run_op(key: &RunKey, status: RunStatus, ts: i64) -> Op {
    Op::Run(super::super::RunRow {
        key: key.clone(),
        started_at: key.ts,
        ended_at: (status != RunStatus::Running).then_some(ts),
        status,
        epochs_total: Some(10),
        best_epoch_reported: None,
        save_dir: None,
        model: None,
        loss_names: vec![],
        params: None,
        ultralytics_version: None,
        failure: None,
    })
}

#[test]
fn a_run_that_stops_completing_epochs_is_stalled() {
    let mut e = Engine::new(Rules::default(), false, "/azaion");
    let k = run_key("yolo", T0);
    let min = 60 * S;
    // Epochs every 10 minutes: the limit is max(3 x 10 min, 15 min) = 30 min.
    let mut ops = vec![run_op(&k, RunStatus::Running, T0)];
    for ep in 1..=3 {
        ops.push(epoch(&k, ep, T0 + ep as i64 * 10 * min, 1.0));
    }
    assert!(feed(&mut e, &ops).is_empty());
    let line = |ts| event("yolo", "log", ts, "{}");
    assert!(feed(&mut e, &[line(T0 + 60 * min)]).is_empty());
    let c = feed(&mut e, &[line(T0 + 60 * min + S)]);
    assert_eq!(names(&c), ["fired TrainingStalled"]);
    let Change::Fired { alert, .. } = &c[0] else {
        unreachable!()
    };
    assert_eq!(alert.started_at, T0 + 60 * min, "30 min after epoch 3");
    assert!(alert.summary.contains("since epoch 3"), "{}", alert.summary);
    let c = feed(&mut e, &[epoch(&k, 4, T0 + 70 * min, 1.0)]);
    assert_eq!(names(&c), ["resolved TrainingStalled"]);
    // The run ends: nothing more to wait for, however long the log goes on.
    feed(&mut e, &[run_op(&k, RunStatus::Completed, T0 + 71 * min)]);
    assert!(feed(&mut e, &[line(T0 + 600 * min)]).is_empty());
}

#[test]
fn a_replayed_archive_that_ends_resolves_what_needs_it_running() {
    let mut e = Engine::new(Rules::default(), false, "/azaion");
    let off = |ts, v| metric("q", "queue_offset", ts, v);
    feed(&mut e, &[off(T0, 5.0)]);
    let c = feed(&mut e, &[off(T0 + 3601 * S, 5.0)]);
    assert_eq!(names(&c), ["fired QueueOffsetStale"]);
    let c = feed(
        &mut e,
        &[Op::Signal(
            i64::MIN,
            Signal::LogEnded {
                container: "q".into(),
            },
        )],
    );
    assert!(
        matches!(&c[..], [Change::Resolved { alert, .. }] if alert.resolved_at == Some(T0 + 3601 * S)),
        "{c:?}"
    );
    assert!(e.firing().is_empty());
}

#[test]
fn a_training_container_that_dies_fires_until_it_trains_again() {
    let mut e = Engine::new(Rules::default(), false, "/azaion");
    let k = run_key("yolo", T0);
    feed(&mut e, &[run_op(&k, RunStatus::Running, T0)]);
    let c = feed(
        &mut e,
        &[
            run_op(&k, RunStatus::Failed, T0 + 60 * S),
            event("yolo", "training_container_died", T0 + 60 * S, "{}"),
        ],
    );
    assert_eq!(names(&c), ["fired TrainingContainerDied"]);
    let k2 = run_key("yolo", T0 + 120 * S);
    let c = feed(&mut e, &[run_op(&k2, RunStatus::Running, T0 + 120 * S)]);
    assert_eq!(names(&c), ["resolved TrainingContainerDied"]);
}

#[test]
fn queue_container_down_for_five_minutes() {
    let mut e = Engine::new(Rules::default(), false, "/azaion");
    assert!(feed(&mut e, &[queue(true, T0)]).is_empty());
    let died = event(
        "annotation-queue",
        "container_died",
        T0 + S,
        r#"{"role":"queue"}"#,
    );
    let Op::Event(mut d) = died else {
        unreachable!()
    };
    d.stream = "docker";
    assert!(feed(&mut e, &[Op::Event(d.clone()), Op::Tick(T0 + 300 * S)]).is_empty());
    let c = feed(&mut e, &[Op::Tick(T0 + 301 * S)]);
    assert_eq!(names(&c), ["fired QueueContainerDown"]);
    let Change::Fired { alert, .. } = &c[0] else {
        unreachable!()
    };
    assert_eq!(alert.started_at, T0 + S, "started when it died");
    assert_eq!(alert.labels["container"], "annotation-queue");
    let c = feed(&mut e, &[queue(true, T0 + 400 * S)]);
    assert_eq!(names(&c), ["resolved QueueContainerDown"]);
    // A training container that stops is not the queue.
    d.container = Arc::from("yolo");
    d.context = r#"{"role":"training"}"#.into();
    assert!(feed(&mut e, &[Op::Event(d), Op::Tick(T0 + 2000 * S)]).is_empty());
}

#[test]
fn a_queue_found_down_for_hours_at_start_pages_at_once() {
    let mut e = Engine::new(Rules::default(), true, "/azaion");
    feed(&mut e, &[Op::Tick(T0 + 3 * 3600 * S)]);
    // Discovery: stopped since T0 (its FinishedAt).
    let c = feed(&mut e, &[queue(false, T0)]);
    assert!(
        matches!(&c[..], [Change::Fired { alert, notify: true }] if alert.started_at == T0),
        "{c:?}"
    );
}

#[test]
fn queue_offset_stale_only_while_the_queue_runs() {
    let mut e = Engine::new(Rules::default(), false, "/azaion");
    let off = |ts, v| metric("annotation-queue", "queue_offset", ts, v);
    assert!(feed(&mut e, &[queue(true, T0), off(T0, 100.0)]).is_empty());
    assert!(
        feed(
            &mut e,
            &[off(T0 + 1800 * S, 100.0), Op::Tick(T0 + 3600 * S)]
        )
        .is_empty()
    );
    let c = feed(&mut e, &[off(T0 + 3601 * S, 100.0)]);
    assert_eq!(names(&c), ["fired QueueOffsetStale"]);
    let c = feed(&mut e, &[off(T0 + 3700 * S, 101.0)]);
    assert_eq!(names(&c), ["resolved QueueOffsetStale"]);
    // Stopped queue: its offset cannot move; QueueContainerDown tells that story.
    let c = feed(
        &mut e,
        &[queue(false, T0 + 3800 * S), Op::Tick(T0 + 9000 * S)],
    );
    assert_eq!(names(&c), ["fired QueueContainerDown"]);
}

#[test]
fn non_finite_loss_fires_at_once_and_a_finite_epoch_resolves_it() {
    let mut e = Engine::new(Rules::default(), false, "/azaion");
    let k = run_key("yolo", T0);
    let c = feed(
        &mut e,
        &[
            epoch(&k, 1, T0 + S, 2.0),
            event("yolo", "loss_non_finite", T0 + 2 * S, r#"{"epoch":2}"#),
            event("yolo", "loss_non_finite", T0 + 3 * S, r#"{"epoch":2}"#),
        ],
    );
    assert_eq!(names(&c), ["fired TrainingLossNonFinite"]);
    let Change::Fired { alert, .. } = &c[0] else {
        unreachable!()
    };
    assert_eq!(alert.summary, "Training loss is NaN/inf in yolo at epoch 2");
    assert_eq!(alert.started_at, T0 + 2 * S);
    let c = feed(&mut e, &[epoch(&k, 2, T0 + 4 * S, f64::NAN)]);
    assert!(c.is_empty(), "{c:?}");
    let c = feed(&mut e, &[epoch(&k, 3, T0 + 5 * S, 1.9)]);
    assert_eq!(names(&c), ["resolved TrainingLossNonFinite"]);
}

#[test]
fn oom_and_checkpoint_alerts_resolve_on_recovery_or_after_an_hour() {
    let mut e = Engine::new(Rules::default(), false, "/azaion");
    let k = run_key("yolo", T0);
    let c = feed(
        &mut e,
        &[
            event("yolo", "gpu_oom", T0, "{}"),
            event("yolo", "checkpoint_save_failed", T0, "{}"),
        ],
    );
    assert_eq!(
        names(&c),
        ["fired GpuOutOfMemory", "fired CheckpointSaveFailed"]
    );
    let c = feed(&mut e, &[epoch(&k, 1, T0 + 60 * S, 3.0)]);
    assert_eq!(names(&c), ["resolved GpuOutOfMemory"]);
    assert!(feed(&mut e, &[Op::Tick(T0 + 3600 * S)]).is_empty());
    let c = feed(&mut e, &[Op::Tick(T0 + 3601 * S)]);
    assert_eq!(names(&c), ["resolved CheckpointSaveFailed"]);
}

#[test]
fn divergence_definition() {
    let d = Diverging::default();
    // Above 2x the running minimum for 3 epochs.
    assert!(diverging(&[1.0, 0.8, 1.7, 1.8], &d).is_none());
    let why = diverging(&[1.0, 0.8, 1.7, 1.8, 1.65], &d).unwrap();
    assert!(why.contains("above 2x"), "{why}");
    // Rising five epochs in a row.
    assert!(diverging(&[1.0, 1.01, 1.02, 1.03, 1.04], &d).is_none());
    let why = diverging(&[1.0, 1.01, 1.02, 1.03, 1.04, 1.05], &d).unwrap();
    assert!(why.contains("rose 5"), "{why}");
    // A dip ends the streak.
    assert!(diverging(&[1.0, 1.01, 1.02, 1.0, 1.03, 1.04, 1.05], &d).is_none());
}

/// The training losses of the real captured runs (fixtures/ultralytics/*.results.csv).
fn real_curve(name: &str) -> Vec<(u32, f64)> {
    let path = format!(
        "{}/fixtures/ultralytics/{name}.results.csv",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut r = csv::Reader::from_path(path).unwrap();
    let h = r.headers().unwrap().clone();
    let col = |n: &str| h.iter().position(|c| c.trim() == n).unwrap();
    let (ep, b, c, d) = (
        col("epoch"),
        col("train/box_loss"),
        col("train/cls_loss"),
        col("train/dfl_loss"),
    );
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            let f = |i: usize| rec[i].trim().parse::<f64>().unwrap();
            (rec[ep].trim().parse().unwrap(), f(b) + f(c) + f(d))
        })
        .collect()
}

#[test]
fn real_runs_do_not_count_as_diverging() {
    for name in ["normal", "earlystop", "interrupted"] {
        let mut e = Engine::new(Rules::default(), false, "/azaion");
        let k = run_key(name, T0);
        let ops: Vec<Op> = real_curve(name)
            .into_iter()
            .map(|(ep, loss)| epoch(&k, ep, T0 + ep as i64 * 60 * S, loss))
            .collect();
        assert!(ops.len() >= 5);
        assert_eq!(feed(&mut e, &ops), vec![], "{name}");
    }
}

#[test]
fn a_diverging_run_fires_and_a_new_run_resolves() {
    let mut e = Engine::new(Rules::default(), false, "/azaion");
    let k = run_key("yolo", T0);
    // The normal run's curve, then its loss blowing up after epoch 10.
    let mut curve = real_curve("normal");
    curve.extend([(11, 18.0), (12, 22.0), (13, 30.0)]);
    let ops: Vec<Op> = curve
        .into_iter()
        .map(|(ep, loss)| epoch(&k, ep, T0 + ep as i64 * 60 * S, loss))
        .collect();
    let c = feed(&mut e, &ops);
    assert_eq!(names(&c), ["fired TrainingLossDiverging"]);
    let Change::Fired { alert, .. } = &c[0] else {
        unreachable!()
    };
    assert_eq!(alert.started_at, T0 + 13 * 60 * S, "fires at epoch 13");
    assert!(alert.summary.contains("epoch 13"), "{}", alert.summary);
    let c = feed(
        &mut e,
        &[Op::Run(crate::derive::RunRow {
            key: run_key("yolo", T0 + 3600 * S),
            started_at: T0 + 3600 * S,
            ended_at: None,
            status: RunStatus::Running,
            epochs_total: Some(10),
            best_epoch_reported: None,
            save_dir: None,
            model: None,
            loss_names: vec![],
            params: None,
            ultralytics_version: None,
            failure: None,
        })],
    );
    assert_eq!(names(&c), ["resolved TrainingLossDiverging"]);
}

#[test]
fn live_alerts_repeat_and_old_ones_are_not_notified() {
    let mut e = Engine::new(Rules::default(), true, "/azaion");
    feed(&mut e, &[Op::Tick(T0)]);
    let c = feed(&mut e, &[metric("gpu0", "gpu_temperature_c", T0, 95.0)]);
    assert!(matches!(&c[0], Change::Fired { notify: true, .. }));
    assert!(feed(&mut e, &[Op::Tick(T0 + 4 * 3600 * S - S)]).is_empty());
    let c = feed(&mut e, &[Op::Tick(T0 + 4 * 3600 * S)]);
    assert_eq!(names(&c), ["repeat GpuTemperatureHigh"]);
    // An OOM found in a container's old logs is recorded, not paged.
    let c = feed(
        &mut e,
        &[
            event("yolo", "gpu_oom", T0 - 2 * 3600 * S, "{}"),
            Op::Tick(T0 + 4 * 3600 * S + 5 * S),
        ],
    );
    assert!(
        matches!(
            &c[..],
            [
                Change::Fired { notify: false, .. },
                Change::Resolved { notify: false, .. }
            ]
        ),
        "{c:?}"
    );
}

#[test]
fn restored_alerts_are_neither_fired_again_nor_forgotten() {
    let mut e = Engine::new(Rules::default(), true, "/azaion");
    let l = labels(AlertName::GpuTemperatureHigh, &[("gpu", "0")]);
    e.restore(vec![Loaded {
        alert: Alert {
            fingerprint: fingerprint(&l),
            alertname: AlertName::GpuTemperatureHigh,
            severity: Severity::Critical,
            labels: l,
            summary: "GPU 0 at 95 °C".into(),
            started_at: T0,
            resolved_at: None,
        },
        last_notified: Some(T0),
        live: true,
    }]);
    feed(&mut e, &[Op::Tick(T0 + 60 * S)]);
    assert!(
        feed(
            &mut e,
            &[metric("gpu0", "gpu_temperature_c", T0 + 61 * S, 96.0)]
        )
        .is_empty()
    );
    let c = feed(
        &mut e,
        &[metric("gpu0", "gpu_temperature_c", T0 + 62 * S, 60.0)],
    );
    assert!(
        matches!(&c[..], [Change::Resolved { alert, notify: true }] if alert.started_at == T0),
        "{c:?}"
    );
}

#[test]
fn store_health_fires_and_resolves() {
    let mut e = Engine::new(Rules::default(), true, "/azaion");
    let mut out = Vec::new();
    e.store_health(T0, Some("disk I/O error"), &mut out);
    e.store_health(T0 + S, Some("disk I/O error"), &mut out);
    e.store_health(T0 + 2 * S, None, &mut out);
    assert_eq!(
        names(&out),
        ["fired StoreNotWritable", "resolved StoreNotWritable"]
    );
}

#[test]
fn fingerprints_depend_on_labels_only() {
    let a = labels(AlertName::DiskUsageHigh, &[("mount", "/azaion")]);
    let b = labels(AlertName::DiskUsageHigh, &[("mount", "/data")]);
    assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
    assert_ne!(fingerprint(&a), fingerprint(&b));
    assert_eq!(fingerprint(&a).len(), 16);
}

/// A scenario that leaves something in every part of the engine's state.
fn scenario_first_half(live: bool) -> (Engine, Vec<Change>) {
    let rules = Rules {
        gpu_temperature_for: Age::secs(120),
        ..Rules::default()
    };
    let mut e = Engine::new(rules, live, "/azaion");
    let k = run_key("yolo", T0);
    let mut ops = vec![
        Op::Tick(T0),
        queue(true, T0),
        run_op(&k, RunStatus::Running, T0),
        metric("annotation-queue", "queue_offset", T0 + S, 10.0),
        metric("gpu0", "gpu_temperature_c", T0 + 2 * S, 93.0),
        metric("host", "disk_usage_azaion_pct", T0 + 2 * S, 85.0),
        event("yolo", "gpu_oom", T0 + 3 * S, "{}"),
        event("yolo", "checkpoint_save_failed", T0 + 3 * S, "{}"),
    ];
    for ep in 1..=9u32 {
        let loss = if ep < 5 {
            1.0 / ep as f64
        } else {
            0.2 * (ep as f64 - 3.0)
        };
        ops.push(epoch(&k, ep, T0 + (10 + 60 * ep as i64) * S, loss));
        ops.push(Op::Tick(T0 + (10 + 60 * ep as i64) * S));
    }
    ops.push(event(
        "yolo",
        "loss_non_finite",
        T0 + 600 * S,
        r#"{"epoch":10}"#,
    ));
    ops.push(Op::Tick(T0 + 601 * S));
    let out = feed(&mut e, &ops);
    (e, out)
}

fn scenario_second_half() -> Vec<Op> {
    let k = run_key("yolo", T0);
    vec![
        metric("gpu0", "gpu_temperature_c", T0 + 700 * S, 94.0),
        Op::Tick(T0 + 3_700 * S),
        epoch(&k, 10, T0 + 3_800 * S, 0.5),
        metric("annotation-queue", "queue_offset", T0 + 3_900 * S, 11.0),
        queue(false, T0 + 3_950 * S),
        Op::Tick(T0 + 4_400 * S),
        run_op(&k, RunStatus::Completed, T0 + 4_500 * S),
        Op::Tick(T0 + 20_000 * S),
    ]
}

fn render(changes: &[Change]) -> String {
    changes
        .iter()
        .map(|c| {
            let (what, a, n) = match c {
                Change::Fired { alert, notify } => ("fired", alert, *notify),
                Change::Resolved { alert, notify } => ("resolved", alert, *notify),
                Change::Repeat { alert } => ("repeat", alert, true),
            };
            format!(
                "{what} {} {} {:?} notify={n} started={} resolved={:?} {:?}\n",
                a.alertname, a.fingerprint, a.labels, a.started_at, a.resolved_at, a.summary
            )
        })
        .collect()
}

/// The snapshot and changes written by the engine before it was split into families
/// (`fixtures/alerts/engine-v1-*`): the same ops give the same changes and the same state, and
/// a snapshot written then resumes and continues as it did.
#[test]
fn the_engine_continues_a_snapshot_of_the_single_file_engine() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/alerts");
    for (live, tag) in [(false, "replay"), (true, "watch")] {
        let read =
            |what: &str| std::fs::read_to_string(format!("{dir}/engine-v1-{tag}{what}")).unwrap();
        let (e, first) = scenario_first_half(live);
        assert_eq!(render(&first), read(".first.txt"), "{tag}: first half");
        let old: serde_json::Value = serde_json::from_str(&read(".json")).unwrap();
        let new: serde_json::Value = serde_json::from_str(&e.snapshot()).unwrap();
        assert_eq!(new, old, "{tag}: the snapshot");

        let mut resumed = Engine::new(
            Rules {
                gpu_temperature_for: Age::secs(120),
                ..Rules::default()
            },
            live,
            "/azaion",
        );
        resumed.resume(&read(".json")).unwrap();
        let second = feed(&mut resumed, &scenario_second_half());
        assert_eq!(render(&second), read(".second.txt"), "{tag}: second half");
    }
}

fn failed(container: &str, ts: i64, message: &str) -> Op {
    Op::Event(EventRow {
        ts,
        container: Arc::from(container),
        stream: "stdout",
        seq: 0,
        key_ts: ts,
        level: Level::Error,
        kind: "training_failed",
        message: message.into(),
        context: "{}".into(),
    })
}

#[test]
fn a_failed_run_pages_once_with_why_and_a_dead_run_is_no_all_clear() {
    let mut e = Engine::new(Rules::default(), false, "/azaion");
    let k = run_key("yolo", T0);
    feed(&mut e, &[run_op(&k, RunStatus::Running, T0)]);
    let c = feed(&mut e, &[epoch(&k, 1, T0 + 60 * S, f64::NAN)]);
    assert_eq!(names(&c), ["fired TrainingLossNonFinite"]);
    // The NaN ends the run: it fails, and says so; the NaN alert stays.
    let why = "Training in yolo failed after epoch 1/10: RuntimeError: Training failed: NaN persisted for 4 epochs";
    let c = feed(
        &mut e,
        &[
            run_op(&k, RunStatus::Failed, T0 + 61 * S),
            failed("yolo", T0 + 61 * S, why),
            // The container's exit that follows: the same death, no second page.
            event(
                "yolo",
                "training_container_died",
                T0 + 62 * S,
                r#"{"status":"failed","exit_code":1}"#,
            ),
        ],
    );
    assert_eq!(names(&c), ["fired TrainingFailed"]);
    let Change::Fired { alert, .. } = &c[0] else {
        unreachable!()
    };
    assert_eq!(alert.summary, why);
    assert_eq!(alert.severity, Severity::High);
    // Hours of nothing: still firing (repeats aside), never resolved.
    let later = feed(&mut e, &[event("other", "log", T0 + 10 * 3600 * S, "{}")]);
    assert!(
        later.iter().all(|c| !matches!(c, Change::Resolved { .. })),
        "{later:?}"
    );
    assert_eq!(e.firing().len(), 2);
    // The run is resumed: its cause is gone.
    let c = feed(
        &mut e,
        &[run_op(&k, RunStatus::Running, T0 + 11 * 3600 * S)],
    );
    let mut n = names(&c);
    n.sort();
    assert_eq!(
        n,
        ["resolved TrainingFailed", "resolved TrainingLossNonFinite"]
    );
}

#[test]
fn a_completed_run_resolves_its_loss_alerts_an_interrupted_one_does_not() {
    for (status, resolved) in [
        (RunStatus::Completed, true),
        (RunStatus::EarlyStopped, true),
        (RunStatus::Interrupted, false),
        (RunStatus::Failed, false),
    ] {
        let mut e = Engine::new(Rules::default(), false, "/azaion");
        let k = run_key("yolo", T0);
        feed(&mut e, &[run_op(&k, RunStatus::Running, T0)]);
        feed(&mut e, &[epoch(&k, 1, T0 + 60 * S, f64::INFINITY)]);
        let c = feed(&mut e, &[run_op(&k, status, T0 + 61 * S)]);
        assert_eq!(
            names(&c) == ["resolved TrainingLossNonFinite"],
            resolved,
            "{status}: {c:?}"
        );
    }
}

#[test]
fn a_failed_run_folder_training_in_another_container_resolves_it() {
    let mut e = Engine::new(Rules::default(), false, "/azaion");
    let with_dir = |op: Op| match op {
        Op::Run(mut r) => {
            r.save_dir = Some("/azaion/models/azaion-2026-12-07/train".into());
            Op::Run(r)
        }
        o => o,
    };
    let k = run_key("yolo-a", T0);
    feed(&mut e, &[with_dir(run_op(&k, RunStatus::Running, T0))]);
    let c = feed(
        &mut e,
        &[
            with_dir(run_op(&k, RunStatus::Failed, T0 + 60 * S)),
            failed(
                "yolo-a",
                T0 + 60 * S,
                "Training in yolo-a failed: exited with code 137 (SIGKILL)",
            ),
        ],
    );
    assert_eq!(names(&c), ["fired TrainingFailed"]);
    // The next training resumes that folder in a new container.
    let k2 = run_key("yolo-b", T0 + 120 * S);
    let c = feed(
        &mut e,
        &[with_dir(run_op(&k2, RunStatus::Running, T0 + 120 * S))],
    );
    assert_eq!(names(&c), ["resolved TrainingFailed"]);
}

#[test]
fn a_training_container_dying_with_its_run_is_no_container_died_page() {
    let mut e = Engine::new(Rules::default(), false, "/azaion");
    let c = feed(
        &mut e,
        &[event(
            "yolo",
            "training_container_died",
            T0,
            r#"{"status":"failed","exit_code":137}"#,
        )],
    );
    assert!(c.is_empty(), "{c:?}");
    let c = feed(
        &mut e,
        &[event(
            "yolo",
            "training_container_died",
            T0 + S,
            r#"{"status":null,"exit_code":1}"#,
        )],
    );
    assert_eq!(names(&c), ["fired TrainingContainerDied"]);
}

#[test]
fn queue_failure_rate_above_ten_percent_of_twenty() {
    let mut e = Engine::new(Rules::default(), false, "/azaion");
    let msg = |i: i64, ok: bool| {
        event(
            "annotation-queue",
            if ok {
                "annotation_processed"
            } else {
                "annotation_failed"
            },
            T0 + i * S,
            "{}",
        )
    };
    // 3 failures in 19 messages: too few to judge.
    let mut ops: Vec<Op> = (0..16).map(|i| msg(i, true)).collect();
    ops.extend((16..19).map(|i| msg(i, false)));
    assert!(feed(&mut e, &ops).is_empty());
    // The 20th: 3 of 20 failed, 15 % > 10 %.
    let c = feed(&mut e, &[msg(19, true)]);
    assert_eq!(names(&c), ["fired QueueFailureRateHigh"]);
    let Change::Fired { alert, .. } = &c[0] else {
        unreachable!()
    };
    assert!(
        alert
            .summary
            .starts_with("3 of 20 queue messages failed in annotation-queue"),
        "{}",
        alert.summary
    );
    assert_eq!(alert.severity, Severity::Medium);
    // Ten more good ones: 3 of 30 is exactly 10 %, not more.
    let c = feed(&mut e, &(20..30).map(|i| msg(i, true)).collect::<Vec<_>>());
    assert_eq!(names(&c), ["resolved QueueFailureRateHigh"]);
    // 20 failures, then 16 minutes later they have left the window.
    let c = feed(
        &mut e,
        &(100..120).map(|i| msg(i, false)).collect::<Vec<_>>(),
    );
    assert_eq!(names(&c), ["fired QueueFailureRateHigh"]);
    let c = feed(
        &mut e,
        &[event("other", "log", T0 + 120 * S + 16 * 60 * S, "{}")],
    );
    assert!(c.is_empty(), "another container's time: {c:?}");
    let c = feed(&mut e, &[Op::Tick(T0 + 120 * S + 16 * 60 * S)]);
    assert_eq!(names(&c), ["resolved QueueFailureRateHigh"]);
}

#[test]
fn a_removed_container_s_alerts_resolve_after_forget_removed_after() {
    let mut e = Engine::new(Rules::default(), true, "/azaion");
    let k = run_key("yolo", T0);
    feed(&mut e, &[Op::Tick(T0), run_op(&k, RunStatus::Running, T0)]);
    let c = feed(
        &mut e,
        &[
            run_op(&k, RunStatus::Failed, T0 + 60 * S),
            failed(
                "yolo",
                T0 + 60 * S,
                "Training in yolo failed: exited with code 137 (SIGKILL)",
            ),
        ],
    );
    assert_eq!(names(&c), ["fired TrainingFailed"]);
    let removed = Op::ContainerState(
        T0 + 120 * S,
        Arc::from("yolo"),
        crate::derive::ContainerRun::Removed,
    );
    assert!(feed(&mut e, &[removed]).is_empty());
    let c = feed(&mut e, &[Op::Tick(T0 + 120 * S + 23 * 3600 * S)]);
    assert!(
        c.iter().all(|c| !matches!(c, Change::Resolved { .. })),
        "{c:?}"
    );
    let c = feed(&mut e, &[Op::Tick(T0 + 120 * S + 24 * 3600 * S)]);
    assert_eq!(names(&c), ["resolved TrainingFailed"]);
    let Change::Resolved { alert, .. } = &c[0] else {
        unreachable!()
    };
    assert_eq!(alert.resolved_at, Some(T0 + 120 * S + 24 * 3600 * S));
    assert!(e.firing().is_empty());
}

#[test]
fn secrets_in_logs_fires_per_container_and_kind_and_resolves_a_day_after_the_last() {
    let mut e = Engine::new(Rules::default(), true, "/azaion");
    let c = feed(
        &mut e,
        &[
            metric("queue", "redactions_password", T0, 1.0),
            metric("queue", "redactions_password", T0 + 60 * S, 2.0),
            metric("queue", "redactions_token", T0 + 61 * S, 1.0),
            metric("other", "redactions_password", T0 + 62 * S, 1.0),
        ],
    );
    assert_eq!(
        names(&c),
        [
            "fired SecretsInLogs",
            "fired SecretsInLogs",
            "fired SecretsInLogs"
        ]
    );
    let Change::Fired { alert, .. } = &c[0] else {
        panic!("{c:?}")
    };
    assert_eq!(alert.severity, Severity::Low);
    assert_eq!(alert.labels["container"], "queue");
    assert_eq!(alert.labels["kind"], "password");
    // The first time it was seen, never the value; no redaction changes the summary.
    assert_eq!(
        alert.summary,
        "queue writes secrets into its logs: passwords, redacted before storing (first seen 2026-03-28 14:30:00 UTC)"
    );
    for kind in ["token", "password", "key", "image_payload"] {
        let s = events::secrets_summary("queue", kind, T0);
        assert_eq!(crate::redact::text(&s), s);
    }
    // A day after the last password of `queue` (60 s in), not after the first.
    let day = 24 * 3600 * S;
    // (Still firing meanwhile: notified again every `repeat_interval`.)
    let not_repeat = |c: Vec<Change>| -> Vec<Change> {
        c.into_iter()
            .filter(|c| !matches!(c, Change::Repeat { .. }))
            .collect()
    };
    let c = not_repeat(feed(&mut e, &[Op::Tick(T0 + day + 30 * S)]));
    assert!(names(&c).is_empty(), "{c:?}");
    let c = not_repeat(feed(&mut e, &[Op::Tick(T0 + day + 90 * S)]));
    assert_eq!(
        names(&c),
        [
            "resolved SecretsInLogs",
            "resolved SecretsInLogs",
            "resolved SecretsInLogs"
        ]
    );
    let resolved_at = |container: &str, kind: &str| {
        c.iter().find_map(|c| match c {
            Change::Resolved { alert, .. }
                if alert.labels["container"] == container && alert.labels["kind"] == kind =>
            {
                alert.resolved_at
            }
            _ => None,
        })
    };
    assert_eq!(resolved_at("queue", "password"), Some(T0 + 60 * S + day));
    assert_eq!(resolved_at("queue", "token"), Some(T0 + 61 * S + day));
}
