//! `vigil train --profile`: where a run's time went, from its `run.json`, as a table
//! (`profile/breakdown.txt`) and flame graphs drawn by inferno from `profile/stacks.folded`:
//! the whole run (`flamegraph.svg`) and the monitors' part alone (`monitors.svg`).
//!
//! The stacks are the training thread's parts (`step;forward`, `step;backward`, …) with each
//! monitor's hooks inside the part that called them (`step;monitors;curvature;hooks`) and the
//! rest of that part as the host's own work for it (dispatch, routing what monitors logged,
//! copies); and, beside the training thread, the sinks' threads by whom they wrote for.
//! Widths are microseconds.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::run_dir::{read_run_info, MonitorReport, RunInfo};
use crate::train::profile::Phase;

/// The folder of a run directory the profile goes to.
pub const PROFILE_DIR: &str = "profile";

/// The events whose hooks run inside each part of the training thread.
const PART_EVENTS: [(&str, &[&str]); 4] = [
    ("monitors", &["train_batch_end"]),
    ("validation", &["validation_batch_end", "validation_end"]),
    ("checkpoint", &["save_state"]),
    (
        "epochs",
        &[
            "train_epoch_start",
            "train_epoch_end",
            "fit_start",
            "fit_end",
        ],
    ),
];

/// Write the profile of the run in `run_dir`; the folder written.
pub fn write_profile(run_dir: &Path) -> Result<PathBuf> {
    let info = read_run_info(run_dir).ok_or_else(|| Error::Usage {
        command: "train --profile",
        message: format!("{} has no readable run.json to profile", run_dir.display()),
    })?;
    let dir = run_dir.join(PROFILE_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let stacks = folded_stacks(&info);
    let folded: Vec<String> = stacks
        .iter()
        .filter(|(_, us)| *us > 0)
        .map(|(stack, us)| format!("{stack} {us}"))
        .collect();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))
    };
    write("stacks.folded", (folded.join("\n") + "\n").as_bytes())?;
    write("breakdown.txt", breakdown(&info).as_bytes())?;
    let title = format!("vigil: {} ({} steps)", info.name, info.global_step);
    write("flamegraph.svg", &flame_graph(&title, &folded)?)?;
    // The monitors' part alone, where the whole run's picture leaves it too narrow to read.
    let monitors: Vec<String> = folded
        .iter()
        .filter(|line| is_monitor_stack(line))
        .cloned()
        .collect();
    let title = format!("vigil: {}: what the monitors cost", info.name);
    write("monitors.svg", &flame_graph(&title, &monitors)?)?;
    Ok(dir)
}

/// Stacks of the monitors' hooks, the host's work for them, and the sinks' work for them.
fn is_monitor_stack(line: &str) -> bool {
    line.contains(";hooks ")
        || line.starts_with("sink threads;")
        || line.starts_with("training thread;other events;")
        || line.starts_with("training thread;step;monitors;")
}

fn flame_graph(title: &str, folded: &[String]) -> Result<Vec<u8>> {
    let mut svg = Vec::new();
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_string();
    options.count_name = "µs".into();
    options.min_width = 0.05;
    if folded.is_empty() {
        // inferno refuses an empty input; an empty picture says the same.
        options.title = format!("{title}: nothing");
        let empty = ["none 1"];
        inferno::flamegraph::from_lines(&mut options, empty, &mut svg)
    } else {
        inferno::flamegraph::from_lines(&mut options, folded.iter().map(String::as_str), &mut svg)
    }
    .map_err(|err| Error::Usage {
        command: "train --profile",
        message: format!("drawing the flame graph: {err}"),
    })?;
    Ok(svg)
}

fn micros(ms: f64) -> u64 {
    (ms * 1e3).max(0.0).round() as u64
}

/// A monitor's hook time in the given events, in ms.
fn hook_ms(monitor: &MonitorReport, events: &[&str]) -> f64 {
    events
        .iter()
        .filter_map(|event| monitor.hooks.get(*event))
        .map(|hook| hook.total_ms)
        .sum()
}

/// The folded stacks (stack, µs) of a run.
pub fn folded_stacks(info: &RunInfo) -> Vec<(String, u64)> {
    let mut stacks = Vec::new();
    let part_ms = |name: &str| info.step_breakdown.get(name).map_or(0.0, |p| p.total_ms);
    // The step's own parts; `monitors` is one of PART_EVENTS, with the hooks it holds.
    let in_step = Phase::ALL
        .iter()
        .filter(|phase| phase.in_step() && **phase != Phase::Monitors)
        .map(|phase| phase.name());
    for part in in_step {
        stacks.push((
            format!("training thread;step;{part}"),
            micros(part_ms(part)),
        ));
    }
    for (part, events) in PART_EVENTS {
        let prefix = if part == "monitors" {
            "training thread;step;monitors".to_string()
        } else {
            format!("training thread;{part}")
        };
        let mut hooks_total = 0.0;
        for monitor in &info.monitors {
            let ms = hook_ms(monitor, events);
            hooks_total += ms;
            stacks.push((format!("{prefix};{};hooks", monitor.name), micros(ms)));
        }
        let rest = (part_ms(part) - hooks_total).max(0.0);
        let own = match part {
            "monitors" => "dispatch, routing and copies",
            "validation" => "evaluation",
            "checkpoint" => "writing",
            _ => "events and records",
        };
        stacks.push((format!("{prefix};{own}"), micros(rest)));
    }
    // Hooks of events not inside a timed part (e.g. fit start, before the loop's clock).
    let placed: Vec<&str> = PART_EVENTS
        .iter()
        .flat_map(|(_, e)| e.iter().copied())
        .collect();
    for monitor in &info.monitors {
        for (event, hook) in &monitor.hooks {
            if !placed.contains(&event.as_str()) {
                stacks.push((
                    format!("training thread;other events;{};{event}", monitor.name),
                    micros(hook.total_ms),
                ));
            }
        }
        if monitor.sink_cpu_ms > 0.0 {
            stacks.push((
                format!("sink threads;{}", monitor.name),
                micros(monitor.sink_cpu_ms),
            ));
        }
    }
    stacks
}

/// The breakdown as a table: the training thread's parts, then each monitor's cost.
pub fn breakdown(info: &RunInfo) -> String {
    let loop_ms = info.wall_time_s * 1e3;
    let mut out = format!(
        "run {} ({} steps, training loop {:.1} s)\n\npart of the training thread  {:>11}  {:>7}\n",
        info.name, info.global_step, info.wall_time_s, "ms", "share"
    );
    let mut accounted = 0.0;
    for part in Phase::ALL.map(Phase::name) {
        let ms = info.step_breakdown.get(part).map_or(0.0, |p| p.total_ms);
        accounted += ms;
        out.push_str(&format!(
            "{part:<28}  {ms:>11.1}  {:>6.2} %\n",
            100.0 * ms / loop_ms.max(1e-9)
        ));
    }
    out.push_str(&format!(
        "{:<28}  {:>11.1}  {:>6.2} %\n",
        "(between parts)",
        (loop_ms - accounted).max(0.0),
        100.0 * (loop_ms - accounted).max(0.0) / loop_ms.max(1e-9)
    ));
    out.push_str(&format!(
        "\nmonitor                 {:>10}  {:>10}  {:>10}  {:>7}  {:>12}\n",
        "hooks ms", "service ms", "sinks ms", "share", "of which"
    ));
    // Costliest first (a stable sort: equal ones in config order).
    let mut by_cost: Vec<&MonitorReport> = info.monitors.iter().collect();
    let cost = |m: &MonitorReport| m.total_ms + m.service_ms;
    by_cost.sort_by(|a, b| cost(b).total_cmp(&cost(a)));
    for monitor in by_cost {
        let share = 100.0 * (monitor.total_ms + monitor.service_ms) / loop_ms.max(1e-9);
        out.push_str(&format!(
            "{:<22}  {:>10.1}  {:>10.1}  {:>10.1}  {:>5.2} %  hooks {:.2} %\n",
            monitor.name,
            monitor.total_ms,
            monitor.service_ms,
            monitor.sink_cpu_ms,
            share,
            100.0 * monitor.share_of_step_time
        ));
    }
    out.push_str(
        "\nshare: hooks + service over the training loop's wall time (the sinks' CPU time is on \
         other threads)\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run_dir::{HookReport, PhaseReport};
    use std::collections::BTreeMap;

    fn info() -> RunInfo {
        let mut info = RunInfo {
            name: "t".into(),
            global_step: 10,
            wall_time_s: 1.0,
            ..RunInfo::default()
        };
        for (part, ms) in [
            ("forward", 300.0),
            ("backward", 400.0),
            ("monitors", 120.0),
            ("validation", 100.0),
        ] {
            info.step_breakdown.insert(
                part.into(),
                PhaseReport {
                    total_ms: ms,
                    share_of_loop_time: ms / 1e3,
                },
            );
        }
        let mut monitor = MonitorReport {
            name: "curvature".into(),
            total_ms: 110.0,
            service_ms: 4.0,
            sink_cpu_ms: 2.5,
            ..MonitorReport::default()
        };
        for (event, ms) in [("train_batch_end", 100.0), ("validation_end", 10.0)] {
            monitor.hooks.insert(
                event.into(),
                HookReport {
                    total_ms: ms,
                    ..HookReport::default()
                },
            );
        }
        info.monitors.push(monitor);
        info
    }

    #[test]
    fn stacks_nest_hooks_inside_their_parts() {
        let stacks: BTreeMap<String, u64> = folded_stacks(&info()).into_iter().collect();
        assert_eq!(stacks["training thread;step;forward"], 300_000);
        assert_eq!(
            stacks["training thread;step;monitors;curvature;hooks"],
            100_000
        );
        assert_eq!(
            stacks["training thread;step;monitors;dispatch, routing and copies"],
            20_000
        );
        assert_eq!(stacks["training thread;validation;curvature;hooks"], 10_000);
        assert_eq!(stacks["training thread;validation;evaluation"], 90_000);
        assert_eq!(stacks["sink threads;curvature"], 2_500);
        let table = breakdown(&info());
        assert!(table.contains("curvature"), "{table}");
        assert!(table.contains("11.40 %"), "{table}");
    }

    #[test]
    fn a_profile_is_written_with_a_flame_graph() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(crate::run_dir::RUN_FILE),
            serde_json::to_vec(&info()).unwrap(),
        )
        .unwrap();
        let written = write_profile(dir.path()).unwrap();
        let svg = std::fs::read_to_string(written.join("flamegraph.svg")).unwrap();
        assert!(
            svg.starts_with("<?xml") && svg.contains("curvature"),
            "{}",
            &svg[..200]
        );
        let folded = std::fs::read_to_string(written.join("stacks.folded")).unwrap();
        assert!(folded.lines().all(|line| line.rsplit_once(' ').is_some()));
        assert!(write_profile(&dir.path().join("missing")).is_err());
    }
}
