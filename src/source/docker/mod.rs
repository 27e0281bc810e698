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

use std::sync::Arc;

use bollard::Docker;
use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;

use crate::event::Notice;

mod config;
mod daemon;
mod discovery;
pub mod stats;

pub use crate::backoff::Backoff;
pub use config::{ContainerInfo, DockerConfig, Selector, own_container_id, own_id};
pub use daemon::{Outage, connect};
pub use discovery::run;

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
    /// Where the source's notices go (the pipeline turns them into store operations).
    pub notices: Sender<Vec<Notice>>,
    pub cfg: Arc<DockerConfig>,
    pub shutdown: CancellationToken,
    /// Woken when the daemon answers again after an outage: followers waiting out a long
    /// backoff re-attach at once.
    pub reconnected: Arc<tokio::sync::Notify>,
}

/// How a container stopped.
pub struct Exited {
    pub finished_at: i64,
    /// When it last started (`StartedAt`), if it ever ran.
    pub started_at: Option<i64>,
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
            started_at: state
                .started_at
                .as_deref()
                .and_then(crate::time::parse_rfc3339)
                .filter(|t| *t > 0),
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
    fn daemon_errors_say_whether_to_retry() {
        use crate::error::DockerError;
        let answer = |status_code| {
            DockerError::from(bollard::errors::Error::DockerResponseServerError {
                status_code,
                message: "m".into(),
            })
        };
        assert!(answer(404).not_found() && !answer(404).transient());
        assert!(!answer(400).transient() && !answer(400).not_found());
        assert!(answer(500).transient() && answer(503).transient());
        let down = DockerError::from(bollard::errors::Error::IOError {
            err: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        });
        assert!(matches!(down, DockerError::Unreachable(_)) && down.transient());
        assert!(DockerError::Silent(60).transient());
        assert_eq!(answer(404).to_string(), "the Docker daemon answered 404: m");
    }
}
