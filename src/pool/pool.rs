use std::fmt;
use std::sync::atomic::{Ordering, fence};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::latency::Sampling;
use super::{PoolDriver, Snapshot};
use crate::discover::{RevisionProbe, Source};
use crate::endpoint::Endpoint;
use crate::error::BoxError;
use crate::util::publish::{Published, lock};

/// The live set of endpoints of one service. Cheap to clone; all clones
/// share the same set.
///
/// Build one with [`DiscoverLayer`](super::DiscoverLayer) (which spawns the
/// discovery driver on the current tokio runtime) or with [`Pool::new`]
/// (which hands the driver to you). The driver stops when the last clone of
/// a spawned pool is dropped.
pub struct Pool<S> {
    shared: Arc<Shared<S>>,
    driver: Option<Arc<DriverGuard>>,
}

/// Keeps a pool's driver task running, and whatever it feeds from alive,
/// until the last clone of the pool is dropped.
struct DriverGuard {
    task: JoinHandle<()>,
}

impl Drop for DriverGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(super) struct Shared<S> {
    published: Published<Snapshot<S>>,
    /// Woken by every failure recorded in this pool's endpoint stats.
    outcomes: Arc<Notify>,
    status: Mutex<DiscoveryStatus>,
    /// The service's name, for status reports and metric labels.
    service: Arc<str>,
    /// Whether its endpoints keep latency histograms, and how often a
    /// request is timed for them; shared with the balancers over the pool.
    latency: Arc<Sampling>,
    /// The source's newest revision, when the source can tell.
    source_revision: OnceLock<RevisionProbe>,
}

/// How discovery has gone for a pool so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct DiscoveryStatus {
    /// The revision of the newest update applied, if any.
    pub applied_revision: Option<u64>,
    /// Updates applied.
    pub updates_applied: u64,
    /// Updates ignored because their revision was older than the applied one.
    pub stale_ignored: u64,
    /// Empty snapshots ignored because the pool keeps its last good set.
    pub empty_ignored: u64,
    /// Failures reported by the source.
    pub errors: u64,
    /// The last failure reported by the source or the connector, rendered.
    pub last_error: Option<String>,
    /// Endpoints the connector failed to build a service for.
    pub connect_failures: u64,
    /// Whether the source has ended; the pool then keeps its last set.
    pub ended: bool,
    /// The newest revision the source knows of, when it can tell
    /// ([`Source::revision_probe`]): read when the status is taken.
    pub source_revision: Option<u64>,
}

impl DiscoveryStatus {
    /// How many revisions the source is ahead of the pool: its newest
    /// revision less the one applied (0 once caught up). `None` when the
    /// source cannot tell. Above 0 while the driver is still connecting
    /// to endpoints of a newer set, or updates wait for it; it stays above
    /// 0 when a source's newest set was rejected.
    pub fn revision_lag(&self) -> Option<u64> {
        let newest = self.source_revision?;
        Some(newest.saturating_sub(self.applied_revision.unwrap_or(0)))
    }
}

impl<S> Clone for Pool<S> {
    fn clone(&self) -> Self {
        Pool {
            shared: self.shared.clone(),
            driver: self.driver.clone(),
        }
    }
}

impl<S> fmt::Debug for Pool<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snap = self.shared.published.load();
        f.debug_struct("Pool")
            .field("revision", &snap.revision())
            .field("endpoints", &snap.len())
            .field("driver", &self.driver.is_some())
            .finish()
    }
}

impl<S: Clone + Send + Sync + 'static> Pool<S> {
    /// A pool fed by `source` through `connector`, and the driver that
    /// applies its updates. Run the driver (spawn it, or `.await` it in a
    /// task you own); the pool stays empty until it runs.
    pub fn new<Src, C>(source: Src, connector: C) -> (Self, PoolDriver<Src, C, S>)
    where
        Src: Source,
        C: tower_service::Service<Endpoint, Response = S>,
        C::Error: Into<BoxError>,
    {
        Self::with_config(source, connector, super::PoolConfig::default())
    }

    /// A pool fed by `source` through `connector`, with its driver spawned
    /// on the current tokio runtime and aborted when the last clone of the
    /// pool is dropped. Unlike [`DiscoverLayer`](super::DiscoverLayer) this
    /// takes a source that cannot be cloned, such as a
    /// [`channel`](crate::discover::channel).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub fn spawn<Src, C>(source: Src, connector: C, config: super::PoolConfig) -> Self
    where
        Src: Source,
        C: tower_service::Service<Endpoint, Response = S> + Send + 'static,
        C::Error: Into<BoxError> + Send,
        C::Future: Send,
    {
        let (pool, driver) = Self::with_config(source, connector, config);
        let task = tokio::spawn(driver.run());
        pool.with_driver(task)
    }

    pub(super) fn with_config<Src, C>(
        source: Src,
        connector: C,
        config: super::PoolConfig,
    ) -> (Self, PoolDriver<Src, C, S>)
    where
        Src: Source,
        C: tower_service::Service<Endpoint, Response = S>,
        C::Error: Into<BoxError>,
    {
        let service: Arc<str> = config
            .service
            .as_deref()
            .or_else(|| source.name())
            .unwrap_or(DEFAULT_SERVICE)
            .into();
        let pool = Pool::named(service);
        let driver = PoolDriver::new(source, connector, pool.shared.clone(), config);
        (pool, driver)
    }

    /// A pool that is never fed.
    #[cfg(feature = "unstable-bench")]
    pub(crate) fn empty() -> Self {
        Self::named(DEFAULT_SERVICE.into())
    }

    fn named(service: Arc<str>) -> Self {
        Pool {
            shared: Arc::new(Shared {
                published: Published::new(Snapshot::initial(Instant::now())),
                outcomes: Arc::new(Notify::new()),
                status: Mutex::new(DiscoveryStatus::default()),
                service,
                latency: Arc::new(Sampling::off()),
                source_revision: OnceLock::new(),
            }),
            driver: None,
        }
    }

    pub(super) fn with_driver(mut self, task: JoinHandle<()>) -> Self {
        self.driver = Some(Arc::new(DriverGuard { task }));
        self
    }
}

/// The service name of a pool whose config and source name none.
pub(crate) const DEFAULT_SERVICE: &str = "default";

impl<S> Pool<S> {
    /// The service's name: [`PoolConfig::service`](super::PoolConfig::service),
    /// else the source's [`name`](crate::discover::Source::name), else
    /// `"default"`.
    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// From now on, every endpoint keeps a histogram of its requests'
    /// latency (848 bytes each, allocated here and as endpoints join, never
    /// on the request path), which [`status`](Self::status) reports carry
    /// and the [metrics exporter](crate::metrics) exports. Each answered
    /// request is then timed, whatever the strategy, and counted with one
    /// atomic add ([`sample_latency`](Self::sample_latency) times fewer).
    /// The exporter calls it; calling it again is cheap, keeps the sampling
    /// rate, and catches an endpoint that joined while it ran.
    pub fn record_latency(&self) {
        self.shared.latency.keep();
        // Paired with the fence in `Shared::publish`: either the driver
        // sees the flag after publishing a snapshot, or this sees the
        // snapshot.
        fence(Ordering::SeqCst);
        for m in self.snapshot().members().iter() {
            m.stats().keep_latency();
        }
    }

    /// Once endpoints keep latency histograms
    /// ([`record_latency`](Self::record_latency)): from now on, a balancer
    /// whose strategy does not time every request anyway (all but
    /// Peak-EWMA) times one answer in `one_in` for them, chosen at random,
    /// and counts it `one_in` times, so that the counts still estimate
    /// answers. `one_in` is rounded down to a power of two and capped at
    /// about a million; 1 (the default) times every answer. The
    /// [metrics exporter](crate::metrics) sets it from the request rate
    /// ([`MetricsConfig::latency_samples_per_second`](crate::metrics::MetricsConfig::latency_samples_per_second)).
    pub fn sample_latency(&self, one_in: u32) {
        self.shared.latency.set_one_in(one_in);
    }

    /// While the endpoints keep latency histograms: one answer in how many
    /// a balancer that does not time every request times for them.
    pub fn latency_one_in(&self) -> Option<u32> {
        self.shared.latency.one_in()
    }

    /// Whether the pool's endpoints keep latency histograms, and how often
    /// requests are timed for them.
    pub(crate) fn latency_sampling(&self) -> &Arc<Sampling> {
        &self.shared.latency
    }

    /// The current set. One atomic load; never blocks.
    pub fn snapshot(&self) -> Arc<Snapshot<S>> {
        self.shared.published.load()
    }

    /// How discovery has gone so far.
    pub fn discovery(&self) -> DiscoveryStatus {
        let mut status = lock(&self.shared.status).clone();
        // Read after the applied revision, so a lag is never negative for
        // a source whose revisions only grow.
        status.source_revision = self.shared.source_revision.get().and_then(|p| p.read());
        status
    }

    /// Waits until the snapshot's revision differs from `seen`, and returns
    /// the new one. Returns at once if it already differs.
    pub async fn changed(&self, seen: u64) -> u64 {
        let revision = |s: &Arc<Snapshot<S>>| (s.revision() != seen).then(|| s.revision());
        self.shared.published.wait_for(revision).await
    }

    /// Waits until discovery has applied an update with revision `revision`
    /// or newer, or the source has ended. Returns whether the revision was
    /// reached. Revisions are the source's own: for a
    /// [`Registry`](crate::discover::Registry) watch, use
    /// [`Registry::revision_of`](crate::discover::Registry::revision_of).
    pub async fn applied(&self, revision: u64) -> bool {
        let reached = |_: &Arc<Snapshot<S>>| {
            let st = lock(&self.shared.status);
            if st.applied_revision.is_some_and(|r| r >= revision) {
                return Some(true);
            }
            st.ended.then_some(false)
        };
        self.shared.published.wait_for(reached).await
    }

    /// Woken (all waiters) whenever a snapshot is published or the
    /// discovery status changes.
    pub(crate) fn notify(&self) -> &Arc<Notify> {
        self.shared.published.notify()
    }

    /// Woken (one permit) by every failure recorded in this pool's
    /// endpoint stats, for whoever acts on failures as they happen.
    pub(crate) fn outcomes(&self) -> &Arc<Notify> {
        &self.shared.outcomes
    }

    /// Calls `f` with the current snapshot now and with every snapshot
    /// published later, until `f` returns `false`.
    pub(crate) fn subscribe(&self, f: impl FnMut(&Arc<Snapshot<S>>) -> bool + Send + 'static) {
        self.shared.published.subscribe(f);
    }
}

impl<S> Shared<S> {
    /// Where the pool reads its source's newest revision from.
    pub(super) fn set_revision_probe(&self, probe: RevisionProbe) {
        // Set once, by the one driver a pool has.
        let _ = self.source_revision.set(probe);
    }

    /// Whether endpoints keep latency histograms ([`Pool::record_latency`]).
    pub(super) fn keeps_latency(&self) -> bool {
        self.latency.is_on()
    }

    pub(super) fn outcomes(&self) -> &Arc<Notify> {
        &self.outcomes
    }

    pub(super) fn current(&self) -> Arc<Snapshot<S>> {
        self.published.load()
    }

    /// Publishes a new snapshot: subscribers first (so a balancer's picker
    /// is ready), then wakes anyone waiting for a change.
    pub(super) fn publish(&self, snapshot: Snapshot<S>) {
        self.published.publish(snapshot);
        // Paired with the fence in `Pool::record_latency`: either it sees
        // this snapshot's members, or this sees its flag, so that no
        // member that joins meanwhile goes without a histogram.
        fence(Ordering::SeqCst);
        if self.keeps_latency() {
            for m in self.published.load().members().iter() {
                m.stats().keep_latency();
            }
        }
    }

    pub(super) fn applied_revision(&self) -> Option<u64> {
        lock(&self.status).applied_revision
    }

    pub(super) fn update_status(&self, f: impl FnOnce(&mut DiscoveryStatus)) {
        f(&mut lock(&self.status));
        self.published.wake();
    }
}
