//! `vigil train` and `vigil check` end to end: config, data, model, monitors, run directory,
//! sinks, training, `run.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{checkpoint, create_run_dir, write_atomically, FitSummary, Trainer};
use crate::config::{read_config, MonitorSettings, Settings};
use crate::data;
use crate::error::{Error, Result};
use crate::plugin::{resolve, PluginHost};
use crate::sink::{Background, ConsoleSink, JsonlSink, Sink, TensorBoardSink};

/// What `vigil train` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct TrainRequest {
    /// A config for a new run.
    pub config: Option<PathBuf>,
    /// A run directory to continue from its newest checkpoint.
    pub resume: Option<PathBuf>,
    /// `--set key=value` overrides.
    pub overrides: Vec<String>,
}

/// A finished run: where it wrote and what it measured.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub run_dir: PathBuf,
    pub dataset: String,
    pub summary: FitSummary,
    pub best_val_loss: Option<f64>,
}

/// Train from a config file, as `vigil train CONFIG` does.
pub fn train_from_file(config: &Path) -> Result<RunOutcome> {
    train(&TrainRequest {
        config: Some(config.to_path_buf()),
        ..TrainRequest::default()
    })
}

/// Validate a config, its dataset and its monitors' plugins without training; returns a
/// summary of what a run would do.
pub fn check_config(config: &Path, overrides: &[String]) -> Result<String> {
    let settings = Settings::load(config, overrides)?;
    let dataset = data::load(&settings.data.source)?;
    let enabled: Vec<&MonitorSettings> = settings.monitors.iter().filter(|m| m.enabled).collect();
    let (libraries, _) = resolve(
        &enabled,
        &settings.plugin_dirs,
        settings.allow_insecure_plugins,
    )?;
    let monitors: Vec<String> = libraries
        .iter()
        .map(|library| format!("{} ({})", library.info.name, library.path.display()))
        .collect();
    Ok(format!(
        "{}: ok\n  data: {} ({} train, {} validation images, {} classes)\n  model: {}; optim: {:?}, lr {}; {} epochs of batch {}\n  monitors: {}\n",
        config.display(),
        dataset.name,
        dataset.train.len(),
        dataset.test.len(),
        dataset.num_classes(),
        settings.model.kind.name(),
        settings.optim.kind,
        settings.optim.lr,
        settings.epochs,
        settings.batch_size,
        if monitors.is_empty() { "none".to_string() } else { monitors.join(", ") }
    ))
}

/// Train as the request says. Validation of everything (config, data, plugins) happens before
/// the run directory is created; `run.json` is written even when training fails.
pub fn train(request: &TrainRequest) -> Result<RunOutcome> {
    let (config_path, resume) = match (&request.config, &request.resume) {
        (Some(config), None) => (config.clone(), None),
        (None, Some(run_dir)) => (
            run_dir.join("config.toml"),
            Some(checkpoint::latest(run_dir)?),
        ),
        _ => {
            return Err(Error::Config {
                location: "vigil train".into(),
                message: "give either a CONFIG file or --resume RUN_DIR".into(),
            })
        }
    };
    let config_text = read_config(&config_path)?;
    let settings = Settings::from_toml_with(&config_text, &config_path, &request.overrides)?;
    let dataset = data::load(&settings.data.source)?;
    println!(
        "data: {} ({} train, {} validation images of {}×{}×{}, {} classes)",
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
        "model: {} with {} parameters on {:?}; {} epochs of {} batches of {} (seed {})",
        settings.model.kind.name(),
        trainer.parameter_count(),
        trainer.device(),
        settings.epochs,
        trainer.batches_per_epoch(),
        settings.batch_size,
        settings.seed
    );
    let mut plugins = PluginHost::load(
        &settings.monitors,
        &settings.plugin_dirs,
        settings.allow_insecure_plugins,
        trainer.run_facts(),
        &trainer.services(),
        trainer.counters(0, 0),
    )?;

    let (run_dir, metrics) = match (&resume, &request.resume) {
        (Some((checkpoint_dir, state)), Some(run_dir)) => {
            trainer.resume(checkpoint_dir, state)?;
            let metrics_path = run_dir.join("metrics.jsonl");
            if let Some(length) = state.metrics_bytes {
                cut_back(&metrics_path, length)?;
            }
            println!(
                "resuming {} from step {} (epoch {}, batch {})",
                run_dir.display(),
                state.global_step,
                state.epoch,
                state.batches_done
            );
            (run_dir.clone(), JsonlSink::append(&metrics_path)?)
        }
        _ => {
            let run_dir = create_run_dir(&settings)?;
            let copy = run_dir.join("config.toml");
            write_atomically(&copy, config_text.as_bytes())?;
            println!("run directory: {}", run_dir.display());
            let metrics = JsonlSink::create(&run_dir.join("metrics.jsonl"))?;
            (run_dir, metrics)
        }
    };
    trainer.keep_checkpoints(&run_dir, config_text, run_dir.join("metrics.jsonl"))?;
    plugins.set_artifact_dir(run_dir.join("artifacts"));
    let total_steps = u64::from(trainer.batches_per_epoch()) * settings.epochs as u64;
    let mut sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(ConsoleSink::new(
            settings.epochs,
            total_steps,
            trainer.global_step(),
        )),
        Box::new(Background::spawn("metrics.jsonl", Box::new(metrics))),
        Box::new(Background::spawn(
            "tensorboard",
            Box::new(TensorBoardSink::create(&run_dir.join("tensorboard"))?),
        )),
    ];
    let started = Instant::now();
    let fitted = trainer.fit_monitored(&mut sinks, &mut plugins);
    let loop_seconds = started.elapsed().as_secs_f64();
    let flushed = sinks.iter_mut().try_for_each(|sink| sink.flush());
    drop(sinks);

    let (status, error) = match &fitted {
        Ok(summary) if summary.stopped_by.is_some() => ("stopped", None),
        Ok(_) => ("completed", None),
        Err(err) => ("failed", Some(err.to_string())),
    };
    let summary = fitted.as_ref().ok();
    let last = summary.and_then(FitSummary::last);
    let mut warnings: Vec<String> = trainer.warnings().to_vec();
    warnings.extend(plugins.warnings().iter().cloned());
    let run_summary = serde_json::json!({
        "name": settings.name,
        "status": status,
        "error": error,
        "stopped_by": summary.and_then(|s| s.stopped_by.as_ref()).map(|(monitor, reason)| serde_json::json!({
            "monitor": monitor,
            "reason": reason,
        })),
        "config": config_path.display().to_string(),
        "resumed_from_step": resume.as_ref().map(|(_, state)| state.global_step),
        "dataset": dataset.name,
        "model": settings.model.kind.name(),
        "parameters": trainer.parameter_count(),
        "device": format!("{:?}", trainer.device()),
        "seed": settings.seed,
        "epochs": settings.epochs,
        "global_step": trainer.global_step(),
        "best_val_loss": trainer.best_val_loss(),
        "final": last.map(|m| serde_json::json!({
            "epoch": m.epoch,
            "train_loss": m.train.loss,
            "train_acc": m.train.accuracy,
            "val_loss": m.val.loss,
            "val_acc": m.val.accuracy,
        })),
        "wall_time_s": loop_seconds,
        "steps_per_second": summary.map(|s| s.steps as f64 / s.seconds.max(1e-9)),
        "checkpoints": trainer.checkpoint_index(),
        "monitors": plugins.report(loop_seconds),
        "warnings": warnings,
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
        best_val_loss: trainer.best_val_loss(),
        summary,
    })
}

/// Cut `metrics.jsonl` back to the length it had at the checkpoint.
fn cut_back(path: &Path, length: u64) -> Result<()> {
    let current = std::fs::metadata(path)
        .map_err(|source| Error::io(path, source))?
        .len();
    if current > length {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|source| Error::io(path, source))?;
        file.set_len(length)
            .map_err(|source| Error::io(path, source))?;
        file.sync_all().map_err(|source| Error::io(path, source))?;
    }
    Ok(())
}
