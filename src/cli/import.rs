//! `trainwatch import DIR...`: run folders with no log (months of past trainings), one run per
//! folder from its results.csv and args.yaml, merged with the run a log already gave for the
//! same folder; importing again adds nothing.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use trainwatch::pipeline;
use trainwatch::source::runfolder::PathMap;

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Container name for runs no log named (default: `import`).
    #[arg(long, default_value = "import")]
    pub container: String,
    /// Where a run folder printed inside a container is here (to find the run a log named):
    /// `CONTAINER_PREFIX=LOCAL_PREFIX`, repeatable; added to `[runs] path_map`.
    #[arg(long = "path-map", value_name = "CONTAINER_PREFIX=LOCAL_PREFIX", value_parser = PathMap::parse)]
    pub path_map: Vec<PathMap>,
    /// Run folders (holding results.csv), or folders with run folders under them (3 levels).
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
}

pub fn run(args: ImportArgs, db: &Path, config: Option<&Path>) -> anyhow::Result<()> {
    let cfg = super::load_config(config)?;
    let mut path_map = cfg.runs.path_maps().map_err(anyhow::Error::msg)?;
    path_map.extend(args.path_map.iter().cloned());
    let s = pipeline::import(&args.dirs, &args.container, db.to_path_buf(), &path_map)
        .with_context(|| format!("importing into {}", db.display()))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(
        out,
        "imported {} run folder(s): {} new run(s), {} merged into runs their logs gave, {} results.csv row(s)",
        s.folders, s.new_runs, s.merged, s.rows
    )?;
    if s.bad_rows > 0 {
        writeln!(
            out,
            "skipped: {} results.csv row(s) without their epoch or cells",
            s.bad_rows
        )?;
    }
    for (path, why) in &s.unreadable {
        writeln!(out, "not readable: {} ({why})", path.display())?;
    }
    Ok(())
}
