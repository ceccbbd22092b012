//! The config file as written: serde structs that reject unknown keys, with defaults.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{
    DataSettings, ModelSettings, MonitorSettings, OptimSettings, Settings, SyntheticSettings,
    DEFAULT_FASHION_MNIST_DIR,
};
use crate::error::{Error, Result};

/// Which dataset `data = "…"` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataKind {
    FashionMnist,
    Mnist,
    Synthetic,
}

/// Which network `[model] kind = "…"` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    Mlp,
    Cnn,
}

impl ModelKind {
    /// The name a config uses for it.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Mlp => "mlp",
            ModelKind::Cnn => "cnn",
        }
    }
}

/// Which optimiser `[optim] kind = "…"` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimKind {
    Sgd,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawConfig {
    name: Option<String>,
    seed: u64,
    epochs: usize,
    batch_size: usize,
    eval_batch_size: Option<usize>,
    threads: Option<usize>,
    run_dir: Option<PathBuf>,
    data: DataKind,
    data_dir: Option<PathBuf>,
    synthetic: Option<RawSynthetic>,
    model: RawModel,
    optim: RawOptim,
    plugin_dirs: Option<Vec<PathBuf>>,
    monitors: Vec<RawMonitor>,
}

/// One `[[monitors]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMonitor {
    name: String,
    #[serde(default = "enabled_by_default")]
    enabled: bool,
    #[serde(default)]
    on_error: OnError,
    path: Option<PathBuf>,
    #[serde(default)]
    settings: toml::Table,
}

fn enabled_by_default() -> bool {
    true
}

/// What happens when a monitor fails or panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Disable the monitor, record why, and keep training.
    #[default]
    Disable,
    /// Stop the run with an error.
    Abort,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            name: None,
            seed: 0,
            epochs: 1,
            batch_size: 64,
            eval_batch_size: None,
            threads: None,
            run_dir: None,
            data: DataKind::FashionMnist,
            data_dir: None,
            synthetic: None,
            model: RawModel::default(),
            optim: RawOptim::default(),
            plugin_dirs: None,
            monitors: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawSynthetic {
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
struct RawModel {
    kind: ModelKind,
    hidden: Vec<usize>,
}

impl Default for RawModel {
    fn default() -> Self {
        RawModel {
            kind: ModelKind::Cnn,
            hidden: vec![256, 128],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawOptim {
    kind: OptimKind,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
    nesterov: bool,
}

impl Default for RawOptim {
    fn default() -> Self {
        RawOptim {
            kind: OptimKind::Sgd,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 0.0,
            nesterov: false,
        }
    }
}

impl RawConfig {
    /// Check ranges and cross-field rules; `invalid(key, message)` builds the error for a key.
    pub(super) fn validate(
        self,
        path: &Path,
        invalid: impl Fn(&str, String) -> Error,
    ) -> Result<Settings> {
        let at_least_one = |key: &str, value: usize| {
            if value == 0 {
                Err(invalid(key, "must be at least 1 (got 0)".into()))
            } else {
                Ok(value)
            }
        };
        at_least_one("epochs", self.epochs)?;
        at_least_one("batch_size", self.batch_size)?;
        if let Some(eval) = self.eval_batch_size {
            at_least_one("eval_batch_size", eval)?;
        }
        if let Some(threads) = self.threads {
            at_least_one("threads", threads)?;
        }

        let optim = &self.optim;
        if !(optim.lr.is_finite() && optim.lr > 0.0) {
            return Err(invalid(
                "optim.lr",
                format!("must be a positive number (got {})", optim.lr),
            ));
        }
        if !(0.0..1.0).contains(&optim.momentum) {
            return Err(invalid(
                "optim.momentum",
                format!("must be in [0, 1) (got {})", optim.momentum),
            ));
        }
        if !(optim.weight_decay.is_finite() && optim.weight_decay >= 0.0) {
            return Err(invalid(
                "optim.weight_decay",
                format!("must be zero or positive (got {})", optim.weight_decay),
            ));
        }
        if optim.nesterov && optim.momentum == 0.0 {
            return Err(invalid(
                "optim.nesterov",
                "needs a non-zero `optim.momentum`".into(),
            ));
        }

        if self.model.kind == ModelKind::Mlp && self.model.hidden.contains(&0) {
            return Err(invalid(
                "model.hidden",
                "layer widths must be at least 1".into(),
            ));
        }

        let data = match self.data {
            DataKind::Synthetic => {
                if self.data_dir.is_some() {
                    return Err(invalid(
                        "data_dir",
                        "is not used with data = \"synthetic\"; remove it".into(),
                    ));
                }
                let raw = self.synthetic.unwrap_or_default();
                at_least_one("synthetic.train_size", raw.train_size)?;
                at_least_one("synthetic.test_size", raw.test_size)?;
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
                if !(raw.noise.is_finite() && (0.0..=2.0).contains(&raw.noise)) {
                    return Err(invalid(
                        "synthetic.noise",
                        format!("must be between 0 and 2 (got {})", raw.noise),
                    ));
                }
                DataSettings::Synthetic(SyntheticSettings {
                    train_size: raw.train_size,
                    test_size: raw.test_size,
                    classes: raw.classes,
                    channels: raw.channels,
                    image_size: raw.image_size,
                    noise: raw.noise,
                })
            }
            kind => {
                if self.synthetic.is_some() {
                    return Err(invalid(
                        "synthetic",
                        "is only used with data = \"synthetic\"; remove the table or change `data`"
                            .into(),
                    ));
                }
                let dir = match (self.data_dir, kind) {
                    (Some(dir), _) => dir,
                    (None, DataKind::FashionMnist) => PathBuf::from(DEFAULT_FASHION_MNIST_DIR),
                    (None, _) => {
                        return Err(Error::Config {
                            location: path.display().to_string(),
                            message: "`data_dir` is required for data = \"mnist\": the directory \
                                      holding train-images-idx3-ubyte[.gz] and friends"
                                .into(),
                        })
                    }
                };
                DataSettings::Idx { kind, dir }
            }
        };

        let mut monitors = Vec::with_capacity(self.monitors.len());
        for (index, monitor) in self.monitors.into_iter().enumerate() {
            let key = format!("monitors[{index}].name");
            if monitor.name.trim().is_empty() {
                return Err(invalid(
                    &key,
                    "must name a monitor, e.g. \"gradient\"".into(),
                ));
            }
            if monitors
                .iter()
                .any(|m: &MonitorSettings| m.name == monitor.name)
            {
                return Err(invalid(
                    &key,
                    format!(
                        "`{}` is listed twice; each monitor may appear once",
                        monitor.name
                    ),
                ));
            }
            monitors.push(MonitorSettings {
                name: monitor.name,
                enabled: monitor.enabled,
                on_error: monitor.on_error,
                path: monitor.path,
                settings_toml: toml::to_string(&monitor.settings).unwrap_or_default(),
            });
        }

        let name = match self.name {
            Some(name) if name.trim().is_empty() => {
                return Err(invalid("name", "must not be empty".into()))
            }
            Some(name) => name,
            None => path
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".into()),
        };

        Ok(Settings {
            name,
            seed: self.seed,
            epochs: self.epochs,
            batch_size: self.batch_size,
            eval_batch_size: self.eval_batch_size.unwrap_or(self.batch_size.max(256)),
            threads: self.threads,
            run_dir: self.run_dir,
            data,
            model: ModelSettings {
                kind: self.model.kind,
                hidden: self.model.hidden,
            },
            plugin_dirs: self
                .plugin_dirs
                .unwrap_or_else(crate::plugin::default_plugin_dirs),
            monitors,
            optim: OptimSettings {
                kind: self.optim.kind,
                lr: self.optim.lr,
                momentum: self.optim.momentum,
                weight_decay: self.optim.weight_decay,
                nesterov: self.optim.nesterov,
            },
        })
    }
}
