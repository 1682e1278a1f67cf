//! The task behind an [`EtcdSource`](super::EtcdSource): it lists the
//! prefix, watches it from the listed revision + 1, reconnects with
//! backoff when the watch breaks, and resumes from the last applied
//! revision (or lists again when etcd compacted it away).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use etcd_client::{
    Client, EventType, GetOptions, KeyValue, WatchOptions, WatchResponse, WatchStream,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::EtcdError;
use super::source::{EtcdStatus, Settings};
use crate::discover::Update;
use crate::discover::record;
use crate::endpoint::Endpoint;
use crate::error::DiscoveryError;
use crate::trace::event;

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

/// What one watch response's events did to the members.
struct Events {
    /// The endpoint keys whose endpoint may have changed.
    touched: BTreeSet<String>,
    /// The greatest mod revision among the events, at least the one applied.
    last: i64,
    /// Records that did not decode.
    bad: Vec<DiscoveryError>,
}

/// The task behind an [`EtcdSource`](super::EtcdSource).
pub(super) struct Worker {
    settings: Settings,
    status: EtcdStatus,
    tx: mpsc::Sender<Result<Update, DiscoveryError>>,
    /// Every good record, by etcd key (a key overwritten with a bad value
    /// keeps its last good record).
    members: BTreeMap<String, Endpoint>,
    /// Every key whose value is invalid, with that value's mod revision,
    /// so a value is reported once however often it is listed.
    invalid: BTreeMap<String, i64>,
    /// Whether the pool's set is behind `members`: every key under the
    /// prefix was invalid, so nothing was sent (the pool kept its last
    /// good set). The next good state is sent as a full snapshot.
    holding: bool,
    /// The etcd revision applied; 0 means list first.
    applied: i64,
    /// The revision of the last update sent.
    sent: u64,
    /// Whether the current failure streak was reported.
    failing: bool,
}

impl Worker {
    /// A worker that sends its updates on `tx`, starting with a listing.
    pub(super) fn new(
        settings: Settings,
        status: EtcdStatus,
        tx: mpsc::Sender<Result<Update, DiscoveryError>>,
    ) -> Self {
        Worker {
            settings,
            status,
            tx,
            members: BTreeMap::new(),
            invalid: BTreeMap::new(),
            holding: false,
            applied: 0,
            sent: 0,
            failing: false,
        }
    }

    /// Runs sessions until the source is gone.
    pub(super) async fn run(mut self) {
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
                    if !self.failed(error, &mut backoff).await {
                        return;
                    }
                }
            }
        }
    }

    /// Records a failed session, reports it once per streak and waits out
    /// the backoff; `false` when the source is gone.
    async fn failed(&mut self, error: EtcdError, backoff: &mut Duration) -> bool {
        if self.status.disconnected() {
            self.status.count_reconnect();
            *backoff = self.settings.min_backoff;
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
                return false;
            }
        } else {
            event!(debug, prefix = %self.settings.prefix, error = %text, "etcd: still failing");
        }
        let wait = jitter(*backoff);
        *backoff = (*backoff * 2).min(self.settings.max_backoff);
        tokio::select! {
            () = tokio::time::sleep(wait) => true,
            () = self.tx.closed() => false,
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

    /// Lists the prefix and sends the snapshot (unless every value under
    /// it is invalid); `Ok(false)` when the source is gone.
    async fn list(&mut self, c: &mut Client) -> Result<bool, EtcdError> {
        let prefix = self.settings.prefix.clone();
        let get = c.get(prefix.as_str(), Some(GetOptions::new().with_prefix()));
        let response = self.settings.config.request("list", get).await?;
        self.status.contact();
        let revision = response.header().map_or(0, |h| h.revision());
        let bad = self.decode_listing(response.kvs());
        for e in bad {
            if !self.report_bad(e).await {
                return Ok(false);
            }
        }
        self.applied = revision.max(1);
        self.status.count_list();
        if self.all_invalid() {
            return Ok(self.hold().await);
        }
        self.holding = false;
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

    /// Replaces the members with a listing's records; returns the errors of
    /// the invalid values not reported before. A listed key whose value is
    /// invalid keeps its last good record.
    fn decode_listing(&mut self, kvs: &[KeyValue]) -> Vec<DiscoveryError> {
        let mut members = BTreeMap::new();
        let mut invalid = BTreeMap::new();
        let mut bad = Vec::new();
        for kv in kvs {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match record::decode(kv.value(), &key) {
                Ok(e) => {
                    members.insert(key, e);
                }
                Err(e) => {
                    if let Some(old) = self.members.get(&key) {
                        members.insert(key.clone(), old.clone());
                    }
                    if self.invalid.get(&key) != Some(&kv.mod_revision()) {
                        bad.push(e);
                    }
                    invalid.insert(key, kv.mod_revision());
                }
            }
        }
        self.members = members;
        self.invalid = invalid;
        bad
    }

    /// Whether the prefix holds keys but not one usable record: a broken
    /// set, which keeps the pool's last good one rather than emptying it.
    /// (A prefix with no keys at all is an empty set.)
    fn all_invalid(&self) -> bool {
        self.members.is_empty() && !self.invalid.is_empty()
    }

    /// Sends nothing while every value is invalid, reporting it once when
    /// that starts; `false` when the source is gone.
    async fn hold(&mut self) -> bool {
        if self.holding {
            return true;
        }
        self.holding = true;
        let error = DiscoveryError::NoValidRecords {
            origin: self.settings.prefix.clone(),
            invalid: self.invalid.len(),
        };
        let text = crate::error::render_chain(&error);
        event!(warn, prefix = %self.settings.prefix, error = %text, "etcd: no valid record; keeping the last good set");
        self.status.set_error(text);
        self.tx.send(Err(error)).await.is_ok()
    }

    /// Applies watch responses until the stream breaks.
    async fn follow(&mut self, stream: &mut WatchStream) -> End {
        let progress = self.settings.progress;
        let mut ticker = tokio::time::interval_at(Instant::now() + progress, progress);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = Instant::now();
        loop {
            tokio::select! {
                message = stream.message() => {
                    let response = match message {
                        Ok(Some(r)) => r,
                        Ok(None) => return self.broken("the stream ended".to_owned()),
                        Err(e) => return self.broken(e.to_string()),
                    };
                    heard = Instant::now();
                    self.status.contact();
                    if let Some(end) = self.on_response(&response).await {
                        return end;
                    }
                }
                _ = ticker.tick() => {
                    if heard.elapsed() >= progress * 3 {
                        return self.broken(format!("no word from etcd for {:?}", heard.elapsed()));
                    }
                    // An answer refreshes the contact time; a failure to
                    // send shows up on the stream.
                    let _ = stream.request_progress().await;
                }
                () = self.tx.closed() => return End::Closed,
            }
        }
    }

    /// The end of a watch that broke for `reason`.
    fn broken(&self, reason: String) -> End {
        End::Failed(EtcdError::WatchBroken {
            prefix: self.settings.prefix.clone(),
            reason,
        })
    }

    /// Handles one watch response: a cancellation ends the session, the
    /// creation marks the watch connected, and events are applied.
    async fn on_response(&mut self, response: &WatchResponse) -> Option<End> {
        if response.canceled() {
            if response.compact_revision() > 0 {
                event!(
                    info,
                    prefix = %self.settings.prefix,
                    from = self.applied + 1,
                    compacted = response.compact_revision(),
                    "etcd: watched revision was compacted; listing again"
                );
                return Some(End::Relist);
            }
            let reason = format!("cancelled by etcd: {}", response.cancel_reason());
            return Some(self.broken(reason));
        }
        if response.created() {
            self.status.connected();
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
        if !self.apply(response).await {
            return Some(End::Closed);
        }
        None
    }

    /// Turns one watch response's events into a delta (a snapshot when
    /// the pool's set was held back); `false` when the source is gone.
    async fn apply(&mut self, response: &WatchResponse) -> bool {
        let Events { touched, last, bad } = self.apply_events(response);
        for e in bad {
            if !self.report_bad(e).await {
                return false;
            }
        }
        if last <= self.applied {
            return true;
        }
        self.applied = last;
        if self.all_invalid() {
            return self.hold().await;
        }
        if std::mem::take(&mut self.holding) {
            let update = Update::snapshot(self.next_revision(last), self.endpoints());
            return self.send(update).await;
        }
        let (upserts, removals) = self.changes(touched);
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

    /// Applies one watch response's events to the members.
    fn apply_events(&mut self, response: &WatchResponse) -> Events {
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
                    self.invalid.remove(&key);
                }
                EventType::Put => match record::decode(kv.value(), &key) {
                    Ok(e) => {
                        touched.insert(e.key().to_owned());
                        self.members.insert(key.clone(), e);
                        self.invalid.remove(&key);
                    }
                    Err(e) => {
                        self.invalid.insert(key, kv.mod_revision());
                        bad.push(e);
                    }
                },
            }
        }
        Events { touched, last, bad }
    }

    /// What became of each touched endpoint key: the endpoints to upsert
    /// and the keys to remove.
    fn changes(&self, touched: BTreeSet<String>) -> (Vec<Endpoint>, Vec<String>) {
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
        (upserts, removals)
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
        self.status.set_revision(etcd);
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
    use crate::discover::{EtcdConfig, EtcdSource};

    fn worker() -> (Worker, mpsc::Receiver<Result<Update, DiscoveryError>>) {
        let (tx, rx) = mpsc::channel(super::super::source::CHANNEL);
        let settings = EtcdSource::new(EtcdConfig::new(["127.0.0.1:1"]), "/p/")
            .settings
            .clone();
        (Worker::new(settings, EtcdStatus::default(), tx), rx)
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
