//! The file source against real files in a temporary directory: edits are
//! picked up, a broken file keeps the last good set and reports why, a bad
//! record is left out without emptying the set.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tower::{Layer, service_fn};
use tower_lb::Endpoint;
use tower_lb::discover::FileSource;
use tower_lb::pool::{DiscoverLayer, Pool};

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
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn pool(file: &TempFile) -> Pool<()> {
    let connector = service_fn(|_: Endpoint| async { Ok::<_, std::convert::Infallible>(()) });
    let source = FileSource::new(&file.0).interval(Duration::from_millis(10));
    DiscoverLayer::new(source).layer(connector)
}

fn keys(pool: &Pool<()>) -> Vec<String> {
    pool.snapshot()
        .members()
        .iter()
        .map(|m| m.endpoint().key().to_owned())
        .collect()
}

async fn applied(pool: &Pool<()>, revision: u64) {
    assert!(
        tokio::time::timeout(LIMIT, pool.applied(revision))
            .await
            .expect("revision applied in time"),
        "source ended"
    );
}

/// Waits until discovery has reported `n` errors.
async fn errors(pool: &Pool<()>, n: u64) {
    tokio::time::timeout(LIMIT, async {
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
