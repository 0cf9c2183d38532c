//! The monotonic clock, in integer nanoseconds: the same clock as Python's `time.monotonic()`.

use std::sync::OnceLock;

use rustix::time::{clock_getres, clock_gettime, ClockId};

/// Nanoseconds since an arbitrary fixed point, from `CLOCK_MONOTONIC`.
///
/// asyncio's `loop.time()` is `time.monotonic()`, which reads this clock; using the same one keeps
/// `loop.time()` comparable with values that user code takes from `time.monotonic()`.
#[inline]
#[must_use]
pub fn monotonic_ns() -> u64 {
    let ts = clock_gettime(ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The resolution of `CLOCK_MONOTONIC` in nanoseconds (at least 1), read once.
///
/// asyncio's `_clock_resolution` is `time.get_clock_info('monotonic').resolution`, which Python
/// takes from `clock_getres()` of this clock; each iteration runs the timers due before
/// `time() + _clock_resolution`.
#[must_use]
pub fn monotonic_resolution_ns() -> u64 {
    static RESOLUTION: OnceLock<u64> = OnceLock::new();
    *RESOLUTION.get_or_init(|| {
        let ts = clock_getres(ClockId::Monotonic);
        (ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64).max(1)
    })
}

/// Converts seconds of loop time (a float, as asyncio gives it) to nanoseconds, saturating.
///
/// Values below zero become 0 and NaN becomes 0; values past `u64::MAX` ns saturate (Rust's float
/// to integer `as` conversion is saturating).
#[inline]
#[must_use]
pub fn secs_to_ns(secs: f64) -> u64 {
    (secs * 1e9) as u64
}

/// Converts nanoseconds to seconds of loop time.
#[inline]
#[must_use]
pub fn ns_to_secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_does_not_go_back() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a);
    }

    #[test]
    fn conversions_saturate() {
        assert_eq!(secs_to_ns(-1.0), 0);
        assert_eq!(secs_to_ns(f64::NAN), 0);
        assert_eq!(secs_to_ns(f64::INFINITY), u64::MAX);
        assert_eq!(secs_to_ns(1.5), 1_500_000_000);
        assert!((ns_to_secs(2_500_000_000) - 2.5).abs() < 1e-12);
    }
}
