//! Who is told what happens to a run: its `[[notify]]` webhooks ([`crate::notify`]), with the
//! run's name, study, directory and last validation's metrics in every message.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::RunHub;
use crate::config::{NotifyEvent, Settings};
use crate::error::Result;
use crate::notify::{Notice, Notifier};
use crate::run_dir::{RunInfo, RunLayout};
use crate::sink::Record;

/// How long the end of a run waits for its notifications to go out.
const FINAL_WAIT: Duration = Duration::from_secs(15);

/// A run's notifier and what its messages say about the run.
#[derive(Debug, Default)]
pub(super) struct Watch {
    notifier: Option<Notifier>,
    run: String,
    /// The last validation's metrics.
    metrics: BTreeMap<String, f64>,
}

impl Watch {
    /// The notifier of `settings` (a `url_env` that is not set is a config error, found before
    /// the run directory is touched).
    pub(super) fn new(settings: &Settings) -> Result<Self> {
        let notifier = if settings.notify.is_empty() {
            None
        } else {
            Some(Notifier::new(&settings.notify)?)
        };
        Ok(Watch {
            notifier,
            run: settings.name.clone(),
            metrics: BTreeMap::new(),
        })
    }

    pub(super) fn note_validation(&mut self, record: &Record) {
        self.metrics = record.metrics.iter().cloned().collect();
    }
}

/// How a run ended, for its last notification.
#[derive(Debug, Clone)]
pub struct RunEnd<'a> {
    pub info: &'a RunInfo,
    /// The run's last step and epoch.
    pub step: u64,
    pub epoch: usize,
}

/// `dir` as an absolute path, for a message read on another machine.
fn absolute(dir: &Path) -> String {
    std::fs::canonicalize(dir)
        .unwrap_or_else(|_| dir.to_path_buf())
        .display()
        .to_string()
}

/// The last `count` lines of the run's log.
fn last_log_lines(layout: &RunLayout, count: usize) -> Vec<String> {
    let text = std::fs::read_to_string(layout.log()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..]
        .iter()
        .map(|line| line.to_string())
        .collect()
}

impl RunHub {
    /// A notice about this run: its name, study, directory and last validation's metrics,
    /// at (epoch, global step).
    fn notice(&self, event: NotifyEvent, message: String, at: Option<(usize, u64)>) -> Notice {
        let mut notice = Notice::new(event, message);
        notice.run = Some(self.watch.run.clone());
        notice.metrics = self.watch.metrics.clone();
        if let Some((epoch, step)) = at {
            notice.epoch = Some(epoch);
            notice.step = Some(step);
        }
        if let Some(layout) = &self.layout {
            notice.run_dir = Some(absolute(layout.root()));
            notice.study = crate::run_dir::study_point(layout.root()).map(|(name, _)| name);
        }
        notice
    }

    /// Tell the webhooks that want `event`; `at` is (epoch, global step).
    pub fn alert(&mut self, event: NotifyEvent, message: String, at: Option<(usize, u64)>) {
        if !self.watch.notifier.as_ref().is_some_and(|n| n.wants(event)) {
            return;
        }
        let message = format!("run `{}`: {message}", self.watch.run);
        let notice = self.notice(event, message, at);
        if let Some(notifier) = &mut self.watch.notifier {
            notifier.send(event, &notice);
        }
    }

    /// The run's last notification (failed, interrupted, early stopped or finished), sent
    /// before `run.json` is written; waits a bounded time for every message to go out and
    /// returns the warnings of those that could not be sent.
    pub fn end_watching(&mut self, end: &RunEnd<'_>) -> Vec<String> {
        let Some(notifier) = &self.watch.notifier else {
            return Vec::new();
        };
        let info = end.info;
        let (event, message) = match info.status.as_str() {
            RunInfo::FAILED => (NotifyEvent::Failed, format!("failed at step {}", end.step)),
            RunInfo::INTERRUPTED => (
                NotifyEvent::Interrupted,
                format!(
                    "interrupted by {} at step {}; resume it with `vigil train --resume`",
                    info.interrupted_by.as_deref().unwrap_or("a signal"),
                    end.step
                ),
            ),
            RunInfo::STOPPED => (
                NotifyEvent::EarlyStopped,
                match &info.stopped_by {
                    Some(by) if by.monitor == "early_stopping" => {
                        format!(
                            "early stopping ended it at step {}: {}",
                            end.step, by.reason
                        )
                    }
                    Some(by) => format!(
                        "monitor `{}` stopped it at step {}: {}",
                        by.monitor, end.step, by.reason
                    ),
                    None => format!("stopped at step {}", end.step),
                },
            ),
            _ => (
                NotifyEvent::Finished,
                format!(
                    "finished its {} epochs ({} steps){}",
                    info.epochs,
                    end.step,
                    info.best_val_loss
                        .map_or(String::new(), |loss| format!("; best val_loss {loss:.4}"))
                ),
            ),
        };
        if notifier.wants(event) {
            let message = format!("run `{}` {message}", self.watch.run);
            let mut notice = self.notice(event, message, Some((end.epoch, end.step)));
            notice.status = Some(info.status.clone());
            notice.error = info.error.clone();
            if let (Some(layout), Some(_)) = (&self.layout, &info.error) {
                notice.error_lines = last_log_lines(layout, 20);
            }
            if let Some(notifier) = &mut self.watch.notifier {
                notifier.send(event, &notice);
            }
        }
        match &mut self.watch.notifier {
            Some(notifier) => notifier.finish(FINAL_WAIT),
            None => Vec::new(),
        }
    }
}
