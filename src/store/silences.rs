//! Acknowledgements and silences, as Alertmanager's silences: a set of label matchers and a
//! time range during which the alerts they match send no notification (neither their firing
//! nor a repeat) and do not make `health` critical, while staying in the alerts table, marked.
//!
//! An acknowledgement (`trainwatch alerts ack ID`) is a silence bound to one alert: it matches
//! that alert's labels and lasts until the alert resolves (or `--for` has passed); the next
//! alert of the same labels pages again. A silence (`trainwatch alerts silence alertname=X
//! container=Y --for 8h`) matches every alert its matchers match while it lasts.
//!
//! The commands write from their own process through the same rules as every write (WAL, a
//! `BEGIN IMMEDIATE` transaction, `busy_timeout`); the table is the commands' alone, and the
//! ingestor only reads it when it is about to queue a notification.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use crate::derive::alerts::Labels;
use crate::error::StoreError;
use crate::time::{format_ns, parse_rfc3339};

/// How a matcher compares a label's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchOp {
    #[serde(rename = "=")]
    Equal,
    #[serde(rename = "!=")]
    NotEqual,
    #[serde(rename = "=~")]
    Regex,
    #[serde(rename = "!~")]
    NotRegex,
}

impl MatchOp {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }
}

/// One `name=value` (`!=`, `=~`, `!~`) condition on an alert's labels. A label an alert does
/// not have has the empty value, as in Alertmanager.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
}

/// Why a matcher given on the command line is refused.
#[derive(Debug, thiserror::Error)]
pub enum MatcherError {
    #[error("{0:?} is not a matcher: expected name=value, name!=value, name=~regex or name!~regex")]
    Syntax(String),
    #[error("{text:?}: the regular expression is invalid: {source}")]
    Regex {
        text: String,
        #[source]
        source: regex::Error,
    },
}

impl Matcher {
    /// `alertname=TrainingFailed`, `container!=x`, `container=~yolo-.*`, `severity!~low|medium`.
    pub fn parse(text: &str) -> Result<Matcher, MatcherError> {
        let at = text
            .find(['=', '!'])
            .ok_or_else(|| MatcherError::Syntax(text.into()))?;
        let name = text[..at].trim();
        let rest = &text[at..];
        let (op, value) = [
            ("!=", MatchOp::NotEqual),
            ("=~", MatchOp::Regex),
            ("!~", MatchOp::NotRegex),
            ("=", MatchOp::Equal),
        ]
        .into_iter()
        .find_map(|(p, op)| rest.strip_prefix(p).map(|v| (op, v)))
        .ok_or_else(|| MatcherError::Syntax(text.into()))?;
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !valid_name {
            return Err(MatcherError::Syntax(text.into()));
        }
        let value = value.trim().trim_matches('"').to_string();
        let m = Matcher {
            name: name.to_string(),
            op,
            value,
        };
        if matches!(op, MatchOp::Regex | MatchOp::NotRegex) {
            m.regex().map_err(|source| MatcherError::Regex {
                text: text.into(),
                source,
            })?;
        }
        Ok(m)
    }

    /// The value's regular expression, anchored at both ends (as Alertmanager's).
    fn regex(&self) -> Result<regex::Regex, regex::Error> {
        regex::Regex::new(&format!("^(?:{})$", self.value))
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.name).map_or("", String::as_str);
        match self.op {
            MatchOp::Equal => v == self.value,
            MatchOp::NotEqual => v != self.value,
            MatchOp::Regex => self.regex().is_ok_and(|r| r.is_match(v)),
            MatchOp::NotRegex => self.regex().is_ok_and(|r| !r.is_match(v)),
        }
    }
}

impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}{}", self.name, self.op.as_str(), self.value)
    }
}

/// A stored acknowledgement or silence.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Silence {
    pub id: i64,
    /// `ack` (of one alert) or `silence`.
    pub kind: String,
    pub matchers: Vec<Matcher>,
    /// The alert an acknowledgement is for.
    pub alert_id: Option<i64>,
    pub starts_at: String,
    /// Its end; `None`: an acknowledgement that lasts until its alert resolves.
    pub ends_at: Option<String>,
    pub created_by: String,
    pub comment: String,
    pub created_at: String,
    /// When `alerts expire` ended it early.
    pub expired_at: Option<String>,
}

impl Silence {
    /// Whether it is in force at `now` (ns).
    pub fn active_at(&self, now: i64) -> bool {
        let t = |s: &str| parse_rfc3339(s).unwrap_or(i64::MAX);
        self.expired_at.is_none()
            && t(&self.starts_at) <= now
            && self.ends_at.as_deref().is_none_or(|e| now < t(e))
    }

    /// Whether it covers the alert `alert_id` with `labels`: an acknowledgement only its own
    /// alert, a silence every alert all its matchers match.
    pub fn covers(&self, alert_id: i64, labels: &Labels) -> bool {
        match self.alert_id {
            Some(id) => id == alert_id,
            None => self.matchers.iter().all(|m| m.matches(labels)),
        }
    }

    /// `acknowledged by alice until 2026-12-07T18:00:00Z`, for the alerts it covers.
    pub fn note(&self) -> String {
        let what = if self.kind == "ack" {
            "acknowledged"
        } else {
            "silenced"
        };
        let until = match &self.ends_at {
            Some(e) => format!("until {}", short_time(e)),
            None => "until it resolves".into(),
        };
        let comment = if self.comment.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.comment)
        };
        format!(
            "{what} by {} {until} [silence {}]{comment}",
            self.created_by, self.id
        )
    }
}

/// `2026-12-07T18:00:00.123456789Z` -> `2026-12-07 18:00 UTC`.
fn short_time(t: &str) -> String {
    match (t.get(..10), t.get(11..16)) {
        (Some(d), Some(h)) => format!("{d} {h} UTC"),
        _ => t.to_string(),
    }
}

const COLUMNS: &str = "id, kind, matchers, alert_id, starts_at, ends_at, created_by, comment,
    created_at, expired_at";

fn silence_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Silence> {
    let matchers: String = r.get(2)?;
    Ok(Silence {
        id: r.get(0)?,
        kind: r.get(1)?,
        matchers: serde_json::from_str(&matchers).unwrap_or_default(),
        alert_id: r.get(3)?,
        starts_at: r.get(4)?,
        ends_at: r.get(5)?,
        created_by: r.get(6)?,
        comment: r.get(7)?,
        created_at: r.get(8)?,
        expired_at: r.get(9)?,
    })
}

/// The silences in force at `now`, oldest first. A database without the table (written by
/// an older build, opened read-only) has none.
pub fn active(conn: &Connection, now: i64) -> Result<Vec<Silence>, StoreError> {
    Ok(list(conn, false)?
        .into_iter()
        .filter(|s| s.active_at(now))
        .collect())
}

/// The silences not expired and not ended (`all`: every one), oldest first.
pub fn list(conn: &Connection, all: bool) -> Result<Vec<Silence>, StoreError> {
    let q = StoreError::sql("list silences");
    let exists: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'silences'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(StoreError::sql("list silences"))?;
    if !exists {
        return Ok(Vec::new());
    }
    let now = format_ns(crate::time::now_ns());
    let sql = if all {
        format!("SELECT {COLUMNS} FROM silences ORDER BY id")
    } else {
        // An acknowledgement without an end lasts while its alert fires.
        format!(
            "SELECT {COLUMNS} FROM silences s WHERE expired_at IS NULL
             AND (ends_at IS NULL OR ends_at > ?1)
             AND (alert_id IS NULL OR EXISTS (SELECT 1 FROM alert_log a
                  WHERE a.id = s.alert_id AND a.status = 'firing'))
             ORDER BY id"
        )
    };
    let mut stmt = conn
        .prepare_cached(&sql)
        .map_err(StoreError::sql("list silences"))?;
    let rows = if all {
        stmt.query_map([], silence_row).and_then(|it| it.collect())
    } else {
        stmt.query_map([&now], silence_row)
            .and_then(|it| it.collect())
    };
    rows.map_err(q)
}

/// The silence in force at `now` that covers alert `alert_id` with `labels`, if any.
pub fn covering<'a>(
    silences: &'a [Silence],
    alert_id: i64,
    labels: &Labels,
) -> Option<&'a Silence> {
    silences.iter().find(|s| s.covers(alert_id, labels))
}

/// What a new silence says.
#[derive(Clone, Debug)]
pub struct NewSilence {
    pub matchers: Vec<Matcher>,
    /// The alert an acknowledgement is for (`None`: a silence).
    pub alert_id: Option<i64>,
    pub starts_at: i64,
    pub ends_at: Option<i64>,
    pub created_by: String,
    pub comment: String,
}

/// Why a silence cannot be added or expired.
#[derive(Debug, thiserror::Error)]
pub enum SilenceError {
    #[error("no alert with id {0} (see `trainwatch alerts --all`)")]
    NoAlert(i64),
    #[error("alert {0} is resolved: nothing to acknowledge")]
    Resolved(i64),
    #[error("no silence with id {0} (see `trainwatch alerts silences --all`)")]
    NoSilence(i64),
    #[error("silence {0} has already ended")]
    Ended(i64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The labels of alert `id` and whether it fires.
fn alert_labels(conn: &Connection, id: i64) -> Result<Option<(Labels, bool)>, StoreError> {
    conn.query_row(
        "SELECT labels, status FROM alert_log WHERE id = ?1",
        [id],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
    )
    .optional()
    .map_err(StoreError::sql("read alert"))
    .map(|o| o.map(|(l, s)| (serde_json::from_str(&l).unwrap_or_default(), s == "firing")))
}

/// Acknowledges firing alert `alert_id` (until it resolves, or `ends_at`): the new silence.
pub fn acknowledge(
    conn: &mut Connection,
    alert_id: i64,
    ends_at: Option<i64>,
    created_by: &str,
    comment: &str,
    now: i64,
) -> Result<Silence, SilenceError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(StoreError::sql("begin"))?;
    let (labels, firing) = alert_labels(&tx, alert_id)?.ok_or(SilenceError::NoAlert(alert_id))?;
    if !firing {
        return Err(SilenceError::Resolved(alert_id));
    }
    let matchers = labels
        .iter()
        .map(|(k, v)| Matcher {
            name: k.clone(),
            op: MatchOp::Equal,
            value: v.clone(),
        })
        .collect();
    let s = NewSilence {
        matchers,
        alert_id: Some(alert_id),
        starts_at: now,
        ends_at,
        created_by: created_by.into(),
        comment: comment.into(),
    };
    let id = insert(&tx, &s, now)?;
    tx.commit().map_err(StoreError::sql("commit"))?;
    get(conn, id)
}

/// Adds a silence: the new one.
pub fn silence(conn: &mut Connection, s: &NewSilence, now: i64) -> Result<Silence, SilenceError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(StoreError::sql("begin"))?;
    let id = insert(&tx, s, now)?;
    tx.commit().map_err(StoreError::sql("commit"))?;
    get(conn, id)
}

fn insert(conn: &Connection, s: &NewSilence, now: i64) -> Result<i64, StoreError> {
    let matchers = serde_json::to_string(&s.matchers).unwrap_or_else(|_| "[]".into());
    conn.query_row(
        "INSERT INTO silences (kind, matchers, alert_id, starts_at, ends_at, created_by, comment,
            created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING id",
        params![
            if s.alert_id.is_some() {
                "ack"
            } else {
                "silence"
            },
            matchers,
            s.alert_id,
            format_ns(s.starts_at),
            s.ends_at.map(format_ns),
            crate::redact::text(&s.created_by),
            crate::redact::text(&s.comment),
            format_ns(now),
        ],
        |r| r.get(0),
    )
    .map_err(StoreError::sql("add silence"))
}

/// Silence `id`.
pub fn get(conn: &Connection, id: i64) -> Result<Silence, SilenceError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM silences WHERE id = ?1"),
        [id],
        silence_row,
    )
    .optional()
    .map_err(StoreError::sql("read silence"))?
    .ok_or(SilenceError::NoSilence(id))
}

/// Ends silence `id` now.
pub fn expire(conn: &mut Connection, id: i64, now: i64) -> Result<Silence, SilenceError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(StoreError::sql("begin"))?;
    let s = get(&tx, id)?;
    let ended = s
        .ends_at
        .as_deref()
        .and_then(parse_rfc3339)
        .is_some_and(|e| e <= now);
    if s.expired_at.is_some() || ended {
        return Err(SilenceError::Ended(id));
    }
    tx.execute(
        "UPDATE silences SET expired_at = ?2 WHERE id = ?1",
        params![id, format_ns(now)],
    )
    .map_err(StoreError::sql("expire silence"))?;
    tx.commit().map_err(StoreError::sql("commit"))?;
    get(conn, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn matchers_parse_and_match_as_alertmanager_s() {
        let l = labels(&[
            ("alertname", "TrainingFailed"),
            ("container", "yolo-train"),
            ("severity", "high"),
        ]);
        let m = |t: &str| Matcher::parse(t).unwrap();
        assert!(m("alertname=TrainingFailed").matches(&l));
        assert!(!m("alertname=TrainingStalled").matches(&l));
        assert!(m("container!=queue").matches(&l));
        assert!(m("container=~yolo-.*").matches(&l));
        // Anchored: a part of the value is no match.
        assert!(!m("container=~yolo").matches(&l));
        assert!(m("severity!~low|medium").matches(&l));
        // A label the alert lacks is empty.
        assert!(m("gpu=").matches(&l));
        assert!(!m("gpu=0").matches(&l));
        assert_eq!(m("container=\"yolo-train\"").value, "yolo-train");
        assert_eq!(m("container=~yolo-.*").to_string(), "container=~yolo-.*");
        for bad in ["container", "=x", "a b=c", "x=~(", "!=x"] {
            assert!(Matcher::parse(bad).is_err(), "{bad}");
        }
    }

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::open_rw(&dir.path().join("t.db")).unwrap();
        conn.execute(
            "INSERT INTO alert_log (id, fingerprint, alertname, severity, status, labels, summary,
                started_at)
             VALUES (7, 'f', 'TrainingFailed', 'high', 'firing',
                '{\"alertname\":\"TrainingFailed\",\"container\":\"yolo\",\"severity\":\"high\"}',
                's', '2026-12-07T00:00:00.000000000Z'),
                    (8, 'g', 'DiskUsageHigh', 'medium', 'resolved', '{}', 's',
                '2026-12-06T00:00:00.000000000Z')",
            [],
        )
        .unwrap();
        (dir, conn)
    }

    #[test]
    fn an_acknowledgement_covers_its_alert_until_it_resolves() {
        let (_dir, mut conn) = db();
        let now = crate::time::now_ns();
        assert!(matches!(
            acknowledge(&mut conn, 8, None, "bob", "", now),
            Err(SilenceError::Resolved(8))
        ));
        assert!(matches!(
            acknowledge(&mut conn, 99, None, "bob", "", now),
            Err(SilenceError::NoAlert(99))
        ));
        let s = acknowledge(&mut conn, 7, None, "alice", "restarting it", now).unwrap();
        assert_eq!(s.kind, "ack");
        assert_eq!(s.alert_id, Some(7));
        assert_eq!(
            s.note(),
            format!(
                "acknowledged by alice until it resolves [silence {}] (restarting it)",
                s.id
            )
        );
        let l = labels(&[("alertname", "TrainingFailed"), ("container", "yolo")]);
        let active = active(&conn, now + 1).unwrap();
        assert_eq!(active.len(), 1);
        assert!(covering(&active, 7, &l).is_some());
        // The next alert of the same labels is not acknowledged.
        assert!(covering(&active, 9, &l).is_none());
        // Resolved: the acknowledgement has done its work.
        conn.execute("UPDATE alert_log SET status = 'resolved' WHERE id = 7", [])
            .unwrap();
        assert!(active_now(&conn).is_empty());
        assert_eq!(list(&conn, true).unwrap().len(), 1);
    }

    fn active_now(conn: &Connection) -> Vec<Silence> {
        active(conn, crate::time::now_ns()).unwrap()
    }

    #[test]
    fn a_silence_lasts_its_time_or_until_expired() {
        let (_dir, mut conn) = db();
        let now = crate::time::now_ns();
        let hour = 3600 * 1_000_000_000;
        let new = NewSilence {
            matchers: vec![Matcher::parse("container=yolo").unwrap()],
            alert_id: None,
            starts_at: now,
            ends_at: Some(now + 8 * hour),
            created_by: "alice".into(),
            comment: String::new(),
        };
        let s = silence(&mut conn, &new, now).unwrap();
        assert_eq!(s.kind, "silence");
        let l = labels(&[("alertname", "TrainingFailed"), ("container", "yolo")]);
        assert!(s.active_at(now + 7 * hour) && s.covers(123, &l));
        assert!(!s.active_at(now + 8 * hour));
        assert!(!s.covers(123, &labels(&[("container", "other")])));
        assert_eq!(active_now(&conn).len(), 1);
        let e = expire(&mut conn, s.id, now + 1).unwrap();
        assert!(e.expired_at.is_some());
        assert!(active_now(&conn).is_empty());
        assert!(matches!(
            expire(&mut conn, s.id, now + 2),
            Err(SilenceError::Ended(_))
        ));
        assert!(matches!(
            expire(&mut conn, 99, now),
            Err(SilenceError::NoSilence(99))
        ));
    }
}
