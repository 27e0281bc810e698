//! A run's life: its start (the trainer's settings line, `Starting training for N epochs`),
//! its resume (`resume=...`, `Resuming training ... from epoch K`), and its end (completed,
//! early stopped, an uncaught traceback, a new process, the container's exit).

use serde_json::{Map, Value, json};

use super::{ContainerState, Run, RunKey, RunStatus, is_yolov5};
use crate::derive::{EventRow, Op, RunRow, json_num, paths};
use crate::event::{Record, kind};
use crate::parse::{Detail, Format, Level, Parsed};
use crate::redact;

/// What a run is opened with, as far as the line that opens it tells.
#[derive(Default)]
pub(super) struct Opening {
    pub(super) epochs: Option<u32>,
    pub(super) save_dir: Option<String>,
    pub(super) model: Option<String>,
    /// The settings line's `key=value`s as a JSON object (redacted).
    pub(super) params: Option<String>,
}

/// The run folder of a checkpoint path (`runs/detect/train/weights/last.pt` ->
/// `runs/detect/train`), if it is one.
fn checkpoint_dir(model: &str) -> Option<String> {
    let m = model.trim().replace('\\', "/");
    let in_weights = m.contains("/weights/") || m.starts_with("weights/");
    (in_weights && m.ends_with(".pt")).then(|| paths::run_dir(model))
}

/// How a container stopped, as the daemon's inspect tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// When it stopped (`FinishedAt`), ns.
    pub finished_at: i64,
    /// When it last started (`StartedAt`), ns, if known.
    pub started_at: Option<i64>,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
}

/// Where an event a run's end writes sits in its source: the line (or daemon event) it
/// comes from.
#[derive(Clone, Copy)]
struct EventAt {
    ts: i64,
    stream: &'static str,
    key_ts: i64,
    seq: u32,
}

/// The exception's line a failure quotes: the first line of its message, at most 300
/// characters, redacted.
pub(super) fn exception_line(exception: &str) -> String {
    let line = exception.lines().next().unwrap_or("").trim();
    let line = match line.char_indices().nth(300) {
        Some((i, _)) => &line[..i],
        None => line,
    };
    redact::text(line).into_owned()
}

/// `KeyboardInterrupt` (Ctrl-C, or SIGINT from `docker stop --signal INT`), however qualified.
fn is_keyboard_interrupt(line: &str) -> bool {
    let name = line.split(':').next().unwrap_or("").trim();
    name == "KeyboardInterrupt" || name.ends_with(".KeyboardInterrupt")
}

fn truthy(v: &str) -> bool {
    !matches!(v.trim(), "" | "False" | "false" | "None" | "null" | "0")
}

/// ` (SIGKILL)` for an exit code of 128 + a signal's number, as shells report it.
fn signal_name(code: i64) -> &'static str {
    match code {
        129 => " (SIGHUP)",
        130 => " (SIGINT)",
        134 => " (SIGABRT)",
        135 => " (SIGBUS)",
        137 => " (SIGKILL)",
        139 => " (SIGSEGV)",
        143 => " (SIGTERM)",
        _ => "",
    }
}

impl ContainerState {
    pub(super) fn settings(
        &mut self,
        rec: &Record,
        p: &Parsed,
        kv: &[(String, String)],
        out: &mut Vec<Op>,
    ) {
        let get = |k: &str| kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        let epochs = get("epochs").and_then(|v| v.parse().ok());
        let resume = get("resume").filter(|v| truthy(v));
        // YOLOv5's `train: weights=...` names the model by its weights.
        let yolov5 = get("weights").is_some() && get("task").is_none();
        let model = get("model").or(get("weights")).map(str::to_string);
        let save_dir = get("save_dir")
            .map(str::to_string)
            .or_else(|| resume.and_then(checkpoint_dir));
        let mut ctx = Map::new();
        for k in [
            "task", "mode", "model", "data", "epochs", "batch", "imgsz", "device", "resume",
            "save_dir", "project", "name",
        ] {
            if let Some(v) = get(k) {
                ctx.insert(k.into(), Value::String(v.to_string()));
            }
        }
        // Every setting as printed, for the run's parameters (an MLflow export logs them).
        let mut params = Value::Object(
            kv.iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        );
        redact::json(&mut params);
        let params = Some(params.to_string());
        let opening = Opening {
            epochs,
            save_dir,
            model,
            params,
        };
        if resume.is_some() {
            // The `Resuming training ... from epoch K` line that follows is the
            // training_resumed event; here the run is only picked up (or, when its start is not
            // in the store, opened).
            if !self.continue_run(rec, opening.save_dir.as_deref(), epochs, out) {
                self.new_run(rec, opening, true, out);
            }
            if yolov5 && let Some(run) = self.run.as_mut() {
                run.zero_based = true;
            }
            return;
        }
        self.new_run(rec, opening, true, out);
        if yolov5 && let Some(run) = self.run.as_mut() {
            run.zero_based = true;
        }
        out.push(self.event(
            rec,
            Level::Info,
            "training_started",
            &p.message,
            Value::Object(ctx),
        ));
    }

    /// `Starting training for N epochs...`: the start of a run its settings line opened, or
    /// a run of its own.
    pub(super) fn starting_training(
        &mut self,
        rec: &Record,
        message: &str,
        epochs: Option<u32>,
        out: &mut Vec<Op>,
    ) {
        let starting = self
            .run
            .as_ref()
            .is_some_and(|r| r.starting && r.row.status == RunStatus::Running);
        if starting {
            let run = self.run.as_mut().expect("checked");
            run.starting = false;
            run.train_start = Some(rec.ts);
            if epochs.is_some() && run.row.epochs_total != epochs {
                run.row.epochs_total = epochs;
                out.push(Op::Run(run.row.clone()));
            }
            return;
        }
        let opening = Opening {
            epochs,
            ..Opening::default()
        };
        self.new_run(rec, opening, false, out);
        if let Some(run) = self.run.as_mut() {
            run.train_start = Some(rec.ts);
        }
        let ctx = json!({ "epochs": epochs });
        out.push(self.event(rec, Level::Info, "training_started", message, ctx));
    }

    /// `Resuming training <model> from epoch K to N total epochs`.
    pub(super) fn resuming(
        &mut self,
        rec: &Record,
        message: &str,
        model: &str,
        from_epoch: u32,
        epochs: u32,
        out: &mut Vec<Op>,
    ) {
        let dir = checkpoint_dir(model);
        if !self.continue_run(rec, dir.as_deref(), Some(epochs), out) {
            let opening = Opening {
                epochs: Some(epochs),
                save_dir: dir,
                model: Some(model.to_string()),
                params: None,
            };
            self.new_run(rec, opening, true, out);
        }
        let ctx = json!({ "model": model, "from_epoch": from_epoch, "epochs": epochs });
        out.push(self.event(rec, Level::Info, "training_resumed", message, ctx));
    }

    /// `N epochs completed in H hours.`: the run is complete (unless it stopped early); the
    /// validation rows that follow are the final validation of best.pt.
    pub(super) fn epochs_completed(
        &mut self,
        rec: &Record,
        message: &str,
        epochs: u32,
        hours: f64,
        out: &mut Vec<Op>,
    ) {
        if let Some(run) = self.run.as_mut() {
            if run.row.status != RunStatus::EarlyStopped {
                run.row.status = RunStatus::Completed;
            }
            run.row.ended_at = Some(rec.ts);
            run.starting = false;
            out.push(Op::Run(run.row.clone()));
        }
        self.final_validation = true;
        let ctx = json!({ "epochs": epochs, "hours": json_num(hours) });
        out.push(self.event(rec, Level::Info, "training_completed", message, ctx));
    }

    /// `EarlyStopping: Training stopped early ... Best results observed at epoch K`.
    pub(super) fn early_stopped(
        &mut self,
        rec: &Record,
        message: &str,
        best_epoch: u32,
        patience: Option<u32>,
        out: &mut Vec<Op>,
    ) {
        if let Some(run) = self.run.as_mut() {
            run.row.status = RunStatus::EarlyStopped;
            run.row.best_epoch_reported = Some(best_epoch);
            run.row.ended_at = Some(rec.ts);
            out.push(Op::Run(run.row.clone()));
        }
        let ctx = json!({ "best_epoch": best_epoch, "patience": patience });
        out.push(self.event(rec, Level::Info, "early_stopped", message, ctx));
    }

    /// A JSON service's `Training started` (its settings in the context: `model`, `epochs`,
    /// `imgsz`, `batch`, `data`, `save_dir`, ...) opens a run; `Training completed` ends the
    /// running one as completed.
    pub(super) fn service_run(
        &mut self,
        rec: &Record,
        p: &Parsed,
        what: crate::parse::json::RunMessage,
        out: &mut Vec<Op>,
    ) {
        use crate::parse::json::{RunMessage, num};
        let ctx = &p.context;
        match what {
            RunMessage::Started => {
                let text = |k: &str| match ctx.get(k) {
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(v @ Value::Number(_)) => Some(v.to_string()),
                    _ => None,
                };
                let epochs = ["epochs", "epochs_total", "total_epochs"]
                    .iter()
                    .find_map(|k| ctx.get(*k).and_then(num))
                    .filter(|n| *n >= 1.0 && *n <= f64::from(u32::MAX))
                    .map(|n| n as u32);
                // Its settings, as the settings line's: every scalar of the context.
                let mut params: Map<String, Value> = ctx
                    .iter()
                    .filter(|(_, v)| !v.is_object() && !v.is_array() && !v.is_null())
                    .map(|(k, v)| {
                        let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                        (k.clone(), Value::String(v))
                    })
                    .collect();
                params.remove("service");
                let mut params = Value::Object(params);
                redact::json(&mut params);
                let opening = Opening {
                    epochs,
                    save_dir: text("save_dir").or_else(|| text("run_dir")),
                    model: text("model").or_else(|| text("weights")),
                    params: Some(params.to_string()),
                };
                self.new_run(rec, opening, false, out);
                if let Some(run) = self.run.as_mut() {
                    run.train_start = Some(rec.ts);
                }
            }
            RunMessage::Completed => {
                if let Some(run) = self.run.as_mut()
                    && matches!(run.row.status, RunStatus::Running | RunStatus::Completed)
                {
                    run.row.status = RunStatus::Completed;
                    run.row.ended_at = Some(rec.ts);
                    run.starting = false;
                    out.push(Op::Run(run.row.clone()));
                }
            }
        }
    }

    /// `Results saved to DIR`: the run's folder, if not known yet.
    pub(super) fn results_dir(&mut self, dir: &str, out: &mut Vec<Op>) {
        if let Some(run) = self.run.as_mut()
            && run.row.save_dir.is_none()
        {
            run.row.save_dir = Some(dir.to_string());
            out.push(Op::Run(run.row.clone()));
        }
    }

    /// A traceback. Only an uncaught one ends the process (and ends the running run: as
    /// `interrupted` for a `KeyboardInterrupt`, Ctrl-C, else as `failed`, with the exception's
    /// line as its failure); one inside a logging record (`logger.exception`) was handled by
    /// the program.
    pub(super) fn traceback(&mut self, rec: &Record, p: &Parsed, out: &mut Vec<Op>) {
        let Detail::Traceback { exception } = &p.detail else {
            return;
        };
        if p.format != Format::Traceback || !self.run.as_ref().is_some_and(Run::is_running) {
            return;
        }
        let line = exception_line(exception);
        let status = if is_keyboard_interrupt(&line) {
            RunStatus::Interrupted
        } else {
            RunStatus::Failed
        };
        let at = EventAt {
            ts: rec.ts,
            stream: rec.stream.as_str(),
            key_ts: rec.key.ts,
            seq: rec.key.seq,
        };
        self.end_badly(at, status, line, None, out);
    }

    /// Ends the running run as `status` at `at.ts` because of `failure`. A run that fails says
    /// so once, with a `training_failed` event (what the `TrainingFailed` alert pages for):
    /// whichever comes first of the traceback and the container's exit ends it, the other finds
    /// it ended.
    fn end_badly(
        &mut self,
        at: EventAt,
        status: RunStatus,
        failure: String,
        exit_code: Option<i64>,
        out: &mut Vec<Op>,
    ) {
        let Some(run) = self.run.as_mut().filter(|r| r.is_running()) else {
            return;
        };
        // A NaN/inf loss in the epoch before is what most likely ended it.
        let failure = match run.nan_epoch {
            Some(e) if status == RunStatus::Failed && !failure.contains("NaN") => {
                format!("{failure} (after a NaN/inf loss at epoch {e})")
            }
            _ => failure,
        };
        run.row.status = status;
        run.row.ended_at = Some(at.ts.max(run.last_ts));
        run.row.failure = Some(failure.clone());
        out.push(Op::Run(run.row.clone()));
        if status != RunStatus::Failed {
            return;
        }
        let message = format!(
            "Training in {} failed {}: {failure}",
            self.container,
            run.when()
        );
        let context = json!({
            "failure": failure,
            "epoch": run.last_epoch,
            "epochs_total": run.row.epochs_total,
            "exit_code": exit_code,
            "save_dir": run.row.save_dir,
        });
        let ended = run.row.ended_at.unwrap_or(at.ts);
        out.push(Op::Event(EventRow {
            ts: ended,
            container: self.container.clone(),
            stream: at.stream,
            seq: at.seq,
            key_ts: at.key_ts,
            level: Level::Error,
            kind: kind::TRAINING_FAILED,
            message: redact::text(&message).into_owned(),
            context: context.to_string(),
        }));
    }

    /// Ends the current run as interrupted if it is still running (a new process started).
    fn interrupt_current(&mut self, out: &mut Vec<Op>) {
        if let Some(run) = self.run.as_mut()
            && run.row.status == RunStatus::Running
        {
            run.row.status = RunStatus::Interrupted;
            run.row.ended_at = Some(run.last_ts);
            out.push(Op::Run(run.row.clone()));
        }
        if let Some(run) = self.run.take()
            && let Some(dir) = &run.row.save_dir
        {
            self.by_save_dir.insert(dir.clone(), run.row);
        }
    }

    /// The container stopped and its log was read to the end (at `exit.finished_at`): a run
    /// still running ended with it, as `interrupted` when the process was stopped on purpose
    /// (exit 0, or SIGINT / SIGTERM: 130, 143), else as `failed` (another code, or the kernel's
    /// OOM killer). A `training_container_died` event tells how a training container died: its
    /// run's status, or none when no run ended with it (it died before its first run, or after
    /// its run had ended; a run that failed in this life of the container, by its traceback,
    /// is that death, told already).
    pub fn container_exited(&mut self, exit: &Exit, training: bool, out: &mut Vec<Op>) {
        let Exit {
            finished_at: ts,
            started_at,
            exit_code,
            oom_killed,
        } = *exit;
        let died = oom_killed || exit_code != Some(0);
        let stopped = !oom_killed && matches!(exit_code, Some(0 | 130 | 143));
        let how = if oom_killed {
            "was killed by the kernel's OOM killer".to_string()
        } else {
            match exit_code {
                Some(c) => format!("exited with code {c}{}", signal_name(c)),
                None => "stopped (exit code unknown)".into(),
            }
        };
        let running = self.run.as_ref().is_some_and(Run::is_running);
        if !running {
            // Ended in this life of the container: its end was this death.
            let ended_here = self.run.as_ref().is_some_and(|r| {
                r.row
                    .ended_at
                    .is_some_and(|e| started_at.is_none_or(|s| e >= s))
            });
            if died && (training || self.run.is_some()) && !ended_here {
                let message = format!(
                    "Training container {} {how} with no run running",
                    self.container
                );
                let context = json!({
                    "exit_code": exit_code,
                    "oom_killed": oom_killed,
                    "epoch": null,
                    "epochs_total": null,
                    "status": null,
                });
                out.push(self.died_event(ts, oom_killed, message, &context));
            }
            return;
        }
        let run = self.run.as_ref().expect("running");
        let epoch = format!(" {}", run.when());
        // A service that logged an error it did not recover from and exited 0 failed.
        let logged = run
            .last_error
            .clone()
            .filter(|_| exit_code == Some(0) && !oom_killed);
        let status = if stopped && logged.is_none() {
            RunStatus::Interrupted
        } else {
            RunStatus::Failed
        };
        let (last_epoch, epochs_total) = (run.last_epoch, run.row.epochs_total);
        let ended = ts.max(run.last_ts);
        let at = EventAt {
            ts: ended,
            stream: "docker",
            key_ts: ended,
            // The daemon's own `container_died` is at seq 0 of its event time, the
            // `training_container_died` at 1.
            seq: 2,
        };
        if died {
            let message = format!(
                "Training container {} {how}{epoch} while its run was running; the run is {}",
                self.container,
                status.as_str()
            );
            let context = json!({
                "exit_code": exit_code,
                "oom_killed": oom_killed,
                "epoch": last_epoch,
                "epochs_total": epochs_total,
                "status": status.as_str(),
            });
            out.push(self.died_event(ended, oom_killed, message, &context));
        }
        let failure = match logged {
            Some(error) => format!("{error} (then exited with code 0)"),
            None if stopped && exit_code == Some(0) => {
                "exited with code 0 before its last epoch".to_string()
            }
            None => how,
        };
        self.end_badly(at, status, failure, exit_code, out);
    }

    /// The `training_container_died` event at `ts`.
    fn died_event(&self, ts: i64, oom_killed: bool, message: String, context: &Value) -> Op {
        Op::Event(EventRow {
            ts,
            container: self.container.clone(),
            stream: "docker",
            // The daemon's own `container_died` is at seq 0 of its event time.
            seq: 1,
            key_ts: ts,
            level: if oom_killed {
                Level::Critical
            } else {
                Level::Error
            },
            kind: kind::TRAINING_CONTAINER_DIED,
            message,
            context: context.to_string(),
        })
    }

    fn new_run(&mut self, rec: &Record, opening: Opening, starting: bool, out: &mut Vec<Op>) {
        let Opening {
            epochs,
            save_dir,
            model,
            params,
        } = opening;
        self.interrupt_current(out);
        let row = RunRow {
            key: RunKey {
                container: self.container.clone(),
                stream: rec.stream,
                ts: rec.key.ts,
                seq: rec.key.seq,
            },
            started_at: rec.ts,
            ended_at: None,
            status: RunStatus::Running,
            epochs_total: epochs,
            best_epoch_reported: None,
            save_dir,
            model,
            loss_names: self.loss_names.clone(),
            params,
            ultralytics_version: self.banner.clone(),
            failure: None,
        };
        out.push(Op::Run(row.clone()));
        // A `model.tune()` iteration: tagged in its params.
        if let Some((k, n)) = self.tune.take() {
            out.push(Op::RunPatch(
                row.key.clone(),
                crate::derive::RunPatch::ParamsOverride(
                    json!({ "tune_iteration": k.to_string(), "tune_iterations": n.to_string() })
                        .to_string(),
                ),
            ));
        }
        self.final_validation = false;
        self.run = Some(Run {
            row,
            last_epoch: None,
            zero_based: is_yolov5(&self.loss_names),
            last_ts: rec.ts,
            starting,
            header_open: false,
            bars_seen: false,
            train_start: None,
            nan_epoch: None,
            last_error: None,
            csv_rows: None,
            ends: Vec::new(),
            stall_said: None,
        });
    }

    /// Continues the run with `save_dir` (or the latest one) after a resume.
    fn continue_run(
        &mut self,
        rec: &Record,
        save_dir: Option<&str>,
        epochs: Option<u32>,
        out: &mut Vec<Op>,
    ) -> bool {
        let same_dir = |r: &RunRow| match (save_dir, r.save_dir.as_deref()) {
            (Some(a), Some(b)) => paths::same(a, b),
            _ => true,
        };
        let current_matches = self.run.as_ref().is_some_and(|r| same_dir(&r.row));
        if !current_matches {
            let Some(row) = save_dir.and_then(|d| self.take_by_save_dir(d)) else {
                return false;
            };
            self.interrupt_current(out);
            let zero_based = is_yolov5(&row.loss_names);
            self.run = Some(Run {
                row,
                last_epoch: None,
                zero_based,
                last_ts: rec.ts,
                starting: false,
                header_open: false,
                bars_seen: false,
                train_start: None,
                nan_epoch: None,
                last_error: None,
                csv_rows: None,
                ends: Vec::new(),
                stall_said: None,
            });
        }
        let run = self.run.as_mut().expect("run set above");
        run.row.status = RunStatus::Running;
        run.row.ended_at = None;
        run.row.failure = None;
        if epochs.is_some() {
            run.row.epochs_total = epochs;
        }
        if run.row.save_dir.is_none() {
            run.row.save_dir = save_dir.map(str::to_string);
        }
        run.last_ts = rec.ts;
        run.starting = true;
        self.final_validation = false;
        out.push(Op::Run(run.row.clone()));
        true
    }

    /// Removes and returns the earlier run whose save_dir `dir` names (the best match: an
    /// exact path before the longest shared tail).
    fn take_by_save_dir(&mut self, dir: &str) -> Option<RunRow> {
        let best = self
            .by_save_dir
            .keys()
            .filter_map(|k| Some((paths::match_score(k, dir)?, k)))
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
            .map(|(_, k)| k.clone())?;
        self.by_save_dir.remove(&best)
    }

    /// Makes sure there is a running run for an epoch line that arrived without a start.
    pub(super) fn ensure_run(&mut self, rec: &Record, epochs: u32, epoch: u32, out: &mut Vec<Op>) {
        let usable = self.run.as_ref().is_some_and(|r| {
            r.row.status == RunStatus::Running
                || r.row.status == RunStatus::Failed
                || (r.last_epoch.is_none_or(|last| epoch > last)
                    && !matches!(r.row.status, RunStatus::Completed | RunStatus::EarlyStopped))
        });
        if !usable || self.final_validation {
            self.new_run(
                rec,
                Opening {
                    epochs: Some(epochs),
                    ..Opening::default()
                },
                false,
                out,
            );
        }
    }
}
