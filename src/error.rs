//! The library's error types, one enum per layer, each variant naming what failed and carrying
//! the context (path, line, SQL) a person needs to act on it.

use std::path::PathBuf;

/// Reading a source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path} at line {line}: {source}")]
    Read {
        path: PathBuf,
        line: u64,
        source: std::io::Error,
    },
    #[error("no log files match {pattern}")]
    NoMatch { pattern: String },
    #[error("bad glob pattern {pattern}: {reason}")]
    Glob { pattern: String, reason: String },
}

/// Loading the configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("invalid pattern `{regex}`: {reason}")]
    Pattern { regex: String, reason: String },
}

/// Why the store's one-ingestor lock (`store::lock`) was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "database {path} is in use by another trainwatch ({holder}): one `watch` or `replay` per database at a time; stop it first, or give this one another --db"
    )]
    InUse { path: PathBuf, holder: String },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The SQLite store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database migration {version} failed: {source}")]
    Migrate {
        version: usize,
        source: rusqlite::Error,
    },
    #[error("database {path} has schema version {found}, newer than this trainwatch ({known})")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: usize,
    },
    #[error("database error during {what}: {source}")]
    Sql {
        what: &'static str,
        source: rusqlite::Error,
    },
    #[error("the store writer stopped unexpectedly")]
    WriterGone,
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(
        "database {path} is damaged ({problems}); not writing to it. Stop trainwatch, keep a copy, then recover what can be read into a new file and use that: `sqlite3 {path} .recover | sqlite3 recovered.db` (the SQLite shell), `mv recovered.db {path}`"
    )]
    Damaged { path: PathBuf, problems: String },
}

impl StoreError {
    pub fn sql(what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
        move |source| StoreError::Sql { what, source }
    }
}

/// Setting up an output (alert delivery, the status page server).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutputError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot set up the HTTP client: {0}")]
    Http(String),
    #[error("cannot set up e-mail: {0}")]
    Mail(String),
}

/// A request to an MLflow tracking server that did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MlflowError {
    /// No answer: connection refused or reset, timeout, DNS.
    #[error("the tracking server did not answer: {0}")]
    Unreachable(String),
    /// An answer other than 2xx, with MLflow's `error_code` and `message`.
    #[error("the tracking server answered HTTP {status} {code}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl MlflowError {
    /// Whether trying again later can help: no answer, 5xx, 408 and 429 (and a store that
    /// could not be read or written); other 4xx refuse the data itself.
    pub fn transient(&self) -> bool {
        match self {
            MlflowError::Unreachable(_) | MlflowError::Store(_) => true,
            MlflowError::Refused { status, .. } => *status >= 500 || matches!(status, 408 | 429),
        }
    }

    /// MLflow's `RESOURCE_DOES_NOT_EXIST`.
    pub fn not_found(&self) -> bool {
        matches!(self, MlflowError::Refused { code, .. } if code == "RESOURCE_DOES_NOT_EXIST")
    }
}

/// A request to the Docker daemon, or a log stream, that did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DockerError {
    /// No answer: the socket is missing or refused, the connection broke, a timeout.
    #[error("the Docker daemon cannot be reached: {0}")]
    Unreachable(String),
    /// An error status from the daemon (404: the container is gone).
    #[error("the Docker daemon answered {status}: {message}")]
    Refused { status: u16, message: String },
    /// A log stream that delivered nothing for this many seconds (re-attached, in case the
    /// daemon lost it).
    #[error("the log stream was silent for {0} s")]
    Silent(u64),
}

impl DockerError {
    /// Whether trying again can help: everything but a 4xx answer.
    pub fn transient(&self) -> bool {
        !matches!(self, DockerError::Refused { status, .. } if (400..500).contains(status))
    }

    /// The daemon does not know the container (removed).
    pub fn not_found(&self) -> bool {
        matches!(self, DockerError::Refused { status: 404, .. })
    }
}

impl From<bollard::errors::Error> for DockerError {
    fn from(e: bollard::errors::Error) -> Self {
        match e {
            bollard::errors::Error::DockerResponseServerError {
                status_code,
                message,
            } => DockerError::Refused {
                status: status_code,
                message,
            },
            other => DockerError::Unreachable(other.to_string()),
        }
    }
}

/// Starting `watch`: what it writes and reads could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("opening {path}: {source}")]
    Store { path: PathBuf, source: StoreError },
    #[error("opening {path} for alert delivery: {source}")]
    Notify { path: PathBuf, source: OutputError },
    #[error("opening {path} for the MLflow export: {source}")]
    Mlflow { path: PathBuf, source: OutputError },
}
