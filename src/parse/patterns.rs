//! Message patterns -> event kind and counter, the way Promtail's `metrics` stage works: an
//! ordered list of regular expressions, the first match wins. trainwatch ships defaults for
//! the Ultralytics/PyTorch wordings and for the annotation queue; a TOML config adds rules in
//! front of them (so they override) or replaces them.
//!
//! The annotation queue's source is not public, so its default patterns are educated guesses
//! at common wordings (`Annotation saved: id=.. offset=..`, `Processed 10 messages`,
//! `Failed to process message ...`); teams are expected to tune them in the config.

use regex::{Regex, RegexSet};
use serde::Deserialize;

use super::Level;
use crate::error::ConfigError;
use crate::words::AnyCase;

/// One rule as written in the config file:
/// ```toml
/// [[patterns]]
/// regex = '^Annotation (?:saved|stored)\b'
/// kind = "annotation_processed"
/// counter = "queue_messages_processed"   # optional: a counter metric to increment
/// add = "count"                          # optional: named capture to add instead of 1
/// level = "INFO"                         # optional: overrides the line's level
/// ```
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PatternConfig {
    pub regex: String,
    pub kind: String,
    #[serde(default)]
    pub counter: Option<String>,
    #[serde(default)]
    pub add: Option<String>,
    #[serde(default)]
    pub level: Option<String>,
}

#[derive(Debug)]
struct Rule {
    regex: Regex,
    kind: &'static str,
    counter: Option<&'static str>,
    add: Option<String>,
    level: Option<Level>,
}

/// What a matching rule says about a message.
#[derive(Clone, Debug, PartialEq)]
pub struct Match {
    pub kind: &'static str,
    pub level: Option<Level>,
    pub counter: Option<(&'static str, f64)>,
}

/// The compiled, ordered rule list: the config's rules, then the built-in ones.
#[derive(Debug)]
pub struct Patterns {
    /// The config's rules (`rules[..n_extra]`), tried first.
    extra: Option<RegexSet>,
    n_extra: usize,
    /// The built-in rules (`rules[n_extra..]`) with the words that gate them.
    builtin: Option<(RegexSet, AnyCase)>,
    rules: Vec<Rule>,
    offset: Regex,
    /// Prefilters for `offset`, built once (`str::contains` sets up its search every call).
    ffset: memchr::memmem::Finder<'static>,
    ffset_upper: memchr::memmem::Finder<'static>,
}

/// A built-in rule.
struct Builtin {
    regex: &'static str,
    kind: &'static str,
    counter: Option<&'static str>,
    add: Option<&'static str>,
    /// Every text the regex matches contains one of these, in any case: text with none of
    /// the built-in rules' words skips their regexes (most messages; see [`Patterns::classify`]).
    /// Kept next to the regex so that the two are edited together; tests check them.
    words: &'static [&'static str],
}

/// The built-in rules, in priority order.
const DEFAULTS: &[Builtin] = &[
    // PyTorch / CUDA / HIP OOM wordings and the allocator failures Ultralytics treats as OOM.
    Builtin {
        regex: r"(?i)(?-u:\b)(?:cuda|hip|mps|gpu)(?: error:| driver error:| runtime error \(\d+\) :)? out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED|CUDA backend memory error",
        kind: "gpu_oom",
        counter: None,
        add: None,
        words: &[
            "out of memory",
            "outofmemoryerror",
            "cublas_status_alloc_failed",
            "cuda backend memory error",
        ],
    },
    Builtin {
        regex: r"(?:Loss|Fitness) NaN/Inf detected|NaN persisted for \d+ epochs|corrupted with NaN/Inf",
        kind: "loss_non_finite",
        counter: None,
        add: None,
        words: &["nan"],
    },
    Builtin {
        regex: r"(?is)(?:torch\.save\(|in save_model|serialization\.py)[^\n]*\n.*(?:Error|Exception)(?-u:\b)|(?i:(?-u:\b)(?:fail\w*|error|unable|could not|cannot)(?-u:\b)[^\n]{0,40}(?-u:\b)sav\w*[^\n]{0,40}(?:checkpoint|weights|\.pt(?-u:\b)))|(?i:checkpoint[^\n]{0,40}(?-u:\b)(?:save|saving|write|writing)(?-u:\b)[^\n]{0,20}(?-u:\b)(?:failed|error))",
        kind: "checkpoint_save_failed",
        counter: None,
        add: None,
        words: &["sav", "serialization.py", "checkpoint"],
    },
    Builtin {
        regex: r"(?i)^(?:checkpoint saved|saved checkpoint|saving checkpoint)(?-u:\b)|^Optimizer stripped from ",
        kind: "checkpoint_saved",
        counter: None,
        add: None,
        words: &["checkpoint", "optimizer stripped from "],
    },
    Builtin {
        regex: r"export success",
        kind: "model_exported",
        counter: None,
        add: None,
        words: &["export success"],
    },
    Builtin {
        regex: r"(?i)(?-u:\b)failed to (?:process|handle|save|parse) (?:the )?(?:message|annotation)|(?-u:\b)error (?:processing|handling) (?:the )?(?:message|annotation)|(?-u:\b)annotation (?:failed|rejected)|(?-u:\b)message (?:processing )?failed|^skipp(?:ed|ing) (?:a |the )?corrupt(?:ed)? (?:image|message|annotation|frame)",
        kind: "annotation_failed",
        counter: Some("queue_messages_failed"),
        add: None,
        words: &["failed to ", "error ", "annotation ", "message ", "skipp"],
    },
    Builtin {
        regex: r"(?i)^processed (?P<count>\d+) (?:messages|annotations)(?-u:\b)",
        kind: "annotation_processed",
        counter: Some("queue_messages_processed"),
        add: Some("count"),
        words: &["processed "],
    },
    Builtin {
        regex: r"(?i)^(?:annotation (?:[A-Za-z0-9_:.#/-]{1,64} )?(?:saved|processed|stored|handled)|processed (?:annotation|message)|message processed)(?-u:\b)",
        kind: "annotation_processed",
        counter: Some("queue_messages_processed"),
        add: None,
        words: &["annotation ", "processed ", "message processed"],
    },
];

impl Patterns {
    /// Compiles `extra` (from the config, highest priority) followed by the defaults unless
    /// `replace_defaults` is set.
    pub fn new(extra: &[PatternConfig], replace_defaults: bool) -> Result<Self, ConfigError> {
        let mut rules = Vec::new();
        for p in extra {
            let regex = Regex::new(&p.regex).map_err(|e| ConfigError::Pattern {
                regex: p.regex.clone(),
                reason: e.to_string(),
            })?;
            if let Some(add) = &p.add
                && !regex.capture_names().any(|n| n == Some(add.as_str()))
            {
                return Err(ConfigError::Pattern {
                    regex: p.regex.clone(),
                    reason: format!("no named capture `{add}` for `add`"),
                });
            }
            let level = match &p.level {
                Some(l) => Some(Level::parse(l).ok_or_else(|| ConfigError::Pattern {
                    regex: p.regex.clone(),
                    reason: format!("unknown level `{l}`"),
                })?),
                None => None,
            };
            rules.push(Rule {
                regex,
                kind: crate::event::intern(&p.kind),
                counter: p.counter.as_deref().map(crate::event::intern),
                add: p.add.clone(),
                level,
            });
        }
        let n_extra = rules.len();
        let mut words = Vec::new();
        if !replace_defaults {
            for b in DEFAULTS {
                rules.push(Rule {
                    regex: Regex::new(b.regex).expect("built-in pattern compiles"),
                    kind: b.kind,
                    counter: b.counter,
                    add: b.add.map(str::to_string),
                    level: None,
                });
                words.extend_from_slice(b.words);
            }
        }
        let set = |rules: &[Rule]| {
            RegexSet::new(rules.iter().map(|r| r.regex.as_str())).map_err(|e| {
                ConfigError::Pattern {
                    regex: "<set>".into(),
                    reason: e.to_string(),
                }
            })
        };
        let extra = (n_extra > 0).then(|| set(&rules[..n_extra])).transpose()?;
        let builtin = if replace_defaults {
            None
        } else {
            Some((set(&rules[n_extra..])?, AnyCase::new(&words)))
        };
        let offset = Regex::new(r"(?i)(?-u:\b)offset(?-u:\b)[\s=:]{1,3}(\d{1,19})(?-u:\b)")
            .expect("offset pattern");
        Ok(Patterns {
            extra,
            n_extra,
            builtin,
            rules,
            offset,
            ffset: memchr::memmem::Finder::new(b"ffset"),
            ffset_upper: memchr::memmem::Finder::new(b"FFSET"),
        })
    }

    /// The first rule matching `text`, if any.
    pub fn classify(&self, text: &str) -> Option<Match> {
        // Most messages match no rule: `is_match` stops early and avoids the overlapping
        // search `matches` needs, which is only run to find which rule matched. The built-in
        // rules are skipped for text without any of their words, a SIMD search several times
        // cheaper than the set's (case-insensitive literals give the regexes no SIMD
        // prefilter): 8 % of a replay's reading thread before, callgrind.
        let first = |set: &RegexSet, offset: usize| {
            if !set.is_match(text) {
                return None;
            }
            Some(offset + set.matches(text).into_iter().next()?)
        };
        let idx = self
            .extra
            .as_ref()
            .and_then(|set| first(set, 0))
            .or_else(|| {
                let (set, words) = self.builtin.as_ref()?;
                if !words.found_in(text) {
                    return None;
                }
                first(set, self.n_extra)
            })?;
        let rule = &self.rules[idx];
        let counter = rule.counter.map(|name| {
            let add = rule
                .add
                .as_deref()
                .and_then(|cap| {
                    rule.regex
                        .captures(text)?
                        .name(cap)?
                        .as_str()
                        .parse::<f64>()
                        .ok()
                        // A counter only grows: a negative or non-finite capture counts one.
                        .filter(|v| v.is_finite() && *v >= 0.0)
                })
                .unwrap_or(1.0);
            (name, add)
        });
        Some(Match {
            kind: rule.kind,
            level: rule.level,
            counter,
        })
    }

    /// The queue offset a line states (`offset=1234`, `offset: 1234`), if any.
    pub fn offset(&self, text: &str) -> Option<u64> {
        if self.ffset.find(text.as_bytes()).is_none()
            && self.ffset_upper.find(text.as_bytes()).is_none()
        {
            return None;
        }
        self.offset.captures(text)?.get(1)?.as_str().parse().ok()
    }
}

impl Default for Patterns {
    fn default() -> Self {
        Patterns::new(&[], false).expect("built-in patterns compile")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(text: &str) -> Option<&'static str> {
        Patterns::default().classify(text).map(|m| m.kind)
    }

    #[test]
    fn oom_wordings() {
        for t in [
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 324.00 MiB. GPU 0 has a total capacity of 7.63 GiB",
            "RuntimeError: CUDA error: out of memory",
            "RuntimeError: CUDA driver error: out of memory",
            "RuntimeError: cuda runtime error (2) : out of memory",
            "RuntimeError: HIP out of memory. Tried to allocate 2.00 GiB",
            "WARNING ⚠️ CUDA out of memory with batch=16. Reducing to batch=8 and retrying (1/3).",
        ] {
            assert_eq!(kind(t), Some("gpu_oom"), "{t}");
        }
        assert_eq!(kind("Docker container ran fine"), None);
    }

    #[test]
    fn checkpoints_and_queue() {
        assert_eq!(
            kind("Optimizer stripped from runs/detect/train/weights/last.pt, 6.3MB"),
            Some("checkpoint_saved")
        );
        assert_eq!(
            kind("Failed to save checkpoint to /azaion/models/last.pt: No space left on device"),
            Some("checkpoint_save_failed")
        );
        assert_eq!(
            kind(
                "Traceback (most recent call last):\n  File \"/usr/lib/python3/torch/serialization.py\", line 1, in save\n    torch.save(obj, f)\nOSError: [Errno 28] No space left on device"
            ),
            Some("checkpoint_save_failed")
        );
        assert_eq!(
            kind("ONNX: export success ✅ 3.3s, saved as 'best.onnx' (35.7 MB)"),
            Some("model_exported")
        );
        let p = Patterns::default();
        let m = p.classify("Processed 10 messages").unwrap();
        assert_eq!(m.counter, Some(("queue_messages_processed", 10.0)));
        let m = p.classify("Annotation saved: id=5 offset=77").unwrap();
        assert_eq!(
            (m.kind, m.counter),
            (
                "annotation_processed",
                Some(("queue_messages_processed", 1.0))
            )
        );
        assert_eq!(p.offset("Annotation saved: id=5 offset=77"), Some(77));
        assert_eq!(p.offset("offset: 12"), Some(12));
        assert_eq!(p.offset("offsets are fine"), None);
        assert_eq!(
            kind("Failed to process message offset=1234"),
            Some("annotation_failed")
        );
        // The seed's own words, with no rule written.
        for processed in [
            "Annotation 6f1c2a9e-41d2 saved (3 labels)",
            "Annotation a7:1204 saved",
            "annotation saved",
            "message processed",
        ] {
            assert_eq!(kind(processed), Some("annotation_processed"), "{processed}");
            assert_eq!(
                p.classify(processed).unwrap().counter,
                Some(("queue_messages_processed", 1.0)),
                "{processed}"
            );
        }
        for failed in [
            "Failed to process message",
            "skipped corrupt image frame_0042.jpg",
            "Skipping corrupted image in message 17",
        ] {
            assert_eq!(kind(failed), Some("annotation_failed"), "{failed}");
        }
        // Not every sentence with the words is one.
        assert_eq!(kind("Annotation schema loaded"), None);
        assert_eq!(kind("the annotation was saved later by someone"), None);
    }

    /// The kind the built-in rules give `text` without the word gate.
    fn ungated(set: &RegexSet, text: &str) -> Option<&'static str> {
        set.matches(text)
            .into_iter()
            .next()
            .map(|i| DEFAULTS[i].kind)
    }

    #[test]
    fn the_word_gate_never_hides_a_match() {
        let p = Patterns::default();
        let set = RegexSet::new(DEFAULTS.iter().map(|b| b.regex)).unwrap();
        // Every alternative of every built-in rule, in odd cases, and near misses.
        let mut texts: Vec<String> = [
            "RuntimeError: CUDA Out Of Memory. Tried to allocate 2 GiB",
            "torch.outofmemoryerror: x",
            "cublas_status_alloc_failed when calling cublasCreate",
            "RuntimeError: CUDA backend memory error",
            "WARNING: Fitness NaN/Inf detected, reverting",
            "Loss NaN/Inf detected at epoch 3",
            "NaN persisted for 3 epochs",
            "weights corrupted with NaN/Inf",
            "Traceback:\n  File \"serialization.py\", line 1\nOSError: disk",
            "  in save_model\nRuntimeError: x",
            "torch.save(ckpt)\nPermissionError: denied",
            "UNABLE to SAVE the checkpoint",
            "could not save weights to best.pt",
            "Checkpoint WRITING failed",
            "CHECKPOINT SAVED to last.pt",
            "Saving checkpoint at epoch 3",
            "Optimizer stripped from runs/detect/train/weights/best.pt, 5.5MB",
            "ONNX: export success 1.2s",
            "FAILED TO PROCESS MESSAGE 17",
            "Error handling the annotation 9",
            "Annotation Rejected: bad polygon",
            "message processing failed",
            "PROCESSED 12 ANNOTATIONS",
            "Annotation stored id=3",
            "Processed message 7",
            "Message processed",
            "processed",
            "nothing here",
            "",
        ]
        .map(String::from)
        .to_vec();
        // And every line of the real captures.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");
        for sub in ["ultralytics", "queue"] {
            for entry in std::fs::read_dir(format!("{dir}/{sub}")).unwrap() {
                let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
                texts.extend(text.lines().map(str::to_string));
                texts.extend(text.split(['\r', '\n']).map(str::to_string));
            }
        }
        assert!(texts.len() > 1000, "{}", texts.len());
        let mut matched = 0;
        for t in &texts {
            let want = ungated(&set, t);
            matched += usize::from(want.is_some());
            assert_eq!(p.classify(t).map(|m| m.kind), want, "{t:?}");
        }
        assert!(matched >= 25, "{matched}");
    }

    /// A config rule counting processed messages by its capture `n`.
    fn counting_rule(regex: &str) -> PatternConfig {
        PatternConfig {
            regex: regex.into(),
            kind: "annotation_processed".into(),
            counter: Some("queue_messages_processed".into()),
            add: Some("n".into()),
            level: None,
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        /// Texts built from the rules' own words and fragments, in any case, get the same kind
        /// with the gate as without.
        #[test]
        fn the_gate_agrees_with_the_set_on_made_up_messages(
            parts in proptest::collection::vec(
                proptest::prop_oneof![
                    "(?i)(out of memory|cuda|nan/inf detected|nan persisted for 3 epochs|checkpoint|saved|saving|save|sav|failed|error|unable|weights|\\.pt|export success|processed|annotation|message|messages|failed to|processing|handling|rejected|optimizer stripped from )",
                    "[ \n:=0-9]{0,3}",
                    ".{0,8}",
                ],
                0..10,
            )
        ) {
            static BUILT: std::sync::LazyLock<(Patterns, RegexSet)> = std::sync::LazyLock::new(|| {
                (Patterns::default(), RegexSet::new(DEFAULTS.iter().map(|b| b.regex)).unwrap())
            });
            let (p, set) = &*BUILT;
            let text: String = parts.concat();
            proptest::prop_assert_eq!(p.classify(&text).map(|m| m.kind), ungated(set, &text), "{:?}", text);
        }
    }

    #[test]
    fn config_rules_are_not_gated_by_the_builtin_words() {
        let extra = [counting_rule(r"^Zebra (?P<n>\d+)")];
        for replace in [false, true] {
            let p = Patterns::new(&extra, replace).unwrap();
            assert_eq!(
                p.classify("Zebra 4").unwrap().counter,
                Some(("queue_messages_processed", 4.0))
            );
            assert_eq!(
                p.classify("CUDA out of memory").map(|m| m.kind),
                (!replace).then_some("gpu_oom")
            );
        }
    }

    #[test]
    fn config_rules_take_priority_and_are_validated() {
        let extra = [counting_rule(r"^Handled batch of (?P<n>\d+)")];
        let p = Patterns::new(&extra, false).unwrap();
        assert_eq!(
            p.classify("Handled batch of 7").unwrap().counter,
            Some(("queue_messages_processed", 7.0))
        );
        let bad = [PatternConfig {
            add: Some("missing".into()),
            ..extra[0].clone()
        }];
        assert!(Patterns::new(&bad, false).is_err());
        let bad = [PatternConfig {
            regex: "(".into(),
            ..extra[0].clone()
        }];
        assert!(Patterns::new(&bad, false).is_err());
    }
}
