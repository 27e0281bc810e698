//! Alert delivery under ingest load: `cargo bench --bench outbox`.
//!
//! A live writer with the alert rules (as `watch` runs it) commits batches of log events as
//! fast as it takes them, while GPU temperature samples cross the 90 °C threshold at a fixed
//! rate, so `GpuTemperatureHigh` fires and resolves; the notifier delivers each notification
//! to a webhook receiver on 127.0.0.1 and has the writer record it. Printed per phase:
//!
//! - ingest throughput (events committed per second), without alerts and with them;
//! - delivery latency: from the sample that changed the alert to the receiver holding the
//!   notification (p50, p99, max);
//! - a burst: every GPU's alert changes at once, `BURST` times; how long until the receiver
//!   has them all and the outbox shows them delivered;
//! - peak RSS.
//!
//! `OUTBOX_BENCH_SECS` (default 15) sets the length of the timed phases, `OUTBOX_RATE` (default
//! 20) the alert changes per second.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use trainwatch::derive::alerts::{Engine, Rules};
use trainwatch::derive::{EventRow, Op};
use trainwatch::output::notify::{Notifier, NotifyConfig};
use trainwatch::output::receivers::{ReceiverConfig, ReceiverKind};
use trainwatch::parse::Level;
use trainwatch::store::{AlertSink, WriterHandle, WriterOptions};
use trainwatch::time::{now_ns, parse_rfc3339};

const GPUS: usize = 8;
const BATCH: usize = 512;
const BURST: usize = 25;

/// A webhook receiver that notes when each notification arrived, against the time of the
/// sample that caused it (the alert's start or resolution, set from the sample).
struct Receiver {
    url: String,
    /// (latency ns, notification id)
    got: Arc<Mutex<Vec<(i64, i64)>>>,
    stop: Arc<AtomicBool>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start() -> Receiver {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("bind receiver");
        let port = server.server_addr().to_ip().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (got2, stop2) = (got.clone(), stop.clone());
        let join = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let Ok(Some(mut req)) = server.recv_timeout(Duration::from_millis(20)) else {
                    continue;
                };
                let now = now_ns();
                let mut body = String::new();
                let _ = req.as_reader().read_to_string(&mut body);
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let at = if v["event"] == "resolved" {
                    &v["alert"]["resolved_at"]
                } else {
                    &v["alert"]["started_at"]
                };
                let at = at.as_str().and_then(parse_rfc3339).unwrap_or(now);
                let id = v["notification_id"].as_i64().unwrap_or(-1);
                got2.lock().unwrap().push((now - at, id));
                let _ = req.respond(tiny_http::Response::empty(200));
            }
        });
        Receiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            got,
            stop,
            join: Some(join),
        }
    }

    fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    fn take(&self) -> Vec<(i64, i64)> {
        std::mem::take(&mut *self.got.lock().unwrap())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

fn event(seq: u64) -> Op {
    let ts = now_ns();
    Op::Event(EventRow {
        ts,
        container: Arc::from("train"),
        stream: "stdout",
        seq: (seq % 1_000_000) as u32,
        key_ts: 1_774_708_200_000_000_000 + (seq / 1_000_000) as i64,
        level: Level::Info,
        kind: "log",
        message: format!("      45/120      3.71G     0.9173     0.6619      1.072   step {seq}"),
        context: "{}".into(),
    })
}

fn gpu_temp(gpu: usize, hot: bool) -> Op {
    Op::metric(
        now_ns(),
        &format!("gpu{gpu}"),
        "gpu_temperature_c",
        if hot { 95.0 } else { 60.0 },
    )
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1e6
}

fn delivered(db: &std::path::Path) -> i64 {
    let c = trainwatch::store::open_ro(db).unwrap();
    c.query_row(
        "SELECT count(*) FROM outbox WHERE delivered_at IS NOT NULL",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

/// Sends event batches for `secs`, with an alert change every `1/rate` s if `rate > 0`.
/// Returns (events committed, alert changes sent).
async fn load(
    tx: &trainwatch::store::WriterSender,
    secs: f64,
    rate: f64,
    seq: &mut u64,
    hot: &mut [bool; GPUS],
) -> (u64, u64) {
    let start = Instant::now();
    let mut events = 0u64;
    let mut changes = 0u64;
    let mut next_change = Duration::ZERO;
    let mut gpu = 0usize;
    while start.elapsed().as_secs_f64() < secs {
        let mut batch = Vec::with_capacity(BATCH + 1);
        for _ in 0..BATCH {
            batch.push(event(*seq));
            *seq += 1;
        }
        events += BATCH as u64;
        if rate > 0.0 && start.elapsed() >= next_change {
            hot[gpu] = !hot[gpu];
            batch.push(gpu_temp(gpu, hot[gpu]));
            gpu = (gpu + 1) % GPUS;
            changes += 1;
            next_change += Duration::from_secs_f64(1.0 / rate);
        }
        tx.send(batch).await.expect("writer");
    }
    (events, changes)
}

#[expect(
    clippy::too_many_lines,
    reason = "a benchmark's script: set-up, load, and the printed figures in order"
)]
fn main() {
    let secs: f64 = std::env::var("OUTBOX_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15.0);
    let rate: f64 = std::env::var("OUTBOX_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20.0);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bench.db");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let receiver = Receiver::start();
    let wake = Arc::new(tokio::sync::Notify::new());
    let writer = WriterHandle::spawn_with(
        db.clone(),
        WriterOptions {
            alerts: Some(AlertSink::new(
                Engine::new(Rules::default(), true, "/data"),
                vec!["oncall".into()],
                Some(wake.clone()),
            )),
            retry: true,
            health: Some(Default::default()),
            note: None,
        },
    )
    .unwrap();
    let tx = writer.sender().unwrap();
    let cfg = NotifyConfig {
        receivers: vec![ReceiverConfig {
            name: "oncall".into(),
            kind: ReceiverKind::Webhook,
            url: receiver.url.clone(),
            ..ReceiverConfig::default()
        }],
        instance: Some("bench".into()),
        ..NotifyConfig::default()
    };
    let notifier = Notifier::new(cfg, db.clone(), tx.clone(), Default::default()).unwrap();
    let stop = CancellationToken::new();
    let task = rt.spawn(notifier.run(wake, stop.clone()));

    println!(
        "outbox bench: batches of {BATCH} events, {GPUS} GPUs, {secs} s per phase, {rate} alert changes/s"
    );
    let mut seq = 0u64;
    let mut hot = [false; GPUS];
    let mut ids: Vec<i64> = Vec::new();
    rt.block_on(async {
        // Warm-up (page cache, statement caches).
        load(&tx, 2.0, 0.0, &mut seq, &mut hot).await;

        let t = Instant::now();
        let (events, _) = load(&tx, secs, 0.0, &mut seq, &mut hot).await;
        let quiet = events as f64 / t.elapsed().as_secs_f64();
        println!("ingest, no alerts:        {quiet:>10.0} events/s");

        let t = Instant::now();
        let (events, changes) = load(&tx, secs, rate, &mut seq, &mut hot).await;
        let paging = events as f64 / t.elapsed().as_secs_f64();
        // Let the last notifications arrive.
        let deadline = Instant::now() + Duration::from_secs(30);
        while (receiver.count() as u64) < changes && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let got = receiver.take();
        ids.extend(got.iter().map(|(_, id)| *id));
        let mut lat: Vec<i64> = got.into_iter().map(|(l, _)| l).collect();
        lat.sort_unstable();
        println!(
            "ingest, alerts firing:    {paging:>10.0} events/s ({:+.1} %), {changes} alert changes, {} delivered",
            (paging / quiet - 1.0) * 100.0,
            lat.len()
        );
        println!(
            "delivery latency:         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            percentile(&lat, 1.0)
        );

        // A burst: every GPU changes at once, BURST times over, with ingest going on.
        let before = delivered(&db);
        let t = Instant::now();
        for _ in 0..BURST {
            let mut batch = Vec::with_capacity(GPUS);
            for (g, h) in hot.iter_mut().enumerate() {
                *h = !*h;
                batch.push(gpu_temp(g, *h));
            }
            tx.send(batch).await.expect("writer");
        }
        let want = (BURST * GPUS) as i64;
        let ingest = tokio::spawn({
            let tx = tx.clone();
            let mut seq = seq;
            let mut hot = [false; GPUS];
            async move { load(&tx, secs, 0.0, &mut seq, &mut hot).await }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while (receiver.count() as i64) < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let received = t.elapsed();
        while delivered(&db) - before < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let recorded = t.elapsed();
        ingest.abort();
        let _ = ingest.await;
        println!(
            "burst of {want}:            all received in {:.0} ms, recorded delivered in {:.0} ms ({:.2} ms per notification)",
            received.as_secs_f64() * 1e3,
            recorded.as_secs_f64() * 1e3,
            recorded.as_secs_f64() * 1e3 / want as f64
        );
    });
    stop.cancel();
    rt.block_on(task).unwrap();
    drop(tx);
    let stats = writer.finish().unwrap();
    println!(
        "rows committed: {} events; peak RSS {:.1} MiB",
        stats.events_inserted,
        peak_rss_mib()
    );
    // Each notification reached the receiver once.
    ids.extend(receiver.take().iter().map(|(_, id)| *id));
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    println!("notifications received: {n}, duplicates: {}", n - ids.len());
}
