//! Events to monitors and records to sinks: dispatch and routing of what monitors logged and
//! wrote, weight histograms, and the records the loop emits.

use tch::{Device, Kind};
use vigil_plugin_api::ArtifactKind;

use super::Trainer;
use crate::error::{Error, Result};
use crate::plugin::{EventData, PluginHost};
use crate::sink::{unix_time, Histogram, Record, RecordKind, Sink};

impl Trainer {
    /// Dispatch one event and route what the monitors logged.
    pub(super) fn notify(
        &self,
        plugins: &mut PluginHost,
        sinks: &mut [Box<dyn Sink>],
        event: EventData<'_>,
    ) -> Result<()> {
        if !plugins.wants(event.kind) {
            return Ok(());
        }
        let mut scalars = Vec::new();
        let dispatched = plugins.dispatch(&event, &self.services(), &mut scalars);
        write_monitor_scalars(
            sinks,
            scalars,
            event.counters.epoch as usize,
            event.counters.global_step,
        )?;
        for (monitor, path, kind) in plugins.take_artifacts() {
            if kind != ArtifactKind::PNG {
                continue;
            }
            // The file was just written; TensorBoard shows it under a tag that stays the
            // same from epoch to epoch, so its slider steps through them.
            let png = std::fs::read(&path).map_err(|source| Error::io(&path, source))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let tag = format!("{monitor}/{name}");
            for sink in sinks.iter_mut() {
                sink.image(&tag, event.counters.global_step, unix_time(), &png)?;
            }
        }
        dispatched
    }

    /// A histogram of every parameter's values, under `weights/<name>`.
    pub(super) fn write_weight_histograms(&self, sinks: &mut [Box<dyn Sink>]) -> Result<()> {
        let _no_grad = tch::no_grad_guard();
        for (name, parameter) in self.parameter_names.iter().zip(&self.parameters) {
            let values = Vec::<f32>::try_from(
                &parameter
                    .f_to_device(Device::Cpu)?
                    .f_to_kind(Kind::Float)?
                    .f_reshape([-1])?,
            )?;
            let histogram = Histogram::of(&values, 30);
            let tag = format!("weights/{name}");
            for sink in sinks.iter_mut() {
                sink.histogram(&tag, self.progress.global_step, unix_time(), &histogram)?;
            }
        }
        Ok(())
    }

    pub(super) fn record(&self, kind: RecordKind, metrics: Vec<(String, f64)>) -> Record {
        Record {
            kind,
            source: None,
            epoch: self.progress.epoch,
            global_step: self.progress.global_step,
            wall_time: unix_time(),
            metrics,
        }
    }
}

/// One record per monitor for the scalars monitors logged at one event.
pub(super) fn write_monitor_scalars(
    sinks: &mut [Box<dyn Sink>],
    scalars: Vec<(String, String, f64)>,
    epoch: usize,
    global_step: u64,
) -> Result<()> {
    let mut records: Vec<Record> = Vec::new();
    for (monitor, metric, value) in scalars {
        match records
            .iter_mut()
            .find(|r| r.source.as_deref() == Some(monitor.as_str()))
        {
            Some(record) => record.metrics.push((metric, value)),
            None => records.push(Record {
                kind: RecordKind::Monitor,
                source: Some(monitor),
                epoch,
                global_step,
                wall_time: unix_time(),
                metrics: vec![(metric, value)],
            }),
        }
    }
    for record in &records {
        for sink in sinks.iter_mut() {
            sink.write(record)?;
        }
    }
    Ok(())
}
