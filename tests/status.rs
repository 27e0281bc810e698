//! Health, status and the page for people: `health` exit codes, the page in a real headless
//! Chromium, and `watch --listen` serving /metrics that promtool and a real Prometheus accept.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use trainwatch::derive::alerts::{Engine, Rules};
use trainwatch::derive::{EventRow, Op};
use trainwatch::parse::Level;
use trainwatch::store::{AlertSink, WriterHandle, WriterOptions};

use crate::util::{Db, bin, fixture_str};

const S: i64 = 1_000_000_000;

/// Commits `ops` through a live writer (alert rules on, as in `watch`).
fn write_live(db: &Db, ops: Vec<Op>) {
    let engine = Engine::new(Rules::default(), true, "/azaion");
    let w = WriterHandle::spawn_with(
        db.path.clone(),
        WriterOptions {
            alerts: Some(AlertSink::new(engine, Vec::new(), None)),
            retry: false,
            health: None,
            note: None,
        },
    )
    .unwrap();
    w.send(ops).unwrap();
    w.finish().unwrap();
}

fn metric(container: &str, name: &'static str, ts: i64, value: f64) -> Op {
    Op::metric(ts, container, name, value)
}

fn health(db: &Db, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["health"];
    args.extend_from_slice(extra);
    let o = bin(&args, &db.path);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).trim().to_string(),
    )
}

#[test]
fn health_exit_codes_follow_alerts_and_the_age_of_the_data() {
    let db = Db::new();
    let (code, line) = health(&db, &[]);
    assert_eq!(code, 2);
    assert!(line.starts_with("CRITICAL: no database"), "{line}");
    db.replay(&[fixture_str("ultralytics/normal-json.log")], Some("yolo"));
    // The log is hours old and no ingestor ever ran.
    let (code, line) = health(&db, &[]);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.contains("no data for") && line.contains("ingestor not running"),
        "{line}"
    );
    // The ingestor's heartbeat.
    let now = trainwatch::time::now_ns();
    write_live(&db, vec![Op::Tick(now)]);
    let (code, line) = health(&db, &[]);
    assert_eq!(code, 0, "{line}");
    assert_eq!(
        line,
        "OK: training run 1 completed at epoch 10/10; 0 alerts firing"
    );
    write_live(
        &db,
        vec![
            metric("host", "disk_usage_azaion_pct", now, 85.0),
            Op::Tick(now),
        ],
    );
    let (code, line) = health(&db, &[]);
    assert_eq!(code, 1, "{line}");
    assert_eq!(
        line,
        "WARNING: training run 1 completed at epoch 10/10; disk 85 %; 1 alert firing: DiskUsageHigh"
    );
    write_live(
        &db,
        vec![metric("gpu0", "gpu_temperature_c", now + S, 95.0)],
    );
    let (code, line) = health(&db, &[]);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.starts_with("CRITICAL: ") && line.contains("GpuTemperatureHigh"),
        "{line}"
    );
    // --max-age: a heartbeat older than it is stale.
    std::thread::sleep(Duration::from_millis(1100));
    let (code, line) = health(&db, &["--max-age", "1s"]);
    assert_eq!(code, 2);
    assert!(line.contains("ingestor not running"), "{line}");
    // --format json: the status file's document.
    let o = bin(&["health", "--format", "json"], &db.path);
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["health"]["code"], 2);
    assert_eq!(v["training"]["run_id"], 1);
    assert_eq!(v["training"]["epoch"], 10);
    assert_eq!(v["disk"]["used_pct"], 85.0);
    assert_eq!(v["gpus"][0]["temperature_c"], 95.0);
    let names: Vec<&str> = v["alerts_firing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["alertname"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["GpuTemperatureHigh", "DiskUsageHigh"]);
}

/// `health --ingestor`: alive or not, with Docker's healthcheck codes, whatever fires.
#[test]
fn health_ingestor_is_liveness_only() {
    let db = Db::new();
    db.replay(&[fixture_str("ultralytics/normal-json.log")], Some("yolo"));
    // A replay is no ingestor.
    let (code, line) = health(&db, &["--ingestor"]);
    assert_eq!(code, 1, "{line}");
    assert_eq!(line, "UNHEALTHY: no ingestor has run on this database");
    // A fresh heartbeat with a critical alert firing: the ingestor is alive.
    let now = trainwatch::time::now_ns();
    write_live(
        &db,
        vec![
            metric("gpu0", "gpu_temperature_c", now, 95.0),
            Op::Tick(now),
        ],
    );
    assert_eq!(health(&db, &[]).0, 2);
    let (code, line) = health(&db, &["--ingestor"]);
    assert_eq!(code, 0, "{line}");
    assert!(
        line.starts_with("OK: ingestor alive, heartbeat ")
            && line.contains(&format!("pid {}", std::process::id())),
        "{line}"
    );
    // Older than --max-age: not alive.
    std::thread::sleep(Duration::from_millis(1100));
    let (code, line) = health(&db, &["--ingestor", "--max-age", "1s"]);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.starts_with("UNHEALTHY: last ingestor heartbeat ")
            && line.ends_with("older than 1.0s"),
        "{line}"
    );
    // It has no JSON form of its own.
    let o = bin(&["health", "--ingestor", "--format", "json"], &db.path);
    assert_eq!(o.status.code(), Some(2), "clap usage error");
}

#[test]
fn status_prints_one_screen() {
    let db = Db::new();
    db.replay(
        &[fixture_str("ultralytics/earlystop-json.log")],
        Some("yolo"),
    );
    db.replay(
        &[
            fixture_str("queue/queue.log.2026-03-27"),
            fixture_str("queue/queue.log"),
        ],
        Some("annotation-queue"),
    );
    let o = bin(&["status"], &db.path);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(
            "Training   run 1 (yolo) early_stopped  epoch 19/40  [███████████░░░░░░░░░░░░░]  48%"
        ),
        "{text}"
    );
    assert!(text.contains("best mAP50-95 0.077 (epoch 16)"), "{text}");
    assert!(
        text.contains("last losses  box 3.009  cls 1.662  dfl 1.493"),
        "{text}"
    );
    assert!(
        text.contains("Queue      annotation-queue: processed 67  failed 3  offset 4150"),
        "{text}"
    );
    // Times are ages; the checkpoint is this run's.
    assert!(text.contains("Checkpoint saved "), "{text}");
    assert!(text.contains(" ago"), "{text}");
    assert!(
        !text.contains("000Z"),
        "no raw timestamps on screen: {text}"
    );
    assert!(text.lines().count() <= 24, "one screen:\n{text}");
}

/// A server running thousands of queue consumers (half of them stopped): `status` is still one
/// screen, and what it leaves out is counted right past the thousand the document lists.
#[test]
fn status_with_thousands_of_queues_is_one_screen_and_counts_the_rest() {
    let db = Db::new();
    let now = trainwatch::time::now_ns();
    let mut ops = Vec::new();
    for i in 0..3000 {
        let name: Arc<str> = Arc::from(format!("queue-{i:04}"));
        ops.push(Op::Container(now, name.clone(), "queue".into()));
        let state = if i % 2 == 0 {
            trainwatch::event::ContainerRun::Running
        } else {
            trainwatch::event::ContainerRun::Exited(Some(1))
        };
        ops.push(Op::ContainerState(now, name.clone(), state));
        ops.push(metric(&name, "queue_messages_processed", now, 10.0));
        ops.push(metric(&name, "queue_messages_failed", now, 1.0));
    }
    write_live(&db, ops);
    let o = bin(&["status"], &db.path);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(text.lines().count() <= 40, "one screen:\n{text}");
    // 8 listed, 1 500 of 3 000 not running: 4 of those among the 8 listed.
    assert!(
        text.contains("Container  ... and 2992 more (1496 not running)"),
        "{text}"
    );
    // The queues that are down first; the rest summed.
    assert!(
        text.contains("Queue      queue-0001 DOWN: processed 10  failed 1"),
        "{text}"
    );
    assert!(
        text.contains("Queue      ... and 2992 more (1492 DOWN): processed 29920  failed 2992"),
        "{text}"
    );
    let json = bin(&["health", "--format", "json"], &db.path);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(doc["followed_total"], 3000);
    assert_eq!(doc["followed_down"], 1500);
    assert_eq!(doc["followed"].as_array().unwrap().len(), 1000);
}

fn chromium() -> Option<&'static str> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    if found.is_none() {
        crate::util::unavailable("skipping: chromium is not installed");
    }
    found
}

fn run_chromium(bin: &str, args: &[&str], url: &str) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(url)
    .stdin(Stdio::null());
    let out = c.output().expect("run chromium");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn png_size(path: &std::path::Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n");
    let w = u32::from_be_bytes(b[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(b[20..24].try_into().unwrap());
    (w, h)
}

#[test]
#[expect(clippy::too_many_lines, reason = "one browser scenario, step by step")]
fn status_page_renders_in_a_real_browser_with_charts_and_escaped_log_text() {
    let Some(chrome) = chromium() else { return };
    let db = Db::new();
    db.replay(&[fixture_str("ultralytics/normal-json.log")], Some("yolo"));
    db.replay(
        &[fixture_str("ultralytics/earlystop-json.log")],
        Some("yolo"),
    );
    let now = trainwatch::time::now_ns();
    let mut ops = vec![Op::Tick(now)];
    for i in 0..36 {
        let ts = now - (36 - i) * 300 * S;
        ops.push(metric("gpu0", "gpu_temperature_c", ts, 60.0 + i as f64));
        ops.push(metric("gpu0", "gpu_utilization_pct", ts, 90.0));
        ops.push(metric(
            "host",
            "disk_usage_azaion_pct",
            ts,
            70.0 + i as f64 / 10.0,
        ));
        ops.push(metric(
            "annotation-queue",
            "queue_messages_processed",
            ts,
            10.0 * i as f64,
        ));
        ops.push(metric(
            "annotation-queue",
            "queue_offset",
            ts,
            100.0 + i as f64,
        ));
    }
    // A log line that tries to run script: it becomes an alert summary on the page.
    ops.push(Op::Event(EventRow {
        ts: now,
        container: Arc::from("yolo"),
        stream: "stderr",
        seq: 0,
        key_ts: now,
        level: Level::Error,
        kind: "gpu_oom",
        message: "CUDA out of memory <script>document.body.setAttribute('data-pwned','1')</script><img src=x onerror=\"document.body.setAttribute('data-pwned','2')\">".into(),
        context: "{}".into(),
    }));
    write_live(&db, ops);
    let page = db.dir.path().join("status.html");
    let o = bin(&["status", "--html", page.to_str().unwrap()], &db.path);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let url = format!("file://{}", page.display());
    for (width, name) in [(1280, "laptop"), (390, "phone")] {
        let dom = run_chromium(
            chrome,
            &[&format!("--window-size={width},2400"), "--dump-dom"],
            &url,
        );
        let dom = String::from_utf8_lossy(&dom.stdout);
        let body = dom
            .split("<body")
            .nth(1)
            .unwrap()
            .split('>')
            .next()
            .unwrap();
        assert!(
            body.contains(r#"data-ready="1""#),
            "{name}: script did not run: {body}"
        );
        assert!(body.contains(r#"data-charts="6""#), "{name}: {body}");
        assert!(
            !body.contains("data-errors"),
            "{name}: script errors: {body}"
        );
        assert!(
            !body.contains("data-pwned"),
            "{name}: log text ran as script"
        );
        assert!(
            body.contains(r#"data-overflow="false""#),
            "{name}: wider than the screen: {body}"
        );
        // Every chart's labels are drawn at one size, at most the 14 px they are written in
        // (every grid has the same column width, and a chart is never drawn wider than its
        // view box).
        let px = body
            .split(r#"data-label-px=""#)
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("{name}: no label size: {body}"));
        let (lo, hi) = px.split_once('-').unwrap();
        let (lo, hi): (f64, f64) = (lo.parse().unwrap(), hi.parse().unwrap());
        assert!(
            hi <= 14.01 && hi - lo < 0.05,
            "{name}: chart labels {px} px"
        );
        assert!(lo >= 7.0, "{name}: chart labels too small to read: {px} px");
        // Time axes read as ages.
        let labels: Vec<&str> = dom
            .split("</text>")
            .filter_map(|t| t.rsplit('>').next())
            .collect();
        assert!(
            labels.iter().filter(|l| l.ends_with(" ago")).count() >= 8
                && !labels.iter().any(|l| l.starts_with('-')),
            "{name}: time axes: {labels:?}"
        );
        assert!(!dom.contains(">hours<"), "{name}");
        assert!(dom.contains("GpuOutOfMemory"));
        assert!(
            dom.contains("&lt;script&gt;document.body"),
            "escaped text shown"
        );
        assert!(dom.matches("<polyline").count() >= 8, "{name}: chart lines");
        let png = db.dir.path().join(format!("{name}.png"));
        run_chromium(
            chrome,
            &[
                &format!("--window-size={width},2400"),
                &format!("--screenshot={}", png.display()),
            ],
            &url,
        );
        assert_eq!(png_size(&png), (width, 2400));
        assert!(
            std::fs::metadata(&png).unwrap().len() > 20_000,
            "{name}: a blank page?"
        );
    }
}

async fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::get(url).await.ok()?;
    let code = r.status().as_u16();
    Some((code, r.text().await.ok()?))
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `watch --listen` on a free port, probes off and no Docker daemon, with `extra` config;
/// its log goes to `watch.log` beside the database. Returns the process and the port.
fn watch_listen(db: &Db, extra: &str) -> (Kill, u16) {
    let port = crate::util::free_port();
    let config = db.dir.path().join("tw.toml");
    std::fs::write(
        &config,
        format!("[probes]\nnvidia_smi = \"\"\ndata_root = \"\"\n{extra}"),
    )
    .unwrap();
    let log = std::fs::File::create(db.dir.path().join("watch.log")).unwrap();
    let watch = Kill(
        Command::new(env!("CARGO_BIN_EXE_trainwatch"))
            .arg("--db")
            .arg(&db.path)
            .arg("--config")
            .arg(&config)
            .args(["watch", "--listen", &format!("127.0.0.1:{port}")])
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    (watch, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[expect(
    clippy::too_many_lines,
    reason = "one Prometheus scenario, step by step"
)]
async fn watch_listen_serves_metrics_that_promtool_and_a_real_prometheus_accept() {
    let tools = ["/usr/bin/promtool", "/usr/bin/prometheus"];
    if tools.iter().any(|t| !std::path::Path::new(t).exists()) {
        crate::util::unavailable("skipping: prometheus is not installed");
        return;
    }
    let db = Db::new();
    let now = trainwatch::time::now_ns();
    tokio::task::block_in_place(|| {
        db.replay(&[fixture_str("ultralytics/normal-json.log")], Some("yolo"));
        db.replay(&[fixture_str("queue/queue.log")], Some("annotation-queue"));
        write_live(
            &db,
            vec![
                metric("gpu0", "gpu_temperature_c", now, 71.0),
                metric("gpu0", "gpu_memory_used_mb", now, 2048.0),
                metric("host", "disk_usage_azaion_gb", now, 412.5),
            ],
        )
    });
    let (_watch, port) = watch_listen(&db, "");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (code, health) = loop {
        if let Some(r) = get(&format!("{base}/healthz")).await {
            break r;
        }
        assert!(Instant::now() < deadline, "watch --listen did not answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(code == 200 || code == 503, "{code}");
    assert!(
        health.contains("training run 1 completed at epoch 10/10"),
        "{health}"
    );
    let (code, metrics) = get(&format!("{base}/metrics")).await.unwrap();
    assert_eq!(code, 200);
    for want in [
        "training_epoch{container=\"yolo\"} 10",
        "training_map50_95{container=\"yolo\"}",
        "queue_messages_processed_total{container=\"annotation-queue\"}",
        "queue_offset{container=\"annotation-queue\"}",
        "gpu_temperature_c{container=\"gpu0\",gpu=\"0\"} 71",
        "gpu_memory_used_bytes{container=\"gpu0\",gpu=\"0\"} 2147483648",
        "disk_usage_azaion_bytes{container=\"host\"} 412500000000",
        "trainwatch_alerts_firing{severity=\"critical\"}",
        "trainwatch_health_status",
        "trainwatch_lines_read_total",
        "trainwatch_events_stored_total",
        "trainwatch_notifications_failed_total",
        "# TYPE queue_messages_processed_total counter",
        // Every skip reason has a series, also those that never happened.
        "trainwatch_parse_skips_total{reason=\"truncated_gzip\"}",
        "trainwatch_parse_skips_total{reason=\"service_json_not_object\"}",
        "trainwatch_parse_skips_total{reason=\"bad_stream\"}",
    ] {
        assert!(metrics.contains(want), "missing {want}:\n{metrics}");
    }
    let mut promtool = Command::new("/usr/bin/promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(promtool.stdin.as_mut().unwrap(), metrics.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, html) = get(&format!("{base}/")).await.unwrap();
    assert_eq!(code, 200);
    assert!(html.contains("<svg") && html.contains("http-equiv=\"refresh\""));
    let (_, json) = get(&format!("{base}/status.json")).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["training"]["epoch"], 10);

    // A real Prometheus scrapes it.
    let pdir = tempfile::tempdir().unwrap();
    let pcfg = pdir.path().join("prometheus.yml");
    std::fs::write(
        &pcfg,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: trainwatch\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"),
    )
    .unwrap();
    let pport = crate::util::free_port();
    let _prom = Kill(
        Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", pcfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                pdir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{pport}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let q = format!("http://127.0.0.1:{pport}/api/v1/query?query=training_epoch");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, body)) = get(&q).await {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            if let Some(r) = v["data"]["result"].as_array().and_then(|a| a.first()) {
                assert_eq!(r["metric"]["container"], "yolo");
                assert_eq!(r["metric"]["job"], "trainwatch");
                assert_eq!(r["value"][1], "10");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped training_epoch"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let up = get(&format!("http://127.0.0.1:{pport}/api/v1/query?query=up"))
        .await
        .unwrap()
        .1;
    assert!(up.contains("\"1\""), "{up}");
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Whether the server has closed `s` (a read sees the end, or a reset) within `wait`.
fn closed_by_server(s: &mut std::net::TcpStream, wait: Duration) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            // A response (408 or similar) before the close is fine: read on.
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// A store with the queue's log, and `watch --listen` on it with `listen` (config) answering
/// `/healthz`: the process, its port and its base URL.
async fn queue_listening(db: &Db, listen: &str) -> (Kill, u16, String) {
    tokio::task::block_in_place(|| {
        db.replay(&[fixture_str("queue/queue.log")], Some("annotation-queue"));
    });
    let (watch, port) = watch_listen(db, listen);
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&format!("{base}/healthz")).await.is_none() {
        assert!(Instant::now() < deadline, "watch --listen did not answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (watch, port, base)
}

/// Hundreds of idle sockets and clients that send their headers a byte at a time, from the
/// probe's own address, all connected at once: `/healthz` and `/metrics` answer every time
/// (their connection takes the place of the oldest idle one), and descriptors stay bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_stays_reachable_under_idle_and_slow_clients() {
    let db = Db::new();
    let (watch, port, base) = queue_listening(
        &db,
        "[listen]\nmax_connections = 32\nmax_per_peer = 16\nheader_timeout = \"30s\"\n",
    )
    .await;
    let pid = watch.0.id();
    // The baseline once the watch has served a page of each kind (its store readers, the
    // writer's WAL and the runtime's descriptors are all open by then).
    let warm = reqwest::Client::new();
    for path in ["/healthz", "/metrics", "/healthz", "/metrics"] {
        let _ = warm.get(format!("{base}{path}")).send().await;
    }
    drop(warm);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = open_fds(pid);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // 100 clients that drip their headers one byte every 100 ms, reconnecting when closed.
    let drips: Vec<_> = (0..100)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let req = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    };
                    for b in req.iter().cycle() {
                        if stop.load(std::sync::atomic::Ordering::Relaxed)
                            || std::io::Write::write_all(&mut s, &[*b]).is_err()
                        {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
        })
        .collect();
    // And 500 idle sockets that send nothing.
    let idle: Vec<std::net::TcpStream> = tokio::task::block_in_place(|| {
        (0..500)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for i in 0..20 {
        for path in ["/healthz", "/metrics"] {
            let r = client.get(format!("{base}{path}")).send().await;
            let r = r.unwrap_or_else(|e| panic!("{path} #{i} failed: {e}"));
            assert!(
                r.status() == 200 || r.status() == 503,
                "{path}: {}",
                r.status()
            );
            let body = r.text().await.unwrap();
            assert!(body.contains("queue"), "{path}: {body}");
        }
        let held = open_fds(pid);
        assert!(
            held <= before + 32 + 8,
            "{held} descriptors open (was {before})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(idle);
    tokio::task::block_in_place(|| drips.into_iter().for_each(|t| t.join().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_bounds_idle_and_slow_clients() {
    let db = Db::new();
    let (watch, port, base) = queue_listening(
        &db,
        "[listen]\nmax_connections = 32\nheader_timeout = \"1s\"\n",
    )
    .await;
    let pid = watch.0.id();
    let before = open_fds(pid);
    tokio::task::block_in_place(|| {
        // 300 clients that connect and send nothing: at most 32 are held open.
        let mut idle: Vec<std::net::TcpStream> = (0..300)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let held = open_fds(pid);
        assert!(
            held <= before + 32 + 4,
            "{held} descriptors open with 300 idle clients (was {before})"
        );
        // A slow client that never finishes its headers is closed after the timeout.
        let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        std::io::Write::write_all(&mut slow, b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
        // The idle ones are closed too, once their second has passed.
        assert!(closed_by_server(&mut idle[0], Duration::from_secs(5)));
        assert!(closed_by_server(&mut slow, Duration::from_secs(5)));
        // The kernel's backlog still holds clients the server had no room for; it takes the
        // next ones as the first are closed. Once every client is gone, nothing is left open.
        idle.clear();
        drop(slow);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut after = open_fds(pid);
        while after > before + 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            after = open_fds(pid);
        }
        assert!(
            after <= before + 2,
            "{after} descriptors left (was {before})"
        );
    });
    // And it still answers, keep-alive included: two requests on one connection.
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let r = client.get(format!("{base}/healthz")).send().await.unwrap();
        assert!(r.status() == 200 || r.status() == 503, "{}", r.status());
        assert!(r.text().await.unwrap().contains("queue"));
    }
}
