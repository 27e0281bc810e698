//! Parsing: one [`Record`] in, one [`Parsed`] out, never a failure. Fed by assembly, feeds
//! derivation. The parser recognises the line's syntax (service JSON, Python logging, the
//! Ultralytics shapes, tracebacks) and classifies its message with [`patterns`]; what the line
//! means for a run (which epoch, which run) is derivation's job.

pub mod json;
pub mod patterns;
pub use crate::grammar::{pylog, ultralytics};

use serde_json::{Map, Value};

use crate::event::Record;
use patterns::Patterns;

/// A traceback inside a logging record (`logger.exception`), searched with a finder built once:
/// `str::contains` sets up its two-way search on every call.
static TRACEBACK_INSIDE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| {
        memchr::memmem::Finder::new("\nTraceback (most recent call last):")
    });

pub use crate::event::Level;

/// What a line says about training, for derivation's run and epoch state machine.
#[derive(Clone, Debug, PartialEq)]
pub enum Detail {
    None,
    /// The epoch header with the loss column names.
    Header(Vec<String>),
    Progress(ultralytics::Progress),
    Validation(ultralytics::Validation),
    /// A classification run's validation `all` row: top-1 and top-5 accuracy.
    Accuracy {
        top1: f64,
        top5: f64,
    },
    /// `engine/trainer: key=value, ...`
    TrainerSettings(Vec<(String, String)>),
    /// `Starting training for N epochs...`
    StartingTraining(Option<u32>),
    Resuming {
        model: String,
        from_epoch: u32,
        epochs: u32,
    },
    EpochsCompleted {
        epochs: u32,
        hours: f64,
    },
    EarlyStopped {
        best_epoch: u32,
        patience: Option<u32>,
    },
    /// `Validating .../best.pt...`: what follows is the final validation, not an epoch's.
    ValidatingBest,
    ResultsDir(String),
    Banner(String),
    /// `optimizer: AdamW(lr=0.001667, momentum=0.9) with parameter groups ...`: the optimizer
    /// the training resolved.
    Optimizer(ultralytics::Optimizer),
    /// `Tuner: Starting iteration K/N ...`: the next training is that tune iteration.
    TuneIteration {
        iteration: u32,
        iterations: u32,
    },
    /// `MLflow: logging run_id(<id>) to <uri>`: the training logs itself to MLflow.
    MlflowRun {
        run_id: String,
        uri: String,
    },
    /// A service JSON `Epoch k/N completed` line.
    ServiceEpoch {
        epoch: u32,
        epochs: u32,
    },
    /// A traceback: its last line names the exception.
    Traceback {
        exception: String,
    },
    /// A JSON record that starts or ends a training: `Training started` (its settings in the
    /// context), `Training completed`.
    ServiceRun(json::RunMessage),
}

/// How a record was recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Empty,
    Json,
    PyLog,
    Ultralytics,
    Traceback,
    Text,
}

/// A parsed record.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    pub format: Format,
    pub level: Level,
    /// The event kind this record is stored as, when it is worth storing on its own.
    /// Derivation adds the training kinds (`epoch_completed`, `validation`, ...).
    pub kind: Option<&'static str>,
    /// For JSON and logging records, the message field; otherwise the whole text.
    pub message: String,
    pub context: Map<String, Value>,
    /// A service line's context object as raw JSON text (service merged in), when nobody
    /// needed its values; `context` is then empty.
    pub raw_context: Option<String>,
    pub detail: Detail,
    /// A time the line itself carries (asctime, JSON timestamp).
    pub line_ts: Option<i64>,
    /// A counter increment from a pattern rule.
    pub counter: Option<(&'static str, f64)>,
    /// A queue offset the line states.
    pub offset: Option<u64>,
    /// Set when a JSON-looking line could not be read as JSON.
    pub skip: Option<json::JsonSkip>,
    /// A second kind the record is also stored as: an uncaught traceback is an `error`, and
    /// when its exception says what happened (`gpu_oom`, `checkpoint_save_failed`, ...), that
    /// fact is an event of its own for the alert rules.
    pub also: Option<&'static str>,
}

impl Parsed {
    fn new(format: Format, message: String) -> Self {
        Parsed {
            format,
            level: Level::Info,
            kind: None,
            message,
            context: Map::new(),
            raw_context: None,
            detail: Detail::None,
            line_ts: None,
            counter: None,
            offset: None,
            skip: None,
            also: None,
        }
    }
}

/// The parser: stateless apart from its compiled patterns, so one instance serves every source.
#[derive(Debug, Default)]
pub struct Parser {
    pub patterns: Patterns,
}

fn level_kind(level: Level) -> Option<&'static str> {
    match level {
        Level::Warning => Some("warning"),
        Level::Error | Level::Critical => Some("error"),
        _ => None,
    }
}

impl Parser {
    pub fn new(patterns: Patterns) -> Self {
        Parser { patterns }
    }

    /// Parses one assembled record.
    pub fn parse(&self, rec: &Record) -> Parsed {
        let text = rec.text.as_str();
        let trimmed = text.trim_start();
        if trimmed.is_empty() {
            return Parsed::new(Format::Empty, String::new());
        }
        if trimmed.starts_with('{') {
            match json::parse(trimmed) {
                Ok(line) => return self.service(line),
                Err(skip) => {
                    // Kept as a text event (a crash can cut the most important line short).
                    let mut p = self.text(text);
                    p.skip = Some(skip);
                    p.kind = p.kind.or(Some("log"));
                    return p;
                }
            }
        }
        if text.starts_with("Traceback (most recent call last):") {
            return self.traceback(text);
        }
        if let Some(log) = pylog::parse(text) {
            let mut p = Parsed::new(Format::PyLog, text.to_string());
            p.level = log.level;
            p.line_ts = log.ts();
            p.context
                .insert("logger".into(), Value::String(log.logger.to_string()));
            // A record with a traceback is classified by its whole text (the exception is at
            // the end); otherwise by its message.
            let has_tb = TRACEBACK_INSIDE.find(text.as_bytes()).is_some();
            let probe = if has_tb { text } else { log.message };
            self.classify(&mut p, probe);
            if has_tb {
                // `logger.exception(...)`: an `error` (or the record's own level) that keeps
                // its traceback; what the exception says happened is an event of its own (a
                // NaN is one already: the epochs that showed it).
                p.also = p.kind.filter(|k| {
                    !matches!(*k, "error" | "warning" | "queue_offset" | "loss_non_finite")
                });
                p.kind = level_kind(p.level).or(Some("error"));
                p.detail = Detail::Traceback {
                    exception: exception_text(text).to_string(),
                };
            }
            return p;
        }
        if let Some(p) = self.ultralytics(text, trimmed) {
            return p;
        }
        self.text(text)
    }

    fn classify(&self, p: &mut Parsed, probe: &str) {
        if let Some(m) = self.patterns.classify(probe) {
            p.kind = Some(m.kind);
            if let Some(l) = m.level {
                p.level = l;
            }
            p.counter = m.counter;
        } else {
            p.kind = level_kind(p.level);
        }
        p.offset = self.patterns.offset(probe);
        if p.kind.is_none() && p.offset.is_some() {
            p.kind = Some("queue_offset");
        }
    }

    fn service(&self, line: json::ServiceLine) -> Parsed {
        // JSON decoding brings back the controls its escapes hid (`\u001b`, `\u009b`): a
        // message is stored as a terminal may show it.
        let message = match crate::assemble::ansi::without_controls(&line.message) {
            std::borrow::Cow::Borrowed(_) => line.message,
            std::borrow::Cow::Owned(clean) => clean,
        };
        let mut p = Parsed::new(Format::Json, message);
        p.level = line.level.unwrap_or(Level::Info);
        p.line_ts = line.ts;
        p.context = line.context;
        let epoch = json::epoch_message(&p.message);
        let run = json::run_message(&p.message);
        match line.raw_context {
            // Epochs, offsets, a run's settings and non-finite losses are read from the
            // context; a context with its own `service` keeps it (as the map path does).
            Some(raw)
                if epoch.is_some()
                    || run.is_some()
                    || raw.contains("\"offset\"")
                    || raw.contains("\"service\"")
                    || may_hold_non_finite(&raw) =>
            {
                p.context = json::context_map(&raw);
            }
            Some(raw) => p.raw_context = Some(with_service(raw, line.service.as_deref())),
            None => {}
        }
        if p.raw_context.is_none()
            && let Some(s) = line.service
        {
            p.context.entry("service").or_insert(Value::String(s));
        }
        if let Some((epoch, epochs)) = epoch {
            p.detail = Detail::ServiceEpoch { epoch, epochs };
            return p;
        }
        let msg = std::mem::take(&mut p.message);
        if let Some(e) = line.exception {
            // `logger.exception(...)`: an `error` that keeps its traceback, and what its
            // exception says happened as an event of its own, as for a printed traceback. It
            // was handled by the program: no run ends with it.
            let probe = format!("{msg}\n{}", e.traceback);
            self.classify(&mut p, &probe);
            p.also = p
                .kind
                .filter(|k| !matches!(*k, "error" | "warning" | "queue_offset" | "log"));
            p.kind = level_kind(p.level).or(Some("error"));
            if p.level < Level::Warning {
                p.level = Level::Error;
            }
            p.detail = Detail::Traceback {
                exception: crate::assemble::ansi::without_controls(&e.line).into_owned(),
            };
            p.message = msg;
            return p;
        }
        self.classify(&mut p, &msg);
        if let Some(r) = run {
            p.detail = Detail::ServiceRun(r);
            if p.kind.is_none() {
                p.kind = Some(match r {
                    json::RunMessage::Started => "training_started",
                    json::RunMessage::Completed => "training_completed",
                });
            }
        }
        // A NaN/inf loss in any record (a training step, not only an epoch's end).
        if let Some((key, value)) = json::non_finite_loss(&p.context) {
            match p.kind {
                None | Some("log" | "warning" | "error") => {
                    p.kind = Some("loss_non_finite");
                    p.level = p.level.max(Level::Error);
                }
                Some(_) => p.also = p.also.or(Some("loss_non_finite")),
            }
            p.context
                .entry("non_finite")
                .or_insert(Value::String(format!("{key}={value}")));
        }
        if p.offset.is_none() {
            p.offset = p
                .context
                .get("offset")
                .and_then(json::num)
                .filter(|v| *v >= 0.0)
                .map(|v| v as u64);
        }
        p.message = msg;
        if p.kind.is_none() {
            p.kind = Some("log");
        }
        p
    }

    fn traceback(&self, text: &str) -> Parsed {
        let mut p = Parsed::new(Format::Traceback, text.to_string());
        p.level = Level::Error;
        self.classify(&mut p, text);
        // A traceback is an `error` event, whatever its text mentions; what the exception
        // says happened is a second event (a NaN is one already: the epochs that showed it).
        p.also = p
            .kind
            .filter(|k| !matches!(*k, "error" | "warning" | "queue_offset" | "loss_non_finite"));
        p.kind = Some("error");
        p.level = Level::Error;
        p.detail = Detail::Traceback {
            exception: exception_text(text).to_string(),
        };
        p
    }

    fn ultralytics(&self, text: &str, trimmed: &str) -> Option<Parsed> {
        let first = trimmed.as_bytes()[0];
        let detail = if first.is_ascii_digit() {
            if let Some(pr) = ultralytics::progress_row(text) {
                Detail::Progress(pr)
            } else if let Some((epochs, hours)) = ultralytics::epochs_completed(text) {
                Detail::EpochsCompleted { epochs, hours }
            } else {
                return None;
            }
        } else if trimmed.starts_with("Epoch") {
            Detail::Header(ultralytics::epoch_header(text)?)
        } else if trimmed.starts_with("all ") {
            match ultralytics::val_all_row(text) {
                Some(v) => Detail::Validation(v),
                None => {
                    let (top1, top5) = ultralytics::accuracy_all_row(text)?;
                    Detail::Accuracy { top1, top5 }
                }
            }
        } else if ultralytics::strip_trainer_prefix(trimmed).is_some()
            || trimmed.starts_with("train: weights=")
        {
            Detail::TrainerSettings(ultralytics::trainer_settings(text)?)
        } else if let Some(n) = ultralytics::starting_training(text) {
            Detail::StartingTraining(n)
        } else if let Some((model, from_epoch, epochs)) = ultralytics::resuming(text) {
            Detail::Resuming {
                model,
                from_epoch,
                epochs,
            }
        } else if let Some((best_epoch, patience)) = ultralytics::early_stopping(text) {
            Detail::EarlyStopped {
                best_epoch,
                patience,
            }
        } else if ultralytics::validating_best(text) {
            Detail::ValidatingBest
        } else if let Some(dir) = ultralytics::results_dir(text) {
            Detail::ResultsDir(dir.to_string())
        } else if let Some(o) = ultralytics::optimizer(text) {
            Detail::Optimizer(o)
        } else if let Some((iteration, iterations)) = ultralytics::tune_iteration(text) {
            Detail::TuneIteration {
                iteration,
                iterations,
            }
        } else if let Some((run_id, uri)) = ultralytics::mlflow_run(text) {
            Detail::MlflowRun {
                run_id: run_id.to_string(),
                uri: uri.to_string(),
            }
        } else if let Some(v) = ultralytics::banner(text) {
            Detail::Banner(v.to_string())
        } else {
            return None;
        };
        let mut p = Parsed::new(Format::Ultralytics, text.trim().to_string());
        p.detail = detail;
        Some(p)
    }

    fn text(&self, text: &str) -> Parsed {
        let mut p = Parsed::new(Format::Text, text.to_string());
        if let Some(l) = ultralytics::level_prefix(text) {
            p.level = l;
        } else if pylog::is_exception_line(text) {
            p.level = Level::Error;
        }
        self.classify(&mut p, text);
        p
    }
}

/// `{"service":"<s>", ...raw}`: the service name put in front of a raw context object.
fn with_service(raw: String, service: Option<&str>) -> String {
    let Some(s) = service else { return raw };
    // Serialized straight to bytes (`Value`'s `Display` goes through a formatter per token).
    let name = serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let rest = raw[1..].trim_start();
    let mut out = String::with_capacity(raw.len() + name.len() + 12);
    out.push_str("{\"service\":");
    out.push_str(&name);
    if rest.starts_with('}') {
        out.push('}');
    } else {
        out.push(',');
        out.push_str(rest);
    }
    out
}

/// Whether a raw context may hold a NaN or an infinity (`NaN`, `"nan"`, `Infinity`, `"inf"`):
/// only then is it parsed to look.
fn may_hold_non_finite(raw: &str) -> bool {
    let b = raw.as_bytes();
    memchr::memmem::find(b, b"NaN").is_some()
        || memchr::memmem::find(b, b"nan\"").is_some()
        || memchr::memmem::find(b, b"inf\"").is_some()
        || memchr::memmem::find(b, b"Infinity").is_some()
}

/// The last exception of a traceback (chained or not) with every line of its message: from the
/// first unindented line after the last `Traceback` header's frames to the end.
pub fn exception_text(text: &str) -> &str {
    let text = text.trim_end();
    let from = text
        .rfind("Traceback (most recent call last):")
        .map_or(0, |i| i + "Traceback (most recent call last):".len());
    let mut at = from;
    for line in text[from..].split_inclusive('\n') {
        let blank = line.trim().is_empty();
        if !blank && !line.starts_with([' ', '\t']) && at > from {
            return text[at..].trim();
        }
        at += line.len();
    }
    // No frames after the header (a record cut short): its last line.
    text.rsplit('\n').next().unwrap_or(text).trim()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Key, Stream};

    fn parse(text: &str) -> Parsed {
        let rec = Record {
            key: Key::default(),
            ts: 0,
            stream: Stream::Stdout,
            text: text.into(),
            nonfinite_frame: None,
            terminated: true,
            line_no: 1,
            lines: 1,
            last_key: Key::default(),
        };
        Parser::default().parse(&rec)
    }

    #[test]
    fn level_names_in_any_case() {
        for (name, want) in [
            ("INFO", Some(Level::Info)),
            ("warning", Some(Level::Warning)),
            ("Warn", Some(Level::Warning)),
            (" ERROR ", Some(Level::Error)),
            ("fatal", Some(Level::Critical)),
            ("trace", Some(Level::Debug)),
            ("verbose", None),
            ("", None),
        ] {
            assert_eq!(Level::parse(name), want, "{name:?}");
        }
    }

    #[test]
    fn kinds() {
        assert_eq!(
            parse("WARNING ⚠️ no labels found in detect set").kind,
            Some("warning")
        );
        assert_eq!(parse("ERROR ❌ AMP: checks failed").kind, Some("error"));
        assert_eq!(parse("just a print").kind, None);
        // An exception's line printed without its traceback.
        let p = parse("AssertionError: last.pt training to 100 epochs is finished");
        assert_eq!((p.kind, p.level), (Some("error"), Level::Error));
        let p = parse(
            "2026-11-29 05:00:48,263 - consumer - ERROR - Error handling message\nTraceback (most recent call last):\n  File \"x\", line 1, in f\nKeyError: 'x'",
        );
        // An `error` keeping its traceback; the failed message is an event of its own.
        assert_eq!((p.kind, p.also), (Some("error"), Some("annotation_failed")));
        assert_eq!(p.counter, Some(("queue_messages_failed", 1.0)));
        assert_eq!(p.level, Level::Error);
        let p = parse(
            "2026-11-29 05:00:48,263 - trainer - ERROR - Unhandled exception\nTraceback (most recent call last):\n  File \"x\", line 1, in f\nKeyError: 'x'",
        );
        assert_eq!(p.kind, Some("error"));
        assert_eq!(
            p.detail,
            Detail::Traceback {
                exception: "KeyError: 'x'".into()
            }
        );
        let p = parse(
            "Traceback (most recent call last):\n  File \"t.py\", line 5\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.",
        );
        assert_eq!((p.kind, p.also), (Some("error"), Some("gpu_oom")));
        // The traceback that ends a NaN run is an error; the NaN is already an event.
        let p = parse(
            "Traceback (most recent call last):\n  File \"t.py\", line 5\nRuntimeError: Training failed: NaN persisted for 4 epochs",
        );
        assert_eq!((p.kind, p.also), (Some("error"), None));
        // A chained traceback's exception is the last one, with every line of its message.
        let p = parse(
            "Traceback (most recent call last):\n  File \"a\", line 1\nFileNotFoundError: images not found\nNote dataset dir\n\nThe above exception was the direct cause of the following exception:\n\nTraceback (most recent call last):\n  File \"b\", line 2\n    raise RuntimeError(e) from e\nRuntimeError: Dataset error ❌ images not found\nNote dataset dir",
        );
        assert_eq!(
            p.detail,
            Detail::Traceback {
                exception: "RuntimeError: Dataset error ❌ images not found\nNote dataset dir"
                    .into()
            }
        );
        assert_eq!(p.kind, Some("error"));
        assert_eq!(
            parse("{\"message\":\"cut").skip,
            Some(json::JsonSkip::Invalid)
        );
        let p = parse(
            r#"{"level":"INFO","service":"annotation_queue","message":"Queue depth","context":{"depth":3}}"#,
        );
        assert_eq!(p.kind, Some("log"));
        let ctx: Value = serde_json::from_str(p.raw_context.as_deref().unwrap()).unwrap();
        assert_eq!(
            ctx,
            serde_json::json!({"service": "annotation_queue", "depth": 3})
        );
        let p = parse("INFO:annotation_queue:Annotation saved: id=1 offset=42");
        assert_eq!((p.kind, p.offset), (Some("annotation_processed"), Some(42)));
        let p = parse("current offset: 99");
        assert_eq!((p.kind, p.offset), (Some("queue_offset"), Some(99)));
    }
}
