//! A workload's measurements summarised: each configuration's overhead against the bare
//! ones (wall and CPU time), its bounds and verdict, the baselines' speed-ups and the floor.
//! How the overheads are defined: [`super::workload`].

use super::baseline::ExternalLoop;
use super::cpu::{cpu_overhead, CpuSample};
use super::workload::{
    judge, BaselineResult, CockpitResult, ConfigResult, CurvatureCost, FloorResult, LaneMeasure,
    Segment, WorkloadOptions, WorkloadReport, ALL, COCKPIT_16, COCKPIT_EVERY, INSTRUMENTS_16,
    INSTRUMENTS_EVERY, LIGHTNING_VARIANT, TARGET_ALL, TARGET_CURVATURE, TARGET_EACH, TARGET_FLOOR,
    TARGET_INSTRUMENTS_16, TARGET_INSTRUMENTS_EVERY, TARGET_LIGHTNING, TARGET_SPEEDUP,
    TARGET_WATCHING, WORKLOAD_BATCH,
};
use super::{peak_rss_mib, Measurement};
use crate::data::Dataset;

fn cpu_samples(segments: &[Segment]) -> Vec<CpuSample> {
    segments
        .iter()
        .map(|s| CpuSample {
            wall: s.wall,
            validation: s.validation,
            cpu: s.cpu,
        })
        .collect()
}

pub(super) fn summarize(
    options: &WorkloadOptions,
    dataset: &Dataset,
    lanes: &[LaneMeasure],
    loops: &[ExternalLoop],
    floors: &[f64],
) -> WorkloadReport {
    let (bare, control) = (&lanes[0], &lanes[1]);
    let bare_train: Vec<f64> = bare
        .segments
        .iter()
        .map(|s| s.wall - s.validation)
        .collect();
    let bare_train_ms = Measurement::of(
        "bare training step",
        "ms",
        bare_train
            .iter()
            .zip(&bare.segments)
            .map(|(train, s)| train * 1e3 / s.steps as f64)
            .collect(),
    );
    let bare_train_total: f64 = bare_train.iter().sum();
    let mut notes = Vec::new();
    let configs: Vec<ConfigResult> = lanes
        .iter()
        .enumerate()
        .map(|(index, lane)| {
            let ms_per_step = Measurement::of(
                &lane.name,
                "ms",
                lane.segments
                    .iter()
                    .map(|s| s.wall * 1e3 / s.steps as f64)
                    .collect(),
            );
            let is_bare = lane.monitors.is_empty() && !lane.watching;
            // The control against bare: the noise floor. A monitored configuration against
            // the mean of both bare ones, so that neither's luck (a slower repeat, a less
            // favourable memory layout) tilts every overhead one way.
            let weighted_bare = lanes
                .iter()
                .find(|l| l.weighted && l.monitors.is_empty())
                .filter(|_| lane.weighted && !is_bare);
            let references: Vec<Vec<CpuSample>> = if let Some(reference) = weighted_bare {
                vec![cpu_samples(&reference.segments)]
            } else if is_bare {
                vec![cpu_samples(&bare.segments)]
            } else {
                vec![cpu_samples(&bare.segments), cpu_samples(&control.segments)]
            };
            let cpu_overhead_pct = (index > 0)
                .then(|| cpu_overhead(&lane.name, &cpu_samples(&lane.segments), &references))
                .flatten();
            let overhead_pct = (index > 0).then(|| {
                let reference: Vec<(f64, f64)> = if let Some(reference) = weighted_bare {
                    reference
                        .segments
                        .iter()
                        .map(|r| (r.wall, r.wall - r.validation))
                        .collect()
                } else if is_bare {
                    bare.segments
                        .iter()
                        .zip(&bare_train)
                        .map(|(b, &train)| (b.wall, train))
                        .collect()
                } else {
                    bare.segments
                        .iter()
                        .zip(&control.segments)
                        .map(|(b, c)| {
                            let train = (b.wall - b.validation + c.wall - c.validation) / 2.0;
                            ((b.wall + c.wall) / 2.0, train)
                        })
                        .collect()
                };
                Measurement::of(
                    &lane.name,
                    "%",
                    lane.segments
                        .iter()
                        .zip(reference)
                        .map(|(s, (wall, train))| 100.0 * (s.wall - wall) / train)
                        .collect(),
                )
            });
            let target_pct = (!is_bare).then(|| {
                if lane.watching {
                    TARGET_WATCHING
                } else if lane.name == INSTRUMENTS_16 {
                    TARGET_INSTRUMENTS_16
                } else if lane.name == INSTRUMENTS_EVERY {
                    TARGET_INSTRUMENTS_EVERY
                } else if lane.monitors.len() > 1 {
                    TARGET_ALL
                } else if lane.monitors[0] == "curvature" {
                    TARGET_CURVATURE
                } else {
                    TARGET_EACH
                }
            });
            let in_hooks_pct =
                100.0 * lane.hook_seconds / bare_train_total;
            let in_service_pct = 100.0 * lane.service_seconds / bare_train_total;
            let upper_pct = overhead_pct
                .as_ref()
                .map(|o| o.high.max(in_hooks_pct + in_service_pct));
            // Segments without a curvature estimate, or without a validation, leave out what
            // the monitors cost at those events: such an overhead is no upper bound, and is
            // not judged.
            let misses_curvature = lane.monitors.iter().any(|m| m == "curvature")
                && lane.curvature_estimates == 0;
            let misses_validation = !is_bare && lane.segments.iter().any(|s| s.validations == 0);
            if misses_curvature {
                notes.push(format!(
                    "`{}` is not judged: its timed segments hold no curvature estimate (one every 1000 steps at the default cadence), so its overhead leaves that out; give at least 1000 steps per segment",
                    lane.name
                ));
            } else if misses_validation {
                notes.push(format!(
                    "`{}` is not judged: a timed segment holds no validation, so its overhead leaves out what monitors do at validation ends; give segments longer than a quarter epoch",
                    lane.name
                ));
            }
            let unjudged = misses_curvature || misses_validation;
            let lower_pct = overhead_pct
                .as_ref()
                .filter(|_| !is_bare)
                .map(|o| o.low.max(in_hooks_pct + in_service_pct));
            let verdict = target_pct.map(|target| judge(target, upper_pct, lower_pct, unjudged));
            ConfigResult {
                lower_pct,
                verdict,
                name: lane.name.clone(),
                monitors: lane.monitors.clone(),
                sampler: if lane.weighted { "weighted" } else { "shuffle" }.into(),
                meets_target: upper_pct
                    .zip(target_pct)
                    .filter(|_| !unjudged)
                    .map(|(upper, t)| upper <= t),
                ms_per_step,
                overhead_pct,
                cpu_overhead_pct,
                in_hooks_pct,
                in_service_pct,
                upper_pct,
                target_pct,
            }
        })
        .collect();
    let validations: Vec<f64> = bare
        .segments
        .iter()
        .filter(|s| s.validations > 0)
        .map(|s| s.validation * 1e3 / s.validations as f64)
        .collect();
    let bare_train_ms_per_repeat: Vec<f64> = bare_train
        .iter()
        .zip(&bare.segments)
        .map(|(train, s)| train * 1e3 / s.steps as f64)
        .collect();
    let all_monitors = lanes.iter().find(|lane| lane.name == ALL);
    let mut python = Vec::new();
    let mut lightning = None;
    let plain_loop = loops
        .iter()
        .find(|l| l.variant == "plain" && !l.segments.is_empty());
    let mut cockpit = Vec::new();
    for external in loops.iter().filter(|l| !l.segments.is_empty()) {
        let is_lightning = external.variant == LIGHTNING_VARIANT;
        if external.variant == COCKPIT_16 || external.variant == COCKPIT_EVERY {
            let lane_name = if external.variant == COCKPIT_16 {
                INSTRUMENTS_16
            } else {
                INSTRUMENTS_EVERY
            };
            if let Some(result) = cockpit_result(external, plain_loop, lanes, &configs, lane_name) {
                cockpit.push(result);
            }
            continue;
        }
        // Python against bare training time; Lightning against the host with all monitors,
        // validation included on both sides.
        let (host_ms, compared_with, target): (Vec<f64>, &str, f64) = if is_lightning {
            let Some(all) = all_monitors else { continue };
            let ms = all
                .segments
                .iter()
                .map(|s| s.wall * 1e3 / s.steps as f64)
                .collect();
            (ms, ALL, TARGET_LIGHTNING)
        } else {
            (bare_train_ms_per_repeat.clone(), "bare", TARGET_SPEEDUP)
        };
        let speedups: Vec<f64> = external
            .segments
            .iter()
            .zip(&host_ms)
            .map(|(theirs, ours)| theirs / ours)
            .collect();
        let framework = if is_lightning { "Lightning" } else { "PyTorch" };
        let host_speedup = Measurement::of(
            &format!("host steps/s ÷ {framework} steps/s"),
            "×",
            speedups,
        );
        let result = BaselineResult {
            framework: framework.into(),
            variant: external.variant.to_string(),
            glibc_tunables: external.glibc_tunables.clone(),
            interpreter: external.interpreter.clone(),
            torch: external.torch.clone(),
            lightning: external.lightning.clone(),
            ms_per_step: Measurement::of(
                &format!("{framework} loop step"),
                "ms",
                external.segments.clone(),
            ),
            compared_with: compared_with.into(),
            meets_target: host_speedup.low >= target,
            host_speedup,
            target,
        };
        if is_lightning {
            lightning = Some(result);
        } else {
            python.push(result);
        }
    }
    if options.batch_size != WORKLOAD_BATCH {
        notes.push(format!(
            "batch {} is not the workload's batch {WORKLOAD_BATCH}, for which the targets are stated: these verdicts are for a quick look, not for the targets",
            options.batch_size
        ));
    }
    // The faster Python loop first: the target is judged against it.
    python.sort_by(|a, b| a.ms_per_step.median.total_cmp(&b.ms_per_step.median));
    if python.is_empty() {
        notes.push("no Python baseline (give --python PATH to run bench/python_baseline.py beside the host)".into());
    }
    // The curvature monitor alone, else the configuration with all monitors.
    let curvature = lanes
        .iter()
        .find(|lane| lane.monitors == ["curvature"])
        .or_else(|| {
            all_monitors.filter(|lane| {
                lane.monitors.iter().any(|m| m == "curvature")
                    && !lanes.iter().any(|l| l.monitors == ["curvature"])
            })
        })
        .and_then(|lane| {
            let estimates = lane.curvature_estimates;
            let hvps = lane.curvature_hvps;
            let (calls, seconds) = lane.hvps;
            (estimates > 0 && calls > 0).then(|| CurvatureCost {
                estimates,
                hvps_per_estimate: hvps / estimates as f64,
                ms_per_hvp: seconds * 1e3 / calls as f64,
            })
        });
    WorkloadReport {
        workload: options.workload,
        description: options
            .workload
            .describe(options.batch_size, options.threads),
        dataset: dataset.name.clone(),
        threads: options.threads,
        batch_size: options.batch_size,
        steps_per_segment: options.steps,
        chunk_steps: options.chunk_steps.clamp(1, options.steps),
        warmup_steps: options.warmup_steps,
        repeats: options.repeats,
        bare_steps_per_second: 1e3 / bare_train_ms.median,
        bare_train_ms_per_step: bare_train_ms,
        validation_ms: (!validations.is_empty())
            .then(|| Measurement::of("validation pass", "ms", validations)),
        configs,
        python,
        lightning,
        cockpit,
        curvature,
        floor: floor_result(floors, &bare_train_ms_per_repeat),
        peak_rss_mib: peak_rss_mib(),
        notes,
    }
}

/// The floor's verdict from the repeats that have both a floor and a bare step.
fn floor_result(floors: &[f64], bare_ms: &[f64]) -> Option<FloorResult> {
    let n = floors.len().min(bare_ms.len());
    if n == 0 {
        return None;
    }
    let ratios: Vec<f64> = bare_ms[..n]
        .iter()
        .zip(&floors[..n])
        .map(|(host, floor)| host / floor)
        .collect();
    let host_over_floor = Measurement::of("host bare step / floor", "×", ratios);
    let verdict = judge(
        TARGET_FLOOR,
        Some(host_over_floor.high),
        Some(host_over_floor.low),
        false,
    );
    Some(FloorResult {
        aten_ms_per_step: Measurement::of("time inside ATen ops", "ms", floors[..n].to_vec()),
        host_over_floor,
        target: TARGET_FLOOR,
        verdict,
    })
}

/// Cockpit's loop against the plain loop (its own overhead) and against the host with the
/// instruments at the same cadence, repeat by repeat; validation excluded everywhere.
fn cockpit_result(
    external: &ExternalLoop,
    plain: Option<&ExternalLoop>,
    lanes: &[LaneMeasure],
    configs: &[ConfigResult],
    lane_name: &str,
) -> Option<CockpitResult> {
    let plain = plain?;
    let lane = lanes.iter().find(|l| l.name == lane_name)?;
    let host_ms: Vec<f64> = lane
        .segments
        .iter()
        .map(|s| (s.wall - s.validation) * 1e3 / s.steps as f64)
        .collect();
    let overhead = external
        .segments
        .iter()
        .zip(&plain.segments)
        .map(|(theirs, plain)| 100.0 * (theirs / plain - 1.0))
        .collect();
    let speedup = external
        .segments
        .iter()
        .zip(&host_ms)
        .map(|(theirs, ours)| theirs / ours)
        .collect();
    Some(CockpitResult {
        variant: external.variant.to_string(),
        ms_per_step: Measurement::of(external.variant, "ms", external.segments.clone()),
        overhead_pct: Measurement::of(&format!("{} overhead", external.variant), "%", overhead),
        compared_with: lane_name.to_string(),
        host_overhead_pct: configs
            .iter()
            .find(|c| c.name == lane_name)
            .and_then(|c| c.overhead_pct.clone()),
        host_speedup: Measurement::of(&format!("{} ÷ {lane_name}", external.variant), "×", speedup),
    })
}
