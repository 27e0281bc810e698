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

/// Names of secrets in `key=value`, `key: value`, `--key value` forms.
const SECRET_NAMES: &str = r"password|passwd|passphrase|pwd|secret|token|signature|api[_-]?key|apikey|access[_-]?key|private[_-]?key|encryption[_-]?key|credentials?|authorization";

/// One redaction: matches of `re` are replaced by `with`. Applied in list order.
struct Rule {
    re: Regex,
    with: &'static str,
}

static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    let rule = |re: &str, with: &'static str| Rule {
        re: Regex::new(re).expect("redaction rule"),
        with,
    };
    vec![
        // PEM private keys: the body, to the end line (or the end of the record).
        rule(
            r"(?s)(-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----).*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\z)",
            "${1}[REDACTED]${2}",
        ),
        // Name/value pairs: {"key": "password", "value": "..."} (also "name"/"Name").
        rule(
            &format!(
                r#"(?i)("(?:key|name)"\s*:\s*"(?:[a-z0-9]+[_-])*(?:{SECRET_NAMES})(?:[_-][a-z0-9]+)*"\s*,\s*"value"\s*:\s*)(?:"(?:[^"\\]|\\.)*"|[^,}}\s]+)"#
            ),
            r#"${1}"[REDACTED]""#,
        ),
        // Command-line flags: `--token X`, `--db-password X`.
        rule(
            r"(?i)(^|\s)(--?(?:[a-z0-9]+-)*(?:password|passwd|passphrase|pass|pwd|secret|token|api-?key|access-?key|private-?key|encryption-?key|credentials?)(?:-[a-z0-9]+)*)(\s+)[^\s-]\S*",
            "${1}${2}${3}[REDACTED]",
        ),
        rule(
            r"(?i)(\bsshpass\s+(?:-[a-oq-z]\S*\s+)*-p\s*)\S+",
            "${1}[REDACTED]",
        ),
        // Cookie headers: the whole value, to the end of the line or string.
        rule(
            r#"(?i)(\b(?:set-)?cookie\s*:\s*)[^\r\n"]+"#,
            "${1}[REDACTED]",
        ),
        // `user=bob:pw`, `login: bob:pw`.
        rule(
            r#"(?i)(\b(?:user(?:name)?|login)\s*[=:]\s*[^\s:@"',;&/]+):[^\s@"',;&]+"#,
            "${1}:[REDACTED]",
        ),
        // Incoming webhooks carry their secret in the path.
        rule(
            r#"(?i)(hooks\.slack\.com/(?:services|workflows|triggers)/)[^\s"'<>]+"#,
            "${1}[REDACTED]",
        ),
        rule(
            r#"(?i)(discord(?:app)?\.com/api/webhooks/)[^\s"'<>]+"#,
            "${1}[REDACTED]",
        ),
        // Well-known token shapes: AWS key ids, GitHub, GitLab, Slack and OpenAI-style keys.
        rule(
            r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b|\bgh[pousr]_[A-Za-z0-9]{36,}|\bgithub_pat_[A-Za-z0-9_]{22,}|\bxox[abprs]-[A-Za-z0-9-]{10,}|\bglpat-[A-Za-z0-9_-]{20,}|\bsk-[A-Za-z0-9_-]{20,}",
            "[REDACTED]",
        ),
        // `key=value`, `key: value` for secret names; the separator may be URL-encoded
        // (`password%3Dhunter2`). A value does not end in `)`: `(Authorization: Bearer x)`
        // keeps its parenthesis.
        rule(
            &format!(
                r#"(?i)(?-u:\b)((?:[a-z0-9]+[_-])*(?:{SECRET_NAMES})(?:[_-][a-z0-9]+)*)(["']?\s*(?:[:=]|%3[ad])\s*["']?)(?:(?:bearer|basic|token)\s+)?([^\s"',;&}}\]]*[^\s"',;&}})\]])"#
            ),
            "${1}${2}[REDACTED]",
        ),
        // A JSON string value of a secret name, whole (spaces and escapes included; after the
        // rule above, which stops at a space): its key and the rest of the record are kept.
        rule(
            &format!(
                r#"(?i)("(?:[a-z0-9]+[_.-])*(?:{SECRET_NAMES})(?:[_.-][a-z0-9]+)*"\s*:\s*")(?:[^"\\]|\\.)*(")"#
            ),
            "${1}[REDACTED]${2}",
        ),
        rule(
            r"(?i)(?-u:\b)(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}",
            "${1} [REDACTED]",
        ),
        // `scheme://user:password@` and `scheme://:password@` (Redis).
        rule(
            r"([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*):[^@\s/]+@",
            "${1}:[REDACTED]@",
        ),
        // `https://TOKEN@host`: a user part alone is a token as often as a name.
        rule(
            r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s:@\[\]]+@",
            "${1}[REDACTED]@",
        ),
    ]
});

/// `password hunter2`: the word after a password word, unless it is one of the words that
/// usually follow it in a sentence (`password is required`, `password for bob`).
static PASSWORD_WORD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)\b(password|passwd|passphrase)(\s+)([^\s"',;:=]+)"#)
        .expect("password word pattern")
});

const NOT_A_PASSWORD: &[&str] = &[
    "a",
    "accepted",
    "an",
    "and",
    "are",
    "as",
    "at",
    "authentication",
    "based",
    "be",
    "been",
    "by",
    "can",
    "cannot",
    "change",
    "changed",
    "check",
    "does",
    "empty",
    "expired",
    "field",
    "file",
    "for",
    "from",
    "has",
    "hash",
    "hashed",
    "have",
    "in",
    "incorrect",
    "invalid",
    "is",
    "length",
    "login",
    "manager",
    "mismatch",
    "missing",
    "must",
    "not",
    "of",
    "ok",
    "on",
    "or",
    "policy",
    "prompt",
    "protected",
    "rejected",
    "required",
    "reset",
    "set",
    "should",
    "the",
    "to",
    "too",
    "updated",
    "verified",
    "was",
    "will",
    "with",
    "without",
    "wrong",
];

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
        "signature",
        "cookie",
        "user",
        "login",
        "://",
        "hooks.slack",
        "discord",
        "akia",
        "asia",
        "ghp_",
        "gho_",
        "ghu_",
        "ghs_",
        "ghr_",
        "github_pat_",
        "glpat-",
        "xox",
        "sk-",
    ])
});

/// Words that make a JSON key name a secret, matched anywhere in the key, in any case.
static SECRET_KEYS: LazyLock<AnyCase> = LazyLock::new(|| {
    AnyCase::new(&[
        "password",
        "passwd",
        "passphrase",
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
        "signature",
        "cookie",
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
    for r in RULES.iter() {
        if let Cow::Owned(o) = r.re.replace_all(&cur, r.with) {
            cur = Cow::Owned(o);
        }
    }
    if let Cow::Owned(o) = PASSWORD_WORD.replace_all(&cur, |c: &regex::Captures<'_>| {
        let word = &c[3];
        if word.starts_with('[') || NOT_A_PASSWORD.contains(&word.to_ascii_lowercase().as_str()) {
            c[0].to_string()
        } else {
            format!("{}{}{MASK}", &c[1], &c[2])
        }
    }) {
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
            // {"key": "password", "value": "..."}: the value of a named secret.
            let named = ["key", "name", "Key", "Name"]
                .iter()
                .any(|k| m.get(*k).and_then(Value::as_str).is_some_and(is_secret_key));
            if named {
                for k in ["value", "Value"] {
                    if let Some(v) = m.get_mut(k)
                        && !matches!(v, Value::Null | Value::Bool(_))
                    {
                        *v = Value::String(MASK.into());
                    }
                }
            }
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

/// A secret of the config as `config check` prints it: whether it is set, never its value.
pub fn serialize_secret<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}

/// A value that may carry credentials (a URL's user info or token), redacted.
pub fn serialize_redacted<S: serde::Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&text(v))
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
        // The text around a secret stays.
        assert_eq!(
            text("upload refused (Authorization: Bearer eyJhbGciOi.xyz) retrying"),
            "upload refused (Authorization: [REDACTED]) retrying"
        );
        assert_eq!(text("(password=hunter2)"), "(password=[REDACTED])");
        assert_eq!(
            text(r#"{"user": "bob", "password": "two words \" quoted", "epoch": 3}"#),
            r#"{"user": "bob", "password": "[REDACTED]", "epoch": 3}"#
        );
        assert_eq!(
            text(r#"{"cdn.secret_key":"a b c","ok":true}"#),
            r#"{"cdn.secret_key":"[REDACTED]","ok":true}"#
        );
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

    /// Every secret shape, one JSON line each: the input, the secret that must be gone, and
    /// what must stay. The same table is replayed end to end in the integration tests.
    const SHAPES: &str = include_str!("../fixtures/secrets/shapes.jsonl");

    #[test]
    fn every_secret_shape_is_redacted() {
        for line in SHAPES.lines() {
            let row: Value = serde_json::from_str(line).unwrap();
            let [input, secret, kept] =
                ["input", "secret", "kept"].map(|k| row[k].as_str().unwrap());
            let out = text(input);
            assert!(!out.contains(secret), "{input:?} -> {out:?}");
            assert!(out.contains(MASK), "{input:?} -> {out:?}");
            assert!(out.contains(kept), "{input:?} -> {out:?} lost {kept:?}");
            assert!(!is_clean(input), "{input:?}");
        }
    }

    #[test]
    fn sentences_about_passwords_keep_their_words() {
        for s in [
            "password is required",
            "Wrong password for user bob",
            "password authentication failed for user \"postgres\"",
            "reset password",
            "ssh ubuntu@gpu-2 uptime",
            "Epoch 45/120 completed in 3.2s",
            "the key to the cache is the image hash",
        ] {
            assert_eq!(text(s), s);
        }
    }

    #[test]
    fn json_pairs_of_a_named_secret() {
        let mut v: Value = serde_json::json!({"env": [{"name": "DB_PASSWORD", "value": "x1"}, {"name": "EPOCHS", "value": "120"}], "cookie": "a=b"});
        json(&mut v);
        assert_eq!(v["env"][0]["value"], MASK);
        assert_eq!(v["env"][1]["value"], "120");
        assert_eq!(v["cookie"], MASK);
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
