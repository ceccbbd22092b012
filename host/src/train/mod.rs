//! The training loop: data to tensors, epochs of SGD, evaluation on the test split, monitor
//! events, and the records it sends to the sinks.

mod run_dir;
mod services;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use abi_stable::std_types::{RSlice, RString, RVec};
use tch::nn::{self, ModuleT, OptimizerConfig};
use tch::{Device, Kind, Tensor};
use vigil_plugin_api::{EventKind, ImageBatch, StepCounters, Subscriptions, ValidationBatch};

use crate::config::{OptimKind, Settings};
use crate::data::{self, Dataset, ImageSet};
use crate::error::{Error, Result};
use crate::model::{self, InputShape};
use crate::plugin::{EventData, PluginHost, RunFacts};
use crate::rng::SplitMix64;
use crate::sink::{unix_time, ConsoleSink, JsonlSink, Record, RecordKind, Sink};

pub use run_dir::{create_run_dir, write_atomically};
use services::{parameter_infos, ProbeCache, TrainerServices};

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
    pub test: PassMetrics,
    pub seconds: f64,
}

/// What a whole run produced.
#[derive(Debug, Clone)]
pub struct FitSummary {
    pub epochs: Vec<EpochMetrics>,
    /// Wall time of the training loop (training, evaluation and monitors).
    pub seconds: f64,
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

/// Trains one model on one dataset.
pub struct Trainer {
    settings: Settings,
    device: Device,
    vars: nn::VarStore,
    /// The trainable parameters, in creation order (the order monitors see).
    parameters: Vec<Tensor>,
    model: Box<dyn ModuleT + Send>,
    optimizer: nn::Optimizer,
    train: TensorSplit,
    test: TensorSplit,
    class_names: Vec<String>,
    probes: ProbeCache,
    global_step: u64,
    validation_pass: u32,
}

impl Trainer {
    /// Build the model and optimiser and move the dataset to the device.
    pub fn new(settings: &Settings, dataset: &Dataset) -> Result<Self> {
        if let Some(threads) = settings.threads {
            tch::set_num_threads(threads as i32);
        }
        let device = Device::Cpu;
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
        let optim = &settings.optim;
        let optimizer = match optim.kind {
            OptimKind::Sgd => nn::Sgd {
                momentum: optim.momentum,
                dampening: 0.0,
                wd: optim.weight_decay,
                nesterov: optim.nesterov,
            }
            .build(&vars, optim.lr)?,
        };
        // Normalise both splits with the training split's statistics.
        let (mean, std) = dataset.train.channel_stats();
        Ok(Trainer {
            settings: settings.clone(),
            device,
            parameters: vars.trainable_variables(),
            train: TensorSplit::new(&dataset.train, &mean, &std, device)?,
            test: TensorSplit::new(&dataset.test, &mean, &std, device)?,
            class_names: dataset.class_names.clone(),
            vars,
            model,
            optimizer,
            probes: ProbeCache::default(),
            global_step: 0,
            validation_pass: 0,
        })
    }

    /// Number of trainable parameters.
    pub fn parameter_count(&self) -> usize {
        self.parameters.iter().map(Tensor::numel).sum()
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
        }
    }

    /// Capabilities for monitors, borrowing the model, parameters and data.
    pub fn services(&self) -> impl crate::plugin::HostServices + '_ {
        TrainerServices {
            model: &*self.model,
            parameters: &self.parameters,
            train: &self.train,
            probes: &self.probes,
            device: self.device,
        }
    }

    fn batches_per_epoch(&self) -> u32 {
        let samples = self.train.len() as usize;
        samples.div_ceil(self.settings.batch_size) as u32
    }

    /// Counters at the current point of training.
    pub fn counters(&self, epoch: usize, batch_index: u32, batch_size: u32) -> StepCounters {
        let batches = self.batches_per_epoch();
        StepCounters {
            global_step: self.global_step,
            epoch: epoch as u32,
            total_epochs: self.settings.epochs as u32,
            batch_index,
            batches_per_epoch: batches,
            epoch_progress: epoch.saturating_sub(1) as f64
                + f64::from(batch_index) / f64::from(batches.max(1)),
            validation_pass: self.validation_pass,
            batch_size,
        }
    }

    /// Train for the configured number of epochs without monitors.
    pub fn fit(&mut self, sinks: &mut [Box<dyn Sink>]) -> Result<FitSummary> {
        self.fit_monitored(sinks, &mut PluginHost::empty())
    }

    /// Train for the configured number of epochs, writing one record per epoch to every sink
    /// and calling the monitors. `fit_end` reaches every monitor even when training fails.
    pub fn fit_monitored(
        &mut self,
        sinks: &mut [Box<dyn Sink>],
        plugins: &mut PluginHost,
    ) -> Result<FitSummary> {
        let started = Instant::now();
        let mut epochs = Vec::with_capacity(self.settings.epochs);
        let result = self.run_epochs(sinks, plugins, &mut epochs);
        let last_epoch = epochs.last().map_or(1, |e: &EpochMetrics| e.epoch);
        let mut scalars = Vec::new();
        let counters = self.counters(last_epoch, 0, 0);
        let finished = plugins.finish(
            &EventData::new(EventKind::FIT_END, counters, &[]),
            &self.services(),
            &mut scalars,
        );
        let routed = write_monitor_scalars(sinks, scalars, last_epoch, self.global_step);
        let stopped_by = result?;
        finished?;
        routed?;
        Ok(FitSummary {
            epochs,
            seconds: started.elapsed().as_secs_f64(),
            stopped_by,
        })
    }

    fn run_epochs(
        &mut self,
        sinks: &mut [Box<dyn Sink>],
        plugins: &mut PluginHost,
        epochs: &mut Vec<EpochMetrics>,
    ) -> Result<Option<(String, String)>> {
        self.notify(
            plugins,
            sinks,
            EventData::new(EventKind::FIT_START, self.counters(1, 0, 0), &[]),
        )?;
        for epoch in 1..=self.settings.epochs {
            let epoch_started = Instant::now();
            self.notify(
                plugins,
                sinks,
                EventData::new(
                    EventKind::TRAIN_EPOCH_START,
                    self.counters(epoch, 0, 0),
                    &[],
                ),
            )?;
            let train = self.train_epoch(epoch, plugins, sinks)?;
            if let Some(stop) = plugins.take_stop_request() {
                return Ok(Some(stop));
            }
            let test = self.evaluate_monitored(epoch, plugins, sinks)?;
            let metrics = EpochMetrics {
                epoch,
                global_step: self.global_step,
                train,
                test,
                seconds: epoch_started.elapsed().as_secs_f64(),
            };
            let values = [
                ("train_loss", train.loss),
                ("train_acc", train.accuracy),
                ("val_loss", test.loss),
                ("val_acc", test.accuracy),
            ];
            self.notify(
                plugins,
                sinks,
                EventData::new(
                    EventKind::TRAIN_EPOCH_END,
                    self.counters(epoch, 0, 0),
                    &values,
                ),
            )?;
            let record = epoch_record(&metrics);
            for sink in sinks.iter_mut() {
                sink.write(&record)?;
                sink.flush()?;
            }
            epochs.push(metrics);
            if let Some(stop) = plugins.take_stop_request() {
                return Ok(Some(stop));
            }
        }
        Ok(None)
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
        dispatched
    }

    fn train_epoch(
        &mut self,
        epoch: usize,
        plugins: &mut PluginHost,
        sinks: &mut [Box<dyn Sink>],
    ) -> Result<PassMetrics> {
        let samples = self.train.len();
        let order =
            SplitMix64::derived(self.settings.seed.wrapping_add(epoch as u64), "epoch-order")
                .permutation(samples as usize);
        let order = Tensor::f_from_slice(&order)?.f_to_device(self.device)?;
        let batch_size = self.settings.batch_size as i64;
        let (mut loss_sum, mut correct) = (0f64, 0f64);
        let (mut start, mut batch_index) = (0, 0u32);
        while start < samples {
            let size = batch_size.min(samples - start);
            let indices = order.f_narrow(0, start, size)?;
            let images = self.train.images.f_index_select(0, &indices)?;
            let labels = self.train.labels.f_index_select(0, &indices)?;
            let logits = self.model.forward_t(&images, true);
            let loss = cross_entropy(&logits, &labels, tch::Reduction::Mean)?;
            let loss_value = loss.f_double_value(&[])?;
            if !loss_value.is_finite() {
                return Err(Error::Diverged {
                    epoch,
                    step: self.global_step,
                    what: format!("training loss is {loss_value}; lower `optim.lr`"),
                });
            }
            self.optimizer.zero_grad();
            loss.f_backward()?;
            let batch_correct = correct_count(&logits, &labels)?;
            if plugins.wants(EventKind::TRAIN_BATCH_END) {
                let values = [
                    ("train_loss", loss_value),
                    ("train_loss_bits", loss_value / std::f64::consts::LN_2),
                    ("train_acc", batch_correct / size as f64),
                    ("lr", self.settings.optim.lr),
                    ("wd", self.settings.optim.weight_decay),
                ];
                let counters = self.counters(epoch, batch_index, size as u32);
                self.notify(
                    plugins,
                    sinks,
                    EventData::new(EventKind::TRAIN_BATCH_END, counters, &values),
                )?;
            }
            self.optimizer.step();
            self.global_step += 1;
            loss_sum += loss_value * size as f64;
            correct += batch_correct;
            start += size;
            batch_index += 1;
            if plugins.stop_requested() {
                break;
            }
        }
        Ok(PassMetrics {
            loss: loss_sum / start.max(1) as f64,
            accuracy: correct / start.max(1) as f64,
        })
    }

    /// Loss and accuracy on the test split, without gradients and in eval mode.
    pub fn evaluate(&mut self) -> Result<PassMetrics> {
        self.evaluate_monitored(1, &mut PluginHost::empty(), &mut [])
    }

    fn evaluate_monitored(
        &mut self,
        epoch: usize,
        plugins: &mut PluginHost,
        sinks: &mut [Box<dyn Sink>],
    ) -> Result<PassMetrics> {
        let _no_grad = tch::no_grad_guard();
        self.validation_pass += 1;
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
            if need_predictions {
                let cpu_predictions = Vec::<i64>::try_from(&predictions.f_to_device(Device::Cpu)?)?;
                if want_images {
                    let missing = (image_count as usize).saturating_sub(image_predictions.len());
                    image_predictions.extend(cpu_predictions.iter().take(missing));
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
                        self.counters(epoch, batch_index, size as u32),
                        &[],
                    );
                    event.validation = Some(ValidationBatch {
                        logits: RSlice::from_slice(&cpu_logits),
                        predictions: RSlice::from_slice(&cpu_predictions),
                        labels: RSlice::from_slice(&cpu_labels),
                        num_classes,
                    });
                    self.notify(plugins, sinks, event)?;
                }
            } else if per_batch {
                let counters = self.counters(epoch, batch_index, size as u32);
                self.notify(
                    plugins,
                    sinks,
                    EventData::new(EventKind::VALIDATION_BATCH_END, counters, &[]),
                )?;
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
            let mut event = EventData::new(
                EventKind::VALIDATION_END,
                self.counters(epoch, 0, 0),
                &values,
            );
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

fn epoch_record(metrics: &EpochMetrics) -> Record {
    Record {
        kind: RecordKind::Epoch,
        source: None,
        epoch: metrics.epoch,
        global_step: metrics.global_step,
        wall_time: unix_time(),
        metrics: vec![
            ("train_loss".into(), metrics.train.loss),
            ("train_acc".into(), metrics.train.accuracy),
            ("test_loss".into(), metrics.test.loss),
            ("test_acc".into(), metrics.test.accuracy),
            ("epoch_time_s".into(), metrics.seconds),
        ],
    }
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

/// A finished run: where it wrote and what it measured.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub run_dir: PathBuf,
    pub dataset: String,
    pub summary: FitSummary,
}

/// Everything `vigil train CONFIG` does: validate the config, load the data, build the model
/// and the monitors, and only then create the run directory, train, and write
/// `metrics.jsonl` and `run.json` there. `run.json` is written even when training fails.
pub fn train_from_file(config_path: &Path) -> Result<RunOutcome> {
    let settings = Settings::from_file(config_path)?;
    let dataset = data::load(&settings.data)?;
    println!(
        "data: {} ({} train, {} test images of {}×{}×{}, {} classes)",
        dataset.name,
        dataset.train.len(),
        dataset.test.len(),
        dataset.train.channels,
        dataset.train.height,
        dataset.train.width,
        dataset.num_classes()
    );
    let mut trainer = Trainer::new(&settings, &dataset)?;
    println!(
        "model: {} with {} parameters; {} epochs of batch {} (seed {})",
        settings.model.kind.name(),
        trainer.parameter_count(),
        settings.epochs,
        settings.batch_size,
        settings.seed
    );
    let mut plugins = PluginHost::load(
        &settings.monitors,
        &settings.plugin_dirs,
        trainer.run_facts(),
        &trainer.services(),
        trainer.counters(1, 0, 0),
    )?;

    let run_dir = create_run_dir(&settings)?;
    let config_copy = run_dir.join("config.toml");
    std::fs::copy(config_path, &config_copy).map_err(|source| Error::io(&config_copy, source))?;
    println!("run directory: {}", run_dir.display());
    plugins.set_artifact_dir(run_dir.join("artifacts"));
    let mut sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(ConsoleSink::new(settings.epochs)),
        Box::new(JsonlSink::create(&run_dir.join("metrics.jsonl"))?),
    ];
    let started = Instant::now();
    let fitted = trainer.fit_monitored(&mut sinks, &mut plugins);
    let loop_seconds = started.elapsed().as_secs_f64();
    let flushed = sinks.iter_mut().try_for_each(|sink| sink.flush());

    let (status, error) = match &fitted {
        Ok(summary) if summary.stopped_by.is_some() => ("stopped", None),
        Ok(_) => ("completed", None),
        Err(err) => ("failed", Some(err.to_string())),
    };
    let summary = fitted.as_ref().ok();
    let last = summary.and_then(FitSummary::last);
    let run_summary = serde_json::json!({
        "name": settings.name,
        "status": status,
        "error": error,
        "stopped_by": summary.and_then(|s| s.stopped_by.as_ref()).map(|(monitor, reason)| serde_json::json!({
            "monitor": monitor,
            "reason": reason,
        })),
        "config": config_path.display().to_string(),
        "dataset": dataset.name,
        "model": settings.model.kind.name(),
        "parameters": trainer.parameter_count(),
        "seed": settings.seed,
        "epochs": settings.epochs,
        "global_step": trainer.global_step,
        "final": last.map(|m| serde_json::json!({
            "train_loss": m.train.loss,
            "train_acc": m.train.accuracy,
            "test_loss": m.test.loss,
            "test_acc": m.test.accuracy,
        })),
        "wall_time_s": loop_seconds,
        "monitors": plugins.report(loop_seconds),
        "warnings": plugins.warnings(),
        "vigil_version": env!("CARGO_PKG_VERSION"),
    });
    let text = serde_json::to_vec_pretty(&run_summary).map_err(|source| Error::Json {
        what: "run summary".into(),
        source,
    })?;
    write_atomically(&run_dir.join("run.json"), &text)?;
    let summary = fitted?;
    flushed?;
    if let Some((monitor, reason)) = &summary.stopped_by {
        println!("stopped early: monitor `{monitor}` asked to stop: {reason}");
    }
    Ok(RunOutcome {
        run_dir,
        dataset: dataset.name,
        summary,
    })
}
