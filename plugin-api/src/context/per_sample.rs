//! [`Context`]'s typed methods for the queries of [`crate::per_sample`] (API 1.4).

use crate::per_sample;
use crate::{Context, Error};

impl Context<'_> {
    /// Ask for individual-gradient statistics (and the parameters' motion) at the steps
    /// `schedule` covers instead of every step ([`per_sample::SCHEDULE`]); from the next step
    /// on. Call it from `new`: a resumed run calls `restore_state`, not `fit_start`.
    ///
    /// ```
    /// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) -> Result<(), vigil_plugin_api::Error> {
    /// use vigil_plugin_api::per_sample::Schedule;
    /// ctx.schedule_per_sample(Schedule { every: 16, span: 1 })?;
    /// # Ok(()) }
    /// ```
    pub fn schedule_per_sample(&mut self, schedule: per_sample::Schedule) -> Result<(), Error> {
        self.query(per_sample::SCHEDULE, &schedule.encode())
            .map(drop)
    }

    /// This step's statistics of the individual gradients ([`per_sample::STATS`]), at
    /// `train_batch_end` of a scheduled step.
    ///
    /// ```
    /// # fn hook(ctx: &mut vigil_plugin_api::Context<'_>) -> Result<(), vigil_plugin_api::Error> {
    /// let stats = ctx.per_sample_stats()?;
    /// let b = stats.batch_size() as f64;
    /// let variance = (stats.sq_norms.iter().sum::<f64>() - b * stats.grad_sq_norm()) / (b - 1.0);
    /// # Ok(()) }
    /// ```
    pub fn per_sample_stats(&mut self) -> Result<per_sample::PerSampleStats, Error> {
        per_sample::PerSampleStats::decode(&self.query(per_sample::STATS, &[])?)
    }

    /// `Σₙ gₙ²` per coordinate, in the flattened gradient's order
    /// ([`per_sample::SECOND_MOMENT`]).
    pub fn per_sample_second_moment(&mut self) -> Result<Vec<f32>, Error> {
        let answer = self.query(per_sample::SECOND_MOMENT, &[])?;
        per_sample::decode_f32s(per_sample::SECOND_MOMENT, &answer)
    }

    /// Histograms of the individual gradients' elements ([`per_sample::HISTOGRAM`]).
    pub fn per_sample_histograms(
        &mut self,
        spec: per_sample::HistogramSpec,
    ) -> Result<per_sample::Histograms, Error> {
        per_sample::Histograms::decode(&self.query(per_sample::HISTOGRAM, &spec.encode())?)
    }

    /// The last update the optimizer made at a scheduled step ([`per_sample::LAST_UPDATE`]).
    pub fn last_update(&mut self) -> Result<per_sample::LastUpdate, Error> {
        per_sample::LastUpdate::decode(&self.query(per_sample::LAST_UPDATE, &[])?)
    }

    /// `‖θ − θ₀‖` per trainable parameter ([`per_sample::DISTANCE`]).
    pub fn distance_from_init(&mut self) -> Result<Vec<f64>, Error> {
        let answer = self.query(per_sample::DISTANCE, &[])?;
        per_sample::decode_f64s(per_sample::DISTANCE, &answer)
    }

    /// A histogram for the host's sinks (TensorBoard), tagged under the monitor's name
    /// ([`per_sample::LOG_HISTOGRAM`]).
    pub fn log_histogram(&mut self, record: &per_sample::HistogramRecord) -> Result<(), Error> {
        self.query(per_sample::LOG_HISTOGRAM, &record.encode())
            .map(drop)
    }
}
