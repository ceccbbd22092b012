//! The dataset keys of a config file (`data`, `data_dir`, `synthetic_fallback`, `[synthetic]`,
//! `[image_folder]`, `[tensors]`) as written, and their validation into a [`DataSource`].

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::checks::{at_least_one, in_range, only_with, Invalid};
use super::{
    DataKind, DataSource, ImageFolderSettings, SyntheticSettings, TensorFileSettings,
    DEFAULT_FASHION_MNIST_DIR,
};
use crate::error::{Error, Result};

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawSynthetic {
    train_size: usize,
    test_size: usize,
    classes: usize,
    channels: usize,
    image_size: usize,
    noise: f32,
}

impl Default for RawSynthetic {
    fn default() -> Self {
        RawSynthetic {
            train_size: 6000,
            test_size: 1000,
            classes: 10,
            channels: 1,
            image_size: 28,
            noise: 0.35,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawImageFolder {
    image_size: usize,
    channels: usize,
    val_fraction: Option<f64>,
    split_seed: u64,
    skip_bad_files: bool,
    cache_mb: usize,
    prefetch_batches: usize,
}

impl Default for RawImageFolder {
    fn default() -> Self {
        RawImageFolder {
            image_size: 32,
            channels: 3,
            val_fraction: None,
            split_seed: 0,
            skip_bad_files: false,
            cache_mb: 4096,
            prefetch_batches: 4,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTensors {
    train: PathBuf,
    val: PathBuf,
    class_names: Option<Vec<String>>,
}

/// The dataset keys of a config, taken out of it for validation.
pub(super) struct RawData {
    pub data: DataKind,
    pub data_dir: Option<PathBuf>,
    pub synthetic_fallback: bool,
    pub synthetic: Option<RawSynthetic>,
    pub image_folder: Option<RawImageFolder>,
    pub tensors: Option<RawTensors>,
}

impl RawData {
    pub fn validate(self, path: &Path, invalid: Invalid<'_>) -> Result<DataSource> {
        let synthetic = only_with(
            invalid,
            "synthetic",
            self.synthetic,
            self.data == DataKind::Synthetic || self.synthetic_fallback,
            "with data = \"synthetic\" or synthetic_fallback = true",
        )?;
        let image_folder = only_with(
            invalid,
            "image_folder",
            self.image_folder,
            self.data == DataKind::ImageFolder,
            "with data = \"image-folder\"",
        )?;
        let tensors = only_with(
            invalid,
            "tensors",
            self.tensors,
            self.data == DataKind::Tensors,
            "with data = \"tensors\"",
        )?;
        let source = match self.data {
            DataKind::Tensors => {
                only_with(
                    invalid,
                    "data_dir",
                    self.data_dir.as_ref(),
                    false,
                    "with a dataset in a directory; data = \"tensors\" names its files in [tensors]",
                )?;
                only_with(
                    invalid,
                    "synthetic_fallback",
                    self.synthetic_fallback.then_some(()),
                    false,
                    "with a built-in dataset",
                )?;
                let raw = tensors.ok_or_else(|| Error::Config {
                    location: path.display().to_string(),
                    message: "data = \"tensors\" needs a [tensors] table: `train = \"train.safetensors\"` \
                              and `val = \"val.safetensors\"`, each holding `inputs` and `labels`"
                        .into(),
                })?;
                if let Some(names) = &raw.class_names {
                    if names.is_empty() {
                        return Err(invalid(
                            "tensors.class_names",
                            "is empty; list one name per class, or leave it out".into(),
                        ));
                    }
                }
                DataSource::Tensors(TensorFileSettings {
                    train: raw.train,
                    val: raw.val,
                    class_names: raw.class_names,
                })
            }
            DataKind::ImageFolder => {
                only_with(
                    invalid,
                    "synthetic_fallback",
                    self.synthetic_fallback.then_some(()),
                    false,
                    "with a built-in dataset",
                )?;
                let Some(dir) = self.data_dir else {
                    return Err(Error::Config {
                        location: path.display().to_string(),
                        message:
                            "`data_dir` is required for data = \"image-folder\": the directory \
                                  holding train/<class>/ (and val/<class>/)"
                                .into(),
                    });
                };
                let raw = image_folder.unwrap_or_default();
                at_least_one(invalid, "image_folder.image_size", raw.image_size)?;
                if raw.image_size > 4096 {
                    return Err(invalid(
                        "image_folder.image_size",
                        format!("is {}; at most 4096", raw.image_size),
                    ));
                }
                if !matches!(raw.channels, 1 | 3) {
                    return Err(invalid(
                        "image_folder.channels",
                        format!("is {}; use 3 (RGB) or 1 (grayscale)", raw.channels),
                    ));
                }
                if let Some(fraction) = raw.val_fraction {
                    in_range(
                        invalid,
                        "image_folder.val_fraction",
                        fraction,
                        0.0..=1.0,
                        true,
                    )?;
                    if fraction >= 1.0 {
                        return Err(invalid(
                            "image_folder.val_fraction",
                            format!("is {fraction}; it must leave training images (below 1)"),
                        ));
                    }
                }
                at_least_one(
                    invalid,
                    "image_folder.prefetch_batches",
                    raw.prefetch_batches,
                )?;
                DataSource::ImageFolder(ImageFolderSettings {
                    dir,
                    image_size: raw.image_size,
                    channels: raw.channels,
                    val_fraction: raw.val_fraction,
                    split_seed: raw.split_seed,
                    skip_bad_files: raw.skip_bad_files,
                    cache_mb: raw.cache_mb,
                    prefetch_batches: raw.prefetch_batches,
                })
            }
            DataKind::Synthetic => {
                only_with(
                    invalid,
                    "data_dir",
                    self.data_dir.as_ref(),
                    false,
                    "with a dataset read from files",
                )?;
                DataSource::Synthetic(validate_synthetic(invalid, synthetic.unwrap_or_default())?)
            }
            kind => {
                let dir = match (self.data_dir, kind) {
                    (Some(dir), _) => dir,
                    (None, DataKind::FashionMnist) => PathBuf::from(DEFAULT_FASHION_MNIST_DIR),
                    (None, _) => {
                        return Err(Error::Config {
                            location: path.display().to_string(),
                            message: format!(
                                "`data_dir` is required for data = \"{}\": the directory holding the dataset's files",
                                kind.name()
                            ),
                        })
                    }
                };
                let fallback = if self.synthetic_fallback {
                    let mut raw = synthetic.unwrap_or_default();
                    if kind == DataKind::Cifar10 {
                        // Shaped like CIFAR-10 unless the config says otherwise.
                        raw.channels = if raw.channels == 1 { 3 } else { raw.channels };
                        raw.image_size = if raw.image_size == 28 {
                            32
                        } else {
                            raw.image_size
                        };
                    }
                    Some(validate_synthetic(invalid, raw)?)
                } else {
                    None
                };
                match kind {
                    DataKind::Cifar10 => DataSource::Cifar10 { dir, fallback },
                    _ => DataSource::Idx {
                        kind,
                        dir,
                        fallback,
                    },
                }
            }
        };
        Ok(source)
    }
}

fn validate_synthetic(invalid: Invalid<'_>, raw: RawSynthetic) -> Result<SyntheticSettings> {
    at_least_one(invalid, "synthetic.train_size", raw.train_size)?;
    at_least_one(invalid, "synthetic.test_size", raw.test_size)?;
    if !(2..=1000).contains(&raw.classes) {
        return Err(invalid(
            "synthetic.classes",
            format!("must be between 2 and 1000 (got {})", raw.classes),
        ));
    }
    if !matches!(raw.channels, 1 | 3) {
        return Err(invalid(
            "synthetic.channels",
            format!("must be 1 or 3 (got {})", raw.channels),
        ));
    }
    if !(8..=256).contains(&raw.image_size) {
        return Err(invalid(
            "synthetic.image_size",
            format!("must be between 8 and 256 (got {})", raw.image_size),
        ));
    }
    in_range(
        invalid,
        "synthetic.noise",
        f64::from(raw.noise),
        0.0..=2.0,
        false,
    )?;
    Ok(SyntheticSettings {
        train_size: raw.train_size,
        test_size: raw.test_size,
        classes: raw.classes,
        channels: raw.channels,
        image_size: raw.image_size,
        noise: raw.noise,
    })
}
