//! `trainwatch health`: one line for a person and an exit code for cron: 0 ok, 1 warning
//! (medium/low alerts firing), 2 critical (critical/high firing, or the data is older than
//! `--max-age`: the ingestor is not running). `--format json` prints the status file's document.

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
    #[arg(long, default_value = "10m", value_parser = parse_age)]
    pub max_age: i64,
    #[arg(long, value_enum, default_value_t = HealthFormat::Text)]
    pub format: HealthFormat,
}

pub fn parse_age(s: &str) -> Result<i64, String> {
    trainwatch::time::parse_age(s)
        .ok_or_else(|| format!("{s:?}: expected an age like 10m, 1h, 90s"))
}

/// Returns the exit code.
pub fn run(args: HealthArgs, db: &Path) -> anyhow::Result<u8> {
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
    let s = status::collect(&conn, now, args.max_age).context("reading the status")?;
    match args.format {
        HealthFormat::Text => writeln!(out, "{}", s.health.line)?,
        HealthFormat::Json => out.write_all(&status::to_json(&s))?,
    }
    Ok(s.health.code)
}
