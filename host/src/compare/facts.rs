//! What one run directory says about its run, in one place for `vigil compare` and the
//! dashboard: its state, model and data, steps, best and last validation, when it started and
//! for how long it ran, and (while it trains) its progress and ETA. Read cheaply: `run.json`,
//! the config, and the first line and last 256 KiB of `metrics.jsonl`, so that a list of 216
//! runs reads in well under a second.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use serde::Serialize;

use crate::run_dir::{read_lock_facts, read_run_info, run_state, RunLayout, RunState};

/// How much of the end of `metrics.jsonl` is read for a running run's recent records.
const TAIL_BYTES: u64 = 256 * 1024;

/// A run's facts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunFacts {
    /// `queued`, `running`, `completed`, `early-stopped`, `failed` or `interrupted`.
    pub status: String,
    pub model: Option<String>,
    pub dataset: Option<String>,
    pub epochs: Option<u64>,
    pub epoch: Option<u64>,
    pub global_step: Option<u64>,
    /// Steps the run will take in all, where known (`study.json`, or epochs × steps of an
    /// epoch already finished).
    pub total_steps: Option<u64>,
    pub best_val_loss: Option<f64>,
    pub last_val_loss: Option<f64>,
    pub last_val_acc: Option<f64>,
    pub final_train_loss: Option<f64>,
    /// Unix time of the first record.
    pub started: Option<f64>,
    /// Seconds of training, all attempts (or since the start, for a running run).
    pub duration_s: Option<f64>,
    pub steps_per_second: Option<f64>,
    /// Seconds left, for a running run.
    pub eta_s: Option<f64>,
    pub warnings: usize,
    pub error: Option<String>,
}

/// Read a run's facts; `total_steps` is the study's count for the run, when it has one.
pub fn run_facts(dir: &Path, total_steps: Option<u64>) -> RunFacts {
    let layout = RunLayout::new(dir);
    // The state without `read_run`'s last record: the tail below is read once, where needed.
    let summary = read_run_info(dir);
    let summary = summary.as_ref();
    let state = run_state(dir, summary);
    let config = config_table(&layout.config());
    let running = state == RunState::Running;
    let stopped_early = summary
        .and_then(|s| s.stopped_by.as_ref())
        .is_some_and(|s| s.monitor == "early_stopping");
    let mut facts = RunFacts {
        status: if state == RunState::Completed && stopped_early {
            "early-stopped".into()
        } else {
            state.name().into()
        },
        model: summary
            .map(|s| s.model.clone())
            .filter(|m| !m.is_empty())
            .or_else(|| config_str(&config, &["model", "kind"])),
        dataset: summary
            .map(|s| s.dataset.clone())
            .filter(|d| !d.is_empty())
            .or_else(|| config_str(&config, &["data"])),
        epochs: config
            .get("epochs")
            .and_then(toml::Value::as_integer)
            .and_then(|e| u64::try_from(e).ok()),
        total_steps,
        started: first_wall_time(&layout.metrics()),
        ..RunFacts::default()
    };
    if let Some(summary) = summary.filter(|_| !running) {
        facts.global_step = Some(summary.global_step);
        facts.best_val_loss = summary.best_val_loss;
        facts.last_val_loss = summary.final_metrics.as_ref().map(|f| f.val_loss);
        facts.last_val_acc = summary.final_metrics.as_ref().map(|f| f.val_acc);
        facts.final_train_loss = summary.final_metrics.as_ref().map(|f| f.train_loss);
        facts.epoch = summary.final_metrics.as_ref().map(|f| f.epoch as u64);
        facts.duration_s = Some(summary.attempts.iter().map(|a| a.wall_time_s).sum());
        facts.steps_per_second = summary.attempts_steps_per_second();
        facts.warnings = summary.warnings.len();
        facts.error = summary.error.clone();
    }
    let needs_tail = summary.is_none() || running;
    let tail = if needs_tail {
        tail_records(&layout.metrics())
    } else {
        Vec::new()
    };
    if needs_tail {
        from_tail(&tail, &mut facts);
    }
    if running {
        if let Some(lock) = read_lock_facts(dir) {
            facts.total_steps = facts.total_steps.or(Some(lock.total_steps));
            // The name run.json will give, where the config has only its key.
            if !lock.dataset.is_empty() {
                facts.dataset = Some(lock.dataset);
            }
        }
    }
    // A run killed before it wrote `run.json`: epochs × the steps of an epoch, read from its
    // tail (a process that trains says so in its lock file; a run that ended needs none).
    if facts.total_steps.is_none() && needs_tail {
        facts.total_steps = facts
            .epochs
            .zip(steps_per_epoch(&tail))
            .map(|(epochs, per_epoch)| epochs * per_epoch);
    }
    if running {
        facts.eta_s = facts
            .total_steps
            .zip(facts.global_step)
            .zip(facts.steps_per_second)
            .map(|((total, step), rate)| total.saturating_sub(step) as f64 / rate);
    }
    facts
}

/// A config file as a TOML table (empty when it cannot be read).
pub fn config_table(path: &Path) -> toml::Table {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .unwrap_or_default()
}

fn config_str(config: &toml::Table, path: &[&str]) -> Option<String> {
    let mut value = config.get(path[0])?;
    for key in &path[1..] {
        value = value.get(key)?;
    }
    value.as_str().map(str::to_string)
}

fn first_wall_time(metrics: &Path) -> Option<f64> {
    let file = std::fs::File::open(metrics).ok()?;
    let mut line = String::new();
    BufReader::new(file.take(64 * 1024))
        .read_line(&mut line)
        .ok()?;
    let record: serde_json::Value = serde_json::from_str(line.trim_end()).ok()?;
    record["wall_time"].as_f64()
}

/// The fields of a `metrics.jsonl` record the facts need; serde skips the rest unparsed.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct TailRecord {
    kind: String,
    epoch: Option<f64>,
    global_step: Option<f64>,
    wall_time: Option<f64>,
    train_loss: Option<f64>,
    val_loss: Option<f64>,
    val_acc: Option<f64>,
    best_val_loss: Option<f64>,
}

/// The complete records of the last [`TAIL_BYTES`] of `metrics.jsonl`, oldest first.
fn tail_records(metrics: &Path) -> Vec<TailRecord> {
    let Ok(mut file) = std::fs::File::open(metrics) else {
        return Vec::new();
    };
    let length = file.metadata().map_or(0, |m| m.len());
    let start = length.saturating_sub(TAIL_BYTES);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    // The first line may be cut by the seek, the last may be being written: JSON that does
    // not parse is left out.
    bytes
        .split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect()
}

/// Step, epoch, last validation and recent speed from the end of `metrics.jsonl`.
fn from_tail(records: &[TailRecord], facts: &mut RunFacts) {
    let train: Vec<&TailRecord> = records.iter().filter(|r| r.kind == "train").collect();
    if let Some(last) = records.iter().rev().find(|r| r.global_step.is_some()) {
        facts.global_step = last.global_step.map(|s| s as u64);
        facts.epoch = last.epoch.map(|e| e as u64);
    }
    if let Some(validation) = records.iter().rev().find(|r| r.kind == "validation") {
        facts.best_val_loss = validation.best_val_loss;
        facts.last_val_loss = validation.val_loss;
        facts.last_val_acc = validation.val_acc;
    }
    facts.final_train_loss = train.last().and_then(|r| r.train_loss);
    let recent = &train[train.len().saturating_sub(200)..];
    if let (Some(first), Some(last)) = (recent.first(), recent.last()) {
        let pair = |r: &TailRecord| r.global_step.zip(r.wall_time);
        if let (Some((s0, t0)), Some((s1, t1))) = (pair(first), pair(last)) {
            if t1 > t0 && s1 > s0 {
                facts.steps_per_second = Some((s1 - s0) / (t1 - t0));
            }
            facts.duration_s = facts.started.map(|start| t1 - start);
        }
    }
}

/// The steps of one epoch, from the last epoch record of the tail.
fn steps_per_epoch(records: &[TailRecord]) -> Option<u64> {
    records
        .iter()
        .rev()
        .filter(|r| r.kind == "epoch")
        .find_map(|r| {
            let (step, epoch) = (r.global_step?, r.epoch?);
            (epoch >= 1.0).then(|| (step / epoch).round() as u64)
        })
}

/// A config flattened to `key → value` (tables joined with `.`, array items numbered:
/// `monitors.0.name`), values as TOML writes them.
pub fn flatten_config(config: &toml::Table) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn visit(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
        match value {
            toml::Value::Table(table) => {
                for (key, value) in table {
                    visit(&join(prefix, key), value, out);
                }
            }
            toml::Value::Array(items) if items.iter().any(toml::Value::is_table) => {
                for (i, value) in items.iter().enumerate() {
                    visit(&join(prefix, &i.to_string()), value, out);
                }
            }
            toml::Value::String(text) => {
                out.insert(prefix.to_string(), text.clone());
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    fn join(prefix: &str, key: &str) -> String {
        if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        }
    }
    for (key, value) in config {
        visit(key, value, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_flatten_to_dotted_keys() {
        let table: toml::Table =
            "lr = 0.1\nname = \"x\"\nshape = [1, 2]\n[optim]\nkind = \"sgd\"\n[[monitors]]\nname = \"a\"\n[monitors.settings]\nk = 2\n"
                .parse()
                .unwrap();
        let flat = flatten_config(&table);
        assert_eq!(flat["lr"], "0.1");
        assert_eq!(flat["name"], "x");
        assert_eq!(flat["shape"], "[1, 2]");
        assert_eq!(flat["optim.kind"], "sgd");
        assert_eq!(flat["monitors.0.name"], "a");
        assert_eq!(flat["monitors.0.settings.k"], "2");
    }

    #[test]
    fn a_running_run_reads_from_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = dir.path().join(crate::run_dir::METRICS_FILE);
        let mut text = String::new();
        for step in 1..=20u64 {
            text.push_str(&format!(
                "{{\"kind\":\"train\",\"epoch\":{},\"global_step\":{step},\"train_loss\":1.0,\"wall_time\":{}}}\n",
                1 + (step - 1) / 10,
                100.0 + step as f64 * 0.5
            ));
            if step == 10 {
                text.push_str(
                    "{\"kind\":\"epoch\",\"epoch\":1,\"global_step\":10,\"train_loss\":1.0}\n",
                );
                text.push_str("{\"kind\":\"validation\",\"epoch\":1,\"global_step\":10,\"val_loss\":0.7,\"val_acc\":0.5,\"best_val_loss\":0.6}\n");
            }
        }
        std::fs::write(&metrics, text + "{\"kind\":\"tra").unwrap();
        std::fs::write(
            dir.path().join("config.toml"),
            "epochs = 3\ndata = \"synthetic\"\n[model]\nkind = \"mlp\"\n",
        )
        .unwrap();
        let facts = run_facts(dir.path(), None);
        assert_eq!(facts.status, "interrupted");
        assert_eq!(facts.global_step, Some(20));
        assert_eq!(facts.epoch, Some(2));
        assert_eq!(facts.total_steps, Some(30));
        assert_eq!(facts.best_val_loss, Some(0.6));
        assert_eq!(facts.last_val_loss, Some(0.7));
        assert_eq!(facts.model.as_deref(), Some("mlp"));
        assert_eq!(facts.dataset.as_deref(), Some("synthetic"));
        assert_eq!(facts.started, Some(100.5));
        assert!((facts.steps_per_second.unwrap() - 2.0).abs() < 1e-9);
        assert!((facts.duration_s.unwrap() - 9.5).abs() < 1e-9);
        assert_eq!(facts.eta_s, None, "no ETA for a run that is not running");
    }
}
