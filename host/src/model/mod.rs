//! The networks vigil trains: an MLP, a small CNN, and the CIFAR ResNet-18. Each takes a batch of `N × C × H × W` images and returns
//! `N × classes` logits. Each starts as the same network in PyTorch would ([`init`]).

pub mod init;
mod resnet;
pub mod taps;
mod torchscript;

use tch::nn::{self, ModuleT};
use tch::Tensor;

use init::ConvOptions;

pub use resnet::{scaled_channels, ResNet18};
pub use torchscript::{PlainGraphExecutor, ScriptedModel};

use crate::config::{ModelKind, ModelSettings};
use crate::error::{Error, Result};

/// The shape of one input image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl InputShape {
    pub fn pixels(&self) -> usize {
        self.channels * self.height * self.width
    }
}

/// A network vigil trains: one of its own, or a TorchScript module from PyTorch.
pub enum Network {
    Native(Box<dyn ModuleT + Send>),
    Scripted(ScriptedModel),
}

impl Network {
    /// The logits for `xs` in train or eval mode; a TorchScript module's failure is an error.
    pub fn forward(&self, xs: &tch::Tensor, train: bool) -> Result<tch::Tensor> {
        match self {
            Network::Native(module) => Ok(module.forward_t(xs, train)),
            Network::Scripted(module) => module.try_forward(xs, train),
        }
    }

    /// The TorchScript module, for a `torchscript` model.
    pub fn scripted(&self) -> Option<&ScriptedModel> {
        match self {
            Network::Scripted(module) => Some(module),
            Network::Native(_) => None,
        }
    }
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Network::Native(_) => f.write_str("Network::Native"),
            Network::Scripted(module) => write!(f, "Network::Scripted({module:?})"),
        }
    }
}

impl ModuleT for Network {
    fn forward_t(&self, xs: &tch::Tensor, train: bool) -> tch::Tensor {
        match self {
            Network::Native(module) => module.forward_t(xs, train),
            Network::Scripted(module) => module.forward_t(xs, train),
        }
    }
}

/// Build the model the settings describe, registering its parameters under `root`. A
/// `torchscript` model is loaded from `module_file` when given (a checkpoint's copy), else
/// from `model.path`.
pub fn build(
    root: &nn::Path,
    settings: &ModelSettings,
    input: InputShape,
    classes: usize,
    module_file: Option<&std::path::Path>,
) -> Result<Network> {
    Ok(Network::Native(match settings.kind {
        ModelKind::Mlp => Box::new(mlp(root, &settings.hidden, input, classes)),
        ModelKind::Cnn => Box::new(small_cnn(root, input, classes)),
        ModelKind::Resnet18 => Box::new(ResNet18::new(
            root,
            input.channels,
            classes,
            settings.width_mult,
            settings.norm,
        )),
        ModelKind::Torchscript => {
            let file = module_file
                .or(settings.path.as_deref())
                .ok_or_else(|| Error::Config {
                    location: "model.path".into(),
                    message: "is required with kind = \"torchscript\"".into(),
                })?;
            return Ok(Network::Scripted(ScriptedModel::load(root, file)?));
        }
    }))
}

/// Give every four-dimensional variable (the convolutions' weights) channels-last strides:
/// the logical shape, values and names stay, the memory order becomes `N × H × W × C`.
/// libtorch's CPU convolutions then run channels-last throughout (the layout follows a
/// channels-last weight), and max pooling with them, whose `N × C × H × W` kernel was a quarter
/// of the small CNN's step: on W1 the plain PyTorch loop's step fell from 37 to 26 ms with the
/// same change. Whoever reads a variable's values gets them in the logical order (`copy_data`
/// and checkpoints copy through `contiguous`), and loading a checkpoint copies into the
/// variables in place, so the strides stay.
pub fn use_channels_last(vars: &nn::VarStore) -> Result<()> {
    let _no_grad = tch::no_grad_guard();
    for (_, mut variable) in vars.variables() {
        if let [_, c, h, w] = variable.size()[..] {
            // Strides spelled out: a permute-contiguous-permute round trip leaves a tensor
            // with one input channel as it was (its size-1 dimension makes it contiguous
            // either way), and libtorch reads those strides as the standard layout.
            let strides = [h * w * c, 1, w * c, c];
            let mut restrided = Tensor::f_empty_strided(
                variable.size(),
                strides,
                (variable.kind(), variable.device()),
            )?;
            restrided.f_copy_(&variable)?;
            variable.f_set_data(&restrided)?;
        }
    }
    Ok(())
}

/// Fully connected network: flatten, then `hidden` ReLU layers, then a linear classifier.
pub fn mlp(
    root: &nn::Path,
    hidden: &[usize],
    input: InputShape,
    classes: usize,
) -> nn::SequentialT {
    let mut net = nn::seq_t().add_fn(|xs| xs.flat_view());
    let mut width = input.pixels() as i64;
    for (index, &out) in hidden.iter().enumerate() {
        net = net
            .add(init::linear(
                root / format!("fc{}", index + 1),
                width,
                out as i64,
            ))
            .add_fn(|xs| xs.relu());
        width = out as i64;
    }
    net.add(init::linear(root / "classifier", width, classes as i64))
}

/// The small CNN: conv32 → pool → conv64 → pool → fc128 → classifier (3×3 convs, ReLU).
pub fn small_cnn(root: &nn::Path, input: InputShape, classes: usize) -> nn::SequentialT {
    let same = ConvOptions {
        padding: 1,
        ..ConvOptions::TORCH
    };
    let pooled = (input.height / 4) * (input.width / 4);
    nn::seq_t()
        .add(init::conv2d(
            root / "conv1",
            input.channels as i64,
            32,
            3,
            same,
        ))
        .add_fn(|xs| xs.relu().max_pool2d_default(2))
        .add(init::conv2d(root / "conv2", 32, 64, 3, same))
        // `reshape`, not a view: in channels-last memory the flattened order is a copy.
        .add_fn(|xs| {
            let rows = xs.size()[0];
            xs.relu().max_pool2d_default(2).reshape([rows, -1])
        })
        .add(init::linear(root / "fc1", 64 * pooled as i64, 128))
        .add_fn(|xs| xs.relu())
        .add(init::linear(root / "classifier", 128, classes as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn parameter_count(vs: &nn::VarStore) -> i64 {
        vs.trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }

    #[test]
    fn small_cnn_has_the_expected_shape_and_size() {
        let vs = nn::VarStore::new(Device::Cpu);
        let input = InputShape {
            channels: 1,
            height: 28,
            width: 28,
        };
        let net = small_cnn(&vs.root(), input, 10);
        let logits = net.forward_t(
            &Tensor::zeros([3, 1, 28, 28], (Kind::Float, Device::Cpu)),
            false,
        );
        assert_eq!(logits.size(), vec![3, 10]);
        // conv1 320 + conv2 18,496 + fc1 401,536 + classifier 1,290
        assert_eq!(parameter_count(&vs), 320 + 18_496 + 401_536 + 1_290);
    }

    #[test]
    fn mlp_has_the_expected_shape_and_size() {
        let vs = nn::VarStore::new(Device::Cpu);
        let input = InputShape {
            channels: 3,
            height: 8,
            width: 8,
        };
        let net = mlp(&vs.root(), &[16], input, 4);
        let logits = net.forward_t(
            &Tensor::zeros([2, 3, 8, 8], (Kind::Float, Device::Cpu)),
            false,
        );
        assert_eq!(logits.size(), vec![2, 4]);
        assert_eq!(parameter_count(&vs), 192 * 16 + 16 + 16 * 4 + 4);
    }

    /// Every convolution's weight, one input channel included, gets channels-last strides
    /// with its values unchanged, and the network computes the same logits as before.
    #[test]
    fn channels_last_weights_keep_their_values_and_the_logits() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let input = InputShape {
            channels: 1,
            height: 28,
            width: 28,
        };
        let net = small_cnn(&vs.root(), input, 10);
        let images = Tensor::randn([5, 1, 28, 28], (Kind::Float, Device::Cpu));
        let before = net.forward_t(&images, false);
        let values: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .map(|(name, t)| (name, t.copy()))
            .collect();
        use_channels_last(&vs).unwrap();
        let variables = vs.variables();
        assert_eq!(variables["conv1.weight"].stride(), [9, 1, 3, 1]);
        assert_eq!(variables["conv2.weight"].stride(), [288, 1, 96, 32]);
        assert_eq!(variables["fc1.weight"].stride(), [3136, 1]);
        for (name, value) in &values {
            assert!(variables[name].equal(value), "{name} changed");
        }
        let after = net.forward_t(&images, false);
        let difference = (&after - &before).abs().max().double_value(&[]);
        assert!(difference < 1e-5, "the logits moved by {difference}");
    }
}
