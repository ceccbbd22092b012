//! `vigil bench`: what training and monitoring cost, measured on real plugin libraries.
//!
//! - [`workload`]: the training workloads W1 (small CNN) and W2 (ResNet-18 at width 0.5),
//!   bare and with the monitors at their default cadences, interleaved in one process;
//! - [`baseline`]: the loops beside them (plain PyTorch, and Lightning with the monitors as
//!   callbacks), in their own processes;
//! - [`table`]: the report as a table;
//! - [`plugins`]: plugin load time and hook dispatch cost through the ABI;
//! - [`image_folder`]: image-folder decode throughput beside torchvision, and the step time on
//!   cached image-folder data beside IDX data of the same shape (`--image-folder`).
//!
//! Every number is a median over repeats, with their min and max and a 90 % interval of
//! their mean ([`mean_interval`]); a target counts as met only when the end of that interval on the
//! wrong side of the target meets it. Nothing here is a test with a time limit.

pub mod baseline;
mod cpu;
pub mod dashboard;
pub mod image_folder;
mod lanes;
pub mod plugins;
mod summary;
pub mod table;
pub mod webdriver;
pub mod workload;

use serde::Serialize;

pub use baseline::{bootstrap_python, lightning_python, PythonBaseline};
pub use dashboard::{dashboard_table, run_dashboard, DashboardOptions};
pub use image_folder::{image_folder_table, run_image_folder, ImageFolderOptions};
pub use lanes::run_workload;
pub use plugins::{plugin_costs, DISPATCH_PLUGIN};
pub use table::workload_table;
pub use workload::{
    Workload, WorkloadOptions, WorkloadReport, INSTRUMENT_PLUGINS, SHIPPED_MONITORS, WORKLOAD_BATCH,
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
    /// A 90 % interval of the mean over repeats: the wider of the percentile bootstrap's and
    /// Student's t ([`mean_interval`]).
    pub low: f64,
    pub high: f64,
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
        let (low, high) = mean_interval(&samples);
        Measurement {
            name: name.into(),
            unit,
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            repeats: sorted.len(),
            low,
            high,
            samples,
        }
    }
}

/// A 90 % interval of the mean of `samples`: the union of the percentile bootstrap's
/// ([`bootstrap_mean_interval`]) and Student's t interval (mean ± t₀.₉₅(n − 1) · s / √n).
///
/// With a few repeats the bootstrap alone is overconfident: it can only resample the values it
/// saw, and three repeats of 1.98, 0.69 and 0.52 % gave 0.58…1.55 %, a "missed" against 0.5 %
/// for a monitor whose hooks, service and sinks took 0.15 %; Student's t for the same three is
/// −0.29…2.41 %. With many repeats the two agree, and the bootstrap keeps its say when the
/// values are skewed.
pub fn mean_interval(samples: &[f64]) -> (f64, f64) {
    let (boot_low, boot_high) = bootstrap_mean_interval(samples, 0.90);
    let n = samples.len();
    if n < 2 {
        return (boot_low, boot_high);
    }
    let mean = samples.iter().sum::<f64>() / n as f64;
    let variance = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let half = student_t_95(n - 1) * (variance / n as f64).sqrt();
    (boot_low.min(mean - half), boot_high.max(mean + half))
}

/// The 0.95 quantile of Student's t distribution with `df` degrees of freedom (the half-width
/// factor of a two-sided 90 % interval): tabulated to 30, then `1.645 + 1.6 / df`, within
/// 0.002 of the exact value from 30 on.
fn student_t_95(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812, 1.796, 1.782, 1.771,
        1.761, 1.753, 1.746, 1.740, 1.734, 1.729, 1.725, 1.721, 1.717, 1.714, 1.711, 1.708, 1.706,
        1.703, 1.701, 1.699, 1.697,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TABLE[df - 1],
        _ => 1.645 + 1.6 / df as f64,
    }
}

/// The central `level` interval of the mean of `samples` by the percentile bootstrap: 4000
/// resamples of the repeats with replacement, from a fixed seed (the same samples give the
/// same interval). One sample gives a point.
pub fn bootstrap_mean_interval(samples: &[f64], level: f64) -> (f64, f64) {
    const RESAMPLES: usize = 4000;
    let n = samples.len();
    if n < 2 {
        let x = samples.first().copied().unwrap_or(f64::NAN);
        return (x, x);
    }
    let mut state = 0x5eed_u64;
    let mut next = || {
        // SplitMix64.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut means: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            (0..n)
                .map(|_| samples[(next() % n as u64) as usize])
                .sum::<f64>()
                / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let tail = (1.0 - level) / 2.0;
    let at = |q: f64| means[((q * (RESAMPLES - 1) as f64).round() as usize).min(RESAMPLES - 1)];
    (at(tail), at(1.0 - tail))
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
    fn the_bootstrap_interval_holds_the_mean_and_widens_with_the_spread() {
        let tight = Measurement::of("x", "%", vec![1.0, 1.1, 0.9, 1.0, 1.05]);
        assert!(
            tight.low <= 1.01 && tight.high >= 1.0 && tight.high < 1.1,
            "{tight:?}"
        );
        let noisy = Measurement::of("x", "%", vec![1.0, 3.0, -1.0, 2.0, 0.0]);
        let mean = 1.0;
        assert!(noisy.low < mean && noisy.high > mean);
        assert!(noisy.high - noisy.low > 5.0 * (tight.high - tight.low));
        // Within the samples' range, and a point for one sample.
        assert!(noisy.low >= -1.0 && noisy.high <= 3.0);
        assert_eq!(bootstrap_mean_interval(&[2.5], 0.9), (2.5, 2.5));
    }

    /// Three repeats: the bootstrap's interval lies inside Student's t, which decides; many
    /// repeats: the two nearly agree.
    #[test]
    fn a_few_repeats_get_students_t_interval() {
        let few = [1.98, 0.69, 0.52];
        let (boot_low, boot_high) = bootstrap_mean_interval(&few, 0.9);
        let (low, high) = mean_interval(&few);
        // mean 1.0633, s 0.7987, t₀.₉₅(2) = 2.920: ± 1.3465.
        assert!((low - (1.0633 - 1.3465)).abs() < 1e-3, "{low}");
        assert!((high - (1.0633 + 1.3465)).abs() < 1e-3, "{high}");
        assert!(low < boot_low && high > boot_high);
        assert!(
            boot_low > 0.5,
            "the bootstrap alone would call 0.5 % missed"
        );
        let many: Vec<f64> = (0..200).map(|i| f64::from(i % 7) * 0.1).collect();
        let (boot_low, boot_high) = bootstrap_mean_interval(&many, 0.9);
        let (low, high) = mean_interval(&many);
        assert!((high - low) < 1.2 * (boot_high - boot_low), "{low}…{high}");
        assert!((student_t_95(30) - 1.697).abs() < 1e-9);
        assert!((student_t_95(60) - 1.671).abs() < 0.002);
        assert!((student_t_95(120) - 1.658).abs() < 0.002);
    }

    #[test]
    fn peak_rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            let rss = peak_rss_mib().expect("VmHWM in /proc/self/status");
            assert!(rss > 1.0, "{rss}");
        }
    }
}
