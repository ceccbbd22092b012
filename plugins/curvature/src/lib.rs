//! The `curvature` monitor: the Hessian's top eigenvalue (by magnitude) by Lanczos or power
//! iteration, and its trace by Hutchinson's estimator with Rademacher vectors, on a fixed
//! probe subsample of the training set, through the host's Hessian-vector product.
//!
//! ```toml
//! [[monitors]]
//! name = "curvature"
//! [monitors.settings]
//! compute_every_n_steps = 500
//! subsample = 32           # probe samples
//! max_batch_size = 32      # probe samples per forward pass
//! tol = 1e-3               # the eigensolver stops when λ changes by less than tol·|λ|
//! max_iter = 20            # products at most for λ
//! num_samples = 5          # Rademacher vectors for the trace (deflated by the top eigenpair)
//! seed = 0
//! method = "lanczos"       # or "power" (power iteration: less memory, more products)
//! deflate = true           # Hutchinson samples λ + zᵀPHPz, P = I − vvᵀ (top eigenpair)
//! ```
//!
//! Logs `curvature/lambda_max`, `curvature/lambda_max_iters`, `curvature/lambda_max_residual`
//! (‖Hv − λv‖ / |λ|), `curvature/hutch_trace`, `curvature/hutch_trace_stderr`,
//! `curvature/probe_loss` and `curvature/hvps`. Both eigensolvers start from the previous
//! estimate's eigenvector. Lanczos keeps up to 16 basis vectors (16 × 4 bytes per parameter)
//! and restarts from its Ritz vector beyond that. The host evaluates the model in eval mode
//! for these products and keeps no graph alive after the hook returns.

use serde::Deserialize;
use vigil_monitor_math::{dot, mean_and_stderr, norm, symmetric_eigen, Rng};
use vigil_plugin_api::{
    export_monitor, parse_settings, Context, Error, EventKind, EventSet, Monitor, MonitorInfo,
    ProbeSpec, SavedState, StateReader, StateWriter, Subscriptions,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    compute_every_n_steps: u64,
    subsample: u32,
    max_batch_size: u32,
    tol: f64,
    max_iter: u32,
    num_samples: u32,
    seed: u64,
    method: Method,
    /// Deflate Hutchinson's samples by the top eigenpair.
    deflate: bool,
}

/// How the top eigenvalue is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Method {
    /// Lanczos with full reorthogonalisation: far fewer products than power iteration for
    /// the same tolerance, for a basis of up to `LANCZOS_BASIS` vectors in memory.
    Lanczos,
    /// Power iteration: two vectors in memory.
    Power,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            compute_every_n_steps: 500,
            subsample: 32,
            max_batch_size: 32,
            tol: 1e-3,
            max_iter: 20,
            num_samples: 5,
            seed: 0,
            method: Method::Lanczos,
            deflate: true,
        }
    }
}

/// The outcome of power iteration.
#[derive(Debug, Clone, PartialEq)]
pub struct Eigen {
    pub value: f64,
    pub vector: Vec<f32>,
    pub iterations: u32,
    /// ‖Hv − λv‖ / |λ| for the final unit vector v.
    pub residual: f64,
}

/// Power iteration for the eigenvalue of largest magnitude of the symmetric operator `hvp`,
/// from `start` (normalised here). Stops when the Rayleigh quotient changes by less than
/// `tol · |λ|` or after `max_iter` products.
pub fn power_iteration<E>(
    mut hvp: impl FnMut(&[f32], &mut [f32]) -> Result<(), E>,
    start: Vec<f32>,
    tol: f64,
    max_iter: u32,
) -> Result<Eigen, E> {
    let mut vector = unit(start);
    let mut product = vec![0.0f32; vector.len()];
    let mut value = f64::NAN;
    let mut iterations = 0;
    let mut residual = f64::NAN;
    while iterations < max_iter.max(1) {
        hvp(&vector, &mut product)?;
        iterations += 1;
        let previous = value;
        value = dot(&vector, &product);
        residual = product
            .iter()
            .zip(&vector)
            .map(|(&p, &v)| (f64::from(p) - value * f64::from(v)).powi(2))
            .sum::<f64>()
            .sqrt()
            / value.abs().max(f64::MIN_POSITIVE);
        let length = norm(&product);
        if length == 0.0 || !length.is_finite() {
            break;
        }
        let converged = (value - previous).abs() <= tol * value.abs();
        // The next vector keeps the sign of λ so that negative eigenvalues converge too.
        let sign = if value < 0.0 { -1.0 } else { 1.0 };
        for (v, &p) in vector.iter_mut().zip(&product) {
            *v = (sign * f64::from(p) / length) as f32;
        }
        if converged {
            break;
        }
    }
    Ok(Eigen {
        value,
        vector,
        iterations,
        residual,
    })
}

/// Lanczos keeps at most this many basis vectors, then restarts from its Ritz vector.
pub const LANCZOS_BASIS: usize = 16;

/// The Lanczos method for the eigenvalue of largest magnitude of the symmetric operator
/// `hvp`, from `start`, with full reorthogonalisation. Stops when the Ritz value changes by
/// less than `tol · |λ|`, when the Krylov space is invariant, or after `max_iter` products;
/// restarts from the Ritz vector when the basis holds [`LANCZOS_BASIS`] vectors.
pub fn lanczos<E>(
    mut hvp: impl FnMut(&[f32], &mut [f32]) -> Result<(), E>,
    start: Vec<f32>,
    tol: f64,
    max_iter: u32,
) -> Result<Eigen, E> {
    let dimension = start.len();
    let max_iter = max_iter.max(1);
    let mut start = start;
    let mut iterations = 0u32;
    let mut previous = f64::NAN;
    loop {
        let limit = LANCZOS_BASIS
            .min(dimension)
            .min((max_iter - iterations) as usize)
            .max(1);
        let mut basis = vec![unit(start)];
        let (mut alphas, mut betas) = (Vec::new(), Vec::new());
        let mut w = vec![0.0f32; dimension];
        let (value, coefficients, residual, done) = loop {
            let q = basis.last().expect("the basis starts with one vector");
            hvp(q, &mut w)?;
            iterations += 1;
            alphas.push(dot(q, &w));
            // Classical Gram-Schmidt against the whole basis, twice ("twice is enough").
            for _ in 0..2 {
                for b in &basis {
                    let c = dot(b, &w);
                    w.iter_mut()
                        .zip(b)
                        .for_each(|(x, &y)| *x = (f64::from(*x) - c * f64::from(y)) as f32);
                }
            }
            let beta = norm(&w);
            let k = alphas.len();
            let mut tridiagonal = vec![0.0; k * k];
            for i in 0..k {
                tridiagonal[i * k + i] = alphas[i];
                if i + 1 < k {
                    tridiagonal[i * k + i + 1] = betas[i];
                    tridiagonal[(i + 1) * k + i] = betas[i];
                }
            }
            let (values, vectors) = symmetric_eigen(&tridiagonal, k);
            let index = (0..k)
                .max_by(|&a, &b| values[a].abs().total_cmp(&values[b].abs()))
                .unwrap_or(0);
            let value = values[index];
            let coefficients: Vec<f64> = (0..k).map(|i| vectors[i * k + index]).collect();
            let residual = (beta * coefficients[k - 1]).abs() / value.abs().max(f64::MIN_POSITIVE);
            let converged = (value - previous).abs() <= tol * value.abs();
            let invariant = beta <= 1e-12 * value.abs().max(f64::MIN_POSITIVE) || !beta.is_finite();
            previous = value;
            let done = converged || invariant || iterations >= max_iter;
            if done || k >= limit {
                break (value, coefficients, residual, done);
            }
            betas.push(beta);
            basis.push(w.iter().map(|&x| (f64::from(x) / beta) as f32).collect());
        };
        let mut ritz = vec![0.0f64; dimension];
        for (c, b) in coefficients.iter().zip(&basis) {
            ritz.iter_mut()
                .zip(b)
                .for_each(|(r, &x)| *r += c * f64::from(x));
        }
        let vector: Vec<f32> = ritz.iter().map(|&x| x as f32).collect();
        if done {
            return Ok(Eigen {
                value,
                vector: unit(vector),
                iterations,
                residual,
            });
        }
        start = vector;
    }
}

/// `v / ‖v‖` (`v` itself when it is zero).
fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let length = norm(&v);
    if length > 0.0 && length.is_finite() {
        v.iter_mut()
            .for_each(|x| *x = (f64::from(*x) / length) as f32);
    }
    v
}

/// Hutchinson's trace estimate `E[zᵀHz]` over `samples` Rademacher vectors: (mean, standard
/// error).
///
/// With `deflate = Some((λ, v))`, a unit vector `v` with `vᵀHv = λ` (the top eigenpair), each
/// sample is `λ + zᵀPHPz` with `P = I − vvᵀ`, computed from the same product `Hz`:
/// `zᵀHz − 2(vᵀz)(vᵀHz) + (vᵀz)²λ`. Still unbiased for the trace, it leaves out the top
/// eigenvalue's share of the variance, which dominates for Hessians with an outlier.
pub fn hutchinson<E>(
    mut hvp: impl FnMut(&[f32], &mut [f32]) -> Result<(), E>,
    dimension: usize,
    samples: u32,
    rng: &mut Rng,
    deflate: Option<(f64, &[f32])>,
) -> Result<(f64, f64), E> {
    let mut z = vec![0.0f32; dimension];
    let mut product = vec![0.0f32; dimension];
    let mut estimates = Vec::with_capacity(samples as usize);
    for _ in 0..samples {
        z.iter_mut().for_each(|v| *v = rng.rademacher());
        hvp(&z, &mut product)?;
        let plain = dot(&z, &product);
        estimates.push(match deflate {
            Some((lambda, v)) => {
                let (along, across) = (dot(v, &z), dot(v, &product));
                lambda + plain - 2.0 * along * across + along * along * lambda
            }
            None => plain,
        });
    }
    Ok(mean_and_stderr(&estimates))
}

pub struct CurvatureMonitor {
    settings: Settings,
    dimension: usize,
    rng: Rng,
    /// The last eigenvector, to warm-start the next power iteration.
    eigenvector: Option<Vec<f32>>,
}

impl Monitor for CurvatureMonitor {
    const INFO: MonitorInfo = MonitorInfo {
        name: "curvature",
        version: env!("CARGO_PKG_VERSION"),
        description: "top Hessian eigenvalue (Lanczos or power iteration) and trace (Hutchinson) on a probe subsample",
        events: EventSet::of(&[EventKind::TRAIN_BATCH_END]),
        subscriptions: Subscriptions::NONE,
    };

    fn new(settings: &str, ctx: &mut Context<'_>) -> Result<Self, Error> {
        let settings: Settings = parse_settings(settings)?;
        let positive = [
            ("compute_every_n_steps", settings.compute_every_n_steps),
            ("subsample", u64::from(settings.subsample)),
            ("max_batch_size", u64::from(settings.max_batch_size)),
            ("max_iter", u64::from(settings.max_iter)),
            ("num_samples", u64::from(settings.num_samples)),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(Error::Settings(format!("{key} must be at least 1")));
        }
        if !(settings.tol.is_finite() && settings.tol > 0.0) {
            return Err(Error::Settings(format!(
                "tol must be positive, got {}",
                settings.tol
            )));
        }
        Ok(CurvatureMonitor {
            rng: Rng::new(settings.seed),
            settings,
            dimension: ctx.parameters().iter().map(|p| p.numel as usize).sum(),
            eigenvector: None,
        })
    }

    /// The random generator (Hutchinson's probes and the first start vector) and the last
    /// eigenvector (the warm start of the next estimate): a resumed run's estimates are the
    /// uninterrupted run's.
    fn save_state(&mut self, _ctx: &mut Context<'_>) -> Result<Option<Vec<u8>>, Error> {
        let mut writer = StateWriter::new();
        writer
            .u64(self.rng.state())
            .option(self.eigenvector.as_deref(), |w, v| {
                w.f32s(v);
            });
        Ok(Some(writer.finish()))
    }

    fn restore_state(
        &mut self,
        saved: SavedState<'_>,
        _ctx: &mut Context<'_>,
    ) -> Result<(), Error> {
        let mut reader = StateReader::new(saved.bytes);
        let rng = Rng::from_state(reader.u64()?);
        let eigenvector = reader.option(|r| r.f32s())?;
        reader.finish()?;
        if eigenvector
            .as_ref()
            .is_some_and(|v| v.len() != self.dimension)
        {
            return Err(Error::Monitor(format!(
                "the saved eigenvector does not have the model's {} parameters",
                self.dimension
            )));
        }
        self.rng = rng;
        self.eigenvector = eigenvector;
        Ok(())
    }

    fn on_train_batch_end(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {
        if ctx.counters().global_step % self.settings.compute_every_n_steps != 0
            || self.dimension == 0
        {
            return Ok(());
        }
        let probe = ProbeSpec {
            samples: self.settings.subsample,
            max_batch_size: self.settings.max_batch_size,
            seed: self.settings.seed,
        };
        let mut hvps = 0u32;
        let mut probe_loss = f64::NAN;
        let start = match self.eigenvector.take() {
            Some(vector) => vector,
            None => (0..self.dimension)
                .map(|_| self.rng.normal() as f32)
                .collect(),
        };
        let mut hvp = |v: &[f32], out: &mut [f32]| -> Result<(), Error> {
            probe_loss = ctx.hessian_vector_product(probe, v, out)?;
            hvps += 1;
            Ok(())
        };
        let (tol, max_iter) = (self.settings.tol, self.settings.max_iter);
        let eigen = match self.settings.method {
            Method::Lanczos => lanczos(&mut hvp, start, tol, max_iter)?,
            Method::Power => power_iteration(&mut hvp, start, tol, max_iter)?,
        };
        let deflate =
            (self.settings.deflate && eigen.value.is_finite() && norm(&eigen.vector) > 0.0)
                .then_some((eigen.value, eigen.vector.as_slice()));
        let (trace, stderr) = hutchinson(
            &mut hvp,
            self.dimension,
            self.settings.num_samples,
            &mut self.rng,
            deflate,
        )?;
        ctx.log("curvature/lambda_max", eigen.value);
        ctx.log("curvature/lambda_max_iters", f64::from(eigen.iterations));
        ctx.log("curvature/lambda_max_residual", eigen.residual);
        ctx.log("curvature/hutch_trace", trace);
        ctx.log("curvature/hutch_trace_stderr", stderr);
        ctx.log("curvature/probe_loss", probe_loss);
        ctx.log("curvature/hvps", f64::from(hvps));
        self.eigenvector = Some(eigen.vector);
        Ok(())
    }
}

export_monitor!(CurvatureMonitor);

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix_hvp(
        matrix: &[f64],
        n: usize,
    ) -> impl FnMut(&[f32], &mut [f32]) -> Result<(), ()> + '_ {
        move |v, out| {
            for (i, o) in out.iter_mut().enumerate() {
                *o = (0..n)
                    .map(|j| matrix[i * n + j] * f64::from(v[j]))
                    .sum::<f64>() as f32;
            }
            Ok(())
        }
    }

    #[test]
    fn power_iteration_finds_the_largest_magnitude_eigenvalue() {
        // diag(1, -5, 2): the answer is -5 even though 2 is the largest value.
        let m = [1.0, 0.0, 0.0, 0.0, -5.0, 0.0, 0.0, 0.0, 2.0];
        let eigen = power_iteration(matrix_hvp(&m, 3), vec![1.0, 1.0, 1.0], 1e-10, 500).unwrap();
        assert!((eigen.value + 5.0).abs() < 1e-5, "{eigen:?}");
        assert!(eigen.residual < 1e-4);
        assert!(eigen.vector[1].abs() > 0.999);
    }

    #[test]
    fn a_warm_start_at_the_eigenvector_converges_at_once() {
        let m = [4.0, 1.0, 1.0, 3.0];
        let cold = power_iteration(matrix_hvp(&m, 2), vec![1.0, 0.0], 1e-9, 500).unwrap();
        let warm = power_iteration(matrix_hvp(&m, 2), cold.vector.clone(), 1e-9, 500).unwrap();
        assert!(warm.iterations <= 2, "{warm:?}");
        // Eigenvalues of [[4,1],[1,3]]: (7 ± √5)/2.
        assert!((warm.value - (7.0 + 5f64.sqrt()) / 2.0).abs() < 1e-5);
    }

    #[test]
    fn lanczos_finds_the_largest_magnitude_eigenvalue() {
        let m = [1.0, 0.0, 0.0, 0.0, -5.0, 0.0, 0.0, 0.0, 2.0];
        let eigen = lanczos(matrix_hvp(&m, 3), vec![1.0, 1.0, 1.0], 1e-10, 500).unwrap();
        assert!((eigen.value + 5.0).abs() < 1e-5, "{eigen:?}");
        assert!(
            eigen.iterations <= 3,
            "a 3-dimensional Krylov space is exact: {eigen:?}"
        );
        assert!(eigen.vector[1].abs() > 0.999);
    }

    #[test]
    fn lanczos_agrees_with_a_dense_eigensolver_in_fewer_products_than_power_iteration() {
        // A 60 × 60 symmetric matrix with a clear top eigenvalue: random plus a rank-one spike.
        let n = 60;
        let mut rng = Rng::new(7);
        let mut m = vec![0.0; n * n];
        let spike: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        for i in 0..n {
            for j in 0..=i {
                let x = rng.normal() * 0.1 + 0.05 * spike[i] * spike[j];
                m[i * n + j] = x;
                m[j * n + i] = x;
            }
        }
        let (values, _) = symmetric_eigen(&m, n);
        let exact = values
            .iter()
            .copied()
            .max_by(|a, b| a.abs().total_cmp(&b.abs()))
            .unwrap();
        let start: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        let fast = lanczos(matrix_hvp(&m, n), start.clone(), 1e-9, 500).unwrap();
        let slow = power_iteration(matrix_hvp(&m, n), start, 1e-9, 5000).unwrap();
        assert!(
            (fast.value - exact).abs() < 1e-4 * exact.abs(),
            "{} vs {exact}",
            fast.value
        );
        assert!(fast.residual < 1e-3, "{}", fast.residual);
        assert!(
            fast.iterations < slow.iterations,
            "Lanczos {} products, power iteration {}",
            fast.iterations,
            slow.iterations
        );
        // A budget smaller than the basis: it stops at max_iter with its best estimate.
        let capped = lanczos(matrix_hvp(&m, n), vec![1.0; n], 1e-15, 5).unwrap();
        assert_eq!(capped.iterations, 5);
        // More products than the basis holds: it restarts and still converges.
        let restarted = lanczos(matrix_hvp(&m, n), vec![1.0; n], 1e-12, 200).unwrap();
        assert!((restarted.value - exact).abs() < 1e-4 * exact.abs());
    }

    #[test]
    fn deflated_hutchinson_is_unbiased_and_tighter_with_an_outlier_eigenvalue() {
        // diag(100, 1, …, 1) in 20 dimensions, rotated so the diagonal carries no hint:
        // H = I + 99·uuᵀ with u = (1, …, 1)/√20; trace 119.
        let n = 20;
        let u = 1.0 / (n as f64).sqrt();
        let m: Vec<f64> = (0..n * n)
            .map(|k| f64::from(u8::from(k / n == k % n)) + 99.0 * u * u)
            .collect();
        let top: Vec<f32> = vec![u as f32; n];
        let (plain, plain_se) =
            hutchinson(matrix_hvp(&m, n), n, 400, &mut Rng::new(1), None).unwrap();
        let (deflated, deflated_se) = hutchinson(
            matrix_hvp(&m, n),
            n,
            400,
            &mut Rng::new(1),
            Some((100.0, &top)),
        )
        .unwrap();
        assert!(
            (plain - 119.0).abs() < 3.0 * plain_se,
            "{plain} ± {plain_se}"
        );
        assert!(
            (deflated - 119.0).abs() < 3.0 * deflated_se,
            "{deflated} ± {deflated_se}"
        );
        // zᵀHz = 20 + 99·(uᵀz)² but λ + zᵀPHPz = 120 − (uᵀz)²: 99 times less spread.
        assert!(deflated_se * 50.0 < plain_se, "{deflated_se} vs {plain_se}");
    }

    #[test]
    fn hutchinson_is_exact_for_a_diagonal_matrix() {
        // zᵀDz = Σ d_i z_i² = trace for every Rademacher z.
        let m = [2.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 7.0];
        let (trace, stderr) = hutchinson(matrix_hvp(&m, 3), 3, 5, &mut Rng::new(3), None).unwrap();
        assert!((trace - 8.0).abs() < 1e-9);
        assert!(stderr.abs() < 1e-9);
    }
}
