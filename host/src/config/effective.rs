//! The effective configuration: validated [`Settings`] written back as a config file, with
//! every default resolved and every `--set` applied. A run keeps it in `config.toml` and in
//! each checkpoint; `--resume` trains from it, and compares it key by key with what a
//! command line asks for.

use std::collections::BTreeMap;

use toml::{Table, Value};

use super::{
    AnomalyPolicy, DataSource, DeviceChoice, ModelKind, Norm, NotifyTarget, OnError, OptimKind,
    SamplerSettings, ScheduleKind, Settings, SyntheticSettings,
};

/// Keys that `--resume` may change: they do not change what the run computes. `epochs`
/// trains a run longer (or ends it sooner); the rest say where files are and how plugins are
/// found and policed. A monitor's loading keys are matched as `monitors[i].<key>`.
pub const RESUMABLE_KEYS: [&str; 10] = [
    "epochs",
    "log_max_mb",
    "log_backups",
    "system_metrics_every_s",
    "image_folder.cache_mb",
    "image_folder.prefetch_batches",
    "name",
    "run_dir",
    "plugin_dirs",
    "allow_insecure_plugins",
];
const RESUMABLE_MONITOR_KEYS: [&str; 5] = [
    "path",
    "sha256",
    "on_error",
    "hook_budget_ms",
    "hook_budget_strikes",
];

impl Settings {
    /// These settings as a config file that [`Settings::from_toml`] reads back to the same
    /// settings, every default written out.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.to_table()).unwrap_or_default()
    }

    fn to_table(&self) -> Table {
        let mut root = Table::new();
        let put = |table: &mut Table, key: &str, value: Value| {
            table.insert(key.to_string(), value);
        };
        put(&mut root, "name", self.name.clone().into());
        put(&mut root, "seed", int(self.seed));
        put(&mut root, "epochs", int(self.epochs));
        put(&mut root, "batch_size", int(self.batch_size));
        put(&mut root, "eval_batch_size", int(self.eval_batch_size));
        if let Some(threads) = self.threads {
            put(&mut root, "threads", int(threads));
        }
        if let Some(dir) = &self.run_dir {
            put(&mut root, "run_dir", path(dir));
        }
        put(&mut root, "device", device(self.device).into());
        put(
            &mut root,
            "val_check_interval",
            self.val_check_interval.into(),
        );
        put(&mut root, "top_k", int(self.top_k));
        put(
            &mut root,
            "anomaly_policy",
            anomaly(self.anomaly_policy).into(),
        );
        let synthetic = match &self.data.source {
            DataSource::Synthetic(synthetic) => {
                put(&mut root, "data", "synthetic".into());
                Some(synthetic)
            }
            DataSource::Idx {
                kind,
                dir,
                fallback,
            } => {
                put(&mut root, "data", kind.name().into());
                put(&mut root, "data_dir", path(dir));
                put(&mut root, "synthetic_fallback", fallback.is_some().into());
                fallback.as_ref()
            }
            DataSource::Cifar10 { dir, fallback } => {
                put(&mut root, "data", "cifar10".into());
                put(&mut root, "data_dir", path(dir));
                put(&mut root, "synthetic_fallback", fallback.is_some().into());
                fallback.as_ref()
            }
            DataSource::ImageFolder(folder) => {
                put(&mut root, "data", "image-folder".into());
                put(&mut root, "data_dir", path(&folder.dir));
                let mut table = Table::new();
                put(&mut table, "image_size", int(folder.image_size));
                put(&mut table, "channels", int(folder.channels));
                if let Some(fraction) = folder.val_fraction {
                    put(&mut table, "val_fraction", fraction.into());
                }
                put(&mut table, "split_seed", int(folder.split_seed));
                put(&mut table, "skip_bad_files", folder.skip_bad_files.into());
                put(&mut table, "cache_mb", int(folder.cache_mb));
                put(&mut table, "prefetch_batches", int(folder.prefetch_batches));
                put(&mut root, "image_folder", table.into());
                None
            }
            DataSource::Tensors(files) => {
                put(&mut root, "data", "tensors".into());
                let mut table = Table::new();
                put(&mut table, "train", path(&files.train));
                put(&mut table, "val", path(&files.val));
                if let Some(names) = &files.class_names {
                    put(
                        &mut table,
                        "class_names",
                        Value::Array(names.iter().map(|n| n.as_str().into()).collect()),
                    );
                }
                put(&mut root, "tensors", table.into());
                None
            }
        };
        if let Some(synthetic) = synthetic {
            put(&mut root, "synthetic", synthetic_table(synthetic).into());
        }
        put(&mut root, "augment", self.data.augment.into());
        match &self.data.sampler {
            SamplerSettings::Shuffle => put(&mut root, "sampler", "shuffle".into()),
            SamplerSettings::Weighted { class_weights } => {
                put(&mut root, "sampler", "weighted".into());
                if let Some(weights) = class_weights {
                    put(&mut root, "class_weights", floats(weights));
                }
            }
        }

        let mut model = Table::new();
        put(&mut model, "kind", self.model.kind.name().into());
        match self.model.kind {
            ModelKind::Mlp => put(
                &mut model,
                "hidden",
                Value::Array(self.model.hidden.iter().map(|&h| int(h)).collect()),
            ),
            ModelKind::Resnet18 => {
                put(&mut model, "width_mult", self.model.width_mult.into());
                let norm = match self.model.norm {
                    Norm::Batch => "batch",
                    Norm::None => "none",
                };
                put(&mut model, "norm", norm.into());
            }
            ModelKind::Torchscript => {
                if let Some(file) = &self.model.path {
                    put(&mut model, "path", path(file));
                }
            }
            ModelKind::Cnn => {}
        }
        put(&mut root, "model", model.into());

        let optim = &self.optim;
        let mut table = Table::new();
        put(&mut table, "lr", optim.lr.into());
        put(&mut table, "weight_decay", optim.weight_decay.into());
        match optim.kind {
            OptimKind::Sgd => {
                put(&mut table, "kind", "sgd".into());
                put(&mut table, "momentum", optim.momentum.into());
                put(&mut table, "nesterov", optim.nesterov.into());
            }
            OptimKind::Adamw => {
                put(&mut table, "kind", "adamw".into());
                put(&mut table, "betas", floats(&[optim.betas.0, optim.betas.1]));
                put(&mut table, "eps", optim.eps.into());
            }
        }
        if let Some(clip) = optim.clip_grad_norm {
            put(&mut table, "clip_grad_norm", clip.into());
        }
        put(&mut root, "optim", table.into());

        let mut schedule = Table::new();
        let kind = match self.schedule.kind {
            ScheduleKind::Constant => "constant",
            ScheduleKind::Cosine => "cosine",
        };
        put(&mut schedule, "kind", kind.into());
        put(
            &mut schedule,
            "warmup_epochs",
            self.schedule.warmup_epochs.into(),
        );
        put(&mut schedule, "eta_min", self.schedule.eta_min.into());
        put(&mut root, "schedule", schedule.into());

        let mut checkpoint = Table::new();
        put(&mut checkpoint, "enabled", self.checkpoint.enabled.into());
        put(&mut checkpoint, "keep_best", int(self.checkpoint.keep_best));
        put(&mut root, "checkpoint", checkpoint.into());

        put(&mut root, "log_max_mb", self.log.max_mb.into());
        put(&mut root, "log_backups", int(self.log.backups));
        put(
            &mut root,
            "system_metrics_every_s",
            self.system_metrics_every_s.into(),
        );
        if let Some(early) = &self.early_stopping {
            let mut table = Table::new();
            put(&mut table, "monitor", early.monitor.clone().into());
            put(&mut table, "mode", early.mode.name().into());
            put(&mut table, "min_delta", early.min_delta.into());
            put(&mut table, "patience", int(early.patience));
            if let Some(threshold) = early.stopping_threshold {
                put(&mut table, "stopping_threshold", threshold.into());
            }
            if let Some(threshold) = early.divergence_threshold {
                put(&mut table, "divergence_threshold", threshold.into());
            }
            put(&mut table, "check_finite", early.check_finite.into());
            put(&mut table, "start_from_epoch", int(early.start_from_epoch));
            put(&mut table, "restore_best", early.restore_best.into());
            put(&mut root, "early_stopping", table.into());
        }
        if let Some(mlflow) = &self.mlflow {
            let mut table = Table::new();
            put(
                &mut table,
                "tracking_uri",
                mlflow.tracking_uri.clone().into(),
            );
            if let Some(experiment) = &mlflow.experiment {
                put(&mut table, "experiment", experiment.clone().into());
            }
            if let Some(run_name) = &mlflow.run_name {
                put(&mut table, "run_name", run_name.clone().into());
            }
            let tags: Table = mlflow
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            put(&mut table, "tags", tags.into());
            put(&mut table, "artifacts", mlflow.artifacts.into());
            put(&mut table, "every_n_steps", int(mlflow.every_n_steps));
            put(&mut root, "mlflow", table.into());
        }
        if !self.notify.is_empty() {
            let entries = self
                .notify
                .iter()
                .map(|notify| {
                    let mut table = Table::new();
                    match &notify.target {
                        NotifyTarget::Url(url) => put(&mut table, "url", url.clone().into()),
                        NotifyTarget::Env(name) => put(&mut table, "url_env", name.clone().into()),
                    }
                    put(&mut table, "format", notify.format.name().into());
                    put(
                        &mut table,
                        "on",
                        Value::Array(notify.on.iter().map(|e| e.name().into()).collect()),
                    );
                    put(&mut table, "min_interval_s", notify.min_interval_s.into());
                    Value::Table(table)
                })
                .collect();
            put(&mut root, "notify", Value::Array(entries));
        }

        if let Some(dirs) = &self.plugin_dirs {
            put(
                &mut root,
                "plugin_dirs",
                Value::Array(dirs.iter().map(|d| path(d)).collect()),
            );
        }
        put(
            &mut root,
            "allow_insecure_plugins",
            self.allow_insecure_plugins.into(),
        );
        let monitors = self
            .monitors
            .iter()
            .map(|monitor| {
                let mut table = Table::new();
                put(&mut table, "name", monitor.name.clone().into());
                put(&mut table, "enabled", monitor.enabled.into());
                let on_error = match monitor.on_error {
                    OnError::Disable => "disable",
                    OnError::Abort => "abort",
                };
                put(&mut table, "on_error", on_error.into());
                if let Some(file) = &monitor.path {
                    put(&mut table, "path", path(file));
                }
                if let Some(hash) = &monitor.sha256 {
                    put(&mut table, "sha256", hash.clone().into());
                }
                if let Some(budget) = monitor.hook_budget {
                    put(
                        &mut table,
                        "hook_budget_ms",
                        (budget.as_secs_f64() * 1e3).into(),
                    );
                }
                put(
                    &mut table,
                    "hook_budget_strikes",
                    int(monitor.hook_budget_strikes),
                );
                let settings: Table = toml::from_str(&monitor.settings_toml).unwrap_or_default();
                put(&mut table, "settings", settings.into());
                Value::Table(table)
            })
            .collect();
        put(&mut root, "monitors", Value::Array(monitors));
        root
    }

    /// The keys whose values differ between `self` and `other` (as written by
    /// [`Settings::to_toml`]), as dotted names (`optim.lr`, `monitors[0].settings.every`),
    /// sorted.
    pub fn differences(&self, other: &Settings) -> Vec<String> {
        let (mut mine, mut theirs) = (BTreeMap::new(), BTreeMap::new());
        flatten("", &Value::Table(self.to_table()), &mut mine);
        flatten("", &Value::Table(other.to_table()), &mut theirs);
        let mut keys: Vec<String> = mine
            .keys()
            .chain(theirs.keys())
            .filter(|key| mine.get(*key) != theirs.get(*key))
            .cloned()
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Every leaf of the effective config by dotted key (`optim.lr`, `monitors.0.name`: array
    /// items by index, as MLflow's key characters allow), with its value as TOML writes it
    /// (strings without their quotes): MLflow's params.
    pub fn flattened(&self) -> BTreeMap<String, String> {
        let mut leaves = BTreeMap::new();
        flatten("", &Value::Table(self.to_table()), &mut leaves);
        leaves
            .into_iter()
            .map(|(key, value)| {
                let plain = toml::from_str::<Table>(&format!("v = {value}"))
                    .ok()
                    .and_then(|t| t.get("v").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or(value);
                (key.replace('[', ".").replace(']', ""), plain)
            })
            .collect()
    }

    /// The keys [`Settings::differences`] finds that would change what a resumed run computes.
    pub fn trajectory_differences(&self, other: &Settings) -> Vec<String> {
        self.differences(other)
            .into_iter()
            .filter(|key| !resumable(key))
            .collect()
    }
}

fn resumable(key: &str) -> bool {
    // Where a run is sent and who is told change nothing it computes.
    let watching = key.starts_with("mlflow.") || key.starts_with("notify[") || key == "notify.len";
    if RESUMABLE_KEYS.contains(&key) || key.starts_with("plugin_dirs[") || watching {
        return true;
    }
    key.strip_prefix("monitors[")
        .and_then(|rest| rest.split_once("]."))
        .is_some_and(|(_, field)| RESUMABLE_MONITOR_KEYS.contains(&field))
}

/// Leaves of a TOML value by dotted key; arrays of tables and of scalars by index.
fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Table(table) => {
            for (key, value) in table {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, value, out);
            }
        }
        Value::Array(items) if prefix != "class_weights" && !prefix.ends_with("hidden") => {
            out.insert(format!("{prefix}.len"), items.len().to_string());
            for (index, item) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{index}]"), item, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

fn int<T: TryInto<i64>>(value: T) -> Value {
    Value::Integer(value.try_into().unwrap_or(i64::MAX))
}

fn floats(values: &[f64]) -> Value {
    Value::Array(values.iter().map(|&v| Value::Float(v)).collect())
}

fn path(path: &std::path::Path) -> Value {
    Value::String(path.to_string_lossy().into_owned())
}

fn synthetic_table(synthetic: &SyntheticSettings) -> Table {
    let mut table = Table::new();
    table.insert("train_size".into(), int(synthetic.train_size));
    table.insert("test_size".into(), int(synthetic.test_size));
    table.insert("classes".into(), int(synthetic.classes));
    table.insert("channels".into(), int(synthetic.channels));
    table.insert("image_size".into(), int(synthetic.image_size));
    table.insert("noise".into(), Value::Float(f64::from(synthetic.noise)));
    table
}

fn device(choice: DeviceChoice) -> &'static str {
    match choice {
        DeviceChoice::Auto => "auto",
        DeviceChoice::Cpu => "cpu",
        DeviceChoice::Cuda => "cuda",
    }
}

fn anomaly(policy: AnomalyPolicy) -> &'static str {
    match policy {
        AnomalyPolicy::Stop => "stop",
        AnomalyPolicy::SkipBatch => "skip_batch",
        AnomalyPolicy::Warn => "warn",
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(text: &str, overrides: &[&str]) -> Settings {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        Settings::from_toml_with(text, Path::new("c.toml"), &overrides).unwrap()
    }

    /// Every preset the project ships, and configs that use each optional branch, read back
    /// to the same settings.
    #[test]
    fn the_effective_config_reads_back_to_the_same_settings() {
        let mut texts: Vec<String> =
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs"))
                .unwrap()
                .map(|entry| entry.unwrap().path())
                .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
                .map(|path| std::fs::read_to_string(path).unwrap())
                .collect();
        texts.push(String::new());
        texts.push(
            "data = \"cifar10\"\ndata_dir = \"x\"\nsynthetic_fallback = true\nsampler = \"weighted\"\n\
             class_weights = [1.0, 0.5]\nthreads = 2\nrun_dir = \"r\"\nanomaly_policy = \"skip_batch\"\n\
             [model]\nkind = \"resnet18\"\nwidth_mult = 0.25\nnorm = \"none\"\n\
             [optim]\nkind = \"adamw\"\nlr = 0.003\nbetas = [0.8, 0.99]\nclip_grad_norm = 1.5\n\
             [schedule]\nkind = \"cosine\"\nwarmup_epochs = 0.5\neta_min = 1e-5\n\
             [[monitors]]\nname = \"m\"\nhook_budget_ms = 12.5\nsha256 = \"ab\"\n[monitors.settings]\nevery = 3\nwindow = [2, 4]\n"
                .replace("\"ab\"", &format!("\"{}\"", "ab".repeat(32))),
        );
        for text in texts {
            let settings = parse(&text, &[]);
            let written = settings.to_toml();
            let read_back = parse(&written, &[]);
            assert_eq!(read_back, settings, "{text}\n---\n{written}");
            assert_eq!(read_back.to_toml(), written);
        }
    }

    #[test]
    fn overrides_are_part_of_the_effective_config() {
        let settings = parse(
            "seed = 1\n[optim]\nlr = 0.05\n",
            &["optim.lr=0.2", "seed=3"],
        );
        let effective = parse(&settings.to_toml(), &[]);
        assert_eq!((effective.optim.lr, effective.seed), (0.2, 3));
    }

    #[test]
    fn differences_name_the_keys_and_separate_what_a_resume_may_change() {
        let base = parse(
            "[[monitors]]\nname = \"m\"\n[monitors.settings]\nevery = 3\n",
            &[],
        );
        let other = parse(
            "epochs = 4\nname = \"x\"\n[optim]\nlr = 0.2\n[[monitors]]\nname = \"m\"\non_error = \"abort\"\n[monitors.settings]\nevery = 4\n",
            &[],
        );
        assert_eq!(
            base.differences(&other),
            [
                "epochs",
                "monitors[0].on_error",
                "monitors[0].settings.every",
                "name",
                "optim.lr"
            ]
        );
        assert_eq!(
            base.trajectory_differences(&other),
            ["monitors[0].settings.every", "optim.lr"]
        );
        assert!(base.differences(&base).is_empty());
    }
}
