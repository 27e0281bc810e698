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
