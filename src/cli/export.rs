//! `trainwatch export mlflow`: sends the stored training history (every run, its params, its
//! epochs as metric points, its status) to an MLflow tracking server, as `watch` does live
//! when `[mlflow]` is configured. Idempotent: only what the server has not acknowledged is
//! sent, so it can run again (from cron, after a replay) and adds nothing.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};

use trainwatch::output::mlflow::{Exporter, Summary};

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(subcommand)]
    pub target: ExportTarget,
}

#[derive(Subcommand, Debug)]
pub enum ExportTarget {
    /// Export runs, params, per-epoch metrics and statuses to an MLflow tracking server.
    Mlflow(MlflowArgs),
}

#[derive(Args, Debug)]
pub struct MlflowArgs {
    /// The tracking server (default: config `mlflow.tracking_uri`).
    #[arg(long, env = "MLFLOW_TRACKING_URI", value_name = "URI")]
    pub tracking_uri: Option<String>,
    /// The experiment (default: config `mlflow.experiment`, "trainwatch"); created if missing.
    #[arg(long)]
    pub experiment: Option<String>,
    /// Keep retrying a server that does not answer (or answers 5xx) for this long without
    /// progress before giving up (e.g. 0s, 90s, 10m).
    #[arg(long, default_value = "60s", value_name = "AGE")]
    pub retry_for: String,
    /// Send again the runs the server refused before (after fixing the cause).
    #[arg(long)]
    pub retry_failed: bool,
}

#[expect(
    clippy::too_many_lines,
    reason = "the export command's retry loop with its progress lines, read top to bottom"
)]
pub fn run(args: ExportArgs, db: &Path, config: Option<&Path>) -> anyhow::Result<()> {
    let ExportTarget::Mlflow(args) = args.target;
    let mut cfg = super::load_config(config)?.mlflow_settings();
    if let Some(u) = args.tracking_uri {
        cfg.tracking_uri = Some(u);
    }
    if let Some(e) = args.experiment {
        cfg.experiment = e;
    }
    if !cfg.enabled() {
        anyhow::bail!(
            "no MLflow tracking server: give --tracking-uri (or MLFLOW_TRACKING_URI), or set mlflow.tracking_uri in the config"
        );
    }
    if let Some(p) = cfg.problem() {
        anyhow::bail!("{p}");
    }
    let retry_for = trainwatch::time::parse_age(&args.retry_for).with_context(|| {
        format!(
            "invalid --retry-for {:?}: expected e.g. 0s, 90s, 10m",
            args.retry_for
        )
    })?;
    let retry_for = Duration::from_nanos(retry_for.max(0) as u64);
    // The friendly message when the database is missing; upgraded to this schema if older.
    drop(super::open_ro(db)?);
    let uri = cfg.tracking_uri.clone().unwrap_or_default();
    let experiment = cfg.experiment.clone();
    // The export's progress is recorded by a writer of its own (beside a running `watch`'s,
    // as any second process writes: waiting on the lock).
    let writer = trainwatch::store::WriterHandle::spawn(db.to_path_buf())
        .with_context(|| format!("opening {} for the export", db.display()))?;
    let exporter = Exporter::new(
        cfg,
        db.to_path_buf(),
        writer.sender().context("store writer")?,
    )
    .with_context(|| format!("opening {} for the export", db.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = rt.block_on(async {
        if args.retry_failed {
            let n = exporter.retry_refused().await?;
            if n > 0 {
                tracing::info!(runs = n, "Runs refused before are sent again.");
            }
        }
        let mut s = Summary::default();
        let mut failures = 0u32;
        let mut last_progress = Instant::now();
        loop {
            let sent = |s: &Summary| {
                s.runs_created + s.runs_updated + s.params + s.points + s.artifacts + s.runs_linked
            };
            let before = sent(&s);
            match exporter.pass(&mut s).await {
                Ok(()) => break,
                Err(e) if e.transient() => {
                    if sent(&s) > before {
                        last_progress = Instant::now();
                        failures = 0;
                    }
                    let wait = trainwatch::backoff::DELIVERY.delay(failures);
                    if last_progress.elapsed() + wait > retry_for {
                        return Err(anyhow::Error::new(e).context(format!(
                            "exporting to {uri} (what was sent is kept; run again to send the rest)"
                        )));
                    }
                    tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "MLflow export failed; retrying.");
                    failures += 1;
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!("exporting to {uri}")));
                }
            }
        }
        let refused = exporter.refused().await?;
        anyhow::Ok((s, refused))
    });
    drop(exporter);
    writer
        .finish()
        .with_context(|| format!("recording the export in {}", db.display()))?;
    let (summary, refused) = result?;
    let stdout = std::io::stdout();
    let mut o = stdout.lock();
    writeln!(
        o,
        "exported to {uri} (experiment {experiment:?}): {} runs created, {} runs updated, {} params, {} metric points in {} requests",
        summary.runs_created,
        summary.runs_updated,
        summary.params,
        summary.points,
        summary.requests
    )?;
    if summary.artifacts + summary.runs_linked > 0 {
        writeln!(
            o,
            "{} artifact file(s) uploaded ({:.1} MB), {} run(s) linked to the training's own MLflow run",
            summary.artifacts,
            summary.artifact_bytes as f64 / 1e6,
            summary.runs_linked
        )?;
    }
    if !refused.is_empty() {
        for (run, why) in &refused {
            writeln!(std::io::stderr(), "run {run} refused: {why}")?;
        }
        anyhow::bail!(
            "the tracking server refused {} run(s); fix the cause and run with --retry-failed",
            refused.len()
        );
    }
    Ok(())
}
