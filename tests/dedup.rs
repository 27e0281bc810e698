//! Exactly once: a second replay, an overlapping rotated set, and a replay continued after an
//! earlier one stopped part-way all add nothing twice.

use std::io::Write;

use crate::util::{Db, entry, fixture, fixture_str};

#[test]
fn second_replay_adds_nothing() {
    let db = Db::new();
    let files = [
        fixture_str("ultralytics/normal-json.log"),
        fixture_str("ultralytics/crash-json.log"),
    ];
    db.replay(&files, Some("gpu"));
    let before = db.counts();
    assert!(before.iter().all(|n| *n > 0), "{before:?}");
    let s = db.replay(&files, Some("gpu"));
    assert_eq!(db.counts(), before);
    assert_eq!(s.already_stored, s.lines, "every line recognised as stored");
    assert_eq!(s.write.events_inserted, 0);
}

#[test]
fn overlapping_rotated_sets_store_each_line_once() {
    // Split one log into a rotated set, replay it, then replay a copy where rotation moved on
    // (old .1 became .2.gz, the current file became .1, and a new current file appeared).
    let text = std::fs::read_to_string(fixture("ultralytics/earlystop-json.log")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (a, rest) = lines.split_at(lines.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);
    let join = |ls: &[&str]| ls.iter().map(|l| format!("{l}\n")).collect::<String>();
    let whole = Db::new();
    whole.replay(
        &[fixture_str("ultralytics/earlystop-json.log")],
        Some("gpu"),
    );

    let db = Db::new();
    let d1 = db.dir.path().join("set1");
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::write(d1.join("abc-json.log.1"), join(a)).unwrap();
    std::fs::write(d1.join("abc-json.log"), join(b)).unwrap();
    db.replay(&[d1.to_string_lossy().into()], Some("gpu"));

    let d2 = db.dir.path().join("set2");
    std::fs::create_dir_all(&d2).unwrap();
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(d2.join("abc-json.log.2.gz")).unwrap(),
        flate2::Compression::fast(),
    );
    gz.write_all(join(a).as_bytes()).unwrap();
    gz.finish().unwrap();
    std::fs::write(d2.join("abc-json.log.1"), join(b)).unwrap();
    std::fs::write(d2.join("abc-json.log"), join(c)).unwrap();
    db.replay(&[format!("{}/abc-json.log*", d2.display())], Some("gpu"));
    assert_eq!(
        db.counts(),
        whole.counts(),
        "split and overlapping replays equal one whole replay"
    );
    assert_eq!(
        db.text("SELECT status FROM training_runs"),
        whole.text("SELECT status FROM training_runs")
    );
    // Rotation moved on, but nothing was lost: the cursor's line is still there.
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE kind = 'log_lost'"),
        0
    );
}

/// Between two replays rotation dropped lines nobody read (max-file): the second replay says
/// which, once, as a `log_lost` event and a counted skip; the lines it still has are stored.
#[test]
fn lines_rotated_away_between_replays_are_said_lost() {
    let db = Db::new();
    let line = |i: u32| {
        entry(
            &format!("ERROR:q:failure number {i}\n"),
            "stderr",
            &format!("2026-03-28T14:30:{i:02}Z"),
        )
    };
    let lines = |r: std::ops::Range<u32>| r.map(line).collect::<String>();
    let d1 = db.dir.path().join("set1");
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::write(d1.join("q-json.log.1"), lines(0..3)).unwrap();
    std::fs::write(d1.join("q-json.log"), lines(3..5)).unwrap();
    let s = db.replay(&[d1.to_string_lossy().into()], Some("queue"));
    assert_eq!(s.skips.by_reason.get("log_lost"), None);
    // Lines 5..8 were written and rotated away before the next replay.
    let d2 = db.dir.path().join("set2");
    std::fs::create_dir_all(&d2).unwrap();
    std::fs::write(d2.join("q-json.log.1"), lines(8..10)).unwrap();
    std::fs::write(d2.join("q-json.log"), lines(10..12)).unwrap();
    let s = db.replay(&[d2.to_string_lossy().into()], Some("queue"));
    assert_eq!(s.skips.by_reason.get("log_lost"), Some(&1), "{s:?}");
    let (message, context): (String, String) = db
        .conn()
        .query_row(
            "SELECT message, context FROM events WHERE kind = 'log_lost'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        message,
        "Lines of queue on stderr after 2026-03-28T14:30:04.000000000Z and before 2026-03-28T14:30:08.000000000Z are lost: the log was rotated away before they were read"
    );
    let context: serde_json::Value = serde_json::from_str(&context).unwrap();
    assert_eq!(context["reason"], "rotated");
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE message LIKE 'ERROR:q:failure number%'"),
        9
    );
    // Said once: a third replay of the same set adds nothing.
    let s = db.replay(&[d2.to_string_lossy().into()], Some("queue"));
    assert_eq!(s.skips.by_reason.get("log_lost"), None);
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE kind = 'log_lost'"),
        1
    );
}

#[test]
fn same_second_lines_keep_their_positions() {
    // Lines with identical timestamps are distinct records: position within the timestamp is
    // part of the key.
    let db = Db::new();
    let p = db.dir.path().join("x-json.log");
    let t = "2026-03-28T14:30:00Z";
    let data: String = (0..5)
        .map(|i| entry(&format!("ERROR:q:failure number {i}\n"), "stderr", t))
        .collect();
    std::fs::write(&p, data).unwrap();
    db.replay(&[p.to_string_lossy().into()], None);
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE kind = 'error'"),
        5
    );
    db.replay(&[p.to_string_lossy().into()], None);
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE kind = 'error'"),
        5
    );
}

#[test]
fn appended_file_replay_continues_the_run() {
    // A replay of a log that was still being written, then of the grown file: the second adds
    // only the new lines and the run continues (not a second run).
    let text = std::fs::read_to_string(fixture("ultralytics/normal-json.log")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = lines
        .iter()
        .position(|l| l.contains("      5/10 ") || l.contains("        5/10"))
        .unwrap();
    let db = Db::new();
    let p = db.dir.path().join("grow-json.log");
    std::fs::write(
        &p,
        lines[..cut]
            .iter()
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    )
    .unwrap();
    db.replay(&[p.to_string_lossy().into()], Some("gpu"));
    assert_eq!(
        db.text("SELECT status FROM training_runs").as_deref(),
        Some("running")
    );
    std::fs::write(&p, &text).unwrap();
    db.replay(&[p.to_string_lossy().into()], Some("gpu"));
    let whole = Db::new();
    whole.replay(&[fixture_str("ultralytics/normal-json.log")], Some("gpu"));
    assert_eq!(db.counts(), whole.counts());
    assert_eq!(
        db.text("SELECT status FROM training_runs").as_deref(),
        Some("completed")
    );
}

/// A log of `copies` early-stopped trainings one hour apart, with a queue service line after
/// every line (a running counter and an offset): ~150 json-file lines per copy, doubled. With
/// `step_back`, the host's clock steps back two days before that copy.
fn long_log(copies: usize, step_back: Option<usize>) -> String {
    let text = std::fs::read_to_string(fixture("ultralytics/earlystop-json.log")).unwrap();
    let mut out = String::new();
    let mut n = 0;
    for copy in 0..copies {
        for line in text.lines() {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            let stepped = step_back.is_some_and(|at| copy >= at);
            let t = chrono::DateTime::parse_from_rfc3339(v["time"].as_str().unwrap()).unwrap()
                + chrono::Duration::hours(copy as i64)
                - chrono::Duration::days(if stepped { 2 } else { 0 });
            let time = |t: chrono::DateTime<chrono::FixedOffset>| {
                t.to_utc()
                    .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
            };
            v["time"] = serde_json::Value::String(time(t));
            out.push_str(&v.to_string());
            out.push('\n');
            n += 1;
            let queue = serde_json::json!({
                "timestamp": time(t), "level": "INFO", "service": "annotation_queue",
                "message": "Processed 1 messages", "context": {"offset": n}
            });
            out.push_str(&entry(
                &format!("{queue}\n"),
                "stdout",
                &time(t + chrono::Duration::microseconds(1)),
            ));
        }
    }
    out
}

#[test]
fn replay_killed_mid_way_then_run_again_matches_one_clean_replay() {
    killed_then_resumed(None);
}

#[test]
fn replay_killed_after_a_backwards_clock_step_then_run_again_matches_one_clean_replay() {
    // The clock steps back two days early in the log: the kill lands after the step, and the
    // lines after it are still read on the second run (position, not log time, decides).
    killed_then_resumed(Some(3));
}

fn killed_then_resumed(step_back: Option<usize>) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("0123456789ab-json.log");
    std::fs::write(&log, long_log(200, step_back)).unwrap();
    let log = log.to_string_lossy().into_owned();

    let clean = Db::new();
    clean.replay(std::slice::from_ref(&log), Some("gpu"));

    let killed = Db::new();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_trainwatch"))
        .args(["replay", "--container", "gpu", &log])
        .env("TRAINWATCH_DB", &killed.path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill -9 as soon as a first batch is committed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let stored = trainwatch::store::open_ro(&killed.path)
            .ok()
            .and_then(|c| {
                c.query_row("SELECT max(id) FROM event_log", [], |r| {
                    r.get::<_, Option<i64>>(0)
                })
                .ok()
            })
            .flatten()
            .is_some();
        if stored {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "nothing committed");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(child.try_wait().unwrap().is_none(), "replay ended first");
    child.kill().unwrap();
    child.wait().unwrap();
    let part = killed.counts();
    let whole = clean.counts();
    assert!(part[2] > 0 && part[2] < whole[2], "{part:?} of {whole:?}");

    // Run again: it continues where the committed part ends.
    let s = killed.replay(std::slice::from_ref(&log), Some("gpu"));
    assert!(s.already_stored > 0);
    assert_eq!(killed.counts(), whole);
    let processed = "SELECT CAST(max(value) AS INTEGER) FROM metric_samples WHERE name = 'queue_messages_processed'";
    assert_eq!(killed.count(processed), clean.count(processed));
    assert_eq!(clean.count(processed), 200 * 152, "one per queue line");
    let history = |db: &Db| -> Vec<String> {
        let conn = db.conn();
        let mut st = conn
            .prepare(
                "SELECT r.started_at || ' ' || r.status || ' ' || e.epoch || ' ' || ifnull(e.box_loss, '-')
                    || ' ' || ifnull(e.map50_95, '-')
                 FROM training_epochs e JOIN training_runs r USING (run_id) ORDER BY 1",
            )
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let h = history(&clean);
    assert_eq!(h.len(), 200 * 19);
    assert_eq!(history(&killed), h);
}

/// Six error lines at the given times (seconds past 14:30:00).
fn stepped_lines(times: &[u32], json: bool) -> Vec<String> {
    times
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (m, s) = (30 + s / 60, s % 60);
            if json {
                entry(
                    &format!("ERROR:q:failure number {i}\n"),
                    "stderr",
                    &format!("2026-03-28T14:{m:02}:{s:02}Z"),
                )
            } else {
                format!("2026-03-28 14:{m:02}:{s:02},000 - q - ERROR - failure number {i}\n")
            }
        })
        .collect()
}

/// 100 lines before the stepped ones, so a text file's origin (its first 4 KiB) is the same
/// before and after it grew.
fn with_preamble(mut lines: Vec<String>, json: bool) -> Vec<String> {
    let pre = (0..100).map(|i| {
        let text = format!("INFO:q:starting up, step {i}\n");
        if json {
            entry(&text, "stdout", "2026-03-28T14:29:00Z")
        } else {
            format!("2026-03-28 14:29:00,000 - q - INFO - starting up, step {i}\n")
        }
    });
    let mut out: Vec<String> = pre.collect();
    out.append(&mut lines);
    out
}

#[test]
fn lines_after_a_backwards_clock_step_are_not_taken_as_stored() {
    // Times 10, 20, 30, 5, 6, 7: a replay up to the fourth line, then of the whole file,
    // stores all six, as one clean replay does; in file order, whatever the clock did.
    for json in [true, false] {
        let lines = with_preamble(stepped_lines(&[10, 20, 30, 5, 6, 7], json), json);
        let name = if json { "x-json.log" } else { "queue.log" };
        let clean = Db::new();
        let p = clean.dir.path().join(name);
        std::fs::write(&p, lines.concat()).unwrap();
        clean.replay(&[p.to_string_lossy().into()], Some("q"));
        let errors = "SELECT count(*) FROM events WHERE kind = 'error'";
        assert_eq!(clean.count(errors), 6, "json {json}");

        let db = Db::new();
        let p = db.dir.path().join(name);
        std::fs::write(&p, lines[..104].concat()).unwrap();
        db.replay(&[p.to_string_lossy().into()], Some("q"));
        assert_eq!(db.count(errors), 4, "json {json}");
        std::fs::write(&p, lines.concat()).unwrap();
        let s = db.replay(&[p.to_string_lossy().into()], Some("q"));
        assert_eq!(s.already_stored, 104, "json {json}");
        assert_eq!(db.count(errors), 6, "json {json}");
        assert_eq!(db.counts(), clean.counts(), "json {json}");
        let messages = |db: &Db| -> Vec<(String, String)> {
            let conn = db.conn();
            let mut st = conn
                .prepare("SELECT ts, message FROM events WHERE kind = 'error' ORDER BY substr(message, -1)")
                .unwrap();
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let m = messages(&db);
        assert_eq!(m, messages(&clean), "json {json}");
        // Each line keeps its own time: the fourth is before the third.
        assert!(m[3].0 < m[2].0, "json {json}: {m:?}");
        // Again: nothing more.
        let s = db.replay(&[p.to_string_lossy().into()], Some("q"));
        assert_eq!(s.already_stored, 106, "json {json}");
        assert_eq!(db.count(errors), 6, "json {json}");
    }
}

#[test]
fn a_step_back_to_an_earlier_line_time_is_a_new_line() {
    // 10, 20, 10: the third line has the first one's time but is a line of its own.
    for json in [true, false] {
        let db = Db::new();
        let p = db
            .dir
            .path()
            .join(if json { "x-json.log" } else { "q.log" });
        std::fs::write(&p, stepped_lines(&[10, 20, 10], json).concat()).unwrap();
        db.replay(&[p.to_string_lossy().into()], Some("q"));
        assert_eq!(
            db.count("SELECT count(*) FROM events WHERE kind = 'error'"),
            3,
            "json {json}"
        );
    }
}

/// `copies` of the NaN run, two hours apart: each raises its own TrainingLossNonFinite.
fn nan_log(copies: usize) -> String {
    let text = std::fs::read_to_string(fixture("ultralytics/nan-json.log")).unwrap();
    let mut out = String::new();
    for copy in 0..copies {
        for line in text.lines() {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            let t = chrono::DateTime::parse_from_rfc3339(v["time"].as_str().unwrap()).unwrap()
                + chrono::Duration::hours(2 * copy as i64);
            v["time"] = serde_json::Value::String(
                t.to_utc()
                    .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            );
            out.push_str(&v.to_string());
            out.push('\n');
        }
    }
    out
}

#[test]
fn two_replays_of_one_file_at_once_resolve_no_alert_before_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("0123456789ab-json.log");
    std::fs::write(&log, nan_log(1500)).unwrap();
    let log = log.to_string_lossy().into_owned();
    let clean = Db::new();
    clean.replay(std::slice::from_ref(&log), Some("gpu"));
    let alerts = "SELECT count(*) FROM alerts WHERE alertname = 'TrainingLossNonFinite'";
    assert_eq!(clean.count(alerts), 1500);

    let db = Db::new();
    // Two processes at once, the second a moment later.
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_trainwatch"))
            .args(["replay", "--container", "gpu", &log])
            .env("TRAINWATCH_DB", &db.path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut a = spawn();
    std::thread::sleep(std::time::Duration::from_millis(150));
    let mut b = spawn();
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    assert_eq!(
        db.count("SELECT count(*) FROM alerts WHERE resolved_at < started_at"),
        0
    );
    assert_eq!(db.count(alerts), 1500);
    assert_eq!(db.counts(), clean.counts());
}

/// Thousands of small archives (one per container, as a CI-like churn leaves them): once a
/// container's archive is read, the alert engine keeps nothing of it but its firing alerts, so
/// the state committed with every batch stays small and replay time grows linearly.
#[test]
fn state_kept_per_container_ends_with_its_archive() {
    let db = Db::new();
    let dir = db.dir.path().join("many");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..300 {
        let mut log = String::new();
        for j in 0..5 {
            log.push_str(&format!(
                "{{\"timestamp\":\"2026-12-01T10:{j:02}:00Z\",\"level\":\"INFO\",\"service\":\"q\",\"message\":\"Processed 1 messages\",\"context\":{{\"offset\":{j}}}}}\n"
            ));
        }
        log.push_str("ERROR:q:Failed to process message x\n");
        if i == 7 {
            // One that leaves an alert firing: its clock is kept for it.
            log.push_str("ERROR:q:RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB\n");
        }
        std::fs::write(dir.join(format!("c{i:03}.log")), log).unwrap();
    }
    let s = db.replay(&[dir.to_string_lossy().into()], None);
    assert_eq!(s.files, 300);
    assert_eq!(
        db.count("SELECT count(*) FROM metric_samples WHERE name = 'queue_offset'"),
        300 * 5
    );
    let state: serde_json::Value =
        serde_json::from_str(&db.text("SELECT state FROM alert_engine").unwrap()).unwrap();
    let clocks = state["clocks"].as_object().unwrap();
    assert_eq!(clocks.keys().collect::<Vec<_>>(), ["c007"], "{state}");
    assert!(
        state["outcomes"].as_object().is_none_or(|o| o.is_empty()),
        "{state}"
    );
    assert_eq!(
        db.count(
            "SELECT count(*) FROM alerts WHERE alertname = 'GpuOutOfMemory' AND status = 'firing'"
        ),
        1
    );
}
