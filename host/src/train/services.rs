//! What the trainer computes for monitors on request: norms, the flattened gradient, and
//! Hessian-vector products on a fixed probe subsample.

use std::cell::RefCell;
use std::collections::HashMap;

use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};
use vigil_plugin_api::{ParameterInfo, ProbeSpec};

use super::TensorSplit;
use crate::error::{Error, Result};
use crate::plugin::HostServices;
use crate::rng::SplitMix64;

/// The probe subsamples drawn so far, by spec.
#[derive(Default)]
pub(super) struct ProbeCache {
    batches: RefCell<HashMap<ProbeSpec, (Tensor, Tensor)>>,
}

/// A borrowed view of the trainer's model, parameters and data.
pub(super) struct TrainerServices<'a> {
    pub model: &'a dyn ModuleT,
    pub parameters: &'a [Tensor],
    pub train: &'a TensorSplit,
    pub probes: &'a ProbeCache,
    pub device: Device,
}

/// Names and shapes of `parameters`, matched to the var store's names by storage.
pub(super) fn parameter_infos(
    vars: &tch::nn::VarStore,
    parameters: &[Tensor],
) -> Vec<ParameterInfo> {
    let named = vars.variables();
    let by_storage: HashMap<usize, &String> = named
        .iter()
        .map(|(name, tensor)| (tensor.data_ptr() as usize, name))
        .collect();
    parameters
        .iter()
        .enumerate()
        .map(|(index, tensor)| {
            let shape: Vec<u64> = tensor.size().iter().map(|&d| d as u64).collect();
            ParameterInfo {
                name: by_storage
                    .get(&(tensor.data_ptr() as usize))
                    .map_or_else(|| format!("param{index}"), |name| name.to_string())
                    .into(),
                numel: shape.iter().product(),
                shape: shape.into(),
            }
        })
        .collect()
}

impl TrainerServices<'_> {
    /// L2 norms of `tensors`, computed on the device and copied back in one transfer.
    fn norms(&self, tensors: impl Iterator<Item = Result<Tensor>>) -> Result<Vec<f64>> {
        let norms = tensors
            .map(|tensor| Ok(tensor?.f_norm()?.f_to_kind(Kind::Double)?))
            .collect::<Result<Vec<Tensor>>>()?;
        if norms.is_empty() {
            return Ok(Vec::new());
        }
        let stacked = Tensor::f_stack(&norms, 0)?.f_to_device(Device::Cpu)?;
        Ok(Vec::<f64>::try_from(&stacked)?)
    }

    fn grad_or_zeros(parameter: &Tensor) -> Result<Tensor> {
        let grad = parameter.grad();
        if grad.defined() {
            Ok(grad)
        } else {
            Ok(parameter.f_zeros_like()?)
        }
    }

    /// The probe subsample for `spec`: `samples` training examples drawn without replacement
    /// from `spec.seed`, drawn once and cached.
    fn probe(&self, spec: &ProbeSpec) -> Result<(Tensor, Tensor)> {
        if spec.samples == 0 || spec.max_batch_size == 0 {
            return Err(Error::Capability(format!(
                "probe needs samples ≥ 1 and max_batch_size ≥ 1 (got {} and {})",
                spec.samples, spec.max_batch_size
            )));
        }
        if let Some((images, labels)) = self.probes.batches.borrow().get(spec) {
            return Ok((images.shallow_clone(), labels.shallow_clone()));
        }
        let available = self.train.len() as usize;
        let count = (spec.samples as usize).min(available);
        let mut order = SplitMix64::derived(spec.seed, "probe").permutation(available);
        order.truncate(count);
        let indices = Tensor::f_from_slice(&order)?.f_to_device(self.device)?;
        let images = self.train.images.f_index_select(0, &indices)?;
        let labels = self.train.labels.f_index_select(0, &indices)?;
        self.probes
            .batches
            .borrow_mut()
            .insert(*spec, (images.shallow_clone(), labels.shallow_clone()));
        Ok((images, labels))
    }

    /// Mean loss of one probe chunk, with the model in eval mode for this forward pass only
    /// (training forward passes keep theirs).
    fn probe_chunk_loss(&self, images: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let logits = self.model.forward_t(images, false);
        super::cross_entropy(&logits, labels, tch::Reduction::Mean)
    }

    /// Run `per_chunk(images, labels, weight)` over the probe in chunks of at most
    /// `max_batch_size`, where `weight` is the chunk's share of the probe.
    fn over_probe(
        &self,
        spec: &ProbeSpec,
        mut per_chunk: impl FnMut(&Tensor, &Tensor, f64) -> Result<()>,
    ) -> Result<()> {
        let (images, labels) = self.probe(spec)?;
        let total = labels.size()[0];
        let chunk = i64::from(spec.max_batch_size);
        let mut start = 0;
        while start < total {
            let size = chunk.min(total - start);
            per_chunk(
                &images.f_narrow(0, start, size)?,
                &labels.f_narrow(0, start, size)?,
                size as f64 / total as f64,
            )?;
            start += size;
        }
        Ok(())
    }
}

/// `(loss, H·d)` for the mean cross-entropy of `model` (in eval mode) on one batch, with
/// respect to `parameters`, by double backward: the gradient is built with a graph, its dot
/// product with the directions `d` (one tensor per parameter, shaped like it) is
/// differentiated again, and no graph outlives the call.
pub fn batch_hessian_vector_product(
    model: &dyn ModuleT,
    parameters: &[Tensor],
    images: &Tensor,
    labels: &Tensor,
    directions: &[Tensor],
) -> Result<(f64, Vec<Tensor>)> {
    let logits = model.forward_t(images, false);
    let loss = super::cross_entropy(&logits, labels, tch::Reduction::Mean)?;
    let grads = Tensor::f_run_backward(&[&loss], parameters, true, true)?;
    let mut dot = Tensor::f_zeros([], (Kind::Float, images.device()))?;
    for (grad, direction) in grads.iter().zip(directions) {
        dot = dot.f_add(&grad.f_mul(direction)?.f_sum(Kind::Float)?)?;
    }
    let product = Tensor::f_run_backward(&[&dot], parameters, false, false)?;
    Ok((loss.f_double_value(&[])?, product))
}

impl HostServices for TrainerServices<'_> {
    fn grad_norms(&self) -> Result<Vec<f64>> {
        self.norms(self.parameters.iter().map(Self::grad_or_zeros))
    }

    fn weight_norms(&self) -> Result<Vec<f64>> {
        let _no_grad = tch::no_grad_guard();
        self.norms(self.parameters.iter().map(|p| Ok(p.shallow_clone())))
    }

    fn gradient(&self) -> Result<Vec<f32>> {
        let flat = self
            .parameters
            .iter()
            .map(|p| Ok(Self::grad_or_zeros(p)?.f_reshape([-1])?))
            .collect::<Result<Vec<Tensor>>>()?;
        let joined = Tensor::f_cat(&flat, 0)?
            .f_to_kind(Kind::Float)?
            .f_to_device(Device::Cpu)?;
        Ok(Vec::<f32>::try_from(&joined)?)
    }

    fn hessian_vector_product(
        &self,
        probe: &ProbeSpec,
        vector: &[f32],
        out: &mut [f32],
    ) -> Result<f64> {
        let numels: Vec<i64> = self.parameters.iter().map(|p| p.numel() as i64).collect();
        let flat = Tensor::f_from_slice(vector)?.f_to_device(self.device)?;
        let pieces = flat.f_split_with_sizes(&numels, 0)?;
        let directions = pieces
            .iter()
            .zip(self.parameters)
            .map(|(piece, p)| Ok(piece.f_view(p.size().as_slice())?.f_to_kind(p.kind())?))
            .collect::<Result<Vec<Tensor>>>()?;
        let mut product: Option<Tensor> = None;
        let mut loss_sum = 0.0;
        self.over_probe(probe, |images, labels, weight| {
            let (loss, hv) = batch_hessian_vector_product(
                self.model,
                self.parameters,
                images,
                labels,
                &directions,
            )?;
            loss_sum += loss * weight;
            let hv_flat =
                Tensor::f_cat(&hv.iter().map(|t| t.reshape([-1])).collect::<Vec<_>>(), 0)?
                    .f_mul_scalar(weight)?;
            product = Some(match product.take() {
                Some(sum) => sum.f_add(&hv_flat)?,
                None => hv_flat,
            });
            Ok(())
        })?;
        let product = product
            .ok_or_else(|| Error::Capability("the probe subsample is empty".into()))?
            .f_to_kind(Kind::Float)?
            .f_to_device(Device::Cpu)?;
        product.f_copy_data(out, out.len())?;
        Ok(loss_sum)
    }

    fn probe_loss(&self, probe: &ProbeSpec) -> Result<f64> {
        let _no_grad = tch::no_grad_guard();
        let mut loss_sum = 0.0;
        self.over_probe(probe, |images, labels, weight| {
            loss_sum += self.probe_chunk_loss(images, labels)?.f_double_value(&[])? * weight;
            Ok(())
        })?;
        Ok(loss_sum)
    }
}
