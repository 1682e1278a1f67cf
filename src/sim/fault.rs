//! Faults on a schedule.

use std::ops::Range;
use std::time::Duration;

use super::InvalidSim;

/// What goes wrong with a simulated backend during a fault window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Every latency drawn is multiplied by this factor (finite, above 0;
    /// below 1 makes the backend faster).
    Slow(f64),
    /// Every request fails, after its usual latency (a server answering
    /// with errors).
    Fail,
    /// The backend has gone away: every request fails at once, as a
    /// refused connection does.
    Down,
}

/// When a backend's faults happen: windows of time, measured from the
/// backend's origin, each with a [`Fault`].
///
/// Windows may overlap: then `Down` wins over `Fail`, which wins over
/// `Slow`, and the factors of overlapping `Slow` windows multiply. A
/// window includes its start and excludes its end.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::sim::{Fault, FaultSchedule};
///
/// let s = Duration::from_secs;
/// let schedule = FaultSchedule::new()
///     .with(s(15)..s(45), Fault::Slow(10.0)).unwrap()
///     .with(s(50)..s(55), Fault::Down).unwrap();
/// assert_eq!(schedule.at(s(10)), None);
/// assert_eq!(schedule.at(s(15)), Some(Fault::Slow(10.0)));
/// assert_eq!(schedule.at(s(45)), None);
/// assert_eq!(schedule.at(s(52)), Some(Fault::Down));
/// ```
#[derive(Debug, Clone, Default)]
pub struct FaultSchedule {
    windows: Vec<(Range<Duration>, Fault)>,
}

impl FaultSchedule {
    /// No faults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `fault` for `window`. Fails for an empty window or a slow-down
    /// factor that is not finite and above zero.
    pub fn with(mut self, window: Range<Duration>, fault: Fault) -> Result<Self, InvalidSim> {
        if window.start >= window.end {
            return Err(InvalidSim::EmptyWindow(window));
        }
        if let Fault::Slow(f) = fault {
            if !(f.is_finite() && f > 0.0) {
                return Err(InvalidSim::SlowFactor(f));
            }
        }
        self.windows.push((window, fault));
        Ok(self)
    }

    /// Whether there are no faults at all.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// The fault in force `elapsed` after the origin, if any.
    pub fn at(&self, elapsed: Duration) -> Option<Fault> {
        let mut out: Option<Fault> = None;
        for (window, fault) in &self.windows {
            if !window.contains(&elapsed) {
                continue;
            }
            out = Some(match (out, *fault) {
                (Some(Fault::Down), _) | (_, Fault::Down) => Fault::Down,
                (Some(Fault::Fail), _) | (_, Fault::Fail) => Fault::Fail,
                (Some(Fault::Slow(a)), Fault::Slow(b)) => Fault::Slow(a * b),
                (None, Fault::Slow(b)) => Fault::Slow(b),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn windows_are_half_open() {
        let f = FaultSchedule::new()
            .with(s(15)..s(45), Fault::Slow(10.0))
            .unwrap();
        assert_eq!(f.at(s(15) - Duration::from_nanos(1)), None);
        assert_eq!(f.at(s(15)), Some(Fault::Slow(10.0)));
        assert_eq!(
            f.at(s(45) - Duration::from_nanos(1)),
            Some(Fault::Slow(10.0))
        );
        assert_eq!(f.at(s(45)), None);
    }

    #[test]
    fn overlaps_combine() {
        let f = FaultSchedule::new()
            .with(s(0)..s(10), Fault::Slow(2.0))
            .unwrap()
            .with(s(5)..s(20), Fault::Slow(3.0))
            .unwrap()
            .with(s(8)..s(9), Fault::Fail)
            .unwrap()
            .with(s(8)..s(12), Fault::Down)
            .unwrap()
            .with(s(11)..s(13), Fault::Fail)
            .unwrap();
        assert_eq!(f.at(s(1)), Some(Fault::Slow(2.0)));
        assert_eq!(f.at(s(6)), Some(Fault::Slow(6.0)));
        assert_eq!(f.at(s(8)), Some(Fault::Down));
        assert_eq!(f.at(s(11)), Some(Fault::Down));
        assert_eq!(f.at(s(12)), Some(Fault::Fail));
        assert_eq!(f.at(s(15)), Some(Fault::Slow(3.0)));
        assert_eq!(f.at(s(20)), None);
    }

    #[test]
    fn rejects_bad_windows_and_factors() {
        assert!(FaultSchedule::new().with(s(5)..s(5), Fault::Fail).is_err());
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = s(5)..s(1);
        assert!(FaultSchedule::new().with(backwards, Fault::Fail).is_err());
        for f in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(
                FaultSchedule::new()
                    .with(s(0)..s(1), Fault::Slow(f))
                    .is_err()
            );
        }
    }
}
