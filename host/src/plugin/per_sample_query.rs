//! The host's answers to API 1.4's per-sample queries ([`per_sample`]): the schedule, the
//! statistics, histograms and the parameters' motion, from [`super::HostServices`].

use vigil_plugin_api::per_sample;
use vigil_plugin_api::EventKind;

use super::host_view::HostView;

impl HostView<'_> {
    /// The queries of API 1.4's [`per_sample`] module.
    pub(super) fn per_sample_query(&mut self, name: &str, input: &[u8]) -> crate::Result<Vec<u8>> {
        let at_batch_end = || {
            if self.event.kind == EventKind::TRAIN_BATCH_END {
                Ok(())
            } else {
                Err(crate::Error::Capability(format!(
                    "{name} works at train_batch_end, not at {}",
                    self.event.kind.name()
                )))
            }
        };
        let host = |err: vigil_plugin_api::Error| crate::Error::Capability(err.to_string());
        match name {
            per_sample::SCHEDULE => {
                let schedule = per_sample::Schedule::decode(input).map_err(host)?;
                self.services.schedule_per_sample(self.monitor, schedule)?;
                Ok(Vec::new())
            }
            per_sample::STATS => {
                at_batch_end()?;
                Ok(self.services.per_sample_stats()?.encode())
            }
            per_sample::SECOND_MOMENT => {
                at_batch_end()?;
                let values = self.services.per_sample_second_moment()?;
                Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())
            }
            per_sample::HISTOGRAM => {
                at_batch_end()?;
                let spec = per_sample::HistogramSpec::decode(input).map_err(host)?;
                Ok(self.services.per_sample_histograms(&spec)?.encode())
            }
            per_sample::LAST_UPDATE => {
                at_batch_end()?;
                Ok(self.services.last_update()?.encode())
            }
            per_sample::DISTANCE => {
                at_batch_end()?;
                Ok(per_sample::encode_f64s(
                    &self.services.distance_from_init()?,
                ))
            }
            // per_sample::LOG_HISTOGRAM, the one name left of per_sample::ALL
            _ => {
                let record = per_sample::HistogramRecord::decode(input).map_err(host)?;
                self.outputs.histograms.push((self.monitor, record));
                Ok(Vec::new())
            }
        }
    }
}
