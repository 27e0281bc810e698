//! Live follow: a task per followed container reads its log stream from the Docker source
//! (`GET /containers/{id}/logs?follow&timestamps&since=<cursor>`) and hands every line to the
//! one ingest driver ([`super::ingest`]) that replay uses too; batches go to the store writer.
//!
//! - Framing: multiplexed stdout/stderr frames carry one Docker message each (a 16 KiB piece has
//!   no `\n`, merged by [`Merger`]); a TTY container's raw stream arrives split at `\n` and is
//!   all stdout.
//! - A stream that ends or breaks is re-attached from the cursor with backoff; a stopped
//!   container is read to the end without `follow`, then its run ends with it.

use std::sync::Arc;
use std::time::Duration;

use crate::store::WriterSender;
use bollard::container::LogOutput;
use bollard::query_parameters::{InspectContainerOptions, LogsOptionsBuilder};
use futures_util::{FutureExt, StreamExt};

use crate::derive::alerts::Signal;
use crate::derive::{ContainerState, Exit, Op};
use crate::error::DockerError;
use crate::event::{Key, Notice, Stream};
use crate::parse::Parser;
use crate::source::docker::{
    self, Backoff, ContainerInfo, Exited, Shared, precise_since, split_timestamp,
};
use crate::source::partial::Merger;
use crate::source::runfolder::PathMap;
use crate::telemetry::events::{InternalEvent, LinesRead};

use super::folders::{FolderTail, folder_mapping};
use super::ingest::Ingest;

/// What the followers need besides the Docker source: the parser, the store writer, and the
/// store to read each container's state from.
#[derive(Clone)]
pub struct Live {
    pub parser: Arc<Parser>,
    pub writer: WriterSender,
    pub db: std::path::PathBuf,
    /// `[runs] path_map`: where run folders are here, before the containers' mounts.
    pub path_map: Arc<Vec<PathMap>>,
}

/// Discovery and events (the Docker source), with a follower per selected container, until
/// `shutdown`.
pub async fn run(shared: Shared, live: Live) {
    docker::run(
        shared,
        move |shared: Shared, info: ContainerInfo, role: String| {
            let live = live.clone();
            async move { follow(&shared, &live, &info, &role).await }
        },
    )
    .await
}

/// The sources' notices (probes, Docker stats, discovery) to the store writer as operations,
/// in the order they come, until every source has stopped.
pub async fn forward(mut notices: tokio::sync::mpsc::Receiver<Vec<Notice>>, writer: WriterSender) {
    while let Some(batch) = notices.recv().await {
        let ops: Vec<Op> = batch.into_iter().map(Op::from).collect();
        if writer.send(ops).await.is_err() {
            return;
        }
    }
}

/// Moves the merger's complete lines into the ingest. Returns whether a batch is due.
fn take_lines(merger: &mut Merger, ingest: &mut Ingest<'_>) -> bool {
    let mut due = false;
    while let Some(raw) = merger.pop() {
        due |= ingest.push(raw);
    }
    due
}

/// Takes one message of the logs stream (`timestamps=true`) into the ingest. Returns whether
/// a batch is due.
fn take_message(
    ingest: &mut Ingest<'_>,
    out: LogOutput,
    merger: &mut Merger,
    line_no: &mut u64,
) -> bool {
    let (stream, msg) = match out {
        LogOutput::StdOut { message } | LogOutput::Console { message } => (Stream::Stdout, message),
        LogOutput::StdErr { message } => (Stream::Stderr, message),
        LogOutput::StdIn { .. } => return false,
    };
    let Some((ts, text)) = split_timestamp(&msg) else {
        return false;
    };
    *line_no += 1;
    LinesRead(1).emit();
    // A bar that has not written its `\n` yet arrives in 16 KiB pieces: a NaN in one of
    // them is reported now, not when the epoch ends.
    let live_nan = if text.ends_with('\n') {
        None
    } else {
        crate::assemble::frames::first_nonfinite(&text)
    };
    merger.push(stream, ts, text, *line_no);
    if let (Some(frame), Some(key)) = (live_nan, merger.pending_key(stream)) {
        ingest.unfinished_nonfinite(stream, key, frame);
    }
    take_lines(merger, ingest)
}

/// Sends what is ready (with the cursor); the held samples of past seconds too. Returns
/// false when the writer is gone.
async fn send(ingest: &mut Ingest<'_>, writer: &WriterSender) -> bool {
    match ingest.live_batch() {
        Some(batch) => writer.send(batch).await.is_ok(),
        None => true,
    }
}

/// At most this many log messages are taken from a stream per wakeup.
const READY_CHUNK: usize = 1024;

/// The stored state a follower starts from: the container's derivation state and cursors.
type Stored = (crate::derive::Resume, Option<Key>, Option<Key>);

/// Loads `info`'s stored state. A read of the store can fail for a while (no file descriptors
/// left, a locked or full disk): retried with backoff until it loads or trainwatch shuts down
/// (`None`), never given up, so the container is followed once the cause is gone.
async fn load_stored(shared: &Shared, live: &Live, info: &ContainerInfo) -> Option<Stored> {
    let container = info.name.as_str();
    let mut retry = Backoff::new(crate::backoff::DAEMON);
    let mut reported = false;
    loop {
        let db = live.db.clone();
        let c2: Arc<str> = Arc::from(container);
        let id = info.id.clone();
        let loaded = tokio::task::spawn_blocking(move || -> Result<_, crate::error::StoreError> {
            let conn = crate::store::open_ro(&db)?;
            let resume = crate::store::queries::resume_state(&conn, &c2)?;
            let cursors = crate::store::queries::cursors(&conn, &c2)?;
            Ok((
                resume,
                cursors.get(&(Stream::Stdout, id.clone())).copied(),
                cursors.get(&(Stream::Stderr, id)).copied(),
            ))
        })
        .await;
        match loaded {
            Ok(Ok(v)) => {
                if reported {
                    tracing::info!(container, "Loaded the container's stored state.");
                }
                return Some(v);
            }
            Ok(Err(e)) => {
                if !reported {
                    tracing::error!(container, error = %e, "Cannot load the container's stored state; retrying before following it.");
                    reported = true;
                }
            }
            Err(_) => return None,
        }
        tokio::select! {
            _ = tokio::time::sleep(retry.step()) => {}
            _ = shared.shutdown.cancelled() => return None,
        }
    }
}

/// `LogStreamSilent`: a running container of a watched role (training prints all the time;
/// an idle queue may not) silent across re-attaches for longer than the limit.
struct Silence {
    container: Arc<str>,
    /// Seconds of silence before the alert (0: never).
    after: u64,
    watched: bool,
    quiet_since: tokio::time::Instant,
    silent: bool,
}

impl Silence {
    fn new(shared: &Shared, container: &Arc<str>, role: &str) -> Self {
        Silence {
            container: container.clone(),
            after: shared.cfg.silent_alert_after_secs,
            watched: shared.cfg.silent_alert_roles.iter().any(|r| r == role),
            quiet_since: tokio::time::Instant::now(),
            silent: false,
        }
    }

    fn signal(&self, silent: bool) -> Vec<Op> {
        let container = self.container.clone();
        let signal = Signal::StreamSilent { container, silent };
        vec![Op::Signal(crate::time::now_ns(), signal)]
    }

    /// A tick: the signal that the stream went silent, once it has been for too long.
    fn tick(&mut self) -> Option<Vec<Op>> {
        let due = self.after > 0
            && !self.silent
            && self.watched
            && self.quiet_since.elapsed() >= Duration::from_secs(self.after);
        self.silent |= due;
        due.then(|| self.signal(true))
    }

    /// Data arrived: the signal that the stream flows again, if it was silent.
    fn data(&mut self) -> Option<Vec<Op>> {
        self.quiet_since = tokio::time::Instant::now();
        std::mem::take(&mut self.silent).then(|| self.signal(false))
    }
}

/// What one wakeup took from a log stream.
struct Taken {
    messages: usize,
    /// A batch is ready to be sent.
    due: bool,
    /// The stream ended (`Ok`) or broke.
    stop: Option<Result<(), DockerError>>,
}

/// Takes every message that is ready now, from `first` on (at most [`READY_CHUNK`]): one
/// wakeup for many lines.
async fn take_ready<S>(
    stream: &mut S,
    first: Option<Result<LogOutput, bollard::errors::Error>>,
    f: &mut Ingest<'_>,
    merger: &mut Merger,
    line_no: &mut u64,
) -> Taken
where
    S: futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Unpin,
{
    let mut next = Some(first);
    let mut t = Taken {
        messages: 0,
        due: false,
        stop: None,
    };
    let mut yielded = false;
    loop {
        let item = match next.take() {
            Some(item) => item,
            None => match stream.next().now_or_never() {
                Some(item) => item,
                None if !yielded => {
                    // hyper hands the body over one chunk at a time: let its connection task
                    // decode what it has already read.
                    yielded = true;
                    tokio::task::yield_now().await;
                    continue;
                }
                None => return t,
            },
        };
        yielded = false;
        match item {
            None => t.stop = Some(Ok(())),
            Some(Err(e)) => t.stop = Some(Err(e.into())),
            Some(Ok(out)) => {
                t.due |= take_message(f, out, merger, line_no);
                t.messages += 1;
            }
        }
        if t.stop.is_some() || t.messages == READY_CHUNK {
            return t;
        }
    }
}

/// Whether the container still runs, after its stream ended: `None` once it is removed (its
/// log went with it). A daemon that does not answer (restarting, or the stream broke with
/// it) counts as running. How a stopped one exited goes to `exited`.
async fn still_running(
    shared: &Shared,
    info: &ContainerInfo,
    exited: &mut Option<Exited>,
) -> Option<bool> {
    match shared
        .docker
        .inspect_container(&info.id, None::<InspectContainerOptions>)
        .await
        .map_err(DockerError::from)
    {
        Ok(i) => {
            let state = i.state.unwrap_or_default();
            let running = state.running.unwrap_or(false);
            if !running {
                *exited = Some(Exited::of(&state));
            }
            Some(running)
        }
        Err(e) if e.not_found() => None,
        Err(_) => Some(true),
    }
}

/// The non-follow read of a stopped container reached the end of its log, or a removed
/// container's log is gone: what is still open is let out, and (when how it exited is known)
/// a run still running ended with the container.
async fn read_to_the_end(
    f: &mut Ingest<'_>,
    merger: &mut Merger,
    exited: Option<&Exited>,
    role: &str,
    writer: &WriterSender,
) {
    merger.finish();
    take_lines(merger, f);
    f.finish();
    if let Some(e) = exited {
        let (state, ops) = f.state_and_ops();
        let exit = Exit {
            finished_at: e.finished_at,
            started_at: e.started_at,
            exit_code: e.exit_code,
            oom_killed: e.oom_killed,
        };
        state.container_exited(&exit, role == "training", ops);
    }
    send(f, writer).await;
}

/// A container removed while followed: its log went with it (`docker run --rm`, `docker rm`),
/// so what was read is all there will be, and what is still open (a traceback's group, a line
/// without its end) is let out now. A read that failed (rather than ended) was cut off by the
/// removal: that is said.
async fn let_go_removed(
    f: &mut Ingest<'_>,
    merger: &mut Merger,
    failed: Option<DockerError>,
    role: &str,
    writer: &WriterSender,
) {
    let container = f.container().clone();
    // Only a container none of whose lines was read is certain to have lost some; one read
    // before (`docker rm -f` after its last line) may have lost nothing, and a batch carrying
    // its cursor would bring back the cursors its `destroy` removed.
    if let Some(e) = failed.as_ref().filter(|_| !f.read_any()) {
        removed_before_read(f, &container, e);
    }
    read_to_the_end(f, merger, None, role, writer).await;
    tracing::info!(container = %container, "Container removed; no longer following it.");
}

/// A `log_lost` for a container removed (its log with it) before any of its log was read.
fn removed_before_read(f: &mut Ingest<'_>, container: &str, e: &DockerError) {
    let message = format!(
        "{container} was removed before its log could be read ({e}): every line it printed is lost"
    );
    let context = serde_json::json!({
        "reason": "removed_before_read",
        "lines_read": f.counts.lines,
        "error": e.to_string(),
    });
    let at = Key {
        ts: crate::time::now_ns(),
        seq: 0,
    };
    f.lost(at, "docker", message, context);
}

/// Follows one container until it stops (read to the end) or trainwatch shuts down.
async fn follow(shared: &Shared, live: &Live, info: &ContainerInfo, role: &str) {
    let container: Arc<str> = Arc::from(info.name.as_str());
    let origin: Arc<str> = Arc::from(info.id.as_str());
    let Some((resume, out_cur, err_cur)) = load_stored(shared, live, info).await else {
        return;
    };
    tracing::info!(container = %container, role, "Following container logs.");
    let mut f = Ingest::new(
        &live.parser,
        ContainerState::new(container.clone(), resume),
        origin,
        out_cur,
        err_cur,
    );
    let mut backoff = Backoff::new(crate::backoff::DAEMON);
    let flush_every = Duration::from_millis(shared.cfg.flush_ms.max(1));
    let reattach_after = shared.cfg.reattach_after_silence_secs;
    // Once the container has stopped, the rest is read without `follow`: dockerd (seen with
    // 20.10) ends a follow stream when the container stops even if the reader is behind, so a
    // fast, short-lived container would otherwise lose its last lines.
    let mut draining = false;
    // How it stopped, as the inspect that found it stopped tells.
    let mut exited: Option<Exited> = None;
    let mut silence = Silence::new(shared, &container, role);
    let mut folders = FolderTail::new(folder_mapping(shared, info, &live.path_map).await);
    loop {
        // Lines at the cursor's instant are re-delivered and dropped by key.
        f.restart();
        let since_ns = f.emitted().oldest_ts().unwrap_or(0).max(0);
        let opts = LogsOptionsBuilder::default()
            .follow(!draining)
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .since((since_ns / 1_000_000_000) as i32)
            .build();
        let mut stream = precise_since(&shared.docker, since_ns).logs(&info.id, Some(opts));
        // A fresh merger per connection: pieces of a line not yet whole are re-delivered
        // (open groups of whole lines go on: see `Ingest::restart`).
        let mut merger = Merger::new();
        let mut ticker = tokio::time::interval(flush_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_data = tokio::time::Instant::now();
        let mut line_no = 0u64;
        let ended: Result<(), DockerError> = loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => {
                    // Stop reading; what was emitted is flushed, open pieces and groups are
                    // left to the next start (the cursor does not cover them).
                    send(&mut f, &live.writer).await;
                    return;
                }
                _ = ticker.tick() => {
                    // Let a traceback at the quiet end of a stream out after a while.
                    f.flush_older_than(crate::time::now_ns() - crate::assemble::multiline::MAX_HOLD_NS);
                    folders.poll(&mut f);
                    if !send(&mut f, &live.writer).await {
                        return;
                    }
                    if let Some(ops) = silence.tick() {
                        let _ = live.writer.send(ops).await;
                    }
                    if reattach_after > 0 && last_data.elapsed() >= Duration::from_secs(reattach_after) {
                        break Err(DockerError::Silent(reattach_after));
                    }
                }
                first = stream.next() => {
                    let t = take_ready(&mut stream, first, &mut f, &mut merger, &mut line_no).await;
                    if t.messages > 0 {
                        last_data = tokio::time::Instant::now();
                        if let Some(ops) = silence.data() {
                            let _ = live.writer.send(ops).await;
                        }
                        backoff.reset();
                        if t.due && !send(&mut f, &live.writer).await {
                            return;
                        }
                    }
                    if let Some(end) = t.stop {
                        break end;
                    }
                }
            }
        };
        if draining && ended.is_ok() {
            folders.last_look(&mut f);
            read_to_the_end(&mut f, &mut merger, exited.as_ref(), role, &live.writer).await;
            tracing::info!(container = %container, "Container stopped; its logs were read to the end.");
            return;
        }
        send(&mut f, &live.writer).await;
        let Some(running) = still_running(shared, info, &mut exited).await else {
            return let_go_removed(&mut f, &mut merger, ended.err(), role, &live.writer).await;
        };
        if !running && ended.is_ok() {
            // Pieces of a line not yet whole are re-delivered by the drain (which starts with a
            // fresh merger); open groups go on with what it reads after them.
            draining = true;
            continue;
        }
        if let Err(e) = &ended {
            tracing::warn!(container = %container, error = %e, "Log stream interrupted; re-attaching from the cursor.");
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff.step()) => {}
            _ = shared.reconnected.notified() => backoff.reset(),
        }
    }
}
