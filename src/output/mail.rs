//! E-mail notifications: the `smtp` receiver (lettre), fed by the same durable outbox as the
//! webhooks, with the same retry and exactly-once bookkeeping.
//!
//! A mail is plain text for a person woken at 3 a.m.: what fired, its severity, since when
//! (and for how long, when resolved), the container, its last lines before the alert, the
//! status page link (`[notify] page_url`). Its `Message-ID` is fixed per notification, so the
//! rare resend after a crash (a delivery whose success could not be recorded) is the same
//! message to a mail client. Credentials come from `password_env` (or `password`), never from
//! the URL, and never reach a log line, the database or the page.

use std::time::Duration;

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::receivers::{ReceiverConfig, SmtpTls};
use crate::store::alerts::Pending;
use crate::store::queries::Evidence;
use crate::time::{format_ns, human_duration, parse_rfc3339};

/// The settings of an `smtp` receiver, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
}

/// Reads an `smtp` receiver's settings: `url = "smtp://host[:port]"` or `smtps://`, `from`,
/// `to`, `tls` (default: `tls` for `smtps://`, else `starttls`).
pub fn settings(r: &ReceiverConfig) -> Result<SmtpSettings, String> {
    let name = &r.name;
    let url = reqwest::Url::parse(&r.url)
        .map_err(|e| format!("receiver {name:?}: url is not a URL ({e})"))?;
    let implicit = match url.scheme() {
        "smtps" => true,
        "smtp" => false,
        s => {
            return Err(format!(
                "receiver {name:?}: an smtp receiver's url is smtp://host:port or smtps://host:port (got scheme {s:?})"
            ));
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "receiver {name:?}: put the user in `username` and the password in `password_env`, not in the url"
        ));
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("receiver {name:?}: the url has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tls = match (r.tls, implicit) {
        (Some(SmtpTls::Tls) | None, true) => SmtpTls::Tls,
        (Some(t), true) => {
            return Err(format!(
                "receiver {name:?}: smtps:// is TLS from the start; tls = {t:?} contradicts it"
            ));
        }
        (Some(t), false) => t,
        (None, false) => SmtpTls::Starttls,
    };
    let port = url.port().unwrap_or(match tls {
        SmtpTls::Tls => 465,
        SmtpTls::Starttls => 587,
        SmtpTls::None => 25,
    });
    let from = r
        .from
        .as_deref()
        .ok_or_else(|| format!("receiver {name:?}: `from` is required for smtp"))?
        .parse::<Mailbox>()
        .map_err(|e| format!("receiver {name:?}: from: {e}"))?;
    if r.to.is_empty() {
        return Err(format!("receiver {name:?}: `to` lists no address"));
    }
    let to =
        r.to.iter()
            .map(|t| {
                t.parse::<Mailbox>()
                    .map_err(|e| format!("receiver {name:?}: to {t:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
    if r.password.is_some() || r.password_env.is_some() {
        if r.username.is_none() {
            return Err(format!(
                "receiver {name:?}: a password without a `username`"
            ));
        }
        if tls == SmtpTls::None {
            return Err(format!(
                "receiver {name:?}: refusing to send a password without TLS (tls = \"none\")"
            ));
        }
    }
    Ok(SmtpSettings {
        host,
        port,
        tls,
        from,
        to,
    })
}

/// A connected-on-demand mail transport for one receiver.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    settings: SmtpSettings,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("host", &self.settings.host)
            .finish_non_exhaustive()
    }
}

/// A mail ready to send.
#[derive(Clone, Debug, PartialEq)]
pub struct Mail {
    pub subject: String,
    pub body: String,
    pub message_id: String,
}

impl Mailer {
    pub fn new(r: &ReceiverConfig) -> Result<Mailer, String> {
        let settings = settings(r)?;
        let name = &r.name;
        let params = || -> Result<TlsParameters, String> {
            let mut b = TlsParameters::builder(settings.host.clone());
            if let Some(path) = &r.ca_file {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("receiver {name:?}: ca_file {}: {e}", path.display()))?;
                let cert = Certificate::from_pem(&pem)
                    .map_err(|e| format!("receiver {name:?}: ca_file {}: {e}", path.display()))?;
                b = b.add_root_certificate(cert);
            }
            b.build_rustls()
                .map_err(|e| format!("receiver {name:?}: TLS: {e}"))
        };
        let tls = match settings.tls {
            SmtpTls::Tls => Tls::Wrapper(params()?),
            SmtpTls::Starttls => Tls::Required(params()?),
            SmtpTls::None => Tls::None,
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(settings.host.clone())
            .port(settings.port)
            .tls(tls)
            .timeout(Some(r.timeout.as_duration().max(Duration::from_secs(1))));
        if let Some(user) = &r.username {
            let password = r
                .password
                .clone()
                .or_else(|| r.password_env.as_ref().and_then(|v| std::env::var(v).ok()))
                .unwrap_or_default();
            b = b.credentials(Credentials::new(user.clone(), password));
        }
        Ok(Mailer {
            transport: b.build(),
            settings,
        })
    }

    /// Sends `mail` to every `to`. `Err((message, permanent))`: a 5xx answer will not get
    /// better by retrying; a connection failure or a 4xx may.
    pub async fn send(&self, mail: &Mail) -> Result<(), (String, bool)> {
        let mut m = Message::builder()
            .from(self.settings.from.clone())
            .subject(mail.subject.clone())
            .message_id(Some(mail.message_id.clone()))
            .header(ContentType::TEXT_PLAIN);
        for to in &self.settings.to {
            m = m.to(to.clone());
        }
        let m = m
            .body(mail.body.clone())
            .map_err(|e| (format!("cannot build the mail: {e}"), true))?;
        match self.transport.send(m).await {
            Ok(_) => Ok(()),
            Err(e) => Err((smtp_error(&e), e.is_permanent())),
        }
    }
}

/// The error's chain, said once per cause (lettre repeats its source in its message).
fn smtp_error(e: &lettre::transport::smtp::Error) -> String {
    let mut out = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out = format!("{out}: {s_text}");
        }
        src = s.source();
    }
    out
}

fn ago(ts: &str, now: i64) -> String {
    parse_rfc3339(ts)
        .map(|t| format!("{} ago", human_duration((now - t).max(0))))
        .unwrap_or_default()
}

/// A timestamp for people: `2026-12-04 12:43:56 UTC`.
fn when(ts: &str) -> String {
    match parse_rfc3339(ts) {
        Some(t) => {
            let s = format_ns(t);
            format!("{} {} UTC", &s[..10], &s[11..19])
        }
        None => ts.to_string(),
    }
}

/// The mail of one notification. `evidence` is the container's last lines up to the alert,
/// oldest first.
pub fn compose(
    p: &Pending,
    instance: &str,
    page_url: Option<&str>,
    evidence: &[Evidence],
    now: i64,
) -> Mail {
    let a = &p.alert;
    let container = a.labels.get("container").and_then(|v| v.as_str());
    let what = match p.event.as_str() {
        "resolved" => "RESOLVED",
        "repeat" => "STILL FIRING",
        _ => "FIRING",
    };
    let label = |k: &str| a.labels.get(k).and_then(|v| v.as_str());
    let place = container
        .map(str::to_string)
        .or_else(|| label("gpu").map(|g| format!("GPU {g}")))
        .or_else(|| label("mount").map(str::to_string));
    let on = place
        .map(|p| format!("{p} on {instance}"))
        .unwrap_or_else(|| instance.to_string());
    let subject = format!("[trainwatch] {what}: {} ({}) {on}", a.alertname, a.severity);
    let mut b = String::new();
    b.push_str(&format!(
        "{} is {what} on {instance} (severity {}).\n\n",
        a.alertname, a.severity
    ));
    b.push_str(&format!("What:       {}\n", a.summary));
    b.push_str(&format!(
        "Since:      {} ({})\n",
        when(&a.started_at),
        ago(&a.started_at, now)
    ));
    if p.event == "resolved"
        && let Some(r) = &a.resolved_at
    {
        let lasted = match (parse_rfc3339(&a.started_at), parse_rfc3339(r)) {
            (Some(s), Some(e)) => format!(" after {}", human_duration((e - s).max(0))),
            _ => String::new(),
        };
        b.push_str(&format!("Resolved:   {}{lasted}\n", when(r)));
    }
    if let Some(c) = container {
        b.push_str(&format!("Container:  {c}\n"));
    }
    if let serde_json::Value::Object(m) = &a.labels {
        let labels: Vec<String> = m
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                )
            })
            .collect();
        b.push_str(&format!("Labels:     {}\n", labels.join(" ")));
    }
    if !evidence.is_empty() {
        b.push_str(&format!(
            "\nLast lines of {} before it fired:\n",
            container.unwrap_or("the container")
        ));
        for e in evidence {
            let first = e.message.lines().next().unwrap_or("");
            let cut: String = first.chars().take(300).collect();
            b.push_str(&format!(
                "  {} {:<8} {cut}\n",
                &e.ts[..e.ts.len().min(19)],
                e.level
            ));
        }
    }
    if let Some(u) = page_url {
        b.push_str(&format!("\nStatus page: {u}\n"));
    }
    b.push_str(&format!(
        "\n-- \ntrainwatch {} on {instance}, notification {} ({}).\n",
        env!("CARGO_PKG_VERSION"),
        p.id,
        p.event
    ));
    let host: String = instance
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    Mail {
        subject,
        body: b,
        message_id: format!("<trainwatch.{}.{}@{host}>", p.id, p.event),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::alerts::AlertRow;

    fn receiver(url: &str) -> ReceiverConfig {
        ReceiverConfig {
            name: "mail".into(),
            kind: super::super::receivers::ReceiverKind::Smtp,
            url: url.into(),
            from: Some("trainwatch <tw@example.com>".into()),
            to: vec!["oncall@example.com".into()],
            ..ReceiverConfig::default()
        }
    }

    #[test]
    fn urls_ports_and_tls_modes() {
        let s = settings(&receiver("smtps://mail.example.com")).unwrap();
        assert_eq!((s.port, s.tls), (465, SmtpTls::Tls));
        let s = settings(&receiver("smtp://mail.example.com")).unwrap();
        assert_eq!((s.port, s.tls), (587, SmtpTls::Starttls));
        let mut r = receiver("smtp://127.0.0.1:2525");
        r.tls = Some(SmtpTls::None);
        let s = settings(&r).unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.tls),
            ("127.0.0.1", 2525, SmtpTls::None)
        );
        // A password is never sent in the clear, nor written in the url.
        r.username = Some("tw".into());
        r.password_env = Some("X".into());
        assert!(settings(&r).unwrap_err().contains("without TLS"));
        let e = settings(&receiver("smtp://tw:hunter2@mail.example.com")).unwrap_err();
        assert!(e.contains("password_env") && !e.contains("hunter2"), "{e}");
        let mut r = receiver("smtps://mail.example.com");
        r.tls = Some(SmtpTls::Starttls);
        assert!(settings(&r).is_err());
        assert!(settings(&receiver("http://mail.example.com")).is_err());
        let mut r = receiver("smtp://mail.example.com");
        r.to = vec!["not an address".into()];
        assert!(settings(&r).unwrap_err().contains("not an address"));
        r.to.clear();
        assert!(settings(&r).is_err());
    }

    #[test]
    fn a_mail_a_person_reads() {
        let p = Pending {
            id: 17,
            receiver: "mail".into(),
            event: "firing".into(),
            attempts: 0,
            next_attempt_at: 0,
            alert: AlertRow {
                id: 3,
                fingerprint: "7676a4e12ae5d4f3".into(),
                alertname: "GpuOutOfMemory".into(),
                severity: "high".into(),
                status: "firing".into(),
                labels: serde_json::json!({"alertname": "GpuOutOfMemory", "container": "yolo-train", "severity": "high"}),
                summary:
                    "GPU out of memory in yolo-train: torch.OutOfMemoryError: CUDA out of memory."
                        .into(),
                started_at: "2026-12-04T12:43:56.901567607Z".into(),
                resolved_at: None,
                last_notified_at: None,
                silenced: None,
            },
        };
        let ev = [Evidence {
            ts: "2026-12-04T12:43:56.901567607Z".into(),
            level: "ERROR".into(),
            message:
                "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n  more"
                    .into(),
        }];
        let now = parse_rfc3339("2026-12-04T12:55:56Z").unwrap();
        let m = compose(
            &p,
            "gpu-server-1",
            Some("http://gpu-server-1:9750/"),
            &ev,
            now,
        );
        assert_eq!(
            m.subject,
            "[trainwatch] FIRING: GpuOutOfMemory (high) yolo-train on gpu-server-1"
        );
        assert_eq!(m.message_id, "<trainwatch.17.firing@gpu-server-1>");
        for want in [
            "GpuOutOfMemory is FIRING on gpu-server-1 (severity high).",
            "Since:      2026-12-04 12:43:56 UTC (11m ago)",
            "Container:  yolo-train",
            "  2026-12-04T12:43:56 ERROR    torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n",
            "Status page: http://gpu-server-1:9750/",
        ] {
            assert!(m.body.contains(want), "{want:?} not in:\n{}", m.body);
        }
        let mut r = p.clone();
        r.event = "resolved".into();
        r.alert.resolved_at = Some("2026-12-04T13:43:57Z".into());
        let m = compose(&r, "gpu-server-1", None, &[], now);
        assert!(
            m.subject
                .starts_with("[trainwatch] RESOLVED: GpuOutOfMemory")
        );
        assert!(
            m.body
                .contains("Resolved:   2026-12-04 13:43:57 UTC after 1h00m"),
            "{}",
            m.body
        );
        assert!(!m.body.contains("Status page"));
    }
}
