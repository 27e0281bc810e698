//! `trainwatch sql`: runs a query on a read-only connection and prints the result.

use std::path::Path;

use anyhow::Context;
use clap::Args;

use super::render::{self, OutputFormat, Rows};

#[derive(Args, Debug)]
pub struct SqlArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    /// The SQL to run, e.g. "SELECT * FROM training_runs".
    pub query: String,
}

pub fn run(args: SqlArgs, db: &Path) -> anyhow::Result<()> {
    let conn = super::open_ro(db)?;
    // A second guard besides the read-only open: no statement may write.
    conn.pragma_update(None, "query_only", "ON")?;
    let rows = Rows::query(&conn, &args.query, &[])
        .with_context(|| format!("running query: {}", args.query))?;
    let stdout = std::io::stdout();
    render::write(&mut stdout.lock(), &rows, args.format)?;
    Ok(())
}
