use std::task::{Context, Poll};

use tokio::sync::mpsc;

use super::{Source, Update};
use crate::error::DiscoveryError;

/// A source fed from your own code: send [`Update`]s (or errors) through the
/// [`UpdateSender`]; the source ends when every sender is dropped.
///
/// This is also the controllable source for testing a stack: push a
/// snapshot, a stale revision, a duplicate, an error, then close it.
///
/// ```
/// use tower_lb::discover::{channel, Source, Update};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let (tx, mut source) = channel();
/// tx.send(Update::snapshot(1, vec![])).unwrap();
/// drop(tx);
/// assert!(source.next_update().await.unwrap().is_ok());
/// assert!(source.next_update().await.is_none());
/// # }
/// ```
pub fn channel() -> (UpdateSender, ChannelSource) {
    let (tx, rx) = mpsc::unbounded_channel();
    (UpdateSender { tx }, ChannelSource { rx })
}

/// The sending half of [`channel`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct UpdateSender {
    tx: mpsc::UnboundedSender<Result<Update, DiscoveryError>>,
}

impl UpdateSender {
    /// Sends an update. Fails (giving it back) when the source was dropped.
    pub fn send(&self, update: Update) -> Result<(), Update> {
        match self.tx.send(Ok(update)) {
            Err(mpsc::error::SendError(Ok(update))) => Err(update),
            _ => Ok(()),
        }
    }

    /// Sends a failure, as a registry that lost its connection would.
    pub fn send_error(&self, error: DiscoveryError) -> bool {
        self.tx.send(Err(error)).is_ok()
    }

    /// Whether the source side is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The receiving half of [`channel`]; a [`Source`].
#[derive(Debug)]
pub struct ChannelSource {
    rx: mpsc::UnboundedReceiver<Result<Update, DiscoveryError>>,
}

impl Source for ChannelSource {
    fn poll_update(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Update, DiscoveryError>>> {
        self.rx.poll_recv(cx)
    }
}
