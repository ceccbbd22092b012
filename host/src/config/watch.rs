//! The settings for watching and acting on a run while it trains: `[early_stopping]`,
//! `system_metrics_every_s`, `[mlflow]` and `[[notify]]`, as written and as validated.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::checks::{in_range, Invalid};
use crate::error::Result;

/// Whether a smaller or a larger value of the watched metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopMode {
    Min,
    Max,
}

impl StopMode {
    pub fn name(self) -> &'static str {
        match self {
            StopMode::Min => "min",
            StopMode::Max => "max",
        }
    }
}

/// `[early_stopping]`: stop when a validation metric stops improving, with Lightning's
/// `EarlyStopping` rules.
#[derive(Debug, Clone, PartialEq)]
pub struct EarlyStoppingSettings {
    /// `val_loss`, `val_acc` or `val_acc_top{k}`.
    pub monitor: String,
    pub mode: StopMode,
    /// A change of at most this much is not an improvement.
    pub min_delta: f64,
    /// Validations (not epochs) without improvement before the run stops.
    pub patience: u32,
    /// Stop as soon as the metric is better than this.
    pub stopping_threshold: Option<f64>,
    /// Stop as soon as the metric is worse than this.
    pub divergence_threshold: Option<f64>,
    /// Stop when the metric is NaN or infinite.
    pub check_finite: bool,
    /// No check during the first this many epochs.
    pub start_from_epoch: usize,
    /// End with the best validation's weights (its checkpoint is kept for that).
    pub restore_best: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEarlyStopping {
    #[serde(default = "default_monitor")]
    monitor: String,
    mode: Option<StopMode>,
    #[serde(default)]
    min_delta: f64,
    #[serde(default = "default_patience")]
    patience: u32,
    stopping_threshold: Option<f64>,
    divergence_threshold: Option<f64>,
    #[serde(default = "yes")]
    check_finite: bool,
    #[serde(default)]
    start_from_epoch: usize,
    #[serde(default = "yes")]
    restore_best: bool,
}

fn default_monitor() -> String {
    "val_loss".into()
}

fn default_patience() -> u32 {
    3
}

fn yes() -> bool {
    true
}

impl RawEarlyStopping {
    /// Validate against the run's `top_k` (which names the top-k accuracy) and whether it keeps
    /// checkpoints (which `restore_best` needs).
    pub(super) fn validate(
        self,
        invalid: Invalid<'_>,
        top_k: usize,
        checkpoints: bool,
    ) -> Result<EarlyStoppingSettings> {
        let top_k_name = format!("val_acc_top{top_k}");
        let known = ["val_loss", "val_acc", top_k_name.as_str()];
        if !known.contains(&self.monitor.as_str()) {
            return Err(invalid(
                "early_stopping.monitor",
                format!(
                    "names no validation metric (got \"{}\"); use one of {}",
                    self.monitor,
                    known
                        .iter()
                        .map(|name| format!("\"{name}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let min_delta = in_range(
            invalid,
            "early_stopping.min_delta",
            self.min_delta,
            0.0..=f64::MAX,
            false,
        )?;
        for (key, value) in [
            ("early_stopping.stopping_threshold", self.stopping_threshold),
            (
                "early_stopping.divergence_threshold",
                self.divergence_threshold,
            ),
        ] {
            if value.is_some_and(|v| !v.is_finite()) {
                return Err(invalid(key, "must be a finite number".into()));
            }
        }
        if self.restore_best && !checkpoints {
            return Err(invalid(
                "early_stopping.restore_best",
                "needs checkpoints (the best validation's checkpoint is what it restores): \
                 set `checkpoint.enabled = true`, or `early_stopping.restore_best = false`"
                    .into(),
            ));
        }
        // An accuracy gets better as it grows; Lightning's default (`min`) would stop a run
        // that is improving.
        let mode = self.mode.unwrap_or(if self.monitor.starts_with("val_acc") {
            StopMode::Max
        } else {
            StopMode::Min
        });
        Ok(EarlyStoppingSettings {
            monitor: self.monitor,
            mode,
            min_delta,
            patience: self.patience,
            stopping_threshold: self.stopping_threshold,
            divergence_threshold: self.divergence_threshold,
            check_finite: self.check_finite,
            start_from_epoch: self.start_from_epoch,
            restore_best: self.restore_best,
        })
    }
}

/// `[mlflow]`: send the run to an MLflow tracking server.
#[derive(Debug, Clone, PartialEq)]
pub struct MlflowSettings {
    /// `http://host:port` (a trailing slash is dropped).
    pub tracking_uri: String,
    /// The experiment; `None`: the study's name, or the run's.
    pub experiment: Option<String>,
    /// The MLflow run's name; `None`: the run's name.
    pub run_name: Option<String>,
    pub tags: BTreeMap<String, String>,
    /// Upload the run's files (monitor PNGs and CSVs, config, run.json, inputs.json).
    pub artifacts: bool,
    /// Send every n-th training step's batch record (validations, epochs and the rest always).
    pub every_n_steps: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMlflow {
    tracking_uri: String,
    experiment: Option<String>,
    run_name: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default = "yes")]
    artifacts: bool,
    #[serde(default = "one")]
    every_n_steps: u64,
}

fn one() -> u64 {
    1
}

impl RawMlflow {
    pub(super) fn validate(self, invalid: Invalid<'_>) -> Result<MlflowSettings> {
        let uri = self.tracking_uri.trim().trim_end_matches('/').to_string();
        if !(uri.starts_with("http://") || uri.starts_with("https://")) {
            return Err(invalid(
                "mlflow.tracking_uri",
                format!(
                    "must be the server's http:// or https:// address, e.g. \"http://127.0.0.1:5000\" \
                     (got \"{}\")",
                    self.tracking_uri
                ),
            ));
        }
        if self.every_n_steps == 0 {
            return Err(invalid(
                "mlflow.every_n_steps",
                "must be at least 1 (got 0)".into(),
            ));
        }
        for (key, value) in [
            ("mlflow.experiment", &self.experiment),
            ("mlflow.run_name", &self.run_name),
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(invalid(
                    key,
                    "must not be empty; leave it out for the default".into(),
                ));
            }
        }
        Ok(MlflowSettings {
            tracking_uri: uri,
            experiment: self.experiment,
            run_name: self.run_name,
            tags: self.tags,
            artifacts: self.artifacts,
            every_n_steps: self.every_n_steps,
        })
    }
}

/// What a notification says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    Failed,
    Interrupted,
    Finished,
    Anomaly,
    EarlyStopped,
    MonitorDisabled,
    StudyFinished,
    StudyFailureRate,
}

impl NotifyEvent {
    pub const ALL: [NotifyEvent; 8] = [
        NotifyEvent::Failed,
        NotifyEvent::Interrupted,
        NotifyEvent::Finished,
        NotifyEvent::Anomaly,
        NotifyEvent::EarlyStopped,
        NotifyEvent::MonitorDisabled,
        NotifyEvent::StudyFinished,
        NotifyEvent::StudyFailureRate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            NotifyEvent::Failed => "failed",
            NotifyEvent::Interrupted => "interrupted",
            NotifyEvent::Finished => "finished",
            NotifyEvent::Anomaly => "anomaly",
            NotifyEvent::EarlyStopped => "early_stopped",
            NotifyEvent::MonitorDisabled => "monitor_disabled",
            NotifyEvent::StudyFinished => "study_finished",
            NotifyEvent::StudyFailureRate => "study_failure_rate",
        }
    }
}

/// The body a notification is sent as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyFormat {
    /// Slack's incoming webhook: `{"text": …}`.
    Slack,
    /// Discord's webhook: `{"content": …}`.
    Discord,
    /// vigil's JSON object (README: Notifications).
    Json,
}

impl NotifyFormat {
    pub fn name(self) -> &'static str {
        match self {
            NotifyFormat::Slack => "slack",
            NotifyFormat::Discord => "discord",
            NotifyFormat::Json => "json",
        }
    }
}

/// Where a notification goes: a URL in the config, or the name of an environment variable
/// that holds it (never written anywhere).
#[derive(Debug, Clone, PartialEq)]
pub enum NotifyTarget {
    Url(String),
    Env(String),
}

/// One `[[notify]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifySettings {
    pub target: NotifyTarget,
    pub format: NotifyFormat,
    pub on: Vec<NotifyEvent>,
    /// The same event of the same run is sent at most once in this many seconds.
    pub min_interval_s: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    url: Option<String>,
    url_env: Option<String>,
    #[serde(default = "json_format")]
    format: NotifyFormat,
    on: Option<Vec<NotifyEvent>>,
    #[serde(default = "default_interval")]
    min_interval_s: f64,
}

fn json_format() -> NotifyFormat {
    NotifyFormat::Json
}

fn default_interval() -> f64 {
    60.0
}

impl RawNotify {
    pub(super) fn validate(self, index: usize, invalid: Invalid<'_>) -> Result<NotifySettings> {
        let key = |name: &str| format!("notify[{index}].{name}");
        let target =
            match (self.url, self.url_env) {
                (Some(url), None) => {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return Err(invalid(
                            &key("url"),
                            "must be an http:// or https:// address".into(),
                        ));
                    }
                    NotifyTarget::Url(url)
                }
                (None, Some(name)) if !name.trim().is_empty() => NotifyTarget::Env(name),
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        &key("url"),
                        "and `url_env` are both set; give one (url_env keeps the address out of \
                     every file)"
                            .into(),
                    ))
                }
                _ => return Err(invalid(
                    &format!("notify[{index}]"),
                    "needs `url` or `url_env` (the name of an environment variable holding the \
                     webhook address)"
                        .into(),
                )),
            };
        let min_interval_s = in_range(
            invalid,
            &key("min_interval_s"),
            self.min_interval_s,
            0.0..=86_400.0 * 365.0,
            false,
        )?;
        let mut on = self.on.unwrap_or_else(|| NotifyEvent::ALL.to_vec());
        on.sort();
        on.dedup();
        Ok(NotifySettings {
            target,
            format: self.format,
            on,
            min_interval_s,
        })
    }
}

/// `system_metrics_every_s`: 0 turns system metrics off; otherwise at least 0.1 s.
pub(super) fn system_metrics_interval(invalid: Invalid<'_>, seconds: f64) -> Result<f64> {
    if seconds == 0.0 {
        return Ok(0.0);
    }
    in_range(
        invalid,
        "system_metrics_every_s",
        seconds,
        0.1..=86_400.0,
        false,
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Settings;
    use super::*;

    fn settings(text: &str) -> Result<Settings> {
        Settings::from_toml(text, Path::new("c.toml"))
    }

    #[test]
    fn early_stopping_defaults_and_an_accuracy_grows() {
        let loss = settings("[early_stopping]\n")
            .unwrap()
            .early_stopping
            .unwrap();
        assert_eq!(
            (loss.monitor.as_str(), loss.mode, loss.patience),
            ("val_loss", StopMode::Min, 3)
        );
        assert!(loss.check_finite && loss.restore_best);
        let accuracy = settings("[early_stopping]\nmonitor = \"val_acc_top5\"\n")
            .unwrap()
            .early_stopping
            .unwrap();
        assert_eq!(accuracy.mode, StopMode::Max);
        assert_eq!(settings("").unwrap().early_stopping, None);
    }

    #[test]
    fn bad_early_stopping_settings_say_what_to_do() {
        let err = settings("[early_stopping]\nmonitor = \"train_loss\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("c.toml:2:") && err.contains("\"val_loss\""),
            "{err}"
        );
        let err = settings("[checkpoint]\nenabled = false\n[early_stopping]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("restore_best = false"), "{err}");
        let err = settings("[early_stopping]\nmin_delta = -1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("min_delta"), "{err}");
        let err = settings("system_metrics_every_s = 0.01\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("system_metrics_every_s"), "{err}");
    }

    #[test]
    fn the_effective_config_reads_back_the_same() {
        let original = settings(
            "[early_stopping]\nmonitor = \"val_acc\"\nmode = \"min\"\npatience = 7\n\
             stopping_threshold = 0.99\nstart_from_epoch = 2\n\
             [mlflow]\ntracking_uri = \"http://127.0.0.1:5000/\"\ntags = { team = \"a\" }\n\
             every_n_steps = 10\n\
             [[notify]]\nurl_env = \"HOOK\"\nformat = \"slack\"\non = [\"failed\", \"finished\"]\n\
             [[notify]]\nurl = \"http://127.0.0.1:9/x\"\n",
        )
        .unwrap();
        let mlflow = original.mlflow.as_ref().unwrap();
        assert_eq!(mlflow.tracking_uri, "http://127.0.0.1:5000");
        assert_eq!(original.notify[1].on, NotifyEvent::ALL.to_vec());
        assert_eq!(original.notify[1].format, NotifyFormat::Json);
        let back = settings(&original.to_toml()).unwrap();
        assert_eq!(back, original);
    }
}
