//! Datasets as plain bytes: readers for IDX files (MNIST, Fashion-MNIST), CIFAR-10's binary
//! batches, image folders (decoded once, or streamed from their files), safetensors tensor
//! files, and the built-in synthetic dataset.
//!
//! Nothing here knows about libtorch or the training loop; the trainer turns an [`ImageSet`]
//! into tensors once, at start-up (or, for a streamed image folder, batch by batch).

pub mod cifar;
pub mod idx;
pub mod image_folder;
pub mod synthetic;
pub mod tensor_file;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use image_folder::FileImages;

use crate::config::{DataKind, DataSource, SyntheticSettings};
use crate::error::{Error, Result};

/// Fashion-MNIST's ten classes, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// A split of labelled images: `len()` images of `channels × height × width` bytes, row-major.
///
/// The bytes are in `images`, or, for an image folder too large to keep in memory, decoded
/// from `files` when a batch needs them (`images` is then empty and `sums` holds the pixel
/// sums a decoding pass gathered).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    pub images: Vec<u8>,
    pub labels: Vec<i64>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Where the images are decoded from when they are not in `images`.
    pub files: Option<Arc<FileImages>>,
    /// Per-channel pixel sums, when known without `images`.
    pub sums: Option<ChannelSums>,
    /// Already normalised float inputs (tensor files with float `inputs`), used as they are:
    /// `images` is then empty.
    pub floats: Option<Vec<f32>>,
}

/// Per-channel sums of pixel values (0–255) and of their squares, over `pixels` pixels a
/// channel: exact integers, so that the statistics do not depend on the order of summing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChannelSums {
    pub sums: Vec<u64>,
    pub squares: Vec<u64>,
    pub pixels: u64,
}

impl ChannelSums {
    pub fn new(channels: usize) -> Self {
        ChannelSums {
            sums: vec![0; channels],
            squares: vec![0; channels],
            pixels: 0,
        }
    }

    /// Add one `channels × plane` image.
    pub fn add_image(&mut self, image: &[u8]) {
        let channels = self.sums.len().max(1);
        let plane = image.len() / channels;
        for (channel, pixels) in image.chunks_exact(plane.max(1)).enumerate() {
            let (mut sum, mut square) = (0u64, 0u64);
            for &pixel in pixels {
                sum += u64::from(pixel);
                square += u64::from(pixel) * u64::from(pixel);
            }
            self.sums[channel] += sum;
            self.squares[channel] += square;
        }
        self.pixels += plane as u64;
    }

    pub fn merge(mut self, other: &ChannelSums) -> Self {
        for (a, b) in self.sums.iter_mut().zip(&other.sums) {
            *a += b;
        }
        for (a, b) in self.squares.iter_mut().zip(&other.squares) {
            *a += b;
        }
        self.pixels += other.pixels;
        self
    }

    /// Mean and standard deviation per channel, pixels scaled to [0, 1].
    pub fn stats(&self) -> (Vec<f32>, Vec<f32>) {
        let count = self.pixels.max(1) as f64;
        let mean: Vec<f64> = self
            .sums
            .iter()
            .map(|&s| s as f64 / 255.0 / count)
            .collect();
        let std = self
            .squares
            .iter()
            .zip(&mean)
            .map(|(&sq, &m)| ((sq as f64 / 65025.0 / count - m * m).max(1e-12).sqrt()) as f32)
            .collect();
        (mean.iter().map(|&m| m as f32).collect(), std)
    }
}

impl ImageSet {
    /// A split with no images yet, of images of the given shape.
    pub fn empty(channels: usize, height: usize, width: usize) -> Self {
        ImageSet {
            images: Vec::new(),
            labels: Vec::new(),
            channels,
            height,
            width,
            files: None,
            sums: None,
            floats: None,
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Whether the split holds images monitors can show: pixels (not float features) of 1
    /// or 3 channels.
    pub fn is_images(&self) -> bool {
        self.floats.is_none() && matches!(self.channels, 1 | 3) && self.height > 1
    }

    /// Bytes per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Per-channel mean and standard deviation of the pixels, scaled to [0, 1].
    pub fn channel_stats(&self) -> (Vec<f32>, Vec<f32>) {
        if let Some(sums) = &self.sums {
            return sums.stats();
        }
        let mut sums = ChannelSums::new(self.channels);
        for image in self.images.chunks_exact(self.image_len().max(1)) {
            sums.add_image(image);
        }
        sums.stats()
    }
}

/// A dataset ready to train on: both splits and the class names.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Human-readable name, e.g. "Fashion-MNIST".
    pub name: String,
    pub train: ImageSet,
    pub test: ImageSet,
    pub class_names: Vec<String>,
    /// Files left out because they could not be decoded (`skip_bad_files = true`).
    pub skipped_files: Vec<String>,
}

impl Dataset {
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }
}

/// Load the dataset the settings describe. With a synthetic fallback configured, a missing
/// data directory gives the synthetic dataset instead (with a warning on stderr).
pub fn load(source: &DataSource) -> Result<Dataset> {
    let (loaded, dir, fallback) = match source {
        DataSource::Synthetic(synthetic) => return Ok(synthetic::generate(synthetic)),
        DataSource::ImageFolder(folder) => return image_folder::load(folder),
        DataSource::Tensors(files) => return tensor_file::load(files),
        DataSource::Idx {
            kind,
            dir,
            fallback,
        } => (load_idx_dataset(*kind, dir), dir, fallback),
        DataSource::Cifar10 { dir, fallback } => (cifar::load(dir), dir, fallback),
    };
    match (loaded, fallback) {
        (Err(Error::DataMissing { .. }), Some(synthetic)) if !dir.exists() => {
            Ok(fallback_dataset(dir, synthetic))
        }
        (result, _) => result,
    }
}

fn fallback_dataset(dir: &Path, synthetic: &SyntheticSettings) -> Dataset {
    tracing::warn!(
        "{} not found; synthetic_fallback = true, so training on synthetic {}×{}×{} images instead",
        dir.display(),
        synthetic.channels,
        synthetic.image_size,
        synthetic.image_size
    );
    let mut dataset = synthetic::generate(synthetic);
    dataset.name = format!("synthetic (fallback for missing {})", dir.display());
    dataset
}

/// Load an MNIST-layout dataset (train/t10k images and labels) from `dir`.
pub fn load_idx_dataset(kind: DataKind, dir: &Path) -> Result<Dataset> {
    let (name, class_names): (&str, Vec<String>) = match kind {
        DataKind::Mnist => ("MNIST", (0..10).map(|digit| digit.to_string()).collect()),
        _ => (
            "Fashion-MNIST",
            FASHION_MNIST_CLASSES
                .iter()
                .map(|&c| c.to_string())
                .collect(),
        ),
    };
    if !dir.is_dir() {
        return Err(Error::DataMissing {
            path: dir.to_path_buf(),
            what: format!("{name} data directory"),
            hint: missing_data_hint(kind),
        });
    }
    let split = |prefix: &str| -> Result<ImageSet> {
        let images_path = find_idx_file(dir, &format!("{prefix}-images-idx3-ubyte"), kind)?;
        let labels_path = find_idx_file(dir, &format!("{prefix}-labels-idx1-ubyte"), kind)?;
        let images = idx::read_idx(&images_path, 3)?;
        let labels = idx::read_idx(&labels_path, 1)?;
        let (count, height, width) = (images.dims[0], images.dims[1], images.dims[2]);
        if labels.dims[0] != count {
            return Err(Error::DataCorrupt {
                path: labels_path,
                reason: format!(
                    "holds {} labels but {} holds {count} images",
                    labels.dims[0],
                    images_path.display()
                ),
            });
        }
        if count == 0 {
            return Err(Error::DataCorrupt {
                path: images_path,
                reason: "holds zero images".into(),
            });
        }
        let classes = class_names.len();
        if let Some((index, &label)) = labels
            .data
            .iter()
            .enumerate()
            .find(|(_, &label)| usize::from(label) >= classes)
        {
            return Err(Error::DataCorrupt {
                path: labels_path,
                reason: format!(
                    "label {label} at index {index} is out of range: {name} has {classes} classes (0-{})",
                    classes - 1
                ),
            });
        }
        Ok(ImageSet {
            images: images.data,
            labels: labels.data.iter().map(|&label| i64::from(label)).collect(),
            ..ImageSet::empty(1, height, width)
        })
    };
    let train = split("train")?;
    let test = split("t10k")?;
    if (train.height, train.width) != (test.height, test.width) {
        return Err(Error::DataCorrupt {
            path: dir.to_path_buf(),
            reason: format!(
                "train images are {}×{} but test images are {}×{}",
                train.height, train.width, test.height, test.width
            ),
        });
    }
    Ok(Dataset {
        name: name.into(),
        train,
        test,
        class_names,
        skipped_files: Vec::new(),
    })
}

/// `stem.gz` if present, else `stem`.
fn find_idx_file(dir: &Path, stem: &str, kind: DataKind) -> Result<PathBuf> {
    let compressed = dir.join(format!("{stem}.gz"));
    if compressed.is_file() {
        return Ok(compressed);
    }
    let plain = dir.join(stem);
    if plain.is_file() {
        return Ok(plain);
    }
    Err(Error::DataMissing {
        path: compressed,
        what: format!("IDX file (nor {stem} uncompressed)"),
        hint: missing_data_hint(kind),
    })
}

fn missing_data_hint(kind: DataKind) -> String {
    match kind {
        DataKind::FashionMnist => "install it with `apt-get install dataset-fashion-mnist` \
            (scripts/bootstrap.sh does), point `data_dir` at the directory holding the IDX files, \
            or set data = \"synthetic\""
            .into(),
        _ => "point `data_dir` at the directory holding the IDX files, or set data = \"synthetic\""
            .into(),
    }
}
