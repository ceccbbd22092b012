//! The `gradient` monitor: gradient norms per parameter tensor and in total, and the norm of
//! all weights every quarter epoch.
//!
//! ```toml
//! [[monitors]]
//! name = "gradient"
//! [monitors.settings]
//! log_every_n_steps = 50    # grad_norm/<param> and grad_norm/total (1 = every step)
//! weight_norm_per_epoch = 4 # weight_norm this many times an epoch
//! ```
//!
//! The norms come from the host's shared, once-per-step computation on the device; the
//! monitor never copies a gradient.

use serde::Deserialize;
use vigil_plugin_api::{
    export_monitor, parse_settings, Context, Error, EventKind, EventSet, Monitor, MonitorInfo,
    Subscriptions,
};

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    log_every_n_steps: u64,
    weight_norm_per_epoch: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            log_every_n_steps: 50,
            weight_norm_per_epoch: 4,
        }
    }
}

/// The L2 norm of a whole made of parts with these L2 norms.
pub fn combined_norm(norms: &[f64]) -> f64 {
    norms.iter().map(|n| n * n).sum::<f64>().sqrt()
}

/// Whether the batch with 0-based index `batch_index` ends one of `per_epoch` equal parts of
/// an epoch of `batches` batches (the last batch of each part, rounded up).
pub fn ends_a_part(batch_index: u32, batches: u32, per_epoch: u32) -> bool {
    if per_epoch == 0 || batches == 0 {
        return false;
    }
    let done = u64::from(batch_index) + 1;
    (1..=u64::from(per_epoch))
        .any(|k| (k * u64::from(batches)).div_ceil(u64::from(per_epoch)) == done)
}

pub struct GradientMonitor {
    settings: Settings,
    names: Vec<String>,
}

#[vigil_plugin_api::monitor]
impl Monitor for GradientMonitor {
    const INFO: MonitorInfo = MonitorInfo {
        name: "gradient",
        version: env!("CARGO_PKG_VERSION"),
        description: "gradient norms per parameter and total; weight norm every quarter epoch",
        events: EventSet::of(&[EventKind::TRAIN_BATCH_END]),
        subscriptions: Subscriptions::NONE,
    };

    fn new(settings: &str, ctx: &mut Context<'_>) -> Result<Self, Error> {
        let settings: Settings = parse_settings(settings)?;
        if settings.log_every_n_steps == 0 {
            return Err(Error::Settings(
                "log_every_n_steps must be at least 1".into(),
            ));
        }
        Ok(GradientMonitor {
            settings,
            names: ctx
                .parameters()
                .iter()
                .map(|p| format!("grad_norm/{}", p.name))
                .collect(),
        })
    }

    /// No state: every value it logs comes from the step it is logged at.
    fn save_state(&mut self, _ctx: &mut Context<'_>) -> Result<Option<Vec<u8>>, Error> {
        Ok(Some(Vec::new()))
    }

    fn on_train_batch_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        let counters = ctx.counters();
        if counters.global_step % self.settings.log_every_n_steps == 0 {
            let norms = ctx.grad_norms()?.to_vec();
            if norms.len() != self.names.len() {
                return Err(Error::Host(format!(
                    "the host gave {} gradient norms for {} parameters",
                    norms.len(),
                    self.names.len()
                )));
            }
            for (name, &norm) in self.names.iter().zip(&norms) {
                ctx.log(name, norm);
            }
            ctx.log("grad_norm/total", combined_norm(&norms));
        }
        if ends_a_part(
            counters.batch_index,
            counters.batches_per_epoch,
            self.settings.weight_norm_per_epoch,
        ) {
            let total = combined_norm(ctx.weight_norms()?);
            ctx.log("weight_norm", total);
        }
        Ok(())
    }
}

export_monitor!(GradientMonitor);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_norm_is_the_norm_of_the_concatenation() {
        // Parts (3, 4) and (12): whole (3, 4, 12) has norm 13.
        assert!((combined_norm(&[5.0, 12.0]) - 13.0).abs() < 1e-12);
        assert_eq!(combined_norm(&[]), 0.0);
    }

    #[test]
    fn quarter_points_of_an_epoch() {
        let points: Vec<u32> = (0..938).filter(|&b| ends_a_part(b, 938, 4)).collect();
        assert_eq!(points, vec![234, 468, 703, 937]);
        let points: Vec<u32> = (0..16).filter(|&b| ends_a_part(b, 16, 4)).collect();
        assert_eq!(points, vec![3, 7, 11, 15]);
        assert!(!ends_a_part(0, 10, 0));
    }

    #[test]
    fn logs_norms_from_the_hosts_gradient_and_weights() {
        use vigil_plugin_api::testing::{FakeHost, Harness};
        let mut host = FakeHost::new();
        host.parameters(&[("fc.weight", &[2, 2]), ("fc.bias", &[2])])
            .gradient(&[3.0, 0.0, 0.0, 4.0, 1.0, 0.0])
            .weights(&[1.0, 1.0, 1.0, 1.0, 0.0, 2.0]);
        host.counters_mut().batches_per_epoch = 4;
        let settings = "log_every_n_steps = 2\nweight_norm_per_epoch = 2";
        let mut harness = Harness::<GradientMonitor>::new(settings, host).unwrap();
        for step in 0..4 {
            harness.host_mut().at_step(step);
            harness.fire(EventKind::TRAIN_BATCH_END).unwrap();
        }
        let host = harness.host();
        assert_eq!(host.logged("grad_norm/fc.weight"), [(0, 5.0), (2, 5.0)]);
        assert_eq!(host.logged("grad_norm/fc.bias"), [(0, 1.0), (2, 1.0)]);
        assert_eq!(
            host.logged("grad_norm/total"),
            [(0, 26f64.sqrt()), (2, 26f64.sqrt())]
        );
        // Halves of a 4-batch epoch end after batches 1 and 3: |w| = √(4 + 4).
        assert_eq!(
            host.logged("weight_norm"),
            [(1, 8f64.sqrt()), (3, 8f64.sqrt())]
        );
        assert!(host.warnings().is_empty(), "{:?}", host.warnings());
    }
}
