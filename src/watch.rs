//! `watch`: the composition of every part that runs while trainwatch follows a server live.
//!
//! # Start
//! [`Watch::open`] opens, in this order, what must work before anything is read: the store's
//! writer thread (migrations, the alert engine resumed from its snapshot), the notifier and the
//! MLflow exporter (each on a read-only connection of its own). [`Watch::run`] then starts the
//! tasks: the forwarder of the sources' notices to the writer, the clock, the host probes,
//! alert delivery, the MLflow export, retention, the status file and page, the HTTP server (on
//! a listener the caller bound, so that a taken port is an error at start), and last the Docker
//! source: connecting (retried until the daemon answers or the shutdown), Docker stats, and a
//! follower per container.
//!
//! # Stop
//! Cancelling the shutdown token (the binary does on SIGTERM/SIGINT) stops the followers first:
//! each commits what it read with its cursor. The other tasks see the same token and return;
//! once every sender to the writer is dropped, [`Stopping::finish`] waits for the writer to
//! commit the last batches and checkpoint the database. Nothing read is lost: what was not
//! committed is read again from the cursors at the next start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::derive::alerts::Engine;
use crate::error::{StoreError, WatchError};
use crate::output::files::{StatusFiles, write_files};
use crate::output::mlflow::Exporter;
use crate::output::notify::Notifier;
use crate::output::serve;
use crate::parse::Parser;
use crate::pipeline::live;
use crate::source::docker::{self, Shared};
use crate::source::probes;
use crate::store::lock::{IngestLock, Ingestor};
use crate::store::{AlertSink, StoreHealth, WriteStats, WriterHandle, WriterOptions, WriterSender};
use crate::time::Clock;

/// Everything `watch` runs, opened and not yet started.
pub struct Watch {
    cfg: Config,
    db: PathBuf,
    parser: Arc<Parser>,
    writer: WriterHandle,
    sender: WriterSender,
    notifier: Notifier,
    exporter: Option<Exporter>,
    /// Rung by the writer when it queued a notification.
    wake: Arc<tokio::sync::Notify>,
    store_health: StoreHealth,
    /// This database's one ingestor: held until the last batch is committed.
    lock: IngestLock,
}

/// `watch` after its tasks returned: the writer still commits the last batches.
pub struct Stopping {
    writer: WriterHandle,
    _lock: IngestLock,
}

impl Watch {
    /// Opens the store's writer (with the alert engine), the notifier and the exporter.
    pub fn open(cfg: Config, db: &Path) -> Result<Watch, WatchError> {
        let parser = Arc::new(Parser::new(cfg.patterns()?));
        let wake = Arc::new(tokio::sync::Notify::new());
        let store_health = StoreHealth::default();
        let engine = Engine::new(
            cfg.alerts.clone(),
            true,
            cfg.probes.data_root.display().to_string(),
        );
        let path = db.to_path_buf();
        let store = |source: StoreError| WatchError::Store {
            path: path.clone(),
            source,
        };
        // One ingestor per database: a second watch is refused, a replay waited for.
        let lock = IngestLock::acquire(&path, Ingestor::Watch, |holder| {
            tracing::warn!(
                holder,
                "Database in use by a replay; waiting for it to end."
            );
        })
        .map_err(|e| store(e.into()))?;
        // Never append to a damaged store (an overwritten page): refused with how to recover.
        crate::store::quick_check(&path).map_err(store)?;
        let options = WriterOptions {
            alerts: Some(AlertSink::new(
                engine,
                cfg.notify.receiver_names(),
                Some(wake.clone()),
            )),
            retry: true,
            health: Some(store_health.clone()),
            note: Some(lock.note()),
        };
        let writer = WriterHandle::spawn_with(path.clone(), options).map_err(store)?;
        let sender = writer
            .sender()
            .ok_or(StoreError::WriterGone)
            .map_err(store)?;
        let notifier = Notifier::new(
            cfg.notify.clone(),
            path.clone(),
            sender.clone(),
            store_health.clone(),
        )
        .map_err(|source| WatchError::Notify {
            path: path.clone(),
            source,
        })?;
        let exporter = match cfg.mlflow.enabled() {
            true => Some(
                Exporter::new(cfg.mlflow_settings(), path.clone(), sender.clone()).map_err(
                    |source| WatchError::Mlflow {
                        path: path.clone(),
                        source,
                    },
                )?,
            ),
            false => None,
        };
        Ok(Watch {
            lock,
            cfg,
            db: path,
            parser,
            writer,
            sender,
            notifier,
            exporter,
            wake,
            store_health,
        })
    }

    /// Runs every task until `shutdown` is cancelled (or the status server fails) and they
    /// have all returned; `listener`, when given, serves the page, `/status.json`, `/healthz`
    /// and `/metrics`.
    pub async fn run(
        self,
        listener: Option<tokio::net::TcpListener>,
        shutdown: CancellationToken,
    ) -> Stopping {
        let Watch {
            cfg,
            db,
            parser,
            writer,
            sender,
            notifier,
            exporter,
            wake,
            store_health,
            lock,
        } = self;
        tracing::info!(
            db = %db.display(),
            receivers = cfg.notify.receivers.len(),
            "Watching Docker containers."
        );
        let tasks = tokio_util::task::TaskTracker::new();
        // The sources' notices reach the writer through the pipeline, which makes them ops.
        let (notices, notices_rx) = tokio::sync::mpsc::channel(64);
        tasks.spawn(live::forward(notices_rx, sender.clone()));
        tasks.spawn(probes::clock(
            notices.clone(),
            probes::TICK,
            Clock::new(),
            shutdown.clone(),
        ));
        tasks.spawn(probes::run(
            cfg.probes.clone(),
            notices.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(notifier.run(wake, shutdown.clone()));
        if let Some(exporter) = exporter {
            tasks.spawn(exporter.run(shutdown.clone()));
        }
        tasks.spawn(crate::store::retention::schedule(
            sender.clone(),
            cfg.retention.clone(),
            shutdown.clone(),
        ));
        let files = StatusFiles {
            json: cfg.status.path(&db),
            html: cfg.status.html_path(&db),
        };
        if files.json.is_some() || files.html.is_some() {
            tasks.spawn(write_files(
                db.clone(),
                files,
                store_health.clone(),
                cfg.status.clone(),
                shutdown.clone(),
            ));
        }
        if let Some(listener) = listener {
            tasks.spawn(serve_until(listener, &cfg, &db, store_health, &shutdown));
        }
        tasks.close();
        let dcfg = Arc::new(cfg.docker.clone());
        // The daemon may be down at start: connect retries until it answers or we stop.
        if let Some(docker) = docker::connect(&notices, &dcfg, &shutdown).await {
            if dcfg.stats {
                tasks.spawn(docker::stats::run(
                    docker.clone(),
                    dcfg.clone(),
                    cfg.probes.interval.as_duration(),
                    notices.clone(),
                    shutdown.clone(),
                ));
            }
            let shared = Shared {
                docker,
                notices,
                cfg: dcfg,
                shutdown,
                reconnected: Arc::new(tokio::sync::Notify::new()),
            };
            let followers = live::Live {
                parser,
                writer: sender,
                db,
                // Checked when the config was loaded.
                path_map: Arc::new(cfg.runs.path_maps().unwrap_or_default()),
            };
            live::run(shared, followers).await;
        } else {
            drop((sender, notices));
        }
        tasks.wait().await;
        Stopping {
            writer,
            _lock: lock,
        }
    }
}

/// The status page server until `shutdown`; a failure stops `watch`.
fn serve_until(
    listener: tokio::net::TcpListener,
    cfg: &Config,
    db: &Path,
    store_health: StoreHealth,
    shutdown: &CancellationToken,
) -> impl Future<Output = ()> + use<> {
    let router = serve::router(
        db.to_path_buf(),
        cfg.status.max_age.0,
        store_health,
        cfg.status.interval.as_duration().as_secs().max(5),
    );
    let stop = shutdown.clone();
    let limits = cfg.listen;
    async move {
        if let Err(e) = serve::serve_with(listener, router, stop.clone(), limits).await {
            tracing::error!(error = %e, "The status page server failed; stopping.");
            stop.cancel();
        }
    }
}

impl Stopping {
    /// Waits for the writer to commit what it was sent and checkpoint the database. Call it
    /// outside the async runtime (it blocks on the writer thread).
    pub fn finish(self) -> Result<WriteStats, StoreError> {
        self.writer.finish()
    }
}
