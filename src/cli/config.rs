//! `trainwatch config check [FILE]`: validates a config file as `watch` would (every section,
//! the patterns compiled, the receivers checked) and prints the effective settings, defaults
//! included, as TOML. Secrets are printed as `<redacted>`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub action: ConfigAction,
}

#[derive(Subcommand, Debug)]
pub enum ConfigAction {
    /// Validate FILE (default: `--config`, or the built-in defaults) and print the effective
    /// settings.
    Check {
        /// The config file to check.
        file: Option<PathBuf>,
    },
}

pub fn run(args: ConfigArgs, config: Option<&Path>) -> anyhow::Result<()> {
    let ConfigAction::Check { file } = args.action;
    let path = file.as_deref().or(config);
    let cfg = super::load_config(path)?;
    // What `watch` builds from it at start, so that a check finds what would stop it.
    cfg.patterns()
        .with_context(|| format!("checking the patterns of {}", shown(path)))?;
    let text = toml::to_string(&cfg).context("printing the settings")?;
    let stdout = std::io::stdout();
    let mut o = stdout.lock();
    writeln!(o, "# {}: OK; the effective settings:", shown(path))?;
    o.write_all(text.as_bytes())?;
    Ok(())
}

fn shown(path: Option<&Path>) -> String {
    path.map_or_else(
        || "no config file (built-in defaults)".into(),
        |p| p.display().to_string(),
    )
}
