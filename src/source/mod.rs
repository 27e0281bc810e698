//! Sources: where raw lines come from. Each yields [`crate::event::RawLine`]s in log order with
//! a resumable position ([`crate::event::Key`]) and counts what it had to skip.
//!
//! - [`docker`] follows containers live through the Engine API.
//! - [`files`] plans a replay: which files form a rotated set, in which order, in which format.
//! - [`jsonfile`] reads Docker `json-file` logs; [`partial`] merges Docker's 16 KiB pieces.
//! - [`text`] reads plain text logs (`docker logs` output, Python's rotating handler files).
//! - [`probes`] samples the host: GPUs (`nvidia-smi`), disk usage, the queue offset file.

pub mod docker;
pub mod files;
pub mod jsonfile;
pub mod lines;
pub mod partial;
pub mod probes;
pub mod runfolder;
pub mod text;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// `String::from_utf8` with a SIMD validator: log text is mostly ASCII with runs of multi-byte
/// characters (progress bars are `━` and `█`), where the standard validator goes byte by byte
/// (5 % of a replay's reading thread, callgrind). Gives the bytes back when they are not UTF-8.
pub fn utf8_string(bytes: Vec<u8>) -> Result<String, Vec<u8>> {
    if simdutf8::basic::from_utf8(&bytes).is_err() {
        return Err(bytes);
    }
    // SAFETY: the bytes were just validated as UTF-8.
    Ok(unsafe { String::from_utf8_unchecked(bytes) })
}

/// Every reason input is skipped (or a record kept with a note) for: `/metrics` shows each,
/// at 0 until it happens, so a dashboard or an alert on one has a series from the start.
pub const SKIP_REASONS: &[&str] = &[
    "bad_results_row",
    "bad_stream",
    "bad_time",
    "clock_skew",
    "file_unreadable",
    "invalid_json",
    "invalid_service_json",
    "invalid_utf8_replaced",
    "line_too_long",
    "log_lost",
    "merge_capped",
    "read_error",
    "run_folder_unreadable",
    "service_json_not_object",
    "truncated_gzip",
];

/// Counted, logged skips by reason. Good records around a bad one are never lost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Skips {
    pub by_reason: BTreeMap<&'static str, u64>,
}

use crate::telemetry::events::{InternalEvent, SourceSkipped};

impl Skips {
    /// Counts a skip and logs the first few of each reason with file and line.
    pub fn record(&mut self, reason: &'static str, path: &Path, line: u64, detail: &str) {
        let n = self.by_reason.entry(reason).or_insert(0);
        *n += 1;
        SourceSkipped {
            reason,
            file: path,
            line,
            detail,
            nth: *n,
        }
        .emit();
    }

    pub fn merge(&mut self, other: &Skips) {
        for (k, v) in &other.by_reason {
            *self.by_reason.entry(k).or_insert(0) += v;
        }
    }

    pub fn total(&self) -> u64 {
        self.by_reason.values().sum()
    }
}

/// Where a line came from, for the dedup key and error messages.
pub trait LineSource: Iterator<Item = crate::event::RawLine> {
    /// The origin part of the cursor key: `""` for Docker streams, a content fingerprint for
    /// plain text files.
    fn origin(&self) -> &str;
    fn skips(&self) -> &Skips;
    /// Bytes read from disk so far (compressed size for gzip).
    fn bytes_read(&self) -> u64;
}

/// `inner` with a byte counter.
fn counted<R>(inner: R) -> (Counting<R>, CountingHandle) {
    let n = CountingHandle::default();
    (
        Counting {
            inner,
            n: n.clone(),
        },
        n,
    )
}

/// The decompressed stream of gzip members (concatenated ones too, as `zcat` reads them).
fn gunzip<R: std::io::Read + Send + 'static>(r: R) -> Box<dyn std::io::Read + Send> {
    Box::new(flate2::read::MultiGzDecoder::new(
        std::io::BufReader::with_capacity(256 * 1024, r),
    ))
}

pub(crate) fn open_maybe_gz(
    path: &Path,
) -> std::io::Result<(Box<dyn std::io::Read + Send>, CountingHandle)> {
    let (counted, counter) = counted(std::fs::File::open(path)?);
    let gz = path.extension().is_some_and(|e| e == "gz");
    let r: Box<dyn std::io::Read + Send> = if gz {
        gunzip(counted)
    } else {
        Box::new(counted)
    };
    Ok((r, counter))
}

/// How many bytes of a non-seekable input are read ahead to sniff its format and fingerprint it
/// (a text file's origin is the fingerprint of its first 4 KiB).
const PIPED_HEAD: usize = 4096;

/// Whether `path` is an input that can be read only once: `-` (standard input), a pipe (a shell's
/// `<(...)` is `/dev/fd/N`), a named FIFO, a socket or a character device.
pub fn is_stream(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    if path.as_os_str() == "-" {
        return true;
    }
    std::fs::metadata(path).is_ok_and(|m| {
        let t = m.file_type();
        t.is_fifo() || t.is_socket() || t.is_char_device()
    })
}

/// A non-seekable input opened once: its first bytes (decompressed when it is gzip) are read
/// ahead, so the format can be sniffed and a text origin fingerprinted from them, and then
/// handed back in front of the rest. Opening a named FIFO waits for its writer, as `cat` does.
pub struct Piped {
    head: Vec<u8>,
    rest: std::sync::Mutex<Option<Box<dyn std::io::Read + Send>>>,
}

impl std::fmt::Debug for Piped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Piped")
            .field("head_bytes", &self.head.len())
            .finish_non_exhaustive()
    }
}

impl PartialEq for Piped {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

/// Reads up to `n` bytes (fewer only at the end of input).
fn read_head(r: &mut dyn std::io::Read, n: usize) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(n);
    std::io::Read::take(r, n as u64).read_to_end(&mut head)?;
    Ok(head)
}

impl Piped {
    /// Opens `path` (`-` is standard input) and reads its head.
    pub fn open(path: &Path) -> std::io::Result<Piped> {
        let mut raw: Box<dyn std::io::Read + Send> = if path.as_os_str() == "-" {
            #[expect(
                clippy::disallowed_methods,
                reason = "the one reader of standard input"
            )]
            Box::new(std::io::stdin())
        } else {
            Box::new(std::fs::File::open(path)?)
        };
        let magic = read_head(&mut raw, 2)?;
        let gz = magic == [0x1f, 0x8b];
        let whole = std::io::Cursor::new(magic).chain(raw);
        let mut r: Box<dyn std::io::Read + Send> = if gz { gunzip(whole) } else { Box::new(whole) };
        let head = read_head(&mut r, PIPED_HEAD)?;
        Ok(Piped {
            head,
            rest: std::sync::Mutex::new(Some(r)),
        })
    }

    /// The first bytes of the input (decompressed), up to 4 KiB.
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// The whole input from its first byte; `None` once taken (it can be read only once).
    pub fn take(&self) -> Option<Box<dyn std::io::Read + Send>> {
        let rest = self.rest.lock().ok()?.take()?;
        Some(Box::new(
            std::io::Cursor::new(self.head.clone()).chain(rest),
        ))
    }
}

/// Shared byte counter of a file being read.
#[derive(Clone, Debug, Default)]
pub struct CountingHandle(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl CountingHandle {
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

struct Counting<R> {
    inner: R,
    n: CountingHandle,
}

impl<R: std::io::Read> std::io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n
            .0
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// The file currently open in a [`FileChain`].
struct OpenFile {
    lines: lines::CappedLines<Box<dyn std::io::Read + Send>>,
    counter: CountingHandle,
    path: std::path::PathBuf,
}

/// One physical line read by a [`FileChain`].
pub struct ChainLine {
    /// False for a last line without a newline.
    pub ended: bool,
    /// True when the line was longer than the cap and cut.
    pub cut: bool,
    /// True when this line is the first of a new file in the chain.
    pub new_file: bool,
}

/// An ordered set of files read as one sequence of lines, oldest first. Open failures, read
/// errors and truncated gzip members are counted skips; what was read before them is kept and
/// reading goes on with the next file.
pub struct FileChain {
    files: Vec<std::path::PathBuf>,
    /// The already opened reader of the first file, for an input that can be read only once.
    first: Option<Box<dyn std::io::Read + Send>>,
    next_file: usize,
    cur: Option<OpenFile>,
    cap: usize,
    line_no: u64,
    bytes_done: u64,
    fresh: bool,
}

impl FileChain {
    pub fn new(files: Vec<std::path::PathBuf>, cap: usize) -> Self {
        FileChain {
            files,
            first: None,
            next_file: 0,
            cur: None,
            cap,
            line_no: 0,
            bytes_done: 0,
            fresh: false,
        }
    }

    /// A chain of one input that can be read only once, read from `reader`; `path` names it
    /// in skips and errors.
    pub fn piped(
        path: std::path::PathBuf,
        reader: Box<dyn std::io::Read + Send>,
        cap: usize,
    ) -> Self {
        let mut chain = FileChain::new(vec![path], cap);
        chain.first = Some(reader);
        chain
    }

    /// Path of the file being read (or last read).
    pub fn path(&self) -> &Path {
        match &self.cur {
            Some(f) => &f.path,
            None => self
                .files
                .get(self.next_file.saturating_sub(1))
                .map(|p| p.as_path())
                .unwrap_or(Path::new("")),
        }
    }

    /// 1-based line number within the current file of the line last read.
    pub fn line_no(&self) -> u64 {
        self.line_no
    }

    /// Bytes read from disk so far (compressed size for gzip).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_done + self.cur.as_ref().map(|f| f.counter.get()).unwrap_or(0)
    }

    fn close(&mut self) {
        if let Some(f) = self.cur.take() {
            self.bytes_done += f.counter.get();
        }
    }

    /// Reads the next line into `buf`; `None` at the end of the last file.
    pub fn next_line(&mut self, buf: &mut Vec<u8>, skips: &mut Skips) -> Option<ChainLine> {
        loop {
            if self.cur.is_none() {
                let path = self.files.get(self.next_file)?.clone();
                self.next_file += 1;
                let opened = match self.first.take() {
                    Some(r) => {
                        let (r, n) = counted(r);
                        Ok((Box::new(r) as Box<dyn std::io::Read + Send>, n))
                    }
                    None => open_maybe_gz(&path),
                };
                match opened {
                    Ok((r, counter)) => {
                        self.cur = Some(OpenFile {
                            lines: lines::CappedLines::new(r, self.cap),
                            counter,
                            path,
                        });
                        self.line_no = 0;
                        self.fresh = true;
                    }
                    Err(e) => {
                        skips.record("file_unreadable", &path, 0, &e.to_string());
                        continue;
                    }
                }
            }
            let f = self.cur.as_mut().expect("opened above");
            match f.lines.next_line(buf) {
                Ok(lines::LineRead::Eof) => self.close(),
                Ok(lines::LineRead::Line { ended, cut }) => {
                    self.line_no += 1;
                    let new_file = std::mem::take(&mut self.fresh);
                    return Some(ChainLine {
                        ended,
                        cut,
                        new_file,
                    });
                }
                Err(e) => {
                    // Truncated gzip, a file that vanished or an I/O error: keep what was read.
                    let reason = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        "truncated_gzip"
                    } else {
                        "read_error"
                    };
                    let path = f.path.clone();
                    skips.record(reason, &path, self.line_no, &e.to_string());
                    self.close();
                }
            }
        }
    }
}
