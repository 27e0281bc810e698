//! `watch --listen ADDR` (off by default): the status page at `/`, the status document at
//! `/status.json`, `/healthz` (200 when ok or warning, 503 when critical, with the health line)
//! and `/metrics` in the Prometheus/OpenMetrics text format, so a fleet of GPU servers is
//! scraped by an existing Prometheus and routed by an existing Alertmanager.
//!
//! Every request reads the store on a blocking thread through its own read-only connection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::{page, status};
use crate::store::StoreHealth;
use crate::telemetry::{COUNTERS, Counters};

#[derive(Clone)]
struct AppState {
    db: PathBuf,
    max_age_ns: i64,
    health: StoreHealth,
    refresh_secs: u64,
}

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// Help text of the service's metric names.
fn help(name: &str) -> &'static str {
    match name {
        "training_epoch" => "Last completed training epoch",
        "training_loss" => "Training loss of the last epoch (sum of the loss columns)",
        "training_mAP50" => "Validation mAP50 of the last epoch",
        "training_mAP50_95" => "Validation mAP50-95 of the last epoch",
        "queue_messages_processed" => "Annotation queue messages processed (running total)",
        "queue_messages_failed" => "Annotation queue messages failed (running total)",
        "queue_offset" => "Annotation queue stream offset",
        "gpu_temperature_c" => "GPU temperature in degrees Celsius",
        "gpu_utilization_pct" => "GPU utilisation in percent",
        "gpu_memory_used_mb" => "GPU memory used in MiB",
        "gpu_memory_total_mb" => "GPU memory in MiB",
        "disk_usage_azaion_gb" => "Disk space used on the data root in GB",
        "disk_usage_azaion_pct" => "Disk space used on the data root in percent",
        "disk_total_azaion_gb" => "Size of the data root's file system in GB",
        "disk_usage_datasets_gb" => "Size of datasets/ under the data root in GB",
        "disk_usage_models_gb" => "Size of models/ under the data root in GB",
        _ => "Latest value from trainwatch",
    }
}

/// Valid Prometheus metric name characters only.
fn metric_name(name: &str) -> Option<&str> {
    let ok = !name.is_empty()
        && name
            .chars()
            .enumerate()
            .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit()));
    ok.then_some(name)
}

/// The exposition: the latest value of every stored metric (the service's names, labelled
/// with `container`, and `gpu` for GPU metrics), firing alerts by severity, the data's age,
/// and trainwatch's own counters.
pub fn metrics_text(s: &status::Status) -> String {
    let mut reg = Registry::default();
    let mut families: Vec<(String, Family<Labels, FloatGauge>)> = Vec::new();
    for g in &s.gauges {
        let Some(name) = metric_name(&g.name) else {
            continue;
        };
        let fam = match families.iter().find(|(n, _)| n == name) {
            Some((_, f)) => f.clone(),
            None => {
                let f = Family::<Labels, FloatGauge>::default();
                reg.register(name, help(name), f.clone());
                families.push((name.to_string(), f.clone()));
                f
            }
        };
        let mut labels = vec![("container".to_string(), g.container.clone())];
        if let Some(gpu) = g
            .container
            .strip_prefix("gpu")
            .filter(|_| name.starts_with("gpu_"))
        {
            labels.push(("gpu".into(), gpu.to_string()));
        }
        fam.get_or_create(&labels).set(g.value);
    }
    let firing = Family::<Labels, Gauge>::default();
    reg.register(
        "trainwatch_alerts_firing",
        "Alerts firing, by severity",
        firing.clone(),
    );
    for sev in ["critical", "high", "medium", "low"] {
        let n = s.alerts_firing.iter().filter(|a| a.severity == sev).count();
        firing
            .get_or_create(&vec![("severity".into(), sev.into())])
            .set(n as i64);
    }
    let health = Gauge::<i64>::default();
    health.set(s.health.code as i64);
    reg.register(
        "trainwatch_health_status",
        "Health verdict: 0 ok, 1 warning, 2 critical",
        health,
    );
    if let Some(age) = s.health.data_age_seconds {
        let g = FloatGauge::default();
        g.set(age);
        reg.register(
            "trainwatch_data_age_seconds",
            "Seconds since the newest heartbeat or stored record",
            g,
        );
    }
    for (name, help, v) in [
        (
            "trainwatch_lines_read",
            "Log lines read from followed containers",
            &COUNTERS.lines_read,
        ),
        (
            "trainwatch_events_stored",
            "Events stored by this process",
            &COUNTERS.events_stored,
        ),
        (
            "trainwatch_batches_committed",
            "Store transactions committed by this process",
            &COUNTERS.batches_committed,
        ),
        (
            "trainwatch_notifications_delivered",
            "Alert notifications delivered",
            &COUNTERS.notifications_delivered,
        ),
        (
            "trainwatch_notifications_failed",
            "Alert notification attempts that failed (retried)",
            &COUNTERS.notifications_failed,
        ),
    ] {
        let c = Counter::<u64>::default();
        c.inc_by(Counters::get(v));
        reg.register(name, help, c);
    }
    let skips = Family::<Labels, Counter>::default();
    reg.register(
        "trainwatch_parse_skips",
        "Log input skipped, by reason",
        skips.clone(),
    );
    for (reason, n) in COUNTERS.skips() {
        skips
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc_by(n);
    }
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

async fn read<T: Send + 'static>(
    st: &AppState,
    f: impl FnOnce(&rusqlite::Connection, status::Status, i64) -> Result<T, String> + Send + 'static,
) -> Result<T, Response> {
    let (db, max_age, health) = (st.db.clone(), st.max_age_ns, st.health.clone());
    tokio::task::spawn_blocking(move || {
        let conn = crate::store::open_ro(&db).map_err(|e| e.to_string())?;
        let now = crate::time::now_ns();
        let mut s = status::collect(&conn, now, max_age).map_err(|e| e.to_string())?;
        let outage = health.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let extra: Vec<_> = outage.iter().map(crate::store::outage_alert).collect();
        status::add_volatile(&mut s, extra, max_age, now);
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
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
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

/// Binds `addr` and serves until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "Serving the status page, /healthz and /metrics.");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
