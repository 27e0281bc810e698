//! The words of the alerts: severities, the one table of alert names, labels, fingerprints,
//! and the values the engine hands to the store.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// How urgent an alert is; the `severity` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        Some(match s {
            "critical" => Severity::Critical,
            "high" => Severity::High,
            "medium" => Severity::Medium,
            "low" => Severity::Low,
            _ => return None,
        })
    }
}

/// The group of rules an alert belongs to: one file of rules each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// The host's GPUs and disk, from the probes (`host.rs`).
    Host,
    /// The annotation queue consumer (`queue.rs`).
    Queue,
    /// Training runs and their containers (`training.rs`).
    Training,
    /// Single events and trainwatch's own health (`events.rs`).
    Events,
}

/// Defines [`AlertName`] from one table: name, severity, family.
macro_rules! alert_names {
    ($($name:ident => $severity:ident, $family:ident;)*) => {
        /// The alert names: the `alertname` label, a public contract.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum AlertName {
            $($name,)*
        }

        impl AlertName {
            /// Every alert name, in the order of the table.
            pub const ALL: &'static [AlertName] = &[$(AlertName::$name,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(AlertName::$name => stringify!($name),)*
                }
            }

            pub fn severity(self) -> Severity {
                match self {
                    $(AlertName::$name => Severity::$severity,)*
                }
            }

            pub fn family(self) -> Family {
                match self {
                    $(AlertName::$name => Family::$family,)*
                }
            }
        }
    };
}

alert_names! {
    GpuTemperatureHigh => Critical, Host;
    QueueContainerDown => Critical, Queue;
    DiskUsageCritical => Critical, Host;
    DiskUsageHigh => Medium, Host;
    TrainingLossNonFinite => High, Training;
    TrainingLossDiverging => High, Training;
    GpuOutOfMemory => High, Events;
    QueueOffsetStale => Medium, Queue;
    CheckpointSaveFailed => Low, Events;
    DockerUnreachable => Critical, Events;
    LogStreamSilent => Medium, Events;
    StoreNotWritable => Critical, Events;
    TrainingContainerDied => High, Training;
    TrainingStalled => High, Training;
    TrainingFailed => High, Training;
    QueueFailureRateHigh => Medium, Queue;
    SecretsInLogs => Low, Events;
}

impl AlertName {
    /// The name with this `alertname` label.
    pub fn parse(s: &str) -> Option<AlertName> {
        Self::ALL.iter().copied().find(|n| n.as_str() == s)
    }
}

impl std::fmt::Display for AlertName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for AlertName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AlertName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        AlertName::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown alertname {s:?}")))
    }
}

/// Labels of an alert, sorted by name.
pub type Labels = BTreeMap<String, String>;

/// The labels of an alert: `alertname`, `severity`, and `extra`.
pub fn labels(name: AlertName, extra: &[(&str, &str)]) -> Labels {
    let mut l = Labels::new();
    l.insert("alertname".into(), name.as_str().into());
    l.insert("severity".into(), name.severity().as_str().into());
    for (k, v) in extra {
        l.insert((*k).into(), (*v).into());
    }
    l
}

/// The fingerprint of a label set: FNV-1a over the sorted `name\0value\0` pairs, in hex.
pub fn fingerprint(labels: &Labels) -> String {
    let mut bytes = Vec::with_capacity(128);
    for (k, v) in labels {
        bytes.extend_from_slice(k.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(v.as_bytes());
        bytes.push(0);
    }
    format!("{:016x}", crate::hash::fnv1a(&bytes))
}

/// An alert as stored and notified.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub fingerprint: String,
    pub alertname: AlertName,
    pub severity: Severity,
    pub labels: Labels,
    pub summary: String,
    /// When the condition began (the start of the pending time), ns.
    pub started_at: i64,
    pub resolved_at: Option<i64>,
}

/// What the store must record.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Became firing; `notify` when it is to be sent to the receivers.
    Fired { alert: Alert, notify: bool },
    /// A firing alert resolved at `alert.resolved_at`.
    Resolved { alert: Alert, notify: bool },
    /// Still firing after the repeat interval: notify again.
    Repeat { alert: Alert },
}

/// Signals that are not rows: container states from discovery, the daemon and stream
/// health, the store's own health.
#[derive(Clone, Debug, PartialEq)]
pub enum Signal {
    /// A followed container's state as discovery saw it.
    Container {
        name: Arc<str>,
        role: String,
        running: bool,
    },
    DockerReachable,
    StreamSilent {
        container: Arc<str>,
        silent: bool,
    },
    /// `replay` read a container's archived log to its end: what needs the container to be
    /// watched while it runs (a stuck queue offset, a stalled run) is no longer known, and
    /// resolves at the log's last time.
    LogEnded {
        container: Arc<str>,
    },
}

/// A firing alert loaded from the store at start.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub alert: Alert,
    pub last_notified: Option<i64>,
    /// Whether it came from `watch` (and so is to be repeated and resolved with notices).
    pub live: bool,
}

/// The first line of a message, at most 200 characters: what a summary quotes.
pub(super) fn first_line(s: &str) -> &str {
    let l = s.lines().next().unwrap_or("");
    match l.char_indices().nth(200) {
        Some((i, _)) => &l[..i],
        None => l,
    }
}
