//! Failover's output: the eligible [`View`] of a pool, and the
//! [`Failover`] handle that publishes it.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::HealthReport;
use super::trial::OnTrial;
use crate::pool::{DiscoveryStatus, MemberList, Pool, Snapshot};
use crate::util::publish::Published;

/// The endpoints of a pool that may take requests now, split into
/// priority tiers with their shares of traffic, and the health report
/// behind them. Published whole, like a pool's [`Snapshot`].
#[derive(Debug)]
pub struct View<S> {
    eligible: Arc<Snapshot<S>>,
    groups: Box<[Group]>,
    /// Out of rotation, each offered one trial request.
    trials: Box<[OnTrial<S>]>,
    upstream_len: usize,
    report: Arc<HealthReport>,
}

/// A run of a snapshot's members that receives a fixed share of traffic:
/// failover puts each priority tier in a group and gives it the tier's
/// load. A balancer first picks a group by share, then an endpoint within
/// it by its strategy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub(crate) members: Range<usize>,
    /// The group's share of traffic, in parts of `u32::MAX`.
    pub(crate) share: u32,
    pub(crate) priority: u8,
}

impl Group {
    /// The members' indices in [`View::members`].
    pub fn members(&self) -> Range<usize> {
        self.members.clone()
    }

    /// The share of requests this group receives, from 0.0 to 1.0.
    pub fn share(&self) -> f64 {
        f64::from(self.share) / f64::from(u32::MAX)
    }

    /// The priority tier of the group's endpoints.
    pub fn priority(&self) -> u8 {
        self.priority
    }
}

impl<S> View<S> {
    /// `members` of `of` (split into `groups`, contiguous and in order),
    /// with the endpoints on trial and the report, at `revision`.
    pub(crate) fn new(
        revision: u64,
        of: &Snapshot<S>,
        members: MemberList<S>,
        groups: Vec<Group>,
        trials: Vec<OnTrial<S>>,
        report: HealthReport,
    ) -> Self {
        View {
            eligible: Arc::new(Snapshot::subset(revision, of, members)),
            groups: groups.into(),
            trials: trials.into(),
            upstream_len: of.len(),
            report: Arc::new(report),
        }
    }

    fn initial() -> Self {
        View {
            eligible: Arc::new(Snapshot::initial(Instant::now())),
            groups: Box::new([]),
            trials: Box::new([]),
            upstream_len: 0,
            report: Arc::new(HealthReport::default()),
        }
    }

    /// The eligible endpoints as a snapshot (its revision is the view's).
    pub fn snapshot(&self) -> &Arc<Snapshot<S>> {
        &self.eligible
    }

    /// The eligible endpoints, tier by tier.
    pub fn members(&self) -> &MemberList<S> {
        self.eligible.members()
    }

    /// How many endpoints are eligible.
    pub fn len(&self) -> usize {
        self.eligible.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.eligible.is_empty()
    }

    /// The view's revision: it counts the view's publications.
    pub fn revision(&self) -> u64 {
        self.eligible.revision()
    }

    /// How traffic splits between tiers: runs of [`members`](View::members).
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// How many endpoints the pool holds; more than [`len`](View::len)
    /// when some are left out.
    pub fn upstream_len(&self) -> usize {
        self.upstream_len
    }

    /// What failover decided.
    pub fn health(&self) -> &HealthReport {
        &self.report
    }

    pub(crate) fn health_arc(&self) -> &Arc<HealthReport> {
        &self.report
    }

    /// Endpoints out of rotation that are offered one trial request each
    /// (the request that takes the trial).
    pub(crate) fn trials(&self) -> &[OnTrial<S>] {
        &self.trials
    }
}

/// A pool's eligible view, kept current by the failover driver off the
/// request path: what [`FailoverLayer`](super::FailoverLayer) makes of a
/// [`Pool`], for a [`Balance`](crate::balance::Balance) to pick from.
/// Cheap to clone; the driver stops when the last clone is dropped (taking
/// the pool's driver with it, unless the pool is held elsewhere).
pub struct Failover<S> {
    upstream: Pool<S>,
    shared: Arc<Shared<S>>,
    _driver: Option<Arc<AbortOnDrop>>,
}

pub(super) struct Shared<S> {
    published: Published<View<S>>,
    /// The report of the newest evaluation, published or not: it differs
    /// from the view's when only down endpoints' probe times changed.
    latest: ArcSwap<HealthReport>,
    /// 1 + the revision of the upstream snapshot last evaluated (0 before
    /// any).
    evaluated: AtomicU64,
}

pub(super) struct AbortOnDrop(pub(super) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<S> Clone for Failover<S> {
    fn clone(&self) -> Self {
        Failover {
            upstream: self.upstream.clone(),
            shared: self.shared.clone(),
            _driver: self._driver.clone(),
        }
    }
}

impl<S> fmt::Debug for Failover<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let view = self.shared.published.load();
        f.debug_struct("Failover")
            .field("revision", &view.revision())
            .field("eligible", &view.len())
            .field("upstream", &self.upstream)
            .finish()
    }
}

impl<S> Failover<S> {
    /// Starts a view of `upstream` whose driver `spawn` starts, given the
    /// cell to publish into.
    pub(super) fn start(
        upstream: Pool<S>,
        spawn: impl FnOnce(Pool<S>, Arc<Shared<S>>) -> JoinHandle<()>,
    ) -> Self {
        let shared = Arc::new(Shared {
            published: Published::new(View::initial()),
            latest: ArcSwap::from_pointee(HealthReport::default()),
            evaluated: AtomicU64::new(0),
        });
        let task = spawn(upstream.clone(), shared.clone());
        Failover {
            upstream,
            shared,
            _driver: Some(Arc::new(AbortOnDrop(task))),
        }
    }

    /// A view of `upstream` with no driver, published into by hand.
    #[cfg(feature = "unstable-bench")]
    pub(super) fn detached(upstream: Pool<S>) -> Self {
        Failover {
            upstream,
            shared: Arc::new(Shared {
                published: Published::new(View::initial()),
                latest: ArcSwap::from_pointee(HealthReport::default()),
                evaluated: AtomicU64::new(0),
            }),
            _driver: None,
        }
    }

    #[cfg(feature = "unstable-bench")]
    pub(super) fn publish(&self, view: View<S>) {
        self.shared.publish(view);
    }

    /// The current view. One atomic load; never blocks.
    pub fn view(&self) -> Arc<View<S>> {
        self.shared.published.load()
    }

    /// The eligible endpoints now, as a snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot<S>> {
        self.view().eligible.clone()
    }

    /// The newest health report. It may be newer than the current
    /// view's ([`View::health`]) when only the probe times of down
    /// endpoints changed, which does not republish the view.
    pub fn health(&self) -> Arc<HealthReport> {
        self.shared.latest.load_full()
    }

    /// The pool this is a view of.
    pub fn pool(&self) -> &Pool<S> {
        &self.upstream
    }

    /// How discovery of the pool has gone so far.
    pub fn discovery(&self) -> DiscoveryStatus {
        self.upstream.discovery()
    }

    /// Waits until the view's revision differs from `seen`, and returns the
    /// new one. Returns at once if it already differs.
    pub async fn changed(&self, seen: u64) -> u64 {
        let revision = |v: &Arc<View<S>>| (v.revision() != seen).then(|| v.revision());
        self.shared.published.wait_for(revision).await
    }

    /// Waits until the pool has applied discovery revision `revision` or
    /// newer (or its source has ended), and the view has been re-evaluated
    /// since. Returns whether the revision was reached.
    pub async fn applied(&self, revision: u64) -> bool {
        let reached = self.upstream.applied(revision).await;
        let target = self.upstream.snapshot().revision();
        let evaluated = |_: &Arc<View<S>>| {
            (self.shared.evaluated.load(Ordering::Acquire) > target).then_some(reached)
        };
        self.shared.published.wait_for(evaluated).await
    }

    /// Woken (all waiters) on every publication of the view.
    pub(crate) fn notify(&self) -> &Arc<Notify> {
        self.shared.published.notify()
    }

    /// Calls `f` with the current view now and with every view published
    /// later, until `f` returns `false`.
    pub(crate) fn subscribe(&self, f: impl FnMut(&Arc<View<S>>) -> bool + Send + 'static) {
        self.shared.published.subscribe(f);
    }
}

impl<S> Shared<S> {
    pub(super) fn current(&self) -> Arc<View<S>> {
        self.published.load()
    }

    pub(super) fn publish(&self, view: View<S>) {
        self.latest.store(view.report.clone());
        self.published.publish(view);
    }

    /// Records the report of an evaluation that did not change the view.
    pub(super) fn set_latest(&self, report: HealthReport) {
        self.latest.store(Arc::new(report));
    }

    /// Records that the view has evaluated the pool at `revision`.
    pub(super) fn set_evaluated(&self, revision: u64) {
        let next = revision.saturating_add(1);
        if self.evaluated.swap(next, Ordering::AcqRel) != next {
            self.published.wake();
        }
    }
}
