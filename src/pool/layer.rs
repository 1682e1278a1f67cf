use tokio::runtime::Handle;
use tower_layer::Layer;
use tower_service::Service;

use super::Pool;
use crate::discover::Source;
use crate::endpoint::Endpoint;
use crate::error::BoxError;

/// Settings for how a pool applies discovery updates.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Keep the last non-empty set when the source sends an empty snapshot
    /// (or a delta that removes everything). Off by default: an empty
    /// registry means no instances, and callers get
    /// [`Error::NoEndpoints`](crate::Error::NoEndpoints) rather than traffic
    /// to instances that are gone. Turn it on for sources where "empty"
    /// more likely means "broken" (a DNS name that briefly fails to
    /// resolve).
    pub keep_last_on_empty: bool,
    /// The service's name in status reports and metric labels. `None`
    /// (the default): the source's [`name`](crate::discover::Source::name),
    /// or `"default"` when it has none.
    pub service: Option<String>,
}

impl PoolConfig {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// See [`keep_last_on_empty`](PoolConfig#structfield.keep_last_on_empty).
    #[must_use]
    pub fn keep_last_on_empty(mut self, keep: bool) -> Self {
        self.keep_last_on_empty = keep;
        self
    }

    /// See [`service`](PoolConfig#structfield.service).
    #[must_use]
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.service = Some(name.into());
        self
    }
}

/// Turns a connector (`Service<Endpoint>` building one service per
/// endpoint) into a [`Pool`] fed by a discovery [`Source`].
///
/// `layer` spawns the pool's driver on the tokio runtime it is called in
/// (or on the handle given with [`handle`](DiscoverLayer::handle)); the
/// driver is aborted when the last clone of the pool is dropped, so no
/// task outlives the client. Each `layer` call clones the source and
/// builds an independent pool. To run the driver yourself, use
/// [`Pool::new`].
///
/// # Panics
///
/// `layer` panics when called outside a tokio runtime and no handle was
/// given, as `tokio::spawn` does.
#[derive(Debug, Clone)]
pub struct DiscoverLayer<Src> {
    source: Src,
    config: PoolConfig,
    handle: Option<Handle>,
}

impl<Src> DiscoverLayer<Src> {
    /// A layer that discovers endpoints from `source`.
    pub fn new(source: Src) -> Self {
        DiscoverLayer {
            source,
            config: PoolConfig::default(),
            handle: None,
        }
    }

    /// Spawns the driver on this runtime instead of the current one.
    #[must_use]
    pub fn handle(mut self, handle: Handle) -> Self {
        self.handle = Some(handle);
        self
    }

    /// See [`PoolConfig::keep_last_on_empty`].
    #[must_use]
    pub fn keep_last_on_empty(mut self, keep: bool) -> Self {
        self.config.keep_last_on_empty = keep;
        self
    }

    /// See [`PoolConfig::service`].
    #[must_use]
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.config.service = Some(name.into());
        self
    }

    /// All the pool's settings at once.
    #[must_use]
    pub fn config(mut self, config: PoolConfig) -> Self {
        self.config = config;
        self
    }
}

impl<Src, C, S> Layer<C> for DiscoverLayer<Src>
where
    Src: Source + Clone,
    C: Service<Endpoint, Response = S> + Send + 'static,
    C::Error: Into<BoxError> + Send,
    C::Future: Send,
    S: Clone + Send + Sync + 'static,
{
    type Service = Pool<S>;

    fn layer(&self, connector: C) -> Pool<S> {
        let (pool, driver) = Pool::with_config(self.source.clone(), connector, self.config.clone());
        let handle = match &self.handle {
            Some(h) => h.clone(),
            None => Handle::current(),
        };
        let task = handle.spawn(driver.run());
        pool.with_driver(task)
    }
}
