//! The training workloads, bare and monitored, measured in one process.
//!
//! - W1: the small CNN (conv32 → conv64 → fc128) on Fashion-MNIST (synthetic 28×28 images
//!   when the dataset is absent), SGD with momentum 0.9; bare, each monitor alone at its
//!   default cadence, and all monitors together.
//! - W2: the CIFAR ResNet-18 at width 0.5 on CIFAR-10 (synthetic 3×32×32 images when the
//!   dataset is absent), SGD with Nesterov momentum 0.9 and weight decay 5e-4, no
//!   augmentation; bare and all monitors together.
//!
//! Both: batch 128, 2 intra-op threads, the host's validation every ¼ epoch. Every
//! configuration is a separate trainer ([`super::lanes`]) with its own model, monitors and sinks, sharing one
//! copy of the dataset. After a warm-up, each repeat trains `steps` steps of every
//! configuration, the configurations taking turns every `chunk_steps` steps in a random order,
//! so that what the machine does meanwhile falls on all of them alike. The baseline loops
//! ([`super::baseline`]: plain PyTorch, plain and with vigil's allocator setting, on both
//! workloads; Lightning with the monitors as callbacks on W1) each run their repeat's steps in
//! one go at some point of each repeat.
//!
//! Overhead of a configuration in one repeat = (its segment time − the bare segment time) /
//! the bare segment's training time (the bare segment time without its validation passes),
//! so validation never dilutes it. Two identical bare configurations run; the second one's
//! overhead against the first is the noise floor, and monitored configurations are measured
//! against the mean of both: two identical configurations differed by up to 0.9 % (median of
//! 5 repeats) in the runs behind the README, and a single reference passes its share of that
//! on to every overhead alike. A segment of 1000 steps holds exactly one curvature
//! estimate (every 1000 steps), twenty gradient logs (every 50) and about eight validations
//! of W1, so each segment's cost is already amortised at the default cadences; a configuration
//! whose segments hold no curvature estimate is not judged.

use std::path::PathBuf;

use serde::Serialize;

use super::baseline::PythonBaseline;
use super::Measurement;

/// The monitors vigil ships; `vigil bench` measures each of those it finds.
pub const SHIPPED_MONITORS: [&str; 10] = [
    "gradient",
    "curvature",
    "noise",
    "loss-slope",
    "confusion-matrix",
    "sampler-distribution",
    "sample-visualization",
    "training-history",
    "model-info",
    "dataset-statistics",
];

/// The instrument plugins that `vigil bench --instruments` measures together, at two
/// cadences.
pub const INSTRUMENT_PLUGINS: [&str; 3] = ["gradient-tests", "step-quality", "gradient-histogram"];

/// The instrument plugins every 16 steps, and every step.
pub const INSTRUMENTS_16: &str = "instruments every 16 steps";
pub const INSTRUMENTS_EVERY: &str = "instruments every step";

/// Cockpit's economy configuration every 16 steps and every step (the Python loop's variants).
pub(super) const COCKPIT_16: &str = "Cockpit economy every 16 steps";
pub(super) const COCKPIT_EVERY: &str = "Cockpit economy every step";

/// The second bare configuration, whose overhead is the benchmark's noise floor.
pub const CONTROL: &str = "bare (control)";

/// The bare configuration with the weighted sampler: the reference of the configurations that
/// measure `sampler-distribution`, which idles without a sampler that reports its draws.
pub const BARE_WEIGHTED: &str = "bare (weighted sampler)";

/// The Lightning loop's variant.
pub(super) const LIGHTNING_VARIANT: &str = "all monitors as callbacks";

/// The configuration with every measured monitor.
pub const ALL: &str = "all monitors";

/// The bare configuration sending to an MLflow server (`--mlflow`), with system metrics at
/// their default interval.
pub const WATCHING: &str = "MLflow sink + system metrics";

/// Overhead targets, in percent of the bare step time.
pub(super) const TARGET_EACH: f64 = 0.5;
pub(super) const TARGET_CURVATURE: f64 = 2.0;
pub(super) const TARGET_ALL: f64 = 3.0;
/// The MLflow sink and system metrics together.
pub(super) const TARGET_WATCHING: f64 = 1.0;
/// The instrument plugins every 16 steps, and every step.
pub(super) const TARGET_INSTRUMENTS_16: f64 = 1.0;
pub(super) const TARGET_INSTRUMENTS_EVERY: f64 = 10.0;
/// Host steps/s over the Python loop's.
pub(super) const TARGET_SPEEDUP: f64 = 1.1;
/// Host steps/s with all monitors over Lightning's with the same monitors as callbacks.
pub(super) const TARGET_LIGHTNING: f64 = 1.5;
/// The host's bare step over the floor (the time inside ATen ops of the same step).
pub(super) const TARGET_FLOOR: f64 = 1.05;

/// Which workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Workload {
    W1,
    W2,
}

impl Workload {
    /// The name the baselines take (`--workload w1`).
    pub fn key(self) -> &'static str {
        match self {
            Workload::W1 => "w1",
            Workload::W2 => "w2",
        }
    }

    pub(super) fn describe(self, batch_size: usize, threads: usize) -> String {
        match self {
            Workload::W1 => format!(
                "W1: small CNN (conv32-conv64-fc128), batch {batch_size}, SGD momentum 0.9, {threads} intra-op threads, validation every 1/4 epoch"
            ),
            Workload::W2 => format!(
                "W2: CIFAR ResNet-18 at width 0.5 (2.8 M parameters), batch {batch_size}, SGD Nesterov momentum 0.9, weight decay 5e-4, no augmentation, {threads} intra-op threads, validation every 1/4 epoch"
            ),
        }
    }

    /// Each monitor alone as well as all together (W1), or only all together (W2).
    pub(super) fn each_alone(self) -> bool {
        self == Workload::W1
    }
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "w1" => Ok(Workload::W1),
            "w2" => Ok(Workload::W2),
            other => Err(format!("unknown workload `{other}`: expected w1 or w2")),
        }
    }
}

/// The batch both workloads are defined at, and their targets stated for.
pub const WORKLOAD_BATCH: usize = 128;

/// What to run.
#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    pub workload: Workload,
    /// The dataset's directory (W1: Fashion-MNIST's, W2: CIFAR-10's binary batches);
    /// synthetic images of the same shape when it has no dataset.
    pub data_dir: PathBuf,
    pub plugin_dirs: Vec<PathBuf>,
    /// The monitors measured alone and together.
    pub monitors: Vec<String>,
    /// Steps per timed segment (one repeat of a configuration).
    pub steps: u64,
    /// Steps a configuration trains before the next one takes its turn.
    pub chunk_steps: u64,
    /// Steps every configuration trains before the first timed segment.
    pub warmup_steps: u64,
    pub repeats: usize,
    /// While a target is neither met nor missed after `repeats`, more repeats, up to this
    /// many in all ...
    pub max_repeats: usize,
    /// ... and until this many seconds of timed repeats have passed.
    pub time_cap_s: f64,
    /// Images per step: [`WORKLOAD_BATCH`] for the workloads as defined.
    pub batch_size: usize,
    pub threads: usize,
    /// The Python loop to run beside the host, if any.
    pub python: Option<PythonBaseline>,
    /// The Lightning loop with the monitors as callbacks (W1 only), if any.
    pub lightning: Option<PythonBaseline>,
    /// Where the configurations' runs write (removed afterwards).
    pub scratch: PathBuf,
    /// An MLflow tracking server: measure the bare configuration sending to it, with system
    /// metrics ([`WATCHING`]).
    pub mlflow: Option<String>,
    /// Measure the instrument plugins ([`INSTRUMENTS_16`], [`INSTRUMENTS_EVERY`]) instead of
    /// `monitors`, beside Cockpit's economy configuration run by this Python (the bench venv's)
    /// when given (W1).
    pub instruments: bool,
    pub cockpit: Option<PythonBaseline>,
}

/// Cockpit's economy configuration in the plain PyTorch loop, against the same loop without
/// it and against vigil's instrument plugins at the same cadence.
#[derive(Debug, Clone, Serialize)]
pub struct CockpitResult {
    pub variant: String,
    pub ms_per_step: Measurement,
    /// Its overhead over the plain PyTorch loop (validation excluded on both sides), %.
    pub overhead_pct: Measurement,
    /// The host configuration it is set beside, and that configuration's overhead over bare.
    pub compared_with: String,
    pub host_overhead_pct: Option<Measurement>,
    /// Cockpit's step time over the host's with the instruments, per repeat.
    pub host_speedup: Measurement,
}

/// One configuration's results.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigResult {
    pub name: String,
    pub monitors: Vec<String>,
    /// "shuffle", or "weighted" where `sampler-distribution` is measured; a weighted
    /// configuration's overhead is against [`BARE_WEIGHTED`].
    pub sampler: String,
    /// Segment time per step, validation included.
    pub ms_per_step: Measurement,
    /// (segment − bare segment) / bare training time, in percent; `None` for bare.
    pub overhead_pct: Option<Measurement>,
    /// The same in the process's CPU time (validation left out in its share of wall time),
    /// beside the wall-time overhead: far less moved by other processes and machines; not
    /// part of the verdict.
    pub cpu_overhead_pct: Option<Measurement>,
    /// Time inside the monitors' hooks per bare training time, in percent, over all repeats.
    pub in_hooks_pct: f64,
    /// The host's time serving the monitors outside their hooks (data for their
    /// subscriptions, routing their output), per bare training time, in percent.
    pub in_service_pct: f64,
    /// The overhead's upper bound: the larger of the high end of its 90 % interval
    /// and the time in hooks (a floor under the true overhead). The verdict is from this.
    pub upper_pct: Option<f64>,
    pub target_pct: Option<f64>,
    /// Whether the upper bound meets the target.
    pub meets_target: Option<bool>,
    /// The overhead's lower bound: the larger of the low end of its 90 % interval
    /// and the time in hooks plus service.
    pub lower_pct: Option<f64>,
    /// `met` (the upper bound meets the target), `missed` (the lower bound misses it),
    /// `undecided` (neither, when the repeats or the time ran out), `not judged`; `None` for
    /// the bare configurations.
    pub verdict: Option<&'static str>,
}

impl ConfigResult {
    /// Neither met nor missed yet.
    pub fn undecided(&self) -> bool {
        self.verdict == Some(UNDECIDED)
    }
}

/// A verdict that more repeats may still decide.
pub const UNDECIDED: &str = "undecided";

/// Met when the upper bound meets the target, missed when the lower bound misses it.
pub fn judge(target: f64, upper: Option<f64>, lower: Option<f64>, unjudged: bool) -> &'static str {
    match (upper, lower) {
        _ if unjudged => "not judged",
        (Some(upper), _) if upper <= target => "met",
        (_, Some(lower)) if lower > target => "missed",
        _ => UNDECIDED,
    }
}

/// Whether another repeat of `per_repeat_s` seconds fits: fewer than `max_repeats` so far, and
/// the timed repeats stay within `cap_s`.
pub fn another_repeat_fits(done: usize, max_repeats: usize, elapsed_s: f64, cap_s: f64) -> bool {
    let per_repeat = elapsed_s / done.max(1) as f64;
    done < max_repeats && elapsed_s + per_repeat <= cap_s
}

/// A baseline loop beside the host.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineResult {
    /// "PyTorch" or "Lightning".
    pub framework: String,
    /// "plain", "vigil's allocator setting" (glibc's mmap and trim thresholds as vigil sets
    /// them for itself, through `GLIBC_TUNABLES`), or "all monitors as callbacks".
    pub variant: String,
    /// `GLIBC_TUNABLES` as the process saw it.
    pub glibc_tunables: String,
    pub interpreter: String,
    pub torch: String,
    pub lightning: Option<String>,
    /// Its segment time per step (for Lightning validation included, as in the host's).
    pub ms_per_step: Measurement,
    /// The host configuration it is compared with: "bare" (training time, validation
    /// excluded) or "all monitors" (segment time, validation included).
    pub compared_with: String,
    /// That host configuration's steps/s over this loop's, per repeat.
    pub host_speedup: Measurement,
    pub target: f64,
    /// Whether the low end of the speed-up's 90 % interval meets the target.
    pub meets_target: bool,
}

/// What the curvature monitor's estimates cost.
#[derive(Debug, Clone, Serialize)]
pub struct CurvatureCost {
    pub estimates: u64,
    pub hvps_per_estimate: f64,
    pub ms_per_hvp: f64,
}

/// Everything `vigil bench` measured on one workload.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadReport {
    pub workload: Workload,
    pub description: String,
    pub dataset: String,
    pub threads: usize,
    pub batch_size: usize,
    pub steps_per_segment: u64,
    pub chunk_steps: u64,
    pub warmup_steps: u64,
    pub repeats: usize,
    /// Bare training time per step, validation excluded.
    pub bare_train_ms_per_step: Measurement,
    pub bare_steps_per_second: f64,
    /// One validation pass of the bare configuration.
    pub validation_ms: Option<Measurement>,
    pub configs: Vec<ConfigResult>,
    /// The Python loop, plain and with vigil's allocator setting; the speed-up target is
    /// judged against the faster of the two.
    pub python: Vec<BaselineResult>,
    /// Lightning with the monitors as callbacks, against the host with all monitors.
    pub lightning: Option<BaselineResult>,
    pub curvature: Option<CurvatureCost>,
    /// The floor under the step, where the plain Python loop ran.
    pub floor: Option<FloorResult>,
    /// Cockpit beside the instrument plugins (`--instruments`).
    pub cockpit: Vec<CockpitResult>,
    pub peak_rss_mib: Option<f64>,
    pub notes: Vec<String>,
}

/// The host's bare step against the floor: the time inside ATen ops per step of the plain
/// PyTorch loop, by PyTorch's profiler (self CPU time), measured once per repeat right after it.
#[derive(Debug, Clone, Serialize)]
pub struct FloorResult {
    pub aten_ms_per_step: Measurement,
    /// The host's bare training ms per step over the floor, per repeat.
    pub host_over_floor: Measurement,
    pub target: f64,
    /// `met` (upper bound ≤ target), `missed` (lower bound > target) or `undecided`.
    pub verdict: &'static str,
}

/// One timed segment.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Segment {
    pub(super) wall: f64,
    /// The process's CPU seconds over the segment (see [`super::cpu`]).
    pub(super) cpu: f64,
    pub(super) validation: f64,
    pub(super) validations: usize,
    pub(super) steps: u64,
}

impl Segment {
    pub(super) fn add(&mut self, other: Segment) {
        self.wall += other.wall;
        self.cpu += other.cpu;
        self.validation += other.validation;
        self.validations += other.validations;
        self.steps += other.steps;
    }
}

/// What one configuration measured, for the verdicts.
pub(super) struct LaneMeasure {
    pub(super) name: String,
    pub(super) monitors: Vec<String>,
    /// Trained with the weighted sampler.
    pub(super) weighted: bool,
    /// Sends to MLflow and samples system metrics ([`WATCHING`]).
    pub(super) watching: bool,
    /// The timed segments, one per repeat.
    pub(super) segments: Vec<Segment>,
    /// Seconds in the monitors' hooks over the timed segments.
    pub(super) hook_seconds: f64,
    /// Seconds the training thread spent serving them outside their hooks.
    pub(super) service_seconds: f64,
    /// Curvature estimates logged over the timed segments, and their Hessian-vector products.
    pub(super) curvature_estimates: u64,
    pub(super) curvature_hvps: f64,
    /// Hessian-vector products the trainer computed over the timed segments, and their time.
    pub(super) hvps: (u64, f64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_met_missed_or_undecided_by_their_bounds() {
        assert_eq!(judge(1.0, Some(0.9), Some(0.1), false), "met");
        assert_eq!(judge(1.0, Some(1.0), Some(0.1), false), "met");
        assert_eq!(judge(1.0, Some(2.0), Some(1.1), false), "missed");
        assert_eq!(judge(1.0, Some(2.0), Some(0.5), false), UNDECIDED);
        assert_eq!(judge(1.0, Some(0.5), Some(0.1), true), "not judged");
        assert_eq!(judge(1.0, None, None, false), UNDECIDED);
    }

    #[test]
    fn repeats_go_on_within_the_cap() {
        // 5 repeats took 10 min: a sixth fits in an hour, not in 11 min.
        assert!(another_repeat_fits(5, 15, 600.0, 3600.0));
        assert!(!another_repeat_fits(5, 15, 600.0, 660.0));
        assert!(!another_repeat_fits(15, 15, 600.0, 3600.0));
    }
}
