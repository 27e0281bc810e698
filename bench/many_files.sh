#!/usr/bin/env bash
# Many small archives (one container each, as months of CI-like churn leave them): replay time
# per file and peak RSS at two counts. Both must stay flat as the count grows (linear time,
# memory independent of the number of containers).
#
#   bench/many_files.sh              # 1 000 and 10 000 files
#   COUNTS="500 5000" bench/many_files.sh
set -euo pipefail
cd "$(dirname "$0")/.."
COUNTS=${COUNTS:-"1000 10000"}
DIR=${BENCH_DIR:-/tmp/trainwatch-bench}/many
mkdir -p "$DIR"
cargo build --release --locked -q
for n in $COUNTS; do
  src=$DIR/files-$n
  if [ ! -d "$src" ]; then
    python3 - "$src" "$n" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(d)
for i in range(n):
    with open(f"{d}/c{i:06d}.log", "w") as f:
        for j in range(5):
            f.write('{"timestamp":"2026-12-01T10:%02d:00Z","level":"INFO","service":"q",'
                    '"message":"Processed 1 messages","context":{"offset":%d}}\n' % (j, j))
        f.write("ERROR:q:Failed to process message x\n")
PY
  fi
  rm -f "$DIR/t.db" "$DIR/t.db-wal" "$DIR/t.db-shm" "$DIR/t.db.lock"
  out=$( { /usr/bin/time -f "TIME %e CPU %U %S RSS %M" target/release/trainwatch --db "$DIR/t.db" replay "$src" >/dev/null 2>"$DIR/err"; } 2>&1; tail -n 1 "$DIR/err")
  read -r _ wall _ user sys _ rss <<<"$(grep -o 'TIME.*' <<<"$out")"
  python3 - "$n" "$wall" "$user" "$sys" "$rss" <<'PY'
import sys
n, wall, user, sys_, rss = int(sys.argv[1]), *map(float, sys.argv[2:])
cpu = user + sys_
print(f"{n:>6} files: wall {wall:.2f} s, CPU {cpu:.2f} s ({cpu / n * 1e3:.3f} ms per file), peak RSS {rss / 1024:.1f} MiB")
PY
done
