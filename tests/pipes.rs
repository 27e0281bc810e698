//! Inputs that can be read only once: a shell's `<(...)`, standard input (`-`), a named FIFO,
//! gzip through a pipe. Each gives the rows of the same file replayed from disk.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::util::{Db, fixture, fixture_str};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trainwatch"))
}

/// The store after replaying `rel` from disk as `container`.
fn from_disk(rel: &str, container: &str) -> Db {
    let db = Db::new();
    db.replay(&[fixture_str(rel)], Some(container));
    db
}

fn ok(out: std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `trainwatch replay --container C -` with `data` on standard input.
fn replay_stdin(db: &Db, container: &str, data: &[u8]) -> String {
    let mut child = bin()
        .args(["replay", "--container", container, "-"])
        .env("TRAINWATCH_DB", &db.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let w = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    w.join().unwrap().unwrap();
    ok(out)
}

fn events(db: &Db) -> Vec<String> {
    let conn = db.conn();
    let mut st = conn
        .prepare("SELECT ts || ' ' || kind || ' ' || message FROM events ORDER BY 1")
        .unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn process_substitution_reads_a_text_log_once() {
    let disk = from_disk("queue/queue.log", "q");
    assert!(disk.counts()[2] > 10, "{:?}", disk.counts());
    let db = Db::new();
    let cmd = format!(
        "exec {} replay --container q <(cat {})",
        env!("CARGO_BIN_EXE_trainwatch"),
        fixture("queue/queue.log").display()
    );
    let out = ok(Command::new("bash")
        .args(["-c", &cmd])
        .env("TRAINWATCH_DB", &db.path)
        .output()
        .unwrap());
    assert!(!out.contains(": 0 lines"), "{out}");
    assert!(out.contains("skipped: none"), "{out}");
    assert_eq!(db.counts(), disk.counts());
    assert_eq!(events(&db), events(&disk));
}

#[test]
fn json_file_on_stdin_keeps_its_first_line() {
    let rel = "ultralytics/normal-json.log";
    let disk = from_disk(rel, "gpu");
    let db = Db::new();
    let data = std::fs::read(fixture(rel)).unwrap();
    let out = replay_stdin(&db, "gpu", &data);
    assert!(out.contains("skipped: none"), "{out}");
    assert_eq!(db.counts(), disk.counts());
    assert_eq!(events(&db), events(&disk));
    assert_eq!(
        db.text("SELECT status FROM training_runs").as_deref(),
        Some("completed")
    );
    // The same bytes again through a pipe add nothing.
    let out = replay_stdin(&db, "gpu", &data);
    assert!(out.contains("stored: 0 events"), "{out}");
    assert_eq!(db.counts(), disk.counts());
}

#[test]
fn gzip_on_stdin_is_decompressed() {
    let rel = "queue/queue.log";
    let disk = from_disk(rel, "q");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&std::fs::read(fixture(rel)).unwrap()).unwrap();
    let db = Db::new();
    replay_stdin(&db, "q", &gz.finish().unwrap());
    assert_eq!(db.counts(), disk.counts());
    assert_eq!(events(&db), events(&disk));
}

#[test]
fn named_fifo_is_read_to_its_end() {
    let rel = "ultralytics/earlystop-json.log";
    let disk = from_disk(rel, "gpu");
    let db = Db::new();
    let fifo = db.dir.path().join("train.fifo");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success());
    let data = std::fs::read(fixture(rel)).unwrap();
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().write(true).open(&fifo)?;
            // In pieces, as a live writer would.
            for chunk in data.chunks(1000) {
                f.write_all(chunk)?;
            }
            Ok::<_, std::io::Error>(())
        })
    };
    let mut child = bin()
        .args(["replay", "--container", "gpu"])
        .arg(&fifo)
        .env("TRAINWATCH_DB", &db.path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("replay of a FIFO did not end");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    writer.join().unwrap().unwrap();
    ok(child.wait_with_output().unwrap());
    assert_eq!(db.counts(), disk.counts());
    assert_eq!(events(&db), events(&disk));
}

#[test]
fn stdin_without_a_container_is_recorded_as_stdin() {
    let db = Db::new();
    let data = std::fs::read(fixture("queue/queue.log")).unwrap();
    let mut child = bin()
        .args(["replay", "-"])
        .env("TRAINWATCH_DB", &db.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(
        db.text("SELECT group_concat(DISTINCT container) FROM events")
            .as_deref(),
        Some("stdin")
    );
}
