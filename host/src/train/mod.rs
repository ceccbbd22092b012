//! The training loop: data to tensors, optimizer steps on a schedule, validation every
//! `val_check_interval` of an epoch, checkpoints, monitor events, and the records it sends to
//! the sinks.

pub mod checkpoint;
mod feed;
mod optim;
mod run_dir;
mod schedule;
mod services;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use abi_stable::std_types::{RSlice, RString, RVec};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};
use vigil_plugin_api::{
    ArtifactKind, EventKind, ImageBatch, SamplerDraws, StepCounters, Subscriptions, ValidationBatch,
};

use crate::config::{AnomalyPolicy, Settings};
use crate::data::{Dataset, ImageSet};
use crate::error::{Error, Result};
use crate::model::{self, InputShape};
use crate::plugin::{EventData, PluginHost, RunFacts};
use crate::sink::{unix_time, Histogram, Record, RecordKind, Sink};

pub use checkpoint::{CheckpointIndex, Checkpoints, TrainingState};
use feed::{choose_device, Feed};
pub use optim::Optimizer;
pub use run_dir::{create_run_dir, write_atomically};
pub use schedule::LrSchedule;
pub use services::batch_hessian_vector_product;
use services::{parameter_infos, GradientAverages, ProbeCache, TrainerServices};

mod run;
pub use run::{check_config, train, train_from_file, RunOutcome, TrainRequest};

/// Serialises "seed libtorch's global generator, then initialise a model".
static SEEDED_INIT: Mutex<()> = Mutex::new(());

/// At most this many validation images are offered to monitors that subscribed to them.
pub const SAMPLE_IMAGES: usize = 64;

/// Loss and accuracy over one pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PassMetrics {
    pub loss: f64,
    pub accuracy: f64,
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
}

impl FitSummary {
    pub fn last(&self) -> Option<&EpochMetrics> {
        self.epochs.last()
    }
}

/// A split as tensors on the training device: normalised images and labels.
pub(crate) struct TensorSplit {
    images: Tensor,
    labels: Tensor,
    /// Per-channel mean and standard deviation used to normalise, to undo it for display.
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl TensorSplit {
    fn new(set: &ImageSet, mean: &[f32], std: &[f32], device: Device) -> Result<Self> {
        let shape = [
            set.len() as i64,
            set.channels as i64,
            set.height as i64,
            set.width as i64,
        ];
        let channel_shape = [1, set.channels as i64, 1, 1];
        let mean_t = Tensor::f_from_slice(mean)?.f_view(channel_shape)?;
        let std_t = Tensor::f_from_slice(std)?.f_view(channel_shape)?;
        let images = Tensor::f_from_slice(&set.images)?
            .f_view(shape)?
            .f_to_kind(Kind::Float)?
            .f_div_scalar(255.0)?
            .f_sub(&mean_t)?
            .f_div(&std_t)?
            .f_to_device(device)?;
        let labels = Tensor::f_from_slice(&set.labels)?.f_to_device(device)?;
        Ok(TensorSplit {
            images,
            labels,
            mean: mean.to_vec(),
            std: std.to_vec(),
        })
    }

    fn len(&self) -> i64 {
        self.labels.size()[0]
    }

    /// The same split, sharing its storage.
    fn shallow_clone(&self) -> Self {
        TensorSplit {
            images: self.images.shallow_clone(),
            labels: self.labels.shallow_clone(),
            mean: self.mean.clone(),
            std: self.std.clone(),
        }
    }

    /// The first `count` images, de-normalised to [0, 1], as CPU floats.
    fn display_images(&self, count: i64) -> Result<Vec<f32>> {
        let channels = self.mean.len() as i64;
        let shape = [1, channels, 1, 1];
        let mean = Tensor::f_from_slice(&self.mean)?.f_view(shape)?;
        let std = Tensor::f_from_slice(&self.std)?.f_view(shape)?;
        let images = self
            .images
            .f_narrow(0, 0, count)?
            .f_to_device(Device::Cpu)?
            .f_mul(&std)?
            .f_add(&mean)?
            .f_clamp(0.0, 1.0)?
            .f_contiguous()?;
        Ok(Vec::<f32>::try_from(&images.f_reshape([-1])?)?)
    }
}

/// Where training is; saved in checkpoints.
#[derive(Debug, Clone, Default)]
struct Progress {
    global_step: u64,
    /// The epoch in progress (1-based).
    epoch: usize,
    batches_done: u32,
    epoch_loss_sum: f64,
    epoch_correct: f64,
    epoch_samples: u64,
    validation_pass: u32,
    best_val_loss: Option<f64>,
}

/// Trains one model on one dataset.
pub struct Trainer {
    settings: Settings,
    device: Device,
    vars: nn::VarStore,
    /// The trainable parameters, in creation order (the order monitors see).
    parameters: Vec<Tensor>,
    /// Their names (`conv1.weight`, …).
    parameter_names: Vec<String>,
    model: Box<dyn ModuleT + Send>,
    optimizer: Optimizer,
    schedule: LrSchedule,
    feed: Feed,
    train: TensorSplit,
    test: TensorSplit,
    /// Labels on the CPU, for the sampler's report and label queries of monitors.
    train_labels: Vec<i64>,
    val_labels: Vec<i64>,
    class_names: Vec<String>,
    probes: ProbeCache,
    averages: GradientAverages,
    progress: Progress,
    checkpoints: Option<(Checkpoints, String)>,
    /// The JSONL metrics file, whose length each checkpoint records.
    metrics_path: Option<PathBuf>,
    warnings: Vec<String>,
    validation_seconds: f64,
    /// One tensor that every parameter's gradient is a slice of, once a monitor subscribed to
    /// the flattened gradient (see [`services::flatten_grads`]).
    flat_grads: Option<Tensor>,
    /// The current epoch's sample order, on the CPU and on the device.
    epoch_order: Option<(usize, Vec<i64>, Tensor)>,
}

impl Trainer {
    /// Build the model and optimiser and move the dataset to the device.
    pub fn new(settings: &Settings, dataset: &Dataset) -> Result<Self> {
        Self::build(settings, dataset, None)
    }

    /// A trainer for `settings` that uses `other`'s copy of the dataset on the device instead
    /// of making its own (`dataset` must be the one `other` was built from). `vigil bench`
    /// trains several models side by side this way.
    pub fn sharing_data(settings: &Settings, dataset: &Dataset, other: &Trainer) -> Result<Self> {
        Self::build(settings, dataset, Some(other))
    }

    fn build(settings: &Settings, dataset: &Dataset, share: Option<&Trainer>) -> Result<Self> {
        if let Some(threads) = settings.threads {
            tch::set_num_threads(threads as i32);
        }
        let device = choose_device(settings.device)?;
        let vars = nn::VarStore::new(device);
        let input = InputShape {
            channels: dataset.train.channels,
            height: dataset.train.height,
            width: dataset.train.width,
        };
        let model = {
            // libtorch's generator is global: seed and initialise under one lock, so that two
            // trainers built at once (tests, an embedding application) stay reproducible.
            let _guard = SEEDED_INIT
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            tch::manual_seed(settings.seed as i64);
            model::build(&vars.root(), &settings.model, input, dataset.num_classes())
        };
        let parameters = vars.trainable_variables();
        let optimizer = Optimizer::new(
            &settings.optim,
            parameters.iter().map(Tensor::shallow_clone).collect(),
        );
        let batches = dataset.train.len().div_ceil(settings.batch_size) as u64;
        let schedule = LrSchedule::new(
            &settings.schedule,
            settings.optim.lr,
            batches,
            settings.epochs as u64,
        );
        let feed = Feed::new(settings, &dataset.train.labels, dataset.num_classes())?;
        let (train, test) = match share {
            Some(other) if other.device == device => {
                (other.train.shallow_clone(), other.test.shallow_clone())
            }
            _ => {
                // Normalise both splits with the training split's statistics.
                let (mean, std) = dataset.train.channel_stats();
                (
                    TensorSplit::new(&dataset.train, &mean, &std, device)?,
                    TensorSplit::new(&dataset.test, &mean, &std, device)?,
                )
            }
        };
        let parameter_names = parameter_infos(&vars, &parameters)
            .into_iter()
            .map(|p| p.name.into_string())
            .collect();
        Ok(Trainer {
            settings: settings.clone(),
            device,
            parameters,
            parameter_names,
            train,
            test,
            train_labels: dataset.train.labels.clone(),
            val_labels: dataset.test.labels.clone(),
            class_names: dataset.class_names.clone(),
            vars,
            model,
            optimizer,
            schedule,
            feed,
            probes: ProbeCache::default(),
            averages: GradientAverages::default(),
            progress: Progress {
                epoch: 1,
                ..Progress::default()
            },
            checkpoints: None,
            metrics_path: None,
            warnings: Vec::new(),
            validation_seconds: 0.0,
            flat_grads: None,
            epoch_order: None,
        })
    }

    /// Keep checkpoints in `run_dir`; `config_text` is stored in each so a run can resume,
    /// and so is the length of `metrics_path` at that point.
    pub fn keep_checkpoints(
        &mut self,
        run_dir: &Path,
        config_text: String,
        metrics_path: PathBuf,
    ) -> Result<()> {
        self.metrics_path = Some(metrics_path);
        if self.settings.checkpoint.enabled {
            self.checkpoints = Some((
                Checkpoints::open(run_dir, self.settings.checkpoint.keep_best)?,
                config_text,
            ));
        }
        Ok(())
    }

    /// Continue from a checkpoint: weights, optimizer state, counters.
    pub fn resume(&mut self, dir: &Path, state: &TrainingState) -> Result<()> {
        checkpoint::restore(dir, &mut self.vars, &mut self.optimizer, state)?;
        if state.batches_done >= self.batches_per_epoch() {
            // Taken at the end of an epoch, after its epoch record: go on with the next one.
            self.progress = Progress {
                global_step: state.global_step,
                epoch: state.epoch + 1,
                validation_pass: state.validation_pass,
                best_val_loss: state.best_val_loss,
                ..Progress::default()
            };
            return Ok(());
        }
        self.progress = Progress {
            global_step: state.global_step,
            epoch: state.epoch,
            batches_done: state.batches_done,
            epoch_loss_sum: state.epoch_loss_sum,
            epoch_correct: state.epoch_correct,
            epoch_samples: state.epoch_samples,
            validation_pass: state.validation_pass,
            best_val_loss: state.best_val_loss,
        };
        Ok(())
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn global_step(&self) -> u64 {
        self.progress.global_step
    }

    pub fn best_val_loss(&self) -> Option<f64> {
        self.progress.best_val_loss
    }

    /// Warnings of the run so far (anomalies, failed checkpoint writes).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn checkpoint_index(&self) -> Option<&CheckpointIndex> {
        self.checkpoints.as_ref().map(|(c, _)| c.index())
    }

    /// Number of trainable parameters.
    pub fn parameter_count(&self) -> usize {
        self.parameters.iter().map(Tensor::numel).sum()
    }

    /// The learning rate schedule.
    pub fn schedule(&self) -> &LrSchedule {
        &self.schedule
    }

    /// What monitors are told about the run: parameters and class names.
    pub fn run_facts(&self) -> RunFacts {
        RunFacts {
            parameters: RVec::from(parameter_infos(&self.vars, &self.parameters)),
            class_names: self
                .class_names
                .iter()
                .map(|c| RString::from(c.as_str()))
                .collect(),
            monitor_names: Vec::new(),
            train_labels: self.train_labels.clone(),
            val_labels: self.val_labels.clone(),
            total_parameters: self
                .vars
                .variables()
                .values()
                .map(|t| t.numel() as u64)
                .sum(),
        }
    }

    /// Capabilities for monitors, borrowing the model, parameters and data.
    pub fn services(&self) -> impl crate::plugin::HostServices + '_ {
        TrainerServices {
            model: &*self.model,
            parameters: &self.parameters,
            train: &self.train,
            probes: &self.probes,
            averages: &self.averages,
            device: self.device,
            flat_grads: self.flat_grads.as_ref(),
        }
    }

    pub fn batches_per_epoch(&self) -> u32 {
        (self.train.len() as usize).div_ceil(self.settings.batch_size) as u32
    }

    /// After how many batches of an epoch validation runs: `k · val_check_interval` of the
    /// epoch for k = 1, 2, …, rounded up to whole batches, and always at the epoch's end (the
    /// epoch record carries that validation).
    pub fn validation_points(&self) -> Vec<u32> {
        let batches = self.batches_per_epoch();
        let interval = self.settings.val_check_interval;
        let count = (1.0 / interval + 1e-9).floor().max(1.0) as u32;
        let mut points: Vec<u32> = (1..=count)
            .map(|k| {
                ((f64::from(k) * interval * f64::from(batches)) - 1e-9)
                    .ceil()
                    .clamp(1.0, f64::from(batches)) as u32
            })
            .collect();
        points.push(batches);
        points.dedup();
        points
    }

    /// Counters at the current point of training.
    pub fn counters(&self, batch_index: u32, batch_size: u32) -> StepCounters {
        let batches = self.batches_per_epoch();
        let epoch = self.progress.epoch.min(self.settings.epochs.max(1));
        StepCounters {
            global_step: self.progress.global_step,
            epoch: epoch as u32,
            total_epochs: self.settings.epochs as u32,
            batch_index,
            batches_per_epoch: batches,
            epoch_progress: epoch.saturating_sub(1) as f64
                + f64::from(batch_index) / f64::from(batches.max(1)),
            validation_pass: self.progress.validation_pass,
            batch_size,
        }
    }

    /// Train for the configured number of epochs without monitors.
    pub fn fit(&mut self, sinks: &mut [Box<dyn Sink>]) -> Result<FitSummary> {
        self.fit_monitored(sinks, &mut PluginHost::empty())
    }

    /// Train to the configured number of epochs (from where a resumed run left off), writing
    /// records to every sink and calling the monitors. `fit_end` reaches every monitor even
    /// when training fails.
    pub fn fit_monitored(
        &mut self,
        sinks: &mut [Box<dyn Sink>],
        plugins: &mut PluginHost,
    ) -> Result<FitSummary> {
        let started = Instant::now();
        let result = self
            .begin(plugins, sinks)
            .and_then(|()| self.train_timed(sinks, plugins, None));
        let ended = self.end(plugins, sinks);
        let mut summary = result?;
        ended?;
        // The whole loop, `fit_start` and `fit_end` included.
        summary.seconds = started.elapsed().as_secs_f64();
        Ok(summary)
    }

    /// Start a run that is trained in parts with [`Trainer::advance`]: the `fit_start` event.
    pub fn begin(&mut self, plugins: &mut PluginHost, sinks: &mut [Box<dyn Sink>]) -> Result<()> {
        self.notify(
            plugins,
            sinks,
            EventData::new(EventKind::FIT_START, self.counters(0, 0), &[]),
        )
    }

    /// Train until the global step reaches `until` (or the configured epochs end, or a
    /// monitor stops the run), with validation, checkpoints and monitors as in a full run.
    pub fn advance(
        &mut self,
        sinks: &mut [Box<dyn Sink>],
        plugins: &mut PluginHost,
        until: u64,
    ) -> Result<FitSummary> {
        self.train_timed(sinks, plugins, Some(until))
    }

    /// [`Trainer::run_epochs`], with the wall time and the steps it took.
    fn train_timed(
        &mut self,
        sinks: &mut [Box<dyn Sink>],
        plugins: &mut PluginHost,
        until: Option<u64>,
    ) -> Result<FitSummary> {
        let started = Instant::now();
        let first_step = self.progress.global_step;
        let mut summary = FitSummary::default();
        self.run_epochs(sinks, plugins, &mut summary, until)?;
        summary.seconds = started.elapsed().as_secs_f64();
        summary.steps = self.progress.global_step - first_step;
        Ok(summary)
    }

    /// End a run: the `fit_end` event, which reaches every monitor still running.
    pub fn end(&mut self, plugins: &mut PluginHost, sinks: &mut [Box<dyn Sink>]) -> Result<()> {
        let mut scalars = Vec::new();
        let counters = self.counters(0, 0);
        let finished = plugins.finish(
            &EventData::new(EventKind::FIT_END, counters, &[]),
            &self.services(),
            &mut scalars,
        );
        let routed = write_monitor_scalars(
            sinks,
            scalars,
            counters.epoch as usize,
            self.progress.global_step,
        );
        finished?;
        routed
    }

    /// Seconds spent in validation passes (monitors' validation hooks included) so far.
    pub fn validation_seconds(&self) -> f64 {
        self.validation_seconds
    }

    /// Hessian-vector products computed for monitors so far, and the seconds they took.
    pub fn hvp_stats(&self) -> (u64, f64) {
        let (count, time) = self.probes.hvps.get();
        (count, time.as_secs_f64())
    }

    fn run_epochs(
        &mut self,
        sinks: &mut [Box<dyn Sink>],
        plugins: &mut PluginHost,
        summary: &mut FitSummary,
        until: Option<u64>,
    ) -> Result<()> {
        let reached = |step: u64| until.is_some_and(|until| step >= until);
        let samples = self.train.len() as usize;
        let batches = self.batches_per_epoch();
        let points = self.validation_points();
        while self.progress.epoch <= self.settings.epochs {
            if reached(self.progress.global_step) {
                return Ok(());
            }
            let epoch = self.progress.epoch;
            let epoch_started = Instant::now();
            // The epoch's order, drawn once per epoch (a run trained in parts re-enters here).
            let order = match self.epoch_order.take() {
                Some((cached, order, on_device)) if cached == epoch => (order, on_device),
                _ => {
                    let order = self.feed.epoch_order(epoch, samples);
                    let on_device = Tensor::f_from_slice(&order)?.f_to_device(self.device)?;
                    (order, on_device)
                }
            };
            let (order, order_on_device) = order;
            if self.progress.batches_done == 0 {
                let mut event =
                    EventData::new(EventKind::TRAIN_EPOCH_START, self.counters(0, 0), &[]);
                let weights = self.feed.sample_weights();
                if let Some(weights) = weights {
                    event.sampler = Some(SamplerDraws {
                        indices: RSlice::from_slice(&order),
                        weights: RSlice::from_slice(weights),
                        labels: RSlice::from_slice(&self.train_labels),
                    });
                }
                self.notify(plugins, sinks, event)?;
            }
            self.epoch_order = Some((epoch, order, order_on_device.shallow_clone()));
            while self.progress.batches_done < batches {
                if reached(self.progress.global_step) {
                    return Ok(());
                }
                let batch_index = self.progress.batches_done;
                self.train_batch(batch_index, &order_on_device, plugins, sinks)?;
                let done = self.progress.batches_done;
                if points.contains(&done) {
                    let val = self.validate(plugins, sinks)?;
                    summary.validations.push((self.progress.global_step, val));
                    if done == batches {
                        let metrics = self.end_epoch(epoch, val, epoch_started, plugins, sinks)?;
                        summary.epochs.push(metrics);
                    }
                    self.save_checkpoint(sinks, Some(val.loss));
                }
                if let Some(stop) = plugins.take_stop_request() {
                    self.save_checkpoint(sinks, None);
                    summary.stopped_by = Some(stop);
                    return Ok(());
                }
            }
            self.progress.epoch += 1;
            self.progress.batches_done = 0;
            self.progress.epoch_loss_sum = 0.0;
            self.progress.epoch_correct = 0.0;
            self.progress.epoch_samples = 0;
        }
        Ok(())
    }

    fn end_epoch(
        &mut self,
        epoch: usize,
        val: PassMetrics,
        started: Instant,
        plugins: &mut PluginHost,
        sinks: &mut [Box<dyn Sink>],
    ) -> Result<EpochMetrics> {
        let samples = self.progress.epoch_samples.max(1) as f64;
        let train = PassMetrics {
            loss: self.progress.epoch_loss_sum / samples,
            accuracy: self.progress.epoch_correct / samples,
        };
        let metrics = EpochMetrics {
            epoch,
            global_step: self.progress.global_step,
            train,
            val,
            seconds: started.elapsed().as_secs_f64(),
        };
        let values = [
            ("train_loss", train.loss),
            ("train_acc", train.accuracy),
            ("val_loss", val.loss),
            ("val_acc", val.accuracy),
        ];
        self.notify(
            plugins,
            sinks,
            EventData::new(EventKind::TRAIN_EPOCH_END, self.counters(0, 0), &values),
        )?;
        let mut record = self.record(
            RecordKind::Epoch,
            vec![
                ("train_loss".into(), train.loss),
                ("train_acc".into(), train.accuracy),
                ("val_loss".into(), val.loss),
                ("val_acc".into(), val.accuracy),
                ("epoch_time_s".into(), metrics.seconds),
            ],
        );
        if let Some(best) = self.progress.best_val_loss {
            record.metrics.insert(4, ("best_val_loss".into(), best));
        }
        for sink in sinks.iter_mut() {
            sink.write(&record)?;
        }
        self.write_weight_histograms(sinks)?;
        Ok(metrics)
    }

    fn record(&self, kind: RecordKind, metrics: Vec<(String, f64)>) -> Record {
        Record {
            kind,
            source: None,
            epoch: self.progress.epoch,
            global_step: self.progress.global_step,
            wall_time: unix_time(),
            metrics,
        }
    }

    /// Save a checkpoint at the current step, after flushing the sinks so that the metrics
    /// file's length can be recorded; a failure is a warning, and the previous checkpoint
    /// stays as it was.
    fn save_checkpoint(&mut self, sinks: &mut [Box<dyn Sink>], val_loss: Option<f64>) {
        if self.checkpoints.is_none() {
            return;
        }
        let flushed = sinks.iter_mut().try_for_each(|sink| sink.flush());
        let metrics_bytes = self
            .metrics_path
            .as_ref()
            .and_then(|path| std::fs::metadata(path).ok())
            .map(|m| m.len());
        let Some((checkpoints, config)) = &mut self.checkpoints else {
            return;
        };
        if let Err(err) = flushed {
            let message = format!(
                "checkpoint at step {} not written: flushing metrics failed: {err}",
                self.progress.global_step
            );
            tracing::warn!("{message}");
            self.warnings.push(message);
            return;
        }
        let progress = &self.progress;
        let state = TrainingState {
            format: 1,
            global_step: progress.global_step,
            epoch: progress.epoch,
            batches_done: progress.batches_done,
            epoch_loss_sum: progress.epoch_loss_sum,
            epoch_correct: progress.epoch_correct,
            epoch_samples: progress.epoch_samples,
            validation_pass: progress.validation_pass,
            best_val_loss: progress.best_val_loss,
            val_loss,
            optimizer_steps: self.optimizer.state_tensors().1,
            seed: self.settings.seed,
            config: config.clone(),
            metrics_bytes,
            vigil_version: env!("CARGO_PKG_VERSION").into(),
        };
        if let Err(err) = checkpoints.save(&self.vars, &self.optimizer, &state) {
            let message = format!(
                "checkpoint at step {} not written (the previous one is intact): {err}",
                state.global_step
            );
            tracing::warn!("{message}");
            self.warnings.push(message);
        }
    }

    /// Dispatch one event and route what the monitors logged.
    fn notify(
        &self,
        plugins: &mut PluginHost,
        sinks: &mut [Box<dyn Sink>],
        event: EventData<'_>,
    ) -> Result<()> {
        if !plugins.wants(event.kind) {
            return Ok(());
        }
        let mut scalars = Vec::new();
        let dispatched = plugins.dispatch(&event, &self.services(), &mut scalars);
        write_monitor_scalars(
            sinks,
            scalars,
            event.counters.epoch as usize,
            event.counters.global_step,
        )?;
        for (monitor, path, kind) in plugins.take_artifacts() {
            if kind != ArtifactKind::PNG {
                continue;
            }
            // The file was just written; TensorBoard shows it under a tag that stays the
            // same from epoch to epoch, so its slider steps through them.
            let png = std::fs::read(&path).map_err(|source| Error::io(&path, source))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let tag = format!("{monitor}/{name}");
            for sink in sinks.iter_mut() {
                sink.image(&tag, event.counters.global_step, unix_time(), &png)?;
            }
        }
        dispatched
    }

    /// A histogram of every parameter's values, under `weights/<name>`.
    fn write_weight_histograms(&self, sinks: &mut [Box<dyn Sink>]) -> Result<()> {
        let _no_grad = tch::no_grad_guard();
        for (name, parameter) in self.parameter_names.iter().zip(&self.parameters) {
            let values = Vec::<f32>::try_from(
                &parameter
                    .f_to_device(Device::Cpu)?
                    .f_to_kind(Kind::Float)?
                    .f_reshape([-1])?,
            )?;
            let histogram = Histogram::of(&values, 30);
            let tag = format!("weights/{name}");
            for sink in sinks.iter_mut() {
                sink.histogram(&tag, self.progress.global_step, unix_time(), &histogram)?;
            }
        }
        Ok(())
    }

    fn train_batch(
        &mut self,
        batch_index: u32,
        order: &Tensor,
        plugins: &mut PluginHost,
        sinks: &mut [Box<dyn Sink>],
    ) -> Result<()> {
        let samples = self.train.len();
        let batch_size = self.settings.batch_size as i64;
        let start = i64::from(batch_index) * batch_size;
        let size = batch_size.min(samples - start);
        let indices = order.f_narrow(0, start, size)?;
        let images = self.feed.augment(
            &self.train.images.f_index_select(0, &indices)?,
            self.progress.global_step,
        )?;
        let labels = self.train.labels.f_index_select(0, &indices)?;
        let lr = self.schedule.at(self.progress.global_step);
        let logits = self.model.forward_t(&images, true);
        let loss = cross_entropy(&logits, &labels, tch::Reduction::Mean)?;
        let loss_value = loss.f_double_value(&[])?;
        self.optimizer.zero_grad();
        let mut skip = false;
        if !loss_value.is_finite() {
            skip = self.anomaly(format!("training loss is {loss_value}"))?;
        }
        if !skip {
            loss.f_backward()?;
            if self.flat_grads.is_none() && plugins.subscribes(Subscriptions::GRADIENT) {
                self.flat_grads = services::flatten_grads(&self.parameters)?;
            }
        }
        let grad_norm = match self.settings.optim.clip_grad_norm {
            Some(max) if !skip => {
                let norm = self.optimizer.clip_grad_norm(max)?;
                if !norm.is_finite() {
                    skip = self.anomaly(format!("gradient norm is {norm}"))?;
                }
                Some(norm)
            }
            _ => None,
        };
        let batch_correct = correct_count(&logits, &labels)?;
        let mut values = vec![
            ("train_loss", loss_value),
            ("train_loss_bits", loss_value / std::f64::consts::LN_2),
            ("train_acc", batch_correct / size as f64),
            ("lr", lr),
            ("wd", self.settings.optim.weight_decay),
        ];
        if let Some(norm) = grad_norm {
            values.push(("grad_norm_before_clip", norm));
        }
        if plugins.wants(EventKind::TRAIN_BATCH_END) && !skip {
            let counters = self.counters(batch_index, size as u32);
            self.notify(
                plugins,
                sinks,
                EventData::new(EventKind::TRAIN_BATCH_END, counters, &values),
            )?;
        }
        if !skip {
            self.optimizer.step(lr)?;
            self.progress.global_step += 1;
        }
        self.progress.batches_done += 1;
        if loss_value.is_finite() {
            self.progress.epoch_loss_sum += loss_value * size as f64;
            self.progress.epoch_correct += batch_correct;
            self.progress.epoch_samples += size as u64;
        }
        let mut record = self.record(
            RecordKind::Train,
            values.iter().map(|&(k, v)| (k.to_string(), v)).collect(),
        );
        if skip {
            record.metrics.push(("skipped".into(), 1.0));
        }
        for sink in sinks.iter_mut() {
            sink.write(&record)?;
        }
        Ok(())
    }

    /// Apply the anomaly policy; returns whether to skip the optimizer step.
    fn anomaly(&mut self, what: String) -> Result<bool> {
        let step = self.progress.global_step;
        match self.settings.anomaly_policy {
            AnomalyPolicy::Stop => Err(Error::Diverged {
                epoch: self.progress.epoch,
                step,
                what: format!("{what} (anomaly_policy = \"stop\"; lower `optim.lr`, set `optim.clip_grad_norm`, or choose \"skip_batch\")"),
            }),
            AnomalyPolicy::SkipBatch | AnomalyPolicy::Warn => {
                let skip = self.settings.anomaly_policy == AnomalyPolicy::SkipBatch;
                let message = format!(
                    "step {step}, epoch {}: {what}; {}",
                    self.progress.epoch,
                    if skip { "batch skipped" } else { "step taken anyway (anomaly_policy = \"warn\")" }
                );
                tracing::warn!("{message}");
                self.warnings.push(message);
                Ok(skip)
            }
        }
    }

    /// Validate, record `val_loss`, `val_acc` and `best_val_loss`, and tell the monitors.
    fn validate(
        &mut self,
        plugins: &mut PluginHost,
        sinks: &mut [Box<dyn Sink>],
    ) -> Result<PassMetrics> {
        let started = Instant::now();
        let metrics = self.evaluate_monitored(plugins, sinks);
        self.validation_seconds += started.elapsed().as_secs_f64();
        let metrics = metrics?;
        let best = self
            .progress
            .best_val_loss
            .map_or(metrics.loss, |b| b.min(metrics.loss));
        self.progress.best_val_loss = Some(best);
        let record = self.record(
            RecordKind::Validation,
            vec![
                ("val_loss".into(), metrics.loss),
                ("val_acc".into(), metrics.accuracy),
                ("best_val_loss".into(), best),
            ],
        );
        for sink in sinks.iter_mut() {
            sink.write(&record)?;
        }
        Ok(metrics)
    }

    /// Loss and accuracy on the validation (test) split, without gradients and in eval mode.
    pub fn evaluate(&mut self) -> Result<PassMetrics> {
        self.evaluate_monitored(&mut PluginHost::empty(), &mut [])
    }

    fn evaluate_monitored(
        &mut self,
        plugins: &mut PluginHost,
        sinks: &mut [Box<dyn Sink>],
    ) -> Result<PassMetrics> {
        let _no_grad = tch::no_grad_guard();
        self.progress.validation_pass += 1;
        let samples = self.test.len();
        let batch_size = self.settings.eval_batch_size as i64;
        let per_batch = plugins.wants(EventKind::VALIDATION_BATCH_END);
        let copy_outputs = per_batch && plugins.subscribes(Subscriptions::VALIDATION_OUTPUTS);
        let want_images = plugins.wants(EventKind::VALIDATION_END)
            && plugins.subscribes(Subscriptions::SAMPLE_IMAGES);
        let image_count = samples.min(SAMPLE_IMAGES as i64);
        let mut image_predictions: Vec<i64> = Vec::new();
        let num_classes = self.class_names.len() as u32;
        let (mut loss_sum, mut correct) = (0f64, 0f64);
        let (mut start, mut batch_index) = (0, 0u32);
        while start < samples {
            let size = batch_size.min(samples - start);
            let images = self.test.images.f_narrow(0, start, size)?;
            let labels = self.test.labels.f_narrow(0, start, size)?;
            let logits = self.model.forward_t(&images, false);
            loss_sum += cross_entropy(&logits, &labels, tch::Reduction::Sum)?.f_double_value(&[])?;
            let predictions = logits.f_argmax(-1, false)?;
            correct += predictions
                .f_eq_tensor(&labels)?
                .f_sum(Kind::Float)?
                .f_double_value(&[])?;
            let need_predictions =
                copy_outputs || (want_images && (image_predictions.len() as i64) < image_count);
            let mut cpu_predictions = Vec::new();
            if need_predictions {
                cpu_predictions = Vec::<i64>::try_from(&predictions.f_to_device(Device::Cpu)?)?;
                if want_images {
                    let missing = (image_count as usize).saturating_sub(image_predictions.len());
                    image_predictions.extend(cpu_predictions.iter().take(missing));
                }
            }
            if per_batch {
                let (cpu_logits, cpu_labels) = if copy_outputs {
                    (
                        Vec::<f32>::try_from(
                            &logits
                                .f_to_device(Device::Cpu)?
                                .f_to_kind(Kind::Float)?
                                .f_reshape([-1])?,
                        )?,
                        Vec::<i64>::try_from(&labels.f_to_device(Device::Cpu)?)?,
                    )
                } else {
                    (Vec::new(), Vec::new())
                };
                let mut event = EventData::new(
                    EventKind::VALIDATION_BATCH_END,
                    self.counters(batch_index, size as u32),
                    &[],
                );
                if copy_outputs {
                    event.validation = Some(ValidationBatch {
                        logits: RSlice::from_slice(&cpu_logits),
                        predictions: RSlice::from_slice(&cpu_predictions),
                        labels: RSlice::from_slice(&cpu_labels),
                        num_classes,
                    });
                }
                self.notify(plugins, sinks, event)?;
            }
            start += size;
            batch_index += 1;
        }
        let metrics = PassMetrics {
            loss: loss_sum / samples as f64,
            accuracy: correct / samples as f64,
        };
        if plugins.wants(EventKind::VALIDATION_END) {
            let values = [("val_loss", metrics.loss), ("val_acc", metrics.accuracy)];
            let mut event = EventData::new(EventKind::VALIDATION_END, self.counters(0, 0), &values);
            let (pixels, labels) = if want_images {
                (
                    self.test.display_images(image_count)?,
                    Vec::<i64>::try_from(
                        &self
                            .test
                            .labels
                            .f_narrow(0, 0, image_count)?
                            .f_to_device(Device::Cpu)?,
                    )?,
                )
            } else {
                (Vec::new(), Vec::new())
            };
            if want_images {
                let size = self.test.images.size();
                event.images = Some(ImageBatch {
                    pixels: RSlice::from_slice(&pixels),
                    count: image_count as u32,
                    channels: size[1] as u32,
                    height: size[2] as u32,
                    width: size[3] as u32,
                    labels: RSlice::from_slice(&labels),
                    predictions: RSlice::from_slice(&image_predictions),
                });
            }
            self.notify(plugins, sinks, event)?;
        }
        Ok(metrics)
    }
}

fn cross_entropy(logits: &Tensor, labels: &Tensor, reduction: tch::Reduction) -> Result<Tensor> {
    Ok(logits.f_cross_entropy_loss::<Tensor>(labels, None, reduction, -100, 0.0)?)
}

/// How many rows of `logits` put their maximum on the label.
fn correct_count(logits: &Tensor, labels: &Tensor) -> Result<f64> {
    Ok(logits
        .f_argmax(-1, false)?
        .f_eq_tensor(labels)?
        .f_sum(Kind::Float)?
        .f_double_value(&[])?)
}

/// One record per monitor for the scalars monitors logged at one event.
fn write_monitor_scalars(
    sinks: &mut [Box<dyn Sink>],
    scalars: Vec<(String, String, f64)>,
    epoch: usize,
    global_step: u64,
) -> Result<()> {
    let mut records: Vec<Record> = Vec::new();
    for (monitor, metric, value) in scalars {
        match records
            .iter_mut()
            .find(|r| r.source.as_deref() == Some(monitor.as_str()))
        {
            Some(record) => record.metrics.push((metric, value)),
            None => records.push(Record {
                kind: RecordKind::Monitor,
                source: Some(monitor),
                epoch,
                global_step,
                wall_time: unix_time(),
                metrics: vec![(metric, value)],
            }),
        }
    }
    for record in &records {
        for sink in sinks.iter_mut() {
            sink.write(record)?;
        }
    }
    Ok(())
}
