//! The `instrument-panel` monitor: one picture per epoch with every instrument, like Cockpit's
//! plotter: `epoch_NNN/instrument_panel.png`.
//!
//! ```toml
//! [[monitors]]      # after the monitors it shows (it reads what they log at each step)
//! name = "instrument-panel"
//! [monitors.settings]
//! every_n_steps = 16   # its histogram of individual gradient elements
//! bins = 100
//! max_points = 2000    # per line; longer runs are thinned (every k-th point) when drawn
//! ```
//!
//! It draws what the run's monitors logged earlier in the same step (a 1.4 host answers
//! `Context::metric` with them): the training loss; α (`step-quality/alpha`); update size
//! and distance from the start (`step-quality/…`); the gradient tests and the suggested batch
//! size (`gradient-tests/…`); the gradient norm; the curvature monitor's `lambda_max` and
//! `hutch_trace`; and a histogram of the individual gradients' elements at its last step
//! (the bins `gradient-histogram` uses by default, so the host counts them once). Missing
//! instruments leave their chart saying so. Its history survives `--resume`.

use serde::Deserialize;
use vigil_monitor_draw::panels::{histogram_1d, lines};
use vigil_monitor_draw::plotters::style::RGBColor;
use vigil_monitor_draw::render_png;
use vigil_monitor_math::instruments::auto_range;
use vigil_plugin_api::per_sample::{HistogramSpec, Schedule};
use vigil_plugin_api::{
    export_monitor, monitor, parse_settings, ArtifactKind, Context, Error, EventKind, EventSet,
    Monitor, MonitorInfo, SavedState, StateReader, StateWriter, Subscriptions,
};

/// The scalars it follows, in the order they are saved.
const SERIES: [&str; 13] = [
    "train_loss",
    "step-quality/alpha",
    "step-quality/update_size",
    "step-quality/distance",
    "gradient-tests/norm_test",
    "gradient-tests/inner_test",
    "gradient-tests/ortho_test",
    "gradient-tests/suggested_batch_size",
    "gradient-tests/grad_norm",
    "curvature/lambda_max",
    "curvature/hutch_trace",
    "gradient-tests/mean_gsnr",
    "val_loss",
];

const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const RED: RGBColor = RGBColor(214, 39, 40);

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    every_n_steps: u64,
    bins: u64,
    max_points: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            every_n_steps: 16,
            bins: 100,
            max_points: 2000,
        }
    }
}

pub struct InstrumentPanel {
    settings: Settings,
    /// (step, value) per entry of [`SERIES`].
    series: Vec<Vec<(f64, f64)>>,
    /// The last histogram: step, range, counts.
    histogram: Option<(u64, (f64, f64), Vec<f64>)>,
    /// The histogram's range for the epoch it was set in.
    range: Option<(u32, (f64, f64))>,
}

impl InstrumentPanel {
    fn thinned(&self, index: usize) -> Vec<(f64, f64)> {
        let points = &self.series[index];
        let stride = points
            .len()
            .div_ceil(self.settings.max_points.max(1))
            .max(1);
        points.iter().step_by(stride).copied().collect()
    }

    fn record(&mut self, ctx: &Context<'_>, names: &[usize]) {
        let step = ctx.counters().global_step as f64;
        for &index in names {
            if let Some(value) = ctx.metric(SERIES[index]) {
                self.series[index].push((step, value));
            }
        }
    }

    fn count(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        let epoch = ctx.counters().epoch;
        let range = match self.range {
            Some((at, range)) if at == epoch => range,
            _ => {
                let stats = ctx.per_sample_stats()?;
                let elements: u64 = ctx.parameters().iter().map(|p| p.numel).sum();
                let range = auto_range(stats.sq_norms.iter().sum(), stats.batch_size(), elements);
                self.range = Some((epoch, range));
                range
            }
        };
        let spec = HistogramSpec::one_d(self.settings.bins, range.0, range.1);
        let counts = ctx.per_sample_histograms(spec)?.total();
        self.histogram = Some((ctx.counters().global_step, range, counts));
        Ok(())
    }

    fn draw(&self, epoch: u32) -> Result<Vec<u8>, Error> {
        let s = |index: usize| self.thinned(index);
        let (loss, val, alpha) = (s(0), s(12), s(1));
        let (update, distance) = (s(2), s(3));
        let (norm, inner, ortho, batch) = (s(4), s(5), s(6), s(7));
        let (grad_norm, lambda, trace, gsnr) = (s(8), s(9), s(10), s(11));
        let zero: Vec<(f64, f64)> = match (alpha.first(), alpha.last()) {
            (Some(first), Some(last)) => vec![(first.0, 0.0), (last.0, 0.0)],
            _ => Vec::new(),
        };
        render_png(1500, 1050, |root| {
            let rows = root
                .titled(
                    &format!("instrument panel, epoch {epoch}"),
                    (vigil_monitor_draw::FONT, 22),
                )
                .map_err(|err| vigil_monitor_draw::DrawError(format!("{err:?}")))?;
            let cells = rows.split_evenly((3, 3));
            lines(
                &cells[0],
                "loss",
                &[("train", &loss, BLUE), ("validation", &val, ORANGE)],
                true,
            )?;
            lines(
                &cells[1],
                "step size: α (0 = minimum of the local quadratic)",
                &[("α", &alpha, BLUE), ("0", &zero, RED)],
                false,
            )?;
            lines(
                &cells[2],
                "update size and distance from the start",
                &[
                    ("‖θₜ₊₁ − θₜ‖", &update, BLUE),
                    ("‖θₜ − θ₀‖", &distance, ORANGE),
                ],
                true,
            )?;
            lines(
                &cells[3],
                "gradient tests (below θ: the batch suffices)",
                &[
                    ("norm", &norm, BLUE),
                    ("inner", &inner, ORANGE),
                    ("ortho", &ortho, GREEN),
                ],
                true,
            )?;
            lines(
                &cells[4],
                "suggested batch size (norm test, θ)",
                &[("B", &batch, BLUE)],
                true,
            )?;
            lines(
                &cells[5],
                "gradient norm ‖ḡ‖ and mean GSNR",
                &[("‖ḡ‖", &grad_norm, BLUE), ("GSNR", &gsnr, ORANGE)],
                true,
            )?;
            lines(
                &cells[6],
                "curvature: largest eigenvalue",
                &[("λ_max", &lambda, BLUE)],
                true,
            )?;
            lines(
                &cells[7],
                "curvature: Hessian trace",
                &[("trace", &trace, BLUE)],
                false,
            )?;
            match &self.histogram {
                Some((step, range, counts)) => histogram_1d(
                    &cells[8],
                    &format!("individual gradient elements, step {step}"),
                    *range,
                    counts,
                )?,
                None => lines(&cells[8], "individual gradient elements", &[], false)?,
            }
            Ok(())
        })
        .map_err(|err| Error::Monitor(err.to_string()))
    }
}

#[monitor]
impl Monitor for InstrumentPanel {
    const INFO: MonitorInfo = MonitorInfo {
        name: "instrument-panel",
        version: env!("CARGO_PKG_VERSION"),
        description: "one picture per epoch with loss, α, step sizes, gradient tests, curvature and the gradient histogram",
        events: EventSet::of(&[
            EventKind::TRAIN_BATCH_END,
            EventKind::VALIDATION_END,
            EventKind::TRAIN_EPOCH_END,
        ]),
        subscriptions: Subscriptions::PER_SAMPLE,
    };

    fn new(settings: &str, ctx: &mut Context<'_>) -> Result<Self, Error> {
        let settings: Settings = parse_settings(settings)?;
        if settings.every_n_steps == 0
            || !(1..=4096).contains(&settings.bins)
            || settings.max_points < 2
        {
            return Err(Error::Settings(
                "every_n_steps ≥ 1, bins between 1 and 4096 and max_points ≥ 2".into(),
            ));
        }
        // The steps this monitor needs individual gradients at (every step otherwise). A host
        // before 1.4 does not know the query; the first statistics it is asked for say so.
        let _ = ctx.schedule_per_sample(Schedule {
            every: settings.every_n_steps,
            span: 1,
        });
        Ok(InstrumentPanel {
            settings,
            series: vec![Vec::new(); SERIES.len()],
            histogram: None,
            range: None,
        })
    }

    fn on_train_batch_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        self.record(ctx, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        if ctx.counters().global_step % self.settings.every_n_steps == 0 {
            // A model without individual gradients has no histogram; the other charts stay.
            if let Err(Error::Host(_)) = self.count(ctx) {
                self.histogram = None;
            }
        }
        Ok(())
    }

    fn on_validation_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        self.record(ctx, &[12]);
        Ok(())
    }

    fn on_train_epoch_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        let epoch = ctx.counters().epoch;
        let png = self.draw(epoch)?;
        ctx.write_file(
            &format!("epoch_{epoch:03}/instrument_panel.png"),
            ArtifactKind::PNG,
            &png,
        )
    }

    fn save_state(&mut self, _ctx: &mut Context<'_>) -> Result<Option<Vec<u8>>, Error> {
        let mut writer = StateWriter::new();
        for points in &self.series {
            let flat: Vec<f64> = points.iter().flat_map(|&(x, y)| [x, y]).collect();
            writer.f64s(&flat);
        }
        Ok(Some(writer.finish()))
    }

    fn restore_state(
        &mut self,
        saved: SavedState<'_>,
        _ctx: &mut Context<'_>,
    ) -> Result<(), Error> {
        let mut reader = StateReader::new(saved.bytes);
        for points in &mut self.series {
            let flat = reader.f64s()?;
            *points = flat.chunks_exact(2).map(|p| (p[0], p[1])).collect();
        }
        reader.finish()
    }
}

export_monitor!(InstrumentPanel);

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_plugin_api::testing::{FakeHost, Harness};

    #[test]
    fn it_follows_what_other_monitors_log_and_draws_a_page_that_survives_a_resume() {
        let mut harness =
            Harness::<InstrumentPanel>::new("every_n_steps = 1000", FakeHost::new()).unwrap();
        for step in 0..5u64 {
            harness
                .host_mut()
                .at_step(step)
                .metric("train_loss", 2.0 / (1.0 + step as f64))
                .metric("step-quality/alpha", 0.1 * step as f64);
            harness.fire(EventKind::TRAIN_BATCH_END).unwrap();
        }
        let saved = harness.save_state().unwrap().unwrap();
        assert_eq!(
            harness.host().schedule(),
            Some(Schedule {
                every: 1000,
                span: 1
            })
        );
        let mut resumed =
            Harness::<InstrumentPanel>::restored("", FakeHost::new(), "1.0.0", saved).unwrap();
        resumed.host_mut().counters_mut().epoch = 1;
        resumed.fire(EventKind::TRAIN_EPOCH_END).unwrap();
        let file = resumed
            .host()
            .file("epoch_001/instrument_panel.png")
            .expect("a panel");
        assert!(file.bytes.starts_with(b"\x89PNG"));
    }
}
