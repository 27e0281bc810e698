//! The command line: one module per subcommand, each a small clap struct that calls the library
//! and renders. Errors get `anyhow` context here, at the edge.

pub mod alerts;
pub mod config;
pub mod health;
pub mod history;
pub mod prune;
pub mod render;
pub mod replay;
pub mod sql;
pub mod status;
pub mod watch;

use std::path::Path;

use anyhow::Context;

use trainwatch::config::Config;

/// Loads the config file if one was given, else the defaults.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Config::load(p).with_context(|| format!("loading config {}", p.display())),
        None => Ok(Config::default()),
    }
}

/// Opens the database read-only, with a message that says what to do when it is missing.
pub fn open_ro(db: &Path) -> anyhow::Result<rusqlite::Connection> {
    if !db.exists() {
        anyhow::bail!(
            "database {} does not exist yet: run `trainwatch replay` or `trainwatch watch` first",
            db.display()
        );
    }
    trainwatch::store::open_ro(db).with_context(|| format!("opening {}", db.display()))
}
