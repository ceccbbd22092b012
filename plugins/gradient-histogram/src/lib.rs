//! The `gradient-histogram` monitor: how the elements of the individual gradients are
//! distributed (Cockpit's `GradHist1d` and `GradHist2d`), from the host's per-sample data.
//!
//! ```toml
//! [[monitors]]
//! name = "gradient-histogram"
//! [monitors.settings]
//! every_n_steps = 16
//! bins = 100
//! # range = [-2.0, 2.0]     # fixed bins; left out: ±6 RMS of the elements, set each epoch
//! two_d = false             # also against the parameters' values (costly: see the README)
//! value_bins = 50
//! two_d_gradient_bins = 40
//! # value_range = [-2.0, 2.0]  # left out: ±4 × the largest parameter RMS, set each epoch
//! per_parameter = false     # a TensorBoard histogram per parameter too
//! ```
//!
//! At each of its steps it counts every element of every sample's gradient `gₙ` (`B × N`
//! values; outside the range they are clamped into the end bins, as in Cockpit) and hands
//! TensorBoard the histogram (`gradient-histogram/all`, and per parameter). At the end of each
//! epoch it draws the epoch's last histograms into `epoch_NNN/gradient_histogram.png`. Without
//! a `range`, the bins span ±6 times the elements' RMS `√(Σₙ‖gₙ‖² / (B·N))` at the epoch's
//! first step, so that the bulk fills the picture as gradients shrink.

use serde::Deserialize;
use vigil_monitor_draw::panels::{histogram_1d, histogram_2d};
use vigil_monitor_draw::render_png;
use vigil_monitor_math::instruments::auto_range;
use vigil_plugin_api::per_sample::{HistogramRecord, HistogramSpec, Schedule};
use vigil_plugin_api::{
    export_monitor, monitor, parse_settings, ArtifactKind, Context, Error, EventKind, EventSet,
    Monitor, MonitorInfo, Subscriptions,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    every_n_steps: u64,
    bins: u64,
    range: Option<[f64; 2]>,
    two_d: bool,
    value_bins: u64,
    two_d_gradient_bins: u64,
    value_range: Option<[f64; 2]>,
    per_parameter: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            every_n_steps: 16,
            bins: 100,
            range: None,
            two_d: false,
            value_bins: 50,
            two_d_gradient_bins: 40,
            value_range: None,
            per_parameter: false,
        }
    }
}

/// A histogram's range, `(low, high)`.
type Range = (f64, f64);

/// The last histograms of an epoch, for its picture.
struct Drawn {
    step: u64,
    range: (f64, f64),
    counts: Vec<f64>,
    two_d: Option<((f64, f64), Vec<f64>)>,
}

pub struct GradientHistogram {
    settings: Settings,
    /// The ranges set at the epoch's first step: (gradients, values), and the epoch.
    ranges: Option<(u32, Range, Range)>,
    last: Option<Drawn>,
    said: bool,
}

/// `limits` of `bins` equal bins over `[low, high]`.
fn limits(low: f64, high: f64, bins: usize) -> Vec<f64> {
    (1..=bins)
        .map(|i| low + (high - low) * i as f64 / bins as f64)
        .collect()
}

impl GradientHistogram {
    /// This epoch's ranges: the settings', or from the elements' and values' RMS.
    fn ranges(&mut self, ctx: &mut Context<'_>) -> Result<(Range, Range), Error> {
        let epoch = ctx.counters().epoch;
        if let Some((at, range, values)) = self.ranges {
            if at == epoch {
                return Ok((range, values));
            }
        }
        let range = match self.settings.range {
            Some([low, high]) => (low, high),
            None => {
                let stats = ctx.per_sample_stats()?;
                let elements: u64 = ctx.parameters().iter().map(|p| p.numel).sum();
                auto_range(stats.sq_norms.iter().sum(), stats.batch_size(), elements)
            }
        };
        let values = match self.settings.value_range {
            Some([low, high]) => (low, high),
            None => {
                let sizes: Vec<u64> = ctx.parameters().iter().map(|p| p.numel).collect();
                let norms = ctx.weight_norms()?;
                let rms = norms
                    .iter()
                    .zip(&sizes)
                    .map(|(n, &k)| n / (k.max(1) as f64).sqrt())
                    .fold(0.0, f64::max);
                let half = if rms > 0.0 { 4.0 * rms } else { 1.0 };
                (-half, half)
            }
        };
        self.ranges = Some((epoch, range, values));
        Ok((range, values))
    }

    fn count(&mut self, ctx: &mut Context<'_>, step: u64) -> Result<(), Error> {
        let ((low, high), (value_low, value_high)) = self.ranges(ctx)?;
        let spec = HistogramSpec::one_d(self.settings.bins, low, high);
        let histograms = ctx.per_sample_histograms(spec)?;
        let bins = self.settings.bins as usize;
        let counts = histograms.total();
        let record = |tag: String, counts: &[f64]| HistogramRecord {
            tag,
            low,
            limits: limits(low, high, bins),
            counts: counts.to_vec(),
        };
        ctx.log_histogram(&record("all".into(), &counts))?;
        if self.settings.per_parameter {
            let names: Vec<String> = ctx
                .parameters()
                .iter()
                .map(|p| p.name.to_string())
                .collect();
            for (name, counts) in names.iter().zip(&histograms.counts) {
                ctx.log_histogram(&record(name.clone(), counts))?;
            }
        }
        let two_d = if self.settings.two_d {
            let spec = HistogramSpec {
                value_bins: self.settings.value_bins,
                value_low,
                value_high,
                ..HistogramSpec::one_d(self.settings.two_d_gradient_bins, low, high)
            };
            Some((
                (value_low, value_high),
                ctx.per_sample_histograms(spec)?.total(),
            ))
        } else {
            None
        };
        self.last = Some(Drawn {
            step,
            range: (low, high),
            counts,
            two_d,
        });
        Ok(())
    }

    fn draw(&self, drawn: &Drawn, epoch: u32) -> Result<Vec<u8>, Error> {
        let width = if drawn.two_d.is_some() { 1200 } else { 640 };
        let value_bins = self.settings.value_bins as usize;
        render_png(width, 440, |root| {
            let title = format!("individual gradients, epoch {epoch} (step {})", drawn.step);
            let parts = match &drawn.two_d {
                Some(_) => root.split_evenly((1, 2)),
                None => vec![root.clone()],
            };
            histogram_1d(&parts[0], &title, drawn.range, &drawn.counts)?;
            if let Some((values, counts)) = &drawn.two_d {
                histogram_2d(
                    &parts[1],
                    "against parameter values",
                    drawn.range,
                    *values,
                    value_bins,
                    counts,
                )?;
            }
            Ok(())
        })
        .map_err(|err| Error::Monitor(err.to_string()))
    }
}

#[monitor]
impl Monitor for GradientHistogram {
    const INFO: MonitorInfo = MonitorInfo {
        name: "gradient-histogram",
        version: env!("CARGO_PKG_VERSION"),
        description:
            "histograms of individual gradient elements, alone and against parameter values",
        events: EventSet::of(&[EventKind::TRAIN_BATCH_END, EventKind::TRAIN_EPOCH_END]),
        subscriptions: Subscriptions::PER_SAMPLE,
    };

    fn new(settings: &str, ctx: &mut Context<'_>) -> Result<Self, Error> {
        let settings: Settings = parse_settings(settings)?;
        let ordered = |range: Option<[f64; 2]>| {
            range.is_none_or(|[low, high]| low.is_finite() && high.is_finite() && low < high)
        };
        let bins_ok = |b: u64| (1..=4096).contains(&b);
        if settings.every_n_steps == 0
            || !bins_ok(settings.bins)
            || !bins_ok(settings.value_bins)
            || !bins_ok(settings.two_d_gradient_bins)
            || !ordered(settings.range)
            || !ordered(settings.value_range)
        {
            return Err(Error::Settings(
                "every_n_steps ≥ 1, bins between 1 and 4096, ranges [low, high] with low < high"
                    .into(),
            ));
        }
        // The steps this monitor needs individual gradients at (every step otherwise). A host
        // before 1.4 does not know the query; the first statistics it is asked for say so.
        let _ = ctx.schedule_per_sample(Schedule {
            every: settings.every_n_steps,
            span: 1,
        });
        Ok(GradientHistogram {
            settings,
            ranges: None,
            last: None,
            said: false,
        })
    }

    fn on_train_batch_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        let step = ctx.counters().global_step;
        if step % self.settings.every_n_steps != 0 {
            return Ok(());
        }
        match self.count(ctx, step) {
            Err(Error::Host(reason)) => {
                if !std::mem::replace(&mut self.said, true) {
                    ctx.warn(&format!("no gradient histograms: {reason}"));
                }
                Ok(())
            }
            other => other,
        }
    }

    fn on_train_epoch_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        let Some(drawn) = self.last.take() else {
            return Ok(());
        };
        let epoch = ctx.counters().epoch;
        let png = self.draw(&drawn, epoch)?;
        ctx.write_file(
            &format!("epoch_{epoch:03}/gradient_histogram.png"),
            ArtifactKind::PNG,
            &png,
        )
    }
}

export_monitor!(GradientHistogram);

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_plugin_api::per_sample::{Histograms, HISTOGRAM};
    use vigil_plugin_api::testing::{FakeHost, Harness};

    #[test]
    fn histograms_go_to_tensorboard_and_the_epoch_gets_a_picture() {
        let mut host = FakeHost::new();
        host.parameters(&[("w", &[3])]).weights(&[0.1, -0.2, 0.3]);
        let counts = Histograms {
            bins: 4,
            value_bins: 0,
            counts: vec![vec![1.0, 5.0, 5.0, 1.0]],
        };
        host.answer(HISTOGRAM, Ok(counts.encode()));
        let settings = "every_n_steps = 2\nbins = 4\nrange = [-1.0, 1.0]\ntwo_d = false";
        let mut harness = Harness::<GradientHistogram>::new(settings, host).unwrap();
        for step in 0..4 {
            harness.host_mut().at_step(step);
            harness.fire(EventKind::TRAIN_BATCH_END).unwrap();
        }
        let logged = harness.host().histograms();
        assert_eq!(logged.iter().map(|h| h.0).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(logged[0].1.tag, "all");
        assert_eq!(logged[0].1.limits, [-0.5, 0.0, 0.5, 1.0]);
        assert_eq!(logged[0].1.counts, [1.0, 5.0, 5.0, 1.0]);
        harness.host_mut().counters_mut().epoch = 2;
        harness.fire(EventKind::TRAIN_EPOCH_END).unwrap();
        let file = harness
            .host()
            .file("epoch_002/gradient_histogram.png")
            .expect("a picture");
        assert!(file.bytes.starts_with(b"\x89PNG"));
    }
}
