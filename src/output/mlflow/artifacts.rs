//! An ended run's files as its MLflow artifacts, as Ultralytics' own MLflow callback logs them
//! at a training's end: the `weights/` folder (`best.pt`, `last.pt`, `epochK.pt`) and the run
//! folder's own `.png .jpg .csv .pt .yaml` files (`args.yaml`, `results.csv`, plots), at the
//! same paths. They go through the tracking server's artifact proxy (`mlflow server
//! --serve-artifacts`, the default since MLflow 2: a run's `artifact_uri` is then
//! `mlflow-artifacts:/...`), streamed from disk, once the folder has settled (no write for
//! [`SETTLED`]: Ultralytics rewrites `last.pt` and `best.pt` without their optimizer after
//! the last epoch, then validates and plots). What the server acknowledged is recorded, so
//! nothing is uploaded twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use reqwest::Method;

use super::{Exporter, Summary, answer};
use crate::error::MlflowError;
use crate::store::OutboxChange;
use crate::store::mlflow::{ExportRun, Exported};

/// How long the folder must go unwritten before its files are taken as final.
pub const SETTLED: Duration = Duration::from_secs(60);

/// The run folder's files the callback would log: (artifact path, file, size, mtime), sorted.
pub fn artifact_files(dir: &Path) -> std::io::Result<Vec<(String, PathBuf, u64, SystemTime)>> {
    let mut out = Vec::new();
    let mut add = |prefix: &str, d: &Path, keep: &dyn Fn(&Path) -> bool| -> std::io::Result<()> {
        let entries = match std::fs::read_dir(d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !prefix.is_empty() => {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let meta = entry.metadata()?;
            let path = entry.path();
            if !meta.is_file() || !keep(&path) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            out.push((format!("{prefix}{name}"), path, meta.len(), mtime));
        }
        Ok(())
    };
    add("", dir, &|p| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "png" | "jpg" | "csv" | "pt" | "yaml"))
    })?;
    add("weights/", &dir.join("weights"), &|_| true)?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The artifact proxy's path of a run's `artifact_uri` (`mlflow-artifacts:/1/<run>/artifacts`,
/// or with the server named, `mlflow-artifacts://host:5000/1/<run>/artifacts`): `1/<run>/artifacts`.
/// `None` for a store the server does not proxy (a local path, `s3://` without
/// `--serve-artifacts`).
pub fn proxy_path(artifact_uri: &str) -> Option<String> {
    let rest = artifact_uri.strip_prefix("mlflow-artifacts:")?;
    let rest = match rest.strip_prefix("//") {
        Some(r) => r.split_once('/').map_or("", |(_, p)| p),
        None => rest,
    };
    let p = rest.trim_matches('/');
    (!p.is_empty()).then(|| p.to_string())
}

impl Exporter {
    /// Uploads an ended run's artifacts once its folder has settled; records what the server
    /// acknowledged (an empty set when there is nothing it can take, said once).
    pub(super) async fn send_artifacts(
        &self,
        run: &ExportRun,
        exported: &Exported,
        s: &mut Summary,
    ) -> Result<(), MlflowError> {
        let Some(dir) = run.folder.as_deref().map(PathBuf::from) else {
            return Ok(());
        };
        if !self.cfg.artifacts {
            return self.record_artifacts(run.run_id, &BTreeMap::new()).await;
        }
        let files = match artifact_files(&dir) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(
                    run_id = run.run_id,
                    folder = %dir.display(),
                    error = %e,
                    "Cannot read the run folder; its artifacts are not sent to MLflow."
                );
                return self.record_artifacts(run.run_id, &BTreeMap::new()).await;
            }
        };
        let newest = files.iter().map(|f| f.3).max();
        if newest.is_some_and(|t| t.elapsed().unwrap_or_default() < SETTLED) {
            return Ok(()); // still written: the next pass looks again
        }
        let got = self
            .call(
                Method::GET,
                "runs/get",
                &[("run_id", &exported.mlflow_run_id)],
                None,
                s,
            )
            .await?;
        let uri = got["run"]["info"]["artifact_uri"].as_str().unwrap_or("");
        let Some(base) = proxy_path(uri) else {
            tracing::warn!(
                run_id = run.run_id,
                artifact_uri = uri,
                "The MLflow server does not proxy this run's artifacts (start it with --serve-artifacts and an --artifacts-destination); they are not sent."
            );
            return self.record_artifacts(run.run_id, &BTreeMap::new()).await;
        };
        let mut sent = BTreeMap::new();
        for (path, file, size, _) in &files {
            self.upload(&base, path, file, *size, s).await?;
            s.artifacts += 1;
            s.artifact_bytes += size;
            sent.insert(path.clone(), *size);
        }
        tracing::info!(
            run_id = run.run_id,
            files = sent.len(),
            bytes = sent.values().sum::<u64>(),
            "Run artifacts sent to MLflow."
        );
        self.record_artifacts(run.run_id, &sent).await
    }

    async fn record_artifacts(
        &self,
        run_id: i64,
        sent: &BTreeMap<String, u64>,
    ) -> Result<(), MlflowError> {
        self.writer
            .record(OutboxChange::MlflowArtifacts {
                target: self.target.clone(),
                run_id,
                sent: serde_json::to_string(sent).unwrap_or_else(|_| "{}".into()),
            })
            .await?;
        Ok(())
    }

    /// `PUT /api/2.0/mlflow-artifacts/artifacts/<base>/<path>` with the file streamed.
    async fn upload(
        &self,
        base: &str,
        path: &str,
        file: &Path,
        size: u64,
        s: &mut Summary,
    ) -> Result<(), MlflowError> {
        let root = self
            .cfg
            .tracking_uri
            .as_deref()
            .unwrap_or_default()
            .trim_end_matches('/');
        let mut url = reqwest::Url::parse(&format!("{root}/"))
            .map_err(|e| MlflowError::Unreachable(e.to_string()))?;
        url.path_segments_mut()
            .map_err(|()| MlflowError::Unreachable("the tracking URI has no path".into()))?
            .pop_if_empty()
            .extend(["api", "2.0", "mlflow-artifacts", "artifacts"])
            .extend(base.split('/'))
            .extend(path.split('/'));
        let f = tokio::fs::File::open(file).await.map_err(|e| {
            MlflowError::Unreachable(format!("cannot read {}: {e}", file.display()))
        })?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(f));
        // A large checkpoint over a slow link: the timeout grows with the size (1 MB/s).
        let timeout = self.cfg.timeout.as_duration() + Duration::from_secs(size / 1_000_000);
        s.requests += 1;
        let req = self
            .request(Method::PUT, url.as_str())
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(body);
        answer(req.send().await).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_path_of_an_artifact_uri() {
        assert_eq!(
            proxy_path("mlflow-artifacts:/1/0a1b/artifacts").as_deref(),
            Some("1/0a1b/artifacts")
        );
        assert_eq!(
            proxy_path("mlflow-artifacts://mlflow:5000/1/0a1b/artifacts").as_deref(),
            Some("1/0a1b/artifacts")
        );
        assert_eq!(proxy_path("/srv/mlruns/1/0a1b/artifacts"), None);
        assert_eq!(proxy_path("s3://bucket/1/0a1b/artifacts"), None);
    }

    #[test]
    fn the_files_the_callback_logs() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("weights")).unwrap();
        for f in [
            "args.yaml",
            "results.csv",
            "results.png",
            "labels.jpg",
            "notes.txt",
            "weights/best.pt",
            "weights/last.pt",
        ] {
            std::fs::write(d.path().join(f), f).unwrap();
        }
        let files: Vec<(String, u64)> = artifact_files(d.path())
            .unwrap()
            .into_iter()
            .map(|f| (f.0, f.2))
            .collect();
        assert_eq!(
            files,
            [
                ("args.yaml".to_string(), 9),
                ("labels.jpg".into(), 10),
                ("results.csv".into(), 11),
                ("results.png".into(), 11),
                ("weights/best.pt".into(), 15),
                ("weights/last.pt".into(), 15),
            ]
        );
        assert!(artifact_files(&d.path().join("gone")).is_err());
    }
}
