//! `vigil train` and `vigil check` end to end: config, data, model, monitors, run directory,
//! sinks, training, `run.json`; and `--resume`, which continues the run a directory holds
//! from the effective config it keeps, refusing anything that would change what it computes.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use super::checkpoint;
use super::conclude::Attempted;
use super::{FitSummary, Trainer};
use crate::config::{read_config, Settings, RESUMABLE_KEYS};
use crate::data;
use crate::error::{Error, Result};
use crate::fs::write_atomically;
use crate::hub::RunHub;
use crate::run_dir::{self, create_run_dir, read_run_info, RunInfo, RunLayout, CONFIG_FILE};
use crate::run_log::say;
use crate::sink::ConsoleSink;

/// What `vigil train` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct TrainRequest {
    /// A config for a new run (or, with [`Resume::Auto`], for a run that may exist).
    pub config: Option<PathBuf>,
    /// Continue a run from its newest checkpoint.
    pub resume: Option<Resume>,
    /// `--set key=value` overrides.
    pub overrides: Vec<String>,
    /// A flag a signal handler sets ([`crate::interrupt::install`]): stop cleanly.
    pub interrupt: Option<&'static AtomicUsize>,
}

/// Which run `--resume` continues.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// `--resume RUN_DIR`: the run in this directory, trained from the config it keeps.
    Dir(PathBuf),
    /// `CONFIG --resume auto`: the run in the config's `run_dir` if it holds one of the same
    /// effective config, else a new run there. A requeued job runs the same command again.
    Auto,
}

/// A finished, interrupted or already complete run: where it wrote and what it measured.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub run_dir: PathBuf,
    pub dataset: String,
    pub summary: FitSummary,
    pub best_val_loss: Option<f64>,
    /// The signal that interrupted training, if one did.
    pub interrupted: Option<usize>,
    /// Optimizer steps taken, and the step of the newest checkpoint (if any).
    pub global_step: u64,
    pub checkpoint_step: Option<u64>,
    /// `--resume` found the run already completed and did nothing.
    pub already_complete: bool,
}

/// Train from a config file, as `vigil train CONFIG` does.
pub fn train_from_file(config: &Path) -> Result<RunOutcome> {
    train(&TrainRequest {
        config: Some(config.to_path_buf()),
        ..TrainRequest::default()
    })
}

/// Validate a config, its dataset, its model and its monitors without training: every
/// enabled monitor is found, checked, loaded and built with its settings exactly as `train`
/// would, then dropped without any hook being called. Returns what it found: the data, the
/// model, and each monitor's file, sha256, version, events and subscriptions.
pub fn check_config(config: &Path, overrides: &[String]) -> Result<String> {
    let settings = Settings::load(config, overrides)?;
    let dataset = data::load(&settings.data.source)?;
    let trainer = Trainer::new(&settings, &dataset)?;
    let hub = RunHub::load(
        &settings,
        trainer.monitor_target(&trainer.services()),
        settings.run_dir.as_deref().filter(|dir| dir.is_dir()),
    )?;
    let mut out = format!(
        "{}: ok\n  data: {} ({} train, {} validation images, {} classes)\n  model: {} with {} parameters; optim: {:?}, lr {}; {} epochs of batch {}\n",
        config.display(),
        dataset.name,
        dataset.train.len(),
        dataset.test.len(),
        dataset.num_classes(),
        settings.model.kind.name(),
        trainer.parameter_count(),
        settings.optim.kind,
        settings.optim.lr,
        settings.epochs,
        settings.batch_size,
    );
    if !dataset.skipped_files.is_empty() {
        out.push_str(&format!(
            "  skipped {} files that cannot be decoded (skip_bad_files = true): {}\n",
            dataset.skipped_files.len(),
            dataset.skipped_files.join(", ")
        ));
    }
    let monitors = hub.describe_monitors();
    if monitors.is_empty() {
        out.push_str("  monitors: none\n");
    } else {
        out.push_str("  monitors (built with their settings; no hook was called):\n");
        for line in monitors {
            out.push_str(&format!("    {line}\n"));
        }
    }
    for warning in hub.warnings() {
        out.push_str(&format!("  warning: {warning}\n"));
    }
    Ok(out)
}

/// What a `vigil train` request means: a run to start, or one to continue.
enum Start {
    New {
        settings: Settings,
        config_path: PathBuf,
    },
    Resume {
        settings: Settings,
        run_dir: PathBuf,
        /// The checkpoint it continues from, and the newer ones passed over as damaged.
        latest: Box<checkpoint::Latest>,
    },
}

/// Decide what the request means, checking everything a resume depends on before any file
/// is touched.
fn decide(request: &TrainRequest) -> Result<Start> {
    let usage = || Error::Usage {
        command: "vigil train",
        message: "give a CONFIG file, CONFIG --resume auto, or --resume RUN_DIR".into(),
    };
    match (&request.config, &request.resume) {
        (Some(config), None) => Ok(Start::New {
            settings: Settings::load(config, &request.overrides)?,
            config_path: config.clone(),
        }),
        (None, Some(Resume::Dir(run_dir))) => {
            let stored = stored_config(run_dir)?;
            let requested = Settings::from_toml_with(
                &stored.1,
                &run_dir.join(CONFIG_FILE),
                &request.overrides,
            )?;
            decide_resume(run_dir, &stored.0, requested, "--set")
        }
        (Some(config), Some(Resume::Auto)) => {
            let requested = Settings::load(config, &request.overrides)?;
            let Some(run_dir) = requested.run_dir.clone() else {
                return Err(Error::Config {
                    location: config.display().to_string(),
                    message:
                        "`--resume auto` needs `run_dir` in the config (or --set run_dir=DIR), \
                              so that running the same command again finds the same run"
                            .into(),
                });
            };
            match checkpoint::newest_intact(&run_dir) {
                Ok(_) => {
                    let (stored, _) = stored_config(&run_dir)?;
                    return decide_resume(&run_dir, &stored, requested, "the config");
                }
                // Checkpoints that are all damaged are not a run to start over silently.
                Err(err @ Error::CheckpointDamaged { .. }) => return Err(err),
                Err(_) => {}
            }
            start_over_if_unfinished(&run_dir, &requested)?;
            Ok(Start::New {
                settings: requested,
                config_path: config.clone(),
            })
        }
        _ => Err(usage()),
    }
}

/// The effective config a run directory keeps: parsed, and its text.
fn stored_config(run_dir: &Path) -> Result<(Settings, String)> {
    let path = run_dir.join(CONFIG_FILE);
    let text = read_config(&path).map_err(|_| Error::Resume {
        run_dir: run_dir.to_path_buf(),
        message: format!("has no {CONFIG_FILE}; is it a run directory written by `vigil train`?"),
    })?;
    Ok((Settings::from_toml(&text, &path)?, text))
}

fn decide_resume(
    run_dir: &Path,
    stored: &Settings,
    mut requested: Settings,
    asked_by: &str,
) -> Result<Start> {
    let latest = checkpoint::newest_intact(run_dir)?;
    let (checkpoint_dir, state) = (&latest.dir, &latest.state);
    if state.format != checkpoint::FORMAT {
        return Err(Error::Resume {
            run_dir: checkpoint_dir.clone(),
            message: format!(
                "is a checkpoint of format {} (written by vigil {}); this vigil resumes format {} only, \
                 because epoch orders and monitor state are kept differently: start a new run",
                state.format,
                state.vigil_version,
                checkpoint::FORMAT
            ),
        });
    }
    let saved = Settings::from_toml(&state.config, &checkpoint_dir.join("state.json"))?;
    let edited = saved.trajectory_differences(stored);
    if !edited.is_empty() {
        return Err(Error::Config {
            location: run_dir.join(CONFIG_FILE).display().to_string(),
            message: format!(
                "differs from the config of the checkpoint {} in {}: the file was edited after the \
                 run started; put it back, or start a new run",
                checkpoint_dir.display(),
                keys(&edited)
            ),
        });
    }
    let changed = stored.trajectory_differences(&requested);
    if !changed.is_empty() {
        return Err(Error::Resume {
            run_dir: run_dir.to_path_buf(),
            message: format!(
                "{asked_by} would change {} of this run, which changes what it computes; a resumed run \
                 keeps its config (may change: {}). Start a new run for another setting",
                keys(&changed),
                RESUMABLE_KEYS.join(", ")
            ),
        });
    }
    if requested.epochs < state.epoch {
        return Err(Error::Resume {
            run_dir: run_dir.to_path_buf(),
            message: format!(
                "`epochs` = {} is less than the epoch the checkpoint is in ({}); a run can only be trained longer",
                requested.epochs, state.epoch
            ),
        });
    }
    requested.run_dir = Some(run_dir.to_path_buf());
    Ok(Start::Resume {
        settings: requested,
        run_dir: run_dir.to_path_buf(),
        latest: Box::new(latest),
    })
}

fn keys(keys: &[String]) -> String {
    keys.iter()
        .map(|key| format!("`{key}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// For `--resume auto` when the run directory holds no checkpoint: an empty or missing
/// directory is simply used; a run of the same effective config that stopped before its
/// first checkpoint is started over (its partial outputs removed); anything else is refused.
fn start_over_if_unfinished(run_dir: &Path, requested: &Settings) -> Result<()> {
    if run_dir::is_unused(run_dir) {
        return Ok(());
    }
    let layout = RunLayout::new(run_dir);
    if crate::fs::is_locked(&layout.lock()) {
        return Err(run_dir::busy(run_dir));
    }
    let Ok((stored, _)) = stored_config(run_dir) else {
        return Err(Error::Resume {
            run_dir: run_dir.to_path_buf(),
            message: "is not empty and holds no vigil run; choose another `run_dir`".into(),
        });
    };
    let changed = stored.trajectory_differences(requested);
    if !changed.is_empty() {
        return Err(Error::Resume {
            run_dir: run_dir.to_path_buf(),
            message: format!(
                "holds a run of another config (it differs in {}); choose another `run_dir`",
                keys(&changed)
            ),
        });
    }
    say(&format!(
        "{}: the run stopped before its first checkpoint; starting it over",
        run_dir.display()
    ));
    let (files, dirs) = layout.outputs();
    for path in files {
        if path.exists() {
            std::fs::remove_file(&path).map_err(|source| Error::io(&path, source))?;
        }
    }
    for path in dirs {
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|source| Error::io(&path, source))?;
        }
    }
    Ok(())
}

/// Train as the request says. Everything (config, resume checks, data, plugins) is validated
/// before the run directory is created or changed; `run.json` is written even when training
/// fails.
pub fn train(request: &TrainRequest) -> Result<RunOutcome> {
    let start = decide(request)?;
    let settings = match &start {
        Start::New { settings, .. } | Start::Resume { settings, .. } => settings.clone(),
    };
    let dataset = data::load(&settings.data.source)?;
    say(&format!(
        "data: {} ({} train, {} validation images of {}×{}×{}, {} classes)",
        dataset.name,
        dataset.train.len(),
        dataset.test.len(),
        dataset.train.channels,
        dataset.train.height,
        dataset.train.width,
        dataset.num_classes()
    ));
    if !dataset.skipped_files.is_empty() {
        say(&format!(
            "skipped {} files that cannot be decoded (skip_bad_files = true; run.json lists them)",
            dataset.skipped_files.len()
        ));
    }
    let mut trainer = match &start {
        // A TorchScript model continues from the checkpoint's copy of the module, whose
        // buffers (batch-norm statistics) the variable store does not hold.
        Start::Resume { latest, .. }
            if settings.model.kind == crate::config::ModelKind::Torchscript =>
        {
            Trainer::with_module(&settings, &dataset, &latest.dir.join(checkpoint::MODULE))?
        }
        _ => Trainer::new(&settings, &dataset)?,
    };
    say(&format!(
        "model: {} with {} parameters on {:?}; {} epochs of {} batches of {} (seed {})",
        settings.model.kind.name(),
        trainer.parameter_count(),
        trainer.device(),
        settings.epochs,
        trainer.batches_per_epoch(),
        settings.batch_size,
        settings.seed
    ));
    // A failed layout check writes its report into the run directory when there is one.
    let existing_run_dir = match &start {
        Start::Resume { run_dir, .. } => Some(run_dir.clone()),
        Start::New { .. } => settings.run_dir.clone().filter(|dir| dir.is_dir()),
    };
    let mut hub = RunHub::load(
        &settings,
        trainer.monitor_target(&trainer.services()),
        existing_run_dir.as_deref(),
    )?;
    trainer.warn_if_images_missing(&hub);

    // Held until training ends and run.json is written.
    let mut _run_lock = None;
    let mut fallback_warnings = Vec::new();
    let (layout, settings, resumed_from, previous) = match start {
        Start::Resume {
            settings,
            run_dir,
            latest,
        } => {
            let warnings = latest.warnings();
            let checkpoint::Latest {
                dir: checkpoint_dir,
                state,
                damaged,
            } = *latest;
            _run_lock = Some(run_dir::lock_run_dir(&run_dir)?);
            for warning in &warnings {
                tracing::warn!("{warning}");
            }
            checkpoint::set_aside(&damaged)?;
            fallback_warnings = warnings;
            trainer.resume(&checkpoint_dir, &state)?;
            let previous = read_run_info(&run_dir).unwrap_or_default();
            let finished = [RunInfo::COMPLETED, RunInfo::STOPPED];
            if trainer.is_complete() && finished.contains(&previous.status.as_str()) {
                match trainer.early_stop() {
                    Some(stop) => say(&format!(
                        "{} was stopped early at step {} (epoch {}); nothing to do",
                        run_dir.display(),
                        stop.global_step,
                        stop.epoch
                    )),
                    None => say(&format!(
                        "{} already completed its {} epochs; nothing to do",
                        run_dir.display(),
                        settings.epochs
                    )),
                }
                return Ok(RunOutcome {
                    run_dir,
                    dataset: dataset.name,
                    summary: FitSummary::default(),
                    best_val_loss: trainer.best_val_loss(),
                    interrupted: None,
                    global_step: trainer.global_step(),
                    checkpoint_step: Some(state.global_step),
                    already_complete: true,
                });
            }
            let layout = RunLayout::new(&run_dir);
            hub.open_run_dir(
                layout.clone(),
                Some((&state.output_marks(), state.global_step)),
                Some(console(&settings, &trainer)),
            )?;
            hub.open_log(settings.log)?;
            hub.open_mlflow(
                &settings,
                &mlflow_facts(&settings, &dataset),
                Some((state.mlflow_outbox, state.global_step)),
            )?;
            write_atomically(&layout.config(), settings.to_toml().as_bytes())?;
            write_atomically(&layout.inputs(), &trainer.inputs().to_json())?;
            say(&format!(
                "resuming {} from step {} (epoch {}, batch {})",
                run_dir.display(),
                state.global_step,
                state.epoch,
                state.batches_done
            ));
            (layout, settings, Some(state.global_step), previous)
        }
        Start::New {
            mut settings,
            config_path,
        } => {
            let run_dir = create_run_dir(&settings)?;
            _run_lock = Some(run_dir::lock_run_dir(&run_dir)?);
            settings.run_dir = Some(run_dir.clone());
            let layout = RunLayout::new(&run_dir);
            write_atomically(&layout.config(), settings.to_toml().as_bytes())?;
            write_atomically(&layout.inputs(), &trainer.inputs().to_json())?;
            say(&format!(
                "run directory: {} (config {})",
                run_dir.display(),
                config_path.display()
            ));
            hub.open_run_dir(layout.clone(), None, Some(console(&settings, &trainer)))?;
            hub.open_log(settings.log)?;
            hub.open_mlflow(&settings, &mlflow_facts(&settings, &dataset), None)?;
            (layout, settings, None, RunInfo::default())
        }
    };
    if let Some(lock) = &_run_lock {
        let steps_per_epoch = trainer.batches_per_epoch() as u64;
        lock.describe(&run_dir::LockFacts {
            pid: std::process::id(),
            dataset: dataset.name.clone(),
            total_steps: steps_per_epoch * settings.epochs as u64,
            steps_per_epoch,
        });
    }
    let run_dir = layout.root().to_path_buf();
    trainer.keep_checkpoints(&run_dir, settings.to_toml())?;
    let cuda = match trainer.device() {
        tch::Device::Cuda(index) => Some(index),
        _ => None,
    };
    hub.start_system_metrics(settings.system_metrics_every_s, cuda);
    if let Some(flag) = request.interrupt {
        trainer.interrupt_on(flag);
    }
    let started = Instant::now();
    let fitted = trainer.fit(&mut hub);
    let loop_seconds = started.elapsed().as_secs_f64();
    let flushed = hub.close_sinks();

    let interrupted = fitted.as_ref().ok().and_then(|s| s.interrupted);
    super::conclude::write_run_info(
        Attempted {
            settings: &settings,
            layout: &layout,
            dataset: &dataset,
            trainer: &trainer,
            fitted: &fitted,
            loop_seconds,
            resumed_from,
            previous,
            fallback_warnings,
        },
        &mut hub,
    )?;
    let summary = fitted?;
    flushed?;
    match &summary.stopped_by {
        // Early stopping said why when it stopped.
        Some((monitor, reason)) if monitor != "early_stopping" => say(&format!(
            "stopped early: monitor `{monitor}` asked to stop: {reason}"
        )),
        _ => {}
    }
    Ok(RunOutcome {
        run_dir,
        dataset: dataset.name,
        best_val_loss: trainer.best_val_loss(),
        summary,
        interrupted,
        global_step: trainer.global_step(),
        checkpoint_step: trainer
            .checkpoint_index()
            .and_then(|index| index.last.as_ref())
            .map(|last| last.global_step),
        already_complete: false,
    })
}

/// What the MLflow run is tagged with.
fn mlflow_facts(settings: &Settings, dataset: &data::Dataset) -> crate::mlflow::RunFacts {
    crate::mlflow::RunFacts {
        model: settings.model.kind.name().into(),
        dataset: dataset.name.clone(),
    }
}

/// The console's progress line, counting from where the trainer stands.
fn console(settings: &Settings, trainer: &Trainer) -> ConsoleSink {
    let total_steps = u64::from(trainer.batches_per_epoch()) * settings.epochs as u64;
    ConsoleSink::new(settings.epochs, total_steps, trainer.global_step())
}
