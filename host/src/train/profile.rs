//! Where the training thread's time goes: every step's parts (data, forward, backward, the
//! monitors' gradient copy, the monitors' events, the optimizer, the step's record), and the
//! validation passes, checkpoints and epoch events between steps. Always on: a part costs two
//! clock reads (about 50 ns) against a step of milliseconds.

use std::time::{Duration, Instant};

use crate::run_dir::PhaseReport;

/// A part of the training thread's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Taking the batch from the dataset and augmenting it.
    Data,
    /// The forward pass and the loss.
    Forward,
    /// `backward`.
    Backward,
    /// Copying the gradients into one flat tensor for monitors that read them.
    GradientCopy,
    /// The monitors' events at `train_batch_end` (their hooks, and routing what they logged).
    Monitors,
    /// Clipping and the optimizer's update.
    Optimizer,
    /// The step's record, handed to the sinks.
    Record,
    /// Validation passes with their monitor events and records.
    Validation,
    /// Checkpoints.
    Checkpoint,
    /// Epoch start and end events and records.
    Epochs,
}

impl Phase {
    pub const ALL: [Phase; 10] = [
        Phase::Data,
        Phase::Forward,
        Phase::Backward,
        Phase::GradientCopy,
        Phase::Monitors,
        Phase::Optimizer,
        Phase::Record,
        Phase::Validation,
        Phase::Checkpoint,
        Phase::Epochs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Data => "data",
            Phase::Forward => "forward",
            Phase::Backward => "backward",
            Phase::GradientCopy => "gradient_copy",
            Phase::Monitors => "monitors",
            Phase::Optimizer => "optimizer",
            Phase::Record => "record",
            Phase::Validation => "validation",
            Phase::Checkpoint => "checkpoint",
            Phase::Epochs => "epochs",
        }
    }

    /// Whether the phase is part of every training step (the rest come between steps).
    pub fn in_step(self) -> bool {
        !matches!(self, Phase::Validation | Phase::Checkpoint | Phase::Epochs)
    }
}

/// Time by phase.
#[derive(Debug, Clone, Default)]
pub struct Phases {
    totals: [Duration; Phase::ALL.len()],
}

impl Phases {
    pub fn add(&mut self, phase: Phase, spent: Duration) {
        self.totals[phase as usize] += spent;
    }

    pub fn get(&self, phase: Phase) -> Duration {
        self.totals[phase as usize]
    }

    /// The phases with their time and share of `loop_seconds`, for `run.json`.
    pub fn report(&self, loop_seconds: f64) -> Vec<(String, PhaseReport)> {
        Phase::ALL
            .iter()
            .map(|&phase| {
                let total = self.get(phase).as_secs_f64();
                (
                    phase.name().to_string(),
                    PhaseReport {
                        total_ms: total * 1e3,
                        share_of_loop_time: if loop_seconds > 0.0 {
                            total / loop_seconds
                        } else {
                            0.0
                        },
                    },
                )
            })
            .collect()
    }
}

/// A stopwatch whose laps go to phases.
pub struct Lap {
    last: Instant,
}

impl Lap {
    pub fn start() -> Lap {
        Lap {
            last: Instant::now(),
        }
    }

    /// Add the time since the last lap to `phase`.
    pub fn to(&mut self, phases: &mut Phases, phase: Phase) {
        let now = Instant::now();
        phases.add(phase, now - self.last);
        self.last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laps_add_up_to_the_time_measured() {
        let mut phases = Phases::default();
        let started = Instant::now();
        let mut lap = Lap::start();
        std::thread::sleep(Duration::from_millis(5));
        lap.to(&mut phases, Phase::Forward);
        std::thread::sleep(Duration::from_millis(3));
        lap.to(&mut phases, Phase::Backward);
        lap.to(&mut phases, Phase::Forward);
        let total: Duration = Phase::ALL.iter().map(|&p| phases.get(p)).sum();
        assert!(total <= started.elapsed());
        assert!(phases.get(Phase::Forward) >= Duration::from_millis(5));
        assert!(phases.get(Phase::Backward) >= Duration::from_millis(3));
        let report = phases.report(1.0);
        assert_eq!(report.len(), Phase::ALL.len());
        assert_eq!(report[1].0, "forward");
        assert!(
            (report[1].1.share_of_loop_time - phases.get(Phase::Forward).as_secs_f64()).abs()
                < 1e-12
        );
    }
}
