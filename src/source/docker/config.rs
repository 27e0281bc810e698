//! `[docker]`: which containers `watch` follows and with which role, and the follow settings.

use std::collections::HashMap;

use serde::Deserialize;

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
    own_id().is_some_and(|own| id.starts_with(own))
}

/// The id (or its short form) of the container trainwatch runs in, if it runs in one.
pub fn own_id() -> Option<&'static str> {
    static SELF: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    SELF.get_or_init(|| {
        std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| own_container_id(&m))
            // A container's default hostname is its short id (a compose `hostname:` changes it).
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| h.len() >= 12))
    })
    .as_deref()
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
