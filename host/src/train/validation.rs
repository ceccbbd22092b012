//! Validation passes: loss and accuracy on the validation split, with the monitors'
//! `validation_batch_end` and `validation_end` events.

use std::time::Instant;

use abi_stable::std_types::RSlice;
use tch::{Device, Kind};
use vigil_plugin_api::{EventKind, ImageBatch, Subscriptions, ValidationBatch};

use super::loss::cross_entropy;
use super::{PassMetrics, Trainer};
use crate::error::Result;
use crate::hub::RunHub;
use crate::plugin::EventData;
use crate::rng::SplitMix64;
use crate::sink::RecordKind;

impl Trainer {
    /// Validate, record `val_loss`, `val_acc` and `best_val_loss`, and tell the monitors.
    pub(super) fn validate(&mut self, hub: &mut RunHub) -> Result<PassMetrics> {
        let started = Instant::now();
        let metrics = self.evaluate_monitored(hub);
        self.validation_seconds += started.elapsed().as_secs_f64();
        let metrics = metrics?;
        let best = self
            .progress
            .best_val_loss
            .map_or(metrics.loss, |b| b.min(metrics.loss));
        self.progress.best_val_loss = Some(best);
        let mut values = vec![
            ("val_loss".into(), metrics.loss),
            ("val_acc".into(), metrics.accuracy),
            ("best_val_loss".into(), best),
        ];
        if let Some((name, value)) = metrics.top_k_metric() {
            values.insert(2, (name.into(), value));
        }
        let record = self.record(RecordKind::Validation, values);
        self.write_record(hub, record)?;
        Ok(metrics)
    }

    /// Loss and accuracy on the validation (test) split, without gradients and in eval mode.
    pub fn evaluate(&mut self) -> Result<PassMetrics> {
        self.evaluate_monitored(&mut RunHub::empty())
    }

    fn evaluate_monitored(&mut self, hub: &mut RunHub) -> Result<PassMetrics> {
        let _no_grad = tch::no_grad_guard();
        self.progress.validation_pass += 1;
        let samples = self.test.len();
        let batch_size = self.settings.eval_batch_size as i64;
        let per_batch = hub.wants(EventKind::VALIDATION_BATCH_END);
        let copy_outputs = per_batch && hub.subscribes(Subscriptions::VALIDATION_OUTPUTS);
        let want_images = self.inputs_are_images
            && hub.wants(EventKind::VALIDATION_END)
            && hub.subscribes(Subscriptions::SAMPLE_IMAGES);
        // The shown samples by index, with their place in the list monitors get.
        let mut shown: Vec<(i64, usize)> = if want_images {
            self.shown_samples.iter().copied().zip(0..).collect()
        } else {
            Vec::new()
        };
        shown.sort_unstable();
        let mut image_predictions = vec![0i64; shown.len()];
        let num_classes = self.class_names.len() as u32;
        let (mut loss_sum, mut correct, mut top_correct) = (0f64, 0f64, 0f64);
        let top_k = self.settings.top_k;
        let with_top_k = self.class_names.len() > top_k;
        let (mut start, mut batch_index) = (0, 0u32);
        while start < samples {
            let size = batch_size.min(samples - start);
            let images = self.test.range(start, size)?;
            let labels = self.test.labels.f_narrow(0, start, size)?;
            let logits = self.model.forward(&images, false)?;
            loss_sum += cross_entropy(&logits, &labels, tch::Reduction::Sum)?.f_double_value(&[])?;
            let predictions = logits.f_argmax(-1, false)?;
            if with_top_k {
                let (_, largest) = logits.f_topk(top_k as i64, -1, true, false)?;
                top_correct += largest
                    .f_eq_tensor(&labels.f_unsqueeze(1)?)?
                    .f_sum(Kind::Float)?
                    .f_double_value(&[])?;
            }
            correct += predictions
                .f_eq_tensor(&labels)?
                .f_sum(Kind::Float)?
                .f_double_value(&[])?;
            let in_batch = {
                let first = shown.partition_point(|&(index, _)| index < start);
                let end = shown.partition_point(|&(index, _)| index < start + size);
                &shown[first..end]
            };
            let mut cpu_predictions = Vec::new();
            if copy_outputs || !in_batch.is_empty() {
                cpu_predictions = Vec::<i64>::try_from(&predictions.f_to_device(Device::Cpu)?)?;
                for &(index, place) in in_batch {
                    image_predictions[place] = cpu_predictions[(index - start) as usize];
                }
            }
            if per_batch {
                let copied = Instant::now();
                let (cpu_logits, cpu_labels) = if copy_outputs {
                    (
                        Vec::<f32>::try_from(
                            &logits
                                .f_to_device(Device::Cpu)?
                                .f_to_kind(Kind::Float)?
                                .f_reshape([-1])?,
                        )?,
                        Vec::<i64>::try_from(&labels.f_to_device(Device::Cpu)?)?,
                    )
                } else {
                    (Vec::new(), Vec::new())
                };
                if copy_outputs {
                    hub.charge_subscribers(Subscriptions::VALIDATION_OUTPUTS, copied.elapsed());
                }
                let mut event = EventData::new(
                    EventKind::VALIDATION_BATCH_END,
                    self.counters(batch_index, size as u32),
                    &[],
                );
                if copy_outputs {
                    event.validation = Some(ValidationBatch {
                        logits: RSlice::from_slice(&cpu_logits),
                        predictions: RSlice::from_slice(&cpu_predictions),
                        labels: RSlice::from_slice(&cpu_labels),
                        num_classes,
                    });
                }
                self.notify(hub, event)?;
            }
            start += size;
            batch_index += 1;
        }
        let metrics = PassMetrics {
            loss: loss_sum / samples as f64,
            accuracy: correct / samples as f64,
            top_k: with_top_k.then(|| (top_k, top_correct / samples as f64)),
        };
        if hub.wants(EventKind::VALIDATION_END) {
            let top = metrics.top_k_metric();
            let mut values = vec![("val_loss", metrics.loss), ("val_acc", metrics.accuracy)];
            if let Some((name, value)) = top {
                values.extend([(name, value), ("val_top_k", top_k as f64)]);
            }
            let mut event = EventData::new(EventKind::VALIDATION_END, self.counters(0, 0), &values);
            let copied = Instant::now();
            let (pixels, labels) = if want_images {
                (
                    self.test.display_images(&self.shown_samples)?,
                    self.shown_samples
                        .iter()
                        .map(|&index| self.val_labels[index as usize])
                        .collect(),
                )
            } else {
                (Vec::new(), Vec::new())
            };
            if want_images {
                hub.charge_subscribers(Subscriptions::SAMPLE_IMAGES, copied.elapsed());
            }
            if want_images {
                let size = self.test.size();
                event.images = Some(ImageBatch {
                    pixels: RSlice::from_slice(&pixels),
                    count: self.shown_samples.len() as u32,
                    channels: size[1] as u32,
                    height: size[2] as u32,
                    width: size[3] as u32,
                    labels: RSlice::from_slice(&labels),
                    predictions: RSlice::from_slice(&image_predictions),
                });
            }
            self.notify(hub, event)?;
        }
        Ok(metrics)
    }
}

/// Which validation samples monitors are shown ([`super::SAMPLE_IMAGES`] at most): the
/// classes take turns (each class's first pick, in class order, then each class's second,
/// and so on), and each class's picks are drawn at random with the run's seed. The same
/// samples every epoch, so that a viewer can follow them, and every prefix of the list (a
/// monitor that draws 16 takes the first 16) as even over the classes as it can be, whatever
/// order the files are in.
pub(super) fn shown_samples(labels: &[i64], count: usize, seed: u64) -> Vec<i64> {
    let mut by_class: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
    for (index, &label) in labels.iter().enumerate() {
        by_class.entry(label).or_default().push(index as i64);
    }
    let mut rng = SplitMix64::derived(seed, "shown-samples");
    let mut picks: Vec<std::vec::IntoIter<i64>> = by_class
        .into_values()
        .map(|members| {
            rng.permutation(members.len())
                .into_iter()
                .map(|at| members[at as usize])
                .collect::<Vec<i64>>()
                .into_iter()
        })
        .collect();
    let mut shown = Vec::with_capacity(count.min(labels.len()));
    while shown.len() < count.min(labels.len()) {
        for class in &mut picks {
            if shown.len() == count {
                break;
            }
            shown.extend(class.next());
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::shown_samples;

    #[test]
    fn shown_samples_take_the_classes_in_turn_and_stay_the_same() {
        // Sorted by class, as an image folder's files are: 3 classes of 30, 20 and 2.
        let labels: Vec<i64> = [(0, 30), (1, 20), (2, 2)]
            .iter()
            .flat_map(|&(class, n)| std::iter::repeat_n(class, n))
            .collect();
        let shown = shown_samples(&labels, 16, 7);
        assert_eq!(shown.len(), 16);
        let classes: Vec<i64> = shown.iter().map(|&i| labels[i as usize]).collect();
        assert_eq!(&classes[..6], &[0, 1, 2, 0, 1, 2]);
        // Class 2 has run out: the other two go on taking turns.
        assert_eq!(&classes[6..10], &[0, 1, 0, 1]);
        let mut unique = shown.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 16, "no sample twice");
        assert_eq!(shown, shown_samples(&labels, 16, 7), "seeded");
        assert_ne!(
            shown,
            shown_samples(&labels, 16, 8),
            "drawn, not the first of each"
        );
        // Fewer samples than asked: all of them.
        assert_eq!(shown_samples(&labels[..5], 64, 1).len(), 5);
        assert!(shown_samples(&[], 64, 1).is_empty());
    }
}
