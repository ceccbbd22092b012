//! A study's own notifications: `study_failure_rate` once when more than 10 % of the runs
//! that ended have failed, and `study_finished` once when every run has ended (completed or
//! failed). Whoever ends a run checks — the local executor after each run, each SLURM array
//! task after its own — and the first to see the condition sends it: a marker file in the
//! study directory, created exclusively, makes sure it is sent once. The webhooks are the
//! `[[notify]]` entries of the config of the run whose end triggered it.

use std::path::Path;
use std::time::Duration;

use super::spec::{RunSpec, Study};
use crate::config::{NotifyEvent, Settings};
use crate::notify::{Notice, Notifier};
use crate::run_dir::{read_run, RunState};

/// A failure rate above this (of the runs that ended) is flagged by `vigil study status` and
/// notified as `study_failure_rate`.
pub const MAX_FAILURE_RATE: f64 = 0.10;

/// How long the sender waits for the message to go out.
const WAIT: Duration = Duration::from_secs(15);

/// Runs of the study by how they stand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    total: usize,
    completed: usize,
    failed: usize,
}

fn counts(study: &Study) -> Counts {
    let mut counts = Counts {
        total: study.runs.len(),
        ..Counts::default()
    };
    for run in &study.runs {
        match read_run(&study.run_dir(run)).state {
            RunState::Completed => counts.completed += 1,
            RunState::Failed => counts.failed += 1,
            _ => {}
        }
    }
    counts
}

/// Claim the right to send `event` for the study: true for the first caller only.
fn claim(dir: &Path, event: NotifyEvent) -> bool {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join(format!(".notified-{}", event.name())))
        .is_ok()
}

/// After `run` of `study` ended: send the study's notifications that are due. Returns the
/// warnings of messages that could not be sent (never an error: a study is not failed by
/// its notifications).
pub fn after_run(study: &Study, run: &RunSpec) -> Vec<String> {
    let Ok(settings) = Settings::load(&run.config, &study.set_arguments(run, None)) else {
        return Vec::new();
    };
    if settings.notify.is_empty() {
        return Vec::new();
    }
    let counts = counts(study);
    let ended = counts.completed + counts.failed;
    let rate = if ended > 0 {
        counts.failed as f64 / ended as f64
    } else {
        0.0
    };
    let mut due = Vec::new();
    if rate > MAX_FAILURE_RATE && claim(&study.dir, NotifyEvent::StudyFailureRate) {
        due.push((
            NotifyEvent::StudyFailureRate,
            format!(
                "study `{}`: {} of the {ended} runs that ended failed ({:.0} %, above {:.0} %); \
                 the last: `{}`",
                study.name,
                counts.failed,
                100.0 * rate,
                100.0 * MAX_FAILURE_RATE,
                run.name
            ),
        ));
    }
    if ended == counts.total && claim(&study.dir, NotifyEvent::StudyFinished) {
        due.push((
            NotifyEvent::StudyFinished,
            format!(
                "study `{}` finished: {} runs, {} completed, {} failed",
                study.name, counts.total, counts.completed, counts.failed
            ),
        ));
    }
    if due.is_empty() {
        return Vec::new();
    }
    let mut notifier = match Notifier::new(&settings.notify) {
        Ok(notifier) => notifier,
        Err(err) => return vec![format!("study notifications not sent: {err}")],
    };
    for (event, message) in due {
        let mut notice = Notice::new(event, message);
        notice.study = Some(study.name.clone());
        notice.run = Some(run.name.clone());
        notice.run_dir = Some(study.dir.display().to_string());
        notice.metrics = [
            ("runs", counts.total as f64),
            ("completed", counts.completed as f64),
            ("failed", counts.failed as f64),
            ("failure_rate", rate),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        notifier.send(event, &notice);
    }
    notifier.finish(WAIT)
}
