//! Tensor files: one safetensors file per split holding `inputs` (N × …, uint8 or float) and
//! `labels` (N, int64), for data that are not image files (audio features, tabular rows).
//!
//! Inputs of shape N × F are taken as 1 × 1 × F, N × H × W as 1 × H × W, N × C × H × W as
//! they are. uint8 inputs are scaled to [0, 1] and normalised per channel like images; float
//! inputs are used as they are (normalise them as you want them). Only uint8 inputs of shape
//! N × C × H × W with 1 or 3 channels count as images for the monitors that show images.

use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::{Dataset, ImageSet};
use crate::config::TensorFileSettings;
use crate::error::{Error, Result};

/// Load both splits and check that they agree with each other.
pub fn load(settings: &TensorFileSettings) -> Result<Dataset> {
    let train = read_split(&settings.train)?;
    let test = read_split(&settings.val)?;
    let shape = |set: &ImageSet| (set.channels, set.height, set.width);
    if shape(&train) != shape(&test) || train.floats.is_some() != test.floats.is_some() {
        return Err(Error::DataCorrupt {
            path: settings.val.clone(),
            reason: format!(
                "holds inputs of shape {:?} ({}) but {} holds {:?} ({}); both splits need the same \
                 shape and type",
                shape(&test),
                kind_name(&test),
                settings.train.display(),
                shape(&train),
                kind_name(&train)
            ),
        });
    }
    let largest = train
        .labels
        .iter()
        .chain(&test.labels)
        .copied()
        .max()
        .unwrap_or(0);
    let class_names = match &settings.class_names {
        Some(names) => {
            if largest as usize >= names.len() {
                return Err(Error::DataCorrupt {
                    path: settings.train.clone(),
                    reason: format!(
                        "has label {largest} but tensors.class_names lists {} classes (labels 0–{})",
                        names.len(),
                        names.len() - 1
                    ),
                });
            }
            names.clone()
        }
        None => (0..=largest).map(|c| format!("class {c}")).collect(),
    };
    Ok(Dataset {
        name: format!("tensor files {}", settings.train.display()),
        train,
        test,
        class_names,
        skipped_files: Vec::new(),
    })
}

fn kind_name(set: &ImageSet) -> &'static str {
    if set.floats.is_some() {
        "float"
    } else {
        "uint8"
    }
}

fn read_split(path: &Path) -> Result<ImageSet> {
    let bytes = std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => Error::DataMissing {
            path: path.to_path_buf(),
            what: "tensor file".into(),
            hint: "set tensors.train and tensors.val to safetensors files holding `inputs` and \
                   `labels`"
                .into(),
        },
        _ => Error::io(path, source),
    })?;
    let corrupt = |reason: String| Error::DataCorrupt {
        path: path.to_path_buf(),
        reason,
    };
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| corrupt(format!("is not a safetensors file ({e})")))?;
    let tensor = |name: &str| {
        file.tensor(name).map_err(|_| {
            corrupt(format!(
                "has no tensor `{name}` (it holds {:?}); a split needs `inputs` and `labels`",
                file.names()
            ))
        })
    };
    let inputs = tensor("inputs")?;
    let labels = tensor("labels")?;
    let shape = inputs.shape();
    let count = shape.first().copied().unwrap_or(0);
    if count == 0 {
        return Err(corrupt("holds no samples (`inputs` is empty)".into()));
    }
    let (channels, height, width) = match shape[1..] {
        [features] => (1, 1, features),
        [height, width] => (1, height, width),
        [channels, height, width] => (channels, height, width),
        _ => {
            return Err(corrupt(format!(
                "`inputs` has shape {shape:?}; use N × features, N × H × W or N × C × H × W"
            )))
        }
    };
    if labels.shape() != [count] {
        return Err(corrupt(format!(
            "`labels` has shape {:?} but `inputs` holds {count} samples; labels must be a vector of {count}",
            labels.shape()
        )));
    }
    if labels.dtype() != Dtype::I64 {
        return Err(corrupt(format!(
            "`labels` is {:?}; labels must be int64",
            labels.dtype()
        )));
    }
    let labels: Vec<i64> = labels
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap_or_default()))
        .collect();
    if let Some((index, label)) = labels.iter().enumerate().find(|(_, &l)| l < 0) {
        return Err(corrupt(format!(
            "label {label} at index {index} is negative; labels are class indices 0, 1, …"
        )));
    }
    let mut set = ImageSet {
        labels,
        ..ImageSet::empty(channels, height, width)
    };
    let data = inputs.data();
    match inputs.dtype() {
        Dtype::U8 => set.images = data.to_vec(),
        Dtype::F32 => {
            set.floats = Some(
                data.chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap_or_default()))
                    .collect(),
            )
        }
        Dtype::F64 => {
            set.floats = Some(
                data.chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap_or_default()) as f32)
                    .collect(),
            )
        }
        other => {
            return Err(corrupt(format!(
                "`inputs` is {other:?}; use uint8, float32 or float64"
            )))
        }
    }
    if let Some(floats) = &set.floats {
        if let Some(index) = floats.iter().position(|x| !x.is_finite()) {
            return Err(corrupt(format!(
                "`inputs` holds a non-finite value at flat index {index}"
            )));
        }
    }
    Ok(set)
}
