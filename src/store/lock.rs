//! One ingestor per database. `watch` and `replay` hold an exclusive advisory lock (`flock`) on
//! `<db>.lock` for as long as they run; the kernel drops it with the process, so a crashed
//! holder never blocks anyone. The file says who holds it (`watch pid 1234 since ...`).
//!
//! A second `watch`, or a `replay` while a `watch` runs, is refused with the holder named (two
//! ingestors would both run the alert rules and notify twice). A `replay` meeting another
//! `replay`, or a `watch` meeting a `replay`, waits for it: a replay ends. The commands that
//! write by hand (`prune`, `alerts ack`) are not ingestors: they wait on SQLite's locks.
//!
//! The file also says, while `watch` cannot commit (a full disk), since when and why: `health`
//! and `status` read it (only while the lock is held) and say CRITICAL at once, where the
//! store itself cannot be told. The file is written in full at start ([`NOTE_BYTES`]), so that
//! the note overwrites bytes already on disk and needs no new block of a full disk.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::StoreOutage;

pub use crate::error::LockError;

/// What takes the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingestor {
    Watch,
    Replay,
}

impl Ingestor {
    fn as_str(self) -> &'static str {
        match self {
            Ingestor::Watch => "watch",
            Ingestor::Replay => "replay",
        }
    }
}

/// The size of the lock file: the holder's line and the store's state, padded.
pub const NOTE_BYTES: usize = 4096;

/// The second line while the store cannot be written.
const OUTAGE_PREFIX: &str = "store not writable since ";

/// How long a busy lock is tried again before its holder is judged: `health` holds it shared
/// for a moment to see whether anyone holds it.
const BUSY_RETRY: Duration = Duration::from_secs(2);

/// The lock, held until dropped.
#[derive(Debug)]
pub struct IngestLock {
    file: Arc<File>,
    holder: String,
}

/// Writes the store's state into the lock file of a held lock.
#[derive(Clone, Debug)]
pub struct LockNote {
    file: Arc<File>,
    holder: String,
}

impl LockNote {
    /// Says that the store cannot be written (`Some`), or can again (`None`).
    pub fn store_outage(&self, outage: Option<&StoreOutage>) {
        let text = note_text(&self.holder, outage);
        if let Err(e) = self.file.write_at(text.as_bytes(), 0) {
            tracing::warn!(error = %e, "Cannot note the store's state in the lock file.");
        }
    }
}

/// The lock file's content: the holder, the outage, spaces to [`NOTE_BYTES`].
fn note_text(holder: &str, outage: Option<&StoreOutage>) -> String {
    let mut text = format!("{holder}\n");
    if let Some(o) = outage {
        let error: String = o
            .error
            .replace(['\n', '\r'], " ")
            .chars()
            .take(3000)
            .collect();
        text.push_str(&format!(
            "{OUTAGE_PREFIX}{}: {error}\n",
            crate::time::format_ns(o.since)
        ));
    }
    while text.len() < NOTE_BYTES {
        text.push(' ');
    }
    text.truncate(NOTE_BYTES);
    text
}

/// The outage the holder of `db`'s lock noted, while it holds the lock (a note left by a
/// process that is gone says nothing).
pub fn held_outage(db: &Path) -> Option<StoreOutage> {
    let mut file = File::open(lock_path(db)).ok()?;
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            return None;
        }
        Err(TryLockError::WouldBlock) => {}
        Err(TryLockError::Error(_)) => return None,
    }
    let mut text = String::new();
    Read::by_ref(&mut file)
        .take(NOTE_BYTES as u64)
        .read_to_string(&mut text)
        .ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix(OUTAGE_PREFIX))?;
    let (since, error) = line.split_once(": ")?;
    Some(StoreOutage {
        since: crate::time::parse_rfc3339(since)?,
        error: error.trim().to_string(),
    })
}

/// `<db>.lock`.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

impl IngestLock {
    /// Takes the lock of `db` for `me`: at once, after waiting for a `replay` that holds it
    /// (`waiting` is called once, with the holder, before the wait), or refused when a `watch`
    /// holds it.
    pub fn acquire(
        db: &Path,
        me: Ingestor,
        waiting: impl FnOnce(&str),
    ) -> Result<IngestLock, LockError> {
        let path = lock_path(db);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        // Where the database is about to be created (as opening it for writing does).
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match try_lock_busy(&file) {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = holder(&mut file);
                let by_watch = holder.starts_with(Ingestor::Watch.as_str());
                if by_watch || (me == Ingestor::Watch && holder.is_empty()) {
                    return Err(LockError::InUse {
                        path: db.to_path_buf(),
                        holder: if holder.is_empty() {
                            "holder unknown".into()
                        } else {
                            holder
                        },
                    });
                }
                waiting(&holder);
                file.lock().map_err(io)?;
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        let me = format!(
            "{} pid {} since {}",
            me.as_str(),
            std::process::id(),
            crate::time::format_ns(crate::time::now_ns())
        );
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(note_text(&me, None).as_bytes())
            .map_err(io)?;
        file.flush().map_err(io)?;
        Ok(IngestLock {
            file: Arc::new(file),
            holder: me,
        })
    }

    /// A handle that notes the store's state in the lock file while the lock is held.
    pub fn note(&self) -> LockNote {
        LockNote {
            file: self.file.clone(),
            holder: self.holder.clone(),
        }
    }
}

/// Takes the lock at once, trying again for [`BUSY_RETRY`] while it is busy: a `health`
/// looking whether anyone holds it holds it shared for a moment.
fn try_lock_busy(file: &File) -> Result<(), TryLockError> {
    let start = Instant::now();
    loop {
        match file.try_lock() {
            Err(TryLockError::WouldBlock) if start.elapsed() < BUSY_RETRY => {
                std::thread::sleep(Duration::from_millis(50));
            }
            r => return r,
        }
    }
}

/// What the holder wrote in the lock file: its first line (empty if nothing yet).
fn holder(file: &mut File) -> String {
    let mut s = String::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.take(512).read_to_string(&mut s);
    s.lines().next().unwrap_or("").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_watch_is_refused_a_replay_waits_a_dropped_lock_frees() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let w = IngestLock::acquire(&db, Ingestor::Watch, |_| panic!("no wait")).unwrap();
        let holder = std::fs::read_to_string(lock_path(&db)).unwrap();
        assert!(
            holder.starts_with(&format!("watch pid {} since ", std::process::id())),
            "{holder}"
        );
        for me in [Ingestor::Watch, Ingestor::Replay] {
            let e = IngestLock::acquire(&db, me, |_| panic!("no wait")).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("in use by another trainwatch (watch pid ") && msg.contains("t.db"),
                "{msg}"
            );
        }
        drop(w);
        // A replay holds it: a second replay waits for it, then has it.
        let r = IngestLock::acquire(&db, Ingestor::Replay, |_| panic!("no wait")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let db2 = db.clone();
        let t = std::thread::spawn(move || {
            let l = IngestLock::acquire(&db2, Ingestor::Replay, |h| {
                tx.send(h.to_string()).unwrap();
            })
            .unwrap();
            drop(l);
        });
        let waited_for = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert!(waited_for.starts_with("replay pid "), "{waited_for}");
        drop(r);
        t.join().unwrap();
    }

    #[test]
    fn the_holder_notes_an_outage_others_read_while_it_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let w = IngestLock::acquire(&db, Ingestor::Watch, |_| panic!("no wait")).unwrap();
        assert_eq!(held_outage(&db), None);
        let since = crate::time::parse_rfc3339("2026-12-07T10:00:00Z").unwrap();
        w.note().store_outage(Some(&StoreOutage {
            since,
            error: "database or disk is full\nsecond line".into(),
        }));
        assert_eq!(
            std::fs::metadata(lock_path(&db)).unwrap().len(),
            NOTE_BYTES as u64
        );
        assert_eq!(
            held_outage(&db),
            Some(StoreOutage {
                since,
                error: "database or disk is full second line".into()
            })
        );
        // The holder's line is still what a second ingestor is told.
        let e = IngestLock::acquire(&db, Ingestor::Replay, |_| panic!("no wait")).unwrap_err();
        assert!(e.to_string().contains("(watch pid "), "{e}");
        w.note().store_outage(None);
        assert_eq!(held_outage(&db), None);
        w.note().store_outage(Some(&StoreOutage {
            since,
            error: "disk I/O error".into(),
        }));
        // A note left by a process that is gone says nothing.
        drop(w);
        assert_eq!(held_outage(&db), None);
    }
}
