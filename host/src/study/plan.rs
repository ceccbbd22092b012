//! `vigil study plan`: every run of a study with its overrides, each config checked exactly
//! as `vigil check` checks one (the settings with the run's `--set`s, the dataset, the model
//! and every enabled monitor built with its settings), before anything starts.

use std::collections::HashMap;
use std::path::Path;

use super::spec::{RunSpec, Study};
use crate::config::Settings;
use crate::data::{self, Dataset};
use crate::error::{Error, Result};
use crate::hub::RunHub;
use crate::run_dir::RunLayout;
use crate::train::Trainer;

/// The settings of one run: its variant's config with the study's and the run's overrides,
/// in its directory, with `threads` intra-op threads unless the study fixes them.
pub fn run_settings(study: &Study, run: &RunSpec, threads: Option<usize>) -> Result<Settings> {
    Settings::load(&run.config, &study.set_arguments(run, threads)).map_err(|err| match err {
        Error::Config { location, message } => Error::Config {
            location: format!("study run `{}` ({location})", run.name),
            message,
        },
        other => other,
    })
}

/// The threads a run started with (its kept config), if it started.
pub fn started_threads(run_dir: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(RunLayout::new(run_dir).config()).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    table.get("threads")?.as_integer().map(|t| t as usize)
}

/// One run, checked.
#[derive(Debug, Clone)]
pub struct CheckedRun {
    pub index: usize,
    /// Optimizer steps of the whole run (epochs × batches per epoch).
    pub total_steps: u64,
    /// The plan's line for it.
    pub line: String,
}

/// Check `runs` exactly as `vigil check` checks a config: the settings with the run's
/// overrides, the dataset, the model and every enabled monitor built with its settings.
/// Stops at the first run that fails, naming it.
pub fn check_runs(
    study: &Study,
    runs: &[&RunSpec],
    threads: Option<usize>,
) -> Result<Vec<CheckedRun>> {
    // One dataset and one trainer holding it on the device per data source, shared by the
    // runs' trainers, so that 216 runs do not load CIFAR-10 216 times.
    let mut loaded: HashMap<String, (Dataset, Trainer)> = HashMap::new();
    let mut checked = Vec::with_capacity(runs.len());
    for run in runs {
        let settings = run_settings(study, run, threads)?;
        let key = format!("{:?}", settings.data.source);
        if !loaded.contains_key(&key) {
            let dataset = data::load(&settings.data.source)?;
            let trainer = Trainer::new(&settings, &dataset)?;
            loaded.insert(key.clone(), (dataset, trainer));
        }
        let (dataset, first) = &loaded[&key];
        let trainer = Trainer::sharing_data(&settings, dataset, first)?;
        let hub = RunHub::load(&settings, trainer.monitor_target(&trainer.services()), None)
            .map_err(|err| match err {
                Error::Plugins { problems } => Error::Plugins {
                    problems: problems
                        .into_iter()
                        .map(|problem| format!("study run `{}`: {problem}", run.name))
                        .collect(),
                },
                other => other,
            })?;
        let mut line = format!(
            "{:>4}  {}  [{}: {}, {} epochs, {}, {} monitors",
            run.index,
            run.name,
            run.variant,
            settings.model.kind.name(),
            settings.epochs,
            dataset.name,
            hub.describe_monitors().len()
        );
        if run.priority != 0 {
            line.push_str(&format!(", priority {}", run.priority));
        }
        if !run.tags.is_empty() {
            line.push_str(&format!(", tags {}", run.tags.join(" ")));
        }
        line.push(']');
        let sets = run.set_arguments();
        if !sets.is_empty() {
            line.push_str(&format!("  --set {}", sets.join(" --set ")));
        }
        checked.push(CheckedRun {
            index: run.index,
            total_steps: u64::from(trainer.batches_per_epoch()) * settings.epochs as u64,
            line,
        });
    }
    Ok(checked)
}

/// `vigil study plan`: every run checked; the plan as text, one line per run.
pub fn check_plan(study: &Study) -> Result<String> {
    let runs: Vec<&RunSpec> = study.runs.iter().collect();
    let checked = check_runs(study, &runs, None)?;
    let mut out = format!(
        "study `{}`: {} runs in {}\n",
        study.name,
        study.runs.len(),
        study.dir.display()
    );
    for run in &checked {
        out.push_str("  ");
        out.push_str(&run.line);
        out.push('\n');
    }
    out.push_str(&format!(
        "all {} runs checked: settings, data, model and monitors\n",
        study.runs.len()
    ));
    Ok(out)
}
