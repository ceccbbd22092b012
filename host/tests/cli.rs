//! The `vigil` binary: a real run, and bad input that must fail with one clear line.

use std::path::Path;

use crate::util::{stderr, stdout, vigil, write_idx_dataset, TINY_SYNTHETIC};

/// The single `error: …` line a failed run prints, after checking it failed with exit code 2
/// and created no run directory.
fn expect_input_error(dir: &Path, config: &str) -> String {
    let output = vigil(dir, &["train", config]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "stderr: {message}");
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {message}");
    assert!(lines[0].starts_with("error: "), "{message}");
    assert!(
        !dir.join("runs").exists(),
        "nothing may be written on bad input"
    );
    lines[0].to_string()
}

#[test]
fn trains_on_synthetic_data_and_writes_metrics() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), TINY_SYNTHETIC).unwrap();
    let output = vigil(dir.path(), &["train", "tiny.toml"]);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    assert!(stdout(&output).contains("epoch 2/2"), "{}", stdout(&output));

    let runs: Vec<_> = std::fs::read_dir(dir.path().join("runs"))
        .unwrap()
        .collect();
    assert_eq!(runs.len(), 1);
    let run_dir = runs[0].as_ref().unwrap().path();
    assert!(run_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("tiny-"));
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = metrics
        .lines()
        .map(|line| serde_json::from_str(line).expect("every line is JSON"))
        .collect();
    let of_kind = |kind: &str| {
        records
            .iter()
            .filter(|r| r["kind"] == kind)
            .collect::<Vec<_>>()
    };

    // Every batch: 512 samples / 32 = 16 steps an epoch.
    let train = of_kind("train");
    assert_eq!(train.len(), 32);
    for (index, record) in train.iter().enumerate() {
        assert_eq!(record["global_step"], index + 1);
        let loss = record["train_loss"].as_f64().unwrap();
        let bits = record["train_loss_bits"].as_f64().unwrap();
        assert!((bits - loss / std::f64::consts::LN_2).abs() < 1e-12);
        for key in ["train_acc", "lr", "wd", "wall_time"] {
            assert!(record[key].is_number(), "{key} in {record}");
        }
    }
    // Validation every quarter epoch: exactly 4 a epoch, at steps 4, 8, 12, 16, …
    let validations = of_kind("validation");
    let steps: Vec<u64> = validations
        .iter()
        .map(|r| r["global_step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![4, 8, 12, 16, 20, 24, 28, 32]);
    let mut best = f64::INFINITY;
    for record in &validations {
        best = best.min(record["val_loss"].as_f64().unwrap());
        assert_eq!(record["best_val_loss"].as_f64().unwrap(), best);
    }
    let epochs = of_kind("epoch");
    assert_eq!(epochs.len(), 2);
    for (index, record) in epochs.iter().enumerate() {
        assert_eq!(record["epoch"], index + 1);
        assert_eq!(record["global_step"], 16 * (index + 1));
        for key in [
            "train_loss",
            "train_acc",
            "val_loss",
            "val_acc",
            "best_val_loss",
        ] {
            assert!(
                record[key].as_f64().is_some_and(f64::is_finite),
                "{key} in {record}"
            );
        }
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(summary["final"]["val_acc"], epochs[1]["val_acc"]);
    assert_eq!(summary["status"], "completed");
    assert!(run_dir.join("config.toml").is_file());
}

#[test]
fn typo_in_a_key_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = TINY_SYNTHETIC.replace("batch_size = 32", "bacth_size = 32");
    std::fs::write(dir.path().join("typo.toml"), config).unwrap();
    let line = expect_input_error(dir.path(), "typo.toml");
    assert!(line.contains("typo.toml:4:1"), "{line}");
    assert!(line.contains("unknown field `bacth_size`"), "{line}");
    assert!(line.contains("`batch_size`"), "{line}");
}

#[test]
fn missing_data_dir_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = "data = \"fashion-mnist\"\ndata_dir = \"no/such/dir\"\n";
    std::fs::write(dir.path().join("missing.toml"), config).unwrap();
    let line = expect_input_error(dir.path(), "missing.toml");
    assert!(
        line.contains("no/such/dir: Fashion-MNIST data directory not found"),
        "{line}"
    );
}

#[test]
fn truncated_idx_file_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let [train_images, ..] = write_idx_dataset(&data_dir, 20, 10, 8);
    let bytes = std::fs::read(&train_images).unwrap();
    std::fs::write(&train_images, &bytes[..bytes.len() / 2]).unwrap();
    let config = "data = \"mnist\"\ndata_dir = \"data\"\nepochs = 1\n";
    std::fs::write(dir.path().join("cut.toml"), config).unwrap();
    let line = expect_input_error(dir.path(), "cut.toml");
    assert!(line.contains("data/train-images-idx3-ubyte.gz"), "{line}");
    assert!(line.contains("truncated"), "{line}");
}

#[test]
fn missing_config_file_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let line = expect_input_error(dir.path(), "nope.toml");
    assert_eq!(line, "error: nope.toml: config file not found");
}

#[test]
fn explicit_run_dir_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("run_dir = \"out\"\n{TINY_SYNTHETIC}").replace("epochs = 2", "epochs = 1");
    std::fs::write(dir.path().join("fixed.toml"), config).unwrap();
    let first = vigil(dir.path(), &["train", "fixed.toml"]);
    assert!(first.status.success(), "stderr: {}", stderr(&first));
    let before = std::fs::read(dir.path().join("out/metrics.jsonl")).unwrap();

    let second = vigil(dir.path(), &["train", "fixed.toml"]);
    assert_eq!(second.status.code(), Some(2));
    assert!(
        stderr(&second).contains("out: run directory is not empty"),
        "{}",
        stderr(&second)
    );
    assert_eq!(
        std::fs::read(dir.path().join("out/metrics.jsonl")).unwrap(),
        before
    );
}

#[test]
fn bench_measures_bare_and_monitored_training_and_writes_json() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    write_idx_dataset(&data, 512, 128, 28);
    let output = vigil(
        dir.path(),
        &[
            "bench",
            "--workload",
            "w1",
            "--data-dir",
            data.to_str().unwrap(),
            "--monitor",
            "gradient",
            "--monitor",
            "noise",
            "--monitor",
            "sampler-distribution",
            "--steps",
            "4",
            "--warmup-steps",
            "2",
            "--repeats",
            "2",
            "--max-repeats",
            "2",
            "--calls",
            "1000",
            "--no-python",
            "--json",
            "bench.json",
        ],
    );
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let table = stdout(&output);
    for row in [
        "bare",
        "bare (control)",
        "gradient",
        "noise",
        "all monitors",
        "hook dispatch",
        "upper",
    ] {
        assert!(table.contains(row), "no `{row}` row in:\n{table}");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("bench.json")).unwrap()).unwrap();
    let workloads = json["workloads"].as_array().unwrap();
    assert_eq!(workloads.len(), 1);
    let workload = &workloads[0];
    assert_eq!(workload["workload"], "W1");
    assert_eq!(workload["dataset"], "Fashion-MNIST");
    assert_eq!(workload["batch_size"], 128);
    let configs = workload["configs"].as_array().unwrap();
    let names: Vec<&str> = configs
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "bare",
            "bare (control)",
            "bare (weighted sampler)",
            "gradient",
            "noise",
            "sampler-distribution",
            "all monitors"
        ]
    );
    let samplers: Vec<&str> = configs
        .iter()
        .map(|c| c["sampler"].as_str().unwrap())
        .collect();
    assert_eq!(
        samplers,
        ["shuffle", "shuffle", "weighted", "shuffle", "shuffle", "weighted", "weighted"]
    );
    assert!(configs[0]["overhead_pct"].is_null());
    // The control has an overhead (the noise floor) but no target.
    assert!(configs[1]["overhead_pct"]["median"]
        .as_f64()
        .unwrap()
        .is_finite());
    assert!(configs[1]["target_pct"].is_null());
    assert!(configs[2]["target_pct"].is_null());
    for config in &configs[3..] {
        assert_eq!(config["overhead_pct"]["repeats"], 2);
        assert_eq!(
            config["overhead_pct"]["samples"].as_array().unwrap().len(),
            2
        );
        assert!(config["overhead_pct"]["median"]
            .as_f64()
            .unwrap()
            .is_finite());
        // The verdict comes from the upper bound: the larger of the high end of the
        // overhead's bootstrap interval and the time in hooks.
        let overhead = &config["overhead_pct"];
        let (low, high) = (
            overhead["low"].as_f64().unwrap(),
            overhead["high"].as_f64().unwrap(),
        );
        assert!(low <= high);
        let upper = config["upper_pct"].as_f64().unwrap();
        let lower = config["lower_pct"].as_f64().unwrap();
        let accounted =
            config["in_hooks_pct"].as_f64().unwrap() + config["in_service_pct"].as_f64().unwrap();
        assert_eq!(upper, high.max(accounted));
        assert_eq!(lower, low.max(accounted));
        let target = config["target_pct"].as_f64().unwrap();
        assert_eq!(config["meets_target"].as_bool().unwrap(), upper <= target);
        // Met by the upper bound, missed by the lower; with no more repeats allowed, what
        // neither decides is undecided.
        let verdict = config["verdict"].as_str().unwrap();
        let expected = if upper <= target {
            "met"
        } else if lower > target {
            "missed"
        } else {
            "undecided"
        };
        assert_eq!(verdict, expected, "{config}");
    }
    // The noise monitor averages the gradient every step: its hooks take measurable time.
    assert!(configs[4]["in_hooks_pct"].as_f64().unwrap() > 0.0);
    assert!(
        workload["bare_train_ms_per_step"]["median"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(workload["peak_rss_mib"].as_f64().unwrap() > 10.0);
    assert_eq!(workload["python"], serde_json::json!([]));
    let plugins = json["plugins"].as_array().unwrap();
    for path in ["no output", "logs 2 values"] {
        assert!(
            plugins.iter().any(|m| m["unit"] == "ns/call"
                && m["name"].as_str().unwrap().contains(path)
                && m["median"].as_f64().unwrap() > 0.0),
            "no dispatch row for the {path} path: {plugins:?}"
        );
    }
}

#[test]
fn bench_with_a_missing_monitor_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = vigil(
        dir.path(),
        &[
            "bench",
            "--monitor",
            "no-such-monitor",
            "--no-python",
            "--steps",
            "1",
        ],
    );
    assert_eq!(output.status.code(), Some(2), "stderr: {}", stderr(&output));
    assert!(
        stderr(&output).contains("no-such-monitor"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn bench_runs_the_python_loop_plain_and_with_vigils_allocator_setting() {
    let python = crate::util::pytorch_python();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    write_idx_dataset(&data, 512, 128, 28);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/python_baseline.py");
    let output = vigil(
        dir.path(),
        &[
            "bench",
            "--workload",
            "w1",
            "--data-dir",
            data.to_str().unwrap(),
            "--monitor",
            "gradient",
            "--steps",
            "4",
            "--warmup-steps",
            "2",
            "--repeats",
            "2",
            "--max-repeats",
            "2",
            "--calls",
            "1000",
            "--batch-size",
            "32",
            "--python",
            python.to_str().unwrap(),
            "--python-script",
            script.to_str().unwrap(),
            "--json",
            "bench.json",
        ],
    );
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("bench.json")).unwrap()).unwrap();
    // The floor: the plain loop's time inside ATen ops, once per repeat, and the host's bare
    // step against it.
    let floor = &json["workloads"][0]["floor"];
    let floors = floor["aten_ms_per_step"]["samples"].as_array().unwrap();
    assert_eq!(floors.len(), 2, "{floor}");
    assert!(floors.iter().all(|f| f.as_f64().unwrap() > 0.0), "{floor}");
    assert!(floor["host_over_floor"]["median"].as_f64().unwrap() > 0.0);
    assert!(["met", "missed", "undecided"].contains(&floor["verdict"].as_str().unwrap()));
    assert!(
        stdout(&output).contains("inside ATen ops"),
        "{}",
        stdout(&output)
    );
    let loops = json["workloads"][0]["python"].as_array().unwrap();
    let mut variants: Vec<(&str, &str)> = loops
        .iter()
        .map(|p| {
            (
                p["variant"].as_str().unwrap(),
                p["glibc_tunables"].as_str().unwrap(),
            )
        })
        .collect();
    variants.sort();
    assert_eq!(
        variants,
        [
            ("plain", ""),
            (
                "vigil's allocator setting",
                vigil::bench::baseline::PYTHON_ALLOCATOR_TUNABLES
            )
        ]
    );
    for p in loops {
        assert_eq!(p["ms_per_step"]["samples"].as_array().unwrap().len(), 2);
    }
    // The faster loop first; only it is judged.
    assert!(
        loops[0]["ms_per_step"]["median"].as_f64().unwrap()
            <= loops[1]["ms_per_step"]["median"].as_f64().unwrap()
    );
    let table = stdout(&output);
    assert!(table.contains("(the slower loop: not judged)"), "{table}");
}

#[test]
fn bench_w2_trains_the_resnet_bare_and_with_all_monitors_and_leaves_unjudged_what_it_did_not_time()
{
    let dir = tempfile::tempdir().unwrap();
    crate::util::write_cifar(&dir.path().join("cifar"), 16);
    let output = vigil(
        dir.path(),
        &[
            "bench",
            "--workload",
            "w2",
            "--cifar-dir",
            "cifar",
            "--monitor",
            "gradient",
            "--monitor",
            "noise",
            "--w2-steps",
            "1",
            "--warmup-steps",
            "1",
            "--repeats",
            "2",
            "--batch-size",
            "8",
            "--calls",
            "1000",
            "--no-python",
            "--json",
            "bench.json",
        ],
    );
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let table = stdout(&output);
    assert!(
        table.contains("W2: CIFAR ResNet-18 at width 0.5 (2.8 M parameters), batch 8, "),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("bench.json")).unwrap()).unwrap();
    let workload = &json["workloads"][0];
    assert_eq!(workload["workload"], "W2");
    assert_eq!(workload["dataset"], "CIFAR-10");
    assert_eq!(workload["steps_per_segment"], 1);
    assert_eq!(workload["batch_size"], 8);
    // W2 measures the monitors together only.
    let names: Vec<&str> = workload["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bare", "bare (control)", "all monitors"]);
    // 80 images at batch 8 are 10 steps an epoch, a validation every 2.5 steps: one-step
    // segments do not all hold one, so the overhead leaves out what the monitors do at
    // validation ends, is no upper bound, and is not judged.
    let all = &workload["configs"][2];
    assert!(all["overhead_pct"]["median"].as_f64().unwrap().is_finite());
    assert_eq!(all["target_pct"], 3.0);
    assert!(all["meets_target"].is_null(), "{all}");
    assert!(table.contains("not judged"), "{table}");
    let notes: Vec<&str> = crate::util::strs(&workload["notes"]);
    assert!(
        notes.iter().any(|n| n.contains("holds no validation")),
        "{notes:?}"
    );
    // The targets are stated for batch 128; the report says this is not that.
    assert!(
        notes
            .iter()
            .any(|n| n.contains("batch 8 is not the workload's batch 128")),
        "{notes:?}"
    );
}

#[test]
fn bench_runs_lightning_with_the_monitors_as_callbacks_against_the_host_with_all_monitors() {
    let lightning = crate::util::lightning_python();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    write_idx_dataset(&data, 512, 128, 28);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/lightning_baseline.py");
    let output = vigil(
        dir.path(),
        &[
            "bench",
            "--workload",
            "w1",
            "--dir",
            crate::util::build_dir().to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--steps",
            "4",
            "--warmup-steps",
            "2",
            "--repeats",
            "2",
            "--calls",
            "1000",
            "--no-python",
            "--batch-size",
            "16",
            "--lightning",
            lightning.to_str().unwrap(),
            "--lightning-script",
            script.to_str().unwrap(),
            "--json",
            "bench.json",
        ],
    );
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("bench.json")).unwrap()).unwrap();
    let workload = &json["workloads"][0];
    let l = &workload["lightning"];
    assert_eq!(l["framework"], "Lightning", "{workload}");
    assert_eq!(l["compared_with"], "all monitors");
    assert!(l["lightning"].as_str().unwrap().starts_with('2'), "{l}");
    assert_eq!(l["ms_per_step"]["samples"].as_array().unwrap().len(), 2);
    // The speed-up is the Lightning segment time over the host's with all monitors, repeat
    // by repeat, and the verdict is from its low end.
    let all = workload["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "all monitors")
        .unwrap();
    let host: Vec<f64> = crate::util::f64s(&all["ms_per_step"]["samples"]);
    let theirs: Vec<f64> = crate::util::f64s(&l["ms_per_step"]["samples"]);
    let speedups: Vec<f64> = crate::util::f64s(&l["host_speedup"]["samples"]);
    for ((s, h), t) in speedups.iter().zip(&host).zip(&theirs) {
        assert!((s - t / h).abs() < 1e-9 * s.abs(), "{s} vs {t}/{h}");
    }
    assert_eq!(
        l["meets_target"].as_bool().unwrap(),
        l["host_speedup"]["low"].as_f64().unwrap() >= 1.5
    );
    assert!(stdout(&output).contains("Lightning loop step"));
    // Four-step segments hold no curvature estimate (one every 1000 steps; the one at step 0
    // fell in the warm-up): the curvature monitor's overhead is not judged, and says why.
    let curvature = workload["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "curvature")
        .unwrap();
    assert!(curvature["meets_target"].is_null(), "{curvature}");
    assert!(
        crate::util::strs(&workload["notes"])
            .iter()
            .any(|n| n.starts_with(
                "`curvature` is not judged: its timed segments hold no curvature estimate"
            )),
        "{workload}"
    );
}

#[test]
fn the_lightning_baseline_runs_every_monitor_callback_and_writes_what_they_write() {
    let lightning = crate::util::lightning_python();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    write_idx_dataset(&data, 512, 128, 28);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/lightning_baseline.py");
    let output = std::process::Command::new(lightning)
        .arg(script)
        .args(["--data-dir", data.to_str().unwrap()])
        .args(["--steps", "4", "--repeats", "2", "--curvature-every", "3"])
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["monitors"], true);
    let run = dir.path().join("out/lightning/version_0");
    for file in [
        "artifacts/model_info.json",
        "artifacts/labels_mapping.json",
        "artifacts/dataset_statistics.csv",
        "artifacts/sampler_distribution.csv",
        "artifacts/epoch_001/confusion_matrix.png",
        "artifacts/epoch_001/confusion_matrix.csv",
        "artifacts/epoch_001/sample_predictions.png",
        "artifacts/training_history/loss.png",
    ] {
        assert!(run.join(file).is_file(), "no {file}");
    }
    let csv =
        std::fs::read_to_string(dir.path().join("out/lightning/version_1/metrics.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    for column in [
        "grad_2.0_norm_total",
        "curvature/lambda_max",
        "curvature/hutch_trace",
        "noise/grad_var",
        "sampler/count/0",
        "weight_norm",
        "train_loss_step",
        "val_loss",
    ] {
        assert!(header.contains(column), "no {column} in {header}");
    }
}

/// The image-folder benchmark runs end to end on a few images (its numbers are not judged
/// here): vigil's decoder and torchvision's on the same files, and the step-time lanes.
#[test]
fn bench_image_folder_measures_decode_beside_torchvision_and_the_step_beside_idx() {
    let python = crate::util::lightning_python();
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/decode_baseline.py");
    let json_path = dir.path().join("bench.json");
    let output = vigil(
        dir.path(),
        &[
            "bench",
            "--image-folder",
            "--decode-images",
            "60",
            "--repeats",
            "2",
            "--steps",
            "2",
            "--lightning",
            python.to_str().unwrap(),
            "--decode-script",
            script.to_str().unwrap(),
            "--json",
            json_path.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    for line in [
        "decode 64×64 JPEG: vigil, 2 threads",
        "decode 64×64 JPEG: torchvision ImageFolder + DataLoader(num_workers=2)",
        "decode: vigil ÷ torchvision: target ≥ 1.5× on the low end",
        "step: image folder ÷ IDX: target ≤ 1.00 on the high end",
    ] {
        assert!(printed.contains(line), "no `{line}` in\n{printed}");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let measurements = report["image_folder"]["measurements"].as_array().unwrap();
    assert_eq!(measurements.len(), 8, "{report}");
    assert!(measurements
        .iter()
        .all(|m| m["median"].as_f64().is_some_and(|v| v > 0.0)));
}
