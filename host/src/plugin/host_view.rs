//! The host side of [`HostFfi`]: what a monitor can see and do during one event.

use std::cell::{Cell, OnceCell, RefCell};
use std::path::PathBuf;

use abi_stable::std_types::{RErr, ROk, ROption, RResult, RSlice, RSliceMut, RStr, RString, RVec};
use vigil_plugin_api::abi::{Artifact, HostFfi};
use vigil_plugin_api::per_sample;
use vigil_plugin_api::query::{self, ParameterCount};
use vigil_plugin_api::state;
use vigil_plugin_api::{
    ArtifactKind, EventKind, ImageBatch, LogLevel, ParameterInfo, ProbeSpec, SamplerDraws,
    StepCounters, ValidationBatch,
};

use super::services::HostServices;
use super::ArtifactWriter;

/// The data of one event, prepared by the trainer.
#[derive(Debug, Clone, Copy)]
pub struct EventData<'a> {
    pub kind: EventKind,
    pub counters: StepCounters,
    /// Scalar metrics of this event, by name.
    pub metrics: &'a [(&'static str, f64)],
    pub validation: Option<ValidationBatch<'a>>,
    pub images: Option<ImageBatch<'a>>,
    pub sampler: Option<SamplerDraws<'a>>,
}

impl<'a> EventData<'a> {
    /// An event with counters and metrics only.
    pub fn new(
        kind: EventKind,
        counters: StepCounters,
        metrics: &'a [(&'static str, f64)],
    ) -> Self {
        EventData {
            kind,
            counters,
            metrics,
            validation: None,
            images: None,
            sampler: None,
        }
    }
}

/// Facts about the run that do not change from event to event.
#[derive(Debug, Default)]
pub struct RunFacts {
    pub parameters: RVec<ParameterInfo>,
    pub class_names: RVec<RString>,
    /// Monitor names, by monitor index.
    pub monitor_names: Vec<String>,
    /// Labels of the training and validation splits (for `vigil.labels.*` queries).
    pub train_labels: Vec<i64>,
    pub val_labels: Vec<i64>,
    /// Every scalar the model holds, buffers such as batch-norm statistics included.
    pub total_parameters: u64,
}

/// One scalar a monitor logged: (monitor index, metric name's id in [`MetricNames`], value).
pub type Scalar = (usize, u32, f64);

/// The metric names monitors have logged, each stored once. Monitors log the same names in
/// the same order step after step, so the next name is looked for where the last one was
/// found before the whole list is searched.
#[derive(Debug, Default)]
pub struct MetricNames {
    names: Vec<String>,
    next: usize,
}

impl MetricNames {
    /// The id of `name`, added on its first use.
    pub fn id(&mut self, name: &str) -> u32 {
        let found = match self.names.get(self.next) {
            Some(expected) if expected == name => Some(self.next),
            _ => self.names.iter().position(|known| known == name),
        };
        let index = found.unwrap_or_else(|| {
            self.names.push(name.to_string());
            self.names.len() - 1
        });
        self.next = index + 1;
        index as u32
    }

    /// The id of `name`, if it has been logged.
    pub fn find(&self, name: &str) -> Option<u32> {
        self.names
            .iter()
            .position(|known| known == name)
            .map(|i| i as u32)
    }

    pub fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", String::as_str)
    }
}

/// What monitors produced during events, collected for the trainer to route.
#[derive(Debug, Default)]
pub struct Outputs {
    /// (monitor index, metric name's id in `metric_names`, value): logging allocates nothing
    /// once a name has been seen.
    pub scalars: Vec<Scalar>,
    pub metric_names: MetricNames,
    /// (monitor index, level, message)
    pub messages: Vec<(usize, LogLevel, String)>,
    /// (monitor index, file, kind)
    pub artifacts: Vec<(usize, PathBuf, ArtifactKind)>,
    /// (monitor index, reason)
    pub stop_request: Option<(usize, String)>,
    /// Non-finite scalars dropped, per monitor index.
    pub dropped_non_finite: Vec<(usize, String, f64)>,
    /// State monitors handed over during `SAVE_STATE`: (monitor index, bytes).
    pub saved_states: Vec<(usize, Vec<u8>)>,
    /// During `RESTORE_STATE`: per monitor index, (plugin version that saved, bytes).
    pub restoring: Vec<Option<(String, Vec<u8>)>>,
    /// Histograms for the sinks: (monitor index, histogram).
    pub histograms: Vec<(usize, per_sample::HistogramRecord)>,
}

/// The host, as one event's monitors see it.
pub(super) struct HostView<'a> {
    pub event: &'a EventData<'a>,
    pub services: &'a dyn HostServices,
    pub facts: &'a RunFacts,
    pub artifacts: &'a ArtifactWriter,
    pub outputs: &'a mut Outputs,
    /// The monitor being called.
    pub monitor: usize,
    grad_norms: OnceCell<Vec<f64>>,
    weight_norms: OnceCell<Vec<f64>>,
    gradient: OnceCell<Vec<f32>>,
    /// Failures of lazily computed data, reported after the event.
    pub errors: RefCell<Vec<String>>,
    /// Whether the monitor being called asked for a Hessian-vector product.
    pub used_probe: bool,
    /// The allocation the flattened gradient is written into.
    pub gradient_buffer: Cell<Vec<f32>>,
}

impl<'a> HostView<'a> {
    pub fn new(
        event: &'a EventData<'a>,
        services: &'a dyn HostServices,
        facts: &'a RunFacts,
        artifacts: &'a ArtifactWriter,
        outputs: &'a mut Outputs,
    ) -> Self {
        HostView {
            event,
            services,
            facts,
            artifacts,
            outputs,
            monitor: 0,
            grad_norms: OnceCell::new(),
            weight_norms: OnceCell::new(),
            gradient: OnceCell::new(),
            errors: RefCell::new(Vec::new()),
            used_probe: false,
            gradient_buffer: Cell::new(Vec::new()),
        }
    }

    fn lazily<'s, T>(
        &'s self,
        cell: &'s OnceCell<Vec<T>>,
        what: &str,
        compute: impl FnOnce() -> crate::Result<Vec<T>>,
    ) -> RSlice<'s, T> {
        let values = cell.get_or_init(|| {
            compute().unwrap_or_else(|err| {
                self.errors
                    .borrow_mut()
                    .push(format!("computing {what} failed: {err}"));
                Vec::new()
            })
        });
        RSlice::from_slice(values)
    }

    /// The allocation of the flattened gradient, for the next event's view.
    pub fn take_gradient_buffer(&mut self) -> Vec<f32> {
        self.gradient
            .take()
            .unwrap_or_else(|| self.gradient_buffer.take())
    }

    fn monitor_name(&self) -> &str {
        self.facts
            .monitor_names
            .get(self.monitor)
            .map_or("?", String::as_str)
    }
}

const EMPTY_VALIDATION: ValidationBatch<'static> = ValidationBatch {
    logits: RSlice::from_slice(&[]),
    predictions: RSlice::from_slice(&[]),
    labels: RSlice::from_slice(&[]),
    num_classes: 0,
};

const EMPTY_IMAGES: ImageBatch<'static> = ImageBatch {
    pixels: RSlice::from_slice(&[]),
    count: 0,
    channels: 0,
    height: 0,
    width: 0,
    labels: RSlice::from_slice(&[]),
    predictions: RSlice::from_slice(&[]),
};

const EMPTY_SAMPLER: SamplerDraws<'static> = SamplerDraws {
    indices: RSlice::from_slice(&[]),
    weights: RSlice::from_slice(&[]),
    labels: RSlice::from_slice(&[]),
};

impl HostFfi for HostView<'_> {
    fn counters(&self) -> StepCounters {
        self.event.counters
    }

    fn metric(&self, name: RStr<'_>) -> ROption<f64> {
        let name = name.as_str();
        let of_event = self.event.metrics.iter().find(|(key, _)| *key == name);
        match of_event {
            Some(&(_, value)) => ROption::RSome(value),
            // What monitors earlier in the configuration logged at this event (API 1.4).
            None => self
                .outputs
                .metric_names
                .find(name)
                .and_then(|id| {
                    self.outputs
                        .scalars
                        .iter()
                        .rev()
                        .find(|&&(_, logged, _)| logged == id)
                })
                .map(|&(_, _, value)| value)
                .into(),
        }
    }

    fn parameters(&self) -> RSlice<'_, ParameterInfo> {
        self.facts.parameters.as_rslice()
    }

    fn grad_norms(&self) -> RSlice<'_, f64> {
        if self.event.kind != EventKind::TRAIN_BATCH_END {
            return RSlice::from_slice(&[]);
        }
        self.lazily(&self.grad_norms, "gradient norms", || {
            self.services.grad_norms()
        })
    }

    fn weight_norms(&self) -> RSlice<'_, f64> {
        self.lazily(&self.weight_norms, "weight norms", || {
            self.services.weight_norms()
        })
    }

    fn gradient(&self) -> RSlice<'_, f32> {
        if self.event.kind != EventKind::TRAIN_BATCH_END {
            return RSlice::from_slice(&[]);
        }
        if let Some(view) = self.services.gradient_view() {
            return RSlice::from_slice(view);
        }
        self.lazily(&self.gradient, "the flattened gradient", || {
            let mut buffer = self.gradient_buffer.take();
            self.services.gradient_into(&mut buffer)?;
            Ok(buffer)
        })
    }

    fn hessian_vector_product(
        &mut self,
        probe: ProbeSpec,
        vector: RSlice<'_, f32>,
        mut out: RSliceMut<'_, f32>,
    ) -> RResult<f64, RString> {
        let expected: u64 = self.facts.parameters.iter().map(|p| p.numel).sum();
        if vector.len() as u64 != expected || out.len() as u64 != expected {
            return RErr(
                format!(
                    "vector and output must have {expected} elements (one per trainable scalar); got {} and {}",
                    vector.len(),
                    out.len()
                )
                .into(),
            );
        }
        self.used_probe = true;
        match self
            .services
            .hessian_vector_product(&probe, vector.as_slice(), out.as_mut_slice())
        {
            Ok(loss) => ROk(loss),
            Err(err) => RErr(err.to_string().into()),
        }
    }

    fn probe_loss(&mut self, probe: ProbeSpec) -> RResult<f64, RString> {
        match self.services.probe_loss(&probe) {
            Ok(loss) => ROk(loss),
            Err(err) => RErr(err.to_string().into()),
        }
    }

    fn validation_batch(&self) -> ValidationBatch<'_> {
        self.event.validation.unwrap_or(EMPTY_VALIDATION)
    }

    fn sample_images(&self) -> ImageBatch<'_> {
        self.event.images.unwrap_or(EMPTY_IMAGES)
    }

    fn class_names(&self) -> RSlice<'_, RString> {
        self.facts.class_names.as_rslice()
    }

    fn sampler_draws(&self) -> SamplerDraws<'_> {
        self.event.sampler.unwrap_or(EMPTY_SAMPLER)
    }

    fn log_scalar(&mut self, name: RStr<'_>, value: f64) {
        if value.is_finite() {
            let id = self.outputs.metric_names.id(name.as_str());
            self.outputs.scalars.push((self.monitor, id, value));
        } else {
            self.outputs
                .dropped_non_finite
                .push((self.monitor, name.to_string(), value));
        }
    }

    fn write_artifact(&mut self, artifact: Artifact<'_>) -> RResult<(), RString> {
        match self.artifacts.write(&artifact) {
            Ok(path) => {
                self.outputs
                    .artifacts
                    .push((self.monitor, path, artifact.kind));
                ROk(())
            }
            Err(reason) => RErr(reason.into()),
        }
    }

    fn log_message(&mut self, level: LogLevel, message: RStr<'_>) {
        self.outputs
            .messages
            .push((self.monitor, level, message.to_string()));
    }

    fn request_stop(&mut self, reason: RStr<'_>) {
        if self.outputs.stop_request.is_none() {
            self.outputs.stop_request = Some((self.monitor, reason.to_string()));
        }
    }

    fn query(&mut self, name: RStr<'_>, input: RSlice<'_, u8>) -> RResult<RVec<u8>, RString> {
        match name.as_str() {
            query::GRADIENT_EMA_UPDATE => {
                let beta = match query::decode_decay(input.as_slice()) {
                    Ok(beta) => beta,
                    Err(err) => return RErr(err.to_string().into()),
                };
                if self.event.kind != EventKind::TRAIN_BATCH_END {
                    return RErr(format!("{} works at train_batch_end, not at {}", query::GRADIENT_EMA_UPDATE, self.event.kind.name()).into());
                }
                match self.services.update_gradient_ema(self.monitor, beta, self.event.counters.global_step) {
                    Ok(()) => ROk(RVec::new()),
                    Err(err) => RErr(err.to_string().into()),
                }
            }
            query::GRADIENT_EMA => match self.services.gradient_ema(self.monitor) {
                Ok(Some(summary)) => ROk(summary.encode().into()),
                Ok(None) => RErr("no gradient averages yet: call vigil.gradient_ema.update at train_batch_end first".into()),
                Err(err) => RErr(err.to_string().into()),
            },
            state::SAVE_QUERY => {
                if self.event.kind != EventKind::SAVE_STATE {
                    return RErr(format!("{} works at save_state, not at {}", state::SAVE_QUERY, self.event.kind.name()).into());
                }
                self.outputs.saved_states.retain(|(owner, _)| *owner != self.monitor);
                self.outputs.saved_states.push((self.monitor, input.to_vec()));
                ROk(RVec::new())
            }
            state::SAVED_QUERY => match self.outputs.restoring.get(self.monitor) {
                Some(Some((version, bytes))) if self.event.kind == EventKind::RESTORE_STATE => {
                    let saved = state::SavedState { plugin_version: version, bytes };
                    ROk(saved.encode().into())
                }
                _ => RErr(format!("{} works at restore_state, for a monitor that saved state; this is {}", state::SAVED_QUERY, self.event.kind.name()).into()),
            },
            name if per_sample::ALL.contains(&name) => match self.per_sample_query(name, input.as_slice()) {
                Ok(answer) => ROk(answer.into()),
                Err(err) => RErr(err.to_string().into()),
            },
            query::VERSION => ROk(env!("CARGO_PKG_VERSION").as_bytes().to_vec().into()),
            query::TRAIN_LABELS => ROk(query::encode_labels(&self.facts.train_labels).into()),
            query::VAL_LABELS => ROk(query::encode_labels(&self.facts.val_labels).into()),
            query::PARAMETER_COUNT => {
                let trainable: u64 = self.facts.parameters.iter().map(|p| p.numel).sum();
                let count = ParameterCount {
                    total: self.facts.total_parameters.max(trainable),
                    trainable,
                };
                ROk(count.encode().into())
            }
            query::ARTIFACT_DIR => match &self.artifacts.root {
                Some(root) => ROk(root.to_string_lossy().as_bytes().to_vec().into()),
                None => RErr("no artifact directory yet (before training starts)".into()),
            },
            other => RErr(
                format!(
                    "monitor `{}` asked for unknown capability `{other}`; this host knows: {}",
                    self.monitor_name(),
                    query::ALL.iter().chain(&per_sample::ALL).copied().collect::<Vec<_>>().join(", ")
                )
                .into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_plugin_api::GradientEma;

    #[test]
    fn metric_names_are_stored_once_with_stable_ids() {
        let mut names = MetricNames::default();
        let first: Vec<u32> = ["a", "b", "c"].iter().map(|n| names.id(n)).collect();
        assert_eq!(first, [0, 1, 2]);
        // The same order again, another order, and a new name.
        assert_eq!(["a", "b", "c"].map(|n| names.id(n)), [0, 1, 2]);
        assert_eq!(["c", "a", "d", "b"].map(|n| names.id(n)), [2, 0, 3, 1]);
        assert_eq!(names.name(3), "d");
        assert_eq!(names.name(99), "");
    }

    /// Services that keep gradient averages only as far as counting the updates.
    struct Counting(Cell<u64>);

    impl HostServices for Counting {
        fn grad_norms(&self) -> crate::Result<Vec<f64>> {
            Ok(Vec::new())
        }
        fn weight_norms(&self) -> crate::Result<Vec<f64>> {
            Ok(Vec::new())
        }
        fn gradient_into(&self, _: &mut Vec<f32>) -> crate::Result<()> {
            Ok(())
        }
        fn hessian_vector_product(
            &self,
            _: &ProbeSpec,
            _: &[f32],
            _: &mut [f32],
        ) -> crate::Result<f64> {
            Ok(0.0)
        }
        fn probe_loss(&self, _: &ProbeSpec) -> crate::Result<f64> {
            Ok(0.0)
        }
        fn update_gradient_ema(&self, _: usize, _: f64, _: u64) -> crate::Result<()> {
            self.0.set(self.0.get() + 1);
            Ok(())
        }
        fn gradient_ema(&self, _: usize) -> crate::Result<Option<GradientEma>> {
            Ok((self.0.get() > 0).then_some(GradientEma {
                updates: self.0.get(),
                numel: 3,
                beta: 0.5,
                mean_square: 2.0,
                squared_mean: 1.0,
            }))
        }
    }

    #[test]
    fn gradient_average_queries_check_their_input_and_event() {
        let services = Counting(Cell::new(0));
        let (facts, artifacts) = (RunFacts::default(), ArtifactWriter::default());
        let mut outputs = Outputs::default();
        let mut ask = |kind: EventKind, name: &str, input: &[u8]| {
            let event = EventData::new(kind, StepCounters::default(), &[]);
            let mut view = HostView::new(&event, &services, &facts, &artifacts, &mut outputs);
            view.query(RStr::from_str(name), RSlice::from_slice(input))
                .into_result()
                .map(RVec::into_vec)
                .map_err(RString::into_string)
        };
        let beta = 0.5f64.to_le_bytes();
        let early = ask(EventKind::TRAIN_BATCH_END, "vigil.gradient_ema", &[]).unwrap_err();
        assert!(early.contains("call vigil.gradient_ema.update"), "{early}");
        let short = ask(
            EventKind::TRAIN_BATCH_END,
            "vigil.gradient_ema.update",
            &beta[..4],
        );
        assert!(short.unwrap_err().contains("8 little-endian bytes"));
        let elsewhere = ask(
            EventKind::VALIDATION_END,
            "vigil.gradient_ema.update",
            &beta,
        );
        assert!(elsewhere
            .unwrap_err()
            .contains("at train_batch_end, not at validation_end"));
        assert_eq!(
            ask(
                EventKind::TRAIN_BATCH_END,
                "vigil.gradient_ema.update",
                &beta
            ),
            Ok(Vec::new())
        );
        let summary = ask(EventKind::VALIDATION_END, "vigil.gradient_ema", &[]).unwrap();
        let words: Vec<[u8; 8]> = summary.chunks(8).map(|w| w.try_into().unwrap()).collect();
        assert_eq!(words.len(), 5);
        assert_eq!(
            (u64::from_le_bytes(words[0]), u64::from_le_bytes(words[1])),
            (1, 3)
        );
        let floats: Vec<f64> = words[2..].iter().map(|&w| f64::from_le_bytes(w)).collect();
        assert_eq!(floats, [0.5, 2.0, 1.0]);
    }
}
