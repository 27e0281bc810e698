//! Replay planning: expands the user's arguments (files, directories, globs) into sets of
//! files that belong together, each ordered oldest first, with its format and container.
//!
//! Rotation orders:
//! - Docker json-file: `<id>-json.log.N[.gz]` (higher N older) ... `.1`, then `<id>-json.log`.
//! - Python `RotatingFileHandler`: `queue.log.N` (higher N older), then `queue.log`.
//! - Python `TimedRotatingFileHandler`: `queue.log.2026-03-27` (date order), then `queue.log`.
//!
//! An input that can be read only once (`-` for standard input, a pipe such as a shell's
//! `<(...)`, a named FIFO) is a set of its own, opened here once: its format is sniffed from
//! the bytes read ahead, which the reader then gets back (see [`super::Piped`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::SourceError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    DockerJson,
    Text,
}

/// Files of one source, oldest first.
#[derive(Clone, Debug, PartialEq)]
pub struct FileSet {
    pub container: String,
    pub format: Format,
    pub files: Vec<PathBuf>,
    /// The opened input when the set is one input that can be read only once.
    pub piped: Option<std::sync::Arc<super::Piped>>,
}

/// Sort key of a file within its rotated set: (class, -number, date); lower is older.
type Rank = (u8, i64, String);

/// Splits a file name into its base and rotation suffix rank (lower = older).
fn rotation(name: &str) -> (String, Rank) {
    let name = name.strip_suffix(".gz").unwrap_or(name);
    if let Some((base, suffix)) = name.rsplit_once('.') {
        if !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()) && suffix.len() < 6 {
            // Numbered backups: .1 is the newest, so a higher number sorts first.
            let n: i64 = suffix.parse().unwrap_or(0);
            return (base.to_string(), (1, -n, String::new()));
        }
        let is_date = suffix.len() >= 10
            && suffix.as_bytes()[4] == b'-'
            && suffix[..4].bytes().all(|b| b.is_ascii_digit());
        if is_date {
            return (base.to_string(), (0, 0, suffix.to_string()));
        }
    }
    (name.to_string(), (2, 0, String::new()))
}

fn detect(path: &Path, base: &str) -> Format {
    if base.ends_with("-json.log") {
        return Format::DockerJson;
    }
    let head = super::open_maybe_gz(path).ok().and_then(|(mut r, _)| {
        let mut buf = [0u8; 64];
        let n = std::io::Read::read(&mut r, &mut buf).ok()?;
        Some(buf[..n].to_vec())
    });
    sniff(head.as_deref().unwrap_or_default())
}

/// A json-file entry starts with `{"log":` or `{"stream":`.
fn sniff(head: &[u8]) -> Format {
    if head.starts_with(b"{\"log\":") || head.starts_with(b"{\"stream\":") {
        Format::DockerJson
    } else {
        Format::Text
    }
}

/// The container of a once-only input named by nothing better: `stdin` for `-`, `pipe` for a
/// shell's `<(...)` (`/dev/fd/N`), else the name as for a file.
fn stream_container(path: &Path, format: Format, given: Option<&str>) -> String {
    if given.is_some() {
        return container_of("", format, given);
    }
    if path.as_os_str() == "-" {
        return "stdin".into();
    }
    let parent = path.parent().and_then(|p| p.to_str()).unwrap_or_default();
    if parent == "/dev/fd" || (parent.starts_with("/proc/") && parent.ends_with("/fd")) {
        return "pipe".into();
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("pipe");
    container_of(&rotation(name).0, format, None)
}

/// The container a set belongs to: the given name, else the container id from a json-file
/// name (`<id>-json.log`, shortened to 12 characters like `docker ps`), else the file's stem.
fn container_of(base: &str, format: Format, given: Option<&str>) -> String {
    if let Some(g) = given {
        return g.to_string();
    }
    let file = Path::new(base)
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or(base);
    if format == Format::DockerJson
        && let Some(id) = file.strip_suffix("-json.log")
    {
        return id.chars().take(12).collect();
    }
    file.split('.').next().unwrap_or(file).to_string()
}

fn expand(arg: &str, out: &mut Vec<PathBuf>) -> Result<(), SourceError> {
    let p = Path::new(arg);
    if arg == "-" {
        out.push(p.to_path_buf());
        return Ok(());
    }
    if p.is_dir() {
        let rd = std::fs::read_dir(p).map_err(|source| SourceError::Open {
            path: p.to_path_buf(),
            source,
        })?;
        let mut found: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| {
                f.is_file()
                    && f.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        let n = n.strip_suffix(".gz").unwrap_or(n);
                        n.contains(".log") && !n.ends_with(".truth.json")
                    })
            })
            .collect();
        if found.is_empty() {
            return Err(SourceError::NoMatch {
                pattern: arg.to_string(),
            });
        }
        out.append(&mut found);
        return Ok(());
    }
    if p.exists() {
        out.push(p.to_path_buf());
        return Ok(());
    }
    if arg.contains(['*', '?', '[']) {
        let before = out.len();
        glob_files(arg, out)?;
        if out.len() == before {
            return Err(SourceError::NoMatch {
                pattern: arg.to_string(),
            });
        }
        return Ok(());
    }
    Err(SourceError::Open {
        path: p.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
    })
}

/// The files matching the glob `pattern` (`*`, `?`, `[...]` within a name, `**` across
/// directories), in name order. Symbolic links are followed, but never around a cycle (a link
/// to a directory above it is walked once), so `'dir/**/*.log'` always ends.
fn glob_files(pattern: &str, out: &mut Vec<PathBuf>) -> Result<(), SourceError> {
    let bad = |reason: String| SourceError::Glob {
        pattern: pattern.to_string(),
        reason,
    };
    let matcher = glob::Pattern::new(pattern).map_err(|e| bad(e.to_string()))?;
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    // Walk from the directory before the first component with a wildcard, no deeper than the
    // pattern reaches unless it has `**`.
    let parts: Vec<&str> = pattern.split('/').collect();
    let literal = parts
        .iter()
        .position(|p| p.contains(['*', '?', '[']))
        .unwrap_or(parts.len());
    let (base, relative) = match parts[..literal].join("/") {
        b if b.is_empty() && pattern.starts_with('/') => ("/".to_string(), false),
        b if b.is_empty() => (".".to_string(), true),
        b => (b, false),
    };
    let mut walk = walkdir::WalkDir::new(&base)
        .follow_links(true)
        .sort_by_file_name()
        .min_depth(1);
    if !pattern.contains("**") {
        walk = walk.max_depth(parts.len() - literal);
    }
    for entry in walk {
        // Unreadable directories and link cycles are not followed (walkdir reports them).
        let Ok(entry) = entry else { continue };
        if !entry.file_type().is_file() {
            continue;
        }
        let path = match entry.path().strip_prefix("./") {
            Ok(p) if relative => p.to_path_buf(),
            _ => entry.path().to_path_buf(),
        };
        if matcher.matches_path_with(&path, options) {
            out.push(path);
        }
    }
    Ok(())
}

/// Plans the replay of `args`. Sets keep the order in which their first file was named.
pub fn plan(args: &[String], container: Option<&str>) -> Result<Vec<FileSet>, SourceError> {
    let mut paths = Vec::new();
    for a in args {
        expand(a, &mut paths)?;
    }
    paths.dedup();
    let mut order: Vec<String> = Vec::new();
    let mut groups: BTreeMap<String, Vec<(Rank, PathBuf)>> = BTreeMap::new();
    let mut piped: BTreeMap<String, FileSet> = BTreeMap::new();
    for p in paths {
        if super::is_stream(&p) {
            let key = format!("\0{}", order.len());
            if p.as_os_str() == "-" && piped.values().any(|s| s.files[0] == p) {
                continue;
            }
            let opened = super::Piped::open(&p).map_err(|source| SourceError::Open {
                path: p.clone(),
                source,
            })?;
            let format = sniff(opened.head());
            piped.insert(
                key.clone(),
                FileSet {
                    container: stream_container(&p, format, container),
                    format,
                    files: vec![p],
                    piped: Some(std::sync::Arc::new(opened)),
                },
            );
            order.push(key);
            continue;
        }
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let (base, rank) = rotation(&name);
        let key = p.with_file_name(&base).to_string_lossy().into_owned();
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        let g = groups.entry(key).or_default();
        if !g.iter().any(|(_, q)| *q == p) {
            g.push((rank, p));
        }
    }
    let mut sets = Vec::new();
    for key in order {
        if let Some(set) = piped.remove(&key) {
            sets.push(set);
            continue;
        }
        let mut g = groups.remove(&key).unwrap_or_default();
        g.sort_by(|a, b| a.0.cmp(&b.0));
        let files: Vec<PathBuf> = g.into_iter().map(|(_, p)| p).collect();
        let format = detect(&files[0], &key);
        sets.push(FileSet {
            container: container_of(&key, format, container),
            format,
            files,
            piped: None,
        });
    }
    Ok(sets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_end_over_a_symlink_cycle_and_keep_names_within_directories() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::write(d.join("top.log"), "x\n").unwrap();
        std::fs::write(d.join("a/one.log"), "x\n").unwrap();
        std::fs::write(d.join("a/b/two.log"), "x\n").unwrap();
        std::fs::write(d.join("a/b/notes.txt"), "x\n").unwrap();
        // A link back up: a/b/up -> a, and a link to a file, which is followed.
        std::os::unix::fs::symlink(d.join("a"), d.join("a/b/up")).unwrap();
        std::os::unix::fs::symlink(d.join("top.log"), d.join("a/linked.log")).unwrap();
        let names = |pattern: String| -> Vec<String> {
            let mut out = Vec::new();
            glob_files(&pattern, &mut out).unwrap();
            out.iter()
                .map(|p| p.strip_prefix(d).unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            names(format!("{}/**/*.log", d.display())),
            ["a/b/two.log", "a/linked.log", "a/one.log", "top.log"]
        );
        // `*` stays within one name, as in a shell.
        assert_eq!(names(format!("{}/*.log", d.display())), ["top.log"]);
        assert_eq!(names(format!("{}/a/*/*.log", d.display())), ["a/b/two.log"]);
        assert!(plan(&[format!("{}/**/*.nothing", d.display())], None).is_err());
    }

    #[test]
    fn rotated_sets_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in [
            "abcdef0123456789-json.log",
            "abcdef0123456789-json.log.1",
            "abcdef0123456789-json.log.2.gz",
            "abcdef0123456789-json.log.10.gz",
            "queue.log",
            "queue.log.1",
            "queue.log.2",
            "queue.log.2026-03-27",
            "queue.log.2026-03-26",
        ] {
            std::fs::write(d.join(f), "x\n").unwrap();
        }
        let sets = plan(&[d.to_string_lossy().into_owned()], None).unwrap();
        let docker = sets
            .iter()
            .find(|s| s.format == Format::DockerJson)
            .unwrap();
        assert_eq!(docker.container, "abcdef012345");
        let names: Vec<String> = docker
            .files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "abcdef0123456789-json.log.10.gz",
                "abcdef0123456789-json.log.2.gz",
                "abcdef0123456789-json.log.1",
                "abcdef0123456789-json.log"
            ]
        );
        let q = sets.iter().find(|s| s.container == "queue").unwrap();
        let names: Vec<String> = q
            .files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "queue.log.2026-03-26",
                "queue.log.2026-03-27",
                "queue.log.2",
                "queue.log.1",
                "queue.log"
            ]
        );
        assert_eq!(q.format, Format::Text);
        let g = plan(&[format!("{}/queue.log*", d.display())], Some("q")).unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].container, "q");
        assert!(plan(&[format!("{}/nothing*", d.display())], None).is_err());
    }
}
