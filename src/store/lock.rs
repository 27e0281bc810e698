//! One ingestor per database. `watch` and `replay` hold an exclusive advisory lock (`flock`) on
//! `<db>.lock` for as long as they run; the kernel drops it with the process, so a crashed
//! holder never blocks anyone. The file says who holds it (`watch pid 1234 since ...`).
//!
//! A second `watch`, or a `replay` while a `watch` runs, is refused with the holder named (two
//! ingestors would both run the alert rules and notify twice). A `replay` meeting another
//! `replay`, or a `watch` meeting a `replay`, waits for it: a replay ends. The commands that
//! write by hand (`prune`, `alerts ack`) are not ingestors: they wait on SQLite's locks.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

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

/// The lock, held until dropped.
#[derive(Debug)]
pub struct IngestLock {
    _file: File,
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
        match file.try_lock() {
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
        file.write_all(me.as_bytes()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(IngestLock { _file: file })
    }
}

/// What the holder wrote in the lock file (empty if nothing yet).
fn holder(file: &mut File) -> String {
    let mut s = String::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.take(512).read_to_string(&mut s);
    s.trim().to_string()
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
}
