-- 0002: alerts with their lifecycle, the notification outbox, the latest gauges, and the
-- ingestor's heartbeat.
--
-- View `alerts` is public (its column names are a contract); the base tables are internal.

CREATE TABLE alert_log (
    id               INTEGER PRIMARY KEY,
    fingerprint      TEXT NOT NULL,
    alertname        TEXT NOT NULL,
    severity         TEXT NOT NULL CHECK (severity IN ('critical', 'high', 'medium', 'low')),
    status           TEXT NOT NULL CHECK (status IN ('firing', 'resolved')),
    labels           TEXT NOT NULL,
    summary          TEXT NOT NULL,
    started_at       TEXT NOT NULL,
    resolved_at      TEXT,
    last_notified_at TEXT,
    -- 'watch' (notified) or 'replay' (recorded from archived logs, never notified).
    origin           TEXT NOT NULL DEFAULT 'watch',
    -- Natural key: replaying the same logs records the same alert once.
    UNIQUE (fingerprint, started_at)
);
-- At most one firing alert per fingerprint.
CREATE UNIQUE INDEX alert_log_one_firing ON alert_log (fingerprint) WHERE status = 'firing';
CREATE INDEX alert_log_by_start ON alert_log (started_at);

-- Notifications to deliver, written in the same transaction as the alert change they tell
-- of; a delivery task sends them in order per receiver and retries with backoff.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    receiver        TEXT NOT NULL,
    alert_id        INTEGER NOT NULL REFERENCES alert_log (id) ON DELETE CASCADE,
    event           TEXT NOT NULL CHECK (event IN ('firing', 'repeat', 'resolved')),
    created_at      TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error      TEXT,
    delivered_at    TEXT,
    -- Set when the receiver refused it for good (HTTP 4xx) or was removed from the config.
    abandoned_at    TEXT,
    UNIQUE (receiver, alert_id, event, created_at)
);
CREATE INDEX outbox_pending ON outbox (receiver, id)
    WHERE delivered_at IS NULL AND abandoned_at IS NULL;

-- The latest value of every metric, so status and health never scan the samples.
CREATE TABLE gauges (
    container TEXT NOT NULL,
    name      TEXT NOT NULL,
    ts        TEXT NOT NULL,
    value     REAL NOT NULL,
    PRIMARY KEY (container, name)
) WITHOUT ROWID;

-- One row: the running ingestor's last sign of life (health checks read it).
CREATE TABLE heartbeat (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    at         TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    started_at TEXT NOT NULL
);

CREATE VIEW alerts AS
SELECT id, fingerprint, alertname, severity, status, labels, summary, started_at, resolved_at,
       last_notified_at, origin
FROM alert_log;
