//! Discovery: the containers that exist at start and the daemon's container events after
//! it, with a follower started for each selected container.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::{
    EventsOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::event::Level;
use crate::event::{ContainerRun, Notice};

use super::daemon::daemon_event;
use super::*;

/// Runs discovery and the followers until `shutdown` is cancelled. Never returns early on
/// daemon errors: it retries.
#[expect(
    clippy::too_many_lines,
    reason = "discovery's event loop: the daemon's event stream and its reconnects in one select"
)]
pub async fn run<F, Fut>(shared: Shared, follow: F)
where
    F: Fn(Shared, ContainerInfo, String) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let tracker = TaskTracker::new();
    let mut following: HashMap<String, CancellationToken> = HashMap::new();
    // Discovery notices the daemon's return for everyone: it probes at least every 5 s.
    let mut backoff = Backoff::new(crate::backoff::DISCOVERY);
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
                outage.failed(&e.into(), &shared.notices, limit).await;
                tokio::select! {
                    _ = shared.shutdown.cancelled() => break 'outer,
                    _ = tokio::time::sleep(backoff.step()) => continue 'outer,
                }
            }
        };
        if outage.ok(&shared.notices).await {
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
                states.push(Notice::Container(
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
                states.push(Notice::State(since, Arc::from(info.name.as_str()), run));
                states.push(Notice::Up {
                    ts: since,
                    name: Arc::from(info.name.as_str()),
                    role,
                    running,
                });
            }
            ensure_follower(&shared, &tracker, &mut following, info, &follow);
        }
        // What runs and what does not, for the rules on containers that are down.
        if !states.is_empty() && shared.notices.send(states).await.is_err() {
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
                    let e = crate::error::DockerError::from(e);
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
                Notice::Container(ts, name.clone(), role.clone()),
                Notice::State(ts, name.clone(), ContainerRun::Running),
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
            // Its log is read now if nobody has read it (a start the events stream did not
            // deliver): it is still there until `destroy` (`--rm` comes right after).
            if !following.contains_key(&info.id) {
                ensure_follower(shared, tracker, following, info.clone(), follow);
            }
            let code: Option<i64> = attrs.get("exitCode").and_then(|c| c.parse().ok());
            let level = if code == Some(0) {
                Level::Info
            } else {
                Level::Error
            };
            vec![
                Notice::State(ts, name.clone(), ContainerRun::Exited(code)),
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
            Notice::State(ts, name.clone(), ContainerRun::OomKilled),
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
        "destroy" => vec![
            Notice::State(ts, name.clone(), ContainerRun::Removed),
            Notice::Gone(Arc::from(id.as_str())),
        ],
        _ => Vec::new(),
    };
    if !ops.is_empty() {
        let _ = shared.notices.send(ops).await;
    }
}

/// The exit code in a container summary's status: `Exited (137) 5 minutes ago` -> 137.
fn exit_code_of_status(status: &str) -> Option<i64> {
    let rest = status.strip_prefix("Exited (")?;
    rest[..rest.find(')')?].parse().ok()
}
