//! Histogram counting on the CPU, in plain loops over the tensors' memory: one pass over
//! formed individual gradients, and for a linear layer, whose individual weight gradients
//! `δₙᵢ xₙⱼ` are outer products, binary searches in each sample's sorted inputs instead of
//! forming them. Two threads, each over half of the samples.

use tch::{Device, Kind, Tensor};

use crate::error::Result;

/// Equal bins over `[low, high]`; values outside are clamped into the end bins, and a value
/// on an edge belongs to the bin above it (`torch.histc` after `clamp`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Bins {
    pub count: usize,
    pub low: f64,
    pub high: f64,
}

impl Bins {
    fn index(&self, value: f64) -> usize {
        self.indexer()(value)
    }

    /// [`Bins::index`] with its constants worked out once: non-negative after the clamp, so
    /// truncation is the floor.
    fn indexer(&self) -> impl Fn(f64) -> usize {
        let (low, high, last) = (self.low, self.high, self.count - 1);
        let scale = self.count as f64 / (high - low);
        move |value| (((value.clamp(low, high) - low) * scale) as usize).min(last)
    }

    /// The edges between bins, `count − 1` of them.
    fn inner_edges(&self) -> Vec<f64> {
        (1..self.count)
            .map(|k| self.low + (self.high - self.low) * k as f64 / self.count as f64)
            .collect()
    }
}

/// `f(values)` over a CPU float tensor's memory, without a copy when it is already a
/// contiguous `f32` CPU tensor.
pub(super) fn with_f32s<R>(tensor: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let tensor = tensor
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?
        .f_contiguous()?;
    let length = tensor.numel();
    // SAFETY: `tensor` is a contiguous CPU f32 tensor of `length` elements that lives until
    // this function returns, and nothing writes to it meanwhile.
    let values = unsafe { std::slice::from_raw_parts(tensor.data_ptr() as *const f32, length) };
    Ok(f(values))
}

/// Split `0..rows` in two and run `each` on both halves on two threads; the counts add up.
fn on_two_threads(
    rows: usize,
    cells: usize,
    each: impl Fn(std::ops::Range<usize>, &mut [f64]) + Sync,
) -> Vec<f64> {
    let half = rows.div_ceil(2);
    let (mut first, mut second) = (vec![0.0; cells], vec![0.0; cells]);
    std::thread::scope(|scope| {
        let each = &each;
        let second = &mut second;
        scope.spawn(move || each(half..rows, second));
        each(0..half, &mut first);
    });
    first.iter_mut().zip(second).for_each(|(a, b)| *a += b);
    first
}

/// One sample's inputs sorted, with a table of where each of `cells` equal slices of their
/// range starts, so that how many lie below a value is a table lookup and a comparison with the
/// few inputs in the same slice (a binary search there: ReLU's zeros share one). Exact: a value's slice is a monotone function of the value,
/// so every input in an earlier slice is smaller and every one in a later slice larger.
struct SortedIndex {
    sorted: Vec<f64>,
    low: f64,
    scale: f64,
    /// `starts[c]`: the first sorted input in slice `c` or later; `starts[cells]` = length.
    starts: Vec<usize>,
}

impl SortedIndex {
    fn new(values: &[f32]) -> Self {
        let mut sorted: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
        sorted.sort_unstable_by(f64::total_cmp);
        let cells = (2 * sorted.len()).clamp(64, 8192);
        let (low, high) = match (sorted.first(), sorted.last()) {
            (Some(&low), Some(&high)) => (low, high),
            _ => (0.0, 0.0),
        };
        let scale = if high > low {
            cells as f64 / (high - low)
        } else {
            0.0
        };
        let mut index = SortedIndex {
            sorted,
            low,
            scale,
            starts: vec![0; cells + 1],
        };
        let mut position = 0;
        for cell in 0..=cells {
            while position < index.sorted.len() && index.cell(index.sorted[position]) < cell {
                position += 1;
            }
            index.starts[cell] = position;
        }
        index
    }

    fn cell(&self, value: f64) -> usize {
        let last = self.starts.len() - 2;
        (((value - self.low) * self.scale).max(0.0) as usize).min(last)
    }

    /// How many inputs `x` have `before(x)`, for `before` a prefix of the sorted inputs that
    /// ends in the slice of `value`.
    fn prefix(&self, value: f64, before: impl Fn(f64) -> bool) -> usize {
        let length = self.sorted.len();
        if length == 0 || value < self.low {
            return 0;
        }
        if value > self.sorted[length - 1] {
            return length;
        }
        let cell = self.cell(value);
        let (start, end) = (self.starts[cell], self.starts[cell + 1]);
        start + self.sorted[start..end].partition_point(|&x| before(x))
    }

    /// Inputs below `t`.
    fn below(&self, t: f64) -> usize {
        self.prefix(t, |x| x < t)
    }

    /// Inputs at most `t`.
    fn at_most(&self, t: f64) -> usize {
        self.prefix(t, |x| x <= t)
    }
}

/// Count `grads` (`rows × numel`, row-major) in `bins`; with `values` (`numel`, the
/// parameter's values in the same order) and `value_bins`, a 2-D histogram.
pub(super) fn count(
    grads: &[f32],
    rows: usize,
    bins: Bins,
    values: Option<(&[f32], Bins)>,
) -> Vec<f64> {
    let numel = grads.len() / rows.max(1);
    let columns = values.map_or(1, |(_, value_bins)| value_bins.count);
    let value_index: Option<Vec<usize>> = values.map(|(values, value_bins)| {
        values
            .iter()
            .map(|&v| value_bins.index(f64::from(v)))
            .collect()
    });
    let index = bins.indexer();
    on_two_threads(rows, bins.count * columns, |range, counts| {
        for row in range {
            let row = &grads[row * numel..(row + 1) * numel];
            match &value_index {
                None => {
                    for &g in row {
                        counts[index(f64::from(g))] += 1.0;
                    }
                }
                Some(value_index) => {
                    for (&g, &v) in row.iter().zip(value_index) {
                        counts[index(f64::from(g)) * columns + v] += 1.0;
                    }
                }
            }
        }
    })
}

/// The 1-D histogram of every `δₙᵢ xₙⱼ` for `delta` (`B × out`) and `inputs` (`B × in`),
/// row-major: for each sample its inputs sorted once, and for each output `i` and inner edge
/// `e` the inputs with `δₙᵢ x < e` counted by binary search for `e / δₙᵢ`.
pub(super) fn count_outer(delta: &[f32], inputs: &[f32], batch: usize, bins: Bins) -> Vec<f64> {
    let outputs = delta.len() / batch.max(1);
    let width = inputs.len() / batch.max(1);
    let edges = bins.inner_edges();
    // below[k]: the products below inner edge k.
    let below = on_two_threads(batch, edges.len(), |range, below| {
        for n in range {
            let index = SortedIndex::new(&inputs[n * width..(n + 1) * width]);
            for &d in &delta[n * outputs..(n + 1) * outputs] {
                let d = f64::from(d);
                for (count, &edge) in below.iter_mut().zip(&edges) {
                    let under = if d > 0.0 {
                        // δx < e ⇔ x < e/δ
                        index.below(edge / d)
                    } else if d < 0.0 {
                        // δx < e ⇔ x > e/δ
                        width - index.at_most(edge / d)
                    } else if edge > 0.0 {
                        width // every product is 0
                    } else {
                        0
                    };
                    *count += under as f64;
                }
            }
        }
    });
    let total = (batch * outputs * width) as f64;
    let mut counts = Vec::with_capacity(bins.count);
    let mut previous = 0.0;
    for below in below.iter().copied().chain(std::iter::once(total)) {
        counts.push(below - previous);
        previous = below;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "timing"]
    fn timing_of_counting() {
        let (batch, outputs, width) = (128, 128, 3136);
        let mut state = 1u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let delta: Vec<f32> = (0..batch * outputs).map(|_| next() * 0.01).collect();
        let inputs: Vec<f32> = (0..batch * width).map(|_| next().max(0.0)).collect();
        let grads: Vec<f32> = (0..batch * 18432).map(|_| next() * 0.02).collect();
        let bins = Bins {
            count: 100,
            low: -0.05,
            high: 0.05,
        };
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let counted = count_outer(&delta, &inputs, batch, bins);
            let outer = t.elapsed();
            let t = std::time::Instant::now();
            let formed = count(&grads, batch, bins, None);
            println!(
                "outer {:?} ({}), formed {:?} ({})",
                outer,
                counted.iter().sum::<f64>(),
                t.elapsed(),
                formed.iter().sum::<f64>()
            );
        }
    }

    #[test]
    fn outer_products_are_counted_as_if_formed() {
        let delta = [0.5f32, -2.0, 0.0, 1.0, 0.25, -0.75];
        let inputs = [0.1f32, -0.3, 0.0, 0.7, 0.2, -0.05, 0.4, 0.0];
        let bins = Bins {
            count: 7,
            low: -0.6,
            high: 0.6,
        };
        let counted = count_outer(&delta, &inputs, 2, bins);
        let mut formed = vec![0.0; 7];
        for n in 0..2 {
            for i in 0..3 {
                for j in 0..4 {
                    formed
                        [bins.index(f64::from(delta[n * 3 + i]) * f64::from(inputs[n * 4 + j]))] +=
                        1.0;
                }
            }
        }
        assert_eq!(counted, formed);
        assert_eq!(
            count(&[0.1, 0.7, -0.7, 0.0], 2, bins, None)
                .iter()
                .sum::<f64>(),
            4.0
        );
    }
}
