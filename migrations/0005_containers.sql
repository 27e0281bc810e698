-- The followed containers and their roles, as live follow finds them (discovery and `start`
-- events). The status groups Docker stats by role with it.
CREATE TABLE containers (
    container TEXT PRIMARY KEY,
    role      TEXT NOT NULL,
    seen_at   TEXT NOT NULL
) WITHOUT ROWID;
