//! Docker stats of the followed containers, sampled at the probe interval: one `GET
//! /containers/{id}/stats?stream=false&one-shot=true` per running container per tick, not one
//! long-lived stream each (the daemon sends a stream's sample every second; a training server
//! needs one every `probes.interval`).
//!
//! CPU % is computed as `docker stats` computes it (the CLI's `calculateCPUPercentUnix`): the
//! container's CPU time delta over the host's, times the online CPUs, times 100. A one-shot
//! sample has no previous reading, so the previous one is this module's own; a container's
//! first sample asks the daemon for two readings (`one-shot=false`, about a second) so its
//! CPU % is there at once. Memory used is the CLI's too: usage minus the inactive file cache.
//!
//! | metric | unit |
//! |---|---|
//! | `container_cpu_pct` | percent of one CPU (200 = two CPUs busy) |
//! | `container_memory_used_bytes`, `container_memory_limit_bytes` | bytes |
//! | `container_network_rx_bytes`, `container_network_tx_bytes` | bytes since the container started (counters) |
//! | `container_block_read_bytes`, `container_block_write_bytes` | bytes since the container started (counters) |
//! | `container_pids` | processes and threads |

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::models::ContainerStatsResponse;
use bollard::query_parameters::{ListContainersOptionsBuilder, StatsOptionsBuilder};
use futures_util::StreamExt;
use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;

use super::{ContainerInfo, DockerConfig};
use crate::event::{MetricRow, Notice};
use crate::source::probes::Health;

/// One container's CPU counters at a reading.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuReading {
    /// The container's CPU time, ns.
    pub total: u64,
    /// The host's CPU time, ns (all CPUs).
    pub system: u64,
    pub online_cpus: u32,
}

/// What one stats document says, in the units stored.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub cpu: Option<CpuReading>,
    /// The daemon's previous reading, when it took two (`one-shot=false`).
    pub precpu: Option<CpuReading>,
    pub memory_used: Option<f64>,
    pub memory_limit: Option<f64>,
    pub rx: Option<f64>,
    pub tx: Option<f64>,
    pub block_read: Option<f64>,
    pub block_write: Option<f64>,
    pub pids: Option<f64>,
}

fn cpu_reading(c: Option<&bollard::models::ContainerCpuStats>) -> Option<CpuReading> {
    let c = c?;
    let usage = c.cpu_usage.as_ref()?;
    let total = usage.total_usage?;
    let system = c.system_cpu_usage?;
    let online_cpus = c
        .online_cpus
        .filter(|n| *n > 0)
        .or_else(|| usage.percpu_usage.as_ref().map(|p| p.len() as u32))
        .filter(|n| *n > 0)?;
    (system > 0).then_some(CpuReading {
        total,
        system,
        online_cpus,
    })
}

/// Reads a stats document (cgroup v1 or v2; a stopped container's is all zeros and absent).
pub fn sample(s: &ContainerStatsResponse) -> Sample {
    let mut out = Sample {
        cpu: cpu_reading(s.cpu_stats.as_ref()),
        precpu: cpu_reading(s.precpu_stats.as_ref()),
        ..Sample::default()
    };
    if let Some(m) = &s.memory_stats
        && let Some(usage) = m.usage
    {
        // cgroup v2 names it inactive_file, v1 total_inactive_file (the CLI prefers v1's).
        let stats = m.stats.as_ref();
        let cache = stats
            .and_then(|st| {
                st.get("total_inactive_file")
                    .or_else(|| st.get("inactive_file"))
            })
            .copied()
            .filter(|c| *c < usage)
            .unwrap_or(0);
        out.memory_used = Some((usage - cache) as f64);
        // A container without a limit reports the host's memory.
        out.memory_limit = m.limit.filter(|l| *l > 0).map(|l| l as f64);
    }
    if let Some(nets) = &s.networks
        && !nets.is_empty()
    {
        out.rx = Some(nets.values().filter_map(|n| n.rx_bytes).sum::<u64>() as f64);
        out.tx = Some(nets.values().filter_map(|n| n.tx_bytes).sum::<u64>() as f64);
    }
    if let Some(entries) = s
        .blkio_stats
        .as_ref()
        .and_then(|b| b.io_service_bytes_recursive.as_ref())
    {
        let sum = |op: &str| {
            entries
                .iter()
                .filter(|e| e.op.as_deref().is_some_and(|o| o.eq_ignore_ascii_case(op)))
                .filter_map(|e| e.value)
                .sum::<u64>() as f64
        };
        out.block_read = Some(sum("read"));
        out.block_write = Some(sum("write"));
    }
    out.pids = s
        .pids_stats
        .as_ref()
        .and_then(|p| p.current)
        .map(|p| p as f64);
    out
}

/// CPU % between two readings of one container, as `docker stats` computes it; `None` when
/// the host's clock did not move or the container's counter went back (it restarted).
pub fn cpu_pct(prev: &CpuReading, now: &CpuReading) -> Option<f64> {
    let cpu = now.total.checked_sub(prev.total)?;
    let system = now.system.checked_sub(prev.system)?;
    if system == 0 {
        return None;
    }
    Some(cpu as f64 / system as f64 * f64::from(now.online_cpus) * 100.0)
}

/// The metric rows of one sample of `container` at `ts`.
pub fn ops(container: &Arc<str>, ts: i64, s: &Sample, cpu_pct: Option<f64>, out: &mut Vec<Notice>) {
    let rows: [(&'static str, Option<f64>); 8] = [
        ("container_cpu_pct", cpu_pct),
        ("container_memory_used_bytes", s.memory_used),
        ("container_memory_limit_bytes", s.memory_limit),
        ("container_network_rx_bytes", s.rx),
        ("container_network_tx_bytes", s.tx),
        ("container_block_read_bytes", s.block_read),
        ("container_block_write_bytes", s.block_write),
        ("container_pids", s.pids),
    ];
    for (name, v) in rows {
        if let Some(value) = v.filter(|v| v.is_finite()) {
            out.push(Notice::Sample(MetricRow {
                ts,
                container: container.clone(),
                name,
                value,
            }));
        }
    }
}

/// How the probe's logs name it.
const PROBE: &str = "docker_stats";

/// One stats document; `two` asks the daemon for two readings (about a second). `Ok(None)`:
/// the container is gone (it was removed between the list and this request).
async fn fetch(
    docker: &Docker,
    id: &str,
    two: bool,
) -> Result<Option<ContainerStatsResponse>, String> {
    let opts = StatsOptionsBuilder::default()
        .stream(false)
        .one_shot(!two)
        .build();
    let mut s = docker.stats(id, Some(opts));
    match tokio::time::timeout(Duration::from_secs(10), s.next()).await {
        Err(_) => Err("timed out after 10s".into()),
        Ok(None) => Err("no stats document".into()),
        Ok(Some(Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }))) => Ok(None),
        Ok(Some(Err(e))) => Err(e.to_string()),
        Ok(Some(Ok(doc))) => Ok(Some(doc)),
    }
}

/// Samples the running followed containers every `every` until `shutdown`. Errors (the daemon
/// down, a container gone between list and stats) are logged once per state and retried on
/// the next tick.
pub async fn run(
    docker: Docker,
    cfg: Arc<DockerConfig>,
    every: Duration,
    writer: Sender<Vec<Notice>>,
    shutdown: CancellationToken,
) {
    let mut prev: HashMap<String, CpuReading> = HashMap::new();
    let mut health = Health::default();
    let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let listed = docker
            .list_containers(Some(ListContainersOptionsBuilder::default().build()))
            .await;
        let list = match listed {
            Ok(l) => l,
            Err(e) => {
                health.set(PROBE, Health::Failing(format!("listing containers: {e}")));
                continue;
            }
        };
        let running: Vec<(String, String)> = list
            .iter()
            .filter_map(ContainerInfo::from_summary)
            .filter(|i| cfg.select(i).is_some())
            .map(|i| (i.id, i.name))
            .collect();
        // Several containers at once, each bounded by its own timeout.
        let fetched: Vec<(
            String,
            String,
            Result<Option<ContainerStatsResponse>, String>,
        )> = futures_util::stream::iter(running.into_iter().map(|(id, name)| {
            let docker = docker.clone();
            let two = !prev.contains_key(&id);
            async move {
                let res = fetch(&docker, &id, two).await;
                (id, name, res)
            }
        }))
        .buffer_unordered(4)
        .collect()
        .await;
        let ts = crate::time::now_ns();
        let mut out = Vec::new();
        let mut errors = Vec::new();
        let mut seen = HashMap::new();
        for (id, name, res) in fetched {
            let doc = match res {
                Ok(Some(d)) => d,
                Ok(None) => continue,
                Err(e) => {
                    errors.push(format!("{name}: {e}"));
                    continue;
                }
            };
            let s = sample(&doc);
            let base = prev.get(&id).copied().or(s.precpu);
            let pct = match (base, s.cpu) {
                (Some(b), Some(c)) => cpu_pct(&b, &c),
                _ => None,
            };
            if let Some(c) = s.cpu {
                seen.insert(id, c);
            }
            ops(&Arc::from(name.as_str()), ts, &s, pct, &mut out);
        }
        // Containers that stopped start again from a fresh reading.
        prev = seen;
        health.set(
            PROBE,
            match errors.first() {
                Some(e) => Health::Failing(e.clone()),
                None => Health::Ok,
            },
        );
        if !out.is_empty() && writer.send(out).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A document as dockerd 20.10 on cgroup v2 sends it (`one-shot=false`), trimmed.
    const V2: &str = r#"{"read":"2026-12-04T13:30:01.5Z","preread":"2026-12-04T13:30:00.5Z",
      "pids_stats":{"current":7,"limit":4915},
      "blkio_stats":{"io_service_bytes_recursive":[{"major":8,"minor":0,"op":"read","value":4096},
        {"major":8,"minor":0,"op":"write","value":1048576},{"major":8,"minor":16,"op":"write","value":4096}]},
      "cpu_stats":{"cpu_usage":{"total_usage":2500000000,"usage_in_kernelmode":1,"usage_in_usermode":1},
        "system_cpu_usage":100000000000,"online_cpus":2,"throttling_data":{"periods":0,"throttled_periods":0,"throttled_time":0}},
      "precpu_stats":{"cpu_usage":{"total_usage":1500000000},"system_cpu_usage":98000000000,"online_cpus":2},
      "memory_stats":{"usage":209715200,"stats":{"inactive_file":9715200,"active_file":1},"limit":536870912},
      "name":"/yolo-train","id":"abc",
      "networks":{"eth0":{"rx_bytes":1000,"tx_bytes":200},"eth1":{"rx_bytes":24,"tx_bytes":8}}}"#;

    #[test]
    fn a_v2_document_gives_the_docker_stats_figures() {
        let doc: ContainerStatsResponse = serde_json::from_str(V2).unwrap();
        let s = sample(&doc);
        // 1e9 ns of container CPU over 2e9 ns of host CPU time on 2 CPUs: 100 % (one CPU busy).
        let pct = cpu_pct(&s.precpu.unwrap(), &s.cpu.unwrap()).unwrap();
        assert!((pct - 100.0).abs() < 1e-9, "{pct}");
        assert_eq!(s.memory_used, Some(200_000_000.0));
        assert_eq!(s.memory_limit, Some(512.0 * 1024.0 * 1024.0));
        assert_eq!((s.rx, s.tx), (Some(1024.0), Some(208.0)));
        assert_eq!(s.block_read, Some(4096.0));
        assert_eq!(s.block_write, Some(1048576.0 + 4096.0));
        assert_eq!(s.pids, Some(7.0));
        let mut out = Vec::new();
        ops(&Arc::from("yolo-train"), 5, &s, Some(pct), &mut out);
        let names: Vec<&str> = out
            .iter()
            .map(|o| match o {
                Notice::Sample(m) => m.name,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(names.len(), 8, "{names:?}");
    }

    #[test]
    fn cgroup_v1_cache_and_a_one_shot_document() {
        // v1: total_inactive_file; one-shot: precpu is empty.
        let doc: ContainerStatsResponse = serde_json::from_str(
            r#"{"cpu_stats":{"cpu_usage":{"total_usage":10,"percpu_usage":[5,5,0,0]},"system_cpu_usage":1000},
                "precpu_stats":{"cpu_usage":{"total_usage":0}},
                "memory_stats":{"usage":1000,"stats":{"total_inactive_file":300,"inactive_file":100},"limit":4000}}"#,
        )
        .unwrap();
        let s = sample(&doc);
        assert_eq!(s.precpu, None);
        assert_eq!(
            s.cpu,
            Some(CpuReading {
                total: 10,
                system: 1000,
                online_cpus: 4
            })
        );
        assert_eq!(s.memory_used, Some(700.0));
        assert_eq!((s.rx, s.block_read), (None, None));
    }

    #[test]
    fn a_stopped_container_and_a_restarted_one_give_no_cpu() {
        // A stopped container's document: no CPU counters, no memory usage.
        let doc: ContainerStatsResponse = serde_json::from_str(
            r#"{"cpu_stats":{"cpu_usage":{"total_usage":0},"system_cpu_usage":0},"memory_stats":{}}"#,
        )
        .unwrap();
        let s = sample(&doc);
        assert_eq!((s.cpu, s.memory_used), (None, None));
        let a = CpuReading {
            total: 500,
            system: 1000,
            online_cpus: 1,
        };
        let restarted = CpuReading {
            total: 10,
            system: 2000,
            online_cpus: 1,
        };
        assert_eq!(cpu_pct(&a, &restarted), None);
        assert_eq!(cpu_pct(&a, &a), None);
    }
}
