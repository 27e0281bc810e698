//! `trainwatch status`: a one-screen summary of the current run, GPUs, disk, queue and alerts;
//! `--html FILE` writes the self-contained status page instead.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use trainwatch::output::{page, status};
use trainwatch::time::{ago, human_duration, since};

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Write the HTML status page to FILE (atomically) instead of printing.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Data older than this counts as stale (default: `[status] max_age`, 10m).
    #[arg(long, value_parser = super::health::parse_age)]
    pub max_age: Option<i64>,
}

fn opt(v: Option<f64>, digits: usize, unit: &str) -> String {
    v.map(|v| format!("{v:.digits$}{unit}"))
        .unwrap_or_else(|| "–".into())
}

fn dur(v: Option<f64>) -> String {
    v.map(|s| human_duration((s * 1e9) as i64))
        .unwrap_or_else(|| "–".into())
}

/// A progress bar of `width` cells.
pub fn bar(done: i64, total: i64, width: usize) -> String {
    let frac = if total > 0 {
        (done as f64 / total as f64).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let full = (frac * width as f64).round() as usize;
    format!(
        "[{}{}] {:>3.0}%",
        "█".repeat(full),
        "░".repeat(width - full),
        frac * 100.0
    )
}

pub fn run(args: StatusArgs, db: &Path, config: Option<&Path>) -> anyhow::Result<()> {
    let cfg = super::load_config(config)?;
    let max_age = args.max_age.unwrap_or(cfg.status.max_age.0);
    let conn = super::open_ro(db)?;
    let now = trainwatch::time::now_ns();
    let s = status::collect_beside(&conn, db, now, max_age).context("reading the status")?;
    if let Some(path) = args.html {
        let html = page::build(&conn, &s, now, None).context("building the status page")?;
        trainwatch::sys::write_atomic(&path, html.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        return Ok(());
    }
    let stdout = std::io::stdout();
    let mut o = stdout.lock();
    header(&mut o, now, &s)?;
    training(&mut o, now, &s)?;
    checkpoint_and_gpus(&mut o, now, &s)?;
    containers(&mut o, now, &s)?;
    disk_queues_alerts(&mut o, now, &s)?;
    Ok(())
}

/// The health line and how fresh the data is.
fn header(o: &mut impl Write, now: i64, s: &status::Status) -> std::io::Result<()> {
    writeln!(o, "{}", s.health.line)?;
    // Ages, not timestamps (`--format json` of `health` has those).
    writeln!(
        o,
        "updated {}; heartbeat {}; newest record {}",
        s.generated_at
            .get(..19)
            .map(|t| format!("{} UTC", t.replace('T', " ")))
            .unwrap_or_default(),
        ago(now, s.heartbeat_at.as_deref()),
        ago(now, s.newest_record_at.as_deref())
    )?;
    writeln!(o)?;
    Ok(())
}

/// The current training run.
fn training(o: &mut impl Write, now: i64, s: &status::Status) -> std::io::Result<()> {
    match &s.training {
        None => writeln!(o, "Training   no run recorded")?,
        Some(t) => {
            let total = t.epochs_total.unwrap_or(0);
            writeln!(
                o,
                "Training   run {} ({}) {}  epoch {}/{}  {}",
                t.run_id,
                t.container,
                t.status,
                t.epoch,
                t.epochs_total
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "?".into()),
                bar(t.epoch, total, 24)
            )?;
            if let Some(f) = &t.failure {
                writeln!(o, "           why          {}", clip_chars(f, 100))?;
            }
            if let Some(p) = &t.folder_problem {
                writeln!(o, "           run folder   {}", clip_chars(p, 100))?;
            }
            let losses = page::losses_text(&t.losses).unwrap_or_else(|| opt(t.loss, 4, ""));
            writeln!(o, "           last losses  {losses}")?;
            let summary = t.metrics_summary();
            // A classification run has no box metrics: its accuracy line stands instead.
            let boxes = t.map50.is_some() || t.best_map50_95.is_some() || summary.is_none();
            if boxes {
                writeln!(
                    o,
                    "           mAP50 {}  mAP50-95 {}  best mAP50-95 {}{}",
                    opt(t.map50, 3, ""),
                    opt(t.map50_95, 3, ""),
                    opt(t.best_map50_95, 3, ""),
                    t.best_epoch
                        .map(|e| format!(" (epoch {e})"))
                        .unwrap_or_default()
                )?;
            }
            if let Some(m) = summary {
                let best = match t.best_epoch {
                    Some(e) if !boxes => format!("  best epoch {e}"),
                    _ => String::new(),
                };
                writeln!(o, "           {m}{best}")?;
            }
            let eta = if t.eta_stale {
                "stale (the run has not moved)".to_string()
            } else {
                dur(t.eta_seconds)
            };
            writeln!(
                o,
                "           epoch time {}  last epoch {}  ETA {eta}",
                dur(t.epoch_seconds),
                ago(now, t.last_epoch_at.as_deref()),
            )?;
        }
    }
    Ok(())
}

/// The last checkpoint and each GPU.
fn checkpoint_and_gpus(o: &mut impl Write, now: i64, s: &status::Status) -> std::io::Result<()> {
    match &s.last_checkpoint {
        Some(c) => writeln!(
            o,
            "Checkpoint {} {}: {}",
            c.outcome(),
            ago(now, Some(&c.ts)),
            c.message.lines().next().unwrap_or("")
        )?,
        None => writeln!(o, "Checkpoint none recorded for this run")?,
    }
    if s.gpus.is_empty() {
        writeln!(o, "GPU        no samples")?;
    }
    for g in &s.gpus {
        writeln!(
            o,
            "GPU {:<6} {}  util {}  memory {} / {}",
            g.gpu,
            opt(g.temperature_c, 0, " °C"),
            opt(g.utilization_pct, 0, " %"),
            opt(g.memory_used_mb, 0, ""),
            opt(g.memory_total_mb, 0, " MiB")
        )?;
    }
    Ok(())
}

/// Lines of one kind shown before "and N more": `status` stays one screen with thousands of
/// containers (the page and `--format json` of `health` list them all).
const SHOWN: usize = 8;

/// The followed containers and their Docker stats.
fn containers(o: &mut impl Write, now: i64, s: &status::Status) -> std::io::Result<()> {
    // The followed containers, one line each (a server runs a handful; more are summed).
    for f in s.followed.iter().take(SHOWN) {
        let redacted = s
            .redactions
            .iter()
            .find(|r| r.container == f.container)
            .map(|r| format!("  redacted {}", r.text()))
            .unwrap_or_default();
        writeln!(
            o,
            "Container  {:<28} {:<9} {:<16} last line {}{redacted}",
            f.container,
            f.role,
            f.state_text(),
            ago(now, f.last_line_at.as_deref())
        )?;
    }
    if s.followed_total > SHOWN {
        let down_shown = s
            .followed
            .iter()
            .take(SHOWN)
            .filter(|f| f.is_down())
            .count();
        writeln!(
            o,
            "Container  ... and {} more ({} not running)",
            s.followed_total - SHOWN,
            s.followed_down.saturating_sub(down_shown)
        )?;
    }
    // Secrets in the logs of containers not listed above.
    let listed = |c: &str| s.followed.iter().take(SHOWN).any(|f| f.container == c);
    let others: Vec<_> = s
        .redactions
        .iter()
        .filter(|r| !listed(&r.container))
        .collect();
    for r in others.iter().take(SHOWN) {
        writeln!(o, "Redacted   {}: {}", r.container, r.text())?;
    }
    if others.len() > SHOWN {
        writeln!(
            o,
            "Redacted   ... and {} more containers",
            others.len() - SHOWN
        )?;
    }
    if s.containers.is_empty() {
        writeln!(o, "Stats      no Docker stats")?;
    }
    let bytes = |v: Option<f64>| v.map(status::human_bytes).unwrap_or_else(|| "–".into());
    for c in s.containers.iter().take(SHOWN) {
        writeln!(
            o,
            "Stats      {} ({})  CPU {}  memory {} / {}  net in {} out {}  disk read {} write {}",
            c.container,
            c.role.as_deref().unwrap_or("?"),
            opt(c.cpu_pct, 1, " %"),
            bytes(c.memory_used_bytes),
            bytes(c.memory_limit_bytes),
            bytes(c.network_rx_bytes),
            bytes(c.network_tx_bytes),
            bytes(c.block_read_bytes),
            bytes(c.block_write_bytes),
        )?;
    }
    if s.containers.len() > SHOWN {
        writeln!(o, "Stats      ... and {} more", s.containers.len() - SHOWN)?;
    }
    Ok(())
}

/// The disk, the queues and the firing alerts.
fn disk_queues_alerts(o: &mut impl Write, now: i64, s: &status::Status) -> std::io::Result<()> {
    match &s.disk {
        Some(d) => writeln!(
            o,
            "Disk       {} used ({} of {})  datasets {}  models {}",
            opt(d.used_pct, 1, " %"),
            opt(d.used_gb, 1, " GB"),
            opt(d.total_gb, 1, " GB"),
            opt(d.datasets_gb, 1, " GB"),
            opt(d.models_gb, 1, " GB")
        )?,
        None => writeln!(o, "Disk       no samples")?,
    }
    if s.queues.is_empty() {
        writeln!(o, "Queue      no counters")?;
    }
    // The queues that are down first, then by name.
    let mut queues: Vec<&status::Queue> = s.queues.iter().collect();
    queues.sort_by_key(|q| !q.down);
    for q in queues.iter().take(SHOWN) {
        writeln!(
            o,
            "Queue      {}{}: processed {}  failed {}  offset {} (unchanged for {})",
            q.container,
            if q.down { " DOWN" } else { "" },
            opt(q.processed, 0, ""),
            opt(q.failed, 0, ""),
            opt(q.offset, 0, ""),
            dur(q.offset_age_seconds)
        )?;
    }
    if queues.len() > SHOWN {
        let down = queues.iter().skip(SHOWN).filter(|q| q.down).count();
        let sum = |f: fn(&status::Queue) -> Option<f64>| {
            queues.iter().skip(SHOWN).filter_map(|q| f(q)).sum::<f64>()
        };
        writeln!(
            o,
            "Queue      ... and {} more ({down} DOWN): processed {}  failed {}",
            queues.len() - SHOWN,
            opt(Some(sum(|q| q.processed)), 0, ""),
            opt(Some(sum(|q| q.failed)), 0, ""),
        )?;
    }
    if s.alerts_firing.is_empty() {
        writeln!(o, "Alerts     none firing")?;
    }
    // Most severe first (as stored); `trainwatch alerts` lists them all.
    const ALERTS_SHOWN: usize = 12;
    for a in s.alerts_firing.iter().take(ALERTS_SHOWN) {
        writeln!(
            o,
            "Alert      {:<8} {} for {}: {}",
            a.severity,
            a.alertname,
            since(now, &a.started_at),
            a.summary
        )?;
        if let Some(note) = &a.silenced {
            writeln!(o, "           {note}")?;
        }
    }
    if s.alerts_firing.len() > ALERTS_SHOWN {
        writeln!(
            o,
            "Alert      ... and {} more (trainwatch alerts)",
            s.alerts_firing.len() - ALERTS_SHOWN
        )?;
    }
    Ok(())
}

/// At most `max` characters of `s`, with `…` when cut.
fn clip_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max.saturating_sub(1)) {
        Some((i, _)) if s[i..].chars().count() > 1 => format!("{}…", &s[..i]),
        _ => s.to_string(),
    }
}
