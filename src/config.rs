//! The TOML configuration, documented with defaults and validated once at start.
//!
//! ```toml
//! # Message patterns -> event kind / counter, tried before the built-in ones.
//! replace_default_patterns = false
//! [[patterns]]
//! regex = '^Handled batch of (?P<n>\d+) annotations'
//! kind = "annotation_processed"
//! counter = "queue_messages_processed"
//! add = "n"
//!
//! [retention]
//! events = "30d"      # events and metric samples
//! history = "keep"    # training runs and epochs: "keep" or an age such as "365d"
//! every = "24h"       # how often `watch` prunes
//!
//! [mlflow]            # training history to an MLflow tracking server (off by default)
//! tracking_uri = "http://mlflow:5000"
//!
//! [docker]            # which containers `watch` follows (default: all)
//! [[docker.include]]
//! name = "yolo-*"
//! role = "training"
//! ```

use std::path::Path;

use serde::Deserialize;

use crate::error::ConfigError;
use crate::parse::patterns::{PatternConfig, Patterns};

#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub patterns: Vec<PatternConfig>,
    #[serde(default)]
    pub replace_default_patterns: bool,
    #[serde(default)]
    pub retention: crate::store::retention::Retention,
    #[serde(default)]
    pub docker: crate::source::docker::DockerConfig,
    /// Alert rule thresholds and durations.
    #[serde(default)]
    pub alerts: crate::derive::alerts::Rules,
    /// Where alerts are delivered.
    #[serde(default)]
    pub notify: crate::output::notify::NotifyConfig,
    /// Host probes run by `watch`.
    #[serde(default)]
    pub probes: crate::source::probes::ProbesConfig,
    /// The status file (and page) `watch` keeps up to date.
    #[serde(default)]
    pub status: crate::output::status::StatusConfig,
    /// Connection limits of `watch --listen`.
    #[serde(default)]
    pub listen: crate::output::serve::Limits,
    /// Training history exported to an MLflow tracking server (off unless `tracking_uri`).
    #[serde(default)]
    pub mlflow: crate::output::mlflow::MlflowConfig,
    /// Where the run folders the logs name are on this machine.
    #[serde(default)]
    pub runs: RunsConfig,
}

/// `[runs]`: where run folders (Ultralytics' `save_dir`) printed inside containers are here.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunsConfig {
    /// `CONTAINER_PREFIX=LOCAL_PREFIX` each (the longest matching prefix wins).
    pub path_map: Vec<String>,
}

impl RunsConfig {
    /// The path maps, parsed.
    pub fn path_maps(&self) -> Result<Vec<crate::source::runfolder::PathMap>, String> {
        self.path_map
            .iter()
            .map(|m| crate::source::runfolder::PathMap::parse(m))
            .collect()
    }
}

impl Config {
    /// `[mlflow]` as used: its `host` tag defaults to `[notify] instance`, the one name of
    /// this server (in a container the host name is the container's id).
    pub fn mlflow_settings(&self) -> crate::output::mlflow::MlflowConfig {
        let mut m = self.mlflow.clone();
        if m.host.is_none() {
            m.host = self.notify.instance.clone();
        }
        m
    }

    /// Loads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        cfg.patterns()?;
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let a = &cfg.alerts;
        for (what, v) in [
            ("alerts.gpu_temperature_c", a.gpu_temperature_c),
            ("alerts.disk_critical_pct", a.disk_critical_pct),
            ("alerts.disk_high_pct", a.disk_high_pct),
            ("alerts.diverging.factor", a.diverging.factor),
        ] {
            if !v.is_finite() {
                return Err(invalid(format!("{what} = {v}: expected a finite number")));
            }
        }
        let mut names = std::collections::HashSet::new();
        for r in &cfg.notify.receivers {
            if let Some(p) = r.problem() {
                return Err(invalid(p));
            }
            if !names.insert(r.name.as_str()) {
                return Err(invalid(format!(
                    "receiver {:?} is configured twice",
                    r.name
                )));
            }
        }
        if let Some(p) = cfg.mlflow.problem() {
            return Err(invalid(p));
        }
        cfg.runs
            .path_maps()
            .map_err(|e| invalid(format!("runs.path_map: {e}")))?;
        for (what, v) in [
            ("retention.events", &cfg.retention.events),
            ("retention.history", &cfg.retention.history),
        ] {
            if v != "keep" && crate::time::parse_age(v).is_none() {
                return Err(invalid(format!(
                    "{what} = {v:?}: expected an age like 30d, 12h or \"keep\""
                )));
            }
        }
        Ok(cfg)
    }

    /// Compiles the pattern rules.
    pub fn patterns(&self) -> Result<Patterns, ConfigError> {
        Patterns::new(&self.patterns, self.replace_default_patterns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let c = Config::parse("[[patterns]]\nregex = 'x (?P<n>\\d+)'\nkind = 'annotation_processed'\ncounter = 'queue_messages_processed'\nadd = 'n'\n[retention]\nevents = '7d'\n", Path::new("t.toml")).unwrap();
        assert_eq!(c.patterns.len(), 1);
        assert_eq!(c.retention.events, "7d");
        assert_eq!(c.retention.history, "keep");
        assert!(Config::parse("[retention]\nevents = 'soon'\n", Path::new("t.toml")).is_err());
        assert!(Config::parse("unknown = 1\n", Path::new("t.toml")).is_err());
    }

    #[test]
    fn mlflow_is_off_by_default_and_checked_when_on() {
        let t = Path::new("t.toml");
        assert!(!Config::parse("", t).unwrap().mlflow.enabled());
        let c = Config::parse(
            "[mlflow]\ntracking_uri = 'http://mlflow:5000'\n[notify]\ninstance = 'gpu-1'\n",
            t,
        )
        .unwrap();
        let m = c.mlflow_settings();
        assert!(m.enabled());
        assert_eq!(m.experiment, "trainwatch");
        assert_eq!(m.host.as_deref(), Some("gpu-1"));
        let e = Config::parse("[mlflow]\ntracking_uri = 'http://u:pw@mlflow:5000'\n", t)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("must not hold credentials") && !e.contains("pw@"),
            "{e}"
        );
        // The token is never printed back.
        let c =
            Config::parse("[mlflow]\ntracking_uri = 'http://m'\ntoken = 's3cr3t'\n", t).unwrap();
        let shown = toml::to_string(&c).unwrap();
        assert!(
            !shown.contains("s3cr3t") && shown.contains("<redacted>"),
            "{shown}"
        );
        assert!(!format!("{:?}", c.mlflow).contains("s3cr3t"));
    }

    /// Every TOML example in README.md is a valid config.
    #[test]
    fn readme_examples_parse() {
        let readme = include_str!("../README.md");
        let mut n = 0;
        for block in readme.split("```toml\n").skip(1) {
            let text = block.split("```").next().unwrap();
            let c = Config::parse(text, Path::new("README.md"))
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            n += 1;
            if text.contains("[[notify.receivers]]") {
                assert_eq!(c.notify.receivers[0].name, "oncall");
                assert_eq!(c.alerts.queue_down_for, crate::time::Age::secs(300));
                assert_eq!(c.alerts.diverging.rising_epochs, 5);
            }
        }
        assert!(n >= 2);
    }

    #[test]
    fn non_finite_thresholds_and_bad_receiver_urls_are_refused() {
        let err = |text: &str| {
            Config::parse(text, Path::new("t.toml"))
                .unwrap_err()
                .to_string()
        };
        let e = err("[alerts]\ngpu_temperature_c = nan\n");
        assert!(e.contains("alerts.gpu_temperature_c = NaN"), "{e}");
        assert!(err("[alerts]\ndisk_high_pct = inf\n").contains("finite"));
        let e = err("[[notify.receivers]]\nname = 'x'\nkind = 'webhook'\nurl = 'not a url'\n");
        assert!(e.contains("not a URL"), "{e}");
        let two = "[[notify.receivers]]\nname = 'x'\nkind = 'webhook'\nurl = 'http://a/'\n";
        assert!(err(&format!("{two}{two}")).contains("configured twice"));
        assert!(Config::parse(two, Path::new("t.toml")).is_ok());
    }

    #[test]
    fn an_smtp_receiver_is_checked_when_the_config_loads() {
        let ok = "[notify]\npage_url = 'http://gpu-server-1:9750/'\n\
                  [[notify.receivers]]\nname = 'mail'\nkind = 'smtp'\n\
                  url = 'smtp://mail.example.com:587'\nfrom = 'trainwatch <tw@example.com>'\n\
                  to = ['oncall@example.com', 'Ops <ops@example.com>']\n\
                  username = 'tw'\npassword_env = 'TRAINWATCH_SMTP_PASSWORD'\n";
        let c = Config::parse(ok, Path::new("t.toml")).unwrap();
        let r = &c.notify.receivers[0];
        assert_eq!(r.to.len(), 2);
        assert_eq!(
            c.notify.page_url.as_deref(),
            Some("http://gpu-server-1:9750/")
        );
        let err = |text: &str| {
            Config::parse(text, Path::new("t.toml"))
                .unwrap_err()
                .to_string()
        };
        let e = err(&ok.replace("to = [", "to = ['nobody', "));
        assert!(e.contains("\"nobody\""), "{e}");
        let e = err(&ok.replace("smtp://", "smtp://tw:s3cret@"));
        assert!(e.contains("password_env") && !e.contains("s3cret"), "{e}");
        let e = err(&format!("{ok}tls = 'none'\n"));
        assert!(e.contains("without TLS"), "{e}");
        let e = err(&format!("{ok}ca_file = '/nonexistent/ca.pem'\n"));
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn bad_durations_are_named() {
        let e = Config::parse("[alerts]\nqueue_down_for = 'soon'\n", Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("soon") && e.contains("duration"), "{e}");
    }
}
