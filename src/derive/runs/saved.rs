//! The state committed with each batch (next to its cursor), so that a restart continues the
//! derivation exactly where the committed rows end: a run between its settings line and its
//! first epoch, an open epoch header, a queue sample of the current second.

use std::sync::Arc;

use super::{ContainerState, Run};
use crate::derive::{MetricRow, Op, RunRow};

#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    version: u32,
    loss_names: Vec<String>,
    run: Option<Run>,
    by_save_dir: Vec<(String, RunRow)>,
    final_validation: bool,
    #[serde(default)]
    banner: Option<String>,
    counters: Vec<(String, f64)>,
    /// Samples held for their second: (ts, name, value).
    pending: Vec<(i64, String, f64)>,
}

const SAVED_VERSION: u32 = 1;

/// Finished runs a snapshot keeps for resumes (the most recent), as the row-based rebuild does.
const SAVED_SAVE_DIRS: usize = 50;

impl ContainerState {
    /// The state as committed with a batch: the op that stores it.
    pub fn snapshot_op(&self) -> Op {
        let mut by_save_dir: Vec<(String, RunRow)> = self
            .by_save_dir
            .iter()
            .map(|(d, r)| (d.clone(), r.clone()))
            .collect();
        by_save_dir.sort_by(|a, b| (b.1.started_at, &b.0).cmp(&(a.1.started_at, &a.0)));
        by_save_dir.truncate(SAVED_SAVE_DIRS);
        let saved = Saved {
            version: SAVED_VERSION,
            loss_names: self.loss_names.clone(),
            run: self.run.clone(),
            by_save_dir,
            final_validation: self.final_validation,
            banner: self.banner.clone(),
            counters: self
                .counters
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            pending: self
                .pending
                .iter()
                .map(|m| (m.ts, m.name.to_string(), m.value))
                .collect(),
        };
        // Only strings, integers and finite numbers (non-finite values are never kept).
        Op::State(
            self.container.clone(),
            serde_json::to_string(&saved).unwrap_or_default(),
        )
    }

    /// The state a [`ContainerState::snapshot_op`] committed, if it can be read (this version).
    pub fn resumed(container: Arc<str>, snapshot: &str) -> Option<Self> {
        let saved: Saved = serde_json::from_str(snapshot).ok()?;
        if saved.version != SAVED_VERSION {
            return None;
        }
        Some(ContainerState {
            loss_names: saved.loss_names,
            run: saved.run,
            by_save_dir: saved.by_save_dir.into_iter().collect(),
            final_validation: saved.final_validation,
            banner: saved.banner,
            counters: saved
                .counters
                .into_iter()
                .map(|(k, v)| (crate::event::intern(&k), v))
                .collect(),
            pending: saved
                .pending
                .into_iter()
                .map(|(ts, name, value)| MetricRow {
                    ts,
                    container: container.clone(),
                    name: crate::event::intern(&name),
                    value,
                })
                .collect(),
            tune: None,
            container,
        })
    }
}
