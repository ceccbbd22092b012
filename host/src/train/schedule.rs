//! The learning rate at each optimizer step: linear warm-up over `warmup_epochs`, then
//! constant or cosine annealing to `eta_min` at the last step.

use crate::config::{ScheduleKind, ScheduleSettings};

/// Learning rate for every step of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    kind: ScheduleKind,
    peak: f64,
    eta_min: f64,
    warmup_steps: u64,
    total_steps: u64,
}

impl LrSchedule {
    pub fn new(settings: &ScheduleSettings, peak: f64, steps_per_epoch: u64, epochs: u64) -> Self {
        LrSchedule {
            kind: settings.kind,
            peak,
            eta_min: settings.eta_min,
            warmup_steps: (settings.warmup_epochs * steps_per_epoch as f64).round() as u64,
            total_steps: steps_per_epoch * epochs,
        }
    }

    /// The learning rate for the step that follows `step` steps already taken.
    pub fn at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.kind {
            ScheduleKind::Constant => self.peak,
            ScheduleKind::Cosine => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
                let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
                self.eta_min
                    + (self.peak - self.eta_min)
                        * 0.5
                        * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(warmup_epochs: f64) -> LrSchedule {
        let settings = ScheduleSettings {
            kind: ScheduleKind::Cosine,
            warmup_epochs,
            eta_min: 0.001,
        };
        LrSchedule::new(&settings, 0.1, 100, 10)
    }

    #[test]
    fn warmup_rises_linearly_to_the_peak() {
        let schedule = cosine(2.0);
        assert!((schedule.at(0) - 0.1 / 200.0).abs() < 1e-15);
        assert!((schedule.at(99) - 0.05).abs() < 1e-15);
        assert!((schedule.at(199) - 0.1).abs() < 1e-15);
    }

    #[test]
    fn cosine_matches_the_closed_form() {
        let schedule = cosine(2.0);
        let closed =
            |t: f64| 0.001 + (0.1 - 0.001) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
        assert!((schedule.at(200) - 0.1).abs() < 1e-15);
        assert!((schedule.at(600) - closed(0.5)).abs() < 1e-15);
        assert!((schedule.at(400) - closed(0.25)).abs() < 1e-15);
        assert!((schedule.at(1000) - 0.001).abs() < 1e-15);
        assert!((schedule.at(5000) - 0.001).abs() < 1e-15);
    }

    #[test]
    fn constant_stays_at_the_peak_after_warmup() {
        let settings = ScheduleSettings {
            kind: ScheduleKind::Constant,
            warmup_epochs: 0.5,
            eta_min: 0.0,
        };
        let schedule = LrSchedule::new(&settings, 0.2, 10, 3);
        assert!((schedule.at(0) - 0.04).abs() < 1e-15);
        assert!((schedule.at(5) - 0.2).abs() < 1e-15);
        assert!((schedule.at(29) - 0.2).abs() < 1e-15);
    }
}
