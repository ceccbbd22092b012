//! The monitors in plugins/, through their real `.so` files: curvature against an exact
//! Hessian, and all of them in one real training run.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};

use abi_stable::std_types::{RString, RVec};
use serde_json::Value;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};
use vigil::config::{MonitorSettings, OnError};
use vigil::plugin::{EventData, HostServices, PluginHost, RunFacts};
use vigil::train::batch_hessian_vector_product;
use vigil_plugin_api::GradientEma;
use vigil_plugin_api::{EventKind, ParameterInfo, ProbeSpec, StepCounters};

use crate::util::{stderr, vigil};

/// Monitors here are loaded by `path`; no directory is searched.
const NO_SEARCH: vigil::plugin::PluginSearch<'static> = vigil::plugin::PluginSearch {
    dirs: &[],
    allow_insecure: false,
    report_dir: None,
};

fn built_plugin(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_vigil"))
        .with_file_name(format!("lib{}.so", name.replace('-', "_")));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// A model with 31 parameters: 3 inputs → 4 tanh units → 3 classes.
struct Tiny {
    vars: nn::VarStore,
    net: nn::Sequential,
    images: Tensor,
    labels: Tensor,
}

impl Tiny {
    fn new() -> Self {
        tch::manual_seed(7);
        let vars = nn::VarStore::new(Device::Cpu);
        let root = vars.root();
        let net = nn::seq()
            .add(nn::linear(&root / "hidden", 3, 4, Default::default()))
            .add_fn(|x| x.tanh())
            .add(nn::linear(&root / "out", 4, 3, Default::default()));
        let images = Tensor::randn([12, 3], (Kind::Float, Device::Cpu));
        let labels = Tensor::from_slice(&[0i64, 1, 2, 0, 1, 2, 2, 1, 0, 0, 2, 1]);
        Tiny {
            vars,
            net,
            images,
            labels,
        }
    }

    fn parameters(&self) -> Vec<Tensor> {
        self.vars.trainable_variables()
    }
}

impl std::fmt::Debug for Tiny {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tiny")
    }
}

impl nn::ModuleT for Tiny {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
        self.net.forward(xs)
    }
}

/// The Hessian by autograd: differentiate each component of the gradient again.
fn autograd_hessian(tiny: &Tiny) -> (usize, Vec<f64>) {
    let parameters = tiny.parameters();
    let logits = tiny.net.forward(&tiny.images);
    let loss = logits.cross_entropy_for_logits(&tiny.labels);
    let grads = Tensor::run_backward(&[&loss], &parameters, true, true);
    let flat = Tensor::cat(
        &grads.iter().map(|g| g.reshape([-1])).collect::<Vec<_>>(),
        0,
    );
    let n = flat.size()[0] as usize;
    let mut hessian = vec![0.0; n * n];
    for row in 0..n {
        let second = Tensor::run_backward(&[flat.get(row as i64)], &parameters, true, false);
        let values = Vec::<f32>::try_from(&Tensor::cat(
            &second.iter().map(|g| g.reshape([-1])).collect::<Vec<_>>(),
            0,
        ))
        .unwrap();
        for (column, value) in values.iter().enumerate() {
            hessian[row * n + column] = f64::from(*value);
        }
    }
    (n, hessian)
}

/// The Hessian from Hessian-vector products with the unit vectors, as the host computes them.
fn hvp_hessian(tiny: &Tiny, n: usize) -> Vec<f64> {
    let parameters = tiny.parameters();
    let sizes: Vec<i64> = parameters.iter().map(|p| p.numel() as i64).collect();
    let mut hessian = vec![0.0; n * n];
    for column in 0..n {
        let mut unit = vec![0.0f32; n];
        unit[column] = 1.0;
        let pieces = Tensor::from_slice(&unit).split_with_sizes(&sizes, 0);
        let directions: Vec<Tensor> = pieces
            .iter()
            .zip(&parameters)
            .map(|(d, p)| d.view(p.size().as_slice()))
            .collect();
        let (_, product) = batch_hessian_vector_product(
            tiny,
            &parameters,
            &tiny.images,
            &tiny.labels,
            &directions,
        )
        .unwrap();
        let values = Vec::<f32>::try_from(&Tensor::cat(
            &product.iter().map(|g| g.reshape([-1])).collect::<Vec<_>>(),
            0,
        ))
        .unwrap();
        for (row, value) in values.iter().enumerate() {
            hessian[row * n + column] = f64::from(*value);
        }
    }
    hessian
}

/// Host services whose Hessian-vector product is multiplication by a known matrix.
struct KnownHessian {
    matrix: Vec<f64>,
    n: usize,
}

impl HostServices for KnownHessian {
    fn grad_norms(&self) -> vigil::Result<Vec<f64>> {
        Ok(Vec::new())
    }
    fn weight_norms(&self) -> vigil::Result<Vec<f64>> {
        Ok(Vec::new())
    }
    fn gradient_into(&self, out: &mut Vec<f32>) -> vigil::Result<()> {
        out.clear();
        Ok(())
    }
    fn hessian_vector_product(
        &self,
        _: &ProbeSpec,
        vector: &[f32],
        out: &mut [f32],
    ) -> vigil::Result<f64> {
        for (row, value) in out.iter_mut().enumerate() {
            *value = (0..self.n)
                .map(|c| self.matrix[row * self.n + c] * f64::from(vector[c]))
                .sum::<f64>() as f32;
        }
        Ok(0.5)
    }
    fn probe_loss(&self, _: &ProbeSpec) -> vigil::Result<f64> {
        Ok(0.5)
    }
}

#[test]
fn curvature_matches_the_exact_hessian_of_a_tiny_model() {
    let tiny = Tiny::new();
    let (n, by_autograd) = autograd_hessian(&tiny);
    assert_eq!(n, 31);
    let by_columns = hvp_hessian(&tiny, n);
    let scale = by_autograd.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (a, b) in by_autograd.iter().zip(&by_columns) {
        assert!(
            (a - b).abs() <= 1e-5 * scale.max(1.0),
            "HVP columns {b} vs autograd {a}"
        );
    }
    // Symmetrise away float noise before the eigen-decomposition.
    let exact: Vec<f64> = (0..n * n)
        .map(|k| 0.5 * (by_autograd[k] + by_autograd[(k % n) * n + k / n]))
        .collect();
    let (eigenvalues, _) = vigil_monitor_math::symmetric_eigen(&exact, n);
    let top = eigenvalues
        .iter()
        .copied()
        .fold(0.0f64, |m, v| if v.abs() > m.abs() { v } else { m });
    let trace: f64 = (0..n).map(|i| exact[i * n + i]).sum();

    let services = KnownHessian { matrix: exact, n };
    let spec = MonitorSettings {
        name: "curvature".into(),
        enabled: true,
        on_error: OnError::Abort,
        path: Some(built_plugin("curvature")),
        sha256: None,
        hook_budget: None,
        hook_budget_strikes: 3,
        settings_toml:
            "compute_every_n_steps = 1\ntol = 1e-12\nmax_iter = 20000\nnum_samples = 4000\n".into(),
    };
    let facts = RunFacts {
        parameters: RVec::from(vec![ParameterInfo {
            name: RString::from("theta"),
            shape: RVec::from(vec![n as u64]),
            numel: n as u64,
        }]),
        class_names: RVec::new(),
        monitor_names: Vec::new(),
        train_labels: Vec::new(),
        val_labels: Vec::new(),
        total_parameters: n as u64,
    };
    let counters = StepCounters::default();
    let mut host = PluginHost::load(&[spec], &NO_SEARCH, facts, &services, counters).unwrap();
    let mut scalars = Vec::new();
    host.dispatch(
        &EventData::new(EventKind::FIT_START, counters, &[]),
        &services,
        &mut scalars,
    )
    .unwrap();
    host.dispatch(
        &EventData::new(EventKind::TRAIN_BATCH_END, counters, &[]),
        &services,
        &mut scalars,
    )
    .unwrap();
    let scalars = host.named(&scalars);
    let metric = |name: &str| {
        scalars
            .iter()
            .find(|(_, m, _)| m == name)
            .map(|&(_, _, v)| v)
            .unwrap_or_else(|| panic!("no {name} in {scalars:?}"))
    };

    let lambda = metric("curvature/lambda_max");
    assert!(
        (lambda - top).abs() <= 1e-3 * top.abs(),
        "lambda_max {lambda} vs exact {top} (eigenvalues {eigenvalues:?})"
    );
    let (estimate, stderr) = (
        metric("curvature/hutch_trace"),
        metric("curvature/hutch_trace_stderr"),
    );
    assert!(stderr > 0.0);
    assert!(
        (estimate - trace).abs() <= 3.0 * stderr,
        "hutch_trace {estimate} ± {stderr} vs exact {trace}"
    );
    assert!(metric("curvature/lambda_max_residual") < 1e-2);
    assert!(metric("curvature/hvps") >= 4001.0);
}

/// Every metric issue 5 names, with a short run's cadences.
const METRICS: [&str; 14] = [
    "grad_norm/total",
    "grad_norm/conv1.weight",
    "weight_norm",
    "curvature/lambda_max",
    "curvature/hutch_trace",
    "curvature/lambda_max_iters",
    "curvature/lambda_max_residual",
    "curvature/hutch_trace_stderr",
    "noise/psd_tail",
    "noise/resid_power",
    "noise/power_law_slope",
    "noise/power_law_r2",
    "noise/grad_var",
    "loss_slope_5_15",
];

#[test]
fn all_four_monitors_log_every_metric_in_a_real_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "plugin_dirs = [{:?}]\nrun_dir = \"o\"\nseed = 2\nepochs = 6\nbatch_size = 32\ndata = \"synthetic\"\n\
         [synthetic]\ntrain_size = 256\ntest_size = 64\nclasses = 4\nimage_size = 12\n[model]\nkind = \"cnn\"\n[optim]\nlr = 0.02\n\
         [[monitors]]\nname = \"gradient\"\nsettings = {{ log_every_n_steps = 4 }}\n\
         [[monitors]]\nname = \"curvature\"\nsettings = {{ compute_every_n_steps = 16, subsample = 32, max_batch_size = 16, num_samples = 3, max_iter = 5 }}\n\
         [[monitors]]\nname = \"noise\"\nsettings = {{ min_points = 16, log_every_n_steps = 4 }}\n\
         [[monitors]]\nname = \"loss-slope\"\nsettings = {{ burn_in_loss = 10.0 }}\n",
        built_plugin("gradient").parent().unwrap().display().to_string()
    );
    std::fs::write(dir.path().join("run.toml"), config).unwrap();
    let output = vigil(dir.path(), &["train", "run.toml"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let records: Vec<Value> = std::fs::read_to_string(dir.path().join("o/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    for metric in METRICS.iter().chain(&["loss_slope_full"]) {
        let values: Vec<&Value> = records.iter().filter_map(|r| r.get(*metric)).collect();
        assert!(!values.is_empty(), "{metric} never logged");
        assert!(
            values
                .iter()
                .all(|v| v.as_f64().is_some_and(f64::is_finite)),
            "{metric} has a non-finite value: {values:?}"
        );
    }
    // loss_slope_5_15 needs two epochs in the window: epochs 5 and 6.
    let slopes = records
        .iter()
        .filter(|r| r.get("loss_slope_5_15").is_some())
        .count();
    assert_eq!(slopes, 1);
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("o/run.json")).unwrap())
            .unwrap();
    for monitor in summary["monitors"].as_array().unwrap() {
        assert_eq!(monitor["status"], "ok", "{monitor}");
    }
    assert_eq!(
        summary["warnings"].as_array().unwrap().len(),
        0,
        "{}",
        summary["warnings"]
    );
}

#[test]
fn curvature_at_every_step_leaves_training_untouched() {
    // A batch-norm ResNet: the probe's forward passes must not update running statistics,
    // its products must not add to the gradients, and nothing may draw from training's RNGs.
    let run = |monitors: &str, run_dir: &str| -> Vec<Value> {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "plugin_dirs = [{:?}]\nrun_dir = {run_dir:?}\nseed = 5\nepochs = 1\nbatch_size = 16\ndata = \"synthetic\"\naugment = true\n\
             [synthetic]\ntrain_size = 64\ntest_size = 16\nclasses = 3\nchannels = 3\nimage_size = 12\n\
             [model]\nkind = \"resnet18\"\nwidth_mult = 0.125\n{monitors}",
            built_plugin("curvature").parent().unwrap().display().to_string()
        );
        std::fs::write(dir.path().join("run.toml"), config).unwrap();
        let output = vigil(dir.path(), &["train", "run.toml"]);
        assert!(output.status.success(), "{}", stderr(&output));
        std::fs::read_to_string(dir.path().join(run_dir).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap())
            .filter(|r| r["kind"] == "train" || r["kind"] == "validation")
            .map(|mut r| {
                r.as_object_mut().unwrap().remove("wall_time");
                r
            })
            .collect()
    };
    let plain = run("", "plain");
    let probed = run(
        "[[monitors]]\nname = \"curvature\"\nsettings = { compute_every_n_steps = 1, subsample = 8, max_batch_size = 8, max_iter = 2, num_samples = 1 }\n",
        "probed",
    );
    assert_eq!(plain.len(), 4 + 4);
    assert_eq!(plain, probed);
}

fn decode_png(path: &Path) -> (u32, u32) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap();
    let info = reader.info();
    (info.width, info.height)
}

#[test]
fn the_artifact_monitors_write_every_file_they_promise() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "plugin_dirs = [{:?}]\nrun_dir = \"o\"\nseed = 4\nepochs = 2\nbatch_size = 32\ndata = \"synthetic\"\nsampler = \"weighted\"\n\
         [synthetic]\ntrain_size = 256\ntest_size = 64\nclasses = 4\nimage_size = 12\n[model]\nkind = \"cnn\"\n[optim]\nlr = 0.02\n\
         [[monitors]]\nname = \"confusion-matrix\"\nsettings = {{ normalize = \"true\" }}\n\
         [[monitors]]\nname = \"sampler-distribution\"\n\
         [[monitors]]\nname = \"sample-visualization\"\nsettings = {{ num_samples = 9 }}\n\
         [[monitors]]\nname = \"training-history\"\n\
         [[monitors]]\nname = \"model-info\"\n\
         [[monitors]]\nname = \"dataset-statistics\"\n",
        built_plugin("confusion-matrix").parent().unwrap().display().to_string()
    );
    std::fs::write(dir.path().join("run.toml"), config).unwrap();
    let output = vigil(dir.path(), &["train", "run.toml"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let artifacts = dir.path().join("o/artifacts");
    for epoch in ["epoch_001", "epoch_002"] {
        let (w, h) = decode_png(&artifacts.join(epoch).join("confusion_matrix.png"));
        assert!(w > 300 && h > 300, "{w}×{h}");
        let csv =
            std::fs::read_to_string(artifacts.join(epoch).join("confusion_matrix.csv")).unwrap();
        assert_eq!(csv.lines().count(), 5, "header + 4 classes: {csv}");
        // 9 tiles in a 3×3 grid of 210 × (24 + 112 + 2·4 + 10) = 210 × 154 tiles.
        assert_eq!(
            decode_png(&artifacts.join(epoch).join("sample_predictions.png")),
            (630, 462)
        );
    }
    assert_eq!(
        decode_png(&artifacts.join("training_history/loss.png")),
        (800, 500)
    );
    assert_eq!(
        decode_png(&artifacts.join("training_history/accuracy.png")),
        (800, 500)
    );

    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(artifacts.join("model_info.json")).unwrap())
            .unwrap();
    assert_eq!(
        info["trainable_parameters"],
        320 + 18_496 + 64 * 9 * 128 + 128 + 128 * 4 + 4
    );
    let labels: Value = serde_json::from_str(
        &std::fs::read_to_string(artifacts.join("labels_mapping.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(labels["3"], "class 3");

    let stats = std::fs::read_to_string(artifacts.join("dataset_statistics.csv")).unwrap();
    let rows: Vec<&str> = stats.lines().collect();
    assert_eq!(rows[0], "split,index,class,count,percent");
    assert_eq!(rows.len(), 1 + 4 + 4);
    let count = |split: &str| -> u64 {
        rows.iter()
            .filter(|r| r.starts_with(split))
            .map(|r| r.split(',').nth(3).unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!((count("train,"), count("val,")), (256, 64));

    let sampler = std::fs::read_to_string(artifacts.join("sampler_distribution.csv")).unwrap();
    let rows: Vec<&str> = sampler.lines().skip(1).collect();
    assert_eq!(rows.len(), 2 * 4, "one row per class per epoch: {sampler}");
    for epoch in ["1,", "2,"] {
        let drawn: u64 = rows
            .iter()
            .filter(|r| r.starts_with(epoch))
            .map(|r| r.split(',').nth(3).unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(
            drawn, 256,
            "an epoch draws as many samples as the split holds"
        );
    }
    let records = std::fs::read_to_string(dir.path().join("o/metrics.jsonl")).unwrap();
    assert!(
        records.contains("\"sampler/ratio/class 0\""),
        "sampler metrics are logged"
    );

    // The PNGs also reach TensorBoard as images.
    let events_dir = dir.path().join("o/tensorboard");
    let file = std::fs::read_dir(&events_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let events = vigil::sink::tensorboard::read_events(&file).unwrap();
    let images: Vec<String> = events
        .iter()
        .filter_map(|e| e.summary.as_ref())
        .flat_map(|s| {
            s.value
                .iter()
                .filter(|v| v.image.is_some())
                .map(|v| v.tag.clone())
        })
        .collect();
    for tag in [
        "confusion-matrix/confusion_matrix.png",
        "sample-visualization/sample_predictions.png",
        "training-history/loss.png",
    ] {
        assert!(
            images.iter().any(|t| t == tag),
            "{tag} not among {images:?}"
        );
    }
}

type Averages = (f64, Vec<f64>, f64, u64);

/// The real noise plugin in a host of `dim` parameters.
fn noise_host(services: &dyn HostServices, dim: usize) -> PluginHost {
    let spec = MonitorSettings {
        name: "noise".into(),
        enabled: true,
        on_error: OnError::Abort,
        path: Some(built_plugin("noise")),
        sha256: None,
        hook_budget: None,
        hook_budget_strikes: 3,
        settings_toml: "grad_ema_beta = 0.9\nlog_every_n_steps = 5\n".into(),
    };
    let facts = RunFacts {
        parameters: RVec::from(vec![ParameterInfo {
            name: RString::from("theta"),
            shape: RVec::from(vec![dim as u64]),
            numel: dim as u64,
        }]),
        total_parameters: dim as u64,
        ..RunFacts::default()
    };
    PluginHost::load(
        &[spec],
        &NO_SEARCH,
        facts,
        services,
        StepCounters::default(),
    )
    .unwrap()
}

/// Host services that hand out a fixed gradient per step and, when `keep` is set, keep the
/// gradient averages that `vigil.gradient_ema.update` asks for (in `f64`).
struct GradientSequence {
    gradient: RefCell<Vec<f32>>,
    keep: bool,
    /// (β, average of g, average of mean g², updates)
    averages: RefCell<Option<Averages>>,
    copies: Cell<usize>,
}

impl GradientSequence {
    fn new(dim: usize, keep: bool) -> Self {
        GradientSequence {
            gradient: RefCell::new(vec![0.0; dim]),
            keep,
            averages: RefCell::new(None),
            copies: Cell::new(0),
        }
    }
}

impl HostServices for GradientSequence {
    fn grad_norms(&self) -> vigil::Result<Vec<f64>> {
        Ok(Vec::new())
    }
    fn weight_norms(&self) -> vigil::Result<Vec<f64>> {
        Ok(Vec::new())
    }
    fn gradient_into(&self, out: &mut Vec<f32>) -> vigil::Result<()> {
        self.copies.set(self.copies.get() + 1);
        out.clone_from(&self.gradient.borrow());
        Ok(())
    }
    fn hessian_vector_product(
        &self,
        _: &ProbeSpec,
        _: &[f32],
        _: &mut [f32],
    ) -> vigil::Result<f64> {
        Err(vigil::Error::Capability("no model".into()))
    }
    fn probe_loss(&self, _: &ProbeSpec) -> vigil::Result<f64> {
        Err(vigil::Error::Capability("no model".into()))
    }
    fn update_gradient_ema(&self, owner: usize, beta: f64, _step: u64) -> vigil::Result<()> {
        assert_eq!(owner, 0);
        if !self.keep {
            return Err(vigil::Error::Capability("an older host".into()));
        }
        let gradient = self.gradient.borrow();
        let mut averages = self.averages.borrow_mut();
        let (_, mean, square, updates) =
            averages.get_or_insert_with(|| (beta, vec![0.0; gradient.len()], 0.0, 0));
        for (m, &g) in mean.iter_mut().zip(gradient.iter()) {
            *m = beta * *m + (1.0 - beta) * f64::from(g);
        }
        let mean_square =
            gradient.iter().map(|&g| f64::from(g).powi(2)).sum::<f64>() / gradient.len() as f64;
        *square = beta * *square + (1.0 - beta) * mean_square;
        *updates += 1;
        Ok(())
    }
    fn gradient_ema(&self, _owner: usize) -> vigil::Result<Option<GradientEma>> {
        Ok(self
            .averages
            .borrow()
            .as_ref()
            .map(|(beta, mean, square, updates)| GradientEma {
                updates: *updates,
                numel: mean.len() as u64,
                beta: *beta,
                mean_square: *square,
                squared_mean: mean.iter().map(|m| m * m).sum::<f64>() / mean.len() as f64,
            }))
    }
}

/// The next gradient of the test sequence: coordinate i is a drift of i/50 plus uniform noise
/// of variance (1 + i/25)²/3.
fn next_gradient(gradient: &mut [f32], seed: &mut u64) {
    for (i, g) in gradient.iter_mut().enumerate() {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let uniform = (*seed >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
        *g = (i as f64 / 50.0 + uniform * (1.0 + i as f64 / 25.0)) as f32;
    }
}

/// `noise/grad_var` of the real noise plugin over 40 steps of a fixed gradient sequence, from
/// the host's averages (`keep`) or from its own; and how often it copied the gradient.
fn noise_gradient_variance(keep: bool) -> (Vec<(u64, f64)>, usize) {
    const DIM: usize = 50;
    let services = GradientSequence::new(DIM, keep);
    let mut host = noise_host(&services, DIM);
    let mut seed = 11u64;
    let mut logged = Vec::new();
    for step in 0..40u64 {
        logged.extend(
            noise_step(&mut host, &services, step, 1.0, &mut seed)
                .into_iter()
                .filter(|(_, metric, _)| metric == "noise/grad_var")
                .map(|(_, _, value)| (step, value)),
        );
    }
    (logged, services.copies.get())
}

/// One `train_batch_end` of the noise host: the next gradient of the sequence, then the
/// event with `train_loss` = `loss`; returns what the monitor logged.
fn noise_step(
    host: &mut PluginHost,
    services: &GradientSequence,
    step: u64,
    loss: f64,
    seed: &mut u64,
) -> Vec<(String, String, f64)> {
    next_gradient(&mut services.gradient.borrow_mut(), seed);
    let counters = StepCounters {
        global_step: step,
        epoch: 1,
        ..StepCounters::default()
    };
    let mut scalars = Vec::new();
    host.dispatch(
        &EventData::new(
            EventKind::TRAIN_BATCH_END,
            counters,
            &[("train_loss", loss)],
        ),
        services,
        &mut scalars,
    )
    .unwrap();
    host.named(&scalars)
}

#[test]
fn noise_uses_the_hosts_gradient_averages_and_falls_back_to_its_own() {
    let (on_host, host_copies) = noise_gradient_variance(true);
    let (own, own_copies) = noise_gradient_variance(false);
    assert_eq!(host_copies, 0, "the gradient left the host");
    assert_eq!(own_copies, 40, "the fallback reads every step's gradient");
    // Logged every 5 steps once there are two updates: steps 5, 10, …, 35.
    let steps: Vec<u64> = on_host.iter().map(|&(step, _)| step).collect();
    assert_eq!(steps, (1..8).map(|k| 5 * k).collect::<Vec<_>>());
    assert_eq!(on_host.len(), own.len());
    for (&(step, a), &(_, b)) in on_host.iter().zip(&own) {
        assert!(
            a > 0.0 && (a - b).abs() <= 1e-5 * a,
            "step {step}: host {a} vs own {b}"
        );
    }
    // Unbiased for the per-coordinate variance: mean_i (1 + i/25)²/3 ≈ 1.42; after 35 steps at
    // β = 0.9 the estimate rests on about 19 effective samples.
    let truth = (0..50)
        .map(|i| (1.0 + i as f64 / 25.0).powi(2) / 3.0)
        .sum::<f64>()
        / 50.0;
    let last = on_host.last().unwrap().1;
    assert!(
        (last - truth).abs() < 0.35 * truth,
        "grad_var {last} vs {truth}"
    );
}

/// State saved by one host and restored into another (as on resume), here with the
/// monitor's own gradient averages: the values logged after the restore are those of the
/// uninterrupted sequence. A state saved by another plugin version is handed over all the
/// same, and `run.json` says which version saved it.
#[test]
fn noise_state_restored_into_a_new_host_continues_the_same_values() {
    const DIM: usize = 50;
    let fresh = || GradientSequence::new(DIM, false);
    let step = |host: &mut PluginHost, services: &GradientSequence, step: u64, seed: &mut u64| {
        noise_step(host, services, step, 1.0 + step as f64, seed)
            .into_iter()
            .map(|(_, metric, value)| (step, metric, value))
            .collect::<Vec<_>>()
    };

    let (services, mut seed) = (fresh(), 11u64);
    let mut alone = noise_host(&services, DIM);
    let expected: Vec<_> = (0..40)
        .flat_map(|s| step(&mut alone, &services, s, &mut seed))
        .collect();

    let (services, mut seed) = (fresh(), 11u64);
    let mut first = noise_host(&services, DIM);
    let mut logged: Vec<_> = (0..20)
        .flat_map(|s| step(&mut first, &services, s, &mut seed))
        .collect();
    let counters = StepCounters {
        global_step: 20,
        ..StepCounters::default()
    };
    let saved: Vec<_> = first
        .save_states(counters, &services)
        .unwrap()
        .into_iter()
        .map(|mut snapshot| {
            assert!(
                snapshot.saves_state && snapshot.state.is_some(),
                "{snapshot:?}"
            );
            snapshot.plugin_version = "0.9.0".into();
            let bytes = snapshot.state.take();
            (snapshot, bytes)
        })
        .collect();
    let mut second = noise_host(&services, DIM);
    second
        .resume(&saved, counters, None, &services, &mut Vec::new())
        .unwrap();
    logged.extend((20..40).flat_map(|s| step(&mut second, &services, s, &mut seed)));
    assert!(logged
        .iter()
        .any(|(s, m, _)| *s > 20 && m == "noise/grad_var"));
    assert_eq!(logged, expected);
    let report = serde_json::to_value(second.report(1.0)).unwrap();
    let note = report[0]["resumed"].as_str().unwrap();
    assert_eq!(
        note,
        format!(
            "restored from state saved by version 0.9.0 (this is {})",
            report[0]["version"].as_str().unwrap()
        )
    );
}
