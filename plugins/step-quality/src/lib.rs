//! The `step-quality` monitor: is the step size right? Cockpit's α, update size and distance
//! from the initial weights, from the individual gradients and the parameters' motion the host
//! keeps (`PER_SAMPLE`, `PARAMETER_MOTION`), for steps `s = 0, every, 2·every, …`.
//!
//! ```toml
//! [[monitors]]
//! name = "step-quality"
//! [monitors.settings]
//! every_n_steps = 16
//! per_layer = true     # update size and distance per parameter too
//! ```
//!
//! - `step-quality/alpha`: the update `d = θ_{s+1} − θ_s` of step `s` seen on the quadratic
//!   fitted (weighted by inverse variances) to the batch losses and the slopes along `d` at
//!   both ends: the loss `f` and slope `gₙ · d/‖d‖` of step `s`'s batch at `θ_s` and of step
//!   `s + 1`'s batch at `θ_{s+1}`, each with its sample variance over the batch. −1: the step
//!   stayed where it started (or the fit is concave: still going downhill); 0: it reached the
//!   minimum; 1: it crossed to the same loss on the other side; above 1: it overshot.
//!   Logged at step `s + 1`. The projection is on the update the optimizer really made, so α
//!   is right for any optimizer (Cockpit projects the start on −ḡ, right for plain SGD).
//! - `step-quality/update_size`: `‖d‖` (and `step-quality/update_size/<parameter>`), at
//!   step `s + 1`.
//! - `step-quality/distance`: `‖θ_s − θ₀‖` (and per parameter), at step `s`; `θ₀` is where
//!   the run started, across `--resume`.

use serde::Deserialize;
use vigil_monitor_math::instruments::{alpha, Observation};
use vigil_plugin_api::per_sample::Schedule;
use vigil_plugin_api::{
    export_monitor, monitor, parse_settings, Context, Error, EventKind, EventSet, Monitor,
    MonitorInfo, SavedState, StateReader, StateWriter, Subscriptions,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    every_n_steps: u64,
    per_layer: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            every_n_steps: 16,
            per_layer: true,
        }
    }
}

/// The start of a step α judges: its step and batch losses.
struct Start {
    step: u64,
    losses: Vec<f64>,
}

pub struct StepQuality {
    settings: Settings,
    start: Option<Start>,
    said: bool,
}

impl StepQuality {
    fn log_per_layer(&self, ctx: &mut Context<'_>, what: &str, sq_norms: &[f64]) {
        ctx.log(
            &format!("step-quality/{what}"),
            sq_norms.iter().sum::<f64>().sqrt(),
        );
        if self.settings.per_layer {
            let names: Vec<String> = ctx
                .parameters()
                .iter()
                .map(|p| p.name.to_string())
                .collect();
            for (name, sq) in names.iter().zip(sq_norms) {
                ctx.log(&format!("step-quality/{what}/{name}"), sq.sqrt());
            }
        }
    }

    fn warn_once(&mut self, ctx: &mut Context<'_>, message: String) {
        if !std::mem::replace(&mut self.said, true) {
            ctx.warn(&message);
        }
    }

    /// At the step after a start: update size and α.
    fn end(&mut self, ctx: &mut Context<'_>, step: u64) -> Result<(), Error> {
        let update = match ctx.last_update() {
            Ok(update) if update.step + 1 == step => update,
            Ok(_) => return Ok(()), // the start's step was skipped
            Err(err) => {
                self.warn_once(ctx, format!("no update size or α: {err}"));
                return Ok(());
            }
        };
        self.log_per_layer(ctx, "update_size", &update.sq_norms);
        let Some(start) = self.start.take().filter(|s| s.step + 1 == step) else {
            return Ok(());
        };
        let t = update.norm();
        let losses = match ctx.per_sample_stats() {
            Ok(stats) => stats.losses,
            Err(err) => {
                self.warn_once(ctx, format!("no α: {err}"));
                return Ok(());
            }
        };
        if t == 0.0
            || update.before.len() != start.losses.len()
            || update.after.len() != losses.len()
        {
            return Ok(());
        }
        let slopes = |dots: &[f64]| dots.iter().map(|d| d / t).collect::<Vec<_>>();
        let at_start = Observation::of(&start.losses, &slopes(&update.before));
        let at_end = Observation::of(&losses, &slopes(&update.after));
        if let Some(alpha) = alpha(t, &at_start, &at_end) {
            ctx.log("step-quality/alpha", alpha);
        }
        Ok(())
    }

    /// At a start: distance from the initial weights, and the batch's losses for α.
    fn begin(&mut self, ctx: &mut Context<'_>, step: u64) -> Result<(), Error> {
        match ctx.distance_from_init() {
            Ok(distances) => {
                let squares: Vec<f64> = distances.iter().map(|d| d * d).collect();
                self.log_per_layer(ctx, "distance", &squares);
            }
            Err(err) => self.warn_once(ctx, format!("no distance: {err}")),
        }
        self.start = match ctx.per_sample_stats() {
            Ok(stats) => Some(Start {
                step,
                losses: stats.losses,
            }),
            Err(err) => {
                self.warn_once(ctx, format!("no α: {err}"));
                None
            }
        };
        Ok(())
    }
}

#[monitor]
impl Monitor for StepQuality {
    const INFO: MonitorInfo = MonitorInfo {
        name: "step-quality",
        version: env!("CARGO_PKG_VERSION"),
        description: "α (where the step lands on the local quadratic), update size and distance from the initial weights",
        events: EventSet::of(&[EventKind::TRAIN_BATCH_END]),
        subscriptions: Subscriptions(
            Subscriptions::PER_SAMPLE.0 | Subscriptions::PARAMETER_MOTION.0,
        ),
    };

    fn new(settings: &str, ctx: &mut Context<'_>) -> Result<Self, Error> {
        let settings: Settings = parse_settings(settings)?;
        if settings.every_n_steps == 0 {
            return Err(Error::Settings("every_n_steps must be ≥ 1".into()));
        }
        // The steps this monitor needs individual gradients at (every step otherwise). A host
        // before 1.4 does not know the query; the first statistics it is asked for say so.
        let every = settings.every_n_steps;
        let _ = ctx.schedule_per_sample(Schedule {
            every,
            span: every.min(2),
        });
        Ok(StepQuality {
            settings,
            start: None,
            said: false,
        })
    }

    /// The start of a step α judges, when a checkpoint falls between its two ends.
    fn save_state(&mut self, _ctx: &mut Context<'_>) -> Result<Option<Vec<u8>>, Error> {
        let mut writer = StateWriter::new();
        writer.option(self.start.as_ref(), |w, start| {
            w.u64(start.step).f64s(&start.losses);
        });
        Ok(Some(writer.finish()))
    }

    fn restore_state(
        &mut self,
        saved: SavedState<'_>,
        _ctx: &mut Context<'_>,
    ) -> Result<(), Error> {
        let mut reader = StateReader::new(saved.bytes);
        self.start = reader.option(|r| {
            Ok(Start {
                step: r.u64()?,
                losses: r.f64s()?,
            })
        })?;
        reader.finish()
    }

    fn on_train_batch_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        let every = self.settings.every_n_steps;
        let step = ctx.counters().global_step;
        if step > 0 && (step - 1) % every == 0 {
            self.end(ctx, step)?;
        }
        if step % every == 0 {
            self.begin(ctx, step)?;
        }
        Ok(())
    }
}

export_monitor!(StepQuality);

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_plugin_api::per_sample::{
        encode_f64s, LastUpdate, ParameterStats, PerSampleStats, DISTANCE, LAST_UPDATE, STATS,
    };
    use vigil_plugin_api::testing::{FakeHost, Harness};

    fn stats(losses: Vec<f64>) -> Vec<u8> {
        let n = losses.len();
        PerSampleStats {
            parameters: vec![ParameterStats {
                grad_sq_norm: 1.0,
                sum_sq_norms: 2.0,
                sum_sq_projections: 1.0,
            }],
            sq_norms: vec![1.0; n],
            projections: vec![1.0; n],
            losses,
        }
        .encode()
    }

    /// f(x) = (x − 1)² along the step, sampled by two samples each end with losses f ± 0.1
    /// and slopes f' ± 0.2: the fit is the quadratic, a step of t = 2 lands on the other side.
    #[test]
    fn alpha_update_size_and_distance_come_at_their_steps() {
        let mut host = FakeHost::new();
        host.parameters(&[("w", &[2])]);
        host.answer(DISTANCE, Ok(encode_f64s(&[3.0])));
        let mut harness = Harness::<StepQuality>::new("every_n_steps = 4", host).unwrap();
        assert_eq!(
            harness.host().schedule(),
            Some(Schedule { every: 4, span: 2 })
        );
        harness
            .host_mut()
            .at_step(4)
            .answer(STATS, Ok(stats(vec![0.9, 1.1])));
        harness.fire(EventKind::TRAIN_BATCH_END).unwrap();
        // d has length 2 in the (1, 0) direction: slopes gₙ·d/‖d‖ = dots / 2.
        let update = LastUpdate {
            step: 4,
            sq_norms: vec![4.0],
            before: vec![-4.4, -3.6],
            after: vec![3.6, 4.4],
        };
        let host = harness.host_mut();
        host.at_step(5).answer(STATS, Ok(stats(vec![0.9, 1.1])));
        host.answer(LAST_UPDATE, Ok(update.encode()));
        harness.fire(EventKind::TRAIN_BATCH_END).unwrap();
        let logged = harness.host().logged("step-quality/alpha");
        assert_eq!(logged.len(), 1);
        assert_eq!(logged[0].0, 5);
        assert!((logged[0].1 - 1.0).abs() < 1e-12, "{logged:?}");
        assert_eq!(
            harness.host().logged("step-quality/update_size"),
            [(5, 2.0)]
        );
        assert_eq!(
            harness.host().logged("step-quality/update_size/w"),
            [(5, 2.0)]
        );
        assert_eq!(harness.host().logged("step-quality/distance"), [(4, 3.0)]);
    }
}
