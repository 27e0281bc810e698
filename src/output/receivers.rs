//! The receivers of alerts as configured (`[[notify.receivers]]`): webhooks, Alertmanager,
//! mail servers. Delivery is [`super::notify`]'s, e-mail [`super::mail`]'s.

use std::path::PathBuf;

use serde::Deserialize;

use crate::time::Age;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiverKind {
    Webhook,
    Alertmanager,
    Smtp,
}

/// One `[[notify.receivers]]`.
#[derive(Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// How logs and the outbox name this receiver.
    pub name: String,
    pub kind: ReceiverKind,
    /// The webhook URL, Alertmanager's base URL (`http://alertmanager:9093`), or the mail
    /// server (`smtp://mail.example.com:587`, `smtps://mail.example.com:465`).
    #[serde(serialize_with = "crate::redact::serialize_redacted")]
    pub url: String,
    /// Sent as `Authorization: Bearer ...`; prefer `bearer_token_env`.
    #[serde(default, serialize_with = "crate::redact::serialize_secret")]
    pub bearer_token: Option<String>,
    /// The name of an environment variable holding the bearer token.
    #[serde(default)]
    pub bearer_token_env: Option<String>,
    /// Per-request timeout.
    #[serde(default = "default_timeout")]
    pub timeout: Age,
    /// smtp: the sender, `"trainwatch <trainwatch@example.com>"`.
    #[serde(default)]
    pub from: Option<String>,
    /// smtp: the recipients.
    #[serde(default)]
    pub to: Vec<String>,
    /// smtp: the user to log in as (with `password_env`).
    #[serde(default)]
    pub username: Option<String>,
    /// smtp: the password; prefer `password_env`.
    #[serde(default, serialize_with = "crate::redact::serialize_secret")]
    pub password: Option<String>,
    /// smtp: the name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// smtp: `tls` (from the first byte), `starttls` (required), or `none`; default from
    /// the url's scheme.
    #[serde(default)]
    pub tls: Option<SmtpTls>,
    /// smtp: a PEM file of the CA that signed the mail server's certificate (a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_timeout() -> Age {
    Age::secs(10)
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            name: String::new(),
            kind: ReceiverKind::Webhook,
            url: String::new(),
            bearer_token: None,
            bearer_token_env: None,
            timeout: default_timeout(),
            from: None,
            to: Vec::new(),
            username: None,
            password: None,
            password_env: None,
            tls: None,
            ca_file: None,
        }
    }
}

// Never print the URL or the token.
impl std::fmt::Debug for ReceiverConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiverConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl ReceiverConfig {
    pub fn endpoint(&self) -> String {
        match self.kind {
            ReceiverKind::Webhook | ReceiverKind::Smtp => self.url.clone(),
            ReceiverKind::Alertmanager => {
                let base = self.url.trim_end_matches('/');
                if base.ends_with("/api/v2/alerts") {
                    base.to_string()
                } else {
                    format!("{base}/api/v2/alerts")
                }
            }
        }
    }

    pub fn token(&self) -> Option<String> {
        self.bearer_token.clone().or_else(|| {
            self.bearer_token_env
                .as_ref()
                .and_then(|v| std::env::var(v).ok())
        })
    }
}

/// How the connection to the mail server is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// TLS from the first byte (`smtps://`, port 465).
    Tls,
    /// Plain, then `STARTTLS`, required (port 587).
    Starttls,
    /// No encryption: only for a relay on the same host or network.
    None,
}
