//! Renders query results as an aligned table, CSV, or JSON (an array of objects).

use std::io::Write;

use clap::ValueEnum;
use rusqlite::types::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
}

pub use trainwatch::store::queries::Rows;

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => format_real(*f),
        Value::Text(s) => s.clone(),
        Value::Blob(b) => format!("<{} bytes>", b.len()),
    }
}

/// A table cell as a terminal may print it: a line break as `⏎`, every other control
/// character (an escape sequence's ESC, U+009B) as its escape (`\u{1b}`), so no cell can
/// move the cursor, clear the screen or retitle the window.
fn visible(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push('⏎'),
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

/// A cell for CSV, read by tools: reals in their shortest form that reads back the same value
/// (a whole number keeps its `.0`).
fn csv_text(v: &Value) -> String {
    match v {
        Value::Real(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.1}"),
        Value::Real(f) => f.to_string(),
        other => text(other),
    }
}

/// Shortest round-trip form, at most 6 significant decimals for display in tables.
pub fn format_real(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        return format!("{f:.1}");
    }
    let s = format!("{f:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

fn json(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) => (*i).into(),
        Value::Real(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Value::Text(s) => serde_json::Value::String(s.clone()),
        Value::Blob(b) => serde_json::Value::String(format!("<{} bytes>", b.len())),
    }
}

/// Writes `rows` to `out` in `format`.
pub fn write(out: &mut dyn Write, rows: &Rows, format: OutputFormat) -> std::io::Result<()> {
    match format {
        OutputFormat::Json => {
            let arr: Vec<serde_json::Value> = rows
                .rows
                .iter()
                .map(|r| {
                    serde_json::Value::Object(
                        rows.columns
                            .iter()
                            .cloned()
                            .zip(r.iter().map(json))
                            .collect(),
                    )
                })
                .collect();
            serde_json::to_writer_pretty(&mut *out, &arr)?;
            writeln!(out)
        }
        OutputFormat::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(&rows.columns)?;
            for r in &rows.rows {
                w.write_record(r.iter().map(csv_text))?;
            }
            w.flush()
        }
        OutputFormat::Table => {
            let cells: Vec<Vec<String>> = rows
                .rows
                .iter()
                .map(|r| r.iter().map(|v| visible(&text(v))).collect())
                .collect();
            let mut widths: Vec<usize> = rows.columns.iter().map(|c| c.chars().count()).collect();
            for r in &cells {
                for (i, c) in r.iter().enumerate() {
                    widths[i] = widths[i].max(c.chars().count().min(80));
                }
            }
            let numeric: Vec<bool> = (0..rows.columns.len())
                .map(|i| {
                    rows.rows
                        .iter()
                        .all(|r| matches!(r[i], Value::Integer(_) | Value::Real(_) | Value::Null))
                })
                .collect();
            let line = |cols: &[String]| -> String {
                cols.iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let c: String = if c.chars().count() > 80 {
                            c.chars().take(79).chain(['…']).collect()
                        } else {
                            c.clone()
                        };
                        if numeric[i] {
                            format!("{c:>w$}", w = widths[i])
                        } else {
                            format!("{c:<w$}", w = widths[i])
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
            };
            writeln!(out, "{}", line(&rows.columns))?;
            writeln!(
                out,
                "{}",
                widths
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .join("  ")
            )?;
            for r in &cells {
                writeln!(out, "{}", line(r))?;
            }
            Ok(())
        }
    }
}
