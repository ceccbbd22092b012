//! Early stopping in the training loop: the check after each validation, the end of a run it
//! stopped (with `restore_best`, the best validation's checkpoint loaded), and its record in
//! `run.json`. The rules themselves are in [`super::early_stop`].

use super::early_stop::EarlyStop;
use super::{checkpoint, FitSummary, PassMetrics, Trainer, Verdict};
use crate::error::{Error, Result};
use crate::run_dir::EarlyStoppingReport;
use crate::run_log::say;

impl Trainer {
    /// Early stopping's decision on the validation just run (`None` without early stopping).
    pub(super) fn check_early_stopping(
        &mut self,
        metrics: &PassMetrics,
    ) -> Result<Option<Verdict>> {
        let (epoch, step) = (self.progress.epoch, self.progress.global_step);
        let Some(early) = &mut self.early_stopping else {
            return Ok(None);
        };
        let current = early.value_of(metrics).ok_or_else(|| Error::Config {
            location: "early_stopping.monitor".into(),
            message: format!(
                "`{}` is not measured on this data (a top-k accuracy needs more than k classes); \
                 watch `val_loss` or `val_acc`",
                early.settings.monitor
            ),
        })?;
        Ok(Some(early.check(epoch, step, current)))
    }

    /// The validation that stopped the run, once early stopping has stopped it.
    pub fn early_stop(&self) -> Option<&EarlyStop> {
        self.early_stopping.as_ref()?.state.stopped.as_ref()
    }

    /// The run stopped early: with `restore_best`, load the best validation's checkpoint
    /// into the model (the weights a caller gets back and `vigil export-model` writes).
    pub(super) fn end_early(&mut self, summary: &mut FitSummary) -> Result<()> {
        let Some(early) = &self.early_stopping else {
            return Ok(());
        };
        let Some(stop) = early.state.stopped.clone() else {
            return Ok(());
        };
        say(&format!(
            "early stopping at step {} (epoch {}): {}",
            stop.global_step, stop.epoch, stop.reason
        ));
        summary.stopped_by = Some(("early_stopping".into(), stop.reason.clone()));
        if !early.settings.restore_best {
            return Ok(());
        }
        let best_step = early.state.best_step;
        let entry = self
            .checkpoints
            .as_ref()
            .and_then(|(checkpoints, _)| checkpoints.index().early_stopping_best.clone());
        match (entry, best_step) {
            (Some(entry), Some(step)) if entry.global_step == step => {
                if step != self.progress.global_step {
                    let dir = self
                        .checkpoints
                        .as_ref()
                        .map(|(c, _)| c.root().join(&entry.dir))
                        .unwrap_or_default();
                    checkpoint::load_model(&dir, &mut self.vars)?;
                }
                say(&format!(
                    "restored the weights of the best validation ({} = {:.6} at step {step}, \
                     checkpoints/{})",
                    early.settings.monitor,
                    early.state.best_value.unwrap_or(f64::NAN),
                    entry.dir
                ));
                self.restored_from = Some(entry.dir);
            }
            _ => {
                let message = format!(
                    "early stopping could not restore the best weights: the checkpoint of the best \
                     validation (step {}) was not written; the model keeps the weights of step {}",
                    best_step.map_or("none".into(), |s| s.to_string()),
                    self.progress.global_step
                );
                tracing::warn!("{message}");
                self.warnings.push(message);
            }
        }
        Ok(())
    }

    /// What early stopping did, for `run.json`.
    pub fn early_stopping_report(&self) -> Option<EarlyStoppingReport> {
        let early = self.early_stopping.as_ref()?;
        let state = &early.state;
        Some(EarlyStoppingReport {
            best_step: state.best_step,
            best_value: state.best_value,
            mode: early.settings.mode.name().into(),
            monitor: early.settings.monitor.clone(),
            reason: state.stopped.as_ref().map(|s| s.reason.clone()),
            restored_from: self
                .restored_from
                .as_ref()
                .map(|dir| format!("checkpoints/{dir}")),
            stopped_epoch: state.stopped.as_ref().map(|s| s.epoch),
            stopped_step: state.stopped.as_ref().map(|s| s.global_step),
            wait_count: state.wait_count,
        })
    }
}
