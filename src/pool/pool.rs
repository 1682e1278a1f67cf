use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{PoolDriver, Snapshot};
use crate::discover::Source;
use crate::endpoint::Endpoint;
use crate::error::BoxError;

/// The live set of endpoints of one service. Cheap to clone; all clones
/// share the same set.
///
/// Build one with [`DiscoverLayer`](super::DiscoverLayer) (which spawns the
/// discovery driver on the current tokio runtime) or with [`Pool::new`]
/// (which hands the driver to you). The driver stops when the last clone of
/// a spawned pool is dropped.
pub struct Pool<S> {
    pub(crate) shared: Arc<Shared<S>>,
    driver: Option<Arc<DriverGuard>>,
    /// For a view (failover), the pool it is a view of: kept alive, and
    /// asked about discovery.
    upstream: Option<Arc<Pool<S>>>,
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

type Subscriber<S> = Box<dyn FnMut(&Arc<Snapshot<S>>) -> bool + Send>;

pub(crate) struct Shared<S> {
    current: ArcSwap<Snapshot<S>>,
    /// Held while publishing, so subscribers see snapshots in order.
    subscribers: Mutex<Vec<Subscriber<S>>>,
    notify: Arc<Notify>,
    /// Woken by every failure recorded in this pool's endpoint stats.
    outcomes: Arc<Notify>,
    status: Mutex<DiscoveryStatus>,
    /// For a view: 1 + the revision of the upstream snapshot it last
    /// evaluated (0 before any).
    evaluated: AtomicU64,
}

/// How discovery has gone for a pool so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
}

impl<S> Clone for Pool<S> {
    fn clone(&self) -> Self {
        Pool {
            shared: self.shared.clone(),
            driver: self.driver.clone(),
            upstream: self.upstream.clone(),
        }
    }
}

impl<S> fmt::Debug for Pool<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snap = self.shared.current.load();
        f.debug_struct("Pool")
            .field("revision", &snap.revision())
            .field("endpoints", &snap.len())
            .field("driver", &self.driver.is_some())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking subscriber must not wedge discovery for everyone else.
    m.lock().unwrap_or_else(PoisonError::into_inner)
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

    pub(crate) fn with_config<Src, C>(
        source: Src,
        connector: C,
        config: super::PoolConfig,
    ) -> (Self, PoolDriver<Src, C, S>)
    where
        Src: Source,
        C: tower_service::Service<Endpoint, Response = S>,
        C::Error: Into<BoxError>,
    {
        let pool = Pool::empty();
        let driver = PoolDriver::new(source, connector, pool.shared.clone(), config);
        (pool, driver)
    }

    /// A pool that is never fed; for layers that republish another pool's
    /// view.
    pub(crate) fn empty() -> Self {
        Pool {
            shared: Arc::new(Shared {
                current: ArcSwap::from_pointee(Snapshot::initial(Instant::now())),
                subscribers: Mutex::new(Vec::new()),
                notify: Arc::new(Notify::new()),
                outcomes: Arc::new(Notify::new()),
                evaluated: AtomicU64::new(0),
                status: Mutex::new(DiscoveryStatus::default()),
            }),
            driver: None,
            upstream: None,
        }
    }

    pub(crate) fn with_driver(mut self, task: JoinHandle<()>) -> Self {
        self.driver = Some(Arc::new(DriverGuard { task }));
        self
    }

    /// A pool whose driver `task` republishes a view of `upstream`, which
    /// it keeps alive.
    pub(crate) fn with_view_driver(mut self, task: JoinHandle<()>, upstream: Pool<S>) -> Self {
        self.driver = Some(Arc::new(DriverGuard { task }));
        self.upstream = Some(Arc::new(upstream));
        self
    }

    pub(crate) fn shared(&self) -> &Arc<Shared<S>> {
        &self.shared
    }
}

impl<S> Pool<S> {
    /// The current set. One atomic load; never blocks.
    pub fn snapshot(&self) -> Arc<Snapshot<S>> {
        self.shared.current.load_full()
    }

    /// How discovery has gone so far (for a failover view, discovery of
    /// the pool it views).
    pub fn discovery(&self) -> DiscoveryStatus {
        lock(&self.root().shared.status).clone()
    }

    /// The pool discovery feeds: the end of a chain of views.
    fn root(&self) -> &Pool<S> {
        let mut pool = self;
        while let Some(up) = &pool.upstream {
            pool = up;
        }
        pool
    }

    /// Waits until the snapshot's revision differs from `seen`, and returns
    /// the new one. Returns at once if it already differs.
    pub async fn changed(&self, seen: u64) -> u64 {
        loop {
            let notified = self.shared.notify.clone().notified_owned();
            let now = self.shared.current.load().revision();
            if now != seen {
                return now;
            }
            notified.await;
        }
    }

    /// Waits until discovery has applied an update with revision `revision`
    /// or newer, or the source has ended. Returns whether the revision was
    /// reached. Revisions are the source's own: for a
    /// [`Registry`](crate::discover::Registry) watch, use
    /// [`Registry::revision_of`](crate::discover::Registry::revision_of).
    ///
    /// For a failover view, discovery is that of the pool it views, and
    /// this also waits until the view has been re-evaluated since.
    pub async fn applied(&self, revision: u64) -> bool {
        let mut chain = vec![self];
        while let Some(up) = &chain[chain.len() - 1].upstream {
            chain.push(up);
        }
        let mut below = chain.pop().unwrap_or(self);
        let reached = below.applied_here(revision).await;
        for view in chain.into_iter().rev() {
            let target = below.snapshot().revision();
            view.evaluated(target).await;
            below = view;
        }
        reached
    }

    async fn applied_here(&self, revision: u64) -> bool {
        loop {
            let notified = self.shared.notify.clone().notified_owned();
            {
                let st = lock(&self.shared.status);
                if st.applied_revision.is_some_and(|r| r >= revision) {
                    return true;
                }
                if st.ended {
                    return false;
                }
            }
            notified.await;
        }
    }

    /// Waits until this view has evaluated its upstream at `revision` or
    /// later.
    async fn evaluated(&self, revision: u64) {
        loop {
            let notified = self.shared.notify.clone().notified_owned();
            if self.shared.evaluated.load(Ordering::Acquire) > revision {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn notify(&self) -> &Arc<Notify> {
        &self.shared.notify
    }

    /// Woken (one permit) by every failure recorded in the stats of the
    /// pool discovery feeds; what failover waits on to act at once.
    pub(crate) fn outcomes(&self) -> &Arc<Notify> {
        &self.root().shared.outcomes
    }

    /// Calls `f` with the current snapshot now and with every snapshot
    /// published later, until `f` returns `false`.
    pub(crate) fn subscribe(&self, mut f: impl FnMut(&Arc<Snapshot<S>>) -> bool + Send + 'static) {
        let mut subs = lock(&self.shared.subscribers);
        if f(&self.shared.current.load_full()) {
            subs.push(Box::new(f));
        }
    }
}

impl<S> Shared<S> {
    pub(crate) fn outcomes(&self) -> &Arc<Notify> {
        &self.outcomes
    }

    pub(crate) fn current(&self) -> Arc<Snapshot<S>> {
        self.current.load_full()
    }

    /// Publishes a new snapshot: subscribers first (so a balancer's picker
    /// is ready), then wakes anyone waiting for a change.
    pub(crate) fn publish(&self, snapshot: Snapshot<S>) {
        let snapshot = Arc::new(snapshot);
        {
            let mut subs = lock(&self.subscribers);
            self.current.store(snapshot.clone());
            subs.retain_mut(|f| f(&snapshot));
        }
        self.notify.notify_waiters();
    }

    /// Records that a view has evaluated its upstream at `revision`.
    pub(crate) fn set_evaluated(&self, revision: u64) {
        let next = revision.saturating_add(1);
        if self.evaluated.swap(next, Ordering::AcqRel) != next {
            self.notify.notify_waiters();
        }
    }

    pub(crate) fn applied_revision(&self) -> Option<u64> {
        lock(&self.status).applied_revision
    }

    pub(crate) fn update_status(&self, f: impl FnOnce(&mut DiscoveryStatus)) {
        f(&mut lock(&self.status));
        self.notify.notify_waiters();
    }
}
