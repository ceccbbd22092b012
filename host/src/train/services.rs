//! What the trainer computes for monitors on request ([`HostServices`]): norms, the
//! flattened gradient, Hessian-vector products on a fixed probe subsample ([`super::hessian`])
//! and moving averages of the gradient ([`super::averages`]).

use std::collections::HashMap;
use std::time::Instant;

use tch::{Device, Kind, Tensor};
use vigil_plugin_api::{ParameterInfo, ProbeSpec};

use super::averages::{squared_norm, GradientAverages, GradientEma};
use super::hessian::{
    batch_hessian_vector_product, gradient_with_graph, hessian_times, write_flat, ProbeCache,
    ProbeGraph,
};
use super::TensorSplit;
use crate::error::{Error, Result};
use crate::plugin::HostServices;
use crate::rng::SplitMix64;
use vigil_plugin_api::per_sample::{
    HistogramSpec, Histograms, LastUpdate, PerSampleStats, Schedule,
};
use vigil_plugin_api::GradientEma as EmaAnswer;

/// A borrowed view of the trainer's model, parameters and data.
pub(super) struct TrainerServices<'a> {
    pub model: &'a crate::model::Network,
    pub parameters: &'a [Tensor],
    pub train: &'a TensorSplit,
    pub probes: &'a ProbeCache,
    pub averages: &'a GradientAverages,
    pub device: Device,
    pub flat_grads: Option<&'a Tensor>,
    pub per_sample: &'a super::per_sample::PerSample,
    /// The global step of the event being served.
    pub step: u64,
}

/// Make every parameter's gradient a slice of one flat tensor, in parameter order, so that
/// the flattened gradient monitors subscribe to is that tensor itself, with no copy on the
/// CPU. Backward passes accumulate into existing gradients in place, and the optimizer zeroes
/// them in place, so the aliasing lasts. Each gradient takes its parameter's strides (the
/// layout autograd expects of it: a channels-last weight's slice is in channels-last order),
/// so the flat tensor is in logical order only while every parameter is contiguous; readers
/// check [`all_contiguous`]. `None` (nothing changed) while some gradient is undefined or not
/// `f32`.
pub(super) fn flatten_grads(parameters: &[Tensor]) -> Result<Option<Tensor>> {
    let _no_grad = tch::no_grad_guard();
    let mut grads = Vec::with_capacity(parameters.len());
    for parameter in parameters {
        let grad = parameter.grad();
        if !grad.defined() || grad.kind() != Kind::Float {
            return Ok(None);
        }
        grads.push(grad);
    }
    let Some(first) = grads.first() else {
        return Ok(None);
    };
    let total: i64 = grads.iter().map(|g| g.numel() as i64).sum();
    let flat = Tensor::f_zeros([total], (Kind::Float, first.device()))?;
    let mut offset = 0;
    for (grad, parameter) in grads.iter_mut().zip(parameters) {
        let numel = grad.numel() as i64;
        let (shape, strides) = (parameter.size(), parameter.stride());
        let mut slice = flat.f_as_strided(&shape, &strides, offset)?;
        slice.f_copy_(grad)?;
        let _ = grad.f_set_source_tensor_storage_offset_(&flat, offset, &shape, &strides)?;
        offset += numel;
    }
    Ok(Some(flat))
}

/// Whether every parameter is contiguous, so that the flat gradient's order is every
/// parameter's logical (row-major) order. A parameter with other dense strides
/// (channels-last, `model::use_channels_last`) is not.
fn all_contiguous(parameters: &[Tensor]) -> bool {
    parameters.iter().all(Tensor::is_contiguous)
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
        let images = self.train.gather(&order, &indices)?;
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
        let logits = self.model.forward(images, false)?;
        super::loss::cross_entropy(&logits, labels, tch::Reduction::Mean)
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

impl HostServices for TrainerServices<'_> {
    fn schedule_per_sample(&self, owner: usize, schedule: Schedule) -> Result<()> {
        self.per_sample.schedule(owner, schedule);
        Ok(())
    }

    fn per_sample_stats(&self) -> Result<PerSampleStats> {
        self.per_sample.captured(self.step)?.stats(self.parameters)
    }

    fn per_sample_second_moment(&self) -> Result<Vec<f32>> {
        self.per_sample
            .captured(self.step)?
            .second_moment(self.parameters)
    }

    fn per_sample_histograms(&self, spec: &HistogramSpec) -> Result<Histograms> {
        self.per_sample
            .captured(self.step)?
            .histograms(self.parameters, spec)
    }

    fn last_update(&self) -> Result<LastUpdate> {
        self.per_sample.last_update(self.step)
    }

    fn distance_from_init(&self) -> Result<Vec<f64>> {
        self.per_sample.distance(self.parameters)
    }

    fn grad_norms(&self) -> Result<Vec<f64>> {
        self.norms(self.parameters.iter().map(Self::grad_or_zeros))
    }

    fn weight_norms(&self) -> Result<Vec<f64>> {
        let _no_grad = tch::no_grad_guard();
        self.norms(self.parameters.iter().map(|p| Ok(p.shallow_clone())))
    }

    fn gradient_view(&self) -> Option<&[f32]> {
        let flat = self.flat_grads?;
        if flat.device() != Device::Cpu
            || flat.kind() != Kind::Float
            || !flat.is_contiguous()
            || !all_contiguous(self.parameters)
        {
            return None;
        }
        // SAFETY: `flat` is a contiguous CPU f32 tensor of `numel` elements that lives as long
        // as the trainer this view borrows. Nothing writes to it while the view is borrowed:
        // gradients change only in the trainer's backward passes and optimizer steps, which
        // need the trainer mutably, and Hessian-vector products differentiate into fresh
        // tensors.
        Some(unsafe { std::slice::from_raw_parts(flat.data_ptr() as *const f32, flat.numel()) })
    }

    fn gradient_into(&self, out: &mut Vec<f32>) -> Result<()> {
        if let Some(flat) = self.flat_grads.filter(|_| all_contiguous(self.parameters)) {
            out.resize(flat.numel(), 0.0);
            return Ok(flat
                .f_to_kind(Kind::Float)?
                .f_copy_data(out, flat.numel())?);
        }
        let total: usize = self.parameters.iter().map(Tensor::numel).sum();
        out.resize(total, 0.0);
        write_flat(self.parameters.iter().map(Self::grad_or_zeros), out)
    }

    fn hessian_vector_product(
        &self,
        probe: &ProbeSpec,
        vector: &[f32],
        out: &mut [f32],
    ) -> Result<f64> {
        let started = Instant::now();
        let loss = self.hvp_into(probe, vector, out)?;
        let (count, time) = self.probes.hvps.get();
        self.probes.hvps.set((count + 1, time + started.elapsed()));
        Ok(loss)
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

    fn release_probe_state(&self) {
        self.probes.release_graph();
    }

    fn update_gradient_ema(&self, owner: usize, beta: f64, step: u64) -> Result<()> {
        if !(0.0..1.0).contains(&beta) {
            return Err(Error::Capability(format!(
                "the decay must be in [0, 1), got {beta}"
            )));
        }
        let _no_grad = tch::no_grad_guard();
        let numel: i64 = self.parameters.iter().map(Tensor::numel).sum::<usize>() as i64;
        let mut averages = self.averages.0.borrow_mut();
        let fresh = averages
            .get(&owner)
            .is_none_or(|ema| ema.beta != beta || ema.mean.numel() as i64 != numel);
        if fresh {
            averages.insert(
                owner,
                GradientEma {
                    beta,
                    mean: Tensor::f_zeros([numel], (Kind::Float, self.device))?,
                    mean_square: 0.0,
                    updates: 0,
                    last_step: None,
                },
            );
        }
        let ema = averages.get_mut(&owner).expect("inserted above");
        if ema.last_step == Some(step) {
            return Ok(());
        }
        // One fused, parallel pass per tensor: mean += (1 − β)(g − mean).
        let weight = 1.0 - beta;
        let square_sum = match self.flat_grads {
            Some(flat) => {
                let _ = ema.mean.f_lerp_(flat, weight)?;
                squared_norm(flat)?
            }
            None => {
                let mut sum = Tensor::f_zeros([], (Kind::Float, self.device))?;
                let mut offset = 0;
                for parameter in self.parameters {
                    let grad = Self::grad_or_zeros(parameter)?
                        .f_reshape([-1])?
                        .f_to_kind(Kind::Float)?;
                    let count = grad.numel() as i64;
                    let _ = ema
                        .mean
                        .f_narrow(0, offset, count)?
                        .f_lerp_(&grad, weight)?;
                    sum = sum.f_add(&squared_norm(&grad)?)?;
                    offset += count;
                }
                sum
            }
        };
        // One number read back per step: the training loop reads its loss every step anyway,
        // and four operations on a 0-d tensor cost more than the sync on the CPU.
        let mean_square = square_sum.f_double_value(&[])? / numel.max(1) as f64;
        ema.mean_square = beta * ema.mean_square + weight * mean_square;
        ema.updates += 1;
        ema.last_step = Some(step);
        Ok(())
    }

    fn gradient_ema(&self, owner: usize) -> Result<Option<EmaAnswer>> {
        let _no_grad = tch::no_grad_guard();
        let averages = self.averages.0.borrow();
        let Some(ema) = averages.get(&owner) else {
            return Ok(None);
        };
        let numel = ema.mean.numel();
        Ok(Some(EmaAnswer {
            updates: ema.updates,
            numel: numel as u64,
            beta: ema.beta,
            mean_square: ema.mean_square,
            squared_mean: squared_norm(&ema.mean)?.f_double_value(&[])? / numel.max(1) as f64,
        }))
    }
}

impl TrainerServices<'_> {
    /// `H·vector` over the probe into `out`; returns the probe loss.
    fn hvp_into(&self, probe: &ProbeSpec, vector: &[f32], out: &mut [f32]) -> Result<f64> {
        let numels: Vec<i64> = self.parameters.iter().map(|p| p.numel() as i64).collect();
        let flat = Tensor::f_from_slice(vector)?.f_to_device(self.device)?;
        let pieces = flat.f_split_with_sizes(&numels, 0)?;
        let directions = pieces
            .iter()
            .zip(self.parameters)
            .map(|(piece, p)| Ok(piece.f_view(p.size().as_slice())?.f_to_kind(p.kind())?))
            .collect::<Result<Vec<Tensor>>>()?;
        if probe.samples <= probe.max_batch_size {
            return self.one_chunk_hvp(probe, &directions, out);
        }
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

    /// `H·directions` for a probe that fits in one forward pass, keeping the gradient graph
    /// for the next product of the same hook (released by
    /// [`HostServices::release_probe_state`]).
    fn one_chunk_hvp(
        &self,
        probe: &ProbeSpec,
        directions: &[Tensor],
        out: &mut [f32],
    ) -> Result<f64> {
        let mut kept = self.probes.graph.borrow_mut();
        if kept.as_ref().is_none_or(|graph| graph.spec != *probe) {
            let (images, labels) = self.probe(probe)?;
            let (loss, grads) = gradient_with_graph(self.model, self.parameters, &images, &labels)?;
            *kept = Some(ProbeGraph {
                spec: *probe,
                loss,
                grads,
            });
        }
        let graph = kept.as_ref().expect("the graph was just built");
        let product = hessian_times(&graph.grads, self.parameters, directions, true)?;
        write_flat(product.into_iter().map(Ok), out)?;
        Ok(graph.loss)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{self, Module, ModuleT};

    /// A training split with nothing in it, for services that read no data.
    fn empty_split() -> TensorSplit {
        TensorSplit::new(
            &crate::data::ImageSet::empty(1, 1, 1),
            &[0.0],
            &[1.0],
            Device::Cpu,
            1,
        )
        .unwrap()
    }

    fn concatenated_grads(parameters: &[Tensor]) -> Vec<f32> {
        parameters
            .iter()
            .flat_map(|p| Vec::<f32>::try_from(&p.grad().reshape([-1])).unwrap())
            .collect()
    }

    /// A resumed run holds the same values in new buffers: the sum of squares must not
    /// depend on where they lie (BLAS `dot` gave two different sums over 32 offsets).
    #[test]
    fn squared_norms_do_not_depend_on_buffer_alignment() {
        let values = Tensor::randn([100_003], (Kind::Float, Device::Cpu));
        let backing = Tensor::zeros([100_003 + 32], (Kind::Float, Device::Cpu));
        let sums: Vec<u64> = (0..32)
            .map(|offset| {
                let mut view = backing.narrow(0, offset, 100_003);
                view.copy_(&values);
                squared_norm(&view).unwrap().double_value(&[]).to_bits()
            })
            .collect();
        assert!(sums.iter().all(|&s| s == sums[0]), "{sums:?}");
    }

    #[test]
    fn gradient_averages_follow_every_step_once_with_or_without_a_flat_gradient() {
        for flat in [false, true] {
            tch::manual_seed(3);
            let vars = nn::VarStore::new(Device::Cpu);
            let net = crate::model::Network::Native(Box::new(
                nn::seq()
                    .add(nn::linear(vars.root() / "a", 5, 4, Default::default()))
                    .add_fn(|x| x.tanh())
                    .add(nn::linear(vars.root() / "b", 4, 3, Default::default())),
            ));
            let parameters = vars.trainable_variables();
            let train = empty_split();
            let (probes, averages) = (ProbeCache::default(), GradientAverages::default());
            let per_sample = crate::train::per_sample::PerSample::default();
            let mut flat_grads = None;
            let beta = 0.75;
            let mut mean = Vec::new();
            let mut mean_square = 0.0;
            for step in 0..4u64 {
                for p in &parameters {
                    let mut grad = p.grad();
                    if grad.defined() {
                        let _ = grad.zero_();
                    }
                }
                let input = Tensor::randn([6, 5], (Kind::Float, Device::Cpu));
                net.forward_t(&input, true)
                    .pow_tensor_scalar(2)
                    .sum(Kind::Float)
                    .backward();
                if flat && flat_grads.is_none() {
                    flat_grads = flatten_grads(&parameters).unwrap();
                }
                let services = TrainerServices {
                    model: &net,
                    parameters: &parameters,
                    train: &train,
                    probes: &probes,
                    averages: &averages,
                    device: Device::Cpu,
                    flat_grads: flat_grads.as_ref(),
                    per_sample: &per_sample,
                    step,
                };
                // A second call in the same step folds nothing in.
                services.update_gradient_ema(2, beta, step).unwrap();
                services.update_gradient_ema(2, beta, step).unwrap();
                let gradient = concatenated_grads(&parameters);
                mean.resize(gradient.len(), 0.0);
                for (m, &g) in mean.iter_mut().zip(&gradient) {
                    *m = beta * *m + (1.0 - beta) * f64::from(g);
                }
                let squares = gradient.iter().map(|&g| f64::from(g).powi(2)).sum::<f64>();
                mean_square = beta * mean_square + (1.0 - beta) * squares / gradient.len() as f64;
            }
            let services = TrainerServices {
                model: &net,
                parameters: &parameters,
                train: &train,
                probes: &probes,
                averages: &averages,
                device: Device::Cpu,
                flat_grads: flat_grads.as_ref(),
                per_sample: &per_sample,
                step: 0,
            };
            assert_eq!(flat_grads.is_some(), flat);
            let summary = services.gradient_ema(2).unwrap().expect("updated");
            let squared_mean = mean.iter().map(|m| m * m).sum::<f64>() / mean.len() as f64;
            assert_eq!((summary.updates, summary.numel), (4, 39));
            assert_eq!(summary.beta, beta);
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs();
            assert!(
                close(summary.mean_square, mean_square),
                "{summary:?} vs {mean_square}"
            );
            assert!(
                close(summary.squared_mean, squared_mean),
                "{summary:?} vs {squared_mean}"
            );
            // Each monitor has its own; a new decay starts afresh; the decay must be in [0, 1).
            assert!(services.gradient_ema(3).unwrap().is_none());
            services.update_gradient_ema(2, 0.5, 4).unwrap();
            assert_eq!(services.gradient_ema(2).unwrap().unwrap().updates, 1);
            assert!(services.update_gradient_ema(2, 1.0, 5).is_err());
        }
    }

    #[test]
    fn flattened_gradients_stay_the_parameters_gradients_across_steps() {
        let vars = nn::VarStore::new(Device::Cpu);
        let net = nn::seq()
            .add(nn::linear(vars.root() / "a", 5, 4, Default::default()))
            .add_fn(|x| x.tanh())
            .add(nn::linear(vars.root() / "b", 4, 3, Default::default()));
        let parameters = vars.trainable_variables();
        let input = Tensor::randn([8, 5], (Kind::Float, Device::Cpu));
        let step = |scale: f64| {
            for p in &parameters {
                let mut grad = p.grad();
                if grad.defined() {
                    let _ = grad.detach_();
                    let _ = grad.zero_();
                }
            }
            net.forward(&input)
                .pow_tensor_scalar(2)
                .sum(Kind::Float)
                .multiply_scalar(scale)
                .backward();
        };
        assert!(
            flatten_grads(&parameters).unwrap().is_none(),
            "no gradients yet"
        );
        step(1.0);
        let before = concatenated_grads(&parameters);
        let flat = flatten_grads(&parameters)
            .unwrap()
            .expect("every gradient is defined");
        assert_eq!(Vec::<f32>::try_from(&flat).unwrap(), before);
        for p in &parameters {
            assert_eq!(p.grad().size(), p.size());
        }
        // The next backward pass writes into the flat tensor.
        step(3.0);
        let after = concatenated_grads(&parameters);
        assert_eq!(Vec::<f32>::try_from(&flat).unwrap(), after);
        for (a, b) in after.iter().zip(&before) {
            assert!(
                (a - 3.0 * b).abs() <= 1e-5 * b.abs().max(1.0),
                "{a} vs 3 × {b}"
            );
        }
    }

    /// A channels-last weight's gradient keeps its parameter's strides once flattened (the
    /// layout autograd expects: no warning, no strided accumulation), and readers of the
    /// flattened gradient still get every parameter in logical order.
    #[test]
    fn flattened_gradients_of_channels_last_weights_keep_their_layout_and_read_in_order() {
        tch::manual_seed(5);
        let vars = nn::VarStore::new(Device::Cpu);
        let net = crate::model::Network::Native(Box::new(
            nn::seq_t()
                .add(nn::conv2d(vars.root() / "c", 2, 3, 3, Default::default()))
                .add_fn(|x| x.tanh().reshape([x.size()[0], -1]))
                .add(nn::linear(
                    vars.root() / "b",
                    3 * 2 * 2,
                    2,
                    Default::default(),
                )),
        ));
        crate::model::use_channels_last(&vars).unwrap();
        let parameters = vars.trainable_variables();
        let input = Tensor::randn([4, 2, 4, 4], (Kind::Float, Device::Cpu));
        net.forward_t(&input, true)
            .pow_tensor_scalar(2)
            .sum(Kind::Float)
            .backward();
        let expected = concatenated_grads(&parameters);
        let flat = flatten_grads(&parameters).unwrap().expect("defined");
        for p in &parameters {
            assert_eq!(p.grad().stride(), p.stride());
        }
        assert!(parameters.iter().any(|p| !p.is_contiguous()));
        assert_eq!(concatenated_grads(&parameters), expected);
        let train = empty_split();
        let (probes, averages) = (ProbeCache::default(), GradientAverages::default());
        let per_sample = crate::train::per_sample::PerSample::default();
        let services = TrainerServices {
            model: &net,
            parameters: &parameters,
            train: &train,
            probes: &probes,
            averages: &averages,
            device: Device::Cpu,
            flat_grads: Some(&flat),
            per_sample: &per_sample,
            step: 0,
        };
        assert!(services.gradient_view().is_none());
        let mut read = Vec::new();
        services.gradient_into(&mut read).unwrap();
        assert_eq!(read, expected);
        // The flat tensor itself holds the weight in memory order: not what readers get.
        assert_ne!(Vec::<f32>::try_from(&flat).unwrap(), expected);
    }
}
