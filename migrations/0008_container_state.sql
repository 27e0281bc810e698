-- 0008: each followed container's state as the daemon reports it (discovery, `start`, `die`,
-- `oom`), and when its log last printed a line: the per-container table of `status` and the
-- page.
ALTER TABLE containers ADD COLUMN state TEXT;          -- 'running' or 'exited'
ALTER TABLE containers ADD COLUMN exit_code INTEGER;   -- of the last exit
ALTER TABLE containers ADD COLUMN oom_killed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE containers ADD COLUMN state_at TEXT;       -- when it took that state
ALTER TABLE containers ADD COLUMN last_line_at TEXT;   -- the log time of its newest line
