#!/usr/bin/env bash
# What Docker stats cost the daemon: N idle containers sampled for SECS seconds
#   (a) as one long-lived stats stream each (`docker stats` does this; a sample per second),
#   (b) as trainwatch samples them: one one-shot request per container per tick (TICK s).
# Prints dockerd's CPU seconds for each and the latency of one one-shot and one two-reading
# request. Needs the daemon, curl and the busybox test image (cargo test builds it).
#   bench/stats.sh [N=10] [SECS=60] [TICK=1]
set -euo pipefail
n="${1:-10}"; secs="${2:-60}"; tick="${3:-1}"
sock=/var/run/docker.sock
image=trainwatch-test-busybox:1
pid="$(pidof dockerd)"
hz="$(getconf CLK_TCK)"
cpu() { awk -v hz="$hz" '{print ($14 + $15) / hz}' "/proc/$pid/stat"; }
ids=()
cleanup() { docker rm -f "${ids[@]}" >/dev/null 2>&1 || true; }
trap cleanup EXIT
for i in $(seq "$n"); do
  ids+=("$(docker run -d --label tw.bench=stats "$image" /busybox sleep 3600)")
done
sleep 2

t0="$(cpu)"
pids=()
for id in "${ids[@]}"; do
  curl -s --unix-socket "$sock" "http://d/containers/$id/stats?stream=true" >/dev/null &
  pids+=($!)
done
sleep "$secs"
kill "${pids[@]}" 2>/dev/null || true
wait 2>/dev/null || true
t1="$(cpu)"

end=$((SECONDS + secs))
while [ "$SECONDS" -lt "$end" ]; do
  for id in "${ids[@]}"; do
    curl -s --unix-socket "$sock" "http://d/containers/$id/stats?stream=false&one-shot=true" >/dev/null &
  done
  wait
  sleep "$tick"
done
t2="$(cpu)"

one="$(curl -s -o /dev/null -w '%{time_total}' --unix-socket "$sock" "http://d/containers/${ids[0]}/stats?stream=false&one-shot=true")"
two="$(curl -s -o /dev/null -w '%{time_total}' --unix-socket "$sock" "http://d/containers/${ids[0]}/stats?stream=false")"
awk -v n="$n" -v s="$secs" -v tick="$tick" -v a="$(echo "$t1 - $t0" | bc)" -v b="$(echo "$t2 - $t1" | bc)" \
    -v one="$one" -v two="$two" 'BEGIN {
  printf "containers %d, %d s each\n", n, s
  printf "streams (one per container):        dockerd %.2f CPU s (%.2f %% of a core)\n", a, a / s * 100
  printf "one-shot every %s s (trainwatch):   dockerd %.2f CPU s (%.2f %% of a core)\n", tick, b, b / s * 100
  printf "one one-shot request %.1f ms; with two readings %.0f ms\n", one * 1000, two * 1000
}'
