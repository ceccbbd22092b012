//! [`FakeHost`]: the data a test scripts and what the monitor did with it.

use std::collections::BTreeMap;

use abi_stable::std_types::{RString, RVec};

use crate::{ArtifactKind, EventKind, LogLevel, ParameterInfo, ProbeSpec, StepCounters};

/// A file a monitor wrote: its kind and its bytes (appends included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    /// The kind of the last write.
    pub kind: ArtifactKind,
    /// The file's contents now.
    pub bytes: Vec<u8>,
    /// How many writes made it (1 for a file written once).
    pub writes: usize,
}

/// A call to [`FakeHost`]'s Hessian-vector product.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductCall {
    /// The probe asked for.
    pub probe: ProbeSpec,
    /// The vector multiplied.
    pub vector: Vec<f32>,
}

/// Gradient averages as the real host keeps them (`mean += (1 − β)(g − mean)`, once a step).
#[derive(Debug, Clone)]
pub(super) struct Averages {
    pub(super) beta: f64,
    pub(super) mean: Vec<f64>,
    pub(super) mean_square: f64,
    pub(super) updates: u64,
    pub(super) last_step: Option<u64>,
}

/// The host side of the ABI, scripted by a test; see the [module documentation](crate::testing).
///
/// Data is returned only at the event where the real host has it (the gradient and its norms
/// at `train_batch_end`, validation outputs at `validation_batch_end`, images at
/// `validation_end`, sampler draws at `train_epoch_start`).
///
/// ```
/// use vigil_plugin_api::testing::FakeHost;
/// let mut host = FakeHost::new();
/// host.parameters(&[("fc.weight", &[2, 2]), ("fc.bias", &[2])])
///     .gradient(&[1.0, 0.0, 0.0, 1.0, 0.5, 0.5])
///     .class_names(&["cat", "dog"])
///     .at_step(10)
///     .metric("train_loss", 0.7);
/// ```
#[derive(Debug, Clone)]
pub struct FakeHost {
    pub(super) event: Option<EventKind>,
    pub(super) counters: StepCounters,
    pub(super) metrics: Vec<(String, f64)>,
    pub(super) parameters: RVec<ParameterInfo>,
    pub(super) gradient: Vec<f32>,
    pub(super) weights: Vec<f32>,
    pub(super) grad_norms: Vec<f64>,
    pub(super) weight_norms: Vec<f64>,
    /// Row-major, one row and column per trainable scalar.
    pub(super) hessian: Option<Vec<f64>>,
    pub(super) class_names: RVec<RString>,
    pub(super) logits: Vec<f32>,
    pub(super) predictions: Vec<i64>,
    pub(super) labels: Vec<i64>,
    pub(super) num_classes: u32,
    pub(super) pixels: Vec<f32>,
    pub(super) image_shape: [u32; 4],
    pub(super) image_labels: Vec<i64>,
    pub(super) image_predictions: Vec<i64>,
    pub(super) draw_indices: Vec<i64>,
    pub(super) draw_weights: Vec<f64>,
    pub(super) draw_labels: Vec<i64>,
    pub(super) train_labels: Vec<i64>,
    pub(super) val_labels: Vec<i64>,
    pub(super) total_parameters: Option<u64>,
    pub(super) canned: BTreeMap<String, Result<Vec<u8>, String>>,
    pub(super) averages: Option<Averages>,
    pub(super) saved_state: Option<Vec<u8>>,
    pub(super) restoring: Option<(String, Vec<u8>)>,
    pub(super) logged: Vec<(u64, String, f64)>,
    pub(super) dropped: Vec<(String, f64)>,
    pub(super) files: BTreeMap<String, WrittenFile>,
    pub(super) messages: Vec<(LogLevel, String)>,
    pub(super) stops: Vec<String>,
    pub(super) queries: Vec<String>,
    pub(super) products: Vec<ProductCall>,
    pub(super) schedule: Option<crate::per_sample::Schedule>,
    pub(super) histograms: Vec<(u64, crate::per_sample::HistogramRecord)>,
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost::new()
    }
}

impl FakeHost {
    /// A host at step 0 of a one-epoch run of one batch, with no parameters, no classes and
    /// no data.
    pub fn new() -> Self {
        FakeHost {
            event: None,
            counters: StepCounters {
                global_step: 0,
                epoch: 1,
                total_epochs: 1,
                batch_index: 0,
                batches_per_epoch: 1,
                epoch_progress: 0.0,
                validation_pass: 0,
                batch_size: 1,
            },
            metrics: Vec::new(),
            parameters: RVec::new(),
            gradient: Vec::new(),
            weights: Vec::new(),
            grad_norms: Vec::new(),
            weight_norms: Vec::new(),
            hessian: None,
            class_names: RVec::new(),
            logits: Vec::new(),
            predictions: Vec::new(),
            labels: Vec::new(),
            num_classes: 0,
            pixels: Vec::new(),
            image_shape: [0; 4],
            image_labels: Vec::new(),
            image_predictions: Vec::new(),
            draw_indices: Vec::new(),
            draw_weights: Vec::new(),
            draw_labels: Vec::new(),
            train_labels: Vec::new(),
            val_labels: Vec::new(),
            total_parameters: None,
            canned: BTreeMap::new(),
            averages: None,
            saved_state: None,
            restoring: None,
            logged: Vec::new(),
            dropped: Vec::new(),
            files: BTreeMap::new(),
            messages: Vec::new(),
            stops: Vec::new(),
            queries: Vec::new(),
            products: Vec::new(),
            schedule: None,
            histograms: Vec::new(),
        }
    }

    // ----- scripting -----

    /// Replace the step counters.
    pub fn counters(&mut self, counters: StepCounters) -> &mut Self {
        self.counters = counters;
        self
    }

    /// The counters, to change one field.
    pub fn counters_mut(&mut self) -> &mut StepCounters {
        &mut self.counters
    }

    /// Set the global step; the epoch, batch index and progress follow from
    /// `batches_per_epoch`.
    pub fn at_step(&mut self, global_step: u64) -> &mut Self {
        let per_epoch = u64::from(self.counters.batches_per_epoch.max(1));
        self.counters.global_step = global_step;
        self.counters.epoch = (global_step / per_epoch) as u32 + 1;
        self.counters.batch_index = (global_step % per_epoch) as u32;
        self.counters.epoch_progress = global_step as f64 / per_epoch as f64;
        self
    }

    /// Set (or replace) a metric of the current event.
    pub fn metric(&mut self, name: &str, value: f64) -> &mut Self {
        self.metrics.retain(|(key, _)| key != name);
        self.metrics.push((name.to_string(), value));
        self
    }

    /// Forget the current event's metrics.
    pub fn clear_metrics(&mut self) -> &mut Self {
        self.metrics.clear();
        self
    }

    /// The trainable parameters, by name and shape; gradients and weights start at zero.
    pub fn parameters(&mut self, parameters: &[(&str, &[u64])]) -> &mut Self {
        self.parameters = parameters
            .iter()
            .map(|(name, shape)| ParameterInfo {
                name: (*name).into(),
                shape: shape.to_vec().into(),
                numel: shape.iter().product(),
            })
            .collect();
        let numel = self.numel();
        self.gradient = vec![0.0; numel];
        self.weights = vec![0.0; numel];
        self.refresh_norms();
        self
    }

    /// The flattened gradient (one value per trainable scalar, in parameter order); its
    /// per-parameter norms follow.
    pub fn gradient(&mut self, gradient: &[f32]) -> &mut Self {
        assert_eq!(
            gradient.len(),
            self.numel(),
            "the gradient needs one value per trainable scalar of `parameters`"
        );
        self.gradient = gradient.to_vec();
        self.refresh_norms();
        self
    }

    /// The flattened weights; their per-parameter norms follow.
    pub fn weights(&mut self, weights: &[f32]) -> &mut Self {
        assert_eq!(
            weights.len(),
            self.numel(),
            "the weights need one value per trainable scalar of `parameters`"
        );
        self.weights = weights.to_vec();
        self.refresh_norms();
        self
    }

    /// The Hessian, row-major, `n × n` for `n` trainable scalars: `hessian_vector_product`
    /// answers `H · v` (in f64, rounded to f32) and the probe loss `½ wᵀHw` at the weights.
    pub fn hessian(&mut self, matrix: &[f64]) -> &mut Self {
        let n = self.numel();
        assert_eq!(matrix.len(), n * n, "the Hessian must be n × n for n = {n}");
        self.hessian = Some(matrix.to_vec());
        self
    }

    /// Class names, indexed by label.
    pub fn class_names(&mut self, names: &[&str]) -> &mut Self {
        self.class_names = names.iter().map(|&name| name.into()).collect();
        self
    }

    /// The current validation batch: row-major logits (`labels.len() × num_classes`) and the
    /// labels; predictions are the arg-max of each row (the first on ties, as the host's).
    pub fn validation_batch(&mut self, logits: &[f32], labels: &[i64]) -> &mut Self {
        let classes = logits.len() / labels.len().max(1);
        assert_eq!(
            classes * labels.len(),
            logits.len(),
            "logits must be N × classes"
        );
        self.predictions = logits
            .chunks(classes.max(1))
            .map(|row| {
                row.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (index, &value)| {
                        if value > best.1 {
                            (index as i64, value)
                        } else {
                            best
                        }
                    })
                    .0
            })
            .collect();
        self.logits = logits.to_vec();
        self.labels = labels.to_vec();
        self.num_classes = classes as u32;
        self
    }

    /// Sample images: `count × channels × height × width` pixels in [0, 1], with a label and
    /// a prediction each.
    pub fn sample_images(
        &mut self,
        pixels: &[f32],
        [count, channels, height, width]: [u32; 4],
        labels: &[i64],
        predictions: &[i64],
    ) -> &mut Self {
        assert_eq!(pixels.len(), (count * channels * height * width) as usize);
        assert!(labels.len() == count as usize && predictions.len() == count as usize);
        self.pixels = pixels.to_vec();
        self.image_shape = [count, channels, height, width];
        self.image_labels = labels.to_vec();
        self.image_predictions = predictions.to_vec();
        self
    }

    /// What the sampler drew this epoch, the weight of every training sample and its label.
    pub fn sampler_draws(&mut self, indices: &[i64], weights: &[f64], labels: &[i64]) -> &mut Self {
        self.draw_indices = indices.to_vec();
        self.draw_weights = weights.to_vec();
        self.draw_labels = labels.to_vec();
        self
    }

    /// The labels `vigil.labels.train` and `vigil.labels.val` answer.
    pub fn labels(&mut self, train: &[i64], val: &[i64]) -> &mut Self {
        self.train_labels = train.to_vec();
        self.val_labels = val.to_vec();
        self
    }

    /// All scalars of the model, buffers included (`vigil.parameter_count`'s `total`; the
    /// trainable count by default).
    pub fn total_parameters(&mut self, total: u64) -> &mut Self {
        self.total_parameters = Some(total);
        self
    }

    /// Answer query `name` with `answer` (bytes, or the error message), before any answer of
    /// the fake host's own.
    pub fn answer(&mut self, name: &str, answer: Result<Vec<u8>, String>) -> &mut Self {
        self.canned.insert(name.to_string(), answer);
        self
    }

    // ----- records -----

    /// `(global step, value)` of every value the monitor logged under `name`.
    pub fn logged(&self, name: &str) -> Vec<(u64, f64)> {
        self.logged
            .iter()
            .filter(|(_, key, _)| key == name)
            .map(|&(step, _, value)| (step, value))
            .collect()
    }

    /// Every value the monitor logged, as `(global step, name, value)`, in order.
    pub fn all_logged(&self) -> &[(u64, String, f64)] {
        &self.logged
    }

    /// Non-finite values the monitor logged (the real host drops them with a warning).
    pub fn dropped(&self) -> &[(String, f64)] {
        &self.dropped
    }

    /// A file the monitor wrote, by its artifact path.
    pub fn file(&self, path: &str) -> Option<&WrittenFile> {
        self.files.get(path)
    }

    /// Every file the monitor wrote, by artifact path.
    pub fn files(&self) -> &BTreeMap<String, WrittenFile> {
        &self.files
    }

    /// The monitor's warnings, in order.
    pub fn warnings(&self) -> Vec<&str> {
        self.messages_at(LogLevel::WARN)
    }

    /// The monitor's messages of `level`, in order.
    pub fn messages_at(&self, level: LogLevel) -> Vec<&str> {
        self.messages
            .iter()
            .filter(|(at, _)| *at == level)
            .map(|(_, message)| message.as_str())
            .collect()
    }

    /// The reasons of every stop the monitor asked for.
    pub fn stop_requests(&self) -> &[String] {
        &self.stops
    }

    /// The names of every query the monitor made, in order.
    pub fn queries(&self) -> &[String] {
        &self.queries
    }

    /// Every Hessian-vector product the monitor asked for.
    pub fn products(&self) -> &[ProductCall] {
        &self.products
    }

    /// The schedule the monitor asked individual gradients at (API 1.4), if any.
    pub fn schedule(&self) -> Option<crate::per_sample::Schedule> {
        self.schedule
    }

    /// The histograms the monitor logged (API 1.4), with the step.
    pub fn histograms(&self) -> &[(u64, crate::per_sample::HistogramRecord)] {
        &self.histograms
    }

    /// The state the monitor handed over at the last `save_state`.
    pub fn saved_state(&self) -> Option<&[u8]> {
        self.saved_state.as_deref()
    }
}
