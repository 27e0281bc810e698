//! Alert delivery: the outbox's notifications to webhooks and Alertmanager, in order per
//! receiver, retried with backoff until the receiver takes them (a receiver that is down or
//! answers 5xx loses nothing; a trainwatch restart sends what was still queued).
//!
//! Three receiver kinds:
//! - `webhook`: a POST of one JSON object per notification (see [`webhook_body`]); its
//!   `notification_id` lets a receiver drop the rare duplicate (a delivery whose success could
//!   not be recorded before a crash is sent again).
//! - `alertmanager`: Alertmanager's `POST /api/v2/alerts` with `labels`, `annotations`,
//!   `startsAt`, `endsAt`. Like Prometheus, firing alerts are also re-sent every
//!   `alertmanager_resend` with `endsAt` a few intervals ahead, so Alertmanager keeps them
//!   active while trainwatch runs and resolves them if it stops telling.
//! - `smtp`: an e-mail per notification (see [`super::mail`]).
//!
//! Receiver URLs and tokens never reach a log line: receivers are named by `name`, and HTTP
//! errors are logged without their URL.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::receivers::{ReceiverConfig, ReceiverKind};
use crate::error::StoreError;
use crate::store::alerts::{self as store_alerts, AlertRow, Pending};
use crate::store::{OutboxChange, WriterSender};
use crate::telemetry::events::{InternalEvent, NotificationDelivered, NotificationFailed};
use crate::time::{Age, format_ns, now_ns};

/// `[notify]` in the config.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    pub receivers: Vec<ReceiverConfig>,
    /// How often firing alerts are re-sent to Alertmanager receivers.
    pub alertmanager_resend: Age,
    /// The `instance` label sent to Alertmanager (default: this host's name).
    pub instance: Option<String>,
    /// The status page's address, linked from e-mails.
    pub page_url: Option<String>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            receivers: Vec::new(),
            alertmanager_resend: Age::secs(60),
            instance: None,
            page_url: None,
        }
    }
}

impl NotifyConfig {
    pub fn receiver_names(&self) -> Vec<String> {
        self.receivers.iter().map(|r| r.name.clone()).collect()
    }
}

/// Sets `Authorization: Bearer <token>`, replacing the Basic credentials reqwest takes from a
/// URL's `user:password@` (appending would send two headers, and servers read the first).
fn with_bearer(mut req: reqwest::Request, token: Option<&str>) -> reqwest::Request {
    if let Some(t) = token
        && let Ok(mut v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
    {
        v.set_sensitive(true);
        req.headers_mut().insert(reqwest::header::AUTHORIZATION, v);
    }
    req
}

impl ReceiverConfig {
    /// What is wrong with this receiver, if anything (checked when the config loads).
    pub fn problem(&self) -> Option<String> {
        if self.kind == ReceiverKind::Smtp {
            return super::mail::Mailer::new(self).err();
        }
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => None,
            Ok(u) => Some(format!(
                "receiver {:?}: url must be http:// or https:// with a host (got scheme {:?})",
                self.name,
                u.scheme()
            )),
            // The URL may hold credentials: not repeated in the error.
            Err(e) => Some(format!("receiver {:?}: url is not a URL ({e})", self.name)),
        }
    }
}

/// The generic webhook body of one notification.
pub fn webhook_body(p: &Pending, instance: &str) -> Value {
    let status = if p.event == "resolved" {
        "resolved"
    } else {
        "firing"
    };
    json!({
        "version": "1",
        "source": "trainwatch",
        "instance": instance,
        "notification_id": p.id,
        "event": p.event,
        "status": status,
        "alert": {
            "fingerprint": p.alert.fingerprint,
            "alertname": p.alert.alertname,
            "severity": p.alert.severity,
            "labels": p.alert.labels,
            "summary": p.alert.summary,
            "started_at": p.alert.started_at,
            "resolved_at": if status == "resolved" { json!(p.alert.resolved_at) } else { Value::Null },
        }
    })
}

/// One alert in Alertmanager's `postableAlert` form. A firing alert's `endsAt` is `ends_in`
/// ahead (Alertmanager resolves it then unless told again); a resolved one's is its time.
pub fn alertmanager_alert(a: &AlertRow, instance: &str, now: i64, ends_in: i64) -> Value {
    let mut labels = serde_json::Map::new();
    if let Value::Object(m) = &a.labels {
        for (k, v) in m {
            labels.insert(k.clone(), v.clone());
        }
    }
    labels.insert("instance".into(), json!(instance));
    labels.insert("job".into(), json!("trainwatch"));
    let ends = match (&a.status[..], &a.resolved_at) {
        ("resolved", Some(r)) => r.clone(),
        _ => format_ns(now + ends_in),
    };
    json!({
        "labels": labels,
        "annotations": { "summary": a.summary },
        "startsAt": a.started_at,
        "endsAt": ends,
    })
}

/// Why a delivery failed, and whether trying again can help.
#[derive(Debug)]
struct Failure {
    message: String,
    permanent: bool,
}

/// How long a delivery record may take the writer before the notifier stops waiting.
const RECORD_WAIT: Duration = Duration::from_secs(5);

/// How soon the queue is looked at again while a delivery record is in flight (ns).
const UNSETTLED_RETRY: i64 = 1_000_000_000;

/// The delivery task: reads the outbox on a read-only connection, has the writer record
/// what receivers acknowledged.
pub struct Notifier {
    cfg: NotifyConfig,
    /// The `smtp` receivers' transports, by receiver name.
    mailers: std::collections::HashMap<String, super::mail::Mailer>,
    health: crate::store::StoreHealth,
    client: reqwest::Client,
    conn: crate::store::AsyncConn,
    writer: WriterSender,
    /// A delivery record the writer had not committed in time.
    unsettled: std::sync::Mutex<Option<tokio::task::JoinHandle<Result<usize, StoreError>>>>,
    instance: String,
}

impl Notifier {
    pub fn new(
        cfg: NotifyConfig,
        db: PathBuf,
        writer: WriterSender,
        health: crate::store::StoreHealth,
    ) -> Result<Self, crate::error::OutputError> {
        let conn = crate::store::AsyncConn::open_ro(&db)?;
        // A redirect is never followed: a client following a 302 sends a GET without the
        // body, and its 200 would mark delivered what no receiver got.
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("trainwatch/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| crate::error::OutputError::Http(e.to_string()))?;
        let instance = cfg.instance.clone().unwrap_or_else(crate::sys::hostname);
        let mut mailers = std::collections::HashMap::new();
        for r in cfg
            .receivers
            .iter()
            .filter(|r| r.kind == ReceiverKind::Smtp)
        {
            let m = super::mail::Mailer::new(r).map_err(crate::error::OutputError::Mail)?;
            mailers.insert(r.name.clone(), m);
        }
        Ok(Notifier {
            mailers,
            cfg,
            health,
            client,
            conn,
            writer,
            unsettled: Default::default(),
            instance,
        })
    }

    /// How far ahead a firing alert's `endsAt` is set: four resend intervals, as Prometheus
    /// does, so a missed refresh or two does not resolve it.
    fn alertmanager_ends_in(&self) -> i64 {
        4 * self.cfg.alertmanager_resend.0.max(1_000_000_000)
    }

    async fn post(&self, r: &ReceiverConfig, body: &Value) -> Result<(), Failure> {
        let req = self
            .client
            .post(r.endpoint())
            .timeout(r.timeout.as_duration())
            .json(body)
            .build()
            .map_err(|e| Failure {
                message: e.without_url().to_string(),
                permanent: true,
            })?;
        let req = with_bearer(req, r.token().as_deref());
        match self.client.execute(req).await {
            Ok(resp) => {
                let s = resp.status();
                if s.is_success() {
                    Ok(())
                } else if s.is_redirection() {
                    // Where it points, for the log line (never stored: it may hold a token).
                    let to = resp
                        .headers()
                        .get(reqwest::header::LOCATION)
                        .and_then(|l| l.to_str().ok())
                        .map(|l| {
                            crate::redact::text(l.split(['?', '#']).next().unwrap_or(l))
                                .into_owned()
                        })
                        .unwrap_or_else(|| "nowhere".into());
                    tracing::warn!(
                        receiver = %r.name,
                        status = s.as_u16(),
                        location = %to,
                        "Receiver answered with a redirect, which is not followed: the notification is not delivered; set its url to the final address."
                    );
                    Err(Failure {
                        message: format!(
                            "HTTP {}: a redirect (not followed; see the log for where to)",
                            s.as_u16()
                        ),
                        permanent: false,
                    })
                } else {
                    Err(Failure {
                        message: format!("HTTP {}", s.as_u16()),
                        // 4xx other than timeout/rate limit will not get better by retrying.
                        permanent: s.is_client_error() && s.as_u16() != 408 && s.as_u16() != 429,
                    })
                }
            }
            Err(e) => Err(Failure {
                message: e.without_url().to_string(),
                permanent: false,
            }),
        }
    }

    async fn deliver(&self, p: &Pending) -> Result<(), Failure> {
        let Some(r) = self.cfg.receivers.iter().find(|r| r.name == p.receiver) else {
            return Err(Failure {
                message: "receiver no longer configured".into(),
                permanent: true,
            });
        };
        let body = match r.kind {
            ReceiverKind::Smtp => return self.mail(r, p).await,
            ReceiverKind::Webhook => webhook_body(p, &self.instance),
            ReceiverKind::Alertmanager => {
                let ends_in = self.alertmanager_ends_in();
                let mut a = p.alert.clone();
                if p.event == "resolved" && a.resolved_at.is_none() {
                    a.resolved_at = Some(format_ns(now_ns()));
                    a.status = "resolved".into();
                }
                json!([alertmanager_alert(&a, &self.instance, now_ns(), ends_in)])
            }
        };
        self.post(r, &body).await
    }

    /// Mails notification `p` to the `smtp` receiver `r`, with the container's last lines.
    async fn mail(&self, r: &ReceiverConfig, p: &Pending) -> Result<(), Failure> {
        let Some(mailer) = self.mailers.get(&r.name) else {
            return Err(Failure {
                message: "receiver not set up".into(),
                permanent: true,
            });
        };
        let evidence = match p.alert.labels.get("container").and_then(|c| c.as_str()) {
            Some(c) if p.id > 0 => {
                let (c, until) = (c.to_string(), p.alert.started_at.clone());
                self.conn
                    .call(move |conn| crate::store::queries::evidence(conn, &c, &until, 8))
                    .await
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        };
        let mail = super::mail::compose(
            p,
            &self.instance,
            self.cfg.page_url.as_deref(),
            &evidence,
            now_ns(),
        );
        mailer
            .send(&mail)
            .await
            .map_err(|(message, permanent)| Failure { message, permanent })
    }

    /// Has the writer record a delivery. Returns false if it is not committed within
    /// [`RECORD_WAIT`] (the store may be failing, and `StoreNotWritable` must still go out):
    /// it stays in flight, and nothing is read from the queue until it is settled, since the
    /// queue would still show that notification as due.
    async fn record(&self, change: OutboxChange) -> bool {
        let writer = self.writer.clone();
        let mut task = tokio::spawn(async move { writer.record(change).await });
        match tokio::time::timeout(RECORD_WAIT, &mut task).await {
            Ok(Ok(Ok(_))) => true,
            Ok(Ok(Err(e))) => {
                // Not recorded: the notification is sent again (at least once).
                tracing::warn!(error = %e, "Cannot record a notification's delivery.");
                true
            }
            Ok(Err(_)) => true,
            Err(_) => {
                *self.unsettled.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
                false
            }
        }
    }

    /// Whether a record the writer had not committed in time still waits.
    fn unsettled(&self) -> bool {
        let mut u = self.unsettled.lock().unwrap_or_else(|e| e.into_inner());
        if u.as_ref().is_some_and(|t| !t.is_finished()) {
            return true;
        }
        *u = None;
        false
    }

    /// Sends every due notification; returns when the next one is due (if any is waiting).
    async fn drain(&self) -> Option<i64> {
        let names = self.cfg.receiver_names();
        loop {
            if self.unsettled() {
                return Some(now_ns() + UNSETTLED_RETRY);
            }
            let n2 = names.clone();
            let heads = match self
                .conn
                .call(move |c| store_alerts::outbox_heads(c, &n2))
                .await
            {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot read the notification outbox.");
                    return Some(now_ns() + 5_000_000_000);
                }
            };
            let now = now_ns();
            let mut next_due: Option<i64> = None;
            let mut progressed = false;
            for p in heads {
                if p.next_attempt_at > now {
                    next_due =
                        Some(next_due.map_or(p.next_attempt_at, |d| d.min(p.next_attempt_at)));
                    continue;
                }
                progressed = true;
                match self.deliver(&p).await {
                    Ok(()) => {
                        NotificationDelivered {
                            receiver: &p.receiver,
                            alertname: &p.alert.alertname,
                            event: &p.event,
                        }
                        .emit();
                        let change = OutboxChange::Delivered {
                            id: p.id,
                            alert_id: p.alert.id,
                            at: now_ns(),
                        };
                        if !self.record(change).await {
                            return Some(now_ns() + UNSETTLED_RETRY);
                        }
                    }
                    Err(f) => {
                        let retry_at =
                            now_ns() + crate::backoff::DELIVERY.delay(p.attempts).as_nanos() as i64;
                        NotificationFailed {
                            receiver: &p.receiver,
                            alertname: &p.alert.alertname,
                            attempt: p.attempts + 1,
                            error: &f.message,
                            permanent: f.permanent,
                        }
                        .emit();
                        let change = if f.permanent {
                            OutboxChange::Abandoned {
                                id: p.id,
                                error: f.message,
                                at: now_ns(),
                            }
                        } else {
                            OutboxChange::Failed {
                                id: p.id,
                                error: f.message,
                                retry_at,
                            }
                        };
                        if !self.record(change).await {
                            return Some(now_ns() + UNSETTLED_RETRY);
                        }
                    }
                }
            }
            if !progressed {
                return next_due;
            }
        }
    }

    /// Re-sends the firing alerts to every Alertmanager receiver (best effort: the next
    /// round repairs a failed one).
    async fn refresh_alertmanagers(&self) {
        let ams: Vec<&ReceiverConfig> = self
            .cfg
            .receivers
            .iter()
            .filter(|r| r.kind == ReceiverKind::Alertmanager)
            .collect();
        if ams.is_empty() {
            return;
        }
        let firing = match self.conn.call(store_alerts::firing).await {
            Ok(f) => f,
            Err(_) => return,
        };
        if firing.is_empty() {
            return;
        }
        let now = now_ns();
        let ends_in = self.alertmanager_ends_in();
        let body: Vec<Value> = firing
            .iter()
            .map(|a| alertmanager_alert(a, &self.instance, now, ends_in))
            .collect();
        let body = Value::Array(body);
        for r in ams {
            if let Err(f) = self.post(r, &body).await {
                tracing::warn!(receiver = %r.name, error = %f.message, "Alertmanager refresh failed.");
            }
        }
    }

    /// Sends `StoreNotWritable` straight to every receiver (the outbox is in the store that
    /// cannot be written). Returns whether all of them took it.
    async fn send_outage(&self, o: &crate::store::StoreOutage) -> bool {
        let alert = crate::store::outage_alert(o);
        let mut all = true;
        for r in &self.cfg.receivers {
            let pending = Pending {
                id: 0,
                receiver: r.name.clone(),
                event: "firing".into(),
                attempts: 0,
                next_attempt_at: 0,
                alert: alert.clone(),
            };
            let body = match r.kind {
                ReceiverKind::Smtp => {
                    if let Err(f) = self.mail(r, &pending).await {
                        tracing::warn!(receiver = %r.name, error = %f.message, "Cannot deliver StoreNotWritable.");
                        all = false;
                    }
                    continue;
                }
                ReceiverKind::Webhook => webhook_body(&pending, &self.instance),
                ReceiverKind::Alertmanager => {
                    let ends_in = self.alertmanager_ends_in();
                    json!([alertmanager_alert(
                        &alert,
                        &self.instance,
                        now_ns(),
                        ends_in
                    )])
                }
            };
            if let Err(f) = self.post(r, &body).await {
                tracing::warn!(receiver = %r.name, error = %f.message, "Cannot deliver StoreNotWritable.");
                all = false;
            }
        }
        if all {
            tracing::info!("StoreNotWritable delivered to every receiver.");
        }
        all
    }

    /// Runs until `shutdown`: delivers when woken by the writer, when a retry is due, and
    /// refreshes Alertmanager receivers on their interval.
    pub async fn run(self, wake: Arc<Notify>, shutdown: CancellationToken) {
        if self.cfg.receivers.is_empty() {
            return;
        }
        let resend = self
            .cfg
            .alertmanager_resend
            .as_duration()
            .max(Duration::from_secs(1));
        let mut next_refresh = tokio::time::Instant::now() + resend;
        // The outage (its start) whose firing has been delivered.
        let mut outage_sent: Option<i64> = None;
        loop {
            let outage = self
                .health
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let outage_pending = match &outage {
                Some(o) if outage_sent != Some(o.since) => {
                    if self.send_outage(o).await {
                        outage_sent = Some(o.since);
                        false
                    } else {
                        true
                    }
                }
                Some(_) => false,
                None => {
                    outage_sent = None;
                    false
                }
            };
            let due = if outage.is_some() {
                None
            } else {
                self.drain().await
            };
            if tokio::time::Instant::now() >= next_refresh {
                self.refresh_alertmanagers().await;
                next_refresh = tokio::time::Instant::now() + resend;
            }
            let mut wait = next_refresh.saturating_duration_since(tokio::time::Instant::now());
            if outage_pending {
                wait = wait.min(Duration::from_secs(5));
            }
            if let Some(d) = due {
                let d = Duration::from_nanos((d - now_ns()).max(0) as u64);
                wait = wait.min(d);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiver(url: &str) -> ReceiverConfig {
        ReceiverConfig {
            name: "ops".into(),
            kind: ReceiverKind::Webhook,
            url: url.into(),
            ..ReceiverConfig::default()
        }
    }

    #[test]
    fn a_configured_bearer_token_replaces_url_credentials() {
        let client = reqwest::Client::new();
        let req = client
            .post("http://user:pw@127.0.0.1:9/hook")
            .build()
            .unwrap();
        let req = with_bearer(req, Some("t0ken"));
        let auth: Vec<_> = req
            .headers()
            .get_all(reqwest::header::AUTHORIZATION)
            .iter()
            .collect();
        assert_eq!(auth, ["Bearer t0ken"]);
        // Without a token the URL's credentials are the Basic header.
        let req = with_bearer(
            client
                .post("http://user:pw@127.0.0.1:9/hook")
                .build()
                .unwrap(),
            None,
        );
        let auth = req.headers()[reqwest::header::AUTHORIZATION]
            .to_str()
            .unwrap()
            .to_string();
        assert!(auth.starts_with("Basic "), "{auth}");
    }

    #[test]
    fn receiver_urls_are_checked() {
        assert_eq!(receiver("http://alertmanager:9093").problem(), None);
        assert_eq!(receiver("https://hooks.example.com/x").problem(), None);
        let bad = receiver("not a url").problem().unwrap();
        assert!(bad.contains("not a URL"), "{bad}");
        let ftp = receiver("ftp://h/x").problem().unwrap();
        assert!(ftp.contains("http:// or https://"), "{ftp}");
        // The URL (which may carry a secret) is not echoed.
        let secret = receiver("http://u:s3cr3t@/").problem().unwrap_or_default();
        assert!(!secret.contains("s3cr3t"), "{secret}");
    }
}
