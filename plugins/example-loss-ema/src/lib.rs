//! The smallest useful vigil monitor: an exponential moving average of the training loss,
//! which is far easier to read than the raw per-batch loss.
//!
//! ```toml
//! [[monitors]]
//! name = "example-loss-ema"
//! [monitors.settings]
//! alpha = 0.98             # weight of the old average
//! log_every_n_steps = 10
//! ```
//!
//! Logs `loss_ema` (nats) and `loss_ema_bits` every `log_every_n_steps` steps. The average
//! is bias-corrected, as in Adam, so early values are not dragged towards zero.

use serde::Deserialize;
use vigil_plugin_api::{
    export_monitor, parse_settings, Context, Error, EventKind, EventSet, Monitor, MonitorInfo,
    SavedState, StateReader, StateWriter, Subscriptions,
};

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    alpha: f64,
    log_every_n_steps: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            alpha: 0.98,
            log_every_n_steps: 10,
        }
    }
}

/// Bias-corrected exponential moving average.
#[derive(Debug, Clone, PartialEq)]
pub struct Ema {
    alpha: f64,
    value: f64,
    weight: f64,
}

impl Ema {
    pub fn new(alpha: f64) -> Self {
        Ema {
            alpha,
            value: 0.0,
            weight: 0.0,
        }
    }

    pub fn update(&mut self, sample: f64) -> f64 {
        self.value = self.alpha * self.value + (1.0 - self.alpha) * sample;
        self.weight = self.alpha * self.weight + (1.0 - self.alpha);
        self.value / self.weight
    }
}

pub struct LossEma {
    ema: Ema,
    every: u64,
}

#[vigil_plugin_api::monitor]
impl Monitor for LossEma {
    const INFO: MonitorInfo = MonitorInfo {
        name: "example-loss-ema",
        version: env!("CARGO_PKG_VERSION"),
        description: "exponential moving average of the training loss (loss_ema)",
        events: EventSet::of(&[EventKind::TRAIN_BATCH_END]),
        subscriptions: Subscriptions::NONE,
    };

    fn new(settings: &str, _ctx: &mut Context<'_>) -> Result<Self, Error> {
        let settings: Settings = parse_settings(settings)?;
        if !(0.0..1.0).contains(&settings.alpha) {
            return Err(Error::Settings(format!(
                "alpha must be in [0, 1), got {}",
                settings.alpha
            )));
        }
        if settings.log_every_n_steps == 0 {
            return Err(Error::Settings(
                "log_every_n_steps must be at least 1".into(),
            ));
        }
        Ok(LossEma {
            ema: Ema::new(settings.alpha),
            every: settings.log_every_n_steps,
        })
    }

    fn on_train_batch_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        let Some(loss) = ctx.metric("train_loss") else {
            return Ok(());
        };
        let average = self.ema.update(loss);
        if ctx.counters().global_step % self.every == 0 {
            ctx.log("loss_ema", average);
            ctx.log("loss_ema_bits", average / std::f64::consts::LN_2);
        }
        Ok(())
    }

    /// The average so far, so that a resumed run continues it instead of starting over.
    fn save_state(&mut self, _ctx: &mut Context<'_>) -> Result<Option<Vec<u8>>, Error> {
        let mut state = StateWriter::new();
        state.f64(self.ema.value).f64(self.ema.weight);
        Ok(Some(state.finish()))
    }

    fn restore_state(
        &mut self,
        saved: SavedState<'_>,
        _ctx: &mut Context<'_>,
    ) -> Result<(), Error> {
        let mut state = StateReader::new(saved.bytes);
        self.ema.value = state.f64()?;
        self.ema.weight = state.f64()?;
        state.finish()
    }
}

export_monitor!(LossEma);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_signal_averages_to_itself_from_the_first_sample() {
        let mut ema = Ema::new(0.9);
        for _ in 0..5 {
            assert!((ema.update(2.5) - 2.5).abs() < 1e-12);
        }
    }

    #[test]
    fn the_average_follows_a_step_change_geometrically() {
        let mut ema = Ema::new(0.5);
        ema.update(0.0);
        // Weights after two samples: 0.5·0.5 for the first, 0.5 for the second, over 0.75.
        assert!((ema.update(3.0) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn through_the_fake_host_it_logs_every_n_steps_and_resumes_the_average() {
        use vigil_plugin_api::testing::{FakeHost, Harness};
        let settings = "alpha = 0.5\nlog_every_n_steps = 2";
        let run = |harness: &mut Harness<LossEma>, steps: std::ops::Range<u64>| {
            for step in steps {
                let loss = if step == 0 { 0.0 } else { 3.0 };
                harness.host_mut().at_step(step).metric("train_loss", loss);
                harness.fire(EventKind::TRAIN_BATCH_END).unwrap();
            }
        };
        let mut straight = Harness::<LossEma>::new(settings, FakeHost::new()).unwrap();
        run(&mut straight, 0..4);
        // Steps 0 and 2; after 0, 3, 3 the weights are ¼·0 + ¼·3 + ½·3 over ⅞.
        assert_eq!(
            straight.host().logged("loss_ema"),
            [(0, 0.0), (2, 2.25 / 0.875)]
        );

        let mut first = Harness::<LossEma>::new(settings, FakeHost::new()).unwrap();
        run(&mut first, 0..2);
        let saved = first.save_state().unwrap().unwrap();
        let mut resumed = Harness::<LossEma>::restored(settings, FakeHost::new(), "1.0.0", saved);
        let resumed = resumed.as_mut().unwrap();
        run(resumed, 2..4);
        assert_eq!(resumed.host().logged("loss_ema"), [(2, 2.25 / 0.875)]);
    }
}
