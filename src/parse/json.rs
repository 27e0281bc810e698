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
    /// The exception the record carries (`logger.exception`), wherever its library put it.
    pub exception: Option<Exception>,
}

/// An exception logged inside a JSON record: its traceback as Python prints it (kept in the
/// context as `traceback`), and its line (`torch.OutOfMemoryError: CUDA out of memory. ...`).
#[derive(Clone, Debug, PartialEq)]
pub struct Exception {
    pub traceback: String,
    pub line: String,
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

/// Keys whose value is a logged exception, in the record or its context: python-json-logger's
/// `exc_info`, structlog's `exception` (text, or `dict_tracebacks`' list), the seed's and many
/// hand-written formatters' `traceback`, `stack_trace`, `exc_text`, ECS's `error` object and its
/// flattened `error.stack_trace`.
const EXCEPTION_KEYS: [&str; 6] = [
    "exc_info",
    "exception",
    "traceback",
    "stack_trace",
    "exc_text",
    "error.stack_trace",
];

fn fast(text: &str) -> Option<ServiceLine> {
    let f: Fast<'_> = serde_json::from_str(text).ok()?;
    let raw_context = match f.context.map(|c| c.get()) {
        // A context holding an exception is read whole (the general path).
        Some(c) if c.contains("Traceback (most recent call last)") => return None,
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
        exception: None,
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
    let mut exception = unwrap_loguru(&mut obj);
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
    if exception.is_none() {
        exception = take_exception(&mut context);
    }
    if let Some(e) = &exception {
        context.insert("traceback".into(), Value::String(e.traceback.clone()));
    }
    Ok(ServiceLine {
        ts,
        level,
        service,
        message,
        context,
        raw_context: None,
        exception,
    })
}

/// loguru's `serialize=True` writes only `text` (the formatted line, with the traceback) and
/// `record`: the record's level name, message, time and `extra` are put where every other
/// library has them, and its exception is returned.
fn unwrap_loguru(obj: &mut Map<String, Value>) -> Option<Exception> {
    let loguru = obj.len() == 2
        && obj.get("text").is_some_and(Value::is_string)
        && obj.get("record").is_some_and(Value::is_object);
    if !loguru {
        return None;
    }
    let Some(Value::String(text)) = obj.remove("text") else {
        return None;
    };
    let Some(Value::Object(mut rec)) = obj.remove("record") else {
        return None;
    };
    if let Some(level) = rec.get("level").and_then(|l| l.get("name")).cloned() {
        obj.insert("level".into(), level);
    }
    if let Some(m) = rec.remove("message") {
        obj.insert("message".into(), m);
    }
    // `repr` to the microsecond (`timestamp`, a float, rounds it).
    let time = rec.get("time");
    let repr = time
        .and_then(|t| t.get("repr"))
        .filter(|r| r.as_str().and_then(crate::time::parse_loose).is_some());
    if let Some(t) = repr
        .or_else(|| time.and_then(|t| t.get("timestamp")))
        .cloned()
    {
        obj.insert("timestamp".into(), t);
    }
    if let Some(n) = rec.remove("name") {
        obj.insert("logger".into(), n);
    }
    if let Some(Value::Object(extra)) = rec.remove("extra") {
        for (k, v) in extra {
            obj.entry(k).or_insert(v);
        }
    }
    let Some(Value::Object(e)) = rec.remove("exception") else {
        return None;
    };
    let line = type_and_value(e.get("type"), e.get("value"))?;
    // The text's traceback (loguru's own, with `diagnose` annotations), else the line alone.
    let traceback = text
        .find("Traceback (most recent call last):")
        .map_or_else(|| line.clone(), |i| text[i..].trim_end().to_string());
    Some(Exception { traceback, line })
}

/// `Type: value`, or `Type` alone.
fn type_and_value(ty: Option<&Value>, value: Option<&Value>) -> Option<String> {
    let ty = ty.and_then(Value::as_str).filter(|t| !t.is_empty())?;
    Some(
        match value.and_then(Value::as_str).filter(|v| !v.is_empty()) {
            Some(v) => format!("{ty}: {v}"),
            None => ty.to_string(),
        },
    )
}

/// Takes the exception out of a record's context (and its nested `context`), wherever its
/// library put it (see [`EXCEPTION_KEYS`]; ECS's `error` object).
fn take_exception(ctx: &mut Map<String, Value>) -> Option<Exception> {
    if let Some(Value::Object(inner)) = ctx.get_mut("context")
        && let Some(e) = take_exception(inner)
    {
        return Some(e);
    }
    for key in EXCEPTION_KEYS {
        let found = match ctx.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() && s != "NoneType: None" => {
                let s = s.trim_end().to_string();
                let line = if key == "error.stack_trace" {
                    // ECS flattened: frames only; the type and message are beside them.
                    let l = type_and_value(ctx.get("error.type"), ctx.get("error.message"));
                    l.unwrap_or_else(|| super::exception_text(&s).to_string())
                } else {
                    super::exception_text(&s).to_string()
                };
                let traceback = if s.starts_with("Traceback") || !s.contains("File \"") {
                    s
                } else {
                    format!("Traceback (most recent call last):\n{s}\n{line}")
                };
                Some(Exception { traceback, line })
            }
            Some(Value::Array(list)) => dict_traceback(list),
            _ => None,
        };
        if let Some(e) = found {
            ctx.remove(key);
            return Some(e);
        }
    }
    // ECS: `error: {type, message, stack_trace}`.
    let ecs = match ctx.get("error") {
        Some(Value::Object(err)) => {
            let line = type_and_value(err.get("type"), err.get("message"))?;
            let frames = err
                .get("stack_trace")
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim_end();
            let traceback = if frames.is_empty() {
                line.clone()
            } else {
                format!("Traceback (most recent call last):\n{frames}\n{line}")
            };
            Some(Exception { traceback, line })
        }
        _ => None,
    };
    if ecs.is_some() {
        ctx.remove("error");
    }
    ecs
}

/// structlog's `dict_tracebacks`: a list of `{exc_type, exc_value, frames: [{filename,
/// lineno, name}]}`, printed back as Python prints the chain.
fn dict_traceback(list: &[Value]) -> Option<Exception> {
    let mut text = String::new();
    let mut line = None;
    for (i, e) in list.iter().enumerate() {
        let l = type_and_value(e.get("exc_type"), e.get("exc_value"))?;
        if i > 0 {
            text.push_str(
                "\n\nThe above exception was the direct cause of the following exception:\n\n",
            );
        }
        text.push_str("Traceback (most recent call last):\n");
        for f in e
            .get("frames")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            text.push_str(&format!(
                "  File \"{}\", line {}, in {}\n",
                f.get("filename").and_then(Value::as_str).unwrap_or("?"),
                f.get("lineno").and_then(Value::as_i64).unwrap_or(0),
                f.get("name").and_then(Value::as_str).unwrap_or("?"),
            ));
        }
        text.push_str(&l);
        line = Some(l);
    }
    // structlog lists the innermost (raised last) first; Python prints it last.
    Some(Exception {
        traceback: text,
        line: line?,
    })
}

/// What a JSON record's message says of a training run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunMessage {
    Started,
    Completed,
}

/// `Training started`, `Starting training`, `Training completed`, `Training finished`, ...
/// (any case, at the message's start).
pub fn run_message(message: &str) -> Option<RunMessage> {
    let m = message.trim_start();
    let head = m.get(..m.len().min(32))?.to_ascii_lowercase();
    const STARTED: [&str; 5] = [
        "training started",
        "starting training",
        "training starts",
        "training start",
        "start training",
    ];
    const COMPLETED: [&str; 7] = [
        "training completed",
        "training complete",
        "training finished",
        "training done",
        "finished training",
        "training ended",
        "completed training",
    ];
    let at_word_end = |w: &str| {
        head.starts_with(w)
            && head[w.len()..]
                .chars()
                .next()
                .is_none_or(|c| !c.is_ascii_alphanumeric())
    };
    if COMPLETED.iter().any(|w| at_word_end(w)) {
        Some(RunMessage::Completed)
    } else if STARTED.iter().any(|w| at_word_end(w)) {
        Some(RunMessage::Started)
    } else {
        None
    }
}

/// Whether a value is a NaN or an infinity as a JSON logger writes one: Python's bare `NaN` /
/// `Infinity` (read as the strings `"NaN"`, `"Infinity"`), or the strings `"nan"`, `"inf"`.
pub fn is_non_finite(v: &Value) -> bool {
    match v {
        Value::String(s) => matches!(
            s.trim().to_ascii_lowercase().as_str(),
            "nan" | "-nan" | "inf" | "-inf" | "+inf" | "infinity" | "-infinity" | "+infinity"
        ),
        _ => false,
    }
}

/// Whether a field names a loss: `loss`, `*_loss`, `*/loss*`, `train/*`, `val/*`.
pub fn is_loss_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    k == "loss"
        || k.ends_with("_loss")
        || k.ends_with("/loss")
        || k.starts_with("train/")
        || k.starts_with("val/")
        || k.starts_with("loss/")
}

/// The first loss-like field with a non-finite value, in the context or an object in it.
pub fn non_finite_loss(ctx: &Map<String, Value>) -> Option<(String, String)> {
    for (k, v) in ctx {
        if is_loss_key(k) && is_non_finite(v) {
            return Some((k.clone(), v.as_str().unwrap_or("nan").to_string()));
        }
        if let Value::Object(inner) = v
            && let Some(found) = non_finite_loss(inner)
        {
            return Some(found);
        }
    }
    None
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
    fn where_each_library_puts_its_fields_and_its_exception() {
        // loguru `serialize=True`.
        let s = parse(r#"{"text": "2026-12-07 15:54:05.394 | ERROR | m:f:1 - Step failed\nTraceback (most recent call last):\n\n> File \"/app/t.py\", line 3, in main\n    x()\n    └ <function>\n\nKeyError: 'x'\n", "record": {"exception": {"type": "KeyError", "value": "'x'", "traceback": true}, "extra": {"epoch": 2}, "level": {"icon": "x", "name": "ERROR", "no": 40}, "message": "Step failed", "name": "trainer", "time": {"repr": "2026-12-07 15:54:05.394+00:00", "timestamp": 1796658845.394}}}"#).unwrap();
        assert_eq!(
            (s.level, s.message.as_str()),
            (Some(Level::Error), "Step failed")
        );
        assert_eq!(s.ts, Some(1_796_658_845_394_000_000));
        assert_eq!(s.context["epoch"], 2);
        assert_eq!(s.context["logger"], "trainer");
        let e = s.exception.unwrap();
        assert_eq!(e.line, "KeyError: 'x'");
        assert!(e.traceback.starts_with("Traceback") && e.traceback.ends_with("KeyError: 'x'"));
        // ECS: `error {type, message, stack_trace}`.
        let s = parse(r#"{"@timestamp":"2026-12-07T15:54:05.661Z","log.level":"error","message":"m","error":{"message":"disk full","stack_trace":"  File \"/app/t.py\", line 1, in f\n    g()\n","type":"OSError"},"log":{"logger":"trainer"}}"#).unwrap();
        let e = s.exception.unwrap();
        assert_eq!(e.line, "OSError: disk full");
        assert_eq!(
            e.traceback,
            "Traceback (most recent call last):\n  File \"/app/t.py\", line 1, in f\n    g()\nOSError: disk full"
        );
        assert!(!s.context.contains_key("error"));
        assert_eq!(s.context["traceback"], Value::String(e.traceback));
        // structlog's dict_tracebacks.
        let s = parse(r#"{"event":"m","level":"error","exception":[{"exc_type":"ValueError","exc_value":"bad","frames":[{"filename":"/app/t.py","lineno":7,"name":"f","locals":{"password":"x"}}]}]}"#).unwrap();
        let e = s.exception.unwrap();
        assert_eq!(
            e.traceback,
            "Traceback (most recent call last):\n  File \"/app/t.py\", line 7, in f\nValueError: bad"
        );
        assert!(
            !s.context.contains_key("exception"),
            "the frames' locals are dropped"
        );
        // python-json-logger's `exc_info`; `NoneType: None` is no exception.
        let s = parse(r#"{"asctime": "2026-12-07 07:04:06,196", "levelname": "ERROR", "message": "m", "exc_info": "Traceback (most recent call last):\n  File \"t.py\", line 1, in f\nRuntimeError: boom"}"#).unwrap();
        assert_eq!(s.exception.unwrap().line, "RuntimeError: boom");
        assert!(s.ts.is_some());
        let s = parse(r#"{"levelname": "ERROR", "message": "m", "exc_info": "NoneType: None"}"#)
            .unwrap();
        assert_eq!(s.exception, None);
        // The seed's own, the traceback inside `context`.
        let s = parse(r#"{"timestamp":"2026-12-07T07:04:06Z","level":"ERROR","service":"training","message":"m","context":{"epoch":3,"traceback":"Traceback (most recent call last):\n  File \"t.py\", line 1, in f\nOSError: [Errno 28] No space left on device"}}"#).unwrap();
        assert_eq!(
            s.exception.unwrap().line,
            "OSError: [Errno 28] No space left on device"
        );
        assert_eq!(s.context["epoch"], 3);
    }

    #[test]
    fn runs_and_non_finite_losses() {
        assert_eq!(run_message("Training started"), Some(RunMessage::Started));
        assert_eq!(
            run_message("starting training for 5 epochs"),
            Some(RunMessage::Started)
        );
        assert_eq!(
            run_message("Training completed in 3.2 h"),
            Some(RunMessage::Completed)
        );
        assert_eq!(
            run_message("Training finished."),
            Some(RunMessage::Completed)
        );
        assert_eq!(run_message("Training step"), None);
        assert_eq!(run_message("Training startedness"), None);
        let ctx = |t: &str| parse(t).unwrap().context;
        assert_eq!(
            non_finite_loss(&ctx(r#"{"msg":"s","train/box_loss":NaN}"#)),
            Some(("train/box_loss".into(), "NaN".into()))
        );
        assert_eq!(
            non_finite_loss(&ctx(r#"{"msg":"s","m":{"val/dfl_loss":"-inf"}}"#)),
            Some(("val/dfl_loss".into(), "-inf".into()))
        );
        assert_eq!(
            non_finite_loss(&ctx(r#"{"msg":"s","lr":"nan","loss":0.5}"#)),
            None
        );
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
