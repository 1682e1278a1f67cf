//! Discovery: where the endpoints of a service come from.
//!
//! A [`Source`] yields [`Update`]s — full snapshots or deltas of a service's
//! endpoint set — each with a monotonic revision. A [`Pool`](crate::pool::Pool)
//! applies them off the request path and ignores any update older than the
//! one it applied last, so a slow or replayed message never rolls the set
//! back. Within one update, endpoints with the same key resolve to the last
//! one.
//!
//! Built-in sources:
//!
//! - [`StaticSource`]: a fixed list.
//! - [`Registry`]: an in-process registry with register/deregister guards,
//!   TTL heartbeats and watches; the embedded default.
//! - `FileSource` (feature `file`): a JSON file of endpoints, reloaded
//!   when it changes.
//! - `DnsSource` (feature `dns`): A/AAAA names and SRV records, whose
//!   priorities become failover tiers and whose weights become weights;
//!   re-resolved as TTLs expire.
//! - `EtcdSource` (feature `etcd`): one JSON record per key under a
//!   prefix, listed then watched, resuming where it left off after a
//!   broken connection; `EtcdRegistrar` registers this process there
//!   under a lease.
//! - [`channel`]: push updates from your own code (or tests); with the
//!   `test-util` feature, `ManualSource` numbers the revisions for you.
//!
//! Any source also plugs into tower's own balancers through
//! [`TowerDiscover`], which implements `tower::discover::Discover`.
//!
//! # Bad input
//!
//! A source that reads records (a file, etcd, DNS SRV) leaves out a record
//! it cannot use and reports why — a file's or etcd's as
//! [`DiscoveryError::InvalidRecord`](crate::DiscoveryError::InvalidRecord)
//! naming `path[index]` or the key — and the others apply. When it has
//! records but not one it can use, the answer is broken, not empty: it
//! sends no update, the pool keeps its last good set, and
//! [`DiscoveryError::NoValidRecords`](crate::DiscoveryError::NoValidRecords)
//! is reported once. Only an answer with no records at all (`[]`, a prefix
//! with no keys, NXDOMAIN, a lone `.` SRV target) means "no instances".
//! The registry, static lists and channels take built
//! [`Endpoint`](crate::Endpoint)s, valid by construction, so for them an
//! empty set is always an empty set.
//!
//! ```
//! use tower_lb::discover::{Registry, Source};
//! use tower_lb::Endpoint;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let registry = Registry::new();
//! let _guard = registry
//!     .register("users", Endpoint::new("127.0.0.1:8080".parse().unwrap()))
//!     .unwrap();
//! let mut watch = registry.watch("users").unwrap();
//! let update = watch.next_update().await.unwrap().unwrap();
//! assert_eq!(update.endpoints().map(|e| e.key().to_owned()).collect::<Vec<_>>(), ["127.0.0.1:8080"]);
//! # }
//! ```

#[cfg(all(feature = "unstable-bench", any(feature = "file", feature = "etcd")))]
#[cfg_attr(docsrs, doc(cfg(feature = "unstable-bench")))]
pub mod bench;
mod channel;
#[cfg(feature = "dns")]
mod dns;
#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "file")]
mod file;
#[cfg(feature = "test-util")]
mod manual;
#[cfg(any(feature = "file", feature = "etcd"))]
mod record;
mod registry;
mod source;
mod static_list;
mod tower_adapter;

pub use channel::{ChannelSource, UpdateSender, channel};
#[cfg(feature = "dns")]
pub use dns::DnsSource;
#[cfg(feature = "etcd")]
pub use etcd::{EtcdConfig, EtcdError, EtcdRegistrar, EtcdRegistration, EtcdSource, EtcdStatus};
/// The etcd client crate the etcd source and registrar are built on, for
/// its TLS types and its own `Client`.
#[cfg(feature = "etcd")]
pub use etcd_client;
#[cfg(feature = "file")]
pub use file::FileSource;
#[cfg(feature = "test-util")]
pub use manual::ManualSource;
pub use registry::{Registration, Registry, RegistrySource};
pub use source::{Change, RevisionProbe, Source, Update};
pub use static_list::StaticSource;
pub use tower_adapter::TowerDiscover;
