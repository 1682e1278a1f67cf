use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_core::Stream;
use tower::discover::Change as TowerChange;
use tower_service::Service;

use super::{Change, Source};
use crate::endpoint::Endpoint;
use crate::error::{BoxError, Error};
use crate::trace::event;

type Connecting<S> = Pin<Box<dyn Future<Output = Result<S, BoxError>> + Send>>;

/// Adapts any [`Source`] to `tower::discover::Discover`, so tower's own
/// balancers (and anything else built on `Discover`, such as tonic's
/// channel) can consume tower-lb's sources.
///
/// Services are built by a connector, as for a [`Pool`](crate::pool::Pool),
/// and keyed by [`Endpoint::key`]. An endpoint whose address changes is
/// removed and inserted again; a change of weight or priority alone is not
/// visible through `Discover`, which has no such notion. Stale revisions
/// are ignored; a source failure or a failed connect keeps the previous
/// set (it is logged, not yielded, since tower's balancer treats a
/// discovery error as fatal).
///
/// ```
/// use tower::balance::p2c::Balance;
/// use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
/// use tower::{service_fn, ServiceExt};
/// use tower_lb::discover::{StaticSource, TowerDiscover};
/// use tower_lb::Endpoint;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let source = StaticSource::new([Endpoint::new("127.0.0.1:1".parse().unwrap())]);
/// let connector = service_fn(|ep: Endpoint| async move {
///     Ok::<_, std::convert::Infallible>(service_fn(move |_: ()| {
///         let key = ep.key().to_owned();
///         async move { Ok::<_, tower::BoxError>(key) }
///     }))
/// });
/// let discover = PendingRequestsDiscover::new(TowerDiscover::new(source, connector), CompleteOnResponse::default());
/// let balance = Balance::new(discover);
/// assert_eq!(balance.oneshot(()).await.unwrap(), "127.0.0.1:1");
/// # }
/// ```
pub struct TowerDiscover<Src, C, S> {
    source: Option<Src>,
    connector: C,
    live: HashMap<String, Endpoint>,
    applied: Option<u64>,
    to_connect: VecDeque<Endpoint>,
    connecting: Option<(Endpoint, Connecting<S>)>,
    ready: VecDeque<TowerChange<String, S>>,
}

impl<Src, C, S> fmt::Debug for TowerDiscover<Src, C, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TowerDiscover")
            .field("live", &self.live.len())
            .field("applied", &self.applied)
            .field("ended", &self.source.is_none())
            .finish_non_exhaustive()
    }
}

impl<Src, C, S> TowerDiscover<Src, C, S>
where
    Src: Source,
    C: Service<Endpoint, Response = S>,
{
    /// Adapts `source`, building services with `connector`.
    pub fn new(source: Src, connector: C) -> Self {
        TowerDiscover {
            source: Some(source),
            connector,
            live: HashMap::new(),
            applied: None,
            to_connect: VecDeque::new(),
            connecting: None,
            ready: VecDeque::new(),
        }
    }

    /// Turns an update into removals (queued now) and inserts (queued for
    /// the connector).
    fn diff(&mut self, revision: u64, change: Change) {
        if self.applied.is_some_and(|a| revision < a) {
            event!(debug, revision, "ignoring a stale discovery update");
            return;
        }
        self.applied = Some(revision);
        let mut wanted: HashMap<String, Endpoint> = match change {
            Change::Snapshot(list) => list.into_iter().map(|e| (e.key().to_owned(), e)).collect(),
            Change::Delta { upserts, removals } => {
                let mut w = self.live.clone();
                for e in upserts {
                    w.insert(e.key().to_owned(), e);
                }
                for k in removals {
                    w.remove(&k);
                }
                w
            }
        };
        // Endpoints waiting to connect are re-decided from scratch.
        self.to_connect.clear();
        let gone: Vec<String> = self
            .live
            .iter()
            .filter(|(k, e)| wanted.get(*k).is_none_or(|w| w.address() != e.address()))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.live.remove(&k);
            self.ready.push_back(TowerChange::Remove(k));
        }
        wanted.retain(|k, _| !self.live.contains_key(k));
        let mut new: Vec<Endpoint> = wanted.into_values().collect();
        new.sort_by(|a, b| a.key().cmp(b.key()));
        self.to_connect.extend(new);
    }
}

impl<Src, C, S> Stream for TowerDiscover<Src, C, S>
where
    Src: Source + Unpin,
    C: Service<Endpoint, Response = S> + Unpin,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
    S: Unpin,
{
    type Item = Result<TowerChange<String, S>, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(change) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            if let Some((endpoint, fut)) = &mut this.connecting {
                let made = ready!(fut.as_mut().poll(cx));
                let endpoint = endpoint.clone();
                this.connecting = None;
                match made {
                    Ok(service) => {
                        let key = endpoint.key().to_owned();
                        this.live.insert(key.clone(), endpoint);
                        this.ready.push_back(TowerChange::Insert(key, service));
                    }
                    Err(e) => {
                        event!(warn, endpoint = %endpoint, error = %crate::error::render_chain(&*e), "connector failed; endpoint left out");
                    }
                }
                continue;
            }
            if !this.to_connect.is_empty() {
                if let Err(e) = ready!(this.connector.poll_ready(cx)) {
                    let e: BoxError = e.into();
                    event!(warn, error = %crate::error::render_chain(&*e), "connector failed");
                    this.to_connect.clear();
                    continue;
                }
                if let Some(endpoint) = this.to_connect.pop_front() {
                    let fut = this.connector.call(endpoint.clone());
                    this.connecting = Some((
                        endpoint,
                        Box::pin(async move { fut.await.map_err(Into::into) }),
                    ));
                }
                continue;
            }
            let Some(source) = &mut this.source else {
                return Poll::Ready(None);
            };
            match ready!(source.poll_update(cx)) {
                Some(Ok(update)) => {
                    let revision = update.revision();
                    this.diff(revision, update.into_change());
                }
                Some(Err(e)) => {
                    event!(warn, error = %crate::error::render_chain(&e), "discovery source failed; keeping the last set");
                }
                None => this.source = None,
            }
        }
    }
}
