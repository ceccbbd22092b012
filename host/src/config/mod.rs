//! Experiment configuration: a TOML file, plus `--set key=value` overrides, parsed into plain
//! raw structs, then validated once into the [`Settings`] the trainer uses.
//!
//! Every error names where the bad value came from (`file:line:column`, or the `--set`
//! override), the key, and what would be valid. Relative paths in a config are taken relative
//! to the directory `vigil` runs in.
//!
//! ```toml
//! seed = 0
//! epochs = 1
//! batch_size = 64
//! data = "fashion-mnist"          # or "mnist", "cifar10", "synthetic", "image-folder", "tensors"
//!
//! [model]
//! kind = "cnn"                    # or "mlp", "resnet18", "torchscript" (with path = "net.pt")
//!
//! [optim]
//! lr = 0.05
//! ```

mod checks;
mod data_source;
mod effective;
mod kinds;
mod raw;
mod watch;

pub use effective::RESUMABLE_KEYS;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub use kinds::{
    AnomalyPolicy, DataKind, DeviceChoice, ModelKind, Norm, OnError, OptimKind, SamplerKind,
    ScheduleKind,
};
pub use watch::{
    EarlyStoppingSettings, MlflowSettings, NotifyEvent, NotifyFormat, NotifySettings, NotifyTarget,
    StopMode,
};

/// Where Debian's `dataset-fashion-mnist` package puts the files.
pub const DEFAULT_FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Validated settings for one training run.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// A short name for the run; the default run directory is derived from it.
    pub name: String,
    pub seed: u64,
    pub epochs: usize,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    /// libtorch intra-op threads; `None` keeps libtorch's default (one per core).
    pub threads: Option<usize>,
    /// Where the run writes its outputs; `None` means `runs/<name>-<timestamp>`.
    pub run_dir: Option<PathBuf>,
    pub device: DeviceChoice,
    /// Validate every this fraction of an epoch (1.0: once per epoch).
    pub val_check_interval: f64,
    /// Validation also logs `val_acc_top{k}` (is the label among the k largest logits) when
    /// the data have more than k classes.
    pub top_k: usize,
    pub anomaly_policy: AnomalyPolicy,
    pub data: DataSettings,
    pub model: ModelSettings,
    pub optim: OptimSettings,
    pub schedule: ScheduleSettings,
    pub checkpoint: CheckpointSettings,
    /// How the run's `vigil.log` is rotated.
    pub log: LogSettings,
    /// `[early_stopping]`, when the config has it.
    pub early_stopping: Option<EarlyStoppingSettings>,
    /// Seconds between system-metric records (memory, CPU, disk); 0 for none.
    pub system_metrics_every_s: f64,
    /// `[mlflow]`: the tracking server the run is sent to.
    pub mlflow: Option<MlflowSettings>,
    /// `[[notify]]`: webhooks told when the run fails, finishes, …
    pub notify: Vec<NotifySettings>,
    /// Directories searched for plugin libraries, in order, made absolute against the config
    /// file's directory; `None` when the config names none (the defaults of the vigil that
    /// runs it, which the plugin host resolves).
    pub plugin_dirs: Option<Vec<PathBuf>>,
    /// Load plugin files even when others could write to them or their directory.
    pub allow_insecure_plugins: bool,
    /// The `[[monitors]]` entries, in config order.
    pub monitors: Vec<MonitorSettings>,
}

/// The dataset and how training visits it.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSettings {
    pub source: DataSource,
    /// Random crop (padding 4) and horizontal flip on the training split.
    pub augment: bool,
    pub sampler: SamplerSettings,
}

/// Which dataset to train on and where it lives.
#[derive(Debug, Clone, PartialEq)]
pub enum DataSource {
    /// IDX files (`train-images-idx3-ubyte[.gz]` and friends) in `dir`.
    Idx {
        kind: DataKind,
        dir: PathBuf,
        /// Use this synthetic dataset when `dir` does not exist.
        fallback: Option<SyntheticSettings>,
    },
    /// CIFAR-10 binary batches (`data_batch_{1..5}.bin`, `test_batch.bin`) in `dir`.
    Cifar10 {
        dir: PathBuf,
        fallback: Option<SyntheticSettings>,
    },
    /// The built-in deterministic synthetic image dataset.
    Synthetic(SyntheticSettings),
    /// Image files in `train/<class>/` and `val/<class>/` folders.
    ImageFolder(ImageFolderSettings),
    /// A safetensors file per split with `inputs` and `labels`.
    Tensors(TensorFileSettings),
}

/// An image-folder dataset: where it is and how its images are decoded and held.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFolderSettings {
    /// Holds `train/<class>/*.{png,jpg,jpeg}` and, unless `val_fraction` is set, `val/<class>/…`.
    pub dir: PathBuf,
    /// Images are resized (shorter side) and centre-cropped to `image_size × image_size`.
    pub image_size: usize,
    /// 3 (RGB) or 1 (grayscale).
    pub channels: usize,
    /// Hold out this fraction of each class of `train/` for validation (when there is no `val/`).
    pub val_fraction: Option<f64>,
    /// Seed of that split.
    pub split_seed: u64,
    /// Leave out files that cannot be decoded (counted in `run.json`) instead of failing.
    pub skip_bad_files: bool,
    /// Keep the decoded images in memory (as float32, 4 bytes a pixel) when both splits fit in
    /// this many MiB; otherwise decode each batch from disk, ahead of the step.
    pub cache_mb: usize,
    /// How many batches a streamed training split decodes ahead.
    pub prefetch_batches: usize,
}

/// A dataset of tensor files: one safetensors file per split.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorFileSettings {
    pub train: PathBuf,
    pub val: PathBuf,
    /// One name per class; `class 0`, `class 1`, … when not given.
    pub class_names: Option<Vec<String>>,
}

/// Shape and size of the synthetic dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSettings {
    pub train_size: usize,
    pub test_size: usize,
    pub classes: usize,
    pub channels: usize,
    pub image_size: usize,
    /// Standard deviation of the per-pixel Gaussian noise, in units of full intensity.
    pub noise: f32,
}

/// How the training set is visited each epoch.
#[derive(Debug, Clone, PartialEq)]
pub enum SamplerSettings {
    /// Every sample once, in a fresh random order.
    Shuffle,
    /// As many draws as samples, with replacement, each sample weighted by its class's
    /// weight (default: inverse class frequency, which balances the classes).
    Weighted { class_weights: Option<Vec<f64>> },
}

/// The network to train.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSettings {
    pub kind: ModelKind,
    /// Hidden layer widths of the MLP.
    pub hidden: Vec<usize>,
    /// Channel multiplier of the ResNet.
    pub width_mult: f64,
    /// Normalisation layers of the ResNet.
    pub norm: Norm,
    /// The TorchScript file of a `torchscript` model.
    pub path: Option<PathBuf>,
}

/// The optimiser and its hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimSettings {
    pub kind: OptimKind,
    /// Peak learning rate (after warm-up).
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    /// SGD: L2 penalty added to the gradient. AdamW: decoupled decay.
    pub weight_decay: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    /// Clip the global gradient L2 norm to this.
    pub clip_grad_norm: Option<f64>,
}

/// The learning-rate schedule: linear warm-up, then constant or cosine to `eta_min`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSettings {
    pub kind: ScheduleKind,
    pub warmup_epochs: f64,
    pub eta_min: f64,
}

/// Which checkpoints to keep.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointSettings {
    pub enabled: bool,
    /// Keep the best this many by validation loss, plus `last`.
    pub keep_best: usize,
}

/// `log_max_mb` and `log_backups`: `vigil.log` is rotated when it passes `max_mb` MiB, and
/// `backups` rotated (gzip-compressed) copies are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogSettings {
    pub max_mb: f64,
    pub backups: usize,
}

impl LogSettings {
    /// The size past which the log is rotated.
    pub fn max_bytes(&self) -> u64 {
        (self.max_mb * 1024.0 * 1024.0).ceil().max(1.0) as u64
    }
}

/// One `[[monitors]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorSettings {
    /// The monitor name a plugin provides.
    pub name: String,
    pub enabled: bool,
    pub on_error: OnError,
    /// Load this library file instead of searching `plugin_dirs` (absolute: a relative path
    /// in the config is taken from the config file's directory).
    pub path: Option<PathBuf>,
    /// Refuse the library unless its SHA-256 is this (lower-case hex).
    pub sha256: Option<String>,
    /// A hook call longer than this is a strike; `hook_budget_strikes` of them disable the
    /// monitor.
    pub hook_budget: Option<std::time::Duration>,
    pub hook_budget_strikes: u32,
    /// The `[monitors.settings]` table as TOML text, handed to the plugin.
    pub settings_toml: String,
}

impl Settings {
    /// Read and validate a config file.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::load(path, &[])
    }

    /// Read a config file, apply `--set key=value` overrides, and validate the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        Self::from_toml_with(&read_config(path)?, path, overrides)
    }

    /// Validate a config given as TOML text; `path` is only used in error messages and to
    /// name the run when the config does not.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        Self::from_toml_with(text, path, &[])
    }

    /// Validate config text with `--set` overrides; `path` names the file in errors.
    pub fn from_toml_with(text: &str, path: &Path, overrides: &[String]) -> Result<Self> {
        // The file alone first, so that its errors point at its lines.
        let raw: raw::RawConfig = toml::from_str(text).map_err(|err| {
            let (line, column) = err
                .span()
                .map(|span| line_column(text, span.start))
                .unwrap_or((1, 1));
            Error::Config {
                location: format!("{}:{line}:{column}", path.display()),
                message: err.message().trim().to_string(),
            }
        })?;
        let (raw, overridden) = if overrides.is_empty() {
            (raw, Vec::new())
        } else {
            apply_overrides(text, overrides)?
        };
        let invalid = |key: &str, message: String| Error::Config {
            location: match overridden.iter().find(|(k, _)| k == key) {
                Some((_, assignment)) => format!("--set {assignment}"),
                None => locate_key(text, key)
                    .map(|(line, column)| format!("{}:{line}:{column}", path.display()))
                    .unwrap_or_else(|| path.display().to_string()),
            },
            message: format!("`{key}` {message}"),
        };
        raw.validate(path, &invalid)
    }
}

/// The text of a config file; a missing file is a config error.
pub fn read_config(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => Error::Config {
            location: path.display().to_string(),
            message: "config file not found".into(),
        },
        _ => Error::io(path, source),
    })
}

/// Apply `key=value` assignments to the document and parse it again. The value is read as a
/// TOML value (`0.1`, `true`, `"sgd"`, `[1, 2]`); anything that is not TOML is taken as a
/// string, so `--set optim.kind=adamw` works. Returns the config and (key, assignment) pairs.
fn apply_overrides(
    text: &str,
    overrides: &[String],
) -> Result<(raw::RawConfig, Vec<(String, String)>)> {
    let mut document: toml::Table = toml::from_str(text).map_err(|err| Error::Config {
        location: "config".into(),
        message: err.message().trim().to_string(),
    })?;
    let mut applied = Vec::new();
    for assignment in overrides {
        let bad = |message: String| Error::Config {
            location: format!("--set {assignment}"),
            message,
        };
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| bad("expected KEY=VALUE, e.g. --set optim.lr=0.1".into()))?;
        let key = key.trim();
        if key.is_empty() || key.split('.').any(|part| part.trim().is_empty()) {
            return Err(bad(
                "the key must be a dotted name such as `optim.lr`".into()
            ));
        }
        let value = value.trim();
        let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut table| table.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        let parts: Vec<&str> = key.split('.').map(str::trim).collect();
        let mut table = &mut document;
        for part in &parts[..parts.len() - 1] {
            let entry = table
                .entry(part.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry
                .as_table_mut()
                .ok_or_else(|| bad(format!("`{part}` is not a table, so `{key}` cannot be set")))?;
        }
        table.insert(parts[parts.len() - 1].to_string(), parsed);
        applied.push((key.to_string(), assignment.clone()));
    }
    let raw = raw::RawConfig::deserialize_table(document).map_err(|message| Error::Config {
        location: match applied.as_slice() {
            [(_, only)] => format!("--set {only}"),
            _ => format!(
                "--set {}",
                applied
                    .iter()
                    .map(|(_, a)| a.as_str())
                    .collect::<Vec<_>>()
                    .join(" --set ")
            ),
        },
        message,
    })?;
    Ok((raw, applied))
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Where a dotted key (`optim.lr`, `monitors[1].name`) is written in the document, for
/// error messages.
fn locate_key(text: &str, dotted: &str) -> Option<(usize, usize)> {
    let document = toml::de::DeTable::parse(text).ok()?;
    let mut table = document.get_ref();
    let mut parts = dotted.split('.').peekable();
    while let Some(part) = parts.next() {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (name, rest.strip_suffix(']')?.parse::<usize>().ok()),
            None => (part, None),
        };
        let (key, mut value) = table.get_key_value(name)?;
        if let Some(index) = index {
            match value.get_ref() {
                toml::de::DeValue::Array(items) => value = items.get(index)?,
                _ => return None,
            }
        }
        if parts.peek().is_none() {
            let span = if index.is_some() {
                value.span()
            } else {
                key.span()
            };
            return Some(line_column(text, span.start));
        }
        match value.get_ref() {
            toml::de::DeValue::Table(inner) => table = inner,
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings> {
        Settings::from_toml(text, Path::new("test.toml"))
    }

    fn error_text(text: &str) -> String {
        parse(text)
            .expect_err("config should be rejected")
            .to_string()
    }

    #[test]
    fn empty_config_gets_defaults() {
        let settings = parse("").unwrap();
        assert_eq!(settings.name, "test");
        assert_eq!(settings.model.kind, ModelKind::Cnn);
        assert_eq!(settings.optim.kind, OptimKind::Sgd);
        assert!(matches!(
            settings.data.source,
            DataSource::Idx {
                kind: DataKind::FashionMnist,
                ..
            }
        ));
    }

    #[test]
    fn typo_in_a_key_names_line_column_and_valid_keys() {
        let message = error_text("seed = 1\n[optim]\nlr = 0.1\nmomentun = 0.9\n");
        assert!(message.starts_with("test.toml:4:1:"), "{message}");
        assert!(message.contains("momentun"), "{message}");
        assert!(message.contains("`momentum`"), "{message}");
    }

    #[test]
    fn a_wrong_type_names_line_column_and_the_expected_type() {
        let message = error_text("seed = 1\nepochs = \"two\"\n");
        assert!(message.starts_with("test.toml:2:10:"), "{message}");
        assert!(
            message.contains("invalid type: string \"two\", expected usize"),
            "{message}"
        );
    }

    #[test]
    fn unknown_enum_value_lists_the_choices() {
        let message = error_text("data = \"cifar100\"\n");
        assert!(message.starts_with("test.toml:1:8:"), "{message}");
        assert!(message.contains("synthetic"), "{message}");
    }

    #[test]
    fn out_of_range_value_points_at_its_key() {
        let message = error_text("epochs = 2\n\n[optim]\nlr = -1.0\n");
        assert!(message.starts_with("test.toml:4:1:"), "{message}");
        assert!(message.contains("`optim.lr`"), "{message}");
    }

    #[test]
    fn zero_batch_size_is_rejected() {
        let message = error_text("batch_size = 0\n");
        assert!(message.contains("`batch_size`"), "{message}");
        assert!(message.starts_with("test.toml:1:1:"), "{message}");
    }

    #[test]
    fn monitors_keep_order_options_and_settings() {
        let text =
            "[[monitors]]\nname = \"b\"\non_error = \"abort\"\n[monitors.settings]\nevery = 5\n\n\
                    [[monitors]]\nname = \"a\"\nenabled = false\n";
        let settings = parse(text).unwrap();
        let names: Vec<&str> = settings.monitors.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
        assert_eq!(settings.monitors[0].on_error, OnError::Abort);
        assert_eq!(settings.monitors[0].settings_toml.trim(), "every = 5");
        assert!(!settings.monitors[1].enabled);
        assert_eq!(settings.monitors[1].on_error, OnError::Disable);
    }

    #[test]
    fn a_monitor_listed_twice_is_an_error() {
        let message = error_text("[[monitors]]\nname = \"a\"\n[[monitors]]\nname = \"a\"\n");
        assert!(message.contains("listed twice"), "{message}");
        assert!(message.contains("`monitors[1].name`"), "{message}");
        assert!(message.starts_with("test.toml:4:"), "{message}");
    }

    #[test]
    fn a_bad_on_error_value_lists_the_choices() {
        let message = error_text("[[monitors]]\nname = \"a\"\non_error = \"ignore\"\n");
        assert!(
            message.contains("disable") && message.contains("abort"),
            "{message}"
        );
    }

    #[test]
    fn synthetic_settings_are_read() {
        let settings =
            parse("data = \"synthetic\"\n[synthetic]\ntrain_size = 100\nclasses = 4\n").unwrap();
        match settings.data.source {
            DataSource::Synthetic(s) => {
                assert_eq!(s.train_size, 100);
                assert_eq!(s.classes, 4);
            }
            other => panic!("expected synthetic data, got {other:?}"),
        }
    }

    #[test]
    fn synthetic_table_without_synthetic_data_is_an_error() {
        let message = error_text("data = \"mnist\"\n[synthetic]\ntrain_size = 100\n");
        assert!(message.contains("`synthetic`"), "{message}");
    }
}
