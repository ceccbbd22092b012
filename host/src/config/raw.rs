//! The config file as written: serde structs that reject unknown keys, with defaults.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::checks::{at_least_one, in_range, only_with, Invalid};
use super::data_source::{RawData, RawImageFolder, RawSynthetic, RawTensors};
use super::kinds::{
    AnomalyPolicy, DataKind, DeviceChoice, ModelKind, Norm, OnError, OptimKind, SamplerKind,
    ScheduleKind,
};
use super::watch::{system_metrics_interval, RawEarlyStopping, RawMlflow, RawNotify};
use super::{
    CheckpointSettings, DataSettings, LogSettings, ModelSettings, MonitorSettings, OptimSettings,
    SamplerSettings, ScheduleSettings, Settings,
};
use crate::error::Result;

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
    device: DeviceChoice,
    val_check_interval: f64,
    top_k: usize,
    anomaly_policy: AnomalyPolicy,
    data: DataKind,
    data_dir: Option<PathBuf>,
    synthetic_fallback: bool,
    augment: Option<bool>,
    sampler: SamplerKind,
    class_weights: Option<Vec<f64>>,
    synthetic: Option<RawSynthetic>,
    image_folder: Option<RawImageFolder>,
    tensors: Option<RawTensors>,
    model: RawModel,
    optim: RawOptim,
    schedule: RawSchedule,
    checkpoint: RawCheckpoint,
    log_max_mb: f64,
    log_backups: usize,
    early_stopping: Option<RawEarlyStopping>,
    system_metrics_every_s: f64,
    mlflow: Option<RawMlflow>,
    notify: Vec<RawNotify>,
    plugin_dirs: Option<Vec<PathBuf>>,
    allow_insecure_plugins: bool,
    monitors: Vec<RawMonitor>,
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
            device: DeviceChoice::Auto,
            val_check_interval: 0.25,
            top_k: 5,
            anomaly_policy: AnomalyPolicy::Stop,
            data: DataKind::FashionMnist,
            data_dir: None,
            synthetic_fallback: false,
            augment: None,
            sampler: SamplerKind::Shuffle,
            class_weights: None,
            synthetic: None,
            image_folder: None,
            tensors: None,
            model: RawModel::default(),
            optim: RawOptim::default(),
            schedule: RawSchedule::default(),
            checkpoint: RawCheckpoint::default(),
            log_max_mb: 100.0,
            log_backups: 5,
            early_stopping: None,
            system_metrics_every_s: 10.0,
            mlflow: None,
            notify: Vec::new(),
            plugin_dirs: None,
            allow_insecure_plugins: false,
            monitors: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawModel {
    kind: ModelKind,
    hidden: Option<Vec<usize>>,
    width_mult: Option<f64>,
    norm: Option<Norm>,
    path: Option<PathBuf>,
}

impl Default for RawModel {
    fn default() -> Self {
        RawModel {
            kind: ModelKind::Cnn,
            hidden: None,
            width_mult: None,
            norm: None,
            path: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawOptim {
    kind: OptimKind,
    lr: f64,
    momentum: Option<f64>,
    nesterov: Option<bool>,
    weight_decay: f64,
    betas: Option<[f64; 2]>,
    eps: Option<f64>,
    clip_grad_norm: Option<f64>,
}

impl Default for RawOptim {
    fn default() -> Self {
        RawOptim {
            kind: OptimKind::Sgd,
            lr: 0.05,
            momentum: None,
            nesterov: None,
            weight_decay: 0.0,
            betas: None,
            eps: None,
            clip_grad_norm: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawSchedule {
    kind: ScheduleKind,
    warmup_epochs: f64,
    eta_min: f64,
}

impl Default for RawSchedule {
    fn default() -> Self {
        RawSchedule {
            kind: ScheduleKind::Constant,
            warmup_epochs: 0.0,
            eta_min: 0.0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawCheckpoint {
    enabled: bool,
    keep_best: usize,
}

impl Default for RawCheckpoint {
    fn default() -> Self {
        RawCheckpoint {
            enabled: true,
            keep_best: 3,
        }
    }
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
    sha256: Option<String>,
    hook_budget_ms: Option<f64>,
    #[serde(default = "default_strikes")]
    hook_budget_strikes: u32,
    #[serde(default)]
    settings: toml::Table,
}

fn default_strikes() -> u32 {
    3
}

fn enabled_by_default() -> bool {
    true
}

impl RawConfig {
    /// Check ranges and cross-field rules; `invalid(key, message)` builds the error for a key.
    pub(super) fn validate(self, path: &Path, invalid: Invalid<'_>) -> Result<Settings> {
        at_least_one(invalid, "epochs", self.epochs)?;
        let log_max_mb = in_range(invalid, "log_max_mb", self.log_max_mb, 0.0..=1e6, true)?;
        at_least_one(invalid, "batch_size", self.batch_size)?;
        if let Some(eval) = self.eval_batch_size {
            at_least_one(invalid, "eval_batch_size", eval)?;
        }
        if let Some(threads) = self.threads {
            at_least_one(invalid, "threads", threads)?;
        }
        in_range(
            invalid,
            "val_check_interval",
            self.val_check_interval,
            0.0..=1.0,
            true,
        )?;

        at_least_one(invalid, "top_k", self.top_k)?;
        let model = self.model.validate(invalid)?;
        let optim = self.optim.validate(invalid)?;
        let schedule = &self.schedule;
        in_range(
            invalid,
            "schedule.warmup_epochs",
            schedule.warmup_epochs,
            0.0..=1e6,
            false,
        )?;
        in_range(
            invalid,
            "schedule.eta_min",
            schedule.eta_min,
            0.0..=optim.lr,
            false,
        )?;
        if self.checkpoint.enabled {
            at_least_one(invalid, "checkpoint.keep_best", self.checkpoint.keep_best)?;
        }
        let early_stopping = self
            .early_stopping
            .map(|raw| raw.validate(invalid, self.top_k, self.checkpoint.enabled))
            .transpose()?;
        let system_metrics_every_s = system_metrics_interval(invalid, self.system_metrics_every_s)?;
        let mlflow = self.mlflow.map(|raw| raw.validate(invalid)).transpose()?;
        let notify = self
            .notify
            .into_iter()
            .enumerate()
            .map(|(index, raw)| raw.validate(index, invalid))
            .collect::<Result<Vec<_>>>()?;

        let source = RawData {
            data: self.data,
            data_dir: self.data_dir,
            synthetic_fallback: self.synthetic_fallback,
            synthetic: self.synthetic,
            image_folder: self.image_folder,
            tensors: self.tensors,
        }
        .validate(path, invalid)?;
        let sampler = match self.sampler {
            SamplerKind::Shuffle => {
                only_with(
                    invalid,
                    "class_weights",
                    self.class_weights.as_ref(),
                    false,
                    "with sampler = \"weighted\"",
                )?;
                SamplerSettings::Shuffle
            }
            SamplerKind::Weighted => {
                if let Some(weights) = &self.class_weights {
                    if weights.is_empty()
                        || weights.iter().any(|w| !w.is_finite() || *w < 0.0)
                        || weights.iter().all(|w| *w == 0.0)
                    {
                        return Err(invalid(
                            "class_weights",
                            "must be non-negative numbers, one per class, not all zero".into(),
                        ));
                    }
                }
                SamplerSettings::Weighted {
                    class_weights: self.class_weights,
                }
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
            let sha256 = match monitor.sha256 {
                Some(hash) => {
                    let hash = hash.trim().to_ascii_lowercase();
                    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(invalid(
                            &format!("monitors[{index}].sha256"),
                            "must be 64 hexadecimal digits (as `vigil plugins` prints)".into(),
                        ));
                    }
                    Some(hash)
                }
                None => None,
            };
            let hook_budget = match monitor.hook_budget_ms {
                Some(ms) => Some(std::time::Duration::from_secs_f64(
                    in_range(
                        invalid,
                        &format!("monitors[{index}].hook_budget_ms"),
                        ms,
                        0.0..=3.6e6,
                        true,
                    )? / 1e3,
                )),
                None => None,
            };
            if monitor.hook_budget_strikes == 0 {
                return Err(invalid(
                    &format!("monitors[{index}].hook_budget_strikes"),
                    "must be at least 1".into(),
                ));
            }
            monitors.push(MonitorSettings {
                name: monitor.name,
                enabled: monitor.enabled,
                on_error: monitor.on_error,
                path: monitor.path.map(|file| beside(path, &file)),
                sha256,
                hook_budget,
                hook_budget_strikes: monitor.hook_budget_strikes,
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
            device: self.device,
            val_check_interval: self.val_check_interval,
            top_k: self.top_k,
            anomaly_policy: self.anomaly_policy,
            data: DataSettings {
                augment: self.augment.unwrap_or(self.data == DataKind::Cifar10),
                source,
                sampler,
            },
            model,
            optim,
            schedule: ScheduleSettings {
                kind: self.schedule.kind,
                warmup_epochs: self.schedule.warmup_epochs,
                eta_min: self.schedule.eta_min,
            },
            log: LogSettings {
                max_mb: log_max_mb,
                backups: self.log_backups,
            },
            checkpoint: CheckpointSettings {
                enabled: self.checkpoint.enabled,
                keep_best: self.checkpoint.keep_best,
            },
            early_stopping,
            system_metrics_every_s,
            mlflow,
            notify,
            plugin_dirs: self
                .plugin_dirs
                .map(|dirs| dirs.iter().map(|dir| beside(path, dir)).collect()),
            allow_insecure_plugins: self.allow_insecure_plugins,
            monitors,
        })
    }
}

/// `file` as an absolute path, a relative one taken from the directory of the config file
/// `config`: a config names its plugins wherever `vigil` runs from.
fn beside(config: &Path, file: &Path) -> PathBuf {
    let joined = match config.parent() {
        Some(dir) if file.is_relative() => dir.join(file),
        _ => file.to_path_buf(),
    };
    std::path::absolute(&joined).unwrap_or(joined)
}

impl RawModel {
    fn validate(self, invalid: Invalid<'_>) -> Result<ModelSettings> {
        let is_mlp = self.kind == ModelKind::Mlp;
        let is_resnet = self.kind == ModelKind::Resnet18;
        let hidden = only_with(
            invalid,
            "model.hidden",
            self.hidden,
            is_mlp,
            "with kind = \"mlp\"",
        )?;
        let width_mult = only_with(
            invalid,
            "model.width_mult",
            self.width_mult,
            is_resnet,
            "with kind = \"resnet18\"",
        )?;
        let norm = only_with(
            invalid,
            "model.norm",
            self.norm,
            is_resnet,
            "with kind = \"resnet18\"",
        )?;
        let is_torchscript = self.kind == ModelKind::Torchscript;
        let path = only_with(
            invalid,
            "model.path",
            self.path,
            is_torchscript,
            "with kind = \"torchscript\"",
        )?;
        if is_torchscript && path.is_none() {
            return Err(invalid(
                "model.path",
                "is required with kind = \"torchscript\": the file a PyTorch module was saved to with \
                 `torch.jit.script(model).save(\"net.pt\")`"
                    .into(),
            ));
        }
        let hidden = hidden.unwrap_or_else(|| vec![256, 128]);
        if hidden.contains(&0) {
            return Err(invalid(
                "model.hidden",
                "layer widths must be at least 1".into(),
            ));
        }
        let width_mult = width_mult.unwrap_or(1.0);
        in_range(invalid, "model.width_mult", width_mult, 0.0..=16.0, true)?;
        Ok(ModelSettings {
            kind: self.kind,
            hidden,
            width_mult,
            norm: norm.unwrap_or(Norm::Batch),
            path,
        })
    }
}

impl RawOptim {
    fn validate(self, invalid: Invalid<'_>) -> Result<OptimSettings> {
        let is_sgd = self.kind == OptimKind::Sgd;
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(invalid(
                "optim.lr",
                format!("must be a positive number (got {})", self.lr),
            ));
        }
        let momentum = only_with(
            invalid,
            "optim.momentum",
            self.momentum,
            is_sgd,
            "with kind = \"sgd\"",
        )?
        .unwrap_or(0.9);
        let nesterov = only_with(
            invalid,
            "optim.nesterov",
            self.nesterov,
            is_sgd,
            "with kind = \"sgd\"",
        )?
        .unwrap_or(false);
        let betas = only_with(
            invalid,
            "optim.betas",
            self.betas,
            !is_sgd,
            "with kind = \"adamw\"",
        )?
        .unwrap_or([0.9, 0.999]);
        let eps = only_with(
            invalid,
            "optim.eps",
            self.eps,
            !is_sgd,
            "with kind = \"adamw\"",
        )?
        .unwrap_or(1e-8);
        if !(0.0..1.0).contains(&momentum) {
            return Err(invalid(
                "optim.momentum",
                format!("must be in [0, 1) (got {momentum})"),
            ));
        }
        if nesterov && momentum == 0.0 {
            return Err(invalid(
                "optim.nesterov",
                "needs a non-zero `optim.momentum`".into(),
            ));
        }
        if betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return Err(invalid(
                "optim.betas",
                format!("must both be in [0, 1) (got {betas:?})"),
            ));
        }
        in_range(invalid, "optim.eps", eps, 0.0..=1.0, true)?;
        in_range(
            invalid,
            "optim.weight_decay",
            self.weight_decay,
            0.0..=1e6,
            false,
        )?;
        if let Some(clip) = self.clip_grad_norm {
            in_range(invalid, "optim.clip_grad_norm", clip, 0.0..=1e12, true)?;
        }
        Ok(OptimSettings {
            kind: self.kind,
            lr: self.lr,
            momentum,
            nesterov,
            weight_decay: self.weight_decay,
            betas: (betas[0], betas[1]),
            eps,
            clip_grad_norm: self.clip_grad_norm,
        })
    }
}

impl RawConfig {
    /// Deserialize from an already parsed (and possibly edited) document.
    pub(super) fn deserialize_table(table: toml::Table) -> std::result::Result<Self, String> {
        RawConfig::deserialize(toml::Value::Table(table))
            .map_err(|err| err.message().trim().to_string())
    }
}
