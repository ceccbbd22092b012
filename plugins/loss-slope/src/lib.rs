//! The `loss-slope` monitor: the slope of the training loss curve in log-log space, the
//! quantity the CIFAR ResNet study relates to the final validation loss.
//!
//! ```toml
//! [[monitors]]
//! name = "loss-slope"
//! [monitors.settings]
//! window = [5, 15]      # epochs (inclusive) of loss_slope_5_15
//! burn_in_loss = 1.0    # loss_slope_full starts at the first epoch with loss ≤ this
//! ```
//!
//! At the end of every epoch it records the epoch's mean training loss (nats) and logs:
//! `loss_slope_<a>_<b>`, the least-squares slope of ln(loss) against ln(epoch) over the
//! window's epochs seen so far (`loss_slope_5_15` with the default window), and
//! `loss_slope_full`, the same slope from burn-in to now. A slope needs two finite, positive
//! losses; before that the metric is not logged. Non-finite losses are left out.

use serde::Deserialize;
use vigil_monitor_math::fit_power_law;
use vigil_plugin_api::{
    export_monitor, parse_settings, Context, Error, EventKind, EventSet, Monitor, MonitorInfo,
    SavedState, StateReader, StateWriter, Subscriptions,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    window: [u32; 2],
    burn_in_loss: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            window: [5, 15],
            burn_in_loss: 1.0,
        }
    }
}

/// The per-epoch losses and the slopes derived from them.
#[derive(Debug, Clone, Default)]
pub struct LossCurve {
    /// (epoch, loss), in epoch order.
    points: Vec<(u32, f64)>,
}

impl LossCurve {
    pub fn push(&mut self, epoch: u32, loss: f64) {
        self.points.retain(|&(e, _)| e != epoch);
        self.points.push((epoch, loss));
    }

    /// Slope of ln(loss) on ln(epoch) over epochs `first..=last`.
    pub fn slope_between(&self, first: u32, last: u32) -> Option<f64> {
        fit_power_law(
            self.points
                .iter()
                .filter(|&&(e, _)| (first..=last).contains(&e))
                .map(|&(e, loss)| (f64::from(e), loss)),
        )
        .map(|fit| fit.slope)
    }

    /// The first epoch whose loss is at most `threshold`.
    pub fn burn_in(&self, threshold: f64) -> Option<u32> {
        self.points
            .iter()
            .find(|&&(_, loss)| loss.is_finite() && loss <= threshold)
            .map(|&(e, _)| e)
    }
}

pub struct LossSlopeMonitor {
    settings: Settings,
    curve: LossCurve,
    window_metric: String,
}

#[vigil_plugin_api::monitor]
impl Monitor for LossSlopeMonitor {
    const INFO: MonitorInfo = MonitorInfo {
        name: "loss-slope",
        version: env!("CARGO_PKG_VERSION"),
        description: "log-log slope of the training loss per epoch (window and since burn-in)",
        events: EventSet::of(&[EventKind::TRAIN_EPOCH_END]),
        subscriptions: Subscriptions::NONE,
    };

    fn new(settings: &str, _ctx: &mut Context<'_>) -> Result<Self, Error> {
        let settings: Settings = parse_settings(settings)?;
        let [first, last] = settings.window;
        if first == 0 || first >= last {
            return Err(Error::Settings(format!(
                "window must be [first, last] epochs with 1 ≤ first < last, got [{first}, {last}]"
            )));
        }
        Ok(LossSlopeMonitor {
            window_metric: format!("loss_slope_{first}_{last}"),
            settings,
            curve: LossCurve::default(),
        })
    }

    fn on_train_epoch_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        let epoch = ctx.counters().epoch;
        let Some(loss) = ctx.metric("train_loss") else {
            return Ok(());
        };
        self.curve.push(epoch, loss);
        let [first, last] = self.settings.window;
        if let Some(slope) = self.curve.slope_between(first, last) {
            ctx.log(&self.window_metric, slope);
        }
        if let Some(start) = self.curve.burn_in(self.settings.burn_in_loss) {
            if let Some(slope) = self.curve.slope_between(start, epoch) {
                ctx.log("loss_slope_full", slope);
            }
        }
        Ok(())
    }

    /// The per-epoch losses: every slope after a resume is over the whole curve.
    fn save_state(&mut self, _ctx: &mut Context<'_>) -> Result<Option<Vec<u8>>, Error> {
        let mut writer = StateWriter::new();
        writer.u64(self.curve.points.len() as u64);
        for &(epoch, loss) in &self.curve.points {
            writer.u64(u64::from(epoch)).f64(loss);
        }
        Ok(Some(writer.finish()))
    }

    fn restore_state(
        &mut self,
        saved: SavedState<'_>,
        _ctx: &mut Context<'_>,
    ) -> Result<(), Error> {
        let mut reader = StateReader::new(saved.bytes);
        let count = reader.u64()?;
        let mut points = Vec::new();
        for _ in 0..count {
            let epoch = u32::try_from(reader.u64()?)
                .map_err(|_| Error::Monitor("saved epoch out of range".into()))?;
            points.push((epoch, reader.f64()?));
        }
        reader.finish()?;
        self.curve.points = points;
        Ok(())
    }
}

export_monitor!(LossSlopeMonitor);

#[cfg(test)]
mod tests {
    use super::*;

    /// Least-squares slope by the normal equations, written out independently.
    fn reference_slope(points: &[(f64, f64)]) -> f64 {
        let n = points.len() as f64;
        let (sx, sy): (f64, f64) = points
            .iter()
            .fold((0.0, 0.0), |(a, b), &(x, y)| (a + x, b + y));
        let sxx: f64 = points.iter().map(|&(x, _)| x * x).sum();
        let sxy: f64 = points.iter().map(|&(x, y)| x * y).sum();
        (n * sxy - sx * sy) / (n * sxx - sx * sx)
    }

    fn curve(losses: &[(u32, f64)]) -> LossCurve {
        let mut curve = LossCurve::default();
        for &(epoch, loss) in losses {
            curve.push(epoch, loss);
        }
        curve
    }

    #[test]
    fn window_slope_matches_the_least_squares_reference() {
        let losses: Vec<(u32, f64)> = (1..=20)
            .map(|e| {
                (
                    e,
                    2.0 / (e as f64).sqrt() * (1.0 + 0.05 * ((e * 7) % 5) as f64),
                )
            })
            .collect();
        let curve = curve(&losses);
        let window: Vec<(f64, f64)> = losses
            .iter()
            .filter(|(e, _)| (5..=15).contains(e))
            .map(|&(e, l)| ((e as f64).ln(), l.ln()))
            .collect();
        let slope = curve.slope_between(5, 15).unwrap();
        assert!((slope - reference_slope(&window)).abs() < 1e-9, "{slope}");
    }

    #[test]
    fn early_epochs_missing_points_and_nan_are_handled() {
        let early = curve(&[(1, 2.0), (2, 1.5)]);
        assert!(
            early.slope_between(5, 15).is_none(),
            "no point in the window yet"
        );
        let one = curve(&[(5, 0.9)]);
        assert!(
            one.slope_between(5, 15).is_none(),
            "one point makes no slope"
        );
        let gappy = curve(&[(5, 0.9), (6, f64::NAN), (8, 0.7), (9, f64::INFINITY)]);
        let slope = gappy.slope_between(5, 15).unwrap();
        let expected = reference_slope(&[(5f64.ln(), 0.9f64.ln()), (8f64.ln(), 0.7f64.ln())]);
        assert!((slope - expected).abs() < 1e-12);
    }

    #[test]
    fn burn_in_is_the_first_epoch_at_or_below_the_threshold() {
        let losses = curve(&[(1, 2.3), (2, f64::NAN), (3, 1.0), (4, 0.8)]);
        assert_eq!(losses.burn_in(1.0), Some(3));
        assert_eq!(curve(&[(1, 2.3)]).burn_in(1.0), None);
        let full = losses.slope_between(3, 4).unwrap();
        let expected = reference_slope(&[(3f64.ln(), 0.0), (4f64.ln(), 0.8f64.ln())]);
        assert!((full - expected).abs() < 1e-12);
    }

    /// Epochs `epochs` of a power-law loss `3 · epoch^−0.7`, delivered through `harness`.
    fn epochs(
        harness: &mut vigil_plugin_api::testing::Harness<LossSlopeMonitor>,
        epochs: std::ops::RangeInclusive<u32>,
    ) {
        for epoch in epochs {
            let host = harness.host_mut();
            host.counters_mut().batches_per_epoch = 10;
            host.at_step(u64::from(epoch) * 10 - 1)
                .metric("train_loss", 3.0 * f64::from(epoch).powf(-0.7));
            assert_eq!(host.counters_mut().epoch, epoch);
            harness.fire(EventKind::TRAIN_EPOCH_END).unwrap();
        }
    }

    #[test]
    fn through_the_fake_host_slopes_are_exact_and_survive_a_resume() {
        use vigil_plugin_api::testing::{FakeHost, Harness};
        let settings = "window = [2, 4]\nburn_in_loss = 1.0";
        let mut straight = Harness::<LossSlopeMonitor>::new(settings, FakeHost::new()).unwrap();
        epochs(&mut straight, 1..=6);
        let window = straight.host().logged("loss_slope_2_4");
        // From epoch 3 (two points in the window) on; the window ends at 4.
        assert_eq!(
            window.iter().map(|w| w.0).collect::<Vec<_>>(),
            [29, 39, 49, 59]
        );
        assert!(window.iter().all(|&(_, slope)| (slope + 0.7).abs() < 1e-12));
        // 3 · e^−0.7 ≤ 1 from epoch 5: the full slope needs epochs 5 and 6.
        let full = straight.host().logged("loss_slope_full");
        assert_eq!(full.len(), 1);
        assert!((full[0].1 + 0.7).abs() < 1e-12 && full[0].0 == 59);

        let mut first = Harness::<LossSlopeMonitor>::new(settings, FakeHost::new()).unwrap();
        epochs(&mut first, 1..=3);
        let saved = first.save_state().unwrap().unwrap();
        let mut resumed =
            Harness::<LossSlopeMonitor>::restored(settings, FakeHost::new(), "1.0.0", saved)
                .unwrap();
        epochs(&mut resumed, 4..=6);
        let joined: Vec<_> = [first.host().all_logged(), resumed.host().all_logged()].concat();
        assert_eq!(joined, straight.host().all_logged());
    }
}
