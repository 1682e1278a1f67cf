use super::strategy::Live;
use super::{BuildContext, PickContext, Picker, Strategy};
use crate::pool::Members;

/// A uniformly random endpoint, ignoring weights (except that weight-0
/// endpoints are skipped while others are live).
#[derive(Debug, Clone, Copy, Default)]
pub struct Random;

/// The [`Random`] picker.
#[derive(Debug)]
pub struct RandomPicker {
    live: Live,
}

impl Strategy for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    type Picker = RandomPicker;

    fn build<S>(&self, members: Members<'_, S>, _ctx: &BuildContext<'_>) -> RandomPicker {
        RandomPicker {
            live: Live::of(members),
        }
    }
}

impl Picker for RandomPicker {
    #[inline]
    fn pick<S>(&self, _members: Members<'_, S>, ctx: &PickContext<'_>) -> Option<usize> {
        match self.live.len() {
            0 => None,
            n => self.live.get(ctx.rng.below(n)),
        }
    }
}
