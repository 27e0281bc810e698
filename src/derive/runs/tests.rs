//! The run state machine on real consoles' lines.

use super::*;
use crate::derive::RunPatch;
use crate::event::Key;
use crate::parse::Parser;

struct Harness {
    st: ContainerState,
    parser: Parser,
    ops: Vec<Op>,
    n: i64,
}

impl Harness {
    fn new() -> Self {
        Harness {
            st: ContainerState::new("c".into(), Resume::default()),
            parser: Parser::default(),
            ops: Vec::new(),
            n: 0,
        }
    }
    fn line(&mut self, text: &str) {
        self.n += 1;
        let rec = Record {
            key: Key { ts: self.n, seq: 0 },
            ts: self.n,
            stream: Stream::Stdout,
            text: text.into(),
            nonfinite_frame: None,
            terminated: true,
            line_no: self.n as u64,
            lines: 1,
            last_key: Key { ts: self.n, seq: 0 },
        };
        let p = self.parser.parse(&rec);
        self.st.apply(&rec, p, &mut self.ops);
    }
    fn runs(&self) -> Vec<RunRow> {
        let mut last: Vec<RunRow> = Vec::new();
        for op in &self.ops {
            if let Op::Run(r) = op {
                match last.iter_mut().find(|x| x.key == r.key) {
                    Some(x) => *x = r.clone(),
                    None => last.push(r.clone()),
                }
            }
        }
        last
    }
    /// The metric samples emitted so far, as (name, value).
    fn metrics(&self) -> Vec<(&'static str, f64)> {
        self.ops
            .iter()
            .filter_map(|o| {
                if let Op::Metric(m) = o {
                    Some((m.name, m.value))
                } else {
                    None
                }
            })
            .collect()
    }
    fn kinds(&self) -> Vec<&'static str> {
        self.ops
            .iter()
            .filter_map(|o| {
                if let Op::Event(e) = o {
                    Some(e.kind)
                } else {
                    None
                }
            })
            .collect()
    }
}

const HEADER: &str =
    "      Epoch    GPU_mem   box_loss   cls_loss   dfl_loss  Instances       Size";

fn epoch(h: &mut Harness, e: u32, n: u32, loss: &str) {
    h.line(HEADER);
    h.line(&format!("      {e}/{n}      2.41G      {loss}      2.345      1.123         49        640: 100% ━━━━━━━━━━━━ 5/5 8.3it/s 0.6s"));
    h.line(
        "                   all        128        929      0.386     0.0348     0.0324     0.0135",
    );
}

#[test]
fn completed_run() {
    let mut h = Harness::new();
    h.line("engine/trainer: task=detect, mode=train, model=yolo11n.yaml, epochs=2, resume=False, save_dir=/r/train");
    h.line("Starting training for 2 epochs...");
    epoch(&mut h, 1, 2, "1.194");
    epoch(&mut h, 2, 2, "1.100");
    h.line("2 epochs completed in 0.010 hours.");
    h.line("Validating /r/train/weights/best.pt...");
    h.line("Ultralytics 8.3.40 🚀 Python-3.11.7 torch-2.5.1 CPU");
    h.line("                   all        128        929      0.5     0.05     0.05     0.02");
    let runs = h.runs();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Completed);
    assert_eq!(runs[0].epochs_total, Some(2));
    assert_eq!(runs[0].save_dir.as_deref(), Some("/r/train"));
    let epochs: Vec<u32> = h
        .ops
        .iter()
        .filter_map(|o| {
            if let Op::Epoch(_, e) = o {
                Some(e.epoch)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(epochs, vec![1, 1, 2, 2]);
    let kinds = h.kinds();
    assert_eq!(
        kinds.iter().filter(|k| **k == "training_started").count(),
        1
    );
    assert_eq!(kinds.iter().filter(|k| **k == "epoch_completed").count(), 2);
    assert_eq!(kinds.iter().filter(|k| **k == "validation").count(), 3);
    assert!(kinds.contains(&"training_completed"));
}

#[test]
fn killed_then_new_process_interrupts_and_resume_continues() {
    let mut h = Harness::new();
    h.line("engine/trainer: task=detect, epochs=10, resume=False, save_dir=/r/train");
    epoch(&mut h, 1, 10, "1.2");
    // The process is killed; the next one resumes the same save_dir.
    h.line("engine/trainer: task=detect, epochs=10, resume=/r/train/weights/last.pt, save_dir=/r/train");
    h.line("Resuming training /r/train/weights/last.pt from epoch 2 to 10 total epochs");
    epoch(&mut h, 2, 10, "1.1");
    assert_eq!(h.runs().len(), 1);
    assert_eq!(h.runs()[0].status, RunStatus::Running);
    // A fresh training without resume: the running one is interrupted.
    h.line("engine/trainer: task=detect, epochs=5, resume=False, save_dir=/r/train2");
    let runs = h.runs();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].status, RunStatus::Interrupted);
    assert_eq!(runs[1].status, RunStatus::Running);
}

#[test]
fn failure_before_first_epoch_is_a_failed_run() {
    let mut h = Harness::new();
    h.line("engine/trainer: task=detect, epochs=10, resume=False, save_dir=/r/t");
    h.line("Traceback (most recent call last):\n  File \"train.py\", line 3\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.");
    let runs = h.runs();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RunStatus::Failed);
    assert!(h.kinds().contains(&"gpu_oom"));
}

/// The `training_failed` events emitted so far: (message, context).
fn failed_events(h: &Harness) -> Vec<(String, Value)> {
    h.ops
        .iter()
        .filter_map(|o| match o {
            Op::Event(e) if e.kind == "training_failed" => {
                Some((e.message.clone(), serde_json::from_str(&e.context).unwrap()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_traceback_fails_the_run_with_its_exception_once_whatever_comes_after() {
    let mut h = Harness::new();
    h.line("engine/trainer: task=detect, epochs=10, resume=False, save_dir=/r/t");
    epoch(&mut h, 1, 10, "1.2");
    epoch(&mut h, 2, 10, "1.1");
    h.line("Traceback (most recent call last):\n  File \"train.py\", line 3, in <module>\n    main()\nRuntimeError: Dataset 'data/missing.yaml' error ❌ missing path\nNote dataset download directory is '/datasets'");
    let runs = h.runs();
    assert_eq!(runs[0].status, RunStatus::Failed);
    assert_eq!(
        runs[0].failure.as_deref(),
        Some("RuntimeError: Dataset 'data/missing.yaml' error ❌ missing path")
    );
    let failed = failed_events(&h);
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0].0,
        "Training in c failed after epoch 2/10: RuntimeError: Dataset 'data/missing.yaml' error ❌ missing path"
    );
    assert_eq!(failed[0].1["epoch"], 2);
    assert_eq!(failed[0].1["save_dir"], "/r/t");
    // The container's exit that follows is the same death: no second word of it.
    let exit = Exit {
        finished_at: h.n + 1,
        started_at: Some(0),
        exit_code: Some(1),
        oom_killed: false,
    };
    let before = h.ops.len();
    h.st.container_exited(&exit, true, &mut h.ops);
    assert_eq!(h.ops.len(), before, "{:?}", &h.ops[before..]);
}

#[test]
fn ctrl_c_interrupts_the_run() {
    let mut h = Harness::new();
    h.line("engine/trainer: task=detect, epochs=10, resume=False, save_dir=/r/t");
    epoch(&mut h, 1, 10, "1.2");
    h.line("Traceback (most recent call last):\n  File \"train.py\", line 3, in <module>\n    time.sleep(1)\nKeyboardInterrupt");
    let runs = h.runs();
    assert_eq!(runs[0].status, RunStatus::Interrupted);
    assert_eq!(runs[0].failure.as_deref(), Some("KeyboardInterrupt"));
    assert!(failed_events(&h).is_empty());
}

#[test]
fn a_kill_fails_the_run_with_its_signal_and_the_nan_before_it() {
    let mut h = Harness::new();
    h.line("engine/trainer: task=detect, epochs=10, resume=False, save_dir=/r/t");
    epoch(&mut h, 1, 10, "1.2");
    epoch(&mut h, 2, 10, "nan");
    let exit = Exit {
        finished_at: h.n + 10,
        started_at: Some(0),
        exit_code: Some(137),
        oom_killed: false,
    };
    h.st.container_exited(&exit, true, &mut h.ops);
    let runs = h.runs();
    assert_eq!(runs[0].status, RunStatus::Failed);
    assert_eq!(
        runs[0].failure.as_deref(),
        Some("exited with code 137 (SIGKILL) (after a NaN/inf loss at epoch 2)")
    );
    assert_eq!(
        h.kinds()
            .iter()
            .filter(|k| **k == "training_container_died")
            .count(),
        1
    );
    let failed = failed_events(&h);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].1["exit_code"], 137);
    // A resume clears it.
    h.line("engine/trainer: task=detect, epochs=10, resume=/r/t/weights/last.pt, save_dir=/r/t");
    assert_eq!(h.runs()[0].status, RunStatus::Running);
    assert_eq!(h.runs()[0].failure, None);
}

#[test]
fn a_training_container_that_dies_with_no_run_says_so() {
    let mut h = Harness::new();
    h.line("Traceback (most recent call last):\n  File \"train.py\", line 1, in <module>\nModuleNotFoundError: No module named 'ultralytics'");
    let exit = Exit {
        finished_at: h.n + 1,
        started_at: Some(0),
        exit_code: Some(1),
        oom_killed: false,
    };
    // Not a training container and no run: nothing.
    h.st.container_exited(&exit, false, &mut h.ops);
    assert!(!h.kinds().contains(&"training_container_died"));
    h.st.container_exited(&exit, true, &mut h.ops);
    let died: Vec<Value> = h
        .ops
        .iter()
        .filter_map(|o| match o {
            Op::Event(e) if e.kind == "training_container_died" => {
                Some(serde_json::from_str(&e.context).unwrap())
            }
            _ => None,
        })
        .collect();
    assert_eq!(died.len(), 1);
    assert_eq!(died[0]["status"], Value::Null);
    assert_eq!(died[0]["exit_code"], 1);
    // Exit 0 is no death.
    let before = h.ops.len();
    let clean = Exit {
        exit_code: Some(0),
        ..exit
    };
    h.st.container_exited(&clean, true, &mut h.ops);
    assert_eq!(h.ops.len(), before);
}

#[test]
fn a_json_service_s_run_from_start_to_its_end() {
    let mut h = Harness::new();
    h.line(r#"{"timestamp":"2026-12-07T07:00:00Z","level":"INFO","service":"training","message":"Training started","context":{"model":"yolo11n.pt","epochs":2,"imgsz":640,"batch":16,"save_dir":"/azaion/models/azaion-2026-12-07/train"}}"#);
    let runs = h.runs();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].model.as_deref(), Some("yolo11n.pt"));
    assert_eq!(runs[0].epochs_total, Some(2));
    assert_eq!(
        runs[0].save_dir.as_deref(),
        Some("/azaion/models/azaion-2026-12-07/train")
    );
    let params: Value = serde_json::from_str(runs[0].params.as_deref().unwrap()).unwrap();
    assert_eq!(params["imgsz"], "640");
    h.line(r#"{"timestamp":"2026-12-07T07:10:00Z","level":"INFO","service":"training","message":"Epoch 1/2 completed","context":{"epoch":1,"loss":0.5}}"#);
    assert_eq!(h.runs()[0].status, RunStatus::Running);
    // The last epoch N/N completes it; the service's own word agrees.
    h.line(r#"{"timestamp":"2026-12-07T07:20:00Z","level":"INFO","service":"training","message":"Epoch 2/2 completed","context":{"epoch":2,"loss":0.4}}"#);
    assert_eq!(h.runs()[0].status, RunStatus::Completed);
    h.line(r#"{"timestamp":"2026-12-07T07:20:01Z","level":"INFO","service":"training","message":"Training completed","context":{}}"#);
    assert_eq!(h.runs().len(), 1);
    assert_eq!(h.runs()[0].status, RunStatus::Completed);
    assert_eq!(
        h.kinds()
            .iter()
            .filter(|k| **k == "training_completed")
            .count(),
        1
    );
}

#[test]
fn an_error_the_service_did_not_recover_from_then_exit_0_is_a_failure() {
    for recovered in [false, true] {
        let mut h = Harness::new();
        h.line(r#"{"level":"INFO","message":"Training started","context":{"epochs":5}}"#);
        h.line(
            r#"{"level":"INFO","message":"Epoch 1/5 completed","context":{"epoch":1,"loss":0.5}}"#,
        );
        h.line(r#"{"level":"ERROR","message":"Data loader failed: /azaion/datasets unreachable","context":{}}"#);
        if recovered {
            h.line(r#"{"level":"INFO","message":"Epoch 2/5 completed","context":{"epoch":2,"loss":0.4}}"#);
        }
        let exit = Exit {
            finished_at: h.n + 1,
            started_at: Some(0),
            exit_code: Some(0),
            oom_killed: false,
        };
        h.st.container_exited(&exit, true, &mut h.ops);
        let run = &h.runs()[0];
        if recovered {
            assert_eq!(run.status, RunStatus::Interrupted);
            assert!(failed_events(&h).is_empty());
        } else {
            assert_eq!(run.status, RunStatus::Failed);
            assert_eq!(
                run.failure.as_deref(),
                Some("Data loader failed: /azaion/datasets unreachable (then exited with code 0)")
            );
            assert_eq!(failed_events(&h).len(), 1);
        }
    }
}

#[test]
fn early_stop_and_nan_epoch() {
    let mut h = Harness::new();
    h.line("Starting training for 300 epochs...");
    epoch(&mut h, 1, 300, "nan");
    h.line("EarlyStopping: Training stopped early as no improvement observed in last 1 epochs. Best results observed at epoch 1, best model saved as best.pt.");
    h.line("1 epochs completed in 0.001 hours.");
    let runs = h.runs();
    assert_eq!(runs[0].status, RunStatus::EarlyStopped);
    assert_eq!(runs[0].best_epoch_reported, Some(1));
    assert!(h.kinds().contains(&"loss_non_finite"));
    assert!(h.kinds().contains(&"early_stopped"));
}

#[test]
fn queue_counters_accumulate() {
    let mut h = Harness::new();
    h.line("2026-03-28 14:30:00,000 - annotation_queue - INFO - Annotation saved: id=1 offset=10");
    h.line("Processed 5 messages");
    h.line("WARNING:annotation_queue:Failed to process message offset=12");
    h.st.flush_metrics(&mut h.ops);
    let mut metrics = h.metrics();
    // All three lines fall in one second: one sample per metric, the latest value.
    metrics.sort_by(|a, b| a.0.cmp(b.0));
    assert_eq!(
        metrics,
        vec![
            ("queue_messages_failed", 1.0),
            ("queue_messages_processed", 6.0),
            ("queue_offset", 12.0),
        ]
    );
    assert_eq!(
        h.kinds(),
        vec![
            "annotation_processed",
            "annotation_processed",
            "annotation_failed"
        ]
    );
    // A line in a later second emits the held samples and starts new ones.
    h.ops.clear();
    h.n += 2_000_000_000;
    h.line("Processed 3 messages");
    h.st.flush_metrics(&mut h.ops);
    let metrics = h.metrics();
    assert_eq!(metrics, vec![("queue_messages_processed", 9.0)]);
    assert_eq!(h.kinds(), vec!["annotation_processed"]);
}

#[test]
fn the_resolved_optimizer_and_the_mlflow_link_patch_the_running_run() {
    let mut h = Harness::new();
    h.line("engine/trainer: task=detect, mode=train, model=yolo11n.yaml, epochs=3, optimizer=auto, lr0=0.01, momentum=0.937, warmup_bias_lr=0.1, save_dir=/w/runs/train");
    h.line("optimizer: 'optimizer=auto' found, ignoring 'lr0=0.01' and 'momentum=0.937' and determining best 'optimizer', 'lr0' and 'momentum' automatically... ");
    h.line("optimizer: AdamW(lr=0.001667, momentum=0.9) with parameter groups 81 weight(decay=0.0), 88 weight(decay=0.0005), 87 bias(decay=0.0)");
    h.line("MLflow: logging run_id(5b0f2c8e1d9a4f7e8c6b3a2d1e0f9a8b) to http://mlflow:5000");
    let key = h.runs()[0].key.clone();
    let patches: Vec<&RunPatch> = h
        .ops
        .iter()
        .filter_map(|o| match o {
            Op::RunPatch(k, p) if *k == key => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(patches.len(), 2, "{patches:?}");
    let RunPatch::ParamsOverride(p) = patches[0] else {
        panic!("{patches:?}")
    };
    let p: Value = serde_json::from_str(p).unwrap();
    assert_eq!(
        p,
        serde_json::json!({"optimizer": "AdamW", "lr0": "0.001667", "momentum": "0.9", "warmup_bias_lr": "0.0"})
    );
    assert_eq!(
        patches[1],
        &RunPatch::Mlflow {
            run_id: "5b0f2c8e1d9a4f7e8c6b3a2d1e0f9a8b".into(),
            uri: "http://mlflow:5000".into()
        }
    );
    // An explicit SGD keeps its warmup; the announcement line is no optimizer.
    let mut h = Harness::new();
    h.line("engine/trainer: task=detect, mode=train, optimizer=SGD, lr0=0.02, epochs=3");
    h.line("optimizer: SGD(lr=0.02, momentum=0.937) with parameter groups 57 weight(decay=0.0), 64 weight(decay=0.0005), 63 bias(decay=0.0)");
    let p: Vec<Value> = h
        .ops
        .iter()
        .filter_map(|o| match o {
            Op::RunPatch(_, RunPatch::ParamsOverride(p)) => serde_json::from_str(p).ok(),
            _ => None,
        })
        .collect();
    assert_eq!(
        p,
        [serde_json::json!({"optimizer": "SGD", "lr0": "0.02", "momentum": "0.937"})]
    );
}

#[test]
fn a_resumed_run_s_repeated_epoch_in_results_csv_is_taken_as_a_row_of_its_own() {
    use crate::source::runfolder::CsvRow;
    let mut h = Harness::new();
    h.line("engine/trainer: task=detect, mode=train, epochs=5, save_dir=/w/runs/train");
    let folder = h.st.running_folder().unwrap();
    let columns: std::sync::Arc<[String]> =
        ["epoch".to_string(), "train/box_loss".to_string()].into();
    let row = |row: u32, epoch: u32, v: &str| CsvRow {
        row,
        epoch,
        cells: vec![epoch.to_string(), v.into()],
    };
    let rows_written = |h: &Harness| -> Vec<(u32, u32)> {
        h.ops
            .iter()
            .filter_map(|o| match o {
                Op::ResultsRow(_, row, epoch, ..) => Some((*row, *epoch)),
                _ => None,
            })
            .collect()
    };
    let first = [row(0, 1, "0.9"), row(1, 2, "0.8"), row(2, 3, "0.7")];
    h.st.results_rows(&folder, "results.csv", &columns, &first, false, &mut h.ops);
    // Killed after epoch 3's row, resumed from epoch 2's checkpoint: epoch 3 again.
    let resumed = [row(3, 3, "0.75"), row(4, 4, "0.6")];
    h.st.results_rows(
        &folder,
        "results.csv",
        &columns,
        &resumed,
        false,
        &mut h.ops,
    );
    // A restarted watch reads the file from its start: nothing twice.
    let all: Vec<CsvRow> = first.iter().chain(&resumed).cloned().collect();
    h.st.results_rows(&folder, "results.csv", &columns, &all, false, &mut h.ops);
    assert_eq!(rows_written(&h), [(0, 1), (1, 2), (2, 3), (3, 3), (4, 4)]);
}

#[test]
fn a_checkpoint_follows_the_epoch_that_ended_before_it_and_best_pt_is_the_best_epoch() {
    use crate::source::runfolder::Checkpoint;
    let mut h = Harness::new();
    h.line("engine/trainer: task=detect, mode=train, epochs=5, save_dir=/w/runs/train");
    let folder = h.st.running_folder().unwrap();
    {
        let run = h.st.run.as_mut().unwrap();
        run.ends = vec![(1, 1_000), (2, 2_000), (3, 3_000)];
        run.last_epoch = Some(3);
    }
    let cp = |name: &str, at: i64| Checkpoint {
        name: name.into(),
        path: format!("/w/runs/train/weights/{name}").into(),
        size: 5_300_000,
        written_at: at,
    };
    // Looked at after epoch 3 ended: best.pt was written after epoch 2.
    h.ops.clear();
    h.st.checkpoints(
        &folder,
        &[cp("best.pt", 2_300), cp("last.pt", 3_200)],
        None,
        &mut h.ops,
    );
    let said: Vec<&str> = h
        .ops
        .iter()
        .filter_map(|o| match o {
            Op::Event(e) if e.kind == "checkpoint_saved" => Some(e.message.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        said,
        ["best.pt, epoch 2, 5.3 MB", "last.pt, epoch 3, 5.3 MB"]
    );
    assert_eq!(h.runs()[0].best_epoch_reported, Some(2));
}
