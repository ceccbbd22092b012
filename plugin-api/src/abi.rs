//! The stable types that cross the boundary between the host and a plugin.
//!
//! Everything here is `#[repr(C)]` + `StableAbi`, and the layout is frozen for all of 1.x:
//! the host checks it when it loads a plugin. Later features are added as *data*, not as new
//! fields or methods: event kinds, subscriptions and artifact kinds are integer newtypes,
//! metrics are looked up by name, settings travel as TOML text, and [`HostFfi::query`] takes
//! a name and bytes for capabilities that do not exist yet.
//!
//! Plugin authors normally use the safe SDK ([`crate::Monitor`], [`crate::Context`],
//! [`crate::export_monitor!`]) and never touch these types directly.

// `#[sabi_trait]` expands to impls that rustc's `non_local_definitions` lint flags.
#![allow(non_local_definitions)]

use abi_stable::library::RootModule;
use abi_stable::sabi_types::RMut;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RBox, ROption, RResult, RSlice, RSliceMut, RStr, RString, RVec};
use abi_stable::{declare_root_module_statics, sabi_trait, StableAbi};

/// A point in training at which the host calls a monitor. New kinds may be added in later
/// 1.x releases; a monitor ignores kinds it does not know.
///
/// ```
/// use vigil_plugin_api::EventKind;
/// assert_eq!(EventKind::TRAIN_BATCH_END.name(), "train_batch_end");
/// assert_eq!(EventKind(99).name(), "unknown"); // from a newer host: ignore it
/// ```
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKind(pub u32);

impl EventKind {
    /// Once, before the first training step. The model, data and class names are known.
    pub const FIT_START: EventKind = EventKind(0);
    /// At the start of each training epoch, after the sampler has drawn the epoch's indices.
    pub const TRAIN_EPOCH_START: EventKind = EventKind(1);
    /// After the backward pass of each training batch and **before** the optimizer step:
    /// gradients, their norms and the step's `train_loss` are available.
    pub const TRAIN_BATCH_END: EventKind = EventKind(2);
    /// After each validation batch: its logits, predictions and labels are available.
    pub const VALIDATION_BATCH_END: EventKind = EventKind(3);
    /// After a whole validation pass: `val_loss`, `val_acc` and the sample images.
    pub const VALIDATION_END: EventKind = EventKind(4);
    /// At the end of each training epoch.
    pub const TRAIN_EPOCH_END: EventKind = EventKind(5);
    /// Once, after training (also after a failed or stopped run; not after an interrupted
    /// one, which ends on resume).
    pub const FIT_END: EventKind = EventKind(6);
    /// At every checkpoint (API 1.1): the monitor may hand the host its state, through the
    /// query `vigil.state.save`. The SDK calls [`crate::Monitor::save_state`].
    pub const SAVE_STATE: EventKind = EventKind(7);
    /// On resume, instead of `FIT_START`, to a monitor that saved state at the checkpoint
    /// (API 1.1): the query `vigil.state.saved` answers what it saved. The SDK calls
    /// [`crate::Monitor::restore_state`].
    pub const RESTORE_STATE: EventKind = EventKind(8);

    /// Every kind this release defines, in the order they first occur.
    pub const ALL: [EventKind; 9] = [
        EventKind::FIT_START,
        EventKind::TRAIN_EPOCH_START,
        EventKind::TRAIN_BATCH_END,
        EventKind::VALIDATION_BATCH_END,
        EventKind::VALIDATION_END,
        EventKind::TRAIN_EPOCH_END,
        EventKind::FIT_END,
        EventKind::SAVE_STATE,
        EventKind::RESTORE_STATE,
    ];

    /// The snake_case name used in logs and `run.json`.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::FIT_START => "fit_start",
            EventKind::TRAIN_EPOCH_START => "train_epoch_start",
            EventKind::TRAIN_BATCH_END => "train_batch_end",
            EventKind::VALIDATION_BATCH_END => "validation_batch_end",
            EventKind::VALIDATION_END => "validation_end",
            EventKind::TRAIN_EPOCH_END => "train_epoch_end",
            EventKind::FIT_END => "fit_end",
            EventKind::SAVE_STATE => "save_state",
            EventKind::RESTORE_STATE => "restore_state",
            _ => "unknown",
        }
    }
}

/// A set of [`EventKind`]s, one bit per kind.
///
/// ```
/// use vigil_plugin_api::{EventKind, EventSet};
/// let events = EventSet::of(&[EventKind::TRAIN_BATCH_END, EventKind::VALIDATION_END]);
/// assert!(events.contains(EventKind::VALIDATION_END));
/// assert!(!events.contains(EventKind::FIT_START));
/// ```
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EventSet(pub u64);

impl EventSet {
    /// No events.
    pub const EMPTY: EventSet = EventSet(0);

    /// The set of `kinds`: `EventSet::of(&[EventKind::FIT_START, EventKind::FIT_END])`.
    pub const fn of(kinds: &[EventKind]) -> EventSet {
        let mut bits = 0u64;
        let mut index = 0;
        while index < kinds.len() {
            bits |= 1 << kinds[index].0;
            index += 1;
        }
        EventSet(bits)
    }

    /// Whether `kind` is in the set.
    pub const fn contains(self, kind: EventKind) -> bool {
        kind.0 < 64 && self.0 & (1 << kind.0) != 0
    }
}

/// Data a monitor asks the host to prepare for it. The host copies these to the CPU only
/// when at least one enabled monitor subscribed. Norms and the Hessian-vector product are
/// computed on demand and need no subscription.
///
/// ```
/// use vigil_plugin_api::Subscriptions;
/// let wanted = Subscriptions::GRADIENT.union(Subscriptions::SAMPLER);
/// assert!(wanted.contains(Subscriptions::SAMPLER));
/// assert!(!wanted.contains(Subscriptions::SAMPLE_IMAGES));
/// ```
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Subscriptions(pub u64);

impl Subscriptions {
    /// No data.
    pub const NONE: Subscriptions = Subscriptions(0);
    /// The flattened gradient of all trainable parameters, at `TRAIN_BATCH_END`.
    pub const GRADIENT: Subscriptions = Subscriptions(1 << 0);
    /// Logits, predictions and labels of each validation batch.
    pub const VALIDATION_OUTPUTS: Subscriptions = Subscriptions(1 << 1);
    /// A few validation images (de-normalised) with labels and predictions.
    pub const SAMPLE_IMAGES: Subscriptions = Subscriptions(1 << 2);
    /// The indices the training sampler drew for the epoch.
    pub const SAMPLER: Subscriptions = Subscriptions(1 << 3);
    /// Statistics of the individual gradients (API 1.4) at the steps the monitor schedules:
    /// the queries of [`crate::per_sample`]. The host records each layer's input and output
    /// gradient during those steps' forward and backward passes.
    pub const PER_SAMPLE: Subscriptions = Subscriptions(1 << 4);
    /// The parameters' motion (API 1.4): the host keeps the weights training started from
    /// and, at the steps the monitor schedules, the update the optimizer makes
    /// ([`crate::per_sample::LAST_UPDATE`], [`crate::per_sample::DISTANCE`]).
    pub const PARAMETER_MOTION: Subscriptions = Subscriptions(1 << 5);

    /// Both: `Subscriptions::GRADIENT.union(Subscriptions::SAMPLER)`.
    pub const fn union(self, other: Subscriptions) -> Subscriptions {
        Subscriptions(self.0 | other.0)
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Subscriptions) -> bool {
        self.0 & other.0 == other.0
    }
}

/// What an artifact is, so that the host can route it (PNG images also go to TensorBoard).
///
/// ```
/// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>, png: &[u8]) -> Result<(), vigil_plugin_api::Error> {
/// use vigil_plugin_api::ArtifactKind;
/// ctx.write_file("plots/loss.png", ArtifactKind::PNG, png)?; // also shown in TensorBoard
/// ctx.write_file("plots/loss.csv", ArtifactKind::TEXT, b"step,loss\n")?;
/// # Ok(()) }
/// ```
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArtifactKind(pub u32);

impl ArtifactKind {
    /// Any file; written as is.
    pub const FILE: ArtifactKind = ArtifactKind(0);
    /// A PNG image.
    pub const PNG: ArtifactKind = ArtifactKind(1);
    /// UTF-8 text (CSV, JSON, Markdown, …).
    pub const TEXT: ArtifactKind = ArtifactKind(2);
}

/// How an artifact is written.
///
/// ```
/// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) -> Result<(), vigil_plugin_api::Error> {
/// // Context::write_file replaces (WriteMode::REPLACE); Context::append_file appends.
/// ctx.append_file("log.txt", vigil_plugin_api::ArtifactKind::TEXT, b"one more line\n")?;
/// # Ok(()) }
/// ```
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WriteMode(pub u32);

impl WriteMode {
    /// Replace the file atomically (a reader sees the old or the new file, never a mix).
    pub const REPLACE: WriteMode = WriteMode(0);
    /// Append to the file, creating it if needed.
    pub const APPEND: WriteMode = WriteMode(1);
}

/// Severity of a message a monitor logs through the host.
///
/// ```
/// use vigil_plugin_api::LogLevel;
/// assert!(LogLevel::WARN > LogLevel::INFO);
/// ```
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogLevel(pub u32);

impl LogLevel {
    /// Details; not shown.
    pub const DEBUG: LogLevel = LogLevel(0);
    /// Shown on the console under the monitor's name.
    pub const INFO: LogLevel = LogLevel(1);
    /// Shown, and listed in `run.json`'s warnings.
    pub const WARN: LogLevel = LogLevel(2);
}

/// Where training is when an event fires.
///
/// ```
/// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) {
/// let counters = ctx.counters();
/// if counters.batch_index + 1 == counters.batches_per_epoch {
///     ctx.info(&format!("epoch {} of {} done", counters.epoch, counters.total_epochs));
/// }
/// # }
/// ```
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Default)]
pub struct StepCounters {
    /// Optimizer steps taken before this event (at `TRAIN_BATCH_END`: before this batch's step).
    pub global_step: u64,
    /// 1-based epoch.
    pub epoch: u32,
    /// Epochs the run will train.
    pub total_epochs: u32,
    /// 0-based index of the batch within the epoch.
    pub batch_index: u32,
    /// Batches in one training epoch.
    pub batches_per_epoch: u32,
    /// Training progress in epochs, e.g. 2.25 a quarter into the third epoch.
    pub epoch_progress: f64,
    /// 1-based count of validation passes so far (0 before the first).
    pub validation_pass: u32,
    /// Samples in the current batch.
    pub batch_size: u32,
}

/// One trainable parameter tensor of the model.
///
/// ```
/// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) {
/// let lines: Vec<String> = ctx
///     .parameters()
///     .iter()
///     .map(|p| format!("{} {:?}: {} scalars", p.name, p.shape, p.numel))
///     .collect();
/// for line in &lines {
///     ctx.info(line);
/// }
/// # }
/// ```
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ParameterInfo {
    /// Dotted name, e.g. `conv1.weight`.
    pub name: RString,
    /// Its shape, e.g. `[32, 1, 3, 3]`.
    pub shape: RVec<u64>,
    /// Its number of scalars (the product of `shape`).
    pub numel: u64,
}

/// Which fixed subsample of the training set a Hessian-vector product or probe loss uses.
/// The host draws it once per distinct spec (from `seed`) and caches it.
///
/// ```
/// use vigil_plugin_api::ProbeSpec;
/// // 256 training samples drawn once from seed 7, at most 64 per forward pass.
/// let probe = ProbeSpec { samples: 256, max_batch_size: 64, seed: 7 };
/// ```
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProbeSpec {
    /// How many training samples.
    pub samples: u32,
    /// The most samples the host puts through the model at once.
    pub max_batch_size: u32,
    /// Seeds the draw of the samples.
    pub seed: u64,
}

/// The outputs of one validation batch (`VALIDATION_BATCH_END`, subscription
/// `VALIDATION_OUTPUTS`). Empty slices when not available.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct ValidationBatch<'a> {
    /// `batch_size × num_classes`, row-major.
    pub logits: RSlice<'a, f32>,
    /// The predicted class of each sample (the arg-max of its logits).
    pub predictions: RSlice<'a, i64>,
    /// The true class of each sample.
    pub labels: RSlice<'a, i64>,
    /// Columns of `logits`.
    pub num_classes: u32,
}

/// A few images with labels and predictions (`VALIDATION_END`, subscription `SAMPLE_IMAGES`).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct ImageBatch<'a> {
    /// `count × channels × height × width`, de-normalised to [0, 1].
    pub pixels: RSlice<'a, f32>,
    /// Images in `pixels`.
    pub count: u32,
    /// Channels of each image (1 or 3).
    pub channels: u32,
    /// Rows of each image.
    pub height: u32,
    /// Columns of each image.
    pub width: u32,
    /// The true class of each image.
    pub labels: RSlice<'a, i64>,
    /// The predicted class of each image.
    pub predictions: RSlice<'a, i64>,
}

/// What the training sampler drew for the current epoch (`TRAIN_EPOCH_START`, subscription
/// `SAMPLER`). All slices are empty when the run uses no tracking sampler.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct SamplerDraws<'a> {
    /// Dataset indices drawn this epoch, in order.
    pub indices: RSlice<'a, i64>,
    /// The sampler's weight for every training sample.
    pub weights: RSlice<'a, f64>,
    /// The label of every training sample.
    pub labels: RSlice<'a, i64>,
}

/// A file a monitor asks the host to write under the run's directory.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct Artifact<'a> {
    /// Relative path with `/` separators, e.g. `epoch_001/confusion_matrix.png`. Must not
    /// be absolute or contain `..`.
    pub path: RStr<'a>,
    /// The file's contents (or what to append).
    pub bytes: RSlice<'a, u8>,
    /// What the file is.
    pub kind: ArtifactKind,
    /// Replace or append.
    pub mode: WriteMode,
}

/// What the host offers a monitor during an event. Implemented by the host; a plugin calls
/// it through [`HostRef`] (the SDK wraps it in [`crate::Context`]).
#[sabi_trait]
pub trait HostFfi {
    /// Where training is.
    fn counters(&self) -> StepCounters;

    /// A scalar metric of the current event by name (`train_loss`, `train_loss_bits`,
    /// `train_acc`, `lr`, `wd`, `val_loss`, `val_acc`, …), if the host has it now.
    fn metric(&self, name: RStr<'_>) -> ROption<f64>;

    /// The model's trainable parameters, in a fixed order used by every per-parameter slice.
    fn parameters(&self) -> RSlice<'_, ParameterInfo>;

    /// L2 norm of each parameter's gradient, aligned with [`HostFfi::parameters`]. Computed
    /// once per step on the device and shared by every monitor. Empty outside
    /// `TRAIN_BATCH_END`.
    fn grad_norms(&self) -> RSlice<'_, f64>;

    /// L2 norm of each parameter, aligned with [`HostFfi::parameters`].
    fn weight_norms(&self) -> RSlice<'_, f64>;

    /// All gradients flattened in parameter order (`TRAIN_BATCH_END`, subscription
    /// `GRADIENT`); empty otherwise.
    fn gradient(&self) -> RSlice<'_, f32>;

    /// Hessian-vector product of the mean loss on the probe subsample: writes `H·vector` to
    /// `out` (both of length = number of trainable scalars) and returns the probe loss.
    /// Runs the model in eval mode and restores its mode. When the probe fits in one forward
    /// pass, the host keeps the probe's gradient graph between the products one hook call
    /// asks for (each further product is one backward pass) and drops it when the hook
    /// returns: no graph outlives the hook.
    fn hessian_vector_product(
        &mut self,
        probe: ProbeSpec,
        vector: RSlice<'_, f32>,
        out: RSliceMut<'_, f32>,
    ) -> RResult<f64, RString>;

    /// Mean loss on the probe subsample, in eval mode.
    fn probe_loss(&mut self, probe: ProbeSpec) -> RResult<f64, RString>;

    /// The current validation batch (`VALIDATION_BATCH_END`, subscription
    /// `VALIDATION_OUTPUTS`).
    fn validation_batch(&self) -> ValidationBatch<'_>;

    /// Sample validation images (`VALIDATION_END`, subscription `SAMPLE_IMAGES`).
    fn sample_images(&self) -> ImageBatch<'_>;

    /// Class names, indexed by label.
    fn class_names(&self) -> RSlice<'_, RString>;

    /// The sampler's draws for this epoch (subscription `SAMPLER`).
    fn sampler_draws(&self) -> SamplerDraws<'_>;

    /// Record a scalar metric at the current step. The host writes it to every sink;
    /// non-finite values are dropped with a warning.
    fn log_scalar(&mut self, name: RStr<'_>, value: f64);

    /// Write a file under the run's artifact directory.
    fn write_artifact(&mut self, artifact: Artifact<'_>) -> RResult<(), RString>;

    /// Log a message under the monitor's name.
    fn log_message(&mut self, level: LogLevel, message: RStr<'_>);

    /// Ask the host to stop training after the current step, for `reason`.
    fn request_stop(&mut self, reason: RStr<'_>);

    /// A capability by name, for additions after 1.0 that need no layout change. Unknown
    /// names return an error that says so.
    #[sabi(last_prefix_field)]
    fn query(&mut self, name: RStr<'_>, input: RSlice<'_, u8>) -> RResult<RVec<u8>, RString>;
}

/// A borrowed handle to the host, valid for one call.
pub type HostRef<'a> = HostFfi_TO<'a, RMut<'a, ()>>;

/// A monitor as the host sees it: one entry point, called for each event the monitor
/// subscribed to.
#[sabi_trait]
pub trait MonitorFfi {
    /// Handle one event. An `RErr` carries the reason, which the host records.
    #[sabi(last_prefix_field)]
    fn on_event(&mut self, event: EventKind, host: HostRef<'_>) -> RResult<(), RString>;
}

/// An owned monitor.
pub type MonitorBox = MonitorFfi_TO<'static, RBox<()>>;

/// What a plugin says about itself.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct PluginInfo {
    /// The name `[[monitors]] name = "…"` refers to.
    pub name: RString,
    /// The plugin's own version.
    pub version: RString,
    /// One line for `vigil plugins`.
    pub description: RString,
    /// The version of `vigil-plugin-api` the plugin was built against.
    pub api_version: RString,
    /// Events the host should deliver.
    pub events: EventSet,
    /// Data the host should prepare.
    pub subscriptions: Subscriptions,
}

/// The root module every plugin library exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// Describe the plugin. Must not fail.
    pub info: extern "C" fn() -> PluginInfo,
    /// Build a monitor from its settings (the `[monitors.settings]` table as TOML text).
    #[sabi(last_prefix_field)]
    pub new_monitor:
        extern "C" fn(settings: RStr<'_>, host: HostRef<'_>) -> RResult<MonitorBox, RString>,
}

/// The version of the types in this module: `<major>.0.0`, so 1.0.0 for all of 1.x.
/// abi_stable refuses a plugin whose version has a lower minor than the host's, so a host
/// whose ABI said 1.1 would refuse every plugin built against 1.0. What later 1.x releases
/// add travels as data; [`crate::API_VERSION`] (the crate's version, which a plugin reports in
/// [`PluginInfo::api_version`]) says which of those additions a plugin knows.
pub const ABI_VERSION: &str = concat!(env!("CARGO_PKG_VERSION_MAJOR"), ".0.0");

impl RootModule for PluginModuleRef {
    declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "vigil_plugin";
    const NAME: &'static str = "vigil_plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new(ABI_VERSION);
}
