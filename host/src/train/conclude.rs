//! The end of a run: `run.json` (whatever the outcome), the run's last notification, and its
//! MLflow run finished — in that order around `run.json`, so that it says what could not be
//! sent.

use super::{signal_name, FitSummary, Trainer};
use crate::config::Settings;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::fs::write_atomically;
use crate::hub::RunHub;
use crate::run_dir::{Attempt, FinalMetrics, RunInfo, RunLayout, SkippedFiles, StoppedBy};

/// What one attempt at a run did, for its `run.json`.
pub(super) struct Attempted<'a> {
    pub settings: &'a Settings,
    pub layout: &'a RunLayout,
    pub dataset: &'a Dataset,
    pub trainer: &'a Trainer,
    pub fitted: &'a Result<FitSummary>,
    pub loop_seconds: f64,
    pub resumed_from: Option<u64>,
    /// The `run.json` of the attempts before (default for a new run).
    pub previous: RunInfo,
    /// Warnings of the resume (damaged checkpoints passed over).
    pub fallback_warnings: Vec<String>,
}

/// Write `run.json` for the attempt: notifications and MLflow's files go out first (what
/// fails is a warning in it), MLflow's `run.json` upload and final status after.
pub(super) fn write_run_info(attempt: Attempted<'_>, hub: &mut RunHub) -> Result<()> {
    let Attempted {
        settings,
        layout,
        dataset,
        trainer,
        fitted,
        loop_seconds,
        resumed_from,
        previous,
        fallback_warnings,
    } = attempt;
    let interrupted = fitted.as_ref().ok().and_then(|s| s.interrupted);
    let (status, error) = match &fitted {
        Ok(_) if interrupted.is_some() => (RunInfo::INTERRUPTED, None),
        Ok(summary) if summary.stopped_by.is_some() => (RunInfo::STOPPED, None),
        Ok(_) => (RunInfo::COMPLETED, None),
        Err(err) => (RunInfo::FAILED, Some(err.to_string())),
    };
    let summary = fitted.as_ref().ok();
    let last = summary.and_then(FitSummary::last);
    // Earlier attempts' warnings first: a resumed run's `run.json` replaces theirs.
    let mut warnings = previous.warnings;
    warnings.extend(fallback_warnings);
    warnings.extend(trainer.warnings().iter().cloned());
    warnings.extend(hub.warnings());
    // The sinks publish their CPU time by source when they flush: everything written so far
    // counts in the monitors' costs. (A failing sink's error is the run's already.)
    let _ = hub.flush();
    let mut attempts = previous.attempts;
    attempts.push(Attempt {
        from_step: resumed_from.unwrap_or(0),
        to_step: trainer.global_step(),
        status: status.into(),
        signal: interrupted.map(|signal| signal_name(signal).into()),
        wall_time_s: loop_seconds,
    });
    let info = RunInfo {
        mlflow: None,
        name: settings.name.clone(),
        status: status.into(),
        error,
        stopped_by: summary
            .and_then(|s| s.stopped_by.as_ref())
            .map(|(monitor, reason)| StoppedBy {
                monitor: monitor.clone(),
                reason: reason.clone(),
            }),
        interrupted_by: interrupted.map(|signal| signal_name(signal).into()),
        config: layout.config().display().to_string(),
        resumed_from_step: resumed_from,
        attempts,
        dataset: dataset.name.clone(),
        skipped_files: SkippedFiles {
            count: dataset.skipped_files.len(),
            files: dataset.skipped_files.clone(),
        },
        model: settings.model.kind.name().into(),
        parameters: trainer.parameter_count(),
        device: format!("{:?}", trainer.device()),
        early_stopping: trainer.early_stopping_report(),
        seed: settings.seed,
        epochs: settings.epochs,
        global_step: trainer.global_step(),
        best_val_loss: trainer.best_val_loss(),
        final_metrics: last.map(|m| FinalMetrics {
            epoch: m.epoch,
            train_loss: m.train.loss,
            train_acc: m.train.accuracy,
            val_loss: m.val.loss,
            val_acc: m.val.accuracy,
        }),
        wall_time_s: loop_seconds,
        steps_per_second: summary.map(|s| s.steps as f64 / s.seconds.max(1e-9)),
        checkpoints: trainer.checkpoint_index().cloned(),
        monitors: hub.monitor_report(loop_seconds),
        step_breakdown: trainer.phases().report(loop_seconds).into_iter().collect(),
        warnings,
        vigil_version: env!("CARGO_PKG_VERSION").into(),
    };
    // The last notification goes out (or fails, as a warning) before run.json is written.
    let mut info = info;
    let notified = hub.end_watching(&crate::hub::RunEnd {
        info: &info,
        step: trainer.global_step(),
        epoch: trainer.counters(0, 0).epoch as usize,
    });
    info.warnings.extend(notified);
    info.mlflow = hub.mlflow_before_run_json();
    info.warnings.extend(hub.take_mlflow_warnings());
    let text = serde_json::to_vec_pretty(&info).map_err(|source| Error::Json {
        what: "run summary".into(),
        source,
    })?;
    write_atomically(&layout.run_info(), &text)?;
    hub.mlflow_after_run_json(match info.status.as_str() {
        RunInfo::FAILED => "FAILED",
        RunInfo::INTERRUPTED => "KILLED",
        _ => "FINISHED",
    });
    Ok(())
}
