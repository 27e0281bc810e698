#!/usr/bin/env bash
# MLflow export benchmark: `trainwatch export mlflow` of a stored history (RUNS runs of EPOCHS
# epochs, 10 metric columns and 60 params each) to a real `mlflow server` (SQLite backend) on
# 127.0.0.1: throughput (metric points/s, requests/s), peak RSS, and the second, idempotent
# export (nothing to send) of the same history.
#
#   bench/mlflow.sh                  # 200 runs x 300 epochs = 600 000 points
#   RUNS=50 EPOCHS=100 bench/mlflow.sh
#
# Peak memory must not depend on the number of runs (one run is held at a time): run with two
# sizes to see it. The server's own speed bounds the figure: it is printed beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-200}
EPOCHS=${EPOCHS:-300}
DIR=$(mktemp -d /tmp/trainwatch-mlflow-bench.XXXXXX)
SERVER_PGID=
trap '[ -n "$SERVER_PGID" ] && kill -9 -- -"$SERVER_PGID" 2>/dev/null;  rm -rf "$DIR"' EXIT
python3 -c "import mlflow" 2>/dev/null || { echo "mlflow is not installed: pip install mlflow" >&2; exit 1; }
cargo build --release --locked -q
BIN=target/release/trainwatch

# An empty store of the current schema, then the synthetic history in plain SQL.
: > "$DIR/empty.log"
"$BIN" --db "$DIR/tw.db" replay --container none "$DIR/empty.log" >/dev/null 2>&1
python3 - "$DIR/tw.db" "$RUNS" "$EPOCHS" <<'PY'
import json, random, sqlite3, sys
db, runs, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = sqlite3.connect(db)
rnd = random.Random(42)
from datetime import datetime, timezone
ts = lambda s: datetime.fromtimestamp(1767225600 + s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000000000Z")
params = {f"p{i}": str(rnd.random()) for i in range(60)}
t = 0
for r in range(1, runs + 1):
    start = t
    c.execute("""INSERT INTO runs (run_id, container, start_stream, start_key_ts, start_seq,
        started_at, ended_at, status, epochs_total, save_dir, model, loss_names, params,
        ultralytics_version) VALUES (?, 'gpu', 'stdout', ?, 0, ?, ?, 'completed', ?, ?, 'yolo11n.pt',
        '["box_loss","cls_loss","dfl_loss"]', ?, '8.3.40')""",
        (r, start * 10**9, ts(start), ts(start + epochs * 60 + 30), epochs, f"/runs/detect/train{r}",
         json.dumps(params)))
    for e in range(1, epochs + 1):
        l = [round(rnd.uniform(0.5, 2), 4) for _ in range(3)]
        m = [round(rnd.random(), 5) for _ in range(4)]
        c.execute("""INSERT INTO epochs (run_id, epoch, epochs_total, ended_at, box_loss, cls_loss,
            dfl_loss, loss, losses, precision, recall, map50, map50_95, gpu_mem_gb, train_time_s)
            VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
            (r, e, epochs, ts(start + e * 60), *l, sum(l),
             json.dumps(dict(zip(["box_loss", "cls_loss", "dfl_loss"], l))), *m, 2.1, e * 60.0))
    t += epochs * 60 + 3600
c.commit()
PY

PORT=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
setsid python3 -m mlflow server --workers 1 --host 127.0.0.1 --port "$PORT" \
  --backend-store-uri "sqlite:///$DIR/mlflow.db" --default-artifact-root "$DIR/art" \
  >"$DIR/server.log" 2>&1 &
SERVER_PGID=$!
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.5; done

run() { # label
  local out
  out=$( { /usr/bin/time -f "TIME %e RSS %M" "$BIN" --db "$DIR/tw.db" export mlflow \
      --tracking-uri "http://127.0.0.1:$PORT" --experiment bench; } 2>&1 )
  python3 - "$1" "$out" <<'PY'
import re, sys
label, out = sys.argv[1], sys.argv[2]
t = float(re.search(r"TIME ([0-9.]+)", out).group(1)); rss = int(re.search(r"RSS (\d+)", out).group(1))
pts = int(re.search(r"(\d+) metric points", out).group(1)); req = int(re.search(r"in (\d+) requests", out).group(1))
print(f"{label:<8} {pts:>8} points {req:>6} requests {t:7.2f} s  {pts/t:9.0f} points/s {req/t:7.0f} req/s  peak RSS {rss/1024:6.1f} MiB")
PY
}
echo "history: $RUNS runs x $EPOCHS epochs; mlflow $(python3 -c 'import mlflow; print(mlflow.__version__)'), $(nproc) cores"
run first
run again
