//! Where metrics go. The trainer emits [`Record`]s; each sink writes them its own way.
//! Sinks know nothing of the training loop.

mod console;
mod jsonl;

pub use console::ConsoleSink;
pub use jsonl::JsonlSink;

use crate::error::Result;

/// What a record reports on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// One training batch: loss, accuracy, learning rate, weight decay.
    Train,
    /// One validation pass: `val_loss`, `val_acc`, `best_val_loss`.
    Validation,
    /// The end of a training epoch, with the epoch's train metrics and its last validation.
    Epoch,
    /// Scalars one monitor logged at one event.
    Monitor,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Train => "train",
            RecordKind::Validation => "validation",
            RecordKind::Epoch => "epoch",
            RecordKind::Monitor => "monitor",
        }
    }
}

/// One row of metrics at a point in training.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub kind: RecordKind,
    /// The monitor that produced the record, for `Monitor` records.
    pub source: Option<String>,
    /// 1-based epoch the record belongs to.
    pub epoch: usize,
    /// Optimizer steps taken so far.
    pub global_step: u64,
    /// Seconds since the Unix epoch when the record was made.
    pub wall_time: f64,
    /// Metric name and value, in the order they should be shown.
    pub metrics: Vec<(String, f64)>,
}

impl Record {
    pub fn get(&self, name: &str) -> Option<f64> {
        self.metrics
            .iter()
            .find(|(key, _)| key == name)
            .map(|&(_, value)| value)
    }
}

/// A destination for records.
pub trait Sink {
    fn write(&mut self, record: &Record) -> Result<()>;
    /// Make everything written so far durable (or visible).
    fn flush(&mut self) -> Result<()>;
}

/// Seconds since the Unix epoch, now.
pub fn unix_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs_f64())
        .unwrap_or(0.0)
}
