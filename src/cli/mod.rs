//! The command line: one module per subcommand, each a small clap struct that calls the library
//! and renders. Errors get `anyhow` context here, at the edge.

pub mod alerts;
pub mod config;
pub mod export;
pub mod health;
pub mod history;
pub mod import;
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
        // Its errors name the file and the cause, once.
        Some(p) => Ok(Config::load(p)?),
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
    let conn =
        trainwatch::store::open_ro(db).with_context(|| format!("opening {}", db.display()))?;
    // A database an older trainwatch wrote lacks what this one reads: brought up to date first
    // (the migrations only add), as `watch` and `replay` would at their start.
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .with_context(|| format!("reading the schema version of {}", db.display()))?;
    let latest = trainwatch::store::migrate::MIGRATIONS.len() as i64;
    if version >= latest {
        return Ok(conn);
    }
    drop(conn);
    trainwatch::store::open_rw(db).with_context(|| {
        format!(
            "{} was written by an older trainwatch (schema {version}, this one reads {latest}) and cannot be upgraded here; run this trainwatch's `watch` or `replay` on it once",
            db.display()
        )
    })?;
    trainwatch::store::open_ro(db).with_context(|| format!("opening {}", db.display()))
}
