//! Krylov methods for a symmetric operator known only through its products `v ↦ Hv` (the
//! host's Hessian-vector product): the eigenvalue of largest magnitude by power iteration or
//! Lanczos, and the trace by Hutchinson's estimator deflated by the subspace the eigensolver
//! explored.
//!
//! One convergence rule for both eigensolvers: stop when the relative residual of the
//! returned eigenpair, `‖Hv − λv‖ / |λ|`, is at most `tol`. For a symmetric operator some
//! eigenvalue lies within `‖Hv − λv‖` of `λ`, and within `‖Hv − λv‖² / gap` once the pair
//! has separated from the rest, so the residual is an honest bound on the error, reported
//! with the estimate.

use crate::{dot, norm, symmetric_eigen, Rng};

/// The curvature monitor's defaults, which `host/tests/curvature.rs` holds to their targets
/// against an exact Hessian: the relative residual at which an eigensolver stops, ...
pub const DEFAULT_TOL: f64 = 1e-3;
/// ... the products it may take for λ, ...
pub const DEFAULT_MAX_ITER: u32 = 12;
/// ... the Krylov basis the trace is deflated by, filled up to this many vectors after λ ...
pub const DEFAULT_DEFLATION_VECTORS: usize = 24;
/// ... and Hutchinson's samples for the rest of the trace: at most 40 products in all.
pub const DEFAULT_TRACE_SAMPLES: u32 = 16;

/// An eigenpair estimate and how it was reached. `value` is the Rayleigh quotient of
/// `vector`, and `residual` is `‖H·vector − value·vector‖ / |value|`: all three describe the
/// same vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Eigen {
    pub value: f64,
    pub vector: Vec<f32>,
    /// Products taken.
    pub iterations: u32,
    pub residual: f64,
    /// An orthonormal basis of the subspace the solver explored last (Lanczos: its Krylov
    /// basis; power iteration: `vector`), for deflating a trace estimate.
    pub basis: Vec<Vec<f32>>,
    /// `trace(Bᵀ H B)` for that basis `B`, from the products already taken.
    pub basis_trace: f64,
    /// The direction that would extend the basis next (the last product, orthogonalised
    /// against the basis): see [`extend_basis`].
    pub next: Vec<f32>,
}

/// Power iteration for the eigenvalue of largest magnitude of the symmetric operator `hvp`,
/// from `start` (normalised here). Each product `Hv` gives the Rayleigh quotient and the
/// residual of `v` itself; the iteration stops when that residual is at most `tol`, or after
/// `max_iter` products, and returns that `v`.
pub fn power_iteration<E>(
    mut hvp: impl FnMut(&[f32], &mut [f32]) -> Result<(), E>,
    start: Vec<f32>,
    tol: f64,
    max_iter: u32,
) -> Result<Eigen, E> {
    let mut vector = unit(start);
    let mut product = vec![0.0f32; vector.len()];
    let mut iterations = 0;
    loop {
        hvp(&vector, &mut product)?;
        iterations += 1;
        let value = dot(&vector, &product);
        let residual = residual_of(&vector, &product, value);
        let length = norm(&product);
        let stuck = length == 0.0 || !length.is_finite();
        if residual <= tol || iterations >= max_iter.max(1) || stuck {
            let next: Vec<f32> = product
                .iter()
                .zip(&vector)
                .map(|(&p, &v)| (f64::from(p) - value * f64::from(v)) as f32)
                .collect();
            return Ok(Eigen {
                value,
                basis: vec![vector.clone()],
                basis_trace: value,
                vector,
                iterations,
                residual,
                next,
            });
        }
        // The next vector keeps the sign of λ so that negative eigenvalues converge too.
        let sign = if value < 0.0 { -1.0 } else { 1.0 };
        for (v, &p) in vector.iter_mut().zip(&product) {
            *v = (sign * f64::from(p) / length) as f32;
        }
    }
}

/// `‖p − λv‖ / |λ|` for `p = Hv`.
fn residual_of(vector: &[f32], product: &[f32], value: f64) -> f64 {
    product
        .iter()
        .zip(vector)
        .map(|(&p, &v)| (f64::from(p) - value * f64::from(v)).powi(2))
        .sum::<f64>()
        .sqrt()
        / value.abs().max(f64::MIN_POSITIVE)
}

/// Lanczos keeps at most this many basis vectors, then restarts from its Ritz vector.
pub const LANCZOS_BASIS: usize = 16;

/// The Lanczos method, with full reorthogonalisation, for the eigenvalue of largest
/// magnitude of the symmetric operator `hvp`, from `start`. After each product the Ritz pair
/// of largest magnitude has the residual `β·|c_k|` (the last coefficient of its Ritz vector
/// times the next off-diagonal); the method stops when that is at most `tol · |θ|`, when the
/// Krylov space is invariant, or after `max_iter` products. A full basis of
/// [`LANCZOS_BASIS`] vectors restarts it from the Ritz vector.
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
    loop {
        let limit = LANCZOS_BASIS
            .min(dimension)
            .min((max_iter - iterations) as usize)
            .max(1);
        let mut basis = vec![unit(start)];
        let (mut alphas, mut betas) = (Vec::new(), Vec::new());
        let mut w = vec![0.0f32; dimension];
        let (value, coefficients, residual, done, next) = loop {
            let q = basis.last().expect("the basis starts with one vector");
            hvp(q, &mut w)?;
            iterations += 1;
            alphas.push(dot(q, &w));
            // Classical Gram-Schmidt against the whole basis, twice ("twice is enough").
            orthogonalise(&mut w, &basis);
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
            let invariant = beta <= 1e-12 * value.abs().max(f64::MIN_POSITIVE) || !beta.is_finite();
            let done = residual <= tol || invariant || iterations >= max_iter;
            if done || k >= limit {
                break (value, coefficients, residual, done, w.clone());
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
        let vector = unit(ritz.iter().map(|&x| x as f32).collect());
        if done {
            return Ok(Eigen {
                value,
                vector,
                iterations,
                residual,
                basis_trace: alphas.iter().take(basis.len()).sum(),
                basis,
                next,
            });
        }
        start = vector;
    }
}

/// Extend `eigen`'s orthonormal basis to `size` vectors by continuing its Krylov sequence
/// from `eigen.next` (one product per vector, full reorthogonalisation), adding each new
/// vector's `qᵀHq` to `basis_trace`. Stops early if the space becomes invariant. Returns the
/// products taken.
pub fn extend_basis<E>(
    mut hvp: impl FnMut(&[f32], &mut [f32]) -> Result<(), E>,
    eigen: &mut Eigen,
    size: usize,
) -> Result<u32, E> {
    let dimension = eigen.vector.len();
    let mut products = 0;
    let mut next = std::mem::take(&mut eigen.next);
    let mut w = vec![0.0f32; dimension];
    while eigen.basis.len() < size.min(dimension) {
        orthogonalise(&mut next, &eigen.basis);
        let length = norm(&next);
        if length <= 1e-12 || !length.is_finite() {
            break;
        }
        let q: Vec<f32> = next
            .iter()
            .map(|&x| (f64::from(x) / length) as f32)
            .collect();
        hvp(&q, &mut w)?;
        products += 1;
        eigen.basis_trace += dot(&q, &w);
        eigen.basis.push(q);
        std::mem::swap(&mut next, &mut w);
    }
    orthogonalise(&mut next, &eigen.basis);
    eigen.next = next;
    Ok(products)
}

/// Remove from `w` its components along the orthonormal `basis`, twice ("twice is enough").
fn orthogonalise(w: &mut [f32], basis: &[Vec<f32>]) {
    for _ in 0..2 {
        project_out(&mut [w], basis);
    }
}

/// Rows per block of [`project_out`]: a block of every target and of one basis vector (8 KiB
/// each) stays in the core's caches while it is used.
const BLOCK_ROWS: usize = 2048;

/// Below this many rows [`project_out`] stays on the calling thread.
const SPLIT_ROWS: usize = 1 << 16;

/// Subtract from each of `targets` its components along the orthonormal `basis` (classical
/// Gram-Schmidt), a block of rows at a time: each basis vector is read from memory twice in
/// all (once for the coefficients, once to subtract), for all targets together, where one
/// target and one basis vector at a time would read the whole basis twice per target.
///
/// The arithmetic is single precision inside a block (sixteen running sums of at most 128
/// products each, so rounding stays near `f32`'s own 6e-8) and double precision across
/// blocks: double precision throughout converts every element twice and computes half as
/// many lanes at once. Reading a basis of tens of parameter-sized vectors is limited by how
/// fast one core can stream memory, so a long vector is done in two halves on two threads;
/// the halves are the same on every machine, so the result does not depend on its cores.
pub fn project_out(targets: &mut [&mut [f32]], basis: &[Vec<f32>]) {
    let rows = targets.iter().map(|t| t.len()).min().unwrap_or(0);
    if basis.is_empty() || rows == 0 {
        return;
    }
    let width = basis.len();
    let split = if rows >= SPLIT_ROWS {
        (rows / 2).next_multiple_of(BLOCK_ROWS).min(rows)
    } else {
        rows
    };
    let (front, back): (Vec<&mut [f32]>, Vec<&mut [f32]>) = targets
        .iter_mut()
        .map(|t| t[..rows].split_at_mut(split))
        .unzip();
    let (mut front, mut back) = (front, back);
    let coefficients = std::thread::scope(|scope| {
        let back_half = (split < rows).then(|| {
            let back = &back;
            scope.spawn(move || coefficients_over(back, basis, split))
        });
        let mut sums = coefficients_over(&front, basis, 0);
        if let Some(handle) = back_half {
            let back_sums = handle
                .join()
                .expect("the coefficients' thread does not panic");
            sums.iter_mut().zip(back_sums).for_each(|(s, b)| *s += b);
        }
        sums
    });
    std::thread::scope(|scope| {
        if split < rows {
            let (back, coefficients) = (&mut back, &coefficients);
            scope.spawn(move || subtract_over(back, basis, coefficients, width, split));
        }
        subtract_over(&mut front, basis, &coefficients, width, 0);
    });
}

/// `coefficients[t · basis.len() + j] = Σ targets[t]·basis[j]` over the rows the targets
/// hold, which begin at row `offset` of the basis vectors.
fn coefficients_over(targets: &[&mut [f32]], basis: &[Vec<f32>], offset: usize) -> Vec<f64> {
    let rows = targets.iter().map(|t| t.len()).min().unwrap_or(0);
    let mut coefficients = vec![0.0f64; targets.len() * basis.len()];
    for start in (0..rows).step_by(BLOCK_ROWS) {
        let end = (start + BLOCK_ROWS).min(rows);
        for (j, b) in basis.iter().enumerate() {
            let b = &b[offset + start..offset + end];
            for (t, target) in targets.iter().enumerate() {
                coefficients[t * basis.len() + j] += block_dot(b, &target[start..end]);
            }
        }
    }
    coefficients
}

/// `targets[t] −= Σ_j coefficients[t · width + j] · basis[j]` over the rows the targets hold,
/// which begin at row `offset` of the basis vectors.
fn subtract_over(
    targets: &mut [&mut [f32]],
    basis: &[Vec<f32>],
    coefficients: &[f64],
    width: usize,
    offset: usize,
) {
    let rows = targets.iter().map(|t| t.len()).min().unwrap_or(0);
    for start in (0..rows).step_by(BLOCK_ROWS) {
        let end = (start + BLOCK_ROWS).min(rows);
        for (j, b) in basis.iter().enumerate() {
            let b = &b[offset + start..offset + end];
            for (t, target) in targets.iter_mut().enumerate() {
                let c = coefficients[t * width + j] as f32;
                target[start..end]
                    .iter_mut()
                    .zip(b)
                    .for_each(|(x, &y)| *x -= c * y);
            }
        }
    }
}

/// `Σ a·b` over one block: sixteen single-precision running sums, added in double precision.
fn block_dot(a: &[f32], b: &[f32]) -> f64 {
    const LANES: usize = 16;
    let n = a.len().min(b.len());
    let (a, b) = (a[..n].chunks_exact(LANES), b[..n].chunks_exact(LANES));
    let tail: f64 = a
        .remainder()
        .iter()
        .zip(b.remainder())
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum();
    let mut sums = [0.0f32; LANES];
    for (x, y) in a.zip(b) {
        for lane in 0..LANES {
            sums[lane] += x[lane] * y[lane];
        }
    }
    sums.iter().map(|&s| f64::from(s)).sum::<f64>() + tail
}

/// `v / ‖v‖` (`v` itself when it is zero).
pub fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let length = norm(&v);
    if length > 0.0 && length.is_finite() {
        v.iter_mut()
            .for_each(|x| *x = (f64::from(*x) / length) as f32);
    }
    v
}

/// Hutchinson's samples drawn and projected together (parameter-sized vectors each).
const HUTCHINSON_BLOCK: usize = 16;

/// A trace estimate and its standard error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceEstimate {
    pub trace: f64,
    /// The standard error of the random part (the deflated part is exact).
    pub stderr: f64,
    /// Products taken.
    pub products: u32,
}

/// Hutchinson's trace estimate over `samples` Rademacher vectors, deflated by the orthonormal
/// `basis` `B` (possibly empty) whose `trace(BᵀHB)` is `basis_trace`: with `P = I − BBᵀ`,
/// `trace(H) = trace(BᵀHB) + trace(PHP)` exactly, and each sample `(Pz)ᵀH(Pz)` is an unbiased
/// estimate of the second term, one product each. Deflating by the directions the
/// eigensolver explored (the largest-magnitude eigenvalues and those near them) removes the
/// part of the spectrum that dominates Hutchinson's variance.
pub fn hutchinson<E>(
    mut hvp: impl FnMut(&[f32], &mut [f32]) -> Result<(), E>,
    dimension: usize,
    samples: u32,
    rng: &mut Rng,
    basis: &[Vec<f32>],
    basis_trace: f64,
) -> Result<TraceEstimate, E> {
    // The samples are drawn and projected a block at a time (see `project_out`), in the
    // order one at a time would draw them.
    let block = (samples as usize).clamp(1, HUTCHINSON_BLOCK);
    let mut probes = vec![vec![0.0f32; dimension]; block];
    let mut product = vec![0.0f32; dimension];
    let mut estimates = Vec::with_capacity(samples as usize);
    while estimates.len() < samples as usize {
        let count = block.min(samples as usize - estimates.len());
        let probes = &mut probes[..count];
        for z in probes.iter_mut() {
            z.iter_mut().for_each(|v| *v = rng.rademacher());
        }
        project_out(
            &mut probes.iter_mut().map(Vec::as_mut_slice).collect::<Vec<_>>(),
            basis,
        );
        for z in probes.iter() {
            hvp(z, &mut product)?;
            estimates.push(dot(z, &product));
        }
    }
    let (mean, stderr) = crate::mean_and_stderr(&estimates);
    Ok(TraceEstimate {
        trace: basis_trace + mean,
        stderr,
        products: samples,
    })
}

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

    /// A symmetric matrix with a clear top eigenvalue: random plus a rank-one spike.
    fn spiked(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        let mut m = vec![0.0; n * n];
        let spike: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        for i in 0..n {
            for j in 0..=i {
                let x = rng.normal() * 0.1 + 0.05 * spike[i] * spike[j];
                m[i * n + j] = x;
                m[j * n + i] = x;
            }
        }
        m
    }

    fn largest_magnitude(m: &[f64], n: usize) -> f64 {
        let (values, _) = symmetric_eigen(m, n);
        values
            .into_iter()
            .max_by(|a, b| a.abs().total_cmp(&b.abs()))
            .unwrap()
    }

    /// `‖Hv − λv‖ / |λ|` recomputed from the returned pair.
    fn check_pair(m: &[f64], n: usize, eigen: &Eigen) -> f64 {
        let mut product = vec![0.0f32; n];
        matrix_hvp(m, n)(&eigen.vector, &mut product).unwrap();
        let quotient = dot(&eigen.vector, &product) / dot(&eigen.vector, &eigen.vector);
        assert!(
            (quotient - eigen.value).abs() <= 1e-5 * eigen.value.abs(),
            "the value {} is not the vector's Rayleigh quotient {quotient}",
            eigen.value
        );
        residual_of(&eigen.vector, &product, eigen.value)
    }

    #[test]
    fn power_iteration_finds_the_largest_magnitude_eigenvalue() {
        // diag(1, -5, 2): the answer is -5 even though 2 is the largest value.
        let m = [1.0, 0.0, 0.0, 0.0, -5.0, 0.0, 0.0, 0.0, 2.0];
        let eigen = power_iteration(matrix_hvp(&m, 3), vec![1.0, 1.0, 1.0], 1e-6, 500).unwrap();
        assert!((eigen.value + 5.0).abs() < 1e-5, "{eigen:?}");
        assert!(eigen.residual <= 1e-6);
        assert!(eigen.vector[1].abs() > 0.999);
    }

    #[test]
    fn power_iteration_returns_the_value_residual_and_vector_of_one_pair() {
        // Stopped early, the three must still describe the same vector (they did not: the
        // value and residual were the previous vector's, the vector the next one).
        let n = 40;
        let m = spiked(n, 11);
        for max_iter in [1, 2, 3, 5, 8] {
            let eigen = power_iteration(matrix_hvp(&m, n), vec![1.0; n], 0.0, max_iter).unwrap();
            assert_eq!(eigen.iterations, max_iter);
            let residual = check_pair(&m, n, &eigen);
            assert!(
                (residual - eigen.residual).abs() <= 1e-4 * residual.max(1e-3),
                "reported {} vs actual {residual}",
                eigen.residual
            );
        }
    }

    #[test]
    fn a_warm_start_at_the_eigenvector_converges_at_once() {
        let m = [4.0, 1.0, 1.0, 3.0];
        let cold = power_iteration(matrix_hvp(&m, 2), vec![1.0, 0.0], 1e-6, 500).unwrap();
        let warm = power_iteration(matrix_hvp(&m, 2), cold.vector.clone(), 1e-5, 500).unwrap();
        assert!(warm.iterations <= 2, "{warm:?}");
        // Eigenvalues of [[4,1],[1,3]]: (7 ± √5)/2.
        assert!((warm.value - (7.0 + 5f64.sqrt()) / 2.0).abs() < 1e-5);
    }

    #[test]
    fn lanczos_finds_the_largest_magnitude_eigenvalue() {
        let m = [1.0, 0.0, 0.0, 0.0, -5.0, 0.0, 0.0, 0.0, 2.0];
        let eigen = lanczos(matrix_hvp(&m, 3), vec![1.0, 1.0, 1.0], 1e-6, 500).unwrap();
        assert!((eigen.value + 5.0).abs() < 1e-5, "{eigen:?}");
        assert!(
            eigen.iterations <= 3,
            "a 3-dimensional Krylov space is exact: {eigen:?}"
        );
        assert!(eigen.vector[1].abs() > 0.999);
    }

    #[test]
    fn lanczos_agrees_with_a_dense_eigensolver_in_fewer_products_than_power_iteration() {
        let n = 60;
        let m = spiked(n, 7);
        let exact = largest_magnitude(&m, n);
        let mut rng = Rng::new(8);
        let start: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        let fast = lanczos(matrix_hvp(&m, n), start.clone(), 1e-4, 500).unwrap();
        let slow = power_iteration(matrix_hvp(&m, n), start, 1e-4, 5000).unwrap();
        assert!(
            (fast.value - exact).abs() < 1e-6 * exact.abs(),
            "{} vs {exact}",
            fast.value
        );
        assert!(fast.residual <= 1e-4, "{}", fast.residual);
        let actual = check_pair(&m, n, &fast);
        assert!(
            actual <= 2e-4,
            "the reported residual is not the vector's: {actual}"
        );
        assert!(
            fast.iterations < slow.iterations,
            "Lanczos {} products, power iteration {}",
            fast.iterations,
            slow.iterations
        );
        // A budget smaller than the basis: it stops at max_iter with its best estimate.
        let capped = lanczos(matrix_hvp(&m, n), vec![1.0; n], 1e-15, 5).unwrap();
        assert_eq!(capped.iterations, 5);
    }

    #[test]
    fn a_restart_does_not_stop_lanczos_before_its_residual_is_small() {
        // A spectrum with no big gap needs more than one basis: every restart's first Ritz
        // value equals the last one, which used to pass the old "λ stopped changing" test.
        let n = 80;
        let mut m = vec![0.0; n * n];
        for i in 0..n {
            m[i * n + i] = 1.0 + i as f64 / n as f64;
        }
        let mut rng = Rng::new(5);
        let start: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        let eigen = lanczos(matrix_hvp(&m, n), start, 1e-5, 400).unwrap();
        assert!(
            eigen.iterations > LANCZOS_BASIS as u32,
            "{}",
            eigen.iterations
        );
        assert!(eigen.residual <= 1e-5, "{eigen:?}");
        assert!(
            (eigen.value - (1.0 + 79.0 / 80.0)).abs() < 1e-6,
            "{}",
            eigen.value
        );
    }

    #[test]
    fn the_krylov_basis_is_orthonormal_and_its_trace_is_exact() {
        let n = 50;
        let m = spiked(n, 3);
        let eigen = lanczos(matrix_hvp(&m, n), vec![1.0; n], 1e-12, 12).unwrap();
        assert_eq!(eigen.basis.len(), 12);
        let mut trace = 0.0;
        for (i, a) in eigen.basis.iter().enumerate() {
            for (j, b) in eigen.basis.iter().enumerate() {
                let expected = if i == j { 1.0 } else { 0.0 };
                assert!((dot(a, b) - expected).abs() < 1e-5, "({i}, {j})");
            }
            let mut product = vec![0.0f32; n];
            matrix_hvp(&m, n)(a, &mut product).unwrap();
            trace += dot(a, &product);
        }
        assert!((trace - eigen.basis_trace).abs() < 1e-4 * trace.abs().max(1.0));
    }

    #[test]
    fn an_extended_basis_stays_orthonormal_with_an_exact_trace() {
        let n = 50;
        let m = spiked(n, 9);
        for solver in ["lanczos", "power"] {
            let mut eigen = match solver {
                "lanczos" => lanczos(matrix_hvp(&m, n), vec![1.0; n], 1e-3, 12).unwrap(),
                _ => power_iteration(matrix_hvp(&m, n), vec![1.0; n], 1e-3, 12).unwrap(),
            };
            let before = eigen.basis.len();
            let products = extend_basis(matrix_hvp(&m, n), &mut eigen, 20).unwrap();
            assert_eq!(eigen.basis.len(), 20, "{solver}");
            assert_eq!(products as usize, 20 - before, "{solver}");
            let mut trace = 0.0;
            for (i, a) in eigen.basis.iter().enumerate() {
                for (j, b) in eigen.basis.iter().enumerate() {
                    let expected = if i == j { 1.0 } else { 0.0 };
                    assert!((dot(a, b) - expected).abs() < 1e-5, "{solver} ({i}, {j})");
                }
                let mut product = vec![0.0f32; n];
                matrix_hvp(&m, n)(a, &mut product).unwrap();
                trace += dot(a, &product);
            }
            assert!(
                (trace - eigen.basis_trace).abs() < 1e-4 * trace.abs().max(1.0),
                "{solver}: {trace} vs {}",
                eigen.basis_trace
            );
        }
        // The whole space: the deflated part is the whole trace.
        let mut eigen = lanczos(matrix_hvp(&m, n), vec![1.0; n], 1e-3, 12).unwrap();
        extend_basis(matrix_hvp(&m, n), &mut eigen, n).unwrap();
        let exact: f64 = (0..n).map(|i| m[i * n + i]).sum();
        assert!(
            (eigen.basis_trace - exact).abs() < 1e-3,
            "{} vs {exact}",
            eigen.basis_trace
        );
    }

    #[test]
    fn deflated_hutchinson_is_unbiased_and_tighter_with_an_outlier_eigenvalue() {
        // H = I + 99·uuᵀ with u = (1, …, 1)/√20 in 20 dimensions: trace 119.
        let n = 20;
        let u = 1.0 / (n as f64).sqrt();
        let m: Vec<f64> = (0..n * n)
            .map(|k| f64::from(u8::from(k / n == k % n)) + 99.0 * u * u)
            .collect();
        let top: Vec<f32> = vec![u as f32; n];
        let plain = hutchinson(matrix_hvp(&m, n), n, 400, &mut Rng::new(1), &[], 0.0).unwrap();
        let deflated =
            hutchinson(matrix_hvp(&m, n), n, 400, &mut Rng::new(1), &[top], 100.0).unwrap();
        assert!(
            (plain.trace - 119.0).abs() < 3.0 * plain.stderr,
            "{plain:?}"
        );
        // P H P = P here, so each sample is ‖Pz‖² = 20 − (uᵀz)²: unbiased for trace(P) = 19,
        // where the plain samples 20 + 99·(uᵀz)² spread 99 times wider.
        assert!(
            (deflated.trace - 119.0).abs() < 4.0 * deflated.stderr,
            "{deflated:?}"
        );
        assert!(
            deflated.stderr * 50.0 < plain.stderr,
            "{deflated:?} vs {plain:?}"
        );
        assert_eq!(deflated.products, 400);
    }

    /// Long enough to be done in two halves with a partial last block: what is left of each
    /// target is orthogonal to the basis, and what was removed is its projection `BBᵀt`.
    #[test]
    fn projecting_out_a_basis_leaves_the_orthogonal_part_of_every_target() {
        let n = SPLIT_ROWS + 3 * BLOCK_ROWS + 17;
        let mut rng = Rng::new(5);
        let mut basis: Vec<Vec<f32>> = Vec::new();
        for _ in 0..3 {
            let mut v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            for b in &basis {
                let c = dot(b, &v);
                v.iter_mut()
                    .zip(b)
                    .for_each(|(x, &y)| *x = (f64::from(*x) - c * f64::from(y)) as f32);
            }
            basis.push(unit(v));
        }
        let originals: Vec<Vec<f32>> = (0..2)
            .map(|t| {
                (0..n)
                    .map(|i| rng.normal() as f32 + t as f32 * (i % 3) as f32)
                    .collect()
            })
            .collect();
        let mut targets = originals.clone();
        project_out(
            &mut targets
                .iter_mut()
                .map(Vec::as_mut_slice)
                .collect::<Vec<_>>(),
            &basis,
        );
        for (original, target) in originals.iter().zip(&targets) {
            let scale = norm(original);
            for b in &basis {
                assert!(dot(b, target).abs() < 1e-5 * scale, "{}", dot(b, target));
            }
            let coefficients: Vec<f64> = basis.iter().map(|b| dot(b, original)).collect();
            let worst = (0..n)
                .map(|i| {
                    let removed = f64::from(original[i]) - f64::from(target[i]);
                    let projection: f64 = coefficients
                        .iter()
                        .zip(&basis)
                        .map(|(c, b)| c * f64::from(b[i]))
                        .sum();
                    (removed - projection).abs()
                })
                .fold(0.0, f64::max);
            assert!(worst < 1e-5, "an element is off by {worst}");
        }
    }

    #[test]
    fn hutchinson_is_exact_for_a_diagonal_matrix() {
        // zᵀDz = Σ d_i z_i² = trace for every Rademacher z.
        let m = [2.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 7.0];
        let estimate = hutchinson(matrix_hvp(&m, 3), 3, 5, &mut Rng::new(3), &[], 0.0).unwrap();
        assert!((estimate.trace - 8.0).abs() < 1e-9);
        assert!(estimate.stderr.abs() < 1e-9);
    }
}
