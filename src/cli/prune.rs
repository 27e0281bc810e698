//! `trainwatch prune`: retention. Deletes events and metric samples older than the cutoff in
//! small batches and returns space with incremental vacuum; training history has its own
//! setting (kept by default).

use std::path::Path;

use std::io::Write;

use anyhow::Context;
use clap::Args;

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Age of the oldest events and metric samples kept (default: config `retention.events`, 30d).
    #[arg(long)]
    pub older_than: Option<String>,
    /// Also prune finished training runs and their epochs older than this (default: config
    /// `retention.history`, "keep").
    #[arg(long)]
    pub history_older_than: Option<String>,
    /// Only count what would be deleted.
    #[arg(long)]
    pub dry_run: bool,
}

fn cutoff(age: &str) -> anyhow::Result<String> {
    let ns = trainwatch::time::parse_age(age)
        .with_context(|| format!("invalid age {age:?}: expected e.g. 30d, 12h, 90m"))?;
    Ok(trainwatch::time::format_ns(trainwatch::time::now_ns() - ns))
}

pub fn run(args: PruneArgs, db: &Path, config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let cfg = super::load_config(config)?;
    if !db.exists() {
        anyhow::bail!("database {} does not exist", db.display());
    }
    let conn =
        trainwatch::store::open_rw(db).with_context(|| format!("opening {}", db.display()))?;
    let events_age = args.older_than.unwrap_or(cfg.retention.events);
    let history_age = args.history_older_than.unwrap_or(cfg.retention.history);
    let cut = cutoff(&events_age)?;
    let hist = if history_age == "keep" {
        None
    } else {
        Some(cutoff(&history_age)?)
    };
    let rep = trainwatch::store::retention::prune(&conn, &cut, hist.as_deref(), args.dry_run)
        .context("pruning")?;
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    // Results go to stdout; a closed pipe ends the command quietly (see main).
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(
        out,
        "{verb} {} events, {} metric samples, {} resolved alerts and {} sent notifications older than {events_age} (before {cut}); {} runs and {} epochs ({})",
        rep.events,
        rep.metric_samples,
        rep.alerts,
        rep.notifications,
        rep.runs,
        rep.epochs,
        if hist.is_some() {
            format!("history older than {history_age}")
        } else {
            "history kept".into()
        }
    )?;
    if !args.dry_run {
        writeln!(out, "freed {} pages", rep.freed_pages)?;
    }
    Ok(())
}
