use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use self::index::{ChangeLog, Instance, Instances};
use super::{Source, Update};
use crate::endpoint::Endpoint;
use crate::error::DiscoveryError;

mod index;

/// The longest service name a registry accepts, in bytes.
const MAX_SERVICE_NAME: usize = 253;

/// An in-process service registry: the embedded default.
///
/// Instances [`register`](Registry::register) under a service name and get
/// a [`Registration`] guard that deregisters them when dropped. With
/// [`register_with_ttl`](Registry::register_with_ttl) an instance must
/// [`heartbeat`](Registration::heartbeat) within its TTL or it disappears,
/// as it would from Consul or Eureka. [`watch`](Registry::watch) gives a
/// [`Source`] of the service's endpoint set.
///
/// One registry holds any number of services; it is cheap to clone and all
/// clones share the same state. Every change gets a revision from one
/// counter, so revisions are monotonic across the registry.
///
/// Instances are indexed by key and TTL deadlines are kept in a min-heap,
/// so registering, deregistering and heartbeating cost the same with a
/// hundred thousand instances as with ten, and expiry looks only at the
/// deadlines that have passed. A watch gets the whole set once, then
/// deltas of the keys that changed since it last looked.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::discover::Registry;
/// use tower_lb::Endpoint;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let registry = Registry::new();
/// let ep = Endpoint::new("127.0.0.1:9000".parse().unwrap());
/// let guard = registry.register_with_ttl("api", ep, Duration::from_secs(10)).unwrap();
/// assert_eq!(registry.instances("api").len(), 1);
/// guard.heartbeat();
/// drop(guard);
/// assert!(registry.instances("api").is_empty());
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    services: HashMap<Arc<str>, ServiceState>,
    revision: u64,
    next_id: u64,
}

#[derive(Default)]
struct ServiceState {
    instances: Instances,
    revision: u64,
    /// Wakers of watch sources waiting for a change, by watch id.
    watchers: Vec<(u64, Waker)>,
    /// How many watch sources of the service exist, waiting or not.
    watches: usize,
    changes: ChangeLog,
    /// The revision of the last change that added or removed a key.
    reshaped: u64,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("Registry")
            .field("services", &st.services.len())
            .field("revision", &st.revision)
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `endpoint` under `service` until the returned guard is
    /// dropped. Registering a key that is already there replaces it (the
    /// older guard then no longer removes it).
    pub fn register(
        &self,
        service: &str,
        endpoint: Endpoint,
    ) -> Result<Registration, DiscoveryError> {
        self.insert(service, endpoint, None)
    }

    /// Registers `endpoint` under `service`; it disappears if it does not
    /// [`heartbeat`](Registration::heartbeat) at least once per `ttl`.
    pub fn register_with_ttl(
        &self,
        service: &str,
        endpoint: Endpoint,
        ttl: Duration,
    ) -> Result<Registration, DiscoveryError> {
        if ttl.is_zero() {
            return Err(DiscoveryError::ZeroTtl);
        }
        self.insert(service, endpoint, Some(ttl))
    }

    fn insert(
        &self,
        service: &str,
        endpoint: Endpoint,
        ttl: Option<Duration>,
    ) -> Result<Registration, DiscoveryError> {
        validate_service(service)?;
        let key = endpoint.key_arc().clone();
        let mut st = self.lock();
        st.next_id += 1;
        let id = st.next_id;
        let (name, svc) = st.service_mut(service);
        let added = svc.instances.insert(Instance {
            endpoint,
            id,
            ttl,
            expires: ttl.and_then(|t| Instant::now().checked_add(t)),
        });
        st.commit(&name, [key.clone()], added);
        Ok(Registration {
            registry: self.clone(),
            service: name,
            key,
            id,
        })
    }

    /// Removes the instance with `key` from `service`, whoever registered
    /// it. Returns whether it was there.
    pub fn deregister(&self, service: &str, key: &str) -> bool {
        self.remove_if(service, key, |_| true)
    }

    fn remove_if(&self, service: &str, key: &str, pred: impl FnOnce(&Instance) -> bool) -> bool {
        let mut st = self.lock();
        let Some(svc) = st.services.get_mut(service) else {
            return false;
        };
        let Some(removed) = svc.instances.remove_if(key, pred) else {
            return false;
        };
        st.commit(service, [removed.endpoint.key_arc().clone()], true);
        true
    }

    /// The live instances of `service`, in registration order (a key
    /// registered again keeps its place).
    pub fn instances(&self, service: &str) -> Vec<Endpoint> {
        let mut st = self.lock();
        st.expire(service, Instant::now());
        st.services
            .get(service)
            .map(|s| s.instances.endpoints().cloned().collect())
            .unwrap_or_default()
    }

    /// The names of the services that have been registered or watched.
    pub fn services(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().services.keys().map(|k| k.to_string()).collect();
        names.sort();
        names
    }

    /// The registry's newest revision, across all services.
    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    /// The revision of `service`'s last change (0 if it never changed).
    /// A [`watch`](Registry::watch) of the service stamps its snapshots with
    /// this number, so `pool.applied(registry.revision_of(service))` waits
    /// until a pool has caught up with the registry. (The registry-wide
    /// [`revision`](Registry::revision) moves on with other services too,
    /// and a pool of this one never reaches it.)
    pub fn revision_of(&self, service: &str) -> u64 {
        self.lock().services.get(service).map_or(0, |s| s.revision)
    }

    /// A [`Source`] following `service`: a snapshot at once (possibly
    /// empty), then, after every change, a delta of the keys that changed
    /// since the watch last looked. It is a snapshot again when more
    /// changed than the service has instances, or when no key came or went
    /// (only weights or priorities changed), which a pool applies faster. The source also drives TTL expiry for
    /// the service, so a silent instance disappears on time even if
    /// nothing else touches the registry.
    pub fn watch(&self, service: &str) -> Result<RegistrySource, DiscoveryError> {
        validate_service(service)?;
        let name = self.lock().service_mut(service).0;
        Ok(RegistrySource::new(self.clone(), name))
    }

    /// How many watches of `service` are waiting for its next change.
    pub fn waiting_watches(&self, service: &str) -> usize {
        self.lock()
            .services
            .get(service)
            .map_or(0, |s| s.watchers.len())
    }
}

impl State {
    fn service_mut(&mut self, service: &str) -> (Arc<str>, &mut ServiceState) {
        let name = match self.services.get_key_value(service) {
            Some((k, _)) => k.clone(),
            None => {
                let k: Arc<str> = service.into();
                self.services.insert(k.clone(), ServiceState::default());
                k
            }
        };
        let svc = self.services.entry(name.clone()).or_default();
        (name, svc)
    }

    /// Gives `service` a new revision for a change to `keys` (which
    /// `reshapes` the set when it adds or removes one), logs them for its
    /// watches and wakes those waiting.
    fn commit(&mut self, service: &str, keys: impl IntoIterator<Item = Arc<str>>, reshapes: bool) {
        self.revision += 1;
        let revision = self.revision;
        if let Some(svc) = self.services.get_mut(service) {
            svc.revision = revision;
            if reshapes {
                svc.reshaped = revision;
            }
            let (watched, live) = (svc.watches > 0, svc.instances.len());
            svc.changes.record(revision, keys, watched, live);
            for (_, w) in svc.watchers.drain(..) {
                w.wake();
            }
        }
    }

    /// Removes instances of `service` whose TTL has passed.
    fn expire(&mut self, service: &str, now: Instant) {
        let Some(svc) = self.services.get_mut(service) else {
            return;
        };
        let expired = svc.instances.expire(now);
        if !expired.is_empty() {
            crate::trace::event!(
                info,
                service,
                expired = expired.len(),
                "registry instances missed their heartbeat"
            );
            self.commit(service, expired, true);
        }
    }
}

impl ServiceState {
    /// What a watch that has seen revision `seen` needs to catch up: a
    /// delta of the keys changed since, or the whole set when it has seen
    /// nothing, the log no longer reaches back that far, or more changed
    /// than the set holds. When no key was added or removed since (new
    /// weights or priorities only), it is the whole set too: with its keys
    /// where they were, a pool takes it in without a lookup per key, which
    /// costs less than applying a delta.
    fn update_since(&self, seen: Option<u64>) -> Update {
        let changed = seen
            .filter(|&s| s < self.reshaped)
            .and_then(|s| self.changes.since(s))
            .filter(|c| c.len() <= self.instances.len());
        let Some(changed) = changed else {
            let endpoints = self.instances.endpoints().cloned().collect();
            return Update::snapshot(self.revision, endpoints);
        };
        let mut done = HashSet::with_capacity(changed.len());
        let (mut upserts, mut removals) = (Vec::new(), Vec::new());
        for key in changed.filter(|k| done.insert(&***k)) {
            match self.instances.get(key) {
                Some(i) => upserts.push(i.endpoint.clone()),
                None => removals.push(key.to_string()),
            }
        }
        Update::delta(self.revision, upserts, removals)
    }
}

fn validate_service(name: &str) -> Result<(), DiscoveryError> {
    if name.is_empty()
        || name.len() > MAX_SERVICE_NAME
        || name.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(DiscoveryError::InvalidServiceName { name: name.into() });
    }
    Ok(())
}

/// An instance's place in a [`Registry`]; deregisters it when dropped.
#[must_use = "dropping the registration deregisters the instance"]
pub struct Registration {
    registry: Registry,
    service: Arc<str>,
    key: Arc<str>,
    id: u64,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("service", &&*self.service)
            .field("key", &&*self.key)
            .finish()
    }
}

impl Registration {
    /// The registered endpoint's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Renews the TTL. Returns `false` when the instance had already expired
    /// (or was removed, or replaced by a newer registration of its key): a
    /// late heartbeat does not bring it back; register it again.
    pub fn heartbeat(&self) -> bool {
        let mut st = self.registry.lock();
        let now = Instant::now();
        st.expire(&self.service, now);
        let svc = st.service_mut(&self.service).1;
        svc.instances.renew(&self.key, self.id, now)
    }

    /// Re-announces the instance with a new weight (a weight of 0 drains
    /// it). Its stats in every pool carry over, since the key is the same.
    /// Returns `false` when it is no longer registered.
    pub fn set_weight(&self, weight: u32) -> bool {
        self.modify(|e| e.with_weight(weight))
    }

    /// Re-announces the instance with a new priority tier.
    pub fn set_priority(&self, priority: u8) -> bool {
        self.modify(|e| e.with_priority(priority))
    }

    fn modify(&self, f: impl FnOnce(Endpoint) -> Endpoint) -> bool {
        let mut st = self.registry.lock();
        let svc = st.service_mut(&self.service).1;
        let Some(i) = svc.instances.get_mut(&self.key, self.id) else {
            return false;
        };
        i.endpoint = f(i.endpoint.clone());
        st.commit(&self.service, [self.key.clone()], false);
        true
    }

    /// Deregisters now (the same as dropping the guard).
    pub fn deregister(self) {}
}

impl Drop for Registration {
    fn drop(&mut self) {
        let id = self.id;
        self.registry
            .remove_if(&self.service, &self.key, |i| i.id == id);
    }
}

/// A [`Source`] following one service of a [`Registry`]; see
/// [`Registry::watch`].
pub struct RegistrySource {
    registry: Registry,
    service: Arc<str>,
    /// Identifies this watch's waker in the service's list.
    id: u64,
    seen: Option<u64>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl RegistrySource {
    fn new(registry: Registry, service: Arc<str>) -> Self {
        let id = {
            let mut st = registry.lock();
            st.next_id += 1;
            st.service_mut(&service).1.watches += 1;
            st.next_id
        };
        RegistrySource {
            registry,
            service,
            id,
            seen: None,
            timer: None,
        }
    }
}

impl Drop for RegistrySource {
    fn drop(&mut self) {
        let mut st = self.registry.lock();
        if let Some(svc) = st.services.get_mut(&*self.service) {
            svc.watchers.retain(|(id, _)| *id != self.id);
            svc.watches = svc.watches.saturating_sub(1);
            if svc.watches == 0 {
                svc.changes.clear(svc.revision);
            }
        }
    }
}

impl fmt::Debug for RegistrySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrySource")
            .field("service", &&*self.service)
            .field("seen", &self.seen)
            .finish()
    }
}

impl Clone for RegistrySource {
    /// A new watch of the same service, starting with a full snapshot.
    fn clone(&self) -> Self {
        RegistrySource::new(self.registry.clone(), self.service.clone())
    }
}

impl Source for RegistrySource {
    /// The service watched.
    fn name(&self) -> Option<&str> {
        Some(&self.service)
    }

    /// The service's revision in the registry
    /// ([`Registry::revision_of`]), once it has changed at all.
    fn revision_probe(&self) -> Option<super::RevisionProbe> {
        let registry = self.registry.clone();
        let service = self.service.clone();
        Some(super::RevisionProbe::new(move || {
            Some(registry.revision_of(&service)).filter(|r| *r > 0)
        }))
    }

    fn poll_update(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Update, DiscoveryError>>> {
        loop {
            let next_expiry = {
                let mut st = self.registry.lock();
                st.expire(&self.service, Instant::now());
                let svc = st.service_mut(&self.service).1;
                if self.seen != Some(svc.revision) {
                    let update = svc.update_since(self.seen);
                    self.seen = Some(svc.revision);
                    return Poll::Ready(Some(Ok(update)));
                }
                match svc.watchers.iter_mut().find(|(id, _)| *id == self.id) {
                    Some((_, w)) => w.clone_from(cx.waker()),
                    None => svc.watchers.push((self.id, cx.waker().clone())),
                }
                svc.instances.next_deadline()
            };
            let Some(at) = next_expiry else {
                return Poll::Pending;
            };
            super::source::arm(&mut self.timer, at);
            if let Some(t) = &mut self.timer {
                if t.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        }
    }
}
