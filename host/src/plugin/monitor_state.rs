//! Monitor state across `--resume`: asking each monitor for its state at a checkpoint
//! (`SAVE_STATE`), and handing it back on resume (`RESTORE_STATE` instead of `FIT_START`), or
//! starting the monitor fresh when it keeps none.

use vigil_plugin_api::{EventKind, StepCounters};

use super::{Disabled, EventData, HostServices, PluginHost};
use crate::error::Result;

/// A monitor's part of a checkpoint, as [`PluginHost::save_states`] collects it.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorSnapshot {
    pub name: String,
    pub plugin_version: String,
    pub api_version: String,
    /// Whether the plugin takes part in saving state.
    pub saves_state: bool,
    /// What the monitor returned from `save_state`, if anything.
    pub state: Option<Vec<u8>>,
    /// Why the monitor had been disabled, if it had.
    pub disabled: Option<String>,
}

impl PluginHost {
    /// Ask every monitor for its state (`save_state`), for a checkpoint at `counters`.
    pub fn save_states(
        &mut self,
        counters: StepCounters,
        services: &dyn HostServices,
    ) -> Result<Vec<MonitorSnapshot>> {
        self.outputs.saved_states.clear();
        let mut scalars = Vec::new();
        let event = EventData::new(EventKind::SAVE_STATE, counters, &[]);
        self.dispatch(&event, services, &mut scalars)?;
        let mut saved = std::mem::take(&mut self.outputs.saved_states);
        Ok(self
            .monitors
            .iter()
            .enumerate()
            .map(|(index, monitor)| MonitorSnapshot {
                name: monitor.name.clone(),
                plugin_version: monitor.library.info.version.clone(),
                api_version: monitor.library.info.api_version.clone(),
                saves_state: monitor.saves_state(),
                state: saved
                    .iter_mut()
                    .find(|(owner, _)| *owner == index)
                    .map(|(_, bytes)| std::mem::take(bytes)),
                disabled: monitor.disabled.as_ref().map(|d| {
                    format!(
                        "failed in {} at step {}: {}",
                        d.event, d.global_step, d.reason
                    )
                }),
            })
            .collect())
    }

    /// Bring the monitors back on resume from what a checkpoint saved (`saved`, in config
    /// order): a monitor that saved state gets `restore_state` with it; every other one starts
    /// fresh with `fit_start`, and with `epoch_start` (the current epoch's `train_epoch_start`)
    /// when the run resumes mid-epoch. A monitor disabled before the checkpoint stays disabled.
    pub fn resume(
        &mut self,
        saved: &[(MonitorSnapshot, Option<Vec<u8>>)],
        counters: StepCounters,
        epoch_start: Option<&EventData<'_>>,
        services: &dyn HostServices,
        scalars: &mut Vec<super::Scalar>,
    ) -> Result<()> {
        let mut restoring = vec![None; self.monitors.len()];
        for (index, monitor) in self.monitors.iter_mut().enumerate() {
            let entry = saved.get(index).filter(|(s, _)| s.name == monitor.name);
            let note = match entry {
                None => "started fresh: the checkpoint holds nothing for it".to_string(),
                Some((snapshot, _)) if !snapshot.saves_state => format!(
                    "started fresh: the plugin that saved the checkpoint (version {}, built against vigil-plugin-api {}) keeps no state across a resume",
                    snapshot.plugin_version, snapshot.api_version
                ),
                Some((_, None)) => "started fresh: the monitor saved no state".to_string(),
                Some((_, Some(_))) if !monitor.saves_state() => format!(
                    "started fresh: the plugin (built against vigil-plugin-api {}) cannot restore state",
                    monitor.library.info.api_version
                ),
                Some((snapshot, Some(bytes))) => {
                    restoring[index] = Some((snapshot.plugin_version.clone(), bytes.clone()));
                    if snapshot.plugin_version == monitor.library.info.version {
                        "restored".to_string()
                    } else {
                        format!(
                            "restored from state saved by version {} (this is {})",
                            snapshot.plugin_version, monitor.library.info.version
                        )
                    }
                }
            };
            if let Some(disabled) = entry.and_then(|(s, _)| s.disabled.clone()) {
                monitor.disabled = Some(Disabled {
                    event: "before the checkpoint",
                    global_step: counters.global_step,
                    reason: disabled,
                });
            }
            monitor.resumed = Some(note);
        }
        self.refresh_interest();
        self.outputs.restoring = restoring.clone();
        let restore = EventData::new(EventKind::RESTORE_STATE, counters, &[]);
        let restored = self.dispatch_where(&restore, services, scalars, |i| restoring[i].is_some());
        self.outputs.restoring.clear();
        restored?;
        let fresh = |i: usize| restoring[i].is_none();
        let start = EventData::new(EventKind::FIT_START, counters, &[]);
        self.dispatch_where(&start, services, scalars, fresh)?;
        if let Some(event) = epoch_start {
            self.dispatch_where(event, services, scalars, fresh)?;
        }
        Ok(())
    }
}
