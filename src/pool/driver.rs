use std::collections::HashMap;
use std::fmt;
use std::future::poll_fn;
use std::sync::Arc;

use tower::ServiceExt;
use tower_service::Service;

use super::pool::Shared;
use super::{Member, MemberList, PoolConfig, Snapshot, StatsHandle};
use crate::discover::{Change, Source, Update};
use crate::endpoint::Endpoint;
use crate::error::BoxError;
use crate::trace::event;

/// Applies a source's updates to a pool. Returned by [`Pool::new`](super::Pool::new);
/// [`DiscoverLayer`](super::DiscoverLayer) spawns it for you.
///
/// [`run`](PoolDriver::run) returns when the source ends; dropping the
/// future stops discovery (the pool keeps its last set).
pub struct PoolDriver<Src, C, S> {
    source: Src,
    connector: C,
    shared: Arc<Shared<S>>,
    config: PoolConfig,
    /// Where each key of the published set sits in it, kept across
    /// updates so a delta finds its few endpoints without hashing the
    /// whole set. `None` until needed, and again after a whole new set
    /// moved members.
    index: Option<HashMap<Arc<str>, usize>>,
}

impl<Src, C, S> fmt::Debug for PoolDriver<Src, C, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolDriver")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<Src, C, S> PoolDriver<Src, C, S>
where
    Src: Source,
    C: Service<Endpoint, Response = S>,
    C::Error: Into<BoxError>,
    S: Clone,
{
    pub(super) fn new(
        source: Src,
        connector: C,
        shared: Arc<Shared<S>>,
        config: PoolConfig,
    ) -> Self {
        if let Some(probe) = source.revision_probe() {
            shared.set_revision_probe(probe);
        }
        PoolDriver {
            source,
            connector,
            shared,
            config,
            index: None,
        }
    }

    /// Follows the source until it ends.
    pub async fn run(mut self) {
        loop {
            match poll_fn(|cx| self.source.poll_update(cx)).await {
                Some(Ok(update)) => self.apply(update).await,
                Some(Err(error)) => {
                    let text = crate::error::render_chain(&error);
                    event!(warn, error = %text, "discovery source failed; keeping the last good set");
                    self.shared.update_status(|st| {
                        st.errors += 1;
                        st.last_error = Some(text);
                    });
                }
                None => {
                    event!(info, "discovery source ended; keeping the last set");
                    self.shared.update_status(|st| st.ended = true);
                    return;
                }
            }
        }
    }

    async fn apply(&mut self, update: Update) {
        let revision = update.revision();
        let applied = self.shared.applied_revision();
        if applied.is_some_and(|a| revision < a) {
            event!(
                debug,
                revision,
                applied,
                "ignoring a stale discovery update"
            );
            self.shared.update_status(|st| st.stale_ignored += 1);
            return;
        }
        let current = self.shared.current();
        let plan = match update.into_change() {
            Change::Delta { upserts, removals } => self.plan_delta(&current, upserts, removals),
            Change::Snapshot(list) => Plan::Whole(desired_set(&current, list)),
        };
        if plan.len(&current) == 0 && !current.is_empty() && self.config.keep_last_on_empty {
            event!(
                warn,
                revision,
                "ignoring an empty discovery update; keeping the last good set"
            );
            self.shared.update_status(|st| {
                st.empty_ignored += 1;
                st.applied_revision = Some(revision);
            });
            return;
        }
        // The first update is published even when it changes nothing (an
        // empty set on an empty pool): the pool now knows it is empty.
        if !plan.is_unchanged(&current) || !current.discovered() {
            let members = match plan {
                Plan::Whole(wanted) => self.members_for(&current, wanted).await,
                Plan::Delta(delta) => self.members_after(&current, delta).await,
            };
            event!(
                debug,
                revision,
                endpoints = members.len(),
                "discovery update applied"
            );
            self.shared
                .publish(Snapshot::new(revision, current.epoch(), members));
        }
        self.shared.update_status(|st| {
            st.applied_revision = Some(revision);
            st.updates_applied += 1;
        });
    }

    /// What a delta changes in `current`, found through the key index.
    fn plan_delta(
        &mut self,
        current: &Snapshot<S>,
        upserts: Vec<Endpoint>,
        removals: Vec<String>,
    ) -> Plan {
        let index = self.index.get_or_insert_with(|| {
            let mut map = HashMap::with_capacity(current.len());
            map.extend(
                current
                    .members()
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (m.endpoint().key_arc().clone(), i)),
            );
            map
        });
        let members = current.members();
        let mut delta = Delta::default();
        // Upserts first, the last of a key winning; then removals, which
        // win over an upsert of the same key.
        let mut added: HashMap<Arc<str>, usize> = HashMap::new();
        for ep in upserts {
            if let Some(&at) = index.get(ep.key()) {
                delta.replaced.push((at, ep));
            } else if let Some(&at) = added.get(ep.key()) {
                delta.added[at] = ep;
            } else {
                added.insert(ep.key_arc().clone(), delta.added.len());
                delta.added.push(ep);
            }
        }
        for key in &removals {
            if let Some(&at) = index.get(key.as_str()) {
                delta.removed.push(at);
            } else if let Some(at) = added.remove(key.as_str()) {
                delta.dropped.push(at);
            }
        }
        delta.removed.sort_unstable();
        delta.removed.dedup();
        delta.dropped.sort_unstable();
        // Stable: the last upsert of a position stays last among its own.
        delta.replaced.sort_by_key(|(at, _)| *at);
        let mut replaced: Vec<(usize, Endpoint)> = Vec::with_capacity(delta.replaced.len());
        for (at, ep) in delta.replaced.drain(..) {
            match replaced.last_mut() {
                Some(last) if last.0 == at => *last = (at, ep),
                _ => replaced.push((at, ep)),
            }
        }
        replaced.retain(|(at, ep)| {
            delta.removed.binary_search(at).is_err() && members[*at].endpoint() != ep
        });
        delta.replaced = replaced;
        Plan::Delta(delta)
    }

    /// `current` with `delta` applied, in O(changed × log N): members keep
    /// their places, a removed member's place goes to the last member, and
    /// added ones go last. Stats carry over; a replaced endpoint keeps its
    /// service unless its address changed. The new list shares every node
    /// of the current one that the delta did not touch.
    async fn members_after(&mut self, current: &Snapshot<S>, delta: Delta) -> MemberList<S> {
        let mut members = current.members().clone();
        // Keys that left, and places whose member changed.
        let mut gone: Vec<Arc<str>> = Vec::with_capacity(delta.removed.len());
        let mut failed: Vec<usize> = Vec::new();
        for (at, endpoint) in delta.replaced {
            let Some(old) = current.members().get(at) else {
                continue;
            };
            match self.member(current, Some(old), endpoint).await {
                Some(next) => {
                    members.set(at, next);
                }
                // Its new address could not be connected: it leaves.
                None => failed.push(at),
            }
        }
        let mut removed = delta.removed;
        removed.extend(failed);
        // From the back, so a member moved into a hole is never one still
        // to be removed.
        removed.sort_unstable_by(|a, b| b.cmp(a));
        removed.dedup();
        let mut moved: Vec<usize> = Vec::with_capacity(removed.len());
        for at in removed {
            if let Some(m) = members.swap_remove(at) {
                gone.push(m.endpoint().key_arc().clone());
                if at < members.len() {
                    moved.push(at);
                }
            }
        }
        let kept = members.len();
        let mut dropped = delta.dropped.iter().peekable();
        for (i, endpoint) in delta.added.into_iter().enumerate() {
            if dropped.next_if_eq(&&i).is_some() {
                continue;
            }
            if let Some(m) = self.member(current, None, endpoint).await {
                members.push(m);
            }
        }
        // The index follows: keys that left go, members moved into holes
        // and added ones get their places.
        if let Some(index) = &mut self.index {
            for key in &gone {
                index.remove(key);
            }
            for at in moved.into_iter().chain(kept..members.len()) {
                if let Some(m) = members.get(at) {
                    index.insert(m.endpoint().key_arc().clone(), at);
                }
            }
        }
        members
    }

    /// Builds the new member list: stats always carry over by key, services
    /// carry over when the address did not change; new ones are connected.
    async fn members_for(&mut self, current: &Snapshot<S>, wanted: Vec<Endpoint>) -> MemberList<S> {
        let old = current.members();
        // The common update (weights or tags changed, same instances in the
        // same order) needs no lookup at all.
        let aligned = wanted.len() == old.len()
            && wanted
                .iter()
                .zip(old.iter())
                .all(|(w, m)| w.key_arc() == m.endpoint().key_arc());
        let by_key: HashMap<&str, &Member<S>> = if aligned {
            HashMap::new()
        } else {
            let mut map = HashMap::with_capacity(old.len());
            map.extend(old.iter().map(|m| (m.endpoint().key(), m)));
            map
        };
        let mut members = Vec::with_capacity(wanted.len());
        for (i, endpoint) in wanted.into_iter().enumerate() {
            let previous = if aligned {
                old.get(i)
            } else {
                by_key.get(endpoint.key()).copied()
            };
            if let Some(m) = self.member(current, previous, endpoint).await {
                members.push(m);
            }
        }
        // The key index still holds when every key kept its place.
        if !aligned || members.len() != old.len() {
            self.index = None;
        }
        members.into()
    }

    /// The member for `endpoint`, which follows `previous` (the member with
    /// its key) if there was one: the stats carry over, and so does the
    /// service unless the address changed. A new service is connected;
    /// `None` when that fails.
    async fn member(
        &mut self,
        current: &Snapshot<S>,
        previous: Option<&Member<S>>,
        endpoint: Endpoint,
    ) -> Option<Member<S>> {
        let stats = previous.map_or_else(
            || StatsHandle::with_signal(current.epoch(), self.shared.outcomes().clone()),
            |m| m.stats().clone(),
        );
        let service = match previous {
            Some(m) if m.endpoint().address() == endpoint.address() => m.service().clone(),
            _ => self.connect(&endpoint).await?,
        };
        Some(Member::new(endpoint, service, stats))
    }

    async fn connect(&mut self, endpoint: &Endpoint) -> Option<S> {
        let made = match self.connector.ready().await {
            Ok(c) => c.call(endpoint.clone()).await,
            Err(e) => Err(e),
        };
        match made {
            Ok(service) => Some(service),
            Err(e) => {
                let e: BoxError = e.into();
                let text = format!(
                    "connecting to `{endpoint}`: {}",
                    crate::error::render_chain(&*e)
                );
                event!(warn, endpoint = %endpoint, error = %text, "connector failed; endpoint left out");
                self.shared.update_status(|st| {
                    st.connect_failures += 1;
                    st.last_error = Some(text);
                });
                None
            }
        }
    }
}

/// What an update changes.
enum Plan {
    /// The whole new list.
    Whole(Vec<Endpoint>),
    /// A few changes to the current list.
    Delta(Delta),
}

/// A delta's changes, by position in the current list.
#[derive(Default)]
struct Delta {
    /// Positions whose endpoint changes, ascending.
    replaced: Vec<(usize, Endpoint)>,
    /// Positions removed, ascending.
    removed: Vec<usize>,
    /// New keys, in first-seen order.
    added: Vec<Endpoint>,
    /// Positions in `added` removed again by the same delta, ascending.
    dropped: Vec<usize>,
}

impl Plan {
    /// How many endpoints the pool would hold.
    fn len<S>(&self, current: &Snapshot<S>) -> usize {
        match self {
            Plan::Whole(wanted) => wanted.len(),
            Plan::Delta(d) => current.len() - d.removed.len() + d.added.len() - d.dropped.len(),
        }
    }

    fn is_unchanged<S>(&self, current: &Snapshot<S>) -> bool {
        match self {
            Plan::Whole(wanted) => {
                wanted.len() == current.len()
                    && wanted
                        .iter()
                        .zip(current.members())
                        .all(|(w, m)| w == m.endpoint())
            }
            Plan::Delta(d) => {
                d.replaced.is_empty() && d.removed.is_empty() && d.added.len() == d.dropped.len()
            }
        }
    }
}

/// The endpoint list a snapshot asks for, deduplicated by key (the last
/// occurrence wins, at the position of the first).
fn desired_set<S>(current: &Snapshot<S>, list: Vec<Endpoint>) -> Vec<Endpoint> {
    // The current set has no duplicates, so a list with its keys in its
    // order has none either: no need to hash a thousand keys. (Comparing
    // `Arc<str>`s checks the pointer first: endpoints a source hands back
    // unchanged cost no string comparison.)
    let same_keys = list.len() == current.len()
        && list
            .iter()
            .zip(current.members())
            .all(|(e, m)| e.key_arc() == m.endpoint().key_arc());
    if same_keys {
        return list;
    }
    let mut dedup = Dedup::with_capacity(list.len());
    for ep in list {
        dedup.upsert(ep);
    }
    dedup.out
}

/// An endpoint list being deduplicated by key.
struct Dedup {
    out: Vec<Endpoint>,
    index: HashMap<Arc<str>, usize>,
}

impl Dedup {
    fn with_capacity(n: usize) -> Self {
        Dedup {
            out: Vec::with_capacity(n),
            index: HashMap::with_capacity(n),
        }
    }

    /// Adds `ep`, or replaces the endpoint with its key in place.
    fn upsert(&mut self, ep: Endpoint) {
        match self.index.get(ep.key()) {
            Some(&i) => self.out[i] = ep,
            None => {
                self.index.insert(ep.key_arc().clone(), self.out.len());
                self.out.push(ep);
            }
        }
    }
}
