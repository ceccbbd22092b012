//! Experiment configuration: a TOML file parsed into plain raw structs, then validated once
//! into the [`Settings`] the trainer uses.
//!
//! Every error names the file, the line and column, the key, and what would be valid.
//! Relative paths in a config are taken relative to the directory `vigil` runs in.
//!
//! ```toml
//! seed = 0
//! epochs = 1
//! batch_size = 64
//! data = "fashion-mnist"          # or "mnist", "synthetic"
//! data_dir = "/usr/share/datasets/fashion-mnist"
//!
//! [model]
//! kind = "cnn"                    # or "mlp"
//!
//! [optim]
//! lr = 0.05
//! momentum = 0.9
//! ```

mod raw;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub use raw::{DataKind, ModelKind, OnError, OptimKind};

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
    pub data: DataSettings,
    pub model: ModelSettings,
    pub optim: OptimSettings,
    /// Directories searched for plugin libraries, in order.
    pub plugin_dirs: Vec<PathBuf>,
    /// The `[[monitors]]` entries, in config order.
    pub monitors: Vec<MonitorSettings>,
}

/// One `[[monitors]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorSettings {
    /// The monitor name a plugin provides.
    pub name: String,
    pub enabled: bool,
    pub on_error: OnError,
    /// Load this library file instead of searching `plugin_dirs`.
    pub path: Option<PathBuf>,
    /// The `[monitors.settings]` table as TOML text, handed to the plugin.
    pub settings_toml: String,
}

/// Which dataset to train on and where it lives.
#[derive(Debug, Clone, PartialEq)]
pub enum DataSettings {
    /// IDX files (`train-images-idx3-ubyte[.gz]` and friends) in `dir`.
    Idx { kind: DataKind, dir: PathBuf },
    /// The built-in deterministic synthetic image dataset.
    Synthetic(SyntheticSettings),
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

/// The network to train.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSettings {
    pub kind: ModelKind,
    /// Hidden layer widths of the MLP.
    pub hidden: Vec<usize>,
}

/// The optimiser and its hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimSettings {
    pub kind: OptimKind,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

impl Settings {
    /// Read and validate a config file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => Error::Config {
                location: path.display().to_string(),
                message: "config file not found".into(),
            },
            _ => Error::io(path, source),
        })?;
        Self::from_toml(&text, path)
    }

    /// Validate a config given as TOML text; `path` is only used in error messages and to
    /// name the run when the config does not.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
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
        let invalid = |key: &str, message: String| Error::Config {
            location: locate_key(text, key)
                .map(|(line, column)| format!("{}:{line}:{column}", path.display()))
                .unwrap_or_else(|| path.display().to_string()),
            message: format!("`{key}` {message}"),
        };
        raw.validate(path, invalid)
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
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
            settings.data,
            DataSettings::Idx {
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
        match settings.data {
            DataSettings::Synthetic(s) => {
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
