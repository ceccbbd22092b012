//! The built-in synthetic image dataset: needs no files, is the same on every machine, and is
//! learnable but not trivial.
//!
//! Each class has a prototype image: a few Gaussian blobs plus an oriented grating, with a
//! colour per channel. A sample is its class prototype shifted by a few pixels, blended with
//! the prototype of another class (weight up to 0.45, so some samples sit near a class
//! boundary), rescaled in contrast and brightness, plus Gaussian pixel noise. A linear model
//! gets part of the way; a CNN that learns shift-invariant features does better.

use crate::config::SyntheticSettings;
use crate::data::{Dataset, ImageSet};
use crate::rng::SplitMix64;

/// The dataset does not depend on the training seed: every run sees the same images.
const DATASET_SEED: u64 = 0x5eed_da7a;
const BLOBS_PER_CLASS: usize = 3;
const MAX_BLEND: f64 = 0.45;

/// Generate the dataset the settings describe.
pub fn generate(settings: &SyntheticSettings) -> Dataset {
    let prototypes = Prototypes::new(settings);
    let train = prototypes.sample_split(settings, settings.train_size, "train");
    let test = prototypes.sample_split(settings, settings.test_size, "test");
    Dataset {
        name: "synthetic".into(),
        train,
        test,
        class_names: (0..settings.classes)
            .map(|c| format!("class {c}"))
            .collect(),
        skipped_files: Vec::new(),
    }
}

/// One `channels × size × size` image per class, values in [0, 1].
struct Prototypes {
    images: Vec<Vec<f32>>,
    channels: usize,
    size: usize,
}

impl Prototypes {
    fn new(settings: &SyntheticSettings) -> Self {
        let size = settings.image_size;
        let s = size as f64;
        let mut rng = SplitMix64::derived(DATASET_SEED, "prototypes");
        let images = (0..settings.classes)
            .map(|_| {
                let blobs: Vec<[f64; 4]> = (0..BLOBS_PER_CLASS)
                    .map(|_| {
                        [
                            rng.uniform(0.2 * s, 0.8 * s),   // centre x
                            rng.uniform(0.2 * s, 0.8 * s),   // centre y
                            rng.uniform(0.06 * s, 0.16 * s), // radius
                            rng.uniform(0.5, 1.0),           // amplitude
                        ]
                    })
                    .collect();
                let angle = rng.uniform(0.0, std::f64::consts::PI);
                let wavelength = rng.uniform(0.2 * s, 0.5 * s);
                let phase = rng.uniform(0.0, std::f64::consts::TAU);
                let colours: Vec<f64> = (0..settings.channels)
                    .map(|_| {
                        if settings.channels == 1 {
                            1.0
                        } else {
                            rng.uniform(0.2, 1.0)
                        }
                    })
                    .collect();
                let (sin, cos) = angle.sin_cos();
                let mut plane = vec![0f64; size * size];
                for (index, value) in plane.iter_mut().enumerate() {
                    let (x, y) = ((index % size) as f64, (index / size) as f64);
                    let blob: f64 = blobs
                        .iter()
                        .map(|&[cx, cy, r, a]| {
                            a * (-((x - cx).powi(2) + (y - cy).powi(2)) / (2.0 * r * r)).exp()
                        })
                        .sum();
                    let along = x * cos + y * sin;
                    let grating =
                        0.5 + 0.5 * (std::f64::consts::TAU * along / wavelength + phase).cos();
                    *value = blob + 0.35 * grating;
                }
                let peak = plane.iter().cloned().fold(f64::MIN_POSITIVE, f64::max);
                colours
                    .iter()
                    .flat_map(|&colour| plane.iter().map(move |&v| (colour * v / peak) as f32))
                    .collect()
            })
            .collect();
        Prototypes {
            images,
            channels: settings.channels,
            size,
        }
    }

    fn sample_split(&self, settings: &SyntheticSettings, count: usize, split: &str) -> ImageSet {
        let classes = self.images.len() as u64;
        let size = self.size;
        let max_shift = (size / 10).max(1) as i64;
        let mut rng = SplitMix64::derived(DATASET_SEED, split);
        let mut images = Vec::with_capacity(count * self.channels * size * size);
        let mut labels = Vec::with_capacity(count);
        for _ in 0..count {
            let label = rng.below(classes);
            let other = (label + 1 + rng.below(classes - 1)) % classes;
            let blend = rng.uniform(0.0, MAX_BLEND) as f32;
            let dx = rng.below(2 * max_shift as u64 + 1) as i64 - max_shift;
            let dy = rng.below(2 * max_shift as u64 + 1) as i64 - max_shift;
            let contrast = rng.uniform(0.7, 1.2) as f32;
            let brightness = rng.uniform(-0.1, 0.1) as f32;
            let (own, mixed) = (&self.images[label as usize], &self.images[other as usize]);
            for channel in 0..self.channels {
                for y in 0..size as i64 {
                    for x in 0..size as i64 {
                        let (sx, sy) = (x - dx, y - dy);
                        let clean =
                            if (0..size as i64).contains(&sx) && (0..size as i64).contains(&sy) {
                                let at = channel * size * size + sy as usize * size + sx as usize;
                                (1.0 - blend) * own[at] + blend * mixed[at]
                            } else {
                                0.0
                            };
                        let noisy =
                            contrast * clean + brightness + settings.noise * rng.normal() as f32;
                        images.push((noisy.clamp(0.0, 1.0) * 255.0).round() as u8);
                    }
                }
            }
            labels.push(label as i64);
        }
        ImageSet {
            images,
            labels,
            ..ImageSet::empty(self.channels, size, size)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(channels: usize) -> SyntheticSettings {
        SyntheticSettings {
            train_size: 300,
            test_size: 100,
            classes: 5,
            channels,
            image_size: 16,
            noise: 0.3,
        }
    }

    #[test]
    fn same_settings_give_identical_bytes() {
        let a = generate(&small(3));
        let b = generate(&small(3));
        assert_eq!(a.train, b.train);
        assert_eq!(a.test, b.test);
    }

    #[test]
    fn train_and_test_differ_and_have_the_stated_shape() {
        let data = generate(&small(1));
        assert_eq!(data.train.len(), 300);
        assert_eq!(data.test.len(), 100);
        assert_eq!(data.train.images.len(), 300 * 16 * 16);
        assert_ne!(data.train.images[..256], data.test.images[..256]);
        assert_eq!(data.class_names.len(), 5);
    }

    #[test]
    fn every_class_occurs_in_roughly_equal_numbers() {
        let data = generate(&small(1));
        let mut counts = [0usize; 5];
        for &label in &data.train.labels {
            counts[label as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (35..=85).contains(&c)), "{counts:?}");
    }

    #[test]
    fn nearest_prototype_beats_chance_but_is_not_perfect() {
        // Classes are learnable (a template matcher does far better than 1/5) but not trivial
        // (blending, shifts and noise defeat it on a good share of samples).
        let settings = small(1);
        let data = generate(&settings);
        let prototypes = Prototypes::new(&settings);
        let correct = data
            .test
            .images
            .chunks_exact(256)
            .zip(&data.test.labels)
            .filter(|(image, &label)| {
                let distance = |p: &Vec<f32>| -> f32 {
                    image
                        .iter()
                        .zip(p)
                        .map(|(&v, &q)| (f32::from(v) / 255.0 - q).powi(2))
                        .sum()
                };
                let best = (0..5)
                    .min_by(|&a, &b| {
                        distance(&prototypes.images[a]).total_cmp(&distance(&prototypes.images[b]))
                    })
                    .unwrap_or(0);
                best as i64 == label
            })
            .count();
        assert!(
            (35..=97).contains(&correct),
            "template matching got {correct}/100"
        );
    }
}
