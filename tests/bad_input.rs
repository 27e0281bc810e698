//! Bad input is a counted, logged skip and never loses the good records around it.

use std::io::Write;

use crate::util::{Db, bin, entry};

fn write_log(db: &Db, name: &str, bytes: &[u8]) -> String {
    let p = db.dir.path().join(name);
    std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn damaged_json_file_keeps_good_records() {
    let db = Db::new();
    let mut data = Vec::new();
    data.extend(entry("ERROR:q:first\n", "stderr", "2026-03-28T14:30:00Z").as_bytes());
    data.extend(b"{\"log\":\"ERROR:q:cut sho");
    data.extend(b"\n");
    data.extend(b"{\"log\":\"ERROR:q:bad \xff\xfe bytes\\n\",\"stream\":\"stderr\",\"time\":\"2026-03-28T14:30:01Z\"}\n");
    data.extend(
        entry(
            "ERROR:q:ctrl \u{0007}\u{0000} chars\n",
            "stderr",
            "2026-03-28T14:30:02Z",
        )
        .as_bytes(),
    );
    data.extend(
        entry(
            &format!("ERROR:q:huge {}\n", "word ".repeat(1 << 18)),
            "stderr",
            "2026-03-28T14:30:03Z",
        )
        .as_bytes(),
    );
    data.extend(entry("ERROR:q:earlier clock\n", "stderr", "2026-03-28T14:29:00Z").as_bytes());
    data.extend(
        entry(
            "{\"level\":\"ERROR\",\"message\":\"trunc",
            "stdout",
            "2026-03-28T14:30:04Z",
        )
        .as_bytes(),
    );
    data.extend(entry("ERROR:q:last\n", "stderr", "2026-03-28T14:30:05Z").as_bytes());
    let f = write_log(&db, "bad-json.log", &data);
    let s = db.replay(&[f], None);
    assert_eq!(s.skips.by_reason.get("invalid_json"), Some(&1));
    assert_eq!(s.skips.by_reason.get("invalid_utf8_replaced"), Some(&1));
    assert_eq!(s.skips.by_reason.get("clock_skew"), Some(&1));
    let msgs: Vec<String> = db
        .conn()
        .prepare("SELECT message FROM events WHERE kind = 'error' ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(msgs.len(), 6, "{msgs:?}");
    assert_eq!(msgs[0], "ERROR:q:first");
    assert_eq!(msgs[1], "ERROR:q:bad \u{fffd}\u{fffd} bytes");
    assert!(msgs[3].len() > 1 << 20, "a 1 MiB line is kept whole");
    assert_eq!(msgs[5], "ERROR:q:last");
    // The unterminated, truncated service JSON line is kept as text and flagged.
    assert_eq!(
        db.text(
            "SELECT message FROM events WHERE json_extract(context, '$.unparsed') = 'invalid_json'"
        )
        .unwrap(),
        r#"{"level":"ERROR","message":"trunc"#
    );
    assert_eq!(s.skips.by_reason.get("invalid_service_json"), Some(&1));
}

#[test]
fn truncated_gzip_in_a_rotated_set() {
    let db = Db::new();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for i in 0..3000 {
        enc.write_all(
            entry(
                &format!("WARNING:q:old {i}\n"),
                "stderr",
                &format!("2026-03-28T14:{:02}:{:02}Z", i / 60 % 60, i % 60),
            )
            .as_bytes(),
        )
        .unwrap();
    }
    let gz = enc.finish().unwrap();
    write_log(&db, "c-json.log.1.gz", &gz[..gz.len() / 2]);
    write_log(
        &db,
        "c-json.log",
        entry("WARNING:q:current\n", "stderr", "2026-03-28T15:00:00Z").as_bytes(),
    );
    let s = db.replay(&[db.dir.path().to_string_lossy().into()], None);
    assert_eq!(s.skips.by_reason.get("truncated_gzip"), Some(&1));
    let n = db.count("SELECT count(*) FROM events WHERE kind = 'warning'");
    assert!(n > 100 && n < 3001, "kept what was readable: {n}");
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE message = 'WARNING:q:current'"),
        1
    );
}

#[test]
fn missing_file_is_a_clear_error() {
    let db = Db::new();
    let parser = trainwatch::parse::Parser::default();
    let err = trainwatch::pipeline::replay(
        &["/nonexistent/x-json.log".into()],
        None,
        db.path.clone(),
        &parser,
    )
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/x-json.log"), "{err}");
}

#[test]
fn nan_and_inf_in_service_json() {
    let db = Db::new();
    let lines = [
        r#"{"timestamp":"2026-03-28T14:30:00Z","level":"INFO","service":"training","message":"Epoch 1/3 completed","context":{"epoch":1,"loss":0.5,"mAP50":0.1,"mAP50_95":0.05}}"#,
        r#"{"timestamp":"2026-03-28T14:31:00Z","level":"INFO","service":"training","message":"Epoch 2/3 completed","context":{"epoch":2,"loss":NaN,"mAP50":0.1,"mAP50_95":0.05}}"#,
        r#"{"timestamp":"2026-03-28T14:32:00Z","level":"INFO","service":"training","message":"Epoch 3/3 completed","context":{"epoch":3,"loss":Infinity}}"#,
    ];
    let f = write_log(&db, "svc.log", (lines.join("\n") + "\n").as_bytes());
    db.replay(&[f], Some("trainer"));
    assert_eq!(db.count("SELECT count(*) FROM training_epochs"), 3);
    assert_eq!(
        db.count("SELECT count(*) FROM training_epochs WHERE non_finite = 1"),
        2
    );
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE kind = 'loss_non_finite'"),
        2
    );
    // Service lines carry their own time in a plain text file.
    assert_eq!(
        db.text("SELECT ended_at FROM training_epochs WHERE epoch = 2")
            .unwrap(),
        "2026-03-28T14:31:00.000000000Z"
    );
}

#[test]
fn database_locked_by_another_writer_is_waited_for() {
    // Another process holds the write lock for a while: replay waits (busy_timeout) instead of
    // failing with "database is locked", and stores everything.
    let db = Db::new();
    let f = write_log(
        &db,
        "a-json.log",
        entry("ERROR:q:first\n", "stderr", "2026-03-28T14:30:00Z").as_bytes(),
    );
    db.replay(&[f], None);
    let holder = rusqlite::Connection::open(&db.path).unwrap();
    holder
        .execute_batch(
            "BEGIN IMMEDIATE; INSERT INTO cursors VALUES ('x', 'stdout', 'o', 0, 0, 'now');",
        )
        .unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        holder.execute_batch("ROLLBACK").unwrap();
    });
    let g = write_log(
        &db,
        "b-json.log",
        entry("ERROR:q:second\n", "stderr", "2026-03-28T14:31:00Z").as_bytes(),
    );
    let start = std::time::Instant::now();
    let s = db.replay(&[g], None);
    release.join().unwrap();
    assert!(
        start.elapsed() >= std::time::Duration::from_millis(1000),
        "replay waited for the lock"
    );
    assert_eq!(s.write.events_inserted, 1);
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE kind = 'error'"),
        2
    );
}

#[test]
fn a_file_that_vanished_is_a_counted_skip() {
    // The first file of a set disappears between listing and reading (rotation deleted it):
    // counted and logged, the rest is read.
    let db = Db::new();
    let gone = db.dir.path().join("c-json.log.1");
    let kept = write_log(
        &db,
        "c-json.log",
        entry("WARNING:q:kept\n", "stderr", "2026-03-28T14:30:00Z").as_bytes(),
    );
    let mut skips = trainwatch::source::Skips::default();
    let mut chain = trainwatch::source::FileChain::new(vec![gone, kept.into()], 1 << 20);
    let mut buf = Vec::new();
    let line = chain
        .next_line(&mut buf, &mut skips)
        .expect("the kept file's line");
    assert!(line.ended);
    assert!(String::from_utf8_lossy(&buf).contains("WARNING:q:kept"));
    assert!(chain.next_line(&mut buf, &mut skips).is_none());
    assert_eq!(skips.by_reason.get("file_unreadable"), Some(&1));
}

#[test]
fn a_lock_held_past_the_busy_timeout_is_named_in_the_error() {
    // Another process holds the write lock longer than the busy timeout: the replay fails, and
    // says the database is locked (not only that its writer stopped).
    let db = Db::new();
    let first = write_log(
        &db,
        "a-json.log",
        entry("ERROR:q:first\n", "stderr", "2026-03-28T14:30:00Z").as_bytes(),
    );
    db.replay(&[first], None);
    let many: String = (0..20_000)
        .map(|i| {
            entry(
                &format!("ERROR:q:failure {i}\n"),
                "stderr",
                &format!(
                    "2026-03-28T15:{:02}:{:02}.{i:06}Z",
                    i / 3600 % 60,
                    i / 60 % 60
                ),
            )
        })
        .collect();
    let g = write_log(&db, "b-json.log", many.as_bytes());
    let holder = rusqlite::Connection::open(&db.path).unwrap();
    holder
        .execute_batch(
            "BEGIN IMMEDIATE; INSERT INTO cursors VALUES ('x', 'stdout', 'o', 0, 0, 'now');",
        )
        .unwrap();
    let out = bin(&["replay", &g], &db.path);
    holder.execute_batch("ROLLBACK").unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("database is locked"), "{err}");
    assert!(!err.contains("stopped unexpectedly"), "{err}");
}

/// A JSON logger's message with terminal controls (`\u001b]0;...\u0007` retitles a window,
/// `\u001b[2J` clears the screen, an OSC 8 link disguises itself, U+009B is a one-character CSI)
/// is stored and alerted on without them, and no table output prints one.
#[test]
fn terminal_controls_in_json_messages_never_reach_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ctl.log");
    std::fs::write(
        &log,
        concat!(
            r#"{"timestamp":"2026-12-07T07:00:00Z","level":"ERROR","message":"\u001b]0;pwned\u0007\u001b[2Jtorch.OutOfMemoryError: CUDA out of memory \u009b31m(see \u001b]8;;http://evil/\u001b\\docs\u001b]8;;\u001b\\)"}"#,
            "\n"
        ),
    )
    .unwrap();
    let db = Db::new();
    db.replay(&[log.to_string_lossy().into_owned()], Some("c"));
    let message = db
        .text("SELECT message FROM events WHERE kind = 'gpu_oom'")
        .unwrap();
    assert_eq!(
        message,
        "torch.OutOfMemoryError: CUDA out of memory 31m(see docs)"
    );
    let summary = db.text("SELECT summary FROM alerts").unwrap();
    assert!(!summary.chars().any(char::is_control), "{summary:?}");
    for args in [
        vec!["sql", "SELECT message, summary FROM events, alerts"],
        vec!["alerts", "--all"],
        vec!["status"],
    ] {
        let o = crate::util::bin(&args, &db.path);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            !out.chars().any(|c| c.is_control() && c != '\n'),
            "{args:?}: {out:?}"
        );
    }
}

/// A host clock set ahead, then corrected: the record stamped 2099 is kept and counted as
/// `clock_skew`; it holds no gauge and no "last line" in the future, does not count as fresh
/// data, and is pruned by when it arrived (its own time never comes).
#[test]
fn a_record_stamped_in_the_future_is_counted_does_not_stick_and_is_pruned_by_arrival() {
    let db = Db::new();
    let now = trainwatch::time::now_ns();
    let t = |ago_s: i64| trainwatch::time::format_ns(now - ago_s * 1_000_000_000);
    let line = |ts: &str, offset: u64| {
        format!(
            "{{\"timestamp\":\"{ts}\",\"level\":\"INFO\",\"service\":\"queue\",\"message\":\"Processed 1 messages\",\"context\":{{\"offset\":{offset}}}}}\n"
        )
    };
    let log = [
        line(&t(7200), 100),
        line(&t(3600), 300),
        line("2099-01-01T00:00:00Z", 200),
    ]
    .concat();
    let p = write_log(&db, "queue.log", log.as_bytes());
    let s = db.replay(&[p], Some("queue"));
    assert_eq!(s.skips.by_reason.get("clock_skew"), Some(&1), "{s:?}");
    // Only the future rows carry when they arrived.
    assert_eq!(
        db.count("SELECT count(*) FROM event_log WHERE arrived_at IS NOT NULL"),
        1
    );
    assert_eq!(
        db.text("SELECT ts FROM event_log WHERE arrived_at IS NOT NULL")
            .as_deref(),
        Some("2099-01-01T00:00:00.000000000Z")
    );
    assert!(db.count("SELECT count(*) FROM metric_log WHERE arrived_at IS NOT NULL") >= 1);
    // Later lines of the present take the gauge and the last line back from the future.
    let later = line(&t(60), 400);
    let p2 = write_log(&db, "queue-later.log", later.as_bytes());
    db.replay(&[p2], Some("queue"));
    assert_eq!(
        db.conn()
            .query_row(
                "SELECT value FROM gauges WHERE container = 'queue' AND name = 'queue_offset'",
                [],
                |r| r.get::<_, f64>(0)
            )
            .unwrap(),
        400.0
    );
    // The newest record that counts is a minute old, not 2099.
    let o = bin(&["health", "--format", "json"], &db.path);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let newest = doc["newest_record_at"].as_str().unwrap().to_string();
    assert_eq!(newest, t(60), "{doc}");
    // 40 days after they arrived, retention (30 days) takes the future rows by their arrival.
    let rw = rusqlite::Connection::open(&db.path).unwrap();
    for table in ["event_log", "metric_log"] {
        rw.execute(
            &format!(
                "UPDATE {table} SET arrived_at = arrived_at - 40 * 86400 * 1000000000 WHERE arrived_at IS NOT NULL"
            ),
            [],
        )
        .unwrap();
    }
    drop(rw);
    let events_before = db.count("SELECT count(*) FROM event_log");
    let o = bin(&["prune"], &db.path);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        db.count("SELECT count(*) FROM event_log WHERE ts LIKE '2099%'"),
        0
    );
    assert_eq!(
        db.count("SELECT count(*) FROM metric_log WHERE ts LIKE '2099%'"),
        0
    );
    assert_eq!(
        db.count("SELECT count(*) FROM event_log"),
        events_before - 1
    );
}
