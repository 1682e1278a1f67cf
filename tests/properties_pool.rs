//! A pool update never loses the stats of an endpoint whose key stays,
//! checked with proptest: over random whole sets, upserts, removals,
//! re-weights, tier and address changes from a `ManualSource`, with
//! requests in between (some held open across updates), such an endpoint
//! keeps the same `StatsHandle` and its counters never go back.
//!
//! Each case runs on its own current-thread runtime with a paused clock,
//! and every check is exact (no tolerance). The balancer is seeded from
//! the case (`seed`); a failing case, which proptest prints and saves in
//! `tests/properties_pool.proptest-regressions`, replays exactly.

#[path = "support/mock.rs"]
mod mock;

use std::collections::HashMap;
use std::net::SocketAddr;

use proptest::prelude::*;
use tokio::task::JoinHandle;
use tower::{Layer, ServiceExt};
use tower_lb::balance::{BalanceLayer, RoundRobin, WhenEmpty};
use tower_lb::discover::ManualSource;
use tower_lb::pool::{Pool, PoolConfig, StatsHandle};
use tower_lb::{Endpoint, Error};

use mock::{Backend, Backends, Behaviour, Gate, name, paused_runtime as runtime};

/// Cases per property.
const CASES: u32 = 32;

/// Keys `ep-0..ep-{KEYS - 1}`.
const KEYS: usize = 6;

/// An endpoint as an update lists it: key, weight, priority, and one of
/// two addresses (or none).
type Spec = (usize, u32, u8, Option<u8>);

#[derive(Debug, Clone)]
enum Change {
    /// The whole set.
    Set(Vec<Spec>),
    /// Add or replace by key.
    Add(Vec<Spec>),
    Remove(Vec<usize>),
    /// Re-announce a key with another weight (an add when it is absent).
    Reweight(usize, u32),
    /// Re-announce a key in another tier (an add when it is absent).
    Reprioritise(usize, u8),
    /// Send requests, of which every `fail`th fails, and hold one open
    /// until the next update but one.
    Requests(usize, usize),
}

#[derive(Debug, Clone)]
struct UpdateCase {
    changes: Vec<Change>,
    keep_last_on_empty: bool,
    seed: u64,
}

fn update_cases() -> impl Strategy<Value = UpdateCase> {
    let spec = (0..KEYS, 0..=5_u32, 0..=2_u8, prop::option::of(0..2_u8));
    let change = prop_oneof![
        2 => prop::collection::vec(spec.clone(), 0..=KEYS).prop_map(Change::Set),
        2 => prop::collection::vec(spec, 1..=3).prop_map(Change::Add),
        2 => prop::collection::vec(0..KEYS, 1..=3).prop_map(Change::Remove),
        2 => (0..KEYS, 0..=5_u32).prop_map(|(k, w)| Change::Reweight(k, w)),
        1 => (0..KEYS, 0..=2_u8).prop_map(|(k, p)| Change::Reprioritise(k, p)),
        3 => (1..=12_usize, 2..=5_usize).prop_map(|(n, f)| Change::Requests(n, f)),
    ];
    (
        prop::collection::vec(change, 1..=30),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(changes, keep_last_on_empty, seed)| UpdateCase {
            changes,
            keep_last_on_empty,
            seed,
        })
}

fn build((key, weight, priority, address): Spec) -> Endpoint {
    let mut b = Endpoint::builder(name(key))
        .weight(weight)
        .priority(priority);
    if let Some(a) = address {
        b = b.address(SocketAddr::from(([127, 0, 0, 1], 9_000 + u16::from(a))));
    }
    b.build().expect("a valid endpoint")
}

/// The set an update leads to, as the pool documents it: a snapshot
/// replaces the set (the last endpoint of a key wins), a delta upserts
/// then removes; with `keep_last_on_empty`, an update that would empty a
/// non-empty set is ignored.
fn expected(current: &[Endpoint], change: &Change, keep_last_on_empty: bool) -> Vec<Endpoint> {
    let mut next: Vec<Endpoint> = match change {
        Change::Set(_) => Vec::new(),
        _ => current.to_vec(),
    };
    let upsert = |next: &mut Vec<Endpoint>, ep: Endpoint| match next
        .iter_mut()
        .find(|e| e.key() == ep.key())
    {
        Some(e) => *e = ep,
        None => next.push(ep),
    };
    match change {
        Change::Set(list) | Change::Add(list) => {
            for &spec in list {
                upsert(&mut next, build(spec));
            }
        }
        Change::Remove(keys) => next.retain(|e| !keys.iter().any(|&k| e.key() == name(k))),
        Change::Reweight(..) | Change::Reprioritise(..) => {
            upsert(
                &mut next,
                reannounced(current, change).expect("a re-announce"),
            );
        }
        Change::Requests(..) => {}
    }
    if next.is_empty() && !current.is_empty() && keep_last_on_empty {
        return current.to_vec();
    }
    next
}

/// The endpoint a re-weight or re-prioritisation announces: the current
/// one with that change, or a new one.
fn reannounced(current: &[Endpoint], change: &Change) -> Option<Endpoint> {
    let (key, f): (usize, Box<dyn Fn(Endpoint) -> Endpoint>) = match *change {
        Change::Reweight(k, w) => (k, Box::new(move |e: Endpoint| e.with_weight(w))),
        Change::Reprioritise(k, p) => (k, Box::new(move |e: Endpoint| e.with_priority(p))),
        _ => return None,
    };
    let base = current
        .iter()
        .find(|e| e.key() == name(key))
        .cloned()
        .unwrap_or_else(|| build((key, 1, 0, None)));
    Some(f(base))
}

/// Each key's stats handle and counters as last seen.
type Seen = HashMap<String, (StatsHandle, u64, u64)>;

fn seen(pool: &Pool<Backend>) -> Seen {
    pool.snapshot()
        .members()
        .iter()
        .map(|m| {
            let s = m.stats();
            (
                m.endpoint().key().to_owned(),
                (s.clone(), s.successes(), s.failures()),
            )
        })
        .collect()
}

async fn updates_keep_stats(case: &UpdateCase) -> Result<(), TestCaseError> {
    let backends = Backends::new();
    let (handle, source) = ManualSource::new();
    let config = PoolConfig::new().keep_last_on_empty(case.keep_last_on_empty);
    let pool = Pool::spawn(source, backends.connector(), config);
    let lb = BalanceLayer::new(RoundRobin)
        .seed(case.seed)
        .when_empty(WhenEmpty::FailFast)
        .layer(pool.clone());
    let revision = handle.set(Vec::new());
    prop_assert!(pool.applied(revision).await);

    let mut model: Vec<Endpoint> = Vec::new();
    let mut before = seen(&pool);
    // Stats of keys that were removed, to see what a re-added key gets.
    let mut gone: HashMap<String, StatsHandle> = HashMap::new();
    // Requests held open across updates.
    let mut held: Vec<(Gate, JoinHandle<Result<String, Error>>)> = Vec::new();
    for (step, change) in case.changes.iter().enumerate() {
        let revision = match change {
            Change::Set(list) => handle.set(list.iter().map(|&s| build(s))),
            Change::Add(list) => handle.add(list.iter().map(|&s| build(s))),
            Change::Remove(keys) => handle.remove(keys.iter().map(|&k| name(k))),
            Change::Reweight(..) | Change::Reprioritise(..) => {
                handle.add(reannounced(&model, change))
            }
            Change::Requests(n, fail) => {
                for i in 0..*n {
                    let behaviour = if i % fail == 0 {
                        Behaviour::Fail
                    } else {
                        Behaviour::Answer
                    };
                    let _ = lb.clone().oneshot(behaviour).await;
                }
                let gate = Gate::new();
                let task = tokio::spawn(lb.clone().oneshot(Behaviour::When(gate.clone())));
                tokio::task::yield_now().await;
                held.push((gate, task));
                if held.len() > 2 {
                    let (gate, task) = held.remove(0);
                    gate.open();
                    let _ = task.await;
                }
                let now = seen(&pool);
                for (key, (stats, s, f)) in &now {
                    let (_, s0, f0) = &before[key];
                    prop_assert!(
                        s >= s0 && f >= f0,
                        "step {}: {} went back from ({}, {}) to ({}, {}) with no update; {:?}",
                        step,
                        key,
                        s0,
                        f0,
                        s,
                        f,
                        stats
                    );
                }
                before = now;
                continue;
            }
        };
        prop_assert!(
            pool.applied(revision).await,
            "step {}: update {} applied",
            step,
            revision
        );
        model = expected(&model, change, case.keep_last_on_empty);

        let snapshot = pool.snapshot();
        let mut keys: Vec<&str> = snapshot
            .members()
            .iter()
            .map(|m| m.endpoint().key())
            .collect();
        let mut want: Vec<&str> = model.iter().map(Endpoint::key).collect();
        keys.sort_unstable();
        want.sort_unstable();
        prop_assert_eq!(&keys, &want, "step {}: {:?}", step, change);
        let now = seen(&pool);
        for m in snapshot.members() {
            let key = m.endpoint().key();
            let announced = model.iter().find(|e| e.key() == key).expect("in the model");
            prop_assert_eq!(
                (
                    m.endpoint().weight(),
                    m.endpoint().priority(),
                    m.endpoint().address()
                ),
                (
                    announced.weight(),
                    announced.priority(),
                    announced.address()
                ),
                "step {}: {} as announced",
                step,
                key
            );
            let (stats, s, f) = &now[key];
            match before.get(key) {
                // Kept: the same stats, counters not gone back.
                Some((old, s0, f0)) => {
                    prop_assert!(
                        StatsHandle::ptr_eq(old, stats),
                        "step {}: {} kept its key but got new stats after {:?}",
                        step,
                        key,
                        change
                    );
                    prop_assert!(
                        s >= s0 && f >= f0,
                        "step {}: {} went back from ({}, {}) to ({}, {}) after {:?}",
                        step,
                        key,
                        s0,
                        f0,
                        s,
                        f,
                        change
                    );
                }
                // What the code does (src/pool/driver.rs, `members_for`):
                // stats carry over only from the set being replaced, so a
                // key that comes back after a removal starts afresh.
                None => {
                    if let Some(old) = gone.get(key) {
                        prop_assert!(!StatsHandle::ptr_eq(old, stats), "step {}: {}", step, key);
                    }
                    prop_assert_eq!((*s, *f), (0, 0), "step {}: {} is new", step, key);
                }
            }
        }
        for (key, (stats, ..)) in &before {
            if !now.contains_key(key) {
                gone.insert(key.clone(), stats.clone());
            }
        }
        before = now;
    }
    for (gate, task) in held {
        gate.open();
        let _ = task.await;
    }
    for m in pool.snapshot().members() {
        prop_assert_eq!(m.stats().in_flight(), 0, "{}", m.endpoint().key());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Random updates from a `ManualSource` (whole sets, upserts,
    /// removals, re-weights, tier and address changes, with and without
    /// `keep_last_on_empty`), with requests in between and some held open
    /// across updates: after each update the pool holds exactly the keys
    /// and metadata announced; a key that stays keeps the same stats and
    /// its successes and failures never go back; a key that is new or
    /// comes back after a removal starts at zero. Exact.
    #[test]
    fn a_pool_update_keeps_the_stats_of_kept_endpoints(case in update_cases()) {
        runtime().block_on(updates_keep_stats(&case))?;
    }
}
