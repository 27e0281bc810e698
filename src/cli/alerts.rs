//! `trainwatch alerts`: the firing alerts (most severe first), or with `--all` every alert,
//! newest first.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use clap::Args;

use super::render::{self, OutputFormat, Rows};

#[derive(Args, Debug)]
pub struct AlertsArgs {
    /// Every alert (firing and resolved), newest first, instead of the firing ones.
    #[arg(long)]
    pub all: bool,
    /// At most this many alerts.
    #[arg(long, default_value_t = 200)]
    pub limit: usize,
    /// Output format (`csv` also works).
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
}

pub fn run(args: AlertsArgs, db: &Path, config: Option<&Path>) -> anyhow::Result<()> {
    // Read for its errors: a missing or malformed config fails every command alike.
    super::load_config(config)?;
    let conn = super::open_ro(db)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.format == OutputFormat::Json {
        let rows = trainwatch::store::alerts::list(&conn, args.all, args.limit)
            .context("listing alerts")?;
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }
    let sql = trainwatch::store::queries::alerts_table_sql(args.all);
    let rows = Rows::query(&conn, &sql, &[&(args.limit as i64)]).context("listing alerts")?;
    if rows.rows.is_empty() && args.format == OutputFormat::Table {
        writeln!(
            out,
            "{}",
            if args.all {
                "no alerts recorded"
            } else {
                "no alerts firing"
            }
        )?;
        return Ok(());
    }
    render::write(&mut out, &rows, args.format)?;
    Ok(())
}
