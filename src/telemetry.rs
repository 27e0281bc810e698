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

/// trainwatch's internal events as values, as Vector's `internal_events`: each one says what
/// it logs and what it counts in one place, so every site that meets it does both alike.
pub mod events {
    use super::{COUNTERS, Counters};

    /// Something that happened inside trainwatch: logged and/or counted by [`emit`](Self::emit).
    pub trait InternalEvent {
        fn emit(self);
    }

    /// Lines read from a live log stream.
    pub struct LinesRead(pub u64);

    impl InternalEvent for LinesRead {
        fn emit(self) {
            Counters::add(&COUNTERS.lines_read, self.0);
        }
    }

    /// A record the parser could not read (counted; the record is still stored as text).
    pub struct ParseSkipped(pub &'static str);

    impl InternalEvent for ParseSkipped {
        fn emit(self) {
            COUNTERS.skip(self.0);
        }
    }

    /// Part of a file a reader could not use; the first `LOG_FIRST` of a reason per file are
    /// logged with their place (`nth` counts them).
    pub struct SourceSkipped<'a> {
        pub reason: &'static str,
        pub file: &'a std::path::Path,
        pub line: u64,
        pub detail: &'a str,
        pub nth: u64,
    }

    const LOG_FIRST: u64 = 5;

    impl InternalEvent for SourceSkipped<'_> {
        fn emit(self) {
            COUNTERS.skip(self.reason);
            if self.nth <= LOG_FIRST {
                tracing::warn!(
                    reason = self.reason,
                    file = %self.file.display(),
                    line = self.line,
                    detail = self.detail,
                    "Skipped part of a log record."
                );
            }
        }
    }

    /// A batch the store committed, with the events it inserted.
    pub struct BatchCommitted {
        pub events: u64,
    }

    impl InternalEvent for BatchCommitted {
        fn emit(self) {
            Counters::add(&COUNTERS.batches_committed, 1);
            Counters::add(&COUNTERS.events_stored, self.events);
        }
    }

    /// An alert notification a receiver took.
    pub struct NotificationDelivered<'a> {
        pub receiver: &'a str,
        pub alertname: &'a str,
        pub event: &'a str,
    }

    impl InternalEvent for NotificationDelivered<'_> {
        fn emit(self) {
            Counters::add(&COUNTERS.notifications_delivered, 1);
            tracing::info!(
                receiver = self.receiver,
                alertname = self.alertname,
                event = self.event,
                "Alert notification delivered."
            );
        }
    }

    /// An attempt to deliver an alert notification that failed.
    pub struct NotificationFailed<'a> {
        pub receiver: &'a str,
        pub alertname: &'a str,
        pub attempt: u32,
        pub error: &'a str,
        pub permanent: bool,
    }

    impl InternalEvent for NotificationFailed<'_> {
        fn emit(self) {
            Counters::add(&COUNTERS.notifications_failed, 1);
            tracing::warn!(
                receiver = self.receiver,
                alertname = self.alertname,
                attempt = self.attempt,
                error = self.error,
                permanent = self.permanent,
                "Alert notification failed."
            );
        }
    }

    /// A request to the MLflow tracking server that failed (the pass reports why).
    pub struct MlflowRequestFailed;

    impl InternalEvent for MlflowRequestFailed {
        fn emit(self) {
            Counters::add(&COUNTERS.mlflow_requests_failed, 1);
        }
    }

    /// Metric points the MLflow tracking server acknowledged.
    pub struct MlflowPointsExported(pub u64);

    impl InternalEvent for MlflowPointsExported {
        fn emit(self) {
            Counters::add(&COUNTERS.mlflow_points_exported, self.0);
        }
    }
}
