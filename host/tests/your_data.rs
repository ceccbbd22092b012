//! The practitioner's path: their own model scripted in PyTorch, their own images in class
//! folders, every monitor on, a resume, and an export that PyTorch loads.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::export::{exported_logits, max_gap, validation_inputs, vigil_logits};
use crate::util::{build_dir, json, pytorch_python, records_without_time, stderr, stdout, vigil};

const CLASSES: [&str; 3] = ["apple", "banana", "cherry"];

/// `train/` (24 images a class) and `val/` (6 a class): PNG and JPEG, portrait 20×24 and
/// landscape 28×20, each class a different dominant colour with a per-image pattern; one
/// corrupt JPEG in `train/banana/`.
fn write_image_folder(root: &Path) {
    for (split, count) in [("train", 24u32), ("val", 6)] {
        for (class, name) in CLASSES.iter().enumerate() {
            let dir = root.join(split).join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..count {
                let (width, height) = if i % 2 == 0 { (20, 24) } else { (28, 20) };
                let image = image::RgbImage::from_fn(width, height, |x, y| {
                    let wave = ((x * 7 + y * 3 + i * 11) % 40) as u8;
                    let mut pixel = [30 + wave, 30 + wave, 30 + wave];
                    pixel[class] = 180 + wave;
                    image::Rgb(pixel)
                });
                let extension = if i % 3 == 0 { "jpg" } else { "png" };
                image.save(dir.join(format!("{i:02}.{extension}"))).unwrap();
            }
        }
    }
    std::fs::write(
        root.join("train/banana/zz-corrupt.jpg"),
        b"\xff\xd8not a jpeg",
    )
    .unwrap();
}

/// `scripts/script_model.py`'s tiny CNN with batch norm, for 3 × 16 × 16 images, 3 classes.
fn script_tiny_cnn(dir: &Path) -> PathBuf {
    let out = dir.join("net.pt");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/script_model.py");
    let output = std::process::Command::new(pytorch_python())
        .arg(script)
        .args(["--channels", "3", "--classes", "3", "--size", "16", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    out
}

fn config(dir: &Path) -> String {
    format!(
        r#"seed = 5
epochs = 2
batch_size = 8
threads = 1
data = "image-folder"
data_dir = {:?}
augment = true
sampler = "weighted"
top_k = 2
plugin_dirs = [{:?}]

[image_folder]
image_size = 16
skip_bad_files = true

[model]
kind = "torchscript"
path = {:?}

[optim]
lr = 0.05
momentum = 0.9

[[monitors]]
name = "gradient"
settings = {{ log_every_n_steps = 2 }}

[[monitors]]
name = "curvature"
settings = {{ compute_every_n_steps = 4, subsample = 8, max_batch_size = 8, num_samples = 2, max_iter = 5 }}

[[monitors]]
name = "noise"
settings = {{ min_points = 4, log_every_n_steps = 2 }}

[[monitors]]
name = "loss-slope"
settings = {{ window = [1, 2], burn_in_loss = 5.0 }}

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
        dir.join("images").display().to_string(),
        build_dir().display().to_string(),
        dir.join("net.pt").display().to_string()
    )
}

/// `metrics.jsonl` without wall-clock fields; curvature values rounded to 1e-6 relative.
fn records(run_dir: &Path) -> Vec<Value> {
    let mut records = records_without_time(&run_dir.join("metrics.jsonl"));
    for record in &mut records {
        let object = record.as_object_mut().unwrap();
        if object.get("monitor").is_some_and(|m| m == "curvature") {
            for (key, value) in object.iter_mut() {
                if let (true, Some(x)) = (key.starts_with("curvature/"), value.as_f64()) {
                    *value = Value::from(format!("{:.5e}", x));
                }
            }
        }
    }
    records
}

#[test]
fn a_scripted_model_trains_on_an_image_folder_with_every_monitor_resumes_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    write_image_folder(&dir.path().join("images"));
    script_tiny_cnn(dir.path());
    std::fs::write(dir.path().join("run.toml"), config(dir.path())).unwrap();

    // Straight through.
    let output = vigil(
        dir.path(),
        &["train", "run.toml", "--set", "run_dir=\"full\""],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let full = dir.path().join("full");
    let summary = json(full.join("run.json"));
    assert_eq!(summary["status"], "completed");
    assert_eq!(summary["model"], "torchscript");
    assert_eq!(
        summary["skipped_files"]["count"], 1,
        "{}",
        summary["skipped_files"]
    );
    assert!(summary["skipped_files"]["files"][0]
        .as_str()
        .unwrap()
        .ends_with("train/banana/zz-corrupt.jpg"));
    for monitor in summary["monitors"].as_array().unwrap() {
        assert_eq!(monitor["status"], "ok", "{monitor}");
    }
    assert_eq!(
        summary["warnings"].as_array().unwrap().len(),
        0,
        "{}",
        summary["warnings"]
    );

    // Loss goes down; top-2 accuracy is logged beside accuracy.
    let all = records(&full);
    let epochs: Vec<&Value> = all.iter().filter(|r| r["kind"] == "epoch").collect();
    assert_eq!(epochs.len(), 2);
    let loss = |r: &Value| r["train_loss"].as_f64().unwrap();
    assert!(loss(epochs[1]) < loss(epochs[0]), "{epochs:?}");
    assert!(epochs[1]["val_acc_top2"].as_f64().unwrap() >= epochs[1]["val_acc"].as_f64().unwrap());

    // Every monitor left its mark: metrics or files.
    for metric in [
        "grad_norm/total",
        "curvature/lambda_max",
        "noise/resid_power",
        "loss_slope_full",
    ] {
        assert!(
            all.iter().any(|r| r.get(metric).is_some()),
            "{metric} never logged"
        );
    }
    let artifacts = full.join("artifacts");
    for file in [
        "epoch_002/confusion_matrix.png",
        "epoch_002/sample_predictions.png",
        "training_history/accuracy.png",
        "sampler_distribution.csv",
        "model_info.json",
        "dataset_statistics.csv",
    ] {
        assert!(artifacts.join(file).is_file(), "{file} missing");
    }
    // Class names are the folder names, everywhere a monitor shows them.
    let csv = std::fs::read_to_string(artifacts.join("epoch_002/confusion_matrix.csv")).unwrap();
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .ends_with(r#""apple","banana","cherry""#),
        "{csv}"
    );
    let labels = json(artifacts.join("labels_mapping.json"));
    assert_eq!(
        (labels["0"].as_str(), labels["2"].as_str()),
        (Some("apple"), Some("cherry"))
    );
    let stats = std::fs::read_to_string(artifacts.join("dataset_statistics.csv")).unwrap();
    // 25 files in train/banana/, the corrupt one left out.
    assert!(stats.contains(r#"train,1,"banana",24,"#), "{stats}");

    // In two parts, resumed from the checkpoint (module.pt with the batch-norm statistics):
    // the same records.
    let output = vigil(
        dir.path(),
        &[
            "train",
            "run.toml",
            "--set",
            "run_dir=\"parts\"",
            "--set",
            "epochs=1",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let output = vigil(
        dir.path(),
        &["train", "--resume", "parts", "--set", "epochs=2"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("resuming"), "{}", stdout(&output));
    let parts = records(&dir.path().join("parts"));
    assert_eq!(parts.len(), all.len());
    for (a, b) in all.iter().zip(&parts) {
        assert_eq!(a, b, "the resumed run differs");
    }

    // Export: TorchScript that PyTorch loads gives vigil's logits on 8 validation images.
    let out = dir.path().join("model.pt");
    let output = vigil(
        dir.path(),
        &[
            "export-model",
            "full",
            "--checkpoint",
            "best",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("TorchScript model"),
        "{}",
        stdout(&output)
    );
    let index = json(full.join("checkpoints/index.json"));
    let best = full
        .join("checkpoints")
        .join(index["best"][0]["dir"].as_str().unwrap());
    let (x, spec) = validation_inputs(&full, 8);
    assert_eq!(spec.class_names, CLASSES);
    let ours = vigil_logits(&full, &best, &spec, &x);
    let (theirs, runtime) = exported_logits(&out, &x);
    assert!(runtime.starts_with("torch"), "{runtime}");
    let gap = max_gap(&ours, &theirs);
    assert!(
        gap <= 1e-5,
        "torch.jit.load's logits differ from vigil's by {gap}"
    );
}

/// A safetensors file of `inputs` and `labels`.
fn write_tensors(path: &Path, inputs: (&[usize], safetensors::Dtype, Vec<u8>), labels: &[i64]) {
    let label_bytes: Vec<u8> = labels.iter().flat_map(|l| l.to_le_bytes()).collect();
    let (shape, dtype, data) = inputs;
    let views = vec![
        (
            "inputs",
            safetensors::tensor::TensorView::new(dtype, shape.to_vec(), &data).unwrap(),
        ),
        (
            "labels",
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::I64,
                vec![labels.len()],
                &label_bytes,
            )
            .unwrap(),
        ),
    ];
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// Float features (N × 12, not images): the MLP learns them, the monitor that shows images
/// is told once that there are none; uint8 N × 1 × 8 × 8 inputs are images and it shows them.
#[test]
fn tensor_files_train_and_only_image_inputs_reach_the_image_monitor() {
    let dir = tempfile::tempdir().unwrap();
    let features = |count: usize| -> (Vec<u8>, Vec<i64>) {
        let labels: Vec<i64> = (0..count as i64).map(|i| i % 4).collect();
        let values: Vec<f32> = (0..count * 12)
            .map(|i| {
                let (sample, feature) = (i / 12, i % 12);
                let signal = if feature as i64 == labels[sample] {
                    2.0
                } else {
                    0.0
                };
                signal + ((i * 37 % 17) as f32 / 17.0 - 0.5)
            })
            .collect();
        (
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            labels,
        )
    };
    for (split, count) in [("train", 128), ("val", 32)] {
        let (bytes, labels) = features(count);
        write_tensors(
            &dir.path().join(format!("{split}.safetensors")),
            (&[count, 12], safetensors::Dtype::F32, bytes),
            &labels,
        );
        let pixels: Vec<u8> = (0..count * 64)
            .map(|i| ((i / 64) % 4 * 60 + i % 7) as u8)
            .collect();
        let labels: Vec<i64> = (0..count as i64).map(|i| i % 4).collect();
        write_tensors(
            &dir.path().join(format!("{split}-images.safetensors")),
            (&[count, 1, 8, 8], safetensors::Dtype::U8, pixels),
            &labels,
        );
    }
    let config = |suffix: &str, model: &str| {
        format!(
            "epochs = 3\nbatch_size = 16\ndata = \"tensors\"\nplugin_dirs = [{:?}]\n[tensors]\n\
             train = \"train{suffix}.safetensors\"\nval = \"val{suffix}.safetensors\"\n\
             class_names = [\"a\", \"b\", \"c\", \"d\"]\n[model]\n{model}\n[optim]\nlr = 0.1\n\
             [[monitors]]\nname = \"sample-visualization\"\n",
            build_dir().display().to_string()
        )
    };
    std::fs::write(
        dir.path().join("features.toml"),
        config("", "kind = \"mlp\"\nhidden = [16]"),
    )
    .unwrap();
    let output = vigil(
        dir.path(),
        &["train", "features.toml", "--set", "run_dir=\"f\""],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stderr(&output)
            .matches("monitors that show sample images get none")
            .count(),
        1,
        "{}",
        stderr(&output)
    );
    let summary = json(dir.path().join("f/run.json"));
    assert!(
        summary["final"]["val_acc"].as_f64().unwrap() > 0.9,
        "{}",
        summary["final"]
    );
    assert_eq!(
        summary["monitors"][0]["status"], "ok",
        "{}",
        summary["monitors"]
    );
    assert!(!dir
        .path()
        .join("f/artifacts/epoch_001/sample_predictions.png")
        .exists());
    let inputs = json(dir.path().join("f/inputs.json"));
    assert_eq!(
        inputs["mean"].as_array().unwrap().len(),
        0,
        "float inputs are used as given"
    );

    std::fs::write(
        dir.path().join("images.toml"),
        config("-images", "kind = \"cnn\""),
    )
    .unwrap();
    let output = vigil(
        dir.path(),
        &["train", "images.toml", "--set", "run_dir=\"i\""],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!stderr(&output).contains("get none"), "{}", stderr(&output));
    assert!(dir
        .path()
        .join("i/artifacts/epoch_001/sample_predictions.png")
        .is_file());

    // A split whose labels are not int64 is one clear error naming the file.
    write_tensors(
        &dir.path().join("val.safetensors"),
        (&[2, 12], safetensors::Dtype::F32, vec![0; 96]),
        &[0, 1],
    );
    let mut bad = std::fs::read(dir.path().join("val.safetensors")).unwrap();
    let header = String::from_utf8_lossy(&bad).replace("\"I64\"", "\"I32\"");
    bad = header.into_bytes();
    std::fs::write(dir.path().join("val.safetensors"), bad).unwrap();
    let output = vigil(dir.path(), &["check", "features.toml"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("val.safetensors"),
        "{}",
        stderr(&output)
    );
}

/// vigil's image-folder decoding against torchvision's `Resize(16)`, `CenterCrop(16)` and
/// `PILToTensor` on the same files: a tall PNG whose shorter side is already 16 (only the
/// crop, whose offset rounds half to even as Python's `round` does) gives the same bytes; a
/// larger landscape JPEG, resampled by different bilinear filters, stays close.
#[test]
fn image_folder_decoding_matches_torchvisions_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let tall = dir.path().join("tall.png");
    image::RgbImage::from_fn(16, 25, |x, y| {
        image::Rgb([(x * 13 + y * 7) as u8, (y * 10) as u8, (x * 15) as u8])
    })
    .save(&tall)
    .unwrap();
    let wide = dir.path().join("wide.jpg");
    image::RgbImage::from_fn(48, 32, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 7) as u8, ((x + y) * 3) as u8])
    })
    .save(&wide)
    .unwrap();
    let script = dir.path().join("tv.py");
    std::fs::write(
        &script,
        "import json, sys\nfrom PIL import Image\nfrom torchvision import transforms as T\n\
         t = T.Compose([T.Resize(16), T.CenterCrop(16), T.PILToTensor()])\n\
         print(json.dumps([t(Image.open(p).convert('RGB')).flatten().tolist() for p in sys.argv[1:]]))\n",
    )
    .unwrap();
    let output = std::process::Command::new(crate::util::lightning_python())
        .arg(&script)
        .arg(&tall)
        .arg(&wide)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let theirs: Vec<Vec<u8>> = serde_json::from_slice(&output.stdout).unwrap();
    let ours = |path: &Path| {
        let mut out = vec![0u8; 3 * 16 * 16];
        vigil::data::image_folder::decode_file(path, 3, 16, &mut out).unwrap();
        out
    };
    assert_eq!(
        ours(&tall),
        theirs[0],
        "the crop differs from torchvision's"
    );
    let wide_ours = ours(&wide);
    let mean_gap = wide_ours
        .iter()
        .zip(&theirs[1])
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs())
        .sum::<f64>()
        / wide_ours.len() as f64;
    assert!(
        mean_gap < 6.0,
        "mean difference {mean_gap} from torchvision's resize"
    );
}

/// An image folder too large for `cache_mb` is decoded batch by batch from disk by the
/// prefetching thread, and the run computes exactly what the cached run computes.
#[test]
fn a_streamed_image_folder_trains_exactly_as_a_cached_one() {
    let dir = tempfile::tempdir().unwrap();
    write_image_folder(&dir.path().join("images"));
    let config = format!(
        "seed = 1\nepochs = 2\nbatch_size = 8\nthreads = 1\ndata = \"image-folder\"\ndata_dir = {:?}\n\
         augment = true\n[image_folder]\nimage_size = 12\nskip_bad_files = true\nval_fraction = 0.25\n\
         prefetch_batches = 2\n[model]\nkind = \"cnn\"\n",
        dir.path().join("images").display().to_string()
    );
    std::fs::remove_dir_all(dir.path().join("images/val")).unwrap();
    std::fs::write(dir.path().join("run.toml"), config).unwrap();
    let mut runs = Vec::new();
    for (name, cache) in [("cached", "4096"), ("streamed", "0")] {
        let output = vigil(
            dir.path(),
            &[
                "train",
                "run.toml",
                "--set",
                &format!("run_dir=\"{name}\""),
                "--set",
                &format!("image_folder.cache_mb={cache}"),
            ],
        );
        assert!(output.status.success(), "{}", stderr(&output));
        let summary = json(dir.path().join(name).join("run.json"));
        assert!(
            summary["dataset"]
                .as_str()
                .unwrap()
                .contains(if cache == "0" {
                    "streamed from disk"
                } else {
                    "decoded in memory"
                }),
            "{}",
            summary["dataset"]
        );
        runs.push(records(&dir.path().join(name)));
    }
    assert!(runs[0].len() > 10);
    assert_eq!(
        runs[0], runs[1],
        "the streamed run differs from the cached one"
    );
}

/// An image folder whose files come sorted by class (as every image folder's do): the sample
/// grid's first 16 images span the classes, not 16 images of the first class, and the host
/// offers the same images at every epoch.
#[test]
fn the_sample_grid_spans_the_classes_of_a_class_sorted_folder_and_keeps_its_samples() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    // 12 classes of 10 validation images each, each image different.
    let classes: Vec<String> = (0..12).map(|c| format!("class{c:02}")).collect();
    for (split, count) in [("train", 4u32), ("val", 10)] {
        for (class, name) in classes.iter().enumerate() {
            let folder = root.join(split).join(name);
            std::fs::create_dir_all(&folder).unwrap();
            for i in 0..count {
                // The first row says which image it is; the rest is a pattern.
                let image = image::GrayImage::from_fn(8, 8, |x, y| {
                    image::Luma([match (x, y) {
                        (0, 0) => class as u8 * 20,
                        (1, 0) => i as u8 * 20,
                        _ => ((x * 13 + y * 7 + i * 17) % 251) as u8,
                    }])
                });
                image.save(folder.join(format!("{i:02}.png"))).unwrap();
            }
        }
    }
    let config = format!(
        "seed = 3\nepochs = 3\nbatch_size = 16\ndata = \"image-folder\"\ndata_dir = {:?}\n\
         run_dir = \"run\"\n{}\n[image_folder]\nimage_size = 8\n[model]\nkind = \"mlp\"\nhidden = [16]\n\
         [[monitors]]\nname = \"sample-recorder\"\n[[monitors]]\nname = \"sample-visualization\"\n",
        root.display().to_string(),
        crate::util::plugin_dirs_toml()
    );
    std::fs::write(dir.path().join("run.toml"), config).unwrap();
    let output = crate::util::vigil(dir.path(), &["train", "run.toml"]);
    assert!(output.status.success(), "{}", crate::util::stderr(&output));
    let artifacts = dir.path().join("run/artifacts");
    let shown = |epoch: u32| -> Vec<(i64, String)> {
        crate::util::json(artifacts.join(format!("shown_{epoch:03}.json")))
            .as_array()
            .unwrap()
            .iter()
            .map(|image| {
                (
                    image["label"].as_i64().unwrap(),
                    image["pixels"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let first = shown(1);
    assert_eq!(first.len(), 64, "the host offers 64 of the 120");
    let mut grid_classes: Vec<i64> = first[..16].iter().map(|(label, _)| *label).collect();
    grid_classes.sort_unstable();
    grid_classes.dedup();
    // At least min(classes, 16) / 2; classes take turns, so here all twelve.
    assert!(grid_classes.len() >= 12 / 2, "{grid_classes:?}");
    assert_eq!(grid_classes.len(), 12, "{grid_classes:?}");
    let mut distinct: Vec<&String> = first.iter().map(|(_, pixels)| pixels).collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 64, "64 different images");
    for epoch in 2..=3 {
        assert_eq!(shown(epoch), first, "epoch {epoch} shows other images");
    }
    for epoch in 1..=3 {
        assert!(artifacts
            .join(format!("epoch_{epoch:03}/sample_predictions.png"))
            .is_file());
    }
}
