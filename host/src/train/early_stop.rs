//! Early stopping: after each validation, Lightning's `EarlyStopping` checks in Lightning's
//! order (a metric that is not finite, the stopping threshold, the divergence threshold, then
//! improvement by more than `min_delta` or one more validation of patience used up).
//!
//! Patience counts validations, as Lightning does. The state is saved in every checkpoint, so a
//! resumed run stops at the validation the run left alone would have stopped at. Besides
//! Lightning's `best_score` (the last value that improved by more than `min_delta`), the best
//! value seen at all is kept with its step: that validation's checkpoint is what
//! `restore_best` loads.

use serde::{Deserialize, Serialize};

use super::PassMetrics;
use crate::config::{EarlyStoppingSettings, StopMode};

/// What early stopping has seen; saved in checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EarlyStopState {
    /// Lightning's `best_score`: `None` until a validation improves on ±∞.
    pub best_score: Option<f64>,
    /// Validations since `best_score` last improved.
    pub wait_count: u32,
    /// The best value seen at any checked validation, and its global step.
    pub best_value: Option<f64>,
    pub best_step: Option<u64>,
    /// Set at the validation that stopped the run.
    pub stopped: Option<EarlyStop>,
}

/// The validation that stopped a run, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlyStop {
    pub global_step: u64,
    pub epoch: usize,
    pub value: f64,
    pub reason: String,
}

/// Early stopping of one run.
#[derive(Debug, Clone)]
pub struct EarlyStopping {
    pub settings: EarlyStoppingSettings,
    pub state: EarlyStopState,
}

/// What one check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Before `start_from_epoch`: not checked.
    Skipped,
    /// Going on; `best` says whether this validation is the best so far (its checkpoint is
    /// the one `restore_best` keeps).
    Continue { best: bool },
    /// Stop now; `best` as above.
    Stop { best: bool },
}

impl EarlyStopping {
    pub fn new(settings: EarlyStoppingSettings) -> Self {
        EarlyStopping {
            settings,
            state: EarlyStopState::default(),
        }
    }

    /// The watched metric of a validation pass, `None` when the pass has no such metric (a
    /// top-k accuracy on data with no more than k classes).
    pub fn value_of(&self, metrics: &PassMetrics) -> Option<f64> {
        match self.settings.monitor.as_str() {
            "val_loss" => Some(metrics.loss),
            "val_acc" => Some(metrics.accuracy),
            name => metrics
                .top_k_metric()
                .filter(|(top_k, _)| *top_k == name)
                .map(|(_, value)| value),
        }
    }

    /// `a` is better than `b` (Lightning's `monitor_op`).
    fn better(&self, a: f64, b: f64) -> bool {
        match self.settings.mode {
            StopMode::Min => a < b,
            StopMode::Max => a > b,
        }
    }

    /// Check the validation at `global_step` of (1-based) `epoch`, whose watched metric is
    /// `current`.
    pub fn check(&mut self, epoch: usize, global_step: u64, current: f64) -> Verdict {
        let settings = &self.settings;
        // Lightning's `current_epoch` counts from 0.
        if epoch.saturating_sub(1) < settings.start_from_epoch {
            return Verdict::Skipped;
        }
        let best = current.is_finite()
            && self
                .state
                .best_value
                .is_none_or(|best| self.better(current, best));
        if best {
            self.state.best_value = Some(current);
            self.state.best_step = Some(global_step);
        }
        let name = &settings.monitor;
        let previous = self.state.best_score;
        let shown = |value: Option<f64>| value.map_or("none".to_string(), |v| format!("{v:.6}"));
        let reason = if settings.check_finite && !current.is_finite() {
            Some(format!(
                "{name} = {current} is not finite; the best value was {}",
                shown(previous)
            ))
        } else if let Some(threshold) = settings
            .stopping_threshold
            .filter(|&threshold| self.better(current, threshold))
        {
            Some(format!(
                "stopping threshold reached: {name} = {current:.6} is {} than {threshold}",
                self.worded()
            ))
        } else if let Some(threshold) = settings
            .divergence_threshold
            .filter(|&threshold| self.better(-current, -threshold))
        {
            Some(format!(
                "divergence threshold reached: {name} = {current:.6} is {} than {threshold}",
                self.worded_worse()
            ))
        } else if self.improves(current, previous) {
            self.state.best_score = Some(current);
            self.state.wait_count = 0;
            None
        } else {
            self.state.wait_count += 1;
            (self.state.wait_count >= settings.patience).then(|| {
                format!(
                    "{name} did not improve by more than {} in the last {} validations; the best \
                     value was {}",
                    settings.min_delta,
                    self.state.wait_count,
                    shown(previous)
                )
            })
        };
        match reason {
            None => Verdict::Continue { best },
            Some(reason) => {
                self.state.stopped = Some(EarlyStop {
                    global_step,
                    epoch,
                    value: current,
                    reason,
                });
                Verdict::Stop { best }
            }
        }
    }

    /// Lightning: `monitor_op(current - min_delta, best_score)`, with `min_delta` negated for
    /// `min` and `best_score` starting at ±∞.
    fn improves(&self, current: f64, best_score: Option<f64>) -> bool {
        let delta = match self.settings.mode {
            StopMode::Min => -self.settings.min_delta,
            StopMode::Max => self.settings.min_delta,
        };
        let best = best_score.unwrap_or(match self.settings.mode {
            StopMode::Min => f64::INFINITY,
            StopMode::Max => f64::NEG_INFINITY,
        });
        self.better(current - delta, best)
    }

    fn worded(&self) -> &'static str {
        match self.settings.mode {
            StopMode::Min => "lower",
            StopMode::Max => "higher",
        }
    }

    fn worded_worse(&self) -> &'static str {
        match self.settings.mode {
            StopMode::Min => "higher",
            StopMode::Max => "lower",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mode: StopMode, patience: u32, min_delta: f64) -> EarlyStoppingSettings {
        EarlyStoppingSettings {
            monitor: "val_loss".into(),
            mode,
            min_delta,
            patience,
            stopping_threshold: None,
            divergence_threshold: None,
            check_finite: true,
            start_from_epoch: 0,
            restore_best: true,
        }
    }

    /// Feed values one validation per epoch; the 0-based index of the validation that stops.
    fn stops_at(stopper: &mut EarlyStopping, values: &[f64]) -> Option<usize> {
        values.iter().enumerate().find_map(|(i, &value)| {
            matches!(
                stopper.check(i + 1, i as u64 * 10, value),
                Verdict::Stop { .. }
            )
            .then_some(i)
        })
    }

    #[test]
    fn patience_counts_validations_without_improvement_as_lightning_does() {
        // Lightning 2.x, EarlyStopping(monitor, mode="min", patience=2, min_delta=0.1): the
        // best score is 1.0, then 0.85 (an improvement of 0.15); 0.8 and 0.78 improve by less
        // than 0.1 on 0.85, so the second of them stops the run.
        let mut stopper = EarlyStopping::new(settings(StopMode::Min, 2, 0.1));
        assert_eq!(
            stops_at(&mut stopper, &[1.0, 0.85, 0.8, 0.78, 0.5]),
            Some(3)
        );
        assert_eq!(stopper.state.best_score, Some(0.85));
        // The best value seen is 0.78, at the stopping validation itself.
        assert_eq!(stopper.state.best_value, Some(0.78));
        assert_eq!(stopper.state.best_step, Some(30));
    }

    #[test]
    fn an_improvement_resets_the_wait() {
        let mut stopper = EarlyStopping::new(settings(StopMode::Max, 2, 0.0));
        assert_eq!(
            stops_at(&mut stopper, &[0.5, 0.5, 0.6, 0.6, 0.59, 0.7]),
            Some(4)
        );
    }

    #[test]
    fn checks_run_in_lightnings_order() {
        // A NaN stops before any threshold is looked at; the stopping threshold before the
        // divergence threshold.
        let mut s = settings(StopMode::Min, 10, 0.0);
        s.stopping_threshold = Some(0.2);
        s.divergence_threshold = Some(5.0);
        let mut stopper = EarlyStopping::new(s.clone());
        assert_eq!(stops_at(&mut stopper, &[1.0, f64::NAN]), Some(1));
        assert!(stopper.state.stopped.unwrap().reason.contains("not finite"));
        let mut stopper = EarlyStopping::new(s.clone());
        assert_eq!(stops_at(&mut stopper, &[1.0, 0.9, 0.1]), Some(2));
        assert!(stopper
            .state
            .stopped
            .unwrap()
            .reason
            .contains("stopping threshold"));
        let mut stopper = EarlyStopping::new(s);
        assert_eq!(stops_at(&mut stopper, &[1.0, 6.0]), Some(1));
        assert!(stopper.state.stopped.unwrap().reason.contains("divergence"));
    }

    #[test]
    fn nothing_is_checked_before_start_from_epoch() {
        let mut s = settings(StopMode::Min, 1, 0.0);
        s.start_from_epoch = 2;
        let mut stopper = EarlyStopping::new(s);
        // Epochs 1 and 2 (0-based 0 and 1) are skipped: their values are not the best.
        assert_eq!(stopper.check(1, 1, 0.1), Verdict::Skipped);
        assert_eq!(stopper.check(2, 2, 0.1), Verdict::Skipped);
        assert_eq!(stopper.check(3, 3, 1.0), Verdict::Continue { best: true });
        assert_eq!(stopper.check(4, 4, 1.0), Verdict::Stop { best: false });
    }

    #[test]
    fn a_nan_is_not_checked_for_finiteness_when_told_not_to() {
        let mut s = settings(StopMode::Min, 3, 0.0);
        s.check_finite = false;
        let mut stopper = EarlyStopping::new(s);
        assert_eq!(stops_at(&mut stopper, &[1.0, f64::NAN, f64::NAN]), None);
        assert_eq!(stopper.state.wait_count, 2);
    }
}
