//! The `noise` monitor: how noisy the loss curve is around its power-law trend, and how
//! variable the gradient is.
//!
//! ```toml
//! [[monitors]]
//! name = "noise"
//! [monitors.settings]
//! buffer_size = 512           # recent (step, loss) pairs kept, for the residual spectrum
//! history_bins_per_decade = 64  # the whole run's losses, binned in log(step)
//! compute_every_epochs = 2
//! min_points = 64             # fewer bins or buffered losses: log nothing, say why once
//! psd_tail_bins = 16          # noise/psd_tail: mean of the last bins of the spectrum
//! resid_band = [8, 32]        # noise/resid_power: sum of these bins (inclusive)
//! grad_ema_beta = 0.99        # EMA of the gradient and of its mean square
//! log_every_n_steps = 50      # noise/grad_var
//! ```
//!
//! Two windows. The power law is fitted to the **whole run**: every loss goes into a bounded,
//! log-spaced history ([`LogHistory`]: bins `history_bins_per_decade` to a decade of
//! `step + 1`, each holding its losses' mean log step and mean log loss), and every
//! `compute_every_epochs` epochs `loss ≈ c · (step + 1)^slope` is fitted by least squares to the
//! bins, each bin one point, so that every stretch of log-time counts the same
//! (`noise/power_law_slope`, `noise/power_law_r2`). The **recent window**, the last
//! `buffer_size` losses, gives the residuals of log loss around that fit and their power
//! spectrum (|FFT|² / n, one-sided, mean removed): `noise/psd_tail`, `noise/resid_power`. Every step it folds the gradient into exponential moving averages of the
//! gradient (per coordinate) and of its mean square; every `log_every_n_steps` steps
//! `noise/grad_var` is the mean over coordinates of the gradient's variance from them. The host
//! keeps these averages on the training device (`vigil.gradient_ema.update`), so the gradient
//! never leaves it; on a host without that capability the monitor averages the flattened
//! gradient itself.

use std::collections::VecDeque;

use rustfft::num_complex::Complex;
use rustfft::FftPlanner;
use serde::Deserialize;
use vigil_monitor_math::{fit_line, fit_power_law, without_subnormals, LineFit};
use vigil_plugin_api::{
    export_monitor, parse_settings, Context, Error, EventKind, EventSet, Monitor, MonitorInfo,
    SavedState, StateReader, StateWriter, Subscriptions,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    buffer_size: usize,
    history_bins_per_decade: u32,
    compute_every_epochs: u32,
    min_points: usize,
    psd_tail_bins: usize,
    resid_band: [usize; 2],
    grad_ema_beta: f64,
    log_every_n_steps: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            buffer_size: 512,
            history_bins_per_decade: 64,
            compute_every_epochs: 2,
            min_points: 64,
            psd_tail_bins: 16,
            resid_band: [8, 32],
            grad_ema_beta: 0.99,
            log_every_n_steps: 50,
        }
    }
}

/// One-sided power spectrum of `signal` after removing its mean: `|X_k|² / n` for
/// k = 0 … n/2.
pub fn power_spectrum(signal: &[f64]) -> Vec<f64> {
    let n = signal.len();
    if n == 0 {
        return Vec::new();
    }
    let mean = signal.iter().sum::<f64>() / n as f64;
    let mut buffer: Vec<Complex<f64>> = signal
        .iter()
        .map(|&x| Complex::new(x - mean, 0.0))
        .collect();
    FftPlanner::new().plan_fft_forward(n).process(&mut buffer);
    buffer[..=n / 2]
        .iter()
        .map(|c| c.norm_sqr() / n as f64)
        .collect()
}

/// The whole run's losses in a bounded, log-spaced history: bin `k` holds the steps with
/// `⌊log10(step + 1) · per_decade⌋ = k`, as their count and the sums of `ln(step + 1)` and
/// `ln loss`. A run of 10^d steps needs at most `d · per_decade + 1` bins.
#[derive(Debug, Clone, PartialEq)]
pub struct LogHistory {
    per_decade: u32,
    /// (bin, count, Σ ln(step + 1), Σ ln loss), in bin order.
    bins: Vec<(u32, u64, f64, f64)>,
}

impl LogHistory {
    pub fn new(per_decade: u32) -> Self {
        LogHistory {
            per_decade,
            bins: Vec::new(),
        }
    }

    /// Add one loss; non-positive and non-finite losses are left out.
    pub fn add(&mut self, step: f64, loss: f64) {
        if !(loss > 0.0 && loss.is_finite() && step >= 0.0) {
            return;
        }
        let ln_x = (step + 1.0).ln();
        let bin = (ln_x / std::f64::consts::LN_10 * f64::from(self.per_decade)).floor() as u32;
        match self.bins.binary_search_by_key(&bin, |entry| entry.0) {
            Ok(at) => {
                let entry = &mut self.bins[at];
                entry.1 += 1;
                entry.2 += ln_x;
                entry.3 += loss.ln();
            }
            Err(at) => self.bins.insert(at, (bin, 1, ln_x, loss.ln())),
        }
    }

    pub fn len(&self) -> usize {
        self.bins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bins.is_empty()
    }

    /// Each bin as one point: (mean ln(step + 1), mean ln loss).
    pub fn points(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.bins
            .iter()
            .map(|&(_, count, ln_x, ln_y)| (ln_x / count as f64, ln_y / count as f64))
    }

    /// The power law `loss ≈ c · (step + 1)^slope` fitted to the bins.
    pub fn fit(&self) -> Option<LineFit> {
        fit_line(self.points())
    }

    fn write(&self, writer: &mut StateWriter) {
        let counts: Vec<u64> = self
            .bins
            .iter()
            .flat_map(|&(bin, count, _, _)| [u64::from(bin), count])
            .collect();
        let sums: Vec<f64> = self
            .bins
            .iter()
            .flat_map(|&(_, _, ln_x, ln_y)| [ln_x, ln_y])
            .collect();
        writer
            .u64(u64::from(self.per_decade))
            .u64s(&counts)
            .f64s(&sums);
    }

    fn read(reader: &mut StateReader<'_>) -> Result<Self, Error> {
        let per_decade = u32::try_from(reader.u64()?)
            .map_err(|_| Error::Monitor("saved history: bins per decade out of range".into()))?;
        let counts = reader.u64s()?;
        let sums = reader.f64s()?;
        if counts.len() != sums.len() || counts.len() % 2 != 0 {
            return Err(Error::Monitor("saved history: mismatched lengths".into()));
        }
        let bins = counts
            .chunks_exact(2)
            .zip(sums.chunks_exact(2))
            .map(|(c, s)| {
                u32::try_from(c[0])
                    .map(|bin| (bin, c[1], s[0], s[1]))
                    .map_err(|_| Error::Monitor("saved history: bin out of range".into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LogHistory { per_decade, bins })
    }
}

/// What the loss-curve analysis found.
#[derive(Debug, Clone, PartialEq)]
pub struct CurveNoise {
    pub fit: LineFit,
    pub psd_tail: f64,
    pub resid_power: f64,
}

/// Fit the power law to `(step, loss)` pairs and measure the residuals' spectrum.
pub fn analyse(points: &[(f64, f64)], tail_bins: usize, band: [usize; 2]) -> Option<CurveNoise> {
    let fit = fit_power_law(
        points
            .iter()
            .filter(|&&(step, loss)| step + 1.0 > 0.0 && loss > 0.0 && loss.is_finite())
            .map(|&(step, loss)| (step + 1.0, loss)),
    )?;
    analyse_around(fit, points, tail_bins, band)
}

/// The residuals of `points` (the recent window) around `fit` (the whole run's power law) and
/// their spectrum.
pub fn analyse_around(
    fit: LineFit,
    points: &[(f64, f64)],
    tail_bins: usize,
    band: [usize; 2],
) -> Option<CurveNoise> {
    let usable: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|&(step, loss)| step + 1.0 > 0.0 && loss > 0.0 && loss.is_finite())
        .map(|(step, loss)| (step + 1.0, loss))
        .collect();
    if usable.is_empty() {
        return None;
    }
    let residuals: Vec<f64> = usable
        .iter()
        .map(|&(x, y)| y.ln() - fit.predict(x.ln()))
        .collect();
    let spectrum = power_spectrum(&residuals);
    let tail = &spectrum[spectrum.len().saturating_sub(tail_bins.max(1))..];
    let psd_tail = tail.iter().sum::<f64>() / tail.len().max(1) as f64;
    let last = spectrum.len().saturating_sub(1);
    let (low, high) = (band[0].min(last), band[1].min(last));
    let resid_power = spectrum[low..=high.max(low)].iter().sum();
    Some(CurveNoise {
        fit,
        psd_tail,
        resid_power,
    })
}

/// The mean over coordinates of the gradient's variance, `mean_i E[g_i²] − mean_i E[g_i]²`,
/// from `updates` steps of exponential moving averages with decay `beta`: `mean_square` of
/// `mean_i g_i²` and `squared_mean` = `mean_i m_i²` for `m` the average of `g` (neither
/// bias-corrected). For independent gradients of variance σ² the average's own spread makes
/// `E[s − m²] = σ²·2β/(1 + β)`; the estimate divides that out. `None` before two updates.
pub fn ema_variance(updates: u64, beta: f64, mean_square: f64, squared_mean: f64) -> Option<f64> {
    if updates < 2 {
        return None;
    }
    let correction = 1.0 - beta.powi(updates.min(i32::MAX as u64) as i32);
    let spread = 2.0 * beta / (1.0 + beta);
    Some((mean_square / correction - squared_mean / (correction * correction)).max(0.0) / spread)
}

/// The same averages, kept by the monitor itself from the flattened gradient: for a host
/// without `vigil.gradient_ema.update`, which keeps them on the training device (there one
/// fused, parallel pass; here one single-threaded pass that must first have the gradient on
/// the CPU).
///
/// Every step streams the gradient and the `f32` average through memory once; that is the
/// whole cost (W1: 421,642 coordinates, about 0.3 ms). Keeping a variance per coordinate
/// would stream a third array for a number nobody reads.
#[derive(Debug, Clone, Default)]
pub struct GradientMoments {
    mean: Vec<f32>,
    /// EMA of `mean_i g_i²`.
    mean_square: f64,
    updates: u64,
}

impl GradientMoments {
    pub fn update(&mut self, gradient: &[f32], beta: f64) {
        if self.mean.len() != gradient.len() {
            self.mean = vec![0.0; gradient.len()];
            self.mean_square = 0.0;
            self.updates = 0;
        }
        let (keep, take) = (beta as f32, (1.0 - beta) as f32);
        // Idle units' gradients square to subnormals, which cost x86 CPUs twenty times more
        // than normal numbers: this loop took 3.7 ms instead of 0.18 ms on W1's gradient.
        let square_sum = without_subnormals(|| {
            let mut total = 0.0f64;
            // Blocks small enough to stay in the L1 cache between the two loops, each of
            // which the compiler vectorises (eight independent partial sums).
            for (means, gradient) in self.mean.chunks_mut(4096).zip(gradient.chunks(4096)) {
                for (m, &g) in means.iter_mut().zip(gradient) {
                    *m = keep * *m + take * g;
                }
                let mut lanes = [0.0f32; 8];
                let mut rows = gradient.chunks_exact(8);
                for row in &mut rows {
                    for (lane, &g) in lanes.iter_mut().zip(row) {
                        *lane += g * g;
                    }
                }
                let tail: f32 = rows.remainder().iter().map(|g| g * g).sum();
                total += lanes.iter().map(|&l| f64::from(l)).sum::<f64>() + f64::from(tail);
            }
            total
        });
        let mean_square = square_sum / gradient.len().max(1) as f64;
        self.mean_square = beta * self.mean_square + (1.0 - beta) * mean_square;
        self.updates += 1;
    }

    /// Mean over coordinates of the gradient's variance (see [`ema_variance`]).
    pub fn variance(&self, beta: f64) -> Option<f64> {
        if self.mean.is_empty() {
            return None;
        }
        let squared_mean =
            self.mean.iter().map(|&m| f64::from(m).powi(2)).sum::<f64>() / self.mean.len() as f64;
        ema_variance(self.updates, beta, self.mean_square, squared_mean)
    }
}

/// Where the gradient averages are kept.
#[derive(Debug)]
enum Averages {
    /// Not yet asked: the first step finds out whether the host keeps them.
    Undecided,
    /// On the host, on the training device.
    Host,
    /// Here, from the flattened gradient.
    Monitor(GradientMoments),
}

pub struct NoiseMonitor {
    settings: Settings,
    /// The recent window, for the residual spectrum.
    losses: VecDeque<(f64, f64)>,
    /// The whole run, for the power-law fit.
    history: LogHistory,
    averages: Averages,
    said_why: bool,
}

impl NoiseMonitor {
    /// The saved form of where the averages are kept: 0 undecided, 1 the host (which saves
    /// its own averages in the checkpoint), 2 here.
    fn write_averages(&self, writer: &mut StateWriter) {
        match &self.averages {
            Averages::Undecided => {
                writer.u64(0);
            }
            Averages::Host => {
                writer.u64(1);
            }
            Averages::Monitor(moments) => {
                writer
                    .u64(2)
                    .f32s(&moments.mean)
                    .f64(moments.mean_square)
                    .u64(moments.updates);
            }
        }
    }

    fn read_averages(reader: &mut StateReader<'_>) -> Result<Averages, Error> {
        Ok(match reader.u64()? {
            0 => Averages::Undecided,
            1 => Averages::Host,
            2 => Averages::Monitor(GradientMoments {
                mean: reader.f32s()?,
                mean_square: reader.f64()?,
                updates: reader.u64()?,
            }),
            other => {
                return Err(Error::Monitor(format!(
                    "unknown saved averages kind {other}"
                )))
            }
        })
    }
}

#[vigil_plugin_api::monitor]
impl Monitor for NoiseMonitor {
    const INFO: MonitorInfo = MonitorInfo {
        name: "noise",
        version: env!("CARGO_PKG_VERSION"),
        description: "loss-curve power-law fit, residual power spectrum, EMA gradient variance",
        events: EventSet::of(&[EventKind::TRAIN_BATCH_END, EventKind::TRAIN_EPOCH_END]),
        subscriptions: Subscriptions::GRADIENT,
    };

    fn new(settings: &str, _ctx: &mut Context<'_>) -> Result<Self, Error> {
        let settings: Settings = parse_settings(settings)?;
        if settings.buffer_size < 4 || settings.min_points < 4 {
            return Err(Error::Settings(
                "buffer_size and min_points must be at least 4".into(),
            ));
        }
        if !(1..=10_000).contains(&settings.history_bins_per_decade) {
            return Err(Error::Settings(format!(
                "history_bins_per_decade must be between 1 and 10000, got {}",
                settings.history_bins_per_decade
            )));
        }
        if settings.compute_every_epochs == 0 || settings.log_every_n_steps == 0 {
            return Err(Error::Settings(
                "compute_every_epochs and log_every_n_steps must be at least 1".into(),
            ));
        }
        if !(0.0..1.0).contains(&settings.grad_ema_beta) {
            return Err(Error::Settings(format!(
                "grad_ema_beta must be in [0, 1), got {}",
                settings.grad_ema_beta
            )));
        }
        if settings.resid_band[0] > settings.resid_band[1] {
            return Err(Error::Settings(
                "resid_band must be [low, high] with low ≤ high".into(),
            ));
        }
        Ok(NoiseMonitor {
            losses: VecDeque::with_capacity(settings.buffer_size),
            history: LogHistory::new(settings.history_bins_per_decade),
            settings,
            averages: Averages::Undecided,
            said_why: false,
        })
    }

    fn on_train_batch_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        let step = ctx.counters().global_step;
        if let Some(loss) = ctx.metric("train_loss") {
            if self.losses.len() == self.settings.buffer_size {
                self.losses.pop_front();
            }
            self.losses.push_back((step as f64, loss));
            self.history.add(step as f64, loss);
        }
        let beta = self.settings.grad_ema_beta;
        let log = step % self.settings.log_every_n_steps == 0;
        if matches!(self.averages, Averages::Undecided | Averages::Host) {
            match ctx.update_gradient_ema(beta) {
                Ok(_) => self.averages = Averages::Host,
                Err(err) if matches!(self.averages, Averages::Undecided) => {
                    ctx.info(&format!(
                        "the host keeps no gradient averages ({err}); averaging the flattened gradient here"
                    ));
                    self.averages = Averages::Monitor(GradientMoments::default());
                }
                Err(err) => return Err(err),
            }
        }
        let variance = match &mut self.averages {
            Averages::Host if log => {
                let averages = ctx.gradient_ema()?;
                ema_variance(
                    averages.updates,
                    averages.beta,
                    averages.mean_square,
                    averages.squared_mean,
                )
            }
            Averages::Monitor(moments) => {
                moments.update(ctx.gradient()?, beta);
                if log {
                    moments.variance(beta)
                } else {
                    None
                }
            }
            _ => None,
        };
        if let Some(variance) = variance {
            ctx.log("noise/grad_var", variance);
        }
        Ok(())
    }

    fn on_train_epoch_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        if ctx.counters().epoch % self.settings.compute_every_epochs != 0 {
            return Ok(());
        }
        let points: Vec<(f64, f64)> = self.losses.iter().copied().collect();
        // A line through fewer than four bins says nothing.
        let enough = points.len() >= self.settings.min_points && self.history.len() >= 4;
        let analysis = enough
            .then(|| self.history.fit())
            .flatten()
            .and_then(|fit| {
                analyse_around(
                    fit,
                    &points,
                    self.settings.psd_tail_bins,
                    self.settings.resid_band,
                )
            });
        let Some(noise) = analysis else {
            if !self.said_why {
                self.said_why = true;
                ctx.info(&format!(
                    "not enough data yet: {} usable losses buffered ({} needed), {} history bins",
                    points.len(),
                    self.settings.min_points,
                    self.history.len()
                ));
            }
            return Ok(());
        };
        ctx.log("noise/power_law_slope", noise.fit.slope);
        ctx.log("noise/power_law_r2", noise.fit.r2);
        ctx.log("noise/psd_tail", noise.psd_tail);
        ctx.log("noise/resid_power", noise.resid_power);
        Ok(())
    }

    /// The recent losses, the whole run's history (since 1.1.0), the gradient averages when
    /// kept here (the host keeps and saves its own), and what was already said.
    fn save_state(&mut self, _ctx: &mut Context<'_>) -> Result<Option<Vec<u8>>, Error> {
        let mut writer = StateWriter::new();
        let flat: Vec<f64> = self.losses.iter().flat_map(|&(s, l)| [s, l]).collect();
        writer.f64s(&flat);
        self.write_averages(&mut writer);
        writer.bool(self.said_why);
        self.history.write(&mut writer);
        Ok(Some(writer.finish()))
    }

    fn restore_state(&mut self, saved: SavedState<'_>, ctx: &mut Context<'_>) -> Result<(), Error> {
        let mut reader = StateReader::new(saved.bytes);
        let flat = reader.f64s()?;
        let averages = Self::read_averages(&mut reader)?;
        let said_why = reader.bool()?;
        self.losses = flat.chunks_exact(2).map(|p| (p[0], p[1])).collect();
        self.history = if saved.plugin_version.starts_with("1.0.") {
            // Saved before the whole-run history existed: start it from the recent losses.
            let mut history = LogHistory::new(self.settings.history_bins_per_decade);
            for &(step, loss) in &self.losses {
                history.add(step, loss);
            }
            ctx.info(&format!(
                "state saved by noise {}: the power-law history starts from its last {} losses",
                saved.plugin_version,
                self.losses.len()
            ));
            history
        } else {
            LogHistory::read(&mut reader)?
        };
        reader.finish()?;
        self.averages = averages;
        self.said_why = said_why;
        Ok(())
    }
}

export_monitor!(NoiseMonitor);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spectrum_of_a_sinusoid_peaks_at_its_bin() {
        let n = 256;
        let bin = 19;
        let signal: Vec<f64> = (0..n)
            .map(|t| 0.3 + (std::f64::consts::TAU * bin as f64 * t as f64 / n as f64).sin())
            .collect();
        let spectrum = power_spectrum(&signal);
        assert_eq!(spectrum.len(), n / 2 + 1);
        let peak = (0..spectrum.len())
            .max_by(|&a, &b| spectrum[a].total_cmp(&spectrum[b]))
            .unwrap();
        assert_eq!(peak, bin);
        // A unit sine of n samples has |X_k|² = (n/2)², so |X_k|²/n = n/4 at its bin.
        assert!((spectrum[bin] - n as f64 / 4.0).abs() < 1e-9);
        assert!(spectrum[0].abs() < 1e-20, "the mean is removed");
    }

    #[test]
    fn an_exact_power_law_is_recovered_with_silent_residuals() {
        let points: Vec<(f64, f64)> = (0..500)
            .map(|s| (s as f64, 2.3 * (s as f64 + 1.0).powf(-0.42)))
            .collect();
        let noise = analyse(&points, 16, [8, 32]).unwrap();
        assert!((noise.fit.slope + 0.42).abs() < 1e-6);
        assert!((noise.fit.r2 - 1.0).abs() < 1e-9);
        assert!(noise.psd_tail < 1e-20 && noise.resid_power < 1e-20);
    }

    #[test]
    fn noise_on_the_curve_shows_in_the_band() {
        // A power law times a ripple of period 512/16 steps: its bin (16) is inside [8, 32].
        let points: Vec<(f64, f64)> = (0..512)
            .map(|s| {
                let ripple = (0.05 * (std::f64::consts::TAU * 16.0 * s as f64 / 512.0).sin()).exp();
                (s as f64, (s as f64 + 1.0).powf(-0.5) * ripple)
            })
            .collect();
        let noise = analyse(&points, 16, [8, 32]).unwrap();
        assert!(noise.resid_power > 100.0 * noise.psd_tail, "{noise:?}");
    }

    /// 30 epochs of 938 steps (the `base` study's length) of `2.3 · (step + 1)^-0.3` with
    /// multiplicative noise of 10 %.
    fn noisy_power_law(seed: u64) -> Vec<(f64, f64)> {
        let mut rng = vigil_monitor_math::Rng::new(seed);
        (0..30 * 938)
            .map(|s| {
                let step = s as f64;
                (
                    step,
                    2.3 * (step + 1.0).powf(-0.3) * (0.1 * rng.normal()).exp(),
                )
            })
            .collect()
    }

    #[test]
    fn the_whole_run_history_recovers_the_exponent_within_one_percent() {
        for seed in 0..5 {
            let curve = noisy_power_law(seed);
            let mut history = LogHistory::new(64);
            for &(step, loss) in &curve {
                history.add(step, loss);
            }
            // log10(28,140) ≈ 4.45 decades: at most 4.45 · 64 + 1 bins, however long the run.
            assert!(history.len() <= 286, "{}", history.len());
            let fit = history.fit().unwrap();
            assert!(
                (fit.slope / -0.3 - 1.0).abs() < 0.01,
                "seed {seed}: slope {}",
                fit.slope
            );
            // The last 512 steps alone span ln(28140/27628) ≈ 0.018 in log-step: their slope
            // is mostly noise (this was the monitor's fit before 1.1).
            let recent = analyse(&curve[curve.len() - 512..], 16, [8, 32]).unwrap();
            assert!(
                (recent.fit.slope / -0.3 - 1.0).abs() > 0.2,
                "seed {seed}: the window's slope {} looks precise, the test proves nothing",
                recent.fit.slope
            );
        }
    }

    #[test]
    fn the_history_bins_by_decade_and_survives_a_save() {
        let mut history = LogHistory::new(2);
        // Bins of half a decade of step + 1: [1, 3.16) → 0, [3.16, 10) → 1, [10, 31.6) → 2.
        for (step, loss) in [
            (0.0, 1.0),
            (1.0, 1.0),
            (2.0, 1.0),
            (3.0, 2.0),
            (8.0, 4.0),
            (12.0, 4.0),
            (20.0, -1.0),
        ] {
            history.add(step, loss);
        }
        let counts: Vec<(u32, u64)> = history.bins.iter().map(|b| (b.0, b.1)).collect();
        assert_eq!(counts, vec![(0, 3), (1, 2), (2, 1)]);
        let mut writer = StateWriter::new();
        history.write(&mut writer);
        let bytes = writer.finish();
        let mut reader = StateReader::new(&bytes);
        assert_eq!(LogHistory::read(&mut reader).unwrap(), history);
        reader.finish().unwrap();
    }

    #[test]
    fn gradient_variance_of_a_constant_gradient_is_zero_and_of_alternating_signs_is_one() {
        let mut constant = GradientMoments::default();
        for _ in 0..50 {
            constant.update(&[2.0, -1.0], 0.9);
        }
        // Zero up to the f32 rounding of the averages.
        assert!(constant.variance(0.9).unwrap() < 1e-6);
        let mut flipping = GradientMoments::default();
        for step in 0..2000 {
            let g = if step % 2 == 0 { 1.0 } else { -1.0 };
            flipping.update(&[g], 0.99);
        }
        assert!((flipping.variance(0.99).unwrap() - 1.0).abs() < 0.01);
    }

    #[test]
    fn gradient_variance_of_independent_noise_is_unbiased() {
        // Uniform on [-1, 1): variance 1/3, over 2000 coordinates and 3000 steps.
        let mut state = 12345u64;
        let mut uniform = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32
        };
        let mut moments = GradientMoments::default();
        let mut gradient = vec![0.0f32; 2000];
        for _ in 0..3000 {
            gradient.iter_mut().for_each(|g| *g = 0.5 + uniform());
            moments.update(&gradient, 0.99);
        }
        let variance = moments.variance(0.99).unwrap();
        assert!((variance - 1.0 / 3.0).abs() < 0.01, "{variance}");
    }

    /// Steps 0..100 with a pure power-law loss and a gradient whose sign flips every step,
    /// through the fake host; `host_averages` false makes the host refuse
    /// `vigil.gradient_ema.update`, so that the monitor averages the gradient itself.
    fn run_through_fake_host(host_averages: bool) -> vigil_plugin_api::testing::FakeHost {
        use vigil_plugin_api::testing::{FakeHost, Harness};
        let mut host = FakeHost::new();
        host.parameters(&[("w", &[3])]);
        host.counters_mut().batches_per_epoch = 100;
        if !host_averages {
            host.answer(
                vigil_plugin_api::query::GRADIENT_EMA_UPDATE,
                Err("unknown capability".into()),
            );
        }
        let settings = "min_points = 8\nbuffer_size = 64\nhistory_bins_per_decade = 8\n\
                        compute_every_epochs = 1\ngrad_ema_beta = 0.5\nlog_every_n_steps = 10";
        let mut harness = Harness::<NoiseMonitor>::new(settings, host).unwrap();
        for step in 0..100u64 {
            let sign = if step % 2 == 0 { 1.0 } else { -1.0 };
            let host = harness.host_mut();
            host.at_step(step)
                .metric("train_loss", 2.0 / ((step + 1) as f64).sqrt())
                .gradient(&[sign, 2.0 * sign, 0.5]);
            harness.fire(EventKind::TRAIN_BATCH_END).unwrap();
        }
        harness.host_mut().at_step(99).clear_metrics();
        harness.fire(EventKind::TRAIN_EPOCH_END).unwrap();
        harness.into_host()
    }

    #[test]
    fn through_the_fake_host_the_power_law_is_exact_and_both_gradient_averages_agree() {
        let on_host = run_through_fake_host(true);
        let here = run_through_fake_host(false);
        let slope = on_host.logged("noise/power_law_slope");
        assert_eq!(slope.len(), 1);
        assert!((slope[0].1 + 0.5).abs() < 1e-9, "{slope:?}");
        assert!((on_host.logged("noise/power_law_r2")[0].1 - 1.0).abs() < 1e-9);

        let (host_var, own_var) = (
            on_host.logged("noise/grad_var"),
            here.logged("noise/grad_var"),
        );
        assert_eq!(host_var.len(), 9, "steps 10, 20, …, 90: {host_var:?}");
        assert_eq!(
            host_var.iter().map(|v| v.0).collect::<Vec<_>>(),
            own_var.iter().map(|v| v.0).collect::<Vec<_>>()
        );
        for ((_, a), (_, b)) in host_var.iter().zip(&own_var) {
            assert!((a - b).abs() <= 1e-6 * a.abs(), "{a} vs {b}");
        }
        // Late in the run: E[g²] averages (1 + 4 + ¼)/3; the averages of the flipping
        // coordinates settle at ±(1 − β)/(1 + β) = ±⅓ of their size, so mean m² is
        // (1/9 + 4/9 + ¼)/3; the estimate divides by the spread 2β/(1 + β) = ⅔.
        let expected = (1.75 - (5.0 / 9.0 + 0.25) / 3.0) * 1.5;
        let last = host_var.last().unwrap().1;
        assert!((last - expected).abs() < 1e-9, "{last} vs {expected}");
        assert!(on_host.queries().iter().any(|q| q == "vigil.gradient_ema"));
        assert!(here.messages_at(vigil_plugin_api::LogLevel::INFO)[0]
            .contains("averaging the flattened gradient here"));
    }
}
