//! Times the reading thread's stages on one json-file log, then the writer alone on the same
//! ops: `cargo run --release --example stage_timing -- FILE`. Used to see which side of the
//! writer channel bounds replay throughput (bench/replay.sh measures the whole). `TW_SQL` is
//! run on the writer's fresh store first, e.g. `TW_SQL='DROP INDEX metric_log_for_retention'`
//! to price an index.

use std::time::Instant;

use trainwatch::assemble::Assembler;
use trainwatch::derive::alerts::{Engine, Rules};
use trainwatch::derive::{ContainerState, Op};
use trainwatch::parse::Parser;
use trainwatch::pipeline::BATCH_OPS;
use trainwatch::source::jsonfile::JsonFileReader;
use trainwatch::store::{self, AlertSink, Writer};

fn main() {
    let path = std::env::args().nth(1).expect("usage: stage_timing FILE");
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) as f64;
    let mb = |t: f64| bytes / 1e6 / t;

    let t = Instant::now();
    let n = JsonFileReader::new(vec![path.clone().into()]).count();
    let read = t.elapsed().as_secs_f64();
    println!(
        "read + partial merge: {read:.3}s ({:.0} MB/s), {n} lines",
        mb(read)
    );

    let t = Instant::now();
    let mut g = Assembler::new();
    let mut recs = Vec::new();
    for raw in JsonFileReader::new(vec![path.clone().into()]) {
        g.push(raw, &mut recs);
    }
    g.finish(&mut recs);
    let asm = t.elapsed().as_secs_f64();
    println!(
        "+ assemble:          {asm:.3}s ({:.0} MB/s), {} records",
        mb(asm),
        recs.len()
    );

    let parser = Parser::default();
    let t = Instant::now();
    let mut parsed: Vec<_> = recs.iter().map(|r| parser.parse(r)).collect();
    let parse = t.elapsed().as_secs_f64();
    println!("parse only:          {parse:.3}s");

    let mut st = ContainerState::new("bench".into(), Default::default());
    let mut ops = Vec::new();
    let mut batches: Vec<Vec<Op>> = Vec::new();
    let t = Instant::now();
    for (r, p) in recs.iter().zip(parsed.drain(..)) {
        st.apply(r, p, &mut ops);
        if ops.len() >= BATCH_OPS {
            batches.push(std::mem::take(&mut ops));
        }
    }
    st.flush_metrics(&mut ops);
    batches.push(ops);
    let derive = t.elapsed().as_secs_f64();
    println!("derive only:         {derive:.3}s");
    println!(
        "reading thread total ≈ {:.3}s ({:.0} MB/s)",
        asm + parse + derive,
        mb(asm + parse + derive)
    );
    drop(recs);

    // The writer thread's share: the same ops committed in the same batches, alerts included.
    let dir = tempfile::tempdir().expect("temp dir");
    let conn = store::open_rw(&dir.path().join("t.db")).expect("open store");
    if let Ok(sql) = std::env::var("TW_SQL") {
        conn.execute_batch(&sql).expect("TW_SQL");
    }
    let engine = Engine::new(Rules::default(), false, "");
    let mut w = Writer::new(conn)
        .with_alerts(AlertSink::new(engine, Vec::new(), None))
        .expect("alerts");
    let n: usize = batches.iter().map(Vec::len).sum();
    let t = Instant::now();
    for b in &mut batches {
        w.write(b).expect("write");
    }
    let stats = w.finish().expect("checkpoint");
    let write = t.elapsed().as_secs_f64();
    println!(
        "store only:          {write:.3}s ({:.0} MB/s), {n} ops, {} events",
        mb(write),
        stats.events_inserted
    );
}
