//! Human-readable progress: a progress bar with ETA and the live loss when standard output is
//! a terminal (nothing when it is not), and one line per validation and per epoch.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Record, RecordKind, Sink};
use crate::error::Result;

pub struct ConsoleSink {
    epochs: usize,
    bar: Option<ProgressBar>,
}

impl ConsoleSink {
    /// `total_steps` is the length of the run; `done` the steps already taken (on resume).
    pub fn new(epochs: usize, total_steps: u64, done: u64) -> Self {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(
                Some(total_steps),
                ProgressDrawTarget::stdout_with_hz(4),
            );
            let style = ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} steps  ETA {eta}  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_position(done);
            bar
        });
        ConsoleSink { epochs, bar }
    }

    fn line(&self, text: String) {
        match &self.bar {
            Some(bar) => {
                tracing::info!(target: crate::run_log::CONSOLE_TARGET, "{text}");
                bar.println(text);
            }
            None => crate::run_log::say(&text),
        }
    }
}

impl Sink for ConsoleSink {
    fn write(&mut self, record: &Record) -> Result<()> {
        let width = self.epochs.to_string().len();
        let mut line = match record.kind {
            RecordKind::Epoch => format!("epoch {:>width$}/{}", record.epoch, self.epochs),
            RecordKind::Validation => format!("  validation at step {}", record.global_step),
            RecordKind::Train => {
                if let Some(bar) = &self.bar {
                    bar.set_position(record.global_step);
                    if let Some(loss) = record.get("train_loss") {
                        bar.set_message(format!("epoch {} loss {loss:.4}", record.epoch));
                    }
                }
                return Ok(());
            }
            RecordKind::Monitor => return Ok(()),
        };
        for (name, value) in &record.metrics {
            if name == "epoch_time_s" {
                line.push_str(&format!("  ({value:.1} s)"));
            } else {
                line.push_str(&format!("  {name} {value:.4}"));
            }
        }
        self.line(line);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        // Standard output may be a closed pipe; that is no reason to fail a run.
        let _ = std::io::stdout().flush();
        Ok(())
    }
}

impl Drop for ConsoleSink {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
