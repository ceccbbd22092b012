//! PyTorch's initialisation, so that a vigil run starts where the same network in PyTorch
//! starts (tch's own defaults are Kaiming-uniform with the ReLU gain, √6 ≈ 2.45 times
//! PyTorch's bound, and batch-norm weights uniform in [0, 1)).
//!
//! - `nn.Linear` and `nn.Conv2d` (`reset_parameters`): weights Kaiming-uniform with
//!   a = √5, which is U(−1/√fan_in, 1/√fan_in); biases U(−1/√fan_in, 1/√fan_in).
//! - torchvision's ResNet (`torchvision.models.resnet.ResNet.__init__`): every convolution's
//!   weight Kaiming-normal with mode `fan_out` and the ReLU gain, N(0, 2/fan_out) (a bias, which
//!   torchvision's convolutions do not have, keeps `nn.Conv2d`'s default); batch-norm weight 1,
//!   bias 0; the classifier as `nn.Linear`.
//!
//! fan_in = in_channels · k², fan_out = out_channels · k² (groups = 1).

use tch::nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use tch::nn::{self, Init};

use super::taps::{self, LayerOp};

/// Kaiming-uniform with a = √5: gain √(2 / (1 + a²)) = 1/√3, so the bound is
/// gain · √(3 / fan_in) = 1/√fan_in.
const KAIMING_UNIFORM_A_SQRT5: Init = Init::Kaiming {
    dist: NormalOrUniform::Uniform,
    fan: FanInOut::FanIn,
    non_linearity: NonLinearity::ExplicitGain(0.577_350_269_189_625_8),
};

/// torchvision's `kaiming_normal_(mode="fan_out", nonlinearity="relu")`.
const KAIMING_NORMAL_FAN_OUT_RELU: Init = Init::Kaiming {
    dist: NormalOrUniform::Normal,
    fan: FanInOut::FanOut,
    non_linearity: NonLinearity::ReLU,
};

/// U(−1/√fan_in, 1/√fan_in), PyTorch's bias initialisation.
fn bias_init(fan_in: i64) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// `nn.Linear(in_dim, out_dim)` as PyTorch initialises it (a layer that can be recorded).
pub fn linear(path: nn::Path<'_>, in_dim: i64, out_dim: i64) -> taps::Linear {
    taps::Linear(nn::linear(
        path,
        in_dim,
        out_dim,
        nn::LinearConfig {
            ws_init: KAIMING_UNIFORM_A_SQRT5,
            bs_init: Some(bias_init(in_dim)),
            bias: true,
        },
    ))
}

/// How a convolution's weight starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvInit {
    /// `nn.Conv2d`'s default.
    Torch,
    /// torchvision's ResNet: Kaiming-normal, fan_out, ReLU.
    TorchvisionResnet,
}

/// A convolution's stride, padding, bias and weight initialisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvOptions {
    pub stride: i64,
    pub padding: i64,
    pub bias: bool,
    pub init: ConvInit,
}

impl ConvOptions {
    /// Stride 1, no padding, a bias, PyTorch's default initialisation.
    pub const TORCH: ConvOptions = ConvOptions {
        stride: 1,
        padding: 0,
        bias: true,
        init: ConvInit::Torch,
    };
}

/// `nn.Conv2d(c_in, c_out, kernel, stride, padding, bias)` with its weight initialised as
/// `options.init` says and its bias (when it has one) as PyTorch's default.
pub fn conv2d(
    path: nn::Path<'_>,
    c_in: i64,
    c_out: i64,
    kernel: i64,
    options: ConvOptions,
) -> taps::Conv2d {
    let ConvOptions {
        stride,
        padding,
        bias,
        init,
    } = options;
    let fan_in = c_in * kernel * kernel;
    let conv = nn::conv2d(
        path,
        c_in,
        c_out,
        kernel,
        nn::ConvConfig {
            stride,
            padding,
            bias,
            ws_init: match init {
                ConvInit::Torch => KAIMING_UNIFORM_A_SQRT5,
                ConvInit::TorchvisionResnet => KAIMING_NORMAL_FAN_OUT_RELU,
            },
            bs_init: bias_init(fan_in),
            ..Default::default()
        },
    );
    taps::Conv2d {
        conv,
        op: LayerOp::Conv2d {
            kernel,
            stride,
            padding,
        },
    }
}

/// `nn.BatchNorm2d(channels)`: weight 1, bias 0 (running mean 0, running variance 1).
pub fn batch_norm2d(path: nn::Path<'_>, channels: i64) -> nn::BatchNorm {
    nn::batch_norm2d(
        path,
        channels,
        nn::BatchNormConfig {
            ws_init: Init::Const(1.0),
            bs_init: Init::Const(0.0),
            ..Default::default()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    fn stats(tensor: &Tensor) -> (f64, f64, f64) {
        let t = tensor.to_kind(Kind::Double);
        (
            t.mean(Kind::Double).double_value(&[]),
            t.std(true).double_value(&[]),
            t.abs().max().double_value(&[]),
        )
    }

    #[test]
    fn the_a_sqrt5_gain_is_one_over_root_three() {
        let NonLinearity::ExplicitGain(gain) = (match KAIMING_UNIFORM_A_SQRT5 {
            Init::Kaiming { non_linearity, .. } => non_linearity,
            _ => unreachable!(),
        }) else {
            unreachable!()
        };
        let a: f64 = 5f64.sqrt();
        assert!((gain - (2.0 / (1.0 + a * a)).sqrt()).abs() < 1e-15);
    }

    #[test]
    fn linear_and_conv_weights_and_biases_lie_within_one_over_root_fan_in() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let fc = linear(vs.root() / "fc", 400, 300).0;
        let bound = 1.0 / 400f64.sqrt();
        let (mean, std, max) = stats(&fc.ws);
        assert!(max <= bound && max > 0.99 * bound, "{max} vs {bound}");
        // U(−b, b) has standard deviation b/√3; 120,000 draws pin it to well under 1 %.
        assert!((std / (bound / 3f64.sqrt()) - 1.0).abs() < 0.01, "{std}");
        assert!(mean.abs() < 4.0 * std / (120_000f64).sqrt());
        let (_, _, max) = stats(fc.bs.as_ref().unwrap());
        assert!(max <= bound);

        let same = ConvOptions {
            padding: 1,
            ..ConvOptions::TORCH
        };
        let conv = conv2d(vs.root() / "conv", 32, 64, 3, same).conv;
        let bound = 1.0 / (32.0 * 9.0f64).sqrt();
        let (_, std, max) = stats(&conv.ws);
        assert!(max <= bound && max > 0.99 * bound, "{max} vs {bound}");
        assert!((std / (bound / 3f64.sqrt()) - 1.0).abs() < 0.02, "{std}");
        let (_, _, max) = stats(conv.bs.as_ref().unwrap());
        assert!(max <= bound);
    }

    #[test]
    fn resnet_convolutions_are_normal_with_the_fan_out_and_batch_norm_starts_at_one() {
        tch::manual_seed(4);
        let vs = nn::VarStore::new(Device::Cpu);
        let options = ConvOptions {
            stride: 1,
            padding: 1,
            bias: false,
            init: ConvInit::TorchvisionResnet,
        };
        let conv = conv2d(vs.root() / "conv", 64, 128, 3, options).conv;
        assert!(conv.bs.is_none());
        let (mean, std, _) = stats(&conv.ws);
        let expected = (2.0 / (128.0 * 9.0f64)).sqrt();
        assert!((std / expected - 1.0).abs() < 0.01, "{std} vs {expected}");
        assert!(mean.abs() < 4.0 * expected / (73_728f64).sqrt());
        let bn = batch_norm2d(vs.root() / "bn", 16);
        assert_eq!(
            Vec::<f32>::try_from(bn.ws.as_ref().unwrap()).unwrap(),
            vec![1.0; 16]
        );
        assert_eq!(
            Vec::<f32>::try_from(bn.bs.as_ref().unwrap()).unwrap(),
            vec![0.0; 16]
        );
    }
}
