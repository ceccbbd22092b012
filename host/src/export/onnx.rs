//! ONNX graphs of the built-in networks (opset 13), with their trained weights as
//! initializers: the MLP, the small CNN and the CIFAR ResNet-18 (batch norm or none), in eval
//! mode (batch norm uses its running statistics). The graphs follow `crate::model` layer by
//! layer and read each weight by the name the variable store gives it.

use std::collections::HashMap;

use prost::Message;
use tch::{Kind, Tensor};

use super::onnx_proto::{
    float_value, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, FLOAT,
};
use crate::config::{ModelKind, ModelSettings, Norm};
use crate::error::{Error, Result};
use crate::model::scaled_channels;
use crate::train::InputSpec;

/// The operator set the graphs use.
pub const OPSET: i64 = 13;
/// ONNX IR version 8 (ONNX 1.10 and later read it).
const IR_VERSION: i64 = 8;
/// `nn::BatchNormConfig`'s default epsilon, which the built-in networks use.
const BATCH_NORM_EPS: f32 = 1e-5;

/// The ONNX model of a built-in network with the weights in `variables` (by name), taking
/// `input` images named `input` and returning `logits`.
pub fn encode(
    settings: &ModelSettings,
    input: &InputSpec,
    variables: &HashMap<String, Tensor>,
) -> Result<Vec<u8>> {
    let mut graph = Builder {
        variables,
        nodes: Vec::new(),
        initializers: Vec::new(),
        added: Vec::new(),
    };
    let x = "input".to_string();
    let logits =
        match settings.kind {
            ModelKind::Mlp => {
                let mut x = graph.node("Flatten", vec![x], vec![AttributeProto::int("axis", 1)]);
                for index in 1..=settings.hidden.len() {
                    x = graph.linear(&x, &format!("fc{index}"))?;
                    x = graph.node("Relu", vec![x], vec![]);
                }
                graph.linear(&x, "classifier")?
            }
            ModelKind::Cnn => {
                let x = graph.conv(&x, "conv1", 1, 1, true)?;
                let x = graph.node("Relu", vec![x], vec![]);
                let x = graph.max_pool(x);
                let x = graph.conv(&x, "conv2", 1, 1, true)?;
                let x = graph.node("Relu", vec![x], vec![]);
                let x = graph.max_pool(x);
                let x = graph.node("Flatten", vec![x], vec![AttributeProto::int("axis", 1)]);
                let x = graph.linear(&x, "fc1")?;
                let x = graph.node("Relu", vec![x], vec![]);
                graph.linear(&x, "classifier")?
            }
            ModelKind::Resnet18 => resnet(&mut graph, x, settings)?,
            ModelKind::Torchscript => return Err(Error::Config {
                location: "model.kind".into(),
                message:
                    "is \"torchscript\": a TorchScript model is exported as TorchScript, not ONNX"
                        .into(),
            }),
        };
    graph.node("Identity", vec![logits], vec![]);
    let classes = input.class_names.len() as i64;
    let Builder {
        mut nodes,
        initializers,
        ..
    } = graph;
    // The graph's output is the last node's.
    if let Some(last) = nodes.last_mut() {
        last.output = vec!["logits".into()];
    }
    let model = ModelProto {
        ir_version: IR_VERSION,
        producer_name: "vigil".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!(
            "vigil {} network: input N×{}×{}×{} float, normalised per channel (mean {:?}, std {:?}); \
             output N×{classes} logits",
            settings.kind.name(),
            input.channels,
            input.height,
            input.width,
            input.mean,
            input.std
        ),
        graph: Some(GraphProto {
            node: nodes,
            name: format!("vigil-{}", settings.kind.name()),
            initializer: initializers,
            input: vec![float_value(
                "input",
                &[
                    None,
                    Some(input.channels as i64),
                    Some(input.height as i64),
                    Some(input.width as i64),
                ],
            )],
            output: vec![float_value("logits", &[None, Some(classes)])],
        }),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        metadata_props: vec![
            StringStringEntryProto {
                key: "class_names".into(),
                value: serde_json::to_string(&input.class_names).unwrap_or_default(),
            },
            StringStringEntryProto {
                key: "normalisation".into(),
                value: serde_json::json!({"mean": input.mean, "std": input.std}).to_string(),
            },
        ],
    };
    Ok(model.encode_to_vec())
}

/// The ResNet-18 of `crate::model::resnet`: stem, four stages of two basic blocks, global
/// average pool, classifier.
fn resnet(graph: &mut Builder<'_>, x: String, settings: &ModelSettings) -> Result<String> {
    let norm = settings.norm;
    let mut x = graph.conv_norm(&x, "stem", 1, norm)?;
    x = graph.node("Relu", vec![x], vec![]);
    let widths: Vec<i64> = [64, 128, 256, 512]
        .iter()
        .map(|&c| scaled_channels(c, settings.width_mult))
        .collect();
    let mut c_in = widths[0];
    for (stage, &c_out) in widths.iter().enumerate() {
        for index in 0..2 {
            let stride = if stage > 0 && index == 0 { 2 } else { 1 };
            let block = format!("layer{}.{index}", stage + 1);
            let y = graph.conv_norm(&x, &format!("{block}.conv1"), stride, norm)?;
            let y = graph.node("Relu", vec![y], vec![]);
            let y = graph.conv_norm(&y, &format!("{block}.conv2"), 1, norm)?;
            let skip = if stride != 1 || c_in != c_out {
                graph.conv_norm(&x, &format!("{block}.shortcut"), stride, norm)?
            } else {
                x.clone()
            };
            let sum = graph.node("Add", vec![y, skip], vec![]);
            x = graph.node("Relu", vec![sum], vec![]);
            c_in = c_out;
        }
    }
    let pooled = graph.node("GlobalAveragePool", vec![x], vec![]);
    let flat = graph.node(
        "Flatten",
        vec![pooled],
        vec![AttributeProto::int("axis", 1)],
    );
    graph.linear(&flat, "classifier")
}

struct Builder<'a> {
    variables: &'a HashMap<String, Tensor>,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    added: Vec<String>,
}

impl Builder<'_> {
    /// A node with one output, named after its position; returns that name.
    fn node(&mut self, op: &str, input: Vec<String>, attribute: Vec<AttributeProto>) -> String {
        let output = format!("{}_{}", op.to_ascii_lowercase(), self.nodes.len());
        self.nodes.push(NodeProto {
            input,
            output: vec![output.clone()],
            name: output.clone(),
            op_type: op.into(),
            attribute,
        });
        output
    }

    /// The weight `name` as an initializer (added once); its dims.
    fn weight(&mut self, name: &str) -> Result<Vec<i64>> {
        let tensor = self.variables.get(name).ok_or_else(|| Error::DataCorrupt {
            path: "model.safetensors".into(),
            reason: format!("has no variable `{name}`, which the exported graph needs"),
        })?;
        let dims = tensor.size();
        if !self.added.iter().any(|added| added == name) {
            let values = Vec::<f32>::try_from(
                tensor
                    .f_to_kind(Kind::Float)?
                    .f_contiguous()?
                    .f_reshape([-1])?,
            )?;
            self.initializers.push(TensorProto {
                dims: dims.clone(),
                data_type: FLOAT,
                name: name.into(),
                raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            });
            self.added.push(name.into());
        }
        Ok(dims)
    }

    /// `nn::Linear`: `x · Wᵀ + b` as Gemm with `transB = 1`.
    fn linear(&mut self, x: &str, prefix: &str) -> Result<String> {
        let (weight, bias) = (format!("{prefix}.weight"), format!("{prefix}.bias"));
        self.weight(&weight)?;
        self.weight(&bias)?;
        Ok(self.node(
            "Gemm",
            vec![x.into(), weight, bias],
            vec![AttributeProto::int("transB", 1)],
        ))
    }

    /// A square convolution with `padding` on every side.
    fn conv(
        &mut self,
        x: &str,
        prefix: &str,
        stride: i64,
        padding: i64,
        bias: bool,
    ) -> Result<String> {
        let weight = format!("{prefix}.weight");
        let dims = self.weight(&weight)?;
        let kernel = dims[2];
        let mut inputs = vec![x.to_string(), weight];
        if bias {
            let bias = format!("{prefix}.bias");
            self.weight(&bias)?;
            inputs.push(bias);
        }
        Ok(self.node(
            "Conv",
            inputs,
            vec![
                AttributeProto::ints("kernel_shape", &[kernel, kernel]),
                AttributeProto::ints("strides", &[stride, stride]),
                AttributeProto::ints("pads", &[padding; 4]),
            ],
        ))
    }

    fn max_pool(&mut self, x: String) -> String {
        self.node(
            "MaxPool",
            vec![x],
            vec![
                AttributeProto::ints("kernel_shape", &[2, 2]),
                AttributeProto::ints("strides", &[2, 2]),
            ],
        )
    }

    /// The ResNet's convolution (`<prefix>.conv`, padding `kernel / 2`, a bias only without
    /// norm) and batch norm (`<prefix>.bn`, running statistics).
    fn conv_norm(&mut self, x: &str, prefix: &str, stride: i64, norm: Norm) -> Result<String> {
        let conv = format!("{prefix}.conv");
        let kernel = self.weight(&format!("{conv}.weight"))?[2];
        let y = self.conv(x, &conv, stride, kernel / 2, norm == Norm::None)?;
        if norm == Norm::None {
            return Ok(y);
        }
        let bn = format!("{prefix}.bn");
        let names: Vec<String> = ["weight", "bias", "running_mean", "running_var"]
            .iter()
            .map(|part| format!("{bn}.{part}"))
            .collect();
        for name in &names {
            self.weight(name)?;
        }
        let mut inputs = vec![y];
        inputs.extend(names);
        Ok(self.node(
            "BatchNormalization",
            inputs,
            vec![AttributeProto::float("epsilon", BATCH_NORM_EPS)],
        ))
    }
}
