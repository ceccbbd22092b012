//! The loss training minimises and the count validation reports, shared by the step, the
//! validation pass and the Hessian-vector products monitors ask for.

use tch::{Kind, Tensor};

use crate::error::Result;

pub(crate) fn cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    reduction: tch::Reduction,
) -> Result<Tensor> {
    Ok(logits.f_cross_entropy_loss::<Tensor>(labels, None, reduction, -100, 0.0)?)
}

/// How many rows of `logits` put their maximum on the label.
pub(super) fn correct_count(logits: &Tensor, labels: &Tensor) -> Result<f64> {
    Ok(logits
        .f_argmax(-1, false)?
        .f_eq_tensor(labels)?
        .f_sum(Kind::Float)?
        .f_double_value(&[])?)
}
