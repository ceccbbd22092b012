//! Faithful resume: a run interrupted by kill -9, SIGTERM and SIGUSR1 and resumed each time
//! ends with exactly the files of the same run left alone; what `--resume` refuses; what a
//! plugin built before monitor state (API 1.0.0) does on resume. Real processes, real plugins.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{build_dir, json, stderr, stdout, trained_to, vigil, TINY_SYNTHETIC};

/// All ten shipped monitors at cadences that fire in a short run, the weighted sampler, 128
/// steps an epoch, validation (and a checkpoint) every 32 steps.
fn all_monitors_config() -> String {
    format!(
        r#"seed = 1
epochs = 3
batch_size = 32
data = "synthetic"
sampler = "weighted"
threads = 1
plugin_dirs = [{:?}]

[synthetic]
train_size = 4096
test_size = 128
classes = 4
image_size = 12

[model]
kind = "cnn"

[optim]
lr = 0.02

[[monitors]]
name = "gradient"
[monitors.settings]
log_every_n_steps = 7

[[monitors]]
name = "curvature"
[monitors.settings]
compute_every_n_steps = 50
subsample = 16

[[monitors]]
name = "noise"
[monitors.settings]
log_every_n_steps = 5
min_points = 8

[[monitors]]
name = "loss-slope"
[monitors.settings]
window = [1, 3]
burn_in_loss = 5.0

[[monitors]]
name = "confusion-matrix"

[[monitors]]
name = "sampler-distribution"

[[monitors]]
name = "sample-visualization"

[[monitors]]
name = "training-history"

[[monitors]]
name = "model-info"

[[monitors]]
name = "dataset-statistics"
"#,
        build_dir().display().to_string()
    )
}

const STEPS_PER_EPOCH: u64 = 128;
const TOTAL_STEPS: u64 = 3 * STEPS_PER_EPOCH;
/// The overrides both runs use: a resumed run must keep them without being told again.
const OVERRIDES: [&str; 4] = ["--set", "optim.lr=0.03", "--set", "seed=3"];

/// `metrics.jsonl` without wall-clock and timing fields.
fn records(run_dir: &Path) -> Vec<Value> {
    crate::util::records_without_time(&run_dir.join("metrics.jsonl"))
}

/// Equal, except that the curvature monitor's values may differ by 1e-6 relative.
fn same_record(a: &Value, b: &Value) -> bool {
    if a["monitor"] != "curvature" || b["monitor"] != "curvature" {
        return a == b;
    }
    let (a, b) = (a.as_object().unwrap(), b.as_object().unwrap());
    a.len() == b.len()
        && a.iter().all(|(key, x)| match (x.as_f64(), b.get(key)) {
            (Some(x), Some(y)) if key != "global_step" && key != "epoch" => y
                .as_f64()
                .is_some_and(|y| (x - y).abs() <= 1e-6 * x.abs().max(y.abs()).max(1e-12)),
            (_, y) => y == Some(x),
        })
}

/// Every file under `dir`, by relative path.
pub fn files(dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path.strip_prefix(dir).unwrap().display().to_string();
                found.insert(relative, path);
            }
        }
    }
    found
}

fn pixels(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buffer = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buffer).unwrap();
    buffer.truncate(info.buffer_size());
    (info.width, info.height, buffer)
}

/// What TensorBoard's own reader (`EventAccumulator`) finds in each run's `tensorboard/`:
/// {run: {"scalars"|"images"|"histograms": {tag: [[step, value], …]}}}.
/// What TensorBoard's own reader reads from each run's event files.
pub fn tensorboard_view(runs: &[&Path]) -> Value {
    let python = vigil::bench::bootstrap_python()
        .expect("the Python of scripts/bootstrap.sh (run it: it installs tensorboard)");
    let script = r#"
import json, sys, warnings
warnings.filterwarnings("ignore")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
out = {}
for run in sys.argv[1:]:
    acc = EventAccumulator(run, size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    out[run] = {
        "scalars": {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]},
        "images": {t: [[e.step, e.encoded_image_string.hex()] for e in acc.Images(t)] for t in tags["images"]},
        "histograms": {t: [[e.step, list(e.histogram_value.bucket)] for e in acc.Histograms(t)] for t in tags["histograms"]},
    }
print(json.dumps(out))
"#;
    let output = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(runs.iter().map(|r| r.join("tensorboard")))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "tensorboard's reader failed (scripts/bootstrap.sh installs it): {}",
        stderr(&output)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Interruption {
    /// SIGKILL once a checkpoint newer than the attempt's start is on disk.
    KillAfterCheckpoint,
    Term,
    Usr1,
}

/// A small deterministic generator for the test's own choices.
struct Choices(u64);

impl Choices {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

/// Start `vigil` in `dir` with `args`: standard output discarded, standard error piped (wait
/// with `wait_with_output`, which drains it).
pub fn start(dir: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .current_dir(dir)
        .env_remove("LD_LIBRARY_PATH")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn last_checkpoint(run_dir: &Path) -> Option<u64> {
    vigil::train::checkpoint::latest(run_dir)
        .ok()
        .map(|(_, state)| state.global_step)
}

/// Wait until `ready` holds or the child exits; true when `ready` held first.
fn wait_for(child: &mut Child, ready: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the run neither got there nor ended in 300 s");
}

/// Train run B to the end, interrupting it at seeded random moments and resuming it each
/// time. Returns the interruptions that landed mid-training after a checkpoint; `None` when
/// the run finished before the planned interruptions (the caller retries with other moments).
fn interrupted_run(dir: &Path, run_dir: &str, seed: u64) -> Option<Vec<String>> {
    let path = dir.join(run_dir);
    let mut choices = Choices(seed);
    let kinds = [
        Interruption::KillAfterCheckpoint,
        Interruption::Term,
        Interruption::Usr1,
        Interruption::KillAfterCheckpoint,
        Interruption::Term,
        Interruption::Usr1,
    ];
    let mut landed = Vec::new();
    let set_run_dir = format!("run_dir={run_dir}");
    for (attempt, &kind) in kinds.iter().enumerate() {
        let mut args: Vec<&str> = if attempt == 0 {
            let mut args = vec!["train", "c.toml", "--set", &set_run_dir];
            args.extend(OVERRIDES);
            args
        } else {
            vec!["train", "--resume", run_dir]
        };
        if attempt > 0 && choices.below(2) == 0 {
            // Half the resumes go through the command a requeued cluster job would run.
            args = vec!["train", "c.toml", "--resume", "auto", "--set", &set_run_dir];
            args.extend(OVERRIDES);
        }
        let from = trained_to(&path);
        let mut child = start(dir, &args);
        let target = match kind {
            Interruption::KillAfterCheckpoint => {
                let before = last_checkpoint(&path).unwrap_or(0);
                let ready = wait_for(&mut child, || {
                    last_checkpoint(&path).is_some_and(|s| s > before)
                });
                if ready {
                    // Somewhere between this checkpoint and the next.
                    std::thread::sleep(Duration::from_millis(choices.below(400)));
                }
                ready
            }
            Interruption::Term | Interruption::Usr1 => {
                let left = TOTAL_STEPS.saturating_sub(from + 20).max(1);
                let mut step = from + 5 + choices.below(left.min(150));
                if step % STEPS_PER_EPOCH == 0 {
                    step += 1;
                }
                wait_for(&mut child, || trained_to(&path) >= step)
            }
        };
        let signal = match kind {
            Interruption::KillAfterCheckpoint => libc::SIGKILL,
            Interruption::Term => libc::SIGTERM,
            Interruption::Usr1 => libc::SIGUSR1,
        };
        if target {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        }
        let output = child.wait_with_output().unwrap();
        use std::os::unix::process::ExitStatusExt;
        let summary = if path.join("run.json").is_file() {
            json(path.join("run.json"))
        } else {
            Value::Null
        };
        if summary["status"] == "completed" {
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            return None;
        }
        match kind {
            Interruption::KillAfterCheckpoint => {
                assert_eq!(
                    output.status.signal(),
                    Some(libc::SIGKILL),
                    "attempt {attempt}"
                );
                let checkpoint = last_checkpoint(&path).unwrap();
                assert!(checkpoint > from.saturating_sub(1) && checkpoint < TOTAL_STEPS);
                landed.push(format!("kill -9 after the checkpoint at step {checkpoint}"));
            }
            Interruption::Term | Interruption::Usr1 => {
                assert_eq!(
                    output.status.code(),
                    Some(75),
                    "attempt {attempt}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                let name = if kind == Interruption::Term {
                    "SIGTERM"
                } else {
                    "SIGUSR1"
                };
                assert_eq!(summary["status"], "interrupted");
                assert_eq!(summary["interrupted_by"], name);
                let (_, state) = vigil::train::checkpoint::latest(&path).unwrap();
                assert_eq!(Some(state.global_step), summary["global_step"].as_u64());
                assert!(
                    state.batches_done > 0 && u64::from(state.batches_done) < STEPS_PER_EPOCH,
                    "{name} landed mid-epoch: {state:?}"
                );
                landed.push(format!("{name} at step {} (mid-epoch)", state.global_step));
            }
        }
    }
    let finished = vigil(dir, &["train", "--resume", run_dir]);
    assert!(finished.status.success(), "{}", stderr(&finished));
    Some(landed)
}

#[test]
fn a_run_interrupted_and_resumed_ends_as_the_run_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), all_monitors_config()).unwrap();
    let mut args = vec!["train", "c.toml", "--set", "run_dir=A"];
    args.extend(OVERRIDES);
    let alone = vigil(dir.path(), &args);
    assert!(alone.status.success(), "{}", stderr(&alone));

    let mut outcome = None;
    for trial in 0..3 {
        let run_dir = format!("B{trial}");
        if let Some(landed) = interrupted_run(dir.path(), &run_dir, 17 + trial) {
            outcome = Some((run_dir, landed));
            break;
        }
        eprintln!("trial {trial}: the run finished before its interruptions; trying other moments");
    }
    let (run_dir, landed) = outcome.expect("three trials finished before their interruptions");
    eprintln!("interruptions that landed: {landed:#?}");
    assert!(landed.len() >= 5, "{landed:?}");
    let (a, b) = (dir.path().join("A"), dir.path().join(&run_dir));

    let summary = json(b.join("run.json"));
    assert_eq!(summary["status"], "completed");
    for monitor in summary["monitors"].as_array().unwrap() {
        assert_eq!(monitor["resumed"], "restored", "{monitor}");
    }
    let effective = std::fs::read_to_string(b.join("config.toml")).unwrap();
    assert!(
        effective.contains("lr = 0.03") && effective.contains("seed = 3"),
        "{effective}"
    );

    let (records_a, records_b) = (records(&a), records(&b));
    assert_eq!(records_a.len(), records_b.len());
    for (index, (x, y)) in records_a.iter().zip(&records_b).enumerate() {
        assert!(same_record(x, y), "record {index}:\n  {x}\n  {y}");
    }
    assert!(records_b.iter().any(|r| r["monitor"] == "curvature"));
    assert!(records_b.iter().any(|r| r["monitor"] == "loss-slope"));

    let (artifacts_a, artifacts_b) = (files(&a.join("artifacts")), files(&b.join("artifacts")));
    assert_eq!(
        artifacts_a.keys().collect::<Vec<_>>(),
        artifacts_b.keys().collect::<Vec<_>>()
    );
    for (name, path_a) in &artifacts_a {
        let path_b = &artifacts_b[name];
        if name.ends_with(".png") {
            assert!(pixels(path_a) == pixels(path_b), "{name}: pixels differ");
        } else {
            assert!(
                std::fs::read(path_a).unwrap() == std::fs::read(path_b).unwrap(),
                "{name} differs"
            );
        }
    }
    assert!(artifacts_b.contains_key("sampler_distribution.csv"));

    let view = tensorboard_view(&[&a, &b]);
    let (tb_a, tb_b) = (
        &view[a.join("tensorboard").display().to_string()],
        &view[b.join("tensorboard").display().to_string()],
    );
    for kind in ["scalars", "images", "histograms"] {
        // System metrics (memory, CPU) differ from run to run.
        let measured = |view: &Value| -> serde_json::Map<String, Value> {
            view[kind]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(tag, _)| !tag.starts_with("system/"))
                .map(|(tag, values)| (tag.clone(), values.clone()))
                .collect()
        };
        let (tags_a, tags_b) = (&measured(tb_a), &measured(tb_b));
        assert_eq!(
            tags_a.keys().collect::<Vec<_>>(),
            tags_b.keys().collect::<Vec<_>>()
        );
        for (tag, values_b) in tags_b {
            let steps: Vec<u64> = values_b
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v[0].as_u64().unwrap())
                .collect();
            assert!(
                steps.windows(2).all(|pair| pair[0] < pair[1]),
                "{kind} `{tag}`: one value per step, in order: {steps:?}"
            );
            if tag != "epoch/epoch_time_s" {
                assert_eq!(&tags_a[tag], values_b, "{kind} `{tag}`");
            }
        }
    }
}

/// A finished tiny run in `dir/r` (2 epochs of 16 steps).
fn finished_tiny_run(dir: &Path) {
    std::fs::write(
        dir.join("t.toml"),
        format!("run_dir = \"r\"\n{TINY_SYNTHETIC}"),
    )
    .unwrap();
    let output = vigil(dir, &["train", "t.toml"]);
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn resume_refuses_what_changes_the_run_and_trains_longer_on_request() {
    let dir = tempfile::tempdir().unwrap();
    finished_tiny_run(dir.path());
    let run = dir.path().join("r");
    let before = std::fs::read(run.join("metrics.jsonl")).unwrap();

    let changed = vigil(
        dir.path(),
        &["train", "--resume", "r", "--set", "optim.lr=0.5"],
    );
    assert_eq!(changed.status.code(), Some(2), "{}", stderr(&changed));
    assert!(
        stderr(&changed).contains("would change `optim.lr`"),
        "{}",
        stderr(&changed)
    );
    let two = vigil(
        dir.path(),
        &[
            "train",
            "--resume",
            "r",
            "--set",
            "seed=4",
            "--set",
            "batch_size=8",
        ],
    );
    assert_eq!(two.status.code(), Some(2));
    assert!(
        stderr(&two).contains("`batch_size`, `seed`"),
        "{}",
        stderr(&two)
    );

    let again = vigil(dir.path(), &["train", "--resume", "r"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("already completed"),
        "{}",
        stdout(&again)
    );
    assert_eq!(
        std::fs::read(run.join("metrics.jsonl")).unwrap(),
        before,
        "nothing rewritten"
    );

    let longer = vigil(dir.path(), &["train", "--resume", "r", "--set", "epochs=3"]);
    assert!(longer.status.success(), "{}", stderr(&longer));
    let epochs: Vec<u64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["kind"] == "epoch")
        .map(|r| r["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, [1, 2, 3]);
    assert!(std::fs::read_to_string(run.join("config.toml"))
        .unwrap()
        .contains("epochs = 3"));
    assert_eq!(json(run.join("run.json"))["global_step"], 48);

    // config.toml edited behind the run's back: the checkpoint's config disagrees.
    let edited = std::fs::read_to_string(run.join("config.toml"))
        .unwrap()
        .replace("seed = 1", "seed = 2");
    std::fs::write(run.join("config.toml"), edited).unwrap();
    let mismatch = vigil(dir.path(), &["train", "--resume", "r", "--set", "epochs=4"]);
    assert_eq!(mismatch.status.code(), Some(2));
    assert!(
        stderr(&mismatch).contains("differs from the config of the checkpoint")
            && stderr(&mismatch).contains("`seed`"),
        "{}",
        stderr(&mismatch)
    );
}

#[test]
fn resume_auto_starts_then_continues_then_finds_the_run_complete() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.toml"),
        format!("run_dir = \"r\"\n{TINY_SYNTHETIC}"),
    )
    .unwrap();
    let first = vigil(dir.path(), &["train", "t.toml", "--resume", "auto"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stdout(&first).contains("run directory: r"),
        "{}",
        stdout(&first)
    );
    let second = vigil(dir.path(), &["train", "t.toml", "--resume", "auto"]);
    assert!(
        stdout(&second).contains("already completed"),
        "{}",
        stdout(&second)
    );
    let other = vigil(
        dir.path(),
        &[
            "train",
            "t.toml",
            "--resume",
            "auto",
            "--set",
            "optim.lr=0.2",
        ],
    );
    assert_eq!(other.status.code(), Some(2));
    assert!(stderr(&other).contains("`optim.lr`"), "{}", stderr(&other));
    let no_config = vigil(dir.path(), &["train", "--resume", "auto"]);
    assert_eq!(no_config.status.code(), Some(2));
    assert!(
        stderr(&no_config).contains("`--resume auto` needs the CONFIG"),
        "{}",
        stderr(&no_config)
    );
    let without_dir = dir.path().join("n.toml");
    std::fs::write(&without_dir, TINY_SYNTHETIC).unwrap();
    let refused = vigil(dir.path(), &["train", "n.toml", "--resume", "auto"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("needs `run_dir`"),
        "{}",
        stderr(&refused)
    );
}

/// The example monitor as it was at API 1.0.0, built against that API (kept in
/// `tests/fixtures`): a library without an identity record. Returns its file.
pub fn build_api_1_0_0_plugin(root: &Path) -> PathBuf {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let api =
        crate::plugin_loading::api_copy(root, &fixtures.join("plugin-api-1.0.0"), "1.0.0", |abi| {
            abi
        });
    let source = std::fs::read_to_string(fixtures.join("example-loss-ema-1.0.0.rs")).unwrap();
    let plugin = crate::plugin_loading::external_crate(root, "old-loss-ema", &api, &source);
    crate::plugin_loading::build_external(&plugin, "old_loss_ema")
}

#[test]
fn a_plugin_built_against_api_1_0_0_runs_and_starts_fresh_on_resume() {
    let root = tempfile::tempdir().unwrap();
    let library = build_api_1_0_0_plugin(root.path());

    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "run_dir = \"r\"\nplugin_dirs = []\n{}\n[[monitors]]\nname = \"example-loss-ema\"\npath = {:?}\n[monitors.settings]\nlog_every_n_steps = 4\n",
        TINY_SYNTHETIC.replace("epochs = 2", "epochs = 1"),
        library.display().to_string()
    );
    std::fs::write(dir.path().join("t.toml"), config).unwrap();
    let first = vigil(dir.path(), &["train", "t.toml"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let report = &json(dir.path().join("r/run.json"))["monitors"][0];
    assert_eq!(report["api_version"], "1.0.0");
    assert_eq!(report["saves_state"], false);

    let resumed = vigil(dir.path(), &["train", "--resume", "r", "--set", "epochs=2"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let summary = json(dir.path().join("r/run.json"));
    assert_eq!(summary["status"], "completed");
    let note = summary["monitors"][0]["resumed"].as_str().unwrap();
    assert!(
        note.starts_with("started fresh") && note.contains("1.0.0"),
        "{note}"
    );
    let logged: Vec<u64> = std::fs::read_to_string(dir.path().join("r/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["monitor"] == "example-loss-ema")
        .map(|r| r["global_step"].as_u64().unwrap())
        .collect();
    assert_eq!(
        logged,
        [0, 4, 8, 12, 16, 20, 24, 28],
        "it ran before and after the resume"
    );
}
