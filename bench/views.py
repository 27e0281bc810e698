#!/usr/bin/env python3
"""Views benchmark: how fast `history`, `status`, `status --html`, `health` and `alerts`
answer on a 30-day database holding 10 million events (the retention window of a busy
training server), i.e. whether every view answers from indexes.

    python3 bench/views.py                   # 10 M events (database built once, cached)
    EVENTS=1000000 python3 bench/views.py    # smaller

The database is built with trainwatch's own schema (a replay of a real capture creates it),
then filled with plain SQL: 10 M events over 30 days across 3 containers, 1 sample/s of the
queue counters for 30 days (2.6 M), GPU and disk samples every 30 s, 300 training runs of 100
epochs, 2 000 alerts. Each command runs 5 times; the median and the worst are printed.
"""
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVENTS = int(os.environ.get("EVENTS", "10000000"))
DIR = os.environ.get("BENCH_DIR", "/tmp/trainwatch-bench")
DB = os.path.join(DIR, f"views-{EVENTS}.db")
BIN = os.path.join(ROOT, "target", "release", "trainwatch")
NOW = datetime.now(timezone.utc).replace(microsecond=0)
START = NOW - timedelta(days=30)


def ts(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def build():
    os.makedirs(DIR, exist_ok=True)
    tmp = DB + ".building"
    for p in (tmp, tmp + "-wal", tmp + "-shm"):
        if os.path.exists(p):
            os.remove(p)
    subprocess.run(
        [BIN, "--db", tmp, "replay", "--container", "yolo",
         os.path.join(ROOT, "fixtures/ultralytics/normal-json.log")],
        check=True, stdout=subprocess.DEVNULL)
    c = sqlite3.connect(tmp)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=OFF")
    t0 = time.time()
    span = 30 * 86400
    start_ns = int(START.timestamp()) * 10**9
    # Events: evenly over 30 days, a realistic mix of kinds.
    c.execute(
        """
        INSERT INTO event_log (ts, container, stream, key_ts, seq, level, kind, message, context)
        WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1 - 1)
        SELECT strftime('%Y-%m-%dT%H:%M:%f', (?2 + i * ?3 / ?1) / 1000000000.0, 'unixepoch')
                 || '000000Z',
               CASE i % 3 WHEN 0 THEN 'yolo' WHEN 1 THEN 'annotation-queue' ELSE 'other' END,
               'stdout', ?2 + i * (?3 * 1000000000 / ?1), 0,
               CASE WHEN i % 97 = 0 THEN 'ERROR' ELSE 'INFO' END,
               CASE i % 10 WHEN 0 THEN 'epoch_completed' WHEN 1 THEN 'validation'
                    WHEN 2 THEN 'warning' WHEN 3 THEN 'checkpoint_saved'
                    ELSE 'annotation_processed' END,
               'Processed annotation ' || i || ' for dataset batch ' || (i / 1000),
               '{"i":' || i || '}'
        FROM n""", (EVENTS, start_ns, span))
    print(f"  {EVENTS} events in {time.time() - t0:.0f}s", file=sys.stderr)
    # Queue counters: one sample per second for 30 days.
    for name in ("queue_messages_processed", "queue_offset"):
        c.execute(
            """
            INSERT INTO metric_log (container, name, ts, value)
            WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?2 - 1)
            SELECT 'annotation-queue', ?3,
                   strftime('%Y-%m-%dT%H:%M:%S', ?1 + i, 'unixepoch') || '.000000000Z', i
            FROM n""", (int(START.timestamp()), span, name))
    # GPU and disk: every 30 s.
    for cont, name in (("gpu0", "gpu_temperature_c"), ("gpu0", "gpu_utilization_pct"),
                       ("host", "disk_usage_azaion_pct")):
        c.execute(
            """
            INSERT INTO metric_log (container, name, ts, value)
            WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?2 - 1)
            SELECT ?3, ?4, strftime('%Y-%m-%dT%H:%M:%S', ?1 + i * 30, 'unixepoch')
                   || '.000000000Z', 50 + (i % 40)
            FROM n""", (int(START.timestamp()), span // 30, cont, name))
    for cont, name, v in (("gpu0", "gpu_temperature_c", 71), ("gpu0", "gpu_utilization_pct", 97),
                          ("host", "disk_usage_azaion_pct", 71),
                          ("annotation-queue", "queue_messages_processed", span),
                          ("annotation-queue", "queue_offset", span)):
        c.execute("INSERT OR REPLACE INTO gauges (container, name, ts, value) VALUES (?,?,?,?)",
                  (cont, name, ts(NOW), v))
    # 300 runs of 100 epochs.
    rnd = random.Random(7)
    for r in range(300):
        started = START + timedelta(hours=2.4 * r)
        cur = c.execute(
            """INSERT INTO runs (container, start_stream, start_key_ts, start_seq, started_at,
                   ended_at, status, epochs_total, save_dir, loss_names)
               VALUES ('yolo', 'stdout', ?, 0, ?, ?, ?, 100, ?, '["box_loss","cls_loss","dfl_loss"]')""",
            (int(started.timestamp()) * 10**9 + r, ts(started),
             ts(started + timedelta(hours=2.3)) if r < 299 else None,
             "completed" if r < 299 else "running", f"runs/detect/train{r}"))
        rid = cur.lastrowid
        rows = []
        for e in range(1, 101):
            loss = 3.0 / (1 + e / 10) + rnd.random() * 0.05
            rows.append((rid, e, 100, ts(started + timedelta(minutes=1.3 * e)), loss, loss / 2,
                         loss / 3, loss * 11 / 6,
                         '{"box_loss":%f,"cls_loss":%f,"dfl_loss":%f}' % (loss, loss / 2, loss / 3),
                         0.5, 0.4, e / 150, e / 250, 3.1))
        c.executemany(
            """INSERT INTO epochs (run_id, epoch, epochs_total, ended_at, box_loss, cls_loss,
                   dfl_loss, loss, losses, precision, recall, map50, map50_95, gpu_mem_gb)
               VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)""", rows)
    # 2 000 resolved alerts and 2 firing.
    for i in range(2000):
        t = START + timedelta(minutes=21 * i)
        c.execute(
            """INSERT INTO alert_log (fingerprint, alertname, severity, status, labels, summary,
                   started_at, resolved_at) VALUES (?, 'DiskUsageHigh', 'medium', 'resolved',
                   '{"alertname":"DiskUsageHigh","severity":"medium","mount":"/azaion"}', 'disk', ?, ?)""",
            (f"{i:016x}", ts(t), ts(t + timedelta(minutes=5))))
    c.execute(
        """INSERT INTO alert_log (fingerprint, alertname, severity, status, labels, summary, started_at)
           VALUES ('f1', 'GpuTemperatureHigh', 'critical', 'firing',
                   '{"alertname":"GpuTemperatureHigh","severity":"critical","gpu":"0"}', 'GPU 0 at 92 °C', ?)""",
        (ts(NOW - timedelta(minutes=3)),))
    c.execute("INSERT OR REPLACE INTO heartbeat (id, at, pid, started_at) VALUES (1, ?, 1, ?)",
              (ts(NOW), ts(START)))
    c.commit()
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.execute("ANALYZE")
    c.close()
    os.rename(tmp, DB)
    print(f"  built {DB} ({os.path.getsize(DB) / 1e9:.2f} GB) in {time.time() - t0:.0f}s",
          file=sys.stderr)


def main():
    subprocess.run(["cargo", "build", "--release", "--locked", "-q"], cwd=ROOT, check=True)
    if not os.path.exists(DB):
        print(f"building {DB} ...", file=sys.stderr)
        build()
    c = sqlite3.connect(DB)
    n = c.execute("SELECT count(*) FROM event_log").fetchone()[0]
    last_run = c.execute("SELECT max(run_id) FROM runs").fetchone()[0]
    c.close()
    html = os.path.join(DIR, "views.html")
    cmds = [
        ("history", ["history"]),
        ("history --run (csv)", ["history", "--run", str(last_run), "--format", "csv"]),
        ("status", ["status"]),
        ("status --html", ["status", "--html", html]),
        ("health", ["health"]),
        ("health --format json", ["health", "--format", "json"]),
        ("alerts --all", ["alerts", "--all"]),
    ]
    print(f"database: {n:,} events, {os.path.getsize(DB) / 1e9:.2f} GB, 30 days")
    print(f"{'command':<24} {'median ms':>10} {'worst ms':>10}")
    for name, args in cmds:
        times = []
        for _ in range(5):
            t = time.perf_counter()
            subprocess.run([BIN, "--db", DB] + args, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            times.append((time.perf_counter() - t) * 1000)
        print(f"{name:<24} {statistics.median(times):>10.1f} {max(times):>10.1f}")


if __name__ == "__main__":
    main()
