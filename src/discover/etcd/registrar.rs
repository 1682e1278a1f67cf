use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse};
use tokio::task::JoinHandle;

use super::{EtcdConfig, EtcdError};
use crate::discover::record;
use crate::endpoint::Endpoint;
use crate::trace::event;

/// Registers this process in etcd, for [`EtcdSource`](crate::discover::EtcdSource)s
/// to discover (feature `etcd`).
///
/// [`register`](EtcdRegistrar::register) writes the endpoint's JSON record
/// under `prefix + id`, attached to a lease of [`ttl`](EtcdRegistrar::ttl)
/// that a background task keeps alive (a keep-alive every third of the
/// TTL). The record goes away
///
/// - at once on [`deregister`](EtcdRegistration::deregister) (the lease
///   is revoked), or on drop of the registration (a best-effort revoke);
/// - one TTL after the process dies or stops sending keep-alives, when
///   etcd expires the lease.
///
/// Writes never clobber another writer's silently: registering fails with
/// [`EtcdError::AlreadyRegistered`] when the key exists (unless
/// [`replace_existing`](EtcdRegistrar::replace_existing)), and
/// [`update`](EtcdRegistration::update) compares the key's mod revision
/// with the one this registration last wrote, inside a transaction, and
/// fails with [`EtcdError::Conflict`] when someone else wrote since.
///
/// If the lease is lost while the process lives on (etcd unreachable for
/// longer than the TTL), the task registers again with a new lease, as
/// long as nobody else took the key meanwhile.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_lb::discover::{EtcdConfig, EtcdRegistrar};
/// use tower_lb::Endpoint;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let registrar = EtcdRegistrar::new(EtcdConfig::new(["127.0.0.1:2379"]), "/services/api/")
///     .ttl(Duration::from_secs(5));
/// let me = Endpoint::new("10.0.0.7:8080".parse()?);
/// let mut registration = registrar.register("host-7", &me).await?;
/// // Warming up done: take full traffic.
/// registration.update(&me.clone().with_weight(10)).await?;
/// // Shutting down.
/// registration.deregister().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct EtcdRegistrar {
    config: EtcdConfig,
    prefix: String,
    ttl: Duration,
    replace_existing: bool,
}

impl EtcdRegistrar {
    /// Registers under `prefix` (used as it is: end it with a separator)
    /// in the etcd that `config` describes, with a 10 s TTL.
    pub fn new(config: EtcdConfig, prefix: impl Into<String>) -> Self {
        EtcdRegistrar {
            config,
            prefix: prefix.into(),
            ttl: Duration::from_secs(10),
            replace_existing: false,
        }
    }

    /// How long the record outlives the last keep-alive (default 10 s);
    /// etcd counts whole seconds, so this is rounded up, to at least 1 s.
    /// etcd may raise a TTL shorter than its own minimum.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Whether [`register`](EtcdRegistrar::register) may take over a key
    /// that already exists, such as this instance's own record from before
    /// a restart whose lease has not expired yet (default `false`). The
    /// take-over is still a compare-and-swap on the mod revision it read.
    #[must_use]
    pub fn replace_existing(mut self, replace: bool) -> Self {
        self.replace_existing = replace;
        self
    }

    fn ttl_secs(&self) -> i64 {
        let whole = self.ttl.as_secs() + u64::from(self.ttl.subsec_nanos() > 0);
        i64::try_from(whole.max(1)).unwrap_or(i64::MAX)
    }

    /// Writes `endpoint`'s record under `prefix + id` with a fresh lease
    /// and starts keeping the lease alive on the current runtime.
    pub async fn register(
        &self,
        id: &str,
        endpoint: &Endpoint,
    ) -> Result<EtcdRegistration, EtcdError> {
        if id.is_empty() {
            return Err(EtcdError::Empty {
                what: "instance id",
            });
        }
        let key = format!("{}{id}", self.prefix);
        let mut client = self.config.connect().await?;
        let value = record::encode(endpoint);
        let ttl = self.ttl_secs();
        let lease = grant(&self.config, &mut client, ttl).await?;
        let written = self.first_write(&mut client, &key, &value, lease).await;
        let mod_revision = match written {
            Ok(rev) => rev,
            Err(e) => {
                let _ = self
                    .config
                    .request("lease revoke", client.lease_revoke(lease))
                    .await;
                return Err(e);
            }
        };
        event!(info, key = %key, lease, mod_revision, "etcd: registered");
        let shared = Arc::new(Shared {
            key,
            config: self.config.clone(),
            ttl,
            client: Mutex::new(client),
            write: tokio::sync::Mutex::new(value),
            lease: AtomicI64::new(lease),
            mod_revision: AtomicI64::new(mod_revision),
            alive: AtomicBool::new(true),
            lost: AtomicBool::new(false),
        });
        let keeper = tokio::spawn(keep_alive(shared.clone()));
        Ok(EtcdRegistration {
            shared,
            keeper: Some(keeper),
        })
    }

    /// Writes the first record under `key` with `lease`, if the key is
    /// absent or, with [`replace_existing`](EtcdRegistrar::replace_existing),
    /// unchanged since it was read; returns the new mod revision.
    async fn first_write(
        &self,
        client: &mut Client,
        key: &str,
        value: &[u8],
        lease: i64,
    ) -> Result<i64, EtcdError> {
        if !self.replace_existing {
            let cmp = Compare::create_revision(key, CompareOp::Equal, 0);
            return match put_if(&self.config, client, key, value, lease, cmp).await? {
                Ok(rev) => Ok(rev),
                Err(found) => Err(EtcdError::AlreadyRegistered {
                    key: key.to_owned(),
                    found: found.unwrap_or(0),
                }),
            };
        }
        let current = self.config.request("get", client.get(key, None)).await?;
        let seen = current.kvs().first().map_or(0, |kv| kv.mod_revision());
        let cmp = Compare::mod_revision(key, CompareOp::Equal, seen);
        match put_if(&self.config, client, key, value, lease, cmp).await? {
            Ok(rev) => Ok(rev),
            Err(found) => Err(EtcdError::Conflict {
                key: key.to_owned(),
                expected: seen,
                found,
            }),
        }
    }
}

/// This process's record in etcd, kept alive until
/// [`deregister`](EtcdRegistration::deregister) or drop; see
/// [`EtcdRegistrar`].
pub struct EtcdRegistration {
    shared: Arc<Shared>,
    keeper: Option<JoinHandle<()>>,
}

/// What a registration and its keep-alive task share.
struct Shared {
    key: String,
    config: EtcdConfig,
    ttl: i64,
    client: Mutex<Client>,
    /// The value last written; held while writing, so writes take turns.
    write: tokio::sync::Mutex<Vec<u8>>,
    lease: AtomicI64,
    mod_revision: AtomicI64,
    /// Whether the last keep-alive was answered.
    alive: AtomicBool,
    /// Whether the record is gone for good (taken by another writer).
    lost: AtomicBool,
}

impl Shared {
    fn client(&self) -> Client {
        self.client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the client with a fresh one, if etcd can be reached.
    async fn reconnect(&self) {
        if let Ok(c) = self.config.connect().await {
            *self.client.lock().unwrap_or_else(PoisonError::into_inner) = c;
        }
    }
}

impl fmt::Debug for EtcdRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdRegistration")
            .field("key", &self.shared.key)
            .field("lease", &self.lease_id())
            .field("mod_revision", &self.mod_revision())
            .field("alive", &self.is_alive())
            .field("lost", &self.is_lost())
            .field("config", &self.shared.config)
            .finish()
    }
}

impl EtcdRegistration {
    /// The etcd key of the record.
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// The lease the record is attached to (it changes if the lease was
    /// lost and the record registered again).
    pub fn lease_id(&self) -> i64 {
        self.shared.lease.load(Ordering::Acquire)
    }

    /// The key's mod revision as this registration last wrote it.
    pub fn mod_revision(&self) -> i64 {
        self.shared.mod_revision.load(Ordering::Acquire)
    }

    /// Whether the last keep-alive was answered.
    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::Acquire)
    }

    /// Whether the record is gone for good: its lease was lost and another
    /// writer holds the key now. Register again under another id.
    pub fn is_lost(&self) -> bool {
        self.shared.lost.load(Ordering::Acquire)
    }

    /// Replaces the record with `endpoint`'s, if nobody else wrote the key
    /// since this registration last did; otherwise nothing is written and
    /// the error is [`EtcdError::Conflict`].
    pub async fn update(&mut self, endpoint: &Endpoint) -> Result<(), EtcdError> {
        let shared = &self.shared;
        let mut current = shared.write.lock().await;
        if shared.lost.load(Ordering::Acquire) {
            return Err(EtcdError::LeaseLost {
                key: shared.key.clone(),
            });
        }
        let value = record::encode(endpoint);
        let expected = shared.mod_revision.load(Ordering::Acquire);
        let lease = shared.lease.load(Ordering::Acquire);
        let cmp = Compare::mod_revision(shared.key.as_str(), CompareOp::Equal, expected);
        let mut client = shared.client();
        match put_if(&shared.config, &mut client, &shared.key, &value, lease, cmp).await {
            Ok(Ok(rev)) => {
                shared.mod_revision.store(rev, Ordering::Release);
                *current = value;
                event!(debug, key = %shared.key, mod_revision = rev, "etcd: record updated");
                Ok(())
            }
            Ok(Err(found)) => {
                event!(
                    warn,
                    key = %shared.key,
                    expected,
                    found = ?found,
                    "etcd: record changed by another writer; not updated"
                );
                Err(EtcdError::Conflict {
                    key: shared.key.clone(),
                    expected,
                    found,
                })
            }
            Err(e) => {
                shared.reconnect().await;
                Err(e)
            }
        }
    }

    /// Stops the keep-alives and revokes the lease, which deletes the
    /// record at once. A lease already gone is not an error.
    pub async fn deregister(mut self) -> Result<(), EtcdError> {
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
        let shared = self.shared.clone();
        // Wait for a write in progress, and keep the lease from changing.
        let _write = shared.write.lock().await;
        let lease = shared.lease.load(Ordering::Acquire);
        let mut client = shared.client();
        let result = match shared
            .config
            .request("lease revoke", client.lease_revoke(lease))
            .await
        {
            Ok(_) => Ok(()),
            Err(EtcdError::Request {
                source: etcd_client::Error::GRpcStatus(status),
                ..
            }) if status.message().contains("lease not found") => Ok(()),
            Err(e) => Err(e),
        };
        event!(info, key = %shared.key, ok = result.is_ok(), "etcd: deregistered");
        result
    }
}

impl Drop for EtcdRegistration {
    fn drop(&mut self) {
        let Some(keeper) = self.keeper.take() else {
            return; // deregistered
        };
        keeper.abort();
        // Best effort, bounded by the request timeout: without a runtime
        // the lease simply expires.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let shared = self.shared.clone();
            handle.spawn(async move {
                let lease = shared.lease.load(Ordering::Acquire);
                let mut client = shared.client();
                let _ = shared
                    .config
                    .request("lease revoke", client.lease_revoke(lease))
                    .await;
            });
        }
    }
}

async fn grant(config: &EtcdConfig, client: &mut Client, ttl: i64) -> Result<i64, EtcdError> {
    let r = config
        .request("lease grant", client.lease_grant(ttl, None))
        .await?;
    Ok(r.id())
}

/// Puts `value` under `key` with `lease` if `cmp` holds: `Ok(Ok(rev))` with
/// the new mod revision, or `Ok(Err(found))` with the key's mod revision
/// (`None` when absent) when it did not.
async fn put_if(
    config: &EtcdConfig,
    client: &mut Client,
    key: &str,
    value: &[u8],
    lease: i64,
    cmp: Compare,
) -> Result<Result<i64, Option<i64>>, EtcdError> {
    let txn = Txn::new()
        .when([cmp])
        .and_then([TxnOp::put(
            key,
            value.to_vec(),
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(key, None)]);
    let r: TxnResponse = config.request("txn", client.txn(txn)).await?;
    if r.succeeded() {
        return Ok(Ok(r.header().map_or(0, |h| h.revision())));
    }
    let found = r.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => Some(g.kvs().first().map(|kv| kv.mod_revision())),
        _ => None,
    });
    Ok(Err(found.flatten()))
}

/// Why a keep-alive stream ended.
enum KeepEnd {
    /// etcd says the lease is gone.
    Lost,
    /// The stream or the connection failed.
    Failed(EtcdError),
}

/// Keeps the lease alive; re-registers when it is lost; ends only when
/// the key is taken by another writer (or the task is aborted).
async fn keep_alive(shared: Arc<Shared>) {
    let min = Duration::from_millis(100);
    let max = Duration::from_secs(5);
    let mut backoff = min;
    let mut lost = false;
    loop {
        let end = if lost {
            match reregister(&shared).await {
                Ok(true) => {
                    lost = false;
                    continue;
                }
                Ok(false) => return,
                Err(e) => KeepEnd::Failed(e),
            }
        } else {
            keep(&shared, &mut backoff, min).await
        };
        shared.alive.store(false, Ordering::Release);
        match end {
            KeepEnd::Lost => {
                event!(warn, key = %shared.key, "etcd: lease lost; registering again");
                lost = true;
            }
            KeepEnd::Failed(e) => {
                let text = crate::error::render_chain(&e);
                event!(warn, key = %shared.key, error = %text, "etcd: keep-alive failed; retrying");
                tokio::time::sleep(super::worker::jitter(backoff)).await;
                backoff = (backoff * 2).min(max);
                shared.reconnect().await;
            }
        }
    }
}

/// One keep-alive stream, until it ends.
async fn keep(shared: &Shared, backoff: &mut Duration, min: Duration) -> KeepEnd {
    let lease = shared.lease.load(Ordering::Acquire);
    let mut client = shared.client();
    let opened = shared
        .config
        .request("lease keep-alive", client.lease_keep_alive(lease))
        .await;
    let (mut keeper, mut stream) = match opened {
        Ok(pair) => pair,
        Err(EtcdError::Request {
            source: etcd_client::Error::LeaseKeepAliveError(_),
            ..
        }) => return KeepEnd::Lost,
        Err(e) => return KeepEnd::Failed(e),
    };
    // Opening the stream sent one keep-alive and read its answer.
    shared.alive.store(true, Ordering::Release);
    *backoff = min;
    let every = Duration::from_secs(u64::try_from(shared.ttl).unwrap_or(1)) / 3;
    loop {
        tokio::time::sleep(every).await;
        if let Err(source) = keeper.keep_alive().await {
            return KeepEnd::Failed(EtcdError::Request {
                op: "lease keep-alive",
                source,
            });
        }
        match shared
            .config
            .request("lease keep-alive", stream.message())
            .await
        {
            Ok(Some(r)) if r.ttl() > 0 => shared.alive.store(true, Ordering::Release),
            Ok(Some(_)) => return KeepEnd::Lost,
            Ok(None) => {
                return KeepEnd::Failed(EtcdError::WatchBroken {
                    prefix: shared.key.clone(),
                    reason: "the keep-alive stream ended".to_owned(),
                });
            }
            Err(e) => return KeepEnd::Failed(e),
        }
    }
}

/// Registers again with a new lease after the old one was lost:
/// `Ok(true)` when done, `Ok(false)` when another writer has the key.
async fn reregister(shared: &Shared) -> Result<bool, EtcdError> {
    let value = shared.write.lock().await;
    let mut client = shared.client();
    let lease = grant(&shared.config, &mut client, shared.ttl).await?;
    let cmp = Compare::create_revision(shared.key.as_str(), CompareOp::Equal, 0);
    match put_if(&shared.config, &mut client, &shared.key, &value, lease, cmp).await {
        Ok(Ok(rev)) => {
            shared.lease.store(lease, Ordering::Release);
            shared.mod_revision.store(rev, Ordering::Release);
            event!(info, key = %shared.key, lease, mod_revision = rev, "etcd: registered again");
            Ok(true)
        }
        Ok(Err(found)) => {
            let _ = shared
                .config
                .request("lease revoke", client.lease_revoke(lease))
                .await;
            shared.lost.store(true, Ordering::Release);
            event!(
                warn,
                key = %shared.key,
                found = ?found,
                "etcd: lease lost and the key taken by another writer; registration ended"
            );
            Ok(false)
        }
        Err(e) => {
            let _ = shared
                .config
                .request("lease revoke", client.lease_revoke(lease))
                .await;
            Err(e)
        }
    }
}
