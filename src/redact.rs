//! Redaction, applied to every message and context before it is stored or logged: passwords,
//! tokens, `Authorization` headers, credentials in URLs, keys (API, CDN, model encryption), and
//! base64 payloads (queue messages carry images) longer than [`BASE64_MIN`] characters.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use crate::words::AnyCase;

/// Runs of base64 alphabet at least this long are payloads, not identifiers (a SHA-256 in hex
/// is 64 characters, a JWT signature ~86).
pub const BASE64_MIN: usize = 256;

pub const MASK: &str = "[REDACTED]";

static SECRET_KV: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)(?-u:\b)((?:[a-z0-9]+[_-])*(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|encryption[_-]?key|credentials?|authorization)(?:[_-][a-z0-9]+)*)(["']?\s*[:=]\s*["']?)(?:(?:bearer|basic|token)\s+)?([^\s"',;&}\]]+)"#,
    )
    .expect("secret pattern")
});

static BEARER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?-u:\b)(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}").expect("bearer pattern")
});

static URL_CREDS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]+):[^@\s/]+@").expect("url credential pattern")
});

/// Words at least one of which every secret pattern above contains: text without any of them is
/// left alone without running the regexes (most log lines).
static TRIGGERS: LazyLock<AnyCase> = LazyLock::new(|| {
    AnyCase::new(&[
        "pass",
        "pwd",
        "secret",
        "token",
        "key",
        "credential",
        "auth",
        "bearer",
        "basic",
        "://",
    ])
});

/// Words that make a JSON key name a secret, matched anywhere in the key, in any case.
static SECRET_KEYS: LazyLock<AnyCase> = LazyLock::new(|| {
    AnyCase::new(&[
        "password",
        "passwd",
        "secret",
        "token",
        "apikey",
        "api_key",
        "api-key",
        "authorization",
        "credential",
        "private_key",
        "encryption_key",
        "access_key",
        "pwd",
    ])
});

/// Whether a JSON key names a secret.
pub fn is_secret_key(key: &str) -> bool {
    SECRET_KEYS.found_in(key)
}

/// The base64 alphabets (standard and URL-safe); `=` only as trailing padding.
fn is_b64(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'+' || c == b'/' || c == b'_' || c == b'-'
}

/// Replaces base64 runs of [`BASE64_MIN`] or more characters.
fn redact_base64(s: &str) -> Cow<'_, str> {
    let b = s.as_bytes();
    if b.len() < BASE64_MIN {
        return Cow::Borrowed(s);
    }
    let mut out: Option<String> = None;
    let mut last = 0;
    let mut i = 0;
    while i < b.len() {
        if !is_b64(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && is_b64(b[i]) {
            i += 1;
        }
        while i < b.len() && b[i] == b'=' && i - start >= BASE64_MIN {
            i += 1;
        }
        if i - start >= BASE64_MIN {
            let o = out.get_or_insert_with(|| String::with_capacity(s.len()));
            o.push_str(&s[last..start]);
            o.push_str(&format!("[base64 {} chars redacted]", i - start));
            last = i;
        }
    }
    match out {
        Some(mut o) => {
            o.push_str(&s[last..]);
            Cow::Owned(o)
        }
        None => Cow::Borrowed(s),
    }
}

/// Whether `s` certainly needs no redaction: no trigger word and no base64 payload.
pub fn is_clean(s: &str) -> bool {
    !TRIGGERS.found_in(s) && matches!(redact_base64(s), Cow::Borrowed(_))
}

/// Redacts secrets in free text.
pub fn text(s: &str) -> Cow<'_, str> {
    let mut cur = redact_base64(s);
    if !TRIGGERS.found_in(cur.as_ref()) {
        return cur;
    }
    if let Cow::Owned(o) = SECRET_KV.replace_all(&cur, format!("${{1}}${{2}}{MASK}").as_str()) {
        cur = Cow::Owned(o);
    }
    if let Cow::Owned(o) = BEARER.replace_all(&cur, format!("${{1}} {MASK}").as_str()) {
        cur = Cow::Owned(o);
    }
    if let Cow::Owned(o) = URL_CREDS.replace_all(&cur, format!("${{1}}:{MASK}@").as_str()) {
        cur = Cow::Owned(o);
    }
    cur
}

/// Redacts a JSON value in place: values under secret-named keys are masked, strings are
/// redacted as text.
pub fn json(v: &mut Value) {
    match v {
        Value::String(s) => {
            if let Cow::Owned(o) = text(s) {
                *s = o;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(json),
        Value::Object(m) => {
            for (k, val) in m.iter_mut() {
                if is_secret_key(k) && !matches!(val, Value::Null | Value::Bool(_)) {
                    *val = Value::String(MASK.into());
                } else {
                    json(val);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_and_headers() {
        assert_eq!(
            text("login password=hunter2 ok"),
            "login password=[REDACTED] ok"
        );
        assert_eq!(text("API_KEY: abc123"), "API_KEY: [REDACTED]");
        assert_eq!(
            text(r#"{"cdn_secret_key": "s3cr3t"}"#),
            r#"{"cdn_secret_key": "[REDACTED]"}"#
        );
        assert_eq!(
            text("Authorization: Bearer eyJhbGciOi.xyz"),
            "Authorization: [REDACTED]"
        );
        assert_eq!(text("sent bearer abcdefghijkl"), "sent bearer [REDACTED]");
        assert_eq!(
            text("amqp://queue:pa55w0rd@rabbit:5552/"),
            "amqp://queue:[REDACTED]@rabbit:5552/"
        );
        assert_eq!(
            text("model_encryption_key=0xdeadbeef"),
            "model_encryption_key=[REDACTED]"
        );
        assert_eq!(
            text("nothing to hide, tokens are fine"),
            "nothing to hide, tokens are fine"
        );
    }

    #[test]
    fn every_pattern_has_a_trigger_word() {
        for s in [
            "PASSWORD=x",
            "Pwd: y",
            "client_secret=z",
            "X-Api-Key: k",
            "Authorization: t",
            "bearer abcdefghij",
            "s3://u:p@h/",
        ] {
            assert!(TRIGGERS.found_in(s), "{s}");
            assert!(text(s).contains(MASK), "{s} -> {}", text(s));
        }
    }

    #[test]
    fn base64_payloads() {
        let payload = "iVBORw0KGgo".repeat(40);
        let input = format!("image={payload} id=3");
        assert_eq!(text(&input), "image=[base64 440 chars redacted] id=3");
        let short = "a".repeat(64);
        assert_eq!(text(&short), short);
    }

    #[test]
    fn json_values() {
        let mut v: Value = serde_json::json!({"user":"a","password":"p","nested":{"token":"t","note":"x password=y"},"image":"QUJD".repeat(100)});
        json(&mut v);
        assert_eq!(v["password"], MASK);
        assert_eq!(v["nested"]["token"], MASK);
        assert_eq!(v["nested"]["note"], "x password=[REDACTED]");
        assert_eq!(v["image"], "[base64 400 chars redacted]");
        assert_eq!(v["user"], "a");
    }
}
