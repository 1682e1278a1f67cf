//! The registry's index of one service: its instances by key in
//! registration order, their TTL deadlines in a min-heap, and the log of
//! changed keys that lets a watch catch up with a delta.
//!
//! Every operation is constant time amortised (a deadline costs a heap
//! push or pop): removed slots and stale deadlines are dropped in one
//! linear pass once they outnumber the live instances.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::endpoint::Endpoint;

/// The fewest changes a watched service keeps for its watches, however
/// few instances it has (beyond that, as many as it has instances).
const MIN_LOG: usize = 1024;

/// How many removed slots or stale deadlines the index tolerates before it
/// compacts, on top of one per live instance.
const SLACK: usize = 64;

/// One registration of an endpoint.
pub(super) struct Instance {
    pub(super) endpoint: Endpoint,
    /// Tells this registration from an earlier or later one of the key.
    pub(super) id: u64,
    pub(super) ttl: Option<Duration>,
    /// When it expires unless renewed; `None` without a TTL.
    pub(super) expires: Option<Instant>,
}

/// A service's live instances, indexed by key, with their TTL deadlines.
#[derive(Default)]
pub(super) struct Instances {
    /// In registration order; `None` where one was removed, until the
    /// next compaction.
    slots: Vec<Option<Instance>>,
    /// The slot of each live instance.
    by_key: HashMap<Arc<str>, usize>,
    /// One entry per live instance with a deadline, earliest first, plus
    /// stale ones (of removed or replaced registrations), skipped when
    /// popped. A heartbeat only moves the instance's `expires`; its entry
    /// is pushed again at the new deadline when the old one comes up.
    deadlines: BinaryHeap<Reverse<(Instant, u64, Arc<str>)>>,
}

/// The keys changed in each revision of a watched service, so a watch that
/// has caught up once gets a delta of what changed since.
#[derive(Default)]
pub(super) struct ChangeLog {
    /// `(revision, key)`, oldest first.
    entries: VecDeque<(u64, Arc<str>)>,
    /// Every change after this revision is in `entries`.
    floor: u64,
}

impl Instances {
    /// How many instances are live.
    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }

    /// The live instances, in registration order.
    pub(super) fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.slots.iter().flatten().map(|i| &i.endpoint)
    }

    /// The live instance with `key`.
    pub(super) fn get(&self, key: &str) -> Option<&Instance> {
        let &slot = self.by_key.get(key)?;
        self.slots.get(slot)?.as_ref()
    }

    /// The live instance with `key`, if it is registration `id`.
    pub(super) fn get_mut(&mut self, key: &str, id: u64) -> Option<&mut Instance> {
        let &slot = self.by_key.get(key)?;
        self.slots.get_mut(slot)?.as_mut().filter(|i| i.id == id)
    }

    /// Adds `instance`, or replaces the one with its key in place.
    /// Returns whether the key is new.
    pub(super) fn insert(&mut self, instance: Instance) -> bool {
        let key = instance.endpoint.key_arc().clone();
        if let Some(at) = instance.expires {
            self.deadlines.push(Reverse((at, instance.id, key.clone())));
        }
        // One lookup: a new key gets the next slot, an old one keeps its.
        let next = self.slots.len();
        let slot = *self.by_key.entry(key).or_insert(next);
        match self.slots.get_mut(slot) {
            Some(s) => *s = Some(instance),
            None => self.slots.push(Some(instance)),
        }
        self.compact();
        slot == next
    }

    /// Removes the instance with `key` if `pred` accepts it.
    pub(super) fn remove_if(
        &mut self,
        key: &str,
        pred: impl FnOnce(&Instance) -> bool,
    ) -> Option<Instance> {
        // One lookup when `pred` accepts (the common case), two otherwise.
        let (key, slot) = self.by_key.remove_entry(key)?;
        match self.slots.get_mut(slot) {
            Some(s) if s.as_ref().is_some_and(pred) => {
                let removed = s.take();
                self.compact();
                removed
            }
            _ => {
                self.by_key.insert(key, slot);
                None
            }
        }
    }

    /// Removes the instance with `key`, leaving its slot empty.
    fn take(&mut self, key: &str) -> Option<Instance> {
        let slot = self.by_key.remove(key)?;
        self.slots.get_mut(slot)?.take()
    }

    /// Moves the deadline of registration `id` of `key` to a TTL after
    /// `now`. Returns `false` when that registration is not live.
    pub(super) fn renew(&mut self, key: &Arc<str>, id: u64, now: Instant) -> bool {
        let Some(instance) = self.get_mut(key, id) else {
            return false;
        };
        let before = instance.expires;
        instance.expires = instance.ttl.and_then(|t| now.checked_add(t));
        if let (None, Some(at)) = (before, instance.expires) {
            self.deadlines.push(Reverse((at, id, key.clone())));
        }
        true
    }

    /// The earliest deadline on record; it may be stale (renewed since),
    /// in which case expiring at it removes nothing.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, ..))| *at)
    }

    /// Removes the instances whose deadline has passed by `now` and
    /// returns their keys, in deadline order. Looks only at deadlines up
    /// to `now`.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<Arc<str>> {
        let mut expired = Vec::new();
        while self
            .deadlines
            .peek()
            .is_some_and(|Reverse((at, ..))| *at <= now)
        {
            let Some(Reverse((_, id, key))) = self.deadlines.pop() else {
                break;
            };
            let Some(instance) = self.get_mut(&key, id) else {
                continue; // removed or replaced since
            };
            match instance.expires {
                Some(at) if at <= now => {
                    self.take(&key);
                    expired.push(key);
                }
                Some(at) => self.deadlines.push(Reverse((at, id, key))),
                None => {}
            }
        }
        if !expired.is_empty() {
            self.compact();
        }
        expired
    }

    /// Drops empty slots once they outnumber the live ones, and stale
    /// deadlines once they do: linear work after as many changes, so
    /// constant per change.
    fn compact(&mut self) {
        let live = self.len();
        if self.slots.len() > 2 * live + SLACK {
            // Each old slot's new place is the number of live ones before
            // it: the map's values are renumbered without hashing a key.
            let mut live_before = 0;
            let remap: Vec<usize> = (self.slots.iter())
                .map(|s| {
                    let at = live_before;
                    live_before += usize::from(s.is_some());
                    at
                })
                .collect();
            self.slots.retain(Option::is_some);
            for slot in self.by_key.values_mut() {
                *slot = remap.get(*slot).copied().unwrap_or(*slot);
            }
        }
        if self.deadlines.len() > 2 * live + SLACK {
            self.deadlines = (self.slots.iter().flatten())
                .filter_map(|i| Some(Reverse((i.expires?, i.id, i.endpoint.key_arc().clone()))))
                .collect();
        }
    }
}

impl ChangeLog {
    /// Logs that `keys` changed at `revision`, if the service is
    /// `watched`. A watch needs no more entries than the larger of `live`
    /// and [`MIN_LOG`] (further behind, it gets a snapshot); the log is cut
    /// back to that once it holds twice as many, in one go (a loop of
    /// independent frees, cheaper than one or two per change).
    pub(super) fn record(
        &mut self,
        revision: u64,
        keys: impl IntoIterator<Item = Arc<str>>,
        watched: bool,
        live: usize,
    ) {
        if !watched {
            self.clear(revision);
            return;
        }
        self.entries.extend(keys.into_iter().map(|k| (revision, k)));
        let keep = live.max(MIN_LOG);
        if self.entries.len() > 2 * keep {
            let cut = self.entries.len() - keep;
            if let Some((r, _)) = self.entries.get(cut - 1) {
                self.floor = *r;
            }
            self.entries.drain(..cut);
        }
    }

    /// Forgets every change up to `revision`.
    pub(super) fn clear(&mut self, revision: u64) {
        self.entries.clear();
        self.floor = revision;
    }

    /// The keys changed after revision `seen`, oldest first, or `None`
    /// when the log no longer reaches back that far.
    pub(super) fn since(&self, seen: u64) -> Option<impl ExactSizeIterator<Item = &Arc<str>>> {
        if seen < self.floor {
            return None;
        }
        let start = self.entries.partition_point(|(r, _)| *r <= seen);
        Some(self.entries.range(start..).map(|(_, k)| k))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn ep(i: u16) -> Endpoint {
        Endpoint::new(SocketAddr::from(([127, 0, 0, 1], i)))
    }

    fn key(i: u16) -> Arc<str> {
        ep(i).key_arc().clone()
    }

    /// Registration `id` of endpoint `i`, expiring `ttl` seconds after `t0`.
    fn instance(i: u16, id: u64, ttl: Option<u64>, t0: Instant) -> Instance {
        let ttl = ttl.map(Duration::from_secs);
        Instance {
            endpoint: ep(i),
            id,
            ttl,
            expires: ttl.map(|t| t0 + t),
        }
    }

    fn ports(index: &Instances) -> Vec<u16> {
        index
            .endpoints()
            .map(|e| e.address().unwrap().port())
            .collect()
    }

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn registering_a_key_again_replaces_it_in_place() {
        let t0 = Instant::now();
        let mut index = Instances::default();
        for (id, i) in [(1, 1), (2, 2), (3, 3)] {
            index.insert(instance(i, id, None, t0));
        }
        index.insert(Instance {
            endpoint: ep(2).with_weight(7),
            ..instance(2, 4, None, t0)
        });
        assert_eq!(ports(&index), [1, 2, 3]);
        assert_eq!(index.len(), 3);
        assert_eq!(
            index.get(&key(2)).map(|i| (i.id, i.endpoint.weight())),
            Some((4, 7))
        );
        assert!(
            index.get_mut(&key(2), 2).is_none(),
            "the older registration is gone"
        );
    }

    #[test]
    fn only_the_current_registration_of_a_key_removes_it() {
        let t0 = Instant::now();
        let mut index = Instances::default();
        index.insert(instance(1, 1, None, t0));
        index.insert(instance(1, 2, None, t0));
        assert!(index.remove_if(&key(1), |i| i.id == 1).is_none());
        assert_eq!(ports(&index), [1]);
        assert_eq!(
            index.remove_if(&key(1), |i| i.id == 2).map(|i| i.id),
            Some(2)
        );
        assert_eq!(index.len(), 0);
        assert!(index.remove_if(&key(1), |_| true).is_none());
    }

    #[test]
    fn a_renewal_moves_the_deadline() {
        let t0 = Instant::now();
        let mut index = Instances::default();
        index.insert(instance(1, 1, Some(10), t0));
        assert!(index.renew(&key(1), 1, at(t0, 5)));
        assert!(
            index.expire(at(t0, 10)).is_empty(),
            "renewed at 5 s: lives to 15 s"
        );
        assert_eq!(index.next_deadline(), Some(at(t0, 15)));
        assert!(
            index
                .expire(at(t0, 15) - Duration::from_millis(1))
                .is_empty()
        );
        assert_eq!(index.expire(at(t0, 15)), [key(1)]);
        assert!(
            !index.renew(&key(1), 1, at(t0, 15)),
            "no renewal once expired"
        );
        assert_eq!(index.next_deadline(), None);
    }

    #[test]
    fn instances_expire_in_deadline_order_and_only_when_due() {
        let t0 = Instant::now();
        let mut index = Instances::default();
        for (id, (i, ttl)) in [(3, Some(30)), (1, Some(10)), (4, None), (2, Some(20))]
            .into_iter()
            .enumerate()
        {
            index.insert(instance(i, id as u64, ttl, t0));
        }
        assert!(index.expire(at(t0, 9)).is_empty());
        assert_eq!(index.expire(at(t0, 10)), [key(1)]);
        assert_eq!(ports(&index), [3, 4, 2]);
        assert_eq!(index.expire(at(t0, 40)), [key(2), key(3)]);
        assert_eq!(ports(&index), [4], "no TTL, no expiry");
        assert_eq!(index.next_deadline(), None);
    }

    #[test]
    fn the_deadline_of_a_replaced_registration_does_not_expire_the_new_one() {
        let t0 = Instant::now();
        let mut index = Instances::default();
        index.insert(instance(1, 1, Some(10), t0));
        index.insert(instance(1, 2, Some(100), t0));
        assert!(index.expire(at(t0, 50)).is_empty());
        assert!(
            !index.renew(&key(1), 1, at(t0, 50)),
            "the old guard renews nothing"
        );
        assert_eq!(index.expire(at(t0, 100)), [key(1)]);
    }

    #[test]
    fn compaction_keeps_order_and_lookups() {
        let t0 = Instant::now();
        let mut index = Instances::default();
        for i in 0..1000u16 {
            index.insert(instance(i, u64::from(i), Some(u64::from(i) + 1), t0));
        }
        for i in (0..1000u16).filter(|i| i % 10 != 0) {
            assert!(index.remove_if(&key(i), |_| true).is_some());
        }
        assert_eq!(index.len(), 100);
        assert!(
            index.slots.len() <= 2 * 100 + SLACK,
            "{} slots",
            index.slots.len()
        );
        assert!(index.deadlines.len() <= 2 * 100 + SLACK);
        let kept: Vec<u16> = (0..1000).step_by(10).collect();
        assert_eq!(ports(&index), kept);
        for &i in &kept {
            assert_eq!(index.get(&key(i)).map(|e| e.id), Some(u64::from(i)));
        }
        let expired = index.expire(at(t0, 1000));
        assert_eq!(expired, kept.iter().map(|&i| key(i)).collect::<Vec<_>>());
    }

    #[test]
    fn the_change_log_serves_what_changed_since_a_revision() {
        let mut log = ChangeLog::default();
        log.record(1, [key(1)], false, 1);
        assert!(log.since(0).is_none(), "unwatched changes are not kept");
        log.record(2, [key(2)], true, 2);
        log.record(3, [key(3), key(1)], true, 2);
        let since = |log: &ChangeLog, seen| log.since(seen).map(|k| k.cloned().collect::<Vec<_>>());
        assert_eq!(since(&log, 1), Some(vec![key(2), key(3), key(1)]));
        assert_eq!(since(&log, 2), Some(vec![key(3), key(1)]));
        assert_eq!(since(&log, 3), Some(vec![]));
        // Cut back to MIN_LOG entries once it holds twice as many.
        let last = 2 + 2 * MIN_LOG as u64;
        for r in 4..=last {
            log.record(r, [key(4)], true, 2);
            assert!(log.entries.len() <= 2 * MIN_LOG);
        }
        assert!(log.entries.len() >= MIN_LOG);
        assert!(log.since(2).is_none(), "no longer reaches back to 2");
        assert_eq!(since(&log, last - 1).map(|k| k.len()), Some(1));
    }
}
