use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::poll_fn;
use std::sync::Arc;

use tower::ServiceExt;
use tower_service::Service;

use super::pool::Shared;
use super::{Member, PoolConfig, Snapshot, StatsHandle};
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
        PoolDriver {
            source,
            connector,
            shared,
            config,
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
        let wanted = desired_set(&current, update.into_change());
        if wanted.is_empty() && !current.is_empty() && self.config.keep_last_on_empty {
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
        let unchanged = wanted.len() == current.len()
            && wanted
                .iter()
                .zip(current.members())
                .all(|(w, m)| w == m.endpoint());
        // The first update is published even when it changes nothing (an
        // empty set on an empty pool): the pool now knows it is empty.
        if !unchanged || !current.discovered() {
            let members = self.members_for(&current, wanted).await;
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

    /// Builds the new member list: stats always carry over by key, services
    /// carry over when the address did not change; new ones are connected.
    async fn members_for(
        &mut self,
        current: &Snapshot<S>,
        wanted: Vec<Endpoint>,
    ) -> Vec<Member<S>> {
        let old = current.members();
        // The common update (weights or tags changed, same instances in the
        // same order) needs no lookup at all.
        let aligned = wanted.len() == old.len()
            && wanted
                .iter()
                .zip(old)
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
            let stats = previous.map_or_else(
                || StatsHandle::with_signal(current.epoch(), self.shared.outcomes().clone()),
                |m| m.stats().clone(),
            );
            let service = match previous {
                Some(m) if m.endpoint().address() == endpoint.address() => m.service().clone(),
                _ => match self.connect(&endpoint).await {
                    Some(s) => s,
                    None => continue,
                },
            };
            members.push(Member::new(endpoint, service, stats));
        }
        members
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

/// The endpoint list an update asks for, deduplicated by key (the last
/// occurrence wins, at the position of the first).
fn desired_set<S>(current: &Snapshot<S>, change: Change) -> Vec<Endpoint> {
    match change {
        // The current set has no duplicates, so a list with its keys in
        // its order has none either: no need to hash a thousand keys.
        // (Comparing `Arc<str>`s checks the pointer first: endpoints a
        // source hands back unchanged cost no string comparison.)
        Change::Snapshot(list)
            if list.len() == current.len()
                && list
                    .iter()
                    .zip(current.members())
                    .all(|(e, m)| e.key_arc() == m.endpoint().key_arc()) =>
        {
            list
        }
        Change::Snapshot(list) => {
            let mut dedup = Dedup::with_capacity(list.len());
            for ep in list {
                dedup.upsert(ep);
            }
            dedup.out
        }
        Change::Delta { upserts, removals } => {
            let mut dedup = Dedup::with_capacity(current.len() + upserts.len());
            for m in current.members() {
                dedup.upsert(m.endpoint().clone());
            }
            for ep in upserts {
                dedup.upsert(ep);
            }
            let mut out = dedup.out;
            if !removals.is_empty() {
                let removals: HashSet<String> = removals.into_iter().collect();
                out.retain(|ep| !removals.contains(ep.key()));
            }
            out
        }
    }
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
