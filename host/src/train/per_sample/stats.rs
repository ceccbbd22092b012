//! The answers of the per-sample queries, from recorded layers or explicit individual
//! gradients.

use tch::{Kind, Tensor};
use vigil_plugin_api::per_sample::{HistogramSpec, Histograms, ParameterStats, PerSampleStats};

use super::binning::{self, with_f32s, Bins};
use super::layers::Layer;
use super::Captured;
use crate::error::Result;
use crate::model::taps::LayerOp;

/// Where a step's individual gradients come from.
pub(super) enum Source {
    /// Recorded linear and convolution layers.
    Layers(Vec<Layer>),
    /// `B × N`, one backward pass per sample.
    Explicit(Tensor),
    /// Not defined for this model, and why.
    Undefined(String),
}

/// What one step has computed so far.
#[derive(Default)]
pub(super) struct Cache {
    stats: Option<PerSampleStats>,
    second_moment: Option<Vec<f32>>,
    /// Histograms asked for, by what they count: monitors asking the same share them.
    histograms: Vec<(HistogramSpec, Histograms)>,
}

/// The mean gradient `ḡ` of a parameter (zeros where backward left none).
fn mean_grad(parameter: &Tensor) -> Result<Tensor> {
    let grad = parameter.grad();
    Ok(if grad.defined() {
        grad.f_detach()?
    } else {
        parameter.f_zeros_like()?
    })
}

fn to_f64s(tensor: &Tensor) -> Result<Vec<f64>> {
    Ok(Vec::<f64>::try_from(
        &tensor
            .f_to_kind(Kind::Double)?
            .f_to_device(tch::Device::Cpu)?,
    )?)
}

/// Each parameter's slice of a flattened row: (offset, length).
fn offsets(parameters: &[Tensor]) -> Vec<(i64, i64)> {
    let mut offset = 0;
    parameters
        .iter()
        .map(|p| {
            let numel = p.numel() as i64;
            offset += numel;
            (offset - numel, numel)
        })
        .collect()
}

impl Captured {
    fn batch(&self) -> i64 {
        self.losses.size()[0]
    }

    /// The statistics of [`PerSampleStats`], computed once per step.
    pub fn stats(&self, parameters: &[Tensor]) -> Result<PerSampleStats> {
        if let Some(stats) = &self.cache.borrow().stats {
            return Ok(stats.clone());
        }
        let _no_grad = tch::no_grad_guard();
        let device = self.losses.device();
        let batch = self.batch();
        let zeros = || Tensor::f_zeros([batch], (Kind::Double, device));
        let mut sq_total = zeros()?;
        let mut projection_total = zeros()?;
        let mut per_parameter: Vec<(Tensor, Tensor)> = parameters
            .iter()
            .map(|_| (Tensor::new(), Tensor::new()))
            .collect();
        let grads = parameters
            .iter()
            .map(mean_grad)
            .collect::<Result<Vec<_>>>()?;
        match &self.source {
            Source::Layers(layers) => {
                for layer in layers {
                    let (sq_weight, sq_bias) = layer.sq_norms()?;
                    let (p_weight, p_bias) =
                        layer.projections(&grads[layer.weight], layer.bias.map(|b| &grads[b]))?;
                    per_parameter[layer.weight] = (sq_weight, p_weight);
                    if let (Some(index), Some(sq), Some(p)) = (layer.bias, sq_bias, p_bias) {
                        per_parameter[index] = (sq, p);
                    }
                }
            }
            Source::Explicit(rows) => {
                for (index, (offset, length)) in offsets(parameters).into_iter().enumerate() {
                    let slice = rows.f_narrow(1, offset, length)?.f_to_kind(Kind::Double)?;
                    let grad = grads[index]
                        .f_contiguous()?
                        .f_reshape([-1])?
                        .f_to_kind(Kind::Double)?;
                    per_parameter[index] = (
                        slice
                            .f_square()?
                            .f_sum_dim_intlist(1, false, Kind::Double)?,
                        slice.f_matmul(&grad)?,
                    );
                }
            }
            Source::Undefined(reason) => {
                return Err(crate::error::Error::Capability(reason.clone()))
            }
        }
        let mut parameter_stats = Vec::with_capacity(parameters.len());
        for ((sq, projection), grad) in per_parameter.iter().zip(&grads) {
            sq_total += sq;
            projection_total += projection;
            parameter_stats.push(ParameterStats {
                grad_sq_norm: grad.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])?,
                sum_sq_norms: sq.f_sum(Kind::Double)?.f_double_value(&[])?,
                sum_sq_projections: projection
                    .f_square()?
                    .f_sum(Kind::Double)?
                    .f_double_value(&[])?,
            });
        }
        let stats = PerSampleStats {
            parameters: parameter_stats,
            sq_norms: to_f64s(&sq_total)?,
            projections: to_f64s(&projection_total)?,
            losses: to_f64s(&self.losses)?,
        };
        self.cache.borrow_mut().stats = Some(stats.clone());
        Ok(stats)
    }

    /// `Σₙ gₙ²` in the flattened gradient's order, computed once per step.
    pub fn second_moment(&self, parameters: &[Tensor]) -> Result<Vec<f32>> {
        if let Some(values) = &self.cache.borrow().second_moment {
            return Ok(values.clone());
        }
        let _no_grad = tch::no_grad_guard();
        let flat = match &self.source {
            Source::Layers(layers) => {
                let mut parts: Vec<Option<Tensor>> = parameters.iter().map(|_| None).collect();
                for layer in layers {
                    let (weight, bias) = layer.second_moment()?;
                    parts[layer.weight] = Some(weight);
                    if let (Some(index), Some(bias)) = (layer.bias, bias) {
                        parts[index] = Some(bias);
                    }
                }
                let parts = parts
                    .into_iter()
                    .zip(parameters)
                    .map(|(part, p)| {
                        Ok(match part {
                            Some(part) => part.f_contiguous()?.f_reshape([-1])?,
                            None => Tensor::f_zeros([p.numel() as i64], (p.kind(), p.device()))?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Tensor::f_cat(&parts, 0)?
            }
            Source::Explicit(rows) => rows.f_square()?.f_sum_dim_intlist(0, false, rows.kind())?,
            Source::Undefined(reason) => {
                return Err(crate::error::Error::Capability(reason.clone()))
            }
        };
        let values =
            Vec::<f32>::try_from(&flat.f_to_kind(Kind::Float)?.f_to_device(tch::Device::Cpu)?)?;
        self.cache.borrow_mut().second_moment = Some(values.clone());
        Ok(values)
    }

    /// `gₙ · d` per sample for a direction `d` given per parameter.
    pub fn project(&self, direction: &[Tensor]) -> Result<Vec<f64>> {
        let _no_grad = tch::no_grad_guard();
        let mut total = Tensor::f_zeros([self.batch()], (Kind::Double, self.losses.device()))?;
        match &self.source {
            Source::Layers(layers) => {
                for layer in layers {
                    let (weight, bias) = layer
                        .projections(&direction[layer.weight], layer.bias.map(|b| &direction[b]))?;
                    total += weight;
                    if let Some(bias) = bias {
                        total += bias;
                    }
                }
            }
            Source::Explicit(rows) => {
                let flat = direction
                    .iter()
                    .map(|d| Ok(d.f_contiguous()?.f_reshape([-1])?))
                    .collect::<Result<Vec<_>>>()?;
                total += rows
                    .f_to_kind(Kind::Double)?
                    .f_matmul(&Tensor::f_cat(&flat, 0)?.f_to_kind(Kind::Double)?)?;
            }
            Source::Undefined(reason) => {
                return Err(crate::error::Error::Capability(reason.clone()))
            }
        }
        to_f64s(&total)
    }

    /// Histograms of the individual gradients' elements, per parameter.
    pub fn histograms(&self, parameters: &[Tensor], spec: &HistogramSpec) -> Result<Histograms> {
        let cached = self
            .cache
            .borrow()
            .histograms
            .iter()
            .find(|(s, _)| s == spec)
            .map(|(_, h)| h.clone());
        if let Some(histograms) = cached {
            return Ok(histograms);
        }
        let histograms = self.count_histograms(parameters, spec)?;
        self.cache
            .borrow_mut()
            .histograms
            .push((*spec, histograms.clone()));
        Ok(histograms)
    }

    fn count_histograms(&self, parameters: &[Tensor], spec: &HistogramSpec) -> Result<Histograms> {
        let _no_grad = tch::no_grad_guard();
        let cells = (spec.bins * spec.value_bins.max(1)) as usize;
        let mut counts: Vec<Vec<f64>> = parameters.iter().map(|_| vec![0.0; cells]).collect();
        let add = |counts: &mut Vec<Vec<f64>>, index: usize, counted: Vec<f64>| {
            counts[index]
                .iter_mut()
                .zip(counted)
                .for_each(|(sum, c)| *sum += c);
        };
        // Counted in plain loops over the tensors' memory (`binning`), on the CPU.
        let bins = Bins {
            count: spec.bins as usize,
            low: spec.low,
            high: spec.high,
        };
        let value_bins = Bins {
            count: spec.value_bins as usize,
            low: spec.value_low,
            high: spec.value_high,
        };
        let binned = |index: usize, grads: &Tensor| -> Result<Vec<f64>> {
            let rows = grads.size()[0] as usize;
            if spec.value_bins == 0 {
                return with_f32s(grads, |g| binning::count(g, rows, bins, None));
            }
            let values = parameters[index].f_detach()?;
            with_f32s(&values, |v| {
                with_f32s(grads, |g| {
                    binning::count(g, rows, bins, Some((v, value_bins)))
                })
            })?
        };
        match &self.source {
            Source::Layers(layers) => {
                for layer in layers {
                    if layer.op == LayerOp::Linear && spec.value_bins == 0 {
                        let batch = layer.batch() as usize;
                        let counted = with_f32s(&layer.delta, |d| {
                            with_f32s(&layer.input, |x| binning::count_outer(d, x, batch, bins))
                        })??;
                        add(&mut counts, layer.weight, counted);
                    } else {
                        layer.for_each_weight_chunk(|_, grads| {
                            add(&mut counts, layer.weight, binned(layer.weight, grads)?);
                            Ok(())
                        })?;
                    }
                    if let Some(index) = layer.bias {
                        add(
                            &mut counts,
                            index,
                            binned(index, &layer.bias_individual()?)?,
                        );
                    }
                }
            }
            Source::Explicit(rows) => {
                for (index, (offset, length)) in offsets(parameters).into_iter().enumerate() {
                    let mut shape = vec![self.batch()];
                    shape.extend(parameters[index].size());
                    let grads = rows.f_narrow(1, offset, length)?.f_reshape(shape)?;
                    add(&mut counts, index, binned(index, &grads)?);
                }
            }
            Source::Undefined(reason) => {
                return Err(crate::error::Error::Capability(reason.clone()))
            }
        }
        Ok(Histograms {
            bins: spec.bins as usize,
            value_bins: spec.value_bins as usize,
            counts,
        })
    }
}
