//! `[early_stopping]`: the run stops at the validation Lightning's own `EarlyStopping` stops
//! at (fed the run's validations from `metrics.jsonl`), ends with the best validation's
//! weights (the exported model, run in ONNX Runtime, scores that validation's accuracy), and a
//! run killed and resumed stops at the same validation as the run left alone.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::export::{exported_logits, validation_inputs};
use crate::util::{
    export_model, json as read_json, lightning_python, plugin_dirs_toml, records,
    records_without_time, stderr, stdout, vigil,
};

/// A small MLP that learns the synthetic classes, then over-fits its 256 training images:
/// validation loss falls for a few epochs and then rises. Validation every 2 of 8 steps.
fn config(extra: &str) -> String {
    format!(
        r#"seed = 1
epochs = 30
batch_size = 32
data = "synthetic"
threads = 1
{}

[synthetic]
train_size = 256
test_size = 256
classes = 4
image_size = 12
noise = 0.3

[model]
kind = "mlp"
hidden = [64]

[optim]
lr = 0.05
momentum = 0.9

[early_stopping]
monitor = "val_loss"
patience = 3
min_delta = 0.002
{extra}
"#,
        plugin_dirs_toml()
    )
}

fn validations(run_dir: &Path) -> Vec<Value> {
    records(run_dir)
        .into_iter()
        .filter(|r| r["kind"] == "validation")
        .collect()
}

/// Where Lightning's `EarlyStopping` stops, given the run's validations.
fn lightning_verdict(settings: Value, validations: &[Value]) -> Value {
    let values: Vec<Value> = validations
        .iter()
        .map(|v| json!({"epoch": v["epoch"], "value": v[settings["monitor"].as_str().unwrap()]}))
        .collect();
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lightning_early_stopping.py");
    let output = Command::new(lightning_python())
        .arg(script)
        .arg(settings.to_string())
        .arg(Value::Array(values).to_string())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The accuracy of an exported model on the run's whole validation split.
fn exported_accuracy(dir: &Path, run_dir: &Path, which: &str) -> f64 {
    let out = dir.join(format!("{which}.onnx"));
    let output = export_model(dir, run_dir, which, &out);
    assert!(output.status.success(), "{}", stderr(&output));
    let (x, _) = validation_inputs(run_dir, 256);
    let (logits, _) = exported_logits(&out, &x);
    let settings = vigil::config::Settings::load(&run_dir.join("config.toml"), &[]).unwrap();
    let labels = vigil::data::load(&settings.data.source)
        .unwrap()
        .test
        .labels;
    let predicted = Vec::<i64>::try_from(logits.argmax(-1, false)).unwrap();
    let correct = predicted
        .iter()
        .zip(&labels)
        .filter(|(p, l)| p == l)
        .count();
    correct as f64 / labels.len() as f64
}

#[test]
fn a_plateau_stops_where_lightning_stops_and_ends_with_the_best_weights() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), config("")).unwrap();
    let output = vigil(dir.path(), &["train", "c.toml", "--set", "run_dir=r"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let run_dir = dir.path().join("r");
    let summary = read_json(run_dir.join("run.json"));
    let seen = validations(&run_dir);

    let lightning = lightning_verdict(
        json!({"monitor": "val_loss", "mode": "min", "min_delta": 0.002, "patience": 3,
               "check_finite": true, "start_from_epoch": 0}),
        &seen,
    );
    let stop_index = lightning["stop_index"]
        .as_u64()
        .unwrap_or_else(|| panic!("Lightning would not have stopped: {lightning}"))
        as usize;
    assert!(
        stop_index + 1 < 30 * 4,
        "the run must stop before its 30 epochs"
    );
    // vigil stopped at that validation: it is the run's last, and no step came after it.
    assert_eq!(
        seen.len(),
        stop_index + 1,
        "vigil ran {} validations, Lightning stops at the {}th",
        seen.len(),
        stop_index + 1
    );
    let stop_step = seen[stop_index]["global_step"].as_u64().unwrap();
    assert_eq!(summary["status"], "stopped");
    assert_eq!(summary["stopped_by"]["monitor"], "early_stopping");
    let early = &summary["early_stopping"];
    assert_eq!(early["stopped_step"], stop_step);
    assert_eq!(early["stopped_epoch"], seen[stop_index]["epoch"]);
    assert_eq!(early["wait_count"], lightning["wait_count"]);
    assert_eq!(summary["global_step"], stop_step);
    assert!(
        stdout(&output).contains("early stopping at step")
            || stderr(&output).contains("early stopping at step"),
        "the console says why the run stopped"
    );

    // The best validation by val_loss, and the checkpoint the run restored.
    let best = seen
        .iter()
        .min_by(|a, b| {
            a["val_loss"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["val_loss"].as_f64().unwrap())
        })
        .unwrap();
    let best_step = best["global_step"].as_u64().unwrap();
    assert_ne!(
        best_step, stop_step,
        "the plateau must leave the best behind"
    );
    assert_eq!(early["best_step"], best_step);
    assert_eq!(
        early["restored_from"],
        format!("checkpoints/step_{best_step:09}")
    );
    // The exported model is the best validation's: it scores that validation's accuracy (to
    // one image of 256: ONNX Runtime's float sums may tip an argmax), not the last one's.
    let best_acc = best["val_acc"].as_f64().unwrap();
    let last_acc = seen[stop_index]["val_acc"].as_f64().unwrap();
    let exported = exported_accuracy(dir.path(), &run_dir, "best");
    assert!(
        (exported - best_acc).abs() <= 1.0 / 256.0 + 1e-9,
        "exported {exported}, best validation {best_acc}"
    );
    let exported_last = exported_accuracy(dir.path(), &run_dir, "last");
    assert!((exported_last - last_acc).abs() <= 1.0 / 256.0 + 1e-9);
    assert!(
        (best_acc - last_acc).abs() > 2.0 / 256.0,
        "the test tells the best weights from the last ({best_acc} vs {last_acc})"
    );

    // The study-facing files agree, and a resume of the stopped run does nothing.
    let again = vigil(dir.path(), &["train", "--resume", "r"]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("stopped early") || stderr(&again).contains("stopped early"),
        "{}{}",
        stdout(&again),
        stderr(&again)
    );
    assert_eq!(validations(&run_dir).len(), seen.len());
}

fn last_checkpoint(run_dir: &Path) -> Option<u64> {
    vigil::train::checkpoint::latest(run_dir)
        .ok()
        .map(|(_, state)| state.global_step)
}

#[test]
fn a_run_killed_and_resumed_stops_at_the_same_validation() {
    let dir = tempfile::tempdir().unwrap();
    // A monitor that sleeps 25 ms a step, so that the kill lands mid-training.
    let slow = "[[monitors]]\nname = \"fault-injector\"\nsettings = { sleep_ms = 25 }";
    std::fs::write(dir.path().join("c.toml"), config(slow)).unwrap();
    let alone = vigil(dir.path(), &["train", "c.toml", "--set", "run_dir=a"]);
    assert!(alone.status.success(), "{}", stderr(&alone));
    let stopped_at = read_json(dir.path().join("a/run.json"))["early_stopping"]["stopped_step"]
        .as_u64()
        .unwrap();

    let run_b = dir.path().join("b");
    let mut child = crate::resume::start(dir.path(), &["train", "c.toml", "--set", "run_dir=b"]);
    // Past the best validation and into the patience, before the stop.
    let kill_after = stopped_at - 4;
    let deadline = Instant::now() + Duration::from_secs(120);
    while last_checkpoint(&run_b).is_none_or(|step| step < kill_after) {
        assert!(child.try_wait().unwrap().is_none(), "the run ended first");
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    child.wait_with_output().unwrap();
    let killed_at = last_checkpoint(&run_b).unwrap();
    assert!(
        killed_at < stopped_at,
        "killed at {killed_at}, before {stopped_at}"
    );
    let resumed = vigil(dir.path(), &["train", "--resume", "b"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));

    let (a, b) = (
        records_without_time(&dir.path().join("a/metrics.jsonl")),
        records_without_time(&run_b.join("metrics.jsonl")),
    );
    let without_monitor = |records: Vec<Value>| -> Vec<Value> {
        records
            .into_iter()
            .filter(|r| r["kind"] != "monitor")
            .collect()
    };
    assert_eq!(without_monitor(a), without_monitor(b));
    let (a, b) = (
        read_json(dir.path().join("a/run.json")),
        read_json(run_b.join("run.json")),
    );
    assert_eq!(a["early_stopping"], b["early_stopping"]);
    assert_eq!(b["status"], "stopped");
    // A killed attempt writes no record; the resumed one says where it began.
    assert_eq!(b["resumed_from_step"], killed_at);
}
