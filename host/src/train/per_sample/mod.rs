//! Statistics of the individual gradients and the parameters' motion, for monitors that
//! subscribed to `PER_SAMPLE` or `PARAMETER_MOTION` (`vigil_plugin_api::per_sample`).
//!
//! At a step some subscriber scheduled, the forward pass records every linear and
//! convolution layer ([`crate::model::taps`]); after the backward pass each layer's input and
//! output gradient are kept ([`layers`]) and the queries are answered from them on demand,
//! once per step whoever asks. A model whose trainable parameters are not all inside such
//! layers (batch norm) has no individual gradients: the queries say so. A TorchScript model
//! runs one backward pass per sample instead ([`explicit`]).
//!
//! Around the optimizer step of a step a `PARAMETER_MOTION` subscriber scheduled, the
//! weights before it are kept, and the update `d = θ_{s+1} − θ_s` with this step's
//! individual gradients projected on it is answered at the next steps.

mod binning;
mod explicit;
mod layers;
mod stats;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::collections::HashMap;

use tch::{Kind, Tensor};
use vigil_plugin_api::per_sample::{LastUpdate, Schedule};

use crate::error::{Error, Result};
use crate::model::taps::Tap;
use crate::model::Network;

use layers::Layer;
use stats::Source;

/// Which data a step gathers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Arming {
    pub per_sample: bool,
    pub motion: bool,
}

/// One step's individual gradients, and what has been computed from them.
pub(super) struct Captured {
    pub step: u64,
    source: Source,
    pub losses: Tensor,
    cache: RefCell<stats::Cache>,
}

/// The update a motion step made.
struct Update {
    step: u64,
    direction: Vec<Tensor>,
    sq_norms: Vec<f64>,
    before: Vec<f64>,
}

/// What the trainer keeps for per-sample and motion subscribers.
#[derive(Default)]
pub(super) struct PerSample {
    /// Each monitor's schedule, by monitor index; a subscriber without one is served every
    /// step.
    schedules: RefCell<HashMap<usize, Schedule>>,
    /// Subscribers, by monitor index: (per-sample, motion).
    subscribers: (Vec<usize>, Vec<usize>),
    captured: Option<Captured>,
    /// Why this model has no individual gradients, once found.
    undefined: Option<String>,
    initial: Option<Vec<Tensor>>,
    before_step: Option<Vec<Tensor>>,
    update: Option<Update>,
}

impl PerSample {
    /// Learn the subscribers (monitor indices) of each kind of data.
    pub fn set_subscribers(&mut self, per_sample: Vec<usize>, motion: Vec<usize>) {
        self.subscribers = (per_sample, motion);
    }

    pub fn wanted(&self) -> bool {
        !self.subscribers.0.is_empty() || !self.subscribers.1.is_empty()
    }

    /// A monitor's schedule (the `vigil.per_sample.schedule` query).
    pub fn schedule(&self, monitor: usize, schedule: Schedule) {
        self.schedules.borrow_mut().insert(monitor, schedule);
    }

    fn covers(&self, monitors: &[usize], step: u64) -> bool {
        let schedules = self.schedules.borrow();
        monitors.iter().any(|monitor| {
            schedules
                .get(monitor)
                .copied()
                .unwrap_or(Schedule::EVERY_STEP)
                .covers(step)
        })
    }

    /// What step `step` gathers; forgets the previous step's individual gradients.
    pub fn arm(&mut self, step: u64) -> Arming {
        self.captured = None;
        Arming {
            per_sample: self.covers(&self.subscribers.0, step),
            motion: self.covers(&self.subscribers.1, step),
        }
    }

    /// Keep the weights training starts from (`θ₀`) for `PARAMETER_MOTION` subscribers: those
    /// a resume restored ([`PerSample::restore`]), else the weights now. `false` when a resumed
    /// run's checkpoint held none, so that the distance counts from where it resumes.
    pub fn keep_initial(&mut self, parameters: &[Tensor], resumed: bool) -> Result<bool> {
        if self.subscribers.1.is_empty() {
            self.initial = None;
            return Ok(true);
        }
        if self.initial.is_some() {
            return Ok(true);
        }
        self.initial = Some(copies(parameters)?);
        Ok(!resumed)
    }

    /// After the backward pass of a per-sample step: keep each recorded layer's input and
    /// output gradient, or (a TorchScript model) the explicit individual gradients.
    #[allow(clippy::too_many_arguments)]
    pub fn capture(
        &mut self,
        step: u64,
        taps: Vec<Tap>,
        model: &Network,
        parameters: &[Tensor],
        names: &[String],
        (logits, images, labels): (&Tensor, &Tensor, &Tensor),
    ) -> Result<()> {
        let losses = tch::no_grad(|| {
            super::loss::cross_entropy(&logits.detach(), labels, tch::Reduction::None)
        })?
        .f_to_kind(Kind::Double)?;
        let source = if model.scripted().is_some() {
            Source::Explicit(explicit::individual_gradients(
                model, parameters, images, labels,
            )?)
        } else {
            match layers_of(taps, parameters, names) {
                Ok(layers) => Source::Layers(layers),
                Err(reason) => {
                    self.undefined = Some(reason.clone());
                    Source::Undefined(reason)
                }
            }
        };
        self.captured = Some(Captured {
            step,
            source,
            losses,
            cache: RefCell::new(stats::Cache::default()),
        });
        Ok(())
    }

    /// This step's individual gradients, or why there are none.
    pub fn captured(&self, step: u64) -> Result<&Captured> {
        match &self.captured {
            Some(captured) if captured.step == step => match &captured.source {
                Source::Undefined(reason) => Err(Error::Capability(reason.clone())),
                _ => Ok(captured),
            },
            _ => Err(Error::Capability(format!(
                "no individual gradients at step {step}: they exist at train_batch_end of the steps a PER_SAMPLE subscriber scheduled{}",
                self.undefined.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
            ))),
        }
    }

    /// Before the optimizer step of a motion step: keep the weights.
    pub fn before_step(&mut self, parameters: &[Tensor]) -> Result<()> {
        self.before_step = Some(copies(parameters)?);
        Ok(())
    }

    /// After the optimizer step: the update it made, and this step's individual gradients
    /// projected on it.
    pub fn after_step(&mut self, step: u64, parameters: &[Tensor]) -> Result<()> {
        let Some(before) = self.before_step.take() else {
            return Ok(());
        };
        let _no_grad = tch::no_grad_guard();
        let direction = parameters
            .iter()
            .zip(&before)
            .map(|(now, then)| Ok(now.f_sub(then)?))
            .collect::<Result<Vec<_>>>()?;
        let sq_norms = sq_norms(&direction)?;
        let before = match self.captured(step) {
            Ok(captured) => captured.project(&direction)?,
            Err(_) => Vec::new(),
        };
        self.update = Some(Update {
            step,
            direction,
            sq_norms,
            before,
        });
        Ok(())
    }

    /// The last update, with this step's individual gradients projected on it when this step
    /// follows it and has them.
    pub fn last_update(&self, step: u64) -> Result<LastUpdate> {
        let update = self.update.as_ref().ok_or_else(|| {
            Error::Capability(
                "no update yet: it is kept at the steps a PARAMETER_MOTION subscriber scheduled and answered after them".into(),
            )
        })?;
        let after = match self.captured(step) {
            Ok(captured) if update.step + 1 == step => captured.project(&update.direction)?,
            _ => Vec::new(),
        };
        Ok(LastUpdate {
            step: update.step,
            sq_norms: update.sq_norms.clone(),
            before: update.before.clone(),
            after,
        })
    }

    /// What a checkpoint keeps (its host tensors): `θ₀` as `initial.<parameter>`, and the
    /// last update as `last_update.<parameter>` for `d` with `last_update.#step` and
    /// `last_update.#before`, so that a resumed run measures from the same start and its first
    /// step answers the update as the uninterrupted run would.
    pub fn checkpoint_tensors(&self, names: &[String]) -> Result<Vec<(String, Tensor)>> {
        let mut tensors = Vec::new();
        if let Some(initial) = &self.initial {
            tensors.extend(named(INITIAL, names, initial));
        }
        if let Some(update) = &self.update {
            tensors.extend(named(LAST_UPDATE, names, &update.direction));
            tensors.push((
                format!("{LAST_UPDATE}#step"),
                Tensor::f_from_slice(&[update.step as i64])?,
            ));
            tensors.push((
                format!("{LAST_UPDATE}#before"),
                Tensor::f_from_slice(&update.before)?,
            ));
        }
        Ok(tensors)
    }

    /// Take back what [`PerSample::checkpoint_tensors`] saved; a part not all there is left out.
    pub fn restore(
        &mut self,
        names: &[String],
        tensors: &[(String, Tensor)],
        device: tch::Device,
    ) -> Result<()> {
        self.initial = found(INITIAL, names, tensors, device)?;
        let find = |key: String| tensors.iter().find(|(k, _)| *k == key).map(|(_, t)| t);
        let (Some(direction), Some(step), Some(before)) = (
            found(LAST_UPDATE, names, tensors, device)?,
            find(format!("{LAST_UPDATE}#step")),
            find(format!("{LAST_UPDATE}#before")),
        ) else {
            return Ok(());
        };
        self.update = Some(Update {
            step: step.f_int64_value(&[0])? as u64,
            sq_norms: sq_norms(&direction)?,
            direction,
            before: Vec::<f64>::try_from(&before.f_to_kind(Kind::Double)?)?,
        });
        Ok(())
    }

    /// `‖θ − θ₀‖` per parameter.
    pub fn distance(&self, parameters: &[Tensor]) -> Result<Vec<f64>> {
        let initial = self.initial.as_ref().ok_or_else(|| {
            Error::Capability(
                "no initial weights kept: subscribe to PARAMETER_MOTION for the distance from them"
                    .into(),
            )
        })?;
        let _no_grad = tch::no_grad_guard();
        parameters
            .iter()
            .zip(initial)
            .map(|(now, then)| Ok(now.f_sub(then)?.f_norm()?.f_double_value(&[])?))
            .collect()
    }
}

/// The prefixes of the initial weights and of the last update among a checkpoint's host
/// tensors.
const INITIAL: &str = "initial.";
const LAST_UPDATE: &str = "last_update.";

/// `tensors` named `<prefix><parameter>`.
fn named(prefix: &str, names: &[String], tensors: &[Tensor]) -> Vec<(String, Tensor)> {
    names
        .iter()
        .zip(tensors)
        .map(|(name, t)| (format!("{prefix}{name}"), t.shallow_clone()))
        .collect()
}

/// The tensors named `<prefix><parameter>` for every parameter, in parameter order, on
/// `device`; `None` unless all are there.
fn found(
    prefix: &str,
    names: &[String],
    tensors: &[(String, Tensor)],
    device: tch::Device,
) -> Result<Option<Vec<Tensor>>> {
    let found: Option<Vec<&Tensor>> = names
        .iter()
        .map(|name| {
            let key = format!("{prefix}{name}");
            tensors.iter().find(|(k, _)| *k == key).map(|(_, t)| t)
        })
        .collect();
    found
        .map(|all| {
            all.into_iter()
                .map(|t| Ok(t.f_to_device(device)?))
                .collect()
        })
        .transpose()
}

/// `‖d‖²` of each tensor.
fn sq_norms(tensors: &[Tensor]) -> Result<Vec<f64>> {
    tensors
        .iter()
        .map(|d| Ok(d.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])?))
        .collect()
}

fn copies(parameters: &[Tensor]) -> Result<Vec<Tensor>> {
    let _no_grad = tch::no_grad_guard();
    parameters
        .iter()
        .map(|p| Ok(p.f_detach()?.copy()))
        .collect()
}

/// Match recorded layers to the trainable parameters; an error naming the parameters no
/// recorded layer holds (batch norm), or a layer called twice.
fn layers_of(
    taps: Vec<Tap>,
    parameters: &[Tensor],
    names: &[String],
) -> std::result::Result<Vec<Layer>, String> {
    let index: HashMap<usize, usize> = parameters
        .iter()
        .enumerate()
        .map(|(i, p)| (p.data_ptr() as usize, i))
        .collect();
    let mut covered = vec![false; parameters.len()];
    let mut layers = Vec::with_capacity(taps.len());
    for tap in taps {
        let find = |t: &Tensor| index.get(&(t.data_ptr() as usize)).copied();
        let Some(weight) = find(&tap.weight) else {
            continue;
        };
        let bias = tap.bias.as_ref().and_then(find);
        for i in std::iter::once(weight).chain(bias) {
            if std::mem::replace(&mut covered[i], true) {
                return Err(format!(
                    "individual gradients are not computed for a layer called twice in one forward pass (`{}`)",
                    names[i]
                ));
            }
        }
        let grad = tap.probe.grad();
        if !grad.defined() {
            covered[weight] = false;
            continue;
        }
        layers.push(
            Layer::new(tap.op, (weight, bias), tap.weight.size(), &tap.input, &grad)
                .map_err(|err| err.to_string())?,
        );
    }
    let missing: Vec<&str> = covered
        .iter()
        .zip(names)
        .filter(|(covered, _)| !**covered)
        .map(|(_, name)| name.as_str())
        .collect();
    if missing.is_empty() {
        return Ok(layers);
    }
    Err(format!(
        "individual gradients are not defined for this model: {} {} not inside a linear or convolution layer (batch norm in training mode mixes the samples of a batch); set model.norm = \"none\" for per-sample instruments",
        missing.iter().take(4).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
            + if missing.len() > 4 { ", …" } else { "" },
        if missing.len() == 1 { "is" } else { "are" }
    ))
}
