//! A run's parameters beyond its settings line, and its links: the optimizer the training
//! resolved (`optimizer: AdamW(lr=0.001667, momentum=0.9) ...`, which overrides `auto` and
//! the printed `lr0`/`momentum`), its run folder's `args.yaml` (which fills what no line
//! printed), where the folder is read here, and Ultralytics' own MLflow run of it.
//!
//! Each is an [`Op::RunPatch`]: the store merges it into the run's `params` (JSON), so the
//! order in which the console and the folder are read does not matter: `args.yaml` never
//! replaces a value already known, the optimizer line always does.

use std::path::Path;

use serde_json::{Map, Value};

use super::{ContainerState, RunFolder};
use crate::derive::{Op, RunPatch};
use crate::grammar::ultralytics::Optimizer;
use crate::redact;

/// Optimizers Ultralytics counts as Adam-like (an `auto` choice of one sets
/// `warmup_bias_lr = 0.0`).
const ADAM_LIKE: [&str; 5] = ["Adam", "Adamax", "AdamW", "NAdam", "RAdam"];

/// A YAML scalar of `args.yaml` as Python prints it in the settings line and as Ultralytics'
/// MLflow callback logs it (`true` -> `True`, `null` -> `None`).
fn python_form(v: &str) -> String {
    match v {
        "true" => "True".into(),
        "false" => "False".into(),
        "null" | "~" | "" => "None".into(),
        other => other.to_string(),
    }
}

/// `key: value` pairs as a redacted JSON object of strings.
pub fn params_json<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> String {
    let mut m = Map::new();
    for (k, v) in pairs {
        if !k.is_empty() {
            m.insert(k.to_string(), Value::String(v));
        }
    }
    let mut v = Value::Object(m);
    redact::json(&mut v);
    v.to_string()
}

/// `args.yaml`'s arguments as run params (Python's forms of its scalars).
pub fn args_params(args: &[(String, String)]) -> String {
    params_json(args.iter().map(|(k, v)| (k.as_str(), python_form(v))))
}

/// `patch`'s keys over `params` (JSON objects), or under them when `fill`.
fn merged(params: Option<&str>, patch: &str, fill: bool) -> Option<String> {
    let mut base = match params.map(serde_json::from_str::<Value>) {
        Some(Ok(Value::Object(m))) => m,
        _ => Map::new(),
    };
    let Ok(Value::Object(patch)) = serde_json::from_str::<Value>(patch) else {
        return params.map(str::to_string);
    };
    for (k, v) in patch {
        if fill && base.contains_key(&k) {
            continue;
        }
        base.insert(k, v);
    }
    Some(Value::Object(base).to_string())
}

impl RunFolder {
    /// The run folder was found here at `local`, with its `args.yaml` arguments (if read).
    pub fn found(&self, local: &Path, args: Option<&[(String, String)]>, out: &mut Vec<Op>) {
        out.push(Op::RunPatch(
            self.key.clone(),
            RunPatch::Folder(local.to_string_lossy().into_owned()),
        ));
        if let Some(args) = args.filter(|a| !a.is_empty()) {
            out.push(Op::RunPatch(
                self.key.clone(),
                RunPatch::ParamsFill(args_params(args)),
            ));
        }
    }
}

impl ContainerState {
    /// The run's folder was found at `local` with `args` (the running run's, or an earlier
    /// one's): its params are filled from them, the in-memory row too.
    pub fn run_folder_found(
        &mut self,
        folder: &RunFolder,
        local: &Path,
        args: Option<&[(String, String)]>,
        out: &mut Vec<Op>,
    ) {
        let from = out.len();
        folder.found(local, args, out);
        if let Some(run) = self.run.as_mut().filter(|r| r.row.key == folder.key) {
            for op in &out[from..] {
                if let Op::RunPatch(_, RunPatch::ParamsFill(p)) = op {
                    run.row.params = merged(run.row.params.as_deref(), p, true);
                }
            }
        }
    }

    /// `optimizer: AdamW(lr=0.001667, momentum=0.9) with parameter groups ...`: the values the
    /// running run trains with replace the requested ones (`optimizer=auto`, `lr0=0.01`).
    pub(super) fn optimizer(&mut self, o: &Optimizer, out: &mut Vec<Op>) {
        let Some(run) = self.run.as_mut().filter(|r| r.is_running()) else {
            return;
        };
        let was_auto = run
            .row
            .params
            .as_deref()
            .and_then(|p| serde_json::from_str::<Value>(p).ok())
            .is_some_and(|p| p["optimizer"] == "auto");
        let mut pairs = vec![("optimizer", o.name.clone())];
        for (k, v) in &o.args {
            match k.as_str() {
                "lr" => pairs.push(("lr0", v.clone())),
                "momentum" => pairs.push(("momentum", v.clone())),
                _ => {}
            }
        }
        if was_auto && ADAM_LIKE.contains(&o.name.as_str()) {
            pairs.push(("warmup_bias_lr", "0.0".into()));
        }
        let patch = params_json(pairs);
        run.row.params = merged(run.row.params.as_deref(), &patch, false);
        out.push(Op::RunPatch(
            run.row.key.clone(),
            RunPatch::ParamsOverride(patch),
        ));
    }

    /// `MLflow: logging run_id(<id>) to <uri>`: the running run logs itself to MLflow.
    pub(super) fn mlflow_link(&mut self, run_id: &str, uri: &str, out: &mut Vec<Op>) {
        let Some(run) = self.run.as_ref().filter(|r| r.is_running()) else {
            return;
        };
        out.push(Op::RunPatch(
            run.row.key.clone(),
            RunPatch::Mlflow {
                run_id: run_id.to_string(),
                uri: redact::text(uri).into_owned(),
            },
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_fill_and_the_optimizer_overrides() {
        let printed = params_json([("optimizer", "auto".into()), ("lr0", "0.01".into())]);
        let args = args_params(&[
            ("optimizer".into(), "auto".into()),
            ("lr0".into(), "0.01".into()),
            ("amp".into(), "true".into()),
            ("project".into(), "null".into()),
        ]);
        let filled = merged(Some(&printed), &args, true).unwrap();
        let v: Value = serde_json::from_str(&filled).unwrap();
        assert_eq!(v["amp"], "True");
        assert_eq!(v["project"], "None");
        assert_eq!(v["optimizer"], "auto");
        let resolved = params_json([("optimizer", "AdamW".into()), ("lr0", "0.001667".into())]);
        let v: Value =
            serde_json::from_str(&merged(Some(&filled), &resolved, false).unwrap()).unwrap();
        assert_eq!(v["optimizer"], "AdamW");
        assert_eq!(v["lr0"], "0.001667");
        assert_eq!(v["amp"], "True");
        // Filled after the override: the resolved values stay.
        let v: Value =
            serde_json::from_str(&merged(Some(&v.to_string()), &args, true).unwrap()).unwrap();
        assert_eq!(v["optimizer"], "AdamW");
    }
}
