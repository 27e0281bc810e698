//! The training history exported to a real MLflow tracking server (`mlflow server` from PyPI,
//! installed by `.ci/run`) on a loopback port with a SQLite backend: the server is killed and
//! started again mid-export, and afterwards its runs, params and metric histories equal
//! `history`'s exactly; exporting again, even with trainwatch's record of the export lost,
//! adds nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{Db, bin, fixture, free_port};

pub(crate) fn mlflow_installed() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import mlflow"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        crate::util::unavailable("skipping: mlflow is not installed (pip install mlflow)");
    }
    ok
}

/// `mlflow server` in a process group of its own (its workers are killed with it).
pub(crate) struct Server {
    child: Child,
    port: u16,
}

impl Server {
    pub(crate) async fn start(dir: &Path, port: u16) -> Server {
        use std::os::unix::process::CommandExt;
        let child = Command::new("python3")
            .args([
                "-m",
                "mlflow",
                "server",
                "--workers",
                "1",
                "--host",
                "127.0.0.1",
            ])
            .arg("--port")
            .arg(port.to_string())
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
            // The artifact proxy (`--serve-artifacts`, on by default): runs' artifact_uri is
            // `mlflow-artifacts:/...`, kept under this folder.
            .arg("--artifacts-destination")
            .arg(dir.join("artifacts"))
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("server-{port}.log"))).unwrap())
            .process_group(0)
            .spawn()
            .expect("start mlflow server");
        let s = Server { child, port };
        let health = format!("{}/health", s.url());
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if reqwest::get(&health)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let log =
            std::fs::read_to_string(dir.join(format!("server-{port}.log"))).unwrap_or_default();
        panic!("mlflow server did not become ready:\n{log}");
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL to the whole group: no graceful shutdown.
    fn kill(&mut self) {
        let pgid = self.child.id() as libc::pid_t;
        if self.child.try_wait().is_ok_and(|s| s.is_none()) && pgid > 1 {
            // SAFETY: killpg only sends a signal; the group is the server's own.
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) async fn api(server: &str, method: &str, path: &str, body: Value) -> Value {
    let client = reqwest::Client::new();
    let url = format!("{server}/api/2.0/mlflow/{path}");
    let resp = if method == "GET" {
        let q: Vec<(String, String)> = body
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        client.get(url).query(&q).send().await
    } else {
        client.post(url).json(&body).send().await
    }
    .unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json().await.unwrap()
}

/// Every run of the experiment, by its `trainwatch.run_id` tag.
pub(crate) async fn server_runs(server: &str, experiment: &str) -> BTreeMap<i64, Value> {
    let exp = api(
        server,
        "GET",
        "experiments/get-by-name",
        json!({ "experiment_name": experiment }),
    )
    .await;
    let id = exp["experiment"]["experiment_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut out = BTreeMap::new();
    let mut token = String::new();
    loop {
        let mut body = json!({ "experiment_ids": [id], "max_results": 200 });
        if !token.is_empty() {
            body["page_token"] = json!(token);
        }
        let page = api(server, "POST", "runs/search", body).await;
        for r in page["runs"].as_array().cloned().unwrap_or_default() {
            let tw: i64 = tag(&r, "trainwatch.run_id").unwrap().parse().unwrap();
            assert!(
                out.insert(tw, r).is_none(),
                "run {tw} is on the server twice"
            );
        }
        match page["next_page_token"].as_str() {
            Some(t) if !t.is_empty() => token = t.to_string(),
            _ => return out,
        }
    }
}

pub(crate) fn tag(run: &Value, key: &str) -> Option<String> {
    run["data"]["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| t["value"].as_str().unwrap().to_string())
}

/// As [`server_runs`], empty while the experiment does not exist yet.
pub(crate) async fn server_runs_if_any(server: &str, experiment: &str) -> BTreeMap<i64, Value> {
    let exp = reqwest::Client::new()
        .get(format!("{server}/api/2.0/mlflow/experiments/get-by-name"))
        .query(&[("experiment_name", experiment)])
        .send()
        .await;
    if !exp.is_ok_and(|r| r.status().is_success()) {
        return BTreeMap::new();
    }
    server_runs(server, experiment).await
}

/// A metric's history on the server: (step, value), in step order.
pub(crate) async fn history_of(server: &str, run: &str, key: &str) -> Vec<(i64, Value)> {
    let h = api(
        server,
        "GET",
        "metrics/get-history",
        json!({ "run_id": run, "metric_key": key }),
    )
    .await;
    let mut points: Vec<(i64, Value)> = h["metrics"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|m| (m["step"].as_i64().unwrap(), m["value"].clone()))
        .collect();
    points.sort_by_key(|p| p.0);
    points
}

fn ms(ts: &str) -> i64 {
    trainwatch::time::parse_rfc3339(ts).unwrap() / 1_000_000
}

/// The runs' history as `history --format json` prints it.
fn history_runs(db: &Path) -> Vec<Value> {
    let o = bin(&["history", "--format", "json"], db);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice::<Vec<Value>>(&o.stdout).unwrap()
}

/// Checks the server against `history`: one MLflow run per training run with its name,
/// status, times, tags and params, and every results.csv column of `history --run N --format
/// csv` as a metric with one point per epoch, equal to the digit.
#[expect(
    clippy::too_many_lines,
    reason = "compares every field the server holds with history, one after another"
)]
pub(crate) async fn assert_server_equals_history(server: &str, experiment: &str, db: &Db) {
    // A run is created once it has an epoch or has ended.
    let runs: Vec<Value> = history_runs(&db.path)
        .into_iter()
        .filter(|h| h["status"] != "running" || h["epochs_done"].as_i64() > Some(0))
        .collect();
    let on_server = server_runs(server, experiment).await;
    assert_eq!(on_server.len(), runs.len(), "runs on the server");
    let conn = db.conn();
    for h in &runs {
        let id = h["run_id"].as_i64().unwrap();
        let r = &on_server[&id];
        let info = &r["info"];
        let status = h["status"].as_str().unwrap();
        let want_status = match status {
            "running" => "RUNNING",
            "completed" | "early_stopped" => "FINISHED",
            "failed" => "FAILED",
            _ => "KILLED",
        };
        assert_eq!(info["status"], want_status, "run {id}");
        assert_eq!(
            info["start_time"],
            ms(h["started_at"].as_str().unwrap()),
            "run {id}"
        );
        match h["ended_at"].as_str() {
            Some(e) if status != "running" => assert_eq!(info["end_time"], ms(e), "run {id}"),
            _ => assert!(info["end_time"].is_null(), "run {id}: {info}"),
        }
        let save_dir = h["save_dir"].as_str();
        let started = h["started_at"].as_str().unwrap();
        let name = match save_dir {
            Some(d) => d.rsplit('/').next().unwrap().to_string(),
            None => format!("{}-{}", h["container"].as_str().unwrap(), &started[..16]),
        };
        assert_eq!(info["run_name"], name.as_str(), "run {id}");
        assert_eq!(tag(r, "save_dir").as_deref(), save_dir);
        assert_eq!(tag(r, "trainwatch.status").as_deref(), Some(status));
        // Why a failed or interrupted run ended, as `history` says it.
        assert_eq!(
            tag(r, "failure").as_deref(),
            h["failure"].as_str(),
            "run {id}"
        );
        let (container, model, version, params): (String, Option<String>, Option<String>, Option<String>) = conn
            .query_row(
                "SELECT container, model, ultralytics_version, params FROM training_runs WHERE run_id = ?1",
                [id],
                |x| Ok((x.get(0)?, x.get(1)?, x.get(2)?, x.get(3)?)),
            )
            .unwrap();
        assert_eq!(tag(r, "container"), Some(container));
        assert_eq!(tag(r, "model"), model, "run {id}");
        assert_eq!(tag(r, "ultralytics_version"), version, "run {id}");
        // Params: the settings line, every key and value as printed.
        let want: BTreeMap<String, String> = params
            .map(|p| serde_json::from_str::<BTreeMap<String, String>>(&p).unwrap())
            .unwrap_or_default();
        let got: BTreeMap<String, String> = r["data"]["params"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|p| {
                (
                    p["key"].as_str().unwrap().to_string(),
                    p["value"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(got, want, "params of run {id}");

        // Metrics: history's results.csv, column by column.
        let o = bin(
            &["history", "--run", &id.to_string(), "--format", "csv"],
            &db.path,
        );
        assert!(o.status.success());
        let text = String::from_utf8(o.stdout).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        // A running run's last epoch is sent once validated.
        let settled = if status == "running"
            && rows.last().is_some_and(|r| {
                header
                    .iter()
                    .zip(r.iter())
                    .all(|(c, v)| !c.starts_with("metrics/") || v.is_empty())
            }) {
            rows.len() - 1
        } else {
            rows.len()
        };
        let run_uuid = info["run_id"].as_str().unwrap();
        let logged: Vec<String> = r["data"]["metrics"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|m| m["key"].as_str().unwrap().to_string())
            .collect();
        for (c, name) in header.iter().enumerate().skip(1) {
            if *name == "time" {
                // Not logged, as Ultralytics' own callback does not.
                continue;
            }
            let key: String = name.chars().filter(|ch| !matches!(ch, '(' | ')')).collect();
            let want: Vec<(i64, &str)> = rows[..settled]
                .iter()
                .filter(|row| !row[c].is_empty())
                .map(|row| (row[0].parse().unwrap(), row[c]))
                .collect();
            if want.is_empty() {
                assert!(!logged.contains(&key), "run {id}: {key} has no values");
                continue;
            }
            let mut got = history_of(server, run_uuid, &key).await;
            // A completed run's final validation of best.pt, one step after its last epoch.
            if key.starts_with("metrics/")
                && matches!(status, "completed" | "early_stopped")
                && got.len() == want.len() + 1
            {
                let last = want.last().map_or(0, |w| w.0);
                assert_eq!(got.pop().map(|p| p.0), Some(last + 1), "run {id} {key}");
            }
            assert_eq!(
                got.iter().map(|p| p.0).collect::<Vec<_>>(),
                want.iter().map(|p| p.0).collect::<Vec<_>>(),
                "run {id} {key}: one point per epoch"
            );
            for ((step, v), (_, cell)) in got.iter().zip(&want) {
                let expected: f64 = cell.parse().unwrap();
                let same = match v {
                    Value::String(s) if s == "NaN" => expected.is_nan(),
                    Value::Number(n) if expected.is_infinite() => {
                        n.as_f64().unwrap().abs() == f64::MAX
                            && n.as_f64().unwrap().signum() == expected.signum()
                    }
                    Value::Number(n) => n.as_f64().unwrap() == expected,
                    _ => false,
                };
                assert!(same, "run {id} {key} step {step}: {v} vs history {cell}");
            }
        }
    }
}

/// The fixtures' captures, each replayed `copies` times into a container of its own, every
/// copy a day after the previous one with a save_dir of its own: many runs of every kind.
fn fleet_history(copies: usize) -> (Db, tempfile::TempDir) {
    let db = Db::new();
    let dir = tempfile::tempdir().unwrap();
    let mut captures = Vec::new();
    for set in [
        "ultralytics",
        "ultralytics-8.3",
        "ultralytics-older",
        "ultralytics-users",
    ] {
        let mut names: Vec<PathBuf> = std::fs::read_dir(fixture(set))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with("-json.log"))
            .collect();
        names.sort();
        captures.extend(names);
    }
    for (n, capture) in captures.iter().enumerate() {
        let text = std::fs::read_to_string(capture).unwrap();
        let mut out = String::new();
        for copy in 0..copies {
            for line in text.lines() {
                let mut entry: Value = serde_json::from_str(line).unwrap();
                let t = trainwatch::time::parse_rfc3339(entry["time"].as_str().unwrap()).unwrap();
                entry["time"] = json!(trainwatch::time::format_ns(
                    t + copy as i64 * 86_400_000_000_000
                ));
                let log = entry["log"]
                    .as_str()
                    .unwrap()
                    .replace("/runs/", &format!("/runs/c{copy}-"));
                entry["log"] = json!(log);
                out.push_str(&entry.to_string());
                out.push('\n');
            }
        }
        let path = dir.path().join(format!("capture{n}.log"));
        std::fs::write(&path, out).unwrap();
        let s = db.replay(&[path.display().to_string()], Some(&format!("gpu{n}")));
        assert_eq!(s.skips.total(), 0, "{}", capture.display());
    }
    (db, dir)
}

fn export(db: &Path, server: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "export",
        "mlflow",
        "--tracking-uri",
        server,
        "--experiment",
        "fleet",
    ];
    args.extend_from_slice(extra);
    bin(&args, db)
}

fn summary(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "export failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_killed_and_restarted_mlflow_server_ends_up_with_exactly_the_history() {
    if !mlflow_installed() {
        return;
    }
    // Replayed before the runtime starts (the store writer blocks).
    let (db, _captures) = fleet_history(5);
    let runs = db.count("SELECT count(*) FROM runs");
    let epochs = db.count("SELECT count(*) FROM epochs");
    assert!(runs >= 80, "{runs} runs");
    runtime().block_on(killed_and_restarted(db, runs, epochs));
}

async fn killed_and_restarted(db: Db, runs: i64, epochs: i64) {
    let home = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Server::start(home.path(), port).await;
    let url = server.url();

    // The export, killed under it once a quarter of the epochs are acknowledged.
    let child = Command::new(env!("CARGO_BIN_EXE_trainwatch"))
        .args([
            "export",
            "mlflow",
            "--tracking-uri",
            &url,
            "--experiment",
            "fleet",
        ])
        .args(["--retry-for", "300s"])
        .env("TRAINWATCH_DB", &db.path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let acknowledged = loop {
        let n = db.count("SELECT count(*) FROM mlflow_epochs");
        if n >= epochs / 4 {
            break n;
        }
        assert!(Instant::now() < deadline, "export made no progress: {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    server.kill();
    assert!(
        acknowledged < epochs,
        "the export ended before the kill ({acknowledged} of {epochs} epochs)"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = db.count("SELECT count(*) FROM mlflow_epochs");
    assert!(during < epochs, "{during} of {epochs} epochs while down");
    let _server = Server::start(home.path(), port).await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let first = summary(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("retrying"),
        "the export did not meet the outage: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(first.contains(" runs created"), "{first}");
    assert_eq!(db.count("SELECT count(*) FROM mlflow_epochs"), epochs);
    assert_eq!(
        db.count(
            "SELECT count(*) FROM mlflow_runs WHERE error IS NULL AND status_sent IS NOT NULL"
        ),
        runs
    );
    assert_server_equals_history(&url, "fleet", &db).await;

    // Again: nothing left to send.
    let again = summary(&export(&db.path, &url, &[]));
    assert!(
        again.ends_with("0 runs created, 0 runs updated, 0 params, 0 metric points in 1 requests"),
        "{again}"
    );

    // trainwatch's record of the export lost (a restored backup): the runs are found by
    // their key, the points sent again are the same points.
    {
        let conn = rusqlite::Connection::open(&db.path).unwrap();
        conn.execute_batch("DELETE FROM mlflow_epochs; DELETE FROM mlflow_runs;")
            .unwrap();
    }
    let resent = summary(&export(&db.path, &url, &[]));
    assert!(resent.contains(": 0 runs created, "), "{resent}");
    assert_server_equals_history(&url, "fleet", &db).await;
}

/// A run the server refuses (a param already logged with another value) is reported, the
/// others are exported, and `--retry-failed` sends it again once the cause is gone.
#[test]
fn a_refused_run_is_reported_and_sent_again_on_request() {
    if !mlflow_installed() {
        return;
    }
    let db = Db::new();
    for (name, c) in [("normal", "a"), ("earlystop", "b")] {
        db.replay(
            &[fixture(&format!("ultralytics/{name}-json.log"))
                .display()
                .to_string()],
            Some(c),
        );
    }
    runtime().block_on(refused(db));
}

async fn refused(db: Db) {
    // No server at all: an error that says why, and nothing recorded as sent.
    let down = format!("http://127.0.0.1:{}", free_port());
    let o = export(&db.path, &down, &["--retry-for", "0s"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("did not answer") && err.contains("Connection refused"),
        "{err}"
    );
    assert_eq!(db.count("SELECT count(*) FROM mlflow_runs"), 0);
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(home.path(), free_port()).await;
    let url = server.url();
    // Run 1 exists on the server with another lr0 (tagged with its key, so it is found).
    let exp = api(
        &url,
        "POST",
        "experiments/create",
        json!({ "name": "fleet" }),
    )
    .await;
    let exp = exp["experiment_id"].as_str().unwrap();
    let key = {
        let conn = db.conn();
        let r = trainwatch::store::mlflow::run(&conn, 1).unwrap().unwrap();
        trainwatch::output::mlflow::run_key(&r)
    };
    let created = api(
        &url,
        "POST",
        "runs/create",
        json!({ "experiment_id": exp, "tags": [{ "key": "trainwatch.run_key", "value": key }] }),
    )
    .await;
    let uuid = created["run"]["info"]["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    api(
        &url,
        "POST",
        "runs/log-batch",
        json!({ "run_id": uuid, "params": [{ "key": "lr0", "value": "0.5" }] }),
    )
    .await;

    let o = export(&db.path, &url, &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("run 1 refused") && err.contains("INVALID_PARAMETER_VALUE"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("1 runs created"));
    // Not tried again without being asked.
    let o = export(&db.path, &url, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("0 params"));

    // The stray run deleted on the server: the retry creates run 1 anew.
    api(&url, "POST", "runs/delete", json!({ "run_id": uuid })).await;
    let o = export(&db.path, &url, &["--retry-failed"]);
    let s = summary(&o);
    assert!(s.contains("1 runs created"), "{s}");
    assert_server_equals_history(&url, "fleet", &db).await;
    let per_run: HashMap<i64, Value> = server_runs(&url, "fleet").await.into_iter().collect();
    assert_eq!(per_run.len(), 2);
}
