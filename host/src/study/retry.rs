//! `vigil study retry DIR`: the failed runs again, optionally with other settings (a smaller
//! learning rate for runs that diverged), recording why.
//!
//! Each failed run's directory is moved aside to `<study>/retired/<run>.<n>` (nothing of the
//! failed attempt is lost), and `<study>/retries.json` records the retry: the run, the attempt
//! number, the reason given, the `--set`s, and the error the run failed with. The `--set`s of
//! a run's latest retry apply to it from then on, whichever executor runs it, after the
//! study's and the run's own (the run keeps its name: its grid point). Then the study runs
//! again with the executor that ran it last.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::record::read_record;
use super::spec::Study;
use crate::error::{Error, Result};
use crate::fs::write_atomically;
use crate::run_dir::{read_run, RunState};

/// The file of retries in the study directory.
pub const RETRIES_FILE: &str = "retries.json";

/// One retry of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Retry {
    pub run: String,
    /// 1 for the first retry.
    pub attempt: u32,
    pub reason: String,
    /// `key=value`, as `--set` takes them.
    pub set: Vec<String>,
    /// What the failed attempt's `run.json` said.
    pub failed_with: Option<String>,
    /// Where its directory went.
    pub retired_to: String,
    /// Seconds since the Unix epoch.
    pub time: f64,
}

pub fn read_retries(dir: &Path) -> Result<Vec<Retry>> {
    let path = dir.join(RETRIES_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| Error::Config {
            location: path.display().to_string(),
            message: format!("is not a list of retries: {err}"),
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(Error::io(&path, source)),
    }
}

/// Parsed `--set`s: (key, value).
pub type Sets = Vec<(String, toml::Value)>;

/// Each retried run's `--set`s from its latest retry, parsed.
/// Give each run of `study` the `--set`s its latest retry recorded in the study's directory.
pub fn apply_retries(study: &mut Study) -> Result<()> {
    for (name, sets) in retry_sets(&study.dir)? {
        if let Some(run) = study.runs.iter_mut().find(|run| run.name == name) {
            run.retry = sets;
        }
    }
    Ok(())
}

pub fn retry_sets(dir: &Path) -> Result<Vec<(String, Sets)>> {
    let mut latest: Vec<(String, Sets)> = Vec::new();
    for retry in read_retries(dir)? {
        let sets = retry
            .set
            .iter()
            .map(|assignment| parse_set(assignment))
            .collect::<Result<Vec<_>>>()?;
        match latest.iter_mut().find(|(run, _)| *run == retry.run) {
            Some(entry) => entry.1 = sets,
            None => latest.push((retry.run, sets)),
        }
    }
    Ok(latest)
}

/// `key=value` with the value read as TOML (a string when it is not TOML), as `--set` does.
pub fn parse_set(assignment: &str) -> Result<(String, toml::Value)> {
    let (key, value) = assignment.split_once('=').ok_or_else(|| Error::Config {
        location: format!("--set {assignment}"),
        message: "expected KEY=VALUE, e.g. --set optim.lr=0.05".into(),
    })?;
    let value = value.trim();
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut table| table.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    Ok((key.trim().to_string(), parsed))
}

/// Retire the failed runs (all, or those named) and record why; returns their names.
pub fn prepare_retry(
    dir: &Path,
    only: &[String],
    set: &[String],
    reason: &str,
) -> Result<Vec<String>> {
    let record = read_record(dir)?;
    for assignment in set {
        let (key, _) = parse_set(assignment)?;
        if key == "run_dir" {
            return Err(Error::Config {
                location: format!("--set {assignment}"),
                message: "run_dir is the study's to choose".into(),
            });
        }
    }
    for name in only {
        let Some(run) = record.study.runs.iter().find(|r| &r.name == name) else {
            return Err(Error::Config {
                location: dir.display().to_string(),
                message: format!("the study has no run `{name}`"),
            });
        };
        let state = read_run(&dir.join(&run.name)).state;
        if state != RunState::Failed {
            return Err(Error::Config {
                location: dir.join(name).display().to_string(),
                message: format!(
                    "run `{name}` is {}, not failed; only failed runs are retried",
                    state.name()
                ),
            });
        }
    }
    let mut retries = read_retries(dir)?;
    let mut retried = Vec::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    for run in &record.study.runs {
        if !only.is_empty() && !only.contains(&run.name) {
            continue;
        }
        let run_dir = dir.join(&run.name);
        let status = read_run(&run_dir);
        if status.state != RunState::Failed {
            continue;
        }
        let attempt = retries.iter().filter(|r| r.run == run.name).count() as u32 + 1;
        let retired = dir.join("retired").join(format!("{}.{attempt}", run.name));
        std::fs::create_dir_all(dir.join("retired"))
            .map_err(|source| Error::io(dir.join("retired"), source))?;
        std::fs::rename(&run_dir, &retired).map_err(|source| Error::io(&run_dir, source))?;
        retries.push(Retry {
            run: run.name.clone(),
            attempt,
            reason: reason.to_string(),
            set: set.to_vec(),
            failed_with: status.summary.as_ref().and_then(|s| s.error.clone()),
            retired_to: retired.display().to_string(),
            time: now,
        });
        // Recorded after each move, so that a failure part-way leaves a true record.
        let json = serde_json::to_vec_pretty(&retries).map_err(|source| Error::Json {
            what: RETRIES_FILE.into(),
            source,
        })?;
        write_atomically(&dir.join(RETRIES_FILE), &json)?;
        retried.push(run.name.clone());
    }
    Ok(retried)
}
