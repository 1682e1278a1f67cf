use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::strategy::Active;
use super::{BuildContext, PickContext, Picker, Strategy};
use crate::pool::Member;

/// Each endpoint in turn, ignoring weights (except that weight-0 endpoints
/// are skipped while others are live).
///
/// The rotation starts at a random position for every snapshot, so many
/// clients that see the same update do not all start on the first endpoint.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundRobin;

/// The [`RoundRobin`] picker: one shared atomic counter.
#[derive(Debug)]
pub struct RoundRobinPicker {
    index: Box<[u32]>,
    next: AtomicUsize,
}

impl Strategy for RoundRobin {
    type Picker = RoundRobinPicker;

    fn build<S>(&self, members: &[Member<S>], ctx: &BuildContext<'_>) -> RoundRobinPicker {
        let active = Active::of(members);
        let start = if active.len() == 0 {
            0
        } else {
            ctx.rng.below(active.len())
        };
        RoundRobinPicker {
            index: active.index,
            next: AtomicUsize::new(start),
        }
    }
}

impl Picker for RoundRobinPicker {
    #[inline]
    fn pick<S>(&self, _members: &[Member<S>], _ctx: &PickContext<'_>) -> Option<usize> {
        if self.index.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Relaxed) % self.index.len();
        Some(self.index[n] as usize)
    }
}
