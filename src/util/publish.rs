//! The cell a stage publishes its current set through: readers take one
//! atomic load, subscribers are called in publication order, and waiters
//! wake on every change.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

type Subscriber<T> = Box<dyn FnMut(&Arc<T>) -> bool + Send>;

pub(crate) struct Published<T> {
    current: ArcSwap<T>,
    /// Held while publishing, so subscribers see values in order.
    subscribers: Mutex<Vec<Subscriber<T>>>,
    notify: Arc<Notify>,
}

/// Locks `m`, ignoring poison: a panicking subscriber must not wedge
/// publication for everyone else.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T> Published<T> {
    pub(crate) fn new(initial: T) -> Self {
        Published {
            current: ArcSwap::from_pointee(initial),
            subscribers: Mutex::new(Vec::new()),
            notify: Arc::new(Notify::new()),
        }
    }

    /// The current value. One atomic load; never blocks.
    #[inline]
    pub(crate) fn load(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// Woken (all waiters) on every publication, and by [`wake`](Self::wake).
    pub(crate) fn notify(&self) -> &Arc<Notify> {
        &self.notify
    }

    /// Wakes everyone waiting for a change without publishing (their
    /// condition may be something beside the value).
    pub(crate) fn wake(&self) {
        self.notify.notify_waiters();
    }

    /// Waits until `ready` answers, asking it with the current value now
    /// and again after every publication and [`wake`](Self::wake).
    pub(crate) async fn wait_for<R>(&self, mut ready: impl FnMut(&Arc<T>) -> Option<R>) -> R {
        loop {
            // Made before asking, so a publication in between still wakes it.
            let notified = self.notify.clone().notified_owned();
            if let Some(answer) = ready(&self.current.load_full()) {
                return answer;
            }
            notified.await;
        }
    }

    /// Calls `f` with the current value now and with every value published
    /// later, until `f` returns `false`.
    pub(crate) fn subscribe(&self, mut f: impl FnMut(&Arc<T>) -> bool + Send + 'static) {
        let mut subs = lock(&self.subscribers);
        if f(&self.current.load_full()) {
            subs.push(Box::new(f));
        }
    }

    /// Publishes `value`: subscribers first (so a balancer's picker is
    /// ready), then wakes anyone waiting for a change.
    pub(crate) fn publish(&self, value: T) {
        let value = Arc::new(value);
        {
            let mut subs = lock(&self.subscribers);
            self.current.store(value.clone());
            subs.retain_mut(|f| f(&value));
        }
        self.notify.notify_waiters();
    }
}
