#!/usr/bin/env bash
# Replay benchmark: throughput (MB/s, lines/s) and peak RSS of `trainwatch replay` on a Docker
# json-file log in the shape of a training server's logs, side by side in the same run with the
# plain Python json+regex+sqlite3 replay a team would write instead (../shared/bench).
#
#   bench/replay.sh                 # 1 GiB log (generated once, cached in $BENCH_DIR)
#   SIZE_MB=256 bench/replay.sh     # smaller
#
# Peak memory must not depend on the input size: run with two sizes to see it.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-1024}
DIR=${BENCH_DIR:-/tmp/trainwatch-bench}
SHARED=${SHARED:-../shared/bench}
mkdir -p "$DIR"
LOG=$DIR/gen-${SIZE_MB}mb-json.log
if [ ! -s "$LOG" ]; then
  echo "generating $LOG ..." >&2
  python3 "$SHARED/gen_docker_log.py" -o "$LOG" --size-mb "$SIZE_MB" --seed 42
fi
cargo build --release --locked -q
BYTES=$(stat -c %s "$LOG")
LINES=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['docker_lines'])" "$LOG.truth.json")

measure() { # name, command...
  local name=$1; shift
  local out
  out=$( { /usr/bin/time -f "TIME %e RSS %M" "$@" >/dev/null 2>"$DIR/$name.err"; } 2>&1; tail -n 1 "$DIR/$name.err")
  local t rss
  t=$(grep -o 'TIME [0-9.]*' <<<"$out" | cut -d' ' -f2)
  rss=$(grep -o 'RSS [0-9]*' <<<"$out" | cut -d' ' -f2)
  python3 - "$name" "$t" "$rss" "$BYTES" "$LINES" <<'PY'
import sys
name, t, rss, b, lines = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
print(f"{name:<22} {b/1e6/t:8.1f} MB/s {lines/t/1e3:9.0f}k lines/s {t:7.2f} s   peak RSS {rss/1024:6.1f} MiB")
PY
}

echo "input: $LOG ($((BYTES / 1000000)) MB, $LINES json-file lines), $(nproc) cores"
rm -f "$DIR"/tw.db*
measure "trainwatch replay" ./target/release/trainwatch --db "$DIR/tw.db" replay --container bench "$LOG"
rm -f "$DIR"/py.db*
measure "py_baseline.py" python3 "$SHARED/py_baseline.py" "$LOG" "$DIR/py.db"
rm -f "$DIR"/tw.db* "$DIR"/py.db*
