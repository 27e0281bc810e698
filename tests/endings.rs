//! How trainings really end, followed live from the real daemon with a real webhook receiver:
//! each test asserts the pages the receiver got, in order, and nothing more.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::alerts::Receiver;
use crate::docker::{Lab, capture_entries, docker_ready};
use crate::util::bin;

/// A lab whose `watch` pages the webhook receiver `rx`, with `alerts` (TOML lines) added to
/// its `[alerts]`.
fn lab(name: &str, rx: &Receiver, alerts: &str) -> Lab {
    Lab::new(
        name,
        &format!(
            "[[notify.receivers]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n\n[alerts]\n{alerts}\n",
            rx.url
        ),
    )
}

/// What the receiver got: `event alertname container`.
fn pages(rx: &Receiver) -> Vec<String> {
    rx.received()
        .iter()
        .map(|v| {
            format!(
                "{} {} {}",
                v["event"].as_str().unwrap_or("?"),
                v["alert"]["alertname"].as_str().unwrap_or("?"),
                v["alert"]["labels"]["container"].as_str().unwrap_or("-")
            )
        })
        .collect()
}

/// Waits until the receiver has `n` pages (60 s at most), then `quiet` more to see that no
/// other comes; returns them.
fn wait_pages(rx: &Receiver, lab: &Lab, n: usize, quiet: Duration) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while rx.received().len() < n {
        assert!(
            Instant::now() < deadline,
            "{n} pages expected, got {:?}; watch log:\n{}",
            pages(rx),
            lab.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(quiet);
    let got = rx.received();
    assert_eq!(
        got.len(),
        n,
        "{:?}; watch log:\n{}",
        pages(rx),
        lab.log_text()
    );
    got
}

fn summary(page: &Value) -> &str {
    page["alert"]["summary"].as_str().unwrap_or_default()
}

fn run_cli(lab: &Lab, args: &[&str]) -> (i32, String) {
    let o = bin(args, &lab.db.path);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code().unwrap_or(-1), text)
}

/// A real Ultralytics crash (an exception in a callback at epoch 2) whose process exits 1:
/// one `TrainingFailed` with the exception and the epoch; the exit that follows is the same
/// death and pages nothing more; `history`, `status` and the run's row say why.
#[test]
fn a_crash_that_exits_1_pages_training_failed_once_with_its_exception() {
    if !docker_ready() {
        return;
    }
    let rx = Receiver::start(0, 0);
    let mut lab = lab("crash", &rx, "");
    lab.start_watch(&[]);
    let entries = capture_entries("ultralytics/crash-json.log");
    let c = lab.play_then("train", &entries, 2000, "exit 1", &[]);
    lab.wait_exit(&c);
    lab.wait_for(
        &format!("SELECT count(*) FROM containers WHERE container = '{c}' AND exit_code = 1"),
        1,
    );
    let got = wait_pages(&rx, &lab, 1, Duration::from_secs(3));
    assert_eq!(pages(&rx), [format!("firing TrainingFailed {c}")]);
    let s = summary(&got[0]);
    assert!(
        s.contains("RuntimeError: simulated data loader failure at epoch 2"),
        "{s}"
    );
    assert!(s.contains("failed after epoch"), "{s}");
    assert_eq!(got[0]["alert"]["severity"], "high");
    let failure = format!("SELECT failure FROM training_runs WHERE container = '{c}'");
    assert_eq!(
        lab.db.text(&failure).as_deref(),
        Some("RuntimeError: simulated data loader failure at epoch 2")
    );
    let (_, history) = run_cli(&lab, &["history"]);
    assert!(
        history.contains("failed: RuntimeError: simulated data loader failure at epoch 2"),
        "{history}"
    );
    let (_, status) = run_cli(&lab, &["status"]);
    assert!(
        status.contains("why          RuntimeError: simulated data loader failure"),
        "{status}"
    );
    lab.stop_watch();
}

/// A real NaN run (Ultralytics gives up after its recoveries and raises) that exits 1: the
/// NaN pages at once, the failure once; neither is followed by an all-clear.
#[test]
fn a_nan_run_that_exits_1_pages_the_nan_then_the_failure_and_no_all_clear() {
    if !docker_ready() {
        return;
    }
    let rx = Receiver::start(0, 0);
    let mut lab = lab("nan", &rx, "");
    lab.start_watch(&[]);
    let entries = capture_entries("ultralytics/nan-json.log");
    let c = lab.play_then("train", &entries, 2000, "exit 1", &[]);
    lab.wait_exit(&c);
    let got = wait_pages(&rx, &lab, 2, Duration::from_secs(4));
    assert_eq!(
        pages(&rx),
        [
            format!("firing TrainingLossNonFinite {c}"),
            format!("firing TrainingFailed {c}")
        ]
    );
    assert!(
        summary(&got[1]).contains("RuntimeError: Training failed: NaN persisted for 4 epochs"),
        "{}",
        summary(&got[1])
    );
    assert_eq!(
        lab.db.count(&format!(
            "SELECT count(*) FROM alerts WHERE status = 'firing' AND labels ->> 'container' = '{c}'"
        )),
        2
    );
    lab.stop_watch();
}

/// A training killed mid-run (`docker kill`: 137), then removed: one `TrainingFailed` saying
/// so at its epoch; the container is `removed` on `status` with its stats gone, and after
/// `forget_removed_after` the alert resolves and the container leaves `status`; its run stays
/// in `history`.
#[test]
fn a_killed_then_removed_training_pages_once_and_is_let_go_after_forget_removed_after() {
    if !docker_ready() {
        return;
    }
    let rx = Receiver::start(0, 0);
    let mut lab = lab("gone", &rx, "forget_removed_after = \"6s\"");
    lab.start_watch(&[]);
    let entries: Vec<(String, bool)> = capture_entries("ultralytics/normal-json.log")
        .into_iter()
        .scan(false, |done, e| {
            if *done {
                return None;
            }
            *done = e.0.contains("5/10") && e.0.contains("100%");
            Some(e)
        })
        .collect();
    let c = lab.play_then("train", &entries, 1000, "/busybox sleep 3600", &[]);
    lab.wait_for(
        &format!("SELECT count(*) >= 5 FROM training_epochs WHERE container = '{c}'"),
        1,
    );
    let o = lab.docker().args(["kill", &c]).output().unwrap();
    assert!(o.status.success());
    let got = wait_pages(&rx, &lab, 1, Duration::from_secs(1));
    assert_eq!(pages(&rx), [format!("firing TrainingFailed {c}")]);
    assert_eq!(
        summary(&got[0]),
        format!("Training in {c} failed after epoch 5/10: exited with code 137 (SIGKILL)")
    );
    let o = lab.docker().args(["rm", &c]).output().unwrap();
    assert!(o.status.success());
    lab.wait_for(
        &format!("SELECT count(*) FROM containers WHERE container = '{c}' AND state = 'removed'"),
        1,
    );
    assert_eq!(
        lab.db.count(&format!(
            "SELECT count(*) FROM gauges WHERE container = '{c}'"
        )),
        0,
        "no figure of a removed container is current"
    );
    let (_, status) = run_cli(&lab, &["status"]);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Container") && l.contains(&c) && l.contains("removed")),
        "{status}"
    );
    // Forgotten: resolved, and off `status`.
    wait_pages(&rx, &lab, 2, Duration::from_secs(2));
    assert_eq!(
        pages(&rx),
        [
            format!("firing TrainingFailed {c}"),
            format!("resolved TrainingFailed {c}")
        ]
    );
    lab.wait_for(
        &format!("SELECT count(*) FROM containers WHERE container = '{c}'"),
        0,
    );
    let (_, status) = run_cli(&lab, &["status"]);
    assert!(!status.contains(&format!("Container  {c}")), "{status}");
    assert_eq!(
        lab.db
            .text(&format!(
                "SELECT status || ' ' || failure FROM training_runs WHERE container = '{c}'"
            ))
            .as_deref(),
        Some("failed exited with code 137 (SIGKILL)")
    );
    lab.stop_watch();
}

/// A `--rm` one-shot that crashes: its traceback is read before the daemon deletes its log.
#[test]
fn a_rm_one_shot_that_crashes_pages_training_failed() {
    if !docker_ready() {
        return;
    }
    let rx = Receiver::start(0, 0);
    let mut lab = lab("rm", &rx, "");
    lab.start_watch(&[]);
    let entries = capture_entries("ultralytics/crash-json.log");
    let c = lab.play_then("train", &entries, 20_000, "exit 1", &["--rm"]);
    let got = wait_pages(&rx, &lab, 1, Duration::from_secs(3));
    assert_eq!(pages(&rx), [format!("firing TrainingFailed {c}")]);
    assert!(
        summary(&got[0]).contains("RuntimeError: simulated data loader failure at epoch 2"),
        "{}",
        summary(&got[0])
    );
    lab.stop_watch();
}

/// Ctrl-C (`KeyboardInterrupt`, exit 130): the run is `interrupted`, and nobody is paged.
#[test]
fn ctrl_c_interrupts_the_run_and_pages_nobody() {
    if !docker_ready() {
        return;
    }
    let rx = Receiver::start(0, 0);
    let mut lab = lab("ctrlc", &rx, "");
    lab.start_watch(&[]);
    let mut entries: Vec<(String, bool)> = capture_entries("ultralytics/normal-json.log")
        .into_iter()
        .take(30)
        .collect();
    entries.push((
        "Traceback (most recent call last):\n  File \"/app/train.py\", line 52, in <module>\n    model.train(**kw)\n  File \"/usr/lib/python3/site-packages/torch/utils/data/dataloader.py\", line 1, in __next__\n    idx, data = self._get_data()\nKeyboardInterrupt\n".into(),
        true,
    ));
    let c = lab.play_then("train", &entries, 2000, "exit 130", &[]);
    lab.wait_exit(&c);
    lab.wait_for(
        &format!(
            "SELECT count(*) FROM training_runs WHERE container = '{c}' AND status = 'interrupted' AND failure = 'KeyboardInterrupt'"
        ),
        1,
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(pages(&rx), Vec::<String>::new());
    lab.stop_watch();
}

/// A traceback written a line every 0.4 s (4 s in all) is one error and one failure.
#[test]
fn a_slowly_written_traceback_is_one_record_and_one_page() {
    if !docker_ready() {
        return;
    }
    let rx = Receiver::start(0, 0);
    let mut lab = lab("slow", &rx, "");
    lab.start_watch(&[]);
    let lines = [
        "Traceback (most recent call last):",
        "  File \"/app/train.py\", line 52, in <module>",
        "    model.train(**kw)",
        "  File \"/usr/lib/python3/site-packages/ultralytics/engine/model.py\", line 898, in train",
        "    self.trainer.train()",
        "  File \"/usr/lib/python3/site-packages/ultralytics/engine/trainer.py\", line 262, in train",
        "    self._do_train()",
        "  File \"/usr/lib/python3/site-packages/ultralytics/data/utils.py\", line 410, in check_det_dataset",
        "    raise FileNotFoundError(m)",
        "FileNotFoundError: Dataset 'data/missing.yaml' images not found",
    ];
    let mut script = String::from(
        "echo 'engine/trainer: task=detect, mode=train, model=yolo11n.pt, data=data/missing.yaml, epochs=10, resume=False, save_dir=/runs/detect/train'; echo 'Starting training for 10 epochs...'; /busybox sleep 1; ",
    );
    for l in lines {
        script.push_str(&format!(
            "echo '{}' >&2; /busybox usleep 400000; ",
            l.replace('\'', "'\\''")
        ));
    }
    script.push_str("exit 1");
    let c = lab.run("train", false, &script);
    lab.wait_exit(&c);
    let got = wait_pages(&rx, &lab, 1, Duration::from_secs(4));
    assert_eq!(pages(&rx), [format!("firing TrainingFailed {c}")]);
    assert!(
        summary(&got[0]).ends_with(
            "failed before its first epoch: FileNotFoundError: Dataset 'data/missing.yaml' images not found"
        ),
        "{}",
        summary(&got[0])
    );
    assert_eq!(
        lab.db.count(&format!(
            "SELECT count(*) FROM events WHERE container = '{c}' AND kind = 'error'"
        )),
        1
    );
    assert_eq!(
        lab.db
            .text(&format!(
                "SELECT message FROM events WHERE container = '{c}' AND kind = 'error'"
            ))
            .map(|m| m.lines().count()),
        Some(lines.len())
    );
    lab.stop_watch();
}

/// `status`'s last line is the last line read: plain INFO text (read, not stored one row per
/// line) keeps it fresh.
#[test]
fn last_line_is_the_last_line_read_stored_or_not() {
    if !docker_ready() {
        return;
    }
    let rx = Receiver::start(0, 0);
    let mut lab = lab("lastline", &rx, "");
    lab.start_watch(&[]);
    let c = lab.run(
        "talk",
        false,
        "echo 'WARNING:app:start'; i=0; while [ $i -lt 40 ]; do echo \"INFO:app:tick $i\"; i=$((i+1)); /busybox usleep 100000; done; /busybox sleep 600",
    );
    lab.wait_for(
        &format!("SELECT count(*) FROM events WHERE container = '{c}' AND kind = 'warning'"),
        1,
    );
    // The ticks run 4 s after the one stored line; the last line read is 3 s or more after it.
    lab.wait_for(
        &format!(
            "SELECT (julianday(last_line_at) - julianday((SELECT ts FROM events WHERE container = '{c}'
                     AND kind = 'warning'))) * 86400 > 3.0
             FROM containers WHERE container = '{c}'"
        ),
        1,
    );
    assert_eq!(
        lab.db.count(&format!(
            "SELECT count(*) FROM events WHERE container = '{c}' AND message LIKE '%tick%'"
        )),
        0,
        "the ticks themselves are not stored"
    );
    lab.stop_watch();
}

/// Acknowledge and silence with `watch` running: an acknowledged alert sends no repeat and
/// does not make `health` critical; `status` says by whom; a silence keeps a new alert from
/// paging at all; expiring it lets its repeat out.
#[test]
fn ack_and_silence_with_watch_running() {
    if !docker_ready() {
        return;
    }
    let rx = Receiver::start(0, 0);
    let mut lab = lab("ack", &rx, "repeat_interval = \"3s\"");
    lab.start_watch(&[]);
    let oom = "echo 'torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.'; /busybox sleep 600";
    let a = lab.run("a", false, oom);
    // Firing, then repeated every 3 s.
    wait_at_least(&rx, &lab, 2);
    let p = pages(&rx);
    assert_eq!(p[0], format!("firing GpuOutOfMemory {a}"));
    assert_eq!(p[1], format!("repeat GpuOutOfMemory {a}"));
    let (code, text) = run_cli(&lab, &["health"]);
    assert_eq!(code, 2, "{text}");
    let id = lab
        .db
        .count(&format!(
            "SELECT id FROM alerts WHERE status = 'firing' AND labels ->> 'container' = '{a}'"
        ))
        .to_string();
    let (code, text) = run_cli(
        &lab,
        &[
            "alerts",
            "ack",
            &id,
            "--by",
            "alice",
            "--comment",
            "restarting it",
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("acknowledged by alice until it resolves"),
        "{text}"
    );
    // Anything queued before the acknowledgement goes out; then nothing for three repeat
    // intervals.
    std::thread::sleep(Duration::from_secs(1));
    let before = rx.received().len();
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(rx.received().len(), before, "{:?}", pages(&rx));
    let (code, text) = run_cli(&lab, &["health"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("1 more acknowledged or silenced"), "{text}");
    let (_, status) = run_cli(&lab, &["status"]);
    assert!(
        status.contains("acknowledged by alice until it resolves"),
        "{status}"
    );
    let (_, alerts) = run_cli(&lab, &["alerts"]);
    assert!(
        alerts.contains(&format!("alert {id} acknowledged by alice")),
        "{alerts}"
    );
    // A silence on the name: another container's OOM fires, marked, and pages nothing.
    let (code, text) = run_cli(
        &lab,
        &[
            "alerts",
            "silence",
            "alertname=GpuOutOfMemory",
            "--for",
            "1h",
            "--by",
            "bob",
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("1 firing alert(s) match now"), "{text}");
    let sid = lab.db.count("SELECT max(id) FROM silences").to_string();
    let b = lab.run("b", false, oom);
    lab.wait_for(
        &format!(
            "SELECT count(*) FROM alerts WHERE status = 'firing' AND labels ->> 'container' = '{b}'"
        ),
        1,
    );
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(rx.received().len(), before, "{:?}", pages(&rx));
    let (_, listed) = run_cli(&lab, &["alerts", "silences"]);
    assert!(
        listed.contains("alertname=GpuOutOfMemory") && listed.contains("active, 2 firing"),
        "{listed}"
    );
    // Expired: B's next repeat goes out (A stays acknowledged).
    let (code, text) = run_cli(&lab, &["alerts", "expire", &sid]);
    assert_eq!(code, 0, "{text}");
    wait_at_least(&rx, &lab, before + 1);
    std::thread::sleep(Duration::from_secs(4));
    let after: Vec<String> = pages(&rx)[before..].to_vec();
    assert!(
        !after.is_empty()
            && after
                .iter()
                .all(|p| p == &format!("repeat GpuOutOfMemory {b}")),
        "{after:?}"
    );
    let (code, _) = run_cli(&lab, &["alerts", "expire", &sid]);
    assert_ne!(code, 0, "an ended silence cannot be expired again");
    lab.stop_watch();
}

fn wait_at_least(rx: &Receiver, lab: &Lab, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while rx.received().len() < n {
        assert!(
            Instant::now() < deadline,
            "{n} pages expected, got {:?}; watch log:\n{}",
            pages(rx),
            lab.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A container floods its log while trainwatch is down and dockerd rotates it (`max-size`,
/// `max-file`): the lines rotated away are said lost (`log_lost`, what is known: between which
/// times), once; what the daemon still has is read.
#[test]
fn lines_rotated_away_while_down_are_said_lost() {
    if !docker_ready() {
        return;
    }
    let rx = Receiver::start(0, 0);
    let mut lab = lab("rotate", &rx, "");
    lab.start_watch(&[]);
    let pad = "x".repeat(100);
    let script = format!(
        "i=0; while [ $i -lt 10 ]; do echo \"ERROR:q:before $i\"; i=$((i+1)); /busybox usleep 100000; done; \
         while [ ! -e /go/flood ]; do /busybox usleep 100000; done; \
         i=0; while [ $i -lt 3000 ]; do echo \"flood $i {pad}\"; i=$((i+1)); done; \
         echo \"ERROR:q:after the flood\"; /busybox sleep 60"
    );
    let go = lab.db.dir.path().join("go");
    std::fs::create_dir(&go).unwrap();
    let mount = format!("{}:/go:ro", go.display());
    let c = lab.run_with(
        "flood",
        false,
        &[],
        &[
            "-v",
            &mount,
            "--log-driver",
            "json-file",
            "--log-opt",
            "max-size=20k",
            "--log-opt",
            "max-file=2",
        ],
        &script,
    );
    lab.wait_for(
        &format!(
            "SELECT count(*) FROM events WHERE container = '{c}' AND message = 'ERROR:q:before 9'"
        ),
        1,
    );
    lab.stop_watch();
    std::fs::write(go.join("flood"), "").unwrap();
    // The flood (about 330 KB) is written and rotated through 2 files of 20 KB.
    std::thread::sleep(Duration::from_secs(3));
    lab.start_watch(&[]);
    lab.wait_for(
        &format!("SELECT count(*) FROM events WHERE container = '{c}' AND message = 'ERROR:q:after the flood'"),
        1,
    );
    lab.wait_for(
        &format!("SELECT count(*) FROM events WHERE container = '{c}' AND kind = 'log_lost'"),
        1,
    );
    let context = lab
        .db
        .text(&format!(
            "SELECT context FROM events WHERE container = '{c}' AND kind = 'log_lost'"
        ))
        .unwrap();
    let context: Value = serde_json::from_str(&context).unwrap();
    assert_eq!(context["reason"], "rotated", "{context}");
    assert_eq!(context["stream"], "stdout", "{context}");
    let last_before = lab
        .db
        .text(&format!(
            "SELECT ts FROM events WHERE container = '{c}' AND message = 'ERROR:q:before 9'"
        ))
        .unwrap();
    assert_eq!(context["after"].as_str(), Some(last_before.as_str()));
    lab.stop_watch();
    // Said once, and counted.
    assert_eq!(
        lab.db.count(&format!(
            "SELECT count(*) FROM events WHERE container = '{c}' AND kind = 'log_lost'"
        )),
        1
    );
    assert!(
        lab.log_text()
            .contains("the log was rotated away before they were read")
    );
}
