//! What each monitor cost and how it fared, for `run.json`.

use std::time::Duration;

use vigil_plugin_api::EventKind;

use super::PluginHost;
use crate::run_dir::{HookReport, MonitorDisabled, MonitorReport};

impl PluginHost {
    /// Per-monitor load facts and timings for `run.json`; `loop_seconds` is the wall time of
    /// the training loop the shares are relative to.
    pub fn report(&self, loop_seconds: f64) -> Vec<MonitorReport> {
        self.monitors
            .iter()
            .map(|monitor| {
                let total = self
                    .clock
                    .duration(monitor.timings.iter().map(|t| t.ticks).sum());
                let hooks = EventKind::ALL
                    .iter()
                    .zip(&monitor.timings)
                    .filter(|(_, timing)| timing.calls > 0)
                    .map(|(kind, timing)| {
                        let total = self.clock.duration(timing.ticks);
                        let max = self.clock.duration(timing.max_ticks);
                        (
                            kind.name().to_string(),
                            HookReport {
                                calls: timing.calls,
                                total_ms: total.as_secs_f64() * 1e3,
                                mean_us: total.as_secs_f64() * 1e6 / timing.calls as f64,
                                max_us: max.as_secs_f64() * 1e6,
                                share_of_step_time: share(total, loop_seconds),
                            },
                        )
                    })
                    .collect();
                MonitorReport {
                    name: monitor.name.clone(),
                    path: monitor.library.path.display().to_string(),
                    sha256: monitor.library.sha256.clone(),
                    version: monitor.library.info.version.to_string(),
                    api_version: monitor.library.info.api_version.to_string(),
                    status: if monitor.disabled.is_some() {
                        "disabled"
                    } else {
                        "ok"
                    }
                    .into(),
                    saves_state: monitor.saves_state(),
                    resumed: monitor.resumed.clone(),
                    disabled: monitor.disabled.as_ref().map(|d| MonitorDisabled {
                        event: d.event.into(),
                        global_step: d.global_step,
                        reason: d.reason.clone(),
                    }),
                    dropped_non_finite_metrics: monitor.dropped_non_finite,
                    total_ms: total.as_secs_f64() * 1e3,
                    share_of_step_time: share(total, loop_seconds),
                    hooks,
                    // The hub adds what serving the monitor cost outside its hooks.
                    ..MonitorReport::default()
                }
            })
            .collect()
    }
}

fn share(part: Duration, loop_seconds: f64) -> f64 {
    if loop_seconds > 0.0 {
        part.as_secs_f64() / loop_seconds
    } else {
        0.0
    }
}
