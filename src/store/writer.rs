//! The single writer: applies batches of [`Op`]s, each batch in one transaction, with cached
//! prepared statements. Every insert is keyed by its natural key, so offering the same rows
//! twice changes nothing (`OR IGNORE` for events, upserts for samples, merging upserts for
//! runs and epochs). Cursors are written in the same transaction as the rows they cover.

use std::collections::HashMap;

use rusqlite::{Connection, params};

use crate::derive::alerts::{Change, Engine};
use crate::derive::{EpochRow, Op, RunKey, RunRow};
use crate::error::StoreError;
use crate::time::format_ns;

/// What the writer did, for the replay summary and trainwatch's own metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub batches: u64,
    pub events_inserted: u64,
    pub events_duplicate: u64,
    pub epochs_written: u64,
    pub runs_written: u64,
    pub metrics_inserted: u64,
    pub alerts_changed: u64,
    pub notifications_queued: u64,
}

/// The alert rules riding on the writer: they see every op it commits, and their changes
/// (with the outbox rows that notify them) commit in the same transaction.
pub struct AlertSink {
    pub engine: Engine,
    /// Receiver names: one outbox row per receiver and notification.
    pub receivers: Vec<String>,
    /// Woken after a commit that queued notifications.
    pub wake: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// Changes not yet committed (kept across a failed commit, applied again).
    pending: Vec<Change>,
}

impl AlertSink {
    pub fn new(
        engine: Engine,
        receivers: Vec<String>,
        wake: Option<std::sync::Arc<tokio::sync::Notify>>,
    ) -> Self {
        AlertSink {
            engine,
            receivers,
            wake,
            pending: Vec::new(),
        }
    }
}

pub struct Writer {
    conn: Connection,
    run_ids: HashMap<RunKey, i64>,
    stats: WriteStats,
    alerts: Option<AlertSink>,
    started_at: i64,
    /// How long a removed container stays in `containers` (ns): `[alerts]
    /// forget_removed_after`.
    forget_removed: i64,
}

/// Rows per multi-row INSERT: one statement execution opens the table's and indexes' cursors
/// once for all of them, instead of once per row.
const CHUNK: usize = 16;

/// `INSERT <head> VALUES (<row>), ... (n rows) <tail>`.
fn multi_row(head: &str, row: &str, n: usize, tail: &str) -> String {
    let mut sql = format!("INSERT {head} VALUES ");
    for i in 0..n {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(row);
    }
    sql.push(' ');
    sql.push_str(tail);
    sql
}

// Both logs are inserted with `OR IGNORE`: the natural key is the only constraint a row can
// break (no value is ever NULL), and a statement that cannot abort needs no statement journal.
// An upsert can abort, and a multi-row one then journals every page it touches (9 % of the
// writer's instructions for the samples alone, callgrind).
const EVENT_INTO: &str =
    "event_log (ts, container, stream, key_ts, seq, level, kind, message, context)";
const EVENT_ROW: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?)";

// Two samples of one metric at the same instant (lines without their own time share the last
// one seen): the later line's value is the current one, e.g. a counter's running total.
const METRIC_INTO: &str = "metric_log (container, name, ts, value)";
const METRIC_ROW: &str = "(?, ?, ?, ?)";
const METRIC_UPSERT: &str =
    "ON CONFLICT (container, name, ts) DO UPDATE SET value = excluded.value";

const UPSERT_RUN: &str =
    "INSERT INTO runs (container, start_stream, start_key_ts, start_seq, started_at, ended_at,
        status, epochs_total, best_epoch_reported, save_dir, model, loss_names, params,
        ultralytics_version, failure)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
     ON CONFLICT (container, start_stream, start_key_ts, start_seq) DO UPDATE SET
        ended_at = excluded.ended_at, status = excluded.status,
        epochs_total = COALESCE(excluded.epochs_total, epochs_total),
        best_epoch_reported = COALESCE(excluded.best_epoch_reported, best_epoch_reported),
        save_dir = COALESCE(excluded.save_dir, save_dir), model = COALESCE(excluded.model, model),
        loss_names = excluded.loss_names, params = COALESCE(params, excluded.params),
        ultralytics_version = COALESCE(ultralytics_version, excluded.ultralytics_version),
        failure = excluded.failure
     RETURNING run_id";

// ?16 says whether this row carries the loss columns (a training row); validation rows leave
// them as they are. A re-run epoch (resume, NaN recovery) overwrites with its latest values.
// ?19 says whether the row may change the values: the run folder's results.csv wins over the
// console's rounded values whichever comes first, so once an epoch has a results.csv row,
// console rows change none of the values it gave.
const UPSERT_EPOCH: &str =
    "INSERT INTO epochs (run_id, epoch, epochs_total, ended_at, box_loss, cls_loss, dfl_loss,
        loss, losses, non_finite, precision, recall, map50, map50_95, gpu_mem_gb, metrics,
        train_time_s)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, COALESCE(?10, 0), ?11, ?12, ?13, ?14, ?15, ?17,
        ?18)
     ON CONFLICT (run_id, epoch) DO UPDATE SET
        epochs_total = COALESCE(excluded.epochs_total, epochs_total),
        ended_at = max(excluded.ended_at, ended_at),
        box_loss = CASE WHEN ?16 AND ?19 THEN excluded.box_loss ELSE box_loss END,
        cls_loss = CASE WHEN ?16 AND ?19 THEN excluded.cls_loss ELSE cls_loss END,
        dfl_loss = CASE WHEN ?16 AND ?19 THEN excluded.dfl_loss ELSE dfl_loss END,
        losses = CASE WHEN ?16 AND ?19 THEN excluded.losses ELSE losses END,
        loss = CASE WHEN NOT ?19 THEN loss WHEN ?16 THEN excluded.loss
            ELSE COALESCE(excluded.loss, loss) END,
        non_finite = CASE WHEN ?19 THEN COALESCE(?10, non_finite) ELSE non_finite END,
        precision = CASE WHEN ?19 THEN COALESCE(excluded.precision, precision) ELSE precision END,
        recall = CASE WHEN ?19 THEN COALESCE(excluded.recall, recall) ELSE recall END,
        map50 = CASE WHEN ?19 THEN COALESCE(excluded.map50, map50) ELSE map50 END,
        map50_95 = CASE WHEN ?19 THEN COALESCE(excluded.map50_95, map50_95) ELSE map50_95 END,
        gpu_mem_gb = COALESCE(excluded.gpu_mem_gb, gpu_mem_gb),
        metrics = COALESCE(excluded.metrics, metrics),
        train_time_s = COALESCE(excluded.train_time_s, train_time_s)";

const CSV_GAVE: &str = "SELECT 1 FROM results_rows WHERE run_id = ?1 AND epoch = ?2";

// A results.csv row as written (a resumed or re-read row replaces it), and the header it is
// read by (migration 0013).
// A run's params merged with a patch (JSON objects): `args.yaml` fills only what is missing,
// the resolved optimizer replaces.
const PARAMS_FILL: &str =
    "UPDATE runs SET params = json_patch(?2, COALESCE(params, '{}')) WHERE run_id = ?1";
const PARAMS_OVERRIDE: &str =
    "UPDATE runs SET params = json_patch(COALESCE(params, '{}'), ?2) WHERE run_id = ?1";
const SET_RUN_FOLDER: &str = "UPDATE runs SET folder = ?2 WHERE run_id = ?1";
const SET_RUN_MLFLOW: &str =
    "UPDATE runs SET mlflow_run_id = ?2, mlflow_uri = ?3 WHERE run_id = ?1";

const UPSERT_RESULTS_ROW: &str =
    "INSERT INTO results_rows (run_id, row, epoch, cells) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (run_id, row) DO UPDATE SET epoch = excluded.epoch, cells = excluded.cells";
const CLEAR_RESULTS_ROWS: &str = "DELETE FROM results_rows WHERE run_id = ?1";
const SET_RESULTS_COLUMNS: &str =
    "UPDATE runs SET results_columns = ?2 WHERE run_id = ?1 AND results_columns IS NOT ?2";

const UPSERT_CURSOR: &str =
    "INSERT INTO cursors (container, stream, origin, key_ts, seq, updated_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
     ON CONFLICT (container, stream, origin) DO UPDATE SET
        key_ts = excluded.key_ts, seq = excluded.seq, updated_at = excluded.updated_at
     WHERE (excluded.key_ts, excluded.seq) > (cursors.key_ts, cursors.seq)";

const UPSERT_GAUGE: &str = "INSERT INTO gauges (container, name, ts, value) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (container, name) DO UPDATE SET ts = excluded.ts, value = excluded.value
     WHERE excluded.ts >= gauges.ts OR gauges.ts > ?5";

const HEARTBEAT: &str = "INSERT INTO heartbeat (id, at, pid, started_at) VALUES (1, ?1, ?2, ?3)
     ON CONFLICT (id) DO UPDATE SET at = excluded.at, pid = excluded.pid,
        started_at = excluded.started_at";

const UPSERT_CONTAINER: &str =
    "INSERT INTO containers (container, role, seen_at) VALUES (?1, ?2, ?3)
     ON CONFLICT (container) DO UPDATE SET role = excluded.role, seen_at = excluded.seen_at
     WHERE excluded.seen_at >= containers.seen_at";

// A container's state, in log order: an older report does not undo a newer one.
const CONTAINER_RUNNING: &str = "UPDATE containers SET state = 'running', exit_code = NULL,
        oom_killed = 0, state_at = ?2
     WHERE container = ?1 AND (state_at IS NULL OR state_at <= ?2)";
const CONTAINER_EXITED: &str = "UPDATE containers SET state = 'exited', exit_code = ?3,
        state_at = ?2
     WHERE container = ?1 AND (state_at IS NULL OR state_at <= ?2)";
const CONTAINER_OOM: &str = "UPDATE containers SET oom_killed = 1
     WHERE container = ?1 AND (state_at IS NULL OR state_at <= ?2)";
const CONTAINER_REMOVED: &str = "UPDATE containers SET state = 'removed', state_at = ?2
     WHERE container = ?1 AND (state_at IS NULL OR state_at <= ?2)";
/// A removed container's gauges are not current: its Docker stats, its training figures.
const REMOVED_GAUGES: &str = "DELETE FROM gauges WHERE container = ?1";
/// Removed containers whose time on `status` has passed (?1: the cutoff).
const FORGET_REMOVED: &str = "DELETE FROM containers WHERE state = 'removed' AND state_at < ?1";
/// The log time of a container's newest line read (the daemon's own events are not lines).
// A time stamped in the future (?3: now + the allowed skew) yields to any later line.
const CONTAINER_LAST_LINE: &str = "UPDATE containers SET last_line_at = ?2
     WHERE container = ?1 AND (last_line_at IS NULL OR last_line_at < ?2 OR last_line_at > ?3)";

// Rows stamped in the future: when they arrived, for retention (migration 0012).
const EVENTS_ARRIVED: &str =
    "UPDATE event_log SET arrived_at = ?1 WHERE ts > ?2 AND arrived_at IS NULL";
const METRICS_ARRIVED: &str =
    "UPDATE metric_log SET arrived_at = ?1 WHERE ts > ?2 AND arrived_at IS NULL";

const UPSERT_DERIVE_STATE: &str =
    "INSERT INTO derive_state (container, state, saved_at) VALUES (?1, ?2, ?3)
     ON CONFLICT (container) DO UPDATE SET state = excluded.state, saved_at = excluded.saved_at";

const SELECT_RUN_ID: &str = "SELECT run_id FROM runs WHERE container = ?1 AND start_stream = ?2 AND start_key_ts = ?3 AND start_seq = ?4";

impl Writer {
    pub fn new(conn: Connection) -> Self {
        Writer {
            conn,
            run_ids: HashMap::new(),
            stats: WriteStats::default(),
            alerts: None,
            started_at: crate::time::now_ns(),
            forget_removed: crate::derive::alerts::Rules::default()
                .forget_removed_after
                .0,
        }
    }

    /// Evaluates alert rules on everything written, continuing the alerts the store holds
    /// as firing.
    pub fn with_alerts(mut self, mut sink: AlertSink) -> Result<Self, StoreError> {
        use crate::store::alerts as stored;
        let live = sink.engine.is_live();
        self.forget_removed = sink.engine.rules().forget_removed_after.0;
        let now = crate::time::now_ns();
        let firing = stored::load_firing(&self.conn)?;
        // The state committed with the last batch continues exactly; without one (a new
        // database, or one written before states were kept), the alerts, offsets and pending
        // samples are rebuilt from the rows as well as they can be.
        let resumed = match stored::load_engine(&self.conn, origin(live))? {
            Some(snapshot) => match sink.engine.resume(&snapshot) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "alert engine state not resumed; rebuilt from the stored alerts");
                    false
                }
            },
            None => false,
        };
        if resumed {
            sink.engine.reconcile(firing);
            if live {
                sink.engine.expire_pending(now);
            }
        } else {
            sink.engine.restore(firing);
            sink.engine
                .restore_offsets(stored::load_offsets(&self.conn)?);
            if live && let Some((names, window)) = sink.engine.pending_window() {
                let samples = stored::load_samples_since(&self.conn, &names, now - window)?;
                sink.engine
                    .restore_pending(&samples, now, &mut sink.pending);
            }
        }
        if live {
            sink.engine.observe(&Op::Tick(now), &mut sink.pending);
        }
        self.alerts = Some(sink);
        Ok(self)
    }

    /// The rule engine, if alerts are evaluated.
    pub fn alerts(&mut self) -> Option<&mut AlertSink> {
        self.alerts.as_mut()
    }

    /// Tells the rules whether the store can be written (`None`: it can again).
    pub fn store_health(&mut self, error: Option<&str>) {
        if let Some(a) = self.alerts.as_mut() {
            a.engine
                .store_health(crate::time::now_ns(), error, &mut a.pending);
            // The notifier delivers the outage itself: the outbox cannot be written.
            if error.is_some()
                && let Some(w) = &a.wake
            {
                w.notify_one();
            }
        }
    }

    /// Runs retention ([`super::retention::prune`]) on the write connection, between batches.
    pub fn prune(
        &mut self,
        events: &str,
        history: Option<&str>,
    ) -> Result<super::retention::PruneReport, StoreError> {
        super::retention::prune(&self.conn, events, history, false)
    }

    /// Commits one outbox change in a transaction of its own ([`super::outbox`]).
    pub fn record(&mut self, change: &super::outbox::OutboxChange) -> Result<usize, StoreError> {
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(StoreError::sql("begin outbox record"))?;
        let n = change.apply(&tx)?;
        tx.commit()
            .map_err(StoreError::sql("commit outbox record"))?;
        Ok(n)
    }

    /// Applies one batch in one transaction. The batch is left as it was (the caller frees or
    /// reuses it).
    pub fn write(&mut self, batch: &mut [Op]) -> Result<(), StoreError> {
        self.observe(batch);
        self.store(batch)
    }

    /// Shows a batch to the alert rules: once per batch, however many times storing it is
    /// tried. Their changes wait in the sink until a commit stores them.
    pub fn observe(&mut self, batch: &[Op]) {
        if let Some(a) = self.alerts.as_mut() {
            for op in batch {
                a.engine.observe(op, &mut a.pending);
            }
        }
    }

    /// Stores an observed batch (and the alert changes waiting) in one transaction. On error
    /// nothing of it is stored or counted, and it can be tried again.
    pub fn store(&mut self, batch: &mut [Op]) -> Result<(), StoreError> {
        let stats = self.stats.clone();
        let mut new_runs = Vec::new();
        let done = self.store_once(batch, &mut new_runs);
        if done.is_err() {
            // The run ids were allocated in the transaction that rolled back.
            self.stats = stats;
            for key in new_runs {
                self.run_ids.remove(&key);
            }
        }
        done
    }

    fn store_once(
        &mut self,
        batch: &mut [Op],
        new_runs: &mut Vec<RunKey>,
    ) -> Result<(), StoreError> {
        let events_before = self.stats.events_inserted;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(StoreError::sql("begin transaction"))?;
        let mut logs = Logs::default();
        for op in batch.iter() {
            match op {
                // Rows of the two logs reference nothing else in the batch: they are inserted
                // after the loop, in order, many per statement.
                Op::Event(e) => logs.events.push(e),
                Op::Metric(m) => logs.metric(m),
                // A removed container stays on `status` and the page, marked, for a while.
                Op::Tick(now) => {
                    write_op(
                        &tx,
                        op,
                        self.started_at,
                        &mut self.run_ids,
                        &mut self.stats,
                        new_runs,
                    )?;
                    tx.prepare_cached(FORGET_REMOVED)
                        .and_then(|mut s| s.execute([format_ns(now - self.forget_removed)]))
                        .map_err(StoreError::sql("forget removed containers"))?;
                }
                _ => write_op(
                    &tx,
                    op,
                    self.started_at,
                    &mut self.run_ids,
                    &mut self.stats,
                    new_runs,
                )?,
            }
        }
        logs.write(&tx, &mut self.stats)?;
        let mut queued = 0;
        if let Some(a) = self.alerts.as_ref() {
            let origin = origin(a.engine.is_live());
            let now = crate::time::now_ns();
            for c in &a.pending {
                queued += crate::store::alerts::apply(&tx, c, &a.receivers, origin, now)?;
            }
            // What the engine knows after this batch, committed with it.
            crate::store::alerts::save_engine(&tx, origin, &a.engine.snapshot(), now)?;
        }
        tx.commit().map_err(StoreError::sql("commit batch"))?;
        self.stats.batches += 1;
        {
            use crate::telemetry::events::{BatchCommitted, InternalEvent};
            BatchCommitted {
                events: self.stats.events_inserted - events_before,
            }
            .emit();
        }
        if let Some(a) = self.alerts.as_mut() {
            self.stats.alerts_changed += a.pending.len() as u64;
            a.pending.clear();
            self.stats.notifications_queued += queued as u64;
            if queued > 0
                && let Some(w) = &a.wake
            {
                w.notify_one();
            }
        }
        Ok(())
    }

    /// Checkpoints the WAL and returns the totals.
    pub fn finish(self) -> Result<WriteStats, StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(StoreError::sql("checkpoint WAL"))?;
        Ok(self.stats)
    }
}

/// The `origin` of the alerts an engine records, and of its committed state.
fn origin(live: bool) -> &'static str {
    if live { "watch" } else { "replay" }
}

/// A row of one of the two logs, inserted [`CHUNK`] per statement.
trait LogRow {
    /// `table (columns)` and one row's placeholders.
    const SQL: (&'static str, &'static str);
    /// For a log where a later row replaces an earlier one with the same key: the conflict
    /// clause that does it. A chunk that met a conflict is applied again row by row with it.
    const UPSERT: Option<&'static str>;
    const PARAMS: usize;
    /// What an error says was being done.
    const WHAT: &'static str;
    fn ts(&self) -> i64;
    /// Binds this row's values from parameter `first` on; `ts` is its time, formatted.
    fn bind(
        &self,
        st: &mut rusqlite::CachedStatement<'_>,
        first: usize,
        ts: &str,
    ) -> Result<(), StoreError>;
}

impl LogRow for crate::derive::EventRow {
    const SQL: (&'static str, &'static str) = (EVENT_INTO, EVENT_ROW);
    const UPSERT: Option<&'static str> = None;
    const PARAMS: usize = 9;
    const WHAT: &'static str = "insert events";
    fn ts(&self) -> i64 {
        self.ts
    }
    fn bind(
        &self,
        st: &mut rusqlite::CachedStatement<'_>,
        p: usize,
        ts: &str,
    ) -> Result<(), StoreError> {
        bind(st, p, ts)?;
        bind(st, p + 1, &*self.container)?;
        bind(st, p + 2, self.stream)?;
        bind(st, p + 3, self.key_ts)?;
        bind(st, p + 4, self.seq)?;
        bind(st, p + 5, self.level.as_str())?;
        bind(st, p + 6, self.kind)?;
        bind(st, p + 7, self.message.as_str())?;
        bind(st, p + 8, self.context.as_str())
    }
}

impl LogRow for crate::derive::MetricRow {
    const SQL: (&'static str, &'static str) = (METRIC_INTO, METRIC_ROW);
    const UPSERT: Option<&'static str> = Some(METRIC_UPSERT);
    const PARAMS: usize = 4;
    const WHAT: &'static str = "insert metric samples";
    fn ts(&self) -> i64 {
        self.ts
    }
    fn bind(
        &self,
        st: &mut rusqlite::CachedStatement<'_>,
        p: usize,
        ts: &str,
    ) -> Result<(), StoreError> {
        bind(st, p, &*self.container)?;
        bind(st, p + 1, self.name)?;
        bind(st, p + 2, ts)?;
        bind(st, p + 3, self.value)
    }
}

/// Inserts rows in order, [`CHUNK`] per statement; returns the rows changed (for events, the
/// new ones; for samples, new or updated).
fn insert_rows<R: LogRow>(tx: &rusqlite::Transaction<'_>, rows: &[&R]) -> Result<u64, StoreError> {
    let mut ts = String::new();
    let mut changed = 0;
    // Whole chunks share one statement; the rest goes one row at a time, so only two
    // statements per table are ever prepared.
    let whole = rows.len() / CHUNK * CHUNK;
    let (into, row) = R::SQL;
    let head = format!("OR IGNORE INTO {into}");
    let many = multi_row(&head, row, CHUNK, "");
    let one = match R::UPSERT {
        Some(upsert) => multi_row(&format!("INTO {into}"), row, 1, upsert),
        None => multi_row(&head, row, 1, ""),
    };
    let by_one = |chunk: &[&R], ts: &mut String| -> Result<u64, StoreError> {
        let mut st = tx.prepare_cached(&one).map_err(StoreError::sql(R::WHAT))?;
        let mut changed = 0;
        for r in chunk {
            ts.clear();
            crate::time::write_ns(ts, r.ts());
            r.bind(&mut st, 1, ts)?;
            changed += st.raw_execute().map_err(StoreError::sql(R::WHAT))? as u64;
        }
        Ok(changed)
    };
    // Prepared once per batch and executed again for each chunk, rather than taken from the
    // statement cache (a lookup by its SQL text) and given back (its 144 bindings cleared) per
    // chunk: −1.2 % of the writer's instructions, callgrind.
    let mut st = match whole {
        0 => None,
        _ => Some(tx.prepare_cached(&many).map_err(StoreError::sql(R::WHAT))?),
    };
    for chunk in rows[..whole].chunks(CHUNK) {
        let st = st.as_mut().expect("prepared for whole chunks");
        ts.clear();
        for r in chunk {
            crate::time::write_ns(&mut ts, r.ts());
        }
        // Every formatted time has the same width.
        let width = ts.len() / chunk.len();
        for (i, r) in chunk.iter().enumerate() {
            r.bind(st, i * R::PARAMS + 1, &ts[i * width..(i + 1) * width])?;
        }
        let inserted = st.raw_execute().map_err(StoreError::sql(R::WHAT))? as u64;
        changed += if inserted < chunk.len() as u64 && R::UPSERT.is_some() {
            // Some row met an earlier one with its key: apply them again in order, so the
            // later value wins (rows inserted just now are rewritten with their own value).
            by_one(chunk, &mut ts)?
        } else {
            inserted
        };
    }
    changed += by_one(&rows[whole..], &mut ts)?;
    Ok(changed)
}

fn bind<T: rusqlite::ToSql>(
    st: &mut rusqlite::CachedStatement<'_>,
    i: usize,
    v: T,
) -> Result<(), StoreError> {
    st.raw_bind_parameter(i, v)
        .map_err(StoreError::sql("bind parameter"))
}

fn upsert_run(tx: &rusqlite::Transaction<'_>, r: &RunRow) -> Result<i64, StoreError> {
    let names = serde_json::to_string(&r.loss_names).unwrap_or_else(|_| "[]".into());
    tx.prepare_cached(UPSERT_RUN)
        .and_then(|mut s| {
            s.query_row(
                params![
                    &*r.key.container,
                    r.key.stream.as_str(),
                    r.key.ts,
                    r.key.seq,
                    format_ns(r.started_at),
                    r.ended_at.map(format_ns),
                    r.status.as_str(),
                    r.epochs_total,
                    r.best_epoch_reported,
                    r.save_dir,
                    r.model,
                    names,
                    r.params,
                    r.ultralytics_version,
                    r.failure
                ],
                |row| row.get(0),
            )
        })
        .map_err(StoreError::sql("upsert run"))
}

fn upsert_epoch(
    tx: &rusqlite::Transaction<'_>,
    run_id: i64,
    e: &EpochRow,
) -> Result<(), StoreError> {
    let named = |n: &str| {
        e.losses
            .as_ref()
            .and_then(|l| l.iter().find(|(k, _)| k == n).map(|(_, v)| *v))
    };
    let (losses_json, sum, non_finite) = match &e.losses {
        Some(l) => {
            let obj: serde_json::Map<String, serde_json::Value> = l
                .iter()
                .map(|(k, v)| (k.clone(), crate::derive::json_num(*v)))
                .collect();
            let sum: f64 = l.iter().map(|(_, v)| v).sum();
            let nf = l.iter().any(|(_, v)| !v.is_finite())
                || e.loss.is_some_and(|v| !v.is_finite())
                || e.non_finite == Some(true);
            (
                Some(serde_json::Value::Object(obj).to_string()),
                Some(e.loss.unwrap_or(sum)),
                Some(nf),
            )
        }
        None => (
            None,
            e.loss,
            e.loss
                .map(|v| !v.is_finite() || e.non_finite == Some(true))
                .or(e.non_finite),
        ),
    };
    // Whether the epoch's values came from its run folder's results.csv.
    let csv_gave: bool = tx
        .prepare_cached(CSV_GAVE)
        .and_then(|mut s| s.exists(params![run_id, e.epoch]))
        .map_err(StoreError::sql("look for a results.csv row"))?;
    tx.prepare_cached(UPSERT_EPOCH)
        .and_then(|mut s| {
            s.execute(params![
                run_id,
                e.epoch,
                e.epochs_total,
                format_ns(e.ended_at),
                named("box_loss"),
                named("cls_loss"),
                named("dfl_loss"),
                sum,
                losses_json,
                non_finite,
                e.precision,
                e.recall,
                e.map50,
                e.map50_95,
                e.gpu_mem_gb,
                e.losses.is_some(),
                e.metrics,
                e.train_time_s,
                // ?19: a results.csv row, or an epoch no results.csv row gave.
                e.non_finite.is_some() || !csv_gave
            ])
        })
        .map_err(StoreError::sql("upsert epoch"))?;
    Ok(())
}

/// The rows of the two logs in a batch, inserted together after its other ops.
#[derive(Default)]
struct Logs<'a> {
    events: Vec<&'a crate::derive::EventRow>,
    metrics: Vec<&'a crate::derive::MetricRow>,
    /// Newest sample per metric in this batch: (container, name, ts, value).
    latest: Vec<(std::sync::Arc<str>, &'static str, i64, f64)>,
}

impl<'a> Logs<'a> {
    fn metric(&mut self, m: &'a crate::derive::MetricRow) {
        self.metrics.push(m);
        // The gauge is written once per batch, with the newest sample.
        match self
            .latest
            .iter_mut()
            .find(|(c, n, _, _)| *n == m.name && **c == *m.container)
        {
            Some(g) if g.2 <= m.ts => (g.2, g.3) = (m.ts, m.value),
            Some(_) => {}
            None => self
                .latest
                .push((m.container.clone(), m.name, m.ts, m.value)),
        }
    }

    /// Inserts the events and samples, many per statement, with each container's last line
    /// and each metric's gauge.
    fn write(
        self,
        tx: &rusqlite::Transaction<'_>,
        stats: &mut WriteStats,
    ) -> Result<(), StoreError> {
        let Logs {
            events,
            metrics,
            latest,
        } = self;
        // What is stamped later than this is in the future (the clock was set ahead).
        let now = crate::time::now_ns();
        let ahead_ns = now + crate::time::FUTURE_SKEW_NS;
        let ahead = format_ns(ahead_ns);
        // Newest line per container in this batch: a handful of containers per batch.
        let mut newest: Vec<(&str, i64)> = Vec::new();
        for e in events.iter().filter(|e| e.stream != "docker") {
            match newest.iter_mut().find(|(c, _)| *c == &*e.container) {
                Some(n) => n.1 = n.1.max(e.ts),
                None => newest.push((&e.container, e.ts)),
            }
        }
        for (container, ts) in newest {
            tx.prepare_cached(CONTAINER_LAST_LINE)
                .and_then(|mut s| s.execute(params![container, format_ns(ts), ahead]))
                .map_err(StoreError::sql("write a container's last line"))?;
        }
        let inserted = insert_rows(tx, &events)?;
        stats.events_inserted += inserted;
        stats.events_duplicate += events.len() as u64 - inserted;
        stats.metrics_inserted += insert_rows(tx, &metrics)?;
        if events.iter().any(|e| e.ts > ahead_ns) {
            tx.prepare_cached(EVENTS_ARRIVED)
                .and_then(|mut s| s.execute(params![now, ahead]))
                .map_err(StoreError::sql("note when future events arrived"))?;
        }
        if metrics.iter().any(|m| m.ts > ahead_ns) {
            tx.prepare_cached(METRICS_ARRIVED)
                .and_then(|mut s| s.execute(params![now, ahead]))
                .map_err(StoreError::sql("note when future samples arrived"))?;
        }
        for (container, name, ts, value) in latest {
            tx.prepare_cached(UPSERT_GAUGE)
                .and_then(|mut s| {
                    s.execute(params![&*container, name, format_ns(ts), value, ahead])
                })
                .map_err(StoreError::sql("update gauge"))?;
        }
        Ok(())
    }
}

/// The run id of `key` (the run was written before, in this batch or an earlier one).
fn run_id_of(
    tx: &rusqlite::Transaction<'_>,
    key: &RunKey,
    run_ids: &mut HashMap<RunKey, i64>,
    new_runs: &mut Vec<RunKey>,
) -> Result<i64, StoreError> {
    if let Some(id) = run_ids.get(key) {
        return Ok(*id);
    }
    let id: i64 = tx
        .query_row(
            SELECT_RUN_ID,
            params![&*key.container, key.stream.as_str(), key.ts, key.seq],
            |r| r.get(0),
        )
        .map_err(StoreError::sql("find run for epoch"))?;
    run_ids.insert(key.clone(), id);
    new_runs.push(key.clone());
    Ok(id)
}

/// Applies a [`crate::derive::RunPatch`] to a stored run.
fn patch_run(
    tx: &rusqlite::Transaction<'_>,
    run_id: i64,
    patch: &crate::derive::RunPatch,
) -> Result<(), StoreError> {
    use crate::derive::RunPatch;
    let done = match patch {
        RunPatch::ParamsFill(p) => tx
            .prepare_cached(PARAMS_FILL)
            .and_then(|mut s| s.execute(params![run_id, p])),
        RunPatch::ParamsOverride(p) => tx
            .prepare_cached(PARAMS_OVERRIDE)
            .and_then(|mut s| s.execute(params![run_id, p])),
        RunPatch::Folder(dir) => tx
            .prepare_cached(SET_RUN_FOLDER)
            .and_then(|mut s| s.execute(params![run_id, dir])),
        RunPatch::Mlflow { run_id: id, uri } => tx
            .prepare_cached(SET_RUN_MLFLOW)
            .and_then(|mut s| s.execute(params![run_id, id, uri])),
        RunPatch::ResultsRestarted => tx
            .prepare_cached(CLEAR_RESULTS_ROWS)
            .and_then(|mut s| s.execute(params![run_id])),
    };
    done.map(drop).map_err(StoreError::sql("update a run"))
}

/// Writes one op that is not a row of the logs.
fn write_op(
    tx: &rusqlite::Transaction<'_>,
    op: &Op,
    started_at: i64,
    run_ids: &mut HashMap<RunKey, i64>,
    stats: &mut WriteStats,
    new_runs: &mut Vec<RunKey>,
) -> Result<(), StoreError> {
    match op {
        // Inserted with the batch's other rows of the logs ([`Logs`]).
        Op::Event(_) | Op::Metric(_) => {}
        Op::Tick(now) => {
            tx.prepare_cached(HEARTBEAT)
                .and_then(|mut s| {
                    s.execute(params![
                        format_ns(*now),
                        std::process::id(),
                        format_ns(started_at)
                    ])
                })
                .map_err(StoreError::sql("write heartbeat"))?;
        }
        Op::Signal(..) => {}
        Op::State(container, state) => {
            tx.prepare_cached(UPSERT_DERIVE_STATE)
                .and_then(|mut s| {
                    s.execute(params![
                        &**container,
                        state,
                        format_ns(crate::time::now_ns())
                    ])
                })
                .map_err(StoreError::sql("save derivation state"))?;
        }
        // Run on its own by the writer's loop ([`Writer::prune`]).
        Op::Prune { .. } => {}
        Op::ForgetOrigin(origin) => {
            tx.prepare_cached("DELETE FROM cursors WHERE origin = ?1")
                .and_then(|mut s| s.execute([&**origin]))
                .map_err(StoreError::sql("forget cursors"))?;
        }
        Op::ContainerState(ts, name, run) => write_container_state(tx, *ts, name, *run)?,
        Op::Container(ts, name, role) => {
            tx.prepare_cached(UPSERT_CONTAINER)
                .and_then(|mut s| s.execute(params![&**name, role, format_ns(*ts)]))
                .map_err(StoreError::sql("write container"))?;
        }
        Op::Run(r) => {
            let id = upsert_run(tx, r)?;
            if run_ids.insert(r.key.clone(), id).is_none() {
                new_runs.push(r.key.clone());
            }
            stats.runs_written += 1;
        }
        Op::Epoch(key, e) => {
            let run_id = run_id_of(tx, key, run_ids, new_runs)?;
            upsert_epoch(tx, run_id, e)?;
            stats.epochs_written += 1;
        }
        Op::RunPatch(key, patch) => {
            let run_id = run_id_of(tx, key, run_ids, new_runs)?;
            patch_run(tx, run_id, patch)?;
        }
        Op::ResultsRow(key, row, epoch, columns, cells) => {
            let run_id = run_id_of(tx, key, run_ids, new_runs)?;
            let columns = serde_json::to_string(&**columns).unwrap_or_default();
            let cells = serde_json::to_string(cells).unwrap_or_default();
            tx.prepare_cached(UPSERT_RESULTS_ROW)
                .and_then(|mut s| s.execute(params![run_id, row, epoch, cells]))
                .and_then(|_| tx.prepare_cached(SET_RESULTS_COLUMNS))
                .and_then(|mut s| s.execute(params![run_id, columns]))
                .map_err(StoreError::sql("write a results.csv row"))?;
        }
        Op::Cursor(c) => {
            tx.prepare_cached(UPSERT_CURSOR)
                .and_then(|mut s| {
                    s.execute(params![
                        &*c.container,
                        c.stream.as_str(),
                        &*c.origin,
                        c.key.ts,
                        c.key.seq,
                        format_ns(crate::time::now_ns())
                    ])
                })
                .map_err(StoreError::sql("update cursor"))?;
            // The cursor moves past every line read, stored as a row or not (a progress bar's
            // frames, plain INFO text): the container's last line is the cursor's.
            if c.key.ts > 0 {
                let ahead = format_ns(crate::time::now_ns() + crate::time::FUTURE_SKEW_NS);
                tx.prepare_cached(CONTAINER_LAST_LINE)
                    .and_then(|mut s| s.execute(params![&*c.container, format_ns(c.key.ts), ahead]))
                    .map_err(StoreError::sql("write a container's last line"))?;
            }
        }
    }
    Ok(())
}

/// A container's state as the daemon reports it, in log order.
fn write_container_state(
    tx: &rusqlite::Transaction<'_>,
    ts: i64,
    name: &str,
    run: crate::derive::ContainerRun,
) -> Result<(), StoreError> {
    use crate::derive::ContainerRun;
    let at = format_ns(ts);
    match run {
        ContainerRun::Running => tx
            .prepare_cached(CONTAINER_RUNNING)
            .and_then(|mut s| s.execute(params![name, at])),
        ContainerRun::Exited(code) => tx
            .prepare_cached(CONTAINER_EXITED)
            .and_then(|mut s| s.execute(params![name, at, code])),
        ContainerRun::OomKilled => tx
            .prepare_cached(CONTAINER_OOM)
            .and_then(|mut s| s.execute(params![name, at])),
        ContainerRun::Removed => tx
            .prepare_cached(CONTAINER_REMOVED)
            .and_then(|mut s| s.execute(params![name, at]))
            .and_then(|_| {
                tx.prepare_cached(REMOVED_GAUGES)
                    .and_then(|mut s| s.execute([name]))
            }),
    }
    .map_err(StoreError::sql("write container state"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::derive::{EventRow, MetricRow};
    use crate::parse::Level;
    use std::sync::Arc;

    fn event(seq: u32, message: &str) -> Op {
        Op::Event(EventRow {
            ts: 1_774_708_200_000_000_000 + i64::from(seq / 3),
            container: Arc::from("c"),
            stream: "stdout",
            seq,
            key_ts: 1_774_708_200_000_000_000,
            level: Level::Info,
            kind: "log",
            message: message.into(),
            context: "{}".into(),
        })
    }

    fn sample(ts: i64, value: f64) -> Op {
        Op::Metric(MetricRow {
            ts,
            container: Arc::from("c"),
            name: "queue_offset",
            value,
        })
    }

    #[test]
    fn a_failed_store_counts_nothing_and_its_retry_stores_and_alerts_once() {
        use crate::derive::{EpochRow, RunKey, RunRow, RunStatus};
        use crate::event::Stream;
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::open_rw(&dir.path().join("t.db")).unwrap();
        let engine = crate::derive::alerts::Engine::new(Default::default(), true, "");
        let sink = AlertSink::new(engine, vec!["hook".into()], None);
        let mut w = Writer::new(conn).with_alerts(sink).unwrap();
        let key = RunKey {
            container: Arc::from("c"),
            stream: Stream::Stdout,
            ts: 1_774_708_200_000_000_000,
            seq: 0,
        };
        let run = RunRow {
            key: key.clone(),
            started_at: key.ts,
            ended_at: None,
            status: RunStatus::Running,
            epochs_total: Some(3),
            best_epoch_reported: None,
            save_dir: None,
            model: None,
            loss_names: Vec::new(),
            params: None,
            ultralytics_version: None,
            failure: None,
        };
        let epoch = EpochRow {
            epoch: 1,
            ended_at: key.ts,
            loss: Some(0.5),
            ..Default::default()
        };
        let mut oom = event(0, "torch.OutOfMemoryError: CUDA out of memory.");
        if let Op::Event(e) = &mut oom {
            // Fresh evidence: an alert from old logs is recorded without paging anyone.
            (e.kind, e.level, e.ts) = ("gpu_oom", Level::Error, crate::time::now_ns());
        }
        let mut batch = vec![Op::Run(run), Op::Epoch(key.clone(), epoch), oom];
        let big = "x".repeat(2000);
        batch.extend((1..400).map(|i| event(i, &big)));
        w.observe(&batch);
        // The disk fills up in the middle of the transaction (the run and its epoch are in).
        let pages: i64 = w
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        w.conn
            .execute_batch(&format!("PRAGMA max_page_count = {}", pages + 20))
            .unwrap();
        let err = w.store(&mut batch).unwrap_err();
        assert!(err.to_string().contains("full"), "{err}");
        assert_eq!(w.stats, WriteStats::default());
        assert!(w.run_ids.is_empty());
        assert!(w.store(&mut batch).is_err());
        w.conn
            .execute_batch("PRAGMA max_page_count = 1073741823")
            .unwrap();
        w.store(&mut batch).unwrap();
        let s = &w.stats;
        assert_eq!(
            (
                s.runs_written,
                s.epochs_written,
                s.events_inserted,
                s.batches
            ),
            (1, 1, 400, 1)
        );
        // The rules saw the batch once: one alert, one notification.
        assert_eq!(s.alerts_changed, 1);
        let count = |sql: &str| -> i64 { w.conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(
            count("SELECT count(*) FROM alert_log WHERE alertname = 'GpuOutOfMemory'"),
            1
        );
        assert_eq!(count("SELECT count(*) FROM outbox"), 1);
        assert_eq!(
            count("SELECT count(*) FROM epochs JOIN runs USING (run_id) WHERE epoch = 1"),
            1
        );
    }

    #[test]
    fn a_restart_keeps_the_time_the_queue_offset_last_moved() {
        use crate::derive::alerts::{Engine, Signal};
        const MIN: i64 = 60 * 1_000_000_000;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let q = |ts: i64, value: f64| {
            Op::Metric(MetricRow {
                ts,
                container: Arc::from("q"),
                name: "queue_offset",
                value,
            })
        };
        // The offset moved to 7 thirty minutes ago, then stood still.
        let t0 = crate::time::now_ns() - 40 * MIN;
        let mut w = Writer::new(crate::store::open_rw(&path).unwrap());
        let mut before = vec![q(t0, 5.0), q(t0 + 10 * MIN, 7.0), q(t0 + 20 * MIN, 7.0)];
        w.write(&mut before).unwrap();
        w.write(&mut [q(t0 + 30 * MIN, 7.0)]).unwrap();
        w.finish().unwrap();

        let engine = Engine::new(Default::default(), true, "");
        let sink = AlertSink::new(engine, Vec::new(), None);
        let conn = crate::store::open_rw(&path).unwrap();
        let mut w = Writer::new(conn).with_alerts(sink).unwrap();
        let running = Op::Signal(
            t0 + 40 * MIN,
            Signal::Container {
                name: Arc::from("q"),
                role: "queue".into(),
                running: true,
            },
        );
        // Stale an hour after it last moved (t0 + 10 min), not an hour after the restart.
        let mut batch = vec![running, Op::Tick(t0 + 69 * MIN)];
        w.write(&mut batch).unwrap();
        assert_eq!(w.stats.alerts_changed, 0);
        w.write(&mut [Op::Tick(t0 + 71 * MIN)]).unwrap();
        let started: String = w
            .conn
            .query_row(
                "SELECT started_at FROM alert_log WHERE alertname = 'QueueOffsetStale'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(started, crate::time::format_ns(t0 + 70 * MIN));
    }

    #[test]
    fn a_restart_continues_the_for_duration_of_a_hot_gpu() {
        use crate::derive::alerts::{Engine, FOR_GRACE_NS, Rules};
        const S: i64 = 1_000_000_000;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let rules = Rules {
            gpu_temperature_for: crate::time::Age::secs(120),
            ..Default::default()
        };
        let hot = |ts: i64, value: f64| {
            Op::Metric(MetricRow {
                ts,
                container: Arc::from("gpu0"),
                name: "gpu_temperature_c",
                value,
            })
        };
        let started = |path: &std::path::Path| -> Vec<String> {
            let conn = crate::store::open_rw(path).unwrap();
            let mut st = conn
                .prepare("SELECT started_at FROM alert_log WHERE alertname = 'GpuTemperatureHigh'")
                .unwrap();
            st.query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        // One life: over 90 °C for 90 s, then trainwatch stops (the alert is still pending).
        let now = crate::time::now_ns();
        let t0 = now - 90 * S;
        let life = |path: &std::path::Path, batch: &mut [Op]| {
            let sink = AlertSink::new(Engine::new(rules.clone(), true, ""), Vec::new(), None);
            let conn = crate::store::open_rw(path).unwrap();
            let mut w = Writer::new(conn).with_alerts(sink).unwrap();
            w.write(batch).unwrap();
            w.finish().unwrap();
        };
        life(
            &path,
            &mut [
                hot(t0 - 30 * S, 80.0),
                hot(t0, 95.0),
                hot(now - 30 * S, 96.0),
            ],
        );
        assert!(started(&path).is_empty());
        // The next life's first sample, two minutes after the first hot one, fires it, with
        // the time it began.
        life(&path, &mut [hot(t0 + 121 * S, 95.0)]);
        assert_eq!(started(&path), vec![crate::time::format_ns(t0)]);

        // After a stop longer than the grace period, the duration starts again. (The samples
        // of that earlier life are written as it wrote them, at their own time.)
        let path = dir.path().join("t2.db");
        let t0 = crate::time::now_ns() - FOR_GRACE_NS - 200 * S;
        let mut w = Writer::new(crate::store::open_rw(&path).unwrap());
        w.write(&mut [hot(t0, 95.0), hot(t0 + 100 * S, 95.0)])
            .unwrap();
        w.finish().unwrap();
        let now = crate::time::now_ns();
        life(&path, &mut [hot(now, 95.0)]);
        assert!(started(&path).is_empty());
        life(&path, &mut [hot(now + 121 * S, 95.0)]);
        assert_eq!(started(&path), vec![crate::time::format_ns(now)]);
    }

    #[test]
    fn many_rows_per_statement_keep_order_counts_and_dedup() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::open_rw(&dir.path().join("t.db")).unwrap();
        let mut w = Writer::new(conn);
        // 2 whole chunks and a rest; seq 5 twice within the batch.
        let n = 2 * CHUNK as u32 + 5;
        let mut batch: Vec<Op> = (0..n).map(|i| event(i, &format!("line {i}"))).collect();
        batch.insert(10, event(5, "again"));
        // Two samples at one instant: the later value wins, in a whole chunk and in the rest.
        batch.extend((0..CHUNK as i64 + 3).map(|i| sample(i, i as f64)));
        batch.insert(batch.len() - 10, sample(1, 42.0));
        batch.push(sample(0, 99.0));
        w.write(&mut batch).unwrap();
        assert_eq!(w.stats.events_inserted, u64::from(n));
        assert_eq!(w.stats.events_duplicate, 1);
        // The same batch again adds nothing.
        w.write(&mut batch).unwrap();
        assert_eq!(w.stats.events_inserted, u64::from(n));
        assert_eq!(w.stats.events_duplicate, u64::from(n) + 2);
        let rows: Vec<(u32, String, String)> = w
            .conn
            .prepare("SELECT seq, message, ts FROM event_log ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows.len(), n as usize);
        assert!(rows.iter().enumerate().all(|(i, r)| r.0 == i as u32));
        assert_eq!(rows[5].1, "line 5");
        assert_eq!(rows[n as usize - 1].2, "2026-03-28T14:30:00.000000012Z");
        let (count, first): (i64, f64) = w
            .conn
            .query_row(
                "SELECT count(*), (SELECT value FROM metric_log WHERE ts = ?1) FROM metric_log",
                [crate::time::format_ns(0)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((count, first), (CHUNK as i64 + 3, 99.0));
        let value = |w: &Writer, ts: i64| -> f64 {
            w.conn
                .query_row(
                    "SELECT value FROM metric_log WHERE ts = ?1",
                    [crate::time::format_ns(ts)],
                    |r| r.get(0),
                )
                .unwrap()
        };
        assert_eq!(value(&w, 1), 42.0);
        assert_eq!(value(&w, 2), 2.0);
        // A whole chunk of samples at instants already stored: every value is replaced.
        let mut again: Vec<Op> = (0..CHUNK as i64)
            .map(|i| sample(i, 100.0 + i as f64))
            .collect();
        w.write(&mut again).unwrap();
        let got = (value(&w, 0), value(&w, 1), value(&w, 15));
        assert_eq!(got, (100.0, 101.0, 115.0));
        assert_eq!(value(&w, CHUNK as i64), CHUNK as f64);
    }
}
