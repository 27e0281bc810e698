//! JSON logs as real Python logging libraries write them (fixtures/jsonlog: python-json-logger,
//! structlog, loguru, ecs-logging and the service's own format, captured from the real
//! libraries), replayed and followed live.

use crate::docker::{Lab, capture_entries, docker_ready};
use crate::util::{Db, fixture_str};

/// Every set-up captured: (fixture name, library).
const LIBS: [&str; 7] = [
    "pjl",
    "pjl-renamed",
    "structlog",
    "structlog-dict",
    "loguru",
    "ecs",
    "seed",
];

fn replayed(name: &str) -> Db {
    let db = Db::new();
    db.replay(
        &[fixture_str(&format!("jsonlog/{name}-json.log"))],
        Some(name),
    );
    db
}

/// The training of `jsonlog_train.py --scenario train`, under each library: one run, started by
/// its `Training started` record with the settings of its context, three epochs with their
/// values, completed by `Training completed`; the NaN of a training step and the checkpoint that
/// could not be saved (a `logger.exception` of an OSError) are events and alerts; no record is
/// left without its message, level or time.
#[test]
fn every_library_s_training_is_one_completed_run_with_its_epochs_nan_and_failed_save() {
    for lib in LIBS {
        let name = format!("{lib}-train");
        let db = replayed(&name);
        let run = db.text(&format!(
            "SELECT status || ' ' || epochs_total || ' ' || epochs_done || ' ' || model
             || ' ' || json_extract(params, '$.imgsz') || ' ' || json_extract(params, '$.batch')
             FROM training_runs WHERE container = '{name}'"
        ));
        assert_eq!(
            run.as_deref(),
            Some("completed 3 3 yolo11n.pt 640 16"),
            "{lib}"
        );
        let epochs = db.text(&format!(
            "SELECT group_concat(epoch || ':' || loss || ':' || map50 || ':' || map50_95, ' ')
             FROM (SELECT * FROM training_epochs WHERE container = '{name}' ORDER BY epoch)"
        ));
        assert_eq!(
            epochs.as_deref(),
            Some("1:1.9:0.4:0.2 2:1.6:0.5:0.25 3:1.4:0.6:0.3"),
            "{lib}"
        );
        let count = |kind: &str| {
            db.count(&format!(
                "SELECT count(*) FROM events WHERE container = '{name}' AND kind = '{kind}'"
            ))
        };
        assert_eq!(
            count("loss_non_finite"),
            1,
            "{lib}: the NaN of a training step"
        );
        assert_eq!(
            db.count(&format!(
                "SELECT json_extract(context, '$.epoch') FROM events
                 WHERE container = '{name}' AND kind = 'loss_non_finite'"
            )),
            2,
            "{lib}"
        );
        assert_eq!(count("checkpoint_save_failed"), 1, "{lib}");
        assert_eq!(count("error"), 1, "{lib}: the logged exception is an error");
        let tb = db
            .text(&format!(
                "SELECT json_extract(context, '$.traceback') FROM events
                 WHERE container = '{name}' AND kind = 'error'"
            ))
            .unwrap_or_default();
        assert!(
            tb.starts_with("Traceback (most recent call last):")
                && tb.contains("No space left on device"),
            "{lib}: {tb}"
        );
        assert_eq!(count("training_started"), 1, "{lib}");
        assert_eq!(count("training_completed"), 1, "{lib}");
        assert_eq!(
            db.count(&format!(
                "SELECT count(*) FROM events WHERE container = '{name}' AND message = ''"
            )),
            0,
            "{lib}: every record has its message"
        );
        // Times are the records' own (the capture's day), levels their own.
        assert_eq!(
            db.count(&format!(
                "SELECT count(*) FROM events WHERE container = '{name}'
                 AND substr(ts, 1, 10) <> '2026-12-07'"
            )),
            0,
            "{lib}"
        );
        assert_eq!(
            db.text(&format!(
                "SELECT level FROM events WHERE container = '{name}' AND kind = 'error'"
            ))
            .as_deref(),
            Some("ERROR"),
            "{lib}"
        );
        let alerts = db.text(&format!(
            "SELECT group_concat(alertname, ' ') FROM (SELECT alertname FROM alerts
             WHERE labels ->> 'container' = '{name}' ORDER BY alertname)"
        ));
        assert_eq!(
            alerts.as_deref(),
            Some("CheckpointSaveFailed TrainingLossNonFinite"),
            "{lib}"
        );
    }
}

/// `logger.exception()` of a CUDA OOM under each library is one `error` with its traceback
/// and a `gpu_oom` (firing `GpuOutOfMemory`); the uncaught traceback that follows on stderr
/// fails the run with the exception's line.
#[test]
fn every_library_s_logged_cuda_oom_is_an_error_and_a_gpu_oom() {
    for lib in LIBS {
        let name = format!("{lib}-crash");
        let db = replayed(&name);
        let logged = db
            .text(&format!(
                "SELECT json_extract(context, '$.traceback') FROM events WHERE container = '{name}'
                 AND kind = 'error' AND message = 'Training step failed'"
            ))
            .unwrap_or_default();
        assert!(
            logged.contains("OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"),
            "{lib}: {logged}"
        );
        assert_eq!(
            db.count(&format!(
                "SELECT count(*) FROM events WHERE container = '{name}' AND kind = 'gpu_oom'"
            )),
            2,
            "{lib}: the logged one and the uncaught one"
        );
        assert_eq!(
            db.count(&format!(
                "SELECT count(*) FROM events WHERE container = '{name}' AND kind = 'gpu_oom'
                 AND json_extract(context, '$.epoch') = 2"
            )),
            1,
            "{lib}: the logged one keeps its record's epoch"
        );
        let run = db.text(&format!(
            "SELECT status || ' ' || failure FROM training_runs WHERE container = '{name}'"
        ));
        assert!(
            run.as_deref()
                .is_some_and(|r| r.starts_with("failed torch.OutOfMemoryError: CUDA out of memory")),
            "{lib}: {run:?}"
        );
        assert_eq!(
            db.count(&format!(
                "SELECT count(*) FROM alerts WHERE alertname = 'GpuOutOfMemory'
                 AND labels ->> 'container' = '{name}'"
            )),
            1,
            "{lib}"
        );
    }
}

/// A plain-text `logging` ERROR record whose traceback ends in a CUDA OOM is an `error` and a
/// `gpu_oom`; a NaN in any loss-like field of any JSON record is a `loss_non_finite`.
#[test]
fn a_text_record_s_traceback_and_a_nan_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("mixed.log");
    std::fs::write(
        &log,
        "2026-12-07 07:04:06,196 - trainer - ERROR - Training step failed\n\
         Traceback (most recent call last):\n  File \"/app/train.py\", line 3, in step\n    loss.backward()\n\
         torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.\n\
         {\"time\": \"2026-12-07T07:04:07Z\", \"level\": \"info\", \"msg\": \"step\", \"train/box_loss\": NaN}\n\
         {\"time\": \"2026-12-07T07:04:08Z\", \"level\": \"info\", \"msg\": \"step\", \"metrics\": {\"val/cls_loss\": \"inf\"}}\n\
         {\"time\": \"2026-12-07T07:04:09Z\", \"level\": \"info\", \"msg\": \"step\", \"loss\": 0.5, \"lr\": \"nan\"}\n",
    )
    .unwrap();
    let db = Db::new();
    db.replay(&[log.to_string_lossy().into_owned()], Some("m"));
    assert_eq!(
        db.text("SELECT group_concat(kind, ' ') FROM (SELECT kind FROM events ORDER BY ts, kind)")
            .as_deref(),
        Some("error gpu_oom loss_non_finite loss_non_finite log")
    );
    assert_eq!(
        db.text("SELECT group_concat(json_extract(context, '$.non_finite'), ' ') FROM events WHERE kind = 'loss_non_finite'")
            .as_deref(),
        Some("train/box_loss=NaN val/cls_loss=inf")
    );
}

/// A queue consumer in the seed's words counts with no rule written.
#[test]
fn the_queue_in_the_seed_s_words_counts() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("queue.log");
    let mut text = String::new();
    for i in 0..381 {
        text.push_str(&format!(
            "2026-12-07 07:{:02}:{:02},000 - consumer - INFO - Annotation {i:08x} saved ({} labels)\n",
            i / 60,
            i % 60,
            i % 5
        ));
    }
    text.push_str("2026-12-07 07:07:00,000 - consumer - ERROR - Failed to process message\n");
    text.push_str("2026-12-07 07:07:01,000 - consumer - WARNING - skipped corrupt image 17.jpg\n");
    std::fs::write(&log, text).unwrap();
    let db = Db::new();
    db.replay(&[log.to_string_lossy().into_owned()], Some("queue"));
    let gauge = |n: &str| {
        db.count(&format!(
            "SELECT CAST(value AS INTEGER) FROM gauges WHERE container = 'queue' AND name = '{n}'"
        ))
    };
    assert_eq!(gauge("queue_messages_processed"), 381);
    assert_eq!(gauge("queue_messages_failed"), 2);
}

/// Followed live: a busybox container prints loguru's captured bytes (the format no other
/// library shares): its run fails with the OOM, both OOMs are events.
#[test]
fn a_loguru_service_followed_live() {
    if !docker_ready() {
        return;
    }
    let mut lab = Lab::new("loguru", "");
    lab.start_watch(&[]);
    let entries = capture_entries("jsonlog/loguru-crash-json.log");
    let c = lab.play_then("svc", &entries, 2000, "exit 1", &[]);
    lab.wait_exit(&c);
    lab.wait_for(
        &format!(
            "SELECT count(*) FROM training_runs WHERE container = '{c}' AND status = 'failed'
             AND model = 'yolo11n.pt' AND epochs_total = 5 AND failure LIKE 'torch.OutOfMemoryError: CUDA out of memory%'"
        ),
        1,
    );
    lab.wait_for(
        &format!("SELECT count(*) FROM events WHERE container = '{c}' AND kind = 'gpu_oom'"),
        2,
    );
    assert_eq!(
        lab.db.count(&format!(
            "SELECT count(*) FROM events WHERE container = '{c}' AND kind = 'epoch_completed'"
        )),
        1
    );
    lab.stop_watch();
}
