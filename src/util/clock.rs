//! The clock Peak-EWMA times requests with.
//!
//! Timing a request takes two clock reads, one when it is picked and one
//! when it ends. Through the operating system (`clock_gettime`, which is
//! what `std` and tokio read) a pair costs about as much as the rest of a
//! balanced round trip. With the `cpu-clock` feature (on by default) the
//! balancer reads the CPU's own counter instead (the TSC on x86-64, the
//! virtual counter on AArch64; the `quanta` crate checks that it ticks at a
//! constant rate on every core, calibrates it against the OS clock once per
//! process, and falls back to the OS clock where it cannot), which costs a
//! fraction of that and reads in nanoseconds all the same.
//!
//! Measured in the `roundtrip` bench on a 2-vCPU guest, the same build
//! with and without the feature: `peak_ewma` 139.8 against 160.5 ns per
//! request at N = 10 and 149.9 against 168.9 ns at N = 1 000, or 0.279
//! against 0.319 and 0.294 against 0.335 of tower's p2c over `PeakEwma`
//! in the same run; more than the run-to-run spread of those ratios.
//!
//! Tokio's clock can be paused (tests, the `sim` module); the
//! CPU's counter cannot. So the clock is chosen once per balancer, when it
//! is made: tokio's if tokio's clock is paused then, the CPU's otherwise.

use tokio::time::Instant;

/// Where a balancer reads the time for latency timing. One byte, so a
/// request carries it from pick to completion at no cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LatencyClock {
    /// Tokio's clock: nanoseconds since the pool's epoch. Follows a paused
    /// clock.
    Tokio,
    /// The CPU's counter: nanoseconds since the process first calibrated
    /// it.
    #[cfg(feature = "cpu-clock")]
    Cpu,
}

impl LatencyClock {
    /// The clock to time requests with from now on: tokio's while it is
    /// paused (or without the `cpu-clock` feature), the CPU's otherwise.
    ///
    /// The first call in a process that picks the CPU's counter calibrates
    /// it, which takes about a millisecond.
    pub(crate) fn detect() -> Self {
        #[cfg(feature = "cpu-clock")]
        if !tokio_paused() {
            // Calibrate now rather than on the first request's pick.
            cpu::Counter::get();
            return LatencyClock::Cpu;
        }
        LatencyClock::Tokio
    }

    /// Now, in nanoseconds: since `epoch` on tokio's clock, since an origin
    /// of its own on the CPU's. Readings are comparable only with readings
    /// of the same clock.
    #[inline]
    pub(crate) fn now_ns(self, epoch: Instant) -> u64 {
        match self {
            LatencyClock::Tokio => nanos_since(epoch),
            #[cfg(feature = "cpu-clock")]
            LatencyClock::Cpu => cpu::Counter::get().now_ns(),
        }
    }
}

/// Nanoseconds from `epoch` to now on tokio's clock, saturating.
#[inline]
pub(crate) fn nanos_since(epoch: Instant) -> u64 {
    u64::try_from(Instant::now().saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

/// `1 / tau` in nanoseconds for a Peak-EWMA decay time constant `tau`
/// (at least 1 ns): what the estimate decays and requests are timed with.
pub(crate) fn inv_tau_ns(decay: std::time::Duration) -> f64 {
    1.0 / (decay.as_nanos() as f64).max(1.0)
}

/// Whether tokio's clock is paused here: it then stands still while real
/// time passes (nothing can advance it during this synchronous call). Only
/// a current-thread runtime can pause its clock, so on any other (or
/// outside a runtime) the answer comes without looking.
#[cfg(feature = "cpu-clock")]
fn tokio_paused() -> bool {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let current = Handle::try_current().map(|h| h.runtime_flavor());
    if !matches!(current, Ok(RuntimeFlavor::CurrentThread)) {
        return false;
    }
    let first = Instant::now();
    // Read the OS clock until it has moved on (a few dozen nanoseconds on
    // a fine-grained clock): a running tokio clock, which reads the same
    // OS clock, has moved with it. On a clock too coarse to move within
    // the bound, this answers "paused", which only means timing on
    // tokio's clock: correct, at the OS clock's price.
    #[allow(
        clippy::disallowed_types,
        reason = "real time, whatever tokio's clock does"
    )]
    let real = std::time::Instant::now();
    for _ in 0..MAX_READINGS {
        if real.elapsed() > std::time::Duration::ZERO {
            break;
        }
    }
    Instant::now() == first
}

/// How many times [`tokio_paused`] reads the OS clock, at most, waiting for
/// it to move: a few microseconds' worth.
#[cfg(feature = "cpu-clock")]
const MAX_READINGS: u32 = 200;

#[cfg(feature = "cpu-clock")]
mod cpu {
    use std::sync::OnceLock;

    /// The CPU's counter, calibrated, and its reading at the origin.
    #[derive(Debug)]
    pub(crate) struct Counter {
        clock: quanta::Clock,
        origin: u64,
    }

    static COUNTER: OnceLock<Counter> = OnceLock::new();

    impl Counter {
        /// The process's counter, calibrated on first use.
        #[inline]
        pub(crate) fn get() -> &'static Counter {
            COUNTER.get_or_init(|| {
                let clock = quanta::Clock::new();
                let origin = clock.raw();
                Counter { clock, origin }
            })
        }

        #[inline]
        pub(crate) fn now_ns(&self) -> u64 {
            self.clock.delta_as_nanos(self.origin, self.clock.raw())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_paused_clock_is_timed_by_tokio() {
        assert!(matches!(LatencyClock::detect(), LatencyClock::Tokio));
        let epoch = Instant::now();
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(LatencyClock::Tokio.now_ns(epoch), 250_000_000);
    }

    #[cfg(feature = "cpu-clock")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_multi_thread_runtime_is_timed_by_the_cpu() {
        assert!(!tokio_paused(), "only a current-thread runtime can pause");
        assert!(matches!(LatencyClock::detect(), LatencyClock::Cpu));
    }

    #[cfg(feature = "cpu-clock")]
    #[tokio::test]
    async fn a_running_clock_is_timed_by_the_cpu_in_nanoseconds() {
        let clock = LatencyClock::detect();
        assert!(matches!(clock, LatencyClock::Cpu), "{clock:?}");
        let epoch = Instant::now();
        let start = clock.now_ns(epoch);
        std::thread::sleep(Duration::from_millis(20));
        let cpu = clock.now_ns(epoch) - start;
        let os = epoch.elapsed().as_nanos() as u64;
        // The counter agrees with the OS clock to well within a percent
        // (the OS span also covers the first reading).
        assert!(cpu >= 20_000_000, "{cpu}");
        assert!(cpu <= os + os / 100, "{cpu} vs {os}");
        assert!(cpu + os / 100 >= os - 1_000_000, "{cpu} vs {os}");
    }

    #[cfg(feature = "cpu-clock")]
    #[tokio::test(start_paused = true)]
    async fn pausing_tokio_switches_to_tokio_and_resuming_back() {
        assert!(matches!(LatencyClock::detect(), LatencyClock::Tokio));
        tokio::time::resume();
        for _ in 0..1_000 {
            assert!(matches!(LatencyClock::detect(), LatencyClock::Cpu));
        }
        tokio::time::pause();
        assert!(matches!(LatencyClock::detect(), LatencyClock::Tokio));
    }
}
