//! A TorchScript module saved from PyTorch (`torch.jit.script(model).save("net.pt")`), trained
//! like the built-in networks.
//!
//! Its parameters join the variable store under their PyTorch names (`conv1.weight`), sharing
//! storage with the module, so vigil's optimizers, clipping and monitors see and update them in
//! place. Its buffers (batch-norm statistics) live only in the module: libtorch's C API gives
//! no access to them, so a checkpoint saves the whole module ([`ScriptedModel::save`]) beside
//! the variable store, and a resumed run loads the module from there. Train and eval mode are
//! switched on the module whenever `forward_t` is asked for the other one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tch::nn::{self, ModuleT};
use tch::{CModule, Kind, Tensor};

use super::InputShape;
use crate::error::{Error, Result};

/// A loaded TorchScript module; clones share it.
#[derive(Clone)]
pub struct ScriptedModel {
    inner: Arc<Mutex<Scripted>>,
    /// The file it was loaded from, for messages.
    path: PathBuf,
}

struct Scripted {
    module: CModule,
    /// The mode last set on the module; `None` until the first forward pass.
    training: Option<bool>,
}

impl ScriptedModel {
    /// Load the module in `file` onto `root`'s device and register its parameters under `root`.
    pub fn load(root: &nn::Path, file: &Path) -> Result<Self> {
        if !file.is_file() {
            return Err(Error::DataMissing {
                path: file.to_path_buf(),
                what: "TorchScript model file".into(),
                hint: "set `model.path` to a file saved with `torch.jit.script(model).save(PATH)` \
                       (scripts/script_model.py shows how)"
                    .into(),
            });
        }
        let module = CModule::load_on_device(file, root.device()).map_err(|e| Error::Config {
            location: file.display().to_string(),
            message: format!(
                "is not a TorchScript module libtorch can load ({}); save it with \
                 `torch.jit.script(model).save(PATH)` or `torch.jit.trace(model, example).save(PATH)`",
                first_line(&e.to_string())
            ),
        })?;
        let parameters = module.named_parameters()?;
        if parameters.is_empty() {
            return Err(Error::Config {
                location: file.display().to_string(),
                message: "has no parameters to train".into(),
            });
        }
        for (name, tensor) in parameters {
            let mut segments: Vec<&str> = name.split('.').collect();
            let leaf = segments.pop().unwrap_or_default();
            let owner = segments.iter().fold(None::<nn::Path>, |path, segment| {
                Some(match path {
                    Some(path) => path.sub(*segment),
                    None => root.sub(*segment),
                })
            });
            let trainable = tensor.requires_grad();
            if tensor.kind() != Kind::Float {
                return Err(Error::Config {
                    location: file.display().to_string(),
                    message: format!(
                        "parameter `{name}` is {:?}; vigil trains float32 parameters (call `.float()` on \
                         the model before scripting it)",
                        tensor.kind()
                    ),
                });
            }
            let _shared = match owner {
                Some(path) => path.add(leaf, tensor, trainable),
                None => root.add(leaf, tensor, trainable),
            };
        }
        Ok(ScriptedModel {
            inner: Arc::new(Mutex::new(Scripted {
                module,
                training: None,
            })),
            path: file.to_path_buf(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Scripted> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run the module in `train` or eval mode, switching the module's mode first if needed.
    pub fn try_forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut scripted = self.lock();
        if scripted.training != Some(train) {
            if train {
                scripted.module.f_set_train()?;
            } else {
                scripted.module.f_set_eval()?;
            }
            scripted.training = Some(train);
        }
        Ok(scripted.module.forward_ts(&[xs])?)
    }

    /// Check that the module takes a batch of the data's images and returns one logit per class,
    /// with a message that says what to fix when not.
    pub fn check_against(&self, images: &Tensor, input: InputShape, classes: usize) -> Result<()> {
        let count = images.size()[0];
        let shape = format!(
            "[{count}, {}, {}, {}]",
            input.channels, input.height, input.width
        );
        let invalid = |message: String| Error::Config {
            location: format!("model.path = {}", self.path.display()),
            message,
        };
        let logits = {
            let _no_grad = tch::no_grad_guard();
            self.try_forward(images, false).map_err(|e| {
                invalid(format!(
                    "the module fails on the first batch of the data, images of shape {shape} (float32, \
                     normalised): {}; the module must take N×C×H×W images of the configured data",
                    last_line(&e.to_string())
                ))
            })?
        };
        if logits.size() != [count, classes as i64] {
            return Err(invalid(format!(
                "the module returns shape {:?} for images of shape {shape}, but the data has {classes} \
                 classes: it must return N×{classes} logits",
                logits.size()
            )));
        }
        Ok(())
    }

    /// Save the module (parameters and buffers as they are now) to `file`, in eval mode when
    /// `eval` (the mode it is in afterwards is restored at the next forward pass).
    pub fn save(&self, file: &Path, eval: bool) -> Result<()> {
        let mut scripted = self.lock();
        if eval {
            scripted.module.f_set_eval()?;
            scripted.training = Some(false);
        }
        scripted.module.save(file).map_err(|e| Error::Io {
            path: file.to_path_buf(),
            source: std::io::Error::other(first_line(&e.to_string())),
        })
    }
}

impl std::fmt::Debug for ScriptedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ScriptedModel({})", self.path.display())
    }
}

impl ModuleT for ScriptedModel {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        // The input shape was checked against the data when the trainer was built; an error
        // here is a fault in the module itself.
        match self.try_forward(xs, train) {
            Ok(logits) => logits,
            Err(e) => panic!("the TorchScript model {} failed: {e}", self.path.display()),
        }
    }
}

/// Turns off the TorchScript graph executor's optimisations on this thread while it lives.
///
/// With them on, the profiling executor replaces parts of a scripted forward pass, after its
/// first runs, by optimised subgraphs (differentiable graphs, fusion groups) whose backward
/// TorchScript does not promise to be differentiable again; a Hessian-vector product needs
/// exactly that. With them off the module runs as written, through autograd like eager
/// PyTorch. On the CPU with libtorch 2.13 the products came out the same either way in our
/// test; the guard keeps them right where fusion is on (CUDA). The setting is per thread and
/// does not touch the built-in models, which do not run through the graph executor.
pub struct PlainGraphExecutor(());

impl PlainGraphExecutor {
    pub fn new() -> Self {
        tch::jit::set_graph_executor_optimize(false);
        PlainGraphExecutor(())
    }
}

impl Default for PlainGraphExecutor {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PlainGraphExecutor {
    fn drop(&mut self) {
        tch::jit::set_graph_executor_optimize(true);
    }
}

fn first_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or(message)
        .to_string()
}

/// TorchScript's errors end with the exception itself, after a traceback.
fn last_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty())
        .unwrap_or(message)
        .to_string()
}
