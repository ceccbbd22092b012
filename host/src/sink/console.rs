//! Human-readable progress: a progress bar with ETA and the live loss when standard output is
//! a terminal (nothing when it is not), and one line per validation and per epoch.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Record, RecordKind, Sink};
use crate::error::Result;

pub struct ConsoleSink {
    epochs: usize,
    bar: Option<ProgressBar>,
    /// The newest system sample's process memory and GPU memory, in bytes, for the
    /// validation and epoch lines.
    memory: Option<f64>,
    gpu_memory: Option<f64>,
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
        ConsoleSink {
            epochs,
            bar,
            memory: None,
            gpu_memory: None,
        }
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
            RecordKind::System => {
                self.memory = record
                    .get("process_memory_rss_megabytes")
                    .map(|mb| mb * 1e6);
                self.gpu_memory = record
                    .metrics
                    .iter()
                    .find(|(name, _)| {
                        name.ends_with("_memory_usage_megabytes") && name.starts_with("gpu_")
                    })
                    .map(|&(_, mb)| mb * 1e6);
                return Ok(());
            }
        };
        for (name, value) in &record.metrics {
            if name == "epoch_time_s" {
                line.push_str(&format!("  ({value:.1} s)"));
            } else {
                line.push_str(&format!("  {name} {value:.4}"));
            }
        }
        if let Some(bytes) = self.memory {
            line.push_str(&format!("  RAM {}", gigabytes(bytes)));
        }
        if let Some(bytes) = self.gpu_memory {
            line.push_str(&format!("  GPU {}", gigabytes(bytes)));
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

/// `1.2 GB` (10⁹ bytes, as the metrics count).
fn gigabytes(bytes: f64) -> String {
    format!("{:.1} GB", bytes / 1e9)
}

impl Drop for ConsoleSink {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
