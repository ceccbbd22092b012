//! The outbox: everything a run sends to MLflow, appended to `mlflow/outbox.jsonl` in the run
//! directory before it is sent, and `mlflow/state.json`, which says how much of it the server
//! has acknowledged (a byte offset) and which run it went to.
//!
//! Sending ([`Pump`]) reads from the offset on, one operation (or one batch of metric
//! operations) at a time, and moves the offset past what the server accepted. A server that
//! is down leaves the rest for later (the run, or `vigil sync`); a request the server refuses
//! is left out with a warning, so that one bad value never blocks the rest. Metric points are
//! sent with the step and wall time they were recorded with, so a batch sent twice (the
//! process killed between the server's answer and the offset's write) holds identical points,
//! which MLflow's SQL stores keep once.
//!
//! A resumed run cuts the outbox back to its checkpoint, as it does `metrics.jsonl`. The points
//! it cuts (the killed attempt's, past the checkpoint; some of them perhaps already sent) are
//! kept in the state as `replay`: when the resumed run records a point of the same metric and
//! step, it sends the kept point instead, the very point the server may already have, which
//! MLflow then keeps once. One MLflow run, no step twice in a history, nothing lost.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::client::{CallFailed, Client};
use crate::error::{Error, Result};
use crate::fs::write_atomically;

/// At most this many metric points in one `log-batch` (MLflow's limit is 1000)…
const BATCH_POINTS: usize = 1000;
/// …and this many bytes of them (MLflow's limit is 1 MB a request).
const BATCH_BYTES: usize = 800_000;
/// At most this many params in one `log-batch` (MLflow's limit).
const BATCH_PARAMS: usize = 100;
/// The outbox is read this much at a time.
const READ_CHUNK: usize = 4 << 20;

/// One metric point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub key: String,
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    pub step: u64,
}

/// One operation of the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Create the run (experiment by name, created when missing), then log its params.
    Start {
        experiment: String,
        run_name: String,
        start_time: i64,
        tags: Vec<(String, String)>,
        params: Vec<(String, String)>,
    },
    Metrics {
        points: Vec<Point>,
    },
    /// `RUNNING` again on resume; `FINISHED`, `FAILED` or `KILLED` at the end.
    Status {
        status: String,
        end_time: Option<i64>,
    },
    /// Upload `file` (relative to the run directory, read when sent) as artifact `path`.
    Artifact {
        file: String,
        path: String,
    },
}

/// `mlflow/state.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    pub tracking_uri: String,
    pub experiment_id: Option<String>,
    pub run_id: Option<String>,
    pub artifact_url: Option<String>,
    /// Bytes of the outbox the server has taken.
    pub sent_bytes: u64,
    /// The largest step sent, by metric.
    pub max_steps: BTreeMap<String, u64>,
    /// Points cut from the outbox on resume, sent again in place of the resumed run's points
    /// of the same metric and step.
    pub replay: Vec<Point>,
    pub points_sent: u64,
    pub artifacts_sent: u64,
}

/// The outbox's files in a run directory.
#[derive(Debug, Clone)]
pub struct Files {
    pub run_dir: PathBuf,
}

impl Files {
    pub fn dir(&self) -> PathBuf {
        self.run_dir.join(super::DIR)
    }

    pub fn outbox(&self) -> PathBuf {
        self.dir().join("outbox.jsonl")
    }

    pub fn state(&self) -> PathBuf {
        self.dir().join("state.json")
    }

    pub fn read_state(&self) -> Option<State> {
        let bytes = std::fs::read(self.state()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn write_state(&self, state: &State) -> Result<()> {
        let text = serde_json::to_vec_pretty(state).map_err(|source| Error::Json {
            what: "MLflow state".into(),
            source,
        })?;
        write_atomically(&self.state(), &text)
    }

    /// The outbox's length: what a checkpoint marks.
    pub fn outbox_len(&self) -> u64 {
        std::fs::metadata(self.outbox()).map_or(0, |m| m.len())
    }

    /// Append operations (from the training thread, when no recorder is writing).
    pub fn append(&self, ops: &[Op]) -> Result<()> {
        let path = self.outbox();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| Error::io(&path, source))?;
        let mut text = Vec::new();
        for op in ops {
            text.extend(op_line(op));
        }
        file.write_all(&text)
            .and_then(|()| file.sync_data())
            .map_err(|source| Error::io(&path, source))
    }
}

/// An operation as one outbox line.
pub fn op_line(op: &Op) -> Vec<u8> {
    let mut line = serde_json::to_vec(op).unwrap_or_default();
    line.push(b'\n');
    line
}

/// How much of the outbox is unsent: operations and metric points.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unsent {
    pub operations: u64,
    pub points: u64,
}

/// Sends the outbox of one run.
pub struct Pump {
    files: Files,
    client: Client,
    pub state: State,
    /// Requests the server refused (left out), for the run's warnings.
    pub warnings: Vec<String>,
}

/// Where a pass over the outbox stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum Pumped {
    /// Everything written so far is sent.
    Done,
    /// The server could not be reached (or was busy): try again later.
    Unreachable(String),
}

impl Pump {
    pub fn new(files: Files, state: State) -> Self {
        let client = Client::new(&state.tracking_uri);
        Pump {
            files,
            client,
            state,
            warnings: Vec::new(),
        }
    }

    /// The operations after the offset, each with the offset just past it (complete lines
    /// only; a line being written is left for the next pass).
    fn pending(&self) -> Result<Vec<(Op, u64)>> {
        let path = self.files.outbox();
        let Ok(mut file) = std::fs::File::open(&path) else {
            return Ok(Vec::new());
        };
        file.seek(SeekFrom::Start(self.state.sent_bytes))
            .map_err(|source| Error::io(&path, source))?;
        let mut bytes = Vec::new();
        file.take(READ_CHUNK as u64)
            .read_to_end(&mut bytes)
            .map_err(|source| Error::io(&path, source))?;
        let mut ops = Vec::new();
        let mut offset = self.state.sent_bytes;
        let mut rest: &[u8] = &bytes;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let line = &rest[..end];
            offset += end as u64 + 1;
            rest = &rest[end + 1..];
            // A line that does not parse (a torn write before a crash) is skipped.
            if let Ok(op) = serde_json::from_slice::<Op>(line) {
                ops.push((op, offset));
            }
        }
        Ok(ops)
    }

    /// What is still unsent.
    pub fn unsent(&self) -> Unsent {
        let mut unsent = Unsent::default();
        let Ok(text) = std::fs::read(self.files.outbox()) else {
            return unsent;
        };
        let start = (self.state.sent_bytes as usize).min(text.len());
        for line in text[start..].split(|&b| b == b'\n') {
            if let Ok(op) = serde_json::from_slice::<Op>(line) {
                unsent.operations += 1;
                if let Op::Metrics { points } = op {
                    unsent.points += points.len() as u64;
                }
            }
        }
        unsent
    }

    /// Send as much as the server takes.
    pub fn pump(&mut self) -> Result<Pumped> {
        self.pump_until(None)
    }

    /// Send as much as the server takes before `deadline`.
    pub fn pump_until(&mut self, deadline: Option<std::time::Instant>) -> Result<Pumped> {
        loop {
            let pending = self.pending()?;
            if pending.is_empty() {
                return Ok(Pumped::Done);
            }
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Ok(Pumped::Unreachable("the time for sending ran out".into()));
            }
            let (taken, result) = self.send_first(&pending);
            match result {
                Ok(()) => {}
                Err(CallFailed::Retry(why)) => return Ok(Pumped::Unreachable(why)),
                Err(CallFailed::Refused(why)) => {
                    let message = format!("MLflow refused a request, which is left out: {why}");
                    tracing::warn!("{message}");
                    self.warnings.push(message);
                }
            }
            self.state.sent_bytes = pending[taken - 1].1;
            self.files.write_state(&self.state)?;
        }
    }

    /// Send the first operation (or the first run of metric operations); how many it took.
    fn send_first(
        &mut self,
        pending: &[(Op, u64)],
    ) -> (usize, std::result::Result<(), CallFailed>) {
        let needs_run = |state: &State| state.run_id.is_none();
        match &pending[0].0 {
            Op::Start {
                experiment,
                run_name,
                start_time,
                tags,
                params,
            } => (
                1,
                self.start(experiment, run_name, *start_time, tags, params),
            ),
            _ if needs_run(&self.state) => (
                1,
                Err(CallFailed::Refused(
                    "the outbox has no run to send to (its start was lost)".into(),
                )),
            ),
            Op::Metrics { .. } => self.send_metrics(pending),
            Op::Status { status, end_time } => {
                let run = self.state.run_id.clone().unwrap_or_default();
                (1, self.client.update_run(&run, status, *end_time))
            }
            Op::Artifact { file, path } => (1, self.upload(file, path)),
        }
    }

    fn start(
        &mut self,
        experiment: &str,
        run_name: &str,
        start_time: i64,
        tags: &[(String, String)],
        params: &[(String, String)],
    ) -> std::result::Result<(), CallFailed> {
        if self.state.run_id.is_none() {
            let experiment_id = self.client.experiment(experiment)?;
            let run = self
                .client
                .create_run(&experiment_id, run_name, start_time, tags)?;
            self.state.experiment_id = Some(run.experiment_id);
            self.state.artifact_url = run.artifact_url;
            self.state.run_id = Some(run.run_id);
            // The run exists from now on, whatever happens to the params.
            let _ = self.files.write_state(&self.state);
        }
        let run = self.state.run_id.clone().unwrap_or_default();
        for chunk in params.chunks(BATCH_PARAMS) {
            self.client.log_batch(&run, &[], chunk, &[])?;
        }
        Ok(())
    }

    fn send_metrics(
        &mut self,
        pending: &[(Op, u64)],
    ) -> (usize, std::result::Result<(), CallFailed>) {
        let mut points: Vec<&Point> = Vec::new();
        let mut bytes = 0;
        let mut taken = 0;
        for (op, _) in pending {
            let Op::Metrics { points: more } = op else {
                break;
            };
            let kept: Vec<&Point> = more.iter().filter(|p| p.value.is_finite()).collect();
            let size: usize = kept.iter().map(|p| p.key.len() + 64).sum();
            if taken > 0 && (points.len() + kept.len() > BATCH_POINTS || bytes + size > BATCH_BYTES)
            {
                break;
            }
            points.extend(kept);
            bytes += size;
            taken += 1;
        }
        if points.is_empty() {
            return (taken, Ok(()));
        }
        let metrics: Vec<Value> = points
            .iter()
            .map(|p| json!({ "key": p.key, "value": p.value, "timestamp": p.timestamp, "step": p.step }))
            .collect();
        let run = self.state.run_id.clone().unwrap_or_default();
        // A single operation over the limits (not written by vigil) goes in pieces.
        for chunk in metrics.chunks(BATCH_POINTS) {
            if let Err(err) = self.client.log_batch(&run, chunk, &[], &[]) {
                return (taken, Err(err));
            }
        }
        for point in &points {
            let max = self.state.max_steps.entry(point.key.clone()).or_insert(0);
            *max = (*max).max(point.step);
        }
        self.state.points_sent += points.len() as u64;
        (taken, Ok(()))
    }

    fn upload(&mut self, file: &str, path: &str) -> std::result::Result<(), CallFailed> {
        let Some(root) = self.state.artifact_url.clone() else {
            return Err(CallFailed::Refused(format!(
                "the run's artifacts are not stored through the tracking server, so `{path}` \
                 is not uploaded (start the server with artifact serving, its default)"
            )));
        };
        let local: PathBuf = self.files.run_dir.join(file);
        let bytes = std::fs::read(&local).map_err(|err| {
            CallFailed::Refused(format!("{} could not be read: {err}", local.display()))
        })?;
        self.client.upload(&root, path, &bytes)?;
        self.state.artifacts_sent += 1;
        Ok(())
    }
}

/// Cut the outbox back to `mark`, the checkpoint's at `step`: the metric points cut join the
/// state's `replay` (those of earlier cuts before `step` are dropped: they are never
/// recorded again).
pub fn cut_back(files: &Files, mark: u64, step: u64) -> Result<State> {
    let mut state = files.read_state().unwrap_or_default();
    let path = files.outbox();
    let text = std::fs::read(&path).unwrap_or_default();
    let start = (mark as usize).min(text.len());
    state.replay.retain(|point| point.step >= step);
    for line in text[start..].split(|&b| b == b'\n') {
        if let Ok(Op::Metrics { points }) = serde_json::from_slice::<Op>(line) {
            for point in points {
                if !state.replay.contains(&point) {
                    state.replay.push(point);
                }
            }
        }
    }
    crate::fs::cut_back(&path, mark)?;
    state.sent_bytes = state.sent_bytes.min(mark);
    files.write_state(&state)?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(key: &str, step: u64, timestamp: i64) -> Point {
        Point {
            key: key.into(),
            value: step as f64 / 10.0,
            timestamp,
            step,
        }
    }

    /// An outbox in a new run directory, holding one point.
    fn outbox_with(first: Point) -> (tempfile::TempDir, Files) {
        let dir = tempfile::tempdir().unwrap();
        let files = Files {
            run_dir: dir.path().to_path_buf(),
        };
        std::fs::create_dir_all(files.dir()).unwrap();
        files
            .append(&[Op::Metrics {
                points: vec![first],
            }])
            .unwrap();
        (dir, files)
    }

    #[test]
    fn a_cut_keeps_the_points_it_removes_for_the_resumed_run_to_send_again() {
        let (_dir, files) = outbox_with(point("lr", 12, 1000));
        let mark = files.outbox_len();
        files
            .append(&[
                Op::Metrics {
                    points: vec![point("lr", 13, 2000), point("train_loss", 13, 2000)],
                },
                Op::Metrics {
                    points: vec![point("lr", 14, 3000)],
                },
            ])
            .unwrap();
        let state = State {
            sent_bytes: files.outbox_len(),
            // Left by an earlier cut: before the checkpoint, it is never recorded again.
            replay: vec![point("lr", 5, 1)],
            ..State::default()
        };
        files.write_state(&state).unwrap();
        let cut = cut_back(&files, mark, 12).unwrap();
        assert_eq!(files.outbox_len(), mark);
        assert_eq!(cut.sent_bytes, mark);
        assert_eq!(
            cut.replay,
            [
                point("lr", 13, 2000),
                point("train_loss", 13, 2000),
                point("lr", 14, 3000)
            ]
        );
        assert_eq!(files.read_state().unwrap(), cut);
    }

    #[test]
    fn unsent_counts_operations_and_points_after_the_offset() {
        let (_dir, files) = outbox_with(point("lr", 1, 1));
        let sent = files.outbox_len();
        files
            .append(&[
                Op::Metrics {
                    points: vec![point("lr", 2, 2), point("lr", 3, 3)],
                },
                Op::Artifact {
                    file: "config.toml".into(),
                    path: "config.toml".into(),
                },
            ])
            .unwrap();
        let pump = Pump::new(
            files,
            State {
                tracking_uri: "http://127.0.0.1:9".into(),
                sent_bytes: sent,
                ..State::default()
            },
        );
        assert_eq!(
            pump.unsent(),
            Unsent {
                operations: 2,
                points: 2
            }
        );
    }
}
