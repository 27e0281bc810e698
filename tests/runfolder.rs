//! The run folder: a replayed training's `results.csv`, found through `--path-map`, completes
//! its history (every column, full precision, the validation losses), and a NaN in it alerts
//! as one on the console does.

use crate::util::{Db, bin, fixture, fixture_str};

/// A run folder for the fixture run `name` (printed as `/work/fx/runs/<name>`) under `root`,
/// holding `csv` as its results.csv.
fn run_folder(root: &std::path::Path, name: &str, csv: &str) {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("weights")).unwrap();
    std::fs::write(dir.join("results.csv"), csv).unwrap();
}

fn replay(db: &Db, log: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["replay", "--container", "yolo"];
    args.extend_from_slice(extra);
    let log = fixture_str(log);
    args.push(&log);
    let o = bin(&args, &db.path);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

#[test]
fn results_csv_completes_the_history_with_every_column_as_written() {
    let db = Db::new();
    let root = db.dir.path().join("runs");
    let csv = std::fs::read_to_string(fixture("ultralytics/normal.results.csv")).unwrap();
    run_folder(&root, "normal", &csv);
    let map = format!("/work/fx/runs={}", root.display());
    replay(&db, "ultralytics/normal-json.log", &["--path-map", &map]);
    // history --format csv is Ultralytics' own file, cell for cell.
    let o = bin(&["history", "--run", "1", "--format", "csv"], &db.path);
    assert_eq!(String::from_utf8_lossy(&o.stdout), csv);
    // The epochs take the csv's full precision where the console printed 4 digits.
    let lines: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    let col = |name: &str| lines[0].iter().position(|c| *c == name).unwrap();
    let row3 = &lines[3];
    assert_eq!(row3[0], "3");
    let box3: f64 = db
        .conn()
        .query_row(
            "SELECT box_loss FROM training_epochs WHERE run_id = 1 AND epoch = 3",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(box3, row3[col("train/box_loss")].parse::<f64>().unwrap());
    // Every column is queryable, the validation losses and learning rates included.
    for name in ["val/box_loss", "lr/pg0", "metrics/mAP50-95(B)"] {
        assert_eq!(
            db.text(&format!(
                "SELECT value FROM training_results WHERE run_id = 1 AND epoch = 3 AND name = '{name}'"
            ))
            .as_deref(),
            Some(row3[col(name)]),
            "{name}"
        );
    }
    // A second replay adds nothing.
    let before = db.count("SELECT count(*) FROM results_rows");
    assert_eq!(before, lines.len() as i64 - 1);
    replay(&db, "ultralytics/normal-json.log", &["--path-map", &map]);
    assert_eq!(db.count("SELECT count(*) FROM results_rows"), before);
}

/// The run's params are the values it trained with: the console's `optimizer:` line replaces
/// `optimizer=auto` and the printed `lr0`/`momentum`; the folder's `args.yaml` fills what no
/// line printed and never replaces what one did; the run knows where its folder is read.
#[test]
fn a_run_s_params_are_the_resolved_ones_filled_from_args_yaml() {
    let db = Db::new();
    let root = db.dir.path().join("runs");
    let csv = std::fs::read_to_string(fixture("ultralytics/normal.results.csv")).unwrap();
    run_folder(&root, "normal", &csv);
    std::fs::write(
        root.join("normal/args.yaml"),
        "task: detect\nmode: train\noptimizer: auto\nlr0: 0.01\nepochs: 99\nsome_new_arg: true\nanother: null\n",
    )
    .unwrap();
    let map = format!("/work/fx/runs={}", root.display());
    replay(&db, "ultralytics/normal-json.log", &["--path-map", &map]);
    let param = |k: &str| {
        db.text(&format!(
            "SELECT json_extract(params, '$.{k}') FROM runs WHERE run_id = 1"
        ))
    };
    // The real console: `optimizer: AdamW(lr=0.001667, momentum=0.9) with parameter groups ...`
    assert_eq!(param("optimizer").as_deref(), Some("AdamW"));
    assert_eq!(param("lr0").as_deref(), Some("0.001667"));
    assert_eq!(param("momentum").as_deref(), Some("0.9"));
    assert_eq!(param("warmup_bias_lr").as_deref(), Some("0.0"));
    // Printed on the settings line: kept as printed.
    assert_eq!(param("epochs").as_deref(), Some("10"));
    assert_eq!(param("some_new_arg").as_deref(), Some("True"));
    assert_eq!(param("another").as_deref(), Some("None"));
    assert_eq!(
        db.text("SELECT folder FROM runs WHERE run_id = 1"),
        Some(root.join("normal").to_string_lossy().into_owned())
    );
    // Again: the same.
    let before = db.text("SELECT params FROM runs WHERE run_id = 1");
    replay(&db, "ultralytics/normal-json.log", &["--path-map", &map]);
    assert_eq!(db.text("SELECT params FROM runs WHERE run_id = 1"), before);
}

/// A clean console (finite losses every epoch) over a results.csv whose validation losses are
/// NaN for two epochs, as a too-high learning rate writes them: each NaN is a
/// `loss_non_finite` naming its column and epoch, the epochs are non-finite, and
/// `TrainingLossNonFinite` is recorded.
/// The normal run's real results.csv with the validation losses of epochs 3 and 4 made NaN,
/// as a too-high learning rate writes them; and how many columns were made NaN per epoch.
fn with_nan_validation() -> (String, usize) {
    let csv = std::fs::read_to_string(fixture("ultralytics/normal.results.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let nan_cols: Vec<usize> = header
        .iter()
        .enumerate()
        .filter(|(_, c)| c.starts_with("val/"))
        .map(|(i, _)| i)
        .collect();
    let nan_csv: String = csv
        .lines()
        .map(|l| {
            let mut cells: Vec<String> = l.split(',').map(str::to_string).collect();
            if cells[0] == "3" || cells[0] == "4" {
                for i in &nan_cols {
                    cells[*i] = "nan".into();
                }
            }
            cells.join(",") + "\n"
        })
        .collect();
    (nan_csv, nan_cols.len())
}

#[test]
fn nan_validation_losses_in_results_csv_alert_under_a_clean_console() {
    let db = Db::new();
    let root = db.dir.path().join("runs");
    let (nan_csv, nan_cols) = with_nan_validation();
    run_folder(&root, "normal", &nan_csv);
    let map = format!("/work/fx/runs={}", root.display());
    replay(&db, "ultralytics/normal-json.log", &["--path-map", &map]);
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE kind = 'loss_non_finite'"),
        2 * nan_cols as i64
    );
    assert_eq!(
        db.text(
            "SELECT message FROM events WHERE kind = 'loss_non_finite' ORDER BY ts, stream LIMIT 1"
        )
        .unwrap(),
        format!(
            "val/box_loss is nan at epoch 3 in {}",
            root.join("normal/results.csv").display()
        )
    );
    assert_eq!(
        db.count("SELECT count(*) FROM training_epochs WHERE run_id = 1 AND non_finite = 1"),
        2
    );
    assert_eq!(
        db.count("SELECT count(*) FROM alerts WHERE alertname = 'TrainingLossNonFinite'"),
        1
    );
    let summary = db
        .text("SELECT summary FROM alerts WHERE alertname = 'TrainingLossNonFinite'")
        .unwrap();
    assert!(summary.contains("at epoch 3 (in results.csv"), "{summary}");
    // The console's own history is as it was without the folder (no NaN printed).
    let plain = Db::new();
    replay(&plain, "ultralytics/normal-json.log", &[]);
    assert_eq!(
        plain.count("SELECT count(*) FROM events WHERE kind = 'loss_non_finite'"),
        0
    );
}

/// A run folder that cannot be read is said (a counted skip naming it and how to map it) and
/// the history from the log stays as it is.
#[test]
fn an_unreadable_run_folder_is_said_and_changes_nothing() {
    let db = Db::new();
    let o = replay(&db, "ultralytics/normal-json.log", &[]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        text.contains("run folders: 0 read (0 results.csv rows), 1 not readable"),
        "{text}"
    );
    assert!(text.contains("run folder /work/fx/runs/normal: "), "{text}");
    assert!(text.contains("--path-map"), "{text}");
    assert!(text.contains("skipped: none"), "{text}");
    assert_eq!(db.count("SELECT count(*) FROM results_rows"), 0);
    assert_eq!(
        db.count("SELECT count(*) FROM training_epochs WHERE run_id = 1"),
        10
    );
    // status says it with the run; a replay again says nothing new.
    let status = String::from_utf8_lossy(&bin(&["status"], &db.path).stdout).to_string();
    assert!(
        status.contains("           run folder   The run folder /work/fx/runs/normal cannot be read: /work/fx/runs/normal/results.csv: No such file"),
        "{status}"
    );
    replay(&db, "ultralytics/normal-json.log", &[]);
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE kind = 'run_folder_unreadable'"),
        1
    );
}

/// Run folders no log was kept of: `import` makes a run of each (status from its epochs and
/// arguments), and importing again adds nothing; a folder a log already named is merged into
/// that run.
#[test]
fn import_makes_runs_of_folders_without_logs_and_merges_named_ones() {
    let db = Db::new();
    let root = db.dir.path().join("models");
    // The real early-stopped run (patience=3), its arguments as Ultralytics writes them.
    let early = std::fs::read_to_string(fixture("ultralytics/earlystop.results.csv")).unwrap();
    run_folder(&root, "azaion-2026-03-27", &early);
    std::fs::write(
        root.join("azaion-2026-03-27/args.yaml"),
        "task: detect\nmode: train\nmodel: yolo11n.yaml\ndata: /azaion/data.yaml\nepochs: 40\npatience: 3\nbatch: 16\nsave_dir: /azaion/models/azaion-2026-03-27\nlr0: 0.01\n",
    )
    .unwrap();
    // Written last in March: not a training still running.
    let st = std::process::Command::new("touch")
        .args(["-d", "2026-03-27 18:00:00"])
        .arg(root.join("azaion-2026-03-27/results.csv"))
        .status()
        .unwrap();
    assert!(st.success());
    // The normal run, which its log names.
    let normal = std::fs::read_to_string(fixture("ultralytics/normal.results.csv")).unwrap();
    run_folder(&root, "normal", &normal);
    replay(&db, "ultralytics/normal-json.log", &[]);
    let map = format!("/work/fx/runs={}", root.display());
    let import = |db: &Db| {
        let o = bin(
            &["import", "--path-map", &map, &root.to_string_lossy()],
            &db.path,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let said = import(&db);
    let rows = early.lines().count() - 1 + normal.lines().count() - 1;
    assert_eq!(
        said,
        format!(
            "imported 2 run folder(s): 1 new run(s), 1 merged into runs their logs gave, {rows} results.csv row(s)\n"
        )
    );
    let runs: serde_json::Value =
        serde_json::from_slice(&bin(&["history", "--format", "json"], &db.path).stdout).unwrap();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    let imported = runs.iter().find(|r| r["container"] == "import").unwrap();
    assert_eq!(imported["status"], "early_stopped", "{imported}");
    assert_eq!(
        imported["epochs_done"].as_u64().unwrap() as usize,
        early.lines().count() - 1
    );
    let id = imported["run_id"].as_i64().unwrap().to_string();
    let o = bin(&["history", "--run", &id, "--format", "csv"], &db.path);
    assert_eq!(String::from_utf8_lossy(&o.stdout), early);
    assert_eq!(
        db.text(&format!(
            "SELECT json_extract(params, '$.lr0') FROM runs WHERE run_id = {id}"
        ))
        .as_deref(),
        Some("0.01")
    );
    // The log's run has its folder's csv now.
    let o = bin(&["history", "--run", "1", "--format", "csv"], &db.path);
    assert_eq!(String::from_utf8_lossy(&o.stdout), normal);
    // Again: nothing new.
    let before = (
        db.count("SELECT count(*) FROM runs"),
        db.count("SELECT count(*) FROM results_rows"),
        db.count("SELECT count(*) FROM epochs"),
    );
    import(&db);
    assert_eq!(
        (
            db.count("SELECT count(*) FROM runs"),
            db.count("SELECT count(*) FROM results_rows"),
            db.count("SELECT count(*) FROM epochs"),
        ),
        before
    );
}

/// `watch` follows a training container whose run folder is bind-mounted: it finds the folder
/// through the container's mounts (no path map), reads its results.csv while the run runs, and
/// pages the NaN validation losses the console never printed, then their end.
#[test]
fn watch_reads_the_run_folder_through_the_container_s_mount() {
    use crate::alerts::Receiver;
    use crate::docker::{Lab, capture_entries, docker_ready};
    if !docker_ready() {
        return;
    }
    let rx = Receiver::start(0, 0);
    let mut lab = Lab::new(
        "folder",
        &format!(
            "[[notify.receivers]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
            rx.url
        ),
    );
    lab.start_watch(&[]);
    let runs = lab.db.dir.path().join("runs");
    let (nan_csv, nan_cols) = with_nan_validation();
    run_folder(&runs, "normal", &nan_csv);
    let mount = format!("{}:/work/fx/runs:ro", runs.display());
    let entries = capture_entries("ultralytics/normal-json.log");
    let c = lab.play_then("train", &entries, 100_000, "exit 0", &["-v", &mount]);
    lab.wait_exit(&c);
    lab.wait_for(
        "SELECT count(*) FROM training_runs WHERE status = 'completed'",
        1,
    );
    lab.wait_for("SELECT count(*) FROM results_rows", 10);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while rx.received().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}\n{}",
            rx.received(),
            lab.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    lab.stop_watch();
    let pages: Vec<String> = rx
        .received()
        .iter()
        .map(|p| {
            format!(
                "{} {}",
                p["event"].as_str().unwrap(),
                p["alert"]["alertname"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        pages,
        [
            "firing TrainingLossNonFinite",
            "resolved TrainingLossNonFinite"
        ]
    );
    let o = bin(&["history", "--run", "1", "--format", "csv"], &lab.db.path);
    assert_eq!(String::from_utf8_lossy(&o.stdout), nan_csv);
    assert_eq!(
        lab.db
            .count("SELECT count(*) FROM training_epochs WHERE non_finite = 1"),
        2
    );
    assert_eq!(
        lab.db.count(
            "SELECT count(*) FROM events WHERE kind = 'loss_non_finite' AND stream = 'run_folder'"
        ),
        2 * nan_cols as i64
    );
}

/// A training whose `weights/last.pt` is rewritten after its first three epochs and then no
/// more while its epochs go on: each settled write is a `checkpoint_saved` (file, epoch, size),
/// and two epochs without a rewrite are one `checkpoint_save_failed`, which fires
/// `CheckpointSaveFailed`.
#[test]
fn watch_sees_checkpoints_settle_and_last_pt_stop_being_rewritten() {
    use crate::docker::{Lab, capture_entries, docker_ready};
    if !docker_ready() {
        return;
    }
    let mut lab = Lab::new("ckpt", "");
    lab.start_watch(&[]);
    let runs = lab.db.dir.path().join("runs");
    let weights = runs.join("normal/weights");
    std::fs::create_dir_all(&weights).unwrap();
    let mount = format!("{}:/work/fx/runs:ro", runs.display());
    let entries = capture_entries("ultralytics/normal-json.log");
    let c = lab.play_then("train", &entries, 150_000, "exit 0", &["-v", &mount]);
    // As Ultralytics does after each epoch's validation: last.pt rewritten in place (truncated,
    // then written), for epochs 1 to 3 only.
    let validated = "SELECT count(*) FROM training_epochs WHERE map50 IS NOT NULL";
    let mut written = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while written < 3 {
        assert!(std::time::Instant::now() < deadline, "{}", lab.log_text());
        // The watch creates the database when it starts (later on a loaded machine).
        if !lab.db.path.exists() {
            std::thread::sleep(std::time::Duration::from_millis(20));
            continue;
        }
        let done = lab.db.count(validated);
        if done > written {
            written = done;
            let last = weights.join("last.pt");
            std::fs::write(&last, b"").unwrap();
            std::fs::write(&last, vec![1u8; 5_300_000]).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    lab.wait_exit(&c);
    lab.wait_for(
        "SELECT count(*) FROM training_runs WHERE status = 'completed'",
        1,
    );
    lab.stop_watch();
    let saved = lab
        .db
        .text("SELECT message FROM events WHERE kind = 'checkpoint_saved' AND stream = 'run_folder' ORDER BY ts LIMIT 1")
        .unwrap_or_default();
    assert!(
        saved.starts_with("last.pt, epoch ") && saved.ends_with(", 5.3 MB"),
        "{saved}\n{}",
        lab.log_text()
    );
    assert_eq!(
        lab.db.count(
            "SELECT count(*) FROM events WHERE kind = 'checkpoint_save_failed' AND stream = 'run_folder'"
        ),
        1,
        "{}",
        crate::util::dump_all(&lab.db)
    );
    let failed = lab
        .db
        .text("SELECT message FROM events WHERE kind = 'checkpoint_save_failed'")
        .unwrap();
    assert!(
        failed.starts_with("weights/last.pt was not rewritten after epoch "),
        "{failed}"
    );
    assert_eq!(
        lab.db
            .count("SELECT count(*) FROM alerts WHERE alertname = 'CheckpointSaveFailed'"),
        1
    );
}
