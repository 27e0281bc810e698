//! `trainwatch watch`: follows the training server's containers live until SIGTERM/SIGINT,
//! then stops gracefully: stop reading, flush, commit, checkpoint, exit 0.

use std::path::Path;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use trainwatch::watch::Watch;

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Serve the status page, /status.json, /healthz and /metrics on this address
    /// (e.g. 127.0.0.1:9750). Off by default.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
}

pub fn run(args: WatchArgs, db: &Path, config: Option<&Path>) -> anyhow::Result<()> {
    let cfg = super::load_config(config)?;
    let watch = Watch::open(cfg, db)?;
    // One thread runs every follower: the work per line is small, and a task hopping between
    // workers cost more in wake-ups than it gained (bench/watch.py); SQLite has its own thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Bound before anything starts, so a taken port is an error at start, not a log line.
    let listener = match args.listen {
        Some(addr) => Some(
            rt.block_on(tokio::net::TcpListener::bind(addr))
                .with_context(|| format!("--listen {addr}"))?,
        ),
        None => None,
    };
    let shutdown = CancellationToken::new();
    let stopping = rt.block_on(async {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("Stopping: finishing reads and committing.");
            stop.cancel();
        });
        watch.run(listener, shutdown).await
    });
    drop(rt);
    let stats = stopping.finish().context("committing the last batches")?;
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
