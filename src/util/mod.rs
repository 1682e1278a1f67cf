//! Leaf utilities that several stages share and that depend on no stage:
//! the random numbers picks and backoff jitter draw from, the clock
//! latency is timed with, and the cell stages publish their sets through.

pub(crate) mod clock;
pub(crate) mod publish;
pub(crate) mod rng;
