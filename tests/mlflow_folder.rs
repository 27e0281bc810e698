//! The MLflow export as Ultralytics' own MLflow callback logs a run, against a real `mlflow
//! server` with its artifact proxy: the resolved params, every results.csv column at full
//! precision with the callback's 0-based steps, the run folder's files as artifacts; and a
//! training that logs itself linked, not created twice.

use std::path::Path;

use serde_json::{Value, json};

use crate::mlflow::{Server, api, history_of, mlflow_installed, runtime, server_runs, tag};
use crate::util::{Db, RecordedFolder, bin, fixture, free_port};

/// Deterministic bytes standing in for a checkpoint.
fn checkpoint(len: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// The normal run's folder as Ultralytics leaves it, written an hour ago (settled).
fn ended_run_folder(dir: &Path) {
    std::fs::create_dir_all(dir.join("weights")).unwrap();
    let csv = std::fs::read_to_string(fixture("ultralytics/normal.results.csv")).unwrap();
    std::fs::write(dir.join("results.csv"), csv).unwrap();
    std::fs::write(
        dir.join("args.yaml"),
        "task: detect\nmode: train\nmodel: yolo11n.yaml\nepochs: 10\noptimizer: auto\nlr0: 0.01\n",
    )
    .unwrap();
    std::fs::write(dir.join("weights/best.pt"), checkpoint(2_500_000, 1)).unwrap();
    std::fs::write(dir.join("weights/last.pt"), checkpoint(3_100_000, 2)).unwrap();
    std::fs::write(dir.join("results.png"), checkpoint(40_000, 3)).unwrap();
    std::fs::write(dir.join("notes.txt"), "not an artifact").unwrap();
    for f in [
        "results.csv",
        "args.yaml",
        "weights/best.pt",
        "weights/last.pt",
        "results.png",
        "notes.txt",
    ] {
        let st = std::process::Command::new("touch")
            .args(["-d", "1 hour ago"])
            .arg(dir.join(f))
            .status()
            .unwrap();
        assert!(st.success());
    }
}

fn export(db: &Db, cfg: &Path, server: &str) -> String {
    let o = bin(
        &[
            "--config",
            &cfg.to_string_lossy(),
            "export",
            "mlflow",
            "--tracking-uri",
            server,
            "--experiment",
            "fleet",
        ],
        &db.path,
    );
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

async fn get_bytes(url: &str) -> Vec<u8> {
    let r = reqwest::get(url).await.unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
    r.bytes().await.unwrap().to_vec()
}

#[test]
fn an_ended_run_is_exported_as_ultralytics_callback_logs_it_with_its_artifacts() {
    if !mlflow_installed() {
        return;
    }
    let db = Db::new();
    let root = db.dir.path().join("runs");
    ended_run_folder(&root.join("normal"));
    let map = format!("/work/fx/runs={}", root.display());
    let log = fixture("ultralytics/normal-json.log");
    let o = bin(
        &[
            "replay",
            "--container",
            "yolo",
            "--path-map",
            &map,
            &log.to_string_lossy(),
        ],
        &db.path,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = db.dir.path().join("trainwatch.toml");
    std::fs::write(&cfg, "[mlflow]\nstep = \"zero_based\"\n").unwrap();
    runtime().block_on(async {
        let home = tempfile::tempdir().unwrap();
        let server = Server::start(home.path(), free_port()).await;
        let url = server.url();
        let said = export(&db, &cfg, &url);
        assert!(
            said.contains("1 runs created") && said.contains("5 artifact file(s) uploaded"),
            "{said}"
        );
        let runs = server_runs(&url, "fleet").await;
        assert_eq!(runs.len(), 1);
        let run = &runs[&1];
        let uuid = run["info"]["run_id"].as_str().unwrap();
        // The params it trained with (the console's optimizer line), not `auto`.
        let params = params_of(run);
        let param = |k: &str| params.get(k).cloned();
        assert_eq!(param("optimizer").as_deref(), Some("AdamW"));
        assert_eq!(param("lr0").as_deref(), Some("0.001667"));
        assert_eq!(param("epochs").as_deref(), Some("10"));
        // Every column of results.csv, at the callback's steps (epoch - 1), full precision.
        let csv = std::fs::read_to_string(root.join("normal/results.csv")).unwrap();
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        for column in [
            "val/box_loss",
            "lr/pg0",
            "metrics/mAP50-95(B)",
            "train/dfl_loss",
        ] {
            let c = header.iter().position(|h| *h == column).unwrap();
            let key: String = column.chars().filter(|ch| !"()".contains(*ch)).collect();
            let got = history_of(&url, uuid, &key).await;
            let want: Vec<(i64, f64)> = rows
                .iter()
                .map(|r| (r[0].parse::<i64>().unwrap() - 1, r[c].parse().unwrap()))
                .collect();
            let mut got: Vec<(i64, f64)> =
                got.iter().map(|(s, v)| (*s, v.as_f64().unwrap())).collect();
            // The final validation of best.pt, one step after the last epoch, as the callback
            // logs it: the metrics, not the losses.
            if column.starts_with("metrics/") {
                assert_eq!(got.pop().map(|p| p.0), Some(rows.len() as i64), "{key}");
            }
            assert_eq!(got, want, "{key}");
        }
        // The artifacts, where the callback puts them, byte for byte.
        let size = |f: &str| {
            std::fs::metadata(root.join("normal").join(f))
                .unwrap()
                .len() as i64
        };
        assert_eq!(
            artifacts_of(&url, uuid).await,
            [
                ("args.yaml".to_string(), size("args.yaml")),
                ("results.csv".into(), size("results.csv")),
                ("results.png".into(), 40_000),
                ("weights/best.pt".into(), 2_500_000),
                ("weights/last.pt".into(), 3_100_000),
            ]
        );
        let artifact_uri = run["info"]["artifact_uri"].as_str().unwrap();
        let base = artifact_uri.strip_prefix("mlflow-artifacts:/").unwrap();
        let best = get_bytes(&format!(
            "{url}/api/2.0/mlflow-artifacts/artifacts/{base}/weights/best.pt"
        ))
        .await;
        assert!(best == checkpoint(2_500_000, 1), "best.pt differs");
        let args = get_bytes(&format!(
            "{url}/api/2.0/mlflow-artifacts/artifacts/{base}/args.yaml"
        ))
        .await;
        assert_eq!(args, std::fs::read(root.join("normal/args.yaml")).unwrap());
        // Again: nothing sent.
        let again = export(&db, &cfg, &url);
        assert!(
            again.contains("0 runs created, 0 runs updated, 0 params, 0 metric points")
                && !again.contains("artifact"),
            "{again}"
        );
    });
}

/// A run's params on the server, by key.
fn params_of(run: &Value) -> std::collections::BTreeMap<String, String> {
    run["data"]["params"]
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
        .collect()
}

/// Every artifact of an MLflow run, recursively: (path, size).
async fn artifacts_of(server: &str, run: &str) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    let mut dirs = vec![String::new()];
    while let Some(d) = dirs.pop() {
        let mut q = json!({ "run_id": run });
        if !d.is_empty() {
            q["path"] = json!(d);
        }
        let l = api(server, "GET", "artifacts/list", q).await;
        for f in l["files"].as_array().cloned().unwrap_or_default() {
            let path = f["path"].as_str().unwrap().to_string();
            if f["is_dir"] == true {
                dirs.push(path);
            } else {
                out.push((path, f["file_size"].as_i64().unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A real Ultralytics 8.4 training with its own MLflow callback on, logging to a real tracking
/// server (fixtures/runfolder/mlflow-*: its console, its run folder as it grew, and the
/// callback's run as the server held it): trainwatch's export of the same console and folder,
/// with `step = "zero_based"`, is the callback's run: the same metric names, steps and values
/// (the final validation of best.pt one step after the last epoch), the same params but for
/// `momentum`, whose value used (0.9, the `optimizer:` line) trainwatch logs where the
/// callback logs the requested 0.937, and the same artifacts.
#[test]
fn the_export_equals_ultralytics_own_mlflow_callback_on_a_real_run() {
    if !mlflow_installed() {
        return;
    }
    let callback: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("runfolder/mlflow.callback.json")).unwrap(),
    )
    .unwrap();
    let callback = &callback[0];
    let db = Db::new();
    let runs = db.dir.path().join("runs");
    let folder = RecordedFolder::load("runfolder/mlflow.folder.jsonl");
    folder.write_final(&runs.join("mlflow"));
    for w in &folder.writes {
        let st = std::process::Command::new("touch")
            .args(["-d", "1 hour ago"])
            .arg(runs.join("mlflow").join(&w.path))
            .status()
            .unwrap();
        assert!(st.success());
    }
    let map = format!("/tmp/tw-runfolder/runs={}", runs.display());
    let log = fixture("runfolder/mlflow-json.log");
    let o = bin(
        &[
            "replay",
            "--container",
            "yolo",
            "--path-map",
            &map,
            &log.to_string_lossy(),
        ],
        &db.path,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = db.dir.path().join("trainwatch.toml");
    std::fs::write(&cfg, "[mlflow]\nstep = \"zero_based\"\n").unwrap();
    runtime().block_on(async {
        let home = tempfile::tempdir().unwrap();
        let server = Server::start(home.path(), free_port()).await;
        let url = server.url();
        export(&db, &cfg, &url);
        let ours = server_runs(&url, "fleet").await;
        assert_eq!(ours.len(), 1);
        let ours = &ours[&1];
        let uuid = ours["info"]["run_id"].as_str().unwrap();
        // The run the callback logged elsewhere is named.
        assert_eq!(
            tag(ours, "ultralytics.mlflow_run_id").as_deref(),
            Some("5a7cbe28dfa741f1804d0a98cf6d3bbc")
        );
        // Metrics: names, steps and values.
        let want = callback["metrics"].as_object().unwrap();
        let mut names: Vec<String> = ours["data"]["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["key"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        let mut want_names: Vec<String> = want.keys().cloned().collect();
        want_names.sort();
        assert_eq!(names, want_names);
        for (key, points) in want {
            let got = history_of(&url, uuid, key).await;
            let points = points.as_array().unwrap();
            assert_eq!(got.len(), points.len(), "{key}: {got:?} vs {points:?}");
            for ((step, v), p) in got.iter().zip(points) {
                let (want_step, want_v) = (p[0].as_i64().unwrap(), p[1].as_f64().unwrap());
                let v = v.as_f64().unwrap();
                assert_eq!(*step, want_step, "{key}");
                // results.csv holds 6 significant digits (`%.6g`); the callback logs floats.
                assert!(
                    (v - want_v).abs() <= 5e-6 * want_v.abs().max(1e-6),
                    "{key} step {step}: {v} vs the callback's {want_v}"
                );
            }
        }
        // Params: the callback's, but the momentum used.
        let ours_params = params_of(ours);
        for (k, v) in callback["params"].as_object().unwrap() {
            let ours_v = ours_params.get(k).map(String::as_str);
            if k == "momentum" {
                assert_eq!(ours_v, Some("0.9"));
                assert_eq!(v, "0.937");
            } else {
                assert_eq!(ours_v, v.as_str(), "param {k}");
            }
        }
        assert_eq!(
            ours_params.len(),
            callback["params"].as_object().unwrap().len()
        );
        // Artifacts: the same files at the same paths.
        let want: Vec<(String, i64)> = callback["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a[0].as_str().unwrap().to_string(), a[1].as_i64().unwrap()))
            .collect();
        assert_eq!(artifacts_of(&url, uuid).await, want);
    });
}

/// A docker json-file log: `fixture`'s lines with `line` (stdout) inserted after the first
/// line containing `after`, at its time.
fn with_line(fixture_rel: &str, after: &str, line: &str) -> String {
    let text = std::fs::read_to_string(fixture(fixture_rel)).unwrap();
    let mut out = String::new();
    let mut done = false;
    for l in text.lines() {
        out.push_str(l);
        out.push('\n');
        if !done && l.contains(after) {
            let v: Value = serde_json::from_str(l).unwrap();
            let added =
                json!({ "log": format!("{line}\n"), "stream": "stdout", "time": v["time"] });
            out.push_str(&added.to_string());
            out.push('\n');
            done = true;
        }
    }
    assert!(done, "{after} not in {fixture_rel}");
    out
}

#[test]
fn a_training_that_logs_itself_to_mlflow_is_linked_not_created_twice() {
    if !mlflow_installed() {
        return;
    }
    let db = Db::new();
    let cfg = db.dir.path().join("trainwatch.toml");
    std::fs::write(&cfg, "").unwrap();
    runtime().block_on(async {
        let home = tempfile::tempdir().unwrap();
        let port = free_port();
        let server = Server::start(home.path(), port).await;
        let url = server.url();
        // The callback's run, in the experiment it chose (the training's project).
        let exp = api(&url, "POST", "experiments/create", json!({ "name": "yolo-project" })).await;
        let exp = exp["experiment_id"].as_str().unwrap().to_string();
        let created = api(
            &url,
            "POST",
            "runs/create",
            json!({ "experiment_id": exp, "run_name": "crash" }),
        )
        .await;
        let own = created["run"]["info"]["run_id"].as_str().unwrap().to_string();
        // The crashing training printed it logs there (under another name for the server);
        // the normal one logs to a local store of its own.
        let logs = db.dir.path();
        let crash = logs.join("crash.log");
        std::fs::write(
            &crash,
            with_line(
                "ultralytics/crash-json.log",
                "with parameter groups",
                &format!("\u{1b}[34m\u{1b}[1mMLflow: \u{1b}[0mlogging run_id({own}) to http://localhost:{port}"),
            ),
        )
        .unwrap();
        let normal = logs.join("normal.log");
        std::fs::write(
            &normal,
            with_line(
                "ultralytics/normal-json.log",
                "with parameter groups",
                "MLflow: logging run_id(0123456789abcdef0123456789abcdef) to /work/fx/runs/mlflow",
            ),
        )
        .unwrap();
        for (c, f) in [("crash", &crash), ("normal", &normal)] {
            let o = bin(&["replay", "--container", c, &f.to_string_lossy()], &db.path);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        let said = export(&db, &cfg, &url);
        assert!(
            said.contains("1 runs created") && said.contains("1 run(s) linked"),
            "{said}"
        );
        // The crash run is the training's own: tagged, ended FAILED at the crash, no copy.
        let runs = server_runs(&url, "fleet").await;
        assert_eq!(runs.len(), 1, "{runs:?}");
        let (crash_id, crash_end): (i64, String) = db
            .conn()
            .query_row(
                "SELECT run_id, ended_at FROM training_runs WHERE container = 'crash'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let got = api(&url, "GET", "runs/get", json!({ "run_id": own })).await;
        let got = &got["run"];
        assert_eq!(got["info"]["status"], "FAILED", "{got}");
        assert_eq!(
            got["info"]["end_time"],
            trainwatch::time::parse_rfc3339(&crash_end).unwrap() / 1_000_000
        );
        assert_eq!(tag(got, "trainwatch.linked").as_deref(), Some("true"));
        assert_eq!(
            tag(got, "trainwatch.run_id"),
            Some(crash_id.to_string())
        );
        assert_eq!(tag(got, "trainwatch.status").as_deref(), Some("failed"));
        assert!(tag(got, "failure").is_some(), "{got}");
        assert!(got["data"]["params"].is_null(), "params are the callback's: {got}");
        // The normal run logs to a store elsewhere: a run of its own here, with the link.
        let normal_run = runs.values().next().unwrap();
        assert_eq!(
            tag(normal_run, "ultralytics.mlflow_run_id").as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(
            tag(normal_run, "ultralytics.mlflow_uri").as_deref(),
            Some("/work/fx/runs/mlflow")
        );
        // Again: nothing.
        let again = export(&db, &cfg, &url);
        assert!(
            again.contains("0 runs created, 0 runs updated, 0 params, 0 metric points")
                && !again.contains("linked"),
            "{again}"
        );
    });
}
