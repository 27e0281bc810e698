//! `trainwatch watch`: follows the training server's containers live until SIGTERM/SIGINT,
//! then stops gracefully: stop reading, flush, commit, checkpoint, exit 0.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use trainwatch::derive::alerts::Engine;
use trainwatch::output::mlflow::Exporter;
use trainwatch::output::notify::Notifier;
use trainwatch::output::serve;
use trainwatch::parse::Parser;
use trainwatch::pipeline::live;
use trainwatch::source::docker::{self, Shared};
use trainwatch::source::probes;
use trainwatch::store::{AlertSink, StoreHealth, WriterHandle, WriterOptions};
use trainwatch::time::Clock;

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Serve the status page, /status.json, /healthz and /metrics on this address
    /// (e.g. 127.0.0.1:9750). Off by default.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
}

pub fn run(args: WatchArgs, db: &Path, config: Option<&Path>) -> anyhow::Result<()> {
    let cfg = super::load_config(config)?;
    let parser = Arc::new(Parser::new(cfg.patterns()?));
    let wake = Arc::new(tokio::sync::Notify::new());
    let store_health = StoreHealth::default();
    let engine = Engine::new(
        cfg.alerts.clone(),
        true,
        cfg.probes.data_root.display().to_string(),
    );
    let writer = WriterHandle::spawn_with(
        db.to_path_buf(),
        WriterOptions {
            alerts: Some(AlertSink::new(
                engine,
                cfg.notify.receiver_names(),
                Some(wake.clone()),
            )),
            retry: true,
            health: Some(store_health.clone()),
        },
    )
    .with_context(|| format!("opening {}", db.display()))?;
    let sender = writer.sender().context("store writer")?;
    let notifier = Notifier::new(
        cfg.notify.clone(),
        db.to_path_buf(),
        sender.clone(),
        store_health.clone(),
    )
    .with_context(|| format!("opening {} for alert delivery", db.display()))?;
    let exporter = if cfg.mlflow.enabled() {
        Some(
            Exporter::new(cfg.mlflow_settings(), db.to_path_buf(), sender.clone())
                .with_context(|| format!("opening {} for the MLflow export", db.display()))?,
        )
    } else {
        None
    };
    // One thread runs every follower: the work per line is small, and a task hopping between
    // workers cost more in wake-ups than it gained (bench/watch.py); SQLite has its own thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let shutdown = CancellationToken::new();
    let dcfg = Arc::new(cfg.docker.clone());
    tracing::info!(
        db = %db.display(),
        receivers = cfg.notify.receivers.len(),
        "Watching Docker containers."
    );
    let dbp = db.to_path_buf();
    // Bound before anything starts, so a taken port is an error at start, not a log line.
    let listener = match args.listen {
        Some(addr) => Some(
            rt.block_on(tokio::net::TcpListener::bind(addr))
                .with_context(|| format!("--listen {addr}"))?,
        ),
        None => None,
    };
    rt.block_on(async move {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("Stopping: finishing reads and committing.");
            stop.cancel();
        });
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
        tasks.spawn(trainwatch::store::retention::schedule(
            sender.clone(),
            cfg.retention.clone(),
            shutdown.clone(),
        ));
        let files = trainwatch::output::files::StatusFiles {
            json: cfg.status.path(&dbp),
            html: cfg.status.html_path(&dbp),
        };
        if files.json.is_some() || files.html.is_some() {
            tasks.spawn(trainwatch::output::files::write_files(
                dbp.clone(),
                files,
                store_health.clone(),
                cfg.status.clone(),
                shutdown.clone(),
            ));
        }
        if let Some(listener) = listener {
            let router = serve::router(
                dbp.clone(),
                cfg.status.max_age.0,
                store_health,
                cfg.status.interval.as_duration().as_secs().max(5),
            );
            let stop = shutdown.clone();
            let limits = cfg.listen;
            tasks.spawn(async move {
                if let Err(e) = serve::serve_with(listener, router, stop.clone(), limits).await {
                    tracing::error!(error = %e, "The status page server failed; stopping.");
                    stop.cancel();
                }
            });
        }
        tasks.close();
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
                db: dbp,
            };
            live::run(shared, followers).await;
        } else {
            drop((sender, notices));
        }
        tasks.wait().await;
    });
    drop(rt);
    let stats = writer.finish().context("committing the last batches")?;
    tracing::info!(
        lines_read =
            trainwatch::telemetry::Counters::get(&trainwatch::telemetry::COUNTERS.lines_read),
        events = stats.events_inserted,
        batches = stats.batches,
        alert_changes = stats.alerts_changed,
        "Stopped."
    );
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
