//! `run.json`, typed: what a run did, written when training ends (whatever the outcome) and
//! replaced by each resumed attempt, which carries the earlier attempts' records forward.
//!
//! The fields are declared in alphabetical order, the order in which the file has always
//! listed them. Every field has a default, so that a file of an older vigil, or one that a
//! reader meets half-written, still reads ([`read_run_info`] gives `None` only when the file is
//! missing or not JSON at all).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The contents of `run.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunInfo {
    /// Every attempt at the run (the first, and each resume), oldest first.
    pub attempts: Vec<Attempt>,
    pub best_val_loss: Option<f64>,
    /// The checkpoint index when the attempt ended.
    pub checkpoints: Option<CheckpointIndex>,
    /// The path of the effective config.
    pub config: String,
    pub dataset: String,
    pub device: String,
    /// What early stopping saw and did, for a run that has it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStoppingReport>,
    pub epochs: usize,
    /// Why training failed (`status` = `failed`).
    pub error: Option<String>,
    /// The last epoch's metrics.
    #[serde(rename = "final")]
    pub final_metrics: Option<FinalMetrics>,
    pub global_step: u64,
    /// The signal that interrupted the attempt.
    pub interrupted_by: Option<String>,
    /// The MLflow run, with what was left unsent (`[mlflow]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mlflow: Option<MlflowReport>,
    pub model: String,
    /// Each monitor: where it was loaded from, its status and what its hooks cost.
    pub monitors: Vec<MonitorReport>,
    pub name: String,
    pub parameters: usize,
    /// The step the last attempt resumed from (`None` for a run trained in one go).
    pub resumed_from_step: Option<u64>,
    pub seed: u64,
    pub skipped_files: SkippedFiles,
    /// `completed`, `stopped` (a monitor asked), `interrupted` or `failed`.
    pub status: String,
    /// Where the training thread's time went, by part (`data`, `forward`, `backward`,
    /// `gradient_copy`, `monitors`, `optimizer`, `record`, `validation`, `checkpoint`,
    /// `epochs`), over the last attempt.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub step_breakdown: BTreeMap<String, PhaseReport>,
    pub steps_per_second: Option<f64>,
    pub stopped_by: Option<StoppedBy>,
    pub vigil_version: String,
    pub wall_time_s: f64,
    /// Every attempt's warnings, oldest first.
    pub warnings: Vec<String>,
}

impl RunInfo {
    /// The run's status words.
    pub const COMPLETED: &'static str = "completed";
    pub const STOPPED: &'static str = "stopped";
    pub const INTERRUPTED: &'static str = "interrupted";
    pub const FAILED: &'static str = "failed";

    /// Steps per second over every attempt, from their wall times.
    pub fn attempts_steps_per_second(&self) -> Option<f64> {
        let seconds: f64 = self.attempts.iter().map(|a| a.wall_time_s).sum();
        let steps: u64 = self
            .attempts
            .iter()
            .map(|a| a.to_step.saturating_sub(a.from_step))
            .sum();
        (seconds > 0.0 && steps > 0).then(|| steps as f64 / seconds)
    }
}

/// One attempt at a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Attempt {
    pub from_step: u64,
    pub signal: Option<String>,
    pub status: String,
    pub to_step: u64,
    pub wall_time_s: f64,
}

/// The last epoch's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FinalMetrics {
    pub epoch: usize,
    pub train_acc: f64,
    pub train_loss: f64,
    pub val_acc: f64,
    pub val_loss: f64,
}

/// Files of the dataset that could not be decoded and were left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SkippedFiles {
    pub count: usize,
    pub files: Vec<String>,
}

/// The MLflow run in `run.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MlflowReport {
    pub tracking_uri: String,
    pub experiment_id: Option<String>,
    pub run_id: Option<String>,
    /// Operations and metric points not yet sent when `run.json` was written (its own upload
    /// and the final status, which follow it, not counted); `vigil sync RUN_DIR` sends them.
    pub unsent_operations: u64,
    pub unsent_points: u64,
}

/// Early stopping in `run.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EarlyStoppingReport {
    /// The step of the best validation (by the watched metric).
    pub best_step: Option<u64>,
    pub best_value: Option<f64>,
    pub mode: String,
    /// The watched metric.
    pub monitor: String,
    /// Why it stopped the run (`None`: it did not).
    pub reason: Option<String>,
    /// The checkpoint whose weights the run ended with (`restore_best`).
    pub restored_from: Option<String>,
    pub stopped_epoch: Option<usize>,
    pub stopped_step: Option<u64>,
    /// Validations since the last improvement when the attempt ended.
    pub wait_count: u32,
}

/// A monitor that asked to stop the run (`monitor` is `early_stopping` when early stopping
/// did).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoppedBy {
    pub monitor: String,
    pub reason: String,
}

/// One monitor in `run.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MonitorReport {
    pub api_version: String,
    pub disabled: Option<MonitorDisabled>,
    pub dropped_non_finite_metrics: u64,
    /// By event name.
    pub hooks: BTreeMap<String, HookReport>,
    pub name: String,
    pub path: String,
    /// How the monitor came back on resume.
    pub resumed: Option<String>,
    pub saves_state: bool,
    /// The training thread's time serving the monitor outside its hooks: data prepared for
    /// its subscriptions (shared among their subscribers) and the routing of its records and
    /// images to the sinks.
    pub service_ms: f64,
    /// That over the training loop's wall time.
    pub service_share_of_step_time: f64,
    pub sha256: String,
    /// Time in its hooks over the training loop's wall time.
    pub share_of_step_time: f64,
    /// CPU time the sinks' threads spent writing its records and images (it competes with
    /// training for the cores, but is not on the training thread).
    pub sink_cpu_ms: f64,
    /// `ok` or `disabled`.
    pub status: String,
    pub total_ms: f64,
    pub version: String,
}

/// One part of the training thread's time in `run.json`'s `step_breakdown`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PhaseReport {
    /// Over the training loop's wall time.
    pub share_of_loop_time: f64,
    pub total_ms: f64,
}

/// Why a monitor was disabled.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MonitorDisabled {
    pub event: String,
    pub global_step: u64,
    pub reason: String,
}

/// The calls of one hook of one monitor and their time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HookReport {
    pub calls: u64,
    pub max_us: f64,
    pub mean_us: f64,
    pub share_of_step_time: f64,
    pub total_ms: f64,
}

/// One entry of a checkpoint index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointEntry {
    pub dir: String,
    pub global_step: u64,
    pub val_loss: Option<f64>,
}

/// A run's `checkpoints/index.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointIndex {
    /// Best first.
    pub best: Vec<CheckpointEntry>,
    /// The checkpoint of early stopping's best validation, kept for `restore_best` whatever
    /// its validation loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping_best: Option<CheckpointEntry>,
    pub last: Option<CheckpointEntry>,
}

/// The `run.json` in `run_dir`, if there is one that parses as JSON. A field that is missing
/// or of another type reads as its default.
pub fn read_run_info(run_dir: &Path) -> Option<RunInfo> {
    let bytes = std::fs::read(run_dir.join(super::RUN_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok().or_else(|| {
        // A file of another shape (an older vigil, an edit by hand): keep what fits.
        let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        Some(lenient(&value))
    })
}

/// The fields of `value` that have the right type, the rest at their defaults.
fn lenient(value: &serde_json::Value) -> RunInfo {
    let mut info = RunInfo::default();
    let Some(object) = value.as_object() else {
        return info;
    };
    let mut fields = serde_json::Map::new();
    for (key, field) in object {
        let mut one = serde_json::Map::new();
        one.insert(key.clone(), field.clone());
        if serde_json::from_value::<RunInfo>(serde_json::Value::Object(one)).is_ok() {
            fields.insert(key.clone(), field.clone());
        }
    }
    if let Ok(parsed) = serde_json::from_value(serde_json::Value::Object(fields)) {
        info = parsed;
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_keys_in_the_order_the_file_always_had() {
        // run.json was written from a `serde_json::Value`, whose map sorts its keys: the typed
        // struct must write the same bytes, nested records included.
        let info = RunInfo {
            attempts: vec![Attempt::default()],
            checkpoints: Some(CheckpointIndex {
                best: vec![CheckpointEntry {
                    dir: "step_4".into(),
                    global_step: 4,
                    val_loss: Some(0.5),
                }],
                early_stopping_best: None,
                last: None,
            }),
            final_metrics: Some(FinalMetrics::default()),
            monitors: vec![MonitorReport {
                disabled: Some(MonitorDisabled::default()),
                hooks: BTreeMap::from([("fit_end".to_string(), HookReport::default())]),
                ..MonitorReport::default()
            }],
            stopped_by: Some(StoppedBy::default()),
            ..RunInfo::default()
        };
        let typed = serde_json::to_string_pretty(&info).unwrap();
        let through_a_map =
            serde_json::to_string_pretty(&serde_json::to_value(&info).unwrap()).unwrap();
        assert_eq!(typed, through_a_map);
    }

    #[test]
    fn a_field_of_another_type_reads_as_its_default() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(super::super::RUN_FILE),
            r#"{"status": "failed", "error": "boom", "global_step": "many"}"#,
        )
        .unwrap();
        let info = read_run_info(dir.path()).unwrap();
        assert_eq!(info.status, "failed");
        assert_eq!(info.error.as_deref(), Some("boom"));
        assert_eq!(info.global_step, 0);
        std::fs::write(dir.path().join(super::super::RUN_FILE), "{\"stat").unwrap();
        assert!(read_run_info(dir.path()).is_none());
    }

    #[test]
    fn steps_per_second_over_attempts() {
        let info = RunInfo {
            attempts: vec![
                Attempt {
                    from_step: 0,
                    to_step: 100,
                    wall_time_s: 10.0,
                    ..Attempt::default()
                },
                Attempt {
                    from_step: 80,
                    to_step: 180,
                    wall_time_s: 10.0,
                    ..Attempt::default()
                },
            ],
            ..RunInfo::default()
        };
        assert_eq!(info.attempts_steps_per_second(), Some(10.0));
        assert_eq!(RunInfo::default().attempts_steps_per_second(), None);
    }
}
