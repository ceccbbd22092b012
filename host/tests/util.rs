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

/// Run the built `vigil` binary in `dir` with `args`.
pub fn vigil(dir: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .current_dir(dir)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("the vigil binary runs")
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
