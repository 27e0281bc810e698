//! Finding any of a few fixed words in text, in any case (as a `(?i)` regex sees case), fast:
//! the secret triggers of [`crate::redact`] and the words that gate the message patterns of
//! [`crate::parse::patterns`].
//!
//! A case-insensitive aho-corasick automaton builds no SIMD prefilter for such lists and walks
//! every byte; lowercasing a copy and searching it with the SIMD (Teddy) searcher measured about
//! ten times cheaper on a 100-byte message.

use std::cell::RefCell;

/// A set of lowercase words.
pub struct AnyCase {
    packed: Option<aho_corasick::packed::Searcher>,
    /// For CPUs the SIMD searcher does not support.
    automaton: aho_corasick::AhoCorasick,
}

impl std::fmt::Debug for AnyCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnyCase")
            .field("simd", &self.packed.is_some())
            .finish_non_exhaustive()
    }
}

impl AnyCase {
    /// `words` must be lowercase.
    pub fn new<S: AsRef<str>>(words: &[S]) -> AnyCase {
        assert!(
            words
                .iter()
                .all(|w| w.as_ref() == w.as_ref().to_ascii_lowercase()),
            "words are given in lowercase"
        );
        let words: Vec<&str> = words.iter().map(AsRef::as_ref).collect();
        AnyCase {
            packed: aho_corasick::packed::Searcher::new(&words),
            automaton: aho_corasick::AhoCorasick::new(&words).expect("a short fixed word list"),
        }
    }

    /// Whether `s` contains one of the words in any case, as a `(?i)` regex sees case.
    pub fn found_in(&self, s: &str) -> bool {
        thread_local! {
            static FOLDED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        FOLDED.with_borrow_mut(|buf| {
            buf.clear();
            buf.extend_from_slice(s.as_bytes());
            buf.make_ascii_lowercase();
            if !s.is_ascii() {
                fold_non_ascii(buf);
            }
            let found = match &self.packed {
                Some(p) => p.find(buf.as_slice()).is_some(),
                None => self.automaton.is_match(buf.as_slice()),
            };
            // A rare huge record must not keep its copy alive.
            if buf.capacity() > 1 << 20 {
                *buf = Vec::new();
            }
            found
        })
    }
}

/// Unicode's simple case folding, which `(?i)` regexes follow, maps two non-ASCII characters
/// onto ASCII letters: the Kelvin sign `K` onto `k` and the long `ſ` onto `s`. They are folded
/// too, so that a word gate in front of such regexes hides no match. Their last bytes (0xAA,
/// 0xBF; not those of the box-drawing characters progress bars are made of) are looked for
/// first, with one SIMD scan.
fn fold_non_ascii(buf: &mut Vec<u8>) {
    if memchr::memchr2(0xAA, 0xBF, buf).is_none() {
        return;
    }
    let Ok(text) = std::str::from_utf8(buf) else {
        return;
    };
    if !text.contains(['\u{212A}', '\u{17F}']) {
        return;
    }
    let folded = text.replace('\u{212A}', "k").replace('\u{17F}', "s");
    buf.clear();
    buf.extend_from_slice(folded.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_match_in_any_case_with_either_searcher() {
        let with_simd = AnyCase::new(&["token", "api_key", "://"]);
        let without = AnyCase {
            packed: None,
            ..AnyCase::new(&["token", "api_key", "://"])
        };
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("ssse3") {
            assert!(with_simd.packed.is_some());
        }
        for (s, want) in [
            ("accessToken=1", true),
            ("X-API_KEY", true),
            ("s3://bucket", true),
            ("tok en", false),
            ("", false),
            (
                "a long line without any of the words in it, longer than teddy's minimum",
                false,
            ),
            ("a long line that ends with the word TOKEN", true),
        ] {
            assert_eq!(with_simd.found_in(s), want, "{s}");
            assert_eq!(without.found_in(s), want, "{s}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        /// The same answer as a `(?i)` regex of the words, for any text (non-ASCII included)
        /// and any length on either side of the SIMD searcher's minimum.
        #[test]
        fn the_same_as_a_case_insensitive_regex(
            parts in proptest::collection::vec(
                proptest::prop_oneof![
                    "(?i)(token|api_key|://|pass)",
                    "[kKsS\u{212A}\u{17F}]{1,3}",
                    ".{0,12}",
                    "[a-zA-Z_:/ ]{0,30}",
                ],
                0..8,
            )
        ) {
            static BUILT: std::sync::LazyLock<(AnyCase, regex::Regex)> = std::sync::LazyLock::new(|| {
                let words = ["token", "api_key", "://", "pass"];
                let escaped: Vec<String> = words.iter().map(|w| regex::escape(w)).collect();
                let reference = regex::Regex::new(&format!("(?i){}", escaped.join("|"))).unwrap();
                (AnyCase::new(&words), reference)
            });
            let (set, reference) = &*BUILT;
            let text: String = parts.concat();
            proptest::prop_assert_eq!(set.found_in(&text), reference.is_match(&text), "{:?}", text);
        }
    }
}
