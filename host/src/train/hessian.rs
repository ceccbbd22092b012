//! Hessian-vector products for monitors: by double backward through the mean cross-entropy
//! on a probe subsample, with the probe batches and the gradient graph of a one-chunk probe
//! kept between the products of one hook.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

use tch::nn::ModuleT;
use tch::{Kind, Tensor};
use vigil_plugin_api::ProbeSpec;

use crate::error::{Error, Result};

/// The probe subsamples drawn so far, by spec, and what Hessian-vector products cost.
#[derive(Default)]
pub(super) struct ProbeCache {
    pub(super) batches: RefCell<HashMap<ProbeSpec, (Tensor, Tensor)>>,
    /// Hessian-vector products computed, and the time they took.
    pub hvps: Cell<(u64, Duration)>,
    /// The gradient graph of a one-chunk probe, kept while one hook asks for several
    /// products (each then costs one backward pass instead of a forward and two).
    pub(super) graph: RefCell<Option<ProbeGraph>>,
}

/// A probe's loss and its gradient with the autograd graph that differentiates it again.
pub(super) struct ProbeGraph {
    pub(super) spec: ProbeSpec,
    pub(super) loss: f64,
    pub(super) grads: Vec<Tensor>,
}

impl ProbeCache {
    /// Drop the kept gradient graph.
    pub fn release_graph(&self) {
        self.graph.borrow_mut().take();
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
    let (loss, grads) = gradient_with_graph(model, parameters, images, labels)?;
    let product = hessian_times(&grads, parameters, directions, false)?;
    Ok((loss, product))
}

/// The mean cross-entropy of `model` (in eval mode) on one batch, and its gradient with
/// respect to `parameters`, built with a graph so that it can be differentiated again.
pub(super) fn gradient_with_graph(
    model: &dyn ModuleT,
    parameters: &[Tensor],
    images: &Tensor,
    labels: &Tensor,
) -> Result<(f64, Vec<Tensor>)> {
    // A scripted model's graph must be differentiable twice (see PlainGraphExecutor).
    let _plain = crate::model::PlainGraphExecutor::new();
    let logits = model.forward_t(images, false);
    let loss = super::loss::cross_entropy(&logits, labels, tch::Reduction::Mean)?;
    let grads = Tensor::f_run_backward(&[&loss], parameters, true, true)?;
    Ok((loss.f_double_value(&[])?, grads))
}

/// Copy `pieces` one after another into `out` as `f32`: one copy each, no concatenation.
pub(super) fn write_flat(
    pieces: impl IntoIterator<Item = Result<Tensor>>,
    out: &mut [f32],
) -> Result<()> {
    let mut offset = 0;
    for piece in pieces {
        let piece = piece?;
        let numel = piece.numel();
        let target = out
            .get_mut(offset..offset + numel)
            .ok_or_else(|| Error::Capability("the output is shorter than the parameters".into()))?;
        piece.f_to_kind(Kind::Float)?.f_copy_data(target, numel)?;
        offset += numel;
    }
    Ok(())
}

/// Differentiate `Σ grads·directions` with respect to `parameters` (grads built with a
/// graph); `keep_graph` keeps that graph for another product.
pub(super) fn hessian_times(
    grads: &[Tensor],
    parameters: &[Tensor],
    directions: &[Tensor],
    keep_graph: bool,
) -> Result<Vec<Tensor>> {
    let mut dot: Option<Tensor> = None;
    for (grad, direction) in grads.iter().zip(directions) {
        let term = grad.f_mul(direction)?.f_sum(Kind::Float)?;
        dot = Some(match dot {
            Some(sum) => sum.f_add(&term)?,
            None => term,
        });
    }
    let dot = dot.ok_or_else(|| Error::Capability("the model has no parameters".into()))?;
    Ok(Tensor::f_run_backward(
        &[&dot],
        parameters,
        keep_graph,
        false,
    )?)
}
