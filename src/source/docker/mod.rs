//! The Docker source: the Engine API (bollard) for discovery, daemon events and each
//! container's log stream. Following a container's lines into the store is
//! [`crate::pipeline::live`]'s, which [`run`] is given to start a follower per container.
//!
//! - Discovery: `GET /containers/json?all=true` at start (containers that exited while
//!   trainwatch was down are read too), then `GET /events` for `start`, `die`, `oom`,
//!   `destroy`. `die` and `oom` become events (`container_died`, `container_oom_killed`,
//!   `container_started`) with the container's role.
//! - Exactly once: `GET /containers/{id}/logs?follow&timestamps&since=<cursor time>`. `since`
//!   is inclusive and given to the nanosecond (bollard's is whole seconds; the request is
//!   amended), so the lines at the cursor's instant are re-delivered and dropped by key. The
//!   cursor is committed with the rows it covers.
//! - Framing: multiplexed stdout/stderr frames carry one Docker message each (a 16 KiB piece has
//!   no `\n`); a TTY container's raw stream arrives split at `\n` and is all stdout.
//! - A dying container is read to the end: its logs stream ends only after the last line.
//! - The daemon down, restarting or dropping a stream: retry with exponential backoff from the
//!   cursor, never exit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{
    EventsOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::derive::alerts::Signal;
use crate::derive::{ContainerRun, EventRow, Op};
use crate::parse::{Level, Parser};

pub mod stats;

/// A container selector in the config: every given field must match.
///
/// ```toml
/// [[docker.include]]
/// name = "yolo-*"        # exact name, or a prefix ending in *
/// role = "training"
/// [[docker.include]]
/// label = "trainwatch.role"   # a label key, or key=value
/// [[docker.exclude]]
/// image = "portainer/*"
/// ```
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    /// Role given to containers this selector includes (`training`, `queue`, ...).
    #[serde(default)]
    pub role: Option<String>,
}

/// The `[docker]` config section.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    /// Containers to follow; empty means all.
    #[serde(default)]
    pub include: Vec<Selector>,
    #[serde(default)]
    pub exclude: Vec<Selector>,
    /// How long ops may wait before being committed (latency bound), in milliseconds.
    #[serde(default = "default_flush_ms")]
    pub flush_ms: u64,
    /// Re-attach a running container's stream after this many seconds without data
    /// (collectors silently stop here); 0 disables.
    #[serde(default = "default_silence_secs")]
    pub reattach_after_silence_secs: u64,
    /// Raise `LogStreamSilent` when a running container of one of `silent_alert_roles` has
    /// printed nothing for this long (seconds); 0 disables.
    #[serde(default = "default_silent_alert_secs")]
    pub silent_alert_after_secs: u64,
    #[serde(default = "default_silent_alert_roles")]
    pub silent_alert_roles: Vec<String>,
    /// Report `docker_unreachable` when the daemon has been unreachable this long (seconds).
    #[serde(default = "default_unreachable_secs")]
    pub unreachable_after_secs: u64,
    /// Sample the followed containers' CPU, memory, network and block I/O (Docker stats) at
    /// the probe interval.
    #[serde(default = "default_stats")]
    pub stats: bool,
}

fn default_stats() -> bool {
    true
}

fn default_flush_ms() -> u64 {
    100
}
fn default_silence_secs() -> u64 {
    300
}
fn default_silent_alert_secs() -> u64 {
    900
}
fn default_silent_alert_roles() -> Vec<String> {
    vec!["training".into()]
}
fn default_unreachable_secs() -> u64 {
    30
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            include: Vec::new(),
            exclude: Vec::new(),
            flush_ms: default_flush_ms(),
            reattach_after_silence_secs: default_silence_secs(),
            silent_alert_after_secs: default_silent_alert_secs(),
            silent_alert_roles: default_silent_alert_roles(),
            unreachable_after_secs: default_unreachable_secs(),
            stats: default_stats(),
        }
    }
}

/// What discovery knows about a container.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image: String,
    pub labels: HashMap<String, String>,
}

impl ContainerInfo {
    /// From an entry of `GET /containers/json`; `None` without an id.
    pub fn from_summary(c: &bollard::models::ContainerSummary) -> Option<ContainerInfo> {
        let id = c.id.clone()?;
        Some(ContainerInfo {
            name: c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_else(|| id.chars().take(12).collect()),
            image: c.image.clone().unwrap_or_default(),
            labels: c.labels.clone().unwrap_or_default(),
            id,
        })
    }
}

fn glob_match(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

impl Selector {
    fn matches(&self, c: &ContainerInfo) -> bool {
        let name = self.name.as_deref().is_none_or(|n| glob_match(n, &c.name));
        let image = self
            .image
            .as_deref()
            .is_none_or(|i| glob_match(i, &c.image));
        let label = self
            .label
            .as_deref()
            .is_none_or(|l| match l.split_once('=') {
                Some((k, v)) => c.labels.get(k).is_some_and(|x| x == v),
                None => c.labels.contains_key(l),
            });
        name && image && label
    }
}

impl DockerConfig {
    /// Whether to follow `c`, and its role: the `trainwatch.role` label, else the including
    /// selector's role, else `other`. trainwatch's own container, and any container labelled
    /// `trainwatch.follow=false`, is never followed.
    pub fn select(&self, c: &ContainerInfo) -> Option<String> {
        if is_self(&c.id)
            || c.labels
                .get("trainwatch.follow")
                .is_some_and(|v| v.eq_ignore_ascii_case("false"))
            || self.exclude.iter().any(|s| s.matches(c))
        {
            return None;
        }
        let rule = if self.include.is_empty() {
            None
        } else {
            Some(self.include.iter().find(|s| s.matches(c))?)
        };
        Some(
            c.labels
                .get("trainwatch.role")
                .cloned()
                .or_else(|| rule.and_then(|r| r.role.clone()))
                .unwrap_or_else(|| "other".into()),
        )
    }
}

/// Whether `id` is the container trainwatch itself runs in.
fn is_self(id: &str) -> bool {
    static SELF: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let own = SELF.get_or_init(|| {
        std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| own_container_id(&m))
            // A container's default hostname is its short id (a compose `hostname:` changes it).
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| h.len() >= 12))
    });
    own.as_deref().is_some_and(|own| id.starts_with(own))
}

/// The container id in the mount table of a process inside a Docker container: the daemon
/// bind-mounts `/etc/hostname` (and `resolv.conf`, `hosts`) from
/// `<data-root>/containers/<64 hex id>/`.
pub fn own_container_id(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let mut f = line.split(' ');
        let root = f.nth(3)?;
        let mount_point = f.next()?;
        if !matches!(
            mount_point,
            "/etc/hostname" | "/etc/resolv.conf" | "/etc/hosts"
        ) {
            return None;
        }
        let (_, rest) = root.rsplit_once("/containers/")?;
        let id = rest.split('/').next()?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    })
}

/// Exponential backoff with a cap, reset on success.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new() -> Self {
        Self::with_max(Duration::from_secs(30))
    }

    pub fn with_max(max: Duration) -> Self {
        Backoff {
            next: Duration::from_millis(200),
            max,
        }
    }
    pub fn reset(&mut self) {
        self.next = Duration::from_millis(200);
    }
    /// The delay to wait now; doubles the next one.
    pub fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Tracks a daemon outage and reports it once as a `docker_unreachable` event when it lasts.
#[derive(Debug, Default)]
pub struct Outage {
    since: Option<tokio::time::Instant>,
    reported: bool,
}

impl Outage {
    /// Records a failed attempt; sends the event once the outage is longer than the limit.
    pub async fn failed(&mut self, error: &str, writer: &Sender<Vec<Op>>, limit: Duration) {
        let since = *self.since.get_or_insert_with(tokio::time::Instant::now);
        tracing::warn!(error, "Docker daemon unreachable; retrying.");
        if !self.reported && since.elapsed() >= limit {
            self.reported = true;
            let op = daemon_event(
                "docker",
                crate::time::now_ns(),
                "docker_unreachable",
                Level::Error,
                format!(
                    "Docker daemon unreachable for {}s: {error}",
                    since.elapsed().as_secs()
                ),
                serde_json::json!({ "error": error }),
            );
            let _ = writer.send(vec![op]).await;
        }
    }

    /// Records a success; tells the alert rules when a reported outage ended.
    /// Records a success; tells the alert rules when a reported outage ended. Returns
    /// whether an outage ended.
    pub async fn ok(&mut self, writer: &Sender<Vec<Op>>) -> bool {
        let ended = self.since.take().is_some();
        if ended {
            tracing::info!("Docker daemon reachable again.");
        }
        if std::mem::take(&mut self.reported) {
            let op = Op::Signal(crate::time::now_ns(), Signal::DockerReachable);
            let _ = writer.send(vec![op]).await;
        }
        ended
    }
}

/// Connects to the daemon (`DOCKER_HOST` or the local socket), retrying with backoff until it
/// answers a ping; `None` if shutdown comes first.
pub async fn connect(
    writer: &Sender<Vec<Op>>,
    cfg: &DockerConfig,
    shutdown: &CancellationToken,
) -> Option<Docker> {
    let mut backoff = Backoff::new();
    let mut outage = Outage::default();
    let limit = Duration::from_secs(cfg.unreachable_after_secs);
    loop {
        let attempt = match Docker::connect_with_local_defaults() {
            Ok(d) => match d.ping().await {
                Ok(_) => Ok(d),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        match attempt {
            Ok(d) => {
                outage.ok(writer).await;
                return Some(d);
            }
            Err(e) => outage.failed(&e, writer, limit).await,
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(backoff.step()) => {}
        }
    }
}

/// Splits a `timestamps=true` log message into its time and text.
pub fn split_timestamp(msg: &[u8]) -> Option<(i64, String)> {
    let sp = memchr::memchr(b' ', &msg[..msg.len().min(40)])?;
    let ts = crate::time::parse_rfc3339(std::str::from_utf8(&msg[..sp]).ok()?)?;
    Some((ts, String::from_utf8_lossy(&msg[sp + 1..]).into_owned()))
}

/// Everything a follower needs that is shared by all of them.
#[derive(Clone)]
pub struct Shared {
    pub docker: Docker,
    pub parser: Arc<Parser>,
    pub writer: Sender<Vec<Op>>,
    pub db: std::path::PathBuf,
    pub cfg: Arc<DockerConfig>,
    pub shutdown: CancellationToken,
    /// Woken when the daemon answers again after an outage: followers waiting out a long
    /// backoff re-attach at once.
    pub reconnected: Arc<tokio::sync::Notify>,
}

fn daemon_event(
    container: &str,
    ts: i64,
    kind: &'static str,
    level: Level,
    message: String,
    context: serde_json::Value,
) -> Op {
    Op::Event(EventRow {
        ts,
        container: Arc::from(container),
        stream: "docker",
        seq: 0,
        key_ts: ts,
        level,
        kind,
        message,
        context: context.to_string(),
    })
}

/// Runs discovery and the followers until `shutdown` is cancelled. Never returns early on
/// daemon errors: it retries.
pub async fn run<F, Fut>(shared: Shared, follow: F)
where
    F: Fn(Shared, ContainerInfo, String) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let tracker = TaskTracker::new();
    let mut following: HashMap<String, CancellationToken> = HashMap::new();
    // Discovery notices the daemon's return for everyone: it probes at least every 5 s.
    let mut backoff = Backoff::with_max(Duration::from_secs(5));
    let mut outage = Outage::default();
    let limit = Duration::from_secs(shared.cfg.unreachable_after_secs);
    let started = crate::time::now_ns();
    'outer: loop {
        if shared.shutdown.is_cancelled() {
            break;
        }
        // (Re)discover: everything that exists now, running or not.
        let listed = shared
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default().all(true).build(),
            ))
            .await;
        let list = match listed {
            Ok(l) => l,
            Err(e) => {
                outage.failed(&e.to_string(), &shared.writer, limit).await;
                tokio::select! {
                    _ = shared.shutdown.cancelled() => break 'outer,
                    _ = tokio::time::sleep(backoff.step()) => continue 'outer,
                }
            }
        };
        if outage.ok(&shared.writer).await {
            shared.reconnected.notify_waiters();
        }
        backoff.reset();
        let mut states = Vec::new();
        let now = crate::time::now_ns();
        for c in list {
            let Some(info) = ContainerInfo::from_summary(&c) else {
                continue;
            };
            let id = info.id.clone();
            if let Some(role) = shared.cfg.select(&info) {
                let running = c
                    .state
                    .as_ref()
                    .is_some_and(|s| s.to_string().eq_ignore_ascii_case("running"));
                // A stopped container has been down since it finished, not since now.
                let mut since = now;
                if !running
                    && role == "queue"
                    && let Ok(i) = shared
                        .docker
                        .inspect_container(&id, None::<InspectContainerOptions>)
                        .await
                    && let Some(t) = i
                        .state
                        .and_then(|s| s.finished_at)
                        .and_then(|f| crate::time::parse_rfc3339(&f))
                        .filter(|t| *t > 0 && *t <= now)
                {
                    since = t;
                }
                states.push(Op::Container(
                    now,
                    Arc::from(info.name.as_str()),
                    role.clone(),
                ));
                // `Exited (137) 5 minutes ago`: the summary's status carries the exit code.
                let run = if running {
                    ContainerRun::Running
                } else {
                    ContainerRun::Exited(c.status.as_deref().and_then(exit_code_of_status))
                };
                states.push(Op::ContainerState(
                    since,
                    Arc::from(info.name.as_str()),
                    run,
                ));
                states.push(Op::Signal(
                    since,
                    Signal::Container {
                        name: Arc::from(info.name.as_str()),
                        role,
                        running,
                    },
                ));
            }
            ensure_follower(&shared, &tracker, &mut following, info, &follow);
        }
        // What runs and what does not, for the rules on containers that are down.
        if !states.is_empty() && shared.writer.send(states).await.is_err() {
            break 'outer;
        }
        // Then follow the events stream until it breaks.
        let filters: HashMap<&str, Vec<&str>> = HashMap::from([("type", vec!["container"])]);
        let since = (started / 1_000_000_000).to_string();
        let mut events = shared.docker.events(Some(
            EventsOptionsBuilder::default()
                .since(&since)
                .filters(&filters)
                .build(),
        ));
        loop {
            let next = tokio::select! {
                _ = shared.shutdown.cancelled() => break 'outer,
                n = events.next() => n,
            };
            match next {
                Some(Ok(ev)) => handle_event(&shared, &tracker, &mut following, ev, &follow).await,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Docker events stream failed; reconnecting.");
                    break;
                }
                None => {
                    tracing::warn!("Docker events stream ended; reconnecting.");
                    break;
                }
            }
        }
        following.retain(|_, t| !t.is_cancelled());
        tokio::select! {
            _ = shared.shutdown.cancelled() => break 'outer,
            _ = tokio::time::sleep(backoff.step()) => {}
        }
    }
    tracker.close();
    tracker.wait().await;
}

fn ensure_follower<F, Fut>(
    shared: &Shared,
    tracker: &TaskTracker,
    following: &mut HashMap<String, CancellationToken>,
    info: ContainerInfo,
    follow: &F,
) where
    F: Fn(Shared, ContainerInfo, String) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    if following.get(&info.id).is_some_and(|t| !t.is_cancelled()) {
        return;
    }
    let Some(role) = shared.cfg.select(&info) else {
        return;
    };
    let done = shared.shutdown.child_token();
    following.insert(info.id.clone(), done.clone());
    let shared = shared.clone();
    let follow = follow.clone();
    tracker.spawn(async move {
        follow(shared, info, role).await;
        // Marks the follower finished so a later `start` attaches a new one.
        done.cancel();
    });
}

async fn handle_event<F, Fut>(
    shared: &Shared,
    tracker: &TaskTracker,
    following: &mut HashMap<String, CancellationToken>,
    ev: bollard::models::EventMessage,
    follow: &F,
) where
    F: Fn(Shared, ContainerInfo, String) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let action = ev.action.clone().unwrap_or_default();
    let Some(actor) = ev.actor.clone() else {
        return;
    };
    let Some(id) = actor.id.clone() else { return };
    let attrs = actor.attributes.clone().unwrap_or_default();
    let info = ContainerInfo {
        id: id.clone(),
        name: attrs
            .get("name")
            .cloned()
            .unwrap_or_else(|| id.chars().take(12).collect()),
        image: attrs.get("image").cloned().unwrap_or_default(),
        labels: attrs.clone(),
    };
    let Some(role) = shared.cfg.select(&info) else {
        return;
    };
    let ts = ev.time_nano.unwrap_or_else(crate::time::now_ns);
    let ctx = |extra: serde_json::Value| {
        let mut c = serde_json::json!({ "id": id, "image": info.image, "role": role });
        if let (Some(m), serde_json::Value::Object(e)) = (c.as_object_mut(), extra) {
            m.extend(e);
        }
        c
    };
    // What the event says, as one batch: the container's role and state, and its event.
    let name: Arc<str> = Arc::from(info.name.as_str());
    let ops = match action.as_str() {
        "start" => {
            ensure_follower(shared, tracker, following, info.clone(), follow);
            vec![
                Op::Container(ts, name.clone(), role.clone()),
                Op::ContainerState(ts, name.clone(), ContainerRun::Running),
                daemon_event(
                    &info.name,
                    ts,
                    "container_started",
                    Level::Info,
                    format!("Container {} started", info.name),
                    ctx(serde_json::json!({})),
                ),
            ]
        }
        "die" => {
            let code: Option<i64> = attrs.get("exitCode").and_then(|c| c.parse().ok());
            let level = if code == Some(0) {
                Level::Info
            } else {
                Level::Error
            };
            vec![
                Op::ContainerState(ts, name.clone(), ContainerRun::Exited(code)),
                daemon_event(
                    &info.name,
                    ts,
                    "container_died",
                    level,
                    format!(
                        "Container {} exited with code {}",
                        info.name,
                        code.map(|c| c.to_string())
                            .unwrap_or_else(|| "unknown".into())
                    ),
                    ctx(serde_json::json!({ "exit_code": code })),
                ),
            ]
        }
        "oom" => vec![
            Op::ContainerState(ts, name.clone(), ContainerRun::OomKilled),
            daemon_event(
                &info.name,
                ts,
                "container_oom_killed",
                Level::Critical,
                format!(
                    "Container {} was killed by the kernel OOM killer",
                    info.name
                ),
                ctx(serde_json::json!({})),
            ),
        ],
        // The container is gone for good: its cursors are no longer needed (removed by the
        // writer, the one connection that writes).
        "destroy" => vec![Op::ForgetOrigin(Arc::from(id.as_str()))],
        _ => Vec::new(),
    };
    if !ops.is_empty() {
        let _ = shared.writer.send(ops).await;
    }
}

/// The exit code in a container summary's status: `Exited (137) 5 minutes ago` -> 137.
fn exit_code_of_status(status: &str) -> Option<i64> {
    let rest = status.strip_prefix("Exited (")?;
    rest[..rest.find(')')?].parse().ok()
}

/// How a container stopped.
pub struct Exited {
    pub finished_at: i64,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
}

impl Exited {
    pub fn of(state: &bollard::models::ContainerState) -> Exited {
        Exited {
            // Docker's zero time (`0001-01-01T00:00:00Z`) when it never ran.
            finished_at: state
                .finished_at
                .as_deref()
                .and_then(crate::time::parse_rfc3339)
                .filter(|t| *t > 0)
                .unwrap_or_else(crate::time::now_ns),
            exit_code: state.exit_code,
            oom_killed: state.oom_killed.unwrap_or(false),
        }
    }
}

/// A client whose requests carry `since` to the nanosecond. bollard's `since` is whole
/// seconds, while dockerd takes `seconds.nanoseconds`: without this, every re-attach re-reads
/// up to a second of lines (at a busy container's rate, a hundred thousand) only to drop them.
pub fn precise_since(docker: &Docker, since_ns: i64) -> Docker {
    if since_ns % 1_000_000_000 == 0 {
        return docker.clone();
    }
    docker.clone().with_request_modifier(move |mut req| {
        let uri = req.uri().to_string();
        if let Some(Ok(precise)) = with_since_ns(&uri, since_ns).map(|u| u.parse()) {
            *req.uri_mut() = precise;
        }
        req
    })
}

/// `uri` with its `since=<seconds>` query parameter given to the nanosecond.
fn with_since_ns(uri: &str, since_ns: i64) -> Option<String> {
    let secs = since_ns.div_euclid(1_000_000_000);
    let nanos = since_ns.rem_euclid(1_000_000_000);
    let whole = format!("since={secs}");
    let at = uri.match_indices(&whole).map(|(i, _)| i).find(|&i| {
        matches!(uri.as_bytes().get(i.wrapping_sub(1)), Some(b'?' | b'&'))
            && matches!(uri.as_bytes().get(i + whole.len()), None | Some(b'&'))
    })?;
    let end = at + whole.len();
    Some(format!("{}.{nanos:09}{}", &uri[..end], &uri[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, image: &str, labels: &[(&str, &str)]) -> ContainerInfo {
        ContainerInfo {
            id: "0123456789abcdef".into(),
            name: name.into(),
            image: image.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn own_container_from_mountinfo() {
        let id = "4f1c0a5e3b2d".repeat(5) + "abcd";
        let m = format!(
            "612 611 0:52 / / rw,relatime - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/X\n\
             640 612 8:1 /var/lib/docker/containers/{id}/resolv.conf /etc/resolv.conf rw,relatime - ext4 /dev/sda1 rw\n\
             641 612 8:1 /var/lib/docker/containers/{id}/hostname /etc/hostname rw,relatime - ext4 /dev/sda1 rw\n"
        );
        assert_eq!(own_container_id(&m), Some(id.clone()));
        // A host process: no such mounts.
        let host = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    23 22 0:21 / /proc rw - proc proc rw\n";
        assert_eq!(own_container_id(host), None);
        // A bind mount of some other container's directory elsewhere is not ours.
        let other =
            format!("50 22 8:1 /var/lib/docker/containers/{id} /mnt/c rw - ext4 /dev/sda1 rw\n");
        assert_eq!(own_container_id(&other), None);
    }

    #[test]
    fn follow_label_false_is_never_followed() {
        let cfg = DockerConfig::default();
        assert_eq!(
            cfg.select(&info(
                "tw",
                "trainwatch:0.1.0",
                &[("trainwatch.follow", "false")]
            )),
            None
        );
        assert_eq!(
            cfg.select(&info(
                "yolo",
                "ultralytics",
                &[("trainwatch.follow", "true")]
            )),
            Some("other".into())
        );
    }

    #[test]
    fn selection_and_roles() {
        let cfg = DockerConfig {
            include: vec![
                Selector {
                    name: Some("yolo-*".into()),
                    role: Some("training".into()),
                    ..Default::default()
                },
                Selector {
                    label: Some("app=annotations".into()),
                    role: Some("queue".into()),
                    ..Default::default()
                },
            ],
            exclude: vec![Selector {
                image: Some("portainer/*".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            cfg.select(&info("yolo-train", "ultra", &[])).as_deref(),
            Some("training")
        );
        assert_eq!(
            cfg.select(&info("consumer", "py", &[("app", "annotations")]))
                .as_deref(),
            Some("queue")
        );
        assert_eq!(cfg.select(&info("yolo-x", "portainer/agent", &[])), None);
        assert_eq!(cfg.select(&info("other", "x", &[])), None);
        assert_eq!(
            cfg.select(&info("yolo-y", "x", &[("trainwatch.role", "queue")]))
                .as_deref(),
            Some("queue")
        );
        assert_eq!(
            DockerConfig::default()
                .select(&info("any", "x", &[]))
                .as_deref(),
            Some("other")
        );
    }

    #[test]
    fn timestamps_prefix() {
        let (ts, text) = split_timestamp(b"2026-03-28T14:30:00.123456789Z hello\n").unwrap();
        assert_eq!(
            ts,
            crate::time::parse_rfc3339("2026-03-28T14:30:00.123456789Z").unwrap()
        );
        assert_eq!(text, "hello\n");
        assert!(split_timestamp(b"no timestamp here").is_none());
    }

    #[test]
    fn since_to_the_nanosecond() {
        let uri = "http://localhost/v1.41/containers/abc/logs?follow=true&since=1774708200&until=0";
        assert_eq!(
            with_since_ns(uri, 1_774_708_200_000_000_042).as_deref(),
            Some(
                "http://localhost/v1.41/containers/abc/logs?follow=true&since=1774708200.000000042&until=0"
            )
        );
        let last = "http://localhost/logs?stdout=true&since=1774708200";
        assert_eq!(
            with_since_ns(last, 1_774_708_200_500_000_000).as_deref(),
            Some("http://localhost/logs?stdout=true&since=1774708200.500000000")
        );
        // Only the parameter itself, whole: not a longer number, not another name.
        assert_eq!(
            with_since_ns("http://h/logs?since=17747082001", 1_774_708_200_000_000_001),
            None
        );
        assert_eq!(
            with_since_ns("http://h/logs?xsince=1774708200", 1_774_708_200_000_000_001),
            None
        );
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let mut b = Backoff::new();
        let steps: Vec<u128> = (0..10).map(|_| b.step().as_millis()).collect();
        assert_eq!(&steps[..4], &[200, 400, 800, 1600]);
        assert_eq!(*steps.last().unwrap(), 30_000);
        b.reset();
        assert_eq!(b.step().as_millis(), 200);
    }
}
