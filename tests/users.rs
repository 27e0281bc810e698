//! Logs of the kinds users keep and run, not a container's own: a resume typed with a relative
//! path, chained tracebacks whose messages span lines, YOLOv5's `train.py`, and consoles
//! pasted, exported from notebooks, saved with CRLF or cut at the terminal width, kept on
//! Windows, or printed by a multi-GPU (DDP) training (fixtures/README.md says how each file was
//! made; the DDP console is made here from the real 8.0.200 capture).

use crate::replay::{assert_crash_capture, assert_epochs_match};
use crate::util::{Db, ResultsCsv, bin, close_sig, fixture, fixture_str};

fn replay(rel: &str, container: &str) -> Db {
    let db = Db::new();
    let s = db.replay(&[fixture_str(rel)], Some(container));
    assert_eq!(s.skips.total(), 0, "{rel}: {:?}", s.skips);
    db
}

/// Every event whose text is a traceback is an `error`, and there are `n` of them.
fn assert_tracebacks_are_errors(db: &Db, n: i64) {
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE message LIKE '%Traceback (most recent call last):%' AND kind <> 'error'"),
        0,
        "a traceback filed under another kind"
    );
    assert_eq!(
        db.count(
            "SELECT count(*) FROM events WHERE message LIKE '%Traceback (most recent call last):%'"
        ),
        n
    );
}

#[test]
fn a_resume_with_a_relative_path_continues_the_run() {
    // `yolo train ...` from a working directory, killed in epoch 3, then
    // `yolo train resume model=runs/detect/train/weights/last.pt`: the settings line prints an
    // absolute save_dir, the resume names the checkpoint relative to the working directory.
    let db = replay("ultralytics-users/resume-relative-json.log", "yolo");
    assert_eq!(db.count("SELECT count(*) FROM training_runs"), 1);
    assert_eq!(
        db.text("SELECT status || ' ' || epochs_done || '/' || epochs_total || ' ' || save_dir FROM training_runs").unwrap(),
        "completed 5/5 /tmp/tw-users/runs/detect/train"
    );
    let csv = ResultsCsv::load(&fixture("ultralytics-users/resume-relative.results.csv"));
    assert_epochs_match(&db, 1, &csv);
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE kind = 'training_resumed'"),
        1
    );
}

#[test]
fn a_resume_finds_its_run_by_any_form_of_its_folder() {
    for resume in [
        "runs/detect/train/weights/last.pt",
        "./runs/detect/train/weights/last.pt",
        "/w/runs/detect/train/weights/last.pt",
        "detect/train/weights/last.pt",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("train.log");
        let header =
            "      Epoch    GPU_mem   box_loss   cls_loss   dfl_loss  Instances       Size";
        let epoch = |e: u32| {
            format!(
                "{header}\n        {e}/3         0G      1.{e}00      2.000      1.000         20         64: 100% ━━━━━━━━━━━━ 8/8 4.4it/s 1.8s\n"
            )
        };
        let text = [
            "engine/trainer: task=detect, mode=train, model=yolo11n.yaml, epochs=3, resume=False, save_dir=/w/runs/detect/train\n".to_string(),
            "Starting training for 3 epochs...\n".into(),
            epoch(1),
            // Another training in between, then the first one is resumed.
            "engine/trainer: task=detect, mode=train, model=yolo11n.yaml, epochs=3, resume=False, save_dir=/w/runs/detect/train2\n".into(),
            epoch(1),
            format!("Resuming training {resume} from epoch 2 to 3 total epochs\n"),
            epoch(2),
            epoch(3),
            "3 epochs completed in 0.001 hours.\n".into(),
        ]
        .concat();
        std::fs::write(&log, text).unwrap();
        let db = Db::new();
        db.replay(&[log.to_string_lossy().into_owned()], Some("c"));
        assert_eq!(
            db.text("SELECT group_concat(save_dir || ':' || status || ':' || epochs_done, ' ') FROM (SELECT * FROM training_runs ORDER BY run_id)").unwrap(),
            "/w/runs/detect/train:completed:3 /w/runs/detect/train2:interrupted:1",
            "{resume}"
        );
    }
}

#[test]
fn a_chained_traceback_whose_messages_span_lines_is_one_error() {
    // A dataset whose images are missing: FileNotFoundError (two message lines) is the direct
    // cause of the trainer's RuntimeError (two message lines).
    let db = replay("ultralytics-users/missing-dataset-json.log", "yolo");
    assert_tracebacks_are_errors(&db, 1);
    let msg = db
        .text("SELECT message FROM events WHERE kind = 'error'")
        .unwrap();
    assert!(
        msg.starts_with("Traceback (most recent call last):"),
        "{msg}"
    );
    assert_eq!(msg.matches("Traceback (most recent call last):").count(), 2);
    assert_eq!(msg.matches("Note dataset download directory is").count(), 2);
    assert!(msg.contains("The above exception was the direct cause of the following exception:"));
    assert!(
        msg.ends_with("You can update this in '/tmp/tw-users/cfg/Ultralytics/settings.json'"),
        "{msg}"
    );
    let exception = db
        .text("SELECT json_extract(context, '$.exception') FROM events WHERE kind = 'error'")
        .unwrap();
    assert!(
        exception.starts_with("RuntimeError: Dataset 'missing/data.yaml' error ❌ Dataset"),
        "{exception}"
    );
    assert!(exception.ends_with("settings.json'"), "{exception}");
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE kind IN ('error', 'warning')"),
        1
    );
    assert_eq!(
        db.text("SELECT status FROM training_runs").as_deref(),
        Some("failed")
    );
}

#[test]
fn the_traceback_that_ends_a_nan_run_is_an_error() {
    let db = replay("ultralytics/nan-json.log", "yolo");
    assert_tracebacks_are_errors(&db, 1);
    let exception = db
        .text("SELECT json_extract(context, '$.exception') FROM events WHERE kind = 'error'")
        .unwrap();
    assert!(exception.contains("NaN persisted"), "{exception}");
    // The NaN itself is told by the epochs and Ultralytics' own warnings.
    assert!(db.count("SELECT count(*) FROM events WHERE kind = 'loss_non_finite'") > 0);
    for rel in [
        "ultralytics/crash-json.log",
        "ultralytics-8.3/crash-json.log",
    ] {
        assert_tracebacks_are_errors(&replay(rel, "yolo"), 1);
    }
}

#[test]
fn a_cuda_oom_traceback_is_an_error_and_a_gpu_oom() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("oom.log");
    std::fs::write(
        &log,
        "engine/trainer: task=detect, mode=train, epochs=3, resume=False, save_dir=/w/runs/detect/train\n\
         Traceback (most recent call last):\n  File \"train.py\", line 3, in <module>\n    model.train()\n\
         torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 15.77 GiB\n\
         of which 1.10 GiB is free.\n",
    )
    .unwrap();
    let db = Db::new();
    db.replay(&[log.to_string_lossy().into_owned()], Some("c"));
    assert_tracebacks_are_errors(&db, 1);
    assert_eq!(
        db.text("SELECT message FROM events WHERE kind = 'gpu_oom'")
            .as_deref(),
        Some(
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 15.77 GiB\nof which 1.10 GiB is free."
        )
    );
    assert_eq!(
        db.text("SELECT alertname || ' ' || status FROM alerts WHERE alertname = 'GpuOutOfMemory'")
            .as_deref(),
        Some("GpuOutOfMemory firing")
    );
    // The run it ended failed with it.
    assert_eq!(
        db.text("SELECT failure FROM training_runs").as_deref(),
        Some(
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 15.77 GiB"
        )
    );
    assert_eq!(
        db.text("SELECT alertname || ' ' || status FROM alerts WHERE alertname = 'TrainingFailed'")
            .as_deref(),
        Some("TrainingFailed resolved")
    );
}

#[test]
fn yolov5_epochs_are_stored_as_printed_from_zero() {
    let db = replay("yolov5/v7.txt", "yolov5");
    let csv = ResultsCsv::load(&fixture("yolov5/v7.results.csv"));
    assert_eq!(csv.epochs(), [0, 1, 2, 3, 4]);
    assert_eq!(
        db.text("SELECT status || ' ' || epochs_done || '/' || epochs_total || ' ' || save_dir FROM training_runs").unwrap(),
        "completed 5/5 runs/train/exp"
    );
    let conn = db.conn();
    let mut stmt = conn
        .prepare("SELECT epoch, box_loss, json_extract(losses, '$.obj_loss'), cls_loss, loss, precision, recall, map50, map50_95 FROM training_epochs ORDER BY epoch")
        .unwrap();
    let rows: Vec<(u32, [f64; 8])> = stmt
        .query_map([], |r| {
            let mut v = [0.0; 8];
            for (i, x) in v.iter_mut().enumerate() {
                *x = r.get(i + 1)?;
            }
            Ok((r.get(0)?, v))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), csv.epochs());
    for (epoch, v) in rows {
        let cols = [
            ("train/box_loss", 0),
            ("train/obj_loss", 1),
            ("train/cls_loss", 2),
            ("metrics/precision", 4),
            ("metrics/recall", 5),
            ("metrics/mAP_0.5", 6),
            ("metrics/mAP_0.5:0.95", 7),
        ];
        for (col, i) in cols {
            assert!(
                close_sig(v[i], csv.get(epoch, col), 3),
                "epoch {epoch} {col}: {}",
                v[i]
            );
        }
        let sum = csv.get(epoch, "train/box_loss")
            + csv.get(epoch, "train/obj_loss")
            + csv.get(epoch, "train/cls_loss");
        assert!((v[3] - sum).abs() < 1e-4, "epoch {epoch} loss {}", v[3]);
    }
    // history's results.csv is YOLOv5's own.
    let o = bin(&["history", "--run", "1", "--format", "csv"], &db.path);
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    let mut lines = out.lines();
    assert_eq!(
        lines.next().unwrap(),
        "epoch,train/box_loss,train/obj_loss,train/cls_loss,metrics/precision,metrics/recall,metrics/mAP_0.5,metrics/mAP_0.5:0.95"
    );
    let first: Vec<f64> = lines
        .next()
        .unwrap()
        .split(',')
        .map(|c| c.parse().unwrap())
        .collect();
    assert_eq!(first[0], 0.0);
    assert!(close_sig(first[2], csv.get(0, "train/obj_loss"), 4));
    assert_eq!(lines.count(), 4);
}

#[test]
fn older_yolov5_layouts_map_by_their_header() {
    // v5.0: `Epoch gpu_mem box obj cls total labels img_size`; the printed values are the oracle.
    let text = std::fs::read_to_string(fixture("yolov5/v5-old.txt")).unwrap();
    let printed: Vec<Vec<f64>> = text
        .lines()
        .filter_map(|l| l.rsplit('\r').next().filter(|f| f.contains("3.55G")))
        .map(|f| {
            f.split(':')
                .next()
                .unwrap()
                .split_whitespace()
                .skip(2)
                .take(4)
                .map(|v| v.parse().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(printed.len(), 3);
    let db = replay("yolov5/v5-old.txt", "yolov5");
    for (epoch, want) in printed.iter().enumerate() {
        let got: (f64, f64, f64, f64, Option<f64>) = db
            .conn()
            .query_row(
                "SELECT box_loss, json_extract(losses, '$.obj_loss'), cls_loss, loss, json_extract(losses, '$.total') FROM training_epochs WHERE epoch = ?1",
                [epoch as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap();
        assert_eq!(
            (got.0, got.1, got.2),
            (want[0], want[1], want[2]),
            "epoch {epoch}"
        );
        // `total` is the sum the console prints, not a fourth loss.
        assert_eq!(got.4, None);
        assert!(
            (got.3 - want[3]).abs() < 2e-4,
            "epoch {epoch}: {} vs {}",
            got.3,
            want[3]
        );
    }
    assert_eq!(
        db.text("SELECT status || ' ' || epochs_done || '/' || epochs_total FROM training_runs")
            .unwrap(),
        "completed 3/3"
    );
    // Its `all` rows print counts with %.3g (1.55e+03) and are still validations.
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE kind = 'validation' AND json_extract(context, '$.instances') = 1550"),
        3
    );
    assert_eq!(
        db.count("SELECT count(*) FROM training_epochs WHERE map50_95 IS NOT NULL"),
        3
    );
}

#[test]
fn consoles_saved_from_notebooks_ides_and_pastes_keep_every_epoch() {
    let csv = ResultsCsv::load(&fixture("ultralytics-8.3/normal.results.csv"));
    for name in ["notebook-glued", "crlf", "indented", "quoted"] {
        let db = replay(&format!("consoles/{name}.txt"), name);
        assert_epochs_match(&db, 1, &csv);
        assert_eq!(
            db.text("SELECT status FROM training_runs").as_deref(),
            Some("completed"),
            "{name}"
        );
    }
    for name in ["crash-indented", "crash-quoted"] {
        let db = replay(&format!("consoles/{name}.txt"), name);
        assert_crash_capture(&db);
        assert_tracebacks_are_errors(&db, 1);
        // The frames keep their own indentation once the prefix is off.
        let msg = db
            .text("SELECT message FROM events WHERE kind = 'error'")
            .unwrap();
        assert!(
            msg.starts_with("Traceback (most recent call last):\n  File "),
            "{name}: {msg}"
        );
        assert_eq!(
            db.text("SELECT status || ' ' || epochs_done FROM training_runs")
                .as_deref(),
            Some("failed 2"),
            "{name}"
        );
    }
}

#[test]
fn a_windows_console_of_an_old_ultralytics_keeps_its_run_version_and_settings() {
    // The real 8.0.200 run as a Windows console saves it (fixtures/consoles): the banner
    // without its emoji, `engine\trainer:` before the settings, CRLF line ends.
    let db = replay("consoles/windows-8.0.200.txt", "win");
    let c = ResultsCsv::load(&fixture("ultralytics-older/earlystop-8.0.200.results.csv"));
    assert_epochs_match(&db, 1, &c);
    assert_eq!(
        db.text(
            "SELECT status || ' ' || epochs_total || ' ' || ultralytics_version || ' ' || model
                || ' ' || json_extract(params, '$.patience') FROM training_runs"
        )
        .as_deref(),
        Some("early_stopped 40 8.0.200 yolov8n.yaml 3")
    );
}

/// The real 8.0.200 run as DDP on two GPUs prints it (shapes from users' logs in
/// ultralytics/ultralytics#978 and #13103): a banner with a second `CUDA:1` line, the settings
/// as 8.0 before 8.0.136 named them (`yolo/engine/trainer:`), the DDP command, torch's
/// OMP_NUM_THREADS notice, and the rank-0 process's banner again before the model summary and
/// `Starting training`.
fn ddp_console() -> String {
    let banner_gpus = format!(
        "CUDA:0 (A100-SXM-80GB, 81251MiB)\n{}CUDA:1 (A100-SXM-80GB, 81251MiB)\n",
        " ".repeat(54)
    );
    let text: String =
        std::fs::read_to_string(fixture("ultralytics-older/earlystop-8.0.200-json.log"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["log"].as_str().unwrap().to_string()
            })
            .collect::<String>()
            .replace("CPU (Intel Xeon Processor)\n", &banner_gpus)
            .replace("engine/trainer: ", "yolo/engine/trainer: ");
    let settings = text.find("yolo/engine/trainer: ").unwrap();
    let settings_end = settings + text[settings..].find('\n').unwrap() + 1;
    let banner = text[..settings].rfind("Ultralytics YOLOv8.0.200").unwrap();
    let child = format!(
        "DDP command: ['/opt/conda/bin/python', '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', '53567', '/root/.config/Ultralytics/DDP/_temp_x.py']\n\
         WARNING:__main__:\n*****************************************\n\
         Setting OMP_NUM_THREADS environment variable for each process to be 1 in default, to avoid your system being overloaded, please further tune the variable for optimal performance in your application as needed. \n\
         *****************************************\n{}",
        &text[banner..settings]
    );
    format!("{}{child}{}", &text[..settings_end], &text[settings_end..])
}

fn replay_text(text: &str, container: &str) -> Db {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{container}.txt"));
    std::fs::write(&path, text).unwrap();
    let db = Db::new();
    let s = db.replay(&[path.to_string_lossy().into_owned()], Some(container));
    assert_eq!(s.skips.total(), 0);
    db
}

#[test]
fn a_multi_gpu_ddp_training_is_one_run() {
    // The workers' exit warnings of PyTorch 2.4+ (as in pytorch/pytorch#126275 and users' logs
    // elsewhere), rank-prefixed C++ warnings, close the log.
    let exit = "[rank0]:[W730 15:32:17.841273251 ProcessGroupNCCL.cpp:1479] Warning: WARNING: destroy_process_group() was not called before program exit, which can leak resources. For more info, please see https://pytorch.org/docs/stable/distributed.html#shutdown (function operator())\n\
                [rank1]:[W730 15:32:14.298860965 ProcessGroupNCCL.cpp:1479] Warning: WARNING: destroy_process_group() was not called before program exit, which can leak resources. For more info, please see https://pytorch.org/docs/stable/distributed.html#shutdown (function operator())\n";
    let db = replay_text(&format!("{}{exit}", ddp_console()), "ddp");
    assert_eq!(
        db.count(
            "SELECT count(*) FROM events WHERE kind = 'warning' AND message LIKE '[W730 %'
             AND json_extract(context, '$.logger') = 'ProcessGroupNCCL.cpp:1479'"
        ),
        2
    );
    assert_eq!(
        db.text(
            "SELECT count(*) || ' ' || status || ' ' || ultralytics_version || ' ' || model
                || ' ' || json_extract(params, '$.device') FROM training_runs"
        )
        .as_deref(),
        Some("1 early_stopped 8.0.200 yolov8n.yaml cpu")
    );
    assert_epochs_match(
        &db,
        1,
        &ResultsCsv::load(&fixture("ultralytics-older/earlystop-8.0.200.results.csv")),
    );
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE level IN ('ERROR', 'CRITICAL')"),
        0
    );
}

#[test]
fn a_ddp_worker_out_of_memory_fails_the_run_with_its_whole_traceback() {
    // The DDP run cut after epoch 2's validation by a worker's CUDA OOM, as PyTorch 2.2+ and
    // Ultralytics print it (shapes from ultralytics/ultralytics#21344, #19375, #19917): the
    // worker's traceback with `[rank0]: ` before every line, torch elastic's glog lines (`W`,
    // `E`), the launcher's `ChildFailedError` report, and the trainer's `CalledProcessError`.
    let console = ddp_console();
    let epoch3 = console.find("       3/40 ").unwrap();
    let cut = console[..epoch3].rfind("\n\n").unwrap() + 2;
    let crash = r#"[rank0]: Traceback (most recent call last):
[rank0]:   File "/root/.config/Ultralytics/DDP/_temp_x.py", line 13, in <module>
[rank0]:     results = trainer.train()
[rank0]:   File "/usr/local/lib/python3.10/site-packages/ultralytics/engine/trainer.py", line 208, in train
[rank0]:     self._do_train(world_size)
[rank0]:   File "/usr/local/lib/python3.10/site-packages/ultralytics/utils/tal.py", line 206, in get_targets
[rank0]:     target_scores = torch.where(fg_scores_mask > 0, target_scores, 0)
[rank0]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 15.46 GiB. GPU 0 has a total capacity of 79.15 GiB of which 5.50 GiB is free. Process 1079173 has 6.04 GiB memory in use.
W0328 18:18:18.154000 140217767576768 torch/distributed/elastic/multiprocessing/api.py:851] Sending process 3274844 closing signal SIGTERM
E0328 18:18:48.413000 140217767576768 torch/distributed/elastic/multiprocessing/api.py:826] failed (exitcode: 1) local_rank: 0 (pid: 3274845) of binary: /usr/bin/python
Traceback (most recent call last):
  File "/usr/local/lib/python3.10/site-packages/torch/distributed/run.py", line 883, in <module>
    main()
  File "/usr/local/lib/python3.10/site-packages/torch/distributed/launcher/api.py", line 270, in launch_agent
    raise ChildFailedError(
torch.distributed.elastic.multiprocessing.errors.ChildFailedError: 
============================================================
/root/.config/Ultralytics/DDP/_temp_x.py FAILED
------------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2025-03-28_18:18:48
  host      : gpu-1
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 3274845)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
Traceback (most recent call last):
  File "/usr/local/lib/python3.10/subprocess.py", line 526, in run
    raise CalledProcessError(retcode, process.args,
subprocess.CalledProcessError: Command '['/opt/conda/bin/python', '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', '53567', '/root/.config/Ultralytics/DDP/_temp_x.py']' returned non-zero exit status 1.
"#;
    let db = replay_text(&format!("{}{crash}", &console[..cut]), "ddp");
    assert_eq!(
        db.text("SELECT status || ' ' || epochs_done FROM training_runs")
            .as_deref(),
        Some("failed 2")
    );
    // The worker's traceback is one error, its prefixes off, with the OOM as its exception.
    let (message, exception) = {
        let conn = db.conn();
        conn.query_row(
            "SELECT message, json_extract(context, '$.exception') FROM events
             WHERE kind = 'error' ORDER BY ts, seq LIMIT 1",
            [],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
        )
        .unwrap()
    };
    assert!(
        message.starts_with("Traceback (most recent call last):\n  File \"/root/.config/Ultralytics/DDP/_temp_x.py\""),
        "{message}"
    );
    assert!(!message.contains("[rank0]"), "{message}");
    assert!(
        message.ends_with("GPU 0 has a total capacity of 79.15 GiB of which 5.50 GiB is free. Process 1079173 has 6.04 GiB memory in use."),
        "the traceback ends at its exception: {message}"
    );
    assert!(
        exception.starts_with(
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 15.46 GiB."
        ),
        "{exception}"
    );
    // torch elastic's glog lines are records of their own, at their level; the launcher's
    // traceback after its `E` line is that record's.
    assert_eq!(
        db.text("SELECT json_extract(context, '$.logger') FROM events WHERE kind = 'warning' AND message LIKE 'W0328 %'")
            .as_deref(),
        Some("torch/distributed/elastic/multiprocessing/api.py:851")
    );
    assert_eq!(
        db.text("SELECT json_extract(context, '$.exception') FROM events WHERE kind = 'error' AND message LIKE 'E0328 %'")
            .as_deref()
            .map(|e| e.lines().next().unwrap_or_default()),
        Some("torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ")
    );
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE kind = 'error'"),
        3
    );
    assert_eq!(
        db.count("SELECT count(*) FROM events WHERE kind = 'gpu_oom' AND level = 'ERROR'"),
        1
    );
    assert_eq!(
        db.count("SELECT count(*) FROM alerts WHERE alertname = 'GpuOutOfMemory'"),
        1
    );
}

#[test]
fn rows_cut_at_the_terminal_width_keep_their_losses_in_their_columns() {
    // The 8.3.40 segmentation capture cut at 80 columns: a progress row ends inside its Size
    // column (`box seg cls dfl Instances` and part of Size), its bar gone.
    let db = replay("consoles/seg-cut80.txt", "seg");
    let csv = ResultsCsv::load(&fixture("ultralytics-8.3/seg.results.csv"));
    let conn = db.conn();
    let mut stmt = conn
        .prepare("SELECT epoch, box_loss, json_extract(losses, '$.seg_loss'), cls_loss, dfl_loss FROM training_epochs ORDER BY epoch")
        .unwrap();
    let rows: Vec<(u32, [f64; 4])> = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, [r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?]))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), csv.epochs());
    for (epoch, v) in rows {
        for (i, col) in [
            "train/box_loss",
            "train/seg_loss",
            "train/cls_loss",
            "train/dfl_loss",
        ]
        .iter()
        .enumerate()
        {
            assert!(
                close_sig(v[i], csv.get(epoch, col), 4),
                "epoch {epoch} {col}: {}",
                v[i]
            );
        }
    }
}
