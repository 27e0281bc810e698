//! The SQLite store. One writer owns the write connection and commits batches of [`Op`]s in
//! transactions ([`writer`]), retention and the outputs' delivery records ([`outbox`])
//! included; readers (CLI views, status, the notifier's and the MLflow exporter's queues) open
//! their own read-only connections. Only the commands run by hand (`trainwatch prune`) write
//! from another process, waiting on `busy_timeout` like any second writer.
//! Fed by derivation; read by the outputs.
//!
//! Connection settings: WAL so readers never block the writer, `synchronous=NORMAL` (durable at
//! checkpoints, safe against corruption), `busy_timeout` so a reader meeting a checkpoint waits
//! instead of failing with "database is locked", `auto_vacuum=INCREMENTAL` set before the first
//! table exists so retention can return space in small steps, and 8 KiB pages ([`PAGE_SIZE`]).

pub mod alerts;
pub mod lock;
pub mod migrate;
pub mod mlflow;
pub mod outbox;
pub mod queries;
pub mod retention;
pub mod silences;
pub mod writer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::derive::Op;
use crate::error::StoreError;

pub use outbox::OutboxChange;
pub use writer::{AlertSink, WriteStats, Writer};

/// How long a connection waits on a lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The default database path: `$TRAINWATCH_DB`, else `./trainwatch.db` (set by the CLI).
pub const DEFAULT_DB: &str = "trainwatch.db";

/// The page size of a database this program creates (one created before keeps its own).
pub const PAGE_SIZE: i64 = 8192;

fn pragmas(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(StoreError::sql("set busy_timeout"))?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(StoreError::sql("enable foreign keys"))?;
    Ok(())
}

/// A read-only connection of an async task (the notifier, the MLflow exporter): each use runs
/// on the blocking pool, one at a time.
#[derive(Clone)]
pub struct AsyncConn(std::sync::Arc<std::sync::Mutex<Connection>>);

impl AsyncConn {
    pub fn new(conn: Connection) -> Self {
        AsyncConn(std::sync::Arc::new(std::sync::Mutex::new(conn)))
    }

    /// Opens `path` read-only ([`open_ro`]).
    pub fn open_ro(path: &Path) -> Result<Self, StoreError> {
        open_ro(path).map(Self::new)
    }

    /// Runs `f` on the connection without blocking the async runtime.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let c = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&c)
        })
        .await
        .unwrap_or(Err(StoreError::WriterGone))
    }
}

/// Checks an existing database's structure (`PRAGMA quick_check`: every page and index entry
/// readable, without comparing index contents): `watch` refuses to append to a damaged one.
/// A database that does not exist yet is fine.
pub fn quick_check(path: &Path) -> Result<(), StoreError> {
    if !path.exists() {
        return Ok(());
    }
    let damaged = |problems: String| StoreError::Damaged {
        path: path.to_path_buf(),
        problems,
    };
    let conn = open_ro(path).map_err(|e| damaged(e.to_string()))?;
    let mut stmt = conn
        .prepare("PRAGMA quick_check(20)")
        .map_err(|e| damaged(e.to_string()))?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|it| it.collect())
        .map_err(|e| damaged(e.to_string()))?;
    if rows.len() == 1 && rows[0] == "ok" {
        return Ok(());
    }
    Err(damaged(rows.join("; ")))
}

/// Opens (creating and migrating if needed) the database for writing.
pub fn open_rw(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut conn = Connection::open(path).map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    pragmas(&conn)?;
    // auto_vacuum only takes effect before the first table is created.
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    if tables == 0 {
        // Bigger pages split less often, and every split of an index page copies the cells of
        // its siblings: 8 KiB replays ~11 % faster than the default 4 KiB (bench/replay.sh),
        // and 16 KiB no faster, while each live commit writes its few pages whole to the WAL.
        conn.pragma_update(None, "page_size", PAGE_SIZE)
            .map_err(StoreError::sql("set page_size"))?;
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(StoreError::sql("set auto_vacuum"))?;
    }
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(StoreError::sql("set WAL"))?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(StoreError::sql("set synchronous"))?;
    // A multi-row insert keeps a statement journal (the pages it changed, to undo it alone);
    // on disk that is a write per page per statement.
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(StoreError::sql("set temp_store"))?;
    migrate::migrate(&mut conn, path)?;
    Ok(conn)
}

/// Opens the database read-only (for `sql`, `history` and other views). Fails if the file does
/// not exist rather than creating an empty one.
///
/// A WAL database in a directory this user cannot write (a copy on read-only media, another
/// user's data directory) cannot get its shared-memory file: it is then opened `immutable`, a
/// snapshot of what the file holds, since nothing can be writing where nobody may create files.
pub fn open_ro(path: &Path) -> Result<Connection, StoreError> {
    let err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    pragmas(&conn)?;
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Err(rusqlite::Error::SqliteFailure(e, _))
            if matches!(
                e.code,
                rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen
            ) =>
        {
            drop(conn);
            let conn = Connection::open_with_flags(
                immutable_uri(path),
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_URI,
            )
            .map_err(err)?;
            pragmas(&conn)?;
            Ok(conn)
        }
        _ => Ok(conn),
    }
}

/// `file:<path>?immutable=1`, the path percent-encoded where a URI needs it.
fn immutable_uri(path: &Path) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut uri = String::from("file:");
    for b in abs.as_os_str().as_encoded_bytes() {
        match b {
            b'%' | b'?' | b'#' => uri.push_str(&format!("%{b:02X}")),
            _ if b.is_ascii() => uri.push(*b as char),
            _ => uri.push_str(&format!("%{b:02X}")),
        }
    }
    uri.push_str("?immutable=1");
    uri
}

/// A handle to the writer thread: batches go in through a bounded channel (a slow disk slows
/// the sources; nothing is dropped), the stats come back when it is closed.
///
/// Written batches come back through a second channel so their rows are freed, and the vectors
/// reused, on the thread that allocated them: freeing on the writer thread made both threads
/// contend for the allocator (measured with bench/replay.sh).
pub struct WriterHandle {
    tx: Option<WriterSender>,
    spent: std::sync::Mutex<std::sync::mpsc::Receiver<Vec<Op>>>,
    join: Option<std::thread::JoinHandle<Result<WriteStats, StoreError>>>,
}

/// An outbox record for the writer, and where its result goes once it is committed.
type Record = (
    outbox::OutboxChange,
    tokio::sync::oneshot::Sender<Result<usize, StoreError>>,
);

/// Sends work to the writer; cloned by every task that writes. Batches go in order through a
/// bounded channel: a sender waits while the writer is behind (a slow disk slows the sources).
/// Outbox records go through a channel of their own, taken before the next batch: they only
/// mark rows already committed, and a notifier waiting behind a queue of ingest batches would
/// deliver a burst of alerts several times slower (`cargo bench --bench outbox`).
#[derive(Clone)]
pub struct WriterSender {
    ops: tokio::sync::mpsc::Sender<Vec<Op>>,
    records: tokio::sync::mpsc::Sender<Record>,
}

impl WriterSender {
    /// Sends a batch, waiting while the writer is behind.
    pub async fn send(&self, batch: Vec<Op>) -> Result<(), StoreError> {
        self.ops
            .send(batch)
            .await
            .map_err(|_| StoreError::WriterGone)
    }

    /// Sends a batch from synchronous code (not from an async task).
    pub fn blocking_send(&self, batch: Vec<Op>) -> Result<(), StoreError> {
        self.ops
            .blocking_send(batch)
            .map_err(|_| StoreError::WriterGone)
    }

    /// Has the writer commit `change` before its next batch; returns once it is committed
    /// (with the rows it concerns, where [`outbox::OutboxChange::apply`] counts them).
    pub async fn record(&self, change: outbox::OutboxChange) -> Result<usize, StoreError> {
        let (done, committed) = tokio::sync::oneshot::channel();
        self.records
            .send((change, done))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        committed.await.unwrap_or(Err(StoreError::WriterGone))
    }
}

/// What the writer thread does next.
enum Work {
    Batch(Vec<Op>),
    Record(Record),
}

/// The writer thread's next piece of work: an outbox record if one waits, else a batch;
/// `None` once every sender is gone.
fn next_work(
    rt: &tokio::runtime::Runtime,
    ops: &mut tokio::sync::mpsc::Receiver<Vec<Op>>,
    records: &mut tokio::sync::mpsc::Receiver<Record>,
) -> Option<Work> {
    if let Ok(r) = records.try_recv() {
        return Some(Work::Record(r));
    }
    rt.block_on(async {
        tokio::select! {
            biased;
            Some(r) = records.recv() => Some(Work::Record(r)),
            b = ops.recv() => b.map(Work::Batch),
        }
    })
}

/// A store that cannot be written, as the writer last saw it: shared with the notifier and
/// the status file, which cannot learn it from the store itself.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreOutage {
    pub since: i64,
    pub error: String,
}

/// `Some` while the writer cannot commit.
pub type StoreHealth = std::sync::Arc<std::sync::Mutex<Option<StoreOutage>>>;

/// The `StoreNotWritable` alert of an outage, as the status file and receivers see it.
pub fn outage_alert(o: &StoreOutage) -> alerts::AlertRow {
    use crate::derive::alerts::{AlertName, fingerprint, labels};
    let name = AlertName::StoreNotWritable;
    let labels = labels(name, &[]);
    alerts::AlertRow {
        id: 0,
        fingerprint: fingerprint(&labels),
        alertname: name.as_str().into(),
        severity: name.severity().as_str().into(),
        status: "firing".into(),
        labels: serde_json::to_value(&labels).unwrap_or_default(),
        summary: format!("The database cannot be written: {}", o.error),
        started_at: crate::time::format_ns(o.since),
        resolved_at: None,
        last_notified_at: None,
        silenced: None,
    }
}

/// How the writer runs.
#[derive(Default)]
pub struct WriterOptions {
    /// Alert rules evaluated on what is written.
    pub alerts: Option<writer::AlertSink>,
    /// Retry a batch that cannot be committed (full disk, database locked by another program)
    /// until it commits, raising `StoreNotWritable` meanwhile (`watch`); otherwise the first
    /// failure ends the writer with its error (`replay`).
    pub retry: bool,
    /// Set while the writer cannot commit (with `retry`).
    pub health: Option<StoreHealth>,
    /// Where other processes (`health`, `status`) learn the same: the lock file.
    pub note: Option<lock::LockNote>,
}

/// Commits `batch`, retrying with backoff for as long as it takes: the channel before the
/// writer fills and the sources wait (nothing is dropped; a followed container's lines wait in
/// Docker's log).
fn write_until_done(
    w: &mut Writer,
    batch: &mut [Op],
    health: Option<&StoreHealth>,
    note: Option<&lock::LockNote>,
) {
    let mut backoff = crate::backoff::Backoff::new(crate::backoff::WRITER);
    let mut failing = false;
    // The error last written to the lock file (written again only when it changes).
    let mut outage_noted: Option<String> = None;
    w.observe(batch);
    loop {
        match w.store(batch) {
            Ok(()) => {
                if failing {
                    tracing::info!("The database can be written again.");
                    w.store_health(None);
                    if let Some(h) = health {
                        *h.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    }
                    if let Some(n) = note {
                        n.store_outage(None);
                    }
                }
                return;
            }
            Err(e) => {
                let msg = e.to_string();
                if !failing {
                    tracing::error!(error = %msg, "Cannot write the database; retrying.");
                }
                failing = true;
                w.store_health(Some(&msg));
                let since = match health {
                    Some(h) => {
                        let mut g = h.lock().unwrap_or_else(|e| e.into_inner());
                        let since = g.as_ref().map_or_else(crate::time::now_ns, |o| o.since);
                        *g = Some(StoreOutage {
                            since,
                            error: msg.clone(),
                        });
                        since
                    }
                    None => crate::time::now_ns(),
                };
                if let Some(n) = note
                    && outage_noted.as_deref() != Some(msg.as_str())
                {
                    n.store_outage(Some(&StoreOutage {
                        since,
                        error: msg.clone(),
                    }));
                    outage_noted = Some(msg);
                }
                std::thread::sleep(backoff.step());
            }
        }
    }
}

/// Batches in flight between the stages: bounds memory (each holds up to
/// [`crate::pipeline::BATCH_OPS`] rows).
const IN_FLIGHT: usize = 2;

impl WriterHandle {
    /// Starts the writer thread on `path`.
    pub fn spawn(path: PathBuf) -> Result<Self, StoreError> {
        Self::spawn_with(path, WriterOptions::default())
    }

    /// Starts the writer thread on `path` with alert rules and a failure policy.
    pub fn spawn_with(path: PathBuf, opts: WriterOptions) -> Result<Self, StoreError> {
        let conn = open_rw(&path)?;
        let mut w = Writer::new(conn);
        if let Some(sink) = opts.alerts {
            w = w.with_alerts(sink)?;
        }
        let retry = opts.retry;
        let health = opts.health;
        let note = opts.note;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Op>>(IN_FLIGHT);
        let (records_tx, mut records) = tokio::sync::mpsc::channel::<Record>(16);
        let (spent_tx, spent) = std::sync::mpsc::sync_channel::<Vec<Op>>(IN_FLIGHT + 2);
        // Waits on both channels (no timers, no I/O).
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|_| StoreError::WriterGone)?;
        let join = std::thread::Builder::new()
            .name("trainwatch-writer".into())
            .spawn(move || {
                while let Some(work) = next_work(&rt, &mut rx, &mut records) {
                    let mut batch = match work {
                        Work::Batch(batch) => batch,
                        Work::Record((change, done)) => {
                            // The asker may have stopped waiting; the record stands.
                            let _ = done.send(w.record(&change));
                            continue;
                        }
                    };
                    if let [Op::Prune { events, history }] = batch.as_slice() {
                        retention::log_pruned(w.prune(events, history.as_deref()));
                    } else if retry {
                        write_until_done(&mut w, &mut batch, health.as_ref(), note.as_ref());
                    } else {
                        w.write(&mut batch)?;
                    }
                    // The reader may have stopped collecting; then the batch is dropped here.
                    let _ = spent_tx.try_send(batch);
                }
                w.finish()
            })
            .map_err(|_| StoreError::WriterGone)?;
        Ok(WriterHandle {
            tx: Some(WriterSender {
                ops: tx,
                records: records_tx,
            }),
            spent: std::sync::Mutex::new(spent),
            join: Some(join),
        })
    }

    /// Sends a batch from synchronous code, waiting while the writer is behind. Must not be
    /// called from an async task (use [`WriterHandle::sender`]).
    pub fn send(&self, batch: Vec<Op>) -> Result<(), StoreError> {
        match &self.tx {
            Some(tx) => tx.blocking_send(batch),
            None => Err(StoreError::WriterGone),
        }
    }

    /// A sender for async tasks: `send(batch).await` waits while the writer is behind. The
    /// writer finishes once every sender (and this handle) is dropped.
    pub fn sender(&self) -> Option<WriterSender> {
        self.tx.clone()
    }

    /// An empty vector for the next batch: a written one (its rows dropped here) if the writer
    /// has returned one, else a new one.
    pub fn empty_batch(&self, capacity: usize) -> Vec<Op> {
        let spent = self.spent.lock().ok().and_then(|rx| rx.try_recv().ok());
        match spent {
            Some(mut v) => {
                v.clear();
                v
            }
            None => Vec::with_capacity(capacity),
        }
    }

    /// Closes the channel and waits for the writer to commit everything.
    pub fn finish(mut self) -> Result<WriteStats, StoreError> {
        self.tx.take();
        match self.join.take().map(|j| j.join()) {
            Some(Ok(r)) => r,
            _ => Err(StoreError::WriterGone),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn setting(conn: &Connection, name: &str) -> String {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| {
            r.get::<_, rusqlite::types::Value>(0)
        })
        .map(|v| match v {
            rusqlite::types::Value::Integer(i) => i.to_string(),
            rusqlite::types::Value::Text(t) => t,
            other => format!("{other:?}"),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_record_is_committed_when_the_writer_answers_and_a_refused_one_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let writer = WriterHandle::spawn(path.clone()).unwrap();
        let tx = writer.sender().unwrap();
        open_rw(&path)
            .unwrap()
            .execute_batch(
                "INSERT INTO runs (container, start_stream, start_key_ts, start_seq, started_at, status)
                 VALUES ('c', 'stdout', 1, 0, '2026-03-28T14:30:00.000000000Z', 'running')",
            )
            .unwrap();
        let ro = open_ro(&path).unwrap();
        let run = |target: &str| OutboxChange::MlflowRun {
            target: target.into(),
            run_id: 1,
            experiment_id: "7".into(),
            mlflow_run_id: "abc".into(),
            name: "train".into(),
            linked: false,
        };
        assert_eq!(tx.record(run("t1")).await.unwrap(), 0);
        // Seen by another connection as soon as the record is answered.
        let mapped: String = ro
            .query_row(
                "SELECT mlflow_run_id FROM mlflow_runs WHERE target = 't1' AND run_id = 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(mapped, "abc");
        tx.record(OutboxChange::MlflowEpochs {
            target: "t1".into(),
            run_id: 1,
            epochs: vec![(1, 11), (2, 22)],
        })
        .await
        .unwrap();
        assert_eq!(
            mlflow::epoch_digests(&ro, "t1", 1).unwrap(),
            HashMap::from([(1, 11), (2, 22)])
        );
        // A run that does not exist is refused (foreign key): the error comes back, nothing
        // of the change stays, and the writer goes on.
        let err = tx
            .record(OutboxChange::MlflowEpochs {
                target: "t1".into(),
                run_id: 99,
                epochs: vec![(1, 1)],
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("record exported epochs"), "{err}");
        tx.record(OutboxChange::MlflowRefused {
            target: "t2".into(),
            run_id: 1,
            error: "bad param".into(),
        })
        .await
        .unwrap();
        assert_eq!(
            tx.record(OutboxChange::MlflowClearRefused {
                target: "t2".into()
            })
            .await
            .unwrap(),
            1
        );
        let rows: i64 = ro
            .query_row(
                "SELECT (SELECT count(*) FROM mlflow_runs) * 10 + (SELECT count(*) FROM mlflow_epochs)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(rows, 12);
        drop(tx);
        tokio::task::spawn_blocking(move || writer.finish().unwrap())
            .await
            .unwrap();
    }

    #[test]
    fn a_new_database_gets_its_settings_and_an_old_one_keeps_its_pages() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new.db");
        let conn = open_rw(&new).unwrap();
        assert_eq!(setting(&conn, "page_size"), PAGE_SIZE.to_string());
        assert_eq!(setting(&conn, "auto_vacuum"), "2"); // incremental
        assert_eq!(setting(&conn, "journal_mode"), "wal");
        drop(conn);
        assert_eq!(
            setting(&open_rw(&new).unwrap(), "page_size"),
            PAGE_SIZE.to_string()
        );

        // A database made with SQLite's default pages opens and migrates as it is.
        let old = dir.path().join("old.db");
        Connection::open(&old)
            .unwrap()
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        let conn = open_rw(&old).unwrap();
        assert_eq!(setting(&conn, "page_size"), "4096");
        let n: i64 = conn
            .query_row("SELECT count(*) FROM event_log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }
}
