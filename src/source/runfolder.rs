//! A training's run folder (Ultralytics' `save_dir`): where it is on this machine, and its
//! `results.csv` read as it grows.
//!
//! Ultralytics appends one row per epoch to `results.csv` (`epoch,time,train/box_loss,...`,
//! written within a few ms of the console's validation row); it is the only place holding the
//! validation losses, the learning rates and full-precision values. The reader keeps its offset:
//! each poll reads only what was appended, a last row without its newline waits for it, and a
//! file that shrank or was replaced is read again from the start (its rows are upserts).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// One `CONTAINER_PREFIX=LOCAL_PREFIX` of `--path-map` (or `[runs] path_map`): where a path
/// printed inside a container is on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathMap {
    pub from: String,
    pub to: PathBuf,
}

impl PathMap {
    /// Parses `CONTAINER_PREFIX=LOCAL_PREFIX`.
    pub fn parse(s: &str) -> Result<PathMap, String> {
        let (from, to) = s
            .split_once('=')
            .filter(|(f, t)| !f.is_empty() && !t.is_empty())
            .ok_or_else(|| format!("{s:?}: expected CONTAINER_PREFIX=LOCAL_PREFIX"))?;
        Ok(PathMap {
            from: from.trim_end_matches('/').to_string(),
            to: PathBuf::from(to),
        })
    }
}

/// Where `path` (as printed in a container) is on this machine: under the longest matching
/// prefix of `maps` (whole components only), else itself.
pub fn map_path(path: &str, maps: &[PathMap]) -> PathBuf {
    let best = maps
        .iter()
        .filter_map(|m| {
            let rest = if m.from.is_empty() {
                Some(path)
            } else {
                path.strip_prefix(&m.from)
            }?;
            (rest.is_empty() || rest.starts_with('/')).then_some((m, rest))
        })
        .max_by_key(|(m, _)| m.from.len());
    match best {
        Some((m, rest)) => m.to.join(rest.trim_start_matches('/')),
        None => PathBuf::from(path),
    }
}

/// The rest of `path` under `prefix` (whole components only), if it is under it.
fn under<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let prefix = prefix.trim_end_matches('/');
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/') || prefix.is_empty()).then_some(rest)
}

/// `path` moved from under `from` to under `to`, by the longest `from` it is under.
fn through(path: &str, pairs: &[(String, String)]) -> Option<PathBuf> {
    let (to, rest) = pairs
        .iter()
        .filter_map(|(from, to)| Some((from.len(), to, under(path, from)?)))
        .max_by_key(|(len, _, _)| *len)
        .map(|(_, to, rest)| (to, rest))?;
    Some(Path::new(to).join(rest.trim_start_matches('/')))
}

/// Where the paths a container prints are on this machine: through its mounts (the longest
/// matching destination wins) to the host, and when trainwatch itself runs in a container,
/// through trainwatch's own mounts to here. `[runs] path_map` comes first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mapping {
    /// The container's working directory: a relative `save_dir` is under it.
    pub workdir: Option<String>,
    /// The container's mounts: (destination inside it, source on the host).
    pub mounts: Vec<(String, String)>,
    /// trainwatch's own mounts when it runs in a container: (source on the host, destination
    /// inside trainwatch's container).
    pub own: Option<Vec<(String, String)>>,
    pub maps: Vec<PathMap>,
}

impl Mapping {
    /// Where `save_dir` (as the container printed it) is here, or why it cannot be reached.
    pub fn local(&self, save_dir: &str) -> Result<PathBuf, String> {
        let printed = save_dir.trim().trim_matches(['\'', '"']);
        let path = if printed.starts_with('/') {
            printed.to_string()
        } else {
            match &self.workdir {
                Some(w) if !w.is_empty() => format!("{}/{printed}", w.trim_end_matches('/')),
                _ => format!("/{printed}"),
            }
        };
        if self.maps.iter().any(|m| under(&path, &m.from).is_some()) {
            return Ok(map_path(&path, &self.maps));
        }
        let host = through(&path, &self.mounts).ok_or_else(|| {
            format!("{path} is inside the container, on none of its mounts (bind-mount the run folder, or map it with [runs] path_map)")
        })?;
        match &self.own {
            None => Ok(host),
            Some(own) => {
                let host = host.to_string_lossy();
                through(&host, own).ok_or_else(|| {
                    format!("{host} on the host is not mounted into trainwatch's container")
                })
            }
        }
    }
}

/// `args.yaml`'s `key: value` lines (Ultralytics writes it flat, one argument per line), the
/// values as text without their quotes.
pub fn parse_args_yaml(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with([' ', '\t', '#', '-']))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .or_else(|| v.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
                .unwrap_or(v);
            (k.trim().to_string(), v.to_string())
        })
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

/// The run folder's `args.yaml` (`None` when it is not written yet).
pub fn read_args(dir: &Path) -> std::io::Result<Option<Vec<(String, String)>>> {
    match std::fs::read_to_string(dir.join("args.yaml")) {
        Ok(t) => Ok(Some(parse_args_yaml(&t))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A checkpoint write that settled: `weights/<name>` with its size, unchanged over two looks.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    /// Its modification time (ns).
    pub written_at: i64,
}

/// How long a checkpoint must go unwritten to count as settled at a single look.
pub const QUIET: std::time::Duration = std::time::Duration::from_millis(1500);

/// A run folder's `weights/` watched for settled checkpoint writes. torch.save rewrites
/// `last.pt` in place (a reader can see it at 0 bytes, or part-written): a write counts once
/// it is not empty and its size and time have not changed between two looks, or it was last
/// written [`QUIET`] before the look (an epoch shorter than the time between looks rewrites
/// it before a second look); once the training is gone, every write counts.
#[derive(Debug, Default)]
pub struct Checkpoints {
    dir: PathBuf,
    /// Per file: what the last look saw, and whether that was reported.
    seen: std::collections::BTreeMap<String, ((u64, i64), bool)>,
}

impl Checkpoints {
    /// Watches `run_dir/weights`. Files already there at the first look are taken as reported
    /// (a restarted `watch` does not report them again).
    pub fn new(run_dir: &Path) -> Self {
        let mut c = Checkpoints {
            dir: run_dir.join("weights"),
            seen: Default::default(),
        };
        for (name, stamp) in c.look() {
            c.seen.insert(name, (stamp, true));
        }
        c
    }

    fn look(&self) -> Vec<(String, (u64, i64))> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<(String, (u64, i64))> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.ends_with(".pt") {
                    return None;
                }
                let m = e.metadata().ok()?;
                let t = m
                    .modified()
                    .ok()?
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?
                    .as_nanos() as i64;
                Some((name, (m.len(), t)))
            })
            .collect();
        out.sort();
        out
    }

    /// When `name` was last seen written (ns), if it exists.
    pub fn written_at(&self, name: &str) -> Option<i64> {
        self.seen.get(name).map(|((_, t), _)| *t)
    }

    /// The writes that settled since the last look.
    pub fn poll(&mut self) -> Vec<Checkpoint> {
        self.look_for(false)
    }

    /// The writes not reported yet, all taken as settled: the training that wrote them is
    /// gone (its container stopped).
    pub fn last_look(&mut self) -> Vec<Checkpoint> {
        self.look_for(true)
    }

    fn look_for(&mut self, writer_gone: bool) -> Vec<Checkpoint> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let mut settled = Vec::new();
        for (name, stamp) in self.look() {
            let quiet = writer_gone || now - stamp.1 >= QUIET.as_nanos() as i64;
            let mut unchanged = true;
            let entry = self.seen.entry(name.clone()).or_insert_with(|| {
                unchanged = false;
                (stamp, false)
            });
            if entry.0 != stamp {
                unchanged = false;
                *entry = (stamp, false);
            }
            if !entry.1 && stamp.0 > 0 && (unchanged || quiet) {
                entry.1 = true;
                settled.push(Checkpoint {
                    path: self.dir.join(&name),
                    name,
                    size: stamp.0,
                    written_at: stamp.1,
                });
            }
        }
        settled
    }
}

/// One row of `results.csv`: its epoch (the `epoch` column) and every cell as written (trimmed:
/// Ultralytics 8.0 pads its header and cells with spaces).
#[derive(Clone, Debug, PartialEq)]
pub struct CsvRow {
    /// Its place among the file's rows, from 0: a resumed training appends the epoch it
    /// resumed at again, so epochs repeat.
    pub row: u32,
    pub epoch: u32,
    pub cells: Vec<String>,
}

/// `results.csv` read as it grows.
#[derive(Debug)]
pub struct ResultsCsv {
    path: PathBuf,
    offset: u64,
    /// The identity of the file read (device, inode): another file at the path is read anew.
    identity: Option<(u64, u64)>,
    columns: Option<Vec<String>>,
    /// Bytes of a row whose newline has not come yet.
    pending: Vec<u8>,
    /// Rows read so far (the next row's index).
    rows: u32,
}

/// What a poll found.
#[derive(Debug, Default, PartialEq)]
pub struct Polled {
    pub rows: Vec<CsvRow>,
    /// The file is new, shrank or was replaced: what was read of it before no longer holds.
    pub restarted: bool,
    /// Rows that could not be read (no epoch, a different number of cells).
    pub bad_rows: u32,
}

impl ResultsCsv {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ResultsCsv {
            path: path.into(),
            offset: 0,
            identity: None,
            columns: None,
            pending: Vec::new(),
            rows: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header's column names, once read.
    pub fn columns(&self) -> Option<&[String]> {
        self.columns.as_deref()
    }

    /// Reads what was appended since the last poll.
    pub fn poll(&mut self) -> std::io::Result<Polled> {
        use std::os::unix::fs::MetadataExt;
        let mut f = File::open(&self.path)?;
        let meta = f.metadata()?;
        let identity = Some((meta.dev(), meta.ino()));
        let mut polled = Polled::default();
        if identity != self.identity || meta.len() < self.offset {
            polled.restarted = self.identity.is_some();
            self.identity = identity;
            self.offset = 0;
            self.columns = None;
            self.pending.clear();
            self.rows = 0;
        }
        if meta.len() == self.offset {
            return Ok(polled);
        }
        f.seek(SeekFrom::Start(self.offset))?;
        // A results.csv holds a row per epoch (a few KB); what was appended is read whole.
        let mut buf = std::mem::take(&mut self.pending);
        let read = f.take(meta.len() - self.offset).read_to_end(&mut buf)?;
        self.offset += read as u64;
        let mut start = 0;
        while let Some(nl) = memchr::memchr(b'\n', &buf[start..]) {
            let line = String::from_utf8_lossy(&buf[start..start + nl]);
            self.line(line.trim_end_matches('\r'), &mut polled);
            start += nl + 1;
        }
        self.pending = buf[start..].to_vec();
        Ok(polled)
    }

    fn line(&mut self, line: &str, polled: &mut Polled) {
        if line.trim().is_empty() {
            return;
        }
        let cells: Vec<String> = line.split(',').map(|c| c.trim().to_string()).collect();
        let Some(columns) = &self.columns else {
            self.columns = Some(cells);
            return;
        };
        let epoch = columns
            .iter()
            .position(|c| c == "epoch")
            .and_then(|i| cells.get(i))
            .and_then(|e| e.parse::<f64>().ok())
            .filter(|e| e.is_finite() && *e >= 0.0 && e.fract() == 0.0);
        match epoch {
            Some(e) if cells.len() == columns.len() => {
                polled.rows.push(CsvRow {
                    row: self.rows,
                    epoch: e as u32,
                    cells,
                });
                self.rows += 1;
            }
            _ => {
                polled.bad_rows += 1;
                self.rows += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn paths_map_by_the_longest_whole_prefix() {
        let maps = [
            PathMap::parse("/azaion=/srv/azaion").unwrap(),
            PathMap::parse("/azaion/models=/mnt/models/").unwrap(),
        ];
        assert_eq!(
            map_path("/azaion/models/azaion-2026-03-28/train", &maps),
            PathBuf::from("/mnt/models/azaion-2026-03-28/train")
        );
        assert_eq!(
            map_path("/azaion/datasets/x", &maps),
            PathBuf::from("/srv/azaion/datasets/x")
        );
        // Whole components only: /azaion2 is not under /azaion.
        assert_eq!(map_path("/azaion2/x", &maps), PathBuf::from("/azaion2/x"));
        assert_eq!(map_path("/other/run", &maps), PathBuf::from("/other/run"));
        assert!(PathMap::parse("nonsense").is_err());
        assert!(PathMap::parse("=/x").is_err());
    }

    #[test]
    fn a_run_folder_is_found_through_the_container_s_mounts_and_trainwatch_s_own() {
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        let mut m = Mapping {
            workdir: Some("/usr/src/app".into()),
            mounts: vec![
                pair("/azaion", "/srv/azaion"),
                pair("/azaion/models", "/data/models"),
                pair("/usr/src/app/runs", "/home/ci/runs"),
            ],
            own: None,
            maps: vec![],
        };
        assert_eq!(
            m.local("/azaion/models/azaion-2026-03-28/train"),
            Ok(PathBuf::from("/data/models/azaion-2026-03-28/train"))
        );
        // Relative to the working directory.
        assert_eq!(
            m.local("runs/detect/train"),
            Ok(PathBuf::from("/home/ci/runs/detect/train"))
        );
        assert!(
            m.local("/tmp/run")
                .unwrap_err()
                .contains("none of its mounts")
        );
        // trainwatch in its own container, /srv/azaion mounted read-only at /azaion.
        m.own = Some(vec![pair("/srv/azaion", "/azaion"), pair("/", "/host")]);
        assert_eq!(
            m.local("/azaion/datasets/x"),
            Ok(PathBuf::from("/azaion/datasets/x"))
        );
        assert_eq!(
            m.local("/azaion/models/x"),
            Ok(PathBuf::from("/host/data/models/x"))
        );
        m.own = Some(vec![pair("/srv/azaion", "/azaion")]);
        assert!(
            m.local("/azaion/models/x")
                .unwrap_err()
                .contains("not mounted into trainwatch's container")
        );
        // An explicit map comes first.
        m.maps = vec![PathMap::parse("/azaion/models=/mnt/m").unwrap()];
        assert_eq!(m.local("/azaion/models/x"), Ok(PathBuf::from("/mnt/m/x")));
    }

    #[test]
    fn a_checkpoint_counts_once_its_write_settled_and_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path().join("weights");
        std::fs::create_dir(&w).unwrap();
        std::fs::write(w.join("old.pt"), b"x").unwrap();
        let mut c = Checkpoints::new(dir.path());
        assert!(c.poll().is_empty(), "what was there before is not news");
        // torch.save truncates, then writes: the 0-byte file is never a checkpoint.
        std::fs::write(w.join("last.pt"), b"").unwrap();
        assert!(c.poll().is_empty());
        assert!(c.poll().is_empty());
        std::fs::write(w.join("last.pt"), vec![7u8; 1000]).unwrap();
        assert!(c.poll().is_empty(), "not settled yet");
        let got = c.poll();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].name.as_str(), got[0].size), ("last.pt", 1000));
        assert!(c.poll().is_empty(), "reported once");
        // Rewritten (the next epoch): reported again once settled.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(w.join("last.pt"), vec![7u8; 1200]).unwrap();
        std::fs::write(w.join("epoch2.pt"), vec![7u8; 900]).unwrap();
        assert!(c.poll().is_empty());
        let names: Vec<String> = c.poll().into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["epoch2.pt", "last.pt"]);
        // Rewritten between two looks, and quiet since: settled at one look (a fast epoch).
        std::fs::write(w.join("last.pt"), vec![7u8; 1300]).unwrap();
        let f = File::options().write(true).open(w.join("last.pt")).unwrap();
        f.set_modified(std::time::SystemTime::now() - QUIET * 2)
            .unwrap();
        let got = c.poll();
        assert_eq!((got[0].name.as_str(), got[0].size), ("last.pt", 1300));
        // The training gone: its last write counts at once.
        std::fs::write(w.join("best.pt"), vec![7u8; 1400]).unwrap();
        let got = c.last_look();
        assert_eq!((got[0].name.as_str(), got[0].size), ("best.pt", 1400));
        assert!(c.last_look().is_empty());
    }

    #[test]
    fn rows_are_read_as_they_are_appended_and_a_cut_row_waits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("results.csv");
        let mut f = File::create(&p).unwrap();
        write!(
            f,
            "                  epoch,          train/box_loss,  val/box_loss\n  1,  2.5, nan\n2,2.4,"
        )
        .unwrap();
        let mut r = ResultsCsv::new(&p);
        let got = r.poll().unwrap();
        assert_eq!(
            r.columns().unwrap(),
            ["epoch", "train/box_loss", "val/box_loss"]
        );
        assert_eq!(
            got.rows,
            [CsvRow {
                row: 0,
                epoch: 1,
                cells: vec!["1".into(), "2.5".into(), "nan".into()]
            }]
        );
        // The rest of row 2 comes; nothing is read twice.
        writeln!(f, "1.9").unwrap();
        let got = r.poll().unwrap();
        assert_eq!(got.rows.len(), 1);
        assert_eq!(got.rows[0].cells, ["2", "2.4", "1.9"]);
        assert_eq!(got.rows[0].row, 1);
        assert_eq!(r.poll().unwrap(), Polled::default());
        // A row with a cell too few is counted, not taken.
        writeln!(f, "3,2.3").unwrap();
        assert_eq!(r.poll().unwrap().bad_rows, 1);
        // Rewritten shorter (a new training in the same folder): read again from the start.
        std::fs::write(&p, "epoch,train/box_loss\n1,3.0\n").unwrap();
        let got = r.poll().unwrap();
        assert!(got.restarted);
        assert_eq!(got.rows[0].cells, ["1", "3.0"]);
        assert_eq!(got.rows[0].row, 0);
        // A resumed training appends the epoch it resumed at again: a row of its own.
        std::fs::write(&p, "epoch,train/box_loss\n1,3.0\n2,2.9\n2,2.8\n").unwrap();
        let got = r.poll().unwrap();
        let rows: Vec<(u32, u32)> = got.rows.iter().map(|r| (r.row, r.epoch)).collect();
        assert_eq!(rows, [(1, 2), (2, 2)]);
    }
}
