//! `trainwatch alerts`: the firing alerts (most severe first), or with `--all` every alert,
//! newest first; and acknowledgements and silences: `alerts ack ID`, `alerts silence
//! MATCHER...`, `alerts silences`, `alerts expire ID`.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use clap::{Args, Subcommand};

use trainwatch::store::alerts::AlertRow;
use trainwatch::store::silences::{self, Matcher, NewSilence, Silence};
use trainwatch::time::{Age, format_ns, human_duration, now_ns};

use super::render::{self, OutputFormat, Rows};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AlertsArgs {
    #[command(subcommand)]
    pub command: Option<AlertsCommand>,
    /// Every alert (firing and resolved), newest first, instead of the firing ones.
    #[arg(long)]
    pub all: bool,
    /// At most this many alerts.
    #[arg(long, default_value_t = 200)]
    pub limit: usize,
    /// Output format (`csv` also works).
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
}

#[derive(Subcommand, Debug)]
pub enum AlertsCommand {
    /// Acknowledge a firing alert: no repeat, no notification, not critical for `health`, until
    /// it resolves (or `--for` has passed). The next alert of the same labels pages again.
    Ack {
        /// The alert's id (the `id` column of `trainwatch alerts`).
        id: i64,
        /// Only for this long (`30m`, `4h`, `2d`).
        #[arg(long = "for", value_parser = parse_age)]
        for_: Option<Age>,
        #[command(flatten)]
        who: Who,
    },
    /// Silence every alert whose labels match all the matchers (`alertname=TrainingFailed`,
    /// `container=yolo-train`, `container=~yolo-.*`, `severity!=critical`) for a while.
    Silence {
        /// `name=value`, `name!=value`, `name=~regex`, `name!~regex`.
        #[arg(required = true, value_parser = parse_matcher)]
        matchers: Vec<Matcher>,
        /// How long (`30m`, `8h`, `2d`).
        #[arg(long = "for", value_parser = parse_age, default_value = "1h")]
        for_: Age,
        #[command(flatten)]
        who: Who,
    },
    /// The acknowledgements and silences in force (`--all`: every one ever made).
    Silences {
        #[arg(long)]
        all: bool,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// End an acknowledgement or silence now.
    Expire {
        /// The silence's id (`trainwatch alerts silences`).
        id: i64,
    },
}

/// Who made an acknowledgement or silence, and why.
#[derive(Args, Debug)]
pub struct Who {
    /// Who did it (default: the user name).
    #[arg(long)]
    pub by: Option<String>,
    /// Why.
    #[arg(long, default_value = "")]
    pub comment: String,
}

impl Who {
    fn by(&self) -> String {
        self.by
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .or_else(|| std::env::var("LOGNAME").ok())
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "unknown".into())
    }
}

fn parse_age(s: &str) -> Result<Age, String> {
    trainwatch::time::parse_age(s)
        .filter(|ns| *ns > 0)
        .map(Age)
        .ok_or_else(|| format!("{s:?} is not a duration such as 30m, 4h or 2d"))
}

fn parse_matcher(s: &str) -> Result<Matcher, String> {
    Matcher::parse(s).map_err(|e| e.to_string())
}

pub fn run(args: AlertsArgs, db: &Path, config: Option<&Path>) -> anyhow::Result<()> {
    // Read for its errors: a missing or malformed config fails every command alike.
    super::load_config(config)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.command {
        None => list(&mut out, db, args.all, args.limit, args.format),
        Some(AlertsCommand::Ack { id, for_, who }) => {
            let mut conn = open_rw(db)?;
            let now = now_ns();
            let s = silences::acknowledge(
                &mut conn,
                id,
                for_.map(|a| now + a.0),
                &who.by(),
                &who.comment,
                now,
            )?;
            writeln!(out, "alert {id} {}", s.note())?;
            Ok(())
        }
        Some(AlertsCommand::Silence {
            matchers,
            for_,
            who,
        }) => {
            let mut conn = open_rw(db)?;
            let now = now_ns();
            let new = NewSilence {
                matchers,
                alert_id: None,
                starts_at: now,
                ends_at: Some(now + for_.0),
                created_by: who.by(),
                comment: who.comment,
            };
            let s = silences::silence(&mut conn, &new, now)?;
            let covered = covered(&firing(&conn)?, &s);
            writeln!(
                out,
                "silence {}: {} for {}; {covered} firing alert(s) match now",
                s.id,
                matchers_text(&s),
                human_duration(for_.0)
            )?;
            Ok(())
        }
        Some(AlertsCommand::Silences { all, format }) => {
            let conn = super::open_ro(db)?;
            let list = silences::list(&conn, all).context("listing silences")?;
            silences_out(&mut out, &conn, &list, format)
        }
        Some(AlertsCommand::Expire { id }) => {
            let mut conn = open_rw(db)?;
            let s = silences::expire(&mut conn, id, now_ns())?;
            writeln!(
                out,
                "silence {id} ({}) expired; its alerts page again",
                matchers_text(&s)
            )?;
            Ok(())
        }
    }
}

/// Opens the database to write an acknowledgement or silence (as `prune` does: WAL, waiting on
/// a running `watch`'s locks).
fn open_rw(db: &Path) -> anyhow::Result<rusqlite::Connection> {
    if !db.exists() {
        anyhow::bail!(
            "database {} does not exist yet: run `trainwatch replay` or `trainwatch watch` first",
            db.display()
        );
    }
    trainwatch::store::open_rw(db).with_context(|| format!("opening {}", db.display()))
}

fn list(
    out: &mut impl Write,
    db: &Path,
    all: bool,
    limit: usize,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let conn = super::open_ro(db)?;
    let rows = trainwatch::store::alerts::list(&conn, all, limit).context("listing alerts")?;
    if format == OutputFormat::Json {
        serde_json::to_writer_pretty(&mut *out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }
    let sql = trainwatch::store::queries::alerts_table_sql(all);
    let table = Rows::query(&conn, &sql, &[&(limit as i64)]).context("listing alerts")?;
    if table.rows.is_empty() && format == OutputFormat::Table {
        let none = if all {
            "no alerts recorded"
        } else {
            "no alerts firing"
        };
        writeln!(out, "{none}")?;
        return Ok(());
    }
    render::write(out, &table, format)?;
    if format == OutputFormat::Table {
        // Which are acknowledged or silenced, under the table (its columns are full).
        for r in rows.iter().filter(|r| r.silenced.is_some()) {
            writeln!(
                out,
                "alert {} {}",
                r.id,
                r.silenced.as_deref().unwrap_or_default()
            )?;
        }
    }
    Ok(())
}

/// `alertname=X container=Y`.
fn matchers_text(s: &Silence) -> String {
    s.matchers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// How many firing alerts `s` covers now.
fn covered(firing: &[AlertRow], s: &Silence) -> usize {
    firing
        .iter()
        .filter(|a| {
            let labels = serde_json::from_value(a.labels.clone()).unwrap_or_default();
            s.covers(a.id, &labels)
        })
        .count()
}

/// The firing alerts, read once for every silence they are counted against.
fn firing(conn: &rusqlite::Connection) -> anyhow::Result<Vec<AlertRow>> {
    Ok(trainwatch::store::alerts::list(conn, false, 10_000)?)
}

fn silences_out(
    out: &mut impl Write,
    conn: &rusqlite::Connection,
    list: &[Silence],
    format: OutputFormat,
) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        serde_json::to_writer_pretty(&mut *out, list)?;
        writeln!(out)?;
        return Ok(());
    }
    if list.is_empty() && format == OutputFormat::Table {
        writeln!(out, "no silences in force")?;
        return Ok(());
    }
    let now = now_ns();
    let firing = firing(conn)?;
    let text = |s: &str| rusqlite::types::Value::Text(s.to_string());
    let mut rows = Vec::new();
    for s in list {
        let state = if s.active_at(now) {
            format!("active, {} firing", covered(&firing, s))
        } else if s.expired_at.is_some() {
            "expired".into()
        } else {
            "ended".into()
        };
        rows.push(vec![
            rusqlite::types::Value::Integer(s.id),
            text(&s.kind),
            text(&match s.alert_id {
                Some(id) => format!("alert {id}"),
                None => matchers_text(s),
            }),
            text(&s.created_by),
            text(&short(&s.starts_at)),
            text(
                &s.ends_at
                    .as_deref()
                    .map_or_else(|| "it resolves".to_string(), short),
            ),
            text(&state),
            text(&s.comment),
        ]);
    }
    let table = Rows {
        columns: [
            "id", "kind", "matches", "by", "from", "until", "state", "comment",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    };
    render::write(out, &table, format)?;
    Ok(())
}

/// An RFC 3339 time to the minute, UTC: `2026-12-07 18:00`.
fn short(t: &str) -> String {
    let t = trainwatch::time::parse_rfc3339(t).map_or_else(|| t.to_string(), format_ns);
    t.get(..16).unwrap_or(&t).replace('T', " ")
}
