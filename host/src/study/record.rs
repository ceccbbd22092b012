//! `<study>/study.json`: the expanded plan as the executor last wrote it, so that `vigil study
//! status` reads the study from its directory alone; and the study's lock.

use std::fs::File;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::spec::Study;
use crate::error::{Error, Result};
use crate::fs::write_atomically;

/// The record's file name in the study directory.
pub const RECORD_FILE: &str = crate::run_dir::STUDY_FILE;
/// The file an executor keeps locked while it runs the study.
pub const STUDY_LOCK: &str = ".study.lock";

/// Which executor last ran the study.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    Local,
    Slurm,
}

/// What `study.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub format: u32,
    pub executor: Executor,
    pub study: Study,
    /// Optimizer steps of each run (by plan index), where checked.
    pub total_steps: Vec<Option<u64>>,
    /// The SLURM job id of the last submission.
    #[serde(default)]
    pub slurm_job: Option<String>,
}

/// Write the record (atomically), keeping what an earlier record knew of steps.
pub fn write_record(study: &Study, executor: Executor, total_steps: &[Option<u64>]) -> Result<()> {
    let earlier = read_record(&study.dir).ok();
    let mut steps = total_steps.to_vec();
    if let Some(earlier) = &earlier {
        for (index, run) in study.runs.iter().enumerate() {
            if steps[index].is_none() {
                steps[index] = earlier
                    .study
                    .runs
                    .iter()
                    .position(|r| r.name == run.name)
                    .and_then(|i| earlier.total_steps.get(i).copied().flatten());
            }
        }
    }
    let record = Record {
        format: 1,
        executor,
        study: study.clone(),
        total_steps: steps,
        slurm_job: earlier.and_then(|e| e.slurm_job),
    };
    save(&study.dir, &record)
}

/// Replace the record.
pub fn save(dir: &Path, record: &Record) -> Result<()> {
    let path = dir.join(RECORD_FILE);
    let json = serde_json::to_vec_pretty(record).map_err(|source| Error::Json {
        what: path.display().to_string(),
        source,
    })?;
    write_atomically(&path, &json)
}

/// Read a study directory's record.
pub fn read_record(dir: &Path) -> Result<Record> {
    let path = dir.join(RECORD_FILE);
    let bytes = std::fs::read(&path).map_err(|_| Error::Config {
        location: dir.display().to_string(),
        message: format!(
            "has no {RECORD_FILE}: is it a study directory (`vigil study run` or `submit` writes one)?"
        ),
    })?;
    serde_json::from_slice(&bytes).map_err(|err| Error::DataCorrupt {
        path: path.clone(),
        reason: format!("is not a study record: {err}"),
    })
}

/// The study's lock, held while an executor runs it.
#[derive(Debug)]
pub struct StudyLock {
    _file: File,
}

/// Lock the study directory, or say that another executor holds it.
pub fn lock_study(dir: &Path) -> Result<StudyLock> {
    match crate::fs::try_lock_exclusive(&dir.join(STUDY_LOCK))? {
        Some(file) => Ok(StudyLock { _file: file }),
        None => Err(Error::Busy {
            path: dir.to_path_buf(),
            message: "another `vigil study run` is running this study; wait for it or stop it (Ctrl-C) first".into(),
        }),
    }
}
