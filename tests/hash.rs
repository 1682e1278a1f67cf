//! Consistent hashing: balance quality, disruption on removal and
//! re-addition, ketama compatibility with pingora-ketama, bounded load
//! under a skewed (Zipf) key distribution, a pinned mapping, and keyed
//! balancing end to end (affinity, keyless fallback, retry to the key's
//! next endpoint).
//!
//! Keys are drawn from a splitmix64 sequence with a fixed seed ([`SEED`]),
//! so every statistical assertion is repeatable; each states its bound.
//! Quality and disruption are measured on pickers directly (the same code
//! `Balance` calls), which keeps a million picks cheap in debug builds.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service, ServiceExt, service_fn};
use tower_lb::Endpoint;
use tower_lb::PickRng;
use tower_lb::attempt::Tracked;
use tower_lb::balance::hash::{DEFAULT_LOAD_FACTOR, crc32, xxh64};
use tower_lb::balance::{
    Balance, BalanceLayer, BuildContext, KeyHash, Maglev, PickContext, Picker, Rendezvous, Ring,
    RoundRobin, Strategy, WhenEmpty, key_fn,
};
use tower_lb::discover::StaticSource;
use tower_lb::pool::{DiscoverLayer, Pool, Snapshot};
use tower_lb::retry::{Backoff, RetryBudget, RetryErrors, RetryLayer};

/// The seed of every key sequence here.
const SEED: u64 = 0x5EED_0F4A;

/// An endpoint service that answers with its endpoint's key, or fails
/// while its key is the one in `failing`.
#[derive(Clone)]
struct Echo {
    key: Arc<str>,
    failing: Arc<Mutex<Option<String>>>,
}

// Any request: the tests send plain strings, and `Tracked` strings where a
// retry must avoid the endpoint it tried.
impl<R> Service<R> for Echo {
    type Response = String;
    type Error = &'static str;
    type Future = Ready<Result<String, &'static str>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: R) -> Self::Future {
        let failing = self.failing.lock().unwrap().as_deref() == Some(&*self.key);
        ready(if failing {
            Err("endpoint down")
        } else {
            Ok(self.key.to_string())
        })
    }
}

fn endpoint(i: usize) -> Endpoint {
    Endpoint::new(
        format!("10.{}.{}.{}:80", i >> 16, (i >> 8) & 255, i & 255)
            .parse()
            .unwrap(),
    )
}

fn equal(n: usize) -> Vec<Endpoint> {
    (0..n).map(endpoint).collect()
}

/// A pool over `endpoints` whose services answer with their key.
async fn pool_with(endpoints: Vec<Endpoint>, failing: Arc<Mutex<Option<String>>>) -> Pool<Echo> {
    let connector = service_fn(move |ep: Endpoint| {
        ready(Ok::<_, Infallible>(Echo {
            key: ep.key().into(),
            failing: failing.clone(),
        }))
    });
    let pool = DiscoverLayer::new(StaticSource::new(endpoints)).layer(connector);
    assert!(pool.applied(1).await);
    pool
}

async fn snapshot(endpoints: Vec<Endpoint>) -> Arc<Snapshot<Echo>> {
    pool_with(endpoints, Arc::default()).await.snapshot()
}

fn build<St: Strategy>(strategy: &St, snap: &Snapshot<Echo>) -> St::Picker {
    let rng = PickRng::seeded(1);
    strategy.build(snap.view(), &BuildContext::new(&rng, snap.epoch()))
}

/// The `n`th choice for a key, as an index into the snapshot.
fn nth<P: Picker>(picker: &P, snap: &Snapshot<Echo>, key: u64, n: usize) -> usize {
    let rng = PickRng::seeded(1);
    picker
        .pick_nth(snap.view(), &PickContext::new(&rng).with_key(Some(key)), n)
        .expect("a keyed pick over a non-empty set")
}

/// Endpoint keys in snapshot order.
fn keys(snap: &Snapshot<Echo>) -> Vec<String> {
    snap.members()
        .iter()
        .map(|m| m.endpoint().key().to_owned())
        .collect()
}

/// `count` pseudo-random 64-bit key hashes (splitmix64).
fn key_hashes(count: usize) -> impl Iterator<Item = u64> {
    let mut state = SEED;
    (0..count).map(move |_| {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// How many of `count` keys each endpoint gets.
fn shares<P: Picker>(picker: &P, snap: &Snapshot<Echo>, count: usize) -> Vec<u64> {
    let rng = PickRng::seeded(1);
    let members = snap.view();
    let mut hits = vec![0u64; members.len()];
    let mut ctx = PickContext::new(&rng);
    for key in key_hashes(count) {
        ctx.key = Some(key);
        hits[picker.pick(members, &ctx).unwrap()] += 1;
    }
    hits
}

fn max_over_mean(hits: &[u64]) -> f64 {
    let mean = hits.iter().sum::<u64>() as f64 / hits.len() as f64;
    *hits.iter().max().unwrap() as f64 / mean
}

/// The multinomial noise allowance: 5 standard deviations of a bin's count
/// around `mean`, relative to `mean`.
fn noise(mean: f64) -> f64 {
    5.0 * mean.sqrt() / mean
}

const KEYS: usize = 1_000_000;

#[tokio::test]
async fn maglev_spreads_keys_evenly() {
    for n in [3, 10, 100, 1000] {
        let snap = snapshot(equal(n)).await;
        let picker = build(&Maglev::new(), &snap);
        // The table itself: M >= 100 N slots, each endpoint within 1 % of
        // M / N (plus one slot of rounding).
        let m = picker.table().len();
        assert!(m >= 100 * n && m >= 65_537, "{n}: table {m}");
        let mut slots = vec![0u64; n];
        for &t in picker.table() {
            slots[t as usize] += 1;
        }
        let ideal = m as f64 / n as f64;
        let worst = *slots.iter().max().unwrap() as f64;
        assert!(worst <= 1.01 * ideal + 1.0, "{n}: {worst} slots vs {ideal}");
        // Keys: the table's 1 % plus sampling noise.
        let hits = shares(&picker, &snap, KEYS);
        let mean = KEYS as f64 / n as f64;
        let ratio = max_over_mean(&hits);
        eprintln!(
            "maglev {n}: max/mean {ratio:.4}, table {:.4}",
            worst / ideal
        );
        assert!(ratio <= 1.01 + noise(mean), "maglev {n}: max/mean {ratio}");
    }
}

#[tokio::test]
async fn ring_spreads_keys_within_ketamas_variance() {
    // 160 points per endpoint leave each share a relative standard
    // deviation of about 1/sqrt(160) = 8 %; the largest of N is then up to
    // about 1 + 0.08 × sqrt(2 ln N), measured here below these bounds.
    for (n, bound) in [(3, 1.10), (10, 1.15), (100, 1.25), (1000, 1.35)] {
        let snap = snapshot(equal(n)).await;
        let picker = build(&Ring::new(), &snap);
        let hits = shares(&picker, &snap, KEYS);
        let ratio = max_over_mean(&hits);
        eprintln!("ring {n}: max/mean {ratio:.4}");
        assert!(ratio <= bound, "ring {n}: max/mean {ratio} > {bound}");
    }
}

#[tokio::test]
async fn rendezvous_spreads_keys_like_independent_draws() {
    // Rendezvous costs N hashes a pick; at N = 1000 a tenth of the keys
    // keeps the test quick in debug builds (the bound scales with them).
    for (n, count) in [(3, KEYS), (10, KEYS), (100, KEYS), (1000, KEYS / 10)] {
        let snap = snapshot(equal(n)).await;
        let picker = build(&Rendezvous::new(), &snap);
        let hits = shares(&picker, &snap, count);
        let mean = count as f64 / n as f64;
        let ratio = max_over_mean(&hits);
        eprintln!("rendezvous {n}: max/mean {ratio:.4}");
        assert!(
            ratio <= 1.0 + noise(mean),
            "rendezvous {n}: max/mean {ratio}"
        );
    }
}

#[tokio::test]
async fn weighted_shares_follow_weights() {
    let weighted: Vec<Endpoint> = (0..10)
        .map(|i| endpoint(i).with_weight(1 + i as u32))
        .collect();
    let snap = snapshot(weighted).await;
    let total: u32 = (1..=10).sum();
    let count = 200_000;
    let check = |name: &str, hits: Vec<u64>, tolerance: f64| {
        for (i, &h) in hits.iter().enumerate() {
            let want = (1 + i) as f64 / f64::from(total);
            let got = h as f64 / count as f64;
            assert!(
                (got / want - 1.0).abs() <= tolerance,
                "{name}: endpoint {i} got {got:.4}, want {want:.4}"
            );
        }
    };
    // Maglev: the table's 1 % plus noise (5 sigma at the smallest share,
    // ~3600 keys, is 8 %).
    check(
        "maglev",
        shares(&build(&Maglev::new(), &snap), &snap, count),
        0.10,
    );
    // Rendezvous: noise alone.
    check(
        "rendezvous",
        shares(&build(&Rendezvous::new(), &snap), &snap, count),
        0.10,
    );
    // Ring: 160 points per weight, so the lightest (160 points) is ±8 %
    // per sigma.
    check(
        "ring",
        shares(&build(&Ring::new(), &snap), &snap, count),
        0.30,
    );
}

/// The fraction of `count` keys whose endpoint differs between two
/// snapshots, and whether every moved key was on endpoint `removed`.
fn moved<St: Strategy>(
    strategy: &St,
    before: &Snapshot<Echo>,
    after: &Snapshot<Echo>,
    removed: &str,
    count: usize,
) -> (f64, bool) {
    let (a, b) = (build(strategy, before), build(strategy, after));
    let (ka, kb) = (keys(before), keys(after));
    let mut moved = 0;
    let mut only_removed = true;
    for key in key_hashes(count) {
        let from = &ka[nth(&a, before, key, 0)];
        let to = &kb[nth(&b, after, key, 0)];
        if from != to {
            moved += 1;
            only_removed &= from == removed;
        }
    }
    (moved as f64 / count as f64, only_removed)
}

#[tokio::test]
async fn removing_an_endpoint_moves_few_keys_and_adding_it_back_restores_them() {
    let count = 100_000;
    for n in [10, 100] {
        let all = equal(n);
        let full = snapshot(all.clone()).await;
        let mut ring_moved = 0.0;
        let mut hrw_moved = 0.0;
        // Remove each of several endpoints in turn (every one for N = 10).
        let removals = n.min(10);
        for r in (0..n).step_by(n / removals).take(removals) {
            let removed = all[r].key().to_owned();
            let mut rest = all.clone();
            rest.remove(r);
            let less = snapshot(rest.clone()).await;

            let (f, _) = moved(&Maglev::new(), &full, &less, &removed, count);
            eprintln!("maglev {n}: removing {r} moved {f:.4}");
            assert!(f <= 2.0 / n as f64, "maglev {n}: removing {r} moved {f}");
            let (f, only) = moved(&Ring::new(), &full, &less, &removed, count);
            assert!(only, "ring {n}: a key not on the removed endpoint moved");
            ring_moved += f;
            let (f, only) = moved(&Rendezvous::new(), &full, &less, &removed, count);
            assert!(
                only,
                "rendezvous {n}: a key not on the removed endpoint moved"
            );
            hrw_moved += f;

            // Added back, at the end of the list this time: the mapping is
            // the original one, for all three (endpoints are identified by
            // key, not position).
            rest.push(all[r].clone());
            let back = snapshot(rest).await;
            for (name, f) in [
                (
                    "maglev",
                    moved(&Maglev::new(), &full, &back, "", count / 10).0,
                ),
                ("ring", moved(&Ring::new(), &full, &back, "", count / 10).0),
                (
                    "rendezvous",
                    moved(&Rendezvous::new(), &full, &back, "", count / 10).0,
                ),
            ] {
                assert_eq!(f, 0.0, "{name} {n}: re-adding {r} did not restore");
            }
        }
        // On average a removal moves the removed endpoint's share, 1/N.
        let (ring, hrw) = (ring_moved / removals as f64, hrw_moved / removals as f64);
        eprintln!(
            "{n}: mean moved ring {ring:.4}, rendezvous {hrw:.4} (1/N = {:.4})",
            1.0 / n as f64
        );
        assert!(ring <= 1.1 / n as f64, "ring {n}: mean moved {ring}");
        assert!(hrw <= 1.1 / n as f64, "rendezvous {n}: mean moved {hrw}");
    }
}

#[tokio::test]
async fn ring_matches_pingora_ketama() {
    use pingora_ketama::{Bucket, Continuum};
    let sets: [Vec<Endpoint>; 3] = [
        // pingora-ketama's own nginx sample: two upstreams of weight 1.
        ["127.0.0.1:7777", "127.0.0.1:7778"]
            .iter()
            .map(|a| Endpoint::new(a.parse().unwrap()))
            .collect(),
        // Mixed weights, IPv4 and IPv6.
        (0..20)
            .map(|i| {
                let addr = if i % 4 == 3 {
                    format!("[2001:db8::{i:x}]:{}", 8000 + i)
                } else {
                    format!("192.168.{}.{}:{}", i / 7, i, 443 + i % 3)
                };
                Endpoint::new(addr.parse().unwrap()).with_weight(1 + i % 3)
            })
            .collect(),
        // The nginx sample data set's shape: nine upstreams of weight 100.
        (1..=9)
            .map(|i| Endpoint::new(format!("10.0.0.{i}:443").parse().unwrap()).with_weight(100))
            .collect(),
    ];
    for endpoints in sets {
        let buckets: Vec<Bucket> = endpoints
            .iter()
            .map(|e| Bucket::new(e.address().unwrap(), e.weight()))
            .collect();
        let reference = Continuum::new(&buckets);
        let snap = snapshot(endpoints).await;
        let ring = build(&Ring::new(), &snap);
        for i in 0..5_000 {
            for key in [format!("/path/{i}"), format!("user-{i}")] {
                let h = KeyHash::Crc32.hash(key.as_bytes());
                let ours = snap.members()[nth(&ring, &snap, h, 0)].endpoint().address();
                assert_eq!(ours, reference.node(key.as_bytes()), "key {key}");
                // The fallback order is the reference's walk, deduplicated.
                let mut walk: Vec<_> = Vec::new();
                for addr in reference.node_iter(key.as_bytes()).take(4000) {
                    if !walk.contains(addr) {
                        walk.push(*addr);
                    }
                    if walk.len() == 3.min(snap.len()) {
                        break;
                    }
                }
                for (n, want) in walk.iter().enumerate() {
                    let got = snap.members()[nth(&ring, &snap, h, n)].endpoint().address();
                    assert_eq!(got, Some(*want), "key {key}, choice {n}");
                }
            }
        }
    }
    // And the literal table pingora-ketama's tests took from nginx.
    let snap = snapshot(
        ["127.0.0.1:7777", "127.0.0.1:7778"]
            .iter()
            .map(|a| Endpoint::new(a.parse().unwrap()))
            .collect(),
    )
    .await;
    let ring = build(&Ring::new(), &snap);
    for (path, want) in [
        ("/some/path", "127.0.0.1:7778"),
        ("/some/longer/path", "127.0.0.1:7777"),
        ("/sad/zaidoon", "127.0.0.1:7778"),
        ("/g", "127.0.0.1:7777"),
        (
            "/pingora/team/is/cool/and/this/is/a/long/uri",
            "127.0.0.1:7778",
        ),
        ("/i/am/not/confident/in/this/code", "127.0.0.1:7777"),
    ] {
        let i = nth(&ring, &snap, u64::from(crc32(path.as_bytes())), 0);
        assert_eq!(snap.members()[i].endpoint().key(), want, "{path}");
    }
}

#[test]
fn stable_hashes_match_reference_implementations() {
    let mut data = Vec::new();
    for (len, key) in key_hashes(300).enumerate() {
        data.push(key as u8);
        for seed in [0, 1, key] {
            assert_eq!(
                xxh64(&data[..len], seed),
                xxhash_rust::xxh64::xxh64(&data[..len], seed)
            );
        }
    }
}

#[tokio::test]
async fn mapping_is_pinned() {
    // If this fails, a change altered which endpoint a key goes to: every
    // user of consistent hashing would see their keys reshuffled on
    // upgrade. Do not update the table without a major release.
    let snap = snapshot(equal(7)).await;
    let users: Vec<String> = (0..12).map(|i| format!("user-{i}")).collect();
    let map = |picker: &dyn Fn(u64) -> usize, hash: KeyHash| -> Vec<usize> {
        users
            .iter()
            .map(|u| picker(hash.hash(u.as_bytes())))
            .collect()
    };
    let maglev = build(&Maglev::new(), &snap);
    let ring = build(&Ring::new(), &snap);
    let hrw = build(&Rendezvous::new(), &snap);
    let got = [
        map(&|k| nth(&maglev, &snap, k, 0), KeyHash::Xxh64),
        map(&|k| nth(&ring, &snap, k, 0), KeyHash::Crc32),
        map(&|k| nth(&hrw, &snap, k, 0), KeyHash::Xxh64),
        // Second choices too: retries must stay put as well.
        map(&|k| nth(&maglev, &snap, k, 1), KeyHash::Xxh64),
    ];
    let want: [Vec<usize>; 4] = [
        vec![3, 1, 2, 3, 3, 3, 3, 0, 6, 0, 1, 0],
        vec![1, 5, 5, 1, 4, 0, 3, 2, 3, 5, 6, 2],
        vec![5, 5, 5, 6, 1, 3, 4, 1, 0, 4, 5, 6],
        vec![4, 2, 5, 0, 1, 2, 4, 3, 3, 3, 2, 4],
    ];
    assert_eq!(got, want);
}

/// Draws from a Zipf distribution over `n` keys with exponent `s`.
fn zipf(n: usize, s: f64, count: usize) -> Vec<usize> {
    let weights: Vec<f64> = (1..=n).map(|k| (k as f64).powf(-s)).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(n);
    let mut acc = 0.0;
    for w in weights {
        acc += w / total;
        cdf.push(acc);
    }
    key_hashes(count)
        .map(|h| {
            let u = (h >> 11) as f64 / (1u64 << 53) as f64;
            cdf.partition_point(|&c| c < u).min(n - 1)
        })
        .collect()
}

/// The in-flight count of each endpoint after sending `requests` (keyed
/// `key-<i>`) through a keyed balancer whose endpoints never answer.
async fn loads<St: Strategy + Clone>(strategy: St, n: usize, requests: &[usize]) -> Vec<u64> {
    let connector = service_fn(|_: Endpoint| {
        ready(Ok::<_, Infallible>(service_fn(|_: String| {
            std::future::pending::<Result<String, Infallible>>()
        })))
    });
    let pool = DiscoverLayer::new(StaticSource::new(equal(n))).layer(connector);
    assert!(pool.applied(1).await);
    let mut lb = BalanceLayer::new(strategy)
        .key(key_fn(|k: &String| Some(k.as_bytes())))
        .layer(pool);
    let mut pending = Vec::new();
    for &k in requests {
        lb.ready().await.unwrap();
        pending.push(lb.call(format!("key-{k}")));
    }
    let loads = lb
        .snapshot()
        .members()
        .iter()
        .map(|m| m.stats().in_flight())
        .collect();
    drop(pending);
    assert!(
        lb.snapshot()
            .members()
            .iter()
            .all(|m| m.stats().in_flight() == 0)
    );
    loads
}

#[tokio::test]
async fn bounded_load_caps_every_endpoint_under_zipf_keys() {
    let (n, count) = (10, 2_000);
    let requests = zipf(200, 1.2, count);
    let c = DEFAULT_LOAD_FACTOR;
    let cap = (c * count as f64 / n as f64).ceil() as u64 + 1;
    let check = |name: &str, bounded: Vec<u64>, unbounded: Vec<u64>| {
        assert_eq!(bounded.iter().sum::<u64>(), count as u64);
        let max = *bounded.iter().max().unwrap();
        eprintln!("{name}: bounded {bounded:?}, unbounded {unbounded:?}");
        assert!(max <= cap, "{name}: {max} in flight > {cap}: {bounded:?}");
        // A control: without the bound the hottest key overloads its endpoint.
        let hot = *unbounded.iter().max().unwrap();
        assert!(
            hot > cap,
            "{name}: unbounded {hot} <= {cap}, the test proves nothing"
        );
    };
    check(
        "maglev",
        loads(Maglev::new().bounded_load(c), n, &requests).await,
        loads(Maglev::new(), n, &requests).await,
    );
    check(
        "ring",
        loads(Ring::new().bounded_load(c), n, &requests).await,
        loads(Ring::new(), n, &requests).await,
    );
    check(
        "rendezvous",
        loads(Rendezvous::new().bounded_load(c), n, &requests).await,
        loads(Rendezvous::new(), n, &requests).await,
    );
    // Overflow is deterministic: the same requests land the same way.
    assert_eq!(
        loads(Maglev::new().bounded_load(c), n, &requests).await,
        loads(Maglev::new().bounded_load(c), n, &requests).await
    );
}

#[tokio::test]
async fn bounded_load_keeps_affinity_while_loads_are_low() {
    let pool = pool_with(equal(8), Arc::default()).await;
    let by_key = key_fn(|k: &String| Some(k.as_bytes()));
    let mut bounded = BalanceLayer::new(Maglev::new().bounded_load(1.25))
        .key(by_key)
        .layer(pool.clone());
    let plain = BalanceLayer::new(Maglev::new()).key(by_key).layer(pool);
    for u in 0..20 {
        let key = format!("user-{u}");
        let want = plain
            .pick_index_keyed(Some(KeyHash::Xxh64.hash(key.as_bytes())), 0)
            .unwrap();
        let want = plain.snapshot().members()[want].endpoint().key().to_owned();
        for _ in 0..20 {
            let got = bounded
                .ready()
                .await
                .unwrap()
                .call(key.clone())
                .await
                .unwrap();
            assert_eq!(got, want, "{key}");
        }
    }
}

/// A keyed balancer over `n` echo endpoints.
async fn keyed<St: Strategy + Clone>(
    strategy: St,
    n: usize,
    failing: Arc<Mutex<Option<String>>>,
) -> Balance<Echo, St, tower_lb::balance::ErrorsAreFailures, impl tower_lb::balance::KeyOf<String>>
{
    let pool = pool_with(equal(n), failing).await;
    BalanceLayer::new(strategy)
        .when_empty(WhenEmpty::FailFast)
        .key(key_fn(|k: &String| (!k.is_empty()).then_some(k.as_bytes())))
        .layer(pool)
}

/// Sends `key` through a fresh keyed balancer (and pool) over 5 endpoints.
async fn send<St: Strategy + Clone>(strategy: &St, key: &str) -> String {
    let mut lb = keyed(strategy.clone(), 5, Arc::default()).await;
    lb.ready()
        .await
        .unwrap()
        .call(key.to_owned())
        .await
        .unwrap()
}

async fn affinity_and_fallback<St: Strategy + Clone>(name: &str, strategy: St) {
    // Fresh balancers every time: affinity depends only on the key and the
    // endpoint set, not on a balancer's state.
    let mut hits: HashMap<String, HashMap<String, u32>> = HashMap::new();
    for _round in 0..3 {
        for u in 0..30 {
            let key = format!("user-{u}");
            let got = send(&strategy, &key).await;
            *hits.entry(key).or_default().entry(got).or_default() += 1;
        }
    }
    assert!(hits.values().all(|to| to.len() == 1), "{name}: {hits:?}");
    let used: std::collections::HashSet<_> =
        hits.values().flat_map(|to| to.keys().cloned()).collect();
    assert!(used.len() >= 4, "{name}: 30 keys over only {used:?}");
    // Keyless requests rotate (the fallback is round robin): each of the 5
    // endpoints gets exactly 10 of 50.
    let mut lb = keyed(strategy, 5, Arc::default()).await;
    let mut keyless: HashMap<String, u32> = HashMap::new();
    for _ in 0..50 {
        let got = lb.ready().await.unwrap().call(String::new()).await.unwrap();
        *keyless.entry(got).or_default() += 1;
    }
    assert_eq!(keyless.len(), 5, "{name}: {keyless:?}");
    assert!(keyless.values().all(|&n| n == 10), "{name}: {keyless:?}");
}

#[tokio::test]
async fn keyed_balance_sends_a_key_to_one_endpoint_and_keyless_requests_to_the_fallback() {
    affinity_and_fallback("maglev", Maglev::new().fallback(RoundRobin)).await;
    affinity_and_fallback("ring", Ring::new().fallback(RoundRobin)).await;
    affinity_and_fallback("rendezvous", Rendezvous::new().fallback(RoundRobin)).await;
}

/// With the key's first endpoint failing, a retry lands on the key's
/// second endpoint, every time; another key keeps its own endpoint.
async fn retry_follows_the_key<St: Strategy + Clone>(name: &str, strategy: St, hash: KeyHash) {
    let failing: Arc<Mutex<Option<String>>> = Arc::default();
    // Tracked requests carry the record of where their attempts went.
    let lb = BalanceLayer::new(strategy.clone())
        .when_empty(WhenEmpty::FailFast)
        .key(key_fn(|k: &Tracked<String>| {
            (!k.is_empty()).then_some(k.as_bytes())
        }))
        .layer(pool_with(equal(6), failing.clone()).await);
    let snap = lb.snapshot();
    let endpoint_of = |key: &str, n: usize| {
        let i = lb
            .pick_index_keyed(Some(hash.hash(key.as_bytes())), n)
            .unwrap();
        snap.members()[i].endpoint().key().to_owned()
    };
    let (first, second) = (endpoint_of("user-7", 0), endpoint_of("user-7", 1));
    assert_ne!(
        first, second,
        "{name}: the second choice is another endpoint"
    );
    let other = (0..100)
        .map(|u| format!("user-{u}"))
        .find(|k| endpoint_of(k, 0) != first)
        .unwrap();
    let other_first = endpoint_of(&other, 0);
    *failing.lock().unwrap() = Some(first);
    let client = RetryLayer::new(RetryErrors::new())
        .budget(RetryBudget::new(Duration::from_secs(10), 10.0, 100))
        .backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(2),
        ))
        .max_attempts(2)
        .seed(SEED)
        .layer(lb);
    for _ in 0..5 {
        let got = client
            .clone()
            .oneshot(Tracked::new("user-7".to_owned()))
            .await;
        assert_eq!(
            got.unwrap(),
            second,
            "{name}: retry to the key's next endpoint"
        );
        let got = client.clone().oneshot(Tracked::new(other.clone())).await;
        assert_eq!(got.unwrap(), other_first, "{name}: {other} stays put");
    }
}

#[tokio::test(start_paused = true)]
async fn retry_moves_to_the_keys_next_endpoint() {
    retry_follows_the_key("maglev", Maglev::new(), KeyHash::Xxh64).await;
    retry_follows_the_key("ring", Ring::new(), KeyHash::Crc32).await;
    retry_follows_the_key("rendezvous", Rendezvous::new(), KeyHash::Xxh64).await;
}

#[tokio::test]
async fn fallback_order_is_every_endpoint_once_and_skips_draining_ones() {
    let mut endpoints = equal(12);
    endpoints[4] = endpoints[4].clone().with_weight(0);
    let snap = snapshot(endpoints).await;
    let maglev = build(&Maglev::new(), &snap);
    let ring = build(&Ring::new(), &snap);
    let hrw = build(&Rendezvous::new(), &snap);
    let orders: [&dyn Fn(u64, usize) -> usize; 3] = [
        &|k, n| nth(&maglev, &snap, k, n),
        &|k, n| nth(&ring, &snap, k, n),
        &|k, n| nth(&hrw, &snap, k, n),
    ];
    for (a, order) in orders.iter().enumerate() {
        for key in key_hashes(200) {
            let mut seen: Vec<usize> = (0..11).map(|n| order(key, n)).collect();
            assert!(!seen.contains(&4), "{a}: a draining endpoint was chosen");
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), 11, "{a}: the order repeats an endpoint");
            // Past the end there is nothing more to offer.
            let rng = PickRng::seeded(1);
            let ctx = PickContext::new(&rng).with_key(Some(key));
            let past = match a {
                0 => maglev.pick_nth(snap.view(), &ctx, 11),
                1 => ring.pick_nth(snap.view(), &ctx, 11),
                _ => hrw.pick_nth(snap.view(), &ctx, 11),
            };
            assert_eq!(past, None);
        }
    }
    // Rendezvous's order is by score: the second choice is where the key
    // goes once its first is gone.
    let all = equal(12);
    let full = snapshot(all.clone()).await;
    let hrw = build(&Rendezvous::new(), &full);
    for key in key_hashes(200) {
        let first = nth(&hrw, &full, key, 0);
        let mut rest = all.clone();
        rest.remove(first);
        let less = snapshot(rest).await;
        let without = build(&Rendezvous::new(), &less);
        assert_eq!(
            keys(&full)[nth(&hrw, &full, key, 1)],
            keys(&less)[nth(&without, &less, key, 0)]
        );
    }
}
