use std::time::Duration;

use tokio::time::Instant;

use super::hash::KeyHash;
use crate::PickRng;
use crate::pool::Members;
use crate::util::clock::LatencyClock;

/// How a balancer chooses an endpoint: builds one immutable [`Picker`] per
/// set of members (a snapshot of the pool, or one priority tier of a
/// failover view).
///
/// Building happens off the request path (when discovery or failover
/// publishes a new snapshot), so a strategy may precompute tables there;
/// the picker's [`pick`](Picker::pick) runs on every request and must be
/// lock-free and allocation-free.
pub trait Strategy: Send + Sync + 'static {
    /// The per-snapshot picker.
    type Picker: Picker;

    /// Builds the picker for `members`.
    fn build<S>(&self, members: Members<'_, S>, ctx: &BuildContext<'_>) -> Self::Picker;

    /// How long a balancer may wait, once the set it picks from has
    /// changed, before it rebuilds this strategy's picker, so that the
    /// changes arriving meanwhile are built in the same rebuild: a rollout
    /// of 1 000 changes then costs one table, not 1 000. Picks keep using
    /// the previous picker, and the previous set, until the rebuild is
    /// published.
    ///
    /// `members` is the new set, so a strategy whose table is needed only
    /// for some sets can ask for the delay only then.
    ///
    /// [`REBUILD_DELAY`] when the picker for `members` is a table that
    /// costs O(N) or more to build: always for [`Maglev`](super::Maglev)
    /// and [`Ring`](super::Ring), and for skewed weights with
    /// [`WeightedRandom`](super::WeightedRandom). Zero (rebuild on every
    /// change) by default, and for
    /// [`WeightedRoundRobin`](super::WeightedRoundRobin), whose cycle of
    /// at most 65 536 slots is rebuilt at once so a removed endpoint
    /// leaves the rotation when the pool applies the removal. A set that was or becomes
    /// empty is always built at once. Override it for one balancer with
    /// [`BalanceLayer::rebuild_delay`](super::BalanceLayer::rebuild_delay).
    fn rebuild_delay<S>(&self, members: Members<'_, S>) -> Duration {
        let _ = members;
        Duration::ZERO
    }

    /// How the balancer hashes a request's key for this strategy's
    /// pickers: their [`KEY_HASH`](Picker::KEY_HASH), unless the strategy
    /// chooses its picker at run time ([`AnyStrategy`](super::AnyStrategy)).
    /// Read once, when the balancer is made.
    fn key_hash(&self) -> KeyHash {
        <Self::Picker as Picker>::KEY_HASH
    }

    /// The strategy's name, as status reports and metric labels show it.
    /// The built-in strategies give the names of
    /// [`AnyStrategy::NAMES`](super::AnyStrategy::NAMES); by default, the
    /// type's own name without its path or generics.
    fn name(&self) -> &'static str {
        short_type_name(std::any::type_name::<Self>())
    }
}

/// `a::b::Name<c::D>` → `Name`.
fn short_type_name(full: &'static str) -> &'static str {
    let bare = full.split('<').next().unwrap_or(full);
    bare.rsplit("::").next().unwrap_or(bare)
}

/// The [`Strategy::rebuild_delay`] of the table strategies: 10 ms.
///
/// Envoy merges host updates over a window too (`update_merge_window`,
/// 1 s by default, and only for health and weight changes). Ten
/// milliseconds gathers a burst, since a rollout's changes arrive
/// milliseconds apart. It is also short: a removed or ejected endpoint
/// stays in the table no longer than one failed attempt and its retry
/// take. So it applies to every kind of change.
pub const REBUILD_DELAY: Duration = Duration::from_millis(10);

/// The longest [`BalanceLayer::rebuild_delay`](super::BalanceLayer::rebuild_delay)
/// accepted: one second, Envoy's default merge window.
pub const MAX_REBUILD_DELAY: Duration = Duration::from_secs(1);

/// What a strategy may use to build a picker, besides the members.
#[derive(Debug)]
#[non_exhaustive]
pub struct BuildContext<'a> {
    /// The balancer's random source (for random starting points).
    pub rng: &'a PickRng,
    /// The instant the members' latency stamps count from on tokio's
    /// clock.
    pub epoch: Instant,
    /// The clock requests are timed with: the balancer's, chosen once
    /// when it was made.
    clock: LatencyClock,
}

impl<'a> BuildContext<'a> {
    /// A context for building pickers outside a balancer (tests,
    /// benchmarks, a balancer of your own).
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn new(rng: &'a PickRng, epoch: Instant) -> Self {
        Self::with_clock(rng, epoch, LatencyClock::detect())
    }

    /// A context for a balancer that times requests with `clock`.
    pub(crate) fn with_clock(rng: &'a PickRng, epoch: Instant, clock: LatencyClock) -> Self {
        BuildContext { rng, epoch, clock }
    }

    /// The clock latency is timed with: the same for every picker and for
    /// the balancer that times their requests.
    pub(crate) fn latency_clock(&self) -> LatencyClock {
        self.clock
    }
}

/// Picks one of the members it was built for.
pub trait Picker: Send + Sync + 'static {
    /// The index into `members` (the same members, in the same order, as
    /// the picker was built for) of the endpoint for the next request, or
    /// `None` when there is none to pick. Pickers hold indices, not
    /// endpoints: load and latency are read from `members`' stats.
    fn pick<S>(&self, members: Members<'_, S>, ctx: &PickContext<'_>) -> Option<usize>;

    /// The `n`th choice (`n = 0` is [`pick`](Picker::pick)) in this
    /// request's fallback order: where a retry goes when the first `n`
    /// choices were tried. Hash pickers yield the key's own order (distinct
    /// endpoints, the same for every request with that key), so moving one
    /// key on does not disturb any other; the default draws again, which is
    /// what a random or rotating picker's order is.
    fn pick_nth<S>(
        &self,
        members: Members<'_, S>,
        ctx: &PickContext<'_>,
        n: usize,
    ) -> Option<usize> {
        let _ = n;
        self.pick(members, ctx)
    }

    /// How this picker wants a request's key hashed into
    /// [`PickContext::key`]. Only hash pickers read the key.
    const KEY_HASH: KeyHash = KeyHash::Xxh64;

    /// When `Some(decay)`, the balancer times each response and folds it
    /// into the endpoint's Peak-EWMA estimate with that time constant (two
    /// clock reads per request: of the CPU's counter with the `cpu-clock`
    /// feature while tokio's clock runs, of tokio's clock otherwise). `None`
    /// unless the picker reads latency.
    fn ewma_decay(&self) -> Option<Duration> {
        None
    }
}

/// What a picker may use besides its own state.
#[derive(Debug)]
#[non_exhaustive]
pub struct PickContext<'a> {
    /// The balancer's random source.
    pub rng: &'a PickRng,
    /// Now, in nanoseconds on the clock the balancer times requests with,
    /// when it has already read it (it does when the picker asks for
    /// latency timing). On tokio's clock that is since the snapshot's
    /// [epoch](crate::pool::Snapshot::epoch); on the CPU's counter
    /// (feature `cpu-clock`) since an origin of its own. Either way it is
    /// the clock the members' Peak-EWMA stamps were taken with.
    pub now_ns: Option<u64>,
    /// The request's key, hashed with the picker's
    /// [`KEY_HASH`](Picker::KEY_HASH), when the balancer has a key
    /// extractor and the request has a key. Hash pickers route by it and
    /// hand requests without one to their fallback.
    pub key: Option<u64>,
}

impl<'a> PickContext<'a> {
    /// A context drawing from `rng`, with no key.
    pub fn new(rng: &'a PickRng) -> Self {
        PickContext {
            rng,
            now_ns: None,
            key: None,
        }
    }

    /// The same context for a request with this (hashed) key.
    #[must_use]
    pub fn with_key(mut self, key: Option<u64>) -> Self {
        self.key = key;
        self
    }
}

/// The members a strategy that ignores weights picks from: all of them
/// when none drains (or all do), built in O(1); otherwise those with a
/// weight.
#[derive(Debug)]
pub(crate) enum Live {
    /// Members `0..n`.
    All(usize),
    /// These members.
    Some(Box<[u32]>),
}

impl Live {
    pub(crate) fn of<S>(members: Members<'_, S>) -> Self {
        let w = members.weights();
        if w.live == w.count || w.live == 0 {
            Live::All(members.len())
        } else {
            Live::Some(Active::of(members).index)
        }
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        match self {
            Live::All(n) => *n,
            Live::Some(index) => index.len(),
        }
    }

    /// The `i`th live member's index; `i` is below [`len`](Live::len).
    #[inline]
    pub(crate) fn get(&self, i: usize) -> Option<usize> {
        match self {
            Live::All(n) => (i < *n).then_some(i),
            Live::Some(index) => index.get(i).map(|&m| m as usize),
        }
    }
}

/// The endpoints a weighted strategy picks from: those with a non-zero
/// weight, or, when every endpoint is draining (weight 0), all of them with
/// equal weight — a set that is draining as a whole still serves rather
/// than failing every request.
#[derive(Debug, Clone)]
pub(crate) struct Active {
    /// Indices into the snapshot.
    pub(crate) index: Box<[u32]>,
    /// Their weights, all non-zero.
    pub(crate) weight: Box<[u32]>,
}

impl Active {
    pub(crate) fn of<S>(members: Members<'_, S>) -> Self {
        let any_live = members.iter().any(|m| m.endpoint().weight() > 0);
        let (index, weight) = members
            .iter()
            .enumerate()
            .filter(|(_, m)| !any_live || m.endpoint().weight() > 0)
            .map(|(i, m)| (i as u32, m.endpoint().weight().max(1)))
            .unzip::<_, _, Vec<_>, Vec<_>>();
        Active {
            index: index.into(),
            weight: weight.into(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn uniform(&self) -> bool {
        self.weight.windows(2).all(|w| w[0] == w[1])
    }
}

#[cfg(test)]
mod name_tests {
    use super::short_type_name;

    #[test]
    fn the_default_name_is_the_bare_type_name() {
        assert_eq!(short_type_name("my_crate::lb::Fastest"), "Fastest");
        assert_eq!(
            short_type_name("my_crate::lb::Zoned<tower_lb::balance::RoundRobin>"),
            "Zoned"
        );
        assert_eq!(short_type_name("Plain"), "Plain");
    }
}
