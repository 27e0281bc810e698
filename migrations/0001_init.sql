-- 0001: the initial schema.
--
-- Base tables are internal; the views at the end (training_runs, training_epochs, events,
-- metric_samples) are the public, documented interface: their column names are a contract.
-- Times are TEXT in the fixed-width form 2026-03-28T14:30:00.123456789Z (UTC), so text order is
-- time order, indexes serve range queries, and plain SQL reads them without conversion.

CREATE TABLE runs (
    run_id              INTEGER PRIMARY KEY,
    container           TEXT NOT NULL,
    -- Natural key: the position of the line that started the run, so a replay of the same log
    -- updates this row instead of adding a run.
    start_stream        TEXT NOT NULL,
    start_key_ts        INTEGER NOT NULL,
    start_seq           INTEGER NOT NULL,
    started_at          TEXT NOT NULL,
    ended_at            TEXT,
    status              TEXT NOT NULL
        CHECK (status IN ('running', 'completed', 'early_stopped', 'failed', 'interrupted')),
    epochs_total        INTEGER,
    best_epoch_reported INTEGER,
    save_dir            TEXT,
    model               TEXT,
    loss_names          TEXT NOT NULL DEFAULT '[]',
    UNIQUE (container, start_stream, start_key_ts, start_seq)
);
CREATE INDEX runs_by_container_started ON runs (container, started_at);

CREATE TABLE epochs (
    run_id       INTEGER NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    epoch        INTEGER NOT NULL,
    epochs_total INTEGER,
    ended_at     TEXT NOT NULL,
    box_loss     REAL,
    cls_loss     REAL,
    dfl_loss     REAL,
    loss         REAL,
    -- Every loss column by name; non-finite values are kept as the strings "nan"/"inf"/"-inf".
    losses       TEXT,
    non_finite   INTEGER NOT NULL DEFAULT 0,
    precision    REAL,
    recall       REAL,
    map50        REAL,
    map50_95     REAL,
    gpu_mem_gb   REAL,
    PRIMARY KEY (run_id, epoch)
) WITHOUT ROWID;

CREATE TABLE event_log (
    id        INTEGER PRIMARY KEY,
    ts        TEXT NOT NULL,
    container TEXT NOT NULL,
    stream    TEXT NOT NULL,
    -- Natural key part: the source position (key time in ns and order within it).
    key_ts    INTEGER NOT NULL,
    seq       INTEGER NOT NULL,
    level     TEXT NOT NULL,
    kind      TEXT NOT NULL,
    message   TEXT NOT NULL,
    context   TEXT NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX event_log_natural_key ON event_log (key_ts, seq, container, stream, kind);
CREATE INDEX event_log_for_retention_and_ranges ON event_log (ts);
CREATE INDEX event_log_by_kind_for_alerts ON event_log (kind, ts);

CREATE TABLE metric_log (
    container TEXT NOT NULL,
    name      TEXT NOT NULL,
    ts        TEXT NOT NULL,
    value     REAL NOT NULL,
    PRIMARY KEY (container, name, ts)
) WITHOUT ROWID;
CREATE INDEX metric_log_for_retention ON metric_log (ts);

-- How far each source has been stored, committed in the same transaction as its rows.
-- origin is '' for Docker streams and a content fingerprint for plain text files.
CREATE TABLE cursors (
    container  TEXT NOT NULL,
    stream     TEXT NOT NULL,
    origin     TEXT NOT NULL,
    key_ts     INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (container, stream, origin)
) WITHOUT ROWID;

CREATE VIEW training_runs AS
SELECT
    r.run_id,
    r.container,
    r.started_at,
    r.ended_at,
    r.status,
    r.epochs_total,
    COALESCE((SELECT max(e.epoch) FROM epochs e WHERE e.run_id = r.run_id), 0) AS epochs_done,
    COALESCE(r.best_epoch_reported,
             (SELECT e.epoch FROM epochs e WHERE e.run_id = r.run_id AND e.map50_95 IS NOT NULL
              ORDER BY e.map50_95 DESC, e.epoch LIMIT 1)) AS best_epoch,
    (SELECT e.map50_95 FROM epochs e WHERE e.run_id = r.run_id AND e.epoch =
        COALESCE(r.best_epoch_reported,
                 (SELECT e2.epoch FROM epochs e2 WHERE e2.run_id = r.run_id AND e2.map50_95 IS NOT NULL
                  ORDER BY e2.map50_95 DESC, e2.epoch LIMIT 1))) AS best_map50_95,
    r.save_dir,
    r.model,
    r.loss_names
FROM runs r;

CREATE VIEW training_epochs AS
SELECT
    e.run_id, r.container, e.epoch, e.epochs_total, e.ended_at,
    e.box_loss, e.cls_loss, e.dfl_loss, e.loss, e.losses,
    e.precision, e.recall, e.map50, e.map50_95, e.gpu_mem_gb, e.non_finite
FROM epochs e JOIN runs r USING (run_id);

CREATE VIEW events AS
SELECT id, ts, container, stream, level, kind, message, context, key_ts, seq FROM event_log;

CREATE VIEW metric_samples AS
SELECT ts, container, name, value FROM metric_log;
