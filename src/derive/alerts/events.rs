//! The rules on single events and on trainwatch's own health: `GpuOutOfMemory`,
//! `CheckpointSaveFailed`, `SecretsInLogs`, `DockerUnreachable`, `LogStreamSilent`,
//! `StoreNotWritable`.
//! (`GpuOutOfMemory` also resolves on a later training epoch, in [`super::training`].)

use super::clock::Scope;
use super::lifecycle::Ctx;
use super::vocabulary::{AlertName, Change, first_line, labels};
use crate::derive::{EventRow, MetricRow};
use crate::event::{kind, metric};

pub(super) fn on_event(cx: &mut Ctx<'_>, e: &EventRow) {
    let c: &str = &e.container;
    let (name, summary, extra) = match e.kind {
        kind::GPU_OOM => (
            AlertName::GpuOutOfMemory,
            format!("GPU out of memory in {c}: {}", first_line(&e.message)),
            Some(c),
        ),
        kind::CHECKPOINT_SAVE_FAILED => (
            AlertName::CheckpointSaveFailed,
            format!("Checkpoint save failed in {c}: {}", first_line(&e.message)),
            Some(c),
        ),
        kind::DOCKER_UNREACHABLE => (
            AlertName::DockerUnreachable,
            first_line(&e.message).to_string(),
            None,
        ),
        kind::CHECKPOINT_SAVED => {
            let l = labels(AlertName::CheckpointSaveFailed, &[("container", c)]);
            cx.resolve(&l, e.ts);
            return;
        }
        _ => return,
    };
    let l = match extra {
        Some(c) => labels(name, &[("container", c)]),
        None => labels(name, &[]),
    };
    cx.fire_now(name, l, summary, e.ts, None);
}

/// A container's logs held a secret (a `redactions_<kind>` counter grew): `SecretsInLogs`
/// for the container and kind, never the value. Its summary says when it was first seen; it
/// resolves `secrets_resolve_after` after the last one.
pub(super) fn on_metric(cx: &mut Ctx<'_>, m: &MetricRow) {
    let Some(what) = metric::redaction_kind(m.name) else {
        return;
    };
    let c: &str = &m.container;
    let l = labels(
        AlertName::SecretsInLogs,
        &[("container", c), ("kind", what)],
    );
    let summary = secrets_summary(c, what, m.ts);
    cx.fire_now(AlertName::SecretsInLogs, l, summary, m.ts, None);
}

/// `SecretsInLogs`' summary; no redaction changes it (it would be redacted as it is stored).
pub(super) fn secrets_summary(container: &str, kind: &str, first_seen: i64) -> String {
    let when = crate::time::format_ns(first_seen);
    let when = when.get(..19).unwrap_or(&when).replace('T', " ");
    format!(
        "{container} writes secrets into its logs: {}s, redacted before storing (first seen {when} UTC)",
        kind.replace('_', " "),
    )
}

/// The daemon answered (a request, or an event it sent).
pub(super) fn daemon_answered(cx: &mut Ctx<'_>, ts: i64) {
    cx.resolve(&labels(AlertName::DockerUnreachable, &[]), ts);
}

/// A running container's log stream went silent (`silent`) or flows again.
pub(super) fn stream_silent(cx: &mut Ctx<'_>, container: &str, silent: bool, ts: i64) {
    let l = labels(AlertName::LogStreamSilent, &[("container", container)]);
    if silent {
        let summary =
            format!("The log stream of running container {container} went silent; re-attached");
        cx.fire_now(AlertName::LogStreamSilent, l, summary, ts, None);
    } else {
        cx.resolve(&l, ts);
    }
}

/// The store could not commit (`error`) or committed again.
pub(super) fn store_health(cx: &mut Ctx<'_>, now: i64, error: Option<&str>) {
    let l = labels(AlertName::StoreNotWritable, &[]);
    match error {
        Some(e) => {
            let from = cx.changes().len();
            let summary = format!("The database cannot be written: {e}");
            cx.fire_now(AlertName::StoreNotWritable, l, summary, now, None);
            // The notifier sends the firing itself (the outbox cannot be written now); the
            // resolution goes through the outbox once the store is back.
            for c in &mut cx.changes()[from..] {
                if let Change::Fired { notify, .. } = c {
                    *notify = false;
                }
            }
        }
        None => cx.resolve(&l, now),
    }
}

/// The time-based rule: an event alert that did not recur for `event_resolve_after`
/// (`secrets_resolve_after` for `SecretsInLogs`) resolves when that time ended.
pub(super) fn evaluate(cx: &mut Ctx<'_>, scope: &Scope) {
    let expired: Vec<_> = cx
        .active_in(scope)
        .into_iter()
        .filter_map(|(fp, now)| {
            let a = cx.get(&fp)?;
            let ttl = match a.alert.alertname {
                AlertName::GpuOutOfMemory | AlertName::CheckpointSaveFailed => {
                    cx.rules.event_resolve_after.0
                }
                AlertName::SecretsInLogs => cx.rules.secrets_resolve_after.0,
                _ => return None,
            };
            (now - a.last_seen > ttl)
                .then(|| (a.alert.labels.clone(), a.last_seen.saturating_add(ttl)))
        })
        .collect();
    for (l, at) in expired {
        cx.resolve(&l, at);
    }
}
