//! `trainwatch watch` against the real Docker daemon on this machine. Containers run a static
//! busybox in an image imported from a tar (`FROM scratch`: no registry is needed). Each test
//! labels its containers and configures trainwatch to follow only those.
//!
//! Without a daemon these tests fail under CI (`CI=true`) and are skipped with a printed reason
//! elsewhere.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::util::{Db, fixture};

pub(crate) const IMAGE: &str = "trainwatch-test-busybox:1";

/// Whether the daemon is usable; builds the test image once.
pub(crate) fn docker_ready() -> bool {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let r = READY.get_or_init(|| {
        let info = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output();
        match info {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return Err(format!(
                    "docker info failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                ));
            }
            Err(e) => return Err(format!("docker CLI not runnable: {e}")),
        }
        let have = Command::new("docker")
            .args(["image", "inspect", IMAGE])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !have {
            let busybox = ["/bin/busybox", "/usr/bin/busybox"]
                .into_iter()
                .find(|p| Path::new(p).exists())
                .ok_or("busybox-static is not installed (apt-get install busybox-static)")?;
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            std::fs::copy(busybox, dir.path().join("busybox")).map_err(|e| e.to_string())?;
            let tar = Command::new("tar")
                .arg("-C")
                .arg(dir.path())
                .args(["-cf", "-", "busybox"])
                .output()
                .map_err(|e| e.to_string())?;
            let mut import = Command::new("docker")
                .args(["import", "-", IMAGE])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?;
            std::io::Write::write_all(import.stdin.as_mut().unwrap(), &tar.stdout)
                .map_err(|e| e.to_string())?;
            drop(import.stdin.take());
            if !import.wait().map_err(|e| e.to_string())?.success() {
                return Err("docker import failed".into());
            }
        }
        Ok(())
    });
    match r {
        Ok(()) => true,
        Err(reason) => {
            crate::util::unavailable(&format!("skipping Docker test: {reason}"));
            false
        }
    }
}

/// A test's containers (removed on drop) and its trainwatch process.
pub(crate) struct Lab {
    label: String,
    pub(crate) db: Db,
    config: PathBuf,
    containers: Vec<String>,
    watch: Option<Child>,
    log: PathBuf,
    /// `DOCKER_HOST` of a daemon of the test's own, else the machine's.
    host: Option<String>,
    /// More arguments of `watch` (`--listen ADDR`).
    pub(crate) watch_args: Vec<String>,
}

impl Lab {
    pub(crate) fn new(name: &str, extra_config: &str) -> Lab {
        let label = format!(
            "{name}-{}-{}",
            std::process::id(),
            trainwatch::time::now_ns()
        );
        let db = Db::new();
        let config = db.dir.path().join("trainwatch.toml");
        std::fs::write(&config, format!("[docker]\nflush_ms = 50\n{extra_config}\n[[docker.include]]\nlabel = \"tw.test={label}\"\n")).unwrap();
        let log = db.dir.path().join("watch.log");
        Lab {
            label,
            db,
            config,
            containers: Vec::new(),
            watch: None,
            log,
            host: None,
            watch_args: Vec::new(),
        }
    }

    pub(crate) fn start_watch(&mut self, env: &[(&str, &str)]) {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.start_watch_to(env, out.try_clone().unwrap().into(), out.into());
    }

    /// As [`Lab::start_watch`], with trainwatch's stdout and stderr going to `stdout` and
    /// `stderr`.
    pub(crate) fn start_watch_to(&mut self, env: &[(&str, &str)], stdout: Stdio, stderr: Stdio) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_trainwatch"));
        if let Some(h) = &self.host {
            cmd.env("DOCKER_HOST", h);
        }
        let child = cmd
            .arg("--db")
            .arg(&self.db.path)
            .arg("--config")
            .arg(&self.config)
            .arg("watch")
            .args(&self.watch_args)
            .envs(env.iter().copied())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start trainwatch watch");
        self.watch = Some(child);
    }

    /// SIGTERM and wait: a graceful stop must exit 0.
    pub(crate) fn stop_watch(&mut self) {
        if let Some(mut c) = self.watch.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let status = c.wait().unwrap();
            assert!(
                status.success(),
                "watch exited with {status}; log:\n{}",
                self.log_text()
            );
        }
    }

    pub(crate) fn kill9_watch(&mut self) {
        if let Some(mut c) = self.watch.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts a container running `script` under busybox sh; returns its name.
    pub(crate) fn run(&mut self, suffix: &str, tty: bool, script: &str) -> String {
        self.run_labeled(suffix, tty, &[], script)
    }

    pub(crate) fn run_labeled(
        &mut self,
        suffix: &str,
        tty: bool,
        labels: &[&str],
        script: &str,
    ) -> String {
        self.run_with(suffix, tty, labels, &[], script)
    }

    /// As [`Lab::run_labeled`], with more `docker run` arguments (e.g. a bind mount).
    pub(crate) fn run_with(
        &mut self,
        suffix: &str,
        tty: bool,
        labels: &[&str],
        extra: &[&str],
        script: &str,
    ) -> String {
        let name = format!("tw-{}-{suffix}", self.label);
        let mut args = vec!["run", "-d", "--name", &name, "--label"];
        let label = format!("tw.test={}", self.label);
        args.push(&label);
        args.extend_from_slice(extra);
        for l in labels {
            args.extend(["--label", l]);
        }
        if tty {
            args.push("-t");
        }
        args.extend([IMAGE, "/busybox", "sh", "-c", script]);
        let o = self.docker().args(&args).output().unwrap();
        assert!(
            o.status.success(),
            "docker run: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        self.containers.push(name.clone());
        name
    }

    /// Starts a container that prints `entries` (text, whether on stderr) in order, each on its
    /// stream, `pause_us` apart: a capture played back as the process wrote it. Returns its name.
    pub(crate) fn play(
        &mut self,
        suffix: &str,
        entries: &[(String, bool)],
        pause_us: u32,
    ) -> String {
        self.play_then(suffix, entries, pause_us, "true", &[])
    }

    /// As [`Lab::play`], then runs `then` (e.g. `exit 1`), with more `docker run` arguments.
    pub(crate) fn play_then(
        &mut self,
        suffix: &str,
        entries: &[(String, bool)],
        pause_us: u32,
        then: &str,
        extra: &[&str],
    ) -> String {
        let dir = self.db.dir.path().join(format!("play-{suffix}"));
        std::fs::create_dir(&dir).unwrap();
        for (n, (text, err)) in entries.iter().enumerate() {
            let ext = if *err { "err" } else { "out" };
            std::fs::write(dir.join(format!("{n:05}.{ext}")), text).unwrap();
        }
        let mount = format!("{}:/play:ro", dir.display());
        let script = format!(
            "for f in /play/*; do case $f in *.err) /busybox cat $f >&2;; *) /busybox cat $f;; esac; /busybox usleep {pause_us}; done; {then}"
        );
        let mut args = vec!["-v", mount.as_str()];
        args.extend_from_slice(extra);
        self.run_with(suffix, false, &[], &args, &script)
    }

    /// The docker CLI, talking to this lab's daemon.
    pub(crate) fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        if let Some(h) = &self.host {
            c.env("DOCKER_HOST", h);
        }
        c
    }

    pub(crate) fn wait_exit(&self, name: &str) {
        let o = self.docker().args(["wait", name]).output().unwrap();
        assert!(o.status.success());
    }

    /// Polls `sql` until it returns `want`; fails once the answer has not changed for 30 s
    /// (a large backlog on a loaded machine takes longer, but keeps moving).
    pub(crate) fn wait_for(&self, sql: &str, want: i64) {
        let mut deadline = Instant::now() + Duration::from_secs(30);
        let mut last = None;
        loop {
            let got = if self.db.path.exists() {
                trainwatch::store::open_ro(&self.db.path)
                    .ok()
                    .and_then(|c| c.query_row(sql, [], |r| r.get::<_, i64>(0)).ok())
            } else {
                None
            };
            if got == Some(want) {
                return;
            }
            if got != last {
                last = got;
                deadline = Instant::now() + Duration::from_secs(30);
            }
            if Instant::now() > deadline {
                panic!(
                    "{sql}: got {got:?}, want {want}; watch log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A json-file capture's entries: (text, whether on stderr).
pub(crate) fn capture_entries(rel: &str) -> Vec<(String, bool)> {
    std::fs::read_to_string(fixture(rel))
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                v["log"].as_str().unwrap().to_string(),
                v["stream"] == "stderr",
            )
        })
        .collect()
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.watch.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.containers {
            let _ = self.docker().args(["rm", "-f", n]).output();
        }
    }
}

#[test]
fn containers_before_and_after_exit_codes_and_tracebacks() {
    if !docker_ready() {
        return;
    }
    let mut lab = Lab::new("ba", "");
    // Exits before trainwatch starts: still read (all=true).
    let before = lab.run(
        "before",
        false,
        "echo 'ERROR:q:before'; echo 'WARNING:q:to stderr' >&2",
    );
    lab.wait_exit(&before);
    lab.start_watch(&[]);
    let after = lab.run(
        "after",
        false,
        "echo 'WARNING:q:after 1'; sleep 0.3; printf 'Traceback (most recent call last):\\n  File \"/app/x.py\", line 1, in <module>\\nKeyError: 1\\n' >&2; exit 3",
    );
    lab.wait_exit(&after);
    lab.wait_for(
        &format!(
            "SELECT count(*) FROM events WHERE container = '{after}' AND kind = 'container_died'"
        ),
        1,
    );
    lab.wait_for(
        &format!("SELECT count(*) FROM events WHERE container = '{after}' AND kind = 'error'"),
        1,
    );
    lab.wait_for(&format!("SELECT count(*) FROM events WHERE container = '{before}' AND kind IN ('error', 'warning')"), 2);
    lab.stop_watch();
    let db = &lab.db;
    assert_eq!(db.count(&format!("SELECT count(*) FROM events WHERE container = '{before}' AND kind IN ('error', 'warning')")), 2);
    assert_eq!(
        db.text(&format!(
            "SELECT stream FROM events WHERE container = '{before}' AND kind = 'warning'"
        ))
        .as_deref(),
        Some("stderr")
    );
    let tb = db
        .text(&format!(
            "SELECT message FROM events WHERE container = '{after}' AND kind = 'error'"
        ))
        .unwrap();
    assert_eq!(
        tb,
        "Traceback (most recent call last):\n  File \"/app/x.py\", line 1, in <module>\nKeyError: 1"
    );
    assert_eq!(db.count(&format!("SELECT json_extract(context, '$.exit_code') FROM events WHERE container = '{after}' AND kind = 'container_died'")), 3);
    assert_eq!(db.text(&format!("SELECT json_extract(context, '$.role') FROM events WHERE container = '{after}' AND kind = 'container_died'")).as_deref(), Some("other"));
    // Its own logs are service-format JSON lines.
    let first = lab.log_text().lines().next().unwrap().to_string();
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["service"], "trainwatch");
    assert!(
        v["timestamp"].is_string()
            && v["level"].is_string()
            && v["message"].is_string()
            && v["context"].is_object()
    );
}

#[test]
fn long_lines_tty_and_interleaved_streams() {
    if !docker_ready() {
        return;
    }
    let mut lab = Lab::new("lt", "");
    lab.start_watch(&[]);
    // A 100 KiB line: Docker sends it in 16 KiB pieces, merged back into one record.
    let long = lab.run("long", false, "printf 'WARNING:q:'; /busybox head -c 102400 /dev/zero | /busybox tr '\\0' '.'; echo; echo 'WARNING:q:next'");
    // A TTY container: no stream framing, \r\n endings, everything on stdout.
    let tty = lab.run(
        "tty",
        true,
        "echo 'WARNING:q:tty one'; echo 'WARNING:q:tty two' >&2",
    );
    // Interleaved stdout and stderr.
    let inter = lab.run("inter", false, "for i in 1 2 3 4 5 6 7 8 9 10; do echo \"WARNING:q:out $i\"; echo \"ERROR:q:err $i\" >&2; done");
    for c in [&long, &tty, &inter] {
        lab.wait_exit(c);
    }
    // container_died comes from the daemon's event stream, independently of the followers:
    // wait for the lines themselves before stopping (a line still held for grouping at a
    // stop is read again at the next start, not lost).
    let lines = |c: &str, kinds: &str| {
        format!("SELECT count(*) FROM events WHERE container = '{c}' AND kind IN ({kinds})")
    };
    lab.wait_for(&lines(&long, "'warning'"), 2);
    lab.wait_for(&lines(&tty, "'warning'"), 2);
    lab.wait_for(&lines(&inter, "'warning', 'error'"), 20);
    lab.stop_watch();
    let db = &lab.db;
    let len = db.count(&format!("SELECT length(message) FROM events WHERE container = '{long}' AND kind = 'warning' AND message LIKE 'WARNING:q:..%'"));
    assert_eq!(len, 10 + 102_400);
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM events WHERE container = '{long}' AND kind = 'warning'"
        )),
        2
    );
    let tty_msgs: Vec<(String, String)> = db.conn()
        .prepare(&format!("SELECT stream, message FROM events WHERE container = '{tty}' AND kind = 'warning' ORDER BY ts"))
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        tty_msgs,
        vec![
            ("stdout".into(), "WARNING:q:tty one".into()),
            ("stdout".into(), "WARNING:q:tty two".into())
        ]
    );
    assert_eq!(db.count(&format!("SELECT count(*) FROM events WHERE container = '{inter}' AND stream = 'stdout' AND kind = 'warning'")), 10);
    assert_eq!(db.count(&format!("SELECT count(*) FROM events WHERE container = '{inter}' AND stream = 'stderr' AND kind = 'error'")), 10);
}

#[test]
fn kill_9_mid_stream_then_restart_stores_every_line_once() {
    if !docker_ready() {
        return;
    }
    // A receiver nobody answers: its notifications stay queued in the outbox, to be counted.
    let port = crate::util::free_port();
    let mut lab = Lab::new(
        "k9",
        &format!(
            "[[notify.receivers]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/\"\n"
        ),
    );
    lab.start_watch(&[]);
    let n = 600;
    // Every fortieth line is a CUDA OOM (the first before the kill): one GpuOutOfMemory
    // alert, recurring while firing.
    let c = lab.run("writer", false, &format!("i=1; while [ $i -le {n} ]; do if [ $((i % 40)) -eq 0 ]; then echo \"torch.OutOfMemoryError: CUDA out of memory (line $i)\"; else echo \"WARNING:q:line $i\"; fi; i=$((i+1)); /busybox usleep 5000; done"));
    // Let some lines land, then kill -9 mid-stream.
    lab.wait_for(
        &format!(
            "SELECT (SELECT count(*) > 50 FROM events WHERE container = '{c}' AND kind = 'warning')
            AND EXISTS (SELECT 1 FROM alerts WHERE alertname = 'GpuOutOfMemory')"
        ),
        1,
    );
    lab.kill9_watch();
    std::thread::sleep(Duration::from_millis(500));
    lab.start_watch(&[]);
    lab.wait_exit(&c);
    let warnings = n - n / 40;
    lab.wait_for(&format!("SELECT count(DISTINCT message) FROM events WHERE container = '{c}' AND kind = 'warning'"), warnings);
    lab.stop_watch();
    assert_eq!(
        lab.db.count(&format!(
            "SELECT count(*) FROM events WHERE container = '{c}' AND kind = 'warning'"
        )),
        warnings,
        "every line exactly once"
    );
    assert_eq!(
        lab.db.count(&format!(
            "SELECT count(*) FROM events WHERE container = '{c}' AND kind = 'gpu_oom'"
        )),
        n / 40
    );
    // One alert across the kill, firing, and one firing notification queued for it: none
    // lost, none twice.
    let oom = format!(
        "FROM alerts WHERE alertname = 'GpuOutOfMemory' AND labels ->> 'container' = '{c}'"
    );
    assert_eq!(
        lab.db
            .text(&format!("SELECT group_concat(status) {oom}"))
            .as_deref(),
        Some("firing"),
        "{}",
        lab.log_text()
    );
    assert_eq!(
        lab.db.count(&format!(
            "SELECT count(*) FROM outbox WHERE receiver = 'hook' AND event = 'firing'
             AND alert_id IN (SELECT id {oom})"
        )),
        1
    );
    // And a third start reads nothing new.
    lab.start_watch(&[]);
    std::thread::sleep(Duration::from_secs(2));
    lab.stop_watch();
    assert_eq!(
        lab.db.count(&format!(
            "SELECT count(*) FROM events WHERE container = '{c}' AND kind = 'warning'"
        )),
        warnings
    );
}

#[test]
fn closed_or_unread_log_pipes_block_neither_ingestion_nor_shutdown() {
    if !docker_ready() {
        return;
    }
    // `watch 2>&1 | head -1` closes both pipes after one line; `watch | sleep` never reads
    // them, so they fill up. Either way every line is stored and SIGTERM stops it cleanly.
    for closed in [true, false] {
        let mut lab = Lab::new(if closed { "closed" } else { "unread" }, "");
        lab.start_watch_to(
            &[("TRAINWATCH_LOG", "debug")],
            Stdio::piped(),
            Stdio::piped(),
        );
        let mut pipes = {
            let w = lab.watch.as_mut().unwrap();
            (w.stdout.take(), w.stderr.take())
        };
        if closed {
            pipes = (None, None);
        }
        let n = 400;
        let c = lab.run("writer", false, &format!("i=1; while [ $i -le {n} ]; do echo \"WARNING:q:line $i $(/busybox seq -s x 1 200)\"; i=$((i+1)); done"));
        lab.wait_exit(&c);
        lab.wait_for(
            &format!("SELECT count(*) FROM events WHERE container = '{c}' AND kind = 'warning'"),
            n,
        );
        let mut w = lab.watch.take().unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &w.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(st) = w.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = w.kill();
                panic!(
                    "watch ignored SIGTERM with {} log pipes",
                    if closed { "closed" } else { "unread" }
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "closed {closed}: {status}");
        drop(pipes);
    }
}

#[test]
fn missing_daemon_socket_retries_and_reports() {
    if !docker_ready() {
        return;
    }
    let mut lab = Lab::new("nosock", "unreachable_after_secs = 1");
    lab.start_watch(&[("DOCKER_HOST", "unix:///nonexistent/docker.sock")]);
    lab.wait_for(
        "SELECT count(*) FROM events WHERE kind = 'docker_unreachable'",
        1,
    );
    lab.wait_for(
        "SELECT count(*) FROM alerts WHERE alertname = 'DockerUnreachable' AND status = 'firing'",
        1,
    );
    // Still running (never exits on daemon errors), and stops cleanly.
    assert!(
        lab.watch.as_mut().unwrap().try_wait().unwrap().is_none(),
        "watch exited; log:\n{}",
        lab.log_text()
    );
    lab.stop_watch();
    assert!(
        lab.log_text()
            .contains("Docker daemon unreachable; retrying.")
    );
    assert!(
        lab.log_text().contains("nonexistent/docker.sock")
            || lab.log_text().contains("No such file"),
        "{}",
        lab.log_text()
    );
}

#[test]
fn nan_in_a_progress_bar_shows_up_before_its_newline() {
    if !docker_ready() {
        return;
    }
    let mut lab = Lab::new("nan", "");
    lab.start_watch(&[]);
    // An Ultralytics-style bar redrawn with \r and never ended: Docker passes it on in 16 KiB
    // pieces. The NaN frames come after the first piece; the container keeps running.
    let frame = |loss: &str, pct: u32| {
        format!(
            "\\r        1/3         0G {loss:>10}      2.345      1.123         49         64: {pct}%% ━━━ 2/10 1.0it/s 0.2s"
        )
    };
    let script = format!(
        "i=0; while [ $i -lt 200 ]; do printf '{}'; i=$((i+1)); done; i=0; while [ $i -lt 200 ]; do printf '{}'; i=$((i+1)); done; sleep 60",
        frame("1.234", 10),
        frame("nan", 20)
    );
    let c = lab.run("bar", false, &script);
    lab.wait_for(
        &format!(
            "SELECT count(*) FROM events WHERE container = '{c}' AND kind = 'loss_non_finite'"
        ),
        1,
    );
    let running = Command::new("docker")
        .args(["inspect", "--format", "{{.State.Running}}", &c])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&running.stdout).trim(),
        "true",
        "reported while the bar is still running"
    );
    let msg = lab
        .db
        .text(&format!(
            "SELECT message FROM events WHERE container = '{c}' AND kind = 'loss_non_finite'"
        ))
        .unwrap();
    assert!(
        msg.trim_start().starts_with("1/3         0G        nan"),
        "{msg}"
    );
    // When the container is killed the unterminated line is stored; the NaN stays one event.
    let _ = Command::new("docker").args(["kill", &c]).output();
    lab.wait_exit(&c);
    lab.wait_for(
        &format!("SELECT count(*) FROM events WHERE container = '{c}' AND kind = 'container_died'"),
        1,
    );
    lab.stop_watch();
    assert_eq!(
        lab.db.count(&format!(
            "SELECT count(*) FROM events WHERE container = '{c}' AND kind = 'loss_non_finite'"
        )),
        1
    );
    assert_eq!(lab.db.count(&format!("SELECT json_extract(context, '$.exit_code') FROM events WHERE container = '{c}' AND kind = 'container_died'")), 137);
}

/// Real trainings' output, printed again by containers as it was captured (each json-file
/// entry to its stream, in order, 50 ms apart), is followed into the epochs their results.csv
/// holds: Ultralytics 8.3.40 (tqdm bars on stderr, headers and `all` rows on stdout) and
/// 8.4.190 (its own `\r\x1b[K` bar, everything on stdout), side by side.
#[test]
fn real_trainings_printed_by_containers_give_the_epochs_of_results_csv() {
    if !docker_ready() {
        return;
    }
    let mut lab = Lab::new("real", "");
    lab.start_watch(&[]);
    let cases = [
        ("ultralytics-8.3", "stderr", 10),
        ("ultralytics", "stdout", 10),
    ];
    let mut containers = Vec::new();
    for (i, (dir, _, _)) in cases.iter().enumerate() {
        let entries = capture_entries(&format!("{dir}/normal-json.log"));
        let n = entries.len();
        assert!(n > 50, "{dir}: {n} entries");
        containers.push(lab.play(&format!("train{i}"), &entries, 50_000));
    }
    for c in &containers {
        lab.wait_exit(c);
        lab.wait_for(
            &format!(
                "SELECT count(*) FROM training_runs WHERE container = '{c}' AND status = 'completed'"
            ),
            1,
        );
    }
    lab.stop_watch();
    for (c, (dir, bar_stream, epochs)) in containers.iter().zip(cases) {
        let run = lab.db.count(&format!(
            "SELECT run_id FROM training_runs WHERE container = '{c}'"
        ));
        crate::replay::assert_epochs_match(
            &lab.db,
            run,
            &crate::util::ResultsCsv::load(&fixture(&format!("{dir}/normal.results.csv"))),
        );
        // The bars came through the stream their version writes them to.
        assert_eq!(
            lab.db.count(&format!(
                "SELECT count(*) FROM events WHERE container = '{c}' AND kind = 'epoch_completed' AND stream = '{bar_stream}'"
            )),
            epochs,
            "{dir}"
        );
    }
}

/// Regression: dockerd ends a follow stream when the container stops even if the reader is
/// behind; a container writing fast and exiting at once lost about half of its lines.
#[test]
fn fast_short_lived_container_is_drained_after_its_follow_stream_ends() {
    if !docker_ready() {
        return;
    }
    let mut lab = Lab::new("drain", "");
    lab.start_watch(&[]);
    // Within a 10 MB x 3 json-file rotation budget: lines the daemon rotates away before
    // anyone reads them cannot be recovered by any reader.
    let n = 300_000;
    let c = lab.run(
        "fast",
        false,
        &format!("/busybox yes 'WARNING:q:fast line' | /busybox head -n {n}"),
    );
    lab.wait_exit(&c);
    lab.wait_for(
        &format!("SELECT count(*) FROM events WHERE container = '{c}' AND kind = 'warning'"),
        n,
    );
    lab.stop_watch();
    assert_eq!(
        lab.db.count(&format!(
            "SELECT count(DISTINCT key_ts) FROM events WHERE container = '{c}' AND kind = 'warning'"
        )),
        n
    );
    // The rest is read from the cursor's instant, not from the start of its second (at this
    // rate, tens of thousands of lines read again only to be dropped).
    let log = lab.log_text();
    let stopped = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "Stopped.")
        .expect("a Stopped. line");
    let read = stopped["context"]["lines_read"].as_u64().unwrap();
    assert!(
        (n as u64..n as u64 + 1_000).contains(&read),
        "{read} lines read for {n}"
    );
}

#[test]
fn silent_running_container_is_reattached_without_duplicates() {
    if !docker_ready() {
        return;
    }
    let mut lab = Lab::new("silent", "reattach_after_silence_secs = 1");
    lab.start_watch(&[]);
    let c = lab.run(
        "quiet",
        false,
        "echo 'WARNING:q:first'; sleep 4; echo 'WARNING:q:second'; sleep 60",
    );
    lab.wait_for(
        &format!("SELECT count(*) FROM events WHERE container = '{c}' AND kind = 'warning'"),
        1,
    );
    // Silent for longer than the limit while running: the stream is re-attached from the
    // cursor, the first line is not stored again, the second still arrives.
    lab.wait_for(
        &format!("SELECT count(*) FROM events WHERE container = '{c}' AND kind = 'warning'"),
        2,
    );
    lab.stop_watch();
    assert!(
        lab.log_text().contains("re-attaching from the cursor"),
        "{}",
        lab.log_text()
    );
    assert_eq!(
        lab.db.count(&format!(
            "SELECT count(*) FROM events WHERE container = '{c}' AND message = 'WARNING:q:first'"
        )),
        1
    );
}

#[test]
fn crashed_queue_container_raises_queue_container_down_until_it_runs_again() {
    if !docker_ready() {
        return;
    }
    let mut lab = Lab::new(
        "qdown",
        "[alerts]\nqueue_down_for = \"1s\"\n[status]\ninterval = \"1s\"\n",
    );
    lab.start_watch(&[]);
    // Crashes on its first start; stays up once restarted.
    let q = lab.run_labeled(
        "queue",
        false,
        &["trainwatch.role=queue"],
        "if [ -e /again ]; then echo 'INFO:queue:consuming again'; sleep 600; else : > /again; echo 'ERROR:queue:lost connection' >&2; exit 1; fi",
    );
    lab.wait_exit(&q);
    lab.wait_for(
        &format!("SELECT count(*) FROM alerts WHERE alertname = 'QueueContainerDown' AND status = 'firing' AND json_extract(labels, '$.container') = '{q}'"),
        1,
    );
    // The status file beside the database lists it.
    let status_path = lab.db.path.with_file_name("trainwatch-status.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&status_path).unwrap_or_default();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && v["alerts_firing"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["alertname"] == "QueueContainerDown"))
        {
            assert_eq!(v["alerts_firing"][0]["severity"], "critical");
            assert!(v["heartbeat_at"].is_string());
            // And the status page beside it.
            let html =
                std::fs::read_to_string(status_path.with_file_name("trainwatch-status.html"))
                    .unwrap_or_default();
            if html.contains("QueueContainerDown") {
                assert!(html.contains("sev-critical"));
                break;
            }
        }
        assert!(Instant::now() < deadline, "status file: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = Command::new("docker").args(["start", &q]).output().unwrap();
    assert!(o.status.success());
    lab.wait_for(
        "SELECT count(*) FROM alerts WHERE alertname = 'QueueContainerDown' AND status = 'resolved'",
        1,
    );
    lab.stop_watch();
    assert_eq!(
        lab.db
            .count("SELECT count(*) FROM alerts WHERE alertname = 'QueueContainerDown'"),
        1
    );
}

#[test]
fn probes_feed_gauges_and_alert_rules() {
    if !docker_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("azaion");
    std::fs::create_dir_all(root.join("datasets/train")).unwrap();
    std::fs::create_dir_all(root.join("models")).unwrap();
    std::fs::write(root.join("datasets/train/img.bin"), vec![7u8; 3_000_000]).unwrap();
    let offset = root.join("offset.yaml");
    std::fs::write(&offset, "stream: annotations\noffset: 4242\n").unwrap();
    // No GPU here: a stand-in prints the assembled nvidia-smi rows (GPU 1 at 93 °C).
    let smi = dir.path().join("nvidia-smi");
    std::fs::write(
        &smi,
        format!(
            "#!/bin/sh\ncat '{}'\n",
            fixture("nvidia-smi/query-gpu.csv").display()
        ),
    )
    .unwrap();
    Command::new("chmod").arg("755").arg(&smi).status().unwrap();
    let mut lab = Lab::new(
        "probes",
        &format!(
            "[probes]\ninterval = \"1s\"\ndir_sizes_interval = \"10s\"\nnvidia_smi = '{}'\ndata_root = '{}'\noffset_file = '{}'\noffset_container = \"queue-x\"\n",
            smi.display(),
            root.display(),
            offset.display()
        ),
    );
    lab.start_watch(&[]);
    lab.wait_for(
        "SELECT count(*) FROM alerts WHERE alertname = 'GpuTemperatureHigh' AND json_extract(labels, '$.gpu') = '1' AND status = 'firing'",
        1,
    );
    lab.wait_for(
        "SELECT CAST(value AS INTEGER) FROM gauges WHERE container = 'queue-x' AND name = 'queue_offset'",
        4242,
    );
    lab.wait_for(
        "SELECT count(*) FROM gauges WHERE container = 'host' AND name IN ('disk_usage_azaion_pct', 'disk_usage_azaion_gb', 'disk_usage_datasets_gb', 'disk_usage_models_gb')",
        4,
    );
    lab.stop_watch();
    let db = &lab.db;
    assert_eq!(
        db.count("SELECT CAST(value AS INTEGER) FROM gauges WHERE container = 'gpu0' AND name = 'gpu_memory_used_mb'"),
        22000
    );
    // [N/A] fields are left out, not stored as 0.
    assert_eq!(
        db.count(
            "SELECT count(*) FROM gauges WHERE container = 'gpu2' AND name = 'gpu_memory_used_mb'"
        ),
        0
    );
    let datasets_gb: f64 = db
        .conn()
        .query_row(
            "SELECT value FROM gauges WHERE name = 'disk_usage_datasets_gb'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!((0.003..0.01).contains(&datasets_gb), "{datasets_gb}");
    // One GPU too hot, one alert; the others are fine. (Disk alerts depend on this machine.)
    assert_eq!(
        db.count("SELECT count(*) FROM alerts WHERE alertname LIKE 'Gpu%'"),
        1
    );
}

#[test]
fn a_removed_container_is_let_go() {
    if !docker_ready() {
        return;
    }
    let mut lab = Lab::new("removed", "");
    lab.start_watch(&[]);
    let c = lab.run("gone", false, "echo 'WARNING:app:up'; sleep 600");
    // Its line is stored (whether discovery saw it start or found it running: `watch` is not
    // waited for here), and with it its cursor.
    lab.wait_for(
        &format!("SELECT count(*) FROM events WHERE container = '{c}' AND kind = 'warning'"),
        1,
    );
    lab.wait_for(
        &format!("SELECT count(*) > 0 FROM cursors WHERE container = '{c}'"),
        1,
    );
    let o = Command::new("docker")
        .args(["rm", "-f", &c])
        .output()
        .unwrap();
    assert!(o.status.success());
    // Gone for good: its cursors go too; it is marked removed.
    lab.wait_for(
        &format!("SELECT count(*) FROM cursors WHERE container = '{c}'"),
        0,
    );
    lab.wait_for(
        &format!("SELECT count(*) FROM containers WHERE container = '{c}' AND state = 'removed'"),
        1,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lab
        .log_text()
        .contains("Container removed; no longer following it.")
    {
        assert!(Instant::now() < deadline, "{}", lab.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    // No retry loop against a container that no longer exists.
    std::thread::sleep(Duration::from_secs(2));
    let retries = lab
        .log_text()
        .lines()
        .filter(|l| l.contains(&c) && l.contains("re-attaching"))
        .count();
    assert!(retries <= 1, "{}", lab.log_text());
    lab.stop_watch();
}

/// A Docker daemon of the test's own (its own data root, socket and containerd, `--live-restore`
/// so its containers outlive it), which the test may stop and start again. It runs in a network
/// namespace of its own (`unshare --net`, which unlike `ip netns exec` keeps the cgroup mounts
/// dockerd needs): a second dockerd in the machine's namespace reconfigures bridges there (seen
/// here: it deleted the machine daemon's `docker0`).
struct OwnDaemon {
    dir: tempfile::TempDir,
    host: String,
    child: Option<Child>,
}

impl OwnDaemon {
    /// Starts it; `Err` with dockerd's last log lines when it cannot.
    fn start() -> Result<OwnDaemon, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("daemon.json"), "{}").unwrap();
        let host = format!("unix://{}", dir.path().join("docker.sock").display());
        let mut d = OwnDaemon {
            dir,
            host,
            child: None,
        };
        if !d.spawn() {
            let log = d.log();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            return Err(tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        // The busybox image, as for the machine's daemon.
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .ok_or("busybox-static is not installed")?;
        let img = d.dir.path().join("img");
        std::fs::create_dir_all(&img).unwrap();
        std::fs::copy(busybox, img.join("busybox")).unwrap();
        let tar = Command::new("tar")
            .arg("-C")
            .arg(&img)
            .args(["-cf", "-", "busybox"])
            .output()
            .unwrap();
        let mut import = Command::new("docker")
            .env("DOCKER_HOST", &d.host)
            .args(["import", "-", IMAGE])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::io::Write::write_all(import.stdin.as_mut().unwrap(), &tar.stdout).unwrap();
        drop(import.stdin.take());
        assert!(import.wait().unwrap().success());
        Ok(d)
    }

    /// Starts dockerd and waits until it answers.
    fn spawn(&mut self) -> bool {
        let p = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p.join("dockerd.log"))
            .unwrap();
        // `unshare` execs dockerd: the child is the daemon itself.
        let child = Command::new("unshare")
            .args(["--net", "dockerd"])
            .arg(format!("--config-file={}", p.join("daemon.json").display()))
            .arg(format!("--data-root={}", p.join("data").display()))
            .arg(format!("--exec-root={}", p.join("exec").display()))
            .arg(format!("--pidfile={}", p.join("docker.pid").display()))
            .arg(format!("--host={}", self.host))
            .args(["--iptables=false", "--ip6tables=false", "--live-restore"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn();
        let Ok(child) = child else { return false };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ok = Command::new("docker")
                .env("DOCKER_HOST", &self.host)
                .args(["info", "--format", "{{.ServerVersion}}"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    /// SIGTERM, as `systemctl restart docker` does, and wait for it to exit.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for OwnDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn daemon_restart_mid_stream_loses_and_doubles_nothing() {
    if !docker_ready() {
        return;
    }
    let docker0 = || {
        Command::new("ip")
            .args(["link", "show", "docker0"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let had_docker0 = docker0();
    let mut daemon = match OwnDaemon::start() {
        Ok(d) => d,
        Err(why) => {
            crate::util::unavailable(&format!(
                "skipping: cannot start a second dockerd here:\n{why}"
            ));
            return;
        }
    };
    let mut lab = Lab::new("restart", "unreachable_after_secs = 1");
    lab.host = Some(daemon.host.clone());
    lab.start_watch(&[]);
    let n = 400;
    let c = lab.run(
        "writer",
        false,
        &format!("i=1; while [ $i -le {n} ]; do echo \"WARNING:q:line $i\"; i=$((i+1)); /busybox usleep 50000; done"),
    );
    lab.wait_for(
        &format!("SELECT count(*) > 50 FROM events WHERE container = '{c}' AND kind = 'warning'"),
        1,
    );
    // The daemon goes away for a while; the container keeps running (live-restore).
    daemon.stop();
    lab.wait_for(
        "SELECT count(*) FROM events WHERE kind = 'docker_unreachable'",
        1,
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        daemon.spawn(),
        "dockerd did not come back: {}",
        daemon.log()
    );
    lab.wait_exit(&c);
    lab.wait_for(
        &format!("SELECT count(DISTINCT message) FROM events WHERE container = '{c}' AND kind = 'warning'"),
        n,
    );
    lab.wait_for(
        "SELECT count(*) FROM alerts WHERE alertname = 'DockerUnreachable' AND status = 'resolved'",
        1,
    );
    lab.stop_watch();
    assert_eq!(
        lab.db.count(&format!(
            "SELECT count(*) FROM events WHERE container = '{c}' AND kind = 'warning'"
        )),
        n,
        "every line exactly once across the daemon restart"
    );
    drop(lab);
    drop(daemon);
    // The machine's own daemon keeps its bridge.
    assert_eq!(docker0(), had_docker0);
}

#[test]
fn a_silent_training_container_raises_log_stream_silent_until_it_prints() {
    if !docker_ready() {
        return;
    }
    let mut lab = Lab::new("quiet", "silent_alert_after_secs = 2");
    lab.start_watch(&[]);
    let c = lab.run_labeled(
        "train",
        false,
        &["trainwatch.role=training"],
        "echo 'WARNING:train:starting'; sleep 5; echo 'WARNING:train:back'; sleep 600",
    );
    lab.wait_for(
        &format!("SELECT count(*) FROM alerts WHERE alertname = 'LogStreamSilent' AND status = 'firing' AND json_extract(labels, '$.container') = '{c}'"),
        1,
    );
    lab.wait_for(
        "SELECT count(*) FROM alerts WHERE alertname = 'LogStreamSilent' AND status = 'resolved'",
        1,
    );
    // Both lines stored (the last one once the grouper lets it go).
    lab.wait_for(
        &format!("SELECT count(*) FROM events WHERE container = '{c}' AND kind = 'warning'"),
        2,
    );
    lab.stop_watch();
}

/// Docker stats of real containers: a busy loop shows CPU, a container holding 150 MB in its
/// shared memory shows memory and its limit, an idle one shows neither; on the status page's
/// data, `status` and `/metrics`.
#[test]
fn docker_stats_show_a_busy_loop_and_a_memory_hog() {
    if !docker_ready() {
        return;
    }
    let mut lab = Lab::new(
        "stats",
        "[probes]\ninterval = \"1s\"\nnvidia_smi = \"\"\ndata_root = \"\"\n",
    );
    lab.start_watch(&[]);
    let busy = lab.run("busy", false, "while :; do :; done");
    let hog = lab.run_with(
        "hog",
        false,
        &[],
        &["--memory", "300m", "--shm-size", "256m"],
        "/busybox head -c 150000000 /dev/zero > /dev/shm/hog; echo held; /busybox sleep 3600",
    );
    let idle = lab.run("idle", false, "/busybox sleep 3600");
    let max = |c: &str, name: &str| -> Option<f64> {
        trainwatch::store::open_ro(&lab.db.path)
            .ok()
            .and_then(|conn| {
                conn.query_row(
                    "SELECT max(value) FROM metric_samples WHERE container = ?1 AND name = ?2",
                    [c, name],
                    |r| r.get::<_, Option<f64>>(0),
                )
                .ok()
                .flatten()
            })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let busy_cpu = max(&busy, "container_cpu_pct").unwrap_or(0.0);
        let hog_mem = max(&hog, "container_memory_used_bytes").unwrap_or(0.0);
        let idle_n = lab.db.path.exists().then(|| {
            lab.db.count(&format!("SELECT count(*) FROM metric_samples WHERE container = '{idle}' AND name = 'container_cpu_pct'"))
        });
        if busy_cpu > 50.0 && hog_mem > 150e6 && idle_n.unwrap_or(0) >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "busy cpu {busy_cpu}, hog memory {hog_mem}, idle samples {idle_n:?}; log:\n{}",
            lab.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The limit as given; the idle container neither busy nor big.
    assert_eq!(
        max(&hog, "container_memory_limit_bytes"),
        Some(300.0 * 1024.0 * 1024.0)
    );
    let idle_cpu = max(&idle, "container_cpu_pct").unwrap();
    assert!(idle_cpu < 5.0, "idle cpu {idle_cpu}");
    let idle_mem = max(&idle, "container_memory_used_bytes").unwrap();
    assert!(idle_mem < 20e6, "idle memory {idle_mem}");
    assert!(max(&busy, "container_cpu_pct").unwrap() < 110.0 * 2.0);
    assert!(max(&idle, "container_pids") >= Some(1.0));
    // status and /metrics show them per container.
    let o = crate::util::bin(&["status"], &lab.db.path);
    let text = String::from_utf8_lossy(&o.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with("Stats") && l.contains(&busy))
        .unwrap_or_else(|| panic!("no stats row for {busy}:\n{text}"));
    assert!(row.contains("CPU") && row.contains('%'), "{row}");
    // And its line in the table of followed containers.
    assert!(
        text.lines()
            .any(|l| l.starts_with("Container") && l.contains(&busy) && l.contains("running")),
        "{text}"
    );
    lab.stop_watch();
    let conn = lab.db.conn();
    let now = trainwatch::time::now_ns();
    let s = trainwatch::output::status::collect(&conn, now, 600 * 1_000_000_000).unwrap();
    let k = s.containers.iter().find(|k| k.container == hog).unwrap();
    assert_eq!(k.role.as_deref(), Some("other"));
    assert_eq!(k.memory_limit_bytes, Some(300.0 * 1024.0 * 1024.0));
    let metrics = trainwatch::output::serve::metrics_text(&s);
    for want in [
        format!("container_cpu_pct{{container=\"{busy}\"}}"),
        format!("container_memory_limit_bytes{{container=\"{hog}\"}} 314572800"),
        format!("container_network_rx_bytes_total{{container=\"{idle}\"}}"),
    ] {
        assert!(metrics.contains(&want), "{want} not in\n{metrics}");
    }
    // The page: one CPU and one memory chart for the role, a row per container.
    let html = trainwatch::output::page::build(&conn, &s, now, None).unwrap();
    assert!(
        html.contains("CPU % of other containers, last 6 h"),
        "{html}"
    );
    assert!(html.contains("Memory MiB of other containers"));
    assert!(html.contains(&format!("<td>{busy}</td>")));
}

/// A training container killed mid-run (`docker kill`, exit 137) ends its run as failed and
/// fires `TrainingFailed` (not `TrainingContainerDied`: the death is the run's); started
/// again, it trains again and the alert resolves.
#[test]
fn a_killed_training_container_fails_its_run_and_fires_training_failed() {
    if !docker_ready() {
        return;
    }
    let mut lab = Lab::new("killed", "");
    lab.start_watch(&[]);
    let play = lab.db.dir.path().join("play");
    std::fs::create_dir(&play).unwrap();
    let capture = std::fs::read_to_string(fixture("ultralytics/normal-json.log")).unwrap();
    // Up to the end of epoch 5 of 10 (its bar's last frame), then the process hangs on.
    let mut n = 0;
    for line in capture.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = v["log"].as_str().unwrap();
        n += 1;
        std::fs::write(play.join(format!("{n:05}")), text).unwrap();
        if text.contains("5/10") {
            break;
        }
    }
    let mount = format!("{}:/play:ro", play.display());
    let c = lab.run_with(
        "train",
        false,
        &[],
        &["-v", &mount],
        "for f in /play/*; do /busybox cat $f; done; /busybox sleep 3600",
    );
    lab.wait_for(
        &format!("SELECT count(*) >= 4 FROM training_epochs WHERE container = '{c}'"),
        1,
    );
    assert_eq!(
        lab.db
            .text(&format!(
                "SELECT status FROM training_runs WHERE container = '{c}'"
            ))
            .as_deref(),
        Some("running")
    );
    let o = lab.docker().args(["kill", &c]).output().unwrap();
    assert!(o.status.success());
    lab.wait_for(
        &format!(
            "SELECT count(*) FROM alerts WHERE alertname = 'TrainingFailed' AND status = 'firing' AND labels ->> 'container' = '{c}'"
        ),
        1,
    );
    assert_eq!(
        lab.db
            .text(&format!(
                "SELECT status FROM training_runs WHERE container = '{c}'"
            ))
            .as_deref(),
        Some("failed")
    );
    assert_eq!(
        lab.db.count(&format!(
            "SELECT json_extract(context, '$.exit_code') FROM events WHERE container = '{c}' AND kind = 'training_container_died'"
        )),
        137
    );
    let summary = lab
        .db
        .text("SELECT summary FROM alerts WHERE alertname = 'TrainingFailed'")
        .unwrap();
    assert_eq!(
        summary,
        format!("Training in {c} failed after epoch 5/10: exited with code 137 (SIGKILL)")
    );
    assert_eq!(
        lab.db
            .count("SELECT count(*) FROM alerts WHERE alertname = 'TrainingContainerDied'"),
        0
    );
    // `status` tells the same: the run failed, the container exited 137, its last line's age.
    lab.wait_for(
        &format!("SELECT count(*) FROM containers WHERE container = '{c}' AND state = 'exited' AND exit_code = 137"),
        1,
    );
    let text =
        String::from_utf8_lossy(&crate::util::bin(&["status"], &lab.db.path).stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.starts_with("Container") && l.contains(&c))
        .unwrap_or_else(|| panic!("no line for {c}:\n{text}"));
    assert!(
        line.contains("exited 137") && line.contains("last line") && line.contains(" ago"),
        "{line}"
    );
    assert!(text.contains("failed  epoch 5/10"), "{text}");
    assert!(text.contains("ETA –"), "a failed run has no ETA:\n{text}");
    // Started again, it trains again: the alert resolves.
    let o = lab.docker().args(["start", &c]).output().unwrap();
    assert!(o.status.success());
    lab.wait_for(
        "SELECT count(*) FROM alerts WHERE alertname = 'TrainingFailed' AND status = 'resolved'",
        1,
    );
    lab.stop_watch();
}

/// `watch` with `[mlflow]` exports a training while it runs: the MLflow run is RUNNING with the
/// epochs done so far, then FINISHED with every epoch, equal to `history`.
#[test]
fn watch_exports_a_live_training_to_a_real_mlflow_server() {
    if !docker_ready() || !crate::mlflow::mlflow_installed() {
        return;
    }
    let rt = crate::mlflow::runtime();
    let home = tempfile::tempdir().unwrap();
    let server = rt.block_on(crate::mlflow::Server::start(
        home.path(),
        crate::util::free_port(),
    ));
    let url = server.url();
    let mut lab = Lab::new(
        "mlflow",
        &format!("[mlflow]\ntracking_uri = \"{url}\"\nexperiment = \"live\"\ninterval = \"1s\"\n"),
    );
    lab.start_watch(&[]);
    let c = lab.play(
        "train",
        &capture_entries("ultralytics-8.3/normal-json.log"),
        100_000,
    );
    // While it trains: RUNNING, with some epochs and not all.
    let seen_running = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(r) = crate::mlflow::server_runs_if_any(&url, "live")
                .await
                .into_values()
                .next()
                && r["info"]["status"] == "RUNNING"
            {
                let id = r["info"]["run_id"].as_str().unwrap();
                let points = crate::mlflow::history_of(&url, id, "train/box_loss").await;
                if !points.is_empty() && points.len() < 10 {
                    return Some(points.len());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    });
    assert!(
        seen_running.is_some(),
        "no RUNNING run with some epochs was seen; watch log:\n{}",
        lab.log_text()
    );
    lab.wait_exit(&c);
    lab.wait_for(
        "SELECT count(*) FROM training_runs WHERE status = 'completed'",
        1,
    );
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let runs = crate::mlflow::server_runs_if_any(&url, "live").await;
            if runs
                .values()
                .next()
                .is_some_and(|r| r["info"]["status"] == "FINISHED")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not FINISHED: {runs:?}\n{}",
                lab.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    lab.stop_watch();
    rt.block_on(crate::mlflow::assert_server_equals_history(
        &url, "live", &lab.db,
    ));
    assert!(
        lab.log_text()
            .contains("Training history exported to MLflow."),
        "{}",
        lab.log_text()
    );
}

/// The rows `sql` gives (`?1` is `container`), every value as text.
fn rows_of(db: &Db, sql: &str, container: &str) -> Vec<Vec<String>> {
    let conn = db.conn();
    let mut st = conn.prepare(sql).unwrap();
    let n = st.column_count();
    let params: Vec<&dyn rusqlite::ToSql> = if sql.contains("?1") {
        vec![&container]
    } else {
        vec![]
    };
    st.query_map(params.as_slice(), |r| {
        (0..n)
            .map(|i| {
                r.get::<_, rusqlite::types::Value>(i)
                    .map(|v| format!("{v:?}"))
            })
            .collect()
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// The skips `/metrics` counted (those above 0), by reason.
fn skips_of(metrics: &str) -> std::collections::BTreeMap<String, u64> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("trainwatch_parse_skips_total{reason=\""))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(r, v)| (r.to_string(), v.trim().parse().unwrap()))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// The same lines through live follow and through a replay of the container's own json-file
/// log (the same bytes, the same times): identical rows in every view and identical skip
/// counts, since both go through the one ingest driver.
#[test]
fn live_follow_and_replay_of_the_same_log_store_the_same_rows_and_skips() {
    if !docker_ready() {
        return;
    }
    let mut lab = Lab::new(
        "same",
        "stats = false\n[probes]\nnvidia_smi = \"\"\ndata_root = \"\"\n",
    );
    let port = crate::util::free_port();
    lab.watch_args = vec!["--listen".into(), format!("127.0.0.1:{port}")];
    lab.start_watch(&[]);
    // A real training (bars with \r, ANSI, both streams), then service JSON good and bad and a
    // traceback.
    let mut entries = capture_entries("ultralytics-8.3/normal-json.log");
    let extra = [
        "{\"timestamp\":\"2026-03-28T14:30:00Z\",\"level\":\"INFO\",\"service\":\"training\",\"message\":\"Epoch 45/120 completed\",\"context\":{\"epoch\":45,\"loss\":0.0234,\"mAP50\":0.891}}\n",
        "{\"level\":\"INFO\",\"message\":\"cut short\n",
        "{\"level\":\"ERROR\",\"message\":\"loss\",\"context\":{\"loss\":NaN}}\n",
        "{\"message\":\"again cut\n",
        "Traceback (most recent call last):\n  File \"train.py\", line 3, in <module>\n    main()\nRuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB\n",
    ];
    entries.extend(extra.map(|e| (e.to_string(), true)));
    let c = lab.play("train", &entries, 20_000);
    lab.wait_exit(&c);
    lab.wait_for(
        "SELECT count(*) FROM events WHERE message LIKE 'RuntimeError: CUDA out of memory%'",
        1,
    );
    lab.wait_for(
        "SELECT count(*) FROM training_runs WHERE status = 'completed'",
        1,
    );
    // The skips as the live process counted them.
    let metrics = crate::util::get_metrics(port);
    lab.stop_watch();
    let mut live_skips = skips_of(&metrics);
    assert_eq!(
        live_skips.get("invalid_service_json"),
        Some(&2),
        "{metrics}"
    );
    // The run folder the capture names is on no mount of this container: said once, as a
    // replay says it in its summary of folders (not among the skips of its input).
    assert_eq!(
        live_skips.remove("run_folder_unreadable"),
        Some(1),
        "{metrics}"
    );

    // The container's own json-file log, replayed.
    let o = lab
        .docker()
        .args(["inspect", "--format", "{{.LogPath}}", &c])
        .output()
        .unwrap();
    let log = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let copy = lab.db.dir.path().join("copy-json.log");
    std::fs::copy(&log, &copy).unwrap();
    let replayed = Db::new();
    let s = replayed.replay(&[copy.display().to_string()], Some(&c));
    assert_eq!(s.folders.unreadable.len(), 1, "{:?}", s.folders);
    let replay_skips: std::collections::BTreeMap<String, u64> = s
        .skips
        .by_reason
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    assert_eq!(replay_skips, live_skips, "skips: replay vs live");
    // Both say so once, each with its own reason (compared apart from the other events).
    for db in [&lab.db, &replayed] {
        assert_eq!(
            db.count("SELECT count(*) FROM events WHERE stream = 'run_folder'"),
            1
        );
    }

    for sql in [
        "SELECT ts, container, stream, level, kind, message, context, key_ts, seq FROM events \
         WHERE stream NOT IN ('docker', 'run_folder') ORDER BY key_ts, seq, stream, kind",
        "SELECT * FROM training_runs ORDER BY run_id",
        "SELECT * FROM training_epochs ORDER BY run_id, epoch",
        "SELECT ts, container, name, value FROM metric_samples WHERE container = ?1 ORDER BY ts, name",
    ] {
        let (live, replay) = (rows_of(&lab.db, sql, &c), rows_of(&replayed, sql, &c));
        assert!(!live.is_empty(), "{sql}: no rows");
        assert_eq!(live.len(), replay.len(), "{sql}: row counts live vs replay");
        for (l, r) in live.iter().zip(&replay) {
            assert_eq!(l, r, "{sql}");
        }
    }
}

/// `watch` as the library composes it ([`trainwatch::watch::Watch`]), run in this process:
/// a container's epochs are stored while it runs, and a cancelled shutdown drains and commits.
#[test]
fn watch_runs_in_process_and_drains_on_shutdown() {
    if !docker_ready() {
        return;
    }
    let mut lab = Lab::new("inproc", "");
    let cfg = trainwatch::config::Config::load(&lab.config).unwrap();
    let watch = trainwatch::watch::Watch::open(cfg, &lab.db.path).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    let running = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let stopping = rt.block_on(watch.run(None, stop));
        drop(rt);
        stopping.finish()
    });
    let line = |e: u32| {
        format!(
            r#"{{"timestamp":"2026-03-28T14:3{e}:00Z","level":"INFO","service":"training","message":"Epoch {e}/3 completed","context":{{"epoch":{e},"loss":0.{e}5,"mAP50":0.{e}}}}}"#
        )
    };
    let script = format!("echo '{}'; echo '{}'; /busybox sleep 30", line(1), line(2));
    lab.run("epochs", false, &script);
    lab.wait_for("SELECT count(*) FROM epochs", 2);
    shutdown.cancel();
    let stats = running.join().unwrap().unwrap();
    assert!(stats.batches >= 1, "{stats:?}");
    assert_eq!(
        lab.db.text("SELECT group_concat(epoch || ':' || map50, ',') FROM (SELECT * FROM epochs ORDER BY epoch)"),
        Some("1:0.1,2:0.2".into())
    );
}
