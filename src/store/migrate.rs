//! Schema migrations: numbered `migrations/*.sql` files embedded with `include_str!`, applied in
//! order inside one transaction each, tracked with `PRAGMA user_version` (the approach of
//! rusqlite_migration's `goto_up`).

use std::path::Path;

use rusqlite::Connection;

use crate::error::StoreError;

/// Every migration, in order; index + 1 is the schema version it produces.
pub const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_init.sql"),
    include_str!("../../migrations/0002_alerts.sql"),
    include_str!("../../migrations/0003_epoch_metrics.sql"),
    include_str!("../../migrations/0004_zero_based_epochs.sql"),
    include_str!("../../migrations/0005_containers.sql"),
    include_str!("../../migrations/0006_resume_state.sql"),
    include_str!("../../migrations/0007_epoch_train_time.sql"),
    include_str!("../../migrations/0008_container_state.sql"),
    include_str!("../../migrations/0009_run_params.sql"),
    include_str!("../../migrations/0010_run_failure.sql"),
    include_str!("../../migrations/0011_silences.sql"),
    include_str!("../../migrations/0012_arrival_of_future_rows.sql"),
    include_str!("../../migrations/0013_results_csv.sql"),
    include_str!("../../migrations/0014_run_links.sql"),
];

/// Brings the schema up to the latest version.
pub fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let current: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(StoreError::sql("read user_version"))?;
    if current as usize > MIGRATIONS.len() {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: current,
            known: MIGRATIONS.len(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i + 1;
        let tx = conn
            .transaction()
            .map_err(|source| StoreError::Migrate { version, source })?;
        tx.execute_batch(sql)
            .map_err(|source| StoreError::Migrate { version, source })?;
        tx.pragma_update(None, "user_version", version as i64)
            .map_err(|source| StoreError::Migrate { version, source })?;
        tx.commit()
            .map_err(|source| StoreError::Migrate { version, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_of_an_older_version_is_brought_up_keeping_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let mut conn = Connection::open(&path).unwrap();
        // A store written by a build that knew only the first two migrations.
        for sql in &MIGRATIONS[..2] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 2).unwrap();
        conn.execute_batch(
            "INSERT INTO runs (container, start_stream, start_key_ts, start_seq, started_at, status)
                 VALUES ('c', 'stdout', 1, 0, '2026-03-28T14:30:00.000000000Z', 'completed');
             INSERT INTO epochs (run_id, epoch, ended_at, map50_95)
                 VALUES (1, 1, '2026-03-28T14:31:00.000000000Z', 0.5);",
        )
        .unwrap();

        migrate(&mut conn, &path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version as usize, MIGRATIONS.len());
        let (map, metrics): (f64, Option<String>) = conn
            .query_row(
                "SELECT map50_95, metrics FROM training_epochs WHERE run_id = 1 AND epoch = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((map, metrics), (0.5, None));
        // Migrating again changes nothing.
        migrate(&mut conn, &path).unwrap();
        assert_eq!(
            conn.query_row("SELECT count(*) FROM training_epochs", [], |r| r
                .get::<_, i64>(0))
                .unwrap(),
            1
        );
    }
}
