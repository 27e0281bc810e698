//! Real consoles of the YOLO family beyond one detection training (fixtures/family, Ultralytics
//! 8.4.190): a TTY of 80 columns whose rows are elided with `…`, RT-DETR's own losses, two
//! trainings in one process, `model.val()` alone, `model.tune()`; each against the
//! results.csv its training wrote, to the precision the console prints.

use crate::util::{Db, bin, fixture, fixture_str};

/// Replays a family capture as container `c`, its run folders mapped where none is.
fn replay(name: &str) -> Db {
    let db = Db::new();
    let none = db.dir.path().join("no-folder");
    let map = format!("/tmp/tw-family={}", none.display());
    let o = bin(
        &[
            "replay",
            "--container",
            "c",
            "--path-map",
            &map,
            &fixture_str(&format!("family/{name}")),
        ],
        &db.path,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    db
}

/// A csv table: its header and rows of cells.
fn table(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut lines = text.lines();
    let header = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    let rows = lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    (header, rows)
}

/// Every column of `history --run N --format csv` that the console gives equals the oracle's
/// to the precision both print (the console's losses `%.4g`, metrics `%.3g`; results.csv's 5
/// decimals); `missing` columns are empty.
fn assert_history_matches(db: &Db, run: i64, oracle: &str, missing: &[&str]) {
    let o = bin(
        &["history", "--run", &run.to_string(), "--format", "csv"],
        &db.path,
    );
    assert!(o.status.success());
    let (header, rows) = table(&String::from_utf8(o.stdout).unwrap());
    let (want_header, want_rows) =
        table(&std::fs::read_to_string(fixture(&format!("family/{oracle}"))).unwrap());
    assert_eq!(rows.len(), want_rows.len(), "{oracle}: epochs");
    let mut compared = 0;
    for (c, name) in header.iter().enumerate() {
        if name == "time" {
            continue;
        }
        let w = want_header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("{oracle}: {name} is no column of results.csv"));
        let tolerance = if name.starts_with("metrics/") {
            5e-3
        } else {
            5e-4
        };
        for (row, want) in rows.iter().zip(&want_rows) {
            if missing.contains(&name.as_str()) {
                assert_eq!(row[c], "", "{oracle} {name}: invented");
                continue;
            }
            let (got, want): (f64, f64) = (row[c].parse().unwrap(), want[w].parse().unwrap());
            // results.csv rounds to 5 decimals (`0.00037` where the console shows `0.000372`).
            assert!(
                (got - want).abs() <= tolerance * want.abs() + 5e-6,
                "{oracle} epoch {} {name}: {got} vs results.csv {want}",
                row[0]
            );
            compared += 1;
        }
    }
    assert!(compared >= rows.len() * 5, "{oracle}: {compared} values");
}

/// `docker run -t` with 80 columns: Ultralytics elides every progress row at the width
/// (`2/2  0G  2.416  1.9…: 100% ━━━━ 8/8 ...`): the whole values before the cut are kept, the
/// cut one and the columns after it are not invented.
#[test]
fn an_80_column_tty_console_keeps_the_whole_values_before_the_cut() {
    let db = replay("tty80.txt");
    assert_eq!(
        db.text("SELECT status || ' ' || epochs_done FROM training_runs")
            .as_deref(),
        Some("completed 2")
    );
    assert_history_matches(
        &db,
        1,
        "tty80.results.csv",
        &["train/cls_loss", "train/dfl_loss"],
    );
}

/// RT-DETR's `giou_loss cls_loss l1_loss` columns, YOLOv10, and two trainings run one after the other
/// in one process (a notebook cell run twice: epochs restart at 1): each its own run.
#[test]
fn rt_detr_and_two_trainings_in_one_process_match_their_results_csv() {
    let db = replay("rtdetr-json.log");
    assert_eq!(
        db.text("SELECT loss_names FROM runs").as_deref(),
        Some(r#"["giou_loss","cls_loss","l1_loss"]"#)
    );
    assert_history_matches(&db, 1, "rtdetr.results.csv", &[]);
    // YOLOv10 as 8.4 trains it (its one-to-many and one-to-one losses summed per kind).
    assert_history_matches(&replay("yolov10-json.log"), 1, "yolov10.results.csv", &[]);
    let db = replay("twice-json.log");
    assert_eq!(db.count("SELECT count(*) FROM runs"), 2);
    assert_history_matches(&db, 1, "first.results.csv", &[]);
    assert_history_matches(&db, 2, "second.results.csv", &[]);
}

/// `model.val()` of a trained model alone is a validation, no run and no epoch; each
/// `model.tune()` iteration is a run of its own, tagged with its iteration.
#[test]
fn model_val_alone_is_no_run_and_tune_iterations_are_tagged_runs() {
    let db = replay("val-json.log");
    assert_eq!(db.count("SELECT count(*) FROM runs"), 1);
    assert_eq!(db.count("SELECT count(*) FROM epochs"), 1);
    // The last validation is the one of `model.val()`: of no epoch.
    let last = db
        .text("SELECT context FROM events WHERE kind = 'validation' ORDER BY ts DESC LIMIT 1")
        .unwrap();
    let last: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert!(last["epoch"].is_null(), "{last}");
    assert_eq!(last["images"], 16);
    let db = replay("tune-json.log");
    let tagged: Vec<String> = {
        let conn = db.conn();
        let mut st = conn
            .prepare(
                "SELECT json_extract(params, '$.tune_iteration') || '/' ||
                        json_extract(params, '$.tune_iterations') || ' ' || epochs_done
                 FROM training_runs ORDER BY run_id",
            )
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(tagged, ["1/2 2", "2/2 2"]);
}

/// YOLOv7 (YOLOR, YOLOv9's `train.py`): the bars on stderr, the `all` row printed on buffered
/// stdout, so each epoch's validation reaches the log after the next epoch's header. It is
/// the validation of the epoch whose rows preceded it, never of the next.
#[test]
fn a_validation_printed_after_the_next_epoch_s_header_is_its_own_epoch_s() {
    let db = Db::new();
    db.replay(&[fixture_str("yolov7/interleaved-json.log")], Some("v7"));
    let epochs: Vec<(i64, Option<f64>, Option<f64>)> = {
        let conn = db.conn();
        let mut st = conn
            .prepare("SELECT epoch, map50, box_loss FROM training_epochs ORDER BY epoch")
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    // The printed values: epoch k's last frame, then its `all` row (mAP@.5 0.3, 0.4, 0.5).
    let text = std::fs::read_to_string(fixture("yolov7/interleaved-json.log")).unwrap();
    let last_frames: Vec<f64> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|e| {
            let last = e["log"].as_str()?.split('\r').next_back()?.to_string();
            let cells: Vec<&str> = last.split_whitespace().collect();
            (cells.first()?.contains('/') && cells.get(1)? == &"3.52G")
                .then(|| cells[2].parse().unwrap())
        })
        .collect();
    assert_eq!(last_frames.len(), 3);
    assert_eq!(
        epochs,
        [
            (0, Some(0.3), Some(last_frames[0])),
            (1, Some(0.4), Some(last_frames[1])),
            (2, Some(0.5), Some(last_frames[2])),
        ]
    );
    assert_eq!(
        db.text("SELECT status || ' ' || epochs_done FROM training_runs")
            .as_deref(),
        Some("completed 3")
    );
}
