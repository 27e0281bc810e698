-- What a restart after a crash continues from, committed with every batch.

-- The alert rule engine's state, committed with every batch by each kind of engine (`watch`,
-- `replay`): a restart after a crash continues from exactly what was committed.
CREATE TABLE alert_engine (
    origin   TEXT PRIMARY KEY,
    state    TEXT NOT NULL,
    saved_at TEXT NOT NULL
) WITHOUT ROWID;

-- Each container's derivation state (the current run, an open epoch header, queue samples of
-- the current second), committed with its cursor: a restart continues exactly.
CREATE TABLE derive_state (
    container TEXT PRIMARY KEY,
    state     TEXT NOT NULL,
    saved_at  TEXT NOT NULL
) WITHOUT ROWID;
