use super::rotation::Rotation;
use super::strategy::Live;
use super::{BuildContext, PickContext, Picker, Strategy};
use crate::pool::Members;

/// Each endpoint in turn, ignoring weights (except that weight-0 endpoints
/// are skipped while others are live).
///
/// The rotation starts at a random position for every snapshot, so many
/// clients that see the same update do not all start on the first endpoint.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundRobin;

/// The [`RoundRobin`] picker: the active endpoints and a rotation.
///
/// The rotation keeps one counter per group of threads, each on its own
/// cache line, all starting at the same place: one thread sees an exact
/// rotation, and threads picking at once each rotate on their own counter
/// instead of contending for one (every endpoint still gets its share).
#[derive(Debug)]
pub struct RoundRobinPicker {
    live: Live,
    next: Rotation,
}

impl Strategy for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    type Picker = RoundRobinPicker;

    fn build<S>(&self, members: Members<'_, S>, ctx: &BuildContext<'_>) -> RoundRobinPicker {
        let live = Live::of(members);
        let start = if live.len() == 0 {
            0
        } else {
            ctx.rng.below(live.len())
        };
        RoundRobinPicker {
            live,
            next: Rotation::new(start),
        }
    }
}

impl Picker for RoundRobinPicker {
    #[inline]
    fn pick<S>(&self, _members: Members<'_, S>, _ctx: &PickContext<'_>) -> Option<usize> {
        let len = self.live.len();
        if len == 0 {
            return None;
        }
        self.live.get(self.next.next() % len)
    }
}
