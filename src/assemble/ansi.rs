//! Removes ANSI escape sequences: CSI (`ESC [ ... final`, the colours `colorstr()` emits and the
//! `\x1b[K` erase-line of Ultralytics' bar), OSC (`ESC ] ... BEL|ESC \`), and two-byte escapes.

use std::borrow::Cow;

/// Returns `s` without escape sequences; borrows when there is none (the common case).
pub fn strip(s: &str) -> Cow<'_, str> {
    if !s.as_bytes().contains(&0x1b) {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != 0x1b {
            out.push(b[i]);
            i += 1;
            continue;
        }
        i += 1;
        match b.get(i) {
            Some(b'[') => {
                // CSI: parameter and intermediate bytes 0x20..=0x3f, then one final byte
                // 0x40..=0x7e.
                i += 1;
                while i < b.len() && (0x20..=0x3f).contains(&b[i]) {
                    i += 1;
                }
                if i < b.len() && (0x40..=0x7e).contains(&b[i]) {
                    i += 1;
                }
            }
            Some(b']') => {
                i += 1;
                while i < b.len() {
                    if b[i] == 0x07 {
                        i += 1;
                        break;
                    }
                    if b[i] == 0x1b && b.get(i + 1) == Some(&b'\\') {
                        i += 2;
                        break;
                    }
                    i += 1;
                }
            }
            Some(c) if (0x40..=0x5f).contains(c) || *c == b'(' || *c == b')' => {
                i += 1;
                if (c == &b'(' || c == &b')') && i < b.len() && b[i].is_ascii() {
                    i += 1;
                }
            }
            _ => {}
        }
    }
    // Only whole ASCII escape sequences were removed, so UTF-8 stays valid; fall back to a
    // lossy conversion rather than panic if that assumption is ever wrong.
    Cow::Owned(
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
    )
}

/// Returns `s` fit for a terminal and a page: escape sequences removed (as [`strip`]), then
/// every other control character but `\t` and `\n` (C0, DEL, and C1 such as U+009B, the
/// one-character CSI) dropped. A message a JSON logger wrote with `\u001b]0;...\u0007` can
/// then neither retitle a window, clear a screen nor disguise a link where it is shown.
pub fn without_controls(s: &str) -> Cow<'_, str> {
    let is_bad = |c: char| c.is_control() && c != '\t' && c != '\n';
    if !s.chars().any(is_bad) {
        return Cow::Borrowed(s);
    }
    let stripped = strip(s);
    Cow::Owned(stripped.chars().filter(|c| !is_bad(*c)).collect())
}

#[cfg(test)]
mod tests {
    use super::{strip, without_controls};

    #[test]
    fn controls_of_every_kind_are_dropped() {
        assert_eq!(
            without_controls(
                "\u{1b}]0;pwned\u{7}\u{1b}[2JTraining \u{9b}31mstarted\r\u{7f}\tok\nnext"
            ),
            "Training 31mstarted\tok\nnext"
        );
        assert_eq!(
            without_controls("\u{1b}]8;;http://evil/\u{1b}\\click\u{1b}]8;;\u{1b}\\"),
            "click"
        );
        assert!(matches!(
            without_controls("plain ✅"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn colorstr_and_erase_line() {
        assert_eq!(
            strip("\x1b[34m\x1b[1mAMP: \x1b[0mchecks passed ✅"),
            "AMP: checks passed ✅"
        );
        assert_eq!(strip("\x1b[K      1/100"), "      1/100");
        assert_eq!(
            strip("Results saved to \x1b[1mruns/detect/train\x1b[0m"),
            "Results saved to runs/detect/train"
        );
    }

    #[test]
    fn osc_and_truncated_sequences() {
        assert_eq!(strip("a\x1b]0;title\x07b"), "ab");
        assert_eq!(strip("a\x1b]8;;http://x\x1b\\b"), "ab");
        assert_eq!(strip("tail\x1b["), "tail");
        assert_eq!(strip("tail\x1b"), "tail");
        assert_eq!(strip("plain"), "plain");
    }
}
