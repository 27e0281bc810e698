//! `trainwatch health`: one line for a person and an exit code for cron: 0 ok, 1 warning
//! (medium/low alerts firing), 2 critical (critical/high firing, or the data is older than
//! `--max-age`: the ingestor is not running). `--format json` prints the status file's document.
//!
//! `--ingestor` asks only whether `watch` is alive (its heartbeat is fresher than `--max-age`),
//! with Docker's healthcheck codes: 0 healthy, 1 not. Firing alerts do not make the ingestor
//! unhealthy: a container healthcheck that failed on a hot GPU would get trainwatch restarted
//! by the very tools meant to keep it up.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use clap::{Args, ValueEnum};

use trainwatch::output::status;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HealthFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// Data older than this (now minus the newest of the ingestor's heartbeat and the newest
    /// stored record) is critical.
    /// Default: `[status] max_age` (10m).
    #[arg(long, value_parser = parse_age)]
    pub max_age: Option<i64>,
    #[arg(long, value_enum, default_value_t = HealthFormat::Text)]
    pub format: HealthFormat,
    /// Only check that the ingestor (`watch`) is alive: exit 0 when its heartbeat is newer
    /// than `--max-age`, else 1 (for a container's healthcheck).
    #[arg(long, conflicts_with = "format")]
    pub ingestor: bool,
}

pub fn parse_age(s: &str) -> Result<i64, String> {
    trainwatch::time::parse_age(s)
        .ok_or_else(|| format!("{s:?}: expected an age like 10m, 1h, 90s"))
}

/// Returns the exit code.
pub fn run(args: HealthArgs, db: &Path, config: Option<&Path>) -> anyhow::Result<u8> {
    let cfg = super::load_config(config)?;
    let max_age = args.max_age.unwrap_or(cfg.status.max_age.0);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if !db.exists() {
        writeln!(
            out,
            "CRITICAL: no database at {} (the ingestor has never run)",
            db.display()
        )?;
        return Ok(2);
    }
    let conn = super::open_ro(db)?;
    let now = trainwatch::time::now_ns();
    if args.ingestor {
        return ingestor(&mut out, &conn, now, max_age);
    }
    let s = status::collect_beside(&conn, db, now, max_age).context("reading the status")?;
    match args.format {
        HealthFormat::Text => writeln!(out, "{}", s.health.line)?,
        HealthFormat::Json => out.write_all(&status::to_json(&s))?,
    }
    Ok(s.health.code)
}

/// `--ingestor`: 0 when the heartbeat is fresh, 1 otherwise.
fn ingestor(
    out: &mut impl Write,
    conn: &rusqlite::Connection,
    now: i64,
    max_age: i64,
) -> anyhow::Result<u8> {
    use trainwatch::time::human_duration;
    let hb = trainwatch::store::queries::heartbeat(conn).context("reading the heartbeat")?;
    let Some(hb) = hb else {
        writeln!(out, "UNHEALTHY: no ingestor has run on this database")?;
        return Ok(1);
    };
    let Some(at) = trainwatch::time::parse_rfc3339(&hb.at) else {
        writeln!(out, "UNHEALTHY: unreadable heartbeat time {:?}", hb.at)?;
        return Ok(1);
    };
    let age = (now - at).max(0);
    if age > max_age {
        writeln!(
            out,
            "UNHEALTHY: last ingestor heartbeat {} ago (pid {}), older than {}",
            human_duration(age),
            hb.pid,
            human_duration(max_age)
        )?;
        return Ok(1);
    }
    writeln!(
        out,
        "OK: ingestor alive, heartbeat {} ago (pid {}, up since {})",
        human_duration(age),
        hb.pid,
        hb.started_at
    )?;
    Ok(0)
}
