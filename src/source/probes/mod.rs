//! Host probes, run by `watch` on an interval; their samples enter the store as metrics
//! (`metric_samples`, and the `gauges` the status reads) and feed the alert rules.
//!
//! | metric | container column | from |
//! |---|---|---|
//! | `gpu_temperature_c`, `gpu_utilization_pct`, `gpu_memory_used_mb`, `gpu_memory_total_mb` | `gpu<index>` | `nvidia-smi` |
//! | `disk_usage_azaion_gb`, `disk_usage_azaion_pct`, `disk_total_azaion_gb` | `host` | `statvfs` of `data_root` |
//! | `disk_usage_datasets_gb`, `disk_usage_models_gb` | `host` | a walk of `data_root/datasets`, `data_root/models` |
//! | `queue_offset` | `offset_container` | `offset_file` |

pub mod disk;
pub mod gpu;
pub mod offset;

use crate::event::metric;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;

use crate::event::{MetricRow, Notice};
use crate::time::Age;

/// `[probes]` in the config.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbesConfig {
    pub interval: Age,
    /// The `nvidia-smi` program; `""` turns the GPU probe off.
    pub nvidia_smi: String,
    /// The data root whose file system is measured; `""` turns the disk probe off.
    pub data_root: PathBuf,
    /// How often `datasets/` and `models/` are walked for their sizes.
    pub dir_sizes_interval: Age,
    /// The annotation queue's offset file (off when unset).
    pub offset_file: Option<PathBuf>,
    /// The container the offset file belongs to (the `container` of its samples).
    pub offset_container: String,
}

impl Default for ProbesConfig {
    fn default() -> Self {
        ProbesConfig {
            interval: Age::secs(30),
            nvidia_smi: "nvidia-smi".into(),
            data_root: PathBuf::from("/azaion"),
            dir_sizes_interval: Age::secs(900),
            offset_file: None,
            offset_container: "annotation-queue".into(),
        }
    }
}

fn metric(
    out: &mut Vec<Notice>,
    ts: i64,
    container: &Arc<str>,
    name: &'static str,
    v: Option<f64>,
) {
    if let Some(value) = v {
        out.push(Notice::Sample(MetricRow {
            ts,
            container: container.clone(),
            name,
            value,
        }));
    }
}

/// What a probe is doing, so each state is logged once rather than every tick.
#[derive(Debug, Default, PartialEq)]
pub(crate) enum Health {
    #[default]
    Unknown,
    Ok,
    Failing(String),
    Off,
}

impl Health {
    pub(crate) fn set(&mut self, probe: &str, new: Health) {
        if *self == new {
            return;
        }
        match &new {
            Health::Ok if *self != Health::Unknown => {
                tracing::info!(probe, "Probe works again.")
            }
            Health::Failing(e) => tracing::warn!(probe, error = %e, "Probe failed; will retry."),
            Health::Off => tracing::info!(probe, "Probe off."),
            _ => {}
        }
        *self = new;
    }
}

/// Runs `nvidia-smi` once. `Err(None)` when the program does not exist.
pub async fn run_nvidia_smi(program: &str) -> Result<String, Option<String>> {
    let child = tokio::process::Command::new(program)
        .arg(format!("--query-gpu={}", gpu::QUERY))
        .arg("--format=csv,noheader,nounits")
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(20), child).await {
        Err(_) => Err(Some("timed out after 20s".into())),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Err(None),
        Ok(Err(e)) => Err(Some(e.to_string())),
        Ok(Ok(out)) if !out.status.success() => {
            let msg = String::from_utf8_lossy(&out.stdout).trim().to_string()
                + String::from_utf8_lossy(&out.stderr).trim();
            Err(Some(format!(
                "{}: {}",
                out.status,
                msg.chars().take(300).collect::<String>()
            )))
        }
        Ok(Ok(out)) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
    }
}

/// GPU samples from nvidia-smi's output.
pub fn gpu_ops(output: &str, ts: i64, out: &mut Vec<Notice>) -> Vec<String> {
    let (gpus, bad) = gpu::parse(output);
    for g in gpus {
        let c: Arc<str> = Arc::from(format!("gpu{}", g.index));
        metric(out, ts, &c, metric::GPU_TEMPERATURE_C, g.temperature_c);
        metric(out, ts, &c, metric::GPU_UTILIZATION_PCT, g.utilization_pct);
        metric(out, ts, &c, metric::GPU_MEMORY_USED_MB, g.memory_used_mb);
        metric(out, ts, &c, metric::GPU_MEMORY_TOTAL_MB, g.memory_total_mb);
    }
    bad
}

/// Disk usage samples of the data root.
pub fn disk_ops(u: &disk::Usage, ts: i64, out: &mut Vec<Notice>) {
    let host: Arc<str> = Arc::from("host");
    metric(
        out,
        ts,
        &host,
        metric::DISK_USAGE_AZAION_GB,
        Some(u.used_bytes as f64 / disk::GB),
    );
    metric(
        out,
        ts,
        &host,
        metric::DISK_USAGE_AZAION_PCT,
        Some(u.used_pct),
    );
    metric(
        out,
        ts,
        &host,
        metric::DISK_TOTAL_AZAION_GB,
        Some(u.total_bytes as f64 / disk::GB),
    );
}

/// How often `watch` sends the clock to the alert rules (and the heartbeat to the store).
pub const TICK: Duration = Duration::from_secs(5);

/// Sends [`Notice::Tick`] with `clock`'s time every `every` until `shutdown`: time-based alert
/// rules (`for` durations, staleness, repeats) are evaluated on it, and the heartbeat written.
pub async fn clock(
    writer: Sender<Vec<Notice>>,
    every: Duration,
    clock: crate::time::Clock,
    shutdown: CancellationToken,
) {
    let mut t = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = t.tick() => {
                if writer.send(vec![Notice::Tick(clock.now_ns())]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Runs the probes until `shutdown`.
#[expect(
    clippy::too_many_lines,
    reason = "the probes' loop: each probe and its health in one select"
)]
pub async fn run(cfg: ProbesConfig, writer: Sender<Vec<Notice>>, shutdown: CancellationToken) {
    let mut gpu_health = Health::default();
    let mut last_bad_row: Option<String> = None;
    let mut disk_health = Health::default();
    let mut offset_health = Health::default();
    if cfg.nvidia_smi.is_empty() {
        gpu_health.set("gpu", Health::Off);
    }
    if cfg.data_root.as_os_str().is_empty() {
        disk_health.set("disk", Health::Off);
    }
    let offset_container: Arc<str> = Arc::from(cfg.offset_container.as_str());
    let mut tick = tokio::time::interval(cfg.interval.as_duration().max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sizes_tick = tokio::time::interval(
        cfg.dir_sizes_interval
            .as_duration()
            .max(Duration::from_secs(10)),
    );
    sizes_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut walking: Option<tokio::task::JoinHandle<Vec<Notice>>> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = sizes_tick.tick(), if walking.is_none() && disk_health != Health::Off => {
                let root = cfg.data_root.clone();
                walking = Some(tokio::task::spawn_blocking(move || {
                    let ts = crate::time::now_ns();
                    let host: Arc<str> = Arc::from("host");
                    let mut out = Vec::new();
                    for (dir, name) in [("datasets", "disk_usage_datasets_gb"), ("models", "disk_usage_models_gb")] {
                        let p = root.join(dir);
                        if p.is_dir() {
                            let (bytes, errors) = disk::tree_size(&p);
                            if errors > 0 {
                                tracing::debug!(dir = %p.display(), errors, "Entries skipped while sizing.");
                            }
                            metric(&mut out, ts, &host, name, Some(bytes as f64 / disk::GB));
                        }
                    }
                    out
                }));
                continue;
            }
            done = async { walking.as_mut().expect("guarded").await }, if walking.is_some() => {
                walking = None;
                if let Ok(ops) = done && !ops.is_empty() && writer.send(ops).await.is_err() {
                    return;
                }
                continue;
            }
        }
        let ts = crate::time::now_ns();
        let mut ops = Vec::new();
        if gpu_health != Health::Off {
            match run_nvidia_smi(&cfg.nvidia_smi).await {
                Ok(text) => {
                    let bad = gpu_ops(&text, ts, &mut ops);
                    // Logged when the first unexpected row appears (or changes), not every tick.
                    if bad.first() != last_bad_row.as_ref() {
                        if let Some(b) = bad.first() {
                            tracing::warn!(row = %b, rows = bad.len(), "Unexpected nvidia-smi row skipped (logged again only when it changes).");
                        }
                        last_bad_row = bad.into_iter().next();
                    }
                    gpu_health.set("gpu", Health::Ok);
                }
                Err(None) => {
                    tracing::info!(program = %cfg.nvidia_smi, "nvidia-smi not found: GPU probe off.");
                    gpu_health.set("gpu", Health::Off);
                }
                Err(Some(e)) => gpu_health.set("gpu", Health::Failing(e)),
            }
        }
        if disk_health != Health::Off {
            let root = cfg.data_root.clone();
            match tokio::task::spawn_blocking(move || disk::usage(&root)).await {
                Ok(Ok(u)) => {
                    disk_ops(&u, ts, &mut ops);
                    disk_health.set("disk", Health::Ok);
                }
                Ok(Err(e)) => disk_health.set(
                    "disk",
                    Health::Failing(format!("{}: {e}", cfg.data_root.display())),
                ),
                Err(_) => {}
            }
        }
        if let Some(path) = &cfg.offset_file {
            match tokio::fs::read_to_string(path).await {
                Ok(text) => match offset::parse(&text) {
                    Some(v) => {
                        metric(
                            &mut ops,
                            ts,
                            &offset_container,
                            metric::QUEUE_OFFSET,
                            Some(v as f64),
                        );
                        offset_health.set(metric::QUEUE_OFFSET, Health::Ok);
                    }
                    None => offset_health.set(
                        metric::QUEUE_OFFSET,
                        Health::Failing(format!("{}: no offset in the file", path.display())),
                    ),
                },
                Err(e) => offset_health.set(
                    metric::QUEUE_OFFSET,
                    Health::Failing(format!("{}: {e}", path.display())),
                ),
            }
        }
        if !ops.is_empty() && writer.send(ops).await.is_err() {
            return;
        }
    }
}
