//! `vigil bench --image-folder`: how fast vigil reads an image folder.
//!
//! - **Decode throughput**: `images` 64×64 JPEGs in ten class folders (written here, once),
//!   decoded to uint8 CHW by vigil's image-folder reader on `threads` threads, against
//!   torchvision's `ImageFolder` with `Resize(64)`, `CenterCrop(64)` and `PILToTensor` read
//!   through `DataLoader(num_workers = threads)` (`bench/decode_baseline.py`) on the same
//!   files. Target: vigil ≥ 1.5× torchvision on the low end of the interval.
//! - **Step time**: the small CNN on the same images as a cached grayscale image folder and
//!   as IDX files of the same pixels (and a second IDX lane, the noise floor), interleaved.
//!   Target: image folder ÷ IDX ≤ 1 on the high end.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use super::Measurement;
use crate::config::Settings;
use crate::data::{self, FileImages};
use crate::error::{Error, Result};
use crate::hub::RunHub;
use crate::train::Trainer;

/// Side of the benchmark's images.
const SIDE: u32 = 64;
const CLASSES: usize = 10;
/// Images a decode call takes at once, as a training batch would.
const BATCH: usize = 256;

/// What to measure and with what.
#[derive(Debug, Clone)]
pub struct ImageFolderOptions {
    /// JPEGs in the training folder.
    pub images: usize,
    /// Decode threads for vigil, worker processes for torchvision, intra-op threads for training.
    pub threads: usize,
    pub repeats: usize,
    /// Training steps per timed segment of the step-time comparison.
    pub steps: u64,
    /// The Python with torchvision (the bench venv), and `bench/decode_baseline.py`.
    pub python: Option<PathBuf>,
    pub script: PathBuf,
}

/// A target and whether the measured interval meets it.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub measure: String,
    pub target: String,
    /// `None`: not judged (the baseline did not run).
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageFolderReport {
    pub measurements: Vec<Measurement>,
    pub verdicts: Vec<Verdict>,
}

/// Removes the benchmark's files when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run_image_folder(options: &ImageFolderOptions) -> Result<ImageFolderReport> {
    let scratch =
        Scratch(std::env::temp_dir().join(format!("vigil-bench-images-{}", std::process::id())));
    let root = &scratch.0;
    let per_class = options.images.div_ceil(CLASSES).max(1);
    write_jpegs(&root.join("train"), per_class)?;
    write_jpegs(&root.join("val"), (per_class / 10).max(4))?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.threads.max(1))
        .build()
        .map_err(|e| Error::Subprocess {
            program: "vigil bench --image-folder".into(),
            reason: format!("cannot start {} decode threads: {e}", options.threads),
        })?;

    let mut files = Vec::new();
    for class in 0..CLASSES {
        let mut names: Vec<PathBuf> = std::fs::read_dir(root.join("train").join(class_name(class)))
            .map_err(|source| Error::io(root, source))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        files.extend(names);
    }
    let count = files.len();
    let folder = FileImages {
        files,
        channels: 3,
        size: SIDE as usize,
    };
    let mut buffer = vec![0u8; BATCH * folder.image_len()];
    let mut pass = || -> Result<f64> {
        let started = Instant::now();
        let indices: Vec<i64> = (0..count as i64).collect();
        for chunk in indices.chunks(BATCH) {
            let out = &mut buffer[..chunk.len() * folder.image_len()];
            pool.install(|| folder.decode_batch(chunk, out))?;
        }
        Ok(count as f64 / started.elapsed().as_secs_f64())
    };
    pass()?; // warm the page cache and the threads
    let ours: Vec<f64> = (0..options.repeats.max(1))
        .map(|_| pass())
        .collect::<Result<_>>()?;
    let mut measurements = vec![Measurement::of(
        &format!(
            "decode {SIDE}×{SIDE} JPEG: vigil, {} threads",
            options.threads
        ),
        "images/s",
        ours.clone(),
    )];
    let mut verdicts = Vec::new();
    match &options.python {
        Some(python) => {
            let theirs = torchvision_rates(python, &options.script, &root.join("train"), options)?;
            measurements.push(Measurement::of(
                &format!(
                    "decode {SIDE}×{SIDE} JPEG: torchvision ImageFolder + DataLoader(num_workers={})",
                    options.threads
                ),
                "images/s",
                theirs.clone(),
            ));
            let ratios: Vec<f64> = ours.iter().zip(&theirs).map(|(a, b)| a / b).collect();
            let ratio = Measurement::of("decode: vigil ÷ torchvision", "×", ratios);
            verdicts.push(Verdict {
                measure: ratio.name.clone(),
                target: format!("≥ 1.5× on the low end (low {:.2})", ratio.low),
                met: Some(ratio.low >= 1.5),
            });
            measurements.push(ratio);
        }
        None => verdicts.push(Verdict {
            measure: "decode: vigil ÷ torchvision".into(),
            target: "≥ 1.5× on the low end".into(),
            met: None,
        }),
    }

    let (steps, step_verdict) = step_times(root, options)?;
    measurements.extend(steps);
    verdicts.push(step_verdict);
    Ok(ImageFolderReport {
        measurements,
        verdicts,
    })
}

fn class_name(class: usize) -> String {
    format!("class{class}")
}

/// `per_class` 64×64 RGB JPEGs (quality 90) in each of ten class folders under `dir`: smooth
/// colour fields with texture, so that they compress like photographs rather than flat fills.
fn write_jpegs(dir: &Path, per_class: usize) -> Result<()> {
    (0..CLASSES * per_class)
        .into_par_iter()
        .try_for_each(|index| {
            let (class, item) = (index / per_class, index % per_class);
            let class_dir = dir.join(class_name(class));
            std::fs::create_dir_all(&class_dir).map_err(|source| Error::io(&class_dir, source))?;
            let seed = (index as u32).wrapping_mul(2_654_435_761);
            let image = image::RgbImage::from_fn(SIDE, SIDE, |x, y| {
                let noise = (x.wrapping_mul(73) ^ y.wrapping_mul(151) ^ seed) % 48;
                let base = |shift: u32| ((x * shift + y * (7 - shift) + seed % 97) % 200) as u8;
                image::Rgb([
                    base(1 + class as u32 % 5).saturating_add(noise as u8),
                    base(3).saturating_add((noise / 2) as u8),
                    base(5).saturating_add((class * 20) as u8),
                ])
            });
            let path = class_dir.join(format!("{item:06}.jpg"));
            let file = std::fs::File::create(&path).map_err(|source| Error::io(&path, source))?;
            let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(
                std::io::BufWriter::new(file),
                90,
            );
            encoder
                .encode_image(&image)
                .map_err(|e| Error::io(&path, std::io::Error::other(e)))
        })
}

fn torchvision_rates(
    python: &Path,
    script: &Path,
    dir: &Path,
    options: &ImageFolderOptions,
) -> Result<Vec<f64>> {
    let output = Command::new(python)
        .arg(script)
        .arg("--dir")
        .arg(dir)
        .args(["--size", &SIDE.to_string(), "--batch", &BATCH.to_string()])
        .args(["--workers", &options.threads.to_string()])
        .args(["--repeats", &options.repeats.max(1).to_string()])
        .output()
        .map_err(|e| Error::Subprocess {
            program: python.display().to_string(),
            reason: format!("cannot run it: {e}"),
        })?;
    if !output.status.success() {
        return Err(Error::Subprocess {
            program: script.display().to_string(),
            reason: format!(
                "failed under {} (it needs torchvision: scripts/bench-venv.sh installs it): {}",
                python.display(),
                String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .last()
                    .unwrap_or_default()
            ),
        });
    }
    let answer: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| Error::Subprocess {
            program: script.display().to_string(),
            reason: format!("printed no JSON: {e}"),
        })?;
    serde_json::from_value(answer["images_per_s"].clone()).map_err(|e| Error::Subprocess {
        program: script.display().to_string(),
        reason: format!("printed no images_per_s: {e}"),
    })
}

/// Step time of the small CNN on the benchmark's images as a cached grayscale image folder,
/// and as IDX files of the very same pixels (twice: the second IDX lane is the noise floor).
fn step_times(root: &Path, options: &ImageFolderOptions) -> Result<(Vec<Measurement>, Verdict)> {
    let common = format!(
        "epochs = 1000\nbatch_size = 64\nval_check_interval = 1.0\naugment = false\nthreads = {}\n[model]\nkind = \"cnn\"\n",
        options.threads.max(1)
    );
    let folder_toml = format!(
        "data = \"image-folder\"\ndata_dir = {:?}\n{common}[image_folder]\nimage_size = {SIDE}\nchannels = 1\n",
        root.display().to_string()
    );
    let folder_settings = Settings::from_toml(&folder_toml, Path::new("bench-image-folder.toml"))?;
    let folder_data = data::load(&folder_settings.data.source)?;
    let idx_dir = root.join("idx");
    std::fs::create_dir_all(&idx_dir).map_err(|source| Error::io(&idx_dir, source))?;
    for (prefix, set) in [("train", &folder_data.train), ("t10k", &folder_data.test)] {
        let dims = [set.len() as u32, set.height as u32, set.width as u32];
        let labels: Vec<u8> = set.labels.iter().map(|&l| l as u8).collect();
        for (name, bytes) in [
            (
                format!("{prefix}-images-idx3-ubyte"),
                data::idx::encode_idx(&dims, &set.images),
            ),
            (
                format!("{prefix}-labels-idx1-ubyte"),
                data::idx::encode_idx(&dims[..1], &labels),
            ),
        ] {
            let path = idx_dir.join(name);
            std::fs::write(&path, bytes).map_err(|source| Error::io(&path, source))?;
        }
    }
    let idx_toml = format!(
        "data = \"mnist\"\ndata_dir = {:?}\n{common}",
        idx_dir.display().to_string()
    );
    let idx_settings = Settings::from_toml(&idx_toml, Path::new("bench-idx.toml"))?;
    let idx_data = data::load(&idx_settings.data.source)?;
    let mut lanes = [
        (
            "image folder",
            Trainer::new(&folder_settings, &folder_data)?,
        ),
        ("IDX", Trainer::new(&idx_settings, &idx_data)?),
        ("IDX (control)", Trainer::new(&idx_settings, &idx_data)?),
    ];
    let mut hub = RunHub::empty();
    for (_, trainer) in &mut lanes {
        trainer.start(&mut hub)?;
        let until = trainer.global_step() + options.steps.min(20);
        trainer.train_until(&mut hub, Some(until))?;
    }
    let mut times = vec![Vec::new(); lanes.len()];
    for _ in 0..options.repeats.max(1) {
        for ((_, trainer), samples) in lanes.iter_mut().zip(&mut times) {
            let started = Instant::now();
            let until = trainer.global_step() + options.steps;
            let part = trainer.train_until(&mut hub, Some(until))?;
            let seconds = started.elapsed().as_secs_f64() - part.validation_seconds;
            samples.push(seconds * 1000.0 / options.steps as f64);
        }
    }
    let mut measurements: Vec<Measurement> = lanes
        .iter()
        .zip(&times)
        .map(|((name, _), samples)| {
            Measurement::of(
                &format!("training step, CNN on 1×{SIDE}×{SIDE} images: {name}"),
                "ms",
                samples.clone(),
            )
        })
        .collect();
    let ratio =
        |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x / y).collect() };
    let folder_ratio =
        Measurement::of("step: image folder ÷ IDX", "×", ratio(&times[0], &times[1]));
    let control = Measurement::of(
        "step: IDX (control) ÷ IDX",
        "×",
        ratio(&times[2], &times[1]),
    );
    let verdict = Verdict {
        measure: folder_ratio.name.clone(),
        target: format!(
            "≤ 1.00 on the high end (high {:.3}; the control's interval is {:.3}–{:.3})",
            folder_ratio.high, control.low, control.high
        ),
        met: Some(folder_ratio.high <= 1.0),
    };
    measurements.push(folder_ratio);
    measurements.push(control);
    Ok((measurements, verdict))
}

/// The report as a table of measurements (median and 90 % interval) and verdicts.
pub fn image_folder_table(report: &ImageFolderReport) -> String {
    let mut out = String::new();
    for m in &report.measurements {
        out.push_str(&format!(
            "{:<80} {:>10.3} {} (90 % interval {:.3}–{:.3}, {} repeats)\n",
            m.name, m.median, m.unit, m.low, m.high, m.repeats
        ));
    }
    for verdict in &report.verdicts {
        let word = match verdict.met {
            Some(true) => "ok",
            Some(false) => "MISSED",
            None => "not judged (no torchvision baseline)",
        };
        out.push_str(&format!(
            "{}: target {} — {word}\n",
            verdict.measure, verdict.target
        ));
    }
    out
}
