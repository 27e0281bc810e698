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

pub fn run(args: SqlArgs, db: &Path, config: Option<&Path>) -> anyhow::Result<()> {
    // Read for its errors: a missing or malformed config fails every command alike.
    super::load_config(config)?;
    let conn = super::open_ro(db)?;
    // A second guard besides the read-only open: no statement may write.
    conn.pragma_update(None, "query_only", "ON")?;
    // A third, before anything runs: a statement that would write (or create a file, as
    // `VACUUM INTO` does before it fails) is refused with the reason, not with SQLite's
    // "attempt to write a readonly database" or "disk I/O error".
    let refused = || {
        anyhow::anyhow!(
            "`trainwatch sql` is read-only: this statement would write or create a file ({}). Run queries (SELECT, WITH, EXPLAIN, PRAGMA reads); copy the database with `sqlite3 {} \".backup copy.db\"`.",
            args.query,
            db.display()
        )
    };
    // A statement that writes may not even prepare (`DELETE FROM events`: a view): its verb
    // says what it is.
    if writes_by_verb(&args.query) {
        return Err(refused());
    }
    let readonly = conn
        .prepare(&args.query)
        .map(|st| st.readonly())
        .context("running the query")?;
    // SQLite counts a few PRAGMA reads (`PRAGMA journal_mode`) as writes; a PRAGMA that sets
    // nothing runs, under the two guards above.
    let pragma_read = {
        let q = args.query.trim_start();
        q.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("pragma")) && !q.contains('=')
    };
    if !readonly && !pragma_read {
        return Err(refused());
    }
    let rows = match Rows::query(&conn, &args.query, &[]) {
        // A PRAGMA that writes although it sets nothing (`PRAGMA optimize`).
        Err(rusqlite::Error::SqliteFailure(e, _))
            if matches!(
                e.code,
                rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::SystemIoFailure
            ) =>
        {
            return Err(refused());
        }
        r => r.context("running the query")?,
    };
    let stdout = std::io::stdout();
    render::write(&mut stdout.lock(), &rows, args.format)?;
    Ok(())
}

/// Whether the statement's first word is one that writes.
fn writes_by_verb(sql: &str) -> bool {
    let verb: String = sql
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase();
    matches!(
        verb.as_str(),
        "INSERT"
            | "UPDATE"
            | "DELETE"
            | "REPLACE"
            | "UPSERT"
            | "CREATE"
            | "DROP"
            | "ALTER"
            | "VACUUM"
            | "REINDEX"
            | "ANALYZE"
            | "ATTACH"
            | "DETACH"
    )
}
