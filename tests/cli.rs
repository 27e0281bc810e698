//! The binary: `replay`, `history`, `sql`, `prune`, their formats and errors.

use crate::util::{Db, bin, fixture, fixture_str};

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn replay_history_sql_prune() {
    let db = Db::new();
    let o = bin(
        &[
            "replay",
            "--container",
            "gpu",
            &fixture_str("ultralytics/normal-json.log"),
        ],
        &db.path,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out(&o).contains("skipped: none"));
    // Its log is all there is: the run folder it names is on the training machine.
    assert!(
        out(&o).contains("run folders: 0 read (0 results.csv rows), 1 not readable\n  run folder /work/fx/runs/normal: /work/fx/runs/normal/results.csv (No such file or directory (os error 2)); map it with --path-map CONTAINER_PREFIX=LOCAL_PREFIX\n"),
        "{}",
        out(&o)
    );

    let o = bin(&["history", "--format", "json"], &db.path);
    let runs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(runs[0]["status"], "completed");
    assert_eq!(runs[0]["epochs_done"], 10);
    // Runs compare side by side: duration and the last epoch's metrics.
    assert!(runs[0]["duration_s"].as_i64().unwrap() >= 5, "{}", runs[0]);
    let final_loss = runs[0]["final_loss"].as_f64().unwrap();
    assert!((final_loss - 10.514).abs() < 0.01, "{final_loss}");
    assert!(runs[0]["final_map50_95"].is_number());

    // One run as results.csv: the same columns Ultralytics writes, values that match it.
    let o = bin(&["history", "--run", "1", "--format", "csv"], &db.path);
    let csv = out(&o);
    let header = csv.lines().next().unwrap();
    assert_eq!(
        header,
        "epoch,time,train/box_loss,train/cls_loss,train/dfl_loss,metrics/precision(B),metrics/recall(B),metrics/mAP50(B),metrics/mAP50-95(B)"
    );
    assert_eq!(csv.lines().count(), 11);
    let want = crate::util::ResultsCsv::load(&fixture("ultralytics/normal.results.csv"));
    let row3: Vec<&str> = csv.lines().nth(3).unwrap().split(',').collect();
    assert_eq!(row3[0], "3");
    assert!(crate::util::close_sig(
        row3[2].parse().unwrap(),
        want.get(3, "train/box_loss"),
        4
    ));

    let o = bin(
        &[
            "sql",
            "--format",
            "csv",
            "SELECT kind, count(*) AS n FROM events GROUP BY kind ORDER BY kind",
        ],
        &db.path,
    );
    assert!(out(&o).contains("epoch_completed,10"), "{}", out(&o));

    // Read-only: writes are refused.
    let o = bin(&["sql", "DELETE FROM event_log"], &db.path);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("readonly")
            || String::from_utf8_lossy(&o.stderr).contains("read-only")
            || String::from_utf8_lossy(&o.stderr).contains("query_only")
    );

    // The captured log is from today, so nothing is older than 30 days; 0s prunes all events.
    let o = bin(&["prune", "--dry-run"], &db.path);
    assert!(out(&o).starts_with("would delete 0 events"), "{}", out(&o));
    let events = db.count("SELECT count(*) FROM events");
    let o = bin(&["prune", "--older-than", "0s", "--dry-run"], &db.path);
    assert!(
        out(&o).starts_with(&format!("would delete {events} events")),
        "{}",
        out(&o)
    );
    let o = bin(&["prune", "--older-than", "0s"], &db.path);
    assert!(o.status.success());
    assert_eq!(db.count("SELECT count(*) FROM events"), 0);
    assert_eq!(
        db.count("SELECT count(*) FROM training_epochs"),
        10,
        "training history is kept"
    );
}

#[test]
fn errors_name_the_problem() {
    let db = Db::new();
    let o = bin(&["history"], &db.path);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist yet"));
    let o = bin(&["replay", "/nope/missing.log"], &db.path);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(err.contains("/nope/missing.log"), "{err}");
    // Each cause said once.
    assert_eq!(err.matches("no such file or directory").count(), 1, "{err}");
    let o = bin(&["prune", "--older-than", "soon"], &db.path);
    assert!(!o.status.success());
    // SQLite's own words, once, without its generic code name.
    db.replay(&[fixture_str("queue/queue.log")], Some("q"));
    let o = bin(&["sql", "SELEC 1"], &db.path);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success());
    assert!(err.contains("syntax error"), "{err}");
    assert_eq!(err.matches("SELEC 1").count(), 1, "{err}");
    assert!(!err.contains("Error code"), "{err}");
    for cmd in ["replay", "history", "sql", "prune"] {
        let o = bin(&[cmd, "--help"], &db.path);
        assert!(
            o.status.success() && out(&o).contains("--db"),
            "{cmd} --help"
        );
    }
}

#[test]
fn alerts_command_lists_firing_and_all() {
    let db = Db::new();
    let o = bin(
        &[
            "replay",
            "--container",
            "nan",
            &fixture_str("ultralytics/nan-json.log"),
        ],
        &db.path,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The NaN run's alerts (the NaN, the failure) are resolved where its archive ends:
    // nothing firing.
    let o = bin(&["alerts"], &db.path);
    assert!(o.status.success());
    assert_eq!(out(&o).trim(), "no alerts firing");
    let o = bin(&["alerts", "--format", "json"], &db.path);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap(),
        serde_json::json!([])
    );
    let o = bin(&["alerts", "--all", "--format", "json"], &db.path);
    let all: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 2);
    // Newest first: the failure, then the NaN that led to it.
    assert_eq!(all[0]["alertname"], "TrainingFailed");
    assert_eq!(all[1]["alertname"], "TrainingLossNonFinite");
    assert_eq!(all[1]["severity"], "high");
    assert_eq!(all[1]["status"], "resolved");
    assert_eq!(all[1]["labels"]["container"], "nan");
    let o = bin(&["alerts", "--all"], &db.path);
    let table = out(&o);
    let header = table.lines().next().unwrap();
    for col in [
        "severity",
        "alertname",
        "status",
        "labels",
        "started_at",
        "resolved_at",
        "summary",
    ] {
        assert!(header.contains(col), "{header}");
    }
    assert!(table.contains("container=nan"), "{table}");
    // The view is plain SQL.
    let o = bin(
        &[
            "sql",
            "--format",
            "csv",
            "SELECT alertname, status FROM alerts",
        ],
        &db.path,
    );
    assert_eq!(
        out(&o),
        "alertname,status\nTrainingLossNonFinite,resolved\nTrainingFailed,resolved\n"
    );
}

#[test]
fn watch_listen_on_a_taken_port_fails_at_start() {
    let db = Db::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let o = bin(&["watch", "--listen", &addr], &db.path);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("--listen {addr}")) && err.contains("in use"),
        "{err}"
    );
}

#[test]
fn watch_prunes_on_its_retention_schedule() {
    let db = Db::new();
    db.replay(&[fixture_str("ultralytics/normal-json.log")], Some("yolo"));
    let before = db.count("SELECT count(*) FROM events WHERE container = 'yolo'");
    assert!(before > 10);
    let config = db.dir.path().join("tw.toml");
    std::fs::write(
        &config,
        "[retention]\nevents = \"1s\"\nevery = \"1s\"\n[probes]\nnvidia_smi = \"\"\ndata_root = \"\"\n",
    )
    .unwrap();
    let watch = std::process::Command::new(env!("CARGO_BIN_EXE_trainwatch"))
        .arg("--db")
        .arg(&db.path)
        .arg("--config")
        .arg(&config)
        .arg("watch")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while db.count("SELECT count(*) FROM events WHERE container = 'yolo'") > 0 {
        assert!(std::time::Instant::now() < deadline, "not pruned");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &watch.id().to_string()])
        .status();
    let out = watch.wait_with_output().unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("Retention pruned old rows."), "{log}");
    // Training history is kept by default.
    assert_eq!(db.count("SELECT count(*) FROM training_epochs"), 10);
}

#[test]
fn sql_refuses_writes_with_the_reason_and_creates_no_file() {
    let db = Db::new();
    db.replay(&[crate::util::fixture_str("queue/queue.log")], Some("q"));
    let target = db.dir.path().join("copy.db");
    for q in [
        format!("VACUUM INTO '{}'", target.display()),
        "DELETE FROM event_log".to_string(),
        // A view: SQLite cannot even prepare it, and would say so, not that it writes.
        "delete from events".to_string(),
        "PRAGMA journal_mode = DELETE".to_string(),
        // Sets nothing, and writes.
        "PRAGMA optimize".to_string(),
        "ANALYZE".to_string(),
    ] {
        let o = bin(&["sql", &q], &db.path);
        assert!(!o.status.success(), "{q}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("is read-only"), "{q}: {err}");
        assert!(!err.contains("disk I/O error"), "{q}: {err}");
        assert!(
            !err.contains("readonly database") && !err.contains("view"),
            "{q}: {err}"
        );
    }
    assert!(!target.exists(), "VACUUM INTO left a file");
    // Reads, PRAGMA reads included, still run.
    for q in [
        "PRAGMA journal_mode",
        "PRAGMA table_info(events)",
        "SELECT count(*) FROM events",
    ] {
        let o = bin(&["sql", q], &db.path);
        assert!(
            o.status.success(),
            "{q}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert!(out(&bin(&["sql", "PRAGMA journal_mode"], &db.path)).contains("wal"));
}

#[test]
fn read_commands_work_on_a_database_in_a_directory_they_cannot_write() {
    // As another user (nobody), on a WAL database whose directory only root may write, with
    // no -shm file: sql, status, history and health read it (immutable) instead of failing.
    let root = std::process::Command::new("id").arg("-u").output().unwrap();
    let setpriv = std::path::Path::new("/usr/bin/setpriv").exists();
    if String::from_utf8_lossy(&root.stdout).trim() != "0" || !setpriv {
        crate::util::unavailable("skipping: needs root and setpriv to act as another user");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let db = Db::new();
    db.replay(&[crate::util::fixture_str("queue/queue.log")], Some("q"));
    let ro = db.dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::copy(&db.path, ro.join("tw.db")).unwrap();
    let exe = db.dir.path().join("trainwatch");
    std::fs::copy(env!("CARGO_BIN_EXE_trainwatch"), &exe).unwrap();
    for (p, mode) in [
        (db.dir.path(), 0o755),
        (ro.as_path(), 0o755),
        (&ro.join("tw.db"), 0o644),
        (exe.as_path(), 0o755),
    ] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let as_nobody = |args: &[&str]| {
        std::process::Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(&exe)
            .arg("--db")
            .arg(ro.join("tw.db"))
            .args(args)
            .output()
            .unwrap()
    };
    let o = as_nobody(&["sql", "SELECT count(*) FROM events WHERE container = 'q'"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let n = db.count("SELECT count(*) FROM events WHERE container = 'q'");
    assert!(out(&o).contains(&n.to_string()), "{}", out(&o));
    for cmd in ["status", "history"] {
        let o = as_nobody(&[cmd]);
        assert!(
            o.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = as_nobody(&["health"]);
    assert!(
        out(&o).contains("queue processed"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!ro.join("tw.db-shm").exists());
}

/// Every command reads `--config` alike: a missing or malformed file is an error for the read
/// commands too (for `health`, exit 2: it cannot tell), `[status] max_age` sets their default
/// age, and `config check` validates a file and prints the effective settings, secrets
/// redacted.
#[test]
fn read_commands_honour_the_config_and_config_check_prints_it() {
    let db = Db::new();
    db.replay(&[fixture_str("ultralytics/normal-json.log")], Some("gpu"));
    let dir = db.dir.path();
    let missing = dir.join("missing.toml");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[status]\nmax_age = \"soon\"\n").unwrap();
    for cfg in [&missing, &bad] {
        let cfg = cfg.to_str().unwrap();
        for cmd in [
            &["history"][..],
            &["alerts"],
            &["status"],
            &["sql", "SELECT 1"],
            &["config", "check"],
        ] {
            let args: Vec<&str> = ["--config", cfg].iter().chain(cmd).copied().collect();
            let o = bin(&args, &db.path);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success(), "{cmd:?} with {cfg}");
            assert_eq!(
                err.matches(cfg).count(),
                1,
                "{cmd:?}: the file named once: {err}"
            );
        }
        let o = bin(&["--config", cfg, "health"], &db.path);
        assert_eq!(o.status.code(), Some(2));
    }
    let err = String::from_utf8_lossy(
        &bin(&["--config", bad.to_str().unwrap(), "history"], &db.path).stderr,
    )
    .into_owned();
    assert!(err.contains("\"soon\" is not a duration"), "{err}");

    // The replayed run is months old: stale for the default 10 minutes, fresh for 100 weeks.
    let o = bin(&["health"], &db.path);
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    let lenient = dir.join("lenient.toml");
    std::fs::write(
        &lenient,
        "[status]\nmax_age = \"100w\"\n\n[[notify.receivers]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\nbearer_token = \"s3cr3t-t0ken\"\n",
    )
    .unwrap();
    let lenient = lenient.to_str().unwrap();
    let o = bin(&["--config", lenient, "health"], &db.path);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    let o = bin(
        &["--config", lenient, "health", "--max-age", "10m"],
        &db.path,
    );
    assert_eq!(o.status.code(), Some(2), "the flag wins: {}", out(&o));
    let o = bin(&["--config", lenient, "status"], &db.path);
    assert!(o.status.success());
    assert!(!out(&o).contains("stale"), "{}", out(&o));

    let o = bin(&["config", "check", lenient], &db.path);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = out(&o);
    assert!(text.contains("OK"), "{text}");
    // The effective settings: what the file says, and every default.
    let body: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
    let v: toml::Table = body.parse().unwrap();
    assert_eq!(v["status"]["max_age"].as_str(), Some("700d"));
    assert_eq!(v["alerts"]["gpu_temperature_c"].as_float(), Some(90.0));
    assert_eq!(v["alerts"]["queue_offset_stale_after"].as_str(), Some("1h"));
    assert_eq!(
        v["notify"]["receivers"][0]["bearer_token"].as_str(),
        Some("<redacted>")
    );
    assert!(!text.contains("s3cr3t"), "{text}");
    // And what it prints is a config that checks again to the same settings.
    let again = dir.join("again.toml");
    std::fs::write(&again, &body).unwrap();
    let o = bin(&["config", "check", again.to_str().unwrap()], &db.path);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let body2: String = out(&o).lines().skip(1).map(|l| format!("{l}\n")).collect();
    assert_eq!(body2, body);
}

/// `history` for a person: the newest run first, within 120 columns, losses rounded as the
/// console prints them, times in human units; empty where nothing is known.
#[test]
fn history_table_lists_the_newest_run_first_within_120_columns() {
    let db = Db::new();
    db.replay(
        &[
            fixture_str("ultralytics/normal-json.log"),
            fixture_str("ultralytics/crash-json.log"),
        ],
        Some("a-training-container-with-a-long-name"),
    );
    let o = bin(&["history"], &db.path);
    assert!(o.status.success());
    let text = out(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 4, "{text}");
    for l in &lines {
        assert!(
            l.chars().count() <= 120,
            "{} columns: {l}",
            l.chars().count()
        );
    }
    let json: serde_json::Value =
        serde_json::from_slice(&bin(&["history", "--format", "json"], &db.path).stdout).unwrap();
    let runs = json.as_array().unwrap();
    assert!(runs.len() >= 2);
    let newest = runs
        .iter()
        .max_by_key(|r| r["started_at"].as_str().unwrap().to_string())
        .unwrap();
    assert_eq!(runs[0]["run_id"], newest["run_id"], "json: newest first");
    let first: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(first[0], newest["run_id"].to_string(), "{text}");
    assert!(
        first[1].ends_with('…') && first[1].chars().count() == 20,
        "{text}"
    );
    // The completed run's row: its loss to 4 decimals, its duration in seconds.
    let done = lines
        .iter()
        .find(|l| l.contains("completed"))
        .expect("the completed run");
    let loss = format!(
        "{:.4}",
        runs.iter().find(|r| r["status"] == "completed").unwrap()["final_loss"]
            .as_f64()
            .unwrap()
    );
    assert!(done.contains(&loss), "{loss} in {done}");
    assert!(!done.contains("10.5140000"), "{done}");
    assert!(
        done.split_whitespace()
            .any(|w| w.ends_with('s') && w[..w.len() - 1].parse::<u32>().is_ok()),
        "{done}"
    );
}

/// `replay --db` into a directory that does not exist says it creates it, then does.
#[test]
fn replay_into_a_new_directory_says_it_creates_it() {
    let db = Db::new();
    let path = db.dir.path().join("new/sub/tw.db");
    let o = bin(&["replay", &fixture_str("queue/queue.log")], &path);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("does not exist; creating it") && err.contains("new/sub"),
        "{err}"
    );
    assert!(path.exists());
    // The second time there is nothing to say.
    let o = bin(&["replay", &fixture_str("queue/queue.log")], &path);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("creating"));
}

/// A database an older trainwatch wrote (schema 7: no container states yet) is brought up to
/// date by the read commands, as `watch` and `replay` do: `status` and `health` work on it.
#[test]
fn read_commands_upgrade_a_database_an_older_trainwatch_wrote() {
    let db = Db::new();
    db.replay(&[fixture_str("ultralytics/normal-json.log")], Some("gpu"));
    {
        let conn = rusqlite::Connection::open(&db.path).unwrap();
        // Undo 0014, 0013, 0012, 0011 and 0010, 0009 (the view of 0004 back, then its tables
        // and columns) and 0008.
        conn.execute_batch(
            "ALTER TABLE runs DROP COLUMN folder; ALTER TABLE runs DROP COLUMN mlflow_run_id;
             ALTER TABLE runs DROP COLUMN mlflow_uri;
             ALTER TABLE mlflow_runs DROP COLUMN artifacts_sent;
             ALTER TABLE mlflow_runs DROP COLUMN linked;
             ALTER TABLE mlflow_runs DROP COLUMN final_sent;
             DROP VIEW training_results; DROP TABLE results_rows;
             ALTER TABLE runs DROP COLUMN results_columns;",
        )
        .unwrap();
        conn.execute_batch(trainwatch::store::migrate::MIGRATIONS[3])
            .unwrap();
        conn.execute_batch(
            "ALTER TABLE event_log DROP COLUMN arrived_at; ALTER TABLE metric_log DROP COLUMN arrived_at;
             DROP TABLE silences; ALTER TABLE runs DROP COLUMN failure;
             DROP TABLE mlflow_epochs; DROP TABLE mlflow_runs;
             ALTER TABLE runs DROP COLUMN params; ALTER TABLE runs DROP COLUMN ultralytics_version;",
        )
        .unwrap();
        for col in [
            "state",
            "exit_code",
            "oom_killed",
            "state_at",
            "last_line_at",
        ] {
            conn.execute_batch(&format!("ALTER TABLE containers DROP COLUMN {col}"))
                .unwrap();
        }
        conn.pragma_update(None, "user_version", 7).unwrap();
    }
    let o = bin(&["status"], &db.path);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out(&o).contains("run 1 (gpu) completed"), "{}", out(&o));
    let conn = db.conn();
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, trainwatch::store::migrate::MIGRATIONS.len() as i64);
    assert_eq!(
        db.count("SELECT count(*) FROM pragma_table_info('containers') WHERE name = 'state'"),
        1
    );
    assert_ne!(bin(&["health"], &db.path).status.code(), None);
}

/// One ingestor per database: a second `watch` (or a `replay` during a `watch`) is refused,
/// naming the running one; once it is gone (even killed), the database is free.
#[test]
fn a_second_ingestor_on_one_database_is_refused_naming_the_first() {
    let db = Db::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tw.toml");
    // No Docker needed: the daemon address goes nowhere; watch keeps retrying it.
    std::fs::write(&cfg, "").unwrap();
    let start = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_trainwatch"))
            .args(["--config", cfg.to_str().unwrap(), "watch"])
            .env("TRAINWATCH_DB", &db.path)
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut first = start();
    let lock = format!("{}.lock", db.path.display());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !std::fs::read_to_string(&lock).is_ok_and(|s| s.starts_with("watch pid ")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the first watch never locked"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pid = first.id().to_string();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_trainwatch"))
        .args(["--config", cfg.to_str().unwrap(), "watch"])
        .env("TRAINWATCH_DB", &db.path)
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        err.contains(&format!(
            "in use by another trainwatch (watch pid {pid} since "
        )),
        "{err}"
    );
    let o = bin(&["replay", &fixture_str("queue/queue.log")], &db.path);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(err.contains(&format!("watch pid {pid}")), "{err}");
    // Killed: the lock dies with it.
    first.kill().unwrap();
    first.wait().unwrap();
    let o = bin(&["replay", &fixture_str("queue/queue.log")], &db.path);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `sql` stops a runaway query (a recursive CTE without an end) at `--timeout`.
#[test]
fn sql_stops_a_runaway_query_at_its_timeout() {
    let db = Db::new();
    db.replay(&[fixture_str("queue/queue.log")], Some("q"));
    let started = std::time::Instant::now();
    let o = bin(
        &[
            "sql",
            "--timeout",
            "2s",
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n",
        ],
        &db.path,
    );
    let took = started.elapsed();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        err.contains("the query ran longer than --timeout 2s and was stopped"),
        "{err}"
    );
    assert!(took < std::time::Duration::from_secs(20), "{took:?}");
    // A query within its time runs as before.
    let o = bin(&["sql", "--timeout", "10s", "SELECT 41 + 1 AS n"], &db.path);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("42"));
}

/// `watch` refuses a damaged database (pages overwritten) with how to recover it, and writes
/// nothing to it.
#[test]
fn watch_refuses_a_damaged_database_with_the_recovery_steps() {
    let db = Db::new();
    db.replay(&[fixture_str("ultralytics/normal-json.log")], Some("gpu"));
    // Overwrite a stretch of pages in the middle of the file (not the header).
    let len = std::fs::metadata(&db.path).unwrap().len();
    assert!(len > 64 * 1024, "{len}");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&db.path)
            .unwrap();
        f.seek(SeekFrom::Start(len / 2 - (len / 2) % 8192)).unwrap();
        f.write_all(&vec![0xA5; 3 * 8192]).unwrap();
    }
    let before = std::fs::read(&db.path).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_trainwatch"))
        .args(["watch"])
        .env("TRAINWATCH_DB", &db.path)
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(err.contains("is damaged"), "{err}");
    assert!(err.contains(".recover | sqlite3 recovered.db"), "{err}");
    assert_eq!(std::fs::read(&db.path).unwrap(), before, "nothing written");
}
