//! Where metrics go. The trainer emits [`Record`]s; each sink writes them its own way.
//! Sinks know nothing of the training loop.

mod background;
mod console;
mod jsonl;
pub mod tensorboard;

pub use background::Background;
pub use console::ConsoleSink;
pub use jsonl::JsonlSink;
pub use tensorboard::TensorBoardSink;

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
    /// Memory, CPU, disk (and GPU) of the machine and the process ([`crate::system`]).
    System,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Train => "train",
            RecordKind::Validation => "validation",
            RecordKind::Epoch => "epoch",
            RecordKind::Monitor => "monitor",
            RecordKind::System => "system",
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

/// A histogram of values: bucket `i` counts values in `(limit[i-1], limit[i]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub min: f64,
    pub max: f64,
    pub count: f64,
    pub sum: f64,
    pub sum_squares: f64,
    pub bucket_limits: Vec<f64>,
    pub bucket_counts: Vec<f64>,
}

impl Histogram {
    /// A histogram already counted: bucket `i` holds `counts[i]` values in
    /// `(limits[i-1], limits[i]]`, the first from `low`. Sum and sum of squares take each
    /// bucket's values at its centre.
    pub fn of_buckets(low: f64, limits: &[f64], counts: &[f64]) -> Histogram {
        let lowers = std::iter::once(low).chain(limits.iter().copied());
        let (mut sum, mut sum_squares) = (0.0, 0.0);
        for ((lower, upper), count) in lowers.zip(limits).zip(counts) {
            let centre = (lower + upper) / 2.0;
            sum += centre * count;
            sum_squares += centre * centre * count;
        }
        let filled = |i: &usize| counts[*i] > 0.0;
        let first = (0..counts.len()).find(filled).unwrap_or(0);
        let last = (0..counts.len()).rev().find(filled).unwrap_or(0);
        Histogram {
            min: if first == 0 { low } else { limits[first - 1] },
            max: limits.get(last).copied().unwrap_or(low),
            count: counts.iter().sum(),
            sum,
            sum_squares,
            bucket_limits: limits.to_vec(),
            bucket_counts: counts.to_vec(),
        }
    }

    /// `buckets` equal-width buckets over the finite values' range.
    pub fn of(values: &[f32], buckets: usize) -> Histogram {
        let finite = values
            .iter()
            .map(|&v| f64::from(v))
            .filter(|v| v.is_finite());
        let (mut min, mut max, mut count, mut sum, mut sum_squares) =
            (f64::INFINITY, f64::NEG_INFINITY, 0.0, 0.0, 0.0);
        for value in finite.clone() {
            min = min.min(value);
            max = max.max(value);
            count += 1.0;
            sum += value;
            sum_squares += value * value;
        }
        if count == 0.0 {
            return Histogram {
                min: 0.0,
                max: 0.0,
                count: 0.0,
                sum: 0.0,
                sum_squares: 0.0,
                bucket_limits: vec![0.0],
                bucket_counts: vec![0.0],
            };
        }
        let buckets = buckets.max(1);
        let width = ((max - min) / buckets as f64).max(f64::MIN_POSITIVE);
        let bucket_limits: Vec<f64> = (1..=buckets)
            .map(|i| {
                if i == buckets {
                    max
                } else {
                    min + width * i as f64
                }
            })
            .collect();
        let mut bucket_counts = vec![0.0; buckets];
        for value in finite {
            let index = (((value - min) / width).ceil() as usize)
                .saturating_sub(1)
                .min(buckets - 1);
            bucket_counts[index] += 1.0;
        }
        Histogram {
            min,
            max,
            count,
            sum,
            sum_squares,
            bucket_limits,
            bucket_counts,
        }
    }
}

/// A destination for records.
pub trait Sink {
    fn write(&mut self, record: &Record) -> Result<()>;
    /// A PNG image at `step` (sinks that cannot show images ignore it).
    fn image(&mut self, _tag: &str, _step: u64, _wall_time: f64, _png: &[u8]) -> Result<()> {
        Ok(())
    }
    /// A histogram at `step` (sinks that cannot show histograms ignore it).
    fn histogram(
        &mut self,
        _tag: &str,
        _step: u64,
        _wall_time: f64,
        _histogram: &Histogram,
    ) -> Result<()> {
        Ok(())
    }
    /// Make everything written so far durable (or visible).
    fn flush(&mut self) -> Result<()>;
    /// CPU time spent writing, by whom it was written for: a monitor's name for its records
    /// and images, [`HOST_SOURCE`] for the loop's own (sinks on the training thread report
    /// none: their time is the step's).
    fn cpu_by_source(&self) -> Vec<(String, std::time::Duration)> {
        Vec::new()
    }
}

/// The source of what the loop itself writes (train, validation, epoch and system records,
/// weight histograms), in [`Sink::cpu_by_source`].
pub const HOST_SOURCE: &str = "host";

/// Add `spent` to `source`'s entry of `totals` (a short list, by name: a run's monitors).
pub fn add_by_source(
    totals: &mut Vec<(String, std::time::Duration)>,
    source: &str,
    spent: std::time::Duration,
) {
    match totals.iter_mut().find(|(name, _)| name == source) {
        Some((_, total)) => *total += spent,
        None => totals.push((source.to_string(), spent)),
    }
}

/// The CPU time this thread has run, from `CLOCK_THREAD_CPUTIME_ID` (zero where unreadable).
pub fn thread_cpu_time() -> std::time::Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Seconds since the Unix epoch, now.
pub fn unix_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs_f64())
        .unwrap_or(0.0)
}
