#!/usr/bin/env python3
"""Live-follow benchmark for `trainwatch watch` against the local Docker daemon.

Throughput: N containers (busybox from a scratch image) print L lines each as fast as they can
(`yes | head`); trainwatch follows them into a fresh database. Reported: lines/s from the first
container start until every line is committed, next to `docker logs -f <id> > /dev/null` run on
the same containers in the same run (started with them, so it competes for the same cores), and
next to `docker logs <id> > /dev/null` after the fact (the daemon alone, no contention).

Latency: one container prints R lines/s (bursts every 10 ms); the database is polled every
10 ms and each poll's lag is now - the newest committed line's Docker timestamp. p50/p99 of the
lag are reported (the polling adds up to 10 ms).

Peak RSS of trainwatch (VmHWM) is read from /proc at the end of each run.

Usage: bench/watch.py [--lines 200000] [--rate 10000] [--seconds 10] [--repeat 5]
"""
import argparse
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("TRAINWATCH_BIN") or os.path.join(ROOT, "target", "release", "trainwatch")
IMAGE = "trainwatch-test-busybox:1"


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout.strip()


def ensure_image():
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode == 0:
        return
    bb = shutil.which("busybox") or "/bin/busybox"
    with tempfile.TemporaryDirectory() as d:
        shutil.copy(bb, os.path.join(d, "busybox"))
        tar = subprocess.run(["tar", "-C", d, "-cf", "-", "busybox"], check=True, capture_output=True).stdout
        subprocess.run(["docker", "import", "-", IMAGE], input=tar, check=True, capture_output=True)


class Watch:
    def __init__(self, label, workdir):
        self.db = os.path.join(workdir, "bench.db")
        cfg = os.path.join(workdir, "bench.toml")
        with open(cfg, "w") as f:
            f.write(f'[docker]\nflush_ms = 20\n[[docker.include]]\nlabel = "tw.bench={label}"\n')
        self.log = open(os.path.join(workdir, "watch.log"), "w")
        self.p = subprocess.Popen([BIN, "--db", self.db, "--config", cfg, "watch"], stdout=self.log, stderr=self.log)
        deadline = time.time() + 10
        while not os.path.exists(self.db) and time.time() < deadline:
            time.sleep(0.02)

    def query(self, sql):
        try:
            c = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
            try:
                return c.execute(sql).fetchone()[0]
            finally:
                c.close()
        except sqlite3.Error:
            return None

    def peak_rss_mib(self):
        with open(f"/proc/{self.p.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self):
        # utime + stime (fields 14 and 15 of /proc/PID/stat, in clock ticks).
        with open(f"/proc/{self.p.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(timeout=30)


def run_container(label, name, script):
    return sh("docker", "run", "-d", "--name", name, "--label", f"tw.bench={label}", IMAGE, "/busybox", "sh", "-c", script)


def throughput(n, lines, workdir):
    label = f"tp{n}-{os.getpid()}-{time.time_ns()}"
    w = Watch(label, workdir)
    names = [f"twb-{label}-{i}" for i in range(n)]
    try:
        t0 = time.time()
        followers = []
        for name in names:
            run_container(label, name, f"/busybox yes 'WARNING:q:bench line' | /busybox head -n {lines}")
            followers.append(subprocess.Popen(["docker", "logs", "-f", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        total = n * lines
        t_follow = None
        t_tw = None
        while t_follow is None or t_tw is None:
            if t_follow is None and all(p.poll() is not None for p in followers):
                t_follow = time.time() - t0
            # max(id) is O(log n) and bounds the count from above; the exact count, which
            # scans an index and would compete for the cores, runs only once it can be done.
            got = 0
            if t_tw is None and (w.query("SELECT max(id) FROM event_log") or 0) >= total:
                got = w.query("SELECT count(*) FROM events WHERE kind = 'warning'") or 0
                if got >= total:
                    t_tw = time.time() - t0
            if time.time() - t0 > 600:
                got = w.query("SELECT count(*) FROM events WHERE kind = 'warning'")
                raise SystemExit(f"timeout: {got}/{total} lines stored")
            time.sleep(0.02)
        rss = w.peak_rss_mib()
        cpu = w.cpu_seconds()
        w.stop()
        # The daemon's bound: serving the same logs to a reader that discards them.
        t1 = time.time()
        for name in names:
            subprocess.run(["docker", "logs", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        t_seq = time.time() - t1
        t2 = time.time()
        procs = [subprocess.Popen(["docker", "logs", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name in names]
        for p in procs:
            p.wait()
        t_par = time.time() - t2
        ratio = t_tw / t_follow
        print(f"{n:>2} container(s) x {lines} lines: trainwatch {total / t_tw:8.0f} lines/s ({t_tw:.2f} s)"
              f" | same run, docker logs -f > /dev/null: {total / t_follow:8.0f} lines/s ({t_follow:.2f} s, ratio {ratio:.2f}x)"
              f" | after the fact, docker logs > /dev/null: {total / t_par:8.0f} lines/s (ratio {t_tw / t_par:.2f}x)"
              f" | trainwatch CPU {cpu:.2f} s ({cpu / total * 1e6:.1f} us/line), peak RSS {rss:.1f} MiB", flush=True)
        return ratio
    finally:
        subprocess.run(["docker", "rm", "-f", *names], capture_output=True)
        if w.p.poll() is None:
            w.p.kill()


def latency(rate, seconds, workdir):
    label = f"lat-{os.getpid()}-{time.time_ns()}"
    w = Watch(label, workdir)
    name = f"twb-{label}"
    burst = max(1, rate // 100)
    loops = seconds * 100
    # Bursts of rate/100 lines every 10 ms.
    script = (f"i=0; while [ $i -lt {loops} ]; do /busybox yes 'WARNING:q:latency line' | /busybox head -n {burst}; "
              f"/busybox usleep 10000; i=$((i+1)); done")
    lags = []
    try:
        run_container(label, name, script)
        t0 = time.time()
        while time.time() - t0 < seconds + 1:
            newest = w.query("SELECT max(key_ts) FROM events WHERE kind = 'warning'")
            if newest:
                lags.append(time.time() - newest / 1e9)
            time.sleep(0.01)
        rss = w.peak_rss_mib()
        stored = w.query("SELECT count(*) FROM events WHERE kind = 'warning'")
        w.stop()
        lags = sorted(l for l in lags[len(lags) // 10:])  # skip the start-up
        if not lags:
            raise SystemExit("no latency samples")
        p = lambda q: lags[min(len(lags) - 1, int(q * len(lags)))] * 1000
        achieved = stored / seconds if stored else 0
        print(f"latency at ~{achieved:.0f} lines/s (target {rate}): p50 {p(0.5):.0f} ms, p99 {p(0.99):.0f} ms "
              f"(now - newest committed line's Docker time, 10 ms polling) | peak RSS {rss:.1f} MiB")
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        if w.p.poll() is None:
            w.p.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=200_000, help="lines per container for one container (divided by 10 for ten)")
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=1, help="throughput runs per case; the median ratio is reported")
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--locked", "-q"], cwd=ROOT, check=True)
    ensure_image()
    print(f"docker {sh('docker', 'info', '--format', '{{.ServerVersion}}')}, {os.cpu_count()} cores", flush=True)
    for n, lines in ((1, a.lines), (10, a.lines // 10)):
        ratios = []
        for _ in range(a.repeat):
            with tempfile.TemporaryDirectory() as d:
                ratios.append(throughput(n, lines, d))
        if a.repeat > 1:
            ratios.sort()
            print(f"{n:>2} container(s): ratio to docker logs -f over {a.repeat} runs: median {ratios[len(ratios) // 2]:.2f}x,"
                  f" range {ratios[0]:.2f}-{ratios[-1]:.2f}x", flush=True)
    with tempfile.TemporaryDirectory() as d:
        latency(a.rate, a.seconds, d)


if __name__ == "__main__":
    sys.exit(main())
