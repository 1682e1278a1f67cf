use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions, WatchResponse, WatchStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{EtcdConfig, EtcdError};
use crate::discover::record;
use crate::discover::{Source, Update};
use crate::endpoint::Endpoint;
use crate::error::DiscoveryError;
use crate::trace::event;

/// Updates and errors in flight from the watch task to the pool.
const CHANNEL: usize = 16;

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
/// - A value that is not a valid record is skipped and reported as a
///   [`DiscoveryError`] naming the etcd key, with a `warn` event; the
///   others apply. A key that held a good record and is overwritten with
///   a bad one keeps its last good endpoint until it is deleted or fixed
///   (a re-listing keeps it too).
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
    settings: Settings,
    status: EtcdStatus,
    rx: Option<mpsc::Receiver<Result<Update, DiscoveryError>>>,
    task: Option<JoinHandle<()>>,
}

/// What a watch task needs to know.
#[derive(Clone, Debug)]
struct Settings {
    config: EtcdConfig,
    prefix: String,
    min_backoff: Duration,
    max_backoff: Duration,
    progress: Duration,
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

    /// The wait before reconnecting: `min` after the first failure,
    /// doubling up to `max` while failures go on (each wait between half
    /// and all of that, at random). At least 1 ms.
    #[must_use]
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.settings.min_backoff = min.max(Duration::from_millis(1));
        self.settings.max_backoff = max.max(self.settings.min_backoff);
        self
    }

    /// How often the watch asks etcd for a progress answer (default 5 s),
    /// which refreshes [`EtcdStatus::last_contact`] on a quiet prefix;
    /// three intervals without a word from etcd break the watch. At least
    /// 10 ms.
    #[must_use]
    pub fn progress_interval(mut self, interval: Duration) -> Self {
        self.settings.progress = interval.max(Duration::from_millis(10));
        self
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
        let worker = Worker {
            settings: self.settings.clone(),
            status: self.status.clone(),
            tx,
            members: BTreeMap::new(),
            applied: 0,
            sent: 0,
            failing: false,
        };
        self.task = Some(tokio::spawn(worker.run()));
        self.rx.insert(rx)
    }
}

impl Source for EtcdSource {
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

    fn contact(&self) {
        *self
            .inner
            .last_contact
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    fn set_error(&self, error: String) {
        *self
            .inner
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error);
    }
}

/// Why a watch session ended.
enum End {
    /// The source was dropped.
    Closed,
    /// The watched revision was compacted: list again, at once.
    Relist,
    /// Something failed: back off and resume.
    Failed(EtcdError),
}

impl From<EtcdError> for End {
    fn from(e: EtcdError) -> Self {
        End::Failed(e)
    }
}

/// The task behind an [`EtcdSource`].
struct Worker {
    settings: Settings,
    status: EtcdStatus,
    tx: mpsc::Sender<Result<Update, DiscoveryError>>,
    /// Every good record, by etcd key.
    members: BTreeMap<String, Endpoint>,
    /// The etcd revision applied; 0 means list first.
    applied: i64,
    /// The revision of the last update sent.
    sent: u64,
    /// Whether the current failure streak was reported.
    failing: bool,
}

impl Worker {
    async fn run(mut self) {
        let mut backoff = self.settings.min_backoff;
        let mut client = None;
        loop {
            match self.session(&mut client).await {
                End::Closed => return,
                End::Relist => {
                    self.applied = 0;
                    continue;
                }
                End::Failed(error) => {
                    // A fresh client next time: a channel whose only
                    // endpoint failed may never recover by itself.
                    client = None;
                    let was_connected = self.status.inner.connected.swap(false, Ordering::AcqRel);
                    if was_connected {
                        self.status.inner.reconnects.fetch_add(1, Ordering::AcqRel);
                        backoff = self.settings.min_backoff;
                    }
                    let text = crate::error::render_chain(&error);
                    self.status.set_error(text.clone());
                    if !self.failing {
                        self.failing = true;
                        event!(
                            warn,
                            prefix = %self.settings.prefix,
                            error = %text,
                            "etcd: watch failed; keeping the last good set and reconnecting"
                        );
                        let e = DiscoveryError::Source(Box::new(error));
                        if self.tx.send(Err(e)).await.is_err() {
                            return;
                        }
                    } else {
                        event!(debug, prefix = %self.settings.prefix, error = %text, "etcd: still failing");
                    }
                    let wait = jitter(backoff);
                    backoff = (backoff * 2).min(self.settings.max_backoff);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.tx.closed() => return,
                    }
                }
            }
        }
    }

    /// Connects if needed, lists if needed, and follows the watch until it
    /// breaks.
    async fn session(&mut self, client: &mut Option<Client>) -> End {
        let config = self.settings.config.clone();
        let mut c = match client {
            Some(c) => c.clone(),
            None => {
                let c = tokio::select! {
                    c = config.connect() => match c {
                        Ok(c) => c,
                        Err(e) => return e.into(),
                    },
                    () = self.tx.closed() => return End::Closed,
                };
                *client = Some(c.clone());
                c
            }
        };
        if self.applied == 0 {
            match self.list(&mut c).await {
                Ok(true) => {}
                Ok(false) => return End::Closed,
                Err(e) => return e.into(),
            }
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.applied + 1);
        let watch = c.watch(self.settings.prefix.as_str(), Some(options));
        let mut stream = match config.request("watch", watch).await {
            Ok(s) => s,
            Err(e) => return e.into(),
        };
        self.follow(&mut stream).await
    }

    /// Lists the prefix and sends the snapshot; `Ok(false)` when the
    /// source is gone.
    async fn list(&mut self, c: &mut Client) -> Result<bool, EtcdError> {
        let prefix = self.settings.prefix.clone();
        let get = c.get(prefix.as_str(), Some(GetOptions::new().with_prefix()));
        let response = self.settings.config.request("list", get).await?;
        self.status.contact();
        let revision = response.header().map_or(0, |h| h.revision());
        let mut members = BTreeMap::new();
        let mut bad = Vec::new();
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match record::decode(kv.value(), &key) {
                Ok(e) => {
                    members.insert(key, e);
                }
                Err(e) => {
                    // A relisted key keeps its last good record.
                    if let Some(old) = self.members.get(&key) {
                        members.insert(key, old.clone());
                    }
                    bad.push(e);
                }
            }
        }
        for e in bad {
            if !self.report_bad(e).await {
                return Ok(false);
            }
        }
        self.members = members;
        self.applied = revision.max(1);
        self.status.inner.lists.fetch_add(1, Ordering::AcqRel);
        let endpoints = self.endpoints();
        event!(
            debug,
            prefix = %prefix,
            revision,
            endpoints = endpoints.len(),
            "etcd: listed"
        );
        let update = Update::snapshot(self.next_revision(revision), endpoints);
        Ok(self.send(update).await)
    }

    /// Applies watch responses until the stream breaks.
    async fn follow(&mut self, stream: &mut WatchStream) -> End {
        let progress = self.settings.progress;
        let mut ticker = tokio::time::interval_at(Instant::now() + progress, progress);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = Instant::now();
        let prefix = self.settings.prefix.clone();
        let broken = |reason: String| {
            End::Failed(EtcdError::WatchBroken {
                prefix: prefix.clone(),
                reason,
            })
        };
        loop {
            tokio::select! {
                message = stream.message() => {
                    let response = match message {
                        Ok(Some(r)) => r,
                        Ok(None) => return broken("the stream ended".to_owned()),
                        Err(e) => return broken(e.to_string()),
                    };
                    heard = Instant::now();
                    self.status.contact();
                    if response.canceled() {
                        if response.compact_revision() > 0 {
                            event!(
                                info,
                                prefix = %self.settings.prefix,
                                from = self.applied + 1,
                                compacted = response.compact_revision(),
                                "etcd: watched revision was compacted; listing again"
                            );
                            return End::Relist;
                        }
                        return broken(format!("cancelled by etcd: {}", response.cancel_reason()));
                    }
                    if response.created() {
                        self.status.inner.connected.store(true, Ordering::Release);
                        if self.failing {
                            self.failing = false;
                            event!(
                                info,
                                prefix = %self.settings.prefix,
                                from = self.applied + 1,
                                "etcd: watching again"
                            );
                        }
                    }
                    if !self.apply(&response).await {
                        return End::Closed;
                    }
                }
                _ = ticker.tick() => {
                    if heard.elapsed() >= progress * 3 {
                        return broken(format!("no word from etcd for {:?}", heard.elapsed()));
                    }
                    // An answer refreshes the contact time; a failure to
                    // send shows up on the stream.
                    let _ = stream.request_progress().await;
                }
                () = self.tx.closed() => return End::Closed,
            }
        }
    }

    /// Turns one watch response's events into a delta; `false` when the
    /// source is gone.
    async fn apply(&mut self, response: &WatchResponse) -> bool {
        let mut touched = BTreeSet::new();
        let mut last = self.applied;
        let mut bad = Vec::new();
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            last = last.max(kv.mod_revision());
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if let Some(old) = self.members.get(&key) {
                touched.insert(old.key().to_owned());
            }
            match event.event_type() {
                EventType::Delete => {
                    self.members.remove(&key);
                }
                EventType::Put => match record::decode(kv.value(), &key) {
                    Ok(e) => {
                        touched.insert(e.key().to_owned());
                        self.members.insert(key, e);
                    }
                    Err(e) => bad.push(e),
                },
            }
        }
        for e in bad {
            if !self.report_bad(e).await {
                return false;
            }
        }
        if last <= self.applied {
            return true;
        }
        self.applied = last;
        self.status.inner.revision.store(last, Ordering::Release);
        let mut upserts = Vec::new();
        let mut removals = Vec::new();
        for endpoint_key in touched {
            // The record under the greatest etcd key wins.
            match self
                .members
                .values()
                .rev()
                .find(|e| e.key() == endpoint_key)
            {
                Some(e) => upserts.push(e.clone()),
                None => removals.push(endpoint_key),
            }
        }
        event!(
            debug,
            prefix = %self.settings.prefix,
            revision = last,
            upserts = upserts.len(),
            removals = removals.len(),
            "etcd: changes"
        );
        let update = Update::delta(self.next_revision(last), upserts, removals);
        self.send(update).await
    }

    /// One endpoint per endpoint key, the record under the greatest etcd
    /// key.
    fn endpoints(&self) -> Vec<Endpoint> {
        let mut by_key: BTreeMap<&str, &Endpoint> = BTreeMap::new();
        for e in self.members.values() {
            by_key.insert(e.key(), e);
        }
        by_key.into_values().cloned().collect()
    }

    /// The update revision for etcd revision `etcd`: that revision, never
    /// less than the last one sent.
    fn next_revision(&mut self, etcd: i64) -> u64 {
        let r = u64::try_from(etcd).unwrap_or(0).max(self.sent);
        self.status.inner.revision.store(etcd, Ordering::Release);
        self.sent = r;
        r
    }

    async fn report_bad(&mut self, error: DiscoveryError) -> bool {
        let text = crate::error::render_chain(&error);
        event!(warn, prefix = %self.settings.prefix, error = %text, "etcd: malformed record skipped");
        self.status.set_error(text);
        self.tx.send(Err(error)).await.is_ok()
    }

    async fn send(&mut self, update: Update) -> bool {
        self.tx.send(Ok(update)).await.is_ok()
    }
}

/// A wait between half and all of `d`, so clients that lost etcd together
/// do not come back together.
pub(super) fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(rand::random_range(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker() -> (Worker, mpsc::Receiver<Result<Update, DiscoveryError>>) {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let settings = EtcdSource::new(EtcdConfig::new(["127.0.0.1:1"]), "/p/")
            .settings
            .clone();
        let w = Worker {
            settings,
            status: EtcdStatus::default(),
            tx,
            members: BTreeMap::new(),
            applied: 0,
            sent: 0,
            failing: false,
        };
        (w, rx)
    }

    fn ep(addr: &str, weight: u32) -> Endpoint {
        Endpoint::new(addr.parse().unwrap()).with_weight(weight)
    }

    #[test]
    fn duplicate_endpoint_keys_resolve_to_the_greatest_etcd_key() {
        let (mut w, _rx) = worker();
        w.members.insert("/p/b".into(), ep("127.0.0.1:1", 2));
        w.members.insert("/p/a".into(), ep("127.0.0.1:1", 1));
        w.members.insert("/p/c".into(), ep("127.0.0.1:2", 1));
        let set = w.endpoints();
        assert_eq!(set, [ep("127.0.0.1:1", 2), ep("127.0.0.1:2", 1)]);
    }

    #[test]
    fn revisions_never_go_back() {
        let (mut w, _rx) = worker();
        assert_eq!(w.next_revision(10), 10);
        assert_eq!(w.next_revision(12), 12);
        assert_eq!(
            w.next_revision(3),
            12,
            "a restored cluster's lower revision"
        );
        assert_eq!(w.next_revision(-1), 12);
    }

    #[test]
    fn jitter_stays_within_half_and_all() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(100));
            assert!(
                j >= Duration::from_millis(50) && j <= Duration::from_millis(100),
                "{j:?}"
            );
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_malformed_record_is_reported_by_key() {
        let (mut w, mut rx) = worker();
        let bad = record::decode(b"{\"address\": 5}", "/p/broken").unwrap_err();
        assert!(w.report_bad(bad).await);
        let err = rx.recv().await.unwrap().unwrap_err();
        let text = crate::error::render_chain(&err);
        assert!(text.contains("/p/broken"), "{text}");
        assert!(w.status.last_error().unwrap().contains("/p/broken"));
    }
}
