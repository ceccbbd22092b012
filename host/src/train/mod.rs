//! The training loop: data to tensors, epochs of SGD, evaluation on the test split, and the
//! records it sends to the sinks.

mod run_dir;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use tch::nn::{self, ModuleT, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::config::{OptimKind, Settings};
use crate::data::{self, Dataset, ImageSet};
use crate::error::{Error, Result};
use crate::model::{self, InputShape};
use crate::rng::SplitMix64;
use crate::sink::{unix_time, ConsoleSink, JsonlSink, Record, RecordKind, Sink};

pub use run_dir::{create_run_dir, write_atomically};

/// Serialises "seed libtorch's global generator, then initialise a model".
static SEEDED_INIT: Mutex<()> = Mutex::new(());

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
    pub seconds: f64,
}

impl FitSummary {
    pub fn last(&self) -> Option<&EpochMetrics> {
        self.epochs.last()
    }
}

/// A split as tensors on the training device: normalised images and labels.
struct TensorSplit {
    images: Tensor,
    labels: Tensor,
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
        let mean = Tensor::f_from_slice(mean)?.f_view(channel_shape)?;
        let std = Tensor::f_from_slice(std)?.f_view(channel_shape)?;
        let images = Tensor::f_from_slice(&set.images)?
            .f_view(shape)?
            .f_to_kind(Kind::Float)?
            .f_div_scalar(255.0)?
            .f_sub(&mean)?
            .f_div(&std)?
            .f_to_device(device)?;
        let labels = Tensor::f_from_slice(&set.labels)?.f_to_device(device)?;
        Ok(TensorSplit { images, labels })
    }

    fn len(&self) -> i64 {
        self.labels.size()[0]
    }
}

/// Trains one model on one dataset.
pub struct Trainer {
    settings: Settings,
    device: Device,
    // Owns the parameters the model and optimiser refer to.
    _vars: nn::VarStore,
    model: Box<dyn ModuleT + Send>,
    optimizer: nn::Optimizer,
    train: TensorSplit,
    test: TensorSplit,
    global_step: u64,
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
            train: TensorSplit::new(&dataset.train, &mean, &std, device)?,
            test: TensorSplit::new(&dataset.test, &mean, &std, device)?,
            _vars: vars,
            model,
            optimizer,
            global_step: 0,
        })
    }

    /// Number of trainable parameters.
    pub fn parameter_count(&self) -> usize {
        self._vars
            .trainable_variables()
            .iter()
            .map(|tensor| tensor.numel())
            .sum()
    }

    /// Train for the configured number of epochs, writing one record per epoch to every sink.
    pub fn fit(&mut self, sinks: &mut [Box<dyn Sink>]) -> Result<FitSummary> {
        let started = Instant::now();
        let mut epochs = Vec::with_capacity(self.settings.epochs);
        for epoch in 1..=self.settings.epochs {
            let epoch_started = Instant::now();
            let train = self.train_epoch(epoch)?;
            let test = self.evaluate()?;
            let metrics = EpochMetrics {
                epoch,
                global_step: self.global_step,
                train,
                test,
                seconds: epoch_started.elapsed().as_secs_f64(),
            };
            let record = epoch_record(&metrics);
            for sink in sinks.iter_mut() {
                sink.write(&record)?;
                sink.flush()?;
            }
            epochs.push(metrics);
        }
        Ok(FitSummary {
            epochs,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    fn train_epoch(&mut self, epoch: usize) -> Result<PassMetrics> {
        let samples = self.train.len();
        let order =
            SplitMix64::derived(self.settings.seed.wrapping_add(epoch as u64), "epoch-order")
                .permutation(samples as usize);
        let order = Tensor::f_from_slice(&order)?.f_to_device(self.device)?;
        let batch_size = self.settings.batch_size as i64;
        let (mut loss_sum, mut correct) = (0f64, 0f64);
        let mut start = 0;
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
            self.optimizer.step();
            self.global_step += 1;
            loss_sum += loss_value * size as f64;
            correct += correct_count(&logits, &labels)?;
            start += size;
        }
        Ok(PassMetrics {
            loss: loss_sum / samples as f64,
            accuracy: correct / samples as f64,
        })
    }

    /// Loss and accuracy on the test split, without gradients and in eval mode.
    pub fn evaluate(&self) -> Result<PassMetrics> {
        let _no_grad = tch::no_grad_guard();
        let samples = self.test.len();
        let batch_size = self.settings.eval_batch_size as i64;
        let (mut loss_sum, mut correct) = (0f64, 0f64);
        let mut start = 0;
        while start < samples {
            let size = batch_size.min(samples - start);
            let images = self.test.images.f_narrow(0, start, size)?;
            let labels = self.test.labels.f_narrow(0, start, size)?;
            let logits = self.model.forward_t(&images, false);
            loss_sum += cross_entropy(&logits, &labels, tch::Reduction::Sum)?.f_double_value(&[])?;
            correct += correct_count(&logits, &labels)?;
            start += size;
        }
        Ok(PassMetrics {
            loss: loss_sum / samples as f64,
            accuracy: correct / samples as f64,
        })
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

/// A finished run: where it wrote and what it measured.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub run_dir: PathBuf,
    pub dataset: String,
    pub summary: FitSummary,
}

/// Everything `vigil train CONFIG` does: validate the config, load the data, and only then
/// create the run directory, train, and write `metrics.jsonl` and `run.json` there.
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

    let run_dir = create_run_dir(&settings)?;
    let config_copy = run_dir.join("config.toml");
    std::fs::copy(config_path, &config_copy).map_err(|source| Error::io(&config_copy, source))?;
    println!("run directory: {}", run_dir.display());
    let mut sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(ConsoleSink::new(settings.epochs)),
        Box::new(JsonlSink::create(&run_dir.join("metrics.jsonl"))?),
    ];
    let summary = trainer.fit(&mut sinks)?;

    let run_summary = serde_json::json!({
        "name": settings.name,
        "config": config_path.display().to_string(),
        "dataset": dataset.name,
        "model": settings.model.kind.name(),
        "parameters": trainer.parameter_count(),
        "seed": settings.seed,
        "epochs": settings.epochs,
        "global_step": summary.last().map_or(0, |m| m.global_step),
        "final": summary.last().map(|m| serde_json::json!({
            "train_loss": m.train.loss,
            "train_acc": m.train.accuracy,
            "test_loss": m.test.loss,
            "test_acc": m.test.accuracy,
        })),
        "wall_time_s": summary.seconds,
        "vigil_version": env!("CARGO_PKG_VERSION"),
    });
    let text = serde_json::to_vec_pretty(&run_summary).map_err(|source| Error::Json {
        what: "run summary".into(),
        source,
    })?;
    write_atomically(&run_dir.join("run.json"), &text)?;
    Ok(RunOutcome {
        run_dir,
        dataset: dataset.name,
        summary,
    })
}
