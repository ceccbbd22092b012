//! The workload report as the table `vigil bench` prints.

use super::workload::{BaselineResult, WorkloadReport, BARE_WEIGHTED};

/// The report as the table `vigil bench` prints.
pub fn workload_table(report: &WorkloadReport) -> String {
    let mut out = format!(
        "{}\ndata: {}; {} repeats of {} steps per configuration after {} warm-up steps, taking turns every {} steps\n\n",
        report.description,
        report.dataset,
        report.repeats,
        report.steps_per_segment,
        report.warmup_steps,
        report.chunk_steps
    );
    let b = &report.bare_train_ms_per_step;
    out.push_str(&format!(
        "bare training step (validation excluded): {:.2} ms median ({:.2}–{:.2}) = {:.1} steps/s\n",
        b.median, b.min, b.max, report.bare_steps_per_second
    ));
    if let Some(v) = &report.validation_ms {
        out.push_str(&format!(
            "validation pass: {:.0} ms median ({:.0}–{:.0})\n",
            v.median, v.min, v.max
        ));
    }
    for (index, p) in report.python.iter().enumerate() {
        let judged = if index == 0 {
            None
        } else {
            Some("(the slower loop: not judged)")
        };
        out.push_str(&baseline_lines(p, judged));
    }
    if let Some(l) = &report.lightning {
        out.push_str(&baseline_lines(l, None));
    }
    for c in &report.cockpit {
        let host = c.host_overhead_pct.as_ref().map_or("—".to_string(), |o| {
            format!(
                "{:+.2} % (90 % interval {:+.2}…{:+.2})",
                o.median, o.low, o.high
            )
        });
        out.push_str(&format!(
            "{}: {:.2} ms/step ({:.2}–{:.2}), {:+.1} % over the plain PyTorch loop (90 % interval {:+.1}…{:+.1}); vigil's {}: {host} over bare; Cockpit's step ÷ vigil's: {:.2}× ({:.2}–{:.2})\n",
            c.variant,
            c.ms_per_step.median,
            c.ms_per_step.min,
            c.ms_per_step.max,
            c.overhead_pct.median,
            c.overhead_pct.low,
            c.overhead_pct.high,
            c.compared_with,
            c.host_speedup.median,
            c.host_speedup.low,
            c.host_speedup.high,
        ));
    }
    if let Some(f) = &report.floor {
        out.push_str(&format!(
            "floor: {:.2} ms/step inside ATen ops (PyTorch's profiler, self CPU time, the plain loop's step; {:.2}–{:.2}); \
             host bare step / floor {:.3}× (90 % interval {:.3}–{:.3}); target ≤ {:.2}×: {}\n",
            f.aten_ms_per_step.median,
            f.aten_ms_per_step.min,
            f.aten_ms_per_step.max,
            f.host_over_floor.median,
            f.host_over_floor.low,
            f.host_over_floor.high,
            f.target,
            if f.verdict == "missed" { "MISSED" } else { f.verdict }
        ));
    }
    let width = report
        .configs
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0)
        .max(13);
    // The noise floor: the spread of an identical configuration's "overhead".
    let floor = report
        .configs
        .iter()
        .find(|c| c.name == super::workload::CONTROL)
        .and_then(|c| c.overhead_pct.as_ref())
        .map(|o| o.high - o.low);
    out.push_str(&format!(
        "\n{:<width$}  {:>23}  {:>24}  {:>24}  {:>8}  {:>8}  {:>7}  {:>7}  {:>7}\n",
        "configuration",
        "ms/step (min–max)",
        "overhead % (min–max)",
        "CPU time % (90 % int.)",
        "in hooks",
        "service",
        "lower",
        "upper",
        "target"
    ));
    for c in &report.configs {
        let step = format!(
            "{:.2} ({:.2}–{:.2})",
            c.ms_per_step.median, c.ms_per_step.min, c.ms_per_step.max
        );
        let overhead = c.overhead_pct.as_ref().map_or_else(
            || "—".to_string(),
            |o| format!("{:+.2} ({:+.2}…{:+.2})", o.median, o.min, o.max),
        );
        let cpu = c.cpu_overhead_pct.as_ref().map_or_else(
            || "—".to_string(),
            |o| format!("{:+.2} ({:+.2}…{:+.2})", o.median, o.low, o.high),
        );
        let target = match (c.target_pct, c.verdict) {
            (Some(t), Some("not judged")) => format!("≤{t}% not judged (see the notes)"),
            (Some(t), Some(verdict)) => format!(
                "≤{t}% {}{}",
                if verdict == "missed" {
                    "MISSED"
                } else {
                    verdict
                },
                floor.map_or_else(String::new, |w| format!(" (noise floor {w:.2} wide)"))
            ),
            _ => String::new(),
        };
        let bound = |b: Option<f64>| b.map_or_else(|| "—".to_string(), |u| format!("{u:+.2}%"));
        out.push_str(&format!(
            "{:<width$}  {:>23}  {:>24}  {:>24}  {:>7.2}%  {:>7.2}%  {:>7}  {:>7}  {}\n",
            c.name,
            step,
            overhead,
            cpu,
            c.in_hooks_pct,
            c.in_service_pct,
            bound(c.lower_pct),
            bound(c.upper_pct),
            target
        ));
    }
    out.push_str(
        "CPU time %: the same overhead in the process's CPU time (all its threads; validation left out \
         in its share of wall time), median and the 90 % interval of the mean: time the machine gives to \
         other processes is not in it. It is shown beside the verdicts, which are on wall time. \
         service: the host's time serving the monitors outside their hooks (data for their subscriptions, \
         routing their records and images). upper: the high end of the overhead's 90 % interval \
         (over repeats) or the time in hooks plus service, whichever is larger; lower: the low end of that \
         interval or hooks plus service, whichever is larger. A target is met when the upper bound meets \
         it and missed when the lower bound misses it; otherwise the benchmark repeats every \
         configuration again (--max-repeats, --time-cap) and says undecided when those run out. \
         The noise floor is the width of the control's interval. \
         bare (control) is the noise floor: an identical configuration's overhead.\n",
    );
    if report.configs.iter().any(|c| c.sampler == "weighted") {
        out.push_str(&format!(
            "configurations with sampler-distribution train with the weighted sampler and are measured against {BARE_WEIGHTED}.\n"
        ));
    }
    if let Some(c) = &report.curvature {
        out.push_str(&format!(
            "\ncurvature: {:.1} HVPs per estimate, {:.1} ms per HVP ({} estimates timed)\n",
            c.hvps_per_estimate, c.ms_per_hvp, c.estimates
        ));
    }
    if let Some(rss) = report.peak_rss_mib {
        out.push_str(&format!(
            "peak RSS: {rss:.0} MiB (this process: all configurations, sharing one copy of the data)\n"
        ));
    }
    for note in &report.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    out
}

/// A baseline loop's two lines: its step time, and the host's speed-up over it with the
/// verdict (or `judged` in place of the verdict).
fn baseline_lines(p: &BaselineResult, judged: Option<&str>) -> String {
    let judged = judged.map_or_else(
        || {
            format!(
                "target ≥ {:.1}× on its low end: {}",
                p.target,
                verdict(p.meets_target)
            )
        },
        str::to_string,
    );
    let versions = match &p.lightning {
        Some(lightning) => format!("torch {}, Lightning {lightning}", p.torch),
        None => format!("torch {}", p.torch),
    };
    let what = if p.compared_with == "bare" {
        "host speed-up over it (bare training steps)".to_string()
    } else {
        format!(
            "host speed-up over it ({}, validation included)",
            p.compared_with
        )
    };
    format!(
        "{} loop step, {} ({versions}): {:.2} ms median ({:.2}–{:.2}) = {:.1} steps/s\n{what}: {:.2}× median ({:.2}–{:.2}), 90 % interval of the mean {:.2}–{:.2}; {judged}\n",
        p.framework,
        p.variant,
        p.ms_per_step.median,
        p.ms_per_step.min,
        p.ms_per_step.max,
        1e3 / p.ms_per_step.median,
        p.host_speedup.median,
        p.host_speedup.min,
        p.host_speedup.max,
        p.host_speedup.low,
        p.host_speedup.high,
    )
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}
