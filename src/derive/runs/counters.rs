//! Metric samples (training metrics as they come, queue metrics one per second), the queue's
//! counters, and the events of single lines (errors, warnings, the service's own kinds).

use serde_json::{Map, Value, json};

use super::ContainerState;
use crate::derive::{MetricRow, Op};
use crate::event::{Level, Record, kind, metric};
use crate::parse::{Detail, Parsed};
use crate::redact;

/// Width of a metric sample bucket.
const SAMPLE_BUCKET_NS: i64 = 1_000_000_000;

impl ContainerState {
    /// Records a sample. Training metrics (one per epoch) are emitted as they come; queue
    /// metrics, which can change with every message, are kept at one sample per second.
    pub(super) fn metric(&mut self, ts: i64, name: &'static str, value: f64, out: &mut Vec<Op>) {
        if !value.is_finite() {
            return;
        }
        let sample = MetricRow {
            ts,
            container: self.container.clone(),
            name,
            value,
        };
        if !name.starts_with("queue_") {
            out.push(Op::Metric(sample));
            return;
        }
        let bucket = ts.div_euclid(SAMPLE_BUCKET_NS);
        match self.pending.iter_mut().find(|p| p.name == name) {
            Some(p) if p.ts.div_euclid(SAMPLE_BUCKET_NS) == bucket => *p = sample,
            Some(p) => out.push(Op::Metric(std::mem::replace(p, sample))),
            None => self.pending.push(sample),
        }
    }

    /// Counts the secrets in a record's text, stored or not, per kind: the container's
    /// `redactions_<kind>` counters, one sample each time they grow (which is also what
    /// `SecretsInLogs` fires on). An image payload counts at INFO and above only: a payload in
    /// a DEBUG line is redacted all the same, but was asked for.
    pub(super) fn count_redactions(&mut self, rec: &Record, level: Level, out: &mut Vec<Op>) {
        if redact::is_clean(&rec.text) {
            return;
        }
        let mut found = redact::Found::default();
        let _ = redact::text_counted(&rec.text, &mut found);
        let ts = rec.ts;
        if level < Level::Info {
            found.clear(redact::Kind::ImagePayload);
        }
        for (kind, n) in found.iter() {
            let name = metric::redactions(kind.as_str());
            let v = self.counters.entry(name).or_insert(0.0);
            *v += f64::from(n);
            let v = *v;
            self.metric(ts, name, v, out);
        }
    }

    /// Emits the samples still held for the current second. Called before every batch is
    /// committed, so a cursor never covers a record whose sample is not stored.
    pub fn flush_metrics(&mut self, out: &mut Vec<Op>) {
        out.extend(self.pending.drain(..).map(Op::Metric));
    }

    pub(super) fn generic_event(
        &mut self,
        rec: &Record,
        p: &mut Parsed,
        kind: &'static str,
        out: &mut Vec<Op>,
    ) {
        if let Some((name, add)) = p.counter {
            let v = self.counters.entry(name).or_insert(0.0);
            *v += add;
            let v = *v;
            self.metric(rec.ts, name, v, out);
        }
        let run_scoped = matches!(
            kind,
            kind::LOSS_NON_FINITE | kind::GPU_OOM | kind::CHECKPOINT_SAVE_FAILED
        );
        if let Some(raw) = p.raw_context.take() {
            // A service line's context is stored as it came unless something is added to
            // it or it may hold a secret.
            if p.offset.is_none() && !(run_scoped && self.run.is_some()) && redact::is_clean(&raw) {
                out.push(self.event_raw(rec, p.level, kind, &p.message, raw));
                return;
            }
            p.context = crate::parse::json::context_map(&raw);
        }
        let mut ctx = std::mem::take(&mut p.context);
        if let Detail::Traceback { exception } = &p.detail {
            ctx.insert("exception".into(), Value::String(exception.clone()));
        }
        if let Some(off) = p.offset {
            ctx.insert("offset".into(), json!(off));
            self.metric(rec.ts, metric::QUEUE_OFFSET, off as f64, out);
        }
        if p.skip.is_some() {
            ctx.insert("unparsed".into(), Value::String("invalid_json".into()));
        }
        // The run's last epoch, unless the record names its own (a JSON record's `epoch`).
        let own_epoch = ctx.get("epoch").cloned();
        if run_scoped && let Some(run) = self.run.as_ref() {
            ctx.entry("epoch").or_insert(json!(run.last_epoch));
        }
        let also = p.also.map(|also| {
            // What the exception says happened, as an event of its own (the traceback itself
            // is the `error`): its message is the exception.
            let mut actx = Map::new();
            let message = match &p.detail {
                Detail::Traceback { exception } => exception.clone(),
                _ => p.message.clone(),
            };
            if let Some(epoch) = own_epoch {
                actx.insert("epoch".into(), epoch);
            } else if let Some(run) = self.run.as_ref()
                && matches!(
                    also,
                    kind::GPU_OOM | kind::CHECKPOINT_SAVE_FAILED | kind::LOSS_NON_FINITE
                )
            {
                actx.insert("epoch".into(), json!(run.last_epoch));
            }
            actx.insert("source".into(), Value::String("traceback".into()));
            (also, message, actx)
        });
        out.push(self.event(rec, p.level, kind, &p.message, Value::Object(ctx)));
        if let Some((also, message, actx)) = also {
            out.push(self.event(rec, p.level, also, &message, Value::Object(actx)));
        }
    }
}
