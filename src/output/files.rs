//! The status file and page on disk: `watch` rewrites them on their interval.

use std::path::PathBuf;

use super::{page, status};

/// The status file and page `watch` keeps up to date.
pub struct StatusFiles {
    pub json: Option<PathBuf>,
    pub html: Option<PathBuf>,
}

/// `watch`'s task: rewrites the status file and page on their interval until `shutdown`.
pub async fn write_files(
    db: PathBuf,
    files: StatusFiles,
    health: crate::store::StoreHealth,
    cfg: status::StatusConfig,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let files = std::sync::Arc::new(files);
    let mut every = tokio::time::interval(
        cfg.interval
            .as_duration()
            .max(std::time::Duration::from_secs(1)),
    );
    let refresh = cfg.interval.as_duration().as_secs().max(5);
    let max_age = cfg.max_age.0;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let (db, files) = (db.clone(), files.clone());
        let health = health.clone();
        let res = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let conn = crate::store::open_ro(&db).map_err(|e| e.to_string())?;
            let now = crate::time::now_ns();
            let s =
                status::collect_live(&conn, now, max_age, &health).map_err(|e| e.to_string())?;
            if let Some(p) = &files.json {
                crate::sys::write_atomic(p, &status::to_json(&s))
                    .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
            }
            if let Some(p) = &files.html {
                let html = page::build(&conn, &s, now, Some(refresh)).map_err(|e| e.to_string())?;
                crate::sys::write_atomic(p, html.as_bytes())
                    .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match res {
            Err(e) if !failing => {
                tracing::warn!(error = %e, "Cannot write the status file or page; will retry.");
                failing = true;
            }
            Ok(()) if failing => {
                tracing::info!("Status file and page written again.");
                failing = false;
            }
            _ => {}
        }
    }
}
