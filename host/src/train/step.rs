//! One training step: forward, loss, backward, the monitors' `train_batch_end` (which see the
//! gradient as backward produced it), clipping, the optimizer step, and the step's record.

use std::sync::Arc;
use std::time::Instant;

use tch::Tensor;
use vigil_plugin_api::{EventKind, Subscriptions};

use super::loss::{correct_count, cross_entropy};
use super::per_sample::Arming;
use super::profile::{Lap, Phase};
use super::{services, Trainer};
use crate::config::AnomalyPolicy;
use crate::error::{Error, Result};
use crate::hub::RunHub;
use crate::model::taps;
use crate::plugin::EventData;
use crate::sink::RecordKind;

impl Trainer {
    pub(super) fn train_batch(
        &mut self,
        batch_index: u32,
        (order, order_on_device): &(Arc<Vec<i64>>, Tensor),
        hub: &mut RunHub,
    ) -> Result<()> {
        let mut lap = Lap::start();
        let samples = self.train.len();
        let batch_size = self.settings.batch_size as i64;
        let start = i64::from(batch_index) * batch_size;
        let size = batch_size.min(samples - start);
        let indices = order_on_device.f_narrow(0, start, size)?;
        let batch = self
            .train
            .epoch_batch(self.progress.epoch, order, start, size, &indices)?;
        let images = self.feed.augment(&batch, self.progress.global_step)?;
        let labels = self.train.labels.f_index_select(0, &indices)?;
        lap.to(&mut self.phases, Phase::Data);
        let lr = self.schedule.at(self.progress.global_step);
        let step = self.progress.global_step;
        let arming = if self.per_sample.wanted() {
            self.per_sample.arm(step)
        } else {
            Arming::default()
        };
        let (logits, taps) = if arming.per_sample {
            let (logits, taps) = taps::record(|| self.model.forward(&images, true));
            (logits?, taps)
        } else {
            (self.model.forward(&images, true)?, Vec::new())
        };
        let loss = cross_entropy(&logits, &labels, tch::Reduction::Mean)?;
        let loss_value = loss.f_double_value(&[])?;
        lap.to(&mut self.phases, Phase::Forward);
        self.optimizer.zero_grad();
        let mut skip = false;
        if !loss_value.is_finite() {
            skip = self.anomaly(hub, format!("training loss is {loss_value}"))?;
        }
        if !skip {
            loss.f_backward()?;
            lap.to(&mut self.phases, Phase::Backward);
            if self.flat_grads.is_none() && hub.subscribes(Subscriptions::GRADIENT) {
                let started = Instant::now();
                self.flat_grads = services::flatten_grads(&self.parameters)?;
                // Done for the monitors that read the gradient: their service time.
                hub.charge_subscribers(Subscriptions::GRADIENT, started.elapsed());
                lap.to(&mut self.phases, Phase::GradientCopy);
            }
            if arming.per_sample {
                let started = Instant::now();
                self.per_sample.capture(
                    step,
                    taps,
                    &self.model,
                    &self.parameters,
                    &self.parameter_names,
                    (&logits, &images, &labels),
                )?;
                hub.charge_subscribers(Subscriptions::PER_SAMPLE, started.elapsed());
                lap.to(&mut self.phases, Phase::Monitors);
            }
        }
        // With clipping: the norm now, for the anomaly check and the record; the gradients
        // are scaled only after the monitors have seen them as backward produced them.
        let clip = self.settings.optim.clip_grad_norm.filter(|_| !skip);
        let grad_norm = match clip {
            Some(_) => {
                let norm = self.optimizer.grad_norm()?;
                if !norm.is_finite() {
                    skip = self.anomaly(hub, format!("gradient norm is {norm}"))?;
                }
                Some(norm)
            }
            None => None,
        };
        let batch_correct = correct_count(&logits, &labels)?;
        let mut values = vec![
            ("train_loss", loss_value),
            ("train_loss_bits", loss_value / std::f64::consts::LN_2),
            ("train_acc", batch_correct / size as f64),
            ("lr", lr),
            ("wd", self.settings.optim.weight_decay),
        ];
        if let Some(norm) = grad_norm {
            values.push(("grad_norm_before_clip", norm));
        }
        lap.to(&mut self.phases, Phase::Optimizer);
        if hub.wants(EventKind::TRAIN_BATCH_END) && !skip {
            let counters = self.counters(batch_index, size as u32);
            self.notify(
                hub,
                EventData::new(EventKind::TRAIN_BATCH_END, counters, &values),
            )?;
            lap.to(&mut self.phases, Phase::Monitors);
        }
        if let (Some(max), Some(norm)) = (clip, grad_norm) {
            if !skip {
                let after = self.optimizer.clip_grad_norm_from(norm, max)?;
                values.push(("grad_norm_after_clip", after));
            }
        }
        if !skip {
            let mut motion = None;
            if arming.motion {
                let started = Instant::now();
                self.per_sample.before_step(&self.parameters)?;
                motion = Some(started.elapsed());
            }
            self.optimizer.step(lr)?;
            self.progress.global_step += 1;
            if let Some(spent) = motion {
                let started = Instant::now();
                self.per_sample.after_step(step, &self.parameters)?;
                hub.charge_subscribers(Subscriptions::PARAMETER_MOTION, spent + started.elapsed());
            }
        }
        lap.to(&mut self.phases, Phase::Optimizer);
        self.progress.batches_done += 1;
        if loss_value.is_finite() {
            self.progress.epoch_loss_sum += loss_value * size as f64;
            self.progress.epoch_correct += batch_correct;
            self.progress.epoch_samples += size as u64;
        }
        let mut record = self.record(
            RecordKind::Train,
            values.iter().map(|&(k, v)| (k.to_string(), v)).collect(),
        );
        if skip {
            record.metrics.push(("skipped".into(), 1.0));
        }
        let written = self.write_record(hub, record);
        lap.to(&mut self.phases, Phase::Record);
        written
    }

    /// Apply the anomaly policy; returns whether to skip the optimizer step.
    fn anomaly(&mut self, hub: &mut RunHub, what: String) -> Result<bool> {
        let step = self.progress.global_step;
        match self.settings.anomaly_policy {
            AnomalyPolicy::Stop => Err(Error::Diverged {
                epoch: self.progress.epoch,
                step,
                what: format!("{what} (anomaly_policy = \"stop\"; lower `optim.lr`, set `optim.clip_grad_norm`, or choose \"skip_batch\")"),
            }),
            AnomalyPolicy::SkipBatch | AnomalyPolicy::Warn => {
                let skip = self.settings.anomaly_policy == AnomalyPolicy::SkipBatch;
                let message = format!(
                    "step {step}, epoch {}: {what}; {}",
                    self.progress.epoch,
                    if skip { "batch skipped" } else { "step taken anyway (anomaly_policy = \"warn\")" }
                );
                tracing::warn!("{message}");
                hub.alert(
                    crate::config::NotifyEvent::Anomaly,
                    message.clone(),
                    Some((self.progress.epoch, step)),
                );
                self.warnings.push(message);
                Ok(skip)
            }
        }
    }
}
