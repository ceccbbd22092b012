//! Image folders: `train/<class>/…` and `val/<class>/…` holding PNG and JPEG files, as
//! torchvision's `ImageFolder` reads them. Class names are the folder names of `train/`,
//! sorted; files are found in each class folder and its subfolders, sorted by path. Each image
//! is decoded, converted to RGB or grayscale, resized so that its shorter side is
//! `image_size` (bilinear, as torchvision's `Resize(image_size)`) and centre-cropped to
//! `image_size × image_size` (as `CenterCrop`).
//!
//! Every file is decoded once at load, in parallel: a file that cannot be decoded is an error
//! naming it (or is left out and counted, with `skip_bad_files`), before training starts. The
//! decoded images stay in memory when both splits fit `cache_mb`; otherwise only their pixel
//! sums are kept and the trainer decodes each batch from disk, ahead of the step.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::imageops::FilterType;
use image::DynamicImage;
use rayon::prelude::*;

use super::{ChannelSums, Dataset, ImageSet};
use crate::config::ImageFolderSettings;
use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// File name extensions read (in any case).
pub const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// The image files of one split and the shape they are decoded to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileImages {
    pub files: Vec<PathBuf>,
    pub channels: usize,
    pub size: usize,
}

impl FileImages {
    /// Bytes of one decoded image (`channels × size × size`).
    pub fn image_len(&self) -> usize {
        self.channels * self.size * self.size
    }

    /// Decode the images at `indices` into `out` (`indices.len() × image_len()` bytes, CHW),
    /// in parallel.
    pub fn decode_batch(&self, indices: &[i64], out: &mut [u8]) -> Result<()> {
        out.par_chunks_mut(self.image_len())
            .zip(indices.par_iter())
            .try_for_each(|(chunk, &index)| {
                let path = self.files.get(index as usize).ok_or_else(|| {
                    Error::Capability(format!("image index {index} is out of range"))
                })?;
                decode_file(path, self.channels, self.size, chunk)
            })
    }
}

/// Decode the image file at `path` into `out` as `channels × size × size` bytes (CHW):
/// shorter side resized to `size`, then centre-cropped.
pub fn decode_file(path: &Path, channels: usize, size: usize, out: &mut [u8]) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|source| Error::io(path, source))?;
    let image = image::load_from_memory(&bytes).map_err(|e| Error::DataCorrupt {
        path: path.to_path_buf(),
        reason: format!("cannot be decoded as an image ({e})"),
    })?;
    let image = match channels {
        1 => DynamicImage::ImageLuma8(image.into_luma8()),
        _ => DynamicImage::ImageRgb8(image.into_rgb8()),
    };
    let (width, height) = (image.width() as usize, image.height() as usize);
    if width == 0 || height == 0 {
        return Err(Error::DataCorrupt {
            path: path.to_path_buf(),
            reason: "is an empty image".into(),
        });
    }
    // torchvision's Resize(size): the shorter side becomes `size`, the longer one
    // `int(size · long / short)`.
    let (new_width, new_height) = if width <= height {
        (size, size * height / width)
    } else {
        (size * width / height, size)
    };
    let resized = if (new_width, new_height) == (width, height) {
        image
    } else {
        image.resize_exact(new_width as u32, new_height as u32, FilterType::Triangle)
    };
    // torchvision's CenterCrop: offsets `round((side − size) / 2)`, halves to even.
    let offset = |side: usize| ((side - size) as f64 / 2.0).round_ties_even() as u32;
    let cropped = resized.crop_imm(
        offset(new_width),
        offset(new_height),
        size as u32,
        size as u32,
    );
    let interleaved = cropped.as_bytes();
    let plane = size * size;
    for (pixel, values) in interleaved.chunks_exact(channels).enumerate() {
        for (channel, &value) in values.iter().enumerate() {
            out[channel * plane + pixel] = value;
        }
    }
    Ok(())
}

/// List, check and decode the image folder the settings describe.
pub fn load(settings: &ImageFolderSettings) -> Result<Dataset> {
    let root = &settings.dir;
    let train_dir = root.join("train");
    if !train_dir.is_dir() {
        return Err(Error::DataMissing {
            path: train_dir,
            what: "image folder's train/ directory".into(),
            hint: "`data_dir` must hold train/<class>/*.png|jpg (and val/<class>/…, or set \
                   image_folder.val_fraction)"
                .into(),
        });
    }
    let class_names = class_folders(&train_dir)?;
    let (train_files, train_labels) = list_split(&train_dir, &class_names)?;
    let val_dir = root.join("val");
    let (train_files, train_labels, val_files, val_labels) =
        match (val_dir.is_dir(), settings.val_fraction) {
            (true, Some(_)) => {
                return Err(Error::Config {
                    location: "image_folder.val_fraction".into(),
                    message: format!(
                        "is set but {} exists: validate on val/ (remove val_fraction) or hold out \
                         part of train/ (remove val/)",
                        val_dir.display()
                    ),
                })
            }
            (true, None) => {
                for name in class_folders(&val_dir)? {
                    if !class_names.contains(&name) {
                        return Err(Error::DataCorrupt {
                            path: val_dir.join(&name),
                            reason:
                                "is a class that train/ does not have; every val/ class folder \
                                     must also be in train/"
                                    .into(),
                        });
                    }
                }
                let (files, labels) = list_split(&val_dir, &class_names)?;
                (train_files, train_labels, files, labels)
            }
            (false, Some(fraction)) => {
                hold_out(train_files, train_labels, fraction, settings.split_seed)
            }
            (false, None) => {
                return Err(Error::DataMissing {
                    path: val_dir,
                    what: "image folder's val/ directory".into(),
                    hint: "add val/<class>/ folders, or set image_folder.val_fraction to hold out \
                           part of train/"
                        .into(),
                })
            }
        };
    if val_files.is_empty() {
        return Err(Error::DataCorrupt {
            path: root.clone(),
            reason: "has no validation images; add files to val/<class>/ or raise \
                     image_folder.val_fraction"
                .into(),
        });
    }
    let float_bytes =
        (train_files.len() + val_files.len()) * settings.channels * settings.image_size.pow(2) * 4;
    let cache = float_bytes <= settings.cache_mb.saturating_mul(1 << 20);
    let mut skipped = Vec::new();
    let train = decode_split(settings, train_files, train_labels, cache, &mut skipped)?;
    let test = decode_split(settings, val_files, val_labels, cache, &mut skipped)?;
    if train.is_empty() || test.is_empty() {
        return Err(Error::DataCorrupt {
            path: root.clone(),
            reason: "has no decodable images left in one of its splits".into(),
        });
    }
    Ok(Dataset {
        name: format!(
            "image folder {} ({})",
            root.display(),
            if cache {
                "decoded in memory"
            } else {
                "streamed from disk"
            }
        ),
        train,
        test,
        class_names,
        skipped_files: skipped,
    })
}

/// The sorted names of the folders in `dir`.
fn class_folders(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|source| Error::io(dir, source))? {
        let entry = entry.map_err(|source| Error::io(dir, source))?;
        if entry.path().is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    if names.is_empty() {
        return Err(Error::DataCorrupt {
            path: dir.to_path_buf(),
            reason: "holds no class folders; put each class's images in a folder named after it"
                .into(),
        });
    }
    Ok(names)
}

/// The image files of each class folder of `dir` (those that exist), with their labels.
fn list_split(dir: &Path, class_names: &[String]) -> Result<(Vec<PathBuf>, Vec<i64>)> {
    let (mut files, mut labels) = (Vec::new(), Vec::new());
    for (label, name) in class_names.iter().enumerate() {
        let class_dir = dir.join(name);
        if !class_dir.is_dir() {
            continue;
        }
        let before = files.len();
        walk(&class_dir, &mut files)?;
        if files.len() == before && dir.ends_with("train") {
            return Err(Error::DataCorrupt {
                path: class_dir,
                reason: format!(
                    "holds no image files (.{}); every class needs training images",
                    EXTENSIONS.join(", .")
                ),
            });
        }
        labels.resize(files.len(), label as i64);
    }
    Ok((files, labels))
}

/// Image files under `dir`, recursively, in sorted order.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| Error::io(dir, source))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .map_err(|source| Error::io(dir, source))?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Hold out `fraction` of each class (rounded, at least one image left for training), chosen
/// by a permutation seeded with `seed` and the class; both parts keep the listing's order.
fn hold_out(
    files: Vec<PathBuf>,
    labels: Vec<i64>,
    fraction: f64,
    seed: u64,
) -> (Vec<PathBuf>, Vec<i64>, Vec<PathBuf>, Vec<i64>) {
    let mut held = vec![false; files.len()];
    let classes = labels.iter().copied().max().map_or(0, |m| m + 1);
    for class in 0..classes {
        let members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        let count = ((members.len() as f64 * fraction).round() as usize)
            .min(members.len().saturating_sub(1));
        let order = SplitMix64::keyed(seed, class as u64, "val-split").permutation(members.len());
        for &position in &order[..count] {
            held[members[position as usize]] = true;
        }
    }
    let (mut train_files, mut train_labels, mut val_files, mut val_labels) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((file, label), held) in files.into_iter().zip(labels).zip(held) {
        if held {
            val_files.push(file);
            val_labels.push(label);
        } else {
            train_files.push(file);
            train_labels.push(label);
        }
    }
    (train_files, train_labels, val_files, val_labels)
}

/// Decode every file of a split once: kept in memory when `cache`, else reduced to pixel sums
/// and decoded again when batches need them. Files that fail are an error, or left out and
/// appended to `skipped` with `skip_bad_files`.
fn decode_split(
    settings: &ImageFolderSettings,
    files: Vec<PathBuf>,
    labels: Vec<i64>,
    cache: bool,
    skipped: &mut Vec<String>,
) -> Result<ImageSet> {
    let (channels, size) = (settings.channels, settings.image_size);
    let length = channels * size * size;
    let mut pixels = if cache {
        vec![0u8; files.len() * length]
    } else {
        Vec::new()
    };
    let outcomes: Vec<std::result::Result<ChannelSums, Error>> = if cache {
        pixels
            .par_chunks_mut(length)
            .zip(files.par_iter())
            .map(|(out, path)| {
                decode_file(path, channels, size, out)?;
                let mut sums = ChannelSums::new(channels);
                sums.add_image(out);
                Ok(sums)
            })
            .collect()
    } else {
        files
            .par_iter()
            .map_init(
                || vec![0u8; length],
                |out, path| {
                    decode_file(path, channels, size, out)?;
                    let mut sums = ChannelSums::new(channels);
                    sums.add_image(out);
                    Ok(sums)
                },
            )
            .collect()
    };
    let failures: Vec<(usize, &Error)> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(index, outcome)| outcome.as_ref().err().map(|e| (index, e)))
        .collect();
    if let Some(&(index, first)) = failures.first() {
        if !settings.skip_bad_files {
            let reason = match first {
                Error::DataCorrupt { reason, .. } => reason.clone(),
                Error::Io { source, .. } => format!("cannot be read ({source})"),
                other => other.to_string(),
            };
            let others = match failures.len() - 1 {
                0 => String::new(),
                n => format!(" ({n} more files fail too)"),
            };
            return Err(Error::DataCorrupt {
                path: files[index].clone(),
                reason: format!(
                    "{reason}{others}; fix or remove it, or set image_folder.skip_bad_files = true \
                     to train without such files"
                ),
            });
        }
    }
    if failures.is_empty() {
        let total = outcomes
            .iter()
            .flatten()
            .fold(ChannelSums::new(channels), |total, sums| total.merge(sums));
        let mut set = ImageSet {
            images: pixels,
            labels,
            sums: Some(total),
            ..ImageSet::empty(channels, size, size)
        };
        if !cache {
            set.files = Some(Arc::new(FileImages {
                files,
                channels,
                size,
            }));
        }
        return Ok(set);
    }
    let mut total = ChannelSums::new(channels);
    let (mut kept_files, mut kept_labels, mut kept_pixels) = (Vec::new(), Vec::new(), Vec::new());
    for (index, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(sums) => {
                total = total.merge(&sums);
                kept_files.push(files[index].clone());
                kept_labels.push(labels[index]);
                if cache {
                    kept_pixels.extend_from_slice(&pixels[index * length..(index + 1) * length]);
                }
            }
            Err(_) => skipped.push(files[index].display().to_string()),
        }
    }
    let mut set = ImageSet {
        images: kept_pixels,
        labels: kept_labels,
        sums: Some(total),
        ..ImageSet::empty(channels, size, size)
    };
    if !cache {
        set.files = Some(Arc::new(FileImages {
            files: kept_files,
            channels,
            size,
        }));
    }
    Ok(set)
}
