//! [`Context`]: what a monitor sees of the host during one call, with the SDK's checks.

use abi_stable::std_types::{RSlice, RSliceMut, RStr, RString};

use crate::abi::{
    Artifact, ArtifactKind, EventKind, HostRef, ImageBatch, LogLevel, ParameterInfo, ProbeSpec,
    SamplerDraws, StepCounters, Subscriptions, ValidationBatch, WriteMode,
};
use crate::query::{self, GradientEma, ParameterCount};
use crate::Error;

mod per_sample;

/// The host, as a monitor sees it during one call: what training looks like now, the data
/// the monitor subscribed to, and what it can ask the host to do.
///
/// Data that exists only at some events, or only for a subscription, is a `Result`: reading
/// it elsewhere is an error that names the subscription or the event, never a silently empty
/// answer. Where an empty answer is a right one (a run without images, without a tracking
/// sampler) the data is an `Option` inside.
///
/// ```
/// use vigil_plugin_api::{Context, Error};
///
/// fn on_train_batch_end(ctx: &mut Context<'_>) -> Result<(), Error> {
///     let step = ctx.counters().global_step;
///     if let Some(loss) = ctx.metric("train_loss") {
///         ctx.log("demo/loss", loss);
///     }
///     let largest = ctx.grad_norms()?.iter().cloned().fold(0.0, f64::max);
///     ctx.log("demo/largest_grad_norm", largest);
///     if step == 0 {
///         ctx.info("first step seen");
///     }
///     Ok(())
/// }
/// ```
pub struct Context<'a> {
    host: HostRef<'a>,
    /// The event being handled; `None` in [`Monitor::new`](crate::Monitor::new).
    event: Option<EventKind>,
    /// What the monitor subscribed to.
    subscriptions: Subscriptions,
}

impl<'a> Context<'a> {
    /// A context for `event` (`None`: while the monitor is built) of a monitor that
    /// subscribed to `subscriptions`. Only the SDK's entry points make these (the fake host
    /// goes through them too).
    pub(crate) fn new(
        host: HostRef<'a>,
        event: Option<EventKind>,
        subscriptions: Subscriptions,
    ) -> Self {
        Context {
            host,
            event,
            subscriptions,
        }
    }

    /// The event being handled; `None` inside [`Monitor::new`](crate::Monitor::new).
    ///
    /// ```
    /// # fn hook(ctx: &vigil_plugin_api::Context<'_>) {
    /// use vigil_plugin_api::EventKind;
    /// let at_validation = ctx.event() == Some(EventKind::VALIDATION_END);
    /// # }
    /// ```
    pub fn event(&self) -> Option<EventKind> {
        self.event
    }

    fn event_name(&self) -> &'static str {
        self.event.map_or("Monitor::new", EventKind::name)
    }

    /// Check that `data` may be read now: the monitor subscribed to `subscription` (when it
    /// needs one) and the current event is `at`.
    fn require(
        &self,
        data: &'static str,
        subscription: Option<(Subscriptions, &'static str)>,
        at: EventKind,
    ) -> Result<(), Error> {
        if let Some((bits, name)) = subscription {
            if !self.subscriptions.contains(bits) {
                return Err(Error::NotSubscribed {
                    data,
                    subscription: name,
                });
            }
        }
        if self.event == Some(at) {
            Ok(())
        } else {
            Err(Error::NotAtThisEvent {
                data,
                event: self.event_name(),
                available: at.name(),
            })
        }
    }

    /// Where training is.
    ///
    /// ```
    /// # fn hook(ctx: &vigil_plugin_api::Context<'_>) {
    /// let counters = ctx.counters();
    /// let last_batch_of_epoch = counters.batch_index + 1 == counters.batches_per_epoch;
    /// # }
    /// ```
    pub fn counters(&self) -> StepCounters {
        self.host.counters()
    }

    /// A scalar metric of the current event by name, `None` when the host has none by that
    /// name now. At `train_batch_end`: `train_loss`, `train_loss_bits`, `train_acc`, `lr`,
    /// `wd`; at `validation_end`: `val_loss`, `val_acc` and `val_acc_top{k}` (with
    /// `val_top_k`). From a 1.4 host, also any scalar a monitor earlier in the configuration
    /// logged at this event (`curvature/hutch_trace`), so that a monitor can build on others.
    ///
    /// ```
    /// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) {
    /// if let Some(accuracy) = ctx.metric("val_acc") {
    ///     ctx.log("demo/error_rate", 1.0 - accuracy);
    /// }
    /// # }
    /// ```
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.host.metric(RStr::from_str(name)).into_option()
    }

    /// The model's trainable parameters, in the order of every per-parameter slice and of the
    /// flattened gradient. Available everywhere, [`Monitor::new`](crate::Monitor::new) included.
    ///
    /// ```
    /// # fn hook(ctx: &vigil_plugin_api::Context<'_>) {
    /// let scalars: u64 = ctx.parameters().iter().map(|p| p.numel).sum();
    /// # }
    /// ```
    pub fn parameters(&self) -> &[ParameterInfo] {
        self.host.parameters().as_slice()
    }

    /// The L2 norm of each parameter's gradient, aligned with [`Context::parameters`], at
    /// `train_batch_end` (no subscription needed: computed once per step and shared).
    ///
    /// ```
    /// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) -> Result<(), vigil_plugin_api::Error> {
    /// let total = ctx.grad_norms()?.iter().map(|n| n * n).sum::<f64>().sqrt();
    /// ctx.log("demo/grad_norm", total);
    /// # Ok(()) }
    /// ```
    pub fn grad_norms(&self) -> Result<&[f64], Error> {
        self.require("grad_norms", None, EventKind::TRAIN_BATCH_END)?;
        self.per_parameter("grad_norms", self.host.grad_norms().as_slice())
    }

    /// The L2 norm of each parameter, aligned with [`Context::parameters`]. Available
    /// everywhere.
    ///
    /// ```
    /// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) -> Result<(), vigil_plugin_api::Error> {
    /// let first = ctx.weight_norms()?[0];
    /// # Ok(()) }
    /// ```
    pub fn weight_norms(&self) -> Result<&[f64], Error> {
        self.per_parameter("weight_norms", self.host.weight_norms().as_slice())
    }

    /// `values`, or an error when the host sent none for a model that has parameters.
    fn per_parameter<'s, T>(&self, data: &str, values: &'s [T]) -> Result<&'s [T], Error> {
        if values.is_empty() && !self.parameters().is_empty() {
            return Err(Error::Host(format!(
                "no `{data}` at {} (computing them failed; the run's warnings say why)",
                self.event_name()
            )));
        }
        Ok(values)
    }

    /// All gradients flattened in parameter order, at `train_batch_end`, for a monitor that
    /// subscribed to [`Subscriptions::GRADIENT`]. The gradient is the one backward produced,
    /// before clipping and the optimizer step.
    ///
    /// ```
    /// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) -> Result<(), vigil_plugin_api::Error> {
    /// let gradient = ctx.gradient()?;
    /// let largest = gradient.iter().fold(0.0f32, |m, g| m.max(g.abs()));
    /// ctx.log("demo/largest_gradient", f64::from(largest));
    /// # Ok(()) }
    /// ```
    pub fn gradient(&self) -> Result<&[f32], Error> {
        self.require(
            "gradient",
            Some((Subscriptions::GRADIENT, "GRADIENT")),
            EventKind::TRAIN_BATCH_END,
        )?;
        self.per_parameter("gradient", self.host.gradient().as_slice())
    }

    /// `out = H · vector`, with `H` the Hessian of the mean loss on the probe subsample;
    /// returns the probe loss. `vector` and `out` hold one value per trainable scalar, in the
    /// order of the flattened gradient. Available everywhere.
    ///
    /// ```
    /// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) -> Result<(), vigil_plugin_api::Error> {
    /// use vigil_plugin_api::ProbeSpec;
    /// let n: u64 = ctx.parameters().iter().map(|p| p.numel).sum();
    /// let probe = ProbeSpec { samples: 256, max_batch_size: 256, seed: 0 };
    /// let v = vec![1.0f32; n as usize];
    /// let mut hv = vec![0.0f32; n as usize];
    /// ctx.hessian_vector_product(probe, &v, &mut hv)?;
    /// let curvature: f32 = v.iter().zip(&hv).map(|(a, b)| a * b).sum::<f32>() / n as f32;
    /// # Ok(()) }
    /// ```
    pub fn hessian_vector_product(
        &mut self,
        probe: ProbeSpec,
        vector: &[f32],
        out: &mut [f32],
    ) -> Result<f64, Error> {
        self.host
            .hessian_vector_product(
                probe,
                RSlice::from_slice(vector),
                RSliceMut::from_mut_slice(out),
            )
            .into_result()
            .map_err(|reason| Error::Host(reason.into_string()))
    }

    /// Mean loss on the probe subsample, in eval mode. Available everywhere.
    ///
    /// ```
    /// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) -> Result<(), vigil_plugin_api::Error> {
    /// let probe = vigil_plugin_api::ProbeSpec { samples: 64, max_batch_size: 64, seed: 1 };
    /// let loss = ctx.probe_loss(probe)?;
    /// # Ok(()) }
    /// ```
    pub fn probe_loss(&mut self, probe: ProbeSpec) -> Result<f64, Error> {
        self.host
            .probe_loss(probe)
            .into_result()
            .map_err(|reason| Error::Host(reason.into_string()))
    }

    /// The logits, predictions and labels of the current validation batch, at
    /// `validation_batch_end`, for a monitor that subscribed to
    /// [`Subscriptions::VALIDATION_OUTPUTS`].
    ///
    /// ```
    /// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) -> Result<(), vigil_plugin_api::Error> {
    /// let batch = ctx.validation_batch()?;
    /// let right = batch.predictions.iter().zip(batch.labels.iter()).filter(|(p, l)| p == l).count();
    /// # Ok(()) }
    /// ```
    pub fn validation_batch(&self) -> Result<ValidationBatch<'_>, Error> {
        self.require(
            "validation_batch",
            Some((Subscriptions::VALIDATION_OUTPUTS, "VALIDATION_OUTPUTS")),
            EventKind::VALIDATION_BATCH_END,
        )?;
        let batch = self.host.validation_batch();
        if batch.num_classes == 0 {
            return Err(Error::Host(
                "no validation batch at validation_batch_end".into(),
            ));
        }
        Ok(batch)
    }

    /// A few validation images (de-normalised to [0, 1]) with labels and predictions, at
    /// `validation_end`, for a monitor that subscribed to [`Subscriptions::SAMPLE_IMAGES`].
    /// `None` when the run's inputs are not images (feature vectors, float tensors).
    ///
    /// ```
    /// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) -> Result<(), vigil_plugin_api::Error> {
    /// let Some(images) = ctx.sample_images()? else {
    ///     return Ok(()); // nothing to draw in this run
    /// };
    /// let first_pixel = images.pixels[0];
    /// # Ok(()) }
    /// ```
    pub fn sample_images(&self) -> Result<Option<ImageBatch<'_>>, Error> {
        self.require(
            "sample_images",
            Some((Subscriptions::SAMPLE_IMAGES, "SAMPLE_IMAGES")),
            EventKind::VALIDATION_END,
        )?;
        let images = self.host.sample_images();
        Ok((images.count > 0).then_some(images))
    }

    /// Class names, indexed by label. Available everywhere.
    ///
    /// ```
    /// # fn hook(ctx: &vigil_plugin_api::Context<'_>) {
    /// let classes = ctx.class_names().len();
    /// # }
    /// ```
    pub fn class_names(&self) -> Vec<&str> {
        self.host
            .class_names()
            .as_slice()
            .iter()
            .map(RString::as_str)
            .collect()
    }

    /// What the training sampler drew for the epoch, at `train_epoch_start`, for a monitor
    /// that subscribed to [`Subscriptions::SAMPLER`]. `None` when the run's sampler keeps no
    /// weights (plain shuffling).
    ///
    /// ```
    /// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) -> Result<(), vigil_plugin_api::Error> {
    /// if let Some(draws) = ctx.sampler_draws()? {
    ///     ctx.log("demo/draws", draws.indices.len() as f64);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn sampler_draws(&self) -> Result<Option<SamplerDraws<'_>>, Error> {
        self.require(
            "sampler_draws",
            Some((Subscriptions::SAMPLER, "SAMPLER")),
            EventKind::TRAIN_EPOCH_START,
        )?;
        let draws = self.host.sampler_draws();
        Ok((!draws.indices.is_empty()).then_some(draws))
    }

    /// Record a scalar metric at the current step: it goes to `metrics.jsonl` (with the
    /// monitor's name), TensorBoard and the console. Non-finite values are dropped with a
    /// warning.
    ///
    /// ```
    /// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) {
    /// ctx.log("demo/answer", 42.0);
    /// # }
    /// ```
    pub fn log(&mut self, name: &str, value: f64) {
        self.host.log_scalar(RStr::from_str(name), value);
    }

    /// Write (replace, atomically) a file under the run's `artifacts/` directory. `path` is
    /// relative with `/` separators ([`check_artifact_path`]); `kind` routes it
    /// ([`ArtifactKind::PNG`] images also go to TensorBoard).
    ///
    /// ```
    /// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) -> Result<(), vigil_plugin_api::Error> {
    /// use vigil_plugin_api::ArtifactKind;
    /// let epoch = ctx.counters().epoch;
    /// ctx.write_file(&format!("demo/epoch_{epoch:03}.csv"), ArtifactKind::TEXT, b"step,loss\n")?;
    /// # Ok(()) }
    /// ```
    pub fn write_file(
        &mut self,
        path: &str,
        kind: ArtifactKind,
        bytes: &[u8],
    ) -> Result<(), Error> {
        self.write_artifact(path, kind, WriteMode::REPLACE, bytes)
    }

    /// Append to a file under the run's `artifacts/` directory, creating it if needed. On
    /// resume the host cuts the file back to its length at the checkpoint.
    ///
    /// ```
    /// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) -> Result<(), vigil_plugin_api::Error> {
    /// let line = format!("{}\n", ctx.counters().global_step);
    /// ctx.append_file("demo/steps.txt", vigil_plugin_api::ArtifactKind::TEXT, line.as_bytes())?;
    /// # Ok(()) }
    /// ```
    pub fn append_file(
        &mut self,
        path: &str,
        kind: ArtifactKind,
        bytes: &[u8],
    ) -> Result<(), Error> {
        self.write_artifact(path, kind, WriteMode::APPEND, bytes)
    }

    fn write_artifact(
        &mut self,
        path: &str,
        kind: ArtifactKind,
        mode: WriteMode,
        bytes: &[u8],
    ) -> Result<(), Error> {
        self.host
            .write_artifact(Artifact {
                path: RStr::from_str(path),
                bytes: RSlice::from_slice(bytes),
                kind,
                mode,
            })
            .into_result()
            .map_err(|reason| Error::Host(reason.into_string()))
    }

    /// Log a message under the monitor's name.
    ///
    /// ```
    /// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) {
    /// ctx.info("warm-up over");
    /// # }
    /// ```
    pub fn info(&mut self, message: &str) {
        self.host
            .log_message(LogLevel::INFO, RStr::from_str(message));
    }

    /// Log a warning under the monitor's name (also listed in `run.json`).
    ///
    /// ```
    /// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) {
    /// ctx.warn("the loss has not moved in 1000 steps");
    /// # }
    /// ```
    pub fn warn(&mut self, message: &str) {
        self.host
            .log_message(LogLevel::WARN, RStr::from_str(message));
    }

    /// Ask the host to stop training after the current step. The run ends as `stopped`, with
    /// the reason in `run.json`.
    ///
    /// ```
    /// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) {
    /// if ctx.metric("train_loss").is_some_and(f64::is_nan) {
    ///     ctx.request_stop("the loss is NaN");
    /// }
    /// # }
    /// ```
    pub fn request_stop(&mut self, reason: &str) {
        self.host.request_stop(RStr::from_str(reason));
    }

    /// A capability by name, with raw bytes in and out: the names and layouts are in
    /// [`crate::query`], and each has a typed method below. An unknown name is an error that
    /// lists the names the host knows.
    ///
    /// ```
    /// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) -> Result<(), vigil_plugin_api::Error> {
    /// let version = ctx.query(vigil_plugin_api::query::VERSION, &[])?;
    /// # Ok(()) }
    /// ```
    pub fn query(&mut self, name: &str, input: &[u8]) -> Result<Vec<u8>, Error> {
        self.host
            .query(RStr::from_str(name), RSlice::from_slice(input))
            .into_result()
            .map(|bytes| bytes.into_vec())
            .map_err(|reason| Error::Host(reason.into_string()))
    }

    /// The host's version ([`query::VERSION`](crate::query::VERSION)).
    ///
    /// ```
    /// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) -> Result<(), vigil_plugin_api::Error> {
    /// let version = ctx.host_version()?;
    /// ctx.info(&format!("running in vigil {version}"));
    /// # Ok(()) }
    /// ```
    pub fn host_version(&mut self) -> Result<String, Error> {
        let answer = self.query(query::VERSION, &[])?;
        query::decode_text(query::VERSION, &answer)
    }

    /// The run's artifact directory ([`query::ARTIFACT_DIR`](crate::query::ARTIFACT_DIR)), for
    /// a monitor that must say where its files are. Write files with
    /// [`Context::write_file`], not into this directory.
    ///
    /// ```
    /// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) -> Result<(), vigil_plugin_api::Error> {
    /// let dir = ctx.artifact_dir()?;
    /// ctx.info(&format!("plots go to {}", dir.display()));
    /// # Ok(()) }
    /// ```
    pub fn artifact_dir(&mut self) -> Result<std::path::PathBuf, Error> {
        let answer = self.query(query::ARTIFACT_DIR, &[])?;
        query::decode_text(query::ARTIFACT_DIR, &answer).map(Into::into)
    }

    /// The label of every training sample, in dataset order
    /// ([`query::TRAIN_LABELS`](crate::query::TRAIN_LABELS)).
    ///
    /// ```
    /// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) -> Result<(), vigil_plugin_api::Error> {
    /// let labels = ctx.train_labels()?;
    /// let zeros = labels.iter().filter(|&&l| l == 0).count();
    /// # Ok(()) }
    /// ```
    pub fn train_labels(&mut self) -> Result<Vec<i64>, Error> {
        query::decode_labels(&self.query(query::TRAIN_LABELS, &[])?)
    }

    /// The label of every validation sample, in dataset order
    /// ([`query::VAL_LABELS`](crate::query::VAL_LABELS)).
    ///
    /// ```
    /// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) -> Result<(), vigil_plugin_api::Error> {
    /// let samples = ctx.val_labels()?.len();
    /// # Ok(()) }
    /// ```
    pub fn val_labels(&mut self) -> Result<Vec<i64>, Error> {
        query::decode_labels(&self.query(query::VAL_LABELS, &[])?)
    }

    /// How many scalars the model holds
    /// ([`query::PARAMETER_COUNT`](crate::query::PARAMETER_COUNT)).
    ///
    /// ```
    /// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) -> Result<(), vigil_plugin_api::Error> {
    /// let count = ctx.parameter_count()?;
    /// ctx.log("demo/buffers", (count.total - count.trainable) as f64);
    /// # Ok(()) }
    /// ```
    pub fn parameter_count(&mut self) -> Result<ParameterCount, Error> {
        ParameterCount::decode(&self.query(query::PARAMETER_COUNT, &[])?)
    }

    /// Fold this step's gradient into the monitor's moving averages with decay `beta`, kept
    /// by the host where the gradient lives (at `train_batch_end`;
    /// [`query::GRADIENT_EMA_UPDATE`](crate::query::GRADIENT_EMA_UPDATE)).
    ///
    /// ```
    /// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) -> Result<(), vigil_plugin_api::Error> {
    /// ctx.update_gradient_ema(0.99)?;
    /// let averages = ctx.gradient_ema()?;
    /// let corrected = averages.mean_square / (1.0 - averages.beta.powi(averages.updates as i32));
    /// # Ok(()) }
    /// ```
    pub fn update_gradient_ema(&mut self, beta: f64) -> Result<(), Error> {
        self.query(query::GRADIENT_EMA_UPDATE, &query::encode_decay(beta))
            .map(drop)
    }

    /// The monitor's gradient averages so far ([`query::GRADIENT_EMA`](crate::query::GRADIENT_EMA));
    /// an error before the first [`Context::update_gradient_ema`].
    pub fn gradient_ema(&mut self) -> Result<GradientEma, Error> {
        GradientEma::decode(&self.query(query::GRADIENT_EMA, &[])?)
    }
}

/// Check an artifact path as the host does: relative, `/`-separated, plain components only
/// (no `..`, no root), at most 512 bytes.
///
/// ```
/// use vigil_plugin_api::check_artifact_path;
/// assert!(check_artifact_path("epoch_001/plot.png").is_ok());
/// assert!(check_artifact_path("../outside.txt").is_err());
/// assert!(check_artifact_path("/etc/passwd").is_err());
/// ```
pub fn check_artifact_path(path: &str) -> Result<(), String> {
    use std::path::{Component, Path};
    let plain = !path.is_empty()
        && path.len() <= 512
        && Path::new(path)
            .components()
            .all(|component| matches!(component, Component::Normal(_)));
    if plain {
        Ok(())
    } else {
        Err(format!(
            "artifact path `{path}` must be relative, without `..`, and at most 512 bytes"
        ))
    }
}
