//! `vigil study run`: the study on this machine, `jobs` runs at a time.
//!
//! Each run is a `vigil train CONFIG --set … --set run_dir=DIR --resume auto` child process,
//! so a completed run is left alone, an interrupted one continues from its checkpoint, and a
//! new one starts. Highest priority first. The machine's cores are split among the jobs as
//! intra-op threads (unless the study fixes `threads`; a run that already started keeps the
//! threads it started with, which are part of what it computes). Its output goes to
//! `<study>/logs/<run>.log`.
//!
//! A signal (Ctrl-C, SIGTERM) stops the study cleanly: every child gets SIGTERM, writes a
//! checkpoint and exits, and the executor waits for them. Children also get SIGTERM when the
//! executor dies without that chance (`PR_SET_PDEATHSIG`), so nothing trains on unwatched.

use std::collections::VecDeque;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::plan::check_runs;
use super::record::{write_record, Executor};
use super::spec::{RunSpec, Study};
use crate::error::{Error, Result};
use crate::fs::write_atomically;
use crate::run_dir::{read_run, RunState};

/// How to run.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Runs at a time; default: the study's `local.jobs`, else 1.
    pub jobs: Option<usize>,
    /// The `vigil` executable the runs are started with.
    pub exe: PathBuf,
    /// How often the progress line is redrawn.
    pub progress_every: Duration,
}

/// How the study ended.
#[derive(Debug, Clone, Default)]
pub struct LocalOutcome {
    pub completed: usize,
    pub failed: Vec<String>,
    /// Runs left interrupted (a signal stopped the study, or a run was signalled).
    pub interrupted: Vec<String>,
    /// Runs skipped because they had failed before.
    pub skipped_failed: Vec<String>,
    /// The signal that stopped the study, if one did.
    pub signal: Option<i32>,
}

struct Running {
    run: RunSpec,
    child: Child,
    started: Instant,
    start_step: u64,
    total_steps: u64,
}

/// The cores this process may use.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Run the study. Holds the study's lock throughout, so that two executors never share it.
pub fn run_local(
    study: &Study,
    options: &LocalOptions,
    signal: &AtomicUsize,
    mut say: impl FnMut(&str),
) -> Result<LocalOutcome> {
    let jobs = options.jobs.or(study.local.jobs).unwrap_or(1).max(1);
    let threads = (cores() / jobs).max(1);
    std::fs::create_dir_all(&study.dir).map_err(|source| Error::io(&study.dir, source))?;
    let _lock = super::record::lock_study(&study.dir)?;
    let logs = study.dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|source| Error::io(&logs, source))?;

    let mut outcome = LocalOutcome::default();
    let mut pending: Vec<&RunSpec> = Vec::new();
    for run in study.by_priority() {
        match read_run(&study.run_dir(run)).state {
            RunState::Completed => outcome.completed += 1,
            RunState::Failed => outcome.skipped_failed.push(run.name.clone()),
            RunState::Running => {
                return Err(Error::Busy {
                    path: study.run_dir(run),
                    message: "is being trained by another process; stop it, or wait for it, before running the study here".into(),
                })
            }
            RunState::Queued | RunState::Interrupted => pending.push(run),
        }
    }
    // Everything that will start is checked before anything starts.
    let checked = check_runs(study, &pending, Some(threads))?;
    write_record(study, Executor::Local, &checked_steps(study, &checked))?;
    say(&format!(
        "study `{}`: {} runs, {} completed, {} failed before (not rerun), {} to run, {jobs} at a time with {} threads each",
        study.name,
        study.runs.len(),
        outcome.completed,
        outcome.skipped_failed.len(),
        pending.len(),
        study.threads.unwrap_or(threads)
    ));
    let total_of = |index: usize| {
        checked
            .iter()
            .find(|c| c.index == index)
            .map_or(0, |c| c.total_steps)
    };
    let mut queue: VecDeque<&RunSpec> = pending.into_iter().collect();
    let mut running: Vec<Running> = Vec::new();
    let mut last_progress = Instant::now() - options.progress_every;
    let mut stopping = false;
    loop {
        let caught = signal.load(Ordering::SeqCst);
        if caught != 0 && !stopping {
            stopping = true;
            outcome.signal = Some(caught as i32);
            say(&format!(
                "signal {caught}: stopping {} running runs (each writes a checkpoint)",
                running.len()
            ));
            for r in &running {
                // SAFETY: kill(2) on the pid of a child we have not reaped.
                unsafe { libc::kill(r.child.id() as libc::pid_t, libc::SIGTERM) };
            }
        }
        while !stopping && running.len() < jobs {
            let Some(run) = queue.pop_front() else { break };
            running.push(start(
                study,
                run,
                threads,
                &logs,
                options,
                total_of(run.index),
            )?);
            say(&format!("started {}", run.name));
        }
        let mut index = 0;
        while index < running.len() {
            let exited = running[index]
                .child
                .try_wait()
                .map_err(|err| Error::Subprocess {
                    program: format!("vigil train of study run `{}`", running[index].run.name),
                    reason: format!("cannot wait for it: {err}"),
                })?;
            let Some(status) = exited else {
                index += 1;
                continue;
            };
            let finished = running.swap_remove(index);
            let name = finished.run.name.clone();
            for warning in super::notify::after_run(study, &finished.run) {
                say(&format!("warning: {warning}"));
            }
            match read_run(&study.run_dir(&finished.run)).state {
                RunState::Completed => {
                    outcome.completed += 1;
                    say(&format!("completed {name}"));
                }
                RunState::Interrupted => {
                    outcome.interrupted.push(name.clone());
                    say(&format!(
                        "interrupted {name} ({status}); it resumes on the next `vigil study run`"
                    ));
                }
                _ => {
                    outcome.failed.push(name.clone());
                    say(&format!(
                        "failed {name} ({status}); see {}",
                        logs.join(format!("{name}.log")).display()
                    ));
                }
            }
        }
        if running.is_empty() && (queue.is_empty() || stopping) {
            break;
        }
        if last_progress.elapsed() >= options.progress_every {
            last_progress = Instant::now();
            say(&progress_line(study, &outcome, &running, &queue, &total_of));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(outcome)
}

fn checked_steps(study: &Study, checked: &[super::plan::CheckedRun]) -> Vec<Option<u64>> {
    let mut steps = vec![None; study.runs.len()];
    for run in checked {
        steps[run.index] = Some(run.total_steps);
    }
    steps
}

/// Start one run's `vigil train` child.
fn start(
    study: &Study,
    run: &RunSpec,
    threads: usize,
    logs: &Path,
    options: &LocalOptions,
    total_steps: u64,
) -> Result<Running> {
    let run_dir = study.run_dir(run);
    let threads = super::plan::started_threads(&run_dir).unwrap_or(threads);
    let log_path = logs.join(format!("{}.log", run.name));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| Error::io(&log_path, source))?;
    let err_log = log
        .try_clone()
        .map_err(|source| Error::io(&log_path, source))?;
    let mut command = Command::new(&options.exe);
    command.arg("train").arg(&run.config);
    for set in study.set_arguments(run, Some(threads)) {
        command.arg("--set").arg(set);
    }
    command
        .args(["--resume", "auto"])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log);
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to send SIGTERM to this
    // child when its parent (the executor) dies.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|err| Error::Subprocess {
        program: options.exe.display().to_string(),
        reason: format!("cannot start it for study run `{}`: {err}", run.name),
    })?;
    let start_step = read_run(&run_dir)
        .last_record
        .and_then(|r| r["global_step"].as_u64())
        .unwrap_or(0);
    let _ = write_atomically(
        &logs.join(format!("{}.pid", run.name)),
        child.id().to_string().as_bytes(),
    );
    Ok(Running {
        run: run.clone(),
        child,
        started: Instant::now(),
        start_step,
        total_steps,
    })
}

/// `queued 3 · running 2 · completed 10 · failed 0 · interrupted 1 · ETA 1h02m`.
fn progress_line(
    study: &Study,
    outcome: &LocalOutcome,
    running: &[Running],
    queue: &VecDeque<&RunSpec>,
    total_of: &dyn Fn(usize) -> u64,
) -> String {
    // Steps/s of the running runs since they started, and the steps still to go.
    let mut rate = 0.0;
    let mut left = 0u64;
    for r in running {
        let step = read_run(&study.run_dir(&r.run))
            .last_record
            .and_then(|record| record["global_step"].as_u64())
            .unwrap_or(r.start_step);
        let seconds = r.started.elapsed().as_secs_f64();
        if step > r.start_step && seconds > 0.0 {
            rate += (step - r.start_step) as f64 / seconds;
        }
        left += r.total_steps.saturating_sub(step);
    }
    left += queue.iter().map(|run| total_of(run.index)).sum::<u64>();
    let eta = if rate > 0.0 {
        format_duration(left as f64 / rate)
    } else {
        "—".into()
    };
    format!(
        "queued {} · running {} · completed {} · failed {} · interrupted {} · ETA {eta}",
        queue.len(),
        running.len(),
        outcome.completed,
        outcome.failed.len() + outcome.skipped_failed.len(),
        outcome.interrupted.len(),
    )
}

/// `1h02m`, `4m10s`, `12s`.
pub fn format_duration(seconds: f64) -> String {
    let total = seconds.max(0.0).round() as u64;
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(format_duration(12.4), "12s");
        assert_eq!(format_duration(250.0), "4m10s");
        assert_eq!(format_duration(3720.0), "1h02m");
    }
}
