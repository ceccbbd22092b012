//! Running a workload: every configuration a [`Trainer`] of its own with its own hub (monitors
//! and sinks), sharing one copy of the dataset, trained in turns through the trainer's public
//! phases ([`Trainer::start`], [`Trainer::train_until`], [`Trainer::finish`]); what each
//! measured goes to [`super::workload`] for the verdicts.

use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use super::baseline::ExternalLoop;
use super::cpu::process_cpu_seconds;
use super::summary::summarize;
use super::workload::{
    another_repeat_fits, LaneMeasure, Segment, Workload, WorkloadOptions, WorkloadReport, ALL,
    BARE_WEIGHTED, COCKPIT_16, COCKPIT_EVERY, CONTROL, INSTRUMENTS_16, INSTRUMENTS_EVERY,
    INSTRUMENT_PLUGINS, LIGHTNING_VARIANT, SHIPPED_MONITORS, WATCHING,
};
use crate::config::Settings;
use crate::data::{self, Dataset};
use crate::error::{Error, Result};
use crate::hub::RunHub;
use crate::rng::SplitMix64;
use crate::run_dir::RunLayout;
use crate::sink::{Record, Sink};
use crate::train::Trainer;

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
    /// Sends to MLflow and samples system metrics.
    watching: bool,
    trainer: Trainer,
    hub: RunHub,
    curvature: Rc<CurvatureLog>,
    segments: Vec<Segment>,
    hooks_before: f64,
    service_before: f64,
    /// Hessian-vector products and their seconds since [`Lane::mark`].
    hvps: (u64, f64),
    curvature_before: (u64, f64),
}

impl Lane {
    /// What the lane measured since [`Lane::mark`].
    fn measure(&self) -> LaneMeasure {
        LaneMeasure {
            name: self.name.clone(),
            monitors: self.monitors.clone(),
            weighted: self.weighted,
            watching: self.watching,
            segments: self.segments.clone(),
            hook_seconds: self.hub.hook_seconds() - self.hooks_before,
            service_seconds: self.hub.service_seconds() - self.service_before,
            curvature_estimates: self.curvature.estimates.get() - self.curvature_before.0,
            curvature_hvps: self.curvature.hvps.get() - self.curvature_before.1,
            hvps: self.hvps,
        }
    }

    fn run_segment(&mut self, steps: u64) -> Result<Segment> {
        let until = self.trainer.global_step() + steps;
        let (started, cpu_before) = (Instant::now(), process_cpu_seconds());
        let summary = self.trainer.train_until(&mut self.hub, Some(until))?;
        let wall = started.elapsed().as_secs_f64();
        let cpu = process_cpu_seconds() - cpu_before;
        self.hvps.0 += summary.hessian_vector_products;
        self.hvps.1 += summary.hessian_vector_seconds;
        if summary.steps != steps {
            return Err(Error::StoppedEarly {
                what: format!("vigil bench: configuration `{}`", self.name),
                reason: format!(
                    "trained {} steps instead of {steps}{}",
                    summary.steps,
                    summary
                        .stopped_by
                        .map(|(monitor, reason)| format!(
                            ": monitor `{monitor}` stopped it: {reason}"
                        ))
                        .unwrap_or_default()
                ),
            });
        }
        Ok(Segment {
            wall,
            cpu,
            validation: summary.validation_seconds,
            validations: summary.validations.len(),
            steps,
        })
    }

    /// Start counting hook time and HVPs from here (after the warm-up).
    fn mark(&mut self) {
        self.hooks_before = self.hub.hook_seconds();
        self.service_before = self.hub.service_seconds();
        self.hvps = (0, 0.0);
        self.curvature_before = (self.curvature.estimates.get(), self.curvature.hvps.get());
    }
}

/// The workload's settings, with `monitors` at their defaults.
fn workload_settings(
    options: &WorkloadOptions,
    monitors: &[String],
    epochs: usize,
    weighted: bool,
) -> Result<Settings> {
    let (data, shape, model, optim) = match options.workload {
        Workload::W1 => (
            "fashion-mnist",
            "train_size = 60000\ntest_size = 10000\nchannels = 1\nimage_size = 28",
            "kind = \"cnn\"",
            "lr = 0.05\nmomentum = 0.9",
        ),
        Workload::W2 => (
            "cifar10",
            "train_size = 50000\ntest_size = 10000\nchannels = 3\nimage_size = 32",
            "kind = \"resnet18\"\nwidth_mult = 0.5\nnorm = \"batch\"",
            "lr = 0.1\nmomentum = 0.9\nnesterov = true\nweight_decay = 5e-4",
        ),
    };
    let mut text = format!(
        r#"name = "bench-{key}"
sampler = "{sampler}"
seed = 0
epochs = {epochs}
batch_size = {batch}
threads = {threads}
data = "{data}"
data_dir = {data_dir}
synthetic_fallback = true
augment = false
plugin_dirs = [{dirs}]

[synthetic]
classes = 10
{shape}

[model]
{model}

[optim]
kind = "sgd"
{optim}

[checkpoint]
enabled = false
"#,
        key = options.workload.key(),
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
    // A monitor is its name, optionally followed by TOML settings after a space
    // ("gradient-tests every_n_steps = 16").
    for monitor in monitors {
        let (name, settings) = monitor.split_once(' ').unwrap_or((monitor, ""));
        text.push_str(&format!("\n[[monitors]]\nname = \"{name}\"\n"));
        if !settings.is_empty() {
            text.push_str(&format!("[monitors.settings]\n{settings}\n"));
        }
    }
    let origin = format!("<vigil bench: {}>", options.workload.key().to_uppercase());
    Settings::from_toml(&text, Path::new(&origin))
}

fn toml_string(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

/// Run W1 bare, with each monitor alone and with all of them, interleaved, beside the Python
/// loop when one is given. `progress` hears what is happening.
pub fn run_workload(
    options: &WorkloadOptions,
    mut progress: impl FnMut(&str),
) -> Result<WorkloadReport> {
    if options.steps == 0 || options.repeats == 0 {
        return Err(Error::Usage {
            command: "vigil bench",
            message: "--steps and --repeats must be at least 1".into(),
        });
    }
    // A second bare configuration measures nothing but the benchmark's own noise floor: its
    // "overhead" is what a monitor costing nothing would show.
    let mut configs: Vec<(String, Vec<String>, bool)> = vec![
        ("bare".into(), Vec::new(), false),
        (CONTROL.into(), Vec::new(), false),
    ];
    if options.mlflow.is_some() {
        configs.push((WATCHING.into(), Vec::new(), false));
    }
    // `sampler-distribution` reports the sampler's draws, so where it is measured the sampler
    // is the weighted one, against a bare configuration with the same sampler.
    let weighted =
        !options.instruments && options.monitors.iter().any(|m| m == "sampler-distribution");
    if weighted {
        configs.push((BARE_WEIGHTED.into(), Vec::new(), true));
    }
    if options.instruments {
        for (name, every) in [(INSTRUMENTS_16, 16), (INSTRUMENTS_EVERY, 1)] {
            let monitors = INSTRUMENT_PLUGINS
                .iter()
                .map(|plugin| format!("{plugin} every_n_steps = {every}"))
                .collect();
            configs.push((name.into(), monitors, false));
        }
    } else if options.workload.each_alone() || options.monitors.len() == 1 {
        for monitor in &options.monitors {
            let with_sampler = monitor == "sampler-distribution";
            configs.push((monitor.clone(), vec![monitor.clone()], with_sampler));
        }
    }
    if options.monitors.len() > 1 && !options.instruments {
        configs.push((ALL.into(), options.monitors.clone(), weighted));
    }
    let probe = workload_settings(options, &[], 1, false)?;
    let dataset: Dataset = data::load(&probe.data.source)?;
    let batches = dataset.train.len().div_ceil(options.batch_size) as u64;
    let max_repeats = options.max_repeats.max(options.repeats);
    let total_steps = options.warmup_steps + options.steps * max_repeats as u64;
    let epochs = (total_steps / batches.max(1) + 2) as usize;

    let mut lanes: Vec<Lane> = Vec::new();
    for (index, (name, monitors, weighted)) in configs.iter().enumerate() {
        let mut settings = workload_settings(options, monitors, epochs, *weighted)?;
        let watching = name == WATCHING;
        if watching {
            // What a user who adds `[mlflow]` gets: every step sent, system metrics at their
            // default interval.
            settings.mlflow = options
                .mlflow
                .as_ref()
                .map(|uri| crate::config::MlflowSettings {
                    tracking_uri: uri.trim_end_matches('/').to_string(),
                    experiment: Some("vigil-bench".into()),
                    run_name: Some(format!("bench-{}", options.workload.key())),
                    tags: Default::default(),
                    artifacts: false,
                    every_n_steps: 1,
                });
            settings.system_metrics_every_s = 10.0;
        }
        let trainer = match lanes.first() {
            Some(first) => Trainer::sharing_data(&settings, &dataset, &first.trainer)?,
            None => Trainer::new(&settings, &dataset)?,
        };
        let mut hub = RunHub::load(&settings, trainer.monitor_target(&trainer.services()), None)?;
        let dir = options
            .scratch
            .join(format!("{index:02}-{}", name.replace(' ', "-")));
        std::fs::create_dir_all(&dir).map_err(|source| Error::io(&dir, source))?;
        hub.open_run_dir(RunLayout::new(&dir), None, None)?;
        if watching {
            let facts = crate::mlflow::RunFacts {
                model: settings.model.kind.name().into(),
                dataset: dataset.name.clone(),
            };
            hub.open_mlflow(&settings, &facts, None)?;
            hub.start_system_metrics(settings.system_metrics_every_s, None);
        }
        let curvature = Rc::new(CurvatureLog::default());
        hub.add_sink(Box::new(CurvatureCapture(Rc::clone(&curvature))));
        lanes.push(Lane {
            name: name.clone(),
            monitors: monitors.clone(),
            weighted: *weighted,
            watching,
            trainer,
            hub,
            curvature,
            segments: Vec::new(),
            hooks_before: 0.0,
            service_before: 0.0,
            hvps: (0, 0.0),
            curvature_before: (0, 0.0),
        });
    }

    let data_args = |workload: Option<Workload>| {
        let mut args = vec![
            "--data-dir".to_string(),
            options.data_dir.display().to_string(),
            "--batch-size".into(),
            options.batch_size.to_string(),
            "--threads".into(),
            options.threads.to_string(),
        ];
        if let Some(workload) = workload {
            args.extend(["--workload".to_string(), workload.key().to_string()]);
        }
        args
    };
    // The baseline loops: the plain PyTorch loop twice, then Lightning.
    let mut pythons = Vec::new();
    if let Some(baseline) = &options.python {
        progress("starting the Python baseline, plain and with vigil's allocator setting");
        for (tuned, variant) in [(false, "plain"), (true, "vigil's allocator setting")] {
            pythons.push(ExternalLoop::start(
                baseline,
                &data_args(Some(options.workload)),
                tuned,
                variant,
                "give --python PATH, or --no-python",
            )?);
        }
    }
    if let Some(cockpit) = options.cockpit.as_ref().filter(|_| options.instruments) {
        progress("starting Cockpit's economy configuration in the plain loop, every 16 steps and every step");
        for (every, variant) in [(16, COCKPIT_16), (1, COCKPIT_EVERY)] {
            let mut args = data_args(Some(options.workload));
            args.extend(["--cockpit".to_string(), every.to_string()]);
            pythons.push(ExternalLoop::start(
                cockpit,
                &args,
                false,
                variant,
                "run scripts/bench-venv.sh (it installs Cockpit and BackPACK)",
            )?);
        }
    }
    let mut lightning_note = None;
    let lightning = options.lightning.as_ref();
    if let Some(baseline) = lightning.filter(|_| options.workload == Workload::W1) {
        let all_shipped = SHIPPED_MONITORS
            .iter()
            .all(|shipped| options.monitors.iter().any(|m| m == shipped));
        if !all_shipped {
            lightning_note = Some(format!(
                "the Lightning baseline runs all {} shipped monitors as callbacks; it is compared only when all of them are measured",
                SHIPPED_MONITORS.len()
            ));
        } else {
            progress("starting the Lightning baseline with the monitors as callbacks");
            pythons.push(ExternalLoop::start(
                baseline,
                &data_args(None),
                false,
                LIGHTNING_VARIANT,
                "run scripts/bench-venv.sh, give --lightning PATH, or --no-lightning",
            )?);
        }
    }

    progress(&format!(
        "warm-up: {} steps of each of {} configurations",
        options.warmup_steps,
        lanes.len()
    ));
    for lane in &mut lanes {
        lane.trainer.start(&mut lane.hub)?;
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
    let timed = Instant::now();
    let mut repeat = 0;
    // The floor, from the plain Python loop, once per repeat right after it (W2's steps are
    // long: fewer profiled steps).
    let mut floors = Vec::new();
    let floor_steps = options.steps.min(match options.workload {
        Workload::W1 => 200,
        Workload::W2 => 20,
    });
    let mut extra_note = None;
    loop {
        let started = Instant::now();
        let mut segments = vec![Segment::default(); lanes.len()];
        for round in 0..rounds {
            let steps = chunk.min(options.steps - round * chunk);
            for index in order_rng.permutation(lanes.len()) {
                let lane = &mut lanes[index as usize];
                segments[index as usize].add(lane.run_segment(steps)?);
            }
            // Each baseline loop in its own round, a different one each repeat.
            let loops = pythons.len() as u64;
            for (variant, python) in pythons.iter_mut().enumerate() {
                let its_round = (repeat as u64 * 7 + variant as u64 * rounds / loops) % rounds;
                if round == its_round {
                    let ms = python.segment(options.steps)?;
                    python.segments.push(ms);
                }
            }
        }
        for (lane, segment) in lanes.iter_mut().zip(segments) {
            lane.segments.push(segment);
        }
        if let Some(plain) = pythons.iter_mut().find(|p| p.variant == "plain") {
            floors.push(plain.floor(floor_steps)?);
        }
        progress(&format!(
            "repeat {}/{} done in {:.0} s",
            repeat + 1,
            options.repeats,
            started.elapsed().as_secs_f64()
        ));
        repeat += 1;
        if repeat < options.repeats {
            continue;
        }
        // A target neither met nor missed: measure again, all configurations alike, until
        // every verdict is decided or the repeats or the time run out.
        let measures: Vec<LaneMeasure> = lanes.iter().map(Lane::measure).collect();
        let undecided: Vec<String> = summarize(options, &dataset, &measures, &pythons, &floors)
            .configs
            .iter()
            .filter(|c| c.undecided())
            .map(|c| c.name.clone())
            .collect();
        if undecided.is_empty() {
            break;
        }
        let elapsed = timed.elapsed().as_secs_f64();
        if !another_repeat_fits(repeat, max_repeats, elapsed, options.time_cap_s) {
            extra_note = Some(format!(
                "undecided after {repeat} repeats ({:.0} min; the cap is {max_repeats} repeats or {:.0} min of timed repeats): {}",
                elapsed / 60.0,
                options.time_cap_s / 60.0,
                undecided.join(", ")
            ));
            break;
        }
        progress(&format!(
            "undecided after {repeat} repeats: {}; another repeat",
            undecided.join(", ")
        ));
    }
    for lane in &mut lanes {
        lane.trainer.finish(&mut lane.hub)?;
        lane.hub.flush()?;
    }

    let measures: Vec<LaneMeasure> = lanes.iter().map(Lane::measure).collect();
    let mut report = summarize(options, &dataset, &measures, &pythons, &floors);
    report.notes.extend(lightning_note);
    report.notes.extend(extra_note);
    drop(lanes);
    let _ = std::fs::remove_dir_all(&options.scratch);
    Ok(report)
}
