//! Studies: a grid of runs from one study file, planned, checked and run on this machine or
//! a SLURM cluster, watched, retried and exported to one table.
//!
//! - [`spec`]: a study: its runs and executor settings;
//! - [`expand`]: the study file as written, expanded into named runs;
//! - [`plan`]: `vigil study plan`, every run checked as `vigil check` checks a config;
//! - [`record`]: `study.json`, the plan as the study directory keeps it, and the study's lock;
//! - [`local`]: `vigil study run`, the executor for one machine;
//! - [`slurm`]: `vigil study submit`, the study as a SLURM job array, and what each task runs;
//! - [`status`]: `vigil study status`, counts, ETA and the data-quality checks;
//! - [`summary`]: a run's row (slopes, burn-in, best validation) and trajectories, and H1/H2;
//! - [`export`]: `vigil study export`, the rows and trajectories as Parquet or CSV;
//! - [`report`]: `vigil study report`, H1 and H2 with counts;
//! - [`retry`]: `vigil study retry`, failed runs again (their attempts kept), recording why;
//! - [`notify`]: the study's `study_finished` and `study_failure_rate` notifications, sent once.
//!
//! The study sits above the trainer: it starts `vigil train` processes and reads what they
//! write through [`crate::run_dir`], and nothing in `train/` knows of it.

pub mod expand;
pub mod export;
pub mod local;
pub mod notify;
pub mod plan;
pub mod record;
pub mod report;
pub mod retry;
pub mod slurm;
pub mod spec;
pub mod status;
pub mod summary;

pub use local::{run_local, LocalOptions, LocalOutcome};

/// A study file, read and expanded, with the `--set`s `vigil study retry` recorded in its
/// directory applied to the runs they retry: what `vigil study plan`, `run` and `submit` use.
pub fn open(file: &std::path::Path) -> crate::Result<Study> {
    let mut study = Study::load(file)?;
    retry::apply_retries(&mut study)?;
    Ok(study)
}
pub use plan::check_plan;
pub use spec::{LocalSettings, RunSpec, SlurmSettings, Study};
pub use status::{status_text, study_status};
