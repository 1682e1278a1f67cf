use super::strategy::Active;
use super::{BuildContext, PickContext, Picker, Strategy};
use crate::pool::Members;

/// A uniformly random endpoint, ignoring weights (except that weight-0
/// endpoints are skipped while others are live).
#[derive(Debug, Clone, Copy, Default)]
pub struct Random;

/// The [`Random`] picker.
#[derive(Debug)]
pub struct RandomPicker {
    index: Box<[u32]>,
}

impl Strategy for Random {
    type Picker = RandomPicker;

    fn build<S>(&self, members: Members<'_, S>, _ctx: &BuildContext<'_>) -> RandomPicker {
        RandomPicker {
            index: Active::of(members).index,
        }
    }
}

impl Picker for RandomPicker {
    #[inline]
    fn pick<S>(&self, _members: Members<'_, S>, ctx: &PickContext<'_>) -> Option<usize> {
        match self.index.len() {
            0 => None,
            n => Some(self.index[ctx.rng.below(n)] as usize),
        }
    }
}
