//! The instrument plugins in a real run, and the same quantities from Cockpit (the peer, in the
//! bench venv) on the same network, weights and batch.

use std::path::Path;

use crate::util::{json, lightning_python, plugin_dirs_toml, records, stderr, vigil};

const SAMPLES: usize = 32;
const STEPS: usize = 4;
const LR: f64 = 0.05;

/// `count` images of 1 × 28 × 28 with values in [−1, 1] from a fixed sequence, and labels.
fn write_images(path: &Path, count: usize, seed: u64) {
    let mut state = seed;
    let values: Vec<u8> = (0..count * 784)
        .flat_map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
            (2.0 * unit - 1.0).to_le_bytes()
        })
        .collect();
    let labels: Vec<u8> = (0..count as i64)
        .flat_map(|i| (i % 10).to_le_bytes())
        .collect();
    let views = vec![
        (
            "inputs",
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                vec![count, 1, 28, 28],
                &values,
            )
            .unwrap(),
        ),
        (
            "labels",
            safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![count], &labels)
                .unwrap(),
        ),
    ];
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn instrument_run(dir: &Path) -> std::path::PathBuf {
    instrument_run_of(dir, "run", "kind = \"cnn\"")
}

/// A run of the model `model` (the `[model]` table's lines) into `dir/run_name`.
fn instrument_run_of(dir: &Path, run_name: &str, model: &str) -> std::path::PathBuf {
    write_images(&dir.join("train.safetensors"), SAMPLES, 1);
    write_images(&dir.join("val.safetensors"), 16, 2);
    let config = format!(
        r#"name = "instruments"
run_dir = "{run_name}"
seed = 3
epochs = {STEPS}
batch_size = {SAMPLES}
data = "tensors"
{dirs}
[tensors]
train = "train.safetensors"
val = "val.safetensors"
[model]
{model}
[optim]
kind = "sgd"
lr = {LR}
momentum = 0.0
weight_decay = 0.0
[[monitors]]
name = "gradient-tests"
[monitors.settings]
every_n_steps = 1
[[monitors]]
name = "step-quality"
[monitors.settings]
every_n_steps = 1
[[monitors]]
name = "gradient-histogram"
[monitors.settings]
every_n_steps = 1
two_d = true
[[monitors]]
name = "instrument-panel"
[monitors.settings]
every_n_steps = 1
"#,
        dirs = plugin_dirs_toml(),
    );
    let file = format!("{run_name}.toml");
    std::fs::write(dir.join(&file), config).unwrap();
    let output = vigil(dir, &["train", &file]);
    assert!(output.status.success(), "{}", stderr(&output));
    dir.join(run_name)
}

/// NormTest, InnerTest, OrthoTest, GradNorm, UpdateSize, Distance and Alpha of Cockpit's
/// economy configuration, run on vigil's initial weights and batch, agree with vigil's to
/// 1e-4 at every step both have.
#[test]
fn the_instruments_agree_with_cockpit_on_the_same_network_weights_and_batch() {
    let dir = tempfile::tempdir().unwrap();
    let run = instrument_run(dir.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cockpit_compare.py");
    let output = std::process::Command::new(lightning_python())
        .arg(script)
        .arg(&run)
        .arg(dir.path().join("train.safetensors"))
        .arg(LR.to_string())
        .arg(STEPS.to_string())
        .output()
        .expect("the bench venv's Python runs");
    assert!(
        output.status.success(),
        "Cockpit's side failed (scripts/bench-venv.sh installs Cockpit and BackPACK): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for quantity in [
        "norm_test",
        "inner_test",
        "ortho_test",
        "grad_norm",
        "update_size",
        "distance",
        "alpha",
    ] {
        let theirs = answer["cockpit"][quantity].as_object().unwrap();
        let ours = answer["vigil"][quantity].as_object().unwrap();
        let shared: Vec<&String> = theirs.keys().filter(|k| ours.contains_key(*k)).collect();
        let want = if quantity == "alpha" || quantity == "update_size" {
            STEPS - 1
        } else {
            STEPS
        };
        assert!(
            shared.len() >= want,
            "{quantity}: Cockpit has steps {:?}, vigil {:?}",
            theirs.keys().collect::<Vec<_>>(),
            ours.keys().collect::<Vec<_>>()
        );
        let mut worst: f64 = 0.0;
        for step in &shared {
            let (a, b) = (
                theirs[*step].as_f64().unwrap(),
                ours[*step].as_f64().unwrap(),
            );
            let error = (a - b).abs() / a.abs().max(1e-12);
            worst = worst.max(error);
            assert!(
                error <= 1e-4,
                "{quantity} at step {step}: Cockpit {a}, vigil {b} (relative difference {error:.1e})"
            );
        }
        eprintln!(
            "{quantity}: {} steps, largest relative difference {worst:.1e}",
            shared.len()
        );
    }
}

/// The run's instruments log at their steps, and each epoch has its pictures: the gradient
/// histogram (1-D and 2-D) and the instrument panel.
#[test]
fn an_instrument_run_logs_every_instrument_and_draws_its_pictures() {
    let dir = tempfile::tempdir().unwrap();
    let run = instrument_run(dir.path());
    let records = records(&run);
    let steps_with = |name: &str| {
        records
            .iter()
            .filter(|r| r.get(name).is_some())
            .map(|r| r["global_step"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(steps_with("gradient-tests/norm_test"), [0, 1, 2, 3]);
    assert_eq!(steps_with("gradient-tests/mean_gsnr"), [0, 1, 2, 3]);
    assert_eq!(steps_with("step-quality/alpha"), [1, 2, 3]);
    assert_eq!(steps_with("step-quality/distance"), [0, 1, 2, 3]);
    assert!(steps_with("step-quality/update_size/conv1.weight").len() == 3);
    for epoch in 1..=STEPS {
        for file in ["gradient_histogram.png", "instrument_panel.png"] {
            let path = run.join(format!("artifacts/epoch_{epoch:03}/{file}"));
            let bytes =
                std::fs::read(&path).unwrap_or_else(|_| panic!("{} is missing", path.display()));
            assert!(bytes.starts_with(b"\x89PNG"), "{}", path.display());
        }
    }
    let summary = json(run.join("run.json"));
    let monitors = summary["monitors"].as_array().unwrap();
    for name in [
        "gradient-tests",
        "step-quality",
        "gradient-histogram",
        "instrument-panel",
    ] {
        let monitor = monitors.iter().find(|m| m["name"] == name).unwrap();
        assert_eq!(monitor["status"], "ok", "{monitor}");
    }
}

/// A TorchScript model gets its individual gradients one backward pass per sample: the same
/// network with the same initial weights, scripted in PyTorch, gives the same gradient tests
/// at the first step as the built-in CNN's recorded layers.
#[test]
fn a_torchscript_model_gets_the_same_instruments_one_pass_per_sample() {
    let dir = tempfile::tempdir().unwrap();
    let native = instrument_run(dir.path());
    let module = dir.path().join("cnn.pt");
    crate::util::pytorch_fixture(
        "scripted_from_initial.py",
        &[native.as_os_str(), module.as_os_str()],
    );
    let scripted = instrument_run_of(
        dir.path(),
        "scripted",
        "kind = \"torchscript\"\npath = \"cnn.pt\"",
    );
    let first = |run: &Path, name: &str| -> f64 {
        records(run)
            .iter()
            .find(|r| r["global_step"] == 0 && r.get(name).is_some())
            .unwrap_or_else(|| panic!("{name} at step 0 in {}", run.display()))[name]
            .as_f64()
            .unwrap()
    };
    for name in [
        "gradient-tests/norm_test",
        "gradient-tests/inner_test",
        "gradient-tests/ortho_test",
        "gradient-tests/grad_norm",
        "gradient-tests/mean_gsnr",
    ] {
        let (a, b) = (first(&native, name), first(&scripted, name));
        assert!(
            (a - b).abs() <= 1e-4 * a.abs(),
            "{name}: built-in {a}, scripted {b}"
        );
    }
}

/// A run trained for two steps and resumed for two more logs what the same run trained for
/// four in one go logs: the distance counts from the weights the run started from (kept in the
/// checkpoint), and α, the update size and the tests continue.
#[test]
fn a_resumed_run_measures_from_the_same_start() {
    let dir = tempfile::tempdir().unwrap();
    let whole = instrument_run(dir.path());
    let config = std::fs::read_to_string(dir.path().join("run.toml"))
        .unwrap()
        .replace("run_dir = \"run\"", "run_dir = \"parts\"")
        .replace(&format!("epochs = {STEPS}"), "epochs = 2");
    std::fs::write(dir.path().join("parts.toml"), config).unwrap();
    let first = vigil(dir.path(), &["train", "parts.toml"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let epochs = format!("epochs={STEPS}");
    let second = vigil(
        dir.path(),
        &["train", "--resume", "parts", "--set", &epochs],
    );
    assert!(second.status.success(), "{}", stderr(&second));
    let parts = dir.path().join("parts");
    let logged = |run: &Path, name: &str| -> Vec<(u64, f64)> {
        records(run)
            .iter()
            .filter_map(|r| Some((r["global_step"].as_u64()?, r.get(name)?.as_f64()?)))
            .collect()
    };
    for name in [
        "step-quality/distance",
        "step-quality/update_size",
        "step-quality/alpha",
        "gradient-tests/norm_test",
    ] {
        let (a, b) = (logged(&whole, name), logged(&parts, name));
        assert_eq!(a.len(), b.len(), "{name}: {a:?} vs {b:?}");
        for ((step_a, a), (step_b, b)) in a.iter().zip(&b) {
            assert_eq!(step_a, step_b);
            assert!(
                (a - b).abs() <= 1e-5 * a.abs().max(1e-12),
                "{name} at step {step_a}: {a} vs {b}"
            );
        }
    }
}
