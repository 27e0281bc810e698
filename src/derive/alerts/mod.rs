//! Alert rules: the store's ops in commit order (and clock ticks) -> alert state changes.
//!
//! Like Prometheus, every alert is a set of labels (`alertname`, `severity`, `container`,
//! `gpu`, `mount`) with a fingerprint computed from them, and goes pending (while its `for`
//! duration runs) -> firing -> resolved. There is at most one active alert per fingerprint.
//! The [`Engine`] is a plain state machine without I/O or clock of its own: the store's writer
//! feeds it each op it commits and persists the [`Change`]s it returns in the same
//! transaction, so alerts follow exactly the data that was stored, during `replay` (with the
//! log's times, each container's rules on that container's own) as during `watch` (where
//! [`Op::Tick`](crate::derive::Op::Tick) brings the wall clock). Everything it has learnt is one serializable value,
//! committed with each batch ([`Engine::snapshot`], [`Engine::resume`]): a restart after a
//! crash continues as if it had never stopped.
//!
//! The rules and their defaults (all configurable in `[alerts]`):
//!
//! | alertname | severity | fires when | resolves when |
//! |---|---|---|---|
//! | `GpuTemperatureHigh` | critical | `gpu_temperature_c` > 90 | a sample ≤ 90 |
//! | `QueueContainerDown` | critical | a `queue` container not running for 5 min | it runs again |
//! | `DiskUsageCritical` | critical | `disk_usage_azaion_pct` > 95 | a sample ≤ 95 |
//! | `DiskUsageHigh` | medium | `disk_usage_azaion_pct` > 80 | a sample ≤ 80 |
//! | `TrainingLossNonFinite` | high | `loss_non_finite`, or an epoch with a NaN/inf loss; at once | a finite epoch, the run completes, or it trains again (resumed, a new run) |
//! | `TrainingLossDiverging` | high | see [`Diverging`] | the test passes again, the run completes, or it trains again |
//! | `GpuOutOfMemory` | high | `gpu_oom` | a later training epoch, or 1 h without another |
//! | `QueueOffsetStale` | medium | `queue_offset` unchanged for 1 h while the queue runs | the offset moves |
//! | `QueueFailureRateHigh` | medium | more than 10 % of at least 20 queue messages in the last 15 min failed | the rate is below again |
//! | `CheckpointSaveFailed` | low | `checkpoint_save_failed` | `checkpoint_saved`, or 1 h |
//! | `DockerUnreachable` | critical | `docker_unreachable` | the daemon answers again |
//! | `LogStreamSilent` | medium | a running container's stream silent too long | data flows again |
//! | `StoreNotWritable` | critical | a batch cannot be committed | a batch commits |
//! | `TrainingContainerDied` | high | a training container stopped (non-zero exit, OOM kill) with no run running | it starts again, or a new run starts |
//! | `TrainingStalled` | high | no epoch completed for max(3x the median epoch time, 15 min) while the run runs | an epoch completes, the run ends (not failed), or its log ends (replay) |
//! | `TrainingFailed` | high | a run ended `failed` (`training_failed`: a traceback, a non-zero exit, the OOM killer, a kill), once per failure, with why and at which epoch | it trains again (resumed, a new run in its container or its run folder) |
//!
//! # Layout
//! - [`vocabulary`]: [`Severity`], the one table of [`AlertName`]s (name, severity,
//!   [`Family`]), labels and fingerprints, [`Alert`], [`Change`], [`Signal`].
//! - [`settings`]: [`Rules`], the thresholds and durations.
//! - `lifecycle`: pending -> firing -> resolved, repeats, and the context a family works with.
//! - one file per family of rules: `host` (GPU heat, disk), `queue` (container down, offset
//!   stale, failure rate), `training` (failed, non-finite, diverging, stalled, container died), `events` (OOM,
//!   checkpoint, Docker unreachable, silent stream, store not writable). A family never calls
//!   the engine: it is lent the time and the lifecycle, and says what to evaluate again.
//! - `engine`: the [`Engine`]: the clock, the dispatch of ops to the families, the evaluation
//!   (one call per family), the snapshot and its resumption.
//!
//! Adding a rule is one row in the table of [`AlertName`]s and its code in its family's file.

mod clock;
mod engine;
mod events;
mod host;
mod lifecycle;
mod queue;
pub mod settings;
mod training;
pub mod vocabulary;

#[cfg(test)]
mod tests;

pub use engine::Engine;
pub use settings::{Diverging, FOR_GRACE_NS, Rules};
pub use training::diverging;
pub use vocabulary::{
    Alert, AlertName, Change, Family, Labels, Loaded, Severity, Signal, fingerprint, labels,
};
