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
