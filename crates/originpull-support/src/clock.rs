//! A cheap clock for the time checks every request makes against limits of seconds (the
//! keep-alive deadline, how long a key stays blocked after a failed copy, how long an object
//! stays in memory before it is checked again, an origin's cool-off). It reads the kernel's
//! coarse monotonic clock, a few nanoseconds where `Instant::now()` takes 25 here, and is
//! a few milliseconds behind it (one scheduler tick).

use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// An `Instant` and the coarse clock read together, so coarse readings become `Instant`s.
static BASE: LazyLock<(Instant, Duration)> = LazyLock::new(|| (Instant::now(), coarse_monotonic()));

/// Now, to within one scheduler tick: for deadlines and ages, never for durations that are
/// reported (those use `Instant::now()`).
pub fn coarse_now() -> Instant {
    let (instant, coarse) = *BASE;
    instant + coarse_monotonic().saturating_sub(coarse)
}

/// The coarse monotonic clock in whole seconds: for events counted per interval.
pub fn coarse_seconds() -> u64 {
    coarse_monotonic().as_secs()
}

// The one call into libc: std has no coarse clock.
#[allow(unsafe_code)]
fn coarse_monotonic() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_MONOTONIC_COARSE exists on every
    // Linux since 2.6.32, and on failure `now` stays zero (then the clock reads as the base).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) };
    Duration::new(
        now.tv_sec.max(0) as u64,
        now.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_within_a_few_milliseconds_of_instant_now_and_never_goes_back() {
        let mut last = coarse_now();
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(2));
            let (coarse, precise) = (coarse_now(), Instant::now());
            assert!(coarse >= last);
            let apart = if coarse > precise {
                coarse - precise
            } else {
                precise - coarse
            };
            assert!(apart < Duration::from_millis(25), "{apart:?} apart");
            last = coarse;
        }
    }
}
