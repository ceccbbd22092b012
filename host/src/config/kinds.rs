//! The words a config chooses from: datasets, models, optimizers, schedules, devices, samplers
//! and what to do on an anomaly or a failing monitor.

use serde::Deserialize;

/// Which dataset `data = "…"` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataKind {
    FashionMnist,
    Mnist,
    Cifar10,
    Synthetic,
    ImageFolder,
    Tensors,
}

impl DataKind {
    /// The name a config uses for it.
    pub fn name(self) -> &'static str {
        match self {
            DataKind::FashionMnist => "fashion-mnist",
            DataKind::Mnist => "mnist",
            DataKind::Cifar10 => "cifar10",
            DataKind::Synthetic => "synthetic",
            DataKind::ImageFolder => "image-folder",
            DataKind::Tensors => "tensors",
        }
    }
}

/// Which network `[model] kind = "…"` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    Mlp,
    Cnn,
    Resnet18,
    /// A TorchScript module the user saved from PyTorch (`model.path`).
    Torchscript,
}

impl ModelKind {
    /// The name a config uses for it.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Mlp => "mlp",
            ModelKind::Cnn => "cnn",
            ModelKind::Resnet18 => "resnet18",
            ModelKind::Torchscript => "torchscript",
        }
    }
}

/// Normalisation layers of the ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Norm {
    Batch,
    None,
}

/// Which optimiser `[optim] kind = "…"` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimKind {
    Sgd,
    Adamw,
}

/// The learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    Constant,
    Cosine,
}

/// Where to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceChoice {
    /// CUDA when libtorch sees a GPU, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

/// What to do when the loss or a gradient is not finite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyPolicy {
    /// Stop the run with an error (checkpoints and metrics so far are kept).
    Stop,
    /// Skip the optimizer step for this batch and go on.
    SkipBatch,
    /// Log a warning and take the step anyway.
    Warn,
}

/// How the training set is visited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SamplerKind {
    /// Each sample once per epoch, in a fresh random order.
    Shuffle,
    /// Samples drawn with replacement, weighted by class.
    Weighted,
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
