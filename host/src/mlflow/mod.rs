//! `[mlflow]`: a run sent to an MLflow tracking server as it trains, over MLflow's REST API.
//!
//! - **What.** A run in the experiment named by the config (default: the study's name, or the
//!   run's), named as the run, tagged with vigil's version, the effective config's SHA-256, the
//!   model, the dataset, and the study and grid point; params: the effective config flattened
//!   (`optim.lr = 0.05`; `[[notify]]` left out, its addresses being secrets); metrics: every
//!   record's values under `metrics.jsonl`'s names, with `epoch/…` for epoch records and
//!   `system/…` for system records, at the record's step and wall time (per-batch records every
//!   `every_n_steps`); artifacts: monitor files, `config.toml`, `inputs.json`, `run.json`; and
//!   the status at the end.
//! - **Never in training's way.** Records reach the [`Recorder`] sink on the sinks' thread,
//!   which appends them to the run's outbox ([`outbox`]); a thread of the link's own sends
//!   the outbox, retrying with back-off while the server is down. What is not sent when the run
//!   ends is counted in `run.json`, and `vigil sync` sends it later ([`sync`]).
//! - **One run.** The MLflow run's id is kept in the run directory; a resumed run continues it.

mod client;
pub mod outbox;
mod sync;

pub use sync::{sync, Synced};

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{MlflowSettings, Settings};
use crate::error::{Error, Result};
pub use crate::run_dir::MlflowReport;
use crate::run_dir::{RunLayout, ARTIFACTS_DIR, CONFIG_FILE, INPUTS_FILE, RUN_FILE};
use crate::sink::{Record, RecordKind, Sink};
use outbox::{op_line, Files, Op, Point, Pump, Pumped, State, Unsent};

/// The directory of the outbox and its state, in the run directory.
pub const DIR: &str = crate::run_dir::MLFLOW_DIR;

/// The sending thread's passes are at least this far apart.
const SEND_EVERY: Duration = Duration::from_secs(10);

/// How long the end of a run keeps sending before it leaves the rest to `vigil sync`.
const FINAL_SEND: Duration = Duration::from_secs(30);

/// What the start of the MLflow run says about the run.
#[derive(Debug, Clone)]
pub struct RunFacts {
    pub model: String,
    pub dataset: String,
}

/// The sink: records become metric operations in the outbox.
pub struct Recorder {
    file: std::fs::File,
    path: PathBuf,
    every_n_steps: u64,
    wake: Sender<()>,
    /// Points a killed attempt recorded past the checkpoint, by metric and step, sent in
    /// place of this run's points of the same metric and step ([`outbox::cut_back`]).
    replay: HashMap<(String, u64), VecDeque<Point>>,
}

impl Recorder {
    /// A record's metric points, as MLflow gets them.
    fn points(&mut self, record: &Record) -> Vec<Point> {
        if record.kind == RecordKind::Train && record.global_step % self.every_n_steps != 0 {
            return Vec::new();
        }
        let prefix = match record.kind {
            RecordKind::Epoch => "epoch/",
            RecordKind::System => "system/",
            _ => "",
        };
        let timestamp = (record.wall_time * 1000.0).round() as i64;
        record
            .metrics
            .iter()
            .filter(|(_, value)| value.is_finite())
            .map(|(name, value)| {
                let point = Point {
                    key: metric_key(&format!("{prefix}{name}")),
                    value: *value,
                    timestamp,
                    step: record.global_step,
                };
                let kept = self
                    .replay
                    .get_mut(&(point.key.clone(), point.step))
                    .and_then(VecDeque::pop_front);
                kept.unwrap_or(point)
            })
            .collect()
    }
}

/// A metric name as MLflow takes it: letters, digits, `_`, `-`, `.`, ` `, `:` and `/`; any
/// other character becomes `_`.
fn metric_key(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-. :/".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Sink for Recorder {
    fn write(&mut self, record: &Record) -> Result<()> {
        use std::io::Write;
        let points = self.points(record);
        if points.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(&op_line(&Op::Metrics { points }))
            .map_err(|source| Error::io(&self.path, source))?;
        let _ = self.wake.send(());
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|source| Error::io(&self.path, source))
    }
}

/// The run's link to the server: the sending thread, and the end of the run.
pub struct MlflowLink {
    files: Files,
    settings: MlflowSettings,
    wake: Sender<()>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<String>>>,
    warnings: Vec<String>,
}

impl std::fmt::Debug for MlflowLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlflowLink")
            .field("run_dir", &self.files.run_dir)
            .finish()
    }
}

/// The first operation of a new MLflow run.
fn start_op(settings: &Settings, mlflow: &MlflowSettings, run_dir: &Path, facts: &RunFacts) -> Op {
    use sha2::Digest;
    let config = settings.to_toml();
    let study = crate::run_dir::study_point(run_dir);
    let mut tags = vec![
        (
            "vigil.version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        (
            "vigil.config_sha256".to_string(),
            format!("{:x}", sha2::Sha256::digest(config.as_bytes())),
        ),
        ("vigil.model".to_string(), facts.model.clone()),
        ("vigil.dataset".to_string(), facts.dataset.clone()),
        (
            "vigil.run_dir".to_string(),
            std::fs::canonicalize(run_dir)
                .unwrap_or_else(|_| run_dir.to_path_buf())
                .display()
                .to_string(),
        ),
    ];
    if let Some((name, values)) = &study {
        tags.push(("vigil.study".into(), name.clone()));
        for (key, value) in values {
            tags.push((format!("vigil.grid.{key}"), value.clone()));
        }
    }
    tags.extend(mlflow.tags.iter().map(|(k, v)| (k.clone(), v.clone())));
    let params = settings
        .flattened()
        .into_iter()
        .filter(|(key, _)| !key.starts_with("notify"))
        .collect();
    Op::Start {
        experiment: mlflow.experiment.clone().unwrap_or_else(|| {
            study
                .as_ref()
                .map_or(settings.name.clone(), |(name, _)| name.clone())
        }),
        run_name: mlflow
            .run_name
            .clone()
            .unwrap_or_else(|| settings.name.clone()),
        start_time: now_ms(),
        tags,
        params,
    }
}

fn now_ms() -> i64 {
    (crate::sink::unix_time() * 1000.0).round() as i64
}

impl MlflowLink {
    /// Open the run's outbox (a new run's with its start; a resumed one's cut back to the
    /// checkpoint's `mark` at the checkpoint's step, with the run set running again), start
    /// sending, and return the sink that records go to.
    pub fn open(
        settings: &Settings,
        mlflow: &MlflowSettings,
        layout: &RunLayout,
        resume: Option<(Option<u64>, u64)>,
        facts: &RunFacts,
    ) -> Result<(Self, Recorder)> {
        let mark = resume.and_then(|(mark, _)| mark);
        let step = resume.map_or(0, |(_, step)| step);
        let files = Files {
            run_dir: layout.root().to_path_buf(),
        };
        let dir = files.dir();
        std::fs::create_dir_all(&dir).map_err(|source| Error::io(&dir, source))?;
        match files.read_state() {
            Some(known) if resume.is_some() && known.tracking_uri == mlflow.tracking_uri => {
                // A resumed run: its outbox back to the checkpoint (all of it, when the
                // checkpoint predates the link), then on with the same MLflow run.
                outbox::cut_back(&files, mark.unwrap_or(0), step)?;
                if known.run_id.is_none() && mark.unwrap_or(0) == 0 {
                    files.append(&[start_op(settings, mlflow, layout.root(), facts)])?;
                }
                files.append(&[Op::Status {
                    status: "RUNNING".into(),
                    end_time: None,
                }])?;
            }
            _ => {
                // A new run; a resumed one that had no MLflow link before; or one resumed with
                // another tracking server, which gets the whole run from the outbox's start (a
                // start operation of its own when the checkpoint's part of the outbox is empty).
                let fresh = State {
                    tracking_uri: mlflow.tracking_uri.clone(),
                    ..State::default()
                };
                crate::fs::cut_back(&files.outbox(), mark.unwrap_or(0).min(files.outbox_len()))?;
                files.write_state(&fresh)?;
                if files.outbox_len() == 0 {
                    files.append(&[start_op(settings, mlflow, layout.root(), facts)])?;
                }
            }
        }
        let path = files.outbox();
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|source| Error::io(&path, source))?;
        let mut replay: HashMap<(String, u64), VecDeque<Point>> = HashMap::new();
        for point in files.read_state().map(|s| s.replay).unwrap_or_default() {
            replay
                .entry((point.key.clone(), point.step))
                .or_default()
                .push_back(point);
        }
        let (wake, woken) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = spawn_sender(files.clone(), woken, stop.clone());
        let recorder = Recorder {
            file,
            path,
            every_n_steps: mlflow.every_n_steps,
            wake: wake.clone(),
            replay,
        };
        Ok((
            MlflowLink {
                files,
                settings: mlflow.clone(),
                wake,
                stop,
                thread,
                warnings: Vec::new(),
            },
            recorder,
        ))
    }

    /// The outbox's length, for a checkpoint (after the sinks were flushed).
    pub fn outbox_len(&self) -> u64 {
        self.files.outbox_len()
    }

    /// Stop the sending thread (it finishes the request under way).
    fn stop_sending(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.send(());
        if let Some(thread) = self.thread.take() {
            if let Ok(warnings) = thread.join() {
                self.warnings.extend(warnings);
            }
        }
    }

    /// The end of the run, before `run.json`: queue the run's files (monitor artifacts,
    /// `config.toml`, `inputs.json`), send what the server takes within a bounded time, and
    /// say what is left.
    pub fn finish_before_run_json(&mut self) -> MlflowReport {
        self.stop_sending();
        let mut ops = Vec::new();
        if self.settings.artifacts {
            let root = &self.files.run_dir;
            let mut files = Vec::new();
            collect_files(&root.join(ARTIFACTS_DIR), root, &mut files);
            files.sort();
            files.extend([CONFIG_FILE.to_string(), INPUTS_FILE.to_string()]);
            for file in files {
                if root.join(&file).is_file() {
                    ops.push(Op::Artifact {
                        path: file.clone(),
                        file,
                    });
                }
            }
        }
        if let Err(err) = self.files.append(&ops) {
            self.warnings.push(format!("MLflow: {err}"));
        }
        let pump = self.send_for(FINAL_SEND);
        let unsent = pump.as_ref().map(Pump::unsent).unwrap_or_default();
        let state = pump.map(|p| p.state).unwrap_or_default();
        report(&self.settings.tracking_uri, &state, unsent)
    }

    /// After `run.json` is written: upload it, set the run's final status (`FINISHED`,
    /// `FAILED` or `KILLED`) and end time, within a bounded time.
    pub fn finish_after_run_json(&mut self, status: &str) {
        let mut ops = Vec::new();
        if self.settings.artifacts {
            ops.push(Op::Artifact {
                file: RUN_FILE.into(),
                path: RUN_FILE.into(),
            });
        }
        ops.push(Op::Status {
            status: status.into(),
            end_time: Some(now_ms()),
        });
        if let Err(err) = self.files.append(&ops) {
            self.warnings.push(format!("MLflow: {err}"));
        }
        let _ = self.send_for(Duration::from_secs(10));
    }

    /// Pump until everything is sent, the server cannot be reached, or `limit` passes.
    fn send_for(&mut self, limit: Duration) -> Option<Pump> {
        let state = self.files.read_state()?;
        let mut pump = Pump::new(self.files.clone(), state);
        match pump.pump_until(Some(Instant::now() + limit)) {
            Ok(Pumped::Done) => {}
            Ok(Pumped::Unreachable(why)) => {
                let message = format!(
                    "MLflow at {} could not be reached ({why}); what is unsent stays in {} for \
                     `vigil sync {}`",
                    self.settings.tracking_uri,
                    self.files.outbox().display(),
                    self.files.run_dir.display()
                );
                tracing::warn!("{message}");
                self.warnings.push(message);
            }
            Err(err) => self.warnings.push(format!("MLflow: {err}")),
        }
        self.warnings.append(&mut pump.warnings);
        Some(pump)
    }

    /// Warnings of the link (requests refused, the server unreachable at the end).
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }
}

impl Drop for MlflowLink {
    fn drop(&mut self) {
        self.stop_sending();
    }
}

fn report(tracking_uri: &str, state: &State, unsent: Unsent) -> MlflowReport {
    MlflowReport {
        tracking_uri: tracking_uri.to_string(),
        experiment_id: state.experiment_id.clone(),
        run_id: state.run_id.clone(),
        unsent_operations: unsent.operations,
        unsent_points: unsent.points,
    }
}

/// Files under `dir`, relative to `root`, with `/` between parts.
fn collect_files(dir: &Path, root: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, root, out);
        } else if let Ok(relative) = path.strip_prefix(root) {
            out.push(relative.to_string_lossy().replace('\\', "/"));
        }
    }
}

/// The sending thread: a pass over the outbox when records have arrived, at most every
/// [`SEND_EVERY`] (so that a request carries many steps' records and the server is asked
/// little), backing off from 1 s to 60 s while the server cannot be reached.
fn spawn_sender(
    files: Files,
    woken: Receiver<()>,
    stop: Arc<AtomicBool>,
) -> Option<JoinHandle<Vec<String>>> {
    std::thread::Builder::new()
        .name("vigil-mlflow".into())
        .spawn(move || {
            let Some(state) = files.read_state() else {
                return Vec::new();
            };
            let mut pump = Pump::new(files, state);
            let stopping = || stop.load(Ordering::SeqCst);
            // Wait until `until` (or the stop), whatever arrives meanwhile.
            let pause = |until: Instant| {
                while Instant::now() < until && !stopping() {
                    let left = until.saturating_duration_since(Instant::now());
                    let _ = woken.recv_timeout(left.min(Duration::from_millis(200)));
                }
            };
            let mut backoff = Duration::from_secs(1);
            let mut reported = false;
            let mut next_pass = Instant::now();
            // A pass when something arrived, or a minute went by.
            while let Ok(()) | Err(RecvTimeoutError::Timeout) =
                woken.recv_timeout(Duration::from_secs(60))
            {
                pause(next_pass);
                if stopping() {
                    break;
                }
                // What arrives during the pass is taken by the next one.
                while woken.try_recv().is_ok() {}
                next_pass = Instant::now() + SEND_EVERY;
                match pump.pump() {
                    Ok(Pumped::Done) => backoff = Duration::from_secs(1),
                    Ok(Pumped::Unreachable(why)) => {
                        if !reported {
                            tracing::warn!(
                                "MLflow could not be reached ({why}); records wait in the run's \
                                 outbox and are sent when it answers"
                            );
                            reported = true;
                        }
                        next_pass = Instant::now() + backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                    }
                    Err(err) => tracing::warn!("MLflow: {err}"),
                }
            }
            pump.warnings
        })
        .ok()
}
