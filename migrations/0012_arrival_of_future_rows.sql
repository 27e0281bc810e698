-- 0012: rows stamped in the future (a host clock set ahead, then corrected) are pruned by when
-- they arrived, not by their own time. `arrived_at` (ns, the wall clock at commit) is set only
-- on rows stamped more than the allowed skew (5 min) ahead of it; NULL everywhere else (no
-- cost to the other rows, and no change to the views).
ALTER TABLE event_log ADD COLUMN arrived_at INTEGER;
ALTER TABLE metric_log ADD COLUMN arrived_at INTEGER;
