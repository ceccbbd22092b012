//! TorchScript models from PyTorch: curvature through a scripted module against the built-in
//! path, and (with image folders) a whole run of a scripted CNN with batch norm.

use tch::nn::{self, ModuleT as _};
use tch::{Device, Kind, Tensor};
use vigil::model::{small_cnn, InputShape, ScriptedModel};
use vigil_monitor_math::krylov::power_iteration;
use vigil_monitor_math::Rng;

/// The variables of a store by name, sorted: the order both models' parameters are taken in.
fn by_name(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

fn lambda_max(
    model: &dyn tch::nn::ModuleT,
    parameters: &[Tensor],
    images: &Tensor,
    labels: &Tensor,
) -> (f64, u32) {
    let dimension: usize = parameters.iter().map(Tensor::numel).sum();
    let mut rng = Rng::new(11);
    let start: Vec<f32> = (0..dimension).map(|_| rng.normal() as f32).collect();
    let hvp = |v: &[f32], out: &mut [f32]| -> Result<(), vigil::Error> {
        let mut at = 0;
        let directions: Vec<Tensor> = parameters
            .iter()
            .map(|p| {
                let piece = Tensor::from_slice(&v[at..at + p.numel()]).reshape(p.size());
                at += p.numel();
                piece
            })
            .collect();
        let (_, products) = vigil::train::batch_hessian_vector_product(
            model,
            parameters,
            images,
            labels,
            &directions,
        )?;
        let flat = Tensor::cat(
            &products
                .iter()
                .map(|t| t.flatten(0, -1))
                .collect::<Vec<_>>(),
            0,
        );
        out.copy_from_slice(&Vec::<f32>::try_from(flat).unwrap());
        Ok(())
    };
    let eigen = power_iteration(hvp, start, 0.0, 40).unwrap();
    (eigen.value, eigen.iterations)
}

/// The same network, weights and probe batch: once as vigil's built-in CNN, once as a module
/// scripted in PyTorch after a few training steps through TorchScript's profiling executor
/// (the runs after which it optimises the graph). Power iteration from the same start gives
/// the same largest eigenvalue.
#[test]
fn curvature_through_a_scripted_module_equals_the_built_in_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cnn.pt");
    crate::util::pytorch_fixture(
        "scripted_cnn.py",
        &[file.as_os_str(), "1".as_ref(), "12".as_ref(), "4".as_ref()],
    );
    let scripted_vs = nn::VarStore::new(Device::Cpu);
    let scripted = ScriptedModel::load(&scripted_vs.root(), &file).unwrap();
    let mut rng = Rng::new(3);
    let images: Vec<f32> = (0..16 * 144).map(|_| rng.normal() as f32).collect();
    let images = Tensor::from_slice(&images).reshape([16, 1, 12, 12]);
    let labels = Tensor::from_slice(&(0..16).map(|i| i % 4).collect::<Vec<i64>>());

    // Train the scripted module a little, so that its graph executor has profiled and
    // optimised the forward pass before the Hessian-vector products run.
    let parameters: Vec<Tensor> = by_name(&scripted_vs).into_iter().map(|(_, t)| t).collect();
    for _ in 0..4 {
        let loss = scripted
            .forward_t(&images, true)
            .cross_entropy_for_logits(&labels);
        let grads = Tensor::run_backward(&[&loss], &parameters, false, false);
        tch::no_grad(|| {
            for (p, g) in parameters.iter().zip(&grads) {
                let _ = p.shallow_clone().f_sub_(&(g * 0.05)).unwrap();
            }
        });
    }

    let builtin_vs = nn::VarStore::new(Device::Cpu);
    let input = InputShape {
        channels: 1,
        height: 12,
        width: 12,
    };
    let builtin = small_cnn(&builtin_vs.root(), input, 4);
    let mut builtin_vs = builtin_vs;
    builtin_vs.copy(&scripted_vs).unwrap();
    let names: Vec<String> = by_name(&builtin_vs).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        by_name(&scripted_vs)
            .into_iter()
            .map(|(n, _)| n)
            .collect::<Vec<_>>(),
        "the scripted module's parameters carry PyTorch's names"
    );
    let builtin_parameters: Vec<Tensor> =
        by_name(&builtin_vs).into_iter().map(|(_, t)| t).collect();
    for (a, b) in parameters.iter().zip(&builtin_parameters) {
        assert!(a.equal(b));
    }
    let logits_gap = f64::try_from(
        (scripted.forward_t(&images, false) - builtin.forward_t(&images, false))
            .abs()
            .max(),
    )
    .unwrap();
    assert!(logits_gap < 1e-5, "logits differ by {logits_gap}");

    let (scripted_lambda, iterations) = lambda_max(&scripted, &parameters, &images, &labels);
    let (builtin_lambda, _) = lambda_max(&builtin, &builtin_parameters, &images, &labels);
    assert_eq!(iterations, 40);
    assert!(scripted_lambda.abs() > 1e-3, "{scripted_lambda}");
    let relative = (scripted_lambda - builtin_lambda).abs() / builtin_lambda.abs();
    assert!(
        relative <= 1e-6,
        "lambda_max {scripted_lambda} (scripted) vs {builtin_lambda} (built-in): relative {relative:e}"
    );
    let _ = Kind::Float;
}
