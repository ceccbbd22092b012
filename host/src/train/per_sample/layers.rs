//! Individual-gradient statistics of one recorded layer, from its input `x` and the output
//! gradient `δ` of the backward pass training ran (`δₙ = B · ∂L/∂yₙ = ∂ℓₙ/∂yₙ`).
//!
//! - Linear, `y = x Wᵀ + b`: `gₙ(W) = δₙ xₙᵀ`, so `‖gₙ(W)‖² = ‖δₙ‖² ‖xₙ‖²`,
//!   `gₙ(W) · D = δₙᵀ D xₙ` and `Σₙ gₙ(W)² = (δ²)ᵀ (x²)`; `gₙ(b) = δₙ`. Nothing of the size
//!   `B × W` is formed.
//! - Convolution: with `X = unfold(x)` (`B × C·k² × P`, BackPACK's `unfold_input`),
//!   `gₙ(W) = δₙ Xₙᵀ` (`C_out × C·k²`), formed for a few samples at a time, and
//!   `gₙ(b) = Σₚ δₙₚ`.

use tch::{Kind, Tensor};

use crate::error::Result;
use crate::model::taps::LayerOp;

/// How many elements of individual weight gradients a convolution forms at once.
const CHUNK_ELEMENTS: i64 = 1 << 23;

/// Up to how many elements a convolution's individual weight gradients are formed once and
/// kept for the step (128 MiB in f32), so that norms, projections, the second moment and
/// histograms all read them instead of forming them again.
const KEPT_ELEMENTS: i64 = 1 << 25;

/// One recorded layer, matched to its parameters.
#[derive(Debug)]
pub(super) struct Layer {
    pub op: LayerOp,
    /// Index of the weight among the trainable parameters, and of the bias.
    pub weight: usize,
    pub bias: Option<usize>,
    /// The weight's shape.
    pub shape: Vec<i64>,
    /// Linear: `x` (`B × in`). Convolution: the unfolded input (`B × C·k² × P`).
    pub input: Tensor,
    /// Linear: `δ` (`B × out`). Convolution: `δ` as `B × C_out × P`.
    pub delta: Tensor,
    /// A convolution's individual weight gradients, formed once (see [`KEPT_ELEMENTS`]).
    kept: std::cell::OnceCell<Tensor>,
}

impl Layer {
    /// Build from a layer's input, its output gradient `∂L/∂y` and the batch size.
    pub fn new(
        op: LayerOp,
        (weight, bias): (usize, Option<usize>),
        shape: Vec<i64>,
        input: &Tensor,
        output_grad: &Tensor,
    ) -> Result<Self> {
        let batch = input.size()[0];
        let delta = output_grad.f_mul_scalar(batch as f64)?;
        let (input, delta) = match op {
            LayerOp::Linear => (input.shallow_clone(), delta),
            LayerOp::Conv2d {
                kernel,
                stride,
                padding,
            } => {
                let columns = input.f_im2col(
                    [kernel, kernel],
                    [1, 1],
                    [padding, padding],
                    [stride, stride],
                )?;
                let out_channels = shape[0];
                (columns, delta.f_reshape([batch, out_channels, -1])?)
            }
        };
        Ok(Layer {
            op,
            weight,
            bias,
            shape,
            input,
            delta,
            kept: std::cell::OnceCell::new(),
        })
    }

    pub fn batch(&self) -> i64 {
        self.input.size()[0]
    }

    /// Individual weight gradients of samples `start..start + count`, shaped
    /// `count × weight shape`.
    fn weight_chunk(&self, start: i64, count: i64) -> Result<Tensor> {
        let delta = self.delta.f_narrow(0, start, count)?;
        let input = self.input.f_narrow(0, start, count)?;
        let grads = match self.op {
            LayerOp::Linear => delta.f_unsqueeze(2)?.f_mul(&input.f_unsqueeze(1)?)?,
            LayerOp::Conv2d { .. } => delta.f_bmm(&input.f_transpose(1, 2)?)?,
        };
        let mut shape = vec![count];
        shape.extend(&self.shape);
        Ok(grads.f_reshape(shape)?)
    }

    /// Individual bias gradients, `B × out`.
    fn bias_grads(&self) -> Result<Tensor> {
        Ok(match self.op {
            LayerOp::Linear => self.delta.shallow_clone(),
            LayerOp::Conv2d { .. } => self.delta.f_sum_dim_intlist(2, false, self.delta.kind())?,
        })
    }

    /// Samples per chunk of individual weight gradients.
    fn chunk(&self) -> i64 {
        let per_sample: i64 = self.shape.iter().product();
        (CHUNK_ELEMENTS / per_sample.max(1)).clamp(1, self.batch().max(1))
    }

    /// A convolution's individual weight gradients, all of them, when they fit.
    fn kept(&self) -> Result<Option<&Tensor>> {
        let per_sample: i64 = self.shape.iter().product();
        if self.op == LayerOp::Linear || self.batch() * per_sample > KEPT_ELEMENTS {
            return Ok(None);
        }
        if self.kept.get().is_none() {
            let _ = self.kept.set(self.weight_chunk(0, self.batch())?);
        }
        Ok(self.kept.get())
    }

    /// Call `each(start, grads)` over chunks of the individual weight gradients.
    pub fn for_each_weight_chunk(
        &self,
        mut each: impl FnMut(i64, &Tensor) -> Result<()>,
    ) -> Result<()> {
        if let Some(all) = self.kept()? {
            return each(0, all);
        }
        let (batch, chunk) = (self.batch(), self.chunk());
        let mut start = 0;
        while start < batch {
            let count = chunk.min(batch - start);
            each(start, &self.weight_chunk(start, count)?)?;
            start += count;
        }
        Ok(())
    }

    /// `‖gₙ‖²` of the weight and of the bias, each `B` (f64).
    pub fn sq_norms(&self) -> Result<(Tensor, Option<Tensor>)> {
        let bias = match self.bias {
            Some(_) => Some(row_sq_norms(&self.bias_grads()?)?),
            None => None,
        };
        let weight = match self.op {
            LayerOp::Linear => row_sq_norms(&self.delta)?.f_mul(&row_sq_norms(&self.input)?)?,
            LayerOp::Conv2d { .. } => {
                let mut parts = Vec::new();
                self.for_each_weight_chunk(|_, grads| {
                    parts.push(row_sq_norms(grads)?);
                    Ok(())
                })?;
                Tensor::f_cat(&parts, 0)?
            }
        };
        Ok((weight, bias))
    }

    /// `gₙ · D` for the weight's direction `weight` and the bias's `bias`, each `B` (f64).
    pub fn projections(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let bias = match bias {
            Some(direction) => Some(
                self.bias_grads()?
                    .f_to_kind(Kind::Double)?
                    .f_matmul(&direction.f_to_kind(Kind::Double)?)?,
            ),
            None => None,
        };
        let weight = match self.op {
            LayerOp::Linear => self
                .delta
                .f_matmul(weight)?
                .f_mul(&self.input)?
                .f_to_kind(Kind::Double)?
                .f_sum_dim_intlist(1, false, Kind::Double)?,
            LayerOp::Conv2d { .. } => {
                let direction = weight.f_unsqueeze(0)?;
                let mut parts = Vec::new();
                self.for_each_weight_chunk(|_, grads| {
                    let rows = grads.size()[0];
                    parts.push(
                        grads
                            .f_mul(&direction)?
                            .f_reshape([rows, -1])?
                            .f_sum_dim_intlist(1, false, Kind::Double)?,
                    );
                    Ok(())
                })?;
                Tensor::f_cat(&parts, 0)?
            }
        };
        Ok((weight, bias))
    }

    /// `Σₙ gₙ²` of the weight (its shape) and of the bias.
    pub fn second_moment(&self) -> Result<(Tensor, Option<Tensor>)> {
        let bias = match self.bias {
            Some(_) => Some(self.bias_grads()?.f_square()?.f_sum_dim_intlist(
                0,
                false,
                self.delta.kind(),
            )?),
            None => None,
        };
        let weight = match self.op {
            LayerOp::Linear => self
                .delta
                .f_square()?
                .f_transpose(0, 1)?
                .f_matmul(&self.input.f_square()?)?,
            LayerOp::Conv2d { .. } => {
                let mut sum =
                    Tensor::f_zeros(&self.shape[..], (self.delta.kind(), self.delta.device()))?;
                self.for_each_weight_chunk(|_, grads| {
                    sum += grads
                        .f_square()?
                        .f_sum_dim_intlist(0, false, self.delta.kind())?;
                    Ok(())
                })?;
                sum
            }
        };
        Ok((weight, bias))
    }

    /// Individual bias gradients, for histograms.
    pub fn bias_individual(&self) -> Result<Tensor> {
        self.bias_grads()
    }
}

/// `Σⱼ aₙⱼ²` per row `n`, in f64.
fn row_sq_norms(rows: &Tensor) -> Result<Tensor> {
    let count = rows.size()[0];
    Ok(rows
        .f_reshape([count, -1])?
        .f_to_kind(Kind::Double)?
        .f_square()?
        .f_sum_dim_intlist(1, false, Kind::Double)?)
}
