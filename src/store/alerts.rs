//! Alerts in the store: recording the rule engine's changes (view `alerts`), the outbox of
//! notifications written in the same transaction, and the queries the notifier and the CLI use.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;

use crate::derive::MetricRow;
use crate::derive::alerts::{Alert, AlertName, Change, Labels, Loaded, Severity};
use crate::error::StoreError;
use crate::store::silences;
use crate::time::{format_ns, parse_rfc3339};

/// Status and resolution are given: an alert older than a firing one of the same fingerprint
/// is recorded as resolved when the newer one started.
const INSERT_ALERT: &str =
    "INSERT INTO alert_log (fingerprint, alertname, severity, status, labels,
        summary, started_at, origin, resolved_at)
     VALUES (?1, ?2, ?3, ?8, ?4, ?5, ?6, ?7, ?9)
     ON CONFLICT (fingerprint, started_at) DO NOTHING";

/// Never earlier than the start: evidence stamped before it (clock skew, logs out of order)
/// resolves the alert at its start.
const RESOLVE_ALERT: &str = "UPDATE alert_log SET status = 'resolved', resolved_at = max(?3, ?2)
     WHERE fingerprint = ?1 AND started_at = ?2 AND status = 'firing'";

/// The start of a firing alert of the fingerprint newer than ?2.
const NEWER_FIRING: &str = "SELECT min(started_at) FROM alert_log
     WHERE fingerprint = ?1 AND status = 'firing' AND started_at > ?2";

const ALERT_ID: &str = "SELECT id FROM alert_log WHERE fingerprint = ?1 AND started_at = ?2";

const INSERT_OUTBOX: &str =
    "INSERT INTO outbox (receiver, alert_id, event, created_at, next_attempt_at)
     VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT DO NOTHING";

/// Records one change in `tx`, with an outbox row per receiver when it is to be notified.
/// Returns how many notifications were queued. Applying the same change twice changes nothing.
pub fn apply(
    tx: &Transaction<'_>,
    change: &Change,
    receivers: &[String],
    origin: &str,
    now: i64,
) -> Result<usize, StoreError> {
    let (alert, event, notify) = match change {
        Change::Fired { alert, notify } => (alert, "firing", *notify),
        Change::Resolved { alert, notify } => (alert, "resolved", *notify),
        Change::Repeat { alert } => (alert, "repeat", true),
    };
    let started = format_ns(alert.started_at);
    match change {
        Change::Fired { .. } => {
            // A firing alert of the same fingerprint left by an earlier run that the engine
            // did not know about (e.g. a replay after a watch) is closed first, when it is
            // older; when it is newer (two replays at once, an older archive replayed after a
            // newer one), this one is recorded as resolved when that one started. Either way
            // no alert is resolved before it started.
            tx.prepare_cached(
                "UPDATE alert_log SET status = 'resolved', resolved_at = ?2
                 WHERE fingerprint = ?1 AND status = 'firing' AND started_at < ?2",
            )
            .and_then(|mut s| s.execute(params![alert.fingerprint, started]))
            .map_err(StoreError::sql("close an older firing alert"))?;
            let newer: Option<String> = tx
                .prepare_cached(NEWER_FIRING)
                .and_then(|mut s| s.query_row(params![alert.fingerprint, started], |r| r.get(0)))
                .map_err(StoreError::sql("find a newer firing alert"))?;
            let status = if newer.is_some() {
                "resolved"
            } else {
                "firing"
            };
            let labels = serde_json::to_string(&alert.labels).unwrap_or_default();
            tx.prepare_cached(INSERT_ALERT)
                .and_then(|mut s| {
                    s.execute(params![
                        alert.fingerprint,
                        alert.alertname.as_str(),
                        alert.severity.as_str(),
                        labels,
                        crate::redact::text(&alert.summary),
                        started,
                        origin,
                        status,
                        newer
                    ])
                })
                .map_err(StoreError::sql("record alert"))?;
        }
        Change::Resolved { alert, .. } => {
            let at = format_ns(alert.resolved_at.unwrap_or(now));
            let n = tx
                .prepare_cached(RESOLVE_ALERT)
                .and_then(|mut s| s.execute(params![alert.fingerprint, started, at]))
                .map_err(StoreError::sql("resolve alert"))?;
            if n == 0 {
                // Already resolved (a replay of the same logs): nothing to tell.
                return Ok(0);
            }
        }
        Change::Repeat { .. } => {}
    }
    if !notify || receivers.is_empty() {
        return Ok(0);
    }
    let id: i64 = tx
        .prepare_cached(ALERT_ID)
        .and_then(|mut s| s.query_row(params![alert.fingerprint, started], |r| r.get(0)))
        .map_err(StoreError::sql("find alert"))?;
    if event == "resolved" {
        // An alert a silence kept quiet (it was never told) resolves quietly too; one told
        // out of band (the store could not queue it) is told it resolved.
        let told: i64 = tx
            .prepare_cached(
                "SELECT count(*) FROM outbox WHERE alert_id = ?1 AND event IN ('firing', 'repeat')",
            )
            .and_then(|mut s| s.query_row([id], |r| r.get(0)))
            .map_err(StoreError::sql("find alert's notifications"))?;
        if told == 0 {
            let quiet = silences::list(tx, true)?.iter().any(|s| {
                s.alert_id == Some(id)
                    || (s.alert_id.is_none() && s.active_at(now) && s.covers(id, &alert.labels))
            });
            if quiet {
                return Ok(0);
            }
        }
    } else {
        let silences = silences::active(tx, now)?;
        if let Some(s) = silences::covering(&silences, id, &alert.labels) {
            tracing::info!(
                alert = id,
                alertname = %alert.alertname,
                silence = s.id,
                event,
                "Alert silenced: not notified."
            );
            return Ok(0);
        }
    }
    let created = format_ns(now);
    let mut n = 0;
    for r in receivers {
        n += tx
            .prepare_cached(INSERT_OUTBOX)
            .and_then(|mut s| s.execute(params![r, id, event, created]))
            .map_err(StoreError::sql("queue notification"))?;
    }
    Ok(n)
}

/// Commits the rule engine's state (of `origin`, `watch` or `replay`) with a batch.
pub fn save_engine(
    tx: &Transaction<'_>,
    origin: &str,
    state: &str,
    now: i64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO alert_engine (origin, state, saved_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (origin) DO UPDATE SET state = excluded.state, saved_at = excluded.saved_at",
    )
    .and_then(|mut s| s.execute(params![origin, state, format_ns(now)]))
    .map_err(StoreError::sql("save alert engine state"))?;
    Ok(())
}

/// The rule engine's state last committed by an engine of `origin`, if any.
pub fn load_engine(conn: &Connection, origin: &str) -> Result<Option<String>, StoreError> {
    conn.query_row(
        "SELECT state FROM alert_engine WHERE origin = ?1",
        [origin],
        |r| r.get(0),
    )
    .optional()
    .map_err(StoreError::sql("load alert engine state"))
}

/// The samples of `names` taken at or after `since` (ns), oldest first.
pub fn load_samples_since(
    conn: &Connection,
    names: &[&'static str],
    since: i64,
) -> Result<Vec<MetricRow>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT ts, container, name, value FROM metric_log
             WHERE ts >= ?1 AND name IN (SELECT value FROM json_each(?2)) ORDER BY ts",
        )
        .map_err(StoreError::sql("load probe samples"))?;
    let list = serde_json::to_string(names).unwrap_or_else(|_| "[]".into());
    let rows = stmt
        .query_map(params![format_ns(since), list], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, f64>(3)?,
            ))
        })
        .map_err(StoreError::sql("load probe samples"))?;
    let mut out = Vec::new();
    for row in rows {
        let (ts, container, name, value) = row.map_err(StoreError::sql("load probe samples"))?;
        let (Some(ts), Some(name)) = (parse_rfc3339(&ts), names.iter().find(|n| **n == name))
        else {
            continue;
        };
        out.push(MetricRow {
            ts,
            container: Arc::from(container),
            name,
            value,
        });
    }
    Ok(out)
}

/// Each container's latest queue offset and the time it took that value (the first sample of
/// the trailing run of equal values), for the offset staleness rule to continue after a
/// restart. Reads the gauges, then walks each container's samples back from the newest.
pub fn load_offsets(conn: &Connection) -> Result<Vec<(Arc<str>, f64, i64)>, StoreError> {
    let mut stmt = conn
        .prepare(
            "SELECT g.container, g.value, (
                SELECT min(m.ts) FROM metric_log m
                WHERE m.container = g.container AND m.name = g.name AND m.ts > COALESCE((
                    SELECT c.ts FROM metric_log c
                    WHERE c.container = g.container AND c.name = g.name AND c.value <> g.value
                    ORDER BY c.ts DESC LIMIT 1), ''))
             FROM gauges g WHERE g.name = 'queue_offset'",
        )
        .map_err(StoreError::sql("load queue offsets"))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, f64>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })
        .map_err(StoreError::sql("load queue offsets"))?;
    let mut out = Vec::new();
    for row in rows {
        let (container, value, changed) = row.map_err(StoreError::sql("load queue offsets"))?;
        // Samples pruned away: the gauge's value is all that is known, from now on.
        if let Some(changed) = changed.as_deref().and_then(parse_rfc3339) {
            out.push((Arc::from(container), value, changed));
        }
    }
    Ok(out)
}

/// The firing alerts, for the engine to continue after a restart.
pub fn load_firing(conn: &Connection) -> Result<Vec<Loaded>, StoreError> {
    let mut stmt = conn
        .prepare(
            "SELECT fingerprint, alertname, severity, labels, summary, started_at,
                    last_notified_at, origin
             FROM alert_log WHERE status = 'firing'",
        )
        .map_err(StoreError::sql("load firing alerts"))?;
    let rows = stmt
        .query_map([], |r| {
            let name: String = r.get(1)?;
            let labels: String = r.get(3)?;
            let started: String = r.get(5)?;
            let notified: Option<String> = r.get(6)?;
            let origin: String = r.get(7)?;
            Ok((
                name,
                r.get::<_, String>(0)?,
                r.get::<_, String>(2)?,
                labels,
                r.get::<_, String>(4)?,
                started,
                notified,
                origin,
            ))
        })
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(StoreError::sql("load firing alerts"))?;
    Ok(rows
        .into_iter()
        .filter_map(
            |(name, fp, sev, labels, summary, started, notified, origin)| {
                Some(Loaded {
                    alert: Alert {
                        fingerprint: fp,
                        alertname: AlertName::parse(&name)?,
                        severity: Severity::parse(&sev)?,
                        labels: serde_json::from_str::<Labels>(&labels).ok()?,
                        summary,
                        started_at: parse_rfc3339(&started)?,
                        resolved_at: None,
                    },
                    last_notified: notified.as_deref().and_then(parse_rfc3339),
                    live: origin == "watch",
                })
            },
        )
        .collect())
}

/// One row of view `alerts`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AlertRow {
    pub id: i64,
    pub fingerprint: String,
    pub alertname: String,
    pub severity: String,
    pub status: String,
    pub labels: serde_json::Value,
    pub summary: String,
    pub started_at: String,
    pub resolved_at: Option<String>,
    pub last_notified_at: Option<String>,
    /// The acknowledgement or silence that covers it, if it fires and one does: `acknowledged
    /// by alice until it resolves [silence 3]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub silenced: Option<String>,
}

impl AlertRow {
    /// Whether it fires and no acknowledgement or silence covers it.
    pub fn pages(&self) -> bool {
        self.status == "firing" && self.silenced.is_none()
    }
}

const ALERT_COLUMNS: &str = "id, fingerprint, alertname, severity, status, labels, summary,
    started_at, resolved_at, last_notified_at";

fn alert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AlertRow> {
    let labels: String = r.get(5)?;
    Ok(AlertRow {
        id: r.get(0)?,
        fingerprint: r.get(1)?,
        alertname: r.get(2)?,
        severity: r.get(3)?,
        status: r.get(4)?,
        labels: serde_json::from_str(&labels).unwrap_or(serde_json::Value::Null),
        summary: r.get(6)?,
        started_at: r.get(7)?,
        resolved_at: r.get(8)?,
        last_notified_at: r.get(9)?,
        silenced: None,
    })
}

/// Marks each firing alert of `rows` with the acknowledgement or silence that covers it.
fn mark_silenced(conn: &Connection, rows: &mut [AlertRow]) -> Result<(), StoreError> {
    if !rows.iter().any(|r| r.status == "firing") {
        return Ok(());
    }
    let active = silences::active(conn, crate::time::now_ns())?;
    if active.is_empty() {
        return Ok(());
    }
    for r in rows.iter_mut().filter(|r| r.status == "firing") {
        let labels: Labels = serde_json::from_value(r.labels.clone()).unwrap_or_default();
        r.silenced = silences::covering(&active, r.id, &labels).map(silences::Silence::note);
    }
    Ok(())
}

/// SQL ordering alerts most severe first.
pub const SEVERITY_ORDER: &str = "CASE severity WHEN 'critical' THEN 0 WHEN 'high' THEN 1
    WHEN 'medium' THEN 2 ELSE 3 END";

/// Firing alerts (most severe first), or with `all` every alert, newest first, up to `limit`.
pub fn list(conn: &Connection, all: bool, limit: usize) -> Result<Vec<AlertRow>, StoreError> {
    let sql = if all {
        format!("SELECT {ALERT_COLUMNS} FROM alert_log ORDER BY started_at DESC, id DESC LIMIT ?1")
    } else {
        format!(
            "SELECT {ALERT_COLUMNS} FROM alert_log WHERE status = 'firing'
             ORDER BY {SEVERITY_ORDER}, started_at LIMIT ?1"
        )
    };
    let mut stmt = conn.prepare(&sql).map_err(StoreError::sql("list alerts"))?;
    let mut rows: Vec<AlertRow> = stmt
        .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], alert_row)
        .and_then(|it| it.collect())
        .map_err(StoreError::sql("list alerts"))?;
    mark_silenced(conn, &mut rows)?;
    Ok(rows)
}

/// The last `limit` resolved alerts, newest first.
pub fn recently_resolved(conn: &Connection, limit: usize) -> Result<Vec<AlertRow>, StoreError> {
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {ALERT_COLUMNS} FROM alert_log WHERE status = 'resolved'
             ORDER BY resolved_at DESC LIMIT ?1"
        ))
        .map_err(StoreError::sql("list resolved alerts"))?;
    stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], alert_row)
        .and_then(|it| it.collect())
        .map_err(StoreError::sql("list resolved alerts"))
}

/// A notification waiting in the outbox, with the alert as it is now.
#[derive(Clone, Debug)]
pub struct Pending {
    pub id: i64,
    pub receiver: String,
    pub event: String,
    pub attempts: u32,
    pub next_attempt_at: i64,
    pub alert: AlertRow,
}

/// The oldest undelivered notification of each receiver in `receivers` (delivery is in order
/// per receiver: a later one waits for an earlier one that fails).
pub fn outbox_heads(conn: &Connection, receivers: &[String]) -> Result<Vec<Pending>, StoreError> {
    let mut out = Vec::new();
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT o.id, o.event, o.attempts, o.next_attempt_at, {}
             FROM outbox o JOIN alert_log a ON a.id = o.alert_id
             WHERE o.receiver = ?1 AND o.delivered_at IS NULL AND o.abandoned_at IS NULL ORDER BY o.id LIMIT 1",
            ALERT_COLUMNS
                .split(',')
                .map(|c| format!("a.{}", c.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .map_err(StoreError::sql("read outbox"))?;
    for r in receivers {
        let row = stmt
            .query_row([r], |row| {
                let next: String = row.get(3)?;
                let alert = AlertRow {
                    id: row.get(4)?,
                    fingerprint: row.get(5)?,
                    alertname: row.get(6)?,
                    severity: row.get(7)?,
                    status: row.get(8)?,
                    labels: serde_json::from_str(&row.get::<_, String>(9)?)
                        .unwrap_or(serde_json::Value::Null),
                    summary: row.get(10)?,
                    started_at: row.get(11)?,
                    resolved_at: row.get(12)?,
                    last_notified_at: row.get(13)?,
                    silenced: None,
                };
                Ok(Pending {
                    id: row.get(0)?,
                    receiver: r.clone(),
                    event: row.get(1)?,
                    attempts: row.get(2)?,
                    next_attempt_at: parse_rfc3339(&next).unwrap_or(0),
                    alert,
                })
            })
            .optional()
            .map_err(StoreError::sql("read outbox"))?;
        out.extend(row);
    }
    Ok(out)
}

/// Marks a notification delivered and the alert notified.
pub fn mark_delivered(
    conn: &Connection,
    id: i64,
    alert_id: i64,
    now: i64,
) -> Result<(), StoreError> {
    let at = format_ns(now);
    conn.execute(
        "UPDATE outbox SET delivered_at = ?2, attempts = attempts + 1, last_error = NULL WHERE id = ?1",
        params![id, at],
    )
    .map_err(StoreError::sql("mark notification delivered"))?;
    conn.execute(
        "UPDATE alert_log SET last_notified_at = ?2 WHERE id = ?1",
        params![alert_id, at],
    )
    .map_err(StoreError::sql("mark alert notified"))?;
    Ok(())
}

/// Records a failed attempt and when to try again.
pub fn mark_failed(
    conn: &Connection,
    id: i64,
    error: &str,
    retry_at: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, next_attempt_at = ?3 WHERE id = ?1",
        params![id, error, format_ns(retry_at)],
    )
    .map_err(StoreError::sql("record failed delivery"))?;
    Ok(())
}

/// Gives up on a notification the receiver refuses for good.
pub fn mark_abandoned(conn: &Connection, id: i64, error: &str, now: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, abandoned_at = ?3 WHERE id = ?1",
        params![id, error, format_ns(now)],
    )
    .map_err(StoreError::sql("record abandoned notification"))?;
    Ok(())
}

/// Firing alerts for an Alertmanager refresh: those no acknowledgement or silence covers.
pub fn firing(conn: &Connection) -> Result<Vec<AlertRow>, StoreError> {
    let mut rows = list(conn, false, 10_000)?;
    rows.retain(AlertRow::pages);
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::derive::alerts::{Alert, Change, Severity, fingerprint};

    fn alert(started_s: i64, resolved_s: Option<i64>) -> Alert {
        let labels: crate::derive::alerts::Labels =
            [("alertname".to_string(), "GpuOutOfMemory".to_string())].into();
        Alert {
            fingerprint: fingerprint(&labels),
            alertname: AlertName::GpuOutOfMemory,
            severity: Severity::High,
            labels,
            summary: "CUDA out of memory".into(),
            started_at: started_s * 1_000_000_000,
            resolved_at: resolved_s.map(|s| s * 1_000_000_000),
        }
    }

    fn rows(conn: &Connection) -> Vec<(String, String, Option<String>)> {
        conn.prepare("SELECT status, started_at, resolved_at FROM alert_log ORDER BY started_at")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn no_alert_is_resolved_before_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = crate::store::open_rw(&dir.path().join("a.db")).unwrap();
        let t = |s: i64| format_ns(s * 1_000_000_000);
        let mut run = |c: Change| {
            let tx = conn.transaction().unwrap();
            apply(&tx, &c, &[], "replay", 0).unwrap();
            tx.commit().unwrap();
        };
        // The newer instance first (a second replay of newer logs was faster), then an older
        // one: the older is recorded resolved when the newer began, the newer stays firing.
        run(Change::Fired {
            alert: alert(2000, None),
            notify: false,
        });
        run(Change::Fired {
            alert: alert(1000, None),
            notify: false,
        });
        // The older one's own resolution, stamped before its start, cannot move it back.
        run(Change::Resolved {
            alert: alert(1000, Some(500)),
            notify: false,
        });
        // A resolution of the newer one stamped before its start resolves it at its start.
        run(Change::Resolved {
            alert: alert(2000, Some(1500)),
            notify: false,
        });
        assert_eq!(
            rows(&conn),
            [
                ("resolved".into(), t(1000), Some(t(2000))),
                ("resolved".into(), t(2000), Some(t(2000))),
            ]
        );
        // In order: an older firing one is closed when the next starts.
        run_in_order(&mut conn);
    }

    fn run_in_order(conn: &mut Connection) {
        conn.execute("DELETE FROM alert_log", []).unwrap();
        for c in [
            Change::Fired {
                alert: alert(10, None),
                notify: false,
            },
            Change::Fired {
                alert: alert(20, None),
                notify: false,
            },
        ] {
            let tx = conn.transaction().unwrap();
            apply(&tx, &c, &[], "replay", 0).unwrap();
            tx.commit().unwrap();
        }
        let t = |s: i64| format_ns(s * 1_000_000_000);
        assert_eq!(
            rows(conn),
            [
                ("resolved".into(), t(10), Some(t(20))),
                ("firing".into(), t(20), None),
            ]
        );
    }
}
