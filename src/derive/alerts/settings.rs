//! The thresholds and durations of the rules: `[alerts]` in the config.

use serde::{Deserialize, Serialize};

use crate::time::Age;

/// "Diverging", checkable by a reader: after the warm-up epochs (Ultralytics' default
/// `warmup_epochs=3`, whose rising learning rate raises the loss on its own), the epoch's
/// training loss (the sum of its loss columns) is above `factor` x its running minimum since
/// the warm-up for `above_for_epochs` consecutive epochs, or has risen `rising_epochs` epochs
/// in a row.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Diverging {
    pub warmup_epochs: u32,
    pub factor: f64,
    pub above_for_epochs: u32,
    pub rising_epochs: u32,
}

impl Default for Diverging {
    fn default() -> Self {
        Diverging {
            warmup_epochs: 3,
            factor: 2.0,
            above_for_epochs: 3,
            rising_epochs: 5,
        }
    }
}

/// How old the newest probe sample may be at a restart for the `for` durations running at the
/// stop to be continued (Prometheus' default `rules.alert.for-grace-period`).
pub const FOR_GRACE_NS: i64 = 10 * 60 * 1_000_000_000;

/// Thresholds and durations of the rules (`[alerts]` in the config).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rules {
    pub gpu_temperature_c: f64,
    pub gpu_temperature_for: Age,
    pub disk_critical_pct: f64,
    pub disk_high_pct: f64,
    pub disk_for: Age,
    pub queue_down_for: Age,
    pub queue_offset_stale_after: Age,
    /// `GpuOutOfMemory` and `CheckpointSaveFailed` resolve after this long without another.
    pub event_resolve_after: Age,
    /// `SecretsInLogs` resolves after this long without another secret redacted.
    pub secrets_resolve_after: Age,
    /// A firing alert is notified again after this long.
    pub repeat_interval: Age,
    /// `watch` notifies only alerts whose newest evidence is at most this old: reading a
    /// container's old logs for the first time must not page anyone for last week.
    pub notify_backlog: Age,
    pub diverging: Diverging,
    /// `TrainingStalled`: no epoch completed for this many times the run's median epoch
    /// time...
    pub training_stalled_factor: f64,
    /// ... and at least this long.
    pub training_stalled_min: Age,
    /// `QueueFailureRateHigh`: more than this share of the queue's messages failed...
    pub queue_failure_ratio: f64,
    /// ... in the last this long...
    pub queue_failure_window: Age,
    /// ... counting at least this many messages.
    pub queue_failure_min: u32,
    /// A removed container's alerts resolve, and it leaves `status` and the page, this long
    /// after its removal.
    pub forget_removed_after: Age,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            gpu_temperature_c: 90.0,
            gpu_temperature_for: Age(0),
            disk_critical_pct: 95.0,
            disk_high_pct: 80.0,
            disk_for: Age(0),
            queue_down_for: Age::secs(300),
            queue_offset_stale_after: Age::secs(3600),
            event_resolve_after: Age::secs(3600),
            secrets_resolve_after: Age::secs(24 * 3600),
            repeat_interval: Age::secs(4 * 3600),
            notify_backlog: Age::secs(3600),
            diverging: Diverging::default(),
            training_stalled_factor: 3.0,
            training_stalled_min: Age::secs(15 * 60),
            queue_failure_ratio: 0.10,
            queue_failure_window: Age::secs(15 * 60),
            queue_failure_min: 20,
            forget_removed_after: Age::secs(24 * 3600),
        }
    }
}
