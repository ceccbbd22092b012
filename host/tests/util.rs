//! Small helpers shared by the integration tests.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;

use flate2::write::GzEncoder;
use flate2::Compression;
use vigil::data::idx::encode_idx;

/// Where cargo put the `vigil` binary, and with it the workspace's plugins.
pub fn build_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_vigil"))
        .parent()
        .expect("the binary is in a directory")
        .to_path_buf()
}

/// The test-fixture plugins (`fault-injector`, `constructor-marker`, `sample-recorder`) in a directory of their
/// own. `cargo test` builds them as examples of `vigil-test-fixtures` into
/// `<build dir>/examples`, beside hash-suffixed copies of the same libraries; this copies the
/// plain ones once per test process, so that a search finds each monitor once.
pub fn fixture_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = build_dir().join("test-fixture-plugins");
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["fault_injector", "constructor_marker", "sample_recorder"] {
            let built = build_dir().join("examples").join(format!("lib{name}.so"));
            assert!(
                built.is_file(),
                "{} is missing: run `cargo test --workspace` (it builds the fixture plugins), or \
                 `cargo build -p vigil-test-fixtures --examples`",
                built.display()
            );
            let temporary = dir.join(format!(".lib{name}.so.{}", std::process::id()));
            std::fs::copy(&built, &temporary).unwrap();
            std::fs::rename(&temporary, dir.join(format!("lib{name}.so"))).unwrap();
        }
        dir
    })
    .clone()
}

/// A fixture plugin's library, by monitor name.
pub fn fixture(name: &str) -> PathBuf {
    fixture_dir().join(format!("lib{}.so", name.replace('-', "_")))
}

/// `plugin_dirs` for a test config: the workspace's monitors, then the fixtures.
pub fn plugin_dirs_toml() -> String {
    format!(
        "plugin_dirs = [{:?}, {:?}]",
        build_dir().display().to_string(),
        fixture_dir().display().to_string()
    )
}

/// The Python with PyTorch that `scripts/bootstrap.sh` installs; the README's test command
/// runs it first, so its absence is a set-up error.
pub fn pytorch_python() -> PathBuf {
    vigil::bench::bootstrap_python()
        .expect("no Python with PyTorch: run scripts/bootstrap.sh (the README's test command does)")
}

/// The Python of the bench venv with Lightning that `scripts/bootstrap.sh` installs (through
/// `scripts/bench-venv.sh`); the README's test command runs it first, so its absence is a
/// set-up error.
pub fn lightning_python() -> PathBuf {
    vigil::bench::lightning_python().expect(
        "no bench venv with Lightning: run scripts/bootstrap.sh (the README's test command does)",
    )
}

/// Write CIFAR-10's binary batches with `per_file` records in each of the six files.
pub fn write_cifar(dir: &Path, per_file: u8) {
    std::fs::create_dir_all(dir).unwrap();
    let batch = |offset: u8| -> Vec<u8> {
        (0..per_file)
            .flat_map(|i| vigil::data::cifar::encode_record((i + offset) % 10, i.wrapping_mul(37)))
            .collect()
    };
    for index in 1..=5 {
        std::fs::write(dir.join(format!("data_batch_{index}.bin")), batch(index)).unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), batch(0)).unwrap();
}

/// Run `tests/fixtures/<script>` with PyTorch's Python and `args`; its stdout as JSON.
pub fn pytorch_fixture(script: &str, args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(script);
    let output = std::process::Command::new(pytorch_python())
        .arg(script)
        .args(args)
        .output()
        .expect("PyTorch's Python runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the fixture prints JSON")
}

/// Run the built `vigil` binary in `dir` with `args`. The per-user plugin directory is
/// pointed at `dir/.xdg-data`, so that a tester's own plugins never take part.
pub fn vigil(dir: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .current_dir(dir)
        .env_remove("LD_LIBRARY_PATH")
        .env("XDG_DATA_HOME", dir.join(".xdg-data"))
        .output()
        .expect("the vigil binary runs")
}

/// `vigil export-model RUN_DIR --checkpoint WHICH --out OUT`, run in `dir`.
pub fn export_model(dir: &Path, run_dir: &Path, which: &str, out: &Path) -> Output {
    vigil(
        dir,
        &[
            "export-model",
            run_dir.to_str().unwrap(),
            "--checkpoint",
            which,
            "--out",
            out.to_str().unwrap(),
        ],
    )
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).expect("gzip to memory");
    encoder.finish().expect("gzip to memory")
}

/// Write an MNIST-layout dataset (gzip-compressed IDX) of `train` and `test` images of
/// `side × side` pixels with labels `i % 10` into `dir`; returns the four paths.
pub fn write_idx_dataset(dir: &Path, train: u32, test: u32, side: u32) -> [PathBuf; 4] {
    let mut paths = Vec::new();
    for (prefix, count) in [("train", train), ("t10k", test)] {
        let pixels: Vec<u8> = (0..count * side * side)
            .map(|i| (i * 7 % 256) as u8)
            .collect();
        let labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
        let images_path = dir.join(format!("{prefix}-images-idx3-ubyte.gz"));
        let labels_path = dir.join(format!("{prefix}-labels-idx1-ubyte.gz"));
        std::fs::write(
            &images_path,
            gzip(&encode_idx(&[count, side, side], &pixels)),
        )
        .unwrap();
        std::fs::write(&labels_path, gzip(&encode_idx(&[count], &labels))).unwrap();
        paths.push(images_path);
        paths.push(labels_path);
    }
    [
        paths[0].clone(),
        paths[1].clone(),
        paths[2].clone(),
        paths[3].clone(),
    ]
}

/// A config for a run of a few seconds on small synthetic data.
pub const TINY_SYNTHETIC: &str = r#"
seed = 1
epochs = 2
batch_size = 32
data = "synthetic"

[synthetic]
train_size = 512
test_size = 128
classes = 4
image_size = 12
noise = 0.3

[model]
kind = "mlp"
hidden = [32]

[optim]
lr = 0.05
momentum = 0.9
"#;

/// The newest training step in a run's `metrics.jsonl` (0 before the first).
pub fn trained_to(run_dir: &Path) -> u64 {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|record| record["kind"] == "train")
        .filter_map(|record| record["global_step"].as_u64())
        .max()
        .unwrap_or(0)
}

/// A JSON file (`run.json`, `study.json`, …), parsed; a missing or broken file panics naming it.
pub fn json(path: impl AsRef<Path>) -> serde_json::Value {
    let path = path.as_ref();
    serde_json::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A JSON array of strings (a run's warnings, a report's notes), as `&str`s; anything else
/// panics.
pub fn strs(value: &serde_json::Value) -> Vec<&str> {
    let items = value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"));
    items
        .iter()
        .map(|item| {
            item.as_str()
                .unwrap_or_else(|| panic!("not a string: {item}"))
        })
        .collect()
}

/// A JSON array of numbers, as `f64`s; anything else panics.
pub fn f64s(value: &serde_json::Value) -> Vec<f64> {
    let items = value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"));
    items
        .iter()
        .map(|item| {
            item.as_f64()
                .unwrap_or_else(|| panic!("not a number: {item}"))
        })
        .collect()
}

/// Every record of a run's `metrics.jsonl`, as written.
pub fn records(run_dir: &Path) -> Vec<serde_json::Value> {
    let path = run_dir.join("metrics.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|line| serde_json::from_str(line).expect("every line parses"))
        .collect()
}

/// Every record of a `metrics.jsonl` without its wall-clock fields (`wall_time`,
/// `epoch_time_s`) and without the `system` records (memory and CPU differ from run to run),
/// for comparing two runs record by record.
pub fn records_without_time(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|line| !line.contains(r#""kind":"system""#))
        .map(|line| {
            let mut record: serde_json::Value = serde_json::from_str(line).unwrap();
            let object = record.as_object_mut().unwrap();
            object.remove("wall_time");
            object.remove("epoch_time_s");
            record
        })
        .collect()
}
