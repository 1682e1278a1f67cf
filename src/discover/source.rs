use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

use crate::endpoint::Endpoint;
use crate::error::DiscoveryError;

/// A stream of endpoint-set updates for one service.
///
/// `poll_update` follows the `Stream` contract: `Ready(Some(Ok(_)))` is an
/// update, `Ready(Some(Err(_)))` a failure the source may recover from (the
/// pool keeps its last good set and keeps polling), `Ready(None)` the end of
/// the source (the pool keeps its last set for good), and `Pending` registers
/// the waker.
pub trait Source: Send + 'static {
    /// Polls for the next update.
    fn poll_update(&mut self, cx: &mut Context<'_>)
    -> Poll<Option<Result<Update, DiscoveryError>>>;

    /// Waits for the next update.
    fn next_update(&mut self) -> impl Future<Output = Option<Result<Update, DiscoveryError>>> + Send
    where
        Self: Sized,
    {
        poll_fn(move |cx| self.poll_update(cx))
    }

    /// The name of the service this source finds, if it knows one: the
    /// default `service` of status reports and metric labels (see
    /// [`PoolConfig::service`](crate::pool::PoolConfig::service)). A
    /// [`Registry`](super::Registry) watch gives its service, a DNS source
    /// its name, an etcd source the last segment of its prefix and a file
    /// source the file's stem. `None` by default.
    fn name(&self) -> Option<&str> {
        None
    }

    /// A live reading of the newest revision the source knows of, which
    /// may be ahead of the updates the pool has applied (while its driver
    /// connects to new endpoints, or while updates wait in a channel): the
    /// pool reports the difference as the revision lag
    /// ([`DiscoveryStatus::revision_lag`](crate::pool::DiscoveryStatus::revision_lag)).
    /// A [`Registry`](super::Registry) watch reads its service's revision,
    /// an etcd source the etcd revision its watch has reached. `None` by
    /// default: the source delivers each revision as it learns it.
    fn revision_probe(&self) -> Option<RevisionProbe> {
        None
    }
}

/// Reads the newest revision a source knows of; see
/// [`Source::revision_probe`]. Cheap to clone; reading may take a short
/// lock (a registry's).
#[derive(Clone)]
pub struct RevisionProbe {
    read: Arc<dyn Fn() -> Option<u64> + Send + Sync>,
}

impl RevisionProbe {
    /// A probe that calls `read`; `None` while the source knows of no
    /// revision yet.
    pub fn new(read: impl Fn() -> Option<u64> + Send + Sync + 'static) -> Self {
        RevisionProbe {
            read: Arc::new(read),
        }
    }

    /// The newest revision the source knows of now.
    pub fn read(&self) -> Option<u64> {
        (self.read)()
    }
}

impl fmt::Debug for RevisionProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevisionProbe")
            .field("now", &self.read())
            .finish()
    }
}

impl<S: Source + ?Sized> Source for Box<S> {
    fn poll_update(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Update, DiscoveryError>>> {
        (**self).poll_update(cx)
    }

    fn name(&self) -> Option<&str> {
        (**self).name()
    }

    fn revision_probe(&self) -> Option<RevisionProbe> {
        (**self).revision_probe()
    }
}

/// Points a source's reusable timer at `at`, allocating it the first time
/// only.
pub(crate) fn arm(timer: &mut Option<Pin<Box<Sleep>>>, at: Instant) {
    match timer {
        Some(t) => t.as_mut().reset(at),
        None => *timer = Some(Box::pin(tokio::time::sleep_until(at))),
    }
}

/// One change to a service's endpoint set, stamped with a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    revision: u64,
    change: Change,
}

/// What an [`Update`] changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The whole set: anything not listed is removed.
    Snapshot(Vec<Endpoint>),
    /// Endpoints to add or replace (by key) and keys to remove.
    Delta {
        /// Added, or replacing the endpoint with the same key.
        upserts: Vec<Endpoint>,
        /// Keys to remove; unknown keys are ignored.
        removals: Vec<String>,
    },
}

impl Update {
    /// A full snapshot at `revision`.
    pub fn snapshot(revision: u64, endpoints: Vec<Endpoint>) -> Self {
        Update {
            revision,
            change: Change::Snapshot(endpoints),
        }
    }

    /// A delta at `revision`.
    pub fn delta(revision: u64, upserts: Vec<Endpoint>, removals: Vec<String>) -> Self {
        Update {
            revision,
            change: Change::Delta { upserts, removals },
        }
    }

    /// The revision; updates older than the applied one are ignored.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The change.
    pub fn change(&self) -> &Change {
        &self.change
    }

    /// Takes the change out.
    pub fn into_change(self) -> Change {
        self.change
    }

    /// The endpoints this update lists (all of a snapshot, the upserts of a
    /// delta).
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        match &self.change {
            Change::Snapshot(e) => e.iter(),
            Change::Delta { upserts, .. } => upserts.iter(),
        }
    }
}
