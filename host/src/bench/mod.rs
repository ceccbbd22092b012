//! `vigil bench`: what training and monitoring cost, measured on real plugin libraries.
//!
//! - [`workload`]: the W1 training workload, bare and with each monitor at its default
//!   cadence, interleaved in one process, beside a plain PyTorch loop;
//! - [`plugins`]: plugin load time and hook dispatch cost through the ABI.
//!
//! Every number is a median over repeats, with their min and max; nothing here is a test
//! with a time limit.

pub mod plugins;
pub mod workload;

use serde::Serialize;

pub use plugins::{plugin_costs, DISPATCH_PLUGIN};
pub use workload::{
    run_workload, workload_table, PythonBaseline, WorkloadOptions, WorkloadReport, SHIPPED_MONITORS,
};

/// One measured quantity.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub name: String,
    pub unit: &'static str,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub repeats: usize,
    /// Every repeat's value, in the order measured.
    pub samples: Vec<f64>,
}

impl Measurement {
    /// Median, min and max of `samples` (at least one).
    pub fn of(name: &str, unit: &'static str, samples: Vec<f64>) -> Measurement {
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let middle = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[middle]
        } else {
            (sorted[middle - 1] + sorted[middle]) / 2.0
        };
        Measurement {
            name: name.into(),
            unit,
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            repeats: sorted.len(),
            samples,
        }
    }
}

/// The measurements as an aligned table.
pub fn table(measurements: &[Measurement]) -> String {
    let width = measurements
        .iter()
        .map(|m| m.name.len())
        .max()
        .unwrap_or(0)
        .max(9);
    let mut out = format!(
        "{:<width$}  {:>10}  {:>10}  {:>10}  unit\n",
        "benchmark", "median", "min", "max"
    );
    for m in measurements {
        out.push_str(&format!(
            "{:<width$}  {:>10.3}  {:>10.3}  {:>10.3}  {}\n",
            m.name, m.median, m.min, m.max, m.unit
        ));
    }
    out
}

/// The peak resident set size of this process so far, in MiB (Linux; `None` elsewhere).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_measurement_has_the_median_and_the_range() {
        let odd = Measurement::of("x", "ms", vec![3.0, 1.0, 2.0]);
        assert_eq!(
            (odd.median, odd.min, odd.max, odd.repeats),
            (2.0, 1.0, 3.0, 3)
        );
        let even = Measurement::of("x", "ms", vec![4.0, 1.0, 2.0, 3.0]);
        assert_eq!(even.median, 2.5);
    }

    #[test]
    fn peak_rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            let rss = peak_rss_mib().expect("VmHWM in /proc/self/status");
            assert!(rss > 1.0, "{rss}");
        }
    }
}
