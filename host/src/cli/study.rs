//! `vigil study …`: plan, run, submit, watch, retry, export and report a study.

use std::path::PathBuf;

use clap::Subcommand;

use super::RunEnd;

/// Plan and run a study: a grid of runs from one study file.
#[derive(Debug, Subcommand)]
pub enum StudyAction {
    /// Print every run of the study with its overrides, each config checked exactly as `vigil
    /// check` checks one (settings, data, model, monitors), before anything starts.
    Plan {
        /// The study file (TOML).
        file: PathBuf,
    },
    /// Run the study on this machine, N runs at a time, highest priority first: completed
    /// runs are skipped, interrupted ones resumed. Ctrl-C stops every run with a checkpoint.
    /// Exits 0 when every run completed, 75 when stopped by a signal, 1 when a run failed.
    Run {
        /// The study file (TOML).
        file: PathBuf,
        /// Runs at a time (default: the study's `local.jobs`, else 1); the cores are split
        /// among them as intra-op threads.
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
    },
    /// Submit the study to SLURM as one job array of the runs not yet completed (at most
    /// `slurm.max_running` at once); each task resumes or starts its run, checkpoints and
    /// requeues itself before its time limit.
    Submit {
        /// The study file (TOML).
        file: PathBuf,
        /// Check the runs and write the sbatch script, but do not submit it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Train one run of a submitted study (what each SLURM array task runs).
    #[command(hide = true)]
    Task {
        /// The study's directory.
        dir: PathBuf,
        /// The run's plan index (`$SLURM_ARRAY_TASK_ID`).
        index: usize,
    },
    /// Write one row per run (run id, variant, state, every grid key as a typed column, the
    /// loss-curve summary columns) to FILE (.parquet or .csv), and the train/validation and
    /// curvature trajectories, long format, beside it (<stem>_trajectories.<ext>).
    Export {
        /// The study's directory.
        dir: PathBuf,
        /// The table to write: a .parquet or .csv file.
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
    },
    /// Run the failed runs again (all, or those named), optionally with other settings,
    /// recording why: each failed attempt is kept in <study>/retired/, the retry in
    /// <study>/retries.json; then the study runs with the executor that ran it last.
    Retry {
        /// The study's directory.
        dir: PathBuf,
        /// Only this run (repeatable).
        #[arg(long = "run", value_name = "NAME")]
        runs: Vec<String>,
        /// A setting for the retried runs, e.g. `--set optim.lr=0.05` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Why, for the record.
        #[arg(long, default_value = "retried")]
        reason: String,
        /// Runs at a time, when the study runs on this machine.
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
    },
    /// H1 (power laws: r² ≥ 0.98 after burn-in in > 90 % of runs) and H2 (correlation of
    /// alpha_early with best_val_ce ≥ 0.7) over the completed runs, with counts.
    Report {
        /// The study's directory.
        dir: PathBuf,
    },
    /// Counts by state, an ETA, and the study's data-quality checks (loss out of [0, 10],
    /// accuracy out of [0, 1], non-finite metrics, a burn-in epoch outside [1, 20], stuck
    /// runs, a failure rate above 10 %), each flagged with its run.
    Status {
        /// The study's directory (`<root>/<name>`).
        dir: PathBuf,
        /// A running run without a new metric for this many minutes is flagged as stuck.
        #[arg(long, value_name = "MINUTES", default_value_t = 30.0)]
        stuck_after: f64,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(action: StudyAction) -> anyhow::Result<RunEnd> {
    match action {
        StudyAction::Plan { file } => {
            let study = vigil::study::open(&file)?;
            print!("{}", vigil::study::check_plan(&study)?);
            Ok(RunEnd::Done)
        }
        StudyAction::Submit { file, dry_run } => {
            let study = vigil::study::open(&file)?;
            let submitted =
                vigil::study::slurm::submit(&study, &std::env::current_exe()?, dry_run)?;
            match &submitted.job {
                Some(job) => println!(
                    "submitted {} runs as SLURM job {job} ({}); watch it with `vigil study status {}`",
                    submitted.indices.len(),
                    submitted.script.display(),
                    study.dir.display()
                ),
                None if submitted.indices.is_empty() => {
                    println!("every run of `{}` is completed or running; nothing to submit", study.name)
                }
                None => println!(
                    "wrote {} for {} runs (not submitted: --dry-run)",
                    submitted.script.display(),
                    submitted.indices.len()
                ),
            }
            Ok(RunEnd::Done)
        }
        StudyAction::Task { dir, index } => {
            let (study, run) = vigil::study::slurm::task_run(&dir, index)?;
            let threads = vigil::study::plan::started_threads(&study.run_dir(&run))
                .unwrap_or(study.slurm.cpus_per_task.max(1));
            let interrupt = super::install_interrupt()?;
            vigil::run_log::say(&format!(
                "study `{}` task {index}: run {}",
                study.name, run.name
            ));
            let request = vigil::train::TrainRequest {
                config: Some(run.config.clone()),
                resume: Some(vigil::train::Resume::Auto),
                overrides: study.set_arguments(&run, Some(threads)),
                interrupt: Some(interrupt),
            };
            let trained = vigil::train::train(&request);
            // The task that ends the study (or pushes its failure rate past 10 %) says so.
            for warning in vigil::study::notify::after_run(&study, &run) {
                eprintln!("warning: {warning}");
            }
            let outcome = trained?;
            match outcome.interrupted {
                Some(signal) if signal == libc::SIGUSR1 as usize => {
                    vigil::run_log::say(
                        "SIGUSR1 before the time limit: checkpoint written; requeueing this task",
                    );
                    vigil::study::slurm::requeue_self()?;
                    Ok(RunEnd::Interrupted)
                }
                Some(_) => Ok(RunEnd::Interrupted),
                None => Ok(RunEnd::Done),
            }
        }
        StudyAction::Export { dir, to } => {
            let (rows, points, beside) = vigil::study::export::export(&dir, &to)?;
            println!(
                "wrote {} ({rows} runs) and {} ({points} trajectory points)",
                to.display(),
                beside.display()
            );
            Ok(RunEnd::Done)
        }
        StudyAction::Report { dir } => {
            let (h, completed, total) = vigil::study::report::study_report(&dir)?;
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            print!(
                "{}",
                vigil::study::report::report_text(&name, &h, completed, total)
            );
            Ok(RunEnd::Done)
        }
        StudyAction::Status {
            dir,
            stuck_after,
            json,
        } => {
            let stuck_after = std::time::Duration::from_secs_f64(stuck_after.max(0.0) * 60.0);
            let status = vigil::study::study_status(&dir, stuck_after)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", vigil::study::status_text(&status));
            }
            Ok(RunEnd::Done)
        }
        StudyAction::Retry {
            dir,
            runs,
            sets,
            reason,
            jobs,
        } => {
            let record = vigil::study::record::read_record(&dir)?;
            let retried = vigil::study::retry::prepare_retry(&dir, &runs, &sets, &reason)?;
            if retried.is_empty() {
                println!("no failed runs in {}; nothing to retry", dir.display());
                return Ok(RunEnd::Done);
            }
            println!("retrying {}: {}", retried.len(), retried.join(", "));
            match record.executor {
                vigil::study::record::Executor::Slurm => run(StudyAction::Submit {
                    file: record.study.file,
                    dry_run: false,
                }),
                vigil::study::record::Executor::Local => run(StudyAction::Run {
                    file: record.study.file,
                    jobs,
                }),
            }
        }
        StudyAction::Run { file, jobs } => {
            let study = vigil::study::open(&file)?;
            let signal = super::install_interrupt()?;
            let options = vigil::study::LocalOptions {
                jobs,
                exe: std::env::current_exe()?,
                progress_every: std::time::Duration::from_secs(10),
            };
            let outcome = vigil::study::run_local(&study, &options, signal, |line| {
                eprintln!("study: {line}")
            })?;
            println!(
                "study `{}`: {} of {} runs completed, {} failed, {} interrupted; results in {}",
                study.name,
                outcome.completed,
                study.runs.len(),
                outcome.failed.len() + outcome.skipped_failed.len(),
                outcome.interrupted.len(),
                study.dir.display()
            );
            if outcome.signal.is_some() {
                return Ok(RunEnd::Interrupted);
            }
            if !outcome.failed.is_empty() || !outcome.skipped_failed.is_empty() {
                anyhow::bail!(
                    "failed runs: {}; their output is in {}/logs",
                    outcome
                        .failed
                        .iter()
                        .chain(&outcome.skipped_failed)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "),
                    study.dir.display()
                );
            }
            Ok(RunEnd::Done)
        }
    }
}
