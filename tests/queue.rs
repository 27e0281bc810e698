//! The annotation queue's logs (synthetic: its source is not public): a timed-rotation set,
//! counters, offsets, grouped tracebacks and redaction.

use crate::util::{Db, entry, fixture};

fn replay_queue() -> (Db, trainwatch::pipeline::Summary) {
    let db = Db::new();
    let s = db.replay(
        &[format!("{}/queue.log*", fixture("queue").display())],
        None,
    );
    (db, s)
}

#[test]
fn counters_offsets_and_failures() {
    let (db, _) = replay_queue();
    // 30 lines on the 27th (3 failures), 20 on the 28th, then "Processed 20 messages".
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE kind = 'annotation_processed'"),
        27 + 20 + 1
    );
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE kind = 'annotation_failed'"),
        3
    );
    let last = |name: &str| {
        db.conn()
            .query_row(
                "SELECT value FROM metric_samples WHERE name = ?1 ORDER BY ts DESC LIMIT 1",
                [name],
                |r| r.get::<_, f64>(0),
            )
            .unwrap()
    };
    assert_eq!(last("queue_messages_processed"), 27.0 + 20.0 + 20.0);
    assert_eq!(last("queue_messages_failed"), 3.0);
    assert_eq!(last("queue_offset"), 4150.0);
    // Each failure's traceback is part of its record.
    let msg = db
        .text("SELECT message FROM events WHERE kind = 'annotation_failed' ORDER BY ts LIMIT 1")
        .unwrap();
    assert!(msg.ends_with("KeyError: 'annotation'"), "{msg}");
    assert_eq!(
        db.text("SELECT container FROM events LIMIT 1").as_deref(),
        Some("queue")
    );
    // The dated file is older than queue.log: offsets ascend in time order.
    let offsets: Vec<f64> = db
        .conn()
        .prepare("SELECT value FROM metric_samples WHERE name = 'queue_offset' ORDER BY ts")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
}

#[test]
fn secrets_and_payloads_never_reach_the_store() {
    let (db, _) = replay_queue();
    let dump: String = db
        .conn()
        .prepare("SELECT message || ' ' || context FROM events")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
        .join("\n");
    for secret in ["S3cretPass", "ak_live_12345", "eyJhbGciOiJIUzI1NiJ9"] {
        assert!(!dump.contains(secret), "{secret} leaked");
    }
    assert!(
        dump.contains("rabbitmq-stream://annotator:[REDACTED]@rabbit:5552/"),
        "{dump}"
    );
    assert!(dump.contains("token=[REDACTED]"));
    assert!(
        dump.contains("image=[base64 1200 chars redacted]"),
        "{dump}"
    );
}

#[test]
fn config_patterns_add_kinds() {
    let db = Db::new();
    let p = db.dir.path().join("worker.log");
    std::fs::write(
        &p,
        "Handled batch of 7 annotations\nHandled batch of 5 annotations\n",
    )
    .unwrap();
    let cfg = trainwatch::config::Config::parse(
        "[[patterns]]\nregex = '^Handled batch of (?P<n>\\d+) annotations'\nkind = 'annotation_processed'\ncounter = 'queue_messages_processed'\nadd = 'n'\n",
        std::path::Path::new("t.toml"),
    )
    .unwrap();
    let parser = trainwatch::parse::Parser::new(cfg.patterns().unwrap());
    trainwatch::pipeline::replay(
        &[p.to_string_lossy().into()],
        None,
        db.path.clone(),
        &parser,
    )
    .unwrap();
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE kind = 'annotation_processed'"),
        2
    );
    assert_eq!(
        db.conn()
            .query_row(
                "SELECT max(value) FROM metric_samples WHERE name = 'queue_messages_processed'",
                [],
                |r| r.get::<_, f64>(0)
            )
            .unwrap(),
        12.0
    );
}

#[test]
fn every_secret_shape_is_redacted_in_every_table() {
    // fixtures/secrets/shapes.jsonl (also the redaction unit test's table), as Python logging
    // lines, as service JSON messages and contexts, and as a name/value pair in a context.
    let shapes: Vec<serde_json::Value> = std::fs::read_to_string(fixture("secrets/shapes.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut log = String::new();
    for (i, s) in shapes.iter().enumerate() {
        let input = s["input"].as_str().unwrap();
        let t = |k: usize| format!("2026-03-28T14:{:02}:{:02}.{k}Z", i / 60, i % 60);
        log.push_str(&entry(
            &format!("ERROR:annotation_queue:{input}\n"),
            "stderr",
            &t(1),
        ));
        let service = serde_json::json!({
            "timestamp": t(2), "level": "ERROR", "service": "annotation_queue",
            "message": input,
            "context": {"detail": input, "env": [{"name": "CDN_PASSWORD", "value": s["secret"]}]},
        });
        log.push_str(&entry(&format!("{service}\n"), "stdout", &t(2)));
    }
    let db = Db::new();
    let p = db.dir.path().join("q-json.log");
    std::fs::write(&p, log).unwrap();
    let s = db.replay(&[p.to_string_lossy().into()], Some("queue"));
    assert!(s.records >= 2 * shapes.len() as u64, "{s:?}");
    let dump = crate::util::dump_all(&db);
    assert!(
        db.count("SELECT count(*) FROM events WHERE kind = 'error'") >= shapes.len() as i64,
        "{dump}"
    );
    for s in &shapes {
        let secret = s["secret"].as_str().unwrap();
        assert!(!dump.contains(secret), "{secret} leaked:\n{dump}");
    }
    // Who leaks, by kind, never what: every kind of the table is counted and alerted.
    for kind in ["token", "password", "key", "image_payload"] {
        assert_eq!(
            db.count(&format!(
                "SELECT count(*) FROM alerts WHERE alertname = 'SecretsInLogs'
                 AND json_extract(labels, '$.kind') = '{kind}'
                 AND json_extract(labels, '$.container') = 'queue'"
            )),
            1,
            "{kind}: {dump}"
        );
        assert!(
            db.count(&format!(
                "SELECT CAST(max(value) AS INTEGER) FROM metric_samples
                 WHERE name = 'redactions_{kind}' AND container = 'queue'"
            )) >= 2,
            "{kind}"
        );
    }
}
