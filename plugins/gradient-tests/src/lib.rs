//! The `gradient-tests` monitor: is the batch large enough? Cockpit's gradient tests from the
//! individual gradients the host computes (`PER_SAMPLE`), every `every_n_steps` steps.
//!
//! ```toml
//! [[monitors]]
//! name = "gradient-tests"
//! [monitors.settings]
//! every_n_steps = 16   # the steps it runs at: 0, 16, 32, …
//! gsnr = true          # mean GSNR and the EB criterion (they read Σₙgₙ² and the gradient)
//! epsilon = 1e-5       # added to variances in GSNR and EB, as in Cockpit
//! theta = 0.5          # the norm test's θ for the suggested batch size
//! ```
//!
//! Logs, with `B` the batch, `gₙ` sample n's gradient and `ḡ` their mean
//! ([`vigil_monitor_math::instruments`] has the formulas):
//! - `gradient-tests/norm_test`: `√(var / (B‖ḡ‖²))`, `var = (Σₙ‖gₙ‖² − B‖ḡ‖²)/(B − 1)`; below
//!   θ the batch's gradient points the right way with confidence θ (Byrd et al. 2012);
//! - `gradient-tests/inner_test`, `gradient-tests/ortho_test` (Bollapragada et al. 2017);
//! - `gradient-tests/suggested_batch_size`: `var / (θ²‖ḡ‖²)`, the batch at which the norm
//!   test would pass with `theta`;
//! - `gradient-tests/grad_norm`: `‖ḡ‖`;
//! - with `gsnr`: `gradient-tests/mean_gsnr` (Liu et al. 2020) and
//!   `gradient-tests/eb_criterion` (Mahsereci et al. 2017; above 0, stop; meant for SGD
//!   without momentum).

use serde::Deserialize;
use vigil_monitor_math::instruments::{
    eb_criterion, inner_test, mean_gsnr, norm_test, norm_test_batch_size, ortho_test, BatchSums,
};
use vigil_plugin_api::per_sample::Schedule;
use vigil_plugin_api::{
    export_monitor, monitor, parse_settings, Context, Error, EventKind, EventSet, Monitor,
    MonitorInfo, Subscriptions,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    every_n_steps: u64,
    gsnr: bool,
    epsilon: f64,
    theta: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            every_n_steps: 16,
            gsnr: true,
            epsilon: 1e-5,
            theta: 0.5,
        }
    }
}

pub struct GradientTests {
    settings: Settings,
    /// Why individual gradients are missing, once said.
    said: bool,
}

#[monitor]
impl Monitor for GradientTests {
    const INFO: MonitorInfo = MonitorInfo {
        name: "gradient-tests",
        version: env!("CARGO_PKG_VERSION"),
        description: "norm, inner-product and orthogonality tests, mean GSNR and the EB criterion from individual gradients",
        events: EventSet::of(&[EventKind::TRAIN_BATCH_END]),
        subscriptions: Subscriptions(Subscriptions::PER_SAMPLE.0 | Subscriptions::GRADIENT.0),
    };

    fn new(settings: &str, ctx: &mut Context<'_>) -> Result<Self, Error> {
        let settings: Settings = parse_settings(settings)?;
        let positive = settings.theta.is_finite() && settings.theta > 0.0;
        let non_negative = settings.epsilon.is_finite() && settings.epsilon >= 0.0;
        if settings.every_n_steps == 0 || !positive || !non_negative {
            return Err(Error::Settings(format!(
                "every_n_steps must be ≥ 1, theta > 0 and epsilon ≥ 0; got {}, {} and {}",
                settings.every_n_steps, settings.theta, settings.epsilon
            )));
        }
        // The steps this monitor needs individual gradients at (every step otherwise). A host
        // before 1.4 does not know the query; the first statistics it is asked for say so.
        let _ = ctx.schedule_per_sample(Schedule {
            every: settings.every_n_steps,
            span: 1,
        });
        Ok(GradientTests {
            settings,
            said: false,
        })
    }

    fn on_train_batch_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        if ctx.counters().global_step % self.settings.every_n_steps != 0 {
            return Ok(());
        }
        let stats = match ctx.per_sample_stats() {
            Ok(stats) => stats,
            Err(err) => {
                if !std::mem::replace(&mut self.said, true) {
                    ctx.warn(&format!("no gradient tests: {err}"));
                }
                return Ok(());
            }
        };
        let sums = BatchSums {
            batch: stats.batch_size() as f64,
            sum_sq_norms: stats.sq_norms.iter().sum(),
            sum_sq_projections: stats.projections.iter().map(|p| p * p).sum(),
            grad_sq_norm: stats.grad_sq_norm(),
        };
        if sums.batch < 2.0 || sums.grad_sq_norm <= 0.0 {
            return Ok(());
        }
        ctx.log("gradient-tests/norm_test", norm_test(&sums));
        ctx.log("gradient-tests/inner_test", inner_test(&sums));
        ctx.log("gradient-tests/ortho_test", ortho_test(&sums));
        ctx.log(
            "gradient-tests/suggested_batch_size",
            norm_test_batch_size(&sums, self.settings.theta),
        );
        ctx.log("gradient-tests/grad_norm", sums.grad_sq_norm.sqrt());
        if self.settings.gsnr {
            let second_moment = ctx.per_sample_second_moment()?;
            let grad = ctx.gradient()?;
            let epsilon = self.settings.epsilon;
            let gsnr = mean_gsnr(grad, &second_moment, sums.batch, epsilon);
            let eb = eb_criterion(grad, &second_moment, sums.batch, epsilon);
            ctx.log("gradient-tests/mean_gsnr", gsnr);
            ctx.log("gradient-tests/eb_criterion", eb);
        }
        Ok(())
    }
}

export_monitor!(GradientTests);

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_plugin_api::per_sample::{ParameterStats, PerSampleStats, SECOND_MOMENT, STATS};
    use vigil_plugin_api::testing::{FakeHost, Harness};

    /// Two samples, gradients (1, 0) and (0, 1) of a 2-parameter model (one scalar each).
    fn host() -> FakeHost {
        let mut host = FakeHost::new();
        host.parameters(&[("a", &[1]), ("b", &[1])])
            .gradient(&[0.5, 0.5]);
        let stats = PerSampleStats {
            parameters: vec![
                ParameterStats {
                    grad_sq_norm: 0.25,
                    sum_sq_norms: 1.0,
                    sum_sq_projections: 0.25,
                },
                ParameterStats {
                    grad_sq_norm: 0.25,
                    sum_sq_norms: 1.0,
                    sum_sq_projections: 0.25,
                },
            ],
            sq_norms: vec![1.0, 1.0],
            projections: vec![0.5, 0.5],
            losses: vec![1.0, 2.0],
        };
        host.answer(STATS, Ok(stats.encode()));
        host.answer(
            SECOND_MOMENT,
            Ok([1.0f32, 1.0].iter().flat_map(|v| v.to_le_bytes()).collect()),
        );
        host
    }

    #[test]
    fn the_tests_are_logged_at_their_cadence_with_cockpits_values() {
        let mut harness = Harness::<GradientTests>::new("every_n_steps = 4", host()).unwrap();
        for step in 0..9 {
            harness.host_mut().at_step(step);
            harness.fire(EventKind::TRAIN_BATCH_END).unwrap();
        }
        let norm = harness.host().logged("gradient-tests/norm_test");
        assert_eq!(norm.iter().map(|l| l.0).collect::<Vec<_>>(), [0, 4, 8]);
        // var = (2 − 2·0.5)/1 = 1; θ = √(1 / (2 · 0.5)) = 1.
        assert!((norm[0].1 - 1.0).abs() < 1e-12);
        // Projections equal ‖ḡ‖² = 0.5 each: no variance.
        assert_eq!(harness.host().logged("gradient-tests/inner_test")[0].1, 0.0);
        // var_o = (2 − 0.5/0.5)/1 = 1; ν = √(1 / (2 · 0.5)) = 1.
        assert!((harness.host().logged("gradient-tests/ortho_test")[0].1 - 1.0).abs() < 1e-12);
        // GSNR per coordinate: 0.25 / (0.5 − 0.25 + ε).
        let gsnr = harness.host().logged("gradient-tests/mean_gsnr")[0].1;
        assert!((gsnr - 0.25 / (0.25 + 1e-5)).abs() < 1e-12);
        assert!(harness
            .host()
            .queries()
            .iter()
            .any(|q| q == vigil_plugin_api::per_sample::SCHEDULE));
    }

    #[test]
    fn a_model_without_individual_gradients_is_said_once() {
        let mut host = host();
        host.answer(
            STATS,
            Err("individual gradients are not defined for this model".into()),
        );
        let mut harness = Harness::<GradientTests>::new("every_n_steps = 1", host).unwrap();
        for step in 0..3 {
            harness.host_mut().at_step(step);
            harness.fire(EventKind::TRAIN_BATCH_END).unwrap();
        }
        assert_eq!(harness.host().warnings().len(), 1);
        assert!(harness.host().logged("gradient-tests/norm_test").is_empty());
    }
}
