//! `trainwatch watch`: follows the training server's containers live until SIGTERM/SIGINT,
//! then stops gracefully: stop reading, flush, commit, checkpoint, exit 0.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use trainwatch::parse::Parser;
use trainwatch::source::docker::{self, Shared};
use trainwatch::store::WriterHandle;

#[derive(Args, Debug)]
pub struct WatchArgs {}

pub fn run(_args: WatchArgs, db: &Path, config: Option<&Path>) -> anyhow::Result<()> {
    let cfg = super::load_config(config)?;
    let parser = Arc::new(Parser::new(cfg.patterns()?));
    let writer = WriterHandle::spawn(db.to_path_buf())
        .with_context(|| format!("opening {}", db.display()))?;
    // One thread runs every follower: the work per line is small, and a task hopping between
    // workers cost more in wake-ups than it gained (bench/watch.py); SQLite has its own thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let shutdown = CancellationToken::new();
    let sender = writer.sender().context("store writer")?;
    let dcfg = Arc::new(cfg.docker.clone());
    tracing::info!(db = %db.display(), "Watching Docker containers.");
    let dbp = db.to_path_buf();
    rt.block_on(async move {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("Stopping: finishing reads and committing.");
            stop.cancel();
        });
        // The daemon may be down at start: connect retries until it answers or we stop.
        let Some(docker) = docker::connect(&sender, &dcfg, &shutdown).await else {
            return;
        };
        let shared = Shared {
            docker,
            parser,
            writer: sender,
            db: dbp,
            cfg: dcfg,
            shutdown,
        };
        docker::run(shared).await;
    });
    drop(rt);
    let stats = writer.finish().context("committing the last batches")?;
    tracing::info!(
        events = stats.events_inserted,
        batches = stats.batches,
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
