//! Real Ultralytics 8.3.40 captures (fixtures/ultralytics-8.3): the generation before the
//! built-in bar, whose progress bars are the `tqdm` package's, written to stderr as `\r` frames
//! while the epoch headers and `all` rows go to stdout. Checked against the results.csv that
//! the same training wrote.

use crate::replay::{assert_crash_capture, assert_early_stop, assert_epochs_match, replay_capture};
use crate::util::{Db, ResultsCsv, close_sig, fixture, fixture_str};

const DIR: &str = "ultralytics-8.3";

fn csv(name: &str) -> ResultsCsv {
    ResultsCsv::load(&fixture(&format!("{DIR}/{name}.results.csv")))
}

/// `history --run 1 --format csv` against results.csv: its header is results.csv's (as far as
/// it goes), it has a row per epoch, and every value matches within the console's precision
/// (4 significant digits for losses, 3 for metrics). Returns the header and the rows.
fn assert_export_matches(db: &Db, c: &ResultsCsv) -> (Vec<String>, Vec<Vec<f64>>) {
    let out = crate::util::bin(&["history", "--run", "1", "--format", "csv"], &db.path);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    assert_eq!(header, c.header[..header.len()]);
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|x| x.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), c.epochs().len());
    for cells in &rows {
        let epoch = cells[0] as u32;
        for (i, col) in header.iter().enumerate().skip(2) {
            let want = c.get(epoch, col);
            let digits = if col.starts_with("train/") { 4 } else { 3 };
            assert!(
                close_sig(cells[i], want, digits),
                "epoch {epoch} {col}: exported {}, results.csv {want}",
                cells[i]
            );
        }
    }
    (header, rows)
}

#[test]
fn tqdm_bars_on_stderr_give_the_epochs_of_results_csv() {
    // The capture is of the old shape: every progress frame is on stderr.
    let raw = std::fs::read_to_string(fixture(&format!("{DIR}/normal-json.log"))).unwrap();
    let with_frames: Vec<&str> = raw.lines().filter(|l| l.contains("\\r")).collect();
    assert!(with_frames.len() >= 10);
    assert!(
        with_frames
            .iter()
            .all(|l| l.contains("\"stream\":\"stderr\"")),
        "tqdm writes its bars to stderr"
    );
    assert!(raw.contains("| 8/8 ["), "the tqdm bar format");

    let db = replay_capture(DIR, "normal");
    assert_eq!(db.count("SELECT count(*) FROM training_runs"), 1);
    assert_eq!(
        db.text("SELECT status FROM training_runs").as_deref(),
        Some("completed")
    );
    assert_eq!(db.count("SELECT epochs_total FROM training_runs"), 10);
    assert_eq!(
        db.text("SELECT save_dir FROM training_runs").as_deref(),
        Some("/work/fx83/runs/normal")
    );
    assert_epochs_match(&db, 1, &csv("normal"));
    // CPU training: GPU_mem prints `0G`.
    assert_eq!(
        db.count("SELECT count(*) FROM training_epochs WHERE gpu_mem_gb = 0"),
        10
    );
    assert_eq!(
        db.count(
            "SELECT count(*) FROM events WHERE kind = 'validation' AND json_extract(context, '$.final')"
        ),
        1,
        "the validation of best.pt is not an epoch"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM metric_samples WHERE name = 'training_loss'"),
        10
    );
}

#[test]
fn tqdm_docker_logs_text_gives_the_same_epochs() {
    // What `docker logs c > f 2>&1` writes: both streams interleaved in time order, no times.
    let db = Db::new();
    db.replay(&[fixture_str(&format!("{DIR}/normal.txt"))], Some("txt"));
    assert_eq!(db.count("SELECT count(*) FROM training_runs"), 1);
    assert_epochs_match(&db, 1, &csv("normal"));
}

#[test]
fn tqdm_early_stop_keeps_the_reported_best_epoch() {
    assert_early_stop(DIR, "earlystop");
}

#[test]
fn tqdm_killed_then_resumed_is_one_completed_run() {
    let db = replay_capture(DIR, "interrupted");
    assert_eq!(db.count("SELECT count(*) FROM training_runs"), 1);
    assert_eq!(
        db.text("SELECT status FROM training_runs").as_deref(),
        Some("completed")
    );
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE kind = 'training_resumed'"),
        1
    );
    // Epoch 3 was cut off by the kill and run again after the resume: its row holds the
    // second run's values, which are results.csv's.
    assert_epochs_match(&db, 1, &csv("interrupted"));
}

#[test]
fn tqdm_nan_losses_are_flagged_and_alerted() {
    // 8.3.40 has no NaN recovery: the losses stay `nan` to the end and the run completes.
    let db = replay_capture(DIR, "nan");
    let c = csv("nan");
    for epoch in c.epochs() {
        let nan = c.get(epoch, "train/box_loss").is_nan();
        assert_eq!(
            db.count(&format!(
                "SELECT non_finite FROM training_epochs WHERE epoch = {epoch}"
            )),
            nan as i64,
            "epoch {epoch}"
        );
    }
    assert_eq!(
        db.text("SELECT losses FROM training_epochs WHERE epoch = 2")
            .as_deref(),
        Some(r#"{"box_loss":"nan","cls_loss":"nan","dfl_loss":"nan"}"#)
    );
    assert!(
        db.count(
            "SELECT count(*) FROM events WHERE kind = 'loss_non_finite' AND stream = 'stderr'"
        ) >= 1
    );
    assert_eq!(
        db.count("SELECT count(*) FROM alerts WHERE alertname = 'TrainingLossNonFinite'"),
        1
    );
    assert_eq!(
        db.text("SELECT status FROM training_runs").as_deref(),
        Some("completed")
    );
}

#[test]
fn tqdm_crash_is_a_failed_run_with_its_traceback() {
    let db = replay_capture(DIR, "crash");
    assert_crash_capture(&db);
    assert_eq!(db.count("SELECT epochs_done FROM training_runs"), 2);
}

#[test]
fn tqdm_progress_line_over_16k_is_merged() {
    let raw = std::fs::read_to_string(fixture(&format!("{DIR}/longline-json.log"))).unwrap();
    assert!(
        raw.lines().any(|l| !l.contains("\\n\",\"stream\"")),
        "the capture holds Docker partial entries"
    );
    let db = replay_capture(DIR, "longline");
    assert_epochs_match(&db, 1, &csv("longline"));
}

#[test]
fn segmentation_keeps_seg_loss_and_the_mask_metrics() {
    let db = replay_capture(DIR, "seg");
    let c = csv("seg");
    // Box metrics and the detection losses in their columns, as for detection.
    assert_epochs_match(&db, 1, &c);
    let conn = db.conn();
    let mut stmt = conn
        .prepare(
            "SELECT epoch, json_extract(losses, '$.seg_loss'), loss, box_loss + cls_loss + dfl_loss
             FROM training_epochs ORDER BY epoch",
        )
        .unwrap();
    let rows: Vec<(u32, f64, f64, f64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), c.epochs().len());
    for (epoch, seg, loss, det) in rows {
        let want = c.get(epoch, "train/seg_loss");
        assert!(
            close_sig(seg, want, 4),
            "epoch {epoch} seg_loss: stored {seg}, results.csv {want}"
        );
        assert!((loss - (det + seg)).abs() < 1e-9, "loss sums all four");
    }
    // Each epoch's validation event carries the mask group, which results.csv has as (M).
    let mut stmt = conn
        .prepare(
            "SELECT json_extract(context, '$.epoch'), json_extract(context, '$.mask.precision'),
                    json_extract(context, '$.mask.recall'), json_extract(context, '$.mask.map50'),
                    json_extract(context, '$.mask.map50_95')
             FROM events WHERE kind = 'validation' AND json_extract(context, '$.epoch') IS NOT NULL",
        )
        .unwrap();
    let vals: Vec<(u32, [f64; 4])> = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, [r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?]))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(vals.len(), c.epochs().len());
    let cols = [
        "metrics/precision(M)",
        "metrics/recall(M)",
        "metrics/mAP50(M)",
        "metrics/mAP50-95(M)",
    ];
    let mut nonzero = 0;
    for (epoch, got) in vals {
        for (g, col) in got.iter().zip(cols) {
            let want = c.get(epoch, col);
            nonzero += (want > 0.0) as usize;
            assert!(
                close_sig(*g, want, 3),
                "epoch {epoch} {col}: stored {g}, results.csv {want}"
            );
        }
    }
    assert!(
        nonzero >= 4,
        "the run learned enough for mask metrics to show"
    );
    // The same group is kept per epoch in training_epochs.metrics.
    for epoch in c.epochs() {
        let got: f64 = db
            .conn()
            .query_row(
                "SELECT json_extract(metrics, '$.mask.map50_95') FROM training_epochs WHERE epoch = ?1",
                [epoch],
                |r| r.get(0),
            )
            .unwrap();
        let want = c.get(epoch, "metrics/mAP50-95(M)");
        assert!(
            close_sig(got, want, 3),
            "epoch {epoch}: stored {got}, results.csv {want}"
        );
    }
    // `status` shows the last epoch's mask group.
    let last = *c.epochs().last().unwrap();
    let want =
        format!("mask mAP50 {}", db.text(&format!(
        "SELECT CAST(json_extract(metrics, '$.mask.map50') AS TEXT) FROM training_epochs WHERE epoch = {last}"
    )).unwrap_or_default());
    let out = crate::util::bin(&["status"], &db.path);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&want), "{want}: {text}");
    // `history --run N --format csv` writes results.csv's columns, the (M) group included,
    // in results.csv's order.
    let header = assert_export_matches(&db, &c).0;
    assert!(header.iter().any(|h| h == "metrics/mAP50-95(M)"));
}

#[test]
fn older_versions_early_stop_against_their_results_csv() {
    // Real 8.0.200 and 8.2.103 captures (fixtures/ultralytics-older): tqdm bars, the older
    // wordings (`Stopping training early as no improvement observed in last 3 epochs. Best
    // results observed at epoch N`), 8.0's padded results.csv without a time column.
    for version in ["8.0.200", "8.2.103"] {
        let db = assert_early_stop("ultralytics-older", &format!("earlystop-{version}"));
        assert_eq!(db.count("SELECT epochs_total FROM training_runs"), 40);
    }
}

#[test]
fn classification_keeps_its_loss_and_accuracies_and_exports_results_csv() {
    // yolo11n-cls: one `loss` column, and `all  top1_acc  top5_acc` validation rows.
    let db = replay_capture(DIR, "classify");
    let c = csv("classify");
    assert_eq!(
        db.text("SELECT status FROM training_runs").as_deref(),
        Some("completed")
    );
    let (header, rows) = assert_export_matches(&db, &c);
    assert_eq!(
        header,
        [
            "epoch",
            "time",
            "train/loss",
            "metrics/accuracy_top1",
            "metrics/accuracy_top5"
        ]
    );
    let mut top1_values: Vec<f64> = rows.iter().map(|r| r[3]).collect();
    top1_values.dedup();
    assert!(top1_values.len() > 1, "the accuracy moved: {top1_values:?}");
    assert_eq!(
        db.count(
            "SELECT count(*) FROM events WHERE kind = 'validation' AND json_extract(context, '$.top1_acc') IS NOT NULL"
        ),
        c.epochs().len() as i64 + 1,
        "one per epoch and the final validation"
    );
    // `status` shows the last epoch's accuracy (results.csv: 0.6875, printed as 0.688).
    let last = *c.epochs().last().unwrap();
    assert_eq!(c.get(last, "metrics/accuracy_top1"), 0.6875);
    let out = crate::util::bin(&["status"], &db.path);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("top-1 0.688  top-5 1"), "{text}");
    // The best epoch is the first with the highest (top-1 + top-5) / 2, Ultralytics'
    // classification fitness.
    let fitness = |e: u32| c.get(e, "metrics/accuracy_top1") + c.get(e, "metrics/accuracy_top5");
    let best = c
        .epochs()
        .into_iter()
        .fold(None, |b: Option<u32>, e| match b {
            Some(b) if fitness(b) >= fitness(e) => Some(b),
            _ => Some(e),
        })
        .unwrap();
    assert_eq!(
        db.count("SELECT best_epoch FROM training_runs"),
        best as i64
    );
    assert!(text.contains(&format!("best epoch {best}")), "{text}");
    assert!(
        !text.contains("mAP50 –"),
        "no empty box metrics line: {text}"
    );
}
