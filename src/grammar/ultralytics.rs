//! Parsers for the lines Ultralytics YOLO (v8, 11, 26) prints while training, after frame
//! selection and ANSI stripping. One small nom parser per line shape; see
//! `../shared/reference/log-formats.md` §1 for where each format string comes from.
//!
//! Loss columns are never mapped by position: the epoch header (`Epoch GPU_mem box_loss cls_loss
//! dfl_loss Instances Size`) names them, and progress rows are read against the latest header.

use nom::{
    IResult, Parser,
    branch::alt,
    bytes::complete::{tag, take_till1, take_while1},
    character::complete::{char, digit1, space0, space1},
    combinator::{map_res, opt, rest},
    multi::many1,
    sequence::preceded,
};

/// A training progress row (one bar frame): `  82/120  6.66G  0.6647  0.3599  1.079  38  640: ...`.
/// YOLOv5's `train.py` prints the same shape with 0-based epochs (`0/99` for 100 epochs).
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    pub epoch: u32,
    pub epochs: u32,
    pub gpu_mem_gb: f64,
    /// Every number after GPU memory, in column order: the running-mean losses, then
    /// Instances and Size. A row cut at the terminal width ends early.
    pub values: Vec<f64>,
    /// The row goes on into its bar (`...  640: 100% ...`): every column is there.
    pub has_bar: bool,
    pub percent: Option<u32>,
    /// Batches done and total, when the bar shows `n/total`.
    pub batches: Option<(u64, u64)>,
}

impl Progress {
    /// The loss values, for a header naming `n_losses` loss columns (when known). A whole row
    /// (with its bar) ends with Instances and Size, so its losses are everything before them;
    /// a row cut short is read from the left, so a missing right-hand column never moves a
    /// value into another column.
    pub fn losses(&self, n_losses: Option<usize>) -> &[f64] {
        let v = &self.values;
        match n_losses {
            Some(n) if !self.has_bar => &v[..n.min(v.len())],
            _ => &v[..v.len().saturating_sub(2)],
        }
    }

    /// Whether this frame is the bar's last (all batches done).
    pub fn complete(&self) -> bool {
        match (self.batches, self.percent) {
            (Some((n, total)), _) => n >= total,
            (None, Some(p)) => p >= 100,
            _ => false,
        }
    }
}

/// The validation `all` row: `all  images  instances  P  R  mAP50  mAP50-95`. Segmentation and
/// pose runs append a second group of the same four for masks or keypoints
/// (`Box(P R mAP50 mAP50-95) Mask(P R mAP50 mAP50-95)`): the first four are the box metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct Validation {
    pub images: u64,
    /// The columns after the image count, as far as the row goes: a row cut short (a paste,
    /// a terminal's width) gives the values it shows, from the left, and invents none.
    pub instances: Option<u64>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub map50: Option<f64>,
    pub map50_95: Option<f64>,
    /// The columns after the box metrics (a mask or pose group of four), in order.
    pub more: Vec<f64>,
}

type R<'a, T> = IResult<&'a str, T>;

/// A whitespace-free token parsed as f64; accepts `nan`, `inf`, `-inf`, `1e-05`.
fn number(i: &str) -> R<'_, f64> {
    map_res(
        take_till1(|c: char| c.is_whitespace() || c == ':'),
        str::parse::<f64>,
    )
    .parse(i)
}

fn uint(i: &str) -> R<'_, u64> {
    map_res(digit1, str::parse::<u64>).parse(i)
}

/// `82/120`
fn epoch_of(i: &str) -> R<'_, (u32, u32)> {
    let (i, (e, _, n)) = (uint, char('/'), uint).parse(i)?;
    Ok((
        i,
        (e.min(u32::MAX as u64) as u32, n.min(u32::MAX as u64) as u32),
    ))
}

/// `6.66G`, `0G`, `1.23e+03G`
fn gpu_mem(i: &str) -> R<'_, f64> {
    let (i, tok) = take_while1(|c: char| !c.is_whitespace()).parse(i)?;
    match tok.strip_suffix('G').map(str::parse::<f64>) {
        Some(Ok(v)) => Ok((i, v)),
        _ => Err(nom::Err::Error(nom::error::Error::new(
            i,
            nom::error::ErrorKind::Float,
        ))),
    }
}

/// The bar after the description: old tqdm `100%|██████████| 8/8 [...]`, new
/// `100% ━━━━━━━━━━━━ 8/8 6.5it/s 1.2s`, Colab `100% 85/85 [...]`. Returns (percent, n/total).
fn bar_fields(i: &str) -> (Option<u32>, Option<(u64, u64)>) {
    let i = i.trim_start();
    let pct: R<'_, u64> = uint(i);
    let Ok((after, p)) = pct else {
        return (None, None);
    };
    if !after.starts_with('%') {
        return (None, None);
    }
    // The first `n/total` token after the percentage.
    let batches = after[1..]
        .split(|c: char| c.is_whitespace() || c == '|')
        .find_map(|tok| {
            let (n, t) = tok.split_once('/')?;
            Some((n.parse().ok()?, t.parse().ok()?))
        });
    (Some(p.min(u32::MAX as u64) as u32), batches)
}

/// Parses a training progress row. Needs at least one loss column besides Instances and Size.
pub fn progress_row(line: &str) -> Option<Progress> {
    let parsed: R<'_, _> = (
        preceded(space0, epoch_of),
        preceded(space1, gpu_mem),
        many1(preceded(space1, number)),
        opt(preceded(char(':'), rest)),
    )
        .parse(line);
    let (rest, ((epoch, epochs), gpu_mem_gb, values, tail)) = parsed.ok()?;
    // A row Ultralytics elided to the terminal's width (a TTY, `docker run -t`, 80 columns):
    // `2/2  0G  6.586  4.3…: 100% ━━━━ 8/8 ...`: its whole values before the cut cell, never
    // the cut one; the bar after it still tells how far the epoch is.
    let (tail, elided) = match tail {
        Some(t) => (Some(t), false),
        None => match elided_cell(rest) {
            Some(bar) => (bar, true),
            None => (None, false),
        },
    };
    // 1-based `k/N` (Ultralytics) or 0-based `k/N-1` (YOLOv5): never past the total.
    if epoch > epochs
        || (!elided && values.len() < 2)
        || (tail.is_some() && !elided && values.len() < 3)
    {
        return None;
    }
    let (percent, batches) = tail.map(bar_fields).unwrap_or((None, None));
    Some(Progress {
        epoch,
        epochs,
        gpu_mem_gb,
        values,
        has_bar: tail.is_some() && !elided,
        percent,
        batches,
    })
}

/// What is left of a row after its whole values, when it is one cell cut at the terminal's
/// width and marked with `…` (or `...`): `Some(the bar after it, if any)`.
fn elided_cell(rest: &str) -> Option<Option<&str>> {
    let r = rest.trim_start();
    let end = r
        .find(|c: char| c.is_whitespace() || c == ':')
        .unwrap_or(r.len());
    let (cell, after) = r.split_at(end);
    if cell.is_empty() || !(cell.ends_with('…') || cell.ends_with("...")) {
        return None;
    }
    match after.strip_prefix(':') {
        Some(bar) => Some(Some(bar)),
        None if after.trim().is_empty() => Some(None),
        None => None,
    }
}

/// The count columns that end an epoch header: Ultralytics and YOLOv5 v6+ `Instances Size`,
/// older YOLOv5 `labels img_size` or `targets img_size`.
const COUNT_COLUMNS: [&str; 5] = ["Size", "Instances", "img_size", "labels", "targets"];

/// Parses the epoch header and returns the loss column names between `GPU_mem` and
/// `Instances`: `Epoch GPU_mem box_loss cls_loss dfl_loss Instances Size` (Ultralytics),
/// `Epoch GPU_mem box_loss obj_loss cls_loss Instances Size` (YOLOv5), or the older YOLOv5
/// `Epoch gpu_mem box obj cls total labels img_size`, whose short names are given their
/// `_loss` suffix (`total`, their sum, is kept as it is). A header cut at the terminal width
/// keeps the names it shows.
pub fn epoch_header(line: &str) -> Option<Vec<String>> {
    let parsed: R<'_, _> = (
        preceded(space0, tag("Epoch")),
        preceded(space1, alt((tag("GPU_mem"), tag("gpu_mem")))),
        many1(preceded(space1, take_while1(|c: char| !c.is_whitespace()))),
    )
        .parse(line);
    let (rest, (_, _, mut names)) = parsed.ok()?;
    if !rest.trim().is_empty() {
        return None;
    }
    // A header cut at the terminal width may end inside a count column's name (`Instan`).
    if names
        .last()
        .is_some_and(|n| COUNT_COLUMNS.iter().any(|c| c.starts_with(n) && c != n))
    {
        names.pop();
    }
    let mut counts = 0;
    while counts < 2 && names.last().is_some_and(|n| COUNT_COLUMNS.contains(n)) {
        names.pop();
        counts += 1;
    }
    if names.is_empty() || names.iter().any(|n| COUNT_COLUMNS.contains(n)) {
        return None;
    }
    Some(
        names
            .into_iter()
            .map(|n| {
                // YOLOv5's short names (`box obj cls`) get their suffix; named columns
                // (`giou_loss`, YOLOv10's `box_om cls_oo`) are kept as printed.
                if n.contains('_') || n == "total" || n == "loss" {
                    n.to_string()
                } else if n == "GIoU" {
                    "box_loss".to_string()
                } else {
                    format!("{n}_loss")
                }
            })
            .collect(),
    )
}

/// Parses the validation `all` row: `all  images  instances  P  R  mAP50  mAP50-95 [more]`.
/// A row cut short keeps what it shows, mapped from the left: one elided to the terminal's
/// width (`… 0.5  0.2…`, the cut cell dropped), or one that simply ends early when its image
/// count leaves no doubt that it is no classifier's `all  top1  top5` row.
pub fn val_all_row(line: &str) -> Option<Validation> {
    let rest = line.trim_start().strip_prefix("all")?;
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    let mut tokens = rest.split_whitespace().peekable();
    let mut numbers: Vec<f64> = Vec::new();
    while let Some(t) = tokens.peek() {
        match number(t) {
            Ok(("", v)) => {
                numbers.push(v);
                tokens.next();
            }
            _ => break,
        }
    }
    let left: Vec<&str> = tokens.collect();
    let elided = match left[..] {
        [] => false,
        [cell] if elided_cell(cell) == Some(None) => true,
        _ => return None,
    };
    // Counts are integers, except in older YOLOv5 (`%12.3g`: `1.55e+03`).
    let count = |v: f64| (v.is_finite() && v >= 0.0 && v.fract() == 0.0).then_some(v as u64);
    let images = count(*numbers.first()?)?;
    let instances = match numbers.get(1) {
        Some(v) => Some(count(*v)?),
        None => None,
    };
    let m = numbers.get(2..).unwrap_or_default();
    if m.len() < 4 && !elided && images <= 1 {
        return None;
    }
    Some(Validation {
        images,
        instances,
        precision: m.first().copied(),
        recall: m.get(1).copied(),
        map50: m.get(2).copied(),
        map50_95: m.get(3).copied(),
        more: m.get(4..).unwrap_or_default().to_vec(),
    })
}

/// A classification run's validation `all` row: `all  top1_acc  top5_acc`
/// (`"%22s" + "%11.3g" * 2` under the header `classes top1_acc top5_acc`).
pub fn accuracy_all_row(line: &str) -> Option<(f64, f64)> {
    let parsed: R<'_, _> = (
        preceded(space0, tag("all")),
        preceded(space1, number),
        preceded(space1, number),
        space0,
    )
        .parse(line);
    let (rest, (_, top1, top5, _)) = parsed.ok()?;
    rest.is_empty().then_some((top1, top5))
}

/// The text after the trainer's settings prefix: `engine/trainer:`, or as YOLOv8.0 printed it
/// with the module path, `yolo/engine/trainer:`, and on Windows with backslashes
/// (`engine\trainer:`, `yolo\engine\trainer:`).
pub fn strip_trainer_prefix(t: &str) -> Option<&str> {
    fn sep(s: &str) -> Option<&str> {
        s.strip_prefix('/').or_else(|| s.strip_prefix('\\'))
    }
    let t = t
        .strip_prefix("yolo")
        .and_then(sep)
        .filter(|r| r.starts_with("engine"))
        .unwrap_or(t);
    sep(t.strip_prefix("engine")?)?.strip_prefix("trainer:")
}

/// `engine/trainer: task=detect, mode=train, model=yolo11n.yaml, ..., epochs=3, ..., resume=False, ...`
/// Returns the settings as (key, value) pairs. Values may contain `, ` only inside brackets,
/// which Ultralytics prints for lists; those are kept whole.
///
/// YOLOv5's `train.py` prints its arguments the same way after `train: `
/// (`train: weights=yolov5s.pt, cfg=, data=coco128.yaml, ..., epochs=100, ...`).
pub fn trainer_settings(line: &str) -> Option<Vec<(String, String)>> {
    let t = line.trim_start();
    let body = match strip_trainer_prefix(t) {
        Some(b) => b.trim(),
        None => t
            .strip_prefix("train: ")
            .filter(|b| b.starts_with("weights=") && b.contains(", epochs="))?
            .trim(),
    };
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    let bytes = body.as_bytes();
    let mut push = |s: &str| {
        if let Some((k, v)) = s.split_once('=') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    };
    for (i, &c) in bytes.iter().enumerate() {
        match c {
            b'[' | b'(' | b'{' => depth += 1,
            b']' | b')' | b'}' => depth -= 1,
            b',' if depth <= 0 && bytes.get(i + 1) == Some(&b' ') => {
                push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    push(&body[start..]);
    (!out.is_empty()).then_some(out)
}

/// `Starting training for 120 epochs...` -> 120 (`for 2.5 hours...` -> None epochs).
pub fn starting_training(line: &str) -> Option<Option<u32>> {
    let rest = line.trim().strip_prefix("Starting training for ")?;
    let (n, unit) = rest.split_once(' ')?;
    if unit.starts_with("epochs") {
        Some(n.parse().ok())
    } else if unit.starts_with("hours") {
        Some(None)
    } else {
        None
    }
}

/// `Resuming training runs/detect/train/weights/last.pt from epoch 4 to 10 total epochs`
/// -> (model, from_epoch, total).
///
/// 8.0.x: `Resuming training from runs/detect/train/weights/last.pt from epoch 4 to 10 total epochs`.
pub fn resuming(line: &str) -> Option<(String, u32, u32)> {
    let rest = line.trim().strip_prefix("Resuming training ")?;
    let (model, rest) = rest.rsplit_once(" from epoch ")?;
    let model = model.strip_prefix("from ").unwrap_or(model);
    let (from, rest) = rest.split_once(" to ")?;
    let total = rest.strip_suffix(" total epochs")?;
    Some((
        model.to_string(),
        from.trim().parse().ok()?,
        total.trim().parse().ok()?,
    ))
}

/// `188 epochs completed in 0.422 hours.` -> (188, 0.422)
pub fn epochs_completed(line: &str) -> Option<(u32, f64)> {
    let parsed: R<'_, _> = (
        preceded(space0, uint),
        tag(" epochs completed in "),
        number,
        tag(" hours."),
    )
        .parse(line);
    let (_, (n, _, h, _)) = parsed.ok()?;
    Some((n.min(u32::MAX as u64) as u32, h))
}

/// `EarlyStopping: Training stopped early as no improvement observed in last 15 epochs. Best
/// results observed at epoch 70, best model saved as best.pt.` -> (best epoch, patience)
///
/// 8.0.x printed it without the prefix: `Stopping training early as no improvement observed in
/// last 100 epochs. Best results observed at epoch 945, best model saved as best.pt.`
pub fn early_stopping(line: &str) -> Option<(u32, Option<u32>)> {
    let t = line.trim_start();
    let rest = t.strip_prefix("EarlyStopping: ").unwrap_or(t);
    if !rest.starts_with("Training stopped early") && !rest.starts_with("Stopping training early") {
        return None;
    }
    let best = rest.split_once("observed at epoch ")?.1;
    let best: u32 = best
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    let patience = rest
        .split_once("observed in last ")
        .and_then(|(_, r)| r.split(' ').next())
        .and_then(|n| n.parse().ok());
    Some((best, patience))
}

/// `Results saved to runs/detect/train` / `Logging results to runs/detect/train`
pub fn results_dir(line: &str) -> Option<&str> {
    let t = line.trim();
    let dir = t
        .strip_prefix("Results saved to ")
        .or_else(|| t.strip_prefix("Logging results to "))?;
    (!dir.is_empty()).then_some(dir.trim())
}

/// The optimizer a training resolved, as its `optimizer:` line prints it: the values used,
/// which differ from the settings' when `optimizer=auto`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Optimizer {
    /// `AdamW`, `SGD`, `MuSGD`, ...
    pub name: String,
    /// Its arguments as printed (`lr`, `momentum`), in order.
    pub args: Vec<(String, String)>,
}

/// `optimizer: AdamW(lr=0.001667, momentum=0.9) with parameter groups 81 weight(decay=0.0), ...`
/// (YOLOv5: `optimizer: SGD(lr=0.01) with parameter groups ...`). The line that announces the
/// resolution (`optimizer: 'optimizer=auto' found, ignoring ...`) is none.
pub fn optimizer(line: &str) -> Option<Optimizer> {
    let rest = line.trim().strip_prefix("optimizer:")?.trim_start();
    let (name, rest) = rest.split_once('(')?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    let (inner, tail) = rest.split_once(')')?;
    if !tail.trim_start().starts_with("with parameter groups") {
        return None;
    }
    let args = inner
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .collect();
    Some(Optimizer {
        name: name.to_string(),
        args,
    })
}

/// `Tuner: Starting iteration 3/300 with hyperparameters: {...}` (`model.tune()`): the
/// training that follows is that iteration's. (iteration, iterations)
pub fn tune_iteration(line: &str) -> Option<(u32, u32)> {
    let rest = line.trim().strip_prefix("Tuner:")?.trim_start();
    let rest = rest.strip_prefix("Starting iteration ")?;
    let (k, rest) = rest.split_once('/')?;
    let n = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    Some((k.parse().ok()?, n.parse().ok()?))
}

/// `MLflow: logging run_id(0c9b...) to http://mlflow:5000`: Ultralytics' own MLflow callback
/// logs the training itself. Its run id and tracking URI.
pub fn mlflow_run(line: &str) -> Option<(&str, &str)> {
    let rest = line.trim().strip_prefix("MLflow:")?.trim_start();
    let rest = rest.strip_prefix("logging run_id(")?;
    let (id, uri) = rest.split_once(')')?;
    let uri = uri.trim_start().strip_prefix("to ")?.trim();
    let id_ok = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    (id_ok && !uri.is_empty()).then_some((id, uri))
}

/// `Validating runs/detect/train/weights/best.pt...`: the final validation of the best model.
pub fn validating_best(line: &str) -> bool {
    let t = line.trim();
    t.starts_with("Validating ") && t.ends_with("...")
}

/// `Ultralytics 8.3.40 🚀 Python-3.11.7 ...` / `Ultralytics YOLOv8.0.145 🚀 ...`: the version.
/// On Windows Ultralytics prints no emoji: `Ultralytics YOLOv8.0.149  Python-3.11.4 ...`.
pub fn banner(line: &str) -> Option<&str> {
    let rest = line.trim().strip_prefix("Ultralytics ")?;
    let (ver, tail) = rest.split_once(' ')?;
    let tail = tail.trim_start();
    if !(tail.starts_with('🚀') || tail.starts_with("Python-")) {
        return None;
    }
    let ver = ver.trim_start_matches("YOLOv");
    ver.starts_with(|c: char| c.is_ascii_digit()).then_some(ver)
}

/// Ultralytics' logging prefixes: `WARNING ⚠️ ...` and `ERROR ❌ ...` (bare on Windows).
pub fn level_prefix(line: &str) -> Option<crate::event::Level> {
    let r: R<'_, &str> = alt((tag("WARNING"), tag("ERROR"))).parse(line.trim_start());
    match r {
        Ok((rest, lvl)) if rest.is_empty() || rest.starts_with(' ') || rest.starts_with(':') => {
            Some(if lvl == "ERROR" {
                crate::event::Level::Error
            } else {
                crate::event::Level::Warning
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_new_bar() {
        let p = progress_row("     82/120      6.66G     0.6647     0.3599      1.079         38        640: 28% ━━━───────── 43/154 2.2it/s 19.8s<49.8s").unwrap();
        assert_eq!((p.epoch, p.epochs), (82, 120));
        assert_eq!(p.gpu_mem_gb, 6.66);
        assert_eq!(p.losses(Some(3)), [0.6647, 0.3599, 1.079]);
        assert_eq!(p.values[3..], [38.0, 640.0]);
        assert_eq!(p.percent, Some(28));
        assert_eq!(p.batches, Some((43, 154)));
        assert!(!p.complete());
    }

    #[test]
    fn progress_old_tqdm_and_colab() {
        let p = progress_row("       1/10      4.35G      1.394      4.212       1.26         28        640: 100%|██████████| 28/28 [00:17<00:00,  1.63it/s]").unwrap();
        assert!(p.complete());
        assert_eq!(p.batches, Some((28, 28)));
        let p = progress_row("      20/20      14.9G     0.7806     0.7389     0.9101         12        640: 100% 85/85 [01:41<00:00,  1.19s/it]").unwrap();
        assert_eq!(p.batches, Some((85, 85)));
        let p = progress_row("        1/4         0G       1.58          2      1.126        256        224: 100%|██████████| 54/54").unwrap();
        assert_eq!(p.gpu_mem_gb, 0.0);
        assert_eq!(p.losses(None), [1.58, 2.0, 1.126]);
    }

    #[test]
    fn progress_nan_and_glued_stderr() {
        let p = progress_row("      1/100      2.41G        nan        inf       -inf         47        640: 40% ━━━━╸─────── 2/5 4.2it/s 0.4s<0.7s").unwrap();
        assert!(p.values[0].is_nan());
        assert_eq!(p.values[1], f64::INFINITY);
        assert_eq!(p.values[2], f64::NEG_INFINITY);
        let p = progress_row("     82/120      6.66G     0.6647     0.3599      1.079         38        640: 28% ━━━───────── 43/154 2.2it/s 19.8s<49.8sCorrupt JPEG data: premature end of data segment").unwrap();
        assert_eq!(p.batches, Some((43, 154)));
    }

    #[test]
    fn yolov5_and_cut_rows() {
        // YOLOv5 train.py: 0-based epochs, its own bar format (`| n/total elapsed`).
        let p = progress_row("        0/1      22.4G    0.07281    0.08384    0.06359        199        640: 100%|██████████| 1849/1849 13:15").unwrap();
        assert_eq!((p.epoch, p.epochs), (0, 1));
        assert_eq!(p.losses(Some(3)), [0.07281, 0.08384, 0.06359]);
        assert!(p.complete());
        // A one-epoch YOLOv5 run prints `0/0`.
        assert_eq!(
            progress_row(
                "        0/0      3.1G    0.1    0.2    0.3    9    640: 100%|██████████| 8/8 00:01"
            )
            .map(|p| p.epochs),
            Some(0)
        );
        // Cut at the terminal width before Size: read from the left by the header.
        let p = progress_row(
            "      1/100      4.03G      1.424      2.865      3.675      1.475         12",
        )
        .unwrap();
        assert!(!p.has_bar);
        assert_eq!(p.losses(Some(4)), [1.424, 2.865, 3.675, 1.475]);
        assert_eq!(p.losses(Some(3)), [1.424, 2.865, 3.675]);
        let p = progress_row("      1/100      4.03G      1.424      2.865").unwrap();
        assert_eq!(p.losses(Some(3)), [1.424, 2.865]);
        // Older YOLOv5, four losses (box obj cls total) and a results.txt-like tail.
        let p = progress_row(
            "      0/89     5.61G   0.07745    0.0277   0.01785     0.123         7       640",
        )
        .unwrap();
        assert_eq!(p.losses(Some(4)), [0.07745, 0.0277, 0.01785, 0.123]);
        assert!(progress_row("      5/3     1G   1   2   3   4   5: 100%").is_none());
    }

    #[test]
    fn not_progress() {
        assert!(progress_row("Epoch 45/120 completed").is_none());
        assert!(progress_row("  1/2 files").is_none());
        assert!(progress_row("").is_none());
    }

    #[test]
    fn headers() {
        assert_eq!(
            epoch_header(
                "      Epoch    GPU_mem   box_loss   cls_loss   dfl_loss  Instances       Size"
            )
            .unwrap(),
            vec!["box_loss", "cls_loss", "dfl_loss"]
        );
        assert_eq!(
            epoch_header("      Epoch    GPU_mem   box_loss   seg_loss   cls_loss   dfl_loss   sem_loss  Instances       Size").unwrap().len(),
            5
        );
        assert!(epoch_header("      Epoch    GPU_mem").is_none());
        assert_eq!(
            epoch_header(
                "      Epoch    GPU_mem   box_loss   obj_loss   cls_loss  Instances       Size"
            )
            .unwrap(),
            ["box_loss", "obj_loss", "cls_loss"]
        );
        assert_eq!(
            epoch_header(
                "     Epoch   gpu_mem       box       obj       cls     total    labels  img_size"
            )
            .unwrap(),
            ["box_loss", "obj_loss", "cls_loss", "total"]
        );
        assert_eq!(
            epoch_header(
                "     Epoch   gpu_mem      GIoU       obj       cls     total   targets  img_size"
            )
            .unwrap(),
            ["box_loss", "obj_loss", "cls_loss", "total"]
        );
        // Cut at the terminal width, also inside a name.
        assert_eq!(
            epoch_header(
                "      Epoch    GPU_mem   box_loss   seg_loss   cls_loss   dfl_loss  Instan"
            )
            .unwrap(),
            ["box_loss", "seg_loss", "cls_loss", "dfl_loss"]
        );
        assert_eq!(
            epoch_header("      Epoch    GPU_mem   box_loss   cls_loss   dfl_loss  Instances")
                .unwrap(),
            ["box_loss", "cls_loss", "dfl_loss"]
        );
        // YOLOv5's old `all` row prints its counts with %.3g.
        let v = val_all_row("                 all         281    1.55e+03        0.23       0.328       0.203      0.0525").unwrap();
        assert_eq!(
            (v.images, v.instances, v.map50_95),
            (281, Some(1550), Some(0.0525))
        );
        let s = trainer_settings("train: weights=yolov5s.pt, cfg=, data=data/coco128.yaml, epochs=100, batch_size=16, imgsz=640, resume=False, project=runs/train, name=exp").unwrap();
        assert!(s.contains(&("epochs".into(), "100".into())));
        assert!(trainer_settings("train: Scanning /d/labels... 126 images").is_none());
    }

    #[test]
    fn all_rows() {
        let v = val_all_row("                   all        128        929      0.386     0.0348     0.0324     0.0135").unwrap();
        assert_eq!(v.images, 128);
        assert_eq!(v.instances, Some(929));
        assert_eq!(
            (v.precision, v.recall, v.map50, v.map50_95),
            (Some(0.386), Some(0.0348), Some(0.0324), Some(0.0135))
        );
        let v = val_all_row("                   all        128        929        0.4     0.0366        nan     0.0125").unwrap();
        assert!(v.map50.unwrap().is_nan());
        assert!(v.more.is_empty());
        // Segmentation: Box(P R mAP50 mAP50-95) then Mask(P R mAP50 mAP50-95).
        let v = val_all_row("                   all         16         29      0.689      0.107     0.0836     0.0472      0.752      0.107     0.0706     0.0227").unwrap();
        assert_eq!((v.precision, v.map50_95), (Some(0.689), Some(0.0472)));
        assert_eq!(v.more, [0.752, 0.107, 0.0706, 0.0227]);
        // Cut short: what it shows, from the left, and nothing more.
        let v = val_all_row(
            "                   all         16         29      0.689      0.107     0.0836",
        )
        .unwrap();
        assert_eq!(
            (v.precision, v.recall, v.map50, v.map50_95),
            (Some(0.689), Some(0.107), Some(0.0836), None)
        );
        let v = val_all_row("                   all         16").unwrap();
        assert_eq!((v.images, v.instances, v.precision), (16, None, None));
        let v = val_all_row("                   all         16         29      0.689      0.1…")
            .unwrap();
        assert_eq!((v.precision, v.recall), (Some(0.689), None));
        assert!(
            val_all_row("                   all         16         29      0.689 x y").is_none()
        );
        // Classification: top-1 and top-5 accuracy only.
        let row = "                   all      0.812          1";
        assert!(val_all_row(row).is_none());
        assert_eq!(accuracy_all_row(row), Some((0.812, 1.0)));
        assert_eq!(
            accuracy_all_row(
                "                   all        128        929      0.386     0.0348     0.0324     0.0135"
            ),
            None
        );
        assert!(val_all_row("                   car        100        222        0.4      0.414      0.366      0.292").is_none());
    }

    #[test]
    fn rows_elided_to_the_terminal_keep_their_whole_values() {
        // `docker run -t` with 80 columns: Ultralytics cuts the row and marks it with `…`.
        let p = progress_row("        2/2         0G      6.586      4.3…").unwrap();
        assert_eq!((p.epoch, p.epochs, p.has_bar), (2, 2, false));
        assert_eq!(p.values, [6.586]);
        assert_eq!(p.losses(Some(3)), [6.586]);
        let p = progress_row("       12/100      2.41G      1.023     0.8812      1.1…").unwrap();
        assert_eq!(p.losses(Some(3)), [1.023, 0.8812]);
        // As a real 80-column TTY shows it (Ultralytics 8.4.190): the bar after the cut cell.
        let p = progress_row(
            "        1/2         0G      2.866      2.1…: 100% ━━━━━━━━━━━━ 8/8 6.1it/s 1.3s",
        )
        .unwrap();
        assert_eq!(
            (p.values.as_slice(), p.has_bar),
            ([2.866].as_slice(), false)
        );
        assert_eq!(
            (p.percent, p.batches, p.complete()),
            (Some(100), Some((8, 8)), true)
        );
        let p = progress_row(
            "        1/2         0G      2.266     …: 12% ━╸────────── 1/8 3.2it/s 0.3s<2.2s",
        )
        .unwrap();
        assert_eq!(
            (p.values.as_slice(), p.complete()),
            ([2.266].as_slice(), false)
        );
        // A lone value with no mark is no row.
        assert!(progress_row("        2/2         0G      6.586").is_none());
        // Named loss columns keep their names: YOLOv10, RT-DETR.
        assert_eq!(
            epoch_header("      Epoch    GPU_mem     box_om     cls_om     dfl_om     box_oo     cls_oo     dfl_oo  Instances       Size").unwrap(),
            ["box_om", "cls_om", "dfl_om", "box_oo", "cls_oo", "dfl_oo"]
        );
        assert_eq!(
            epoch_header(
                "      Epoch    GPU_mem  giou_loss   cls_loss    l1_loss  Instances       Size"
            )
            .unwrap(),
            ["giou_loss", "cls_loss", "l1_loss"]
        );
    }

    #[test]
    fn optimizer_and_mlflow_lines() {
        assert_eq!(
            optimizer(
                "optimizer: AdamW(lr=0.001667, momentum=0.9) with parameter groups 81 weight(decay=0.0), 88 weight(decay=0.0005), 87 bias(decay=0.0)"
            ),
            Some(Optimizer {
                name: "AdamW".into(),
                args: vec![
                    ("lr".into(), "0.001667".into()),
                    ("momentum".into(), "0.9".into())
                ],
            })
        );
        assert_eq!(
            optimizer(
                "optimizer: SGD(lr=0.01) with parameter groups 57 weight(decay=0.0), 60 weight(decay=0.0005), 60 bias"
            )
            .map(|o| (o.name, o.args.len())),
            Some(("SGD".into(), 1))
        );
        assert_eq!(
            optimizer(
                "optimizer: 'optimizer=auto' found, ignoring 'lr0=0.01' and 'momentum=0.937' and determining best 'optimizer', 'lr0' and 'momentum' automatically... "
            ),
            None
        );
        assert_eq!(
            mlflow_run(
                "MLflow: logging run_id(5b0f2c8e1d9a4f7e8c6b3a2d1e0f9a8b) to http://127.0.0.1:5000"
            ),
            Some(("5b0f2c8e1d9a4f7e8c6b3a2d1e0f9a8b", "http://127.0.0.1:5000"))
        );
        assert_eq!(
            mlflow_run("MLflow: logging run_id(ab12) to /work/runs/mlflow"),
            Some(("ab12", "/work/runs/mlflow"))
        );
        assert_eq!(
            mlflow_run("MLflow: disable with 'yolo settings mlflow=False'"),
            None
        );
        assert_eq!(
            tune_iteration(
                "Tuner: Starting iteration 2/300 with hyperparameters: {'lr0': 0.00972}"
            ),
            Some((2, 300))
        );
        assert_eq!(
            tune_iteration("Tuner: 1/2 iterations complete ✅ (10.58s)"),
            None
        );
    }

    #[test]
    fn run_lines() {
        let s = trainer_settings("engine/trainer: task=detect, mode=train, epochs=3, imgsz=[640, 480], resume=False, save_dir=/r/train2").unwrap();
        assert!(s.contains(&("imgsz".into(), "[640, 480]".into())));
        assert!(s.contains(&("save_dir".into(), "/r/train2".into())));
        assert_eq!(
            starting_training("Starting training for 10 epochs..."),
            Some(Some(10))
        );
        assert_eq!(
            starting_training("Starting training for 2.5 hours..."),
            Some(None)
        );
        assert_eq!(
            resuming("Resuming training /r/train/weights/last.pt from epoch 4 to 10 total epochs"),
            Some(("/r/train/weights/last.pt".into(), 4, 10))
        );
        assert_eq!(
            epochs_completed("188 epochs completed in 0.422 hours."),
            Some((188, 0.422))
        );
        assert_eq!(
            early_stopping(
                "EarlyStopping: Training stopped early as no improvement observed in last 15 epochs. Best results observed at epoch 70, best model saved as best.pt."
            ),
            Some((70, Some(15)))
        );
        assert_eq!(
            early_stopping(
                "Stopping training early as no improvement observed in last 100 epochs. Best results observed at epoch 945, best model saved as best.pt."
            ),
            Some((945, Some(100)))
        );
        assert_eq!(
            resuming(
                "Resuming training from runs/detect/train/weights/last.pt from epoch 4 to 10 total epochs"
            ),
            Some(("runs/detect/train/weights/last.pt".into(), 4, 10))
        );
        assert_eq!(
            banner(
                "Ultralytics 8.3.175 🚀 Python-3.11.13 torch-2.6.0+cu124 CUDA:0 (Tesla T4, 14914MiB)"
            ),
            Some("8.3.175")
        );
        assert_eq!(
            banner("Ultralytics YOLOv8.1.29 🚀 Python-3.10.12"),
            Some("8.1.29")
        );
        // Windows: no emoji.
        assert_eq!(
            banner(
                "Ultralytics YOLOv8.0.149  Python-3.11.4 torch-2.0.1+cu118 CUDA:0 (NVIDIA GeForce RTX 4080, 16376MiB)"
            ),
            Some("8.0.149")
        );
        assert_eq!(banner("Ultralytics HUB 🚀 Python-3.10"), None);
        assert_eq!(banner("Ultralytics Settings updated"), None);
        for prefix in [
            "engine/trainer:",
            "engine\\trainer:",
            "yolo/engine/trainer:",
            "yolo\\engine\\trainer:",
        ] {
            let s = trainer_settings(&format!(
                "{prefix} task=pose, mode=train, model=yolov8m-pose.pt, epochs=10, save_dir=runs\\pose\\train3"
            ))
            .unwrap_or_else(|| panic!("{prefix}"));
            assert_eq!(s[2], ("model".into(), "yolov8m-pose.pt".into()), "{prefix}");
            assert_eq!(s[4].1, "runs\\pose\\train3");
        }
        assert_eq!(strip_trainer_prefix("engine/trainers: x=1"), None);
        assert_eq!(strip_trainer_prefix("yolo/trainer: x=1"), None);
        assert_eq!(
            results_dir("Results saved to runs/detect/train"),
            Some("runs/detect/train")
        );
        assert_eq!(
            level_prefix("WARNING ⚠️ no labels found"),
            Some(crate::event::Level::Warning)
        );
        assert_eq!(level_prefix("WARNINGS"), None);
    }
}
