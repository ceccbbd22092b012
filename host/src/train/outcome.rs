//! What training produces and what the trained model takes: per-pass and per-epoch metrics,
//! a run's summary, and the input specification a run keeps in `inputs.json`.

use std::sync::Mutex;

/// Loss and accuracy over one pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PassMetrics {
    pub loss: f64,
    pub accuracy: f64,
    /// `(k, top-k accuracy)` of a validation pass over data with more than k classes.
    pub top_k: Option<(usize, f64)>,
}

impl PassMetrics {
    /// The top-k accuracy's metric name and value, when there is one.
    pub fn top_k_metric(&self) -> Option<(&'static str, f64)> {
        self.top_k.map(|(k, value)| (top_k_name(k), value))
    }
}

/// `val_acc_top{k}`, made once per k for the life of the process (monitor events carry
/// metric names as `&'static str`; a run uses one k).
fn top_k_name(k: usize) -> &'static str {
    static NAMES: Mutex<Vec<(usize, &'static str)>> = Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(&(_, name)) = names.iter().find(|(known, _)| *known == k) {
        return name;
    }
    let name: &'static str = Box::leak(format!("val_acc_top{k}").into_boxed_str());
    names.push((k, name));
    name
}

/// What a trained model takes and returns: `N × channels × height × width` float inputs,
/// pixels scaled to [0, 1] and then normalised per channel as `(x − mean) / std` (no
/// normalisation when `mean` is empty: float tensor inputs are used as given), and logits
/// over `class_names`. A run keeps it in `inputs.json`; exports write it beside the model.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InputSpec {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub class_names: Vec<String>,
}

impl InputSpec {
    pub fn to_json(&self) -> Vec<u8> {
        let mut text = serde_json::to_vec_pretty(self).unwrap_or_default();
        text.push(b'\n');
        text
    }
}

/// What one epoch produced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub global_step: u64,
    pub train: PassMetrics,
    /// The last validation of the epoch.
    pub val: PassMetrics,
    pub seconds: f64,
}

/// What a whole run (or the resumed part of it) produced.
#[derive(Debug, Clone, Default)]
pub struct FitSummary {
    pub epochs: Vec<EpochMetrics>,
    /// Every validation: (global step, metrics).
    pub validations: Vec<(u64, PassMetrics)>,
    /// Wall time of the training loop (training, validation, monitors, checkpoints).
    pub seconds: f64,
    /// Optimizer steps taken in this call (fewer than the run's total after a resume).
    pub steps: u64,
    /// Set when a monitor asked to stop: (monitor, reason).
    pub stopped_by: Option<(String, String)>,
    /// Set when a signal interrupted training (its number); a checkpoint was written at the
    /// step training stopped at, and monitors have not seen `fit_end`.
    pub interrupted: Option<usize>,
    /// Of [`FitSummary::seconds`], those spent in validation passes (the monitors'
    /// validation hooks included).
    pub validation_seconds: f64,
    /// Hessian-vector products computed for monitors, and the seconds they took.
    pub hessian_vector_products: u64,
    pub hessian_vector_seconds: f64,
}

impl FitSummary {
    pub fn last(&self) -> Option<&EpochMetrics> {
        self.epochs.last()
    }
}
