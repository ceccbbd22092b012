//! Human-readable progress on standard output.

use std::io::Write;

use super::{Record, RecordKind, Sink};
use crate::error::Result;

/// Prints one line per validation and per epoch, with their metrics.
pub struct ConsoleSink {
    epochs: usize,
}

impl ConsoleSink {
    pub fn new(epochs: usize) -> Self {
        ConsoleSink { epochs }
    }
}

impl Sink for ConsoleSink {
    fn write(&mut self, record: &Record) -> Result<()> {
        let width = self.epochs.to_string().len();
        let mut line = match record.kind {
            RecordKind::Epoch => format!("epoch {:>width$}/{}", record.epoch, self.epochs),
            RecordKind::Validation => format!("  validation at step {}", record.global_step),
            RecordKind::Train | RecordKind::Monitor => return Ok(()),
        };
        for (name, value) in &record.metrics {
            if name == "epoch_time_s" {
                line.push_str(&format!("  ({value:.1} s)"));
            } else {
                line.push_str(&format!("  {name} {value:.4}"));
            }
        }
        println!("{line}");
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        // Standard output may be a closed pipe; that is no reason to fail a run.
        let _ = std::io::stdout().flush();
        Ok(())
    }
}
