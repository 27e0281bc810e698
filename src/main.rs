//! The `trainwatch` binary: parses arguments, sets up logging, runs a subcommand, maps errors to
//! an exit code. Everything else lives in the library.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "trainwatch",
    version,
    about = "Typed events, metrics and training history from the Docker logs of an ML training server."
)]
struct Cli {
    /// SQLite database file.
    #[arg(long, global = true, env = "TRAINWATCH_DB", default_value = trainwatch::store::DEFAULT_DB)]
    db: PathBuf,
    /// TOML config file (patterns, retention, docker, alerts, notify, probes, status, mlflow).
    #[arg(long, global = true, env = "TRAINWATCH_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Follow the Docker containers' logs live into the store (until SIGTERM/SIGINT).
    Watch(cli::watch::WatchArgs),
    /// Replay archived Docker json-file logs (rotated, .gz) and plain text logs into the store.
    Replay(cli::replay::ReplayArgs),
    /// Import run folders with no log (results.csv, args.yaml): one training run per folder.
    Import(cli::import::ImportArgs),
    /// Show training runs, or the epochs of one run (`--run ID`).
    History(cli::history::HistoryArgs),
    /// One line and an exit code for cron: 0 ok, 1 warning, 2 critical.
    Health(cli::health::HealthArgs),
    /// A one-screen summary of training, GPUs, disk, queue and alerts (or `--html FILE`).
    Status(cli::status::StatusArgs),
    /// List firing alerts (or all with `--all`).
    Alerts(cli::alerts::AlertsArgs),
    /// Run a read-only SQL query (views: training_runs, training_epochs, events, metric_samples, alerts).
    Sql(cli::sql::SqlArgs),
    /// Delete events, metric samples and resolved alerts older than the retention age.
    Prune(cli::prune::PruneArgs),
    /// `export mlflow`: send the stored training history to an MLflow tracking server.
    Export(cli::export::ExportArgs),
    /// `config check [FILE]`: validate a config file and print the effective settings.
    Config(cli::config::ConfigArgs),
}

/// trainwatch's own logs, in the service JSON format: on stdout for the ingestor (`watch`), on
/// stderr for the other commands, whose results are on stdout.
///
/// Lines are written by a thread of their own behind a bounded buffer that drops lines when
/// full (and counts them): a log pipe nobody reads, or stdout and stderr both closed, never
/// block ingestion or shutdown, and a failing write is not reported on a stderr that may be
/// closed too. The guard flushes what is buffered when `main` returns.
fn init_logging(ingestor: bool) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let default = if ingestor { "info" } else { "warn" };
    let filter =
        EnvFilter::try_from_env("TRAINWATCH_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let (writer, guard) = if ingestor {
        tracing_appender::non_blocking(std::io::stdout())
    } else {
        tracing_appender::non_blocking(std::io::stderr())
    };
    tracing_subscriber::fmt()
        .log_internal_errors(false)
        .event_format(trainwatch::telemetry::ServiceFormat)
        .with_env_filter(filter)
        .with_writer(writer)
        .init();
    guard
}

/// Prints the error on stderr; a closed stderr is not a second failure.
fn report(e: &anyhow::Error) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "error: {}", causes(e));
}

/// The error and its causes, `: `-separated, each said once: the library's errors name their
/// cause in their own message too, so a cause already at the end of the text is not repeated.
fn causes(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for c in e.chain() {
        let c = c.to_string();
        // SQLite's errors repeat their message as `Error code N: message`, or add only the
        // code's generic name (`Error code 1: SQL logic error`) under a precise one.
        let sqlite_code = c
            .strip_prefix("Error code ")
            .and_then(|r| r.split_once(": "));
        let bare = sqlite_code.map_or(c.as_str(), |(_, m)| m);
        if out.contains(&c) || out.ends_with(bare) || (sqlite_code.is_some() && !out.is_empty()) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&c);
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _logs = init_logging(matches!(cli.command, Command::Watch(_)));
    let r = match cli.command {
        Command::Watch(a) => cli::watch::run(a, &cli.db, cli.config.as_deref()),
        Command::Replay(a) => cli::replay::run(a, &cli.db, cli.config.as_deref()),
        Command::Import(a) => cli::import::run(a, &cli.db, cli.config.as_deref()),
        Command::History(a) => cli::history::run(a, &cli.db, cli.config.as_deref()),
        Command::Alerts(a) => cli::alerts::run(a, &cli.db, cli.config.as_deref()),
        Command::Status(a) => cli::status::run(a, &cli.db, cli.config.as_deref()),
        Command::Config(a) => cli::config::run(a, cli.config.as_deref()),
        Command::Health(a) => match cli::health::run(a, &cli.db, cli.config.as_deref()) {
            Ok(code) => return ExitCode::from(code),
            Err(e) => {
                report(&e);
                // Cannot tell: critical for cron.
                return ExitCode::from(2);
            }
        },
        Command::Sql(a) => cli::sql::run(a, &cli.db, cli.config.as_deref()),
        Command::Prune(a) => cli::prune::run(a, &cli.db, cli.config.as_deref()),
        Command::Export(a) => cli::export::run(a, &cli.db, cli.config.as_deref()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A closed pipe (`trainwatch sql ... | head`) is not a failure.
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            report(&e);
            ExitCode::FAILURE
        }
    }
}
