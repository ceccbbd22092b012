//! The curvature monitor's estimators against an exact Hessian: an MLP 784 → 16 → 10
//! (12,730 parameters) on 64 Fashion-MNIST images (synthetic 28 × 28 images where the
//! dataset is not installed). The products come from libtorch's double backward in float32,
//! as the host's do; the exact answers are computed another way, in float64
//! (`tests/fixtures/exact_hessian.py`): the trace from the Hessian's diagonal in closed form,
//! the extreme eigenvalues by a fully reorthogonalised Lanczos on forward-over-reverse
//! products.

use std::path::Path;

use serde_json::Value;
use tch::nn::{self, ModuleT as _, OptimizerConfig as _};
use tch::{Device, Kind, Tensor};
use vigil::config::Settings;
use vigil::model::InputShape;
use vigil_monitor_math::krylov::{self, extend_basis, hutchinson, lanczos};
use vigil_monitor_math::Rng;

const BATCH: usize = 64;
const SEEDS: u64 = 20;
const TRAIN_STEPS: i64 = 300;

struct Problem {
    parameters: Vec<Tensor>,
    model: nn::SequentialT,
    inputs: Tensor,
    labels: Tensor,
    dimension: usize,
    exact: Value,
    _vs: nn::VarStore,
}

fn problem() -> Problem {
    let settings = Settings::from_toml(
        "data = \"fashion-mnist\"\nsynthetic_fallback = true\n[synthetic]\ntrain_size = 64\ntest_size = 16\nimage_size = 28\n",
        Path::new("hessian.toml"),
    )
    .unwrap();
    let dataset = vigil::data::load(&settings.data.source).unwrap();
    let pixels = 28 * 28;
    let images: Vec<f32> = dataset.train.images[..BATCH * pixels]
        .iter()
        .map(|&b| (f32::from(b) / 255.0 - 0.2860) / 0.3530)
        .collect();
    let inputs = Tensor::from_slice(&images).reshape([BATCH as i64, 1, 28, 28]);
    let labels = Tensor::from_slice(&dataset.train.labels[..BATCH]);

    let vs = nn::VarStore::new(Device::Cpu);
    let input = InputShape {
        channels: 1,
        height: 28,
        width: 28,
    };
    let model = vigil::model::mlp(&vs.root(), &[16], input, 10);
    // PyTorch's initialisation from a generator of our own: libtorch's is shared with the
    // tests running beside this one.
    let mut rng = Rng::new(42);
    tch::no_grad(|| {
        let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut tensor) in variables {
            let fan_in = if name.starts_with("fc1") {
                784.0
            } else {
                16.0f64
            };
            let bound = 1.0 / fan_in.sqrt();
            let values: Vec<f32> = (0..tensor.numel())
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                .collect();
            tensor.copy_(&Tensor::from_slice(&values).reshape(tensor.size()));
        }
    });
    // Train it a little first: the estimates run during training, where the Hessian has the
    // outliers (about one per class) that training grows.
    let train_count = dataset.train.len().min(2048);
    let train_images: Vec<f32> = dataset.train.images[..train_count * pixels]
        .iter()
        .map(|&b| (f32::from(b) / 255.0 - 0.2860) / 0.3530)
        .collect();
    let train_inputs = Tensor::from_slice(&train_images).reshape([train_count as i64, 1, 28, 28]);
    let train_labels = Tensor::from_slice(&dataset.train.labels[..train_count]);
    let mut sgd = nn::Sgd::default().build(&vs, 0.05).unwrap();
    for step in 0..TRAIN_STEPS {
        let at = (step * 64) % (train_count as i64 - 64);
        let loss = model
            .forward_t(&train_inputs.narrow(0, at, 64), true)
            .cross_entropy_for_logits(&train_labels.narrow(0, at, 64));
        sgd.backward_step(&loss);
    }
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let dimension = named.iter().map(|(_, t)| t.numel()).sum();

    // The same problem, for PyTorch.
    let dir = tempfile::tempdir().unwrap();
    let raw_f32 = |tensor: &Tensor| -> Vec<u8> {
        Vec::<f32>::try_from(tensor.flatten(0, -1))
            .unwrap()
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect()
    };
    let params: Vec<u8> = named.iter().flat_map(|(_, t)| raw_f32(t)).collect();
    std::fs::write(dir.path().join("params.f32"), params).unwrap();
    std::fs::write(dir.path().join("inputs.f32"), raw_f32(&inputs)).unwrap();
    let label_bytes: Vec<u8> = dataset.train.labels[..BATCH]
        .iter()
        .flat_map(|l| l.to_le_bytes())
        .collect();
    std::fs::write(dir.path().join("labels.i64"), label_bytes).unwrap();
    let spec = serde_json::json!({
        "batch": BATCH,
        "names": named.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        "shapes": named.iter().map(|(_, t)| t.size()).collect::<Vec<_>>(),
    });
    std::fs::write(dir.path().join("problem.json"), spec.to_string()).unwrap();
    let exact = crate::util::pytorch_fixture("exact_hessian.py", &[dir.path().as_os_str()]);
    assert_eq!(exact["dimension"], dimension as u64);
    Problem {
        parameters: named.into_iter().map(|(_, t)| t).collect(),
        model,
        inputs,
        labels,
        dimension,
        exact,
        _vs: vs,
    }
}

impl Problem {
    /// `out = H·v` by double backward, in float32, as the host computes it.
    fn hvp(&self, v: &[f32], out: &mut [f32]) -> Result<(), ()> {
        let loss = self
            .model
            .forward_t(&self.inputs, false)
            .cross_entropy_for_logits(&self.labels);
        let grads = Tensor::run_backward(&[&loss], &self.parameters, true, true);
        let mut at = 0;
        let mut dot = Tensor::zeros([], (Kind::Float, Device::Cpu));
        for (g, p) in grads.iter().zip(&self.parameters) {
            let n = p.numel();
            let piece = Tensor::from_slice(&v[at..at + n]).reshape(p.size());
            dot += (g * piece).sum(Kind::Float);
            at += n;
        }
        let products = Tensor::run_backward(&[&dot], &self.parameters, false, false);
        let flat = Tensor::cat(
            &products
                .iter()
                .map(|t| t.flatten(0, -1))
                .collect::<Vec<_>>(),
            0,
        );
        out.copy_from_slice(&Vec::<f32>::try_from(flat).unwrap());
        Ok(())
    }

    fn lambda_max(&self) -> f64 {
        let [low, high] = ["lowest", "highest"].map(|end| {
            let pair: Vec<f64> = crate::util::f64s(&self.exact[end]);
            assert!(
                (pair[0] - pair[1]).abs() <= 1e-9 * pair[0].abs().max(1e-12),
                "the reference's two Lanczos runs disagree: {pair:?}"
            );
            pair[0]
        });
        if high.abs() >= low.abs() {
            high
        } else {
            low
        }
    }
}

fn start(seed: u64, dimension: usize) -> Vec<f32> {
    let mut rng = Rng::new(1000 + seed);
    (0..dimension).map(|_| rng.normal() as f32).collect()
}

#[test]
fn lambda_max_and_the_trace_match_the_exact_hessian() {
    let problem = problem();
    let exact_lambda = problem.lambda_max();
    let exact_trace = problem.exact["trace"].as_f64().unwrap();
    let mut lambda_ok = 0;
    let mut within_two_se = 0;
    let mut trace_errors = Vec::new();
    for seed in 0..SEEDS {
        let mut products = 0u32;
        let mut hvp = |v: &[f32], out: &mut [f32]| {
            products += 1;
            problem.hvp(v, out)
        };
        let mut eigen = lanczos(
            &mut hvp,
            start(seed, problem.dimension),
            krylov::DEFAULT_TOL,
            krylov::DEFAULT_MAX_ITER,
        )
        .unwrap();
        let lambda_error = (eigen.value / exact_lambda - 1.0).abs();
        extend_basis(&mut hvp, &mut eigen, krylov::DEFAULT_DEFLATION_VECTORS).unwrap();
        let estimate = hutchinson(
            &mut hvp,
            problem.dimension,
            krylov::DEFAULT_TRACE_SAMPLES,
            &mut Rng::new(seed),
            &eigen.basis,
            eigen.basis_trace,
        )
        .unwrap();
        let trace_error = (estimate.trace / exact_trace - 1.0).abs();
        println!(
            "seed {seed}: λ {:.6} ({:.1e} relative, {} products, residual {:.1e}); trace {:.3} ± {:.3} ({:.2} % off, {:.1} SE); {products} products in all",
            eigen.value,
            lambda_error,
            eigen.iterations,
            eigen.residual,
            estimate.trace,
            estimate.stderr,
            100.0 * trace_error,
            (estimate.trace - exact_trace).abs() / estimate.stderr
        );
        if lambda_error <= 1e-4 && eigen.iterations <= 12 {
            lambda_ok += 1;
        }
        if (estimate.trace - exact_trace).abs() <= 2.0 * estimate.stderr {
            within_two_se += 1;
        }
        assert!(products <= 40, "seed {seed}: {products} products");
        trace_errors.push(trace_error);
    }
    let mean_trace_error = trace_errors.iter().sum::<f64>() / trace_errors.len() as f64;
    println!(
        "exact λ {exact_lambda:.6}, trace {exact_trace:.4}; λ within 1e-4 in ≤ 12 products: {lambda_ok}/{SEEDS}; \
         trace mean error {:.2} %, within 2 SE: {within_two_se}/{SEEDS}",
        100.0 * mean_trace_error
    );
    assert!(lambda_ok >= 19, "{lambda_ok} of {SEEDS}");
    assert!(mean_trace_error <= 0.03, "{mean_trace_error}");
    // A user looks at a handful of runs, not twenty: every five seeds in a row also hold the
    // target (with 16 basis vectors and 24 samples, seeds 14–18 averaged 3.5 %).
    for window in trace_errors.windows(5) {
        let mean = window.iter().sum::<f64>() / 5.0;
        assert!(
            mean <= 0.03,
            "five seeds in a row average {:.2} %: {window:?}",
            100.0 * mean
        );
    }
    assert!(within_two_se >= 18, "{within_two_se} of {SEEDS}");
}
