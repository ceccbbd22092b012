//! The trainer as experiments use it: resume, checkpoints, TensorBoard files, overrides,
//! anomalies, CIFAR-10 files, and the Python interop script.

use std::path::{Path, PathBuf};

use serde_json::Value;
use vigil::sink::tensorboard::read_events;

use crate::util::{json, records, stderr, stdout, vigil, write_cifar};

/// A small CNN run with augmentation, cosine schedule and warm-up: 2 epochs of 16 steps.
const SMALL: &str = r#"
seed = 3
epochs = 2
batch_size = 32
data = "synthetic"
augment = true

[synthetic]
train_size = 512
test_size = 128
classes = 4
image_size = 12

[model]
kind = "cnn"

[optim]
lr = 0.05

[schedule]
kind = "cosine"
warmup_epochs = 0.5

[checkpoint]
keep_best = 2
"#;

fn plugin_dir() -> String {
    Path::new(env!("CARGO_BIN_EXE_vigil"))
        .parent()
        .unwrap()
        .display()
        .to_string()
}

fn train(dir: &Path, config: &str, extra: &[&str]) -> std::process::Output {
    std::fs::write(dir.join("run.toml"), config).unwrap();
    let mut args = vec!["train", "run.toml"];
    args.extend_from_slice(extra);
    vigil(dir, &args)
}

/// Records without the fields that differ between runs (times) and without monitor records.
fn comparable(records: &[Value]) -> Vec<Value> {
    records
        .iter()
        // System records (memory, CPU) differ from run to run.
        .filter(|r| r["kind"] != "monitor" && r["kind"] != "system")
        .map(|r| {
            let mut r = r.clone();
            let object = r.as_object_mut().unwrap();
            object.remove("wall_time");
            object.remove("epoch_time_s");
            r
        })
        .collect()
}

#[test]
fn resume_after_a_stop_continues_the_same_metric_stream() {
    let dir = tempfile::tempdir().unwrap();
    let full = train(dir.path(), SMALL, &["--set", "run_dir=full"]);
    assert!(full.status.success(), "{}", stderr(&full));

    let expected = comparable(&records(&dir.path().join("full")));
    assert_eq!(expected.len(), 32 + 8 + 2);

    // The same run, stopped by a monitor mid-epoch (at step 9) and at an epoch's end (step 15,
    // whose checkpoint follows the epoch record), then resumed.
    for (stop_at, taken, resumed_at) in
        [(9, 10, "epoch 1, batch 10"), (15, 16, "epoch 1, batch 16")]
    {
        let run_dir = format!("part{stop_at}");
        let stop = format!(
            r#"monitors=[{{name="fault-injector", settings={{fault="stop", at_step={stop_at}}}}}]"#
        );
        let dirs = format!(
            "plugin_dirs=[\"{}\", \"{}\"]",
            plugin_dir(),
            crate::util::fixture_dir().display()
        );
        let part = train(
            dir.path(),
            SMALL,
            &[
                "--set",
                &format!("run_dir={run_dir}"),
                "--set",
                &dirs,
                "--set",
                &stop,
            ],
        );
        assert!(part.status.success(), "{}", stderr(&part));
        let stopped = json(dir.path().join(&run_dir).join("run.json"));
        assert_eq!(stopped["status"], "stopped");
        assert_eq!(stopped["global_step"], taken);

        let resumed = vigil(dir.path(), &["train", "--resume", &run_dir]);
        assert!(resumed.status.success(), "{}", stderr(&resumed));
        assert!(
            stdout(&resumed).contains(&format!(
                "resuming {run_dir} from step {taken} ({resumed_at})"
            )),
            "{}",
            stdout(&resumed)
        );
        let summary = json(dir.path().join(&run_dir).join("run.json"));
        assert_eq!(summary["status"], "completed");
        assert_eq!(summary["resumed_from_step"], taken);
        assert_eq!(
            expected,
            comparable(&records(&dir.path().join(&run_dir))),
            "stopped at {stop_at}: the resumed run must produce the same records as the uninterrupted one"
        );
    }
}

#[test]
fn every_epoch_ends_with_a_validation_and_its_record() {
    // 0.3 of 16 batches: validations after 5, 10 and 15 batches, and at the epoch's end.
    let dir = tempfile::tempdir().unwrap();
    let output = train(
        dir.path(),
        SMALL,
        &["--set", "run_dir=o", "--set", "val_check_interval=0.3"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let written = records(&dir.path().join("o"));
    let steps = |kind: &str| -> Vec<u64> {
        written
            .iter()
            .filter(|r| r["kind"] == kind)
            .map(|r| r["global_step"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(steps("validation"), vec![5, 10, 15, 16, 21, 26, 31, 32]);
    assert_eq!(steps("epoch"), vec![16, 32]);
}

#[test]
fn best_k_checkpoints_keep_exactly_k_plus_last() {
    let dir = tempfile::tempdir().unwrap();
    let output = train(dir.path(), SMALL, &["--set", "run_dir=out"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let index = json(dir.path().join("out/checkpoints/index.json"));
    let best = index["best"].as_array().unwrap();
    assert_eq!(best.len(), 2);
    let losses: Vec<f64> = best
        .iter()
        .map(|e| e["val_loss"].as_f64().unwrap())
        .collect();
    assert!(losses[0] <= losses[1]);

    // They are the two lowest validation losses of the run.
    let mut all: Vec<f64> = records(&dir.path().join("out"))
        .iter()
        .filter(|r| r["kind"] == "validation")
        .map(|r| r["val_loss"].as_f64().unwrap())
        .collect();
    all.sort_by(f64::total_cmp);
    assert_eq!(losses, all[..2].to_vec());

    let last = index["last"]["dir"].as_str().unwrap();
    assert_eq!(index["last"]["global_step"], 32);
    let mut expected: Vec<String> = best
        .iter()
        .map(|e| e["dir"].as_str().unwrap().to_string())
        .collect();
    if !expected.iter().any(|d| d == last) {
        expected.push(last.to_string());
    }
    expected.sort();
    let mut on_disk: Vec<String> = std::fs::read_dir(dir.path().join("out/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("step_"))
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, expected);
    for name in &on_disk {
        for file in ["model.safetensors", "optimizer.safetensors", "state.json"] {
            assert!(
                dir.path()
                    .join("out/checkpoints")
                    .join(name)
                    .join(file)
                    .is_file(),
                "{name}/{file}"
            );
        }
    }
}

#[test]
fn tensorboard_events_are_readable_with_valid_crcs() {
    let dir = tempfile::tempdir().unwrap();
    let output = train(dir.path(), SMALL, &["--set", "run_dir=out"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let files: Vec<PathBuf> = std::fs::read_dir(dir.path().join("out/tensorboard"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    assert!(files[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("events.out.tfevents."));
    let events = read_events(&files[0]).expect("every record's length and CRCs check out");
    assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
    let values: Vec<(i64, &vigil::sink::tensorboard::SummaryValue)> = events
        .iter()
        .filter_map(|e| e.summary.as_ref().map(|s| (e.step, s)))
        .flat_map(|(step, s)| s.value.iter().map(move |v| (step, v)))
        .collect();
    let scalars = |tag: &str| {
        values
            .iter()
            .filter(|(_, v)| v.tag == tag && v.simple_value.is_some())
            .count()
    };
    assert_eq!(scalars("train/loss"), 32, "every batch");
    assert_eq!(scalars("val/loss"), 8, "every validation");
    assert_eq!(scalars("epoch/train_loss"), 2, "every epoch");
    assert_eq!(scalars("optim/lr"), 32);
    let histograms = values
        .iter()
        .filter(|(_, v)| v.tag == "weights/conv1.weight" && v.histo.is_some())
        .count();
    assert_eq!(histograms, 2, "one per epoch");
}

#[test]
fn set_overrides_apply_and_bad_ones_name_the_override() {
    let dir = tempfile::tempdir().unwrap();
    let output = train(
        dir.path(),
        SMALL,
        &[
            "--set",
            "optim.lr=0.1",
            "--set",
            "seed=4",
            "--set",
            "run_dir=o",
            "--set",
            "epochs=1",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let config_copy = std::fs::read_to_string(dir.path().join("o/config.toml")).unwrap();
    assert!(
        config_copy.contains("lr = 0.1")
            && config_copy.contains("seed = 4")
            && config_copy.contains("epochs = 1")
            && !config_copy.contains("lr = 0.05"),
        "the copy is the effective config, overrides applied:\n{config_copy}"
    );
    let lr: Vec<f64> = records(&dir.path().join("o"))
        .iter()
        .filter(|r| r["kind"] == "train")
        .map(|r| r["lr"].as_f64().unwrap())
        .collect();
    assert!(
        (lr.iter().cloned().fold(0.0, f64::max) - 0.1).abs() < 1e-12,
        "peak lr follows --set: {lr:?}"
    );

    for (assignment, expected) in [
        (
            "optim.lr=fast",
            "--set optim.lr=fast: invalid type: string \"fast\", expected f64",
        ),
        ("optim.lrr=0.1", "--set optim.lrr=0.1: unknown field `lrr`"),
        (
            "optim.lr=-1",
            "--set optim.lr=-1: `optim.lr` must be a positive number (got -1)",
        ),
        ("seed", "--set seed: expected KEY=VALUE"),
    ] {
        let output = train(dir.path(), SMALL, &["--set", assignment]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{assignment}: {}",
            stderr(&output)
        );
        let message = stderr(&output);
        assert!(
            message.starts_with(&format!("error: {expected}")),
            "{assignment}: {message}"
        );
        assert_eq!(message.lines().count(), 1, "{message}");
    }
}

#[test]
fn check_validates_without_training() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("run.toml"), SMALL).unwrap();
    let output = vigil(dir.path(), &["check", "run.toml"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).starts_with("run.toml: ok"),
        "{}",
        stdout(&output)
    );
    assert!(!dir.path().join("runs").exists());
    std::fs::write(
        dir.path().join("bad.toml"),
        SMALL.replace("warmup_epochs", "warmup_epoch"),
    )
    .unwrap();
    let output = vigil(dir.path(), &["check", "bad.toml"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("bad.toml:22:1: unknown field `warmup_epoch`"),
        "{}",
        stderr(&output)
    );
}

/// An MLP with a learning rate so large that the loss stops being finite after a step or two.
fn diverging(policy: &str) -> String {
    format!(
        "anomaly_policy = \"{policy}\"\nseed = 1\nepochs = 1\nbatch_size = 32\ndata = \"synthetic\"\n\
         [synthetic]\ntrain_size = 256\ntest_size = 64\nclasses = 4\nimage_size = 8\n\
         [model]\nkind = \"mlp\"\nhidden = [16]\n[optim]\nlr = 1e12\nmomentum = 0.0\n"
    )
}

#[test]
fn anomaly_policy_stop_ends_the_run_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = train(dir.path(), &diverging("stop"), &["--set", "run_dir=o"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains("error: training diverged at epoch 1, step "),
        "{message}"
    );
    assert!(message.contains("training loss is"), "{message}");
    assert_eq!(json(dir.path().join("o/run.json"))["status"], "failed");
    // Everything written before the anomaly is intact: every line parses (records() checks),
    // and the epoch never ended.
    let written = records(&dir.path().join("o"));
    assert!(written.iter().any(|r| r["kind"] == "train"));
    assert!(written.iter().all(|r| r["kind"] != "epoch"));
}

#[test]
fn anomaly_policy_skip_batch_skips_and_warns() {
    let dir = tempfile::tempdir().unwrap();
    let output = train(
        dir.path(),
        &diverging("skip_batch"),
        &["--set", "run_dir=o"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let train: Vec<Value> = records(&dir.path().join("o"))
        .into_iter()
        .filter(|r| r["kind"] == "train")
        .collect();
    assert_eq!(train.len(), 8, "every batch is recorded");
    let skipped = train.iter().filter(|r| r["skipped"] == 1.0).count();
    assert!(skipped >= 1, "{train:?}");
    let summary = json(dir.path().join("o/run.json"));
    assert_eq!(summary["status"], "completed");
    assert_eq!(
        summary["global_step"].as_u64().unwrap() as usize,
        8 - skipped
    );
    let warnings = summary["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), skipped);
    assert!(warnings[0].as_str().unwrap().contains("batch skipped"));
}

#[test]
fn anomaly_policy_warn_takes_the_step_anyway() {
    let dir = tempfile::tempdir().unwrap();
    let output = train(dir.path(), &diverging("warn"), &["--set", "run_dir=o"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let summary = json(dir.path().join("o/run.json"));
    assert_eq!(summary["global_step"], 8);
    assert!(summary["warnings"][0]
        .as_str()
        .unwrap()
        .contains("step taken anyway"));
}

#[test]
fn trains_a_resnet_on_cifar_binary_batches() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar(&dir.path().join("cifar"), 8);
    let config = "data = \"cifar10\"\ndata_dir = \"cifar\"\nbatch_size = 8\nrun_dir = \"o\"\n\
                  [model]\nkind = \"resnet18\"\nwidth_mult = 0.125\n";
    let output = train(dir.path(), config, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output)
            .contains("data: CIFAR-10 (40 train, 8 validation images of 3×32×32, 10 classes)"),
        "{}",
        stdout(&output)
    );
    assert_eq!(json(dir.path().join("o/run.json"))["model"], "resnet18");
}

#[test]
fn a_truncated_cifar_batch_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar(&dir.path().join("cifar"), 4);
    let file = dir.path().join("cifar/data_batch_3.bin");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    let output = train(
        dir.path(),
        "data = \"cifar10\"\ndata_dir = \"cifar\"\n",
        &[],
    );
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.starts_with("error: cifar/data_batch_3.bin: truncated or corrupt"),
        "{message}"
    );
}

#[test]
fn synthetic_fallback_stands_in_for_missing_cifar() {
    let dir = tempfile::tempdir().unwrap();
    let config = "data = \"cifar10\"\ndata_dir = \"absent\"\nsynthetic_fallback = true\nbatch_size = 32\n\
                  [synthetic]\ntrain_size = 64\ntest_size = 32\n[model]\nkind = \"resnet18\"\nwidth_mult = 0.125\n";
    let output = train(dir.path(), config, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("absent not found; synthetic_fallback = true"),
        "{}",
        stderr(&output)
    );
    assert!(
        stdout(&output).contains("64 train, 32 validation images of 3×32×32"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn cuda_without_a_gpu_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    if tch::Cuda::is_available() {
        return; // This machine has a GPU: nothing to refuse.
    }
    let output = train(dir.path(), &format!("device = \"cuda\"\n{SMALL}"), &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("device: is \"cuda\" but libtorch sees no CUDA device"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn the_python_script_reads_metrics_and_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let output = train(
        dir.path(),
        SMALL,
        &["--set", "run_dir=o", "--set", "epochs=1"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    // The venv scripts/bootstrap.sh made, found through the .libtorch link.
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let torch =
        std::fs::canonicalize(workspace.join(".libtorch")).expect("run scripts/bootstrap.sh first");
    let python = torch.ancestors().nth(4).unwrap().join("bin/python");
    let output = std::process::Command::new(&python)
        .args(["-W", "ignore"])
        .arg(workspace.join("scripts/read_run.py"))
        .arg(dir.path().join("o"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    // Besides them, a system record (memory, CPU) or more, as time went by.
    assert!(
        text.contains("records (1 epoch, ") && text.contains(" system, 16 train, 4 validation)"),
        "{text}"
    );
    assert!(
        text.contains("conv1.weight") && text.contains("[32, 1, 3, 3]"),
        "{text}"
    );
}
