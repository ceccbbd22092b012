//! Every per-sample quantity against individual gradients computed by brute force: one
//! forward and backward pass per sample, in the test, summed up in f64.

use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};
use vigil_plugin_api::per_sample::HistogramSpec;

use super::PerSample;
use crate::config::Norm;
use crate::model::{self, taps, InputShape, Network, ResNet18};
use crate::train::loss::cross_entropy;

struct Case {
    vars: nn::VarStore,
    net: Network,
    images: Tensor,
    labels: Tensor,
}

fn case(
    build: impl FnOnce(&nn::Path) -> Box<dyn ModuleT + Send>,
    shape: [i64; 4],
    classes: i64,
    kind: Kind,
) -> Case {
    let mut vars = nn::VarStore::new(Device::Cpu);
    let net = Network::Native(build(&vars.root()));
    vars.set_kind(kind);
    let images = Tensor::randn(shape, (kind, Device::Cpu));
    let labels = Tensor::randint(classes, [shape[0]], (Kind::Int64, Device::Cpu));
    Case {
        vars,
        net,
        images,
        labels,
    }
}

fn f64s(tensor: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&tensor.to_kind(Kind::Double).contiguous().reshape([-1])).unwrap()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn assert_close(what: &str, got: f64, want: f64, scale: f64) {
    let error = (got - want).abs() / scale.abs().max(f64::MIN_POSITIVE);
    assert!(
        error <= 1e-5,
        "{what}: {got} vs {want} (relative error {error:.2e})"
    );
}

/// Histogram of `values` as the host bins them, with `f64` arithmetic.
fn bins(values: &[f64], bins: u64, low: f64, high: f64) -> Vec<usize> {
    values
        .iter()
        .map(|&v| {
            let index = ((v.clamp(low, high) - low) * bins as f64 / (high - low)).floor();
            (index as i64).clamp(0, bins as i64 - 1) as usize
        })
        .collect()
}

/// Compare in `kind`: in f64 every quantity agrees to 1e-5 (to about 1e-12 in fact); in
/// f32 the scalar statistics do, and single coordinates of `Σₙ gₙ²` that come out of
/// cancellation in the backward pass to 1e-4.
/// The host's way: one forward pass with the layers recorded and the backward pass of the
/// mean loss, captured at `step`; the logits.
fn recorded_step(
    net: &Network,
    parameters: &[Tensor],
    (images, labels): (&Tensor, &Tensor),
    per_sample: &mut PerSample,
    step: u64,
) -> Tensor {
    let names: Vec<String> = (0..parameters.len()).map(|i| format!("p{i}")).collect();
    let (logits, recorded) = taps::record(|| net.forward(images, true));
    let logits = logits.unwrap();
    cross_entropy(&logits, labels, tch::Reduction::Mean)
        .unwrap()
        .backward();
    per_sample
        .capture(
            step,
            recorded,
            net,
            parameters,
            &names,
            (&logits, images, labels),
        )
        .unwrap();
    logits
}

fn check(case: Case, kind: Kind) {
    let Case {
        vars,
        net,
        images,
        labels,
    } = case;
    let coordinate_tolerance = if kind == Kind::Double { 1e-5 } else { 1e-4 };
    let parameters = vars.trainable_variables();
    let batch = images.size()[0] as usize;

    // The host's way: one recorded forward and backward pass.
    let mut per_sample = PerSample::default();
    let logits = recorded_step(&net, &parameters, (&images, &labels), &mut per_sample, 0);
    let captured = per_sample.captured(0).unwrap();
    let stats = captured.stats(&parameters).unwrap();
    let second_moment = captured.second_moment(&parameters).unwrap();
    let direction: Vec<Tensor> = parameters.iter().map(|p| p.randn_like()).collect();
    let projected = captured.project(&direction).unwrap();
    let spec = HistogramSpec::one_d(40, -0.5, 0.5);
    let histograms = captured.histograms(&parameters, &spec).unwrap();
    let spec_2d = HistogramSpec {
        value_bins: 7,
        value_low: -0.3,
        value_high: 0.3,
        ..HistogramSpec::one_d(9, -0.2, 0.2)
    };
    let histograms_2d = captured.histograms(&parameters, &spec_2d).unwrap();

    // Brute force: sample by sample.
    let individual: Vec<Vec<Vec<f64>>> = (0..batch as i64)
        .map(|n| {
            let logits = net.forward(&images.narrow(0, n, 1), true).unwrap();
            let loss =
                cross_entropy(&logits, &labels.narrow(0, n, 1), tch::Reduction::Mean).unwrap();
            Tensor::run_backward(&[loss], &parameters, false, false)
                .iter()
                .map(f64s)
                .collect()
        })
        .collect();
    let mean: Vec<Vec<f64>> = (0..parameters.len())
        .map(|p| {
            let length = individual[0][p].len();
            (0..length)
                .map(|i| individual.iter().map(|g| g[p][i]).sum::<f64>() / batch as f64)
                .collect()
        })
        .collect();
    let losses = f64s(&cross_entropy(&logits, &labels, tch::Reduction::None).unwrap());
    let directions: Vec<Vec<f64>> = direction.iter().map(f64s).collect();
    let values: Vec<Vec<f64>> = parameters.iter().map(f64s).collect();

    assert_eq!(stats.batch_size(), batch);
    let mut offset = 0;
    for (p, parameter) in stats.parameters.iter().enumerate() {
        let sq: Vec<f64> = individual.iter().map(|g| dot(&g[p], &g[p])).collect();
        let projections: Vec<f64> = individual.iter().map(|g| dot(&g[p], &mean[p])).collect();
        let grad_sq = dot(&mean[p], &mean[p]);
        assert_close(
            &format!("‖ḡ‖² of p{p}"),
            parameter.grad_sq_norm,
            grad_sq,
            grad_sq,
        );
        let sum_sq: f64 = sq.iter().sum();
        assert_close(
            &format!("Σ‖gₙ‖² of p{p}"),
            parameter.sum_sq_norms,
            sum_sq,
            sum_sq,
        );
        let sum_projections: f64 = projections.iter().map(|x| x * x).sum();
        assert_close(
            &format!("Σ(gₙ·ḡ)² of p{p}"),
            parameter.sum_sq_projections,
            sum_projections,
            sum_sq * grad_sq,
        );
        for (i, want) in (0..mean[p].len())
            .map(|i| (i, individual.iter().map(|g| g[p][i] * g[p][i]).sum::<f64>()))
        {
            let got = f64::from(second_moment[offset + i]);
            let error = (got - want).abs() / want.max(f64::MIN_POSITIVE);
            assert!(
                error <= coordinate_tolerance || (got - want).abs() <= 1e-7 * sum_sq,
                "Σgₙ² of p{p}[{i}]: {got} vs {want} (relative error {error:.2e})"
            );
        }
        offset += mean[p].len();
        let mut counts = vec![0.0; 40];
        let mut counts_2d = vec![0.0; 63];
        for g in &individual {
            for b in bins(&g[p], 40, -0.5, 0.5) {
                counts[b] += 1.0;
            }
            let value_bins = bins(&values[p], 7, -0.3, 0.3);
            for (b, v) in bins(&g[p], 9, -0.2, 0.2).into_iter().zip(value_bins) {
                counts_2d[b * 7 + v] += 1.0;
            }
        }
        for (got, want, what) in [
            (&histograms.counts[p], &counts, "1-D"),
            (&histograms_2d.counts[p], &counts_2d, "2-D"),
        ] {
            let moved: f64 = got.iter().zip(want).map(|(a, b)| (a - b).abs()).sum();
            let total: f64 = want.iter().sum();
            // An element within rounding of a bin edge may land on either side.
            assert!(
                moved <= 2.0 + 1e-5 * total,
                "{what} histogram of p{p}: {got:?} vs {want:?}"
            );
            assert_eq!(got.iter().sum::<f64>(), total);
        }
    }
    assert_eq!(offset, second_moment.len());
    let whole = |g: &Vec<Vec<f64>>, h: &Vec<Vec<f64>>| -> f64 {
        g.iter().zip(h).map(|(a, b)| dot(a, b)).sum()
    };
    let grad_norm = whole(&mean, &mean).sqrt();
    let direction_norm = whole(&directions, &directions).sqrt();
    for (n, g) in individual.iter().enumerate() {
        let norm = whole(g, g);
        assert_close(&format!("‖g{n}‖²"), stats.sq_norms[n], norm, norm);
        let scale = norm.sqrt();
        assert_close(
            &format!("g{n}·ḡ"),
            stats.projections[n],
            whole(g, &mean),
            scale * grad_norm,
        );
        assert_close(
            &format!("g{n}·d"),
            projected[n],
            whole(g, &directions),
            scale * direction_norm,
        );
        assert_close(&format!("ℓ{n}"), stats.losses[n], losses[n], losses[n]);
    }
}

#[test]
fn the_mlp_matches_brute_force() {
    tch::manual_seed(11);
    let input = InputShape {
        channels: 1,
        height: 6,
        width: 6,
    };
    for kind in [Kind::Double, Kind::Float] {
        check(
            case(
                |root| Box::new(model::mlp(root, &[16, 12], input, 5)),
                [7, 1, 6, 6],
                5,
                kind,
            ),
            kind,
        );
    }
}

#[test]
fn the_cnn_matches_brute_force_in_both_layouts() {
    for (channels_last, kind) in [
        (false, Kind::Double),
        (true, Kind::Double),
        (true, Kind::Float),
    ] {
        tch::manual_seed(12);
        let input = InputShape {
            channels: 2,
            height: 12,
            width: 12,
        };
        let case = case(
            |root| Box::new(model::small_cnn(root, input, 4)),
            [5, 2, 12, 12],
            4,
            kind,
        );
        if channels_last {
            model::use_channels_last(&case.vars).unwrap();
            assert!(case
                .vars
                .trainable_variables()
                .iter()
                .any(|p| !p.is_contiguous()));
        }
        check(case, kind);
    }
}

#[test]
fn the_resnet_without_normalisation_matches_brute_force() {
    tch::manual_seed(13);
    check(
        case(
            |root| Box::new(ResNet18::new(root, 3, 10, 0.125, Norm::None)),
            [4, 3, 16, 16],
            10,
            Kind::Double,
        ),
        Kind::Double,
    );
}

#[test]
fn a_resnet_with_batch_norm_says_individual_gradients_are_not_defined() {
    tch::manual_seed(14);
    let case = case(
        |root| Box::new(ResNet18::new(root, 3, 10, 0.125, Norm::Batch)),
        [4, 3, 16, 16],
        10,
        Kind::Float,
    );
    let parameters = case.vars.trainable_variables();
    let mut per_sample = PerSample::default();
    let _logits = recorded_step(
        &case.net,
        &parameters,
        (&case.images, &case.labels),
        &mut per_sample,
        3,
    );
    let err = per_sample.captured(3).err().expect("an error").to_string();
    assert!(
        err.contains("not defined") && err.contains("batch norm") && err.contains("model.norm"),
        "{err}"
    );
}

/// Where an instrument step's time goes on W1's shapes (batch 128, the small CNN on 28×28):
/// `cargo test --release -p vigil --lib per_sample::tests::timing -- --ignored --nocapture`.
#[test]
#[ignore = "a timing report, not a test"]
fn timing() {
    tch::set_num_threads(2);
    tch::manual_seed(1);
    let input = InputShape {
        channels: 1,
        height: 28,
        width: 28,
    };
    let case = case(
        |root| Box::new(model::small_cnn(root, input, 10)),
        [128, 1, 28, 28],
        10,
        Kind::Float,
    );
    model::use_channels_last(&case.vars).unwrap();
    let parameters = case.vars.trainable_variables();
    let mut per_sample = PerSample::default();
    let mut plain = 0.0;
    let mut recorded = 0.0;
    for _ in 0..6 {
        let started = std::time::Instant::now();
        let logits = case.net.forward(&case.images, true).unwrap();
        cross_entropy(&logits, &case.labels, tch::Reduction::Mean)
            .unwrap()
            .backward();
        plain += started.elapsed().as_secs_f64();
        let started = std::time::Instant::now();
        let _logits = recorded_step(
            &case.net,
            &parameters,
            (&case.images, &case.labels),
            &mut per_sample,
            0,
        );
        recorded += started.elapsed().as_secs_f64();
    }
    println!(
        "forward+backward: {:.2} ms plain, {:.2} ms recorded and captured",
        plain * 1e3 / 6.0,
        recorded * 1e3 / 6.0
    );
    let direction: Vec<Tensor> = parameters.iter().map(|p| p.randn_like()).collect();
    let spec = HistogramSpec::one_d(100, -0.05, 0.05);
    let spec_2d = HistogramSpec {
        value_bins: 50,
        value_low: -0.3,
        value_high: 0.3,
        ..HistogramSpec::one_d(40, -0.05, 0.05)
    };
    let only = std::env::var("TIMING_ONLY").ok();
    for what in [
        "projection",
        "stats",
        "second moment",
        "histogram 1-D",
        "histogram 2-D",
    ] {
        if only.as_deref().is_some_and(|o| o != what) {
            continue;
        }
        let (mut first, mut alone) = (0.0, 0.0);
        for _ in 0..5 {
            let _logits = recorded_step(
                &case.net,
                &parameters,
                (&case.images, &case.labels),
                &mut per_sample,
                0,
            );
            let captured = per_sample.captured(0).unwrap();
            let started = std::time::Instant::now();
            captured.project(&direction).unwrap();
            first += started.elapsed().as_secs_f64();
            let started = std::time::Instant::now();
            match what {
                "projection" => drop(captured.project(&direction).unwrap()),
                "stats" => drop(captured.stats(&parameters).unwrap()),
                "second moment" => drop(captured.second_moment(&parameters).unwrap()),
                "histogram 1-D" => drop(captured.histograms(&parameters, &spec).unwrap()),
                _ => drop(captured.histograms(&parameters, &spec_2d).unwrap()),
            }
            alone += started.elapsed().as_secs_f64();
        }
        println!("{what:>16}: {:8.2} ms (the first projection, forming the convolutions' gradients: {:.2} ms)", alone * 1e3 / 5.0, first * 1e3 / 5.0);
    }
}
