//! The deployment: the image `packaging/build-image.sh` builds, run as `packaging/compose.yaml`
//! runs it (socket mounted, the data root read-only, the database on a named volume, a read-only
//! root file system, no capabilities), against the real daemon.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::docker::{IMAGE as BUSYBOX, docker_ready};
use crate::util::{Db, ResultsCsv, fixture};

const TW_IMAGE: &str = "trainwatch-test";

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker").args(args).output().expect("docker")
}

fn docker_ok(args: &[&str]) -> String {
    let o = docker(args);
    assert!(
        o.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Builds the image with the packaging script; returns its versioned tag.
fn build_image() -> String {
    let o = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/build-image.sh"))
        .env("IMAGE", TW_IMAGE)
        .output()
        .expect("run packaging/build-image.sh");
    assert!(
        o.status.success(),
        "build-image.sh failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let tag = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert_eq!(tag, format!("{TW_IMAGE}:{}", env!("CARGO_PKG_VERSION")));
    tag
}

/// The Compose tool: `docker compose` (v2) where the plugin is installed, else `docker-compose`.
fn compose_tool() -> Vec<&'static str> {
    let v2 = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if v2 {
        vec!["docker", "compose"]
    } else {
        vec!["docker-compose"]
    }
}

/// `packaging/compose.yaml` as a user on a host without the NVIDIA runtime runs it: the block
/// between `# gpu-begin` and `# gpu-end` deleted, as its comment says.
fn compose_without_gpu() -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/compose.yaml"),
    )
    .unwrap();
    let mut out = String::new();
    let mut skip = false;
    for line in text.lines() {
        if line.trim_start().starts_with("# gpu-begin") {
            skip = true;
        }
        if !skip {
            out.push_str(line);
            out.push('\n');
        }
        if line.trim_start().starts_with("# gpu-end") {
            skip = false;
        }
    }
    assert!(
        text.contains("driver: nvidia") && !out.contains("driver: nvidia"),
        "no gpu block found"
    );
    out
}

/// Everything the test made on the daemon, removed on drop.
struct Deployment {
    id: String,
    containers: Vec<String>,
    dir: tempfile::TempDir,
    /// The compose command with its project and files.
    compose: Vec<String>,
    env: Vec<(String, String)>,
}

impl Deployment {
    fn compose(&self, args: &[&str]) -> String {
        let o = Command::new(&self.compose[0])
            .args(&self.compose[1..])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path())
            .output()
            .expect("compose");
        assert!(
            o.status.success(),
            "{} {}: {}",
            self.compose.join(" "),
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn name(&self, what: &str) -> String {
        format!("twd-{}-{what}", self.id)
    }

    fn run(&mut self, what: &str, args: &[&str]) -> String {
        let name = self.name(what);
        let mut all = vec!["run", "-d", "--name", &name];
        all.extend_from_slice(args);
        docker_ok(&all);
        self.containers.push(name.clone());
        name
    }

    /// One number from `trainwatch sql` run inside the trainwatch container.
    fn sql(&self, tw: &str, query: &str) -> Option<i64> {
        let o = docker(&["exec", tw, "trainwatch", "sql", "--format", "csv", query]);
        if !o.status.success() {
            return None;
        }
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .nth(1)?
            .trim()
            .parse()
            .ok()
    }

    fn wait_sql(&self, tw: &str, query: &str, want: i64) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut got = None;
        while Instant::now() < deadline {
            got = self.sql(tw, query);
            if got == Some(want) {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!(
            "{query}: got {got:?}, want {want}; trainwatch's logs:\n{}",
            logs(tw)
        );
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker(&["rm", "-f", "-v", c]);
        }
        if !self.compose.is_empty() {
            let _ = Command::new(&self.compose[0])
                .args(&self.compose[1..])
                .args(["down", "-v", "--timeout", "5"])
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .current_dir(self.dir.path())
                .output();
        }
    }
}

fn logs(container: &str) -> String {
    let o = docker(&["logs", container]);
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool, tw: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!(
        "timed out waiting for {what}; trainwatch's logs:\n{}",
        logs(tw)
    );
}

/// A real Ultralytics capture as files a busybox loop prints in order, each to the stream
/// Docker logged it on; split at the entry that starts epoch `split_epoch`.
fn play_dirs(root: &Path, capture: &str, split_epoch: u32) -> (PathBuf, PathBuf) {
    let (a, b) = (root.join("play1"), root.join("play2"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let mut dir = &a;
    let marker = format!(" {split_epoch}/10 ");
    for (n, line) in capture.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let log = v["log"].as_str().unwrap();
        // The first progress row of the split epoch, after the previous epoch's `all` row.
        if dir == &a && log.contains(&marker) && n > 0 {
            dir = &b;
        }
        let ext = if v["stream"] == "stderr" {
            "err"
        } else {
            "out"
        };
        std::fs::write(dir.join(format!("{n:05}.{ext}")), log).unwrap();
    }
    assert!(std::fs::read_dir(&b).unwrap().count() > 10, "no split");
    (a, b)
}

const PLAY: &str = "for f in /play/*; do case $f in *.err) /busybox cat $f >&2;; *) /busybox cat $f;; esac; /busybox usleep 20000; done";

/// GET `path` on 127.0.0.1:`port`; the status code and the body.
fn http_get(port: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split(' ').nth(1)?.parse().ok()?;
    Some((code, out.split_once("\r\n\r\n")?.1.to_string()))
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one deployment scenario, step by step"
)]
fn the_compose_service_follows_containers_stores_on_its_volume_and_stops_cleanly() {
    if !docker_ready() {
        return;
    }
    let image = build_image();
    let id = format!(
        "{}{}",
        std::process::id(),
        trainwatch::time::now_ns() % 1_000_000
    );
    let mut d = Deployment {
        compose: Vec::new(),
        env: Vec::new(),
        containers: Vec::new(),
        dir: tempfile::tempdir().unwrap(),
        id,
    };
    let root = d.dir.path().to_path_buf();
    let project = format!("twd{}", d.id);
    let (net, vol) = (
        format!("{project}_default"),
        format!("{project}_trainwatch-data"),
    );
    let label = format!("tw.deploy={}", d.id);
    let tw = d.name("tw");

    // The data root, mounted read-only by the compose file; the disk probe measures it.
    let azaion = root.join("azaion");
    std::fs::create_dir_all(azaion.join("models")).unwrap();
    let hook = d.name("hook");
    // The config beside compose.yaml, where the compose file looks for it.
    std::fs::write(
        root.join("trainwatch.toml"),
        format!(
            "[docker]\nflush_ms = 50\n[[docker.include]]\nlabel = \"{label}\"\nrole = \"training\"\n\
             [probes]\ninterval = \"1s\"\nnvidia_smi = \"\"\ndata_root = \"/azaion\"\n\
             [[notify.receivers]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://{hook}:8080/cgi-bin/hook\"\n"
        ),
    )
    .unwrap();
    std::fs::write(root.join("compose.yaml"), compose_without_gpu()).unwrap();
    // The test's own: its label with the follow label turned on, and a host name that is not
    // the container's id, so only its mount table tells trainwatch which container is its own;
    // a fast healthcheck.
    std::fs::write(
        root.join("override.yaml"),
        format!(
            "services:\n  trainwatch:\n    hostname: gpu-server-1\n    labels:\n      tw.deploy: \"{}\"\n      trainwatch.follow: \"true\"\n    healthcheck:\n      interval: 1s\n      start_period: 0s\n",
            d.id
        ),
    )
    .unwrap();
    d.compose = compose_tool()
        .into_iter()
        .map(String::from)
        .chain(["-p", &project, "-f", "compose.yaml", "-f", "override.yaml"].map(String::from))
        .collect();
    d.env = [
        ("TRAINWATCH_IMAGE", image.as_str()),
        ("TRAINWATCH_CONTAINER", tw.as_str()),
        ("TRAINWATCH_DATA_ROOT", &azaion.display().to_string()),
        ("TRAINWATCH_PUBLISH", "127.0.0.1:"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into();
    d.compose(&["up", "-d"]);

    // A webhook receiver on the compose network, reached by its name: busybox httpd with a CGI
    // that appends each body to a file.
    let www = root.join("www");
    std::fs::create_dir_all(www.join("cgi-bin")).unwrap();
    let cgi = www.join("cgi-bin/hook");
    std::fs::write(
        &cgi,
        "#!/busybox sh\n/busybox cat >> /www/got.jsonl\n/busybox echo >> /www/got.jsonl\n\
         /busybox echo 'Content-Type: text/plain'\n/busybox echo\n/busybox echo ok\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cgi, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&www, std::fs::Permissions::from_mode(0o777)).unwrap();
    let www_mount = format!("{}:/www", www.display());
    d.run(
        "hook",
        &[
            "--network",
            &net,
            "-v",
            &www_mount,
            BUSYBOX,
            "/busybox",
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            "/www",
        ],
    );

    // The training: epochs 1-5 now, 6-10 only while trainwatch is stopped.
    let capture = std::fs::read_to_string(fixture("ultralytics/normal-json.log")).unwrap();
    let (play1, play2) = play_dirs(&root, &capture, 6);
    let ctl = root.join("ctl");
    std::fs::create_dir_all(&ctl).unwrap();
    let mounts = [
        format!("{}:/play:ro", play1.display()),
        format!("{}:/play2:ro", play2.display()),
        format!("{}:/ctl", ctl.display()),
    ];
    let script = format!(
        "{PLAY}; while [ ! -e /ctl/go ]; do /busybox usleep 100000; done; {}; /busybox touch /ctl/done; /busybox sleep 3600",
        PLAY.replace("/play/", "/play2/")
    );
    let trainer = d.run(
        "train",
        &[
            "--label", &label, "-v", &mounts[0], "-v", &mounts[1], "-v", &mounts[2], BUSYBOX,
            "/busybox", "sh", "-c", &script,
        ],
    );
    let oom = d.run(
        "oom",
        &[
            "--label", &label, BUSYBOX, "/busybox", "sh", "-c",
            "echo 'torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB'; /busybox sleep 3600",
        ],
    );

    let epochs_of = |c: &str| {
        format!("SELECT count(*) FROM events WHERE container = '{c}' AND kind = 'epoch_completed'")
    };
    d.wait_sql(&tw, &epochs_of(&trainer), 5);
    wait_until(
        "the healthcheck to pass",
        || docker_ok(&["inspect", "-f", "{{.State.Health.Status}}", &tw]) == "healthy",
        &tw,
    );
    // The hardening the compose file asks for is what runs.
    assert_eq!(
        docker_ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.ReadonlyRootfs}} {{.HostConfig.CapDrop}} {{.HostConfig.Init}}",
            &tw
        ]),
        "true [ALL] true"
    );
    // The page, /healthz and /metrics on the published port.
    let port = docker_ok(&["port", &tw, "9750/tcp"]);
    let port = port
        .lines()
        .next()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let (code, body) = http_get(&port, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200);
    assert!(body.contains("trainwatch_"), "{body}");
    // The receiver, named by its container name on the network, got the OOM alert.
    wait_until(
        "the webhook delivery",
        || {
            std::fs::read_to_string(www.join("got.jsonl"))
                .is_ok_and(|s| s.contains("GpuOutOfMemory") && s.contains(&oom))
        },
        &tw,
    );
    // The disk probe reads the read-only data root.
    d.wait_sql(
        &tw,
        "SELECT count(*) > 0 FROM metric_samples WHERE name = 'disk_usage_azaion_pct'",
        1,
    );

    // compose stop (docker stop): SIGTERM, a clean shutdown with exit 0.
    d.compose(&["stop"]);
    assert_eq!(
        docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", &tw]),
        "0",
        "{}",
        logs(&tw)
    );
    assert!(logs(&tw).contains("\"Stopped.\""), "{}", logs(&tw));

    // The training goes on while trainwatch is down, then trainwatch starts again.
    std::fs::write(ctl.join("go"), "").unwrap();
    wait_until(
        "the second half to be printed",
        || ctl.join("done").exists(),
        &tw,
    );
    d.compose(&["start"]);
    d.wait_sql(
        &tw,
        &format!("SELECT count(*) FROM training_runs WHERE container = '{trainer}' AND status = 'completed'"),
        1,
    );
    d.wait_sql(&tw, &epochs_of(&trainer), 10);
    // It never followed itself.
    assert_eq!(
        d.sql(
            &tw,
            &format!("SELECT count(*) FROM events WHERE container = '{tw}'")
        ),
        Some(0)
    );
    d.compose(&["stop"]);
    assert_eq!(
        docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", &tw]),
        "0"
    );

    // The database on the named volume: every epoch once, with results.csv's values.
    assert_eq!(
        docker_ok(&["volume", "inspect", "-f", "{{.Name}}", &vol]),
        vol
    );
    let db = Db::new();
    for f in ["trainwatch.db", "trainwatch.db-wal"] {
        let _ = docker(&[
            "cp",
            &format!("{tw}:/var/lib/trainwatch/{f}"),
            &db.dir
                .path()
                .join(f.replace("trainwatch", "tw"))
                .display()
                .to_string(),
        ]);
    }
    let run = db.count(&format!(
        "SELECT run_id FROM training_runs WHERE container = '{trainer}'"
    ));
    crate::replay::assert_epochs_match(
        &db,
        run,
        &ResultsCsv::load(&fixture("ultralytics/normal.results.csv")),
    );
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM events WHERE container = '{trainer}' AND kind = 'epoch_completed'"
        )),
        10
    );
}

/// The packaging files as their tools read them: the unit by `systemd-analyze verify`, the
/// compose file by Compose itself (GPU block included), the example config by trainwatch.
#[test]
fn packaging_files_are_valid_for_their_tools() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging");
    let tmp = tempfile::tempdir().unwrap();

    let unit = std::fs::read_to_string(dir.join("trainwatch.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/trainwatch watch"));
    // verify checks that ExecStart's program exists: point it at the one just built.
    let unit = unit.replace(
        "/usr/local/bin/trainwatch",
        env!("CARGO_BIN_EXE_trainwatch"),
    );
    let path = tmp.path().join("trainwatch.service");
    std::fs::write(&path, unit).unwrap();
    match Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
    {
        Ok(o) => assert!(
            o.status.success() && o.stderr.is_empty(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => crate::util::unavailable(&format!(
            "skipping the unit check: systemd-analyze not runnable: {e}"
        )),
    }

    let tool = compose_tool();
    let o = Command::new(tool[0])
        .args(&tool[1..])
        .arg("-f")
        .arg(dir.join("compose.yaml"))
        .arg("config")
        .env(
            "TRAINWATCH_CONFIG_FILE",
            dir.join("trainwatch.example.toml"),
        )
        .output();
    match o {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success(),
                "compose config: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            for want in [
                "/var/run/docker.sock",
                "/azaion",
                "--ingestor",
                "trainwatch-data",
                "nvidia",
            ] {
                assert!(text.contains(want), "{want} missing from:\n{text}");
            }
        }
        Err(e) => crate::util::unavailable(&format!("skipping the compose check: {e}")),
    }

    let cfg = trainwatch::config::Config::load(&dir.join("trainwatch.example.toml"))
        .expect("the example config loads");
    assert_eq!(cfg.probes.data_root, Path::new("/azaion"));
    assert_eq!(cfg.docker.include.len(), 2);
}
