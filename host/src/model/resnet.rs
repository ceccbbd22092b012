//! ResNet-18 for 32×32 images (He et al. 2016, the CIFAR variant): a 3×3 stem without
//! max-pooling, four stages of two BasicBlocks with 64·w, 128·w, 256·w, 512·w channels (strides
//! 1, 2, 2, 2), global average pooling and a linear classifier.
//!
//! `width_mult` scales every stage's channels to `max(8, round_to_multiple_of_8(c · w))`.
//! With `Norm::None` the batch-norm layers are left out and the convolutions get biases.
//! Initialised as torchvision initialises its ResNets ([`super::init`]).

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::init::{self, ConvInit, ConvOptions};
use super::taps;
use crate::config::Norm;

/// Channels of a stage of nominal width `channels` at `width_mult`.
pub fn scaled_channels(channels: usize, width_mult: f64) -> i64 {
    let scaled = (channels as f64 * width_mult / 8.0).round() as i64 * 8;
    scaled.max(8)
}

/// A 3×3 convolution, optionally followed by batch norm.
#[derive(Debug)]
struct ConvNorm {
    conv: taps::Conv2d,
    norm: Option<nn::BatchNorm>,
}

impl ConvNorm {
    fn new(path: &nn::Path, c_in: i64, c_out: i64, kernel: i64, stride: i64, norm: Norm) -> Self {
        let options = ConvOptions {
            stride,
            padding: kernel / 2,
            bias: norm == Norm::None,
            init: ConvInit::TorchvisionResnet,
        };
        ConvNorm {
            conv: init::conv2d(path / "conv", c_in, c_out, kernel, options),
            norm: (norm == Norm::Batch).then(|| init::batch_norm2d(path / "bn", c_out)),
        }
    }

    fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = xs.apply(&self.conv);
        match &self.norm {
            Some(norm) => ys.apply_t(norm, train),
            None => ys,
        }
    }
}

#[derive(Debug)]
struct BasicBlock {
    first: ConvNorm,
    second: ConvNorm,
    shortcut: Option<ConvNorm>,
}

impl BasicBlock {
    fn new(path: &nn::Path, c_in: i64, c_out: i64, stride: i64, norm: Norm) -> Self {
        BasicBlock {
            first: ConvNorm::new(&(path / "conv1"), c_in, c_out, 3, stride, norm),
            second: ConvNorm::new(&(path / "conv2"), c_out, c_out, 3, 1, norm),
            shortcut: (stride != 1 || c_in != c_out)
                .then(|| ConvNorm::new(&(path / "shortcut"), c_in, c_out, 1, stride, norm)),
        }
    }

    fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = self.first.forward(xs, train).relu();
        let ys = self.second.forward(&ys, train);
        let skip = match &self.shortcut {
            Some(shortcut) => shortcut.forward(xs, train),
            None => xs.shallow_clone(),
        };
        (ys + skip).relu()
    }
}

/// The network.
#[derive(Debug)]
pub struct ResNet18 {
    stem: ConvNorm,
    blocks: Vec<BasicBlock>,
    classifier: taps::Linear,
}

impl ResNet18 {
    pub fn new(
        root: &nn::Path,
        in_channels: usize,
        classes: usize,
        width_mult: f64,
        norm: Norm,
    ) -> Self {
        let widths: Vec<i64> = [64, 128, 256, 512]
            .iter()
            .map(|&c| scaled_channels(c, width_mult))
            .collect();
        let stem = ConvNorm::new(&(root / "stem"), in_channels as i64, widths[0], 3, 1, norm);
        let mut blocks = Vec::with_capacity(8);
        let mut c_in = widths[0];
        for (stage, &c_out) in widths.iter().enumerate() {
            for index in 0..2 {
                let stride = if stage > 0 && index == 0 { 2 } else { 1 };
                let path = root / format!("layer{}", stage + 1) / index;
                blocks.push(BasicBlock::new(&path, c_in, c_out, stride, norm));
                c_in = c_out;
            }
        }
        let classifier = init::linear(root / "classifier", c_in, classes as i64);
        ResNet18 {
            stem,
            blocks,
            classifier,
        }
    }
}

impl ModuleT for ResNet18 {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = self.stem.forward(xs, train).relu();
        for block in &self.blocks {
            ys = block.forward(&ys, train);
        }
        let rows = ys.size()[0];
        ys.adaptive_avg_pool2d([1, 1])
            .reshape([rows, -1])
            .apply(&self.classifier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn parameters(width_mult: f64, norm: Norm) -> (i64, Vec<i64>) {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = ResNet18::new(&vs.root(), 3, 10, width_mult, norm);
        let logits = net.forward_t(
            &Tensor::zeros([2, 3, 32, 32], (Kind::Float, Device::Cpu)),
            false,
        );
        let count = vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        (count, logits.size())
    }

    #[test]
    fn width_one_has_the_known_11_17_million_parameters() {
        let (count, shape) = parameters(1.0, Norm::Batch);
        assert_eq!(shape, vec![2, 10]);
        // The CIFAR ResNet-18 with 10 classes has 11,173,962 trainable parameters.
        assert_eq!(count, 11_173_962);
    }

    #[test]
    fn narrower_networks_are_smaller_and_still_work() {
        let (half, shape) = parameters(0.5, Norm::Batch);
        assert_eq!(shape, vec![2, 10]);
        assert!(half < 11_173_962 / 3 && half > 11_173_962 / 5, "{half}");
        let (no_norm, _) = parameters(0.25, Norm::None);
        assert!(no_norm < half);
    }

    #[test]
    fn channels_round_to_multiples_of_eight_with_a_floor() {
        assert_eq!(scaled_channels(64, 1.0), 64);
        assert_eq!(scaled_channels(64, 0.5), 32);
        assert_eq!(scaled_channels(64, 0.25), 16);
        assert_eq!(scaled_channels(64, 0.1), 8);
        assert_eq!(scaled_channels(64, 0.01), 8);
        assert_eq!(scaled_channels(512, 0.3), 152);
    }
}
