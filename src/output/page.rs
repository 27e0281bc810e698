//! The HTML status page: one self-contained file (inline CSS and SVG, no external assets, works
//! offline) that `watch` rewrites atomically and `trainwatch status --html FILE` writes on
//! demand. Built with maud, which escapes every interpolated value: text from logs (alert
//! summaries, checkpoint messages, container names) cannot inject markup or script.
//!
//! Every series is read with an indexed range query (`epochs` by run, `metric_log` by
//! container, name and time), and long ones are thinned to a few hundred points.

use crate::event::metric;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use rusqlite::{Connection, params};

use super::status::Status;
use crate::error::StoreError;
use crate::store::queries;
use crate::time::{format_ns, human_duration, parse_rfc3339};

/// One line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    /// (x, y); x is an epoch number or a time in seconds.
    pub points: Vec<(f64, f64)>,
    pub color: &'static str,
    /// Drawn faintly (the previous run).
    pub faint: bool,
}

/// What the charts show.
#[derive(Clone, Debug, Default)]
pub struct Charts {
    pub run_label: String,
    pub previous_label: Option<String>,
    pub losses: Vec<Series>,
    pub maps: Vec<Series>,
    pub gpu_temp: Vec<Series>,
    pub gpu_util: Vec<Series>,
    pub disk: Vec<Series>,
    pub queue: Vec<Series>,
    /// Per role: its containers' CPU % and memory (MiB) series.
    pub containers: Vec<RoleCharts>,
}

/// The Docker stats charts of the containers of one role.
#[derive(Clone, Debug, Default)]
pub struct RoleCharts {
    pub role: String,
    pub cpu: Vec<Series>,
    pub memory: Vec<Series>,
}

const PALETTE: [&str; 6] = [
    "#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2",
];

/// How far back the host charts reach.
pub const HOST_WINDOW_NS: i64 = 6 * 3600 * 1_000_000_000;
/// How far back the queue chart reaches.
pub const QUEUE_WINDOW_NS: i64 = 24 * 3600 * 1_000_000_000;
const MAX_POINTS: usize = 400;

fn thin(points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    if points.len() <= MAX_POINTS {
        return points;
    }
    let step = points.len().div_ceil(MAX_POINTS);
    let last = *points.last().expect("non-empty");
    let mut out: Vec<(f64, f64)> = points.into_iter().step_by(step).collect();
    if out.last() != Some(&last) {
        out.push(last);
    }
    out
}

fn epoch_series(
    conn: &Connection,
    run_id: i64,
    faint: bool,
) -> Result<(Vec<Series>, Vec<Series>), StoreError> {
    let mut stmt = conn
        .prepare_cached(queries::CHART_EPOCHS)
        .map_err(StoreError::sql("read epochs for charts"))?;
    type Row = (i64, Option<String>, Option<f64>, Option<f64>);
    let rows: Vec<Row> = stmt
        .query_map([run_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .and_then(|it| it.collect())
        .map_err(StoreError::sql("read epochs for charts"))?;
    let mut losses: Vec<Series> = Vec::new();
    let mut m50 = Vec::new();
    let mut m5095 = Vec::new();
    for (epoch, l, a, b) in rows {
        let x = epoch as f64;
        if let Some(serde_json::Value::Object(m)) =
            l.as_deref().and_then(|l| serde_json::from_str(l).ok())
        {
            for (name, v) in m {
                let Some(v) = v.as_f64().filter(|v| v.is_finite()) else {
                    continue;
                };
                match losses.iter_mut().find(|s| s.name == name) {
                    Some(s) => s.points.push((x, v)),
                    None => {
                        let color = PALETTE[losses.len() % PALETTE.len()];
                        losses.push(Series {
                            name,
                            points: vec![(x, v)],
                            color,
                            faint,
                        })
                    }
                }
            }
        }
        if let Some(a) = a {
            m50.push((x, a));
        }
        if let Some(b) = b {
            m5095.push((x, b));
        }
    }
    let maps = vec![
        Series {
            name: "mAP50".into(),
            points: m50,
            color: PALETTE[0],
            faint,
        },
        Series {
            name: "mAP50-95".into(),
            points: m5095,
            color: PALETTE[1],
            faint,
        },
    ];
    Ok((losses, maps))
}

fn samples(
    conn: &Connection,
    container: &str,
    name: &str,
    since: i64,
    now: i64,
) -> Result<Vec<(f64, f64)>, StoreError> {
    let mut stmt = conn
        .prepare_cached(queries::CHART_SAMPLES)
        .map_err(StoreError::sql("read samples for charts"))?;
    let rows: Vec<(String, f64)> = stmt
        .query_map(params![container, name, format_ns(since)], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .and_then(|it| it.collect())
        .map_err(StoreError::sql("read samples for charts"))?;
    Ok(thin(
        rows.into_iter()
            .filter_map(|(ts, v)| Some((((parse_rfc3339(&ts)? - now) as f64) / 3.6e12, v)))
            .collect(),
    ))
}

/// Reads the chart series for `status`.
pub fn charts(conn: &Connection, status: &Status, now: i64) -> Result<Charts, StoreError> {
    let mut c = Charts::default();
    if let Some(t) = &status.training {
        c.run_label = format!("run {} ({})", t.run_id, t.container);
        let prev: Option<i64> = conn
            .query_row(queries::PREVIOUS_RUN, params![t.run_id, t.container], |r| {
                r.get(0)
            })
            .ok();
        if let Some(p) = prev {
            let (l, m) = epoch_series(conn, p, true)?;
            c.previous_label = Some(format!("run {p}"));
            c.losses.extend(l);
            c.maps.extend(m);
        }
        let (l, m) = epoch_series(conn, t.run_id, false)?;
        c.losses.extend(l);
        c.maps.extend(m);
    }
    for (i, g) in status.gpus.iter().enumerate() {
        let container = format!("gpu{}", g.gpu);
        let color = PALETTE[i % PALETTE.len()];
        for (name, out) in [
            (metric::GPU_TEMPERATURE_C, &mut c.gpu_temp),
            (metric::GPU_UTILIZATION_PCT, &mut c.gpu_util),
        ] {
            out.push(Series {
                name: format!("GPU {}", g.gpu),
                points: samples(conn, &container, name, now - HOST_WINDOW_NS, now)?,
                color,
                faint: false,
            });
        }
    }
    if status.disk.is_some() {
        c.disk.push(Series {
            name: "used %".into(),
            points: samples(
                conn,
                "host",
                metric::DISK_USAGE_AZAION_PCT,
                now - HOST_WINDOW_NS,
                now,
            )?,
            color: PALETTE[0],
            faint: false,
        });
    }
    for (i, k) in status.containers.iter().enumerate() {
        let role = k.role.clone().unwrap_or_else(|| "other".into());
        let at = match c.containers.iter().position(|r| r.role == role) {
            Some(at) => at,
            None => {
                c.containers.push(RoleCharts {
                    role,
                    ..RoleCharts::default()
                });
                c.containers.len() - 1
            }
        };
        let color = PALETTE[i % PALETTE.len()];
        let since = now - HOST_WINDOW_NS;
        let r = &mut c.containers[at];
        r.cpu.push(Series {
            name: k.container.clone(),
            points: samples(conn, &k.container, "container_cpu_pct", since, now)?,
            color,
            faint: false,
        });
        r.memory.push(Series {
            name: k.container.clone(),
            points: samples(
                conn,
                &k.container,
                "container_memory_used_bytes",
                since,
                now,
            )?
            .into_iter()
            .map(|(x, y)| (x, y / (1024.0 * 1024.0)))
            .collect(),
            color,
            faint: false,
        });
    }
    for q in &status.queues {
        for (name, label, color) in [
            (metric::QUEUE_MESSAGES_PROCESSED, "processed", PALETTE[2]),
            (metric::QUEUE_MESSAGES_FAILED, "failed", PALETTE[1]),
        ] {
            c.queue.push(Series {
                name: format!("{} {label}", q.container),
                points: samples(conn, &q.container, name, now - QUEUE_WINDOW_NS, now)?,
                color,
                faint: false,
            });
        }
    }
    Ok(c)
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// What a chart's x values are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum XAxis {
    /// Epoch numbers.
    Epoch,
    /// Hours relative to now (negative): labelled as ages, `6h ago` ... `now`.
    Ago,
}

/// An end of a time axis: `now`, or how long ago.
fn ago_label(hours: f64) -> String {
    let ns = (-hours * 3.6e12) as i64;
    if ns < 60_000_000_000 {
        "now".into()
    } else {
        format!("{} ago", human_duration(ns))
    }
}

/// A line chart as inline SVG. `hlines` are dashed threshold lines. Its labels are 14 px at
/// most and the same in every chart: the SVG is never drawn wider than its view box.
fn chart(title: &str, x: XAxis, series: &[Series], hlines: &[(f64, &'static str)]) -> Markup {
    let (w, h) = (480.0, 200.0);
    let (l, r, t, b) = (44.0, 10.0, 10.0, 26.0);
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    for (y, _) in hlines {
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    let empty = x0 > x1;
    if empty {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-9 {
        y1 = y0 + 1.0;
    }
    if y0 > 0.0 && y0 < (y1 - y0) {
        y0 = 0.0;
    }
    let sx = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let sy = |y: f64| t + (1.0 - (y - y0) / (y1 - y0)) * (h - t - b);
    let ticks: Vec<f64> = (0..=4).map(|i| y0 + (y1 - y0) * i as f64 / 4.0).collect();
    html! {
        figure.chart {
            figcaption { (title) }
            svg.chart viewBox=(format!("0 0 {w} {h}")) role="img" aria-label=(title) preserveAspectRatio="xMidYMid meet" {
                @for y in &ticks {
                    line x1=(l) x2=(w - r) y1=(sy(*y)) y2=(sy(*y)) stroke="#e5e7eb" {}
                    text x=(l - 4.0) y=(sy(*y) + 4.0) text-anchor="end" font-size="14" fill="#6b7280" { (fmt_num(*y)) }
                }
                @let (left, right, middle) = match x {
                    XAxis::Epoch => (fmt_num(x0), fmt_num(x1), "epoch".to_string()),
                    XAxis::Ago if empty => (String::new(), String::new(), "time".to_string()),
                    XAxis::Ago => (ago_label(x0), ago_label(x1), "time".to_string()),
                };
                text x=(l) y=(h - 8.0) font-size="14" fill="#6b7280" { (left) }
                text x=(w - r) y=(h - 8.0) font-size="14" fill="#6b7280" text-anchor="end" { (right) }
                text x=((l + w - r) / 2.0) y=(h - 8.0) font-size="14" fill="#6b7280" text-anchor="middle" { (middle) }
                @for (y, color) in hlines {
                    line x1=(l) x2=(w - r) y1=(sy(*y)) y2=(sy(*y)) stroke=(color) stroke-dasharray="4 3" {}
                }
                @for s in series {
                    @let p: Vec<String> = s.points.iter().map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
                    @if p.len() == 1 {
                        circle cx=(sx(s.points[0].0)) cy=(sy(s.points[0].1)) r="3" fill=(s.color) opacity=(if s.faint { "0.3" } else { "1" }) {
                            title { (s.name) }
                        }
                    } @else if !p.is_empty() {
                        polyline.series points=(p.join(" ")) fill="none" stroke=(s.color)
                            stroke-width=(if s.faint { "1" } else { "2" })
                            opacity=(if s.faint { "0.3" } else { "1" })
                            stroke-dasharray=(if s.faint { "3 2" } else { "none" }) {
                            title { (s.name) }
                        }
                    }
                }
                @if empty {
                    text x=(w / 2.0) y=(h / 2.0) text-anchor="middle" fill="#9ca3af" font-size="14" { "no data yet" }
                }
            }
            ul.legend {
                @for s in series.iter().filter(|s| !s.faint) {
                    li { span.swatch style=(format!("background:{}", s.color)) {} (s.name) }
                }
            }
        }
    }
}

const CSS: &str = "
:root{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#111827;background:#f9fafb}
body{margin:0 auto;max-width:1100px;padding:12px}
tr.down td{color:#b91c1c}
h1{font-size:1.3rem;margin:.2rem 0}h2{font-size:1.05rem;margin:1rem 0 .4rem}
.muted{color:#6b7280;font-size:.85rem}
.failure{color:#b91c1c}
p,.alert{overflow-wrap:anywhere}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:12px}
.card{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:10px 12px}
.alert{border-left:6px solid;padding:6px 10px;margin:4px 0;background:#fff;border-radius:4px}
.sev-critical{border-color:#b91c1c;background:#fef2f2}.sev-high{border-color:#ea580c;background:#fff7ed}
.sev-medium{border-color:#ca8a04;background:#fefce8}.sev-low{border-color:#2563eb;background:#eff6ff}
.resolved{opacity:.7}
.bar{height:14px;background:#e5e7eb;border-radius:7px;overflow:hidden}
.bar>div{height:100%;background:#2563eb}
figure.chart{margin:0}figcaption{font-weight:600;font-size:.9rem}
svg.chart{width:100%;max-width:480px;height:auto;display:block}
ul.legend{list-style:none;padding:0;margin:2px 0;display:flex;flex-wrap:wrap;gap:10px;font-size:.8rem}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px}
table{border-collapse:collapse;font-size:.85rem}td,th{padding:2px 8px 2px 0;text-align:left}
.ok{color:#15803d}.warn{color:#b45309}.crit{color:#b91c1c}
";

/// Keeps the "updated ... ago" line current and reports script errors in the page itself.
const SCRIPT: &str = "
(function(){
  var errors=[];
  window.addEventListener('error',function(e){errors.push(String(e.message));document.body.setAttribute('data-errors',errors.join('|'));});
  var el=document.getElementById('age');
  var t=Date.parse(el.getAttribute('data-generated'));
  function tick(){var s=Math.max(0,Math.round((Date.now()-t)/1000));
    el.textContent=s<120?s+' s ago':Math.round(s/60)+' min ago';}
  tick();setInterval(tick,5000);
  var charts=document.querySelectorAll('svg.chart');
  document.body.setAttribute('data-charts',String(charts.length));
  // The drawn size of the charts' 14-unit labels, smallest and largest (tests read it).
  var px=[].map.call(charts,function(c){return 14*c.getBoundingClientRect().width/c.viewBox.baseVal.width;});
  if(px.length){document.body.setAttribute('data-label-px',Math.min.apply(null,px).toFixed(2)+'-'+Math.max.apply(null,px).toFixed(2));}
  document.body.setAttribute('data-overflow',String(document.documentElement.scrollWidth>window.innerWidth+1));
  document.body.setAttribute('data-ready','1');
})();
";

fn hours(v: Option<f64>) -> String {
    v.map(|s| human_duration((s * 1e9) as i64))
        .unwrap_or_else(|| "–".into())
}

fn bytes(v: Option<f64>) -> String {
    v.map(super::status::human_bytes)
        .unwrap_or_else(|| "–".into())
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map(|v| format!("{}{unit}", fmt_num(v)))
        .unwrap_or_else(|| "–".into())
}

/// `%.4g`, as Ultralytics prints losses: 4 significant digits, trailing zeros dropped.
fn sig4(f: f64) -> String {
    if f == 0.0 || !f.is_finite() {
        return format!("{f}");
    }
    let decimals = (3 - f.abs().log10().floor() as i32).clamp(0, 12) as usize;
    let s = format!("{f:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// `box 0.2109  cls 0.3334  dfl 0.1759`: the loss columns by name, to 4 significant digits as
/// the console prints them, `nan` as it is.
pub fn losses_text(losses: &serde_json::Value) -> Option<String> {
    let serde_json::Value::Object(m) = losses else {
        return None;
    };
    let parts: Vec<String> = m
        .iter()
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), sig4),
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            format!("{} {v}", k.trim_end_matches("_loss"))
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("  "))
}

/// Renders the page. `refresh_secs` adds a meta refresh (for the page `watch` serves).
#[expect(
    clippy::too_many_lines,
    reason = "the page's markup: one maud template, section after section"
)]
pub fn render(s: &Status, c: &Charts, refresh_secs: Option<u64>) -> String {
    // Times on screen are ages at the page's own time; the timestamps are in `title`s.
    let now = crate::time::parse_rfc3339(&s.generated_at).unwrap_or(0);
    let ago = |t: Option<&str>| crate::time::ago(now, t);
    let since = |t: &str| crate::time::since(now, t);
    let level_class = match s.health.code {
        0 => "ok",
        1 => "warn",
        _ => "crit",
    };
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(r) = refresh_secs {
                    meta http-equiv="refresh" content=(r);
                }
                title { "trainwatch: " (s.health.level) }
                style { (PreEscaped(CSS)) }
            }
            body {
                h1 { "trainwatch " span class=(level_class) { (s.health.level) } }
                p.muted {
                    "Updated " span #age data-generated=(s.generated_at) { (s.generated_at) }
                    @if let Some(h) = &s.heartbeat_at { " · ingestor heartbeat " span title=(h) { (ago(Some(h))) } }
                    @if let Some(r) = &s.newest_record_at { " · newest record " span title=(r) { (ago(Some(r))) } }
                }
                p { (s.health.line) }
                section #alerts {
                    h2 { "Firing alerts (" (s.alerts_firing.len()) ")" }
                    @if s.alerts_firing.is_empty() { p.muted { "None." } }
                    @for a in &s.alerts_firing {
                        div class=(format!("alert sev-{}", a.severity)) {
                            strong { (a.alertname) } " · " (a.severity) " · firing for " span title=(a.started_at) { (since(&a.started_at)) }
                            br; (a.summary)
                            @if let Some(note) = &a.silenced { br; span.muted.silenced { (note) } }
                        }
                    }
                    @if !s.alerts_resolved_recently.is_empty() {
                        details {
                            summary.muted { "Last resolved" }
                            @for a in &s.alerts_resolved_recently {
                                div class=(format!("alert resolved sev-{}", a.severity)) {
                                    strong { (a.alertname) } " · began " span title=(a.started_at) { (ago(Some(&a.started_at))) } ", resolved " span title=(a.resolved_at.as_deref().unwrap_or("")) { (ago(a.resolved_at.as_deref())) }
                                    br; (a.summary)
                                }
                            }
                        }
                    }
                }
                section #training {
                    h2 { "Training" }
                    @match &s.training {
                        None => p.muted { "No training run recorded yet." },
                        Some(t) => {
                            div.card {
                                p {
                                    strong { "Run " (t.run_id) } " in " (t.container) " · " (t.status)
                                    " · epoch " (t.epoch) @if let Some(n) = t.epochs_total { "/" (n) }
                                }
                                @if let Some(f) = &t.failure {
                                    p.failure { strong { "Why: " } (f) }
                                }
                                @if let Some(problem) = &t.folder_problem {
                                    p.muted { strong { "Run folder: " } (problem) }
                                }
                                @if let Some(n) = t.epochs_total.filter(|n| *n > 0) {
                                    div.bar { div style=(format!("width:{:.1}%", (t.epoch as f64 * 100.0 / n as f64).min(100.0))) {} }
                                }
                                p {
                                    "Epoch time " (hours(t.epoch_seconds))
                                    " · last epoch " span title=(t.last_epoch_at.as_deref().unwrap_or("")) { (ago(t.last_epoch_at.as_deref())) }
                                    " · ETA " @if t.eta_stale { strong { "stale" } " (the run has not moved)" } @else { (hours(t.eta_seconds)) }
                                    " · best mAP50-95 " (opt(t.best_map50_95, "")) @if let Some(e) = t.best_epoch { " (epoch " (e) ")" }
                                }
                                p.muted { "Last losses: " (losses_text(&t.losses).unwrap_or_else(|| opt(t.loss, ""))) }
                                @if let Some(m) = t.metrics_summary() {
                                    p.muted { "Last metrics: " (m) }
                                }
                            }
                            div.grid {
                                div.card { (chart(&format!("Losses per epoch, {}{}", c.run_label, c.previous_label.as_ref().map(|p| format!(" (faint: {p})")).unwrap_or_default()), XAxis::Epoch, &c.losses, &[])) }
                                div.card { (chart("mAP50 and mAP50-95 per epoch", XAxis::Epoch, &c.maps, &[])) }
                            }
                        }
                    }
                }
                section #host {
                    h2 { "GPU and disk" }
                    div.grid {
                        div.card { (chart("GPU temperature °C, last 6 h", XAxis::Ago, &c.gpu_temp, &[(90.0, "#b91c1c")])) }
                        div.card { (chart("GPU utilisation %, last 6 h", XAxis::Ago, &c.gpu_util, &[])) }
                        div.card { (chart("Disk used %, last 6 h", XAxis::Ago, &c.disk, &[(80.0, "#ca8a04"), (95.0, "#b91c1c")])) }
                    }
                    @if s.gpus.is_empty() {
                        p.muted { "No GPU samples (nvidia-smi not found or not run yet)." }
                    } @else {
                        table {
                            tr { th { "GPU" } th { "temp" } th { "util" } th { "memory" } }
                            @for g in &s.gpus {
                                tr { td { (g.gpu) } td { (opt(g.temperature_c, " °C")) } td { (opt(g.utilization_pct, " %")) }
                                     td { (opt(g.memory_used_mb, "")) " / " (opt(g.memory_total_mb, " MiB")) } }
                            }
                        }
                    }
                    @if let Some(d) = &s.disk {
                        p { "Disk " (opt(d.used_pct, " %")) " used (" (opt(d.used_gb, " GB")) " of " (opt(d.total_gb, " GB"))
                            ") · datasets " (opt(d.datasets_gb, " GB")) " · models " (opt(d.models_gb, " GB")) }
                    }
                    @if let Some(cp) = &s.last_checkpoint {
                        p { "Last checkpoint of this run: " (cp.outcome()) " "
                            span title=(cp.ts) { (ago(Some(&cp.ts))) } ": " (cp.message.lines().next().unwrap_or("")) }
                    }
                }
                section #containers {
                    h2 { "Containers" }
                    @if !s.followed.is_empty() {
                        table #followed {
                            tr { th { "container" } th { "role" } th { "state" } th { "last line" } th { "secrets redacted" } }
                            @for f in &s.followed {
                                tr class=(if f.is_down() { "down" } else { "" }) {
                                    td { (f.container) } td { (f.role) }
                                    td { (f.state_text()) }
                                    td title=(f.last_line_at.as_deref().unwrap_or("")) { (ago(f.last_line_at.as_deref())) }
                                    td { (s.redactions.iter().find(|r| r.container == f.container).map(super::status::Redactions::text).unwrap_or_default()) }
                                }
                            }
                        }
                    }
                    @if s.containers.is_empty() {
                        p.muted { "No Docker stats yet (they are sampled by watch at the probe interval)." }
                    } @else {
                        table {
                            tr { th { "container" } th { "role" } th { "CPU" } th { "memory" } th { "network in / out" } th { "block read / write" } }
                            @for k in &s.containers {
                                tr { td { (k.container) } td { (k.role.as_deref().unwrap_or("?")) } td { (opt(k.cpu_pct, " %")) }
                                     td { (bytes(k.memory_used_bytes)) " / " (bytes(k.memory_limit_bytes)) }
                                     td { (bytes(k.network_rx_bytes)) " / " (bytes(k.network_tx_bytes)) }
                                     td { (bytes(k.block_read_bytes)) " / " (bytes(k.block_write_bytes)) } }
                            }
                        }
                        div.grid {
                            @for r in &c.containers {
                                div.card { (chart(&format!("CPU % of {} containers, last 6 h", r.role), XAxis::Ago, &r.cpu, &[])) }
                                div.card { (chart(&format!("Memory MiB of {} containers, last 6 h", r.role), XAxis::Ago, &r.memory, &[])) }
                            }
                        }
                    }
                }
                section #queue {
                    h2 { "Annotation queue" }
                    @if s.queues.is_empty() { p.muted { "No queue counters recorded yet." } }
                    @for q in &s.queues {
                        p { strong { (q.container) } @if q.down { " " span.crit { "DOWN" } } ": processed " (opt(q.processed, "")) ", failed " (opt(q.failed, ""))
                            ", offset " (opt(q.offset, "")) " (unchanged for " (hours(q.offset_age_seconds)) ")" }
                    }
                    div.grid {
                        div.card { (chart("Queue counters, last 24 h", XAxis::Ago, &c.queue, &[])) }
                    }
                }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    };
    page.into_string()
}

/// Collects everything and renders the page.
pub fn build(
    conn: &Connection,
    status: &Status,
    now: i64,
    refresh_secs: Option<u64>,
) -> Result<String, StoreError> {
    let c = charts(conn, status, now)?;
    Ok(render(status, &c, refresh_secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_read_as_the_console_prints_them() {
        let v = serde_json::json!({"box_loss": 3.00912, "cls_loss": 0.023449, "dfl_loss": "nan", "x_loss": 1234.6});
        assert_eq!(
            losses_text(&v).unwrap(),
            "box 3.009  cls 0.02345  dfl nan  x 1235"
        );
        assert_eq!(losses_text(&serde_json::Value::Null), None);
    }

    #[test]
    fn text_from_logs_is_escaped() {
        let empty = Status {
            generated_at: "2026-03-28T14:30:00.000000000Z".into(),
            health: super::super::status::Health {
                code: 2,
                level: "CRITICAL",
                line: "CRITICAL: <b>x</b>".into(),
                data_age_seconds: None,
            },
            heartbeat_at: None,
            newest_record_at: None,
            training: None,
            queues: vec![],
            gpus: vec![],
            containers: vec![],
            disk: None,
            last_checkpoint: None,
            followed: vec![],
            followed_total: 0,
            followed_down: 0,
            redactions: vec![],
            alerts_firing: vec![crate::store::alerts::AlertRow {
                id: 1,
                fingerprint: "f".into(),
                alertname: "CheckpointSaveFailed".into(),
                severity: "low".into(),
                status: "firing".into(),
                labels: serde_json::json!({}),
                summary: "Checkpoint save failed: <script>alert(1)</script> & \"quotes\"".into(),
                started_at: "2026-03-28T14:30:00.000000000Z".into(),
                resolved_at: None,
                last_notified_at: None,
                silenced: None,
            }],
            alerts_resolved_recently: vec![],
            gauges: vec![],
        };
        let html = render(&empty, &Charts::default(), Some(30));
        assert!(!html.contains("<script>alert(1)"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quotes&quot;"));
        assert!(html.contains("CRITICAL: &lt;b&gt;x&lt;/b&gt;"));
        assert!(html.contains(r#"<meta http-equiv="refresh" content="30">"#));
        assert!(html.contains("sev-low"));
        // Only our own script, no external assets.
        assert_eq!(html.matches("<script").count(), 1);
        assert!(!html.contains("src=") && !html.contains("href=\"http"));
    }

    #[test]
    fn charts_scale_points_and_draw_thresholds() {
        let s = vec![Series {
            name: "box_loss".into(),
            points: vec![(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)],
            color: PALETTE[0],
            faint: false,
        }];
        let svg = chart("Losses", XAxis::Epoch, &s, &[(2.5, "#b91c1c")]).into_string();
        assert!(
            svg.contains(r#"<polyline class="series" points="44.0,10.0 257.0,"#),
            "{svg}"
        );
        assert!(svg.contains("stroke-dasharray=\"4 3\""));
        assert!(svg.contains("<title>box_loss</title>"));
        let none = chart("Empty", XAxis::Ago, &[], &[]).into_string();
        assert!(none.contains("no data yet"));
        // A time axis reads as ages, never as fractions of an hour.
        let recent = vec![Series {
            name: "used %".into(),
            points: vec![(-0.043, 70.0), (-0.0001, 71.0)],
            color: PALETTE[0],
            faint: false,
        }];
        let svg = chart("Disk", XAxis::Ago, &recent, &[]).into_string();
        assert!(svg.contains(">2m ago<") && svg.contains(">now<"), "{svg}");
        assert!(!svg.contains("-0.0") && !svg.contains("hours"), "{svg}");
        let day = vec![Series {
            points: vec![(-24.0, 1.0), (-1.5, 2.0)],
            ..recent[0].clone()
        }];
        let svg = chart("Queue", XAxis::Ago, &day, &[]).into_string();
        assert!(
            svg.contains(">1d0h ago<") && svg.contains(">1h30m ago<"),
            "{svg}"
        );
    }

    #[test]
    fn long_series_are_thinned_keeping_the_last_point() {
        let pts: Vec<(f64, f64)> = (0..10_000).map(|i| (i as f64, i as f64)).collect();
        let t = thin(pts);
        assert!(t.len() <= MAX_POINTS + 1);
        assert_eq!(t.last(), Some(&(9999.0, 9999.0)));
        assert_eq!(t[0], (0.0, 0.0));
    }
}
