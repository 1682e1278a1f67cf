//! The file source against real files in a temporary directory: edits are
//! picked up, a broken file keeps the last good set and reports why, a bad
//! record is left out without emptying the set, and a file none of whose
//! records is valid counts as broken.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, ServiceExt, service_fn};
use tower_lb::balance::{Balance, BalanceLayer, WeightedRoundRobin};
use tower_lb::discover::{FileSource, Source, Update};
use tower_lb::pool::{DiscoverLayer, Pool};
use tower_lb::{DiscoveryError, Endpoint, InvalidEndpoint};

/// How long any wait in these tests may take.
const LIMIT: Duration = Duration::from_secs(5);

/// A fresh file path in the system's temporary directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tower-lb-file-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempFile(dir.join(name))
    }

    fn write(&self, text: &str) {
        // Write beside and rename, as deploy tools do, so a reader never
        // sees half a file.
        let tmp = self.0.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.0).unwrap();
    }

    /// [`write`](Self::write) for bytes that need not be text.
    fn write_bytes(&self, bytes: &[u8]) {
        let tmp = self.0.with_extension("tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &self.0).unwrap();
    }
}

impl std::fmt::Debug for TempFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// An endpoint's service: answers every request with the endpoint's key.
#[derive(Clone, Debug)]
struct KeyService(Arc<str>);

impl tower::Service<()> for KeyService {
    type Response = String;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<String, std::convert::Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        std::future::ready(Ok(self.0.to_string()))
    }
}

fn pool(file: &TempFile) -> Pool<KeyService> {
    pool_every(file, Duration::from_millis(10))
}

fn pool_every(file: &TempFile, interval: Duration) -> Pool<KeyService> {
    let connector = service_fn(|ep: Endpoint| async move {
        Ok::<_, std::convert::Infallible>(KeyService(ep.key().into()))
    });
    let source = FileSource::new(&file.0).interval(interval);
    DiscoverLayer::new(source).layer(connector)
}

fn keys(pool: &Pool<KeyService>) -> Vec<String> {
    pool.snapshot()
        .members()
        .iter()
        .map(|m| m.endpoint().key().to_owned())
        .collect()
}

async fn applied(pool: &Pool<KeyService>, revision: u64) {
    applied_within(pool, revision, LIMIT).await;
}

async fn applied_within(pool: &Pool<KeyService>, revision: u64, limit: Duration) {
    assert!(
        tokio::time::timeout(limit, pool.applied(revision))
            .await
            .expect("revision applied in time"),
        "source ended"
    );
}

/// Waits until discovery has reported `n` errors.
async fn errors(pool: &Pool<KeyService>, n: u64) {
    errors_within(pool, n, LIMIT).await;
}

async fn errors_within(pool: &Pool<KeyService>, n: u64, limit: Duration) {
    tokio::time::timeout(limit, async {
        while pool.discovery().errors < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("expected {n} errors, have {:?}", pool.discovery()));
}

#[tokio::test]
async fn an_edit_becomes_the_new_set() {
    let file = TempFile::new("backends.json");
    file.write(
        r#"{"endpoints": [{"address": "127.0.0.1:1"}, {"address": "127.0.0.1:2", "weight": 3}]}"#,
    );
    let pool = pool(&file);
    applied(&pool, 1).await;
    assert_eq!(keys(&pool), ["127.0.0.1:1", "127.0.0.1:2"]);
    assert_eq!(pool.snapshot().members()[1].endpoint().weight(), 3);

    file.write(
        r#"[{"address": "127.0.0.1:2", "weight": 5}, {"address": "127.0.0.1:3", "priority": 1}]"#,
    );
    applied(&pool, 2).await;
    assert_eq!(keys(&pool), ["127.0.0.1:2", "127.0.0.1:3"]);
    assert_eq!(pool.snapshot().members()[0].endpoint().weight(), 5);
    assert_eq!(pool.snapshot().members()[1].endpoint().priority(), 1);

    // The same contents again is not a change.
    file.write(
        r#"[{"address": "127.0.0.1:2", "weight": 5}, {"address": "127.0.0.1:3", "priority": 1}]"#,
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pool.discovery().applied_revision, Some(2));
    assert_eq!(pool.discovery().errors, 0);
}

#[tokio::test]
async fn a_broken_file_keeps_the_last_good_set_and_says_why() {
    let file = TempFile::new("backends.json");
    file.write(r#"[{"address": "127.0.0.1:1"}]"#);
    let pool = pool(&file);
    applied(&pool, 1).await;

    file.write(r#"[{"address": "127.0.0.1:1"},"#);
    errors(&pool, 1).await;
    assert_eq!(keys(&pool), ["127.0.0.1:1"], "last good set kept");
    let last = pool.discovery().last_error.unwrap();
    assert!(last.contains("backends.json"), "{last}");

    // A broken file is reported once, not every interval.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pool.discovery().errors, 1);

    file.write(r#"[{"address": "127.0.0.1:7"}]"#);
    applied(&pool, 2).await;
    assert_eq!(keys(&pool), ["127.0.0.1:7"]);
}

#[tokio::test]
async fn a_bad_record_is_left_out_and_reported() {
    let file = TempFile::new("backends.json");
    file.write(
        r#"[{"address": "127.0.0.1:1"}, {"address": "127.0.0.1:2", "weight": -4}, {"address": "nowhere"}]"#,
    );
    let pool = pool(&file);
    applied(&pool, 1).await;
    assert_eq!(keys(&pool), ["127.0.0.1:1"]);
    errors(&pool, 2).await;
    let last = pool.discovery().last_error.unwrap();
    assert!(last.contains("[2]") && last.contains("nowhere"), "{last}");
}

#[tokio::test]
async fn a_missing_file_is_an_error_until_it_appears() {
    let file = TempFile::new("later.json");
    let pool = pool(&file);
    errors(&pool, 1).await;
    assert!(pool.snapshot().is_empty());
    file.write(r#"[{"address": "127.0.0.1:9"}]"#);
    applied(&pool, 1).await;
    assert_eq!(keys(&pool), ["127.0.0.1:9"]);
}

// ---------------------------------------------------------------------------
// Bad input: each case keeps the last good set or applies the valid part,
// is reported once, and never lets a bad endpoint be picked.

/// The good set most of the tests below start from.
const GOOD: &str = r#"[{"address": "127.0.0.1:7001"}, {"address": "127.0.0.1:7002"}]"#;

/// `key → weight` of every member.
fn weights(pool: &Pool<KeyService>) -> BTreeMap<String, u32> {
    pool.snapshot()
        .members()
        .iter()
        .map(|m| (m.endpoint().key().to_owned(), m.endpoint().weight()))
        .collect()
}

/// Sends `n` requests through a weighted round robin balancer and counts
/// the answers by key.
async fn picks(pool: &Pool<KeyService>, n: usize) -> BTreeMap<String, usize> {
    let lb: Balance<KeyService, WeightedRoundRobin> = BalanceLayer::new(WeightedRoundRobin)
        .seed(1)
        .layer(pool.clone());
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let key = tokio::time::timeout(LIMIT, lb.clone().oneshot(()))
            .await
            .expect("a pick in time")
            .expect("an answer");
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
}

/// The pool starts on [`GOOD`] and has applied it as revision 1.
async fn started_on_good(file: &TempFile, pool: &Pool<KeyService>) {
    applied(pool, 1).await;
    assert_eq!(keys(pool), ["127.0.0.1:7001", "127.0.0.1:7002"], "{file:?}");
}

/// Waits until the pool has seen `n` errors, then checks that no more come
/// within ten of the source's intervals (a broken file is reported once,
/// not every interval) and that nothing was applied past `revision`.
async fn reported_once(pool: &Pool<KeyService>, n: u64, revision: u64) {
    errors(pool, n).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let d = pool.discovery();
    assert_eq!(d.errors, n, "reported once: {d:?}");
    assert_eq!(d.applied_revision, Some(revision), "no update sent: {d:?}");
}

/// The next `n` items the source yields, within [`LIMIT`].
async fn next_items(source: &mut FileSource, n: usize) -> Vec<Result<Update, DiscoveryError>> {
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        let item = tokio::time::timeout(LIMIT, source.next_update())
            .await
            .unwrap_or_else(|_| panic!("item {} of {n} in time; had {items:?}", items.len()))
            .expect("the file source never ends");
        items.push(item);
    }
    items
}

/// Checks that the source yields nothing for ten of its intervals.
async fn quiet(source: &mut FileSource) {
    let more = tokio::time::timeout(Duration::from_millis(100), source.next_update()).await;
    assert!(more.is_err(), "nothing more expected, got {more:?}");
}

/// The record name and cause of an `InvalidRecord`.
fn invalid_record(item: &Result<Update, DiscoveryError>) -> (&str, &InvalidEndpoint) {
    match item {
        Err(DiscoveryError::InvalidRecord { record, source }) => (record, source),
        other => panic!("expected an InvalidRecord, got {other:?}"),
    }
}

fn source(file: &TempFile) -> FileSource {
    FileSource::new(&file.0).interval(Duration::from_millis(10))
}

#[tokio::test]
async fn a_file_whose_every_record_is_invalid_keeps_the_last_good_set() {
    let file = TempFile::new("backends.json");
    file.write(GOOD);
    let pool = pool(&file);
    started_on_good(&file, &pool).await;

    file.write(r#"[{"address":"127.0.0.1:7003","weight":-1},{"address":"nope"}]"#);
    // Both records, then the file as a whole: three errors, once.
    reported_once(&pool, 3, 1).await;
    assert_eq!(keys(&pool), ["127.0.0.1:7001", "127.0.0.1:7002"]);
    let last = pool.discovery().last_error.unwrap();
    assert!(last.contains("none of the 2 record(s)"), "{last}");
    assert!(last.contains("backends.json"), "{last}");
    // Requests still go to the last good set.
    assert_eq!(
        picks(&pool, 10).await,
        counts(&[("127.0.0.1:7001", 5), ("127.0.0.1:7002", 5)])
    );

    // A valid empty list, in either form, does empty the pool.
    file.write("[]");
    applied(&pool, 2).await;
    assert!(pool.snapshot().is_empty());
    file.write(GOOD);
    applied(&pool, 3).await;
    file.write(r#"{"endpoints": []}"#);
    applied(&pool, 4).await;
    assert!(pool.snapshot().is_empty());
    assert_eq!(pool.discovery().errors, 3);
}

#[tokio::test]
async fn every_record_invalid_yields_each_record_error_then_no_valid_records() {
    let file = TempFile::new("all-bad.json");
    file.write(r#"[{"address":"127.0.0.1:7003","weight":-1},{"address":"nope"}]"#);
    let mut source = source(&file);
    let items = next_items(&mut source, 3).await;
    let (name, why) = invalid_record(&items[0]);
    assert!(name.ends_with("all-bad.json[0]"), "{name}");
    assert!(matches!(why, InvalidEndpoint::WeightNotFinite { weight } if *weight == -1.0));
    let (name, why) = invalid_record(&items[1]);
    assert!(name.ends_with("all-bad.json[1]"), "{name}");
    assert_eq!(
        why,
        &InvalidEndpoint::BadAddress {
            address: "nope".into()
        }
    );
    match &items[2] {
        Err(DiscoveryError::NoValidRecords { origin, invalid }) => {
            assert!(origin.ends_with("all-bad.json"), "{origin}");
            assert_eq!(*invalid, 2);
        }
        other => panic!("expected NoValidRecords, got {other:?}"),
    }
    quiet(&mut source).await;
}

#[tokio::test]
async fn a_file_invalid_from_the_start_leaves_the_pool_undiscovered() {
    let file = TempFile::new("backends.json");
    file.write(r#"{"endpoints": [{"address": "127.0.0.1:7001", "surprise": 1}]}"#);
    let pool = pool(&file);
    errors(&pool, 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let snapshot = pool.snapshot();
    assert!(!snapshot.discovered() && snapshot.is_empty());
    assert_eq!(pool.discovery().applied_revision, None);
    assert_eq!(pool.discovery().errors, 2);

    file.write(GOOD);
    started_on_good(&file, &pool).await;
}

#[tokio::test]
async fn an_unknown_field_rejects_its_record_as_malformed() {
    let file = TempFile::new("fields.json");
    file.write(
        r#"[{"address": "127.0.0.1:7001"}, {"address": "127.0.0.1:7002", "surprise": true}]"#,
    );
    let mut source = source(&file);
    let items = next_items(&mut source, 2).await;
    let (name, why) = invalid_record(&items[0]);
    assert!(name.ends_with("fields.json[1]"), "{name}");
    let InvalidEndpoint::Malformed { reason } = why else {
        panic!("{why:?}");
    };
    assert!(reason.contains("unknown field `surprise`"), "{reason}");
    let update = items[1].as_ref().expect("the valid part applies");
    let applied: Vec<&str> = update.endpoints().map(Endpoint::key).collect();
    assert_eq!(applied, ["127.0.0.1:7001"]);
    quiet(&mut source).await;
}

#[tokio::test]
async fn nan_infinite_negative_and_huge_weights_are_left_out_and_zero_drains() {
    let file = TempFile::new("weights.json");
    file.write(
        r#"[{"address": "127.0.0.1:7001", "weight": "NaN"},
            {"address": "127.0.0.1:7002", "weight": 1e999},
            {"address": "127.0.0.1:7003", "weight": -1},
            {"address": "127.0.0.1:7004", "weight": 1e12},
            {"address": "127.0.0.1:7005", "weight": 0},
            {"address": "127.0.0.1:7006", "weight": 2.5},
            {"address": "127.0.0.1:7007", "weight": -0.0}]"#,
    );
    let mut source = source(&file);
    let items = next_items(&mut source, 5).await;
    let causes: Vec<&InvalidEndpoint> = items[..4].iter().map(|i| invalid_record(i).1).collect();
    assert!(
        matches!(causes[0], InvalidEndpoint::Malformed { .. }),
        "{causes:?}"
    );
    assert!(
        matches!(causes[1], InvalidEndpoint::Malformed { .. }),
        "{causes:?}"
    );
    assert!(
        matches!(causes[2], InvalidEndpoint::WeightNotFinite { .. }),
        "{causes:?}"
    );
    assert!(
        matches!(causes[3], InvalidEndpoint::WeightTooLarge { .. }),
        "{causes:?}"
    );
    let update = items[4].as_ref().expect("the valid part applies");
    let got: Vec<(&str, u32)> = update.endpoints().map(|e| (e.key(), e.weight())).collect();
    assert_eq!(
        got,
        [
            ("127.0.0.1:7005", 0),
            ("127.0.0.1:7006", 3),
            ("127.0.0.1:7007", 0)
        ]
    );
    drop(source);

    // Through a pool: only the weighted endpoint is picked.
    let pool = pool(&file);
    applied(&pool, 1).await;
    assert_eq!(pool.discovery().errors, 4);
    assert_eq!(picks(&pool, 30).await, counts(&[("127.0.0.1:7006", 30)]));
}

#[tokio::test]
async fn duplicate_addresses_resolve_to_the_last_record() {
    let file = TempFile::new("dups.json");
    file.write(
        r#"[{"address": "127.0.0.1:7001", "weight": 1},
            {"address": "127.0.0.1:7002"},
            {"address": "127.0.0.1:7001", "weight": 5}]"#,
    );
    let pool = pool(&file);
    applied(&pool, 1).await;
    assert_eq!(keys(&pool), ["127.0.0.1:7001", "127.0.0.1:7002"]);
    assert_eq!(weights(&pool)["127.0.0.1:7001"], 5);
    assert_eq!(pool.discovery().errors, 0);
    assert_eq!(
        picks(&pool, 60).await,
        counts(&[("127.0.0.1:7001", 50), ("127.0.0.1:7002", 10)])
    );
}

#[tokio::test]
async fn garbage_bytes_keep_the_last_good_set() {
    let file = TempFile::new("backends.json");
    file.write(GOOD);
    let pool = pool(&file);
    started_on_good(&file, &pool).await;

    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    file.write_bytes(&garbage);
    reported_once(&pool, 1, 1).await;
    assert_eq!(keys(&pool), ["127.0.0.1:7001", "127.0.0.1:7002"]);
    let last = pool.discovery().last_error.unwrap();
    assert!(last.contains("backends.json"), "{last}");

    file.write_bytes(b"\xff\xfe\x00\x00[{\"address\": \"127.0.0.1:7009\"}]");
    reported_once(&pool, 2, 1).await;
    assert_eq!(keys(&pool), ["127.0.0.1:7001", "127.0.0.1:7002"]);
}

#[tokio::test]
async fn deep_nesting_keeps_the_last_good_set() {
    let file = TempFile::new("backends.json");
    file.write(GOOD);
    let pool = pool(&file);
    started_on_good(&file, &pool).await;

    // One record, an array 100 000 deep: malformed, so no valid record.
    let depth = 100_000;
    file.write(&format!("{}{}", "[".repeat(depth), "]".repeat(depth)));
    reported_once(&pool, 2, 1).await;
    assert_eq!(keys(&pool), ["127.0.0.1:7001", "127.0.0.1:7002"]);
    let last = pool.discovery().last_error.unwrap();
    assert!(last.contains("none of the 1 record(s)"), "{last}");

    // Never closed: not JSON at all.
    file.write(&"[".repeat(depth));
    reported_once(&pool, 3, 1).await;
    assert_eq!(keys(&pool), ["127.0.0.1:7001", "127.0.0.1:7002"]);
}

#[tokio::test]
async fn a_50_mb_file_applies_its_valid_part_with_short_errors() {
    const MB: usize = 1 << 20;
    // Reading, hashing and parsing 50 MB takes about a second here in a
    // debug build, more on a loaded machine.
    const LARGE: Duration = Duration::from_secs(30);
    let file = TempFile::new("backends.json");
    file.write(GOOD);
    // Each read of a 50 MB file costs; check it less often.
    let pool = pool_every(&file, Duration::from_millis(50));
    started_on_good(&file, &pool).await;

    let huge = "x".repeat(50 * MB);
    file.write(&format!(
        r#"[{{"address": "127.0.0.1:7003"}}, {{"address": "{huge}"}}, {{"address": "127.0.0.1:7004", "{huge}": 1}}]"#
    ));
    applied_within(&pool, 2, LARGE).await;
    assert_eq!(keys(&pool), ["127.0.0.1:7003"]);
    errors_within(&pool, 2, LARGE).await;
    let last = pool.discovery().last_error.unwrap();
    assert!(last.len() < 1024, "{} bytes", last.len());

    // 50 MB that is not JSON: the last good set stays.
    let mut junk = huge.into_bytes();
    junk[0] = b'{';
    file.write_bytes(&junk);
    errors_within(&pool, 3, LARGE).await;
    reported_once(&pool, 3, 2).await;
    assert_eq!(keys(&pool), ["127.0.0.1:7003"]);
    assert!(pool.discovery().last_error.unwrap().len() < 1024);
}

#[tokio::test]
async fn a_deleted_file_keeps_the_last_good_set_until_it_returns() {
    let file = TempFile::new("backends.json");
    file.write(GOOD);
    let pool = pool(&file);
    started_on_good(&file, &pool).await;

    std::fs::remove_file(&file.0).unwrap();
    reported_once(&pool, 1, 1).await;
    assert_eq!(keys(&pool), ["127.0.0.1:7001", "127.0.0.1:7002"]);
    let last = pool.discovery().last_error.unwrap();
    assert!(
        last.contains("reading") && last.contains("backends.json"),
        "{last}"
    );

    file.write(r#"[{"address": "127.0.0.1:7005"}]"#);
    applied(&pool, 2).await;
    assert_eq!(keys(&pool), ["127.0.0.1:7005"]);
}

#[tokio::test]
async fn a_rewrite_in_place_never_applies_a_partial_file() {
    let file = TempFile::new("backends.json");
    file.write(GOOD);
    let pool = pool(&file);
    started_on_good(&file, &pool).await;

    // Truncated, then written in two steps, each seen by the source.
    let next = r#"[{"address": "127.0.0.1:7003"}, {"address": "127.0.0.1:7004"}]"#;
    let (first, rest) = next.split_at(next.len() / 2);
    let mut f = std::fs::File::create(&file.0).unwrap();
    reported_once(&pool, 1, 1).await;
    f.write_all(first.as_bytes()).unwrap();
    f.sync_data().unwrap();
    reported_once(&pool, 2, 1).await;
    assert_eq!(keys(&pool), ["127.0.0.1:7001", "127.0.0.1:7002"]);
    f.write_all(rest.as_bytes()).unwrap();
    f.sync_data().unwrap();
    applied(&pool, 2).await;
    assert_eq!(keys(&pool), ["127.0.0.1:7003", "127.0.0.1:7004"]);
    assert_eq!(pool.discovery().errors, 2);
}
