//! Checkpoints under `<run_dir>/checkpoints/`: the best `k` by validation loss plus the last.
//!
//! Each checkpoint is a directory `step_<global step>/` with `model.safetensors` (every
//! variable of the model, batch-norm statistics included), `optimizer.safetensors` (momentum
//! and moment buffers), `host.safetensors` (tensors the host keeps for monitors, such as
//! gradient averages; absent when there are none), `module.pt` for a TorchScript model (the
//! whole module: its batch-norm statistics live only there), one `monitor-<index>.state` file per
//! monitor that saved state, and `state.json` (counters, the epoch's running sums, the
//! effective config, the lengths of every file the run appends to, what each monitor saved).
//!
//! Integrity: `state.json` records the length and CRC-32C of every other file of the
//! checkpoint as it was written (`checksums`); [`newest_intact`] and [`verify`] check them, so that a
//! file damaged on disk after it was written (safetensors itself carries no checksum) is
//! found before a run resumes from it or a model is exported from it ([`newest_intact`]). A damaged checkpoint is
//! passed over for the newest intact one, with a warning.
//!
//! Durability: every file is fsynced, the directory is written under a temporary name,
//! fsynced, renamed into place, and the parent fsynced; only then is `index.json` (which says
//! which directories are the best and which is the last) replaced atomically and durably. A
//! crash or power loss at any moment leaves the previous complete checkpoint loadable.
//! Directories no longer referenced are removed only after the new index is in place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use super::optim::Optimizer;
use crate::error::{Error, Result};
use crate::fs::{self, write_atomically};
use crate::model::ScriptedModel;
pub use crate::run_dir::{CheckpointEntry, CheckpointIndex, CHECKPOINT_DIR};
pub use crate::sink::tensorboard::TensorBoardMark;

const INDEX: &str = "index.json";
const STATE: &str = "state.json";
const MODEL: &str = "model.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const HOST: &str = "host.safetensors";
/// The TorchScript module of a `torchscript` model: parameters and buffers.
pub const MODULE: &str = "module.pt";

/// The checkpoint format this version writes and reads. Format 1 (vigil 0.1 before faithful
/// resume) kept the raw config text and derived epoch orders differently; it is refused.
pub const FORMAT: u32 = 2;

/// Everything besides tensors that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    pub format: u32,
    /// Optimizer steps taken.
    pub global_step: u64,
    /// The epoch in progress (1-based).
    pub epoch: usize,
    /// Batches of that epoch already trained.
    pub batches_done: u32,
    /// Running sums of the epoch so far, for its epoch record.
    pub epoch_loss_sum: f64,
    pub epoch_correct: f64,
    pub epoch_samples: u64,
    /// Validation passes so far.
    pub validation_pass: u32,
    pub best_val_loss: Option<f64>,
    /// The validation loss this checkpoint was ranked by.
    pub val_loss: Option<f64>,
    pub optimizer_steps: u64,
    pub seed: u64,
    /// The effective config of the run (file, overrides and defaults), as TOML.
    pub config: String,
    /// Length of `metrics.jsonl` when the checkpoint was taken: a resumed run cuts the file
    /// back to it, so that no record is written twice.
    pub metrics_bytes: Option<u64>,
    /// Every other file the run appends to (monitor artifacts), relative to the run
    /// directory, with its length: a resumed run cuts each back the same way.
    #[serde(default)]
    pub appended: std::collections::BTreeMap<String, u64>,
    /// The TensorBoard event file being written and its length: a resumed run copies the
    /// events at the checkpoint's step from it into its own file, after a restart marker.
    #[serde(default)]
    pub tensorboard: Option<TensorBoardMark>,
    /// What each monitor left, in config order.
    #[serde(default)]
    pub monitors: Vec<SavedMonitor>,
    /// Gradient averages the host keeps for monitors (their tensors are in `host.safetensors`).
    #[serde(default)]
    pub gradient_averages: Vec<SavedGradientAverage>,
    /// The length of the MLflow outbox (`[mlflow]`): a resumed run cuts it back the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlflow_outbox: Option<u64>,
    /// Where early stopping stands, for a run that has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<super::early_stop::EarlyStopState>,
    pub vigil_version: String,
    /// Every other file of the checkpoint, by name, as it was written. Checkpoints of an
    /// older vigil have none, and are not checked.
    #[serde(default)]
    pub checksums: BTreeMap<String, FileChecksum>,
}

/// The length and CRC-32C (Castagnoli) of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChecksum {
    pub bytes: u64,
    pub crc32c: u32,
}

impl FileChecksum {
    /// The checksum of the file at `path`, read whole.
    pub fn of_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::io(path, source))?;
        Ok(FileChecksum {
            bytes: bytes.len() as u64,
            crc32c: crc32c::crc32c(&bytes),
        })
    }
}

impl TrainingState {
    /// Where the files the run appends to stood at this checkpoint.
    pub fn output_marks(&self) -> crate::hub::OutputMarks {
        crate::hub::OutputMarks {
            metrics_bytes: self.metrics_bytes,
            appended: self.appended.clone(),
            tensorboard: self.tensorboard.clone(),
            mlflow_outbox: self.mlflow_outbox,
        }
    }
}

/// One monitor's part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedMonitor {
    pub name: String,
    pub plugin_version: String,
    /// The `vigil-plugin-api` version the plugin was built against.
    pub api_version: String,
    /// Whether the plugin takes part in saving state (built against API 1.1 or later).
    pub saves_state: bool,
    /// The state file in the checkpoint directory, when the monitor returned state.
    pub state_file: Option<String>,
    /// Why the monitor had been disabled, if it had.
    pub disabled: Option<String>,
}

/// One monitor's host-kept gradient averages (the EMA tensor is `gradient_ema.<owner>` in
/// `host.safetensors`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedGradientAverage {
    pub owner: usize,
    pub beta: f64,
    pub mean_square: f64,
    pub updates: u64,
    pub last_step: Option<u64>,
}

/// Besides the model and the optimizer: tensors the host keeps (`host.safetensors`) and files
/// of bytes (monitor state), by file name.
#[derive(Debug, Default)]
pub struct Extras {
    pub tensors: Vec<(String, Tensor)>,
    pub files: Vec<(String, Vec<u8>)>,
    /// A TorchScript model, saved whole as `module.pt` (its buffers are not in the store).
    pub module: Option<ScriptedModel>,
}

/// Keeps the checkpoints of one run.
#[derive(Debug)]
pub struct Checkpoints {
    root: PathBuf,
    keep_best: usize,
    index: CheckpointIndex,
}

impl Checkpoints {
    /// Manage `<run_dir>/checkpoints`, continuing its index if there is one.
    pub fn open(run_dir: &Path, keep_best: usize) -> Result<Self> {
        let root = run_dir.join(CHECKPOINT_DIR);
        std::fs::create_dir_all(&root).map_err(|source| Error::io(&root, source))?;
        // The directory's own entry in the run directory must survive power loss too.
        fs::sync_parent(&root)?;
        let mut index = read_index(&root).unwrap_or_default();
        // Entries whose directory was set aside as damaged (or removed by hand) are dropped.
        let exists = |entry: &CheckpointEntry| root.join(&entry.dir).join(STATE).is_file();
        index.best.retain(exists);
        index.last = index.last.filter(exists);
        index.early_stopping_best = index.early_stopping_best.filter(exists);
        Ok(Checkpoints {
            root,
            keep_best,
            index,
        })
    }

    /// The `checkpoints` directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn index(&self) -> &CheckpointIndex {
        &self.index
    }

    /// Save a checkpoint at `state.global_step`; it becomes `last`, and one of the best if its
    /// validation loss ranks among the best `keep_best`.
    ///
    /// A complete checkpoint of the same step is kept as it is: nothing a resume depends on
    /// changes while the step does not.
    pub fn save(
        &mut self,
        vars: &nn::VarStore,
        optimizer: &Optimizer,
        state: &TrainingState,
        extras: &Extras,
    ) -> Result<PathBuf> {
        let name = format!("step_{:09}", state.global_step);
        let final_dir = self.root.join(&name);
        if !final_dir.join(STATE).is_file() {
            let temporary = self.root.join(format!(".tmp-{name}"));
            let _ = std::fs::remove_dir_all(&temporary);
            std::fs::create_dir_all(&temporary).map_err(|source| Error::io(&temporary, source))?;
            write_checkpoint(&temporary, vars, optimizer, state, extras)?;
            fs::sync_dir(&temporary)?;
            let _ = std::fs::remove_dir_all(&final_dir);
            std::fs::rename(&temporary, &final_dir)
                .map_err(|source| Error::io(&final_dir, source))?;
            fs::sync_dir(&self.root)?;
        }
        let entry = CheckpointEntry {
            dir: name,
            global_step: state.global_step,
            val_loss: state.val_loss,
        };
        let mut index = self.index.clone();
        if entry.val_loss.is_some_and(f64::is_finite) {
            index.best.retain(|e| e.dir != entry.dir);
            index.best.push(entry.clone());
            index.best.sort_by(|a, b| {
                let (a_loss, b_loss) = (
                    a.val_loss.unwrap_or(f64::INFINITY),
                    b.val_loss.unwrap_or(f64::INFINITY),
                );
                a_loss
                    .total_cmp(&b_loss)
                    .then(a.global_step.cmp(&b.global_step))
            });
            index.best.truncate(self.keep_best);
        }
        let early_best = state.early_stopping.as_ref().and_then(|e| e.best_step);
        if early_best == Some(state.global_step) {
            index.early_stopping_best = Some(entry.clone());
        }
        index.last = Some(entry);
        let text = serde_json::to_vec_pretty(&index).map_err(|source| Error::Json {
            what: "checkpoint index".into(),
            source,
        })?;
        write_atomically(&self.root.join(INDEX), &text)?;
        self.index = index;
        self.remove_unreferenced();
        Ok(final_dir)
    }

    fn remove_unreferenced(&self) {
        let keep: Vec<&str> = self
            .index
            .best
            .iter()
            .chain(self.index.last.iter())
            .chain(self.index.early_stopping_best.iter())
            .map(|e| e.dir.as_str())
            .collect();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("step_") && !keep.contains(&name.as_str()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Tensors as contiguous CPU copies, as safetensors needs them.
fn on_cpu(tensors: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
    tensors
        .into_iter()
        .map(|(name, tensor)| Ok((name, tensor.f_to_device(Device::Cpu)?.f_contiguous()?)))
        .collect()
}

/// Write `tensors` to `path` and fsync it; safetensors cannot hold zero tensors, so an empty
/// file stands for none.
fn write_tensors(path: &Path, tensors: Vec<(String, Tensor)>) -> Result<()> {
    let tensors = on_cpu(tensors)?;
    if tensors.is_empty() {
        std::fs::write(path, b"").map_err(|source| Error::io(path, source))?;
    } else {
        Tensor::write_safetensors(&tensors, path)?;
    }
    fs::sync_file(path)
}

/// Read what [`write_tensors`] wrote.
fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let empty = std::fs::metadata(path)
        .map(|m| m.len() == 0)
        .map_err(|source| Error::io(path, source))?;
    if empty {
        Ok(Vec::new())
    } else {
        Ok(Tensor::read_safetensors(path)?)
    }
}

fn write_checkpoint(
    dir: &Path,
    vars: &nn::VarStore,
    optimizer: &Optimizer,
    state: &TrainingState,
    extras: &Extras,
) -> Result<()> {
    let mut written = vec![MODEL.to_string(), OPTIMIZER.to_string()];
    write_tensors(&dir.join(MODEL), vars.variables().into_iter().collect())?;
    write_tensors(&dir.join(OPTIMIZER), optimizer.state_tensors().0)?;
    if !extras.tensors.is_empty() {
        let tensors = extras
            .tensors
            .iter()
            .map(|(name, tensor)| (name.clone(), tensor.shallow_clone()))
            .collect();
        write_tensors(&dir.join(HOST), tensors)?;
        written.push(HOST.into());
    }
    if let Some(module) = &extras.module {
        let path = dir.join(MODULE);
        module.save(&path, false)?;
        fs::sync_file(&path)?;
        written.push(MODULE.into());
    }
    for (name, bytes) in &extras.files {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|source| Error::io(&path, source))?;
        fs::sync_file(&path)?;
        written.push(name.clone());
    }
    // Read back after the fsync: the sums are of what the disk was given.
    let mut state = state.clone();
    state.checksums = written
        .into_iter()
        .map(|name| Ok((name.clone(), FileChecksum::of_file(&dir.join(&name))?)))
        .collect::<Result<_>>()?;
    let text = serde_json::to_vec_pretty(&state).map_err(|source| Error::Json {
        what: "checkpoint state".into(),
        source,
    })?;
    // Written last: a directory with state.json is complete.
    write_atomically(&dir.join(STATE), &text)
}

fn read_index(root: &Path) -> Option<CheckpointIndex> {
    let text = std::fs::read(root.join(INDEX)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn read_state(dir: &Path) -> Result<TrainingState> {
    let path = dir.join(STATE);
    let text = std::fs::read(&path).map_err(|source| Error::io(&path, source))?;
    serde_json::from_slice(&text).map_err(|err| Error::DataCorrupt {
        path,
        reason: format!("not a vigil checkpoint state: {err}"),
    })
}

/// Check every file `state` lists against its recorded length and CRC-32C. The error names
/// the first file that differs.
pub fn verify(dir: &Path, state: &TrainingState) -> Result<()> {
    for (name, expected) in &state.checksums {
        let path = dir.join(name);
        let found = FileChecksum::of_file(&path).map_err(|err| Error::CheckpointDamaged {
            path: path.clone(),
            reason: format!("cannot be read: {err}"),
        })?;
        let problem = if found.bytes != expected.bytes {
            Some(format!(
                "is {} bytes long, but {} were written",
                found.bytes, expected.bytes
            ))
        } else if found.crc32c != expected.crc32c {
            Some(format!(
                "has CRC-32C {:08x}, but {:08x} was written: the file changed on disk",
                found.crc32c, expected.crc32c
            ))
        } else {
            None
        };
        if let Some(reason) = problem {
            return Err(Error::CheckpointDamaged { path, reason });
        }
    }
    Ok(())
}

/// The checkpoint a run continues from, and the newer ones passed over as damaged.
#[derive(Debug)]
pub struct Latest {
    pub dir: PathBuf,
    pub state: TrainingState,
    /// Newer complete checkpoints whose files do not match their checksums, newest first,
    /// each with what is wrong.
    pub damaged: Vec<(PathBuf, String)>,
}

impl Latest {
    /// One warning per damaged checkpoint passed over.
    pub fn warnings(&self) -> Vec<String> {
        self.damaged
            .iter()
            .map(|(dir, reason)| {
                format!(
                    "checkpoint {} is damaged ({reason}); continuing from the newest intact one, {}",
                    dir.display(),
                    self.dir.display()
                )
            })
            .collect()
    }
}

/// The newest complete, intact checkpoint of a run: the index's `last`, or, if the index is
/// missing or names a directory that is not complete or intact, the complete `step_*`
/// directory with the highest step whose files match their checksums. With none complete the
/// error says so ([`Error::Config`]); with complete ones that are all damaged it names each
/// ([`Error::CheckpointDamaged`]).
pub fn newest_intact(run_dir: &Path) -> Result<Latest> {
    let root = run_dir.join(CHECKPOINT_DIR);
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(|_| Error::Config {
            location: run_dir.display().to_string(),
            message: "has no checkpoints/ directory to resume from (was it written by `vigil train` with checkpoints enabled?)".into(),
        })?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step_")))
        .collect();
    candidates.sort();
    candidates.reverse();
    if let Some(last) = read_index(&root).and_then(|index| index.last) {
        let dir = root.join(&last.dir);
        candidates.retain(|candidate| *candidate != dir);
        candidates.insert(0, dir);
    }
    let mut damaged = Vec::new();
    for dir in candidates {
        let Ok(state) = read_state(&dir) else {
            continue;
        };
        match verify(&dir, &state) {
            Ok(()) => {
                return Ok(Latest {
                    dir,
                    state,
                    damaged,
                })
            }
            Err(err) => damaged.push((dir, err.to_string())),
        }
    }
    if damaged.is_empty() {
        return Err(Error::Config {
            location: root.display().to_string(),
            message: "holds no complete checkpoint to resume from".into(),
        });
    }
    Err(Error::CheckpointDamaged {
        path: root,
        reason: format!(
            "holds no intact checkpoint: {}; the run cannot be resumed (start it again)",
            damaged
                .iter()
                .map(|(_, reason)| reason.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ),
    })
}

/// The newest complete, intact checkpoint of a run and its state ([`newest_intact`] without
/// the damaged ones it passed over).
pub fn latest(run_dir: &Path) -> Result<(PathBuf, TrainingState)> {
    newest_intact(run_dir).map(|latest| (latest.dir, latest.state))
}

/// Move damaged checkpoints out of the way (to `.damaged-<name>` beside them, kept for a
/// look), so that the run writes intact ones in their place and the index no longer names
/// them. Called with the run's lock held.
pub fn set_aside(damaged: &[(PathBuf, String)]) -> Result<()> {
    for (dir, _) in damaged {
        let Some(name) = dir.file_name() else {
            continue;
        };
        let mut aside = std::ffi::OsString::from(".damaged-");
        aside.push(name);
        let target = dir.with_file_name(aside);
        let _ = std::fs::remove_dir_all(&target);
        std::fs::rename(dir, &target).map_err(|source| Error::io(dir, source))?;
    }
    Ok(())
}

/// The state of the complete checkpoint in `dir`.
pub fn read_state_of(dir: &Path) -> Result<TrainingState> {
    read_state(dir)
}

/// Load a checkpoint's model variables into `vars`.
pub fn load_model(dir: &Path, vars: &mut nn::VarStore) -> Result<()> {
    Ok(vars.load(dir.join(MODEL))?)
}

/// Load a checkpoint's tensors into the model and the optimizer.
pub fn restore(
    dir: &Path,
    vars: &mut nn::VarStore,
    optimizer: &mut Optimizer,
    state: &TrainingState,
) -> Result<()> {
    vars.load(dir.join(MODEL))?;
    optimizer
        .load_state(read_tensors(&dir.join(OPTIMIZER))?, state.optimizer_steps)
        .map_err(|err| in_checkpoint(dir, err))
}

/// A file's error named by its path in the checkpoint `dir` (the readers name the file only).
pub fn in_checkpoint(dir: &Path, err: Error) -> Error {
    match err {
        Error::DataCorrupt { path, reason } if path.is_relative() => Error::DataCorrupt {
            path: dir.join(path),
            reason,
        },
        other => other,
    }
}

/// The host's own tensors of a checkpoint (`host.safetensors`), none when it has no such file.
pub fn host_tensors(dir: &Path) -> Result<Vec<(String, Tensor)>> {
    let path = dir.join(HOST);
    if path.is_file() {
        read_tensors(&path)
    } else {
        Ok(Vec::new())
    }
}

/// A monitor's saved state file of a checkpoint.
pub fn read_file(dir: &Path, name: &str) -> Result<Vec<u8>> {
    let path = dir.join(name);
    std::fs::read(&path).map_err(|source| Error::io(&path, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resumed run continues from the running sums in `state.json`: they must come back bit
    /// for bit (serde_json needs `float_roundtrip` for that; without it some values come back
    /// one ulp off).
    #[test]
    fn state_floats_round_trip_bit_for_bit() {
        let mut rng = crate::rng::SplitMix64::new(7);
        for _ in 0..20_000 {
            let value = f64::from_bits(rng.next_u64() >> 2) * rng.uniform(-1.0, 1.0);
            let saved = SavedGradientAverage {
                owner: 0,
                beta: 0.99,
                mean_square: value,
                updates: 1,
                last_step: None,
            };
            let text = serde_json::to_string(&saved).unwrap();
            let back: SavedGradientAverage = serde_json::from_str(&text).unwrap();
            assert_eq!(back.mean_square.to_bits(), value.to_bits(), "{text}");
        }
    }
}
