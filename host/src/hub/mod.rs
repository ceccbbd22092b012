//! One owner for a run's outputs: its monitors ([`PluginHost`]), its sinks (`metrics.jsonl`,
//! TensorBoard, the console, and whatever a bench adds), its run directory ([`RunLayout`])
//! and its log (`vigil.log`, [`RunHub::open_log`]).
//!
//! The trainer hands the hub events as data ([`RunHub::emit`]); the hub routes them: a monitor
//! event to the monitors that want it, then what they logged and drew to every sink; a record
//! or histogram to every sink. For a checkpoint it says how long each file the run appends to
//! is ([`RunHub::output_marks`]), after flushing, and on resume cuts them back to a
//! checkpoint's marks ([`RunHub::open_run_dir`]). The trainer knows nothing of sinks or files.
//!
//! `vigil train`, `vigil check`, `vigil study plan` and `vigil bench` all build their monitors
//! with [`RunHub::load`]; sinks are opened once the run directory exists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vigil_plugin_api::{ArtifactKind, EventKind, StepCounters, Subscriptions};

use crate::config::{LogSettings, Settings};
use crate::error::{Error, Result};
use crate::fs::cut_back;
use crate::plugin::RunFacts;
use crate::plugin::{self, EventData, HostServices, MonitorSnapshot, PluginHost, PluginSearch};
use crate::run_dir::{MonitorReport, RunLayout, METRICS_FILE, TENSORBOARD_DIR};
use crate::run_log;
use crate::system::{self, SystemMetrics};

mod costs;
mod tracking;
mod watch;
use crate::sink::tensorboard::TensorBoardMark;
use crate::sink::{
    unix_time, Background, ConsoleSink, Histogram, JsonlSink, Record, RecordKind, Sink,
    TensorBoardSink,
};
pub use watch::RunEnd;

/// What monitors are built against: the run's facts, the trainer's capabilities and where
/// training stands.
pub struct MonitorTarget<'a> {
    pub facts: RunFacts,
    pub services: &'a dyn HostServices,
    pub counters: StepCounters,
}

/// Something that happened in training, for the hub to route.
#[derive(Debug)]
pub enum Event<'a> {
    /// A training event: to the monitors that want it; what they log goes to the sinks.
    Monitor(EventData<'a>),
    /// A record of metrics, to every sink.
    Record(Record),
    /// A histogram (`weights/<name>`), to every sink that shows histograms.
    Histogram {
        tag: String,
        step: u64,
        histogram: Histogram,
    },
}

/// Where the files a run appends to stood at a checkpoint: a resumed run cuts each back
/// to its mark, so that nothing is written twice.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutputMarks {
    /// The length of `metrics.jsonl`.
    pub metrics_bytes: Option<u64>,
    /// Every artifact monitors append to, relative to the run directory, with its length.
    pub appended: BTreeMap<String, u64>,
    /// The TensorBoard event file and its length.
    pub tensorboard: Option<TensorBoardMark>,
    /// The length of the MLflow outbox (`[mlflow]`).
    pub mlflow_outbox: Option<u64>,
}

/// The owner of one run's monitors, sinks and directory.
pub struct RunHub {
    plugins: PluginHost,
    sinks: Vec<Box<dyn Sink>>,
    layout: Option<RunLayout>,
    /// The TensorBoard file the run writes, whose length each checkpoint records.
    tensorboard_file: Option<PathBuf>,
    /// The system-metrics sampler, once started ([`RunHub::start_system_metrics`]).
    system: Option<SystemMetrics>,
    /// Warnings of the hub's own (low disk).
    warnings: Vec<String>,
    /// Who is told what happens ([`watch`]).
    watch: watch::Watch,
    /// The MLflow run (`[mlflow]`, [`tracking`]).
    mlflow: Option<crate::mlflow::MlflowLink>,
    /// What serving each monitor cost outside its hooks ([`costs`]).
    costs: costs::ServiceCosts,
}

impl std::fmt::Debug for RunHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunHub")
            .field("plugins", &self.plugins)
            .field("sinks", &self.sinks.len())
            .field("layout", &self.layout)
            .finish()
    }
}

impl RunHub {
    /// Find, check and build the monitors `settings` enables (in the config's plugin
    /// directories, else the default ones), with no sinks yet. `report_dir` receives the full
    /// report of a failed layout check, when there is a run directory already.
    pub fn load(
        settings: &Settings,
        target: MonitorTarget<'_>,
        report_dir: Option<&Path>,
    ) -> Result<Self> {
        let dirs = plugin::search_dirs(settings.plugin_dirs.as_deref());
        let plugins = PluginHost::load(
            &settings.monitors,
            &PluginSearch {
                dirs: &dirs,
                allow_insecure: settings.allow_insecure_plugins,
                report_dir,
            },
            target.facts,
            target.services,
            target.counters,
        )?;
        let mut hub = Self::with_plugins(plugins);
        hub.watch = watch::Watch::new(settings)?;
        Ok(hub)
    }

    /// A hub with no monitors and no sinks (evaluation, training without outputs).
    pub fn empty() -> Self {
        Self::with_plugins(PluginHost::empty())
    }

    fn with_plugins(plugins: PluginHost) -> Self {
        RunHub {
            plugins,
            sinks: Vec::new(),
            layout: None,
            tensorboard_file: None,
            system: None,
            warnings: Vec::new(),
            watch: watch::Watch::default(),
            mlflow: None,
            costs: costs::ServiceCosts::default(),
        }
    }

    /// Open the run directory's sinks: `metrics.jsonl` and TensorBoard, each written on a
    /// thread of its own, and the monitors' artifact directory. With `resume`, the files are
    /// first cut back to the checkpoint's marks (taken at `step`) and appended to; without,
    /// they are created. `console`, when given, comes first.
    pub fn open_run_dir(
        &mut self,
        layout: RunLayout,
        resume: Option<(&OutputMarks, u64)>,
        console: Option<ConsoleSink>,
    ) -> Result<()> {
        let (metrics, tensorboard) = match resume {
            Some((marks, step)) => {
                cut_back(&layout.metrics(), marks.metrics_bytes.unwrap_or(0))?;
                self.plugins.set_artifact_dir(layout.artifacts());
                self.plugins.restore_appended_artifacts(&marks.appended)?;
                let tensorboard = match &marks.tensorboard {
                    Some(mark) => TensorBoardSink::resume(&layout.tensorboard(), mark, step)?,
                    None => TensorBoardSink::create(&layout.tensorboard())?,
                };
                (JsonlSink::append(&layout.metrics())?, tensorboard)
            }
            None => {
                let metrics = JsonlSink::create(&layout.metrics())?;
                self.plugins.set_artifact_dir(layout.artifacts());
                (metrics, TensorBoardSink::create(&layout.tensorboard())?)
            }
        };
        self.tensorboard_file = Some(tensorboard.path().to_path_buf());
        if let Some(console) = console {
            self.sinks.push(Box::new(console));
        }
        self.sinks
            .push(Box::new(Background::spawn(METRICS_FILE, Box::new(metrics))));
        self.sinks.push(Box::new(Background::spawn(
            TENSORBOARD_DIR,
            Box::new(tensorboard),
        )));
        self.layout = Some(layout);
        Ok(())
    }

    /// Send the process's log lines to the run directory's `vigil.log` from now on, rotated as
    /// `log` says ([`crate::run_log`]); a resumed run appends. Needs [`RunHub::open_run_dir`].
    pub fn open_log(&self, log: LogSettings) -> Result<()> {
        let Some(layout) = &self.layout else {
            return Ok(());
        };
        run_log::open(
            &layout.log(),
            run_log::Rotation {
                max_bytes: log.max_bytes(),
                backups: log.backups,
            },
        )?;
        tracing::debug!(
            "log opened in {}: rotated past {} bytes, {} rotated copies kept",
            layout.root().display(),
            log.max_bytes(),
            log.backups
        );
        Ok(())
    }

    /// Add a sink of the caller's (it gets every record, image and histogram from now on).
    pub fn add_sink(&mut self, sink: Box<dyn Sink>) {
        self.sinks.push(sink);
    }

    /// Whether any monitor wants `kind`: the trainer skips preparing events nobody wants.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.plugins.wants(kind)
    }

    /// Whether any monitor subscribed to `data`.
    pub fn subscribes(&self, data: Subscriptions) -> bool {
        self.plugins.subscribes(data)
    }

    /// The enabled monitors that subscribed to `data`, by index.
    pub fn subscriber_indices(&self, data: Subscriptions) -> Vec<usize> {
        self.plugins.subscriber_indices(data)
    }

    /// The trainer spent `spent` preparing `data` for the monitors that subscribed to it:
    /// their service time, shared equally.
    pub fn charge_subscribers(&mut self, data: Subscriptions, spent: Duration) {
        let subscribers = self.plugins.subscribers(data);
        self.costs.charge_shared(&subscribers, spent);
    }

    /// Route one event. An error is a sink that failed or a monitor with
    /// `on_error = "abort"` that failed.
    pub fn emit(&mut self, event: Event<'_>, services: &dyn HostServices) -> Result<()> {
        match event {
            Event::Monitor(event) => self.dispatch(&event, services),
            Event::Record(record) => {
                self.write_system_metrics(record.epoch, record.global_step)?;
                self.write(&record)
            }
            Event::Histogram {
                tag,
                step,
                histogram,
            } => {
                let wall_time = unix_time();
                self.sinks
                    .iter_mut()
                    .try_for_each(|sink| sink.histogram(&tag, step, wall_time, &histogram))
            }
        }
    }

    fn dispatch(&mut self, event: &EventData<'_>, services: &dyn HostServices) -> Result<()> {
        if !self.plugins.wants(event.kind) {
            return Ok(());
        }
        let mut scalars = Vec::new();
        let disabled = self.plugins.disabled_count();
        let dispatched = self.plugins.dispatch(event, services, &mut scalars);
        if self.plugins.disabled_count() > disabled {
            let message = self
                .plugins
                .warnings()
                .iter()
                .rev()
                .find(|w| w.contains(" disabled: "))
                .cloned()
                .unwrap_or_else(|| "a monitor was disabled".into());
            let counters = &event.counters;
            self.alert(
                crate::config::NotifyEvent::MonitorDisabled,
                message,
                Some((counters.epoch as usize, counters.global_step)),
            );
        }
        self.write_monitor_scalars(scalars, &event.counters)?;
        for (monitor, record) in self.plugins.take_histograms() {
            let histogram =
                crate::sink::Histogram::of_buckets(record.low, &record.limits, &record.counts);
            let (tag, wall_time) = (format!("{monitor}/{}", record.tag), unix_time());
            for sink in self.sinks.iter_mut() {
                sink.histogram(&tag, event.counters.global_step, wall_time, &histogram)?;
            }
        }
        for (monitor, path, kind) in self.plugins.take_artifacts() {
            if kind != ArtifactKind::PNG {
                continue;
            }
            let started = std::time::Instant::now();
            // The file was just written; TensorBoard shows it under a tag that stays the
            // same from epoch to epoch, so its slider steps through them.
            let png = std::fs::read(&path).map_err(|source| Error::io(&path, source))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let tag = format!("{monitor}/{name}");
            let wall_time = unix_time();
            for sink in self.sinks.iter_mut() {
                sink.image(&tag, event.counters.global_step, wall_time, &png)?;
            }
            self.costs.charge(&monitor, started.elapsed());
        }
        dispatched
    }

    /// Sample system metrics every `every_s` seconds (none when 0) on a thread of their own,
    /// for the run directory's file system and, on CUDA, device `cuda`. Samples are written
    /// as `system` records at the next record the trainer emits.
    pub fn start_system_metrics(&mut self, every_s: f64, cuda: Option<usize>) {
        let Some(layout) = &self.layout else {
            return;
        };
        if every_s > 0.0 {
            self.system = Some(SystemMetrics::start(
                Duration::from_secs_f64(every_s),
                layout.root(),
                cuda,
            ));
        }
    }

    /// What the sampler has taken since it was last asked, as records at `step`.
    fn write_system_metrics(&mut self, epoch: usize, global_step: u64) -> Result<()> {
        let Some(system) = &self.system else {
            return Ok(());
        };
        for report in system.drain() {
            match report {
                system::Report::Sample(sample) => self.write(&Record {
                    kind: RecordKind::System,
                    source: None,
                    epoch,
                    global_step,
                    wall_time: sample.wall_time,
                    metrics: sample.metrics,
                })?,
                system::Report::LowDisk {
                    free_bytes,
                    needed_bytes,
                } => {
                    let message = format!(
                        "the run directory's disk has {:.1} MB free, less than the newest \
                         checkpoint took ({:.1} MB): the next checkpoint may not be written; \
                         free some space",
                        free_bytes as f64 / 1e6,
                        needed_bytes as f64 / 1e6
                    );
                    tracing::warn!("{message}");
                    self.alert(
                        crate::config::NotifyEvent::Anomaly,
                        message.clone(),
                        Some((epoch, global_step)),
                    );
                    self.warnings.push(message);
                }
            }
        }
        Ok(())
    }

    fn write(&mut self, record: &Record) -> Result<()> {
        if record.kind == RecordKind::Validation {
            self.watch.note_validation(record);
        }
        self.sinks
            .iter_mut()
            .try_for_each(|sink| sink.write(record))
    }

    /// One record per monitor for the scalars monitors logged at one event.
    fn write_monitor_scalars(
        &mut self,
        scalars: Vec<plugin::Scalar>,
        counters: &StepCounters,
    ) -> Result<()> {
        if scalars.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        // By monitor index, in the order monitors logged.
        let mut records: Vec<(usize, Record)> = Vec::new();
        for scalar in scalars {
            let (monitor, metric) = self.plugins.scalar_names(scalar);
            let value = (metric.to_string(), scalar.2);
            match records.iter_mut().find(|(index, _)| *index == scalar.0) {
                Some((_, record)) => record.metrics.push(value),
                None => records.push((
                    scalar.0,
                    Record {
                        kind: RecordKind::Monitor,
                        source: Some(monitor.to_string()),
                        epoch: counters.epoch as usize,
                        global_step: counters.global_step,
                        wall_time: unix_time(),
                        metrics: vec![value],
                    },
                )),
            }
        }
        // Building the records is the host's work for the monitors that logged, shared.
        let built = started.elapsed();
        let loggers: Vec<String> = records
            .iter()
            .filter_map(|(_, record)| record.source.clone())
            .collect();
        self.costs.charge_shared(&loggers, built);
        for (_, record) in &records {
            let started = std::time::Instant::now();
            self.write(record)?;
            if let Some(monitor) = &record.source {
                self.costs.charge(monitor, started.elapsed());
            }
        }
        Ok(())
    }

    /// A resumed run's monitors get their saved state back (or start fresh, with
    /// `epoch_start` when the run resumes mid-epoch).
    pub fn resume_monitors(
        &mut self,
        saved: &[(MonitorSnapshot, Option<Vec<u8>>)],
        counters: StepCounters,
        epoch_start: Option<&EventData<'_>>,
        services: &dyn HostServices,
    ) -> Result<()> {
        let mut scalars = Vec::new();
        let resumed = self
            .plugins
            .resume(saved, counters, epoch_start, services, &mut scalars);
        self.write_monitor_scalars(scalars, &counters)?;
        resumed
    }

    /// The `fit_end` event, which reaches every monitor still running; then the monitors are
    /// dropped (their libraries stay loaded).
    pub fn finish_monitors(
        &mut self,
        event: &EventData<'_>,
        services: &dyn HostServices,
    ) -> Result<()> {
        let mut scalars = Vec::new();
        let finished = self.plugins.finish(event, services, &mut scalars);
        let routed = self.write_monitor_scalars(scalars, &event.counters);
        finished?;
        routed
    }

    /// Every monitor's state for a checkpoint. An error is a monitor with
    /// `on_error = "abort"` that failed to save.
    pub fn save_monitor_states(
        &mut self,
        counters: StepCounters,
        services: &dyn HostServices,
    ) -> Result<Vec<MonitorSnapshot>> {
        self.plugins.save_states(counters, services)
    }

    /// A monitor asked to stop the run: (monitor, reason).
    pub fn take_stop_request(&mut self) -> Option<(String, String)> {
        self.plugins.take_stop_request()
    }

    /// Flush every sink, then say how long each file the run appends to is: what a
    /// checkpoint records.
    pub fn output_marks(&mut self) -> Result<OutputMarks> {
        self.flush().map_err(|err| Error::Sink {
            sink: "run outputs",
            reason: format!("flushing before a checkpoint failed: {err}"),
        })?;
        let length = |path: &Path| {
            std::fs::metadata(path)
                .map(|m| m.len())
                .map_err(|source| Error::io(path, source))
        };
        let metrics_bytes = match &self.layout {
            Some(layout) => Some(length(&layout.metrics())?),
            None => None,
        };
        let tensorboard = match &self.tensorboard_file {
            Some(path) => Some(TensorBoardMark {
                file: path
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                bytes: length(path)?,
            }),
            None => None,
        };
        Ok(OutputMarks {
            metrics_bytes,
            appended: self.plugins.appended_artifacts()?,
            tensorboard,
            mlflow_outbox: self.mlflow.as_ref().map(|link| link.outbox_len()),
        })
    }

    /// Make everything written so far durable (or visible).
    pub fn flush(&mut self) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|sink| sink.flush())
    }

    /// Flush and close the sinks (their threads end); the monitors' report stays readable.
    pub fn close_sinks(&mut self) -> Result<()> {
        // The sampler stops first: a sample taken after the last record is not written.
        self.system = None;
        let flushed = self.flush();
        // What the sinks spent stays in the monitors' report.
        self.costs.keep_sink_cpu(self.sink_cpu_by_source());
        self.sinks.clear();
        flushed
    }

    /// Seconds spent inside the monitors' hooks so far, all monitors and events together:
    /// what monitoring cost the run in its own code (the host's work for it is not counted).
    pub fn hook_seconds(&self) -> f64 {
        self.plugins.hook_seconds()
    }

    /// Seconds the training thread spent serving the monitors outside their hooks.
    pub fn service_seconds(&self) -> f64 {
        self.costs.total().as_secs_f64()
    }

    /// Per-monitor facts and costs for `run.json`, relative to `loop_seconds` of training.
    pub fn monitor_report(&self, loop_seconds: f64) -> Vec<MonitorReport> {
        let mut reports = self.plugins.report(loop_seconds);
        self.costs
            .fill(&mut reports, &self.sink_cpu_by_source(), loop_seconds);
        reports
    }

    /// The sinks' CPU time by source (a monitor's name, or the host), summed over sinks, as
    /// of their last flush.
    pub fn sink_cpu_by_source(&self) -> Vec<(String, Duration)> {
        let mut totals: Vec<(String, Duration)> = Vec::new();
        let closed = self.costs.closed_sink_cpu().iter().cloned();
        for (source, spent) in self
            .sinks
            .iter()
            .flat_map(|sink| sink.cpu_by_source())
            .chain(closed)
        {
            crate::sink::add_by_source(&mut totals, &source, spent);
        }
        totals
    }

    /// What `vigil check` prints for each monitor: file, sha256, events and data.
    pub fn describe_monitors(&self) -> Vec<String> {
        self.plugins.describe()
    }

    /// The monitors' warnings so far, then the hub's own.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = self.plugins.warnings().to_vec();
        warnings.extend(self.warnings.iter().cloned());
        warnings
    }
}
