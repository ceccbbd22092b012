//! Statistics of the individual gradients and of the parameters' motion (API 1.4): the
//! queries the host answers to monitors that subscribed to [`Subscriptions::PER_SAMPLE`] or
//! [`Subscriptions::PARAMETER_MOTION`](crate::Subscriptions::PARAMETER_MOTION), and their
//! byte layouts.
//!
//! For a batch of `B` samples with losses `ℓₙ`, the training loss is `L = (1/B) Σₙ ℓₙ` and its
//! gradient `ḡ = (1/B) Σₙ gₙ`, where `gₙ = ∇ℓₙ` is sample `n`'s **individual gradient**. (Not
//! BackPACK's `grad_batch`, which is `gₙ / B`.) The host computes these from the same backward
//! pass the step runs: for a linear or convolution layer from its input and output gradient,
//! without materialising `gₙ` for a whole model.
//!
//! | name | when | input | answer | typed method |
//! |---|---|---|---|---|
//! | [`SCHEDULE`] | any event | [`Schedule`] | empty | [`Context::schedule_per_sample`](crate::Context::schedule_per_sample) |
//! | [`STATS`] | `train_batch_end` of a scheduled step | none | [`PerSampleStats`] | [`Context::per_sample_stats`](crate::Context::per_sample_stats) |
//! | [`SECOND_MOMENT`] | the same | none | `Σₙ gₙ²` as `f32`s ([`decode_f32s`]) | [`Context::per_sample_second_moment`](crate::Context::per_sample_second_moment) |
//! | [`HISTOGRAM`] | the same | [`HistogramSpec`] | [`Histograms`] | [`Context::per_sample_histograms`](crate::Context::per_sample_histograms) |
//! | [`LAST_UPDATE`] | `train_batch_end` after a scheduled step | none | [`LastUpdate`] | [`Context::last_update`](crate::Context::last_update) |
//! | [`DISTANCE`] | `train_batch_end` | none | `‖θ − θ₀‖` per parameter ([`decode_f64s`]) | [`Context::distance_from_init`](crate::Context::distance_from_init) |
//! | [`LOG_HISTOGRAM`] | any event | [`HistogramRecord`] | empty | [`Context::log_histogram`](crate::Context::log_histogram) |
//!
//! A monitor that subscribed and never called [`SCHEDULE`] is served at every step. A model
//! whose individual gradients are not defined (batch norm in training mode) answers
//! [`STATS`], [`SECOND_MOMENT`] and [`HISTOGRAM`] with an error that says so; [`LAST_UPDATE`]
//! and [`DISTANCE`] do not need individual gradients.
//!
//! ```
//! use vigil_plugin_api::per_sample::{PerSampleStats, ParameterStats};
//! let stats = PerSampleStats {
//!     parameters: vec![ParameterStats { grad_sq_norm: 1.0, sum_sq_norms: 9.0, sum_sq_projections: 5.0 }],
//!     sq_norms: vec![4.0, 5.0],
//!     projections: vec![2.0, 1.0],
//!     losses: vec![0.5, 0.25],
//! };
//! assert_eq!(PerSampleStats::decode(&stats.encode())?, stats);
//! assert_eq!(stats.batch_size(), 2);
//! # Ok::<(), vigil_plugin_api::Error>(())
//! ```

use crate::Error;

mod histogram;

pub use histogram::{HistogramRecord, HistogramSpec, Histograms};

/// Which steps a monitor needs individual gradients (or the parameters' motion) at: see
/// [`Schedule`].
pub const SCHEDULE: &str = "vigil.per_sample.schedule";
/// This step's statistics of the individual gradients: see [`PerSampleStats`].
pub const STATS: &str = "vigil.per_sample.stats";
/// `Σₙ gₙ²`, coordinate by coordinate, in the flattened gradient's order (parameter by
/// parameter, each in row-major order): consecutive little-endian `f32`s.
pub const SECOND_MOMENT: &str = "vigil.per_sample.second_moment";
/// Histograms of the individual gradients' elements: see [`HistogramSpec`] and [`Histograms`].
pub const HISTOGRAM: &str = "vigil.per_sample.histogram";
/// The last update the optimizer made at a scheduled step: see [`LastUpdate`].
pub const LAST_UPDATE: &str = "vigil.parameters.last_update";
/// `‖θ − θ₀‖` per trainable parameter, `θ₀` the weights training started from (kept across
/// `--resume`): consecutive little-endian `f64`s.
pub const DISTANCE: &str = "vigil.parameters.distance";
/// Hand the host a histogram for its sinks (TensorBoard's histogram view): see
/// [`HistogramRecord`].
pub const LOG_HISTOGRAM: &str = "vigil.log.histogram";

/// Every name this module defines.
pub const ALL: [&str; 7] = [
    SCHEDULE,
    STATS,
    SECOND_MOMENT,
    HISTOGRAM,
    LAST_UPDATE,
    DISTANCE,
    LOG_HISTOGRAM,
];

fn malformed(query: &str, what: String) -> Error {
    Error::Host(format!("malformed `{query}` bytes: {what}"))
}

/// Little-endian words, read one after another, with the query's name for errors.
struct Words<'a> {
    bytes: &'a [u8],
    query: &'static str,
}

impl<'a> Words<'a> {
    fn new(bytes: &'a [u8], query: &'static str) -> Self {
        Words { bytes, query }
    }

    fn take(&mut self) -> Result<[u8; 8], Error> {
        if self.bytes.len() < 8 {
            return Err(malformed(self.query, "ends early".into()));
        }
        let (word, rest) = self.bytes.split_at(8);
        self.bytes = rest;
        Ok(word.try_into().expect("eight bytes"))
    }

    fn u64(&mut self) -> Result<u64, Error> {
        self.take().map(u64::from_le_bytes)
    }

    fn f64(&mut self) -> Result<f64, Error> {
        self.take().map(f64::from_le_bytes)
    }

    fn count(&mut self) -> Result<usize, Error> {
        let count = self.u64()? as usize;
        if count > self.bytes.len() / 8 + 1 {
            return Err(malformed(
                self.query,
                format!("a count of {count} past the end"),
            ));
        }
        Ok(count)
    }

    fn f64s(&mut self, count: usize) -> Result<Vec<f64>, Error> {
        (0..count).map(|_| self.f64()).collect()
    }

    fn rest(self) -> &'a [u8] {
        self.bytes
    }

    fn end(self) -> Result<(), Error> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(malformed(
                self.query,
                format!("{} bytes left over", self.bytes.len()),
            ))
        }
    }
}

fn put_f64s(out: &mut Vec<u8>, values: &[f64]) {
    out.extend((values.len() as u64).to_le_bytes());
    out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
}

/// The steps a monitor needs served: step `s` when `s % every < span` (`every ≥ 1`,
/// `1 ≤ span ≤ every`). A step-size instrument that compares a step with the next asks for
/// `span = 2`. Sixteen bytes: `every` and `span` as little-endian `u64`.
///
/// ```
/// use vigil_plugin_api::per_sample::Schedule;
/// let schedule = Schedule { every: 16, span: 2 };
/// assert!(schedule.covers(32) && schedule.covers(33) && !schedule.covers(34));
/// assert_eq!(Schedule::decode(&schedule.encode())?, schedule);
/// assert!(Schedule::decode(&Schedule { every: 0, span: 1 }.encode()).is_err());
/// # Ok::<(), vigil_plugin_api::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// The period, in steps.
    pub every: u64,
    /// How many consecutive steps from each multiple of `every`.
    pub span: u64,
}

impl Schedule {
    /// Every step.
    pub const EVERY_STEP: Schedule = Schedule { every: 1, span: 1 };

    /// Whether global step `step` is served.
    pub fn covers(&self, step: u64) -> bool {
        step % self.every.max(1) < self.span
    }

    /// The 16 bytes.
    pub fn encode(&self) -> Vec<u8> {
        [self.every, self.span]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }

    /// Read what [`Schedule::encode`] wrote; an error unless `1 ≤ span ≤ every`.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut words = Words::new(bytes, SCHEDULE);
        let schedule = Schedule {
            every: words.u64()?,
            span: words.u64()?,
        };
        words.end()?;
        if schedule.every == 0 || schedule.span == 0 || schedule.span > schedule.every {
            return Err(Error::Host(format!(
                "{SCHEDULE} needs 1 ≤ span ≤ every; got every {} and span {}",
                schedule.every, schedule.span
            )));
        }
        Ok(schedule)
    }
}

/// One trainable parameter's part of [`PerSampleStats`] (in parameter order, as
/// [`Context::parameters`](crate::Context::parameters)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParameterStats {
    /// `‖ḡ‖²` of this parameter.
    pub grad_sq_norm: f64,
    /// `Σₙ ‖gₙ‖²` of this parameter.
    pub sum_sq_norms: f64,
    /// `Σₙ (gₙ · ḡ)²` with both restricted to this parameter.
    pub sum_sq_projections: f64,
}

/// The statistics of one step's individual gradients: the answer to [`STATS`].
///
/// Layout: the parameter count `P` (`u64`), `P × 3` `f64`s (each [`ParameterStats`] in field
/// order), then three arrays, each a `u64` length and that many `f64`s: `sq_norms`,
/// `projections`, `losses`. All little-endian.
#[derive(Debug, Clone, PartialEq)]
pub struct PerSampleStats {
    /// Per trainable parameter.
    pub parameters: Vec<ParameterStats>,
    /// `‖gₙ‖²` over the whole model, per sample.
    pub sq_norms: Vec<f64>,
    /// `gₙ · ḡ` over the whole model, per sample.
    pub projections: Vec<f64>,
    /// `ℓₙ`, per sample.
    pub losses: Vec<f64>,
}

impl PerSampleStats {
    /// `B`, the samples in the batch.
    pub fn batch_size(&self) -> usize {
        self.losses.len()
    }

    /// `‖ḡ‖²` over the whole model.
    pub fn grad_sq_norm(&self) -> f64 {
        self.parameters.iter().map(|p| p.grad_sq_norm).sum()
    }

    /// The encoded answer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend((self.parameters.len() as u64).to_le_bytes());
        for p in &self.parameters {
            for value in [p.grad_sq_norm, p.sum_sq_norms, p.sum_sq_projections] {
                out.extend(value.to_le_bytes());
            }
        }
        for array in [&self.sq_norms, &self.projections, &self.losses] {
            put_f64s(&mut out, array);
        }
        out
    }

    /// Read what [`PerSampleStats::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut words = Words::new(bytes, STATS);
        let count = words.count()?;
        let parameters = (0..count)
            .map(|_| {
                Ok(ParameterStats {
                    grad_sq_norm: words.f64()?,
                    sum_sq_norms: words.f64()?,
                    sum_sq_projections: words.f64()?,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let mut array = || -> Result<Vec<f64>, Error> {
            let count = words.count()?;
            words.f64s(count)
        };
        let (sq_norms, projections, losses) = (array()?, array()?, array()?);
        words.end()?;
        if sq_norms.len() != losses.len() || projections.len() != losses.len() {
            return Err(malformed(
                STATS,
                "per-sample arrays of different lengths".into(),
            ));
        }
        Ok(PerSampleStats {
            parameters,
            sq_norms,
            projections,
            losses,
        })
    }
}

/// The last update the optimizer made at a scheduled step `d = θ_{s+1} − θ_s`, answered at
/// the following steps' `train_batch_end`: the answer to [`LAST_UPDATE`].
///
/// Layout: `step` (`u64`), then three arrays, each a `u64` length and that many `f64`s:
/// `sq_norms`, `before`, `after`.
#[derive(Debug, Clone, PartialEq)]
pub struct LastUpdate {
    /// The step `s` that made the update.
    pub step: u64,
    /// `‖d‖²` per trainable parameter.
    pub sq_norms: Vec<f64>,
    /// `gₙ(θ_s) · d` for step `s`'s samples, when step `s` had individual gradients; else
    /// empty.
    pub before: Vec<f64>,
    /// `gₙ(θ_{s+1}) · d` for this step's samples, when this step is step `s + 1` and has
    /// individual gradients; else empty.
    pub after: Vec<f64>,
}

impl LastUpdate {
    /// `‖d‖` over the whole model.
    pub fn norm(&self) -> f64 {
        self.sq_norms.iter().sum::<f64>().sqrt()
    }

    /// The encoded answer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.step.to_le_bytes().to_vec();
        for array in [&self.sq_norms, &self.before, &self.after] {
            put_f64s(&mut out, array);
        }
        out
    }

    /// Read what [`LastUpdate::encode`] wrote.
    ///
    /// ```
    /// use vigil_plugin_api::per_sample::LastUpdate;
    /// let update = LastUpdate { step: 7, sq_norms: vec![9.0, 16.0], before: vec![1.0], after: vec![] };
    /// assert_eq!(LastUpdate::decode(&update.encode())?, update);
    /// assert_eq!(update.norm(), 5.0);
    /// # Ok::<(), vigil_plugin_api::Error>(())
    /// ```
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut words = Words::new(bytes, LAST_UPDATE);
        let step = words.u64()?;
        let mut array = || -> Result<Vec<f64>, Error> {
            let count = words.count()?;
            words.f64s(count)
        };
        let (sq_norms, before, after) = (array()?, array()?, array()?);
        words.end()?;
        Ok(LastUpdate {
            step,
            sq_norms,
            before,
            after,
        })
    }
}

/// Consecutive little-endian `f32`s ([`SECOND_MOMENT`]).
pub fn decode_f32s(query: &str, bytes: &[u8]) -> Result<Vec<f32>, Error> {
    if bytes.len() % 4 != 0 {
        return Err(Error::Host(format!(
            "malformed `{query}` answer: {} bytes is not a whole number of f32s",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|w| f32::from_le_bytes(w.try_into().expect("four bytes")))
        .collect())
}

/// Consecutive little-endian `f64`s ([`DISTANCE`]).
pub fn decode_f64s(query: &str, bytes: &[u8]) -> Result<Vec<f64>, Error> {
    if bytes.len() % 8 != 0 {
        return Err(Error::Host(format!(
            "malformed `{query}` answer: {} bytes is not a whole number of f64s",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|w| f64::from_le_bytes(w.try_into().expect("eight bytes")))
        .collect())
}

/// Consecutive little-endian `f64`s, the encoding [`decode_f64s`] reads.
pub fn encode_f64s(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_and_padded_answers_are_errors_that_name_the_query() {
        let stats = PerSampleStats {
            parameters: vec![],
            sq_norms: vec![1.0],
            projections: vec![1.0],
            losses: vec![1.0],
        };
        let bytes = stats.encode();
        let err = PerSampleStats::decode(&bytes[..bytes.len() - 3])
            .unwrap_err()
            .to_string();
        assert!(err.contains(STATS), "{err}");
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(PerSampleStats::decode(&padded).is_err());
        assert!(Histograms::decode(&[1, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(HistogramRecord::decode(
            &HistogramRecord {
                tag: "t".into(),
                low: 1.0,
                limits: vec![0.5],
                counts: vec![1.0],
            }
            .encode()
        )
        .is_err());
    }

    #[test]
    fn histograms_round_trip_and_sum_over_parameters() {
        let histograms = Histograms {
            bins: 2,
            value_bins: 0,
            counts: vec![vec![1.0, 2.0], vec![3.0, 4.0]],
        };
        assert_eq!(
            Histograms::decode(&histograms.encode()).unwrap(),
            histograms
        );
        assert_eq!(histograms.total(), vec![4.0, 6.0]);
    }
}
