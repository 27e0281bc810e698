//! `trainwatch history`: training runs, or one run's epochs. `--run ID --format csv` writes
//! Ultralytics' `results.csv` columns so tools that read results.csv work on it.

use std::io::Write;
use std::path::Path;

use rusqlite::types::Value;

use anyhow::Context;
use clap::Args;

use trainwatch::output::results;
use trainwatch::store::queries;

use super::render::{self, OutputFormat, Rows};

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Show the epochs of this run.
    #[arg(long)]
    pub run: Option<i64>,
    /// Only runs of this container.
    #[arg(long)]
    pub container: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
}

pub fn run(args: HistoryArgs, db: &Path, config: Option<&Path>) -> anyhow::Result<()> {
    // Read for its errors: a missing or malformed config fails every command alike.
    super::load_config(config)?;
    let conn = super::open_ro(db)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.run {
        None => {
            let sql = if args.format == OutputFormat::Table {
                queries::HISTORY_RUNS_TABLE
            } else {
                queries::HISTORY_RUNS
            };
            let rows = Rows::query(&conn, sql, &[&args.container]).context("listing runs")?;
            render::write(&mut out, &rows, args.format)?;
            if args.format == OutputFormat::Table {
                // Why runs failed, under the table (its columns are full).
                let why = Rows::query(&conn, queries::HISTORY_FAILURES, &[&args.container])
                    .context("listing why runs failed")?;
                for row in &why.rows {
                    if let [
                        Value::Integer(id),
                        Value::Text(status),
                        Value::Text(failure),
                    ] = row.as_slice()
                    {
                        writeln!(out, "{}", why_line(*id, status, failure))?;
                    }
                }
            }
        }
        Some(id) => {
            if !queries::run_exists(&conn, id)? {
                anyhow::bail!("no training run with id {id} (see `trainwatch history`)");
            }
            let rows = Rows::query(&conn, queries::HISTORY_EPOCHS, &[&id])
                .with_context(|| format!("listing epochs of run {id}"))?;
            if args.format == OutputFormat::Csv {
                // The run folder's own results.csv when it was read, else rebuilt from the
                // epochs.
                let own = results::results_csv_as_written(&conn, id)
                    .with_context(|| format!("reading run {id}"))?;
                let table = match own {
                    Some(t) => t,
                    None => {
                        results::results_csv(&conn, id, rows)
                            .with_context(|| format!("reading run {id}"))?
                            .table
                    }
                };
                render::write(&mut out, &table, OutputFormat::Csv)?;
            } else {
                render::write(&mut out, &rows, args.format)?;
            }
        }
    }
    Ok(())
}

/// `run 12 failed: RuntimeError: ...`, within 120 columns.
fn why_line(id: i64, status: &str, failure: &str) -> String {
    let line = format!("run {id} {status}: {failure}");
    match line.char_indices().nth(119) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line,
    }
}
