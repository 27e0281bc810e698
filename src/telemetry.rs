//! trainwatch's own logs: JSON lines in the service format the other services on the server
//! use, `{"timestamp","level","service":"trainwatch","message","context":{...}}`, so the same
//! tools read them. Fields of a `tracing` event go into `context`; secrets are redacted.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events as service-format JSON lines.
pub struct ServiceFormat;

#[derive(Default)]
struct Fields {
    message: String,
    context: Map<String, Value>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.context
                .insert(field.name().into(), Value::String(value.to_string()));
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.context.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.context.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.context.insert(
            field.name().into(),
            serde_json::Number::from_f64(value)
                .map(Value::Number)
                .unwrap_or(Value::Null),
        );
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.context.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let s = format!("{value:?}");
        if field.name() == "message" {
            self.message = s;
        } else {
            self.context.insert(field.name().into(), Value::String(s));
        }
    }
}

impl<S, N> FormatEvent<S, N> for ServiceFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut f = Fields::default();
        event.record(&mut f);
        let mut context = Value::Object(f.context);
        crate::redact::json(&mut context);
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "ERROR",
            tracing::Level::WARN => "WARNING",
            tracing::Level::INFO => "INFO",
            _ => "DEBUG",
        };
        let line = serde_json::json!({
            "timestamp": crate::time::format_ns(crate::time::now_ns()),
            "level": level,
            "service": "trainwatch",
            "message": crate::redact::text(&f.message),
            "context": context,
        });
        writeln!(writer, "{line}")
    }
}

/// trainwatch's own counters, exposed on `/metrics` by `watch --listen`. Process-wide, like a
/// Prometheus client's default registry.
pub struct Counters {
    pub lines_read: std::sync::atomic::AtomicU64,
    pub events_stored: std::sync::atomic::AtomicU64,
    pub batches_committed: std::sync::atomic::AtomicU64,
    pub notifications_delivered: std::sync::atomic::AtomicU64,
    pub notifications_failed: std::sync::atomic::AtomicU64,
    pub mlflow_points_exported: std::sync::atomic::AtomicU64,
    pub mlflow_requests_failed: std::sync::atomic::AtomicU64,
    skips: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

pub static COUNTERS: Counters = Counters {
    lines_read: std::sync::atomic::AtomicU64::new(0),
    events_stored: std::sync::atomic::AtomicU64::new(0),
    batches_committed: std::sync::atomic::AtomicU64::new(0),
    notifications_delivered: std::sync::atomic::AtomicU64::new(0),
    notifications_failed: std::sync::atomic::AtomicU64::new(0),
    mlflow_points_exported: std::sync::atomic::AtomicU64::new(0),
    mlflow_requests_failed: std::sync::atomic::AtomicU64::new(0),
    skips: std::sync::Mutex::new(std::collections::BTreeMap::new()),
};

impl Counters {
    pub fn add(counter: &std::sync::atomic::AtomicU64, n: u64) {
        counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn get(counter: &std::sync::atomic::AtomicU64) -> u64 {
        counter.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn skip(&self, reason: &'static str) {
        let mut m = self.skips.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(reason).or_insert(0) += 1;
    }

    /// Skips so far by reason.
    pub fn skips(&self) -> Vec<(&'static str, u64)> {
        let m = self.skips.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|(k, v)| (*k, *v)).collect()
    }
}
