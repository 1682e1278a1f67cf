//! What an endpoint costs in memory at scale: the live bytes a pool keeps
//! per endpoint (its metadata, its member slot and its `EndpointStats`),
//! and the live bytes each strategy's picker keeps per endpoint, at
//! N = 10 000 and 100 000. Each figure has a bound that a regression
//! doubling it breaks; run with `--nocapture` to read them.
//!
//! Counted with a global allocator: live bytes (allocated minus freed, as
//! requested, before the system allocator's own rounding and headers) on
//! the measuring thread only, with the pool on a current-thread runtime so
//! its driver allocates there too. The two tests take turns (a lock), and
//! figures are printed only once all are taken, since captured output is
//! itself kept in memory.
//!
//! The endpoint service is zero-sized: a real connector's service adds
//! its own size (and whatever it allocates) to each endpoint.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::mem::{align_of, size_of};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicIsize, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use tokio::time::Instant;

use tower::Service;
use tower_lb::balance::{
    BuildContext, LeastInFlight, Maglev, PeakEwma, Random, Rendezvous, Ring, RoundRobin, Strategy,
    WeightedRandom, WeightedRoundRobin,
};
use tower_lb::discover::{Update, UpdateSender, channel};
use tower_lb::pool::{EndpointStats, Member, Pool, PoolConfig, Snapshot, StatsHandle};
use tower_lb::{Endpoint, PickRng};

struct Counting;

/// Bytes allocated and not yet freed by the thread that measures.
static LIVE: AtomicIsize = AtomicIsize::new(0);
/// The most `LIVE` has been since the last [`reset_peak`].
static PEAK: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    /// Whether this thread's allocations count: only the measuring
    /// thread's do (the test harness's own threads allocate too). The pool
    /// runs on a current-thread runtime, so its driver runs here as well.
    static MEASURING: Cell<bool> = const { Cell::new(false) };
}

fn counted() -> bool {
    MEASURING.try_with(Cell::get).unwrap_or(false)
}

fn grew(by: usize) {
    if counted() {
        let now = LIVE.fetch_add(by as isize, SeqCst) + by as isize;
        PEAK.fetch_max(now, SeqCst);
    }
}

fn shrank(by: usize) {
    if counted() {
        LIVE.fetch_sub(by as isize, SeqCst);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrank(layout.size());
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            grew(new_size);
            shrank(layout.size());
        }
        new
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(SeqCst)
}

fn reset_peak() {
    PEAK.store(live(), SeqCst);
}

fn peak() -> isize {
    PEAK.load(SeqCst)
}

/// Serialises the tests of this file: both count into `LIVE`.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Counts this thread's allocations until dropped, and holds the lock.
struct Measuring {
    _lock: MutexGuard<'static, ()>,
}

impl Measuring {
    fn start() -> Self {
        let lock = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
        MEASURING.with(|m| m.set(true));
        Measuring { _lock: lock }
    }
}

impl Drop for Measuring {
    fn drop(&mut self) {
        MEASURING.with(|m| m.set(false));
    }
}

/// The endpoint service: zero-sized, so the figures are the pool's own (a
/// real connector's service adds its size to each member).
#[derive(Clone, Copy, Debug)]
struct Echo;

impl Service<u64> for Echo {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        ready(Ok(req))
    }
}

/// Endpoint `i`: `10.a.b.c:8080`, weight 1, 2, 3, 4, 1, …
fn endpoint(i: usize) -> Endpoint {
    let addr = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080));
    Endpoint::new(addr).with_weight(1 + (i % 4) as u32)
}

/// Endpoint `i` of a skewed set: weight 1000 for every hundredth, else 1,
/// so the largest weight is far above the mean and weighted draws need an
/// alias table.
fn skewed_endpoint(i: usize) -> Endpoint {
    let weight = if i % 100 == 0 { 1000 } else { 1 };
    endpoint(i).with_weight(weight)
}

/// One line of the report.
struct Figure {
    part: &'static str,
    n: usize,
    /// Live bytes kept, over `n`.
    per_endpoint: f64,
    /// The most live bytes reached while building, above those before,
    /// over `n` (transient: freed once built).
    peak_per_endpoint: f64,
    /// The most `per_endpoint` may be.
    bound: f64,
    millis: u128,
}

/// What was measured, printed once all is measured (captured output is
/// itself kept in memory).
#[derive(Default)]
struct Report {
    figures: Vec<Figure>,
    notes: Vec<String>,
}

impl Report {
    fn new() -> Self {
        Report {
            figures: Vec::with_capacity(64),
            notes: Vec::with_capacity(16),
        }
    }

    /// Prints every figure, then fails on the first over its bound.
    fn check(self) {
        eprintln!(
            "{:<34} {:>7} {:>9} {:>9} {:>7} {:>6}",
            "part", "N", "B/endpt", "peak B/e", "bound", "ms"
        );
        for f in &self.figures {
            eprintln!(
                "{:<34} {:>7} {:>9.1} {:>9.1} {:>7.0} {:>6}",
                f.part, f.n, f.per_endpoint, f.peak_per_endpoint, f.bound, f.millis
            );
        }
        for note in &self.notes {
            eprintln!("{note}");
        }
        for f in &self.figures {
            assert!(
                f.per_endpoint <= f.bound,
                "{} at N = {}: {:.1} bytes per endpoint, over its bound of {}",
                f.part,
                f.n,
                f.per_endpoint,
                f.bound
            );
        }
    }
}

/// A pool of `n` endpoints (weights 1..=4) from a channel source, which
/// keeps no copy of the list; the pool on a current-thread runtime, so its
/// driver allocates on this thread. Reports the endpoint list's own bytes
/// (made before the pool takes it) and what the pool keeps.
fn pool_of(
    rt: &tokio::runtime::Runtime,
    n: usize,
    report: &mut Report,
) -> (Pool<Echo>, UpdateSender) {
    pool_with(rt, n, endpoint, Some(report))
}

/// A pool of `n` endpoints made by `endpoint`, reporting its bytes when
/// given a report.
fn pool_with(
    rt: &tokio::runtime::Runtime,
    n: usize,
    endpoint: fn(usize) -> Endpoint,
    report: Option<&mut Report>,
) -> (Pool<Echo>, UpdateSender) {
    let _guard = rt.enter();
    let started = Instant::now();
    let before = live();
    reset_peak();
    let (tx, source) = channel();
    let connector = tower::service_fn(|_: Endpoint| ready(Ok::<_, Infallible>(Echo)));
    let pool: Pool<Echo> = Pool::spawn(source, connector, PoolConfig::default());
    let empty = live();
    let list: Vec<Endpoint> = (0..n).map(endpoint).collect();
    let listed = live();
    assert!(
        tx.send(Update::snapshot(1, list)).is_ok(),
        "the pool is alive"
    );
    assert!(rt.block_on(pool.applied(1)), "the update is applied");
    assert_eq!(pool.snapshot().len(), n);
    let after = live();
    let Some(report) = report else {
        return (pool, tx);
    };
    let per = |bytes: isize| bytes as f64 / n as f64;
    report.figures.push(Figure {
        part: "endpoint list (Vec<Endpoint>)",
        n,
        per_endpoint: per(listed - empty),
        peak_per_endpoint: per(listed - empty),
        bound: LIST_BOUND,
        millis: 0,
    });
    report.figures.push(Figure {
        part: "pool with stats",
        n,
        per_endpoint: per(after - before),
        peak_per_endpoint: per(peak() - before),
        bound: POOL_BOUND,
        millis: started.elapsed().as_millis(),
    });
    (pool, tx)
}

/// Drops the pool and checks that it gave back what it held: its driver
/// task is freed when the runtime next runs (it was aborted).
fn drop_pool(rt: &tokio::runtime::Runtime, pool: (Pool<Echo>, UpdateSender), before: isize) {
    drop(pool);
    for _ in 0..4 {
        rt.block_on(tokio::task::yield_now());
    }
    let left = live() - before;
    assert!(
        left.abs() < 64 * 1024,
        "a dropped pool gives back its memory: {left} bytes left"
    );
}

/// Builds `strategy`'s picker for `snapshot` and reports the live bytes it
/// keeps.
fn picker_of<St: Strategy>(
    part: &'static str,
    strategy: St,
    snapshot: &Snapshot<Echo>,
    bound: f64,
    report: &mut Report,
) -> St::Picker {
    let n = snapshot.len();
    let rng = PickRng::seeded(1);
    let started = Instant::now();
    let before = live();
    reset_peak();
    let picker = strategy.build(snapshot.view(), &BuildContext::new(&rng, snapshot.epoch()));
    let after = live();
    let millis = started.elapsed().as_millis();
    report.figures.push(Figure {
        part,
        n,
        per_endpoint: (after - before) as f64 / n as f64,
        peak_per_endpoint: (peak() - before) as f64 / n as f64,
        bound,
        millis,
    });
    picker
}

// Bounds in bytes per endpoint (BENCHMARKS.md, "Memory"): what was measured
// plus about 25 %, or what the picker's layout allows.

/// The endpoint list: 16 bytes of `Endpoint` and the shared metadata (its
/// `Arc`, the key as an `Arc<str>`): 160–163 measured.
const LIST_BOUND: f64 = 200.0;
/// The pool: the metadata, a 24-byte member slot, the 192-byte allocation
/// of the stats (`Arc` counts padded to a line, then two lines of
/// counters): 360–363 measured.
const POOL_BOUND: f64 = 450.0;
/// Nothing per endpoint: round robin and random with no endpoint
/// draining, and weighted draws over weights within 4× of their mean
/// (`weighted_random`, least-in-flight and Peak-EWMA pick from the member
/// list itself): 0 measured.
const NOTHING_BOUND: f64 = 1.0;
/// One `u32` per slot of a cycle: `Σw / gcd` slots (2.5 per endpoint at
/// weights 1..=4), scaled down past 65 536 slots with one kept per
/// endpoint: 10 at N = 10 000, 5 at N = 100 000.
const WRR_BOUND: f64 = 12.5;
/// Skewed weights: an alias column (a 64-bit threshold, its own index and
/// its alias, 16 bytes), and each live member's index and weight (8): 24
/// measured.
const ALIAS_BOUND: f64 = 30.0;
/// Four bytes per slot, `M ≥ 100 × N` slots (until the 2^24 cap), plus the
/// weighted round robin for requests without a key and the weights: 413–418.
const MAGLEV_BOUND: f64 = 520.0;
/// Seeds, weights and indices, plus the fallback: 33–38.
const RENDEZVOUS_BOUND: f64 = 48.0;

/// Eight bytes per point (position, member), 160 points per unit of weight
/// up to 2^22 points (32 MiB), plus the fallback and the weights.
fn ring_bound(n: usize) -> f64 {
    let points = (n as f64 * 2.5 * 160.0).min((1u64 << 22) as f64);
    (points * 8.0 / n as f64 + 18.0) * 1.25
}

/// The pool and every picker whose table is linear in N.
fn measure_linear(n: usize, report: &mut Report) {
    let rt = runtime();
    let before = live();
    let pool = pool_of(&rt, n, report);
    let snap = pool.0.snapshot();
    drop(picker_of(
        "round_robin",
        RoundRobin,
        &snap,
        NOTHING_BOUND,
        report,
    ));
    drop(picker_of("random", Random, &snap, NOTHING_BOUND, report));
    let wrr = WeightedRoundRobin;
    drop(picker_of(
        "weighted_round_robin",
        wrr,
        &snap,
        WRR_BOUND,
        report,
    ));
    let wr = WeightedRandom;
    drop(picker_of(
        "weighted_random",
        wr,
        &snap,
        NOTHING_BOUND,
        report,
    ));
    let lif = LeastInFlight;
    drop(picker_of(
        "least_in_flight",
        lif,
        &snap,
        NOTHING_BOUND,
        report,
    ));
    let ewma = PeakEwma::new();
    drop(picker_of("peak_ewma", ewma, &snap, NOTHING_BOUND, report));
    let rdv = Rendezvous::new();
    drop(picker_of(
        "rendezvous",
        rdv,
        &snap,
        RENDEZVOUS_BOUND,
        report,
    ));
    let maglev = picker_of("maglev", Maglev::new(), &snap, MAGLEV_BOUND, report);
    let slots = maglev.table().len();
    drop(maglev);
    drop(snap);
    drop_pool(&rt, pool, before);

    let skewed = pool_with(&rt, n, skewed_endpoint, None);
    let snap = skewed.0.snapshot();
    let wr = WeightedRandom;
    let part = "weighted_random, skewed weights";
    drop(picker_of(part, wr, &snap, ALIAS_BOUND, report));
    let lif = LeastInFlight;
    let part = "least_in_flight, skewed weights";
    drop(picker_of(part, lif, &snap, ALIAS_BOUND, report));
    drop(snap);
    drop_pool(&rt, skewed, before);
    MEASURING.with(|m| m.set(false));
    report.notes.push(format!(
        "maglev at N = {n}: {slots} slots, {} bytes of table ({:.1} slots per endpoint)",
        slots * 4,
        slots as f64 / n as f64
    ));
    MEASURING.with(|m| m.set(true));
}

/// The ketama ring, whose point count is capped (so above about 10 000
/// endpoints of these weights it stays at 2^22 points, 32 MiB).
fn measure_ring(n: usize, report: &mut Report) {
    let rt = runtime();
    let before = live();
    let pool = pool_of(&rt, n, report);
    let snap = pool.0.snapshot();
    let ring = picker_of("ring", Ring::new(), &snap, ring_bound(n), report);
    let points = ring.points().count();
    drop(ring);
    drop(snap);
    drop_pool(&rt, pool, before);
    MEASURING.with(|m| m.set(false));
    report.notes.push(format!(
        "ring at N = {n}: {points} points, {} bytes of points",
        points * 8
    ));
    MEASURING.with(|m| m.set(true));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

#[test]
fn bytes_per_endpoint_in_the_pool_and_its_pickers() {
    let mut report = Report::new();
    let measuring = Measuring::start();
    for n in [10_000, 100_000] {
        measure_linear(n, &mut report);
    }
    drop(measuring);
    eprintln!(
        "size_of: Endpoint {}, Member<Echo> {}, StatsHandle {}, EndpointStats {} (align {})",
        size_of::<Endpoint>(),
        size_of::<Member<Echo>>(),
        size_of::<StatsHandle>(),
        size_of::<EndpointStats>(),
        align_of::<EndpointStats>(),
    );
    report.check();
}

/// The ring's build sorts up to 2^22 points: 2–3 s a size in a debug
/// build.
#[test]
#[ignore = "slow in a debug build (about 5 s); CI runs it with --include-ignored"]
fn bytes_per_endpoint_in_the_ketama_ring() {
    let mut report = Report::new();
    let measuring = Measuring::start();
    for n in [10_000, 100_000] {
        measure_ring(n, &mut report);
    }
    drop(measuring);
    report.check();
}
