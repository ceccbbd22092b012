//! `vigil export-model`: a trained model from a run's checkpoint, as a file to deploy.
//!
//! A TorchScript model is written as TorchScript (the module with its trained parameters and
//! buffers, in eval mode: `torch.jit.load(FILE)(x)` gives vigil's logits). A built-in network
//! is written as ONNX ([`onnx`]). Beside either goes `FILE.json`: the input shape, the
//! normalisation the inputs need and the class names ([`InputSpec`]).

pub mod onnx;
mod onnx_proto;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{nn, Device};

use crate::config::{ModelKind, Settings};
use crate::error::{Error, Result};
use crate::fs::write_atomically;
use crate::model::{self, InputShape};
use crate::run_dir::{CheckpointIndex, CHECKPOINT_DIR, INPUTS_FILE};
use crate::train::checkpoint::{self, MODULE};
use crate::train::InputSpec;

/// Which checkpoint of a run to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The best by validation loss.
    Best,
    /// The newest.
    Last,
    /// The one taken at this global step.
    Step(u64),
}

impl std::str::FromStr for Which {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text {
            "best" => Ok(Which::Best),
            "last" => Ok(Which::Last),
            other => other
                .strip_prefix("step_")
                .and_then(|step| step.parse().ok())
                .map(Which::Step)
                .ok_or_else(|| format!("`{other}` is not best, last or step_N (e.g. step_1200)")),
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub format: &'static str,
    pub checkpoint: PathBuf,
    pub file: PathBuf,
    pub inputs_file: PathBuf,
    /// Checkpoints passed over because their files no longer match their checksums.
    pub warnings: Vec<String>,
}

/// Export the model of `run_dir`'s checkpoint `which` to `out` (and `out.json`).
pub fn export_model(run_dir: &Path, which: Which, out: &Path) -> Result<Exported> {
    let (dir, warnings) = choose(run_dir, which)?;
    let state = checkpoint::read_state_of(&dir)?;
    let settings = Settings::from_toml(&state.config, &dir.join("state.json"))?;
    let inputs_path = run_dir.join(INPUTS_FILE);
    let text = std::fs::read(&inputs_path).map_err(|source| Error::io(&inputs_path, source))?;
    let inputs: InputSpec = serde_json::from_slice(&text).map_err(|err| Error::DataCorrupt {
        path: inputs_path.clone(),
        reason: format!("is not a vigil inputs file: {err}"),
    })?;
    let mut vars = nn::VarStore::new(Device::Cpu);
    let shape = InputShape {
        channels: inputs.channels,
        height: inputs.height,
        width: inputs.width,
    };
    let module_file = dir.join(MODULE);
    let network = model::build(
        &vars.root(),
        &settings.model,
        shape,
        inputs.class_names.len(),
        (settings.model.kind == ModelKind::Torchscript).then_some(module_file.as_path()),
    )?;
    checkpoint::load_model(&dir, &mut vars)?;
    let format = match network.scripted() {
        Some(scripted) => {
            let temporary = temporary_beside(out);
            scripted.save(&temporary, true)?;
            crate::fs::sync_file(&temporary)?;
            std::fs::rename(&temporary, out).map_err(|source| Error::io(out, source))?;
            "TorchScript"
        }
        None => {
            let variables: HashMap<String, tch::Tensor> = vars.variables().into_iter().collect();
            write_atomically(out, &onnx::encode(&settings.model, &inputs, &variables)?)?;
            "ONNX"
        }
    };
    let mut inputs_file = out.as_os_str().to_owned();
    inputs_file.push(".json");
    let inputs_file = PathBuf::from(inputs_file);
    write_atomically(&inputs_file, &inputs.to_json())?;
    Ok(Exported {
        format,
        checkpoint: dir,
        file: out.to_path_buf(),
        inputs_file,
        warnings,
    })
}

/// Whether the run's config has `[early_stopping]` with `restore_best` (its default).
fn restores_best(run_dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(run_dir.join(crate::run_dir::CONFIG_FILE)) else {
        return false;
    };
    let Ok(config) = text.parse::<toml::Table>() else {
        return false;
    };
    config
        .get("early_stopping")
        .and_then(toml::Value::as_table)
        .is_some_and(|early| {
            early
                .get("restore_best")
                .and_then(toml::Value::as_bool)
                .unwrap_or(true)
        })
}

/// The checkpoint directory `which` names, checked against its checksums: the best or the
/// last falls back to the next intact one (with a warning each), a step named is refused.
fn choose(run_dir: &Path, which: Which) -> Result<(PathBuf, Vec<String>)> {
    let root = run_dir.join(CHECKPOINT_DIR);
    let missing = |what: String| Error::Config {
        location: run_dir.display().to_string(),
        message: what,
    };
    match which {
        Which::Last => checkpoint::newest_intact(run_dir).map(|latest| {
            let warnings = latest.warnings();
            (latest.dir, warnings)
        }),
        Which::Best => {
            let text = std::fs::read(root.join("index.json")).map_err(|_| {
                missing(
                    "has no checkpoints/index.json: was it trained with checkpoints enabled?"
                        .into(),
                )
            })?;
            let index: CheckpointIndex =
                serde_json::from_slice(&text).map_err(|err| Error::DataCorrupt {
                    path: root.join("index.json"),
                    reason: err.to_string(),
                })?;
            if index.best.is_empty() {
                return Err(missing("has no best checkpoint yet (none was taken after a validation); use --checkpoint last".into()));
            }
            let mut passed_over: Vec<(PathBuf, String)> = Vec::new();
            // A run that early stopping restored ended with its best validation's weights.
            let restored = index
                .early_stopping_best
                .iter()
                .filter(|_| restores_best(run_dir));
            for entry in restored.chain(&index.best) {
                let dir = root.join(&entry.dir);
                match checkpoint::read_state_of(&dir)
                    .and_then(|state| checkpoint::verify(&dir, &state))
                {
                    Ok(()) => {
                        let warnings = passed_over
                            .iter()
                            .map(|(damaged, reason)| {
                                format!(
                                    "checkpoint {} is damaged or unreadable ({reason}); exporting the next best intact one, {}",
                                    damaged.display(),
                                    dir.display()
                                )
                            })
                            .collect();
                        return Ok((dir, warnings));
                    }
                    Err(err) => passed_over.push((dir, err.to_string())),
                }
            }
            Err(Error::CheckpointDamaged {
                path: root,
                reason: format!(
                    "no best checkpoint is intact: {}; try --checkpoint last",
                    passed_over
                        .iter()
                        .map(|(_, reason)| reason.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            })
        }
        Which::Step(step) => {
            let dir = root.join(format!("step_{step:09}"));
            if dir.join("state.json").is_file() {
                let state = checkpoint::read_state_of(&dir)?;
                checkpoint::verify(&dir, &state)?;
                Ok((dir, Vec::new()))
            } else {
                let mut kept: Vec<String> = std::fs::read_dir(&root)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.starts_with("step_"))
                    .collect();
                kept.sort();
                Err(missing(format!(
                    "has no complete checkpoint at step {step}; it keeps {}",
                    if kept.is_empty() {
                        "none".to_string()
                    } else {
                        kept.join(", ")
                    }
                )))
            }
        }
    }
}

fn temporary_beside(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}
