//! The run directory as an interface: the names of the files a run keeps (public constants,
//! the only place they are spelled), [`RunLayout`] for their paths, the typed `run.json`
//! ([`RunInfo`]), and the lock a training process holds. Everything that reads a run
//! directory (studies, `export-model`, and whatever watches runs) goes through this module.
//!
//! A run directory holds:
//!
//! | name | what |
//! |---|---|
//! | [`CONFIG_FILE`] | the effective config (file, `--set` overrides and defaults) |
//! | [`INPUTS_FILE`] | what the model takes: input shape, normalisation, class names |
//! | [`METRICS_FILE`] | one JSON record a line, appended while the run trains |
//! | [`RUN_FILE`] | the run's summary ([`RunInfo`]), written when training ends |
//! | [`TENSORBOARD_DIR`] | TensorBoard event files |
//! | [`ARTIFACTS_DIR`] | what monitors wrote (PNGs, CSVs), one folder per monitor |
//! | [`CHECKPOINT_DIR`] | checkpoints and their `index.json` |
//! | [`LOG_FILE`] | the run's log, rotated by size ([`crate::run_log`]) |
//! | [`LOCK_FILE`] | held (`flock`) by the process that trains the run |

mod info;
mod status;

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::config::Settings;
use crate::error::{Error, Result};

pub use info::{
    read_run_info, Attempt, CheckpointEntry, CheckpointIndex, EarlyStoppingReport, FinalMetrics,
    HookReport, MlflowReport, MonitorDisabled, MonitorReport, PhaseReport, RunInfo, SkippedFiles,
    StoppedBy,
};
pub use status::{last_line, read_run, run_state, RunState, RunStatus};

/// What a study's directory keeps about the study; a run directory whose parent holds it is
/// one of the study's runs.
pub const STUDY_FILE: &str = "study.json";
/// The MLflow outbox and its state (`[mlflow]`).
pub const MLFLOW_DIR: &str = "mlflow";
/// The effective config a run directory keeps.
pub const CONFIG_FILE: &str = "config.toml";
/// What the model takes: input shape, normalisation, class names.
pub const INPUTS_FILE: &str = "inputs.json";
/// The metrics of the run, one JSON record a line.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The run's summary ([`RunInfo`]).
pub const RUN_FILE: &str = "run.json";
/// TensorBoard's event files.
pub const TENSORBOARD_DIR: &str = "tensorboard";
/// The monitors' files.
pub const ARTIFACTS_DIR: &str = "artifacts";
/// The run's log; rotated copies are `vigil.log.1.gz`, `vigil.log.2.gz`, ….
pub const LOG_FILE: &str = "vigil.log";
/// Checkpoints, each a `step_<global step>/` directory, and `index.json`.
pub const CHECKPOINT_DIR: &str = "checkpoints";

/// The paths of one run directory's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLayout {
    root: PathBuf,
}

impl RunLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunLayout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    pub fn inputs(&self) -> PathBuf {
        self.root.join(INPUTS_FILE)
    }

    pub fn metrics(&self) -> PathBuf {
        self.root.join(METRICS_FILE)
    }

    pub fn run_info(&self) -> PathBuf {
        self.root.join(RUN_FILE)
    }

    pub fn tensorboard(&self) -> PathBuf {
        self.root.join(TENSORBOARD_DIR)
    }

    pub fn artifacts(&self) -> PathBuf {
        self.root.join(ARTIFACTS_DIR)
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.root.join(CHECKPOINT_DIR)
    }

    pub fn lock(&self) -> PathBuf {
        self.root.join(LOCK_FILE)
    }

    pub fn log(&self) -> PathBuf {
        self.root.join(LOG_FILE)
    }

    /// The log and its rotated copies that exist.
    pub fn log_files(&self) -> Vec<PathBuf> {
        let rotated = format!("{LOG_FILE}.");
        std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                name == LOG_FILE || name.starts_with(&rotated)
            })
            .map(|entry| entry.path())
            .collect()
    }

    /// Everything a run writes, files (the log's rotated copies among them) then directories:
    /// what a run that is started over removes. The lock stays.
    pub fn outputs(&self) -> (Vec<PathBuf>, [PathBuf; 4]) {
        let mut files = vec![
            self.metrics(),
            self.run_info(),
            self.config(),
            self.inputs(),
        ];
        files.extend(self.log_files());
        (
            files,
            [
                self.tensorboard(),
                self.artifacts(),
                self.checkpoints(),
                self.root.join(MLFLOW_DIR),
            ],
        )
    }
}

/// The study a run directory belongs to, and the run's grid values: `study.json` in its parent.
pub fn study_point(run_dir: &Path) -> Option<(String, Vec<(String, String)>)> {
    let parent = run_dir.parent()?;
    let bytes = std::fs::read(parent.join(STUDY_FILE)).ok()?;
    let record: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let study = &record["study"];
    let name = study["name"].as_str()?.to_string();
    let run_name = run_dir.file_name()?.to_string_lossy().into_owned();
    let run = study["runs"]
        .as_array()?
        .iter()
        .find(|run| run["name"] == run_name.as_str())?;
    let mut values = vec![("variant".to_string(), run["variant"].as_str()?.to_string())];
    for pair in run["overrides"].as_array().into_iter().flatten() {
        let (Some(key), Some(value)) = (pair[0].as_str(), pair.get(1)) else {
            continue;
        };
        let value = value.as_str().map_or(value.to_string(), str::to_string);
        values.push((key.to_string(), value));
    }
    Some((name, values))
}

/// The file a training process keeps locked (`flock`, exclusive) in its run directory for as
/// long as it trains: a second `vigil train` on the same directory is refused, and a study's
/// status tells a running run from one that was killed.
pub const LOCK_FILE: &str = ".vigil.lock";

/// The lock on a run directory; released when dropped (or when the process ends, however).
#[derive(Debug)]
pub struct RunLock {
    file: File,
}

/// What the training process writes into its lock file, for whoever watches the run (the
/// dashboard's progress and ETA): stale once the lock is released.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LockFacts {
    pub pid: u32,
    /// The dataset's name as `run.json` will give it (`Fashion-MNIST`).
    #[serde(default)]
    pub dataset: String,
    /// The steps the run takes in all when it trains every epoch.
    pub total_steps: u64,
    pub steps_per_epoch: u64,
}

impl RunLock {
    /// Write `facts` into the lock file (best effort: a watcher only loses its ETA).
    pub fn describe(&self, facts: &LockFacts) {
        use std::io::{Seek, Write};
        let Ok(text) = serde_json::to_vec(facts) else {
            return;
        };
        let mut file = &self.file;
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(&text));
        if let Err(err) = written {
            tracing::debug!("could not describe the run in its lock file: {err}");
        }
    }
}

/// What the process training the run in `dir` wrote into its lock file; `None` when no
/// process holds the lock (a released lock's facts are stale).
pub fn read_lock_facts(dir: &Path) -> Option<LockFacts> {
    let path = dir.join(LOCK_FILE);
    if !crate::fs::is_locked(&path) {
        return None;
    }
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Lock `dir` for this process, or say which directory another process is training in.
pub fn lock_run_dir(dir: &Path) -> Result<RunLock> {
    match crate::fs::try_lock_exclusive(&dir.join(LOCK_FILE))? {
        Some(file) => Ok(RunLock { file }),
        None => Err(busy(dir)),
    }
}

/// The error for a run directory another process is training in.
pub fn busy(dir: &Path) -> Error {
    Error::Busy {
        path: dir.to_path_buf(),
        message: format!(
            "another vigil process is training this run (it holds {LOCK_FILE}); wait for it to end or stop it first"
        ),
    }
}

/// Whether `dir` is missing or holds nothing but a lock file.
pub fn is_unused(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |entries| {
        entries
            .flatten()
            .all(|entry| entry.file_name() == LOCK_FILE)
    })
}

/// Create the directory the run writes to.
///
/// With `run_dir` set in the config, that directory must not exist yet or be empty, so that
/// nothing from an earlier run is overwritten. Otherwise the run gets
/// `runs/<name>-<UTC timestamp>` (with a numeric suffix if two runs start in one second).
pub fn create_run_dir(settings: &Settings) -> Result<PathBuf> {
    if let Some(dir) = &settings.run_dir {
        if !is_unused(dir) {
            return Err(Error::Config {
                location: dir.display().to_string(),
                message: "run directory is not empty; choose another `run_dir` or remove the \
                          setting to get a fresh timestamped directory under runs/"
                    .into(),
            });
        }
        std::fs::create_dir_all(dir).map_err(|source| Error::io(dir, source))?;
        return Ok(dir.clone());
    }
    let base = PathBuf::from("runs");
    std::fs::create_dir_all(&base).map_err(|source| Error::io(&base, source))?;
    let stem = format!("{}-{}", sanitize(&settings.name), utc_timestamp());
    for attempt in 1.. {
        let candidate = if attempt == 1 {
            base.join(&stem)
        } else {
            base.join(format!("{stem}-{attempt}"))
        };
        match std::fs::create_dir(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(Error::io(candidate, source)),
        }
    }
    unreachable!("the attempt counter is unbounded")
}

/// Keep a run name usable as a directory name.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `YYYYmmdd-HHMMSS` in UTC.
fn utc_timestamp() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let time = seconds % 86_400;
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        time / 3600,
        time / 60 % 60,
        time % 60
    )
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
    }

    #[test]
    fn names_become_safe_directory_names() {
        assert_eq!(sanitize("cnn lr=0.1/a"), "cnn_lr_0.1_a");
    }

    #[test]
    fn the_lock_file_tells_progress_while_held_only() {
        let dir = tempfile::tempdir().unwrap();
        let facts = LockFacts {
            pid: 7,
            dataset: "Fashion-MNIST".into(),
            total_steps: 300,
            steps_per_epoch: 100,
        };
        {
            let lock = lock_run_dir(dir.path()).unwrap();
            lock.describe(&facts);
            assert_eq!(read_lock_facts(dir.path()), Some(facts));
        }
        assert_eq!(
            read_lock_facts(dir.path()),
            None,
            "a released lock's facts are stale"
        );
        assert!(
            is_unused(dir.path()),
            "a described lock file still counts as unused"
        );
    }
}
