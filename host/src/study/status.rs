//! `vigil study status DIR`: counts by state, an ETA, and the study's data-quality checks,
//! read from the run directories (the same whichever executor ran them).
//!
//! The checks, each flagged with the run it concerns:
//! - a loss (train or validation) outside [0, 10];
//! - an accuracy outside [0, 1];
//! - a metric that is not finite (`null` in `metrics.jsonl`);
//! - a burn-in epoch (the first epoch whose mean train loss is ≤ 1.0) outside [1, 20], or none
//!   by epoch 20;
//! - a running run without progress for `stuck_after`;
//! - a failure rate above 10 % of the runs that ended.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::local::format_duration;
use super::record::{read_record, Executor};
use crate::error::{Error, Result};
use crate::run_dir::{read_run, RunLayout, RunState};

/// The burn-in threshold of the study plan (train cross-entropy, nats).
pub const BURN_IN_LOSS: f64 = 1.0;
/// A burn-in epoch outside this range is flagged.
pub const BURN_IN_EPOCHS: (u64, u64) = (1, 20);
pub use super::notify::MAX_FAILURE_RATE;

/// One flagged problem.
#[derive(Debug, Clone, Serialize)]
pub struct Flag {
    /// The run it concerns, or `None` for the study as a whole.
    pub run: Option<String>,
    pub check: &'static str,
    pub detail: String,
}

/// One run's line in the status.
#[derive(Debug, Clone, Serialize)]
pub struct RunLine {
    pub name: String,
    pub state: RunState,
    pub global_step: Option<u64>,
    pub total_steps: Option<u64>,
    /// Steps per second lately (running runs).
    pub steps_per_second: Option<f64>,
}

/// The study's status.
#[derive(Debug, Clone, Serialize)]
pub struct StudyStatus {
    pub name: String,
    pub counts: Vec<(RunState, usize)>,
    pub runs: Vec<RunLine>,
    pub eta_seconds: Option<f64>,
    pub flags: Vec<Flag>,
    /// For a study submitted to SLURM: its job and `squeue`'s count of its tasks by state.
    pub slurm: Option<(String, Vec<(String, usize)>)>,
}

/// What scanning one run's `metrics.jsonl` found.
#[derive(Debug, Default)]
struct Scan {
    /// (epoch, mean train loss) of each epoch record.
    epoch_losses: Vec<(u64, f64)>,
    flags: Vec<(&'static str, String)>,
    /// The first and last train records' (global step, wall time), of the last 200 lines.
    recent: Option<((u64, f64), (u64, f64))>,
}

fn scan_metrics(path: &Path) -> Scan {
    let mut scan = Scan::default();
    let Ok(file) = std::fs::File::open(path) else {
        return scan;
    };
    let mut recent: std::collections::VecDeque<(u64, f64)> = Default::default();
    let (mut bad_loss, mut bad_acc, mut non_finite) = (None, None, None);
    for line in BufReader::new(file)
        .lines()
        .map_while(std::result::Result::ok)
    {
        let Ok(record) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let kind = record["kind"].as_str().unwrap_or("");
        let epoch = record["epoch"].as_u64().unwrap_or(0);
        let step = record["global_step"].as_u64().unwrap_or(0);
        let Some(fields) = record.as_object() else {
            continue;
        };
        for (key, value) in fields {
            if matches!(
                key.as_str(),
                "kind" | "monitor" | "epoch" | "global_step" | "wall_time"
            ) {
                continue;
            }
            let where_ = || format!("{key} at epoch {epoch}, step {step} ({kind})");
            match value.as_f64() {
                None if value.is_null() => {
                    non_finite.get_or_insert_with(where_);
                }
                Some(x) if key.ends_with("_loss") && !(0.0..=10.0).contains(&x) => {
                    bad_loss.get_or_insert_with(|| format!("{} = {x}", where_()));
                }
                Some(x)
                    if (key.ends_with("_acc") || key.starts_with("val_acc"))
                        && !(0.0..=1.0).contains(&x) =>
                {
                    bad_acc.get_or_insert_with(|| format!("{} = {x}", where_()));
                }
                _ => {}
            }
        }
        match kind {
            "epoch" => {
                if let Some(loss) = record["train_loss"].as_f64() {
                    scan.epoch_losses.push((epoch, loss));
                }
            }
            "train" => {
                if let Some(wall) = record["wall_time"].as_f64() {
                    recent.push_back((step, wall));
                    if recent.len() > 200 {
                        recent.pop_front();
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(detail) = bad_loss {
        scan.flags.push(("loss out of [0, 10]", detail));
    }
    if let Some(detail) = bad_acc {
        scan.flags.push(("accuracy out of [0, 1]", detail));
    }
    if let Some(detail) = non_finite {
        scan.flags.push(("non-finite metric", detail));
    }
    scan.recent = recent.front().copied().zip(recent.back().copied());
    scan
}

/// The first epoch whose mean train loss is at most [`BURN_IN_LOSS`], and that loss.
pub fn burn_in(epoch_losses: &[(u64, f64)]) -> Option<(u64, f64)> {
    epoch_losses
        .iter()
        .copied()
        .find(|(_, loss)| loss.is_finite() && *loss <= BURN_IN_LOSS)
}

/// Read the study in `dir`.
pub fn study_status(dir: &Path, stuck_after: Duration) -> Result<StudyStatus> {
    let record = read_record(dir)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|err| Error::Config {
            location: "clock".into(),
            message: err.to_string(),
        })?
        .as_secs_f64();
    let mut runs = Vec::new();
    let mut flags = Vec::new();
    let (mut rate, mut left) = (0.0, 0u64);
    for (index, run) in record.study.runs.iter().enumerate() {
        let run_dir = dir.join(&run.name);
        let status = read_run(&run_dir);
        let scan = scan_metrics(&RunLayout::new(&run_dir).metrics());
        let total_steps = record.total_steps.get(index).copied().flatten();
        let global_step = status
            .last_record
            .as_ref()
            .and_then(|r| r["global_step"].as_u64());
        let steps_per_second = scan
            .recent
            .filter(|((s0, w0), (s1, w1))| s1 > s0 && w1 > w0)
            .map(|((s0, w0), (s1, w1))| (s1 - s0) as f64 / (w1 - w0));
        for (check, detail) in scan.flags {
            flags.push(Flag {
                run: Some(run.name.clone()),
                check,
                detail,
            });
        }
        let last_epoch = scan.epoch_losses.last().map_or(0, |(epoch, _)| *epoch);
        match burn_in(&scan.epoch_losses) {
            Some((epoch, loss)) if epoch < BURN_IN_EPOCHS.0 || epoch > BURN_IN_EPOCHS.1 => flags
                .push(Flag {
                    run: Some(run.name.clone()),
                    check: "burn-in epoch outside [1, 20]",
                    detail: format!("train loss {loss:.4} ≤ {BURN_IN_LOSS} first at epoch {epoch}"),
                }),
            None if last_epoch >= BURN_IN_EPOCHS.1 => flags.push(Flag {
                run: Some(run.name.clone()),
                check: "burn-in epoch outside [1, 20]",
                detail: format!("train loss still above {BURN_IN_LOSS} after {last_epoch} epochs"),
            }),
            _ => {}
        }
        if status.state == RunState::Running {
            let last_wall = status
                .last_record
                .as_ref()
                .and_then(|r| r["wall_time"].as_f64());
            if let Some(wall) = last_wall.filter(|w| now - w > stuck_after.as_secs_f64()) {
                flags.push(Flag {
                    run: Some(run.name.clone()),
                    check: "stuck",
                    detail: format!("no progress for {}", format_duration(now - wall)),
                });
            }
            rate += steps_per_second.unwrap_or(0.0);
        }
        if matches!(
            status.state,
            RunState::Running | RunState::Queued | RunState::Interrupted
        ) {
            left += total_steps
                .unwrap_or(0)
                .saturating_sub(global_step.unwrap_or(0));
        }
        runs.push(RunLine {
            name: run.name.clone(),
            state: status.state,
            global_step,
            total_steps,
            steps_per_second,
        });
    }
    let count = |state| runs.iter().filter(|r| r.state == state).count();
    let (failed, completed) = (count(RunState::Failed), count(RunState::Completed));
    if failed + completed > 0 {
        let rate = failed as f64 / (failed + completed) as f64;
        if rate > MAX_FAILURE_RATE {
            flags.push(Flag {
                run: None,
                check: "failure rate above 10 %",
                detail: format!(
                    "{failed} of {} ended runs failed ({:.0} %)",
                    failed + completed,
                    100.0 * rate
                ),
            });
        }
    }
    let slurm = record
        .slurm_job
        .clone()
        .filter(|_| record.executor == Executor::Slurm)
        .map(|job| {
            let mut by_state: Vec<(String, usize)> = Vec::new();
            for (_, state) in super::slurm::squeue(&job).unwrap_or_default() {
                match by_state.iter_mut().find(|(s, _)| *s == state) {
                    Some((_, n)) => *n += 1,
                    None => by_state.push((state, 1)),
                }
            }
            (job, by_state)
        });
    Ok(StudyStatus {
        slurm,
        name: record.study.name.clone(),
        counts: RunState::ALL.iter().map(|&s| (s, count(s))).collect(),
        runs,
        eta_seconds: (rate > 0.0).then(|| left as f64 / rate),
        flags,
    })
}

/// The status as text.
pub fn status_text(status: &StudyStatus) -> String {
    let mut out = format!(
        "study `{}`: {}",
        status.name,
        status
            .counts
            .iter()
            .map(|(state, n)| format!("{} {n}", state.name()))
            .collect::<Vec<_>>()
            .join(" · ")
    );
    match status.eta_seconds {
        Some(eta) => out.push_str(&format!(" · ETA {}\n", format_duration(eta))),
        None => out.push('\n'),
    }
    if let Some((job, tasks)) = &status.slurm {
        let tasks = if tasks.is_empty() {
            "no tasks in the queue".to_string()
        } else {
            tasks
                .iter()
                .map(|(state, n)| format!("{n} {}", state.to_lowercase()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!("SLURM job {job}: {tasks} (squeue)\n"));
    }
    for run in status
        .runs
        .iter()
        .filter(|r| r.state != RunState::Completed)
    {
        let progress = match (run.global_step, run.total_steps) {
            (Some(step), Some(total)) => format!("step {step}/{total}"),
            (Some(step), None) => format!("step {step}"),
            _ => String::new(),
        };
        let rate = run
            .steps_per_second
            .filter(|_| run.state == RunState::Running)
            .map(|r| format!(", {r:.1} steps/s"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  {:<11} {} {progress}{rate}\n",
            run.state.name(),
            run.name
        ));
    }
    if status.flags.is_empty() {
        out.push_str("checks: no flags\n");
    } else {
        out.push_str(&format!("checks: {} flagged\n", status.flags.len()));
        for flag in &status.flags {
            out.push_str(&format!(
                "  FLAG {}: {}: {}\n",
                flag.run.as_deref().unwrap_or("study"),
                flag.check,
                flag.detail
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burn_in_is_the_first_epoch_at_or_below_one_nat() {
        assert_eq!(burn_in(&[(1, 2.0), (2, 1.0), (3, 0.5)]), Some((2, 1.0)));
        assert_eq!(burn_in(&[(1, 2.0), (2, f64::NAN)]), None);
    }

    #[test]
    fn a_scan_flags_out_of_range_and_missing_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(crate::run_dir::METRICS_FILE);
        std::fs::write(
            &path,
            "{\"kind\":\"train\",\"epoch\":1,\"global_step\":1,\"wall_time\":10.0,\"train_loss\":2.0,\"train_acc\":0.5}\n\
             {\"kind\":\"train\",\"epoch\":1,\"global_step\":3,\"wall_time\":11.0,\"train_loss\":12.5,\"train_acc\":0.5}\n\
             {\"kind\":\"validation\",\"epoch\":1,\"global_step\":3,\"wall_time\":11.5,\"val_loss\":null,\"val_acc\":1.5}\n\
             {\"kind\":\"epoch\",\"epoch\":1,\"global_step\":3,\"wall_time\":12.0,\"train_loss\":0.9}\n",
        )
        .unwrap();
        let scan = scan_metrics(&path);
        let checks: Vec<&str> = scan.flags.iter().map(|(c, _)| *c).collect();
        assert_eq!(
            checks,
            [
                "loss out of [0, 10]",
                "accuracy out of [0, 1]",
                "non-finite metric"
            ]
        );
        assert!(
            scan.flags[0].1.contains("train_loss at epoch 1, step 3"),
            "{:?}",
            scan.flags
        );
        assert_eq!(scan.epoch_losses, [(1, 0.9)]);
        assert_eq!(scan.recent, Some(((1, 10.0), (3, 11.0))));
    }
}
