//! Redaction, applied to every message and context before it is stored or logged: passwords,
//! tokens, `Authorization` headers, credentials in URLs and connection strings, keys (API, CDN,
//! cloud storage, model encryption), and base64 payloads (queue messages carry images) longer
//! than [`BASE64_MIN`] characters.
//!
//! Each redaction is of a [`Kind`]; the `_counted` forms add what they redacted to a [`Found`],
//! so that the team learns which service writes secrets into its logs (never the value).
//! Redacting redacted text again changes nothing and counts nothing.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Captures, Regex};
use serde_json::Value;

use crate::words::AnyCase;

/// Runs of base64 alphabet at least this long are payloads, not identifiers (a SHA-256 in hex
/// is 64 characters, a JWT signature ~86).
pub const BASE64_MIN: usize = 256;

pub const MASK: &str = "[REDACTED]";

/// What a redaction hid: the `kind` label of `trainwatch_redactions_total` and of the
/// `SecretsInLogs` alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Bearer and API tokens, session cookies, signed-URL signatures, webhook paths, JWTs.
    Token,
    /// Passwords and passphrases, also in URLs and command lines.
    Password,
    /// Private, access, account and encryption keys.
    Key,
    /// A base64 run of [`BASE64_MIN`] characters or more (an image in a queue message).
    ImagePayload,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Token, Kind::Password, Kind::Key, Kind::ImagePayload];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Token => "token",
            Kind::Password => "password",
            Kind::Key => "key",
            Kind::ImagePayload => "image_payload",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The kind of secret a name (`DB_PASSWORD`, `X-Api-Key`, `client_secret`) holds.
    pub fn of_name(name: &str) -> Kind {
        let n = name.to_ascii_lowercase();
        if ["pass", "pwd"].iter().any(|w| n.contains(w)) {
            Kind::Password
        } else if n.contains("key") && !n.contains("token") {
            Kind::Key
        } else {
            Kind::Token
        }
    }
}

/// How many redactions of each kind were made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Found([u32; 4]);

impl Found {
    pub fn add(&mut self, kind: Kind) {
        self.0[kind as usize] = self.0[kind as usize].saturating_add(1);
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|n| *n == 0)
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: Found) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.saturating_add(b);
        }
    }

    /// Forgets the kind's count.
    pub fn clear(&mut self, kind: Kind) {
        self.0[kind as usize] = 0;
    }

    /// The kinds found, with their counts.
    pub fn iter(&self) -> impl Iterator<Item = (Kind, u32)> + '_ {
        Kind::ALL
            .into_iter()
            .map(|k| (k, self.0[k as usize]))
            .filter(|(_, n)| *n > 0)
    }
}

/// Names of secrets in `key=value`, `key: value`, `--key value` forms.
const SECRET_NAMES: &str = r"password|passwd|passphrase|pwd|secret|token|signature|api[_-]?key|apikey|access[_-]?key|private[_-]?key|encryption[_-]?key|account[_-]?key|shared[_-]?access[_-]?key|credentials?|authorization";

/// How a rule says what it hid.
#[derive(Clone, Copy)]
enum KindOf {
    Is(Kind),
    /// Named by the rule's `n` group.
    Named,
}

/// One redaction: matches of `re` are replaced by `with`, the secret being the `s` group (the
/// whole match without one). Applied in list order.
struct Rule {
    re: Regex,
    with: &'static str,
    kind: KindOf,
}

static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    let rule = |re: &str, with: &'static str, kind: KindOf| Rule {
        re: Regex::new(re).expect("redaction rule"),
        with,
        kind,
    };
    use KindOf::{Is, Named};
    vec![
        // PEM private keys: the body, to the end line (or the end of the record).
        rule(
            r"(?s)(-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----)(?<s>.*?)(-----END [A-Z0-9 ]*PRIVATE KEY-----|\z)",
            "${1}[REDACTED]${3}",
            Is(Kind::Key),
        ),
        // Name/value pairs: {"key": "password", "value": "..."} (also "name"/"Name").
        rule(
            &format!(
                r#"(?i)("(?:key|name)"\s*:\s*"(?<n>(?:[a-z0-9]+[_-])*[a-z0-9]*(?:{SECRET_NAMES})(?:[_-][a-z0-9]+)*)"\s*,\s*"value"\s*:\s*)(?<s>"(?:[^"\\]|\\.)*"|[^,}}\s]+)"#
            ),
            r#"${1}"[REDACTED]""#,
            Named,
        ),
        // Command-line flags: `--token X`, `--db-password X`.
        rule(
            r"(?i)(^|\s)(?<n>--?(?:[a-z0-9]+-)*(?:password|passwd|passphrase|pass|pwd|secret|token|api-?key|access-?key|private-?key|encryption-?key|account-?key|credentials?)(?:-[a-z0-9]+)*)(\s+)(?<s>[^\s-]\S*)",
            "${1}${n}${3}[REDACTED]",
            Named,
        ),
        rule(
            r"(?i)(\bsshpass\s+(?:-[a-oq-z]\S*\s+)*-p\s*)(?<s>\S+)",
            "${1}[REDACTED]",
            Is(Kind::Password),
        ),
        // `mysql -pSECRET` (the password glued to `-p`; `-p` alone prompts).
        rule(
            r"(?i)(\bmysql(?:dump|admin|import|show|check|slap)?\s(?:[^\n|;&]*?\s)?-p)(?<s>[^\s'-][^\s]*|'[^']*')",
            "${1}[REDACTED]",
            Is(Kind::Password),
        ),
        // `curl -u user:password`, `curl --user user:password`.
        rule(
            r#"(?i)(\bcurl\s(?:[^\n|;&]*?\s)?(?:-u\s*|--user[\s=]+)['"]?[^\s:'"]*:)(?<s>[^\s'"]+)"#,
            "${1}[REDACTED]",
            Is(Kind::Password),
        ),
        // Cookie headers: the whole value, to the end of the line or string.
        rule(
            r#"(?i)(\b(?:set-)?cookie\s*:\s*)(?<s>[^\r\n"]+)"#,
            "${1}[REDACTED]",
            Is(Kind::Token),
        ),
        // `user=bob:pw`, `login: bob:pw`.
        rule(
            r#"(?i)(\b(?:user(?:name)?|login)\s*[=:]\s*[^\s:@"',;&/]+):(?<s>[^\s@"',;&]+)"#,
            "${1}:[REDACTED]",
            Is(Kind::Password),
        ),
        // Incoming webhooks carry their secret in the path.
        rule(
            r#"(?i)(hooks\.slack\.com/(?:services|workflows|triggers)/)(?<s>[^\s"'<>]+)"#,
            "${1}[REDACTED]",
            Is(Kind::Token),
        ),
        rule(
            r#"(?i)(discord(?:app)?\.com/api/webhooks/)(?<s>[^\s"'<>]+)"#,
            "${1}[REDACTED]",
            Is(Kind::Token),
        ),
        // Azure shared access signatures: `?sv=...&sig=...`.
        rule(
            r#"(?i)([?&;]sig=)(?<s>[^&\s"'<>;]+)"#,
            "${1}[REDACTED]",
            Is(Kind::Token),
        ),
        // Well-known key shapes: AWS key ids.
        rule(
            r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",
            "[REDACTED]",
            Is(Kind::Key),
        ),
        // Well-known token shapes: JWTs, GitHub, GitLab, Slack, Hugging Face and OpenAI-style.
        rule(
            r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*|\bgh[pousr]_[A-Za-z0-9]{36,}|\bgithub_pat_[A-Za-z0-9_]{22,}|\bxox[abprs]-[A-Za-z0-9-]{10,}|\bglpat-[A-Za-z0-9_-]{20,}|\bsk-[A-Za-z0-9_-]{20,}|\bhf_[A-Za-z0-9]{30,}",
            "[REDACTED]",
            Is(Kind::Token),
        ),
        // `key=value`, `key: value` for secret names, also glued to a prefix (`PGPASSWORD=`,
        // `AccountKey=`); the separator may be URL-encoded (`password%3Dhunter2`). A value does
        // not end in `)`: `(Authorization: Bearer x)` keeps its parenthesis.
        rule(
            &format!(
                r#"(?i)(?-u:\b)(?<n>(?:[a-z0-9]+[_-])*[a-z0-9]*(?:{SECRET_NAMES})(?:[_-][a-z0-9]+)*)(["']?\s*(?:[:=]|%3[ad])\s*["']?)(?:(?:bearer|basic|token)\s+)?(?<s>[^\s"',;&}}\]]*[^\s"',;&}})\]])"#
            ),
            "${n}${2}[REDACTED]",
            Named,
        ),
        // A JSON string value of a secret name, whole (spaces and escapes included; after the
        // rule above, which stops at a space): its key and the rest of the record are kept.
        rule(
            &format!(
                r#"(?i)("(?<n>(?:[a-z0-9]+[_.-])*[a-z0-9]*(?:{SECRET_NAMES})(?:[_.-][a-z0-9]+)*)"\s*:\s*")(?<s>(?:[^"\\]|\\.)*)(")"#
            ),
            "${1}[REDACTED]${4}",
            Named,
        ),
        rule(
            r"(?i)(?-u:\b)(bearer|basic)\s+(?<s>[A-Za-z0-9._~+/=-]{8,})",
            "${1} [REDACTED]",
            Is(Kind::Token),
        ),
        // `scheme://user:password@` and `scheme://:password@` (Redis).
        rule(
            r"([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*):(?<s>[^@\s/]+)@",
            "${1}:[REDACTED]@",
            Is(Kind::Password),
        ),
        // `https://TOKEN@host`: a user part alone is a token as often as a name.
        rule(
            r"([A-Za-z][A-Za-z0-9+.-]*://)(?<s>[^/\s:@\[\]]+)@",
            "${1}[REDACTED]@",
            Is(Kind::Token),
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
        "eyj",
        "hf_",
        "sig=",
        "mysql",
        "curl",
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
        "accesskey",
        "account_key",
        "accountkey",
        "privatekey",
        "encryptionkey",
        "signature",
        "cookie",
        "pwd",
    ])
});

/// Words that make a key name describe a secret rather than hold one (`max_tokens`,
/// `token_type`, `password_file`): its value is not masked as a whole (its text still is
/// redacted).
static DESCRIBES_A_SECRET: LazyLock<AnyCase> = LazyLock::new(|| {
    AnyCase::new(&[
        "tokens", "tokeniz", "count", "length", "_len", "num_", "max_", "min_", "expire", "expiry",
        "ttl", "_type", "_file", "_path",
    ])
});

/// Whether a JSON key names a secret.
pub fn is_secret_key(key: &str) -> bool {
    SECRET_KEYS.found_in(key) && !DESCRIBES_A_SECRET.found_in(key)
}

/// The base64 alphabets (standard and URL-safe); `=` only as trailing padding.
fn is_b64(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'+' || c == b'/' || c == b'_' || c == b'-'
}

/// Where a base64 run of [`BASE64_MIN`] or more characters starting at or after `from` is, with
/// what is glued to it: segments joined by `.` (a JWT whose payload is a long run), and
/// `=value` after it (`...AAApassword=hunter2`: a secret name at the run's end). The run is
/// preceded by what started it (`image=` stays).
fn base64_span(b: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i < b.len() {
        if !is_b64(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && is_b64(b[i]) {
            i += 1;
        }
        if i - start < BASE64_MIN {
            continue;
        }
        // Padding, and whatever is glued on after a `.` or `=`.
        let mut end = i;
        loop {
            let mut j = end;
            while j < b.len() && (b[j] == b'=' || b[j] == b'.') {
                j += 1;
            }
            let glued = j;
            while j < b.len() && is_b64(b[j]) {
                j += 1;
            }
            if j == end || (j == glued && b[end] == b'.') {
                break;
            }
            end = j;
        }
        // Segments glued before it with a `.`.
        let mut begin = start;
        while begin >= 2 && b[begin - 1] == b'.' && is_b64(b[begin - 2]) {
            let mut k = begin - 1;
            while k > 0 && is_b64(b[k - 1]) {
                k -= 1;
            }
            begin = k;
        }
        return Some((begin, end));
    }
    None
}

/// Replaces base64 runs of [`BASE64_MIN`] or more characters (with what is glued to them).
fn redact_base64<'a>(s: &'a str, found: &mut Found) -> Cow<'a, str> {
    let b = s.as_bytes();
    if b.len() < BASE64_MIN {
        return Cow::Borrowed(s);
    }
    let mut out: Option<String> = None;
    let mut last = 0;
    while let Some((start, end)) = base64_span(b, last) {
        let o = out.get_or_insert_with(|| String::with_capacity(s.len()));
        o.push_str(&s[last..start]);
        o.push_str(&format!("[base64 {} chars redacted]", end - start));
        found.add(Kind::ImagePayload);
        last = end;
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
    !TRIGGERS.found_in(s) && base64_span(s.as_bytes(), 0).is_none()
}

/// Whether a matched secret is a redaction already (text redacted before, or its rule's
/// replacement): it is kept as it is, and not counted again.
fn is_redacted(secret: &str) -> bool {
    let s = secret.trim_matches(['"', '\'']);
    // A value pattern that stops before `]` sees `[REDACTED`, or `[base64` before the space.
    (s.len() >= MASK.len() - 1 && MASK.starts_with(s))
        || s == "[base64"
        || (s.starts_with("[base64 ")
            && s.ends_with(" chars redacted]")
            && s.bytes().filter(|b| *b == b'[').count() == 1)
}

/// Redacts secrets in free text.
pub fn text(s: &str) -> Cow<'_, str> {
    text_counted(s, &mut Found::default())
}

/// Redacts secrets in free text, adding what it hid to `found`.
pub fn text_counted<'a>(s: &'a str, found: &mut Found) -> Cow<'a, str> {
    let mut cur = redact_base64(s, found);
    if !TRIGGERS.found_in(cur.as_ref()) {
        return cur;
    }
    for r in RULES.iter() {
        let replaced = r.re.replace_all(&cur, |c: &Captures<'_>| {
            let whole = c.get(0).map_or("", |m| m.as_str());
            let secret = c.name("s").map_or(whole, |m| m.as_str());
            if is_redacted(secret) {
                return whole.to_string();
            }
            let mut to = String::with_capacity(whole.len());
            c.expand(r.with, &mut to);
            found.add(match r.kind {
                KindOf::Is(k) => k,
                KindOf::Named => Kind::of_name(c.name("n").map_or("", |m| m.as_str())),
            });
            to
        });
        if let Cow::Owned(o) = replaced {
            cur = Cow::Owned(o);
        }
    }
    if let Cow::Owned(o) = PASSWORD_WORD.replace_all(&cur, |c: &Captures<'_>| {
        let word = &c[3];
        if word.starts_with('[') || NOT_A_PASSWORD.contains(&word.to_ascii_lowercase().as_str()) {
            c[0].to_string()
        } else {
            found.add(Kind::Password);
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
    json_counted(v, &mut Found::default());
}

/// Redacts a JSON value in place, adding what it hid to `found`.
pub fn json_counted(v: &mut Value, found: &mut Found) {
    match v {
        Value::String(s) => {
            if let Cow::Owned(o) = text_counted(s, found) {
                *s = o;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|v| json_counted(v, found)),
        Value::Object(m) => {
            // {"key": "password", "value": "..."}: the value of a named secret.
            let named = ["key", "name", "Key", "Name"]
                .iter()
                .find_map(|k| {
                    m.get(*k)
                        .and_then(Value::as_str)
                        .filter(|n| is_secret_key(n))
                })
                .map(Kind::of_name);
            if let Some(kind) = named {
                for k in ["value", "Value"] {
                    if let Some(v) = m.get_mut(k) {
                        mask(v, kind, found);
                    }
                }
            }
            for (k, val) in m.iter_mut() {
                if is_secret_key(k) {
                    mask(val, Kind::of_name(k), found);
                } else {
                    json_counted(val, found);
                }
            }
        }
        _ => {}
    }
}

/// Masks the value of a secret-named key (unless it holds nothing, or was masked before).
fn mask(v: &mut Value, kind: Kind, found: &mut Found) {
    match v {
        Value::Null | Value::Bool(_) => {}
        Value::String(s) if is_redacted(s) || s.is_empty() => {}
        _ => {
            *v = Value::String(MASK.into());
            found.add(kind);
        }
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
            assert!(
                out.contains(MASK) || out.contains("[base64 "),
                "{input:?} -> {out:?}"
            );
            assert!(out.contains(kept), "{input:?} -> {out:?} lost {kept:?}");
            assert!(!is_clean(input), "{input:?}");
            // Redacting again changes nothing and counts nothing.
            let mut again = Found::default();
            assert_eq!(text_counted(&out, &mut again), out, "{input:?}");
            assert!(again.is_empty(), "{input:?} counted again: {again:?}");
        }
    }

    #[test]
    fn each_redaction_is_counted_by_kind() {
        let count = |s: &str| {
            let mut f = Found::default();
            let _ = text_counted(s, &mut f);
            f.iter().collect::<Vec<_>>()
        };
        assert_eq!(
            count("db password=a and token=b"),
            [(Kind::Token, 1), (Kind::Password, 1)]
        );
        assert_eq!(count("AccountKey=abc;x=1"), [(Kind::Key, 1)]);
        assert_eq!(count("X-Api-Key: k1 X-Api-Key: k2"), [(Kind::Key, 2)]);
        assert_eq!(count("amqp://u:p@h/"), [(Kind::Password, 1)]);
        assert_eq!(
            count(&format!("img={}", "QUJD".repeat(70))),
            [(Kind::ImagePayload, 1)]
        );
        assert!(count("nothing to hide, tokens are fine").is_empty());
        let mut f = Found::default();
        let mut v: Value = serde_json::json!({"db_password": "x", "max_tokens": 512, "token_type": "Bearer", "pw": [{"name": "API_TOKEN", "value": "t"}]});
        json_counted(&mut v, &mut f);
        assert_eq!(v["max_tokens"], 512);
        assert_eq!(v["token_type"], "Bearer");
        assert_eq!(v["pw"][0]["value"], MASK);
        assert_eq!(
            f.iter().collect::<Vec<_>>(),
            [(Kind::Token, 1), (Kind::Password, 1)]
        );
        // Masked values are not counted twice.
        let mut again = Found::default();
        json_counted(&mut v, &mut again);
        assert!(again.is_empty(), "{again:?}");
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
