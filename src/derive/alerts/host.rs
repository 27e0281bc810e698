//! The host's rules, on the probes' samples: `GpuTemperatureHigh`, `DiskUsageCritical`,
//! `DiskUsageHigh`.

use super::lifecycle::{Ctx, When};
use super::settings::Rules;
use super::vocabulary::{AlertName, labels};
use crate::derive::MetricRow;
use crate::event::metric;

/// The probe samples these rules wait a `for` duration on, with that duration (ns).
pub(super) fn waits(rules: &Rules) -> [(&'static str, i64); 2] {
    [
        (metric::GPU_TEMPERATURE_C, rules.gpu_temperature_for.0),
        (metric::DISK_USAGE_AZAION_PCT, rules.disk_for.0),
    ]
}

/// A probe sample.
pub(super) fn on_metric(cx: &mut Ctx<'_>, m: &MetricRow) {
    let mount = cx.mount;
    match m.name {
        metric::GPU_TEMPERATURE_C => {
            let gpu = m.container.strip_prefix("gpu").unwrap_or(&m.container);
            let l = labels(AlertName::GpuTemperatureHigh, &[("gpu", gpu)]);
            let limit = cx.rules.gpu_temperature_c;
            if m.value > limit {
                let summary = format!("GPU {gpu} at {} °C (limit {limit} °C)", m.value);
                let when = When::sample(m.ts, cx.rules.gpu_temperature_for.0);
                let now = cx.now(Some(&m.container));
                cx.condition(AlertName::GpuTemperatureHigh, l, summary, when, now);
            } else {
                cx.resolve(&l, m.ts);
            }
        }
        metric::DISK_USAGE_AZAION_PCT => {
            for (name, limit) in [
                (AlertName::DiskUsageCritical, cx.rules.disk_critical_pct),
                (AlertName::DiskUsageHigh, cx.rules.disk_high_pct),
            ] {
                let l = labels(name, &[("mount", mount)]);
                if m.value > limit {
                    let summary =
                        format!("Disk {mount} is {:.1} % full (limit {limit} %)", m.value);
                    let when = When::sample(m.ts, cx.rules.disk_for.0);
                    let now = cx.now(Some(&m.container));
                    cx.condition(name, l, summary, when, now);
                } else {
                    cx.resolve(&l, m.ts);
                }
            }
        }
        _ => {}
    }
}
