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

#[cfg(test)]
mod tests {
    use super::strip;

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
