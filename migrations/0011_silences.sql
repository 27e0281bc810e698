-- 0011: acknowledgements and silences (`trainwatch alerts ack|silence|silences|expire`).
--
-- A silence is a set of label matchers (JSON array of {"name", "op", "value"}, op one of =,
-- !=, =~, !~) and a time range; an acknowledgement (kind 'ack') is a silence bound to one alert
-- (alert_id), which lasts until that alert resolves when it has no end. While one covers an
-- alert, the alert sends no notification and does not make `health` critical; it stays in
-- `alerts`, marked. Only the commands write this table; the ingestor reads it.
CREATE TABLE silences (
    id          INTEGER PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('ack', 'silence')),
    matchers    TEXT NOT NULL,
    alert_id    INTEGER REFERENCES alert_log (id) ON DELETE CASCADE,
    starts_at   TEXT NOT NULL,
    ends_at     TEXT,
    created_by  TEXT NOT NULL,
    comment     TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL,
    expired_at  TEXT
);
CREATE INDEX silences_in_force ON silences (ends_at) WHERE expired_at IS NULL;
