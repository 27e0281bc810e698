//! Progress-bar frames. tqdm writes `'\r' + frame + padding` per redraw and Ultralytics' own
//! bar (>= 8.3.186) `'\r\x1b[K' + frame`, with `\n` only on close, so a Docker entry can hold
//! hundreds of frames. The final state is the last non-empty frame; every frame is checked for a
//! non-finite loss because a NaN that a later running mean hides is still a NaN.

use super::ansi;
use crate::grammar::ultralytics;

/// Returns the clean final frame of `raw` and, if any frame showed a NaN or infinite loss, that
/// frame (clean).
pub fn final_frame(raw: &str) -> (String, Option<String>) {
    // A TTY container ends lines with "\r\n"; that `\r` is not a redraw.
    let raw = raw.strip_suffix('\r').unwrap_or(raw);
    if !raw.contains('\r') {
        return (ansi::strip(raw).into_owned(), None);
    }
    let nonfinite = first_nonfinite(raw);
    let last = raw
        .rsplit('\r')
        .map(|f| ansi::strip(f))
        .find(|f| !f.trim().is_empty())
        .map(|f| f.trim_end().to_string())
        .unwrap_or_default();
    (last, nonfinite)
}

/// The first `\r` frame of `raw` that is a progress row with a NaN or infinite loss, clean.
/// Also used on the pieces of a bar that has not ended yet, so a NaN shows up live.
pub fn first_nonfinite(raw: &str) -> Option<String> {
    if !has_nonfinite_token(raw) {
        return None;
    }
    raw.split('\r').find_map(|frame| {
        let clean = ansi::strip(frame);
        ultralytics::progress_row(&clean)
            .filter(|p| p.values.iter().any(|v| !v.is_finite()))
            .map(|_| clean.trim_end().to_string())
    })
}

/// Cheap pre-check before parsing every frame: `%11.4g` prints NaN as `nan` and infinity as
/// `inf`, both preceded by a space or a minus sign.
fn has_nonfinite_token(s: &str) -> bool {
    memchr::memmem::find(s.as_bytes(), b" nan").is_some()
        || memchr::memmem::find(s.as_bytes(), b"inf").is_some()
}

#[cfg(test)]
mod tests {
    use super::final_frame;

    #[test]
    fn new_style_bar_keeps_last_frame() {
        let raw = "\r\x1b[K      1/100      2.41G      1.234      2.345      1.123         45        640: 0% ──────────── 0/5  0.1s\r\x1b[K      1/100      2.41G      1.194      2.345      1.123         49        640: 100% ━━━━━━━━━━━━ 5/5 8.3it/s 0.6s";
        let (text, nf) = final_frame(raw);
        assert_eq!(
            text,
            "      1/100      2.41G      1.194      2.345      1.123         49        640: 100% ━━━━━━━━━━━━ 5/5 8.3it/s 0.6s"
        );
        assert_eq!(nf, None);
    }

    #[test]
    fn nan_in_an_intermediate_frame_is_kept() {
        let raw = "\r      1/100      2.41G        nan      2.345      1.123         47        640:  40%|████      | 2/5 [00:00<00:00,  8.30it/s]\r      1/100      2.41G      1.194      2.345      1.123         49        640: 100%|██████████| 5/5 [00:00<00:00,  8.30it/s]   ";
        let (text, nf) = final_frame(raw);
        assert!(text.ends_with("8.30it/s]"), "{text}");
        assert!(nf.unwrap().contains("nan"));
    }

    #[test]
    fn tty_crlf_is_not_a_frame() {
        assert_eq!(final_frame("hello\r").0, "hello");
        assert_eq!(final_frame("a\rb\r").0, "b");
    }

    #[test]
    fn empty_trailing_frame_is_skipped() {
        assert_eq!(final_frame("first\r\x1b[K").0, "first");
    }
}
