//! trainwatch turns the logs of an ML training server's Docker containers (Ultralytics YOLO
//! training, an annotation queue consumer) into typed events, metrics, training history and
//! alerts, stored in SQLite.
//!
//! ```text
//!  sources              assemble               parse               derive               store                outputs
//!  ───────              ────────               ─────               ──────               ─────                ───────
//!  Docker logs      ─┐  partial merge (16 KiB) service JSON        runs & epochs        one writer thread,   alert delivery,
//!  json-file (.gz,   ├─> \r frames, ANSI,   ─> Ultralytics rows ─> metrics (counters, ─> batched         ─> status file & page,
//!   rotated sets)    │  tracebacks/multiline  Python logging      gauges), events;     transactions,        /metrics, health,
//!  plain text logs  ─┘                                            alert rules          cursor + natural     MLflow export
//!  probes (GPU, disk, offset), Docker events and stats ─────────────────────────────>  keys
//!  run folders (results.csv, weights/) ──────────────────────────> merged into runs
//! ```
//! `replay` (archived files) and `watch` (the Docker source) hand their lines to one ingest
//! driver ([`pipeline::ingest`]); every stage after the source is shared. The store's writer
//! thread is the only writer: the outputs read, and hand what their receivers acknowledged
//! back to it ([`store::outbox`]).
//!
//! # Layout
//! - [`source`]: live Docker follow, files, json-file reader with partial merge, plain text,
//!   host probes, run folders (results.csv as it grows, checkpoints).
//! - [`grammar`]: the line grammars (nom) of Python logging and Ultralytics' console, used by
//!   assembly (what starts a group, what a frame is) and by parsing.
//! - [`assemble`]: `\r` frames, ANSI stripping, multi-line grouping.
//! - [`parse`]: line parsers (nom for text, serde_json for JSON) and message patterns.
//! - [`derive`](mod@derive): the per-container run/epoch state machine and metrics.
//! - [`derive::alerts`]: the alert rule engine, run by the store's writer on committed rows.
//! - [`store`]: SQLite schema, writer, queries, alerts and their outbox, silences, retention.
//! - [`output`]: alert delivery (webhooks, Alertmanager, e-mail), the status file and page,
//!   `/metrics`, results.csv and the MLflow export.
//! - [`pipeline`]: the one ingest driver, and the two inputs that feed it: replay (files) and
//!   live (a follower per container of the Docker source, with its run folder); import (run
//!   folders with no log).
//! - [`watch`]: `watch` as one value: what it opens, starts, and stops, in which order.
//! - [`redact`]: secret and payload redaction before anything is stored or logged.
//! - [`telemetry`]: trainwatch's own logs in the service JSON format.
//! - [`words`]: fixed words found in any case with a SIMD searcher (redaction, pattern gate).
//! - [`config`], [`time`], [`event`], [`error`], [`hash`]: shared pieces, below everything
//!   that uses them.

pub mod assemble;
pub mod backoff;
pub mod config;
pub mod derive;
pub mod error;
pub mod event;
pub mod grammar;
pub mod hash;
pub mod output;
pub mod parse;
pub mod pipeline;
pub mod redact;
pub mod source;
pub mod store;
pub mod sys;
pub mod telemetry;
pub mod time;
pub mod watch;
pub mod words;
