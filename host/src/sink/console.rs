//! Human-readable progress on standard output.

use std::io::Write;

use super::{Record, RecordKind, Sink};
use crate::error::Result;

/// Prints one line per epoch: the epoch, every metric, and the epoch's duration.
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
        if record.kind != RecordKind::Epoch {
            return Ok(());
        }
        let width = self.epochs.to_string().len();
        let mut line = format!("epoch {:>width$}/{}", record.epoch, self.epochs);
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
