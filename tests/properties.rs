//! Properties that hold for any input, checked with proptest: shares
//! follow weights for every weight-aware strategy, over random weight
//! vectors with duplicated and drained (0) weights.
//!
//! Each case runs on its own current-thread runtime with a paused clock.
//! Tolerances are stated per property. Balancers are seeded from the case
//! (`seed`), so a failing case, which proptest prints and saves in
//! `tests/properties.proptest-regressions`, replays exactly.

#[path = "support/mock.rs"]
mod mock;

use proptest::prelude::*;
use tokio::runtime::{Builder, Runtime};
use tower::{Layer, ServiceExt};
use tower_lb::Endpoint;
use tower_lb::balance::{
    self, Balance, BalanceLayer, LeastInFlight, Maglev, PeakEwma, Rendezvous, Ring, WeightedRandom,
    WeightedRoundRobin, WhenEmpty,
};
use tower_lb::discover::StaticSource;
use tower_lb::pool::DiscoverLayer;

use mock::{Backend, Backends, Behaviour};

/// Cases per property: enough to meet duplicated, drained and all-equal
/// weights every run, few enough to run in a second or two.
const CASES: u32 = 32;

/// Picks per case for the random strategies.
const PICKS: usize = 20_000;

/// Points per unit of weight on the ketama ring: fewer than nginx's 160,
/// which take seconds to place in a debug build at Σw = 2 000. The share
/// rule is the same (points in proportion to weight).
const RING_POINTS: u32 = 20;

/// How many standard deviations of sampling noise a share may be off.
/// At 6σ a correct strategy fails one comparison in about 10⁹, and a run
/// makes a few thousand.
const SIGMAS: f64 = 6.0;

fn runtime() -> Runtime {
    Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

/// The endpoint `ep-{i}`: keyed by name, with no address.
fn endpoint(i: usize, weight: u32) -> Endpoint {
    Endpoint::builder(format!("ep-{i}"))
        .weight(weight)
        .build()
        .expect("a valid endpoint")
}

/// The `i` of `ep-{i}`.
fn index_of(key: &str) -> usize {
    key.strip_prefix("ep-")
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("not an endpoint of these tests: {key}"))
}

/// 2..=20 weights of 1..=100, about one in eight 0 (drained), at least
/// one live. Half the vectors draw from a palette of one to three values,
/// so duplicated and all-equal weights (which some strategies treat
/// apart) come up in most runs.
fn weight_vectors() -> impl Strategy<Value = Vec<u32>> {
    let weight = prop_oneof![1 => Just(0_u32), 7 => 1..=100_u32];
    let free = prop::collection::vec(weight.clone(), 2..=20);
    let palette = prop::collection::vec(weight, 1..=3)
        .prop_flat_map(|p| prop::collection::vec(prop::sample::select(p), 2..=20));
    prop_oneof![free, palette].prop_filter("some endpoint is live", |w| w.iter().any(|&w| w > 0))
}

/// A seeded balancer over endpoints `ep-0…` with `weights`, the pool
/// filled.
async fn balancer<St>(strategy: St, weights: &[u32], seed: u64) -> Balance<Backend, St>
where
    St: balance::Strategy + Clone,
{
    let endpoints = weights.iter().enumerate().map(|(i, &w)| endpoint(i, w));
    let pool = DiscoverLayer::new(StaticSource::new(endpoints)).layer(Backends::new().connector());
    assert!(pool.applied(1).await, "the static list was applied");
    BalanceLayer::new(strategy)
        .seed(seed)
        .when_empty(WhenEmpty::FailFast)
        .layer(pool)
}

/// SplitMix64: the request keys for the hash strategies.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Picks per endpoint (by `ep-{i}`) over `PICKS` picks; `keyed` gives
/// each pick a random hashed key from `seed`.
fn pick_counts<St: balance::Strategy>(
    lb: &Balance<Backend, St>,
    n: usize,
    keyed: Option<u64>,
) -> Vec<u64> {
    let snapshot = lb.snapshot();
    let slot: Vec<usize> = snapshot
        .members()
        .iter()
        .map(|m| index_of(m.endpoint().key()))
        .collect();
    let mut counts = vec![0; n];
    for k in 0..PICKS as u64 {
        let key = keyed.map(|seed| splitmix(seed ^ splitmix(k)));
        let i = lb
            .pick_index_keyed(key, 0)
            .expect("a live endpoint to pick");
        counts[slot[i]] += 1;
    }
    counts
}

/// Checks each endpoint's share of `counts` against `weight / sum`: a
/// drained endpoint gets exactly nothing, the others are within
/// [`SIGMAS`] standard deviations of sampling noise plus `bias(p)`, what
/// the strategy itself may be off by for an expected share `p`.
fn check_shares(
    name: &str,
    weights: &[u32],
    counts: &[u64],
    bias: impl Fn(f64) -> f64,
) -> Result<(), TestCaseError> {
    let total: u64 = counts.iter().sum();
    let sum: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    for (i, (&w, &c)) in weights.iter().zip(counts).enumerate() {
        if w == 0 {
            prop_assert_eq!(
                c,
                0,
                "{}: drained ep-{} was picked; counts {:?}",
                name,
                i,
                counts
            );
            continue;
        }
        let p = f64::from(w) / sum as f64;
        let share = c as f64 / total as f64;
        let tolerance = SIGMAS * (p * (1.0 - p) / total as f64).sqrt() + bias(p);
        prop_assert!(
            (share - p).abs() <= tolerance,
            "{}: ep-{} (weight {}) got {:.5}, expected {:.5} ± {:.5}; counts {:?}",
            name,
            i,
            w,
            share,
            p,
            tolerance,
            counts
        );
    }
    Ok(())
}

/// No strategy bias: the share is exact in expectation.
fn unbiased(_: f64) -> f64 {
    0.0
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Weighted round robin, through real requests: in each of two whole
    /// cycles (Σ weights requests) every endpoint is sent exactly its
    /// weight, and a drained one nothing. Tolerance: none.
    #[test]
    fn weighted_round_robin_is_exact_over_each_cycle(weights in weight_vectors(), seed in any::<u64>()) {
        runtime().block_on(async {
            let lb = balancer(WeightedRoundRobin, &weights, seed).await;
            let cycle: u64 = weights.iter().map(|&w| u64::from(w)).sum();
            for round in 0..2 {
                let mut counts = vec![0_u32; weights.len()];
                for _ in 0..cycle {
                    let key = lb.clone().oneshot(Behaviour::Answer).await.expect("an answer");
                    counts[index_of(&key)] += 1;
                }
                prop_assert_eq!(&counts, &weights, "cycle {}", round);
            }
            Ok::<_, TestCaseError>(())
        })?;
    }

    /// The random weight-aware strategies, over [`PICKS`] picks from a
    /// balancer seeded with `seed`: weighted random (alias table), the two
    /// P2C strategies while idle (the tie goes to the first draw, which is
    /// by weight), and the hash strategies over random keys. Tolerance:
    /// [`SIGMAS`] standard deviations of sampling noise, plus, for Maglev,
    /// 2 % of the share (its table is filled in whole slots) and, for the
    /// ketama ring, [`SIGMAS`] standard deviations of where its points
    /// land on the circle (a share of the circle is Beta-distributed, with
    /// [`RING_POINTS`]·Σw trials).
    #[test]
    fn random_strategies_follow_weights(weights in weight_vectors(), seed in any::<u64>()) {
        let n = weights.len();
        let points = f64::from(RING_POINTS) * weights.iter().map(|&w| f64::from(w)).sum::<f64>();
        runtime().block_on(async {
            let lb = balancer(WeightedRandom, &weights, seed).await;
            check_shares("WeightedRandom", &weights, &pick_counts(&lb, n, None), unbiased)?;
            let lb = balancer(LeastInFlight, &weights, seed).await;
            check_shares("LeastInFlight", &weights, &pick_counts(&lb, n, None), unbiased)?;
            let lb = balancer(PeakEwma::new(), &weights, seed).await;
            check_shares("PeakEwma", &weights, &pick_counts(&lb, n, None), unbiased)?;
            let lb = balancer(Rendezvous::new(), &weights, seed).await;
            check_shares("Rendezvous", &weights, &pick_counts(&lb, n, Some(seed)), unbiased)?;
            let lb = balancer(Maglev::new(), &weights, seed).await;
            check_shares("Maglev", &weights, &pick_counts(&lb, n, Some(seed)), |p| 0.02 * p)?;
            let lb = balancer(Ring::new().points_per_weight(RING_POINTS), &weights, seed).await;
            check_shares("Ring", &weights, &pick_counts(&lb, n, Some(seed)), |p| {
                SIGMAS * (p * (1.0 - p) / points).sqrt()
            })?;
            Ok::<_, TestCaseError>(())
        })?;
    }
}
