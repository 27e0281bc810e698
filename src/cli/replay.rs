//! `trainwatch replay`: archived Docker json-file logs and plain text logs into the store.

use std::path::{Path, PathBuf};

use std::io::Write;

use anyhow::Context;
use clap::Args;

use trainwatch::parse::Parser;
use trainwatch::pipeline;

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// Container name to record (default: the id from `<id>-json.log`, or the file's stem).
    #[arg(long)]
    pub container: Option<String>,
    /// Where a run folder printed inside the container is here: `CONTAINER_PREFIX=LOCAL_PREFIX`
    /// (repeatable; the longest matching prefix wins; added to `[runs] path_map`). Its
    /// results.csv completes the run's history.
    #[arg(long = "path-map", value_name = "CONTAINER_PREFIX=LOCAL_PREFIX", value_parser = parse_path_map)]
    pub path_map: Vec<trainwatch::source::runfolder::PathMap>,
    /// Log files, directories of rotated logs, quoted globs (`'/var/lib/docker/containers/*/*-json.log*'`),
    /// or `-` for standard input; pipes (`<(zcat old.log.gz)`) and named FIFOs are read once.
    #[arg(required = true)]
    pub files: Vec<String>,
}

fn parse_path_map(s: &str) -> Result<trainwatch::source::runfolder::PathMap, String> {
    trainwatch::source::runfolder::PathMap::parse(s)
}

pub fn run(args: ReplayArgs, db: &Path, config: Option<&Path>) -> anyhow::Result<()> {
    let cfg = super::load_config(config)?;
    let mut path_map = cfg.runs.path_maps().map_err(anyhow::Error::msg)?;
    path_map.extend(args.path_map.iter().cloned());
    let parser = Parser::new(cfg.patterns()?);
    // A new database in a new directory (a typo, or a first run): say so, on stderr.
    if let Some(dir) = db
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        let _ = writeln!(
            std::io::stderr(),
            "note: {} does not exist; creating it for the new database {}",
            dir.display(),
            db.display()
        );
    }
    let start = std::time::Instant::now();
    let s = pipeline::replay_with(
        &args.files,
        args.container.as_deref(),
        PathBuf::from(db),
        &parser,
        &trainwatch::derive::alerts::Rules::default(),
        &path_map,
    )
    .with_context(|| format!("replaying into {}", db.display()))?;
    let secs = start.elapsed().as_secs_f64();
    // Results go to stdout; a closed pipe ends the command quietly (see main).
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(
        out,
        "replayed {} file(s), {:.1} MB in {:.2}s ({:.1} MB/s): {} lines ({} already stored), {} records",
        s.files,
        s.bytes as f64 / 1e6,
        secs,
        s.bytes as f64 / 1e6 / secs.max(1e-9),
        s.lines,
        s.already_stored,
        s.records
    )?;
    writeln!(
        out,
        "stored: {} events ({} duplicates ignored), {} epoch updates, {} run updates, {} metric samples",
        s.write.events_inserted,
        s.write.events_duplicate,
        s.write.epochs_written,
        s.write.runs_written,
        s.write.metrics_inserted
    )?;
    if !s.by_kind.is_empty() {
        let kinds: Vec<String> = s.by_kind.iter().map(|(k, n)| format!("{k}={n}")).collect();
        writeln!(out, "events by kind: {}", kinds.join(" "))?;
    }
    let f = &s.folders;
    if f.read > 0 || !f.unreadable.is_empty() {
        writeln!(
            out,
            "run folders: {} read ({} results.csv rows{}), {} not readable",
            f.read,
            f.rows,
            if f.bad_rows > 0 {
                format!(", {} bad", f.bad_rows)
            } else {
                String::new()
            },
            f.unreadable.len()
        )?;
        for (printed, looked_at, why) in &f.unreadable {
            writeln!(
                out,
                "  run folder {printed}: {} ({why}); map it with --path-map CONTAINER_PREFIX=LOCAL_PREFIX",
                looked_at.display()
            )?;
        }
    }
    if s.skips.total() > 0 {
        let r: Vec<String> = s
            .skips
            .by_reason
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        writeln!(out, "skipped: {}", r.join(" "))?;
    } else {
        writeln!(out, "skipped: none")?;
    }
    Ok(())
}
