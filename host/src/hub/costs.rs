//! What serving each monitor costs the host beyond its hooks: on the training thread, the
//! data prepared for its subscriptions (the flattened gradient, shared among the monitors
//! that read it) and the routing of what it logged and drew to the sinks; on the sinks'
//! threads, the CPU time of writing its records and images. `run.json` reports both beside
//! the hooks' time, so that hooks + service account for what a monitor costs a run.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::run_dir::MonitorReport;

/// Service time by monitor name, on the training thread.
#[derive(Debug, Default)]
pub struct ServiceCosts {
    by_monitor: BTreeMap<String, Duration>,
    /// The sinks' CPU time by source, kept when they were closed.
    closed_sinks: Vec<(String, Duration)>,
}

impl ServiceCosts {
    pub fn keep_sink_cpu(&mut self, spent: Vec<(String, Duration)>) {
        self.closed_sinks = spent;
    }

    pub fn closed_sink_cpu(&self) -> &[(String, Duration)] {
        &self.closed_sinks
    }

    pub fn charge(&mut self, monitor: &str, spent: Duration) {
        match self.by_monitor.get_mut(monitor) {
            Some(total) => *total += spent,
            None => {
                self.by_monitor.insert(monitor.to_string(), spent);
            }
        }
    }

    /// Everything charged so far.
    pub fn total(&self) -> Duration {
        self.by_monitor.values().sum()
    }

    /// Charge `spent` to `monitors` in equal parts.
    pub fn charge_shared(&mut self, monitors: &[String], spent: Duration) {
        if monitors.is_empty() {
            return;
        }
        let part = spent / monitors.len() as u32;
        for monitor in monitors {
            self.charge(monitor, part);
        }
    }

    /// Fill each report's service and sink times; `sink_cpu` is the sinks' CPU time by source.
    pub fn fill(
        &self,
        reports: &mut [MonitorReport],
        sink_cpu: &[(String, Duration)],
        loop_seconds: f64,
    ) {
        for report in reports {
            let service = self
                .by_monitor
                .get(&report.name)
                .copied()
                .unwrap_or_default();
            let sinks: Duration = sink_cpu
                .iter()
                .filter(|(source, _)| *source == report.name)
                .map(|(_, spent)| *spent)
                .sum();
            report.service_ms = service.as_secs_f64() * 1e3;
            report.sink_cpu_ms = sinks.as_secs_f64() * 1e3;
            report.service_share_of_step_time = if loop_seconds > 0.0 {
                service.as_secs_f64() / loop_seconds
            } else {
                0.0
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_costs_split_and_fill_the_reports() {
        let mut costs = ServiceCosts::default();
        costs.charge_shared(&["a".into(), "b".into()], Duration::from_millis(10));
        costs.charge("a", Duration::from_millis(1));
        costs.charge_shared(&[], Duration::from_millis(99));
        let mut reports = vec![
            MonitorReport {
                name: "a".into(),
                ..MonitorReport::default()
            },
            MonitorReport {
                name: "b".into(),
                ..MonitorReport::default()
            },
        ];
        let sinks = vec![
            ("a".to_string(), Duration::from_millis(2)),
            ("host".to_string(), Duration::from_millis(7)),
            ("a".to_string(), Duration::from_millis(3)),
        ];
        costs.fill(&mut reports, &sinks, 2.0);
        assert!((reports[0].service_ms - 6.0).abs() < 1e-9);
        assert!((reports[1].service_ms - 5.0).abs() < 1e-9);
        assert!((reports[0].sink_cpu_ms - 5.0).abs() < 1e-9);
        assert_eq!(reports[1].sink_cpu_ms, 0.0);
        assert!((reports[0].service_share_of_step_time - 0.003).abs() < 1e-12);
    }
}
