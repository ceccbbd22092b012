//! How training visits the data: the order of each epoch (a shuffle, or weighted draws with
//! replacement), and augmentation of each batch. Both are pure functions of a hash of (seed,
//! epoch or step, purpose), so a resumed run sees exactly the batches the original would
//! have, and no two seeds share an epoch order.

#[cfg(test)]
use tch::Device;
use tch::Tensor;

use crate::config::{SamplerSettings, Settings};
use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// Padding of the random crop.
const CROP_PADDING: i64 = 4;

pub(super) struct Feed {
    seed: u64,
    augment: bool,
    /// Per-sample weights of the weighted sampler; `None` for a plain shuffle.
    weights: Option<Vec<f64>>,
}

impl Feed {
    pub fn new(settings: &Settings, labels: &[i64], classes: usize) -> Result<Self> {
        let weights = match &settings.data.sampler {
            SamplerSettings::Shuffle => None,
            SamplerSettings::Weighted { class_weights } => {
                let mut counts = vec![0usize; classes];
                for &label in labels {
                    counts[label as usize] += 1;
                }
                let per_class: Vec<f64> = match class_weights {
                    Some(weights) if weights.len() != classes => {
                        return Err(Error::Config {
                            location: "class_weights".into(),
                            message: format!(
                                "has {} weights but the dataset has {classes} classes; give one weight per class",
                                weights.len()
                            ),
                        })
                    }
                    Some(weights) => weights.clone(),
                    // Inverse frequency: every class is drawn equally often.
                    None => counts.iter().map(|&c| if c == 0 { 0.0 } else { 1.0 / c as f64 }).collect(),
                };
                Some(
                    labels
                        .iter()
                        .map(|&label| per_class[label as usize])
                        .collect(),
                )
            }
        };
        Ok(Feed {
            seed: settings.seed,
            augment: settings.data.augment,
            weights,
        })
    }

    /// The sampler's weight of every training sample, when it is the weighted sampler.
    pub fn sample_weights(&self) -> Option<&[f64]> {
        self.weights.as_deref()
    }

    /// The dataset indices epoch `epoch` visits, in order.
    pub fn epoch_order(&self, epoch: usize, samples: usize) -> Vec<i64> {
        match &self.weights {
            None => SplitMix64::keyed(self.seed, epoch as u64, "epoch-order").permutation(samples),
            Some(weights) => {
                let mut cumulative = Vec::with_capacity(weights.len());
                let mut total = 0.0;
                for &weight in weights {
                    total += weight;
                    cumulative.push(total);
                }
                let mut rng = SplitMix64::keyed(self.seed, epoch as u64, "weighted-sampler");
                (0..samples)
                    .map(|_| {
                        let target = rng.next_f64() * total;
                        cumulative
                            .partition_point(|&c| c <= target)
                            .min(samples - 1) as i64
                    })
                    .collect()
            }
        }
    }

    /// Random crop (zero padding 4) and horizontal flip, per sample, for the batch taken at
    /// `global_step`; the batch itself when augmentation is off.
    pub fn augment(&self, images: &Tensor, global_step: u64) -> Result<Tensor> {
        if !self.augment {
            return Ok(images.shallow_clone());
        }
        let size = images.size();
        let (count, height, width) = (size[0], size[2], size[3]);
        let padded =
            images.f_constant_pad_nd([CROP_PADDING, CROP_PADDING, CROP_PADDING, CROP_PADDING])?;
        let mut rng = SplitMix64::keyed(self.seed, global_step, "augment");
        let span = (2 * CROP_PADDING + 1) as u64;
        let mut crops = Vec::with_capacity(count as usize);
        for index in 0..count {
            let (dy, dx) = (rng.below(span) as i64, rng.below(span) as i64);
            let mut crop = padded
                .f_narrow(0, index, 1)?
                .f_narrow(2, dy, height)?
                .f_narrow(3, dx, width)?;
            if rng.below(2) == 1 {
                crop = crop.f_flip([3])?;
            }
            crops.push(crop);
        }
        Ok(Tensor::f_cat(&crops, 0)?)
    }
}

/// Images as a float tensor on the CPU, for tests.
#[cfg(test)]
fn ramp(count: i64, side: i64) -> Tensor {
    Tensor::arange(count * side * side, (tch::Kind::Float, Device::Cpu))
        .view([count, 1, side, side])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn settings(extra: &str) -> Settings {
        Settings::from_toml(
            &format!("data = \"synthetic\"\n{extra}"),
            std::path::Path::new("t.toml"),
        )
        .unwrap()
    }

    #[test]
    fn weighted_draws_follow_the_class_weights() {
        // 1000 draws, classes weighted 1:2:7 by explicit weights on a balanced set.
        let labels: Vec<i64> = (0..1000).map(|i| i % 3).collect();
        let feed = Feed::new(
            &settings("sampler = \"weighted\"\nclass_weights = [1.0, 2.0, 7.0]"),
            &labels,
            3,
        )
        .unwrap();
        let order = feed.epoch_order(1, labels.len());
        assert_eq!(order.len(), 1000);
        let mut counts = [0f64; 3];
        for &index in &order {
            counts[labels[index as usize] as usize] += 1.0;
        }
        for (class, &count) in counts.iter().enumerate() {
            let p: f64 = [0.1, 0.2, 0.7][class];
            let expected = 1000.0 * p;
            let sigma = (1000.0 * p * (1.0 - p)).sqrt();
            assert!(
                (count - expected).abs() < 5.0 * sigma,
                "class {class}: {count} vs {expected}"
            );
        }
        assert_ne!(feed.epoch_order(1, 1000), feed.epoch_order(2, 1000));
        assert_eq!(feed.epoch_order(3, 1000), feed.epoch_order(3, 1000));
    }

    #[test]
    fn inverse_frequency_balances_an_imbalanced_set() {
        let labels: Vec<i64> = (0..1000).map(|i| i64::from(i % 10 != 0)).collect(); // 10 % class 0
        let feed = Feed::new(&settings("sampler = \"weighted\""), &labels, 2).unwrap();
        let zeros = feed
            .epoch_order(1, 1000)
            .iter()
            .filter(|&&i| labels[i as usize] == 0)
            .count();
        assert!((400..600).contains(&zeros), "{zeros}");
    }

    #[test]
    fn a_wrong_number_of_class_weights_is_an_error() {
        let labels = vec![0, 1, 2];
        let err = Feed::new(
            &settings("sampler = \"weighted\"\nclass_weights = [1.0]"),
            &labels,
            3,
        )
        .err()
        .unwrap();
        assert!(err
            .to_string()
            .contains("has 1 weights but the dataset has 3 classes"));
    }

    /// Seeds 0–9, epochs 1–3: thirty orders, all different (with `seed + epoch`, seed 1's
    /// first epoch was seed 0's second). Both samplers.
    #[test]
    fn no_two_seeds_share_an_epoch_order() {
        let labels: Vec<i64> = (0..500).map(|i| i % 5).collect();
        for sampler in ["", "sampler = \"weighted\""] {
            let mut seen: Vec<(u64, usize, Vec<i64>)> = Vec::new();
            for seed in 0..10u64 {
                let feed =
                    Feed::new(&settings(&format!("seed = {seed}\n{sampler}")), &labels, 5).unwrap();
                for epoch in 1..=3 {
                    let order = feed.epoch_order(epoch, labels.len());
                    if let Some((other_seed, other_epoch, _)) =
                        seen.iter().find(|(_, _, o)| *o == order)
                    {
                        panic!(
                            "{sampler:?}: seed {seed} epoch {epoch} repeats seed {other_seed} epoch {other_epoch}"
                        );
                    }
                    seen.push((seed, epoch, order));
                }
            }
            assert_eq!(seen.len(), 30);
        }
    }

    #[test]
    fn augmentation_crops_and_flips_deterministically() {
        let feed = Feed::new(&settings("augment = true"), &[0], 1).unwrap();
        let images = ramp(8, 6);
        let a = feed.augment(&images, 5).unwrap();
        assert_eq!(a.size(), vec![8, 1, 6, 6]);
        assert!(a.equal(&feed.augment(&images, 5).unwrap()));
        assert!(!a.equal(&images), "some sample was moved or flipped");
        let off = Feed::new(&settings("augment = false"), &[0], 1).unwrap();
        assert!(off.augment(&images, 5).unwrap().equal(&images));
    }
}
