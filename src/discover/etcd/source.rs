use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::EtcdConfig;
use super::worker::Worker;
use crate::discover::{Source, Update};
use crate::error::{DiscoveryError, InvalidSetting, check, valid};

/// Updates and errors in flight from the watch task to the pool.
pub(super) const CHANNEL: usize = 16;

/// Endpoints registered in etcd under a key prefix: listed, then watched
/// (feature `etcd`).
///
/// Each key under the prefix is one endpoint, its value one JSON record,
/// the same shape a file source's records have:
///
/// ```text
/// /services/api/instance-1 → {"address": "10.0.0.1:8080", "weight": 3, "priority": 0,
///                             "zone": "eu-west-1a", "tags": {"version": "7"}}
/// ```
///
/// `address` (`ip:port`) is required unless `key` (the endpoint's key) is
/// given; `key` defaults to the address; `weight` (default 1; a float is
/// rounded), `priority` (0–255, default 0: the failover tier), `zone` and
/// `tags` (strings) are optional; any other field makes the record
/// malformed. [`EtcdRegistrar`](crate::discover::EtcdRegistrar) writes
/// this shape.
///
/// # Updates and revisions
///
/// The first update is a snapshot of the prefix as listed at etcd
/// revision *R*; the watch then starts at *R* + 1 and each batch of
/// events becomes one delta. An update's revision is the etcd revision it
/// brings the set to, so `pool.applied(rev)` waits for a write whose
/// response said `rev`. (Should etcd's revision ever go back — a cluster
/// restored from a backup — updates keep the last revision sent, so the
/// pool does not ignore them as stale.)
///
/// Two keys whose records have the same endpoint key make one endpoint,
/// the record under the greater etcd key.
///
/// # Failures
///
/// - A value that is not a valid record (not JSON, not an object, an
///   unknown field, a bad field) is skipped and reported as a
///   [`DiscoveryError::InvalidRecord`] naming the etcd key, with a `warn`
///   event; the others apply. A key that held a good record and is
///   overwritten with a bad one keeps its last good endpoint until it is
///   deleted or fixed (a re-listing keeps it too). Each bad value is
///   reported once, however often the prefix is listed again.
/// - When every key under the prefix holds a bad value (after a listing or
///   a watch event), the set counts as broken, not empty: nothing is sent,
///   the pool keeps its last good set, and
///   [`DiscoveryError::NoValidRecords`] is reported once. The first good
///   value after that sends the whole current set. A prefix with no keys
///   at all is an empty set.
/// - When the connection breaks or etcd cannot be reached, the failure is
///   reported once per streak (the pool keeps its last good set), and
///   the source reconnects with exponential backoff (with jitter, from
///   [`backoff`](EtcdSource::backoff)'s minimum, default 100 ms, to its
///   maximum, default 5 s), then watches again from the last applied
///   revision + 1, so no change in between is lost.
/// - When etcd has compacted that revision away, the prefix is listed
///   again and a full snapshot sent.
/// - A watch that has heard nothing from etcd — not an event, not an
///   answer to the progress requests sent every
///   [`progress_interval`](EtcdSource::progress_interval) — for three
///   intervals counts as broken.
///
/// How stale the set is can be read at any time from
/// [`status`](EtcdSource::status): whether the watch is connected, the
/// etcd revision applied and when etcd last answered.
///
/// # Tasks
///
/// The etcd client runs in a task spawned on the first poll, on the
/// runtime polling the source (the pool's). It is aborted when the source
/// is dropped, so it never outlives the pool. A clone is another watch of
/// the same prefix, starting afresh, reporting to the same
/// [`EtcdStatus`].
///
/// ```no_run
/// use std::time::Duration;
/// use tower_lb::discover::{EtcdConfig, EtcdSource};
///
/// let source = EtcdSource::new(EtcdConfig::new(["127.0.0.1:2379"]), "/services/api/")
///     .backoff(Duration::from_millis(200), Duration::from_secs(10));
/// let status = source.status();
/// // ... after `DiscoverLayer::new(source)`:
/// if !status.is_connected() {
///     eprintln!("etcd unreachable; set last refreshed {:?} ago", status.since_contact());
/// }
/// ```
pub struct EtcdSource {
    pub(super) settings: Settings,
    status: EtcdStatus,
    rx: Option<mpsc::Receiver<Result<Update, DiscoveryError>>>,
    task: Option<JoinHandle<()>>,
}

/// What a watch task needs to know.
#[derive(Clone, Debug)]
pub(super) struct Settings {
    pub(super) config: EtcdConfig,
    pub(super) prefix: String,
    pub(super) min_backoff: Duration,
    pub(super) max_backoff: Duration,
    pub(super) progress: Duration,
}

impl fmt::Debug for EtcdSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdSource")
            .field("config", &self.settings.config)
            .field("prefix", &self.settings.prefix)
            .field("min_backoff", &self.settings.min_backoff)
            .field("max_backoff", &self.settings.max_backoff)
            .field("progress_interval", &self.settings.progress)
            .field("status", &self.status)
            .field("running", &self.task.is_some())
            .finish()
    }
}

impl Clone for EtcdSource {
    /// Another watch of the same prefix, starting afresh, reporting to the
    /// same status.
    fn clone(&self) -> Self {
        EtcdSource {
            settings: self.settings.clone(),
            status: self.status.clone(),
            rx: None,
            task: None,
        }
    }
}

impl Drop for EtcdSource {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl EtcdSource {
    /// Watches the keys under `prefix` (such as `/services/api/`; the
    /// prefix is used as it is, so end it with a separator) in the etcd
    /// that `config` describes. Nothing connects until the first poll.
    pub fn new(config: EtcdConfig, prefix: impl Into<String>) -> Self {
        EtcdSource {
            settings: Settings {
                config,
                prefix: prefix.into(),
                min_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                progress: Duration::from_secs(5),
            },
            status: EtcdStatus::default(),
            rx: None,
            task: None,
        }
    }

    /// The wait before reconnecting: `min` (at least 1 ms) after the
    /// first failure, doubling up to `max` (at least `min`) while failures
    /// go on (each wait between half and all of that, at random).
    ///
    /// # Panics
    ///
    /// When `min` is shorter than 1 ms or `max` is shorter than `min`;
    /// [`try_backoff`](EtcdSource::try_backoff) returns the error instead.
    #[must_use]
    #[track_caller]
    pub fn backoff(self, min: Duration, max: Duration) -> Self {
        valid(self.try_backoff(min, max))
    }

    /// [`backoff`](EtcdSource::backoff), refusing a `min` under 1 ms and a
    /// `max` under `min`.
    pub fn try_backoff(mut self, min: Duration, max: Duration) -> Result<Self, InvalidSetting> {
        check(
            min >= Duration::from_millis(1),
            "EtcdSource::backoff(min)",
            min,
            "must be at least 1ms",
        )?;
        check(
            max >= min,
            "EtcdSource::backoff(max)",
            max,
            "must not be shorter than min",
        )?;
        self.settings.min_backoff = min;
        self.settings.max_backoff = max;
        Ok(self)
    }

    /// How often the watch asks etcd for a progress answer (default 5 s,
    /// at least 10 ms), which refreshes [`EtcdStatus::last_contact`] on a
    /// quiet prefix; three intervals without a word from etcd break the
    /// watch.
    ///
    /// # Panics
    ///
    /// When `interval` is shorter than 10 ms;
    /// [`try_progress_interval`](EtcdSource::try_progress_interval)
    /// returns the error instead.
    #[must_use]
    #[track_caller]
    pub fn progress_interval(self, interval: Duration) -> Self {
        valid(self.try_progress_interval(interval))
    }

    /// [`progress_interval`](EtcdSource::progress_interval), refusing less
    /// than 10 ms.
    pub fn try_progress_interval(mut self, interval: Duration) -> Result<Self, InvalidSetting> {
        check(
            interval >= Duration::from_millis(10),
            "EtcdSource::progress_interval",
            interval,
            "must be at least 10ms",
        )?;
        self.settings.progress = interval;
        Ok(self)
    }

    /// The watched prefix.
    pub fn prefix(&self) -> &str {
        &self.settings.prefix
    }

    /// A live view of how the watch is doing; cheap to clone and keep
    /// after the source is given to a pool.
    pub fn status(&self) -> EtcdStatus {
        self.status.clone()
    }

    fn start(&mut self) -> &mut mpsc::Receiver<Result<Update, DiscoveryError>> {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let worker = Worker::new(self.settings.clone(), self.status.clone(), tx);
        self.task = Some(tokio::spawn(worker.run()));
        self.rx.insert(rx)
    }
}

impl Source for EtcdSource {
    /// The last segment of the prefix (`api` for `/services/api/`).
    fn name(&self) -> Option<&str> {
        self.settings.prefix.split('/').rfind(|s| !s.is_empty())
    }

    /// The etcd revision of the newest update the watch has sent
    /// ([`EtcdStatus::revision`]), applied or still waiting for the pool.
    fn revision_probe(&self) -> Option<crate::discover::RevisionProbe> {
        let status = self.status.clone();
        Some(crate::discover::RevisionProbe::new(move || {
            status.revision()
        }))
    }

    fn poll_update(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Update, DiscoveryError>>> {
        let rx = match &mut self.rx {
            Some(rx) => rx,
            None => self.start(),
        };
        rx.poll_recv(cx)
    }
}

/// How an [`EtcdSource`]'s watch is doing: connected or not, the etcd
/// revision its set reflects, and when etcd last answered. A cheap handle
/// onto live values.
#[derive(Clone, Default)]
pub struct EtcdStatus {
    inner: Arc<StatusInner>,
}

#[derive(Default)]
struct StatusInner {
    connected: AtomicBool,
    revision: AtomicI64,
    lists: AtomicU64,
    reconnects: AtomicU64,
    last_contact: Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
}

impl fmt::Debug for EtcdStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStatus")
            .field("connected", &self.is_connected())
            .field("revision", &self.revision())
            .field("since_contact", &self.since_contact())
            .field("lists", &self.lists())
            .field("reconnects", &self.reconnects())
            .field("last_error", &self.last_error())
            .finish()
    }
}

impl EtcdStatus {
    /// Whether the watch is established right now. While it is not, the
    /// pool serves the last good set.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Acquire)
    }

    /// The etcd revision the set reflects (the listing's, then the last
    /// applied event's), `None` before the first listing.
    pub fn revision(&self) -> Option<u64> {
        u64::try_from(self.inner.revision.load(Ordering::Acquire))
            .ok()
            .filter(|r| *r > 0)
    }

    /// When etcd last answered: a listing, a watch event or a progress
    /// answer.
    pub fn last_contact(&self) -> Option<Instant> {
        *self
            .inner
            .last_contact
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// How long ago etcd last answered: how stale the set may be.
    pub fn since_contact(&self) -> Option<Duration> {
        self.last_contact().map(|t| t.elapsed())
    }

    /// Full listings of the prefix so far: the first, and one after each
    /// compaction that the watch could not resume across.
    pub fn lists(&self) -> u64 {
        self.inner.lists.load(Ordering::Acquire)
    }

    /// Times an established watch broke (each followed by reconnecting,
    /// with backoff).
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Acquire)
    }

    /// The last failure, rendered.
    pub fn last_error(&self) -> Option<String> {
        self.inner
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn contact(&self) {
        *self
            .inner
            .last_contact
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    pub(super) fn set_error(&self, error: String) {
        *self
            .inner
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error);
    }

    /// Marks the watch established.
    pub(super) fn connected(&self) {
        self.inner.connected.store(true, Ordering::Release);
    }

    /// Marks the watch broken; returns whether it was established.
    pub(super) fn disconnected(&self) -> bool {
        self.inner.connected.swap(false, Ordering::AcqRel)
    }

    /// Records the etcd revision the set reflects.
    pub(super) fn set_revision(&self, revision: i64) {
        self.inner.revision.store(revision, Ordering::Release);
    }

    /// Counts one full listing.
    pub(super) fn count_list(&self) {
        self.inner.lists.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts one broken, established watch.
    pub(super) fn count_reconnect(&self) {
        self.inner.reconnects.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> EtcdSource {
        EtcdSource::new(EtcdConfig::new(["127.0.0.1:2379"]), "/services/api/")
    }

    #[test]
    fn backoff_and_progress_refuse_out_of_range_values() {
        let ms = Duration::from_millis;
        let s = source().try_backoff(ms(1), ms(1)).unwrap();
        assert_eq!(
            (s.settings.min_backoff, s.settings.max_backoff),
            (ms(1), ms(1))
        );
        let s = source().try_progress_interval(ms(10)).unwrap();
        assert_eq!(s.settings.progress, ms(10));
        let refused = |r: Result<EtcdSource, InvalidSetting>| r.err().unwrap().to_string();
        assert_eq!(
            refused(source().try_backoff(Duration::ZERO, ms(100))),
            "invalid setting EtcdSource::backoff(min) = 0ns: must be at least 1ms"
        );
        assert_eq!(
            refused(source().try_backoff(ms(100), ms(50))),
            "invalid setting EtcdSource::backoff(max) = 50ms: must not be shorter than min"
        );
        assert_eq!(
            refused(source().try_progress_interval(ms(9))),
            "invalid setting EtcdSource::progress_interval = 9ms: must be at least 10ms"
        );
        assert_eq!(
            refused(source().try_progress_interval(Duration::ZERO)),
            "invalid setting EtcdSource::progress_interval = 0ns: must be at least 10ms"
        );
    }

    #[test]
    #[should_panic(expected = "invalid setting EtcdSource::backoff(max) = 1ms")]
    fn a_backoff_max_under_min_panics() {
        let _ = source().backoff(Duration::from_secs(1), Duration::from_millis(1));
    }
}
