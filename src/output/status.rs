//! The status file: the firing alerts and the latest gauges as one JSON document, rewritten
//! atomically (write to a temporary file beside it, fsync, rename) so a cron job or another
//! tool reading it never sees half a file. Built from the store, so `trainwatch health
//! --format json` prints the same document.

use std::io::Write;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::store::alerts::{self as store_alerts, AlertRow};
use crate::time::{Age, format_ns};

/// `[status]` in the config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// The status file `watch` rewrites (default: `trainwatch-status.json` beside the
    /// database); `""` turns it off.
    pub file: Option<PathBuf>,
    /// How often.
    pub interval: Age,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            file: None,
            interval: Age::secs(15),
        }
    }
}

impl StatusConfig {
    /// The status file for the database at `db`, or `None` when turned off.
    pub fn path(&self, db: &Path) -> Option<PathBuf> {
        match &self.file {
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(p.clone()),
            None => Some(db.with_file_name("trainwatch-status.json")),
        }
    }
}

/// The latest value of one metric.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Gauge {
    pub container: String,
    pub name: String,
    pub value: f64,
    pub ts: String,
}

/// The status document.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub generated_at: String,
    /// The running ingestor's last heartbeat.
    pub heartbeat_at: Option<String>,
    /// The log time of the newest stored event.
    pub newest_record_at: Option<String>,
    pub alerts_firing: Vec<AlertRow>,
    pub gauges: Vec<Gauge>,
}

/// Reads the status from the store.
pub fn collect(conn: &Connection, now: i64) -> Result<Status, StoreError> {
    let q = StoreError::sql("read status");
    let heartbeat_at: Option<String> = conn
        .query_row("SELECT at FROM heartbeat WHERE id = 1", [], |r| r.get(0))
        .optional()
        .map_err(StoreError::sql("read heartbeat"))?;
    let newest_record_at: Option<String> = conn
        .query_row("SELECT max(ts) FROM event_log", [], |r| r.get(0))
        .map_err(StoreError::sql("read newest record"))?;
    let mut stmt = conn
        .prepare_cached("SELECT container, name, value, ts FROM gauges ORDER BY name, container")
        .map_err(StoreError::sql("read gauges"))?;
    let gauges = stmt
        .query_map([], |r| {
            Ok(Gauge {
                container: r.get(0)?,
                name: r.get(1)?,
                value: r.get(2)?,
                ts: r.get(3)?,
            })
        })
        .and_then(|it| it.collect())
        .map_err(q)?;
    Ok(Status {
        generated_at: format_ns(now),
        heartbeat_at,
        newest_record_at,
        alerts_firing: store_alerts::list(conn, false, 1000)?,
        gauges,
    })
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync,
/// rename over `path`, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".trainwatch-status")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Collects the status and writes it to `path`, with `extra` alerts the store cannot hold
/// (`StoreNotWritable`) first.
pub fn write_file(
    conn: &Connection,
    path: &Path,
    now: i64,
    extra: Vec<AlertRow>,
) -> Result<(), String> {
    let mut status = collect(conn, now).map_err(|e| e.to_string())?;
    if !extra.is_empty() {
        status.alerts_firing.splice(0..0, extra);
    }
    let mut text = serde_json::to_vec_pretty(&status).map_err(|e| e.to_string())?;
    text.push(b'\n');
    write_atomic(path, &text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
