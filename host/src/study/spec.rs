//! The study file: variants, a grid of `--set` keys, extra runs, priorities and tags, and the
//! executors' settings; expanded into the list of runs, each with a name derived from its grid
//! point, so that running the study again finds its runs.
//!
//! ```toml
//! name = "loss_slope"
//! variants = { base = "../base.toml", narrow = "../narrow.toml" }   # or: base = "../base.toml"
//!
//! [grid]
//! "optim.lr" = [0.05, 0.1, 0.2]
//! seed = [0, 1]
//!
//! [[runs]]                      # extra runs outside the grid
//! variant = "base"
//! set = { "optim.lr" = 0.4, seed = 0 }
//! tags = ["probe"]
//!
//! [[rules]]                     # priority and tags for the runs a rule matches
//! match = { seed = 0 }
//! priority = 10
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How `vigil study run` runs the study on this machine.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSettings {
    /// Runs at a time (`--jobs` overrides); default 1.
    pub jobs: Option<usize>,
}

/// What `vigil study submit` asks SLURM for, per array task.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmSettings {
    /// Array tasks running at once (`--array=0-N%K`); default: no limit.
    pub max_running: Option<usize>,
    /// Time limit per task, in SLURM's format; default `24:00:00`.
    pub time: String,
    pub cpus_per_task: usize,
    /// Memory per task, in SLURM's format (`16G`); default: the cluster's.
    pub mem: Option<String>,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// Generic resources per task, e.g. `gpu:1`.
    pub gres: Option<String>,
    /// SIGUSR1 this many seconds before the time limit: the run checkpoints and requeues.
    pub signal_seconds: u64,
    /// Further `#SBATCH` options, verbatim (`--constraint=a100`).
    pub extra: Vec<String>,
}

impl Default for SlurmSettings {
    fn default() -> Self {
        SlurmSettings {
            max_running: None,
            time: "24:00:00".into(),
            cpus_per_task: 2,
            mem: None,
            partition: None,
            account: None,
            qos: None,
            gres: None,
            signal_seconds: 300,
            extra: Vec::new(),
        }
    }
}

/// One run of the study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Its place in the plan (the SLURM array index).
    pub index: usize,
    /// The run's name and directory name, unique in the study.
    pub name: String,
    pub variant: String,
    /// The variant's config file (absolute).
    pub config: PathBuf,
    /// `--set` keys and their values, in grid order.
    pub overrides: Vec<(String, toml::Value)>,
    pub priority: i64,
    pub tags: Vec<String>,
    /// `--set`s given by `vigil study retry` (after the run's own), from `retries.json`.
    #[serde(default)]
    pub retry: Vec<(String, toml::Value)>,
}

impl RunSpec {
    /// The overrides as `--set` arguments (`optim.lr=0.1`).
    pub fn set_arguments(&self) -> Vec<String> {
        self.overrides
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect()
    }

    /// The value of a key: an override, or `variant`.
    pub fn value(&self, key: &str) -> Option<toml::Value> {
        if key == "variant" {
            return Some(toml::Value::String(self.variant.clone()));
        }
        self.overrides
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value.clone())
    }
}

/// A study, expanded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Study {
    pub name: String,
    /// The study file (absolute).
    pub file: PathBuf,
    /// `<root>/<name>` (absolute): every run's directory is `<dir>/<run name>`.
    pub dir: PathBuf,
    /// The grid's keys, sorted.
    pub grid_keys: Vec<String>,
    /// `--set`s for every run, before the run's own.
    pub common: Vec<(String, toml::Value)>,
    /// Intra-op threads of every run, when the study fixes them.
    pub threads: Option<usize>,
    pub runs: Vec<RunSpec>,
    pub local: LocalSettings,
    pub slurm: SlurmSettings,
}

impl Study {
    /// The directory of a run.
    pub fn run_dir(&self, run: &RunSpec) -> PathBuf {
        self.dir.join(&run.name)
    }

    /// Every `--set` of a run: the study's, the run's own, its directory, and `threads` when
    /// given (the study's `threads` wins over the executor's).
    pub fn set_arguments(&self, run: &RunSpec, threads: Option<usize>) -> Vec<String> {
        let mut sets: Vec<String> = self
            .common
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        sets.extend(run.set_arguments());
        sets.extend(
            run.retry
                .iter()
                .map(|(key, value)| format!("{key}={value}")),
        );
        sets.push(format!(
            "run_dir={}",
            toml::Value::String(self.run_dir(run).display().to_string())
        ));
        if let Some(threads) = self.threads.or(threads) {
            sets.push(format!("threads={threads}"));
        }
        sets
    }

    /// The runs in the order executors start them: highest priority first, then plan order.
    pub fn by_priority(&self) -> Vec<&RunSpec> {
        let mut runs: Vec<&RunSpec> = self.runs.iter().collect();
        runs.sort_by_key(|run| (std::cmp::Reverse(run.priority), run.index));
        runs
    }
}
