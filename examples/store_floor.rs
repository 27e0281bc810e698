//! SQLite's own floor for storing what a replay stored: copies the event and sample rows of
//! an existing trainwatch database into fresh tables of a new one, with no index but the
//! samples' key, in one transaction each, inside SQLite (no parsing, no binding, no Rust per
//! row). Same pragmas as the store (8 KiB pages, WAL, synchronous=NORMAL).
//!
//! `cargo run --release --example store_floor -- DB` after `trainwatch --db DB replay ...`:
//! what it prints bounds from below the time any replay needs to store those rows here.

use std::time::Instant;

use rusqlite::Connection;

fn main() {
    let src = std::env::args()
        .nth(1)
        .expect("usage: store_floor DB (a database a replay wrote)");
    let dir = tempfile::tempdir().expect("temp dir");
    let conn = Connection::open(dir.path().join("floor.db")).expect("open");
    conn.execute_batch(
        "PRAGMA page_size = 8192; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
         CREATE TABLE ev (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, container TEXT NOT NULL,
             stream TEXT NOT NULL, key_ts INTEGER NOT NULL, seq INTEGER NOT NULL,
             level TEXT NOT NULL, kind TEXT NOT NULL, message TEXT NOT NULL,
             context TEXT NOT NULL);
         CREATE TABLE m (container TEXT NOT NULL, name TEXT NOT NULL, ts TEXT NOT NULL,
             value REAL NOT NULL, PRIMARY KEY (container, name, ts)) WITHOUT ROWID;",
    )
    .expect("schema");
    conn.execute("ATTACH ?1 AS src", [&src]).expect("attach");
    // Read into memory first, so the timed copies read no file.
    conn.execute_batch(
        "CREATE TEMP TABLE e2 AS SELECT * FROM src.event_log;
         CREATE TEMP TABLE m2 AS SELECT container, name, ts, value FROM src.metric_log ORDER BY ts;",
    )
    .expect("load");
    let count = |t: &str| -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
            .expect("count")
    };
    let (events, samples) = (count("e2"), count("m2"));

    let t = Instant::now();
    conn.execute_batch(
        "BEGIN; INSERT INTO ev SELECT id, ts, container, stream, key_ts, seq, level, kind,
             message, context FROM e2; COMMIT;",
    )
    .expect("copy events");
    let ev = t.elapsed().as_secs_f64();
    let t = Instant::now();
    conn.execute_batch("BEGIN; INSERT INTO m SELECT * FROM m2; COMMIT;")
        .expect("copy samples");
    let m = t.elapsed().as_secs_f64();
    let t = Instant::now();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("checkpoint");
    let ck = t.elapsed().as_secs_f64();
    println!("events:     {events} rows in {ev:.3}s");
    println!("samples:    {samples} rows in {m:.3}s");
    println!("checkpoint: {ck:.3}s");
    println!("floor:      {:.3}s", ev + m + ck);
}
