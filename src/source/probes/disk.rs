//! The disk probe: usage of the data root from `statvfs` (cheap, every tick), and the sizes of
//! its `datasets/` and `models/` trees (a walk, so on its own slower interval, on a blocking
//! thread, never two at once).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Usage of the file system holding a path.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    pub total_bytes: u64,
    pub used_bytes: u64,
    /// Used as a percentage of what is usable by non-root users, as `df` reports it.
    pub used_pct: f64,
}

pub fn usage(path: &Path) -> std::io::Result<Usage> {
    let s = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let frsize = s.fragment_size() as u64;
    let total = s.blocks() as u64 * frsize;
    let free = s.blocks_free() as u64 * frsize;
    let avail = s.blocks_available() as u64 * frsize;
    let used = total.saturating_sub(free);
    let usable = used + avail;
    let used_pct = if usable == 0 {
        0.0
    } else {
        used as f64 * 100.0 / usable as f64
    };
    Ok(Usage {
        total_bytes: total,
        used_bytes: used,
        used_pct,
    })
}

/// Bytes a tree occupies on disk (like `du -s`: allocated blocks, hard links once, symlinks
/// not followed). Unreadable entries are skipped and counted.
pub fn tree_size(root: &Path) -> (u64, u64) {
    let mut total = 0u64;
    let mut errors = 0u64;
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let Ok(entry) = entry else {
            errors += 1;
            continue;
        };
        let Ok(md) = entry.metadata() else {
            errors += 1;
            continue;
        };
        if md.nlink() > 1 && !md.is_dir() && !seen.insert((md.dev(), md.ino())) {
            continue;
        }
        total += md.blocks() * 512;
    }
    (total, errors)
}

pub const GB: f64 = 1e9;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_of_a_real_file_system() {
        let u = usage(Path::new("/")).unwrap();
        assert!(u.total_bytes > 0);
        assert!(u.used_bytes <= u.total_bytes);
        assert!((0.0..=100.0).contains(&u.used_pct));
        assert!(usage(Path::new("/does/not/exist")).is_err());
    }

    #[test]
    fn tree_size_counts_blocks_and_hard_links_once() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/a"), vec![1u8; 100_000]).unwrap();
        let one = tree_size(d.path()).0;
        assert!(one >= 100_000, "{one}");
        std::fs::hard_link(d.path().join("sub/a"), d.path().join("b")).unwrap();
        assert_eq!(tree_size(d.path()).0, one);
        std::fs::write(d.path().join("c"), vec![1u8; 100_000]).unwrap();
        assert!(tree_size(d.path()).0 >= one + 100_000);
    }
}
