//! Overheads in CPU time beside wall time.
//!
//! The configurations train in one process, taking turns, so the process's CPU time over a
//! configuration's turn is what that configuration made the CPUs do: its training thread
//! and libtorch's workers (their spinning included), and whatever the process's background
//! threads (sinks, senders) did meanwhile, which the random order spreads over all
//! configurations. Time the machine gave to other processes, or a hypervisor to other
//! machines, is not in it, so on a shared machine it moves far less than wall time; it is
//! reported beside the wall-time overhead, whose verdicts stay on wall time (the targets are
//! about how long training takes).

use super::Measurement;

/// What [`cpu_overhead`] reads of one timed segment.
#[derive(Debug, Clone, Copy)]
pub(super) struct CpuSample {
    /// Wall seconds, of which `validation` were validation passes.
    pub(super) wall: f64,
    pub(super) validation: f64,
    /// The process's CPU seconds.
    pub(super) cpu: f64,
}

/// CPU seconds this process has used, all threads together (`CLOCK_PROCESS_CPUTIME_ID`).
pub fn process_cpu_seconds() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `now`, which outlives the call.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    if status != 0 {
        return f64::NAN;
    }
    now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
}

/// The CPU time a segment spent training (its validation passes left out, in the share of
/// its wall time they took: the trainer times validation by the clock only).
fn training_cpu(segment: &CpuSample) -> f64 {
    if segment.wall > 0.0 {
        segment.cpu * (segment.wall - segment.validation) / segment.wall
    } else {
        segment.cpu
    }
}

/// Per repeat, `100 · (cpu − reference cpu) / reference training cpu`, where each repeat's
/// reference is the mean of `references`' segments of that repeat (as for wall time).
pub(super) fn cpu_overhead(
    name: &str,
    segments: &[CpuSample],
    references: &[Vec<CpuSample>],
) -> Option<Measurement> {
    let values: Vec<f64> = segments
        .iter()
        .enumerate()
        .map(|(repeat, segment)| {
            let count = references.len() as f64;
            let (cpu, train) = references.iter().fold((0.0, 0.0), |(cpu, train), r| {
                let r = &r[repeat];
                (cpu + r.cpu / count, train + training_cpu(r) / count)
            });
            100.0 * (segment.cpu - cpu) / train
        })
        .collect();
    (!values.is_empty() && values.iter().all(|v| v.is_finite()))
        .then(|| Measurement::of(name, "% CPU", values))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(wall: f64, validation: f64, cpu: f64) -> CpuSample {
        CpuSample {
            wall,
            validation,
            cpu,
        }
    }

    /// Work on this thread moves the process's clock (other tests' threads may move it too,
    /// so only the lower bound is checked).
    #[test]
    fn the_process_clock_advances_with_work() {
        let start = process_cpu_seconds();
        let mut x = 0u64;
        let busy = std::time::Instant::now();
        while busy.elapsed().as_millis() < 50 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let worked = process_cpu_seconds() - start;
        assert!(worked > 0.03, "50 ms of work used {worked} s of CPU");
    }

    #[test]
    fn cpu_overhead_is_against_the_mean_reference_and_its_training_share() {
        // References: 10 s wall of which 2 s validation, 16 s CPU → 12.8 s training CPU;
        // and 20 s CPU → 16 s. Means: 18 s CPU, 14.4 s training CPU. 19.08 s is +7.5 %.
        let references = [
            vec![segment(10.0, 2.0, 16.0)],
            vec![segment(10.0, 2.0, 20.0)],
        ];
        let measured = cpu_overhead("x", &[segment(10.5, 2.0, 19.08)], &references).unwrap();
        assert!((measured.median - 7.5).abs() < 1e-9, "{}", measured.median);
        assert!(cpu_overhead("x", &[segment(1.0, 0.0, f64::NAN)], &references).is_none());
    }
}
