//! A cheap clock for timing hook calls.
//!
//! Every hook call is timed (for `run.json` and the hook budget), so the clock is on the
//! dispatch path: two `Instant::now()` calls cost about 40 ns here, half of a dispatch. Where
//! the CPU's time-stamp counter is invariant (constant rate, running in every power state)
//! this clock reads it directly (`rdtsc`, about 8 ns) and converts ticks to nanoseconds with a
//! rate calibrated against the monotonic clock when the clock is made; everywhere else it is
//! the monotonic clock.

use std::time::{Duration, Instant};

/// How long the tick rate is calibrated for.
const CALIBRATION: Duration = Duration::from_millis(2);

#[derive(Debug, Clone, Copy)]
pub(super) struct HookClock {
    /// Nanoseconds per tick, when ticks are the time-stamp counter.
    tsc_scale: Option<f64>,
    origin: Instant,
}

impl HookClock {
    pub fn new() -> Self {
        let origin = Instant::now();
        HookClock {
            tsc_scale: tsc::calibrate(),
            origin,
        }
    }

    /// The current time in ticks.
    #[inline]
    pub fn now(&self) -> u64 {
        match self.tsc_scale {
            Some(_) => tsc::read(),
            None => self.origin.elapsed().as_nanos() as u64,
        }
    }

    /// `ticks` as a duration.
    pub fn duration(&self, ticks: u64) -> Duration {
        Duration::from_nanos(match self.tsc_scale {
            Some(scale) => (ticks as f64 * scale) as u64,
            None => ticks,
        })
    }

    /// `duration` in ticks (saturating).
    pub fn ticks(&self, duration: Duration) -> u64 {
        let nanos = duration.as_nanos() as f64;
        match self.tsc_scale {
            Some(scale) => (nanos / scale).min(u64::MAX as f64) as u64,
            None => nanos.min(u64::MAX as f64) as u64,
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod tsc {
    use super::CALIBRATION;
    use std::arch::x86_64::{__cpuid, _rdtsc};
    use std::time::Instant;

    #[inline]
    pub fn read() -> u64 {
        // SAFETY: rdtsc exists on every x86_64 CPU; it only reads a counter.
        unsafe { _rdtsc() }
    }

    /// Nanoseconds per tick, if the counter is invariant (CPUID 0x8000_0007, EDX bit 8).
    pub fn calibrate() -> Option<f64> {
        // Leaf 0x8000_0000 reports the highest extended leaf, so 0x8000_0007 is only read
        // where it exists.
        let invariant =
            __cpuid(0x8000_0000).eax >= 0x8000_0007 && __cpuid(0x8000_0007).edx & (1 << 8) != 0;
        if !invariant {
            return None;
        }
        let (started, first) = (Instant::now(), read());
        while started.elapsed() < CALIBRATION {
            std::hint::spin_loop();
        }
        let (elapsed, last) = (started.elapsed(), read());
        let scale = elapsed.as_nanos() as f64 / last.wrapping_sub(first) as f64;
        (scale.is_finite() && scale > 0.0).then_some(scale)
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod tsc {
    pub fn read() -> u64 {
        0
    }

    pub fn calibrate() -> Option<f64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_agrees_with_the_monotonic_clock() {
        let clock = HookClock::new();
        let (started, start) = (Instant::now(), clock.now());
        std::thread::sleep(Duration::from_millis(50));
        let measured = clock.duration(clock.now() - start).as_secs_f64();
        let reference = started.elapsed().as_secs_f64();
        assert!(
            (measured - reference).abs() < 0.05 * reference,
            "{measured} s by the hook clock, {reference} s by Instant"
        );
        let second = Duration::from_secs(1);
        let round_trip = clock.duration(clock.ticks(second)).as_secs_f64();
        assert!((round_trip - 1.0).abs() < 1e-6, "{round_trip}");
    }
}
