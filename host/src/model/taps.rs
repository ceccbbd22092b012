//! Layers that can be recorded: during a forward pass inside [`record`], each linear and
//! convolution layer keeps its input and adds a zero "probe" to its output whose gradient,
//! after the backward pass, is the gradient of the loss with respect to the layer's output.
//! Input and output gradient are all that individual gradients of the layer's weight and
//! bias need (`train::per_sample`), from the same backward pass that training runs.
//!
//! Outside [`record`] the layers are the plain ones, at no cost but one thread-local check.

use std::cell::RefCell;

use tch::nn::{self, Module};
use tch::Tensor;

/// How a layer maps its input to its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerOp {
    /// `y = x Wᵀ + b` for `x` of `N × in`.
    Linear,
    /// A 2-D convolution with a square kernel, dilation 1 and one group.
    Conv2d {
        kernel: i64,
        stride: i64,
        padding: i64,
    },
}

/// One recorded layer call.
#[derive(Debug)]
pub struct Tap {
    pub op: LayerOp,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// The layer's input, detached.
    pub input: Tensor,
    /// Zeros shaped like the output, added to it; its gradient is `∂L/∂output`.
    pub probe: Tensor,
}

thread_local! {
    static RECORDING: RefCell<Option<Vec<Tap>>> = const { RefCell::new(None) };
}

/// Run `forward` with every tapped layer recording; returns its result and the taps in call
/// order.
pub fn record<T>(forward: impl FnOnce() -> T) -> (T, Vec<Tap>) {
    RECORDING.with(|cell| *cell.borrow_mut() = Some(Vec::new()));
    let output = forward();
    let taps = RECORDING.with(|cell| cell.borrow_mut().take().unwrap_or_default());
    (output, taps)
}

/// `output`, with a probe added when recording.
fn tapped(
    op: LayerOp,
    weight: &Tensor,
    bias: Option<&Tensor>,
    input: &Tensor,
    output: Tensor,
) -> Tensor {
    RECORDING.with(|cell| {
        let mut recording = cell.borrow_mut();
        let Some(taps) = recording.as_mut() else {
            return output;
        };
        let probe = output.zeros_like().set_requires_grad(true);
        taps.push(Tap {
            op,
            weight: weight.shallow_clone(),
            bias: bias.map(Tensor::shallow_clone),
            input: input.detach(),
            probe: probe.shallow_clone(),
        });
        output + probe
    })
}

/// A linear layer that can be recorded.
#[derive(Debug)]
pub struct Linear(pub nn::Linear);

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let ys = self.0.forward(xs);
        tapped(LayerOp::Linear, &self.0.ws, self.0.bs.as_ref(), xs, ys)
    }
}

/// A 2-D convolution that can be recorded (its geometry repeated: tch keeps it private).
#[derive(Debug)]
pub struct Conv2d {
    pub conv: nn::Conv2D,
    pub op: LayerOp,
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let ys = self.conv.forward(xs);
        tapped(self.op, &self.conv.ws, self.conv.bs.as_ref(), xs, ys)
    }
}
