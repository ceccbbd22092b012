//! Numerical helpers shared by vigil's monitor plugins: a least-squares line fit (and the
//! power-law fit built on it), a seeded random number generator, vector arithmetic, and
//! Krylov methods for eigenvalues and traces ([`krylov`]). Plain Rust: no libtorch, no FFI.

pub mod instruments;
pub mod krylov;

/// A straight line `y = intercept + slope · x` fitted by least squares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LineFit {
    pub slope: f64,
    pub intercept: f64,
    /// Coefficient of determination; 1 for a perfect fit, NaN when `y` is constant.
    pub r2: f64,
    pub points: usize,
}

impl LineFit {
    pub fn predict(&self, x: f64) -> f64 {
        self.intercept + self.slope * x
    }
}

/// Least-squares fit of `y` on `x` over the pairs where both are finite. `None` with fewer
/// than two such points or when all `x` are equal.
pub fn fit_line(points: impl IntoIterator<Item = (f64, f64)>) -> Option<LineFit> {
    let points: Vec<(f64, f64)> = points
        .into_iter()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let n = points.len();
    if n < 2 {
        return None;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n as f64;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n as f64;
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for &(x, y) in &points {
        sxx += (x - mean_x) * (x - mean_x);
        sxy += (x - mean_x) * (y - mean_y);
        syy += (y - mean_y) * (y - mean_y);
    }
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let intercept = mean_y - slope * mean_x;
    let residual: f64 = points
        .iter()
        .map(|&(x, y)| (y - intercept - slope * x).powi(2))
        .sum();
    Some(LineFit {
        slope,
        intercept,
        r2: if syy > 0.0 {
            1.0 - residual / syy
        } else {
            f64::NAN
        },
        points: n,
    })
}

/// Fit `y = c · x^slope` by least squares on `(ln x, ln y)`; points with `x ≤ 0` or `y ≤ 0`
/// (or not finite) are left out.
pub fn fit_power_law(points: impl IntoIterator<Item = (f64, f64)>) -> Option<LineFit> {
    fit_line(
        points
            .into_iter()
            .filter(|&(x, y)| x > 0.0 && y > 0.0)
            .map(|(x, y)| (x.ln(), y.ln())),
    )
}

/// SplitMix64: small, fast, and the same stream on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x6a09_e667_f3bc_c909)
    }

    /// The generator's whole state, to save and restore it (a resumed monitor continues the
    /// same stream).
    pub fn state(&self) -> u64 {
        self.0
    }

    /// A generator at a state [`Rng::state`] returned.
    pub fn from_state(state: u64) -> Self {
        Rng(state)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// ±1 with equal probability.
    pub fn rademacher(&mut self) -> f32 {
        if self.next_u64() >> 63 == 0 {
            1.0
        } else {
            -1.0
        }
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Run `f` with subnormal floats flushed to zero (x86-64: the FTZ and DAZ bits of this
/// thread's MXCSR, restored afterwards; elsewhere `f` as is).
///
/// Gradients of idle units are tiny, and their squares and decaying averages fall below
/// `f32::MIN_POSITIVE`; x86 CPUs compute with such subnormal numbers about twenty times more
/// slowly. A monitor's statistics lose nothing by reading them as zero.
pub fn without_subnormals<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[allow(deprecated)] // the replacement is inline assembly doing the same
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        const FLUSH_TO_ZERO: u32 = 1 << 15;
        const DENORMALS_ARE_ZERO: u32 = 1 << 6;
        /// Puts the saved MXCSR back, also when `f` unwinds.
        struct Restore(u32);
        impl Drop for Restore {
            fn drop(&mut self) {
                // SAFETY: writes back the value read from this thread's MXCSR.
                #[allow(deprecated)]
                unsafe {
                    _mm_setcsr(self.0)
                };
            }
        }
        // SAFETY: SSE is part of x86-64; reading MXCSR and setting the two flush bits only
        // changes how this thread rounds subnormal results, until `Restore` puts it back.
        #[allow(deprecated)]
        let saved = unsafe { _mm_getcsr() };
        let _restore = Restore(saved);
        #[allow(deprecated)]
        unsafe {
            _mm_setcsr(saved | FLUSH_TO_ZERO | DENORMALS_ARE_ZERO)
        };
        f()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        f()
    }
}

/// `Σ a·b` in double precision, over the shorter of the two.
///
/// Eight running sums instead of one: a single sum is one long chain of dependent additions
/// (four cycles each), while independent sums vectorise and run at memory speed, about five
/// times faster on a parameter-sized vector. They also round no worse.
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    const LANES: usize = 8;
    let n = a.len().min(b.len());
    let (a, b) = (a[..n].chunks_exact(LANES), b[..n].chunks_exact(LANES));
    let tail: f64 = a
        .remainder()
        .iter()
        .zip(b.remainder())
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum();
    let mut sums = [0.0f64; LANES];
    for (x, y) in a.zip(b) {
        for lane in 0..LANES {
            sums[lane] += f64::from(x[lane]) * f64::from(y[lane]);
        }
    }
    sums.iter().sum::<f64>() + tail
}

/// Euclidean norm in double precision.
pub fn norm(a: &[f32]) -> f64 {
    dot(a, a).sqrt()
}

/// Mean and standard error of the mean.
pub fn mean_and_stderr(samples: &[f64]) -> (f64, f64) {
    let n = samples.len() as f64;
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = samples.iter().sum::<f64>() / n;
    if samples.len() < 2 {
        return (mean, f64::NAN);
    }
    let variance = samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (variance / n).sqrt())
}

/// Eigenvalues and unit eigenvectors of the symmetric `n × n` matrix `a` (row-major), by
/// cyclic Jacobi rotations: `(values, vectors)` with eigenvector `k` in column `k` of
/// `vectors` (row-major). Meant for small matrices (Lanczos's tridiagonal, tens of rows).
pub fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), n * n, "symmetric_eigen needs an n × n matrix");
    let mut a = a.to_vec();
    let mut v = vec![0.0; n * n];
    (0..n).for_each(|i| v[i * n + i] = 1.0);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum();
        let scale: f64 = a.iter().map(|x| x * x).sum();
        if off <= 1e-30 * scale.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_sums_every_product_over_the_shorter_slice() {
        // Small integers: every partial sum is exact, so any order gives the same answer.
        for n in [0usize, 1, 7, 8, 9, 16, 23, 100] {
            let a: Vec<f32> = (0..n).map(|i| (i % 13) as f32 - 6.0).collect();
            let b: Vec<f32> = (0..n + 3).map(|i| (i % 5) as f32 + 1.0).collect();
            let expected: i64 = (0..n as i64).map(|i| (i % 13 - 6) * (i % 5 + 1)).sum();
            assert_eq!(dot(&a, &b), expected as f64, "n = {n}");
            assert_eq!(dot(&b, &a), expected as f64, "n = {n}, swapped");
        }
        assert_eq!(norm(&[3.0, 4.0]), 5.0);
    }

    #[test]
    fn subnormals_read_as_zero_inside_and_not_after() {
        let tiny = std::hint::black_box(f32::MIN_POSITIVE);
        assert_eq!(
            without_subnormals(|| std::hint::black_box(tiny) / 4.0),
            if cfg!(target_arch = "x86_64") {
                0.0
            } else {
                tiny / 4.0
            }
        );
        assert!(
            std::hint::black_box(tiny) / 4.0 > 0.0,
            "the mode is restored"
        );
    }

    #[test]
    fn jacobi_diagonalises_a_symmetric_matrix() {
        // [[2, 1, 0], [1, 2, 1], [0, 1, 2]]: eigenvalues 2 − √2, 2, 2 + √2.
        let a = [2.0, 1.0, 0.0, 1.0, 2.0, 1.0, 0.0, 1.0, 2.0];
        let (mut values, vectors) = symmetric_eigen(&a, 3);
        for k in 0..3 {
            // A·v = λ·v for every column.
            for i in 0..3 {
                let av: f64 = (0..3).map(|j| a[i * 3 + j] * vectors[j * 3 + k]).sum();
                assert!((av - values[k] * vectors[i * 3 + k]).abs() < 1e-12);
            }
        }
        values.sort_by(f64::total_cmp);
        let root2 = 2f64.sqrt();
        for (got, want) in values.iter().zip([2.0 - root2, 2.0, 2.0 + root2]) {
            assert!((got - want).abs() < 1e-12, "{values:?}");
        }
        assert_eq!(symmetric_eigen(&[-3.0], 1).0, vec![-3.0]);
    }

    #[test]
    fn line_fit_matches_the_closed_form() {
        // y = 2 + 3x exactly, plus a point with NaN that is ignored.
        let fit = fit_line([
            (0.0, 2.0),
            (1.0, 5.0),
            (2.0, 8.0),
            (3.0, f64::NAN),
            (4.0, 14.0),
        ])
        .unwrap();
        assert!((fit.slope - 3.0).abs() < 1e-12);
        assert!((fit.intercept - 2.0).abs() < 1e-12);
        assert!((fit.r2 - 1.0).abs() < 1e-12);
        assert_eq!(fit.points, 4);
    }

    #[test]
    fn line_fit_matches_a_least_squares_reference() {
        // Reference (computed independently): x = 1..4, y = 1, 3, 2, 5 → slope 1.1, intercept 0,
        // R² = 0.6914285714285715.
        let fit = fit_line([(1.0, 1.0), (2.0, 3.0), (3.0, 2.0), (4.0, 5.0)]).unwrap();
        assert!((fit.slope - 1.1).abs() < 1e-12);
        assert!(fit.intercept.abs() < 1e-12);
        assert!((fit.r2 - 0.6914285714285715).abs() < 1e-12);
    }

    #[test]
    fn degenerate_inputs_give_no_fit() {
        assert!(fit_line([(1.0, 1.0)]).is_none());
        assert!(fit_line([(2.0, 1.0), (2.0, 3.0)]).is_none());
        assert!(fit_power_law([(1.0, -1.0), (2.0, 0.0)]).is_none());
    }

    #[test]
    fn power_law_recovers_a_known_exponent() {
        let fit =
            fit_power_law((1..200).map(|t| (t as f64, 3.5 * (t as f64).powf(-0.37)))).unwrap();
        assert!((fit.slope + 0.37).abs() < 1e-12);
        assert!((fit.intercept.exp() - 3.5).abs() < 1e-9);
    }

    #[test]
    fn rademacher_is_balanced() {
        let mut rng = Rng::new(1);
        let sum: f32 = (0..10_000).map(|_| rng.rademacher()).sum();
        assert!(sum.abs() < 400.0, "{sum}");
    }

    #[test]
    fn stderr_of_known_samples() {
        let (mean, stderr) = mean_and_stderr(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(mean, 2.5);
        assert!((stderr - (1.6666666666666667f64 / 4.0).sqrt()).abs() < 1e-15);
    }
}
