//! `vigil export-model`: the exported file, run by ONNX Runtime or by PyTorch's
//! `torch.jit.load` (not by vigil), gives the logits vigil's own model gives.

use std::path::Path;

use tch::nn::{self, ModuleT as _};
use tch::{Device, Kind, Tensor};
use vigil::config::Settings;
use vigil::model::InputShape;
use vigil::train::{checkpoint, InputSpec};

use crate::util::{plugin_dirs_toml, pytorch_fixture, stderr, stdout, vigil};

/// The first `count` validation inputs of a run's data, normalised as the run normalised them.
pub fn validation_inputs(run_dir: &Path, count: usize) -> (Tensor, InputSpec) {
    let spec: InputSpec =
        serde_json::from_slice(&std::fs::read(run_dir.join("inputs.json")).unwrap()).unwrap();
    let settings = Settings::load(&run_dir.join("config.toml"), &[]).unwrap();
    let dataset = vigil::data::load(&settings.data.source).unwrap();
    let pixels = spec.channels * spec.height * spec.width;
    let mut images = vec![0u8; count * pixels];
    match &dataset.test.files {
        Some(files) => files
            .decode_batch(&(0..count as i64).collect::<Vec<_>>(), &mut images)
            .unwrap(),
        None => images.copy_from_slice(&dataset.test.images[..count * pixels]),
    }
    let shape = [1, spec.channels as i64, 1, 1];
    let x = Tensor::from_slice(&images)
        .view([
            count as i64,
            spec.channels as i64,
            spec.height as i64,
            spec.width as i64,
        ])
        .to_kind(Kind::Float)
        / 255.0;
    let x = (x - Tensor::from_slice(&spec.mean).view(shape))
        / Tensor::from_slice(&spec.std).view(shape);
    (x, spec)
}

/// vigil's logits for `x` from the run's checkpoint `dir`, with its model built and loaded the
/// way a resumed run builds and loads it.
pub fn vigil_logits(run_dir: &Path, dir: &Path, spec: &InputSpec, x: &Tensor) -> Tensor {
    let settings = Settings::load(&run_dir.join("config.toml"), &[]).unwrap();
    let mut vars = nn::VarStore::new(Device::Cpu);
    let input = InputShape {
        channels: spec.channels,
        height: spec.height,
        width: spec.width,
    };
    let module = dir.join(checkpoint::MODULE);
    let network = vigil::model::build(
        &vars.root(),
        &settings.model,
        input,
        spec.class_names.len(),
        module.is_file().then_some(module.as_path()),
    )
    .unwrap();
    checkpoint::load_model(dir, &mut vars).unwrap();
    tch::no_grad(|| network.forward_t(x, false))
}

/// The logits the exported file gives for `x` in another runtime.
pub fn exported_logits(model: &Path, x: &Tensor) -> (Tensor, String) {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("inputs.f32");
    let values = Vec::<f32>::try_from(x.flatten(0, -1)).unwrap();
    std::fs::write(
        &raw,
        values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let size: Vec<String> = x.size().iter().map(|d| d.to_string()).collect();
    let mut args: Vec<&std::ffi::OsStr> = vec![model.as_os_str(), raw.as_os_str()];
    args.extend(size.iter().map(|s| std::ffi::OsStr::new(s.as_str())));
    let answer = pytorch_fixture("run_exported.py", &args);
    let rows: Vec<Vec<f32>> = serde_json::from_value(answer["logits"].clone()).unwrap();
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    (
        Tensor::from_slice(&flat).view([rows.len() as i64, -1]),
        answer["runtime"].as_str().unwrap().to_string(),
    )
}

pub fn max_gap(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    f64::try_from((a - b).abs().max()).unwrap()
}

/// The CNN and the ResNet-18 at width 0.25 (batch norm), trained briefly so that the running
/// statistics are the data's, exported to ONNX and run in ONNX Runtime on 8 validation images.
#[test]
fn onnx_exports_of_the_cnn_and_the_resnet_give_vigils_logits() {
    let dir = tempfile::tempdir().unwrap();
    for (name, model) in [
        ("cnn", "kind = \"cnn\""),
        ("resnet", "kind = \"resnet18\"\nwidth_mult = 0.25"),
    ] {
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "name = \"{name}\"\nrun_dir = \"{name}-run\"\nepochs = 1\nbatch_size = 16\ndata = \"synthetic\"\n\
                 {}\n[synthetic]\ntrain_size = 64\ntest_size = 16\nchannels = 3\nimage_size = 16\n\
                 classes = 4\n[model]\n{model}\n",
                plugin_dirs_toml()
            ),
        )
        .unwrap();
        let output = vigil(dir.path(), &["train", config.to_str().unwrap()]);
        assert!(output.status.success(), "{}", stderr(&output));
        let run_dir = dir.path().join(format!("{name}-run"));
        let out = dir.path().join(format!("{name}.onnx"));
        let output = crate::util::export_model(dir.path(), &run_dir, "last", &out);
        assert!(output.status.success(), "{}", stderr(&output));
        assert!(
            stdout(&output).contains("ONNX model"),
            "{}",
            stdout(&output)
        );
        let sidecar: InputSpec = serde_json::from_slice(
            &std::fs::read(dir.path().join(format!("{name}.onnx.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(sidecar.class_names.len(), 4);

        let (x, spec) = validation_inputs(&run_dir, 8);
        let (last, _) = checkpoint::latest(&run_dir).unwrap();
        let ours = vigil_logits(&run_dir, &last, &spec, &x);
        let (theirs, runtime) = exported_logits(&out, &x);
        assert!(runtime.starts_with("onnxruntime"), "{runtime}");
        let gap = max_gap(&ours, &theirs);
        assert!(
            gap <= 1e-4,
            "{name}: ONNX Runtime's logits differ from vigil's by {gap}"
        );
        assert!(
            f64::try_from(ours.abs().max()).unwrap() > 1e-3,
            "{name}: logits are not all zero"
        );
    }
}

#[test]
fn a_missing_checkpoint_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("run/checkpoints")).unwrap();
    let output = vigil(
        dir.path(),
        &[
            "export-model",
            "run",
            "--checkpoint",
            "step_7",
            "--out",
            "m.onnx",
        ],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("has no complete checkpoint at step 7"),
        "{}",
        stderr(&output)
    );
    let output = vigil(
        dir.path(),
        &[
            "export-model",
            "run",
            "--checkpoint",
            "first",
            "--out",
            "m.onnx",
        ],
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("is not best, last or step_N"),
        "{}",
        stderr(&output)
    );
}
