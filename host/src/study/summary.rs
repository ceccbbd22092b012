//! One run's row of the study table, and its trajectories, computed from its `metrics.jsonl`
//! and `run.json`; and `vigil study report`'s two hypotheses over the rows.
//!
//! The loss curve is the epoch records' mean train cross-entropy (nats) against the epoch
//! number (1-based). A slope is the least-squares slope of ln(loss) on ln(epoch):
//! - `alpha_early`: over epochs 5–15 (those present);
//! - `alpha_full` and `r_squared`: from the burn-in epoch to the last;
//! - burn-in (`knee_epoch`, `burn_in_loss`): the first epoch whose loss is ≤ 1.0.

use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::Serialize;

use super::status::burn_in;
use crate::run_dir::{read_run_info, RunLayout};

/// The epochs of `alpha_early`.
pub const EARLY_EPOCHS: (u64, u64) = (5, 15);

/// A run's summary columns.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    pub alpha_early: Option<f64>,
    pub alpha_full: Option<f64>,
    pub r_squared: Option<f64>,
    pub knee_epoch: Option<i64>,
    pub burn_in_loss: Option<f64>,
    pub best_val_ce: Option<f64>,
    pub best_val_epoch: Option<i64>,
    pub best_val_step: Option<i64>,
    pub final_val_acc: Option<f64>,
    pub epochs_done: Option<i64>,
    pub global_step: Option<i64>,
    pub steps_per_second: Option<f64>,
}

/// One point of a trajectory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// `train`, `validation` or `curvature`.
    pub kind: &'static str,
    pub step: i64,
    /// Fractional epochs: steps / batches per epoch.
    pub epoch: f64,
    pub metric: String,
    pub value: f64,
}

/// Least squares of y on x: (slope, intercept, r²); `None` with fewer than two points or no
/// spread in x.
pub fn least_squares(points: &[(f64, f64)]) -> Option<(f64, f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let syy: f64 = points.iter().map(|p| (p.1 - mean_y).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let intercept = mean_y - slope * mean_x;
    let r_squared = if syy > 0.0 {
        sxy * sxy / (sxx * syy)
    } else {
        1.0
    };
    Some((slope, intercept, r_squared))
}

/// The slope fit of ln(loss) on ln(epoch) over `epochs` (finite, positive losses only).
fn power_law(epoch_losses: &[(u64, f64)], from: u64, to: u64) -> Option<(f64, f64, f64)> {
    let points: Vec<(f64, f64)> = epoch_losses
        .iter()
        .filter(|(epoch, loss)| (from..=to).contains(epoch) && loss.is_finite() && *loss > 0.0)
        .map(|&(epoch, loss)| ((epoch as f64).ln(), loss.ln()))
        .collect();
    least_squares(&points)
}

/// Read a run directory: its summary and trajectories. `batches_per_epoch` turns steps into
/// fractional epochs.
pub fn summarize_run(dir: &Path, batches_per_epoch: Option<f64>) -> (RunSummary, Vec<Point>) {
    let mut summary = RunSummary::default();
    let mut points = Vec::new();
    let mut epoch_losses: Vec<(u64, f64)> = Vec::new();
    let to_epoch = |step: i64| batches_per_epoch.map_or(f64::NAN, |b| step as f64 / b);
    // Train metrics since the last validation, averaged at each validation.
    let (mut loss_sum, mut acc_sum, mut count) = (0.0, 0.0, 0usize);
    if let Ok(file) = std::fs::File::open(RunLayout::new(dir).metrics()) {
        for line in BufReader::new(file).lines().map_while(Result::ok) {
            let Ok(record) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let step = record["global_step"].as_i64().unwrap_or(0);
            let epoch = record["epoch"].as_i64().unwrap_or(0);
            match record["kind"].as_str().unwrap_or("") {
                "train" => {
                    if let (Some(loss), Some(acc)) =
                        (record["train_loss"].as_f64(), record["train_acc"].as_f64())
                    {
                        loss_sum += loss;
                        acc_sum += acc;
                        count += 1;
                    }
                }
                "validation" => {
                    if count > 0 {
                        for (metric, value) in [
                            ("train_loss", loss_sum / count as f64),
                            ("train_acc", acc_sum / count as f64),
                        ] {
                            points.push(Point {
                                kind: "train",
                                step,
                                epoch: to_epoch(step),
                                metric: metric.into(),
                                value,
                            });
                        }
                        (loss_sum, acc_sum, count) = (0.0, 0.0, 0);
                    }
                    for metric in ["val_loss", "val_acc"] {
                        if let Some(value) = record[metric].as_f64() {
                            points.push(Point {
                                kind: "validation",
                                step,
                                epoch: to_epoch(step),
                                metric: metric.into(),
                                value,
                            });
                        }
                    }
                    if let Some(loss) = record["val_loss"].as_f64() {
                        if summary.best_val_ce.is_none_or(|best| loss < best) {
                            summary.best_val_ce = Some(loss);
                            summary.best_val_epoch = Some(epoch);
                            summary.best_val_step = Some(step);
                        }
                    }
                    if let Some(acc) = record["val_acc"].as_f64() {
                        summary.final_val_acc = Some(acc);
                    }
                }
                "epoch" => {
                    if let Some(loss) = record["train_loss"].as_f64() {
                        epoch_losses.push((epoch.max(0) as u64, loss));
                    }
                }
                "monitor" => {
                    for metric in ["curvature/lambda_max", "curvature/hutch_trace"] {
                        if let Some(value) = record[metric].as_f64() {
                            points.push(Point {
                                kind: "curvature",
                                step,
                                epoch: to_epoch(step),
                                metric: metric.trim_start_matches("curvature/").into(),
                                value,
                            });
                        }
                    }
                }
                _ => {}
            }
        }
    }
    summary.epochs_done = epoch_losses.last().map(|(epoch, _)| *epoch as i64);
    summary.alpha_early = power_law(&epoch_losses, EARLY_EPOCHS.0, EARLY_EPOCHS.1).map(|f| f.0);
    if let Some((knee, loss)) = burn_in(&epoch_losses) {
        summary.knee_epoch = Some(knee as i64);
        summary.burn_in_loss = Some(loss);
        if let Some((slope, _, r_squared)) = power_law(&epoch_losses, knee, u64::MAX) {
            summary.alpha_full = Some(slope);
            summary.r_squared = Some(r_squared);
        }
    }
    if let Some(run) = read_run_info(dir) {
        summary.global_step = Some(run.global_step as i64);
        summary.steps_per_second = run.attempts_steps_per_second();
    }
    (summary, points)
}

/// Pearson's correlation of paired values; `None` with fewer than three pairs or no spread.
pub fn pearson(pairs: &[(f64, f64)]) -> Option<f64> {
    if pairs.len() < 3 {
        return None;
    }
    least_squares(pairs).map(|(slope, _, r_squared)| r_squared.sqrt().copysign(slope))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_squares_recovers_a_line_and_its_fit() {
        let points: Vec<(f64, f64)> = (0..5).map(|i| (i as f64, 2.0 - 0.5 * i as f64)).collect();
        let (slope, intercept, r2) = least_squares(&points).unwrap();
        assert!((slope + 0.5).abs() < 1e-12 && (intercept - 2.0).abs() < 1e-12);
        assert!((r2 - 1.0).abs() < 1e-12);
        assert!(least_squares(&[(1.0, 1.0)]).is_none());
        assert!(least_squares(&[(1.0, 1.0), (1.0, 2.0)]).is_none());
        // Against a fit computed by hand: x = 0, 1, 2; y = 0, 2, 1 → slope 0.5, r² 0.25.
        let (slope, _, r2) = least_squares(&[(0.0, 0.0), (1.0, 2.0), (2.0, 1.0)]).unwrap();
        assert!((slope - 0.5).abs() < 1e-12 && (r2 - 0.25).abs() < 1e-12);
        assert!((pearson(&[(0.0, 0.0), (1.0, 2.0), (2.0, 1.0)]).unwrap() - 0.5).abs() < 1e-12);
        assert!((pearson(&[(0.0, 3.0), (1.0, 2.0), (2.0, 1.0)]).unwrap() + 1.0).abs() < 1e-12);
    }

    #[test]
    fn a_power_law_curve_gives_its_exponent() {
        let dir = tempfile::tempdir().unwrap();
        let mut lines = String::new();
        for epoch in 1..=30u32 {
            let loss = 3.0 * f64::from(epoch).powf(-0.7);
            lines.push_str(&format!(
                "{{\"kind\":\"epoch\",\"epoch\":{epoch},\"global_step\":{},\"train_loss\":{loss}}}\n",
                epoch * 10
            ));
        }
        std::fs::write(dir.path().join(crate::run_dir::METRICS_FILE), lines).unwrap();
        let (summary, _) = summarize_run(dir.path(), Some(10.0));
        assert!((summary.alpha_early.unwrap() + 0.7).abs() < 1e-12);
        assert!((summary.alpha_full.unwrap() + 0.7).abs() < 1e-12);
        assert!((summary.r_squared.unwrap() - 1.0).abs() < 1e-12);
        // 3·e^(−0.7 ln e) ≤ 1 first at e = 3^(1/0.7) ≈ 4.8: epoch 5.
        assert_eq!(summary.knee_epoch, Some(5));
        assert_eq!(summary.epochs_done, Some(30));
    }
}

/// H1 and H2 of the study plan over the runs' rows.
#[derive(Debug, Clone, Serialize)]
pub struct Hypotheses {
    /// Runs with a power-law fit after burn-in.
    pub fitted: usize,
    /// Of those, runs whose fit has r² ≥ 0.98.
    pub power_law: usize,
    /// H1: more than 90 % of the fitted runs are power laws.
    pub h1: Option<bool>,
    /// Runs with both `alpha_early` and `best_val_ce`.
    pub paired: usize,
    /// Pearson's correlation of `alpha_early` with `best_val_ce`.
    pub correlation: Option<f64>,
    /// H2: that correlation is at least 0.7.
    pub h2: Option<bool>,
}

/// The r² a power law needs (H1).
pub const H1_R_SQUARED: f64 = 0.98;
/// The share of runs H1 needs.
pub const H1_SHARE: f64 = 0.90;
/// The correlation H2 needs.
pub const H2_CORRELATION: f64 = 0.7;

/// Test H1 and H2 on summaries (of completed runs, as the caller chooses).
pub fn hypotheses(summaries: &[RunSummary]) -> Hypotheses {
    let fits: Vec<f64> = summaries.iter().filter_map(|s| s.r_squared).collect();
    let power_law = fits.iter().filter(|&&r2| r2 >= H1_R_SQUARED).count();
    let pairs: Vec<(f64, f64)> = summaries
        .iter()
        .filter_map(|s| Some((s.alpha_early?, s.best_val_ce?)))
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .collect();
    let correlation = pearson(&pairs);
    Hypotheses {
        fitted: fits.len(),
        power_law,
        h1: (!fits.is_empty()).then_some(power_law as f64 > H1_SHARE * fits.len() as f64),
        paired: pairs.len(),
        correlation,
        h2: correlation.map(|r| r >= H2_CORRELATION),
    }
}
