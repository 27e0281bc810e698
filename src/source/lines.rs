//! A line reader with a length cap: a corrupt file with no newline for gigabytes must not
//! grow memory without bound. Lines longer than the cap are cut; the rest up to the next
//! newline is discarded and reported.

use std::io::{BufRead, BufReader, Read};

/// What one call read.
#[derive(Debug, PartialEq, Eq)]
pub enum LineRead {
    /// A line (without its `\n`); `ended` is false for a last line without newline.
    Line {
        ended: bool,
        cut: bool,
    },
    Eof,
}

pub struct CappedLines<R> {
    inner: BufReader<R>,
    cap: usize,
}

impl<R: Read> CappedLines<R> {
    pub fn new(inner: R, cap: usize) -> Self {
        CappedLines {
            inner: BufReader::with_capacity(1 << 20, inner),
            cap,
        }
    }

    /// Reads the next line into `buf` (cleared first).
    pub fn next_line(&mut self, buf: &mut Vec<u8>) -> std::io::Result<LineRead> {
        buf.clear();
        let mut cut = false;
        loop {
            let avail = match self.inner.fill_buf() {
                Ok(a) => a,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if avail.is_empty() {
                return Ok(if buf.is_empty() && !cut {
                    LineRead::Eof
                } else {
                    LineRead::Line { ended: false, cut }
                });
            }
            match memchr::memchr(b'\n', avail) {
                Some(i) => {
                    let room = self.cap.saturating_sub(buf.len());
                    if i > room {
                        cut = true;
                    }
                    buf.extend_from_slice(&avail[..i.min(room)]);
                    self.inner.consume(i + 1);
                    return Ok(LineRead::Line { ended: true, cut });
                }
                None => {
                    let n = avail.len();
                    let room = self.cap.saturating_sub(buf.len());
                    if n > room {
                        cut = true;
                    }
                    buf.extend_from_slice(&avail[..n.min(room)]);
                    self.inner.consume(n);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_long_lines_and_keeps_the_next() {
        let data = format!("{}\nshort\nlast", "x".repeat(100));
        let mut r = CappedLines::new(data.as_bytes(), 10);
        let mut b = Vec::new();
        assert_eq!(
            r.next_line(&mut b).unwrap(),
            LineRead::Line {
                ended: true,
                cut: true
            }
        );
        assert_eq!(b.len(), 10);
        assert_eq!(
            r.next_line(&mut b).unwrap(),
            LineRead::Line {
                ended: true,
                cut: false
            }
        );
        assert_eq!(b, b"short");
        assert_eq!(
            r.next_line(&mut b).unwrap(),
            LineRead::Line {
                ended: false,
                cut: false
            }
        );
        assert_eq!(b, b"last");
        assert_eq!(r.next_line(&mut b).unwrap(), LineRead::Eof);
    }
}
