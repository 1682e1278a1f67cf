use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use super::{ChannelSource, Update, UpdateSender, channel};
use crate::endpoint::Endpoint;
use crate::error::DiscoveryError;

/// A controllable [`Source`](super::Source) for testing your own stacks
/// (feature `test-util`): each call sends one update with the next
/// revision.
///
/// ```
/// use tower_lb::discover::ManualSource;
/// use tower_lb::Endpoint;
///
/// let (handle, source) = ManualSource::new();
/// let a = Endpoint::new("127.0.0.1:1".parse().unwrap());
/// assert_eq!(handle.set([a.clone()]), 1);
/// assert_eq!(handle.remove(["127.0.0.1:1"]), 2);
/// handle.fail("registry unreachable");
/// handle.close();
/// # drop(source);
/// ```
#[derive(Debug, Clone)]
pub struct ManualSource {
    tx: Option<UpdateSender>,
    revision: Arc<AtomicU64>,
}

impl ManualSource {
    /// A handle and the source it feeds.
    pub fn new() -> (ManualSource, ChannelSource) {
        let (tx, rx) = channel();
        (
            ManualSource {
                tx: Some(tx),
                revision: Arc::default(),
            },
            rx,
        )
    }

    fn send(&self, make: impl FnOnce(u64) -> Update) -> u64 {
        let revision = self.revision.fetch_add(1, SeqCst) + 1;
        if let Some(tx) = &self.tx {
            // A dropped source just means nobody listens any more.
            let _ = tx.send(make(revision));
        }
        revision
    }

    /// Replaces the whole set; returns the update's revision.
    pub fn set(&self, endpoints: impl IntoIterator<Item = Endpoint>) -> u64 {
        let list = endpoints.into_iter().collect();
        self.send(|r| Update::snapshot(r, list))
    }

    /// Adds (or replaces by key) endpoints; returns the revision.
    pub fn add(&self, endpoints: impl IntoIterator<Item = Endpoint>) -> u64 {
        let list = endpoints.into_iter().collect();
        self.send(|r| Update::delta(r, list, Vec::new()))
    }

    /// Removes endpoints by key; returns the revision.
    pub fn remove<K: Into<String>>(&self, keys: impl IntoIterator<Item = K>) -> u64 {
        let keys = keys.into_iter().map(Into::into).collect();
        self.send(|r| Update::delta(r, Vec::new(), keys))
    }

    /// Sends an update with an explicit revision (to test stale updates).
    pub fn send_update(&self, update: Update) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(update);
        }
    }

    /// Reports a source failure.
    pub fn fail(&self, message: &str) {
        if let Some(tx) = &self.tx {
            tx.send_error(DiscoveryError::Source(message.into()));
        }
    }

    /// Ends the source (once every clone of this handle is closed or
    /// dropped).
    pub fn close(mut self) {
        self.tx = None;
    }

    /// Whether the source side has been dropped (for example because the
    /// pool that owned it was dropped).
    pub fn is_closed(&self) -> bool {
        self.tx.as_ref().is_none_or(UpdateSender::is_closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::{Change, Source};

    #[tokio::test]
    async fn numbers_revisions_and_closes() {
        let (h, mut src) = ManualSource::new();
        let a = Endpoint::new("127.0.0.1:1".parse().unwrap());
        h.set([a.clone()]);
        h.add([a.clone().with_weight(3)]);
        h.remove(["127.0.0.1:1"]);
        h.fail("down");
        let u1 = src.next_update().await.unwrap().unwrap();
        assert_eq!(
            (u1.revision(), u1.change()),
            (1, &Change::Snapshot(vec![a]))
        );
        assert_eq!(src.next_update().await.unwrap().unwrap().revision(), 2);
        assert_eq!(src.next_update().await.unwrap().unwrap().revision(), 3);
        assert!(src.next_update().await.unwrap().is_err());
        let h2 = h.clone();
        h.close();
        assert!(!h2.is_closed());
        drop(src);
        assert!(h2.is_closed());
    }
}
