//! Individual gradients one backward pass per sample: the path for TorchScript models, whose
//! layers vigil cannot record. Costs `B` forward and backward passes of one sample at each
//! scheduled step, and `B × parameters` floats of memory while the step lasts.

use tch::Tensor;

use crate::error::Result;
use crate::model::Network;

/// `gₙ = ∇ℓₙ` for each sample of the batch, flattened in parameter order (each parameter in
/// row-major order): `B × N`. The parameters' `.grad` are left as they are.
pub(crate) fn individual_gradients(
    model: &Network,
    parameters: &[Tensor],
    images: &Tensor,
    labels: &Tensor,
) -> Result<Tensor> {
    tch::with_grad(|| each_sample(model, parameters, images, labels))
}

fn each_sample(
    model: &Network,
    parameters: &[Tensor],
    images: &Tensor,
    labels: &Tensor,
) -> Result<Tensor> {
    let batch = images.size()[0];
    let mut rows = Vec::with_capacity(batch as usize);
    for n in 0..batch {
        let logits = model.forward(&images.f_narrow(0, n, 1)?, true)?;
        let loss = super::super::loss::cross_entropy(
            &logits,
            &labels.f_narrow(0, n, 1)?,
            tch::Reduction::Mean,
        )?;
        let grads = Tensor::f_run_backward(&[loss], parameters, false, false)?;
        let flat = grads
            .iter()
            .map(|g| Ok(g.f_contiguous()?.f_reshape([-1])?))
            .collect::<Result<Vec<_>>>()?;
        rows.push(Tensor::f_cat(&flat, 0)?);
    }
    Ok(Tensor::f_stack(&rows, 0)?)
}
