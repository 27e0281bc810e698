//! Structured service lines: `{"timestamp","level","service","message","context":{...}}`.
//!
//! Tolerant of missing and extra fields (extra top-level fields are kept in the context), of
//! `timestamp` as RFC3339 or epoch seconds, and of the `NaN`/`Infinity` literals Python's
//! `json.dumps` writes by default (`allow_nan=True`), which strict JSON parsers reject.

use serde_json::{Map, Value};

use super::Level;

/// A parsed service line.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceLine {
    pub ts: Option<i64>,
    pub level: Option<Level>,
    pub service: Option<String>,
    pub message: String,
    pub context: Map<String, Value>,
    /// The `context` object as raw JSON text, when the fast path read the line: `context`
    /// is then empty and is only parsed by those who need its values.
    pub raw_context: Option<String>,
}

/// Why a line that looked like JSON was not a service line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonSkip {
    /// Not valid JSON (often a line cut short by a crash or by Docker's 16 KiB split).
    Invalid,
    /// Valid JSON but not an object.
    NotObject,
}

impl JsonSkip {
    /// The skip reason it is counted under (`trainwatch_parse_skips_total`, replay's summary).
    pub fn reason(self) -> &'static str {
        match self {
            JsonSkip::Invalid => "invalid_service_json",
            JsonSkip::NotObject => "service_json_not_object",
        }
    }
}

pub use crate::time::{TIME_KEYS, epoch_number_to_ns};

/// The shape of almost every service line: only known keys, string level and message. Read
/// with borrowed strings and the context left as raw text; anything else (extra fields,
/// duplicate keys, `NaN` literals, odd types) goes to the general path.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Fast<'a> {
    #[serde(
        default,
        borrow,
        alias = "time",
        alias = "@timestamp",
        alias = "ts",
        alias = "asctime"
    )]
    timestamp: Option<&'a serde_json::value::RawValue>,
    #[serde(
        default,
        borrow,
        alias = "levelname",
        alias = "severity",
        alias = "lvl",
        alias = "log.level"
    )]
    level: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    service: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow, alias = "msg", alias = "event")]
    message: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    context: Option<&'a serde_json::value::RawValue>,
}

fn fast(text: &str) -> Option<ServiceLine> {
    let f: Fast<'_> = serde_json::from_str(text).ok()?;
    let raw_context = match f.context.map(|c| c.get()) {
        Some(c) if c.starts_with('{') => Some(c.to_string()),
        Some("null") | None => None,
        Some(_) => return None,
    };
    let ts = match f.timestamp.map(|t| t.get()) {
        Some(t) if t.starts_with('"') => serde_json::from_str::<std::borrow::Cow<'_, str>>(t)
            .ok()
            .and_then(|s| crate::time::parse_loose(&s)),
        Some(t) => t.parse::<f64>().ok().and_then(epoch_number_to_ns),
        None => None,
    };
    Some(ServiceLine {
        ts,
        level: f.level.as_deref().and_then(Level::parse),
        service: f.service.map(|s| s.into_owned()),
        message: f.message.map(|m| m.into_owned()).unwrap_or_default(),
        context: Map::new(),
        raw_context,
    })
}

/// Parses a raw context object into a map (accepting Python's `NaN` literals).
pub fn context_map(raw: &str) -> Map<String, Value> {
    serde_json::from_str(raw)
        .ok()
        .or_else(|| serde_json::from_str(&quote_non_finite(raw)?).ok())
        .unwrap_or_default()
}

/// Parses a service line. Any JSON object is accepted; `message` falls back to `msg`.
pub fn parse(text: &str) -> Result<ServiceLine, JsonSkip> {
    if let Some(line) = fast(text) {
        return Ok(line);
    }
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => {
            let fixed = quote_non_finite(text).ok_or(JsonSkip::Invalid)?;
            serde_json::from_str(&fixed).map_err(|_| JsonSkip::Invalid)?
        }
    };
    let Value::Object(mut obj) = value else {
        return Err(JsonSkip::NotObject);
    };
    let ts = match TIME_KEYS.iter().find_map(|k| obj.remove(*k)) {
        Some(Value::String(s)) => crate::time::parse_loose(&s),
        Some(Value::Number(n)) => n.as_f64().and_then(epoch_number_to_ns),
        _ => None,
    };
    let level = match ["level", "levelname", "severity", "lvl", "log.level"]
        .iter()
        .find_map(|k| obj.remove(*k))
    {
        Some(Value::String(s)) => Level::parse(&s),
        _ => None,
    };
    let service = match obj.remove("service") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let message = match ["message", "msg", "event"]
        .iter()
        .find_map(|k| obj.remove(*k))
    {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let mut context = match obj.remove("context") {
        Some(Value::Object(m)) => m,
        Some(other) => {
            let mut m = Map::new();
            m.insert("context".into(), other);
            m
        }
        None => Map::new(),
    };
    // Extra top-level fields are kept rather than lost.
    for (k, v) in obj {
        context.entry(k).or_insert(v);
    }
    Ok(ServiceLine {
        ts,
        level,
        service,
        message,
        context,
        raw_context: None,
    })
}

/// Rewrites bare `NaN`, `Infinity` and `-Infinity` tokens (outside strings) as strings, so a
/// strict parser accepts Python's output; `None` when there is nothing to rewrite.
fn quote_non_finite(text: &str) -> Option<String> {
    if !text.contains("NaN") && !text.contains("Infinity") {
        return None;
    }
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 8);
    let mut in_str = false;
    let mut i = 0;
    let mut last = 0;
    while i < b.len() {
        let c = b[i];
        if in_str {
            if c == b'\\' {
                i += 2;
                continue;
            }
            if c == b'"' {
                in_str = false;
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_str = true;
            i += 1;
            continue;
        }
        match ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| b[i..].starts_with(t.as_bytes()))
        {
            Some(tok) => {
                out.push_str(&text[last..i]);
                out.push('"');
                out.push_str(tok);
                out.push('"');
                i += tok.len();
                last = i;
            }
            None => i += 1,
        }
    }
    out.push_str(&text[last..]);
    Some(out)
}

/// A number from a context value: JSON numbers, and the strings `NaN`, `Infinity`,
/// `-Infinity` (from `quote_non_finite`) or numeric strings.
pub fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" | "nan" => Some(f64::NAN),
            "Infinity" | "inf" => Some(f64::INFINITY),
            "-Infinity" | "-inf" => Some(f64::NEG_INFINITY),
            s => s.trim().parse().ok(),
        },
        _ => None,
    }
}

/// `Epoch 45/120 completed` -> (45, 120)
pub fn epoch_message(message: &str) -> Option<(u32, u32)> {
    let rest = message.trim().strip_prefix("Epoch ")?;
    let (frac, tail) = rest.split_once(' ').unwrap_or((rest, ""));
    if !tail.trim().starts_with("completed") {
        return None;
    }
    let (e, n) = frac.split_once('/')?;
    Some((e.parse().ok()?, n.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_epoch_line() {
        let s = parse(r#"{"timestamp":"2026-03-28T14:30:00Z","level":"INFO","service":"training","message":"Epoch 45/120 completed","context":{"epoch":45,"loss":0.0234,"mAP50":0.891}}"#).unwrap();
        assert_eq!(s.level, Some(Level::Info));
        assert_eq!(s.service.as_deref(), Some("training"));
        assert_eq!(epoch_message(&s.message), Some((45, 120)));
        // The fast path keeps the context as raw text; its values are read on demand.
        assert!(s.context.is_empty());
        let ctx = context_map(s.raw_context.as_deref().unwrap());
        assert_eq!(num(&ctx["loss"]), Some(0.0234));
        assert_eq!(s.ts, crate::time::parse_rfc3339("2026-03-28T14:30:00Z"));
    }

    #[test]
    fn tolerant_of_missing_extra_and_nan() {
        let s = parse(r#"{"msg":"hi","extra":1}"#).unwrap();
        assert_eq!(s.message, "hi");
        assert_eq!(s.context["extra"], 1);
        let s = parse(r#"{"message":"Epoch 3/10 completed","context":{"loss":NaN,"x":-Infinity,"s":"NaN in text"}}"#).unwrap();
        assert!(num(&s.context["loss"]).unwrap().is_nan());
        assert_eq!(num(&s.context["x"]), Some(f64::NEG_INFINITY));
        assert_eq!(s.context["s"], "NaN in text");
    }

    #[test]
    fn common_key_variants() {
        // structlog's `event`, `severity`, epoch seconds in `ts`.
        let s = parse(r#"{"event":"Checkpoint saved","severity":"warning","ts":1774708200.5}"#)
            .unwrap();
        assert_eq!(s.message, "Checkpoint saved");
        assert_eq!(s.level, Some(Level::Warning));
        assert_eq!(s.ts, Some(1_774_708_200_500_000_000));
        let ms = parse(r#"{"msg":"m","time":1774708200500}"#).unwrap();
        assert_eq!(ms.ts, Some(1_774_708_200_500_000_000));
        let ns = parse(r#"{"msg":"m","time":1774708200500000000}"#).unwrap();
        assert_eq!(ns.ts, Some(1_774_708_200_500_000_000));
    }

    #[test]
    fn invalid() {
        assert_eq!(parse(r#"{"message":"cut"#), Err(JsonSkip::Invalid));
        assert_eq!(parse("[1,2]"), Err(JsonSkip::NotObject));
        assert_eq!(epoch_message("Epoch 45/120 started"), None);
    }
}
