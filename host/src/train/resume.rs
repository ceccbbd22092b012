//! Checkpoint state: what a checkpoint saves besides the model (counters, monitor state,
//! host-kept averages, the lengths of appended files), how a resume puts it back, and the
//! signals that interrupt a run cleanly.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use abi_stable::std_types::RSlice;
use vigil_plugin_api::{EventKind, SamplerDraws};

use super::checkpoint::{self, Extras, SavedMonitor, TrainingState};
use super::{Progress, Trainer};
use crate::error::{Error, Result};
use crate::hub::{OutputMarks, RunHub};
use crate::plugin::{EventData, MonitorSnapshot};

/// What a resumed run still has to hand the monitors before training continues: each
/// monitor's part of the checkpoint, with its saved bytes.
pub(super) type PendingRestore = Vec<(MonitorSnapshot, Option<Vec<u8>>)>;

/// The signals that interrupt a run cleanly, by the number the flag holds.
pub fn signal_name(signal: usize) -> &'static str {
    match signal as i32 {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGUSR1 => "SIGUSR1",
        _ => "a signal",
    }
}

impl Trainer {
    /// Stop cleanly when `flag` holds a signal number (non-zero): the step in progress
    /// finishes, a checkpoint is written, and training returns with
    /// [`super::FitSummary::interrupted`] set.
    pub fn interrupt_on(&mut self, flag: &'static AtomicUsize) {
        self.interrupt = Some(flag);
    }

    /// The signal that asked the run to stop, if one did.
    pub(super) fn interrupted(&self) -> Option<usize> {
        self.interrupt
            .as_ref()
            .map(|flag| flag.load(Ordering::SeqCst))
            .filter(|&signal| signal != 0)
    }

    /// Keep checkpoints in `run_dir`; `config_text` (the effective config) is stored in each,
    /// and so are the lengths of the files the run's hub appends to.
    pub fn keep_checkpoints(&mut self, run_dir: &Path, config_text: String) -> Result<()> {
        if self.settings.checkpoint.enabled {
            self.checkpoints = Some((
                checkpoint::Checkpoints::open(run_dir, self.settings.checkpoint.keep_best)?,
                config_text,
            ));
        }
        Ok(())
    }

    /// Continue from a checkpoint: weights, optimizer state, counters, the host's averages;
    /// the monitors get their state back when training begins ([`Trainer::begin`]).
    pub fn resume(&mut self, dir: &Path, state: &TrainingState) -> Result<()> {
        if state.seed != self.settings.seed {
            return Err(Error::Config {
                location: dir.display().to_string(),
                message: format!(
                    "this checkpoint was trained with seed {} but the run's config says seed {}; \
                     resume with the config the run was started with",
                    state.seed, self.settings.seed
                ),
            });
        }
        checkpoint::restore(dir, &mut self.vars, &mut self.optimizer, state)?;
        let host_tensors = checkpoint::host_tensors(dir)?;
        self.averages
            .restore(&state.gradient_averages, &host_tensors, self.device)
            .map_err(|err| checkpoint::in_checkpoint(dir, err))?;
        self.per_sample
            .restore(&self.parameter_names, &host_tensors, self.device)?;
        let mut pending = Vec::with_capacity(state.monitors.len());
        for saved in &state.monitors {
            let bytes = match &saved.state_file {
                Some(file) => Some(checkpoint::read_file(dir, file)?),
                None => None,
            };
            let snapshot = MonitorSnapshot {
                name: saved.name.clone(),
                plugin_version: saved.plugin_version.clone(),
                api_version: saved.api_version.clone(),
                saves_state: saved.saves_state,
                state: None,
                disabled: saved.disabled.clone(),
            };
            pending.push((snapshot, bytes));
        }
        self.pending_restore = Some(pending);
        if let Some(early) = &mut self.early_stopping {
            early.state = state.early_stopping.clone().unwrap_or_default();
        }
        self.progress = if state.batches_done >= self.batches_per_epoch() {
            // Taken at the end of an epoch, after its epoch record: go on with the next one.
            Progress {
                global_step: state.global_step,
                epoch: state.epoch + 1,
                validation_pass: state.validation_pass,
                best_val_loss: state.best_val_loss,
                ..Progress::default()
            }
        } else {
            Progress {
                global_step: state.global_step,
                epoch: state.epoch,
                batches_done: state.batches_done,
                epoch_loss_sum: state.epoch_loss_sum,
                epoch_correct: state.epoch_correct,
                epoch_samples: state.epoch_samples,
                validation_pass: state.validation_pass,
                best_val_loss: state.best_val_loss,
            }
        };
        Ok(())
    }

    /// Whether the run has trained all its epochs (a resume from its final checkpoint).
    pub fn is_complete(&self) -> bool {
        self.progress.epoch > self.settings.epochs || self.early_stop().is_some()
    }

    /// The start of training: `fit_start` for a new run; for a resumed one, each monitor's
    /// saved state back (or a fresh start, with the current epoch's `train_epoch_start` when
    /// the run resumes mid-epoch).
    pub(super) fn start_monitors(&mut self, hub: &mut RunHub) -> Result<()> {
        let Some(pending) = self.pending_restore.take() else {
            return self.notify(
                hub,
                EventData::new(EventKind::FIT_START, self.counters(0, 0), &[]),
            );
        };
        let mid_epoch = self.progress.batches_done > 0 && !self.is_complete();
        let order = if mid_epoch {
            Some(self.epoch_order(self.progress.epoch)?)
        } else {
            None
        };
        let mut epoch_start =
            EventData::new(EventKind::TRAIN_EPOCH_START, self.counters(0, 0), &[]);
        if let (Some(order), Some(weights)) = (&order, self.feed.sample_weights()) {
            epoch_start.sampler = Some(SamplerDraws {
                indices: RSlice::from_slice(order),
                weights: RSlice::from_slice(weights),
                labels: RSlice::from_slice(&self.train_labels),
            });
        }
        hub.resume_monitors(
            &pending,
            self.counters(0, 0),
            order.as_ref().map(|_| &epoch_start),
            &self.services(),
        )
    }

    /// Save a checkpoint at the current step: the monitors' state first, then the hub's marks
    /// (the lengths of the files the run appends to, after a flush). A failed
    /// write is a warning, and the previous checkpoint stays as it was; the only error is a
    /// monitor with `on_error = "abort"` failing to save its state.
    pub(super) fn save_checkpoint(
        &mut self,
        hub: &mut RunHub,
        val_loss: Option<f64>,
    ) -> Result<()> {
        if self.checkpoints.is_none() {
            return Ok(());
        }
        let snapshots = hub.save_monitor_states(self.counters(0, 0), &self.services())?;
        let started = std::time::Instant::now();
        let written = hub
            .output_marks()
            .and_then(|marks| self.write_checkpoint(marks, snapshots, val_loss));
        if written.is_ok() {
            tracing::debug!(
                "checkpoint at step {} written in {:.1} ms ({})",
                self.progress.global_step,
                started.elapsed().as_secs_f64() * 1e3,
                val_loss.map_or("taken without a validation".into(), |loss| format!(
                    "validation loss {loss:.4}"
                ))
            );
        }
        if let Err(err) = written {
            let message = format!(
                "checkpoint at step {} not written (the previous one is intact): {err}",
                self.progress.global_step
            );
            tracing::warn!("{message}");
            self.warnings.push(message);
        }
        Ok(())
    }

    fn write_checkpoint(
        &mut self,
        marks: OutputMarks,
        snapshots: Vec<MonitorSnapshot>,
        val_loss: Option<f64>,
    ) -> Result<()> {
        let (gradient_averages, mut tensors) = self.averages.snapshot();
        tensors.extend(self.per_sample.checkpoint_tensors(&self.parameter_names)?);
        let mut extras = Extras {
            tensors,
            files: Vec::new(),
            module: self.model.scripted().cloned(),
        };
        let monitors = snapshots
            .into_iter()
            .enumerate()
            .map(|(index, snapshot)| {
                let state_file = snapshot.state.map(|bytes| {
                    let file = format!("monitor-{index}.state");
                    extras.files.push((file.clone(), bytes));
                    file
                });
                SavedMonitor {
                    name: snapshot.name,
                    plugin_version: snapshot.plugin_version,
                    api_version: snapshot.api_version,
                    saves_state: snapshot.saves_state,
                    state_file,
                    disabled: snapshot.disabled,
                }
            })
            .collect();
        let Some((checkpoints, config)) = &mut self.checkpoints else {
            return Ok(());
        };
        let progress = &self.progress;
        let state = TrainingState {
            format: checkpoint::FORMAT,
            global_step: progress.global_step,
            epoch: progress.epoch,
            batches_done: progress.batches_done,
            epoch_loss_sum: progress.epoch_loss_sum,
            epoch_correct: progress.epoch_correct,
            epoch_samples: progress.epoch_samples,
            validation_pass: progress.validation_pass,
            best_val_loss: progress.best_val_loss,
            val_loss,
            optimizer_steps: self.optimizer.state_tensors().1,
            seed: self.settings.seed,
            config: config.clone(),
            metrics_bytes: marks.metrics_bytes,
            appended: marks.appended,
            tensorboard: marks.tensorboard,
            mlflow_outbox: marks.mlflow_outbox,
            monitors,
            gradient_averages,
            early_stopping: self.early_stopping.as_ref().map(|e| e.state.clone()),
            vigil_version: env!("CARGO_PKG_VERSION").into(),
            checksums: Default::default(),
        };
        checkpoints.save(&self.vars, &self.optimizer, &state, &extras)?;
        Ok(())
    }
}

impl Trainer {
    /// Keep `θ₀` for `PARAMETER_MOTION` subscribers: the weights now, or on resume those the
    /// checkpoint holds; a warning when a resumed run's checkpoint holds none.
    pub(super) fn keep_initial_weights(&mut self) -> Result<()> {
        let resumed = self.progress.global_step > 0;
        if !self.per_sample.keep_initial(&self.parameters, resumed)? {
            let message = "the distance from the initial weights counts from the weights this resume starts from: the checkpoint holds none (no PARAMETER_MOTION subscriber before)".to_string();
            tracing::warn!("{message}");
            self.warnings.push(message);
        }
        Ok(())
    }
}
