//! `watch --listen ADDR` (off by default): the status page at `/`, the status document at
//! `/status.json`, `/healthz` (200 when ok or warning, 503 when critical, with the health line)
//! and `/metrics` in the Prometheus text format, so a fleet of GPU servers is
//! scraped by an existing Prometheus and routed by an existing Alertmanager.
//!
//! Every request reads the store on a blocking thread through its own read-only connection.
//! Connections are bounded ([`Limits`], config `[listen]`): a client that sends no complete
//! request headers in time is closed; past the connection limit, or the limit per address, a
//! new connection takes the place of the oldest idle one ([`super::conns`]), so idle sockets
//! cannot take the file descriptors the store, the probes and the followers need, and idle or
//! slow clients cannot keep the health probe and Prometheus out.

use crate::event::metric;
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus::{
    CounterVec, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::conns::{Conns, Counted};
use super::{page, status};
use crate::store::StoreHealth;
use crate::telemetry::{COUNTERS, Counters};
use crate::time::Age;

#[derive(Clone)]
struct AppState {
    db: PathBuf,
    max_age_ns: i64,
    health: StoreHealth,
    refresh_secs: u64,
}

/// Help text of the service's metric names.
fn help(name: &str) -> &'static str {
    match name {
        metric::TRAINING_EPOCH => "Last completed training epoch",
        metric::TRAINING_LOSS => "Training loss of the last epoch (sum of the loss columns)",
        metric::TRAINING_MAP50 => "Validation mAP50 of the last epoch",
        metric::TRAINING_MAP50_95 => "Validation mAP50-95 of the last epoch",
        metric::QUEUE_MESSAGES_PROCESSED => "Annotation queue messages processed",
        metric::QUEUE_MESSAGES_FAILED => "Annotation queue messages that failed",
        metric::QUEUE_OFFSET => "Annotation queue stream offset",
        metric::GPU_TEMPERATURE_C => "GPU temperature in degrees Celsius",
        metric::GPU_UTILIZATION_PCT => "GPU utilisation in percent",
        metric::GPU_MEMORY_USED_MB => "GPU memory used in bytes",
        metric::GPU_MEMORY_TOTAL_MB => "GPU memory in bytes",
        metric::DISK_USAGE_AZAION_GB => "Disk space used on the data root in bytes",
        metric::DISK_USAGE_AZAION_PCT => "Disk space used on the data root in percent",
        metric::DISK_TOTAL_AZAION_GB => "Size of the data root's file system in bytes",
        "disk_usage_datasets_gb" => "Size of datasets/ under the data root in bytes",
        "disk_usage_models_gb" => "Size of models/ under the data root in bytes",
        "container_cpu_pct" => {
            "Container CPU use in percent of one CPU, as docker stats computes it"
        }
        "container_memory_used_bytes" => "Container memory used without the inactive file cache",
        "container_memory_limit_bytes" => "Container memory limit (the host's memory without one)",
        "container_network_rx_bytes" => "Bytes the container received since it started",
        "container_network_tx_bytes" => "Bytes the container sent since it started",
        "container_block_read_bytes" => {
            "Bytes the container read from block devices since it started"
        }
        "container_block_write_bytes" => {
            "Bytes the container wrote to block devices since it started"
        }
        "container_pids" => "Processes and threads in the container",
        _ => "Latest value recorded by trainwatch",
    }
}

/// The exposition name of a stored metric: the service's name where it already follows
/// Prometheus' conventions, else the conventional form (snake_case, base units, `_total` for
/// counters), so `promtool check metrics` accepts the exposition. Returns the name, a scale
/// factor to base units, and whether it is a counter.
pub fn exposition_name(name: &str) -> Option<(String, f64, bool)> {
    const MIB: f64 = 1024.0 * 1024.0;
    Some(match name {
        metric::TRAINING_MAP50 => ("training_map50".into(), 1.0, false),
        metric::TRAINING_MAP50_95 => ("training_map50_95".into(), 1.0, false),
        metric::QUEUE_MESSAGES_PROCESSED => ("queue_messages_processed_total".into(), 1.0, true),
        metric::QUEUE_MESSAGES_FAILED => ("queue_messages_failed_total".into(), 1.0, true),
        metric::GPU_MEMORY_USED_MB => ("gpu_memory_used_bytes".into(), MIB, false),
        // Docker's cumulative byte counts (reset when the container restarts, as counters may).
        "container_network_rx_bytes"
        | "container_network_tx_bytes"
        | "container_block_read_bytes"
        | "container_block_write_bytes" => (format!("{name}_total"), 1.0, true),
        metric::GPU_MEMORY_TOTAL_MB => ("gpu_memory_total_bytes".into(), MIB, false),
        n if n.ends_with("_gb") => (format!("{}_bytes", &n[..n.len() - 3]), 1e9, false),
        n => {
            let ok = !n.is_empty()
                && n.chars().enumerate().all(|(i, c)| {
                    c.is_ascii_lowercase() || c == '_' || (i > 0 && c.is_ascii_digit())
                });
            if !ok {
                return None;
            }
            (n.to_string(), 1.0, false)
        }
    })
}

fn register<T: prometheus::core::Collector + Clone + 'static>(reg: &Registry, c: &T) {
    // Names are unique by construction; a clash would only drop that family.
    let _ = reg.register(Box::new(c.clone()));
}

/// The exposition (Prometheus text format): the latest value of every stored metric, labelled
/// with `container` (and `gpu` for GPU metrics), firing alerts by severity, the health verdict,
/// the data's age, and trainwatch's own counters.
#[expect(
    clippy::too_many_lines,
    reason = "the /metrics exposition: one family after another"
)]
pub fn metrics_text(s: &status::Status) -> String {
    let reg = Registry::new();
    let mut gauges: Vec<(String, GaugeVec)> = Vec::new();
    let mut counters: Vec<(String, CounterVec)> = Vec::new();
    let redactions = IntCounterVec::new(
        Opts::new(
            "trainwatch_redactions_total",
            "Secrets redacted from a container's logs, by kind (see the SecretsInLogs alert)",
        ),
        &["container", "kind"],
    )
    .ok();
    if let Some(r) = &redactions {
        register(&reg, r);
    }
    for g in &s.gauges {
        if let Some(kind) = metric::redaction_kind(&g.name) {
            if let Some(r) = &redactions
                && let Ok(c) = r.get_metric_with_label_values(&[&g.container, kind])
            {
                c.inc_by(g.value.max(0.0) as u64);
            }
            continue;
        }
        let Some((name, scale, counter)) = exposition_name(&g.name) else {
            continue;
        };
        let gpu = g.name.starts_with("gpu_");
        let labels: &[&str] = if gpu {
            &["container", "gpu"]
        } else {
            &["container"]
        };
        let gpu_id = g.container.strip_prefix("gpu").unwrap_or(&g.container);
        let values: &[&str] = if gpu {
            &[&g.container, gpu_id]
        } else {
            &[&g.container]
        };
        let v = g.value * scale;
        if counter {
            let fam = match counters.iter().find(|(n, _)| *n == name) {
                Some((_, f)) => f.clone(),
                None => {
                    let Ok(f) = CounterVec::new(Opts::new(&name, help(&g.name)), labels) else {
                        continue;
                    };
                    register(&reg, &f);
                    counters.push((name.clone(), f.clone()));
                    f
                }
            };
            if let Ok(c) = fam.get_metric_with_label_values(values) {
                c.inc_by(v.max(0.0));
            }
        } else {
            let fam = match gauges.iter().find(|(n, _)| *n == name) {
                Some((_, f)) => f.clone(),
                None => {
                    let Ok(f) = GaugeVec::new(Opts::new(&name, help(&g.name)), labels) else {
                        continue;
                    };
                    register(&reg, &f);
                    gauges.push((name.clone(), f.clone()));
                    f
                }
            };
            if let Ok(m) = fam.get_metric_with_label_values(values) {
                m.set(v);
            }
        }
    }
    if let Ok(firing) = IntGaugeVec::new(
        Opts::new("trainwatch_alerts_firing", "Alerts firing, by severity"),
        &["severity"],
    ) {
        register(&reg, &firing);
        for sev in ["critical", "high", "medium", "low"] {
            let n = s.alerts_firing.iter().filter(|a| a.severity == sev).count();
            firing.with_label_values(&[sev]).set(n as i64);
        }
    }
    if let Ok(h) = IntGauge::new(
        "trainwatch_health_status",
        "Health verdict: 0 ok, 1 warning, 2 critical",
    ) {
        h.set(s.health.code as i64);
        register(&reg, &h);
    }
    if let Some(age) = s.health.data_age_seconds
        && let Ok(g) = Gauge::new(
            "trainwatch_data_age_seconds",
            "Seconds since the newest heartbeat or stored record",
        )
    {
        g.set(age);
        register(&reg, &g);
    }
    for (name, help, v) in [
        (
            "trainwatch_lines_read_total",
            "Log lines read from followed containers",
            &COUNTERS.lines_read,
        ),
        (
            "trainwatch_events_stored_total",
            "Events stored by this process",
            &COUNTERS.events_stored,
        ),
        (
            "trainwatch_batches_committed_total",
            "Store transactions committed by this process",
            &COUNTERS.batches_committed,
        ),
        (
            "trainwatch_notifications_delivered_total",
            "Alert notifications delivered",
            &COUNTERS.notifications_delivered,
        ),
        (
            "trainwatch_notifications_failed_total",
            "Alert notification attempts that failed (retried)",
            &COUNTERS.notifications_failed,
        ),
        (
            "trainwatch_mlflow_points_exported_total",
            "Metric points the MLflow tracking server acknowledged",
            &COUNTERS.mlflow_points_exported,
        ),
        (
            "trainwatch_mlflow_requests_failed_total",
            "Requests to the MLflow tracking server that failed",
            &COUNTERS.mlflow_requests_failed,
        ),
    ] {
        if let Ok(c) = IntCounter::new(name, help) {
            c.inc_by(Counters::get(v));
            register(&reg, &c);
        }
    }
    if let Ok(skips) = IntCounterVec::new(
        Opts::new(
            "trainwatch_parse_skips_total",
            "Log input skipped, by reason",
        ),
        &["reason"],
    ) {
        for reason in crate::source::SKIP_REASONS {
            skips.with_label_values(&[reason]);
        }
        for (reason, n) in COUNTERS.skips() {
            skips.with_label_values(&[reason]).inc_by(n);
        }
        register(&reg, &skips);
    }
    TextEncoder::new()
        .encode_to_string(&reg.gather())
        .unwrap_or_default()
}

async fn read<T: Send + 'static>(
    st: &AppState,
    f: impl FnOnce(&rusqlite::Connection, status::Status, i64) -> Result<T, String> + Send + 'static,
) -> Result<T, Response> {
    let (db, max_age, health) = (st.db.clone(), st.max_age_ns, st.health.clone());
    tokio::task::spawn_blocking(move || {
        let conn = crate::store::open_ro(&db).map_err(|e| e.to_string())?;
        let now = crate::time::now_ns();
        let s = status::collect_live(&conn, now, max_age, &health).map_err(|e| e.to_string())?;
        f(&conn, s, now)
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r)
    .map_err(|e| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the store: {e}\n"),
        )
            .into_response()
    })
}

async fn index(State(st): State<AppState>) -> Response {
    let refresh = st.refresh_secs;
    match read(&st, move |conn, s, now| {
        page::build(conn, &s, now, Some(refresh)).map_err(|e| e.to_string())
    })
    .await
    {
        Ok(html) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
        Err(r) => r,
    }
}

async fn status_json(State(st): State<AppState>) -> Response {
    match read(&st, |_, s, _| Ok(status::to_json(&s))).await {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(r) => r,
    }
}

async fn healthz(State(st): State<AppState>) -> Response {
    match read(&st, |_, s, _| Ok(s.health)).await {
        Ok(h) => {
            let code = if h.code >= 2 {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            (code, format!("{}\n", h.line)).into_response()
        }
        Err(r) => r,
    }
}

async fn metrics(State(st): State<AppState>) -> Response {
    match read(&st, |_, s, _| Ok(metrics_text(&s))).await {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(r) => r,
    }
}

/// The router of `watch --listen`.
pub fn router(db: PathBuf, max_age_ns: i64, health: StoreHealth, refresh_secs: u64) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/status.json", get(status_json))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(AppState {
            db,
            max_age_ns,
            health,
            refresh_secs,
        })
}

/// Most connections served at once; past it a new one takes the place of the oldest idle one,
/// so idle or hostile clients cannot take the process's file descriptors from the store and
/// the probes.
pub const MAX_CONNECTIONS: usize = 256;
/// Most connections from one address at once (the same rule applies past it).
pub const MAX_PER_PEER: usize = 64;
/// A client must send a request's headers within this time of connecting, or of its previous
/// response on a kept-alive connection: idle and slow-header (slowloris) clients are closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is closed after this long even if busy; keep-alive scrapers reconnect.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);
/// On shutdown, requests in flight get this long to finish.
const DRAIN: Duration = Duration::from_secs(5);

/// Limits of [`serve_with`]: config section `[listen]`.
#[derive(Clone, Copy, Debug, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections from one address at once.
    pub max_per_peer: usize,
    /// Time to send a request's headers (after connecting or the previous response).
    pub header_timeout: Age,
    /// Age after which a connection is closed (after its request in flight).
    pub max_age: Age,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            max_per_peer: MAX_PER_PEER,
            header_timeout: Age(HEADER_TIMEOUT.as_nanos() as i64),
            max_age: Age(MAX_CONNECTION_AGE.as_nanos() as i64),
        }
    }
}

/// Serves on `listener` until `shutdown`, with the default [`Limits`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, router, shutdown, Limits::default()).await
}

/// Serves on `listener` until `shutdown`: HTTP/1.1 with keep-alive, at most
/// `limits.max_connections` at once and `limits.max_per_peer` from one address (past either,
/// the oldest idle connection gives its place), headers within `limits.header_timeout`. An
/// accept that fails (no file descriptors left) is retried after a pause, never ends the
/// server.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
    limits: Limits,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, max_connections = limits.max_connections, max_per_peer = limits.max_per_peer, "Serving the status page, /healthz and /metrics.");
    let slots = Conns::new(limits.max_connections, limits.max_per_peer);
    let tasks = TaskTracker::new();
    let (mut refused, mut evicted): (u64, u64) = (0, 0);
    let mut accept_failed = false;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (sock, peer) = match accepted {
            Ok(a) => {
                accept_failed = false;
                a
            }
            Err(e) => {
                if !accept_failed {
                    tracing::warn!(error = %e, "Cannot accept a connection; retrying.");
                    accept_failed = true;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                continue;
            }
        };
        let full = slots.len() >= limits.max_connections;
        let slot = match slots.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                refused += 1;
                if refused.is_power_of_two() {
                    tracing::warn!(refused, peer = %peer.ip(), ?why, "Every connection has a request in flight; closing new ones.");
                }
                drop(sock);
                continue;
            }
        };
        if full {
            evicted += 1;
            if evicted.is_power_of_two() {
                tracing::warn!(
                    evicted,
                    limit = limits.max_connections,
                    "Too many connections; closing the oldest idle ones for new ones."
                );
            }
        }
        let _ = sock.set_nodelay(true);
        let service = Counted {
            inner: TowerToHyperService::new(router.clone()),
            busy: slot.busy.clone(),
        };
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout.as_duration())
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(sock), service);
            tokio::pin!(conn);
            let age = tokio::time::sleep(limits.max_age.as_duration());
            tokio::pin!(age);
            let stopping = tokio::select! {
                _ = conn.as_mut() => false,
                // Its place went to a new connection: it had no request in flight.
                _ = slot.evict.cancelled() => return,
                _ = shutdown.cancelled() => true,
                _ = &mut age => true,
            };
            if stopping {
                // Finish the request in flight (if any), then close.
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(DRAIN, conn.as_mut()).await;
            }
            drop(slot);
        });
    }
    tasks.close();
    let _ = tokio::time::timeout(DRAIN, tasks.wait()).await;
    Ok(())
}
