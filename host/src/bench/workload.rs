//! The training workload W1, bare and monitored, measured in one process.
//!
//! W1 is the small CNN (conv32 → conv64 → fc128) on Fashion-MNIST (synthetic 28×28 images
//! when the dataset is absent), batch 128, SGD with momentum 0.9, 2 intra-op threads, with
//! the host's validation every ¼ epoch. Every configuration (bare, each monitor alone at its
//! default cadence, all monitors together) is a separate [`Trainer`] with its own model,
//! monitors and sinks, sharing one copy of the dataset. After a warm-up, each repeat trains
//! `steps` steps of every configuration, the configurations taking turns every `chunk_steps`
//! steps in a random order, so that what the machine does meanwhile falls on all of them
//! alike. The plain PyTorch loop (`bench/python_baseline.py`) runs its repeat's steps in one
//! go at some point of each repeat.
//!
//! Overhead of a configuration in one repeat = (its segment time − the bare segment time) /
//! the bare segment's training time (the bare segment time without its validation passes),
//! so validation never dilutes it. Two identical bare configurations run; the second one's
//! overhead against the first is the noise floor, and monitored configurations are measured
//! against the mean of both: two identical configurations differed by up to 0.9 % (median of
//! 5 repeats) in the runs behind the README, and a single reference passes its share of that
//! on to every overhead alike. A segment of 1000 steps holds exactly one curvature
//! estimate (every 1000 steps), twenty gradient logs (every 50) and about eight validations,
//! so each segment's cost is already amortised at the default cadences.

use std::cell::Cell;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::rc::Rc;
use std::time::Instant;

use serde::Serialize;

use super::{peak_rss_mib, Measurement};
use crate::config::Settings;
use crate::data::{self, Dataset};
use crate::error::{Error, Result};
use crate::plugin::{PluginHost, PluginSearch};
use crate::rng::SplitMix64;
use crate::sink::{Background, JsonlSink, Record, Sink, TensorBoardSink};
use crate::train::Trainer;

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

/// The second bare configuration, whose overhead is the benchmark's noise floor.
pub const CONTROL: &str = "bare (control)";

/// The bare configuration with the weighted sampler: the reference of the configurations that
/// measure `sampler-distribution`, which idles without a sampler that reports its draws.
pub const BARE_WEIGHTED: &str = "bare (weighted sampler)";

/// Overhead targets, in percent of the bare step time.
const TARGET_EACH: f64 = 1.0;
const TARGET_CURVATURE: f64 = 2.0;
const TARGET_ALL: f64 = 3.0;
/// Host steps/s over the Python loop's.
const TARGET_SPEEDUP: f64 = 1.1;

/// What to run.
#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    /// Fashion-MNIST's directory; synthetic 28×28 images when it has no dataset.
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
    pub batch_size: usize,
    pub threads: usize,
    /// The Python loop to run beside the host, if any.
    pub python: Option<PythonBaseline>,
    /// Where the configurations' runs write (removed afterwards).
    pub scratch: PathBuf,
}

/// An interpreter with PyTorch and the baseline script.
#[derive(Debug, Clone)]
pub struct PythonBaseline {
    pub interpreter: PathBuf,
    pub script: PathBuf,
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
    /// Time inside the monitors' hooks per bare training time, in percent, over all repeats.
    pub in_hooks_pct: f64,
    /// The overhead's upper bound: the larger of the high end of its 90 % bootstrap interval
    /// and the time in hooks (a floor under the true overhead). The verdict is from this.
    pub upper_pct: Option<f64>,
    pub target_pct: Option<f64>,
    pub meets_target: Option<bool>,
}

/// The Python loop beside the host.
#[derive(Debug, Clone, Serialize)]
pub struct PythonResult {
    /// "plain", or "vigil's allocator setting" (glibc's mmap and trim thresholds as vigil sets
    /// them for itself, through `GLIBC_TUNABLES`).
    pub variant: String,
    /// `GLIBC_TUNABLES` as the Python process saw it.
    pub glibc_tunables: String,
    pub interpreter: String,
    pub torch: String,
    pub ms_per_step: Measurement,
    /// Host bare training steps/s over the Python loop's, per repeat.
    pub host_speedup: Measurement,
    pub target: f64,
    /// Whether the low end of the speed-up's 90 % bootstrap interval meets the target.
    pub meets_target: bool,
}

/// What the curvature monitor's estimates cost.
#[derive(Debug, Clone, Serialize)]
pub struct CurvatureCost {
    pub estimates: u64,
    pub hvps_per_estimate: f64,
    pub ms_per_hvp: f64,
}

/// Everything `vigil bench` measured on W1.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadReport {
    pub workload: String,
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
    pub python: Vec<PythonResult>,
    pub curvature: Option<CurvatureCost>,
    pub peak_rss_mib: Option<f64>,
    pub notes: Vec<String>,
}

/// One timed segment.
#[derive(Debug, Clone, Copy, Default)]
struct Segment {
    wall: f64,
    validation: f64,
    validations: usize,
    steps: u64,
}

impl Segment {
    fn add(&mut self, other: Segment) {
        self.wall += other.wall;
        self.validation += other.validation;
        self.validations += other.validations;
        self.steps += other.steps;
    }
}

/// Counts the curvature monitor's estimates and their HVPs as they are logged.
#[derive(Default)]
struct CurvatureLog {
    estimates: Cell<u64>,
    hvps: Cell<f64>,
}

struct CurvatureCapture(Rc<CurvatureLog>);

impl Sink for CurvatureCapture {
    fn write(&mut self, record: &Record) -> Result<()> {
        if let Some((_, hvps)) = record.metrics.iter().find(|(k, _)| k == "curvature/hvps") {
            self.0.estimates.set(self.0.estimates.get() + 1);
            self.0.hvps.set(self.0.hvps.get() + hvps);
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

/// One configuration in training.
struct Lane {
    name: String,
    monitors: Vec<String>,
    /// Trains with the weighted sampler (the configurations with `sampler-distribution`).
    weighted: bool,
    trainer: Trainer,
    plugins: PluginHost,
    sinks: Vec<Box<dyn Sink>>,
    curvature: Rc<CurvatureLog>,
    segments: Vec<Segment>,
    hooks_before: f64,
    hvps_before: (u64, f64),
    curvature_before: (u64, f64),
}

impl Lane {
    fn run_segment(&mut self, steps: u64) -> Result<Segment> {
        let until = self.trainer.global_step() + steps;
        let validation = self.trainer.validation_seconds();
        let started = Instant::now();
        let summary = self
            .trainer
            .advance(&mut self.sinks, &mut self.plugins, until)?;
        let wall = started.elapsed().as_secs_f64();
        if summary.steps != steps {
            return Err(Error::Bench(format!(
                "configuration `{}` trained {} steps instead of {steps}{}",
                self.name,
                summary.steps,
                summary
                    .stopped_by
                    .map(|(monitor, reason)| format!(": monitor `{monitor}` stopped it: {reason}"))
                    .unwrap_or_default()
            )));
        }
        Ok(Segment {
            wall,
            validation: self.trainer.validation_seconds() - validation,
            validations: summary.validations.len(),
            steps,
        })
    }

    /// Start counting hook time and HVPs from here (after the warm-up).
    fn mark(&mut self) {
        self.hooks_before = self.plugins.hook_seconds();
        self.hvps_before = self.trainer.hvp_stats();
        self.curvature_before = (self.curvature.estimates.get(), self.curvature.hvps.get());
    }
}

/// The Python that `scripts/bootstrap.sh` installs PyTorch into, when it is there.
pub fn bootstrap_python() -> Option<PathBuf> {
    let cache = match std::env::var_os("VIGIL_CACHE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))?
            .join("vigil"),
    };
    let python = cache.join("torch-2.13.0/bin/python");
    python.is_file().then_some(python)
}

/// The W1 settings, with `monitors` at their defaults.
fn w1_settings(
    options: &WorkloadOptions,
    monitors: &[String],
    epochs: usize,
    weighted: bool,
) -> Result<Settings> {
    let mut text = format!(
        r#"name = "bench-w1"
sampler = "{sampler}"
seed = 0
epochs = {epochs}
batch_size = {batch}
threads = {threads}
data = "fashion-mnist"
data_dir = {data_dir}
synthetic_fallback = true
plugin_dirs = [{dirs}]

[synthetic]
train_size = 60000
test_size = 10000
classes = 10
channels = 1
image_size = 28

[model]
kind = "cnn"

[optim]
kind = "sgd"
lr = 0.05
momentum = 0.9

[checkpoint]
enabled = false
"#,
        sampler = if weighted { "weighted" } else { "shuffle" },
        batch = options.batch_size,
        threads = options.threads,
        data_dir = toml_string(&options.data_dir),
        dirs = options
            .plugin_dirs
            .iter()
            .map(|dir| toml_string(dir))
            .collect::<Vec<_>>()
            .join(", "),
    );
    for monitor in monitors {
        text.push_str(&format!("\n[[monitors]]\nname = \"{monitor}\"\n"));
    }
    Settings::from_toml(&text, Path::new("<vigil bench: W1>"))
}

fn toml_string(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

/// The environment that gives a Python process the allocator setting vigil gives itself
/// ([`crate::memory::reuse_freed_buffers`]): glibc's tunables for the same thresholds.
pub const PYTHON_ALLOCATOR_TUNABLES: &str =
    "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824";

/// The Python loop, serving one segment per request.
struct PythonLane {
    variant: &'static str,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    interpreter: String,
    torch: String,
    glibc_tunables: String,
    segments: Vec<f64>,
}

impl PythonLane {
    fn start(
        baseline: &PythonBaseline,
        options: &WorkloadOptions,
        tuned: bool,
    ) -> Result<PythonLane> {
        let mut command = Command::new(&baseline.interpreter);
        if tuned {
            command.env("GLIBC_TUNABLES", PYTHON_ALLOCATOR_TUNABLES);
        } else {
            command.env_remove("GLIBC_TUNABLES");
        }
        let mut child = command
            .arg(&baseline.script)
            .arg("--serve")
            .args(["--data-dir", &options.data_dir.display().to_string()])
            .args(["--batch-size", &options.batch_size.to_string()])
            .args(["--threads", &options.threads.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| {
                Error::Bench(format!(
                    "cannot start the Python baseline with {}: {err} (give --python PATH, or --no-python)",
                    baseline.interpreter.display()
                ))
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(Error::Bench("the Python baseline has no pipes".into()));
        };
        let mut lane = PythonLane {
            variant: if tuned {
                "vigil's allocator setting"
            } else {
                "plain"
            },
            child,
            stdin,
            stdout: BufReader::new(stdout),
            interpreter: baseline.interpreter.display().to_string(),
            torch: String::new(),
            glibc_tunables: String::new(),
            segments: Vec::new(),
        };
        let ready = lane.answer()?;
        lane.torch = ready["torch"].as_str().unwrap_or("?").to_string();
        lane.glibc_tunables = ready["glibc_tunables"].as_str().unwrap_or("").to_string();
        Ok(lane)
    }

    fn answer(&mut self) -> Result<serde_json::Value> {
        let mut line = String::new();
        let read = self
            .stdout
            .read_line(&mut line)
            .map_err(|err| Error::Bench(format!("reading the Python baseline: {err}")))?;
        if read == 0 {
            let status = self.child.wait().ok();
            return Err(Error::Bench(format!(
                "the Python baseline ({}) exited ({}) before answering; run it by hand to see why: {} bench/python_baseline.py",
                self.interpreter,
                status.map_or_else(|| "?".into(), |s| s.to_string()),
                self.interpreter
            )));
        }
        serde_json::from_str(&line).map_err(|err| {
            Error::Bench(format!(
                "the Python baseline answered `{}`: {err}",
                line.trim()
            ))
        })
    }

    /// Run `steps` steps; returns ms per step.
    fn segment(&mut self, steps: u64) -> Result<f64> {
        writeln!(self.stdin, "{steps}")
            .and_then(|()| self.stdin.flush())
            .map_err(|err| Error::Bench(format!("writing to the Python baseline: {err}")))?;
        let answer = self.answer()?;
        answer["ms_per_step"].as_f64().ok_or_else(|| {
            Error::Bench(format!(
                "the Python baseline answered {answer} without ms_per_step"
            ))
        })
    }
}

impl Drop for PythonLane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run W1 bare, with each monitor alone and with all of them, interleaved, beside the Python
/// loop when one is given. `progress` hears what is happening.
pub fn run_workload(
    options: &WorkloadOptions,
    mut progress: impl FnMut(&str),
) -> Result<WorkloadReport> {
    if options.steps == 0 || options.repeats == 0 {
        return Err(Error::Bench(
            "--steps and --repeats must be at least 1".into(),
        ));
    }
    // A second bare configuration measures nothing but the benchmark's own noise floor: its
    // "overhead" is what a monitor costing nothing would show.
    let mut configs: Vec<(String, Vec<String>, bool)> = vec![
        ("bare".into(), Vec::new(), false),
        (CONTROL.into(), Vec::new(), false),
    ];
    // `sampler-distribution` reports the sampler's draws, so where it is measured the sampler
    // is the weighted one, against a bare configuration with the same sampler.
    let weighted = options.monitors.iter().any(|m| m == "sampler-distribution");
    if weighted {
        configs.push((BARE_WEIGHTED.into(), Vec::new(), true));
    }
    for monitor in &options.monitors {
        let with_sampler = monitor == "sampler-distribution";
        configs.push((monitor.clone(), vec![monitor.clone()], with_sampler));
    }
    if options.monitors.len() > 1 {
        configs.push(("all monitors".into(), options.monitors.clone(), weighted));
    }
    let probe = w1_settings(options, &[], 1, false)?;
    let dataset: Dataset = data::load(&probe.data.source)?;
    let batches = dataset.train.len().div_ceil(options.batch_size) as u64;
    let total_steps = options.warmup_steps + options.steps * options.repeats as u64;
    let epochs = (total_steps / batches.max(1) + 2) as usize;

    let mut lanes: Vec<Lane> = Vec::new();
    for (index, (name, monitors, weighted)) in configs.iter().enumerate() {
        let settings = w1_settings(options, monitors, epochs, *weighted)?;
        let trainer = match lanes.first() {
            Some(first) => Trainer::sharing_data(&settings, &dataset, &first.trainer)?,
            None => Trainer::new(&settings, &dataset)?,
        };
        let dirs = settings.plugin_search_dirs();
        let mut plugins = PluginHost::load(
            &settings.monitors,
            &PluginSearch {
                dirs: &dirs,
                allow_insecure: false,
                report_dir: None,
            },
            trainer.run_facts(),
            &trainer.services(),
            trainer.counters(0, 0),
        )?;
        let dir = options
            .scratch
            .join(format!("{index:02}-{}", name.replace(' ', "-")));
        std::fs::create_dir_all(&dir).map_err(|source| Error::io(&dir, source))?;
        plugins.set_artifact_dir(dir.join("artifacts"));
        let curvature = Rc::new(CurvatureLog::default());
        let sinks: Vec<Box<dyn Sink>> = vec![
            Box::new(Background::spawn(
                "metrics.jsonl",
                Box::new(JsonlSink::create(&dir.join("metrics.jsonl"))?),
            )),
            Box::new(Background::spawn(
                "tensorboard",
                Box::new(TensorBoardSink::create(&dir.join("tensorboard"))?),
            )),
            Box::new(CurvatureCapture(Rc::clone(&curvature))),
        ];
        lanes.push(Lane {
            name: name.clone(),
            monitors: monitors.clone(),
            weighted: *weighted,
            trainer,
            plugins,
            sinks,
            curvature,
            segments: Vec::new(),
            hooks_before: 0.0,
            hvps_before: (0, 0.0),
            curvature_before: (0, 0.0),
        });
    }

    let mut pythons = Vec::new();
    if let Some(baseline) = &options.python {
        progress("starting the Python baseline, plain and with vigil's allocator setting");
        for tuned in [false, true] {
            pythons.push(PythonLane::start(baseline, options, tuned)?);
        }
    }

    progress(&format!(
        "warm-up: {} steps of each of {} configurations",
        options.warmup_steps,
        lanes.len()
    ));
    for lane in &mut lanes {
        lane.trainer.begin(&mut lane.plugins, &mut lane.sinks)?;
        if options.warmup_steps > 0 {
            lane.run_segment(options.warmup_steps)?;
        }
        lane.mark();
    }
    for python in &mut pythons {
        if options.warmup_steps > 0 {
            python.segment(options.warmup_steps)?;
        }
    }

    // Within a repeat the configurations take turns every `chunk_steps` steps, in a fresh
    // random order each round, so that whatever else the machine does falls on all of them
    // alike, and no configuration is always the one that starts right after another (a
    // fixed rotation made the bare configuration always follow the Python process, which
    // cost it 1–2 % in cold caches and sleeping threads). The Python loop runs its repeat in
    // one go, in a different round each repeat: switching processes is what it would pay for.
    let chunk = options.chunk_steps.clamp(1, options.steps);
    let rounds = options.steps.div_ceil(chunk);
    let mut order_rng = SplitMix64::derived(0, "bench-order");
    for repeat in 0..options.repeats {
        let started = Instant::now();
        let mut segments = vec![Segment::default(); lanes.len()];
        for round in 0..rounds {
            let steps = chunk.min(options.steps - round * chunk);
            for index in order_rng.permutation(lanes.len()) {
                let lane = &mut lanes[index as usize];
                segments[index as usize].add(lane.run_segment(steps)?);
            }
            // Each Python variant in its own round, a different one each repeat.
            for (variant, python) in pythons.iter_mut().enumerate() {
                let its_round = (repeat as u64 * 7 + variant as u64 * rounds / 2) % rounds;
                if round == its_round {
                    let ms = python.segment(options.steps)?;
                    python.segments.push(ms);
                }
            }
        }
        for (lane, segment) in lanes.iter_mut().zip(segments) {
            lane.segments.push(segment);
        }
        progress(&format!(
            "repeat {}/{} done in {:.0} s",
            repeat + 1,
            options.repeats,
            started.elapsed().as_secs_f64()
        ));
    }
    for lane in &mut lanes {
        lane.trainer.end(&mut lane.plugins, &mut lane.sinks)?;
        for sink in &mut lane.sinks {
            sink.flush()?;
        }
    }

    let report = summarize(options, &dataset, &lanes, &pythons);
    drop(lanes);
    let _ = std::fs::remove_dir_all(&options.scratch);
    Ok(report)
}

fn summarize(
    options: &WorkloadOptions,
    dataset: &Dataset,
    lanes: &[Lane],
    pythons: &[PythonLane],
) -> WorkloadReport {
    let (bare, control) = (&lanes[0], &lanes[1]);
    let bare_train: Vec<f64> = bare
        .segments
        .iter()
        .map(|s| s.wall - s.validation)
        .collect();
    let bare_train_ms = Measurement::of(
        "bare training step",
        "ms",
        bare_train
            .iter()
            .zip(&bare.segments)
            .map(|(train, s)| train * 1e3 / s.steps as f64)
            .collect(),
    );
    let bare_train_total: f64 = bare_train.iter().sum();
    let mut notes = Vec::new();
    let configs: Vec<ConfigResult> = lanes
        .iter()
        .enumerate()
        .map(|(index, lane)| {
            let ms_per_step = Measurement::of(
                &lane.name,
                "ms",
                lane.segments
                    .iter()
                    .map(|s| s.wall * 1e3 / s.steps as f64)
                    .collect(),
            );
            let is_bare = lane.monitors.is_empty();
            // The control against bare: the noise floor. A monitored configuration against
            // the mean of both bare ones, so that neither's luck (a slower repeat, a less
            // favourable memory layout) tilts every overhead one way.
            let weighted_bare = lanes
                .iter()
                .find(|l| l.weighted && l.monitors.is_empty())
                .filter(|_| lane.weighted && !is_bare);
            let overhead_pct = (index > 0).then(|| {
                let reference: Vec<(f64, f64)> = if let Some(reference) = weighted_bare {
                    reference
                        .segments
                        .iter()
                        .map(|r| (r.wall, r.wall - r.validation))
                        .collect()
                } else if is_bare {
                    bare.segments
                        .iter()
                        .zip(&bare_train)
                        .map(|(b, &train)| (b.wall, train))
                        .collect()
                } else {
                    bare.segments
                        .iter()
                        .zip(&control.segments)
                        .map(|(b, c)| {
                            let train = (b.wall - b.validation + c.wall - c.validation) / 2.0;
                            ((b.wall + c.wall) / 2.0, train)
                        })
                        .collect()
                };
                Measurement::of(
                    &lane.name,
                    "%",
                    lane.segments
                        .iter()
                        .zip(reference)
                        .map(|(s, (wall, train))| 100.0 * (s.wall - wall) / train)
                        .collect(),
                )
            });
            let target_pct = (!is_bare).then(|| {
                if lane.monitors.len() > 1 {
                    TARGET_ALL
                } else if lane.monitors[0] == "curvature" {
                    TARGET_CURVATURE
                } else {
                    TARGET_EACH
                }
            });
            let in_hooks_pct =
                100.0 * (lane.plugins.hook_seconds() - lane.hooks_before) / bare_train_total;
            let upper_pct = overhead_pct.as_ref().map(|o| o.high.max(in_hooks_pct));
            ConfigResult {
                name: lane.name.clone(),
                monitors: lane.monitors.clone(),
                sampler: if lane.weighted { "weighted" } else { "shuffle" }.into(),
                meets_target: upper_pct.zip(target_pct).map(|(upper, t)| upper <= t),
                ms_per_step,
                overhead_pct,
                in_hooks_pct,
                upper_pct,
                target_pct,
            }
        })
        .collect();
    let validations: Vec<f64> = bare
        .segments
        .iter()
        .filter(|s| s.validations > 0)
        .map(|s| s.validation * 1e3 / s.validations as f64)
        .collect();
    let mut python: Vec<PythonResult> = pythons
        .iter()
        .filter(|p| !p.segments.is_empty())
        .map(|python| {
            let speedups: Vec<f64> = python
                .segments
                .iter()
                .zip(&bare_train)
                .zip(&bare.segments)
                .map(|((py, train), s)| py / (train * 1e3 / s.steps as f64))
                .collect();
            let host_speedup = Measurement::of("host steps/s ÷ Python steps/s", "×", speedups);
            PythonResult {
                variant: python.variant.to_string(),
                glibc_tunables: python.glibc_tunables.clone(),
                interpreter: python.interpreter.clone(),
                torch: python.torch.clone(),
                ms_per_step: Measurement::of("Python loop step", "ms", python.segments.clone()),
                meets_target: host_speedup.low >= TARGET_SPEEDUP,
                host_speedup,
                target: TARGET_SPEEDUP,
            }
        })
        .collect();
    // The faster Python loop first: the target is judged against it.
    python.sort_by(|a, b| a.ms_per_step.median.total_cmp(&b.ms_per_step.median));
    if python.is_empty() {
        notes.push("no Python baseline (give --python PATH to run bench/python_baseline.py beside the host)".into());
    }
    let curvature = lanes
        .iter()
        .find(|lane| lane.monitors == ["curvature"])
        .and_then(|lane| {
            let estimates = lane.curvature.estimates.get() - lane.curvature_before.0;
            let hvps = lane.curvature.hvps.get() - lane.curvature_before.1;
            let (calls, seconds) = lane.trainer.hvp_stats();
            let (calls, seconds) = (calls - lane.hvps_before.0, seconds - lane.hvps_before.1);
            (estimates > 0 && calls > 0).then(|| CurvatureCost {
                estimates,
                hvps_per_estimate: hvps / estimates as f64,
                ms_per_hvp: seconds * 1e3 / calls as f64,
            })
        });
    if configs.iter().any(|c| c.monitors == ["curvature"]) && curvature.is_none() {
        notes.push(
            "no curvature estimate fell in the timed segments; use --steps ≥ 1000 (its default cadence)"
                .into(),
        );
    }
    WorkloadReport {
        workload: format!(
            "W1: small CNN (conv32-conv64-fc128), batch {}, SGD momentum 0.9, {} intra-op threads, validation every 1/4 epoch",
            options.batch_size, options.threads
        ),
        dataset: dataset.name.clone(),
        threads: options.threads,
        batch_size: options.batch_size,
        steps_per_segment: options.steps,
        chunk_steps: options.chunk_steps.clamp(1, options.steps),
        warmup_steps: options.warmup_steps,
        repeats: options.repeats,
        bare_steps_per_second: 1e3 / bare_train_ms.median,
        bare_train_ms_per_step: bare_train_ms,
        validation_ms: (!validations.is_empty())
            .then(|| Measurement::of("validation pass", "ms", validations)),
        configs,
        python,
        curvature,
        peak_rss_mib: peak_rss_mib(),
        notes,
    }
}

/// The report as the table `vigil bench` prints.
pub fn workload_table(report: &WorkloadReport) -> String {
    let mut out = format!(
        "{}\ndata: {}; {} repeats of {} steps per configuration after {} warm-up steps, taking turns every {} steps\n\n",
        report.workload,
        report.dataset,
        report.repeats,
        report.steps_per_segment,
        report.warmup_steps,
        report.chunk_steps
    );
    let b = &report.bare_train_ms_per_step;
    out.push_str(&format!(
        "bare training step (validation excluded): {:.2} ms median ({:.2}–{:.2}) = {:.1} steps/s\n",
        b.median, b.min, b.max, report.bare_steps_per_second
    ));
    if let Some(v) = &report.validation_ms {
        out.push_str(&format!(
            "validation pass: {:.0} ms median ({:.0}–{:.0})\n",
            v.median, v.min, v.max
        ));
    }
    for (index, p) in report.python.iter().enumerate() {
        let judged = if index == 0 {
            format!(
                "target ≥ {:.1}× on its low end: {}",
                p.target,
                verdict(p.meets_target)
            )
        } else {
            "(the slower loop: not judged)".to_string()
        };
        out.push_str(&format!(
            "Python loop step, {} (torch {}): {:.2} ms median ({:.2}–{:.2}) = {:.1} steps/s\nhost speed-up over it: {:.2}× median ({:.2}–{:.2}), 90 % interval of the mean {:.2}–{:.2}; {judged}\n",
            p.variant,
            p.torch,
            p.ms_per_step.median,
            p.ms_per_step.min,
            p.ms_per_step.max,
            1e3 / p.ms_per_step.median,
            p.host_speedup.median,
            p.host_speedup.min,
            p.host_speedup.max,
            p.host_speedup.low,
            p.host_speedup.high,
        ));
    }
    let width = report
        .configs
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0)
        .max(13);
    out.push_str(&format!(
        "\n{:<width$}  {:>23}  {:>24}  {:>8}  {:>7}  {:>7}\n",
        "configuration", "ms/step (min–max)", "overhead % (min–max)", "in hooks", "upper", "target"
    ));
    for c in &report.configs {
        let step = format!(
            "{:.2} ({:.2}–{:.2})",
            c.ms_per_step.median, c.ms_per_step.min, c.ms_per_step.max
        );
        let overhead = c.overhead_pct.as_ref().map_or_else(
            || "—".to_string(),
            |o| format!("{:+.2} ({:+.2}…{:+.2})", o.median, o.min, o.max),
        );
        let target = match (c.target_pct, c.meets_target) {
            (Some(t), Some(ok)) => format!("≤{t:.0}% {}", verdict(ok)),
            _ => String::new(),
        };
        let upper = c
            .upper_pct
            .map_or_else(|| "—".to_string(), |u| format!("{u:+.2}%"));
        out.push_str(&format!(
            "{:<width$}  {:>23}  {:>24}  {:>7.2}%  {:>7}  {}\n",
            c.name, step, overhead, c.in_hooks_pct, upper, target
        ));
    }
    out.push_str(
        "upper: the high end of the overhead's 90 % bootstrap interval (over repeats) or the time in hooks, \
         whichever is larger; a target is met only when this upper bound meets it. \
         bare (control) is the noise floor: an identical configuration's overhead.\n",
    );
    if report.configs.iter().any(|c| c.sampler == "weighted") {
        out.push_str(&format!(
            "configurations with sampler-distribution train with the weighted sampler and are measured against {BARE_WEIGHTED}.\n"
        ));
    }
    if let Some(c) = &report.curvature {
        out.push_str(&format!(
            "\ncurvature: {:.1} HVPs per estimate, {:.1} ms per HVP ({} estimates timed)\n",
            c.hvps_per_estimate, c.ms_per_hvp, c.estimates
        ));
    }
    if let Some(rss) = report.peak_rss_mib {
        out.push_str(&format!(
            "peak RSS: {rss:.0} MiB (this process: all configurations, sharing one copy of the data)\n"
        ));
    }
    for note in &report.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    out
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}
