//! The SDK's checks, seen through the fake host: misuse is an error that names what is
//! missing, a hook left out of `events` is reported once when the monitor is built, and the
//! fake host answers as the real host does.

use vigil_plugin_api::testing::{FakeHost, Harness};
use vigil_plugin_api::{
    monitor, ArtifactKind, Context, Error, EventKind, EventSet, Monitor, MonitorInfo, ProbeSpec,
    Subscriptions,
};

/// Reads the gradient at every event it lists, subscribed or not as `SUBSCRIBED` says.
struct GradientReader<const SUBSCRIBED: bool>;

#[monitor]
impl<const SUBSCRIBED: bool> Monitor for GradientReader<SUBSCRIBED> {
    const INFO: MonitorInfo = MonitorInfo {
        name: "gradient-reader",
        version: "0.1.0",
        description: "reads the gradient",
        events: EventSet::of(&[EventKind::TRAIN_BATCH_END, EventKind::VALIDATION_END]),
        subscriptions: if SUBSCRIBED {
            Subscriptions::GRADIENT
        } else {
            Subscriptions::NONE
        },
    };

    fn new(_settings: &str, _ctx: &mut Context<'_>) -> Result<Self, Error> {
        Ok(GradientReader)
    }

    fn on_train_batch_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        let sum: f32 = ctx.gradient()?.iter().sum();
        ctx.log("sum", f64::from(sum));
        Ok(())
    }

    fn on_validation_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        ctx.gradient().map(drop)
    }
}

fn host_with_gradient() -> FakeHost {
    let mut host = FakeHost::new();
    host.parameters(&[("w", &[3])]).gradient(&[1.0, 2.0, 3.5]);
    host
}

#[test]
fn reading_an_unsubscribed_gradient_is_an_error_naming_the_subscription() {
    let mut harness = Harness::<GradientReader<false>>::new("", host_with_gradient()).unwrap();
    let err = harness.fire(EventKind::TRAIN_BATCH_END).unwrap_err();
    assert_eq!(
        err,
        "`Context::gradient` needs the subscription `Subscriptions::GRADIENT` in the monitor's `MonitorInfo::subscriptions`"
    );
    assert!(harness.host().all_logged().is_empty());

    let mut subscribed = Harness::<GradientReader<true>>::new("", host_with_gradient()).unwrap();
    subscribed.fire(EventKind::TRAIN_BATCH_END).unwrap();
    assert_eq!(subscribed.host().logged("sum"), [(0, 6.5)]);
}

#[test]
fn reading_the_gradient_where_there_is_none_is_an_error_naming_the_event() {
    let mut harness = Harness::<GradientReader<true>>::new("", host_with_gradient()).unwrap();
    let err = harness.fire(EventKind::VALIDATION_END).unwrap_err();
    assert_eq!(
        err,
        "`Context::gradient` has no data at validation_end; it is there at train_batch_end"
    );
}

/// Implements `on_validation_end` but lists only `train_epoch_end`.
struct Forgetful;

#[monitor]
impl Monitor for Forgetful {
    const INFO: MonitorInfo = MonitorInfo {
        name: "forgetful",
        version: "0.1.0",
        description: "forgot an event",
        events: EventSet::of(&[EventKind::TRAIN_EPOCH_END]),
        subscriptions: Subscriptions::NONE,
    };

    fn new(_settings: &str, _ctx: &mut Context<'_>) -> Result<Self, Error> {
        Ok(Forgetful)
    }

    fn on_train_epoch_end(&mut self, _ctx: &mut Context<'_>) -> Result<(), Error> {
        Ok(())
    }

    fn on_validation_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        ctx.log("never", 1.0);
        Ok(())
    }
}

#[test]
fn a_hook_left_out_of_events_is_reported_once_at_load() {
    let mut harness = Harness::<Forgetful>::new("", FakeHost::new()).unwrap();
    assert_eq!(
        harness.host().warnings(),
        ["`on_validation_end` is implemented but `EventKind::VALIDATION_END` is not in `MonitorInfo::events`, so the host never calls it: add the event, or remove the hook"]
    );
    harness.fire(EventKind::TRAIN_EPOCH_END).unwrap();
    assert_eq!(harness.host().warnings().len(), 1, "once, at load");
    let refused = harness.fire(EventKind::VALIDATION_END).unwrap_err();
    assert!(refused.contains("not in MonitorInfo::events"), "{refused}");
    // The monitors above list every hook they implement: no warning.
    let fine = Harness::<GradientReader<true>>::new("", FakeHost::new()).unwrap();
    assert!(fine.host().warnings().is_empty());
}

/// Uses the rest of the context: optional data, queries, files, products, state.
struct Everything {
    steps: u64,
}

#[monitor]
impl Monitor for Everything {
    const INFO: MonitorInfo = MonitorInfo {
        name: "everything",
        version: "2.0.0",
        description: "uses every capability",
        events: EventSet::of(&[
            EventKind::TRAIN_EPOCH_START,
            EventKind::TRAIN_BATCH_END,
            EventKind::VALIDATION_BATCH_END,
            EventKind::VALIDATION_END,
        ]),
        subscriptions: Subscriptions::SAMPLER
            .union(Subscriptions::SAMPLE_IMAGES)
            .union(Subscriptions::VALIDATION_OUTPUTS),
    };

    fn new(_settings: &str, ctx: &mut Context<'_>) -> Result<Self, Error> {
        let count = ctx.parameter_count()?;
        ctx.log("trainable", count.trainable as f64);
        ctx.log("total", count.total as f64);
        let labels = ctx.train_labels()?.iter().sum::<i64>();
        ctx.log("labels", labels as f64);
        Ok(Everything { steps: 0 })
    }

    fn on_train_epoch_start(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        let drawn = ctx.sampler_draws()?.map_or(0, |d| d.indices.len());
        ctx.log("drawn", drawn as f64);
        Ok(())
    }

    fn on_train_batch_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        self.steps += 1;
        let probe = ProbeSpec {
            samples: 8,
            max_batch_size: 8,
            seed: 3,
        };
        let mut out = [0.0f32; 2];
        let loss = ctx.hessian_vector_product(probe, &[1.0, -1.0], &mut out)?;
        ctx.log("hv0", f64::from(out[0]));
        ctx.log("hv1", f64::from(out[1]));
        ctx.log("probe_loss", loss);
        ctx.update_gradient_ema(0.5)?;
        ctx.update_gradient_ema(0.5)?; // once a step
        let averages = ctx.gradient_ema()?;
        ctx.log("ema_updates", averages.updates as f64);
        ctx.log("ema_mean_square", averages.mean_square);
        ctx.append_file("steps.txt", ArtifactKind::TEXT, b"step\n")
    }

    fn on_validation_batch_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        let batch = ctx.validation_batch()?;
        ctx.log("predicted", batch.predictions.iter().sum::<i64>() as f64);
        Ok(())
    }

    fn on_validation_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        if ctx.sample_images()?.is_none() {
            ctx.warn("no images");
        }
        ctx.write_file("../escape.txt", ArtifactKind::TEXT, b"no")
    }

    fn save_state(&mut self, _ctx: &mut Context<'_>) -> Result<Option<Vec<u8>>, Error> {
        Ok(Some(self.steps.to_le_bytes().to_vec()))
    }

    fn restore_state(
        &mut self,
        saved: vigil_plugin_api::SavedState<'_>,
        ctx: &mut Context<'_>,
    ) -> Result<(), Error> {
        self.steps = u64::from_le_bytes(saved.bytes.try_into().map_err(|_| "8 bytes")?);
        ctx.info(&format!(
            "restored {} from {}",
            self.steps, saved.plugin_version
        ));
        Ok(())
    }
}

#[test]
fn the_fake_host_answers_as_the_host_does_and_records_everything() {
    let mut host = FakeHost::new();
    host.parameters(&[("w", &[2])])
        .weights(&[1.0, 2.0])
        .gradient(&[2.0, 0.0])
        .hessian(&[2.0, 1.0, 1.0, 3.0])
        .total_parameters(5)
        .labels(&[1, 1, 0], &[0]);
    let mut harness = Harness::<Everything>::new("", host).unwrap();
    assert_eq!(harness.host().logged("trainable"), [(0, 2.0)]);
    assert_eq!(harness.host().logged("total"), [(0, 5.0)]);
    assert_eq!(harness.host().logged("labels"), [(0, 2.0)]);

    // No tracking sampler: None, not an empty slice.
    harness.fire(EventKind::TRAIN_EPOCH_START).unwrap();
    harness
        .host_mut()
        .sampler_draws(&[2, 0], &[1.0; 3], &[1, 1, 0]);
    harness.fire(EventKind::TRAIN_EPOCH_START).unwrap();
    assert_eq!(harness.host().logged("drawn"), [(0, 0.0), (0, 2.0)]);

    harness.fire(EventKind::TRAIN_BATCH_END).unwrap();
    let host = harness.host();
    // H·(1, −1) = (1, −2); ½ wᵀHw = ½ (2 + 4 + 12) = 9.
    assert_eq!(host.logged("hv0"), [(0, 1.0)]);
    assert_eq!(host.logged("hv1"), [(0, -2.0)]);
    assert_eq!(host.logged("probe_loss"), [(0, 9.0)]);
    assert_eq!(host.products()[0].probe.seed, 3);
    // One update: mean square (1 − β)·(4 + 0)/2 = 1.
    assert_eq!(host.logged("ema_updates"), [(0, 1.0)]);
    assert_eq!(host.logged("ema_mean_square"), [(0, 1.0)]);
    assert_eq!(host.file("steps.txt").unwrap().bytes, b"step\n");

    harness
        .host_mut()
        .validation_batch(&[0.1, 0.9, 0.8, 0.2], &[1, 1]);
    harness.fire(EventKind::VALIDATION_BATCH_END).unwrap();
    assert_eq!(harness.host().logged("predicted"), [(0, 1.0)]);

    let escaped = harness.fire(EventKind::VALIDATION_END).unwrap_err();
    assert!(
        escaped.contains("must be relative, without `..`"),
        "{escaped}"
    );
    assert_eq!(harness.host().warnings(), ["no images"]);

    let saved = harness.save_state().unwrap().unwrap();
    let restored = Harness::<Everything>::restored("", FakeHost::new(), "2.0.0", saved);
    let restored = restored.unwrap();
    assert_eq!(
        restored
            .host()
            .messages_at(vigil_plugin_api::LogLevel::INFO),
        ["restored 1 from 2.0.0"]
    );
}
