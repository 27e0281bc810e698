//! The daemon's availability: connecting with backoff, and an outage reported once it lasts.

use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;

use crate::error::DockerError;
use crate::event::Level;
use crate::event::{EventRow, Notice};

use super::*;

pub(super) fn daemon_event(
    container: &str,
    ts: i64,
    kind: &'static str,
    level: Level,
    message: String,
    context: serde_json::Value,
) -> Notice {
    Notice::Daemon(EventRow {
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

/// Tracks a daemon outage and reports it once as a `docker_unreachable` event when it lasts.
#[derive(Debug, Default)]
pub struct Outage {
    since: Option<tokio::time::Instant>,
    reported: bool,
}

impl Outage {
    /// Records a failed attempt; sends the event once the outage is longer than the limit.
    pub async fn failed(
        &mut self,
        error: &DockerError,
        writer: &Sender<Vec<Notice>>,
        limit: Duration,
    ) {
        let since = *self.since.get_or_insert_with(tokio::time::Instant::now);
        tracing::warn!(error = %error, "Docker daemon unreachable; retrying.");
        let error = error.to_string();
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
    pub async fn ok(&mut self, writer: &Sender<Vec<Notice>>) -> bool {
        let ended = self.since.take().is_some();
        if ended {
            tracing::info!("Docker daemon reachable again.");
        }
        if std::mem::take(&mut self.reported) {
            let op = Notice::DaemonReachable(crate::time::now_ns());
            let _ = writer.send(vec![op]).await;
        }
        ended
    }
}

/// Connects to the daemon (`DOCKER_HOST` or the local socket), retrying with backoff until it
/// answers a ping; `None` if shutdown comes first.
pub async fn connect(
    writer: &Sender<Vec<Notice>>,
    cfg: &DockerConfig,
    shutdown: &CancellationToken,
) -> Option<Docker> {
    let mut backoff = Backoff::new(crate::backoff::DAEMON);
    let mut outage = Outage::default();
    let limit = Duration::from_secs(cfg.unreachable_after_secs);
    loop {
        let attempt = match Docker::connect_with_local_defaults() {
            Ok(d) => match d.ping().await {
                Ok(_) => Ok(d),
                Err(e) => Err(DockerError::from(e)),
            },
            Err(e) => Err(DockerError::from(e)),
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
