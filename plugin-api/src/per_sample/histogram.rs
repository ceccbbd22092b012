//! The histogram queries' layouts: what [`HISTOGRAM`](super::HISTOGRAM) counts and answers,
//! and what [`LOG_HISTOGRAM`](super::LOG_HISTOGRAM) hands the host.

use super::{malformed, put_f64s, Words, HISTOGRAM, LOG_HISTOGRAM};
use crate::Error;

/// What [`HISTOGRAM`] counts: the elements of every individual gradient `gₙ` in `bins`
/// equal bins over `[low, high]`, values outside clamped into the first or last bin (as
/// Cockpit's `GradHist1d` does); with `value_bins > 0`, a 2-D histogram of each element
/// against its parameter's value over `[value_low, value_high]`. 48 bytes: `bins` (`u64`),
/// `low`, `high` (`f64`), `value_bins` (`u64`), `value_low`, `value_high` (`f64`).
///
/// ```
/// use vigil_plugin_api::per_sample::HistogramSpec;
/// let spec = HistogramSpec::one_d(100, -2.0, 2.0);
/// assert_eq!(HistogramSpec::decode(&spec.encode())?, spec);
/// assert!(HistogramSpec::decode(&HistogramSpec::one_d(0, -2.0, 2.0).encode()).is_err());
/// # Ok::<(), vigil_plugin_api::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistogramSpec {
    /// Bins over the gradient elements.
    pub bins: u64,
    /// The first bin's lower edge.
    pub low: f64,
    /// The last bin's upper edge.
    pub high: f64,
    /// Bins over the parameter values; 0 for a 1-D histogram.
    pub value_bins: u64,
    /// The first value bin's lower edge.
    pub value_low: f64,
    /// The last value bin's upper edge.
    pub value_high: f64,
}

impl HistogramSpec {
    /// A 1-D histogram.
    pub fn one_d(bins: u64, low: f64, high: f64) -> Self {
        HistogramSpec {
            bins,
            low,
            high,
            value_bins: 0,
            value_low: 0.0,
            value_high: 0.0,
        }
    }

    /// The 48 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48);
        out.extend(self.bins.to_le_bytes());
        out.extend(self.low.to_le_bytes());
        out.extend(self.high.to_le_bytes());
        out.extend(self.value_bins.to_le_bytes());
        out.extend(self.value_low.to_le_bytes());
        out.extend(self.value_high.to_le_bytes());
        out
    }

    /// Read what [`HistogramSpec::encode`] wrote; an error for no bins, more than 4096 in a
    /// dimension, or an empty or non-finite range.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut words = Words::new(bytes, HISTOGRAM);
        let spec = HistogramSpec {
            bins: words.u64()?,
            low: words.f64()?,
            high: words.f64()?,
            value_bins: words.u64()?,
            value_low: words.f64()?,
            value_high: words.f64()?,
        };
        words.end()?;
        let range_ok = |low: f64, high: f64| low.is_finite() && high.is_finite() && low < high;
        let bad = spec.bins == 0
            || spec.bins > 4096
            || spec.value_bins > 4096
            || !range_ok(spec.low, spec.high)
            || (spec.value_bins > 0 && !range_ok(spec.value_low, spec.value_high));
        if bad {
            return Err(Error::Host(format!(
                "{HISTOGRAM} needs 1 to 4096 bins over a finite range low < high (and 0 to 4096 value bins); got {spec:?}"
            )));
        }
        Ok(spec)
    }
}

/// The answer to [`HISTOGRAM`]: per trainable parameter, `bins × max(value_bins, 1)` counts
/// (row-major: gradient bin, then value bin). Layout: `P`, `bins`, `value_bins` (`u64`), then
/// `P × bins × max(value_bins, 1)` little-endian `f64` counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Histograms {
    /// Bins over the gradient elements.
    pub bins: usize,
    /// Bins over parameter values (0: 1-D).
    pub value_bins: usize,
    /// One histogram per parameter.
    pub counts: Vec<Vec<f64>>,
}

impl Histograms {
    /// The counts summed over parameters.
    pub fn total(&self) -> Vec<f64> {
        let mut total = vec![0.0; self.bins * self.value_bins.max(1)];
        for counts in &self.counts {
            for (sum, count) in total.iter_mut().zip(counts) {
                *sum += count;
            }
        }
        total
    }

    /// The encoded answer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for word in [self.counts.len(), self.bins, self.value_bins] {
            out.extend((word as u64).to_le_bytes());
        }
        for counts in &self.counts {
            out.extend(counts.iter().flat_map(|c| c.to_le_bytes()));
        }
        out
    }

    /// Read what [`Histograms::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut words = Words::new(bytes, HISTOGRAM);
        let (parameters, bins, value_bins) =
            (words.count()?, words.u64()? as usize, words.u64()? as usize);
        let cells = bins.saturating_mul(value_bins.max(1));
        if parameters.saturating_mul(cells) != words.bytes.len() / 8 {
            return Err(malformed(HISTOGRAM, "counts do not fill the shape".into()));
        }
        let counts = (0..parameters)
            .map(|_| words.f64s(cells))
            .collect::<Result<Vec<_>, Error>>()?;
        words.end()?;
        Ok(Histograms {
            bins,
            value_bins,
            counts,
        })
    }
}

/// A histogram for the host's sinks: the input of [`LOG_HISTOGRAM`]. Bucket `i` counts values
/// in `(limits[i-1], limits[i]]` (the first from `low`). Layout: the tag's length (`u64`) and
/// UTF-8 bytes, `low` (`f64`), then `limits` and `counts`, each a `u64` length and that many
/// `f64`s.
///
/// ```
/// use vigil_plugin_api::per_sample::HistogramRecord;
/// let record = HistogramRecord { tag: "grads/all".into(), low: -1.0, limits: vec![0.0, 1.0], counts: vec![3.0, 4.0] };
/// assert_eq!(HistogramRecord::decode(&record.encode())?, record);
/// # Ok::<(), vigil_plugin_api::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramRecord {
    /// The tag (`gradient-histogram/all`); the host puts it under the monitor's name.
    pub tag: String,
    /// The first bucket's lower edge.
    pub low: f64,
    /// Each bucket's upper edge, increasing.
    pub limits: Vec<f64>,
    /// Each bucket's count.
    pub counts: Vec<f64>,
}

impl HistogramRecord {
    /// The encoded input.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = (self.tag.len() as u64).to_le_bytes().to_vec();
        out.extend(self.tag.as_bytes());
        out.extend(self.low.to_le_bytes());
        put_f64s(&mut out, &self.limits);
        put_f64s(&mut out, &self.counts);
        out
    }

    /// Read what [`HistogramRecord::encode`] wrote; an error unless the limits increase and
    /// match the counts in number.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut words = Words::new(bytes, LOG_HISTOGRAM);
        let length = words.u64()? as usize;
        let rest = words.rest();
        if rest.len() < length {
            return Err(malformed(LOG_HISTOGRAM, "the tag runs past the end".into()));
        }
        let tag = std::str::from_utf8(&rest[..length])
            .map_err(|_| malformed(LOG_HISTOGRAM, "the tag is not UTF-8".into()))?
            .to_string();
        let mut words = Words::new(&rest[length..], LOG_HISTOGRAM);
        let low = words.f64()?;
        let count = words.count()?;
        let limits = words.f64s(count)?;
        let count = words.count()?;
        let counts = words.f64s(count)?;
        words.end()?;
        let increasing = std::iter::once(low)
            .chain(limits.iter().copied())
            .collect::<Vec<_>>()
            .windows(2)
            .all(|pair| pair[0] < pair[1]);
        if limits.is_empty() || limits.len() != counts.len() || !increasing {
            return Err(Error::Host(format!(
                "{LOG_HISTOGRAM} needs as many increasing limits (above `low`) as counts; got {} limits and {} counts",
                limits.len(),
                counts.len()
            )));
        }
        Ok(HistogramRecord {
            tag,
            low,
            limits,
            counts,
        })
    }
}
