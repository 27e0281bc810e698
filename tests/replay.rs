//! Real Ultralytics 8.4.190 captures replayed and checked against the results.csv that the same
//! training wrote (fixtures/README.md says how each was produced).

use crate::util::{Db, ResultsCsv, close_sig, fixture, fixture_str};

fn replay_one(name: &str) -> Db {
    replay_capture("ultralytics", name)
}

/// Replays `DIR/NAME-json.log` from the fixtures as container NAME; nothing may be skipped.
pub(crate) fn replay_capture(dir: &str, name: &str) -> Db {
    let db = Db::new();
    let s = db.replay(
        &[fixture_str(&format!("{dir}/{name}-json.log"))],
        Some(name),
    );
    assert_eq!(s.skips.total(), 0, "{dir}/{name}: {:?}", s.skips);
    db
}

/// The best epoch EarlyStopping printed in a fixture's log (`Best results observed at epoch N,`).
fn reported_best_epoch(rel: &str) -> i64 {
    let text = std::fs::read_to_string(fixture(rel)).unwrap();
    text.split("Best results observed at epoch ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("{rel} reports no best epoch"))
        .parse()
        .unwrap()
}

/// Every epoch's losses (4 significant digits on the console) and metrics (3) match results.csv.
pub(crate) fn assert_epochs_match(db: &Db, run: i64, csv: &ResultsCsv) {
    let conn = db.conn();
    let mut stmt = conn
        .prepare("SELECT epoch, box_loss, cls_loss, dfl_loss, precision, recall, map50, map50_95 FROM training_epochs WHERE run_id = ?1 ORDER BY epoch")
        .unwrap();
    let rows: Vec<(u32, [Option<f64>; 7])> = stmt
        .query_map([run], |r| {
            Ok((
                r.get(0)?,
                [
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ],
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let epochs: Vec<u32> = rows.iter().map(|r| r.0).collect();
    let mut want = csv.epochs();
    want.dedup();
    assert_eq!(epochs, want, "epochs stored vs results.csv");
    let cols = [
        ("train/box_loss", 4),
        ("train/cls_loss", 4),
        ("train/dfl_loss", 4),
        ("metrics/precision(B)", 3),
        ("metrics/recall(B)", 3),
        ("metrics/mAP50(B)", 3),
        ("metrics/mAP50-95(B)", 3),
    ];
    for (epoch, vals) in rows {
        for (i, (col, digits)) in cols.iter().enumerate() {
            let want = csv.get(epoch, col);
            let got = vals[i].unwrap_or_else(|| panic!("epoch {epoch} {col} is NULL"));
            assert!(
                close_sig(got, want, *digits),
                "epoch {epoch} {col}: stored {got}, results.csv {want}"
            );
        }
    }
}

#[test]
fn normal_run_matches_results_csv() {
    let db = replay_one("normal");
    assert_eq!(db.count("SELECT count(*) FROM training_runs"), 1);
    assert_eq!(
        db.text("SELECT status FROM training_runs").as_deref(),
        Some("completed")
    );
    assert_eq!(db.count("SELECT epochs_total FROM training_runs"), 10);
    assert_eq!(db.count("SELECT epochs_done FROM training_runs"), 10);
    assert_eq!(
        db.text("SELECT save_dir FROM training_runs").unwrap(),
        "/work/fx/runs/normal"
    );
    assert_epochs_match(
        &db,
        1,
        &ResultsCsv::load(&fixture("ultralytics/normal.results.csv")),
    );
    // The final validation of best.pt (after the banner printed again) is not an epoch and
    // not a new run.
    assert_eq!(db.count("SELECT count(*) FROM events WHERE kind = 'validation' AND json_extract(context, '$.final')"), 1);
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE kind = 'training_started'"),
        1
    );
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE kind = 'training_completed'"),
        1
    );
    // losses keeps every column by name; loss is their sum.
    let (losses, loss): (String, f64) = db
        .conn()
        .query_row(
            "SELECT losses, loss FROM training_epochs WHERE epoch = 3",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let m: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&losses).unwrap();
    assert_eq!(
        m.keys().cloned().collect::<Vec<_>>(),
        ["box_loss", "cls_loss", "dfl_loss"]
    );
    let sum: f64 = m.values().map(|v| v.as_f64().unwrap()).sum();
    assert!((sum - loss).abs() < 1e-9);
    // The service metric names.
    for name in [
        "training_epoch",
        "training_loss",
        "training_mAP50",
        "training_mAP50_95",
    ] {
        assert_eq!(
            db.count(&format!(
                "SELECT count(*) FROM metric_samples WHERE name = '{name}'"
            )),
            10,
            "{name}"
        );
    }
}

#[test]
fn interrupted_then_resumed_is_one_run() {
    let db = replay_one("interrupted");
    assert_eq!(
        db.count("SELECT count(*) FROM training_runs"),
        1,
        "a resume continues its run"
    );
    assert_eq!(
        db.text("SELECT status FROM training_runs").as_deref(),
        Some("completed")
    );
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE kind = 'training_resumed'"),
        1
    );
    assert_epochs_match(
        &db,
        1,
        &ResultsCsv::load(&fixture("ultralytics/interrupted.results.csv")),
    );
}

#[test]
fn killed_without_resume_is_interrupted() {
    // The killed process's log followed by a fresh training (not a resume) in the same
    // container: the first run is interrupted, the second runs on.
    let db = Db::new();
    let text = std::fs::read_to_string(fixture("ultralytics/interrupted-json.log")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // The killed process ends with the unterminated progress line (no `\n` in its log).
    let tail = lines
        .iter()
        .position(|l| l.contains("\"stream\":\"stdout\"") && !l.contains("\\n\",\"stream\""))
        .unwrap();
    let first_process: String = lines[..=tail].iter().map(|l| format!("{l}\n")).collect();
    let dir = db.dir.path();
    std::fs::write(dir.join("killed-json.log"), first_process).unwrap();
    // The early-stop capture was recorded after this one, so it follows in time.
    std::fs::copy(
        fixture("ultralytics/earlystop-json.log"),
        dir.join("next-json.log"),
    )
    .unwrap();
    db.replay(
        &[
            dir.join("killed-json.log").to_string_lossy().into(),
            dir.join("next-json.log").to_string_lossy().into(),
        ],
        Some("gpu0"),
    );
    let statuses: Vec<String> = db
        .conn()
        .prepare("SELECT status FROM training_runs ORDER BY started_at")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(statuses, ["interrupted", "early_stopped"]);
    assert_eq!(
        db.count("SELECT epochs_done FROM training_runs WHERE status = 'interrupted'"),
        2
    );
}

/// An early-stop capture `DIR/NAME`: stopped early at the best epoch it reported, every
/// epoch of its results.csv stored, and the run learned something (metrics not all zero).
pub(crate) fn assert_early_stop(dir: &str, name: &str) -> Db {
    let db = replay_capture(dir, name);
    let c = ResultsCsv::load(&fixture(&format!("{dir}/{name}.results.csv")));
    assert_eq!(
        db.text("SELECT status FROM training_runs").as_deref(),
        Some("early_stopped"),
        "{name}"
    );
    let best = reported_best_epoch(&format!("{dir}/{name}-json.log"));
    assert_eq!(
        db.count("SELECT best_epoch FROM training_runs"),
        best,
        "{name}"
    );
    assert_eq!(
        db.count("SELECT epochs_done FROM training_runs"),
        *c.epochs().last().unwrap() as i64,
        "{name}"
    );
    assert!(
        db.count("SELECT count(*) FROM training_epochs WHERE map50_95 > 0") >= 3,
        "{name}: the run learned something"
    );
    assert_epochs_match(&db, 1, &c);
    db
}

#[test]
fn early_stop_keeps_best_epoch() {
    let db = assert_early_stop("ultralytics", "earlystop");
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE kind = 'early_stopped'"),
        1
    );
}

#[test]
fn crash_is_a_failed_run_with_the_whole_traceback() {
    assert_crash_capture(&replay_one("crash"));
}

/// The crash capture's run failed, with its whole traceback as one error event.
pub(crate) fn assert_crash_capture(db: &Db) {
    assert_eq!(
        db.text("SELECT status FROM training_runs").as_deref(),
        Some("failed")
    );
    let msg = db
        .text("SELECT message FROM events WHERE kind = 'error'")
        .unwrap();
    assert!(
        msg.starts_with("Traceback (most recent call last):"),
        "{msg}"
    );
    assert!(
        msg.ends_with("RuntimeError: simulated data loader failure at epoch 2"),
        "{msg}"
    );
    assert!(
        msg.lines().count() > 8,
        "grouped traceback keeps all its lines: {msg}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE kind = 'error'"),
        1
    );
}

#[test]
fn nan_run_flags_non_finite_losses() {
    let db = replay_one("nan");
    // Epoch 1 is finite; epoch 2 went NaN and Ultralytics retried it 3 times, then gave up.
    assert_eq!(
        db.count("SELECT non_finite FROM training_epochs WHERE epoch = 1"),
        0
    );
    assert_eq!(
        db.count("SELECT non_finite FROM training_epochs WHERE epoch = 2"),
        1
    );
    assert_eq!(
        db.text("SELECT losses FROM training_epochs WHERE epoch = 2")
            .unwrap(),
        r#"{"box_loss":"nan","cls_loss":"nan","dfl_loss":"nan"}"#
    );
    assert_eq!(
        db.count("SELECT count(*) FROM training_epochs WHERE epoch = 2 AND box_loss IS NULL"),
        1
    );
    let first = db
        .text("SELECT min(ts) FROM events WHERE kind = 'loss_non_finite'")
        .unwrap();
    let epoch2 = db.text("SELECT min(ts) FROM events WHERE kind = 'epoch_completed' AND json_extract(context, '$.epoch') = 2").unwrap();
    assert!(
        first <= epoch2,
        "the NaN is reported no later than the epoch that showed it"
    );
    assert!(db.count("SELECT count(*) FROM events WHERE kind = 'loss_non_finite' AND message LIKE 'WARNING%Loss NaN/Inf detected%'") == 3);
    assert_eq!(
        db.text("SELECT status FROM training_runs").as_deref(),
        Some("failed")
    );
    assert!(db.text("SELECT message FROM events WHERE kind IN ('error', 'loss_non_finite') AND message LIKE 'Traceback%'").unwrap().ends_with("NaN persisted for 4 epochs"));
}

#[test]
fn progress_line_over_16k_is_merged() {
    let raw = std::fs::read_to_string(fixture("ultralytics/longline-json.log")).unwrap();
    let partial = raw
        .lines()
        .filter(|l| !l.contains("\\n\",\"stream\""))
        .count();
    assert!(partial >= 1, "the capture holds Docker partial entries");
    let db = replay_one("longline");
    assert_epochs_match(
        &db,
        1,
        &ResultsCsv::load(&fixture("ultralytics/longline.results.csv")),
    );
}

#[test]
fn plain_text_capture_gives_the_same_epochs() {
    // `python train.py > log 2>&1`: stdout then stderr, no timestamps.
    let db = Db::new();
    db.replay(&[fixture_str("ultralytics/normal.txt")], Some("txt"));
    assert_eq!(db.count("SELECT count(*) FROM training_runs"), 1);
    assert_epochs_match(
        &db,
        1,
        &ResultsCsv::load(&fixture("ultralytics/normal.results.csv")),
    );
}

#[test]
fn bars_off_counts_epochs_by_their_headers() {
    // Progress bars off and the logger at INFO: an epoch prints its header and the validation
    // `all` row, nothing else. Made from the real early-stop capture by dropping every entry
    // that holds a bar (progress frames, the validation bar).
    let text = std::fs::read_to_string(fixture("ultralytics/earlystop-json.log")).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let log = v["log"].as_str().unwrap();
            !log.contains('\r') && !log.contains('━') && !log.contains("Class     Images")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(kept.len() < text.len() / 2, "bars were dropped");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("barsoff-json.log");
    std::fs::write(&path, kept).unwrap();
    let db = Db::new();
    db.replay(&[path.to_string_lossy().into_owned()], Some("barsoff"));

    let csv = ResultsCsv::load(&fixture("ultralytics/earlystop.results.csv"));
    assert_eq!(
        db.text("SELECT status FROM training_runs").as_deref(),
        Some("early_stopped")
    );
    let conn = db.conn();
    let mut stmt = conn
        .prepare("SELECT epoch, epochs_total, box_loss, precision, recall, map50, map50_95 FROM training_epochs ORDER BY epoch")
        .unwrap();
    let rows: Vec<(u32, i64, Option<f64>, [f64; 4])> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                [r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?],
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        csv.epochs(),
        "one epoch per header, numbered from 1"
    );
    // Each epoch is completed by its validation, as an event too.
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE kind = 'epoch_completed' AND json_extract(context, '$.source') = 'validation'"),
        csv.epochs().len() as i64
    );
    assert_eq!(
        db.count("SELECT max(json_extract(context, '$.epoch')) FROM events WHERE kind = 'epoch_completed'"),
        *csv.epochs().last().unwrap() as i64
    );
    let cols = [
        "metrics/precision(B)",
        "metrics/recall(B)",
        "metrics/mAP50(B)",
        "metrics/mAP50-95(B)",
    ];
    for (epoch, total, box_loss, vals) in &rows {
        assert_eq!(*total, db.count("SELECT epochs_total FROM training_runs"));
        assert_eq!(*box_loss, None, "epoch {epoch}: no bar, no losses");
        for (got, col) in vals.iter().zip(cols) {
            let want = csv.get(*epoch, col);
            assert!(
                close_sig(*got, want, 3),
                "epoch {epoch} {col}: stored {got}, results.csv {want}"
            );
        }
    }
    // The final validation of best.pt is not a 20th epoch.
    assert_eq!(
        db.count(
            "SELECT CAST(max(value) AS INTEGER) FROM metric_samples WHERE name = 'training_epoch'"
        ),
        *csv.epochs().last().unwrap() as i64
    );
}

/// results.csv's `time` is Ultralytics' own: the seconds from `Starting training for N
/// epochs...` to each epoch's end. The stored `train_time_s` (and so `history --format csv`)
/// agrees with it to the log lines' precision, for the bar layouts of 8.4 and of 8.3.
#[test]
fn epoch_times_are_ultralytics_results_csv_time() {
    for dir in ["ultralytics", "ultralytics-8.3"] {
        for run in ["normal", "earlystop"] {
            let db = Db::new();
            db.replay(
                &[fixture_str(&format!("{dir}/{run}-json.log"))],
                Some("gpu"),
            );
            let csv = ResultsCsv::load(&fixture(&format!("{dir}/{run}.results.csv")));
            let conn = db.conn();
            let mut st = conn
                .prepare("SELECT epoch, train_time_s FROM training_epochs ORDER BY epoch")
                .unwrap();
            let rows: Vec<(u32, Option<f64>)> = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(!rows.is_empty());
            for (epoch, t) in rows {
                let got = t.unwrap_or_else(|| panic!("{dir}/{run} epoch {epoch}: no time"));
                let want = csv.get(epoch, "time");
                assert!(
                    (got - want).abs() <= 0.05 + want * 0.01,
                    "{dir}/{run} epoch {epoch}: {got} s stored, {want} s in results.csv"
                );
            }
        }
    }
}

/// A run keeps every setting of the trainer line that started it, as printed (but the optimizer
/// values its `optimizer:` line says it resolved), and the version
/// of the banner before it: the values are read back out of the capture itself.
#[test]
fn a_run_keeps_its_settings_and_ultralytics_version() {
    for dir in ["ultralytics", "ultralytics-8.3"] {
        let db = replay_capture(dir, "normal");
        let text = std::fs::read_to_string(fixture(&format!("{dir}/normal-json.log"))).unwrap();
        let version = text
            .split("Ultralytics ")
            .skip(1)
            .filter_map(|s| s.split(' ').next())
            .find(|v| v.starts_with(|c: char| c.is_ascii_digit()))
            .unwrap();
        assert_eq!(
            db.text("SELECT ultralytics_version FROM training_runs")
                .as_deref(),
            Some(version),
            "{dir}"
        );
        let params: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&db.text("SELECT params FROM training_runs").unwrap()).unwrap();
        // The settings line, as the JSON log escaped it, split the way the trainer joined it.
        let line = text
            .lines()
            .find(|l| l.contains("mode=train"))
            .unwrap()
            .split("\\u001b[0m")
            .nth(1)
            .unwrap()
            .split("\\n")
            .next()
            .unwrap()
            .to_string();
        let printed: Vec<(&str, &str)> = line
            .split(", ")
            .map(|kv| kv.split_once('=').unwrap())
            .collect();
        assert!(printed.len() > 50, "{dir}: {}", printed.len());
        assert_eq!(params.len(), printed.len(), "{dir}");
        // What the training resolved replaces what was asked: `optimizer: AdamW(lr=0.001667,
        // momentum=0.9) with parameter groups ...`.
        let resolved: Vec<(&str, String)> = text
            .lines()
            .find(|l| l.contains("with parameter groups"))
            .map(|l| {
                let inner = l.split("optimizer:\\u001b[0m ").nth(1).unwrap();
                let (name, rest) = inner.split_once('(').unwrap();
                let mut out = vec![("optimizer", name.to_string())];
                for kv in rest.split(')').next().unwrap().split(", ") {
                    let (k, v) = kv.split_once('=').unwrap();
                    out.push((if k == "lr" { "lr0" } else { k }, v.to_string()));
                }
                out
            })
            .unwrap_or_default();
        let was_auto = printed.contains(&("optimizer", "auto"));
        for (k, v) in printed {
            let want = match resolved.iter().find(|(r, _)| *r == k) {
                Some((_, r)) => r.as_str(),
                None if k == "warmup_bias_lr" && was_auto && !resolved.is_empty() => "0.0",
                None => v,
            };
            assert_eq!(
                params[k],
                serde_json::Value::String(want.into()),
                "{dir}: {k}"
            );
        }
    }
}
