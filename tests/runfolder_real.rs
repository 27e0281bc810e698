//! Real run folders recorded as Ultralytics 8.4 wrote them (fixtures/runfolder: every write of
//! every file, beside the training's console): replayed with `--path-map`, and written at the
//! recorded pace into a folder bind-mounted into a container that prints the recorded console
//! while `watch` follows it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::util::{Db, RecordedFolder, bin, fixture, fixture_str};

/// Where the recordings' trainings wrote (`save_dir` = `/tmp/tw-runfolder/runs/NAME`).
const RECORDED_ROOT: &str = "/tmp/tw-runfolder/runs";

/// The run folder `name` as its training left it, under `root`; its final results.csv.
fn final_folder(root: &Path, name: &str) -> String {
    let rec = RecordedFolder::load(&format!("runfolder/{name}.folder.jsonl"));
    rec.write_final(&root.join(name));
    std::fs::read_to_string(root.join(name).join("results.csv")).unwrap()
}

fn replay(db: &Db, name: &str, root: &Path) {
    let map = format!("{RECORDED_ROOT}={}", root.display());
    let log = fixture_str(&format!("runfolder/{name}-json.log"));
    let o = bin(
        &["replay", "--container", name, "--path-map", &map, &log],
        &db.path,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn history_csv(db: &Db, run_id: i64) -> String {
    let o = bin(
        &["history", "--run", &run_id.to_string(), "--format", "csv"],
        &db.path,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// The NaN validation losses of a run with a too-high learning rate, whose console never
/// printed one: six `loss_non_finite` events from its results.csv (three columns, epochs 1
/// and 2), `TrainingLossNonFinite`, and the csv as history.
#[test]
fn a_recorded_run_with_nan_validation_losses_alerts_from_its_results_csv() {
    let db = Db::new();
    let root = db.dir.path().join("runs");
    let csv = final_folder(&root, "nanval");
    // The console holds no NaN (only the run's name).
    let console = std::fs::read_to_string(fixture("runfolder/nanval-json.log")).unwrap();
    assert_eq!(
        console.to_lowercase().matches("nan").count(),
        console.matches("nanval").count()
    );
    replay(&db, "nanval", &root);
    assert_eq!(history_csv(&db, 1), csv);
    let said: Vec<String> = {
        let conn = db.conn();
        let mut st = conn
            .prepare(
                "SELECT json_extract(context, '$.column') || '@' || json_extract(context, '$.epoch')
                 FROM events WHERE kind = 'loss_non_finite' ORDER BY 1",
            )
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(
        said,
        [
            "val/box_loss@1",
            "val/box_loss@2",
            "val/cls_loss@1",
            "val/cls_loss@2",
            "val/dfl_loss@1",
            "val/dfl_loss@2"
        ]
    );
    assert_eq!(
        db.count("SELECT count(*) FROM alerts WHERE alertname = 'TrainingLossNonFinite'"),
        1
    );
    assert_eq!(
        db.text("SELECT status FROM training_runs WHERE run_id = 1")
            .as_deref(),
        Some("completed")
    );
}

/// An early stop with `save_period`, and a run killed mid-epoch then resumed: each is one run
/// whose history is its folder's final results.csv, cell for cell.
#[test]
fn recorded_early_stopped_and_resumed_runs_have_their_results_csv_as_history() {
    let db = Db::new();
    let root = db.dir.path().join("runs");
    let early = final_folder(&root, "earlystop");
    let resumed = final_folder(&root, "resume");
    replay(&db, "earlystop", &root);
    replay(&db, "resume", &root);
    let run = |c: &str| -> (i64, String, i64) {
        db.conn()
            .query_row(
                "SELECT run_id, status, epochs_done FROM training_runs WHERE container = ?1",
                [c],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap()
    };
    let (id, status, done) = run("earlystop");
    assert_eq!(status, "early_stopped");
    assert_eq!(done as usize, early.lines().count() - 1);
    assert_eq!(history_csv(&db, id), early);
    let (id, status, done) = run("resume");
    assert_eq!((status.as_str(), done), ("completed", 5));
    assert_eq!(history_csv(&db, id), resumed);
    assert_eq!(db.count("SELECT count(*) FROM runs"), 2);
}

/// A container script that prints the capture's entries on their streams at their recorded
/// pace; and the wall clock (ns) of its first entry.
fn timed_console(rel: &str, dir: &Path) -> (String, i64) {
    std::fs::create_dir_all(dir).unwrap();
    let text = std::fs::read_to_string(fixture(rel)).unwrap();
    let entries: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let at = |v: &serde_json::Value| {
        trainwatch::time::parse_rfc3339(v["time"].as_str().unwrap()).unwrap()
    };
    let mut script = String::new();
    for (n, e) in entries.iter().enumerate() {
        let err = e["stream"] == "stderr";
        let file = format!("{n:05}.{}", if err { "err" } else { "out" });
        std::fs::write(dir.join(&file), e["log"].as_str().unwrap()).unwrap();
        script.push_str(&format!(
            "/busybox cat /play/{file}{}\n",
            if err { " >&2" } else { "" }
        ));
        if let Some(next) = entries.get(n + 1) {
            let pause_us = (at(next) - at(e)).max(0) / 1000;
            if pause_us > 0 {
                script.push_str(&format!("/busybox usleep {pause_us}\n"));
            }
        }
    }
    std::fs::write(dir.join("run.sh"), script).unwrap();
    (dir.join("run.sh").display().to_string(), at(&entries[0]))
}

/// `watch` follows a container printing the recorded NaN-validation console while its
/// bind-mounted run folder is written as the training wrote it (checkpoints rewritten in
/// place, seen at 0 bytes and half-written): the NaN validation losses page from the csv, every
/// `checkpoint_saved` is a settled write (never 0 bytes), and none is said to have stopped.
#[test]
fn watch_follows_a_recorded_run_folder_written_at_its_real_pace() {
    use crate::docker::{Lab, docker_ready};
    if !docker_ready() {
        return;
    }
    let mut lab = Lab::new("recfolder", "");
    lab.start_watch(&[]);
    let runs: PathBuf = lab.db.dir.path().join("runs");
    std::fs::create_dir_all(&runs).unwrap();
    let play = lab.db.dir.path().join("play-rec");
    let (_, first_ns) = timed_console("runfolder/nanval-json.log", &play);
    let folder = RecordedFolder::load("runfolder/nanval.folder.jsonl");
    let runs_mount = format!("{}:{RECORDED_ROOT}:ro", runs.display());
    let play_mount = format!("{}:/play:ro", play.display());
    let c = lab.run_with(
        "train",
        false,
        &[],
        &["-v", &play_mount, "-v", &runs_mount],
        "/busybox sh /play/run.sh",
    );
    let t0 = Instant::now();
    for w in &folder.writes {
        let due = t0 + Duration::from_nanos((w.ns - first_ns).max(0) as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        RecordedFolder::apply(w, &runs.join("nanval"));
    }
    lab.wait_exit(&c);
    lab.wait_for(
        "SELECT count(*) FROM training_runs WHERE status = 'completed'",
        1,
    );
    lab.wait_for(
        "SELECT count(*) FROM events WHERE kind = 'loss_non_finite' AND stream = 'run_folder'",
        6,
    );
    // Epochs of 1.7 s rewrite the checkpoints faster than the folder is looked at: the final
    // writes count once the container's stop is seen.
    lab.wait_for(
        "SELECT count(*) > 0 FROM events WHERE kind = 'checkpoint_saved' AND stream = 'run_folder'",
        1,
    );
    lab.stop_watch();
    assert_eq!(
        lab.db
            .count("SELECT count(*) FROM alerts WHERE alertname = 'TrainingLossNonFinite'"),
        1,
        "{}",
        lab.log_text()
    );
    let saved: Vec<String> = {
        let conn = lab.db.conn();
        let mut st = conn
            .prepare("SELECT message FROM events WHERE kind = 'checkpoint_saved' AND stream = 'run_folder'")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert!(!saved.is_empty(), "{}", lab.log_text());
    for m in &saved {
        assert!(
            (m.starts_with("last.pt") || m.starts_with("best.pt"))
                && m.ends_with(" MB")
                && !m.ends_with(" 0.0 MB"),
            "{m}"
        );
    }
    assert_eq!(
        lab.db
            .count("SELECT count(*) FROM events WHERE kind = 'checkpoint_save_failed'"),
        0,
        "{saved:?}"
    );
}
