//! Integration tests, one binary. Modules:
//! - `alerts`: rules under paused time, replayed real runs, delivery to a real HTTP receiver
//!   and a real Alertmanager.
//! - `replay`: real Ultralytics captures (fixtures/ultralytics) against their results.csv.
//! - `replay_tqdm`: the same for real captures of the older, tqdm-bar Ultralytics
//!   (fixtures/ultralytics-8.3, fixtures/ultralytics-older: 8.3.40, 8.2.103, 8.0.200).
//! - `crash`: replays killed with kill -9 again and again, then completed, equal one clean
//!   replay in every view, alerts included.
//! - `dedup`: replaying twice, overlapping rotated sets, resuming after a partial replay.
//! - `bad_input`: invalid UTF-8, truncated JSON, 1 MiB lines, NaN, control characters, clock
//!   skew, truncated gzip, missing files.
//! - `queue`: the (synthetic) annotation queue logs, counters, redaction.
//! - `cli`: the binary's commands and their output formats.
//! - `docker`: `watch` against the real Docker daemon (busybox containers from a scratch image).
//! - `family`: real consoles of the YOLO family (an 80-column TTY, RT-DETR, two trainings in
//!   one process, `model.val()` alone, `model.tune()`) against their results.csv.
//! - `jsonlog`: JSON logs of real Python logging libraries (python-json-logger, structlog,
//!   loguru, ecs-logging, the service's own), replayed and followed live.
//! - `endings`: how trainings end (a crash, a NaN, a kill, a `--rm` one-shot, a slow
//!   traceback), followed live with a real webhook receiver; acknowledgements and silences.
//! - `deploy`: the container image built by `packaging/build-image.sh`, run as compose runs it.
//! - `mail`: e-mail alerts through a real SMTP server (aiosmtpd): outage, TLS, login.
//! - `mlflow`: the training history exported to a real MLflow tracking server, killed and
//!   restarted mid-export, against `history`.
//! - `mlflow_folder`: the export as Ultralytics' own MLflow callback logs a run (resolved
//!   params, 0-based steps, the run folder's artifacts), and a training that logs itself linked.
//! - `pipes`: inputs read only once: `<(...)`, standard input, a named FIFO, gzip on a pipe.
//! - `props`: property tests: the parsers never panic; the alert rules keep their invariants
//!   and resume exactly from a snapshot.
//! - `users`: logs users keep and run (relative resume paths, multi-line exception messages,
//!   YOLOv5, pasted/notebook/CRLF/cut consoles) against the values they print.
//! - `runfolder`: a replayed training's results.csv found through `--path-map`: every
//!   column as written, full precision, NaN validation losses alerting.
//! - `runfolder_real`: run folders recorded as real trainings wrote them (NaN validation,
//!   early stop, resume), replayed and written at their recorded pace while `watch` follows.
//! - `secrets`: a followed container that writes secrets: `SecretsInLogs` per kind, the
//!   redactions counted on `/metrics` and in `status`, nothing stored.
//! - `status`: `health` exit codes, `status`, the page in headless Chromium, `/metrics` checked
//!   by promtool and scraped by a real Prometheus.

mod util;

mod alerts;
mod bad_input;
mod cli;
mod crash;
mod dedup;
mod deploy;
mod docker;
mod endings;
mod family;
mod jsonlog;
mod mail;
mod mlflow;
mod mlflow_folder;
mod pipes;
pub(crate) mod props;
mod queue;
mod replay;
mod replay_tqdm;
mod runfolder;
mod runfolder_real;
mod secrets;
mod status;
mod users;
