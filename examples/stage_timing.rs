//! Times the reading thread's stages on one json-file log without the store:
//! `cargo run --release --example stage_timing -- FILE`. Used to see which side of the
//! writer channel bounds replay throughput (bench/replay.sh measures the whole).

use std::time::Instant;

use trainwatch::assemble::{self, multiline::Grouper};
use trainwatch::derive::ContainerState;
use trainwatch::parse::Parser;
use trainwatch::source::jsonfile::JsonFileReader;

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
    let mut g = Grouper::new();
    let mut recs = Vec::new();
    for raw in JsonFileReader::new(vec![path.clone().into()]) {
        g.push(assemble::clean(raw), &mut recs);
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
    let t = Instant::now();
    for (r, p) in recs.iter().zip(parsed.drain(..)) {
        st.apply(r, p, &mut ops);
        if ops.len() > 4000 {
            ops.clear();
        }
    }
    let derive = t.elapsed().as_secs_f64();
    println!("derive only:         {derive:.3}s");
    println!(
        "reading thread total ≈ {:.3}s ({:.0} MB/s)",
        asm + parse + derive,
        mb(asm + parse + derive)
    );
}
