//! The training loop: data to tensors, optimizer steps on a schedule, validation every
//! `val_check_interval` of an epoch, checkpoints, monitor events, and the records it sends to
//! the sinks.

mod averages;
pub mod checkpoint;
mod device;
mod early_stop;
mod events;
mod feed;
mod hessian;
pub(crate) mod loss;
mod optim;
mod outcome;
mod per_sample;
pub mod profile;
mod resume;
mod schedule;
mod services;
mod split;
mod step;
mod stopping;
mod validation;

use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use abi_stable::std_types::{RSlice, RString, RVec};
use tch::nn;
use tch::{Device, Tensor};
use vigil_plugin_api::{EventKind, SamplerDraws, StepCounters, Subscriptions};

use crate::config::{ModelKind, Settings};
use crate::data::Dataset;
use crate::error::Result;
use crate::hub::{MonitorTarget, RunHub};
use crate::model::{self, InputShape, Network};
use crate::plugin::{EventData, RunFacts};
use crate::sink::RecordKind;

use averages::GradientAverages;
pub use checkpoint::{CheckpointIndex, Checkpoints, TrainingState};
use device::choose_device;
pub use early_stop::{EarlyStop, EarlyStopState};
use early_stop::{EarlyStopping, Verdict};
use feed::Feed;
pub use hessian::batch_hessian_vector_product;
use hessian::ProbeCache;
pub use optim::Optimizer;
pub use outcome::{EpochMetrics, FitSummary, InputSpec, PassMetrics};
pub use resume::signal_name;
pub use schedule::LrSchedule;
use services::{parameter_infos, TrainerServices};
use split::TensorSplit;

mod command;
mod conclude;
pub use command::{check_config, train, train_from_file, Resume, RunOutcome, TrainRequest};

/// Serialises "seed libtorch's global generator, then initialise a model".
static SEEDED_INIT: Mutex<()> = Mutex::new(());

/// At most this many validation images are offered to monitors that subscribed to them.
pub const SAMPLE_IMAGES: usize = 64;

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
    model: Network,
    optimizer: Optimizer,
    schedule: LrSchedule,
    feed: Feed,
    train: TensorSplit,
    test: TensorSplit,
    /// Labels on the CPU, for the sampler's report and label queries of monitors.
    train_labels: Vec<i64>,
    val_labels: Vec<i64>,
    class_names: Vec<String>,
    /// Whether the inputs are images monitors can be shown (not float features).
    inputs_are_images: bool,
    /// The validation samples monitors are shown, by index ([`validation::shown_samples`]).
    shown_samples: Vec<i64>,
    probes: ProbeCache,
    averages: GradientAverages,
    progress: Progress,
    checkpoints: Option<(Checkpoints, String)>,
    warnings: Vec<String>,
    validation_seconds: f64,
    /// One tensor that every parameter's gradient is a slice of, once a monitor subscribed to
    /// the flattened gradient (see [`services::flatten_grads`]).
    flat_grads: Option<Tensor>,
    /// The current epoch's sample order, on the CPU and on the device.
    epoch_order: Option<(usize, Arc<Vec<i64>>, Tensor)>,
    /// Monitor state from the checkpoint a run resumes from, handed back when it begins.
    pending_restore: Option<resume::PendingRestore>,
    /// Set to a signal's number by a signal handler: stop cleanly after the current step.
    interrupt: Option<&'static AtomicUsize>,
    /// `[early_stopping]`, and the checkpoint whose weights it restored.
    early_stopping: Option<EarlyStopping>,
    restored_from: Option<String>,
    /// Where the training thread's time went ([`profile`]).
    phases: profile::Phases,
    /// Individual gradients and the parameters' motion, for monitors that subscribed.
    per_sample: per_sample::PerSample,
}

impl Trainer {
    /// Build the model and optimiser and move the dataset to the device.
    pub fn new(settings: &Settings, dataset: &Dataset) -> Result<Self> {
        Self::build(settings, dataset, None, None)
    }

    /// A trainer whose TorchScript model is loaded from `module_file` (a checkpoint's copy of
    /// the module, buffers included) rather than from `model.path`.
    pub fn with_module(settings: &Settings, dataset: &Dataset, module_file: &Path) -> Result<Self> {
        Self::build(settings, dataset, None, Some(module_file))
    }

    /// A trainer for `settings` that uses `other`'s copy of the dataset on the device instead
    /// of making its own (`dataset` must be the one `other` was built from). `vigil bench`
    /// trains several models side by side this way.
    pub fn sharing_data(settings: &Settings, dataset: &Dataset, other: &Trainer) -> Result<Self> {
        Self::build(settings, dataset, Some(other), None)
    }

    fn build(
        settings: &Settings,
        dataset: &Dataset,
        share: Option<&Trainer>,
        module_file: Option<&Path>,
    ) -> Result<Self> {
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
            model::build(
                &vars.root(),
                &settings.model,
                input,
                dataset.num_classes(),
                module_file,
            )?
        };
        // The convolutional networks' weights channels-last on the CPU (see
        // `model::use_channels_last`); the PyTorch loops of `vigil bench` make the same choice.
        let convolutional = matches!(settings.model.kind, ModelKind::Cnn | ModelKind::Resnet18);
        if convolutional && device == Device::Cpu {
            model::use_channels_last(&vars)?;
        }
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
                let prefetch = match &settings.data.source {
                    crate::config::DataSource::ImageFolder(folder) => folder.prefetch_batches,
                    _ => 1,
                };
                let (mean, std) = dataset.train.channel_stats();
                (
                    TensorSplit::new(&dataset.train, &mean, &std, device, prefetch)?,
                    TensorSplit::new(&dataset.test, &mean, &std, device, prefetch)?,
                )
            }
        };
        if let Some(scripted) = model.scripted() {
            let first = train.range(0, train.len().min(2))?;
            scripted.check_against(&first, input, dataset.num_classes())?;
        }
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
            inputs_are_images: dataset.test.is_images(),
            shown_samples: validation::shown_samples(
                &dataset.test.labels,
                SAMPLE_IMAGES,
                settings.seed,
            ),
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
            warnings: Vec::new(),
            validation_seconds: 0.0,
            flat_grads: None,
            epoch_order: None,
            pending_restore: None,
            interrupt: None,
            early_stopping: settings.early_stopping.clone().map(EarlyStopping::new),
            restored_from: None,
            phases: profile::Phases::default(),
            per_sample: per_sample::PerSample::default(),
        })
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

    /// What the model takes, for `inputs.json` and exported models.
    /// Where the training thread's time went so far.
    pub fn phases(&self) -> &profile::Phases {
        &self.phases
    }

    pub fn inputs(&self) -> InputSpec {
        let [_, channels, height, width] = self.train.size();
        InputSpec {
            channels: channels as usize,
            height: height as usize,
            width: width as usize,
            mean: self.train.mean.clone(),
            std: self.train.std.clone(),
            class_names: self.class_names.clone(),
        }
    }

    /// Say once, at the start, that monitors which show images get none, when the inputs are
    /// not images (float features of tensor files).
    pub fn warn_if_images_missing(&mut self, hub: &RunHub) {
        if !self.inputs_are_images && hub.subscribes(vigil_plugin_api::Subscriptions::SAMPLE_IMAGES)
        {
            let message =
                "the inputs are not images (float or non-image tensors), so monitors that \
                           show sample images get none and skip"
                    .to_string();
            tracing::warn!("{message}");
            self.warnings.push(message);
        }
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

    /// What monitors are built against ([`RunHub::load`]): the run's facts, the trainer's
    /// capabilities, and where training stands.
    pub fn monitor_target<'a>(
        &self,
        services: &'a dyn crate::plugin::HostServices,
    ) -> MonitorTarget<'a> {
        MonitorTarget {
            facts: self.run_facts(),
            services,
            counters: self.counters(0, 0),
        }
    }

    /// Capabilities for monitors, borrowing the model, parameters and data.
    pub fn services(&self) -> impl crate::plugin::HostServices + '_ {
        TrainerServices {
            model: &self.model,
            parameters: &self.parameters,
            train: &self.train,
            probes: &self.probes,
            averages: &self.averages,
            device: self.device,
            flat_grads: self.flat_grads.as_ref(),
            per_sample: &self.per_sample,
            step: self.progress.global_step,
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

    /// Train to the configured number of epochs (from where a resumed run left off): the
    /// run's start ([`Trainer::start`]), training ([`Trainer::train_until`]) and its end
    /// ([`Trainer::finish`]). Events go to `hub` ([`RunHub::empty`] for none). `fit_end`
    /// reaches every monitor even when training fails; an interrupted run sends no `fit_end`,
    /// since it goes on when it is resumed.
    pub fn fit(&mut self, hub: &mut RunHub) -> Result<FitSummary> {
        let started = Instant::now();
        let result = self.start(hub).and_then(|()| self.train_until(hub, None));
        if let Ok(summary) = &result {
            if summary.interrupted.is_some() {
                let mut summary = result?;
                summary.seconds = started.elapsed().as_secs_f64();
                return Ok(summary);
            }
        }
        let ended = self.finish(hub);
        let mut summary = result?;
        ended?;
        // The whole loop, `fit_start` and `fit_end` included.
        summary.seconds = started.elapsed().as_secs_f64();
        Ok(summary)
    }

    /// The start of a run: the `fit_start` event, or, for a resumed run, the monitors'
    /// state handed back.
    pub fn start(&mut self, hub: &mut RunHub) -> Result<()> {
        self.per_sample.set_subscribers(
            hub.subscriber_indices(Subscriptions::PER_SAMPLE),
            hub.subscriber_indices(Subscriptions::PARAMETER_MOTION),
        );
        self.keep_initial_weights()?;
        self.start_monitors(hub)
    }

    /// Train until the global step reaches `until` (or the configured epochs end, or a
    /// monitor stops the run, or a signal interrupts it), with validation, checkpoints and
    /// monitors as in a full run. A run can be trained in parts this way; the summary covers
    /// this part, with what its validations and Hessian-vector products took.
    pub fn train_until(&mut self, hub: &mut RunHub, until: Option<u64>) -> Result<FitSummary> {
        let started = Instant::now();
        let first_step = self.progress.global_step;
        let validation_before = self.validation_seconds;
        let (hvps_before, hvp_time_before) = self.probes.hvps.get();
        let mut summary = FitSummary::default();
        self.run_epochs(hub, &mut summary, until)?;
        summary.seconds = started.elapsed().as_secs_f64();
        summary.steps = self.progress.global_step - first_step;
        summary.validation_seconds = self.validation_seconds - validation_before;
        let (hvps, hvp_time) = self.probes.hvps.get();
        summary.hessian_vector_products = hvps - hvps_before;
        summary.hessian_vector_seconds = (hvp_time - hvp_time_before).as_secs_f64();
        Ok(summary)
    }

    /// The end of a run: the `fit_end` event, which reaches every monitor still running.
    pub fn finish(&mut self, hub: &mut RunHub) -> Result<()> {
        let counters = self.counters(0, 0);
        hub.finish_monitors(
            &EventData::new(EventKind::FIT_END, counters, &[]),
            &self.services(),
        )
    }

    fn run_epochs(
        &mut self,
        hub: &mut RunHub,
        summary: &mut FitSummary,
        until: Option<u64>,
    ) -> Result<()> {
        let reached = |step: u64| until.is_some_and(|until| step >= until);
        let batches = self.batches_per_epoch();
        let points = self.validation_points();
        if self.early_stop().is_some() {
            // Resumed from the checkpoint of the validation that stopped it.
            return self.end_early(summary);
        }
        while self.progress.epoch <= self.settings.epochs {
            if reached(self.progress.global_step) {
                return Ok(());
            }
            if self.interrupted().is_some() {
                return self.stop_for_signal(hub, summary);
            }
            let epoch = self.progress.epoch;
            let epoch_started = Instant::now();
            let order = self.epoch_order(epoch)?;
            let order_on_device = match &self.epoch_order {
                Some((_, _, on_device)) => on_device.shallow_clone(),
                None => Tensor::f_from_slice(&order)?.f_to_device(self.device)?,
            };
            let order_on_device = (order.clone(), order_on_device);
            if self.progress.batches_done == 0 {
                let mut lap = profile::Lap::start();
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
                self.notify(hub, event)?;
                lap.to(&mut self.phases, profile::Phase::Epochs);
            }
            while self.progress.batches_done < batches {
                if reached(self.progress.global_step) {
                    return Ok(());
                }
                let batch_index = self.progress.batches_done;
                self.train_batch(batch_index, &order_on_device, hub)?;
                let done = self.progress.batches_done;
                if points.contains(&done) {
                    let mut lap = profile::Lap::start();
                    let val = self.validate(hub)?;
                    summary.validations.push((self.progress.global_step, val));
                    let verdict = self.check_early_stopping(&val)?;
                    lap.to(&mut self.phases, profile::Phase::Validation);
                    if done == batches {
                        let metrics = self.end_epoch(epoch, val, epoch_started, hub)?;
                        summary.epochs.push(metrics);
                        lap.to(&mut self.phases, profile::Phase::Epochs);
                    }
                    self.save_checkpoint(hub, Some(val.loss))?;
                    lap.to(&mut self.phases, profile::Phase::Checkpoint);
                    if let Some(Verdict::Stop { .. }) = verdict {
                        return self.end_early(summary);
                    }
                }
                if let Some(stop) = hub.take_stop_request() {
                    self.save_checkpoint(hub, None)?;
                    summary.stopped_by = Some(stop);
                    return Ok(());
                }
                if self.interrupted().is_some() && self.progress.batches_done < batches {
                    return self.stop_for_signal(hub, summary);
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

    /// Epoch `epoch`'s sample order, drawn once and cached with its copy on the device (a
    /// run trained in parts, or resumed mid-epoch, asks again).
    fn epoch_order(&mut self, epoch: usize) -> Result<Arc<Vec<i64>>> {
        if let Some((cached, order, _)) = &self.epoch_order {
            if *cached == epoch {
                return Ok(order.clone());
            }
        }
        let order = Arc::new(self.feed.epoch_order(epoch, self.train.len() as usize));
        let on_device = Tensor::f_from_slice(&order)?.f_to_device(self.device)?;
        self.epoch_order = Some((epoch, order.clone(), on_device));
        Ok(order)
    }

    /// A signal asked the run to stop: checkpoint where training stands and return.
    fn stop_for_signal(&mut self, hub: &mut RunHub, summary: &mut FitSummary) -> Result<()> {
        self.save_checkpoint(hub, None)?;
        summary.interrupted = self.interrupted();
        Ok(())
    }

    fn end_epoch(
        &mut self,
        epoch: usize,
        val: PassMetrics,
        started: Instant,
        hub: &mut RunHub,
    ) -> Result<EpochMetrics> {
        let samples = self.progress.epoch_samples.max(1) as f64;
        let train = PassMetrics {
            loss: self.progress.epoch_loss_sum / samples,
            accuracy: self.progress.epoch_correct / samples,
            top_k: None,
        };
        let metrics = EpochMetrics {
            epoch,
            global_step: self.progress.global_step,
            train,
            val,
            seconds: started.elapsed().as_secs_f64(),
        };
        let top_k = val.top_k_metric();
        let mut values = vec![
            ("train_loss", train.loss),
            ("train_acc", train.accuracy),
            ("val_loss", val.loss),
            ("val_acc", val.accuracy),
        ];
        if let (Some((name, value)), Some((k, _))) = (top_k, val.top_k) {
            // `val_top_k` says which `val_acc_top{k}` a monitor will find.
            values.extend([(name, value), ("val_top_k", k as f64)]);
        }
        self.notify(
            hub,
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
        if let Some((name, value)) = top_k {
            record.metrics.insert(4, (name.into(), value));
        }
        self.write_record(hub, record)?;
        self.write_weight_histograms(hub)?;
        Ok(metrics)
    }
}
