//! Shared harness for the integration tests: temp databases, fixture paths, results.csv.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rusqlite::Connection;

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

pub fn fixture_str(rel: &str) -> String {
    fixture(rel).to_string_lossy().into_owned()
}

pub struct Db {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Db {
    pub fn new() -> Db {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tw.db");
        Db { dir, path }
    }

    pub fn replay(
        &self,
        files: &[String],
        container: Option<&str>,
    ) -> trainwatch::pipeline::Summary {
        let parser = trainwatch::parse::Parser::default();
        trainwatch::pipeline::replay(files, container, self.path.clone(), &parser).expect("replay")
    }

    pub fn conn(&self) -> Connection {
        trainwatch::store::open_ro(&self.path).expect("open ro")
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.conn()
            .query_row(sql, [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub fn text(&self, sql: &str) -> Option<String> {
        self.conn()
            .query_row(sql, [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Row counts of every public view, to compare before and after a second replay.
    pub fn counts(&self) -> [i64; 4] {
        [
            self.count("SELECT count(*) FROM training_runs"),
            self.count("SELECT count(*) FROM training_epochs"),
            self.count("SELECT count(*) FROM events"),
            self.count("SELECT count(*) FROM metric_samples"),
        ]
    }
}

/// One results.csv, columns trimmed (old 8.0.x files pad them).
pub struct ResultsCsv {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl ResultsCsv {
    pub fn load(path: &Path) -> ResultsCsv {
        let text = std::fs::read_to_string(path).expect("results.csv");
        let mut lines = text.lines();
        let header = lines
            .next()
            .unwrap()
            .split(',')
            .map(|s| s.trim().to_string())
            .collect();
        let rows = lines
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split(',').map(|s| s.trim().to_string()).collect())
            .collect();
        ResultsCsv { header, rows }
    }

    pub fn get(&self, epoch: u32, col: &str) -> f64 {
        let i = self
            .header
            .iter()
            .position(|h| h == col)
            .unwrap_or_else(|| panic!("no column {col}"));
        let row = self
            .rows
            .iter()
            .rev()
            .find(|r| r[0].parse::<u32>().ok() == Some(epoch))
            .unwrap_or_else(|| panic!("no epoch {epoch}"));
        row[i].parse().unwrap()
    }

    pub fn epochs(&self) -> Vec<u32> {
        self.rows.iter().map(|r| r[0].parse().unwrap()).collect()
    }
}

/// The console prints losses with `%11.4g` (4 significant digits) and metrics with `%11.3g`;
/// results.csv rounds to 5 decimals. Equal within the console's precision.
pub fn close_sig(console: f64, csv: f64, digits: i32) -> bool {
    if csv == 0.0 {
        return console.abs() < 10f64.powi(-digits);
    }
    let tol = 10f64.powi(csv.abs().log10().floor() as i32 - digits + 1) * 0.5 + 1e-5;
    (console - csv).abs() <= tol
}

/// Writes a Docker json-file entry line.
pub fn entry(log: &str, stream: &str, time: &str) -> String {
    format!(
        "{{\"log\":{},\"stream\":\"{stream}\",\"time\":\"{time}\"}}\n",
        serde_json::to_string(log).unwrap()
    )
}

/// Runs the built binary.
pub fn bin(args: &[&str], db: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_trainwatch"))
        .args(args)
        .env("TRAINWATCH_DB", db)
        .output()
        .expect("run trainwatch")
}

/// Every text value of every table (and view) of the store, one per line.
pub fn dump_all(db: &Db) -> String {
    let conn = db.conn();
    let names: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut out = String::new();
    for name in names {
        let mut st = conn.prepare(&format!("SELECT * FROM \"{name}\"")).unwrap();
        let n = st.column_count();
        let mut rows = st.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            for i in 0..n {
                if let Ok(Some(v)) = r.get::<_, Option<String>>(i) {
                    out.push_str(&v);
                    out.push('\n');
                }
            }
        }
    }
    out
}

/// A loopback port nobody listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether the tests run under CI (`CI=true`), where `.ci/run` installs everything they use.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A component a test needs is missing (`what`, with the reason): under CI the test fails,
/// elsewhere it is skipped with a printed reason.
#[track_caller]
pub fn unavailable(what: &str) {
    let what = what
        .trim_start_matches("skipping: ")
        .trim_start_matches("skipping ");
    if in_ci() {
        panic!("{what} (required in CI: .ci/run installs it)");
    }
    skip(what);
}

/// Says a test is skipped where `cargo test` shows it without `--nocapture`: the harness
/// captures `print!` and `eprint!`, so this writes to the process's stderr itself. (Under CI
/// the callers fail instead of skipping.)
pub fn skip(reason: &str) {
    use std::io::Write;
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("a test");
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {name}: {}",
        reason
            .trim_start_matches("skipping: ")
            .trim_start_matches("skipping ")
    );
}

/// The exposition `watch --listen 127.0.0.1:PORT` serves at `/metrics`.
pub fn get_metrics(port: u16) -> String {
    crate::mlflow::runtime().block_on(async {
        reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
}

/// A run folder recorded as a real training wrote it (`fixtures/runfolder/NAME.folder.jsonl`,
/// by `fixtures/tools/record_runfolder.py`): every write, in order.
pub struct RecordedFolder {
    pub writes: Vec<FolderWrite>,
}

/// One change of one file of a recorded run folder.
#[derive(Clone, Debug)]
pub struct FolderWrite {
    /// Seconds since the recording started, and the wall clock then (Unix ns).
    pub t: f64,
    pub ns: i64,
    /// The file, relative to the run folder.
    pub path: String,
    pub size: u64,
    /// The content of a text file (results.csv, args.yaml); a checkpoint has none.
    pub text: Option<String>,
}

impl RecordedFolder {
    pub fn load(rel: &str) -> RecordedFolder {
        let text = std::fs::read_to_string(fixture(rel)).unwrap();
        let writes = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                FolderWrite {
                    t: v["t"].as_f64().unwrap(),
                    ns: v["ns"].as_i64().unwrap_or(0),
                    path: v["path"].as_str().unwrap().to_string(),
                    size: v["size"].as_u64().unwrap(),
                    text: v["text"].as_str().map(str::to_string),
                }
            })
            .collect();
        RecordedFolder { writes }
    }

    /// Writes one recorded change into `dir`: a text file as recorded, a checkpoint rewritten
    /// in place (truncated, then written) with zeros of the recorded size.
    pub fn apply(w: &FolderWrite, dir: &Path) {
        let path = dir.join(&w.path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        match &w.text {
            Some(t) => std::fs::write(&path, t).unwrap(),
            None => {
                use std::io::Write;
                let mut f = std::fs::File::create(&path).unwrap();
                f.write_all(&vec![0u8; w.size as usize]).unwrap();
            }
        }
    }

    /// The folder as the training left it, in `dir`.
    pub fn write_final(&self, dir: &Path) {
        let mut last: std::collections::BTreeMap<&str, &FolderWrite> = Default::default();
        for w in &self.writes {
            last.insert(&w.path, w);
        }
        for w in last.values() {
            Self::apply(w, dir);
        }
    }
}
