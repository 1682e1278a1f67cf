//! What a balancer picks from: a pool, or failover's view of one.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::failover::{Failover, Group, HealthReport, OnTrial, View};
use crate::pool::{Pool, Snapshot};

/// What a [`Balance`](super::Balance) picks from: every endpoint of a
/// [`Pool`], or the eligible endpoints of a [`Failover`] view of one.
/// Made with `From`, so `Balance::new` and `BalanceLayer` take either.
pub enum Upstream<S> {
    /// Every endpoint of the pool, in one group.
    Pool(Pool<S>),
    /// The endpoints failover lets take requests, tier by tier.
    Failover(Failover<S>),
}

impl<S> std::fmt::Debug for Upstream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Pool(p) => f.debug_tuple("Pool").field(p).finish(),
            Upstream::Failover(v) => f.debug_tuple("Failover").field(v).finish(),
        }
    }
}

impl<S> Clone for Upstream<S> {
    fn clone(&self) -> Self {
        match self {
            Upstream::Pool(p) => Upstream::Pool(p.clone()),
            Upstream::Failover(f) => Upstream::Failover(f.clone()),
        }
    }
}

impl<S> From<Pool<S>> for Upstream<S> {
    fn from(pool: Pool<S>) -> Self {
        Upstream::Pool(pool)
    }
}

impl<S> From<Failover<S>> for Upstream<S> {
    fn from(view: Failover<S>) -> Self {
        Upstream::Failover(view)
    }
}

impl<S> Upstream<S> {
    /// The pool discovery feeds.
    pub fn pool(&self) -> &Pool<S> {
        match self {
            Upstream::Pool(p) => p,
            Upstream::Failover(f) => f.pool(),
        }
    }

    /// The failover view, when picks come from one.
    pub fn failover(&self) -> Option<&Failover<S>> {
        match self {
            Upstream::Pool(_) => None,
            Upstream::Failover(f) => Some(f),
        }
    }

    /// Waits until discovery has applied revision `revision` or newer (or
    /// its source has ended) and, for a failover view, the view has been
    /// re-evaluated since. Returns whether the revision was reached.
    pub async fn applied(&self, revision: u64) -> bool {
        match self {
            Upstream::Pool(p) => p.applied(revision).await,
            Upstream::Failover(f) => f.applied(revision).await,
        }
    }

    /// Woken on every publication of what picks come from.
    pub(crate) fn notify(&self) -> &Arc<Notify> {
        match self {
            Upstream::Pool(p) => p.notify(),
            Upstream::Failover(f) => f.notify(),
        }
    }

    /// What picks come from now.
    pub(super) fn eligible(&self) -> Eligible<S> {
        match self {
            Upstream::Pool(p) => Eligible::whole(p.snapshot()),
            Upstream::Failover(f) => Eligible::view(f.view()),
        }
    }

    /// Calls `f` with what picks come from now and after every change,
    /// until `f` returns `false`.
    pub(super) fn subscribe(&self, mut f: impl FnMut(Eligible<S>) -> bool + Send + 'static) {
        match self {
            Upstream::Pool(p) => p.subscribe(move |s| f(Eligible::whole(s.clone()))),
            Upstream::Failover(v) => v.subscribe(move |v| f(Eligible::view(v.clone()))),
        }
    }
}

/// The endpoints picks come from, with failover's view of them if any.
pub(super) struct Eligible<S> {
    snapshot: Arc<Snapshot<S>>,
    view: Option<Arc<View<S>>>,
}

impl<S> Eligible<S> {
    fn whole(snapshot: Arc<Snapshot<S>>) -> Self {
        Eligible {
            snapshot,
            view: None,
        }
    }

    fn view(view: Arc<View<S>>) -> Self {
        Eligible {
            snapshot: view.snapshot().clone(),
            view: Some(view),
        }
    }

    /// The endpoints, as a snapshot.
    pub(super) fn snapshot(&self) -> &Arc<Snapshot<S>> {
        &self.snapshot
    }

    /// How traffic splits between runs of the members; empty for one
    /// group of all.
    pub(super) fn groups(&self) -> &[Group] {
        self.view.as_deref().map_or(&[], View::groups)
    }

    /// Endpoints out of rotation, each offered one trial request.
    #[inline]
    pub(super) fn trials(&self) -> &[OnTrial<S>] {
        self.view.as_deref().map_or(&[], View::trials)
    }

    /// How many endpoints the pool holds.
    pub(super) fn upstream_len(&self) -> usize {
        self.view
            .as_deref()
            .map_or(self.snapshot.len(), View::upstream_len)
    }

    /// Failover's report, when there is a view.
    pub(super) fn health(&self) -> Option<Arc<HealthReport>> {
        self.view.as_deref().map(|v| v.health_arc().clone())
    }
}
