//! Cockpit's instruments (Schneider, Dangel, Hennig, NeurIPS 2021; `cockpit-for-pytorch`
//! 1.0.2) from the statistics of individual gradients `gₙ = ∇ℓₙ` of a batch of `B` samples
//! with mean gradient `ḡ`. Cockpit's own code works with BackPACK's `gₙ / B`; the formulas
//! below are the same quantities written with `gₙ`.
//!
//! - [`norm_test`] (Byrd et al. 2012, eq. 3.9): `θ = √(var / (B ‖ḡ‖²))`,
//!   `var = (Σₙ‖gₙ‖² − B‖ḡ‖²) / (B − 1)`.
//! - [`inner_test`] (Bollapragada et al. 2017, eq. 2.6): `θ = √(var_p / (B ‖ḡ‖⁴))`,
//!   `var_p = (Σₙ(gₙ·ḡ)² − B‖ḡ‖⁴) / (B − 1)`.
//! - [`ortho_test`] (Bollapragada et al. 2017, eq. 3.3): `ν = √(var_o / (B ‖ḡ‖²))`,
//!   `var_o = (Σₙ‖gₙ‖² − Σₙ(gₙ·ḡ)²/‖ḡ‖²) / (B − 1)`.
//! - [`mean_gsnr`] (Liu et al. 2020): the mean over coordinates of
//!   `ḡ² / (Σₙgₙ²/B − ḡ² + ε)`.
//! - [`eb_criterion`] (Mahsereci et al. 2017, eq. 7): `1 − B · mean(ḡ² / (v + ε))`,
//!   `v = (Σₙgₙ² − Bḡ²) / (B − 1)`; past 0, stop.
//! - [`alpha`]: the step's position on the quadratic fitted to two noisy observations of the
//!   loss and its slope along the step (Cockpit's `Alpha`).

/// The sums a batch's individual gradients give: `B`, `Σₙ‖gₙ‖²`, `Σₙ(gₙ·ḡ)²` and `‖ḡ‖²`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchSums {
    pub batch: f64,
    pub sum_sq_norms: f64,
    pub sum_sq_projections: f64,
    pub grad_sq_norm: f64,
}

impl BatchSums {
    /// `(Σₙ‖gₙ‖² − B‖ḡ‖²) / (B − 1)`: the ℓ₁ norm of the gradient's sample variance.
    pub fn variance(&self) -> f64 {
        (self.sum_sq_norms - self.batch * self.grad_sq_norm) / (self.batch - 1.0)
    }
}

/// The norm test's largest passing θ.
pub fn norm_test(sums: &BatchSums) -> f64 {
    (sums.variance() / sums.batch / sums.grad_sq_norm).sqrt()
}

/// The batch size at which the norm test passes with `theta`: `var / (θ² ‖ḡ‖²)`.
pub fn norm_test_batch_size(sums: &BatchSums, theta: f64) -> f64 {
    sums.variance() / (theta * theta) / sums.grad_sq_norm
}

/// The inner-product test's largest passing θ.
pub fn inner_test(sums: &BatchSums) -> f64 {
    let g4 = sums.grad_sq_norm * sums.grad_sq_norm;
    let variance = (sums.sum_sq_projections - sums.batch * g4) / (sums.batch - 1.0);
    (variance / sums.batch / g4).sqrt()
}

/// The orthogonality test's largest passing ν.
pub fn ortho_test(sums: &BatchSums) -> f64 {
    let variance =
        (sums.sum_sq_norms - sums.sum_sq_projections / sums.grad_sq_norm) / (sums.batch - 1.0);
    (variance / sums.batch / sums.grad_sq_norm).sqrt()
}

/// The mean gradient signal-to-noise ratio from the mean gradient `grad` and `Σₙgₙ²`
/// (`second_moment`), coordinate by coordinate.
pub fn mean_gsnr(grad: &[f32], second_moment: &[f32], batch: f64, epsilon: f64) -> f64 {
    let sum: f64 = grad
        .iter()
        .zip(second_moment)
        .map(|(&g, &s)| {
            let g2 = f64::from(g) * f64::from(g);
            g2 / (f64::from(s) / batch - g2 + epsilon)
        })
        .sum();
    sum / grad.len().max(1) as f64
}

/// The EB criterion from the mean gradient and `Σₙgₙ²`.
pub fn eb_criterion(grad: &[f32], second_moment: &[f32], batch: f64, epsilon: f64) -> f64 {
    let sum: f64 = grad
        .iter()
        .zip(second_moment)
        .map(|(&g, &s)| {
            let g2 = f64::from(g) * f64::from(g);
            let variance = (f64::from(s) - batch * g2) / (batch - 1.0);
            g2 / (variance + epsilon)
        })
        .sum();
    1.0 - batch * sum / grad.len().max(1) as f64
}

/// The range a histogram of individual gradient elements spans when none is set: ±6 times
/// the elements' RMS `√(Σₙ‖gₙ‖² / (B·N))` (±1 when that is 0), where the bulk of the elements
/// fills the bins and outliers are clamped into the end bins.
pub fn auto_range(sum_sq_norms: f64, batch: usize, elements: u64) -> (f64, f64) {
    let rms = (sum_sq_norms / (batch.max(1) as f64 * elements.max(1) as f64)).sqrt();
    let half = if rms > 0.0 && rms.is_finite() {
        6.0 * rms
    } else {
        1.0
    };
    (-half, half)
}

/// One end of a step: the batch loss and the slope along the step, with their sample
/// variances over the batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    pub loss: f64,
    pub loss_variance: f64,
    pub slope: f64,
    pub slope_variance: f64,
}

impl Observation {
    /// From the individual losses `ℓₙ` and the individual slopes `gₙ · d / ‖d‖`: means and
    /// unbiased variances (`B − 1`), as Cockpit takes them.
    pub fn of(losses: &[f64], slopes: &[f64]) -> Observation {
        let (loss, loss_variance) = mean_and_variance(losses);
        let (slope, slope_variance) = mean_and_variance(slopes);
        Observation {
            loss,
            loss_variance,
            slope,
            slope_variance,
        }
    }
}

fn mean_and_variance(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, variance)
}

/// The quadratic `c₀ + c₁ x + c₂ x²` fitted by weighted least squares to the loss and slope
/// at 0 and at `t`, each weighted by its inverse variance (a variance of 0 becomes 1e-10, as
/// in Cockpit). `None` when the system is singular.
pub fn fit_quadratic(t: f64, start: &Observation, end: &Observation) -> Option<[f64; 3]> {
    let floor = |v: f64| if v == 0.0 { 1e-10 } else { v };
    // Rows: f(0), f(t), f'(0), f'(t) as functions of (c₀, c₁, c₂).
    let rows = [
        ([1.0, 0.0, 0.0], start.loss, floor(start.loss_variance)),
        ([1.0, t, t * t], end.loss, floor(end.loss_variance)),
        ([0.0, 1.0, 0.0], start.slope, floor(start.slope_variance)),
        ([0.0, 1.0, 2.0 * t], end.slope, floor(end.slope_variance)),
    ];
    let mut normal = [[0.0; 3]; 3];
    let mut rhs = [0.0; 3];
    for (phi, y, variance) in rows {
        for i in 0..3 {
            rhs[i] += phi[i] * y / variance;
            for j in 0..3 {
                normal[i][j] += phi[i] * phi[j] / variance;
            }
        }
    }
    solve3(normal, rhs)
}

/// Gaussian elimination with partial pivoting.
fn solve3(mut a: [[f64; 3]; 3], mut b: [f64; 3]) -> Option<[f64; 3]> {
    for column in 0..3 {
        let pivot =
            (column..3).max_by(|&i, &j| a[i][column].abs().total_cmp(&a[j][column].abs()))?;
        if a[pivot][column].abs() < 1e-300 {
            return None;
        }
        a.swap(column, pivot);
        b.swap(column, pivot);
        let (pivot_row, pivot_b) = (a[column], b[column]);
        for (row, rhs) in a.iter_mut().zip(b.iter_mut()).skip(column + 1) {
            let factor = row[column] / pivot_row[column];
            for (value, above) in row.iter_mut().zip(pivot_row).skip(column) {
                *value -= factor * above;
            }
            *rhs -= factor * pivot_b;
        }
    }
    let mut x = [0.0; 3];
    for row in (0..3).rev() {
        let tail: f64 = (row + 1..3).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - tail) / a[row][row];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// α for a step of length `t`: −1 at the start, 0 at the minimum of the fitted quadratic,
/// 1 on the other side at the starting loss; −1 also for a concave fit (still going
/// downhill) and for a step of length 0, `None` when no fit exists (Cockpit's `_get_alpha`).
pub fn alpha(t: f64, start: &Observation, end: &Observation) -> Option<f64> {
    match fit_quadratic(t, start, end) {
        None => (t == 0.0).then_some(-1.0),
        Some([_, _, c2]) if c2 < 0.0 => Some(-1.0),
        Some([_, c1, c2]) => Some(2.0 * t / (-c1 / c2) - 1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Individual gradients written out: the tests' sums from their definitions.
    fn sums_of(gradients: &[Vec<f64>]) -> (BatchSums, Vec<f64>) {
        let b = gradients.len() as f64;
        let n = gradients[0].len();
        let mean: Vec<f64> = (0..n)
            .map(|i| gradients.iter().map(|g| g[i]).sum::<f64>() / b)
            .collect();
        let dot = |a: &[f64], c: &[f64]| a.iter().zip(c).map(|(x, y)| x * y).sum::<f64>();
        (
            BatchSums {
                batch: b,
                sum_sq_norms: gradients.iter().map(|g| dot(g, g)).sum(),
                sum_sq_projections: gradients.iter().map(|g| dot(g, &mean).powi(2)).sum(),
                grad_sq_norm: dot(&mean, &mean),
            },
            mean,
        )
    }

    #[test]
    fn the_tests_match_their_definitions_by_sample_variance() {
        let gradients = vec![
            vec![1.0, 2.0, -1.0],
            vec![0.5, 1.0, 0.0],
            vec![2.0, -1.0, 1.0],
            vec![1.5, 0.5, 0.5],
        ];
        let (sums, mean) = sums_of(&gradients);
        let b = 4.0;
        let g2: f64 = mean.iter().map(|m| m * m).sum();
        // Byrd et al.: the sample variance's ℓ₁ norm, Σᵢ Σₙ (gₙᵢ − ḡᵢ)² / (B − 1).
        let variance: f64 = gradients
            .iter()
            .flat_map(|g| g.iter().zip(&mean).map(|(x, m)| (x - m).powi(2)))
            .sum::<f64>()
            / (b - 1.0);
        assert!((norm_test(&sums) - (variance / b / g2).sqrt()).abs() < 1e-12);
        assert!((norm_test_batch_size(&sums, norm_test(&sums)) - b).abs() < 1e-9);
        // Projections pₙ = gₙ·ḡ: their sample variance.
        let p: Vec<f64> = gradients
            .iter()
            .map(|g| g.iter().zip(&mean).map(|(x, m)| x * m).sum())
            .collect();
        let p_mean = p.iter().sum::<f64>() / b;
        let p_var = p.iter().map(|x| (x - p_mean).powi(2)).sum::<f64>() / (b - 1.0);
        assert!((p_mean - g2).abs() < 1e-12);
        assert!((inner_test(&sums) - (p_var / b / (g2 * g2)).sqrt()).abs() < 1e-12);
        // The parts orthogonal to ḡ: gₙ − (pₙ/‖ḡ‖²) ḡ, and their variance.
        let orthogonal: f64 = gradients
            .iter()
            .zip(&p)
            .map(|(g, pn)| {
                g.iter()
                    .zip(&mean)
                    .map(|(x, m)| (x - pn / g2 * m).powi(2))
                    .sum::<f64>()
            })
            .sum::<f64>()
            / (b - 1.0);
        assert!((ortho_test(&sums) - (orthogonal / b / g2).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn gsnr_and_eb_follow_the_per_coordinate_variance() {
        let grad = [0.5f32, -1.0];
        // Two samples per coordinate: (0, 1) and (−1, −1) have means 0.5 and −1.
        let second = [1.0f32, 2.0];
        let gsnr = mean_gsnr(&grad, &second, 2.0, 0.0);
        // Coordinate 0: 0.25 / (0.5 − 0.25) = 1; coordinate 1: variance 0, ε = 0 → ∞.
        assert!(gsnr.is_infinite());
        let gsnr = mean_gsnr(&grad, &second, 2.0, 1e-5);
        assert!((gsnr - (1.0 / (1.0 + 4e-5) + 1.0 / 1e-5) / 2.0).abs() < 1e-3);
        // EB: v = (1 − 2·0.25)/1 = 0.5 and 0; 1 − 2 · mean(0.25/0.5, 1/ε).
        let eb = eb_criterion(&grad, &second, 2.0, 1e-5);
        let want = 1.0 - 2.0 * (0.25 / (0.5 + 1e-5) + 1.0 / 1e-5) / 2.0;
        assert!((eb - want).abs() < 1e-6 * want.abs());
    }

    /// On a quadratic loss observed without noise the fit is the quadratic itself, and α is
    /// its closed form `2t/ᾱ − 1` with `ᾱ = −c₁/c₂`: for `f(x) = (x − 1)²` stepping from 0,
    /// a step to 1 is the minimum (α = 0), to 2 the other side (α = 1), to 0.5 α = −0.5.
    #[test]
    fn alpha_is_its_closed_form_on_a_quadratic() {
        let f = |x: f64| (x - 1.0).powi(2);
        let df = |x: f64| 2.0 * (x - 1.0);
        for (t, want) in [(1.0, 0.0), (2.0, 1.0), (0.5, -0.5), (1.5, 0.5)] {
            let at = |x: f64| Observation {
                loss: f(x),
                loss_variance: 0.1,
                slope: df(x),
                slope_variance: 0.2,
            };
            let got = alpha(t, &at(0.0), &at(t)).unwrap();
            assert!(
                (got - want).abs() < 1e-12,
                "t = {t}: α = {got}, want {want}"
            );
        }
        // Concave: −1, as Cockpit logs it.
        let concave = |x: f64| Observation {
            loss: -x * x,
            loss_variance: 1.0,
            slope: -2.0 * x,
            slope_variance: 1.0,
        };
        assert_eq!(alpha(1.0, &concave(0.0), &concave(1.0)), Some(-1.0));
    }

    #[test]
    fn observations_take_unbiased_variances() {
        let observation = Observation::of(&[1.0, 2.0, 3.0], &[0.0, 0.0, 3.0]);
        assert_eq!(observation.loss, 2.0);
        assert_eq!(observation.loss_variance, 1.0);
        assert_eq!(observation.slope, 1.0);
        assert_eq!(observation.slope_variance, 3.0);
    }
}
