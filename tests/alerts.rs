//! Alerts end to end: rules on the live writer under paused Tokio time, replays of real
//! captured runs, delivery to a real HTTP receiver on 127.0.0.1 (outage, recovery, restart),
//! and to a real Alertmanager.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use trainwatch::derive::Op;
use trainwatch::derive::alerts::{Engine, Rules, Signal};
use trainwatch::output::notify::{Notifier, NotifyConfig};
use trainwatch::output::receivers::{ReceiverConfig, ReceiverKind};
use trainwatch::source::probes;
use trainwatch::store::{AlertSink, WriterHandle, WriterOptions};
use trainwatch::time::{Age, Clock};

use crate::util::{Db, fixture_str};

pub(crate) fn live_writer(
    db: &Db,
    receivers: &[&str],
    wake: Option<Arc<tokio::sync::Notify>>,
) -> WriterHandle {
    let engine = Engine::new(Rules::default(), true, "/azaion");
    WriterHandle::spawn_with(
        db.path.clone(),
        WriterOptions {
            alerts: Some(AlertSink::new(
                engine,
                receivers.iter().map(|s| s.to_string()).collect(),
                wake,
            )),
            retry: false,
            health: None,
            note: None,
        },
    )
    .expect("writer")
}

/// `QueueContainerDown` waits its 5 minutes: driven by the clock task under paused time.
#[test]
fn queue_container_down_waits_five_minutes_of_clock_ticks() {
    for (wait_secs, firing) in [(290u64, 0i64), (310, 1)] {
        let db = Db::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let writer = live_writer(&db, &[], None);
        rt.block_on(async {
            let tx = writer.sender().unwrap();
            let clock = Clock::new();
            let down = Signal::Container {
                name: Arc::from("annotation-queue"),
                role: "queue".into(),
                running: false,
            };
            tx.send(vec![Op::Signal(clock.now_ns(), down)])
                .await
                .unwrap();
            let stop = CancellationToken::new();
            let (notices, notices_rx) = tokio::sync::mpsc::channel(64);
            let forward = tokio::spawn(trainwatch::pipeline::live::forward(notices_rx, tx.clone()));
            let ticks = tokio::spawn(probes::clock(notices, probes::TICK, clock, stop.clone()));
            tokio::time::sleep(Duration::from_secs(wait_secs)).await;
            stop.cancel();
            ticks.await.unwrap();
            forward.await.unwrap();
            // The clock as it stands now, whatever ticks the channel let through.
            tx.send(vec![Op::Tick(clock.now_ns())]).await.unwrap();
        });
        writer.finish().unwrap();
        assert_eq!(
            db.count("SELECT count(*) FROM alerts WHERE alertname = 'QueueContainerDown' AND status = 'firing'"),
            firing,
            "after {wait_secs}s"
        );
        // The heartbeat followed the clock.
        assert_eq!(db.count("SELECT count(*) FROM heartbeat"), 1);
    }
}

#[test]
fn replay_of_the_nan_run_fires_at_epoch_2_and_normal_runs_fire_nothing() {
    let db = Db::new();
    for name in ["normal", "earlystop", "interrupted", "longline"] {
        db.replay(
            &[fixture_str(&format!("ultralytics/{name}-json.log"))],
            Some(name),
        );
    }
    assert_eq!(db.count("SELECT count(*) FROM alerts"), 0);
    // The crash is recorded as the failure it was, firing until its archive ends.
    db.replay(&[fixture_str("ultralytics/crash-json.log")], Some("crash"));
    assert_eq!(
        db.text("SELECT alertname || ' ' || status || ' ' || summary FROM alerts")
            .as_deref(),
        Some(
            "TrainingFailed resolved Training in crash failed after epoch 2/5: RuntimeError: simulated data loader failure at epoch 2"
        )
    );
    let db = Db::new();
    db.replay(&[fixture_str("ultralytics/nan-json.log")], Some("nan"));
    assert_eq!(db.count("SELECT count(*) FROM alerts"), 2);
    let first_nan = db
        .text(
            "SELECT min(ts) FROM events WHERE container = 'nan' AND kind = 'loss_non_finite'
             AND json_extract(context, '$.epoch') = 2",
        )
        .unwrap();
    assert_eq!(
        db.text("SELECT started_at FROM alerts WHERE alertname = 'TrainingLossNonFinite'"),
        Some(first_nan)
    );
    assert_eq!(
        db.text("SELECT summary FROM alerts WHERE alertname = 'TrainingLossNonFinite'")
            .as_deref(),
        Some("Training loss is NaN/inf in nan at epoch 2")
    );
    assert_eq!(
        db.text("SELECT summary FROM alerts WHERE alertname = 'TrainingFailed'")
            .as_deref(),
        Some(
            "Training in nan failed after epoch 2/4: RuntimeError: Training failed: NaN persisted for 4 epochs"
        )
    );
    assert_eq!(
        db.count("SELECT count(*) FROM alerts WHERE json_extract(labels, '$.severity') = 'high'"),
        2
    );
    // The run failed, which resolves neither; the archive's end (its traceback, the run's end)
    // does: a replayed failure is history.
    let ended = db.text("SELECT ended_at FROM training_runs WHERE container = 'nan'");
    assert_eq!(
        db.count("SELECT count(*) FROM alerts WHERE status = 'resolved'"),
        2
    );
    assert_eq!(
        db.text("SELECT resolved_at FROM alerts WHERE alertname = 'TrainingFailed'"),
        ended
    );
    assert_eq!(
        db.text("SELECT resolved_at FROM alerts WHERE alertname = 'TrainingLossNonFinite'"),
        ended
    );
    // Replay never pages: no notification was queued. A second replay adds nothing.
    assert_eq!(db.count("SELECT count(*) FROM outbox"), 0);
    db.replay(&[fixture_str("ultralytics/nan-json.log")], Some("nan"));
    assert_eq!(db.count("SELECT count(*) FROM alerts"), 2);
}

/// A webhook receiver on 127.0.0.1 that answers 503 to its first `fail_first` requests.
pub(crate) struct Receiver {
    pub(crate) url: String,
    ok: Arc<Mutex<Vec<Value>>>,
    failed: Arc<AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    pub(crate) fn start(port: u16, fail_first: usize) -> Receiver {
        let server = tiny_http::Server::http(("127.0.0.1", port)).expect("bind receiver");
        let port = server.server_addr().to_ip().unwrap().port();
        let ok = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ok2, failed2, stop2) = (ok.clone(), failed.clone(), stop.clone());
        let join = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let Ok(Some(mut req)) = server.recv_timeout(Duration::from_millis(50)) else {
                    continue;
                };
                let mut body = String::new();
                let _ = req.as_reader().read_to_string(&mut body);
                if failed2.load(Ordering::SeqCst) < fail_first {
                    failed2.fetch_add(1, Ordering::SeqCst);
                    let _ = req.respond(tiny_http::Response::empty(503));
                    continue;
                }
                let auth = req
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("Authorization"))
                    .map(|h| h.value.to_string());
                let mut v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                if let (Some(a), Value::Object(m)) = (auth, &mut v) {
                    m.insert("_auth".into(), Value::String(a));
                }
                ok2.lock().unwrap().push(v);
                let _ = req.respond(tiny_http::Response::empty(200));
            }
        });
        Receiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            ok,
            failed,
            stop,
            join: Some(join),
        }
    }

    pub(crate) fn received(&self) -> Vec<Value> {
        self.ok.lock().unwrap().clone()
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

fn notify_cfg(kind: ReceiverKind, url: &str) -> NotifyConfig {
    NotifyConfig {
        receivers: vec![ReceiverConfig {
            name: "oncall".into(),
            kind,
            url: url.into(),
            bearer_token: Some("s3cret-token".into()),
            bearer_token_env: None,
            timeout: Age::secs(5),
            ..ReceiverConfig::default()
        }],
        alertmanager_resend: Age::secs(60),
        instance: Some("gpu-server-1".into()),
        page_url: None,
    }
}

fn gpu_temp(value: f64, ts: i64) -> Op {
    Op::metric(ts, "gpu0", "gpu_temperature_c", value)
}

/// Runs a notifier until `done` holds, half a second more (for a duplicate to show up), then
/// stops it as a shutdown would.
async fn notify_until(
    db: &Db,
    kind: ReceiverKind,
    url: &str,
    health: trainwatch::store::StoreHealth,
    what: &str,
    done: impl FnMut() -> bool,
) {
    let stop = CancellationToken::new();
    let writer = WriterHandle::spawn(db.path.clone()).unwrap();
    let notifier = Notifier::new(
        notify_cfg(kind, url),
        db.path.clone(),
        writer.sender().unwrap(),
        health,
    )
    .unwrap();
    let task = tokio::spawn(notifier.run(Arc::new(tokio::sync::Notify::new()), stop.clone()));
    wait_for(what, 40, done).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    task.await.unwrap();
    tokio::task::spawn_blocking(|| writer.finish().unwrap())
        .await
        .unwrap();
}

/// Feeds a fire and a resolve of `GpuTemperatureHigh` through a live writer.
pub(crate) fn fire_and_resolve(db: &Db) {
    let writer = live_writer(db, &["oncall"], None);
    let now = trainwatch::time::now_ns();
    writer.send(vec![gpu_temp(95.0, now)]).unwrap();
    writer
        .send(vec![gpu_temp(60.0, now + 1_000_000_000)])
        .unwrap();
    writer.finish().unwrap();
}

async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_outage_then_recovery_loses_nothing_and_doubles_nothing() {
    let db = Db::new();
    let rx = Receiver::start(0, 2);
    tokio::task::block_in_place(|| fire_and_resolve(&db));
    assert_eq!(
        db.count("SELECT count(*) FROM outbox WHERE delivered_at IS NULL"),
        2
    );
    notify_until(
        &db,
        ReceiverKind::Webhook,
        &rx.url,
        Default::default(),
        "two deliveries",
        || rx.received().len() >= 2,
    )
    .await;
    let got = rx.received();
    assert_eq!(rx.failed.load(Ordering::SeqCst), 2, "two 503s");
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(got[0]["status"], "firing");
    assert_eq!(got[1]["status"], "resolved");
    assert_ne!(got[0]["notification_id"], got[1]["notification_id"]);
    assert_eq!(got[0]["alert"]["alertname"], "GpuTemperatureHigh");
    assert_eq!(got[0]["alert"]["labels"]["gpu"], "0");
    assert_eq!(got[0]["alert"]["severity"], "critical");
    assert_eq!(got[0]["instance"], "gpu-server-1");
    assert_eq!(got[0]["_auth"], "Bearer s3cret-token");
    assert!(got[1]["alert"]["resolved_at"].is_string());
    assert_eq!(
        db.count("SELECT count(*) FROM outbox WHERE delivered_at IS NULL"),
        0
    );
    // The first one took three attempts (503, 503, 200), in order before the second.
    assert_eq!(db.count("SELECT max(attempts) FROM outbox"), 3);
    assert_eq!(
        db.count("SELECT count(*) FROM alerts WHERE last_notified_at IS NOT NULL"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_notifications_survive_a_restart_of_the_notifier() {
    let db = Db::new();
    // A port with nobody listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    tokio::task::block_in_place(|| fire_and_resolve(&db));
    notify_until(
        &db,
        ReceiverKind::Webhook,
        &url,
        Default::default(),
        "a failed attempt",
        || db.count("SELECT count(*) FROM outbox WHERE attempts > 0") > 0,
    )
    .await;
    assert!(
        db.text("SELECT last_error FROM outbox WHERE attempts > 0 LIMIT 1")
            .is_some_and(|e| !e.contains("127.0.0.1")),
        "errors are logged and stored without the URL"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM outbox WHERE delivered_at IS NULL"),
        2
    );
    // trainwatch starts again; the receiver is back.
    let rx = Receiver::start(port, 0);
    notify_until(
        &db,
        ReceiverKind::Webhook,
        &url,
        Default::default(),
        "both deliveries",
        || rx.received().len() >= 2,
    )
    .await;
    let got = rx.received();
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(got[0]["status"], "firing");
    assert_eq!(got[1]["status"], "resolved");
}

/// Starts Debian's `prometheus-alertmanager` on a loopback port (installed by `.ci/run`).
struct Alertmanager {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_alertmanager() -> Option<Alertmanager> {
    let bin = ["/usr/bin/prometheus-alertmanager", "/usr/bin/alertmanager"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(bin) = bin else {
        crate::util::unavailable("skipping: prometheus-alertmanager is not installed");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("alertmanager.yml");
    std::fs::write(
        &cfg,
        "route:\n  receiver: blackhole\n  group_wait: 1s\nreceivers:\n  - name: blackhole\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(bin)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start alertmanager");
    let am = Alertmanager {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let ready = format!("{}/-/ready", am.url);
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client
            .get(&ready)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Some(am);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("alertmanager did not become ready");
}

async fn am_alerts(url: &str) -> Vec<Value> {
    reqwest::get(format!("{url}/api/v2/alerts"))
        .await
        .unwrap()
        .json::<Vec<Value>>()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_alertmanager_receives_the_alert_and_its_resolution() {
    let Some(am) = start_alertmanager().await else {
        return;
    };
    let db = Db::new();
    let wake = Arc::new(tokio::sync::Notify::new());
    let writer = live_writer(&db, &["oncall"], Some(wake.clone()));
    let stop = CancellationToken::new();
    let notifier = Notifier::new(
        notify_cfg(ReceiverKind::Alertmanager, &am.url),
        db.path.clone(),
        writer.sender().unwrap(),
        Default::default(),
    )
    .unwrap();
    let task = tokio::spawn(notifier.run(wake, stop.clone()));
    let tx = writer.sender().unwrap();
    tx.send(vec![gpu_temp(97.0, trainwatch::time::now_ns())])
        .await
        .unwrap();
    let mut found = Value::Null;
    for _ in 0..200 {
        let alerts = am_alerts(&am.url).await;
        if let Some(a) = alerts
            .into_iter()
            .find(|a| a["labels"]["alertname"] == "GpuTemperatureHigh")
        {
            found = a;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(found["labels"]["gpu"], "0", "{found:#}");
    assert_eq!(found["labels"]["severity"], "critical");
    assert_eq!(found["labels"]["instance"], "gpu-server-1");
    assert_eq!(found["status"]["state"], "active");
    assert!(
        found["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("97")
    );
    // Resolve: Alertmanager drops it from its active alerts.
    tx.send(vec![gpu_temp(50.0, trainwatch::time::now_ns())])
        .await
        .unwrap();
    let mut gone = false;
    for _ in 0..200 {
        let alerts = am_alerts(&am.url).await;
        if !alerts
            .iter()
            .any(|a| a["labels"]["alertname"] == "GpuTemperatureHigh")
        {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the alert was not resolved in Alertmanager");
    stop.cancel();
    task.await.unwrap();
    drop(tx);
    tokio::task::spawn_blocking(move || writer.finish().unwrap())
        .await
        .unwrap();
    assert_eq!(
        db.count("SELECT count(*) FROM outbox WHERE delivered_at IS NOT NULL"),
        2
    );
}

/// `trainwatch health` on `db`, as cron runs it: its exit code and line.
async fn health_cli(db: &std::path::Path) -> (Option<i32>, String) {
    let path = db.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let o = crate::util::bin(&["health"], &path);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).to_string(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_database_is_reported_out_of_band_then_resolved_through_the_outbox() {
    let db = Db::new();
    let rx = Receiver::start(0, 0);
    let wake = Arc::new(tokio::sync::Notify::new());
    let health = trainwatch::store::StoreHealth::default();
    let engine = Engine::new(Rules::default(), true, "/azaion");
    // As `watch` holds it: the writer notes the outage in the lock file for `health`.
    let lock = trainwatch::store::lock::IngestLock::acquire(
        &db.path,
        trainwatch::store::lock::Ingestor::Watch,
        |_| {},
    )
    .unwrap();
    let writer = WriterHandle::spawn_with(
        db.path.clone(),
        WriterOptions {
            alerts: Some(AlertSink::new(
                engine,
                vec!["oncall".into()],
                Some(wake.clone()),
            )),
            retry: true,
            health: Some(health.clone()),
            note: Some(lock.note()),
        },
    )
    .unwrap();

    let stop = CancellationToken::new();
    let notifier = Notifier::new(
        notify_cfg(ReceiverKind::Webhook, &rx.url),
        db.path.clone(),
        writer.sender().unwrap(),
        health.clone(),
    )
    .unwrap();
    let task = tokio::spawn(notifier.run(wake, stop.clone()));
    // Another program holds the write lock.
    let locker = rusqlite::Connection::open(&db.path).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let tx = writer.sender().unwrap();
    tx.send(vec![Op::Tick(trainwatch::time::now_ns())])
        .await
        .unwrap();
    wait_for("the out-of-band StoreNotWritable", 40, || {
        rx.received()
            .iter()
            .any(|v| v["alert"]["alertname"] == "StoreNotWritable")
    })
    .await;
    assert!(
        health
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .error
            .contains("locked")
    );
    // Another process learns it at once, though nothing could be written.
    let (code, line) = health_cli(&db.path).await;
    assert_eq!(code, Some(2), "{line}");
    assert!(
        line.starts_with("CRITICAL:") && line.contains("1 alert firing: StoreNotWritable"),
        "{line}"
    );
    locker.execute_batch("ROLLBACK").unwrap();
    wait_for("the store to recover", 40, || {
        health.lock().unwrap().is_none()
    })
    .await;
    tx.send(vec![Op::Tick(trainwatch::time::now_ns())])
        .await
        .unwrap();
    wait_for("the resolution", 40, || rx.received().len() >= 2).await;
    let (_, line) = health_cli(&db.path).await;
    assert!(!line.contains("StoreNotWritable"), "{line}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    task.await.unwrap();
    drop(tx);
    tokio::task::spawn_blocking(move || writer.finish().unwrap())
        .await
        .unwrap();
    drop(lock);
    let got = rx.received();
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(got[0]["status"], "firing");
    assert_eq!(got[0]["notification_id"], 0);
    assert_eq!(got[1]["status"], "resolved");
    assert_eq!(got[1]["alert"]["alertname"], "StoreNotWritable");
    // History keeps it once the store is back.
    assert_eq!(
        db.count("SELECT count(*) FROM alerts WHERE alertname = 'StoreNotWritable' AND status = 'resolved'"),
        1
    );
}

/// The alerts and the notifications queued for them: (fingerprint, alertname, status, summary,
/// started_at, resolved_at) per alert, (receiver, fingerprint, started_at, event) per
/// notification, sorted.
fn alerts_and_outbox(db: &Db) -> (Vec<String>, Vec<String>) {
    let conn = db.conn();
    let rows = |sql: &str| -> Vec<String> {
        conn.prepare(sql)
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    (
        rows(
            "SELECT json_array(fingerprint, alertname, severity, status, labels, summary,
                    started_at, resolved_at, origin)
             FROM alerts ORDER BY fingerprint, started_at",
        ),
        rows(
            "SELECT json_array(o.receiver, a.fingerprint, a.started_at, o.event)
             FROM outbox o JOIN alert_log a ON a.id = o.alert_id ORDER BY 1",
        ),
    )
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// `watch` stopped at any batch and started again (the ops after the last commit come
    /// again, as the sources re-read from their cursors) records the same alerts and queues
    /// the same notifications as a `watch` that never stopped: none lost, none twice, none
    /// for a state that never existed. The ops are stamped a minute ahead of the wall clock,
    /// as a live stream is, so the restart's own tick finds nothing to do.
    #[test]
    fn watch_restarted_at_any_batch_records_and_notifies_exactly_once(
        steps in proptest::collection::vec(crate::props::arb_alert_step(), 1..120),
        batch in 1usize..12,
        cut in 0usize..120,
    ) {
        let t0 = trainwatch::time::now_ns() + 60_000_000_000;
        let ops = crate::props::alert_ops(&steps, t0);
        let cut = cut.min(ops.len()) / batch * batch;
        let feed = |db: &Db, ops: &[Op]| {
            let w = live_writer(db, &["oncall", "pager"], None);
            for b in ops.chunks(batch) {
                w.send(b.to_vec()).unwrap();
            }
            w.finish().unwrap();
        };
        let whole = Db::new();
        feed(&whole, &ops);
        let restarted = Db::new();
        feed(&restarted, &ops[..cut]);
        feed(&restarted, &ops[cut..]);
        let (want, have) = (alerts_and_outbox(&whole), alerts_and_outbox(&restarted));
        let diff = |w: &[String], h: &[String]| {
            let missing: Vec<&String> = w.iter().filter(|r| !h.contains(r)).collect();
            let extra: Vec<&String> = h.iter().filter(|r| !w.contains(r)).collect();
            format!("missing {missing:#?}\nextra {extra:#?}")
        };
        proptest::prop_assert!(have.0 == want.0, "alerts: {}", diff(&want.0, &have.0));
        proptest::prop_assert!(have.1 == want.1, "notifications: {}", diff(&want.1, &have.1));
    }
}

/// A webhook receiver that answers 302 (an `http://` URL behind a proxy that redirects to
/// `https://`): the redirect is not followed, nothing is marked delivered, the target of the
/// redirect gets no request, and the error says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_a_delivery() {
    let db = Db::new();
    // Where the redirect points: it would answer 200 to anything.
    let target = Receiver::start(0, 0);
    let server = tiny_http::Server::http(("127.0.0.1", 0)).unwrap();
    let port = server.server_addr().to_ip().unwrap().port();
    let location = target.url.clone();
    let asked = Arc::new(AtomicUsize::new(0));
    let asked2 = asked.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let redirector = std::thread::spawn(move || {
        while !stop2.load(Ordering::SeqCst) {
            let Ok(Some(req)) = server.recv_timeout(Duration::from_millis(50)) else {
                continue;
            };
            asked2.fetch_add(1, Ordering::SeqCst);
            let header = tiny_http::Header::from_bytes("Location", location.as_bytes()).unwrap();
            let _ = req.respond(tiny_http::Response::empty(302).with_header(header));
        }
    });
    tokio::task::block_in_place(|| fire_and_resolve(&db));
    notify_until(
        &db,
        ReceiverKind::Webhook,
        &format!("http://127.0.0.1:{port}/hook"),
        Default::default(),
        "a refused attempt",
        || db.count("SELECT count(*) FROM outbox WHERE attempts > 0") > 0,
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    redirector.join().unwrap();
    assert!(asked.load(Ordering::SeqCst) >= 1);
    assert_eq!(target.received().len(), 0, "the redirect was followed");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox WHERE delivered_at IS NOT NULL"),
        0
    );
    assert_eq!(
        db.count("SELECT count(*) FROM outbox WHERE abandoned_at IS NOT NULL"),
        0,
        "kept, to be delivered once the url is fixed"
    );
    let err = db
        .text("SELECT last_error FROM outbox WHERE attempts > 0 LIMIT 1")
        .unwrap_or_default();
    assert!(
        err.starts_with("HTTP 302: a redirect (not followed"),
        "{err}"
    );
    assert!(!err.contains("127.0.0.1"), "{err}");
}
