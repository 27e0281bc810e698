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
    /// Stop the query after this long (`30s`, `5m`): a runaway one (a recursive CTE without
    /// an end) is interrupted with a message instead of running forever.
    #[arg(long, default_value = "30s", value_parser = parse_timeout)]
    pub timeout: trainwatch::time::Age,
    /// The SQL to run, e.g. "SELECT * FROM training_runs".
    pub query: String,
}

fn parse_timeout(s: &str) -> Result<trainwatch::time::Age, String> {
    trainwatch::time::parse_age(s)
        .filter(|ns| *ns > 0)
        .map(trainwatch::time::Age)
        .ok_or_else(|| format!("{s:?} is not a duration such as 30s or 5m"))
}

/// Interrupts `conn`'s running statement once `timeout` has passed, unless dropped first.
struct Deadline {
    done: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Deadline {
    fn start(conn: &rusqlite::Connection, timeout: std::time::Duration) -> Deadline {
        let handle = conn.get_interrupt_handle();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(timeout) {
                handle.interrupt();
            }
        });
        Deadline {
            done: Some(done),
            thread: Some(thread),
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
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
    let deadline = Deadline::start(&conn, args.timeout.as_duration());
    let result = Rows::query(&conn, &args.query, &[]);
    drop(deadline);
    let rows = match result {
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::OperationInterrupted =>
        {
            anyhow::bail!(
                "the query ran longer than --timeout {} and was stopped",
                args.timeout
            );
        }
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
