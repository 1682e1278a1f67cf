//! etcd discovery and registration (feature `etcd`).
//!
//! Why etcd: it is the registry many platforms already run (Kubernetes
//! keeps its own state there), it is consistent, and it has the two
//! primitives client-side discovery needs. A *watch from a revision*
//! streams every change after a point in history, so a client that lost
//! its connection resumes exactly where it left off instead of polling;
//! a *lease* ties a key to a heartbeat, so an instance that dies without
//! saying goodbye disappears when its heartbeats stop.
//!
//! How: every instance of a service is one key under a prefix, its value
//! one JSON record (the shape is in [`EtcdSource`]'s docs).
//!
//! - [`EtcdSource`] lists the prefix, then watches it from the listed
//!   revision + 1, and sends the set to a pool.
//! - [`EtcdRegistrar`] puts this process's record under the prefix with a
//!   lease it keeps alive, updates it with compare-and-swap, and removes
//!   it on [`deregister`](EtcdRegistration::deregister).
//! - [`EtcdConfig`] says where etcd is and how to log in; both take one.
//!
//! The etcd client is [`etcd-client`](https://docs.rs/etcd-client),
//! re-exported as `tower_lb::discover::etcd_client` for its TLS types.
//!
//! ```no_run
//! use tower::{service_fn, ServiceBuilder};
//! use tower_lb::balance::{BalanceLayer, WeightedRoundRobin};
//! use tower_lb::discover::{EtcdConfig, EtcdRegistrar, EtcdSource};
//! use tower_lb::pool::DiscoverLayer;
//! use tower_lb::Endpoint;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let etcd = EtcdConfig::new(["127.0.0.1:2379"]);
//!
//! // In each backend: register, and deregister on shutdown.
//! let me = Endpoint::new("127.0.0.1:8080".parse()?).with_weight(3);
//! let registration = EtcdRegistrar::new(etcd.clone(), "/services/api/")
//!     .register("instance-1", &me)
//!     .await?;
//!
//! // In each client: discover and balance.
//! let source = EtcdSource::new(etcd, "/services/api/");
//! let status = source.status();
//! let connector = service_fn(|ep: Endpoint| async move {
//!     Ok::<_, std::convert::Infallible>(service_fn(move |req: String| {
//!         let ep = ep.clone();
//!         async move { Ok::<_, std::convert::Infallible>(format!("{ep} got {req}")) }
//!     }))
//! });
//! let client = ServiceBuilder::new()
//!     .layer(BalanceLayer::new(WeightedRoundRobin))
//!     .layer(DiscoverLayer::new(source))
//!     .service(connector);
//! # let _ = (client, status);
//!
//! registration.deregister().await?;
//! # Ok(()) }
//! ```

mod registrar;
mod source;
mod worker;

use std::fmt;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

pub use registrar::{EtcdRegistrar, EtcdRegistration};
pub use source::{EtcdSource, EtcdStatus};

/// Where etcd is and how to talk to it: endpoints, credentials, TLS and
/// timeouts, passed through to `etcd-client`'s `ConnectOptions`.
///
/// The password is kept out of `Debug` output and out of every log line.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::discover::EtcdConfig;
///
/// let config = EtcdConfig::new(["10.0.0.1:2379", "10.0.0.2:2379"])
///     .user("discovery", "s3cret")
///     .request_timeout(Duration::from_secs(2));
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct EtcdConfig {
    endpoints: Vec<String>,
    user: Option<(String, String)>,
    #[cfg(feature = "etcd-tls")]
    tls: Option<etcd_client::TlsOptions>,
    connect_timeout: Duration,
    request_timeout: Duration,
    keep_alive: Option<(Duration, Duration)>,
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("EtcdConfig");
        d.field("endpoints", &self.endpoints).field(
            "user",
            &self
                .user
                .as_ref()
                .map(|(name, _)| format!("{name} (password redacted)")),
        );
        #[cfg(feature = "etcd-tls")]
        d.field("tls", &self.tls.is_some());
        d.field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("keep_alive", &self.keep_alive)
            .finish()
    }
}

impl EtcdConfig {
    /// etcd at these endpoints (`host:port`, or URLs with `http://` or,
    /// with the `etcd-tls` feature, `https://`), with no credentials, a
    /// 2 s connect timeout, a 5 s request timeout and HTTP/2 keep-alive
    /// pings every 10 s (5 s to answer), so a silent network failure is
    /// noticed.
    pub fn new<I>(endpoints: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            user: None,
            #[cfg(feature = "etcd-tls")]
            tls: None,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            keep_alive: Some((Duration::from_secs(10), Duration::from_secs(5))),
        }
    }

    /// Logs in as `name` with `password` (etcd's authentication).
    #[must_use]
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((name.into(), password.into()));
        self
    }

    /// Connects over TLS with these settings (server CA, client identity);
    /// the endpoints then need `https://` or no scheme.
    #[cfg(feature = "etcd-tls")]
    #[must_use]
    pub fn tls(mut self, tls: etcd_client::TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// How long connecting (and logging in) may take (default 2 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one request, or opening a watch, may take (default 5 s).
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// HTTP/2 keep-alive pings every `interval`, the connection counting
    /// as broken when one is not answered within `timeout`. `None` turns
    /// them off.
    #[must_use]
    pub fn keep_alive(mut self, ping: Option<(Duration, Duration)>) -> Self {
        self.keep_alive = ping;
        self
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn options(&self) -> ConnectOptions {
        let mut o = ConnectOptions::new().with_connect_timeout(self.connect_timeout);
        if let Some((interval, timeout)) = self.keep_alive {
            o = o.with_keep_alive(interval, timeout);
        }
        if let Some((name, password)) = &self.user {
            o = o
                .with_user(name.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        #[cfg(feature = "etcd-tls")]
        if let Some(tls) = &self.tls {
            o = o.with_tls(tls.clone());
        }
        o
    }

    /// Connects (and logs in), within the connect timeout.
    pub async fn connect(&self) -> Result<Client, EtcdError> {
        let endpoints = self.endpoints.join(",");
        let connect = Client::connect(&self.endpoints, Some(self.options()));
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(source)) => Err(EtcdError::Connect { endpoints, source }),
            Err(_) => Err(EtcdError::Timeout {
                op: "connect",
                timeout: self.connect_timeout,
            }),
        }
    }

    /// Runs one request within the request timeout.
    pub(crate) async fn request<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, EtcdError> {
        match tokio::time::timeout(self.request_timeout, call).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(source)) => Err(EtcdError::Request { op, source }),
            Err(_) => Err(EtcdError::Timeout {
                op,
                timeout: self.request_timeout,
            }),
        }
    }
}

/// Why an etcd operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    /// The client could not connect or log in.
    #[error("cannot connect to etcd at {endpoints}")]
    Connect {
        /// The endpoints tried.
        endpoints: String,
        /// What the client said.
        #[source]
        source: etcd_client::Error,
    },
    /// A request failed.
    #[error("etcd {op} failed")]
    Request {
        /// Which request.
        op: &'static str,
        /// What the client said.
        #[source]
        source: etcd_client::Error,
    },
    /// A request got no answer in time.
    #[error("etcd {op} got no answer within {timeout:?}")]
    Timeout {
        /// Which request.
        op: &'static str,
        /// The limit.
        timeout: Duration,
    },
    /// The watch stream ended or etcd cancelled it.
    #[error("etcd watch on `{prefix}` broke: {reason}")]
    WatchBroken {
        /// The watched prefix.
        prefix: String,
        /// Why.
        reason: String,
    },
    /// Another writer changed the key since this registration last wrote
    /// it; nothing was written.
    #[error(
        "key `{key}` was changed by another writer (expected mod revision {expected}, found {})",
        found.map_or_else(|| "no key".to_owned(), |r| r.to_string())
    )]
    Conflict {
        /// The key.
        key: String,
        /// The mod revision this registration last wrote.
        expected: i64,
        /// The key's mod revision now, `None` when it is gone.
        found: Option<i64>,
    },
    /// The key already exists: another instance is registered under it.
    #[error("key `{key}` is already registered (mod revision {found})")]
    AlreadyRegistered {
        /// The key.
        key: String,
        /// Its mod revision.
        found: i64,
    },
    /// The registration's lease expired or was revoked and its record is
    /// gone; register again.
    #[error("the lease of `{key}` is gone")]
    LeaseLost {
        /// The key.
        key: String,
    },
    /// A key, prefix or instance id is empty.
    #[error("{what} is empty")]
    Empty {
        /// Which.
        what: &'static str,
    },
}
