//! What the loop hands the run's hub: monitor events, weight histograms, and its records.

use tch::{Device, Kind};

use super::Trainer;
use crate::error::Result;
use crate::hub::{Event, RunHub};
use crate::plugin::EventData;
use crate::sink::{unix_time, Histogram, Record, RecordKind};

impl Trainer {
    /// Hand one monitor event to the hub (nothing is prepared for an event nobody wants).
    pub(super) fn notify(&self, hub: &mut RunHub, event: EventData<'_>) -> Result<()> {
        if !hub.wants(event.kind) {
            return Ok(());
        }
        hub.emit(Event::Monitor(event), &self.services())
    }

    /// A record of the loop's, to every sink.
    pub(super) fn write_record(&self, hub: &mut RunHub, record: Record) -> Result<()> {
        hub.emit(Event::Record(record), &self.services())
    }

    /// A histogram of every parameter's values, under `weights/<name>`.
    pub(super) fn write_weight_histograms(&self, hub: &mut RunHub) -> Result<()> {
        let _no_grad = tch::no_grad_guard();
        for (name, parameter) in self.parameter_names.iter().zip(&self.parameters) {
            let values = Vec::<f32>::try_from(
                &parameter
                    .f_to_device(Device::Cpu)?
                    .f_to_kind(Kind::Float)?
                    .f_reshape([-1])?,
            )?;
            hub.emit(
                Event::Histogram {
                    tag: format!("weights/{name}"),
                    step: self.progress.global_step,
                    histogram: Histogram::of(&values, 30),
                },
                &self.services(),
            )?;
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
