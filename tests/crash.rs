//! Crash safety of everything derived, alerts included: a replay killed with kill -9 at seeded
//! random moments, several times, then run to completion, leaves exactly the views of one clean
//! replay of the same files.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{Db, entry, fixture};

/// A small seeded generator (xorshift64*): the same seed gives the same logs and kill times.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// A day and a half of a training server's json-file logs, thick with alert evidence: a
/// training container running real captured trainings one after another (NaN runs, crashes,
/// early stops, normal ends) with CUDA out-of-memory errors in bursts and checkpoints that fail
/// on a full disk, and an annotation queue whose offset moves, then stalls for over an hour.
/// Returns the two files.
fn eventful_logs(dir: &Path, copies: usize, rng: &mut Rng) -> [String; 2] {
    let runs = [
        "ultralytics/nan-json.log",
        "ultralytics/earlystop-json.log",
        "ultralytics/normal-json.log",
        "ultralytics/crash-json.log",
    ]
    .map(|f| std::fs::read_to_string(fixture(f)).unwrap());
    let t0: chrono::DateTime<chrono::Utc> = "2026-03-28T00:00:00Z".parse().unwrap();
    let mut train = String::new();
    let mut at = t0;
    for _ in 0..copies {
        let text = &runs[rng.range(0, 4) as usize];
        let mut first: Option<chrono::DateTime<chrono::Utc>> = None;
        let mut last = at;
        for line in text.lines() {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            let t: chrono::DateTime<chrono::Utc> = v["time"].as_str().unwrap().parse().unwrap();
            let base = *first.get_or_insert(t);
            last = at + (t - base);
            v["time"] = rfc3339(last).into();
            train.push_str(&v.to_string());
            train.push('\n');
            let next = last + chrono::Duration::microseconds(1);
            if rng.one_in(25) {
                train.push_str(&entry(
                    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.65 GiB of which 1.20 GiB is free.\n",
                    "stderr",
                    &rfc3339(next),
                ));
            } else if rng.one_in(60) {
                let json = serde_json::json!({
                    "timestamp": rfc3339(next), "level": "ERROR", "service": "training",
                    "message": "Failed to save checkpoint to /azaion/models/last.pt: No space left on device",
                });
                train.push_str(&entry(&format!("{json}\n"), "stdout", &rfc3339(next)));
            }
        }
        // Between trainings (5 to 90 minutes), a copy job fails to save checkpoints every
        // quarter to three quarters of an hour (an alert that recurs while firing, then
        // expires when a gap is quiet), and a scheduler's retry hits OOM now and then.
        let gap = rng.range(5, 90) as i64;
        let quiet = rng.one_in(4);
        let mut t = last;
        loop {
            t += chrono::Duration::minutes(rng.range(15, 45) as i64);
            if quiet || t >= last + chrono::Duration::minutes(gap) {
                break;
            }
            let message = if rng.one_in(3) {
                "CUDA out of memory. Tried to allocate 1.50 GiB"
            } else {
                "Failed to save checkpoint to /azaion/models/best.pt: No space left on device"
            };
            let json = serde_json::json!({
                "timestamp": rfc3339(t), "level": "ERROR", "service": "training", "message": message,
            });
            train.push_str(&entry(&format!("{json}\n"), "stdout", &rfc3339(t)));
        }
        at = last + chrono::Duration::minutes(gap);
    }
    let mut queue = String::new();
    let mut t = t0;
    let mut offset = 4000u64;
    let mut stalled_until = t0;
    while t < at {
        if t >= stalled_until && rng.one_in(150) {
            stalled_until = t + chrono::Duration::minutes(rng.range(50, 100) as i64);
        }
        if t >= stalled_until {
            offset += 1;
        }
        let json = serde_json::json!({
            "timestamp": rfc3339(t), "level": "INFO", "service": "annotation_queue",
            "message": "Processed 1 messages", "context": {"offset": offset},
        });
        queue.push_str(&entry(&format!("{json}\n"), "stdout", &rfc3339(t)));
        t += chrono::Duration::seconds(rng.range(5, 40) as i64);
    }
    [("a1a1a1a1a1a1", train), ("b2b2b2b2b2b2", queue)].map(|(id, text)| {
        let p = dir.join(format!("{id}-json.log"));
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    })
}

/// Every row of every public view, without the columns a crash may legitimately change
/// (row ids, when a notification went out), in a fixed order: one line per row.
fn views(db: &Db) -> Vec<(String, Vec<String>)> {
    let conn = db.conn();
    [
        "alerts",
        "training_runs",
        "training_epochs",
        "events",
        "metric_samples",
    ]
    .iter()
    .map(|view| {
        let cols: Vec<String> = conn
            .prepare(&format!("SELECT name FROM pragma_table_info('{view}')"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<Vec<String>, _>>()
            .unwrap()
            .into_iter()
            .filter(|c| !matches!(c.as_str(), "id" | "run_id" | "last_notified_at"))
            .collect();
        let list = cols
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!("SELECT json_array({list}) FROM {view} ORDER BY {list}");
        let rows = conn
            .prepare(&sql)
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<Vec<String>, _>>()
            .unwrap();
        (view.to_string(), rows)
    })
    .collect()
}

fn replay_cmd(db: &Db, files: &[String]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trainwatch"));
    cmd.arg("replay")
        .args(files)
        .env("TRAINWATCH_DB", &db.path)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

fn stored_events(db: &Db) -> i64 {
    trainwatch::store::open_ro(&db.path)
        .ok()
        .and_then(|c| {
            c.query_row("SELECT count(*) FROM event_log", [], |r| r.get(0))
                .ok()
        })
        .unwrap_or(0)
}

#[test]
fn replay_killed_again_and_again_then_completed_has_the_alerts_of_one_clean_replay() {
    let seed = std::env::var("TRAINWATCH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_u64);
    eprintln!("crash loop seed {seed} (TRAINWATCH_CRASH_SEED to repeat)");
    let mut rng = Rng(seed | 1);
    let dir = tempfile::tempdir().unwrap();
    let files = eventful_logs(dir.path(), 320, &mut rng);

    let clean = Db::new();
    let started = Instant::now();
    assert!(replay_cmd(&clean, &files).status().unwrap().success());
    let clean_took = started.elapsed();
    eprintln!("clean replay: {clean_took:?}");
    let expected = views(&clean);
    let count = |name: &str, status: &str| {
        clean.count(&format!(
            "SELECT count(*) FROM alerts WHERE alertname = '{name}' AND status = '{status}'"
        ))
    };
    // The logs hold what the rules are about, firing and resolving.
    for name in [
        "GpuOutOfMemory",
        "TrainingLossNonFinite",
        "CheckpointSaveFailed",
        "QueueOffsetStale",
    ] {
        assert!(
            count(name, "resolved") > 0,
            "no resolved {name}: {:?}",
            views(&clean)[0].1.iter().take(20).collect::<Vec<_>>()
        );
    }
    let oom_recurred = clean.count(
        "SELECT count(*) FROM alerts a WHERE alertname = 'GpuOutOfMemory' AND
            (SELECT count(*) FROM events e WHERE e.kind = 'gpu_oom'
              AND e.ts >= a.started_at AND e.ts < COALESCE(a.resolved_at, '9')) > 1",
    );
    assert!(oom_recurred > 0, "no GpuOutOfMemory recurred while firing");

    // Killed at random moments, until ten kills landed part-way (bounded: at most 60
    // attempts).
    let killed = Db::new();
    let total = stored_events(&clean);
    let (mut part_way, mut attempts) = (0, 0);
    while part_way < 10 && attempts < 60 {
        attempts += 1;
        let before = stored_events(&killed);
        let mut child = replay_cmd(&killed, &files).spawn().unwrap();
        // From the first commit of this run on, a random moment within an eighth of a clean
        // run's time.
        let deadline = Instant::now() + Duration::from_secs(60);
        while stored_events(&killed) == before
            && child.try_wait().unwrap().is_none()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        let ms = rng.range(0, (clean_took.as_millis() as u64 / 8).max(10));
        std::thread::sleep(Duration::from_millis(ms));
        let _ = child.kill();
        child.wait().unwrap();
        let after = stored_events(&killed);
        if after > before && after < total {
            part_way += 1;
        }
        if after >= total {
            // A run completed: start over, so that the kills counted all land in one history.
            part_way = 0;
            for ext in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{ext}", killed.path.display()));
            }
        }
    }
    assert_eq!(
        part_way, 10,
        "kills that landed part-way in {attempts} attempts"
    );
    eprintln!("{part_way} kills part-way in {attempts} attempts");
    assert!(replay_cmd(&killed, &files).status().unwrap().success());

    let got = views(&killed);
    for ((view, want), (_, have)) in expected.iter().zip(&got) {
        if want == have {
            continue;
        }
        let (w, h): (HashSet<&String>, HashSet<&String>) =
            (want.iter().collect(), have.iter().collect());
        let missing: Vec<_> = w.difference(&h).take(5).collect();
        let extra: Vec<_> = h.difference(&w).take(5).collect();
        panic!(
            "view {view}: {} rows, {} after the kills; missing {missing:#?}, extra {extra:#?}",
            want.len(),
            have.len()
        );
    }
    // No alert resolved before it started.
    assert_eq!(
        killed.count("SELECT count(*) FROM alerts WHERE resolved_at < started_at"),
        0
    );
}
