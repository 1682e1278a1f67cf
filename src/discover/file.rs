use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::record;
use super::{Source, Update};
use crate::error::{DiscoveryError, InvalidSetting, check, valid};
use crate::trace::event;

type Reading = Pin<Box<dyn Future<Output = std::io::Result<Vec<u8>>> + Send>>;

/// Endpoints listed in a JSON file, reloaded when the file changes
/// (feature `file`).
///
/// The file holds `{"endpoints": [...]}` or a bare array of records:
///
/// ```json
/// {"endpoints": [
///   {"address": "10.0.0.1:8080", "weight": 3},
///   {"address": "10.0.0.2:8080", "weight": 1, "priority": 1, "zone": "b",
///    "tags": {"version": "7"}}
/// ]}
/// ```
///
/// The file is read (off the runtime's worker threads) once at start and
/// then every [`interval`](FileSource::interval), and a new snapshot is
/// sent only when its contents changed — editors that replace the file
/// and editors that rewrite it in place both work, and no file-system
/// watcher is needed.
///
/// # Bad input
///
/// - A file that cannot be read (missing, deleted, unreadable) or that is
///   not a list of records (not JSON, cut short by a rewrite in progress,
///   nested too deep) is reported once, as a
///   [`DiscoveryError::Source`], and the pool keeps its last good set.
/// - A record that does not validate (not an object, an unknown field, a
///   bad address, a NaN, negative or too-large weight…) is left out and
///   reported as a [`DiscoveryError::InvalidRecord`] naming
///   `path[index]`; the others apply. The first 16 bad records of a read
///   are reported one by one, the rest in one count.
/// - A file whose records are all invalid is a broken file: it sends no
///   update (the pool keeps its last good set) and is reported with
///   [`DiscoveryError::NoValidRecords`] after its records' errors. Only a
///   valid empty list, `[]` or `{"endpoints": []}`, means no instances.
/// - Records with the same key resolve to the last one in the file.
///
/// Each distinct content is decoded once, so a broken file is reported
/// once however long it stays broken.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_lb::discover::FileSource;
///
/// let source = FileSource::new("/etc/myapp/backends.json").interval(Duration::from_secs(2));
/// # let _ = source;
/// ```
pub struct FileSource {
    path: PathBuf,
    interval: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    reading: Option<Reading>,
    /// Hash of the contents last turned into an update (or error).
    last: Option<u64>,
    revision: u64,
    /// Updates and errors decoded but not yet yielded.
    pending: VecDeque<Result<Update, DiscoveryError>>,
}

impl fmt::Debug for FileSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSource")
            .field("path", &self.path)
            .field("interval", &self.interval)
            .field("revision", &self.revision)
            .finish()
    }
}

impl Clone for FileSource {
    /// Another watch of the same file, starting afresh.
    fn clone(&self) -> Self {
        FileSource::new(&self.path).interval(self.interval)
    }
}

impl FileSource {
    /// Watches `path`, checking it every second.
    pub fn new(path: impl AsRef<Path>) -> Self {
        FileSource {
            path: path.as_ref().to_path_buf(),
            interval: Duration::from_secs(1),
            timer: None,
            reading: None,
            last: None,
            revision: 0,
            pending: VecDeque::new(),
        }
    }

    /// How often the file is checked (at least 1 ms).
    ///
    /// # Panics
    ///
    /// When `interval` is shorter than 1 ms;
    /// [`try_interval`](FileSource::try_interval) returns the error
    /// instead.
    #[must_use]
    #[track_caller]
    pub fn interval(self, interval: Duration) -> Self {
        valid(self.try_interval(interval))
    }

    /// [`interval`](FileSource::interval), refusing less than 1 ms.
    pub fn try_interval(mut self, interval: Duration) -> Result<Self, InvalidSetting> {
        check(
            interval >= Duration::from_millis(1),
            "FileSource::interval",
            interval,
            "must be at least 1ms",
        )?;
        self.interval = interval;
        Ok(self)
    }

    /// The watched path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Turns what was read into updates and errors, if it changed.
    fn decode(&mut self, read: std::io::Result<Vec<u8>>) {
        let origin = self.path.display().to_string();
        let text = match read {
            Ok(text) => text,
            Err(e) => {
                // Report a failure once, not every interval.
                let mut h = DefaultHasher::new();
                e.kind().hash(&mut h);
                let key = h.finish() ^ 1;
                if self.last != Some(key) {
                    self.last = Some(key);
                    self.pending.push_back(Err(DiscoveryError::Source(
                        format!("reading {origin}: {e}").into(),
                    )));
                }
                return;
            }
        };
        let mut h = DefaultHasher::new();
        text.hash(&mut h);
        let key = h.finish();
        if self.last == Some(key) {
            return;
        }
        self.last = Some(key);
        match record::parse(&text, &origin) {
            Ok(parsed) => self.apply(parsed, origin),
            Err(e) => {
                event!(warn, path = %origin, "file: not a list of records; keeping the last good set");
                self.pending.push_back(Err(e));
            }
        }
    }

    /// Queues a parsed document's errors and, unless it has records and
    /// none of them is valid, its snapshot.
    fn apply(&mut self, parsed: record::Parsed, origin: String) {
        let record::Parsed { good, bad, invalid } = parsed;
        let reported = bad.len();
        self.pending.extend(bad.into_iter().map(Err));
        if good.is_empty() && invalid > 0 {
            event!(warn, path = %origin, invalid, "file: no valid record; keeping the last good set");
            self.pending
                .push_back(Err(DiscoveryError::NoValidRecords { origin, invalid }));
            return;
        }
        if invalid > reported {
            let more = invalid - reported;
            self.pending.push_back(Err(DiscoveryError::Source(
                format!("{origin}: {more} more invalid record(s) left out").into(),
            )));
        }
        self.revision += 1;
        self.pending
            .push_back(Ok(Update::snapshot(self.revision, good)));
    }
}

impl Source for FileSource {
    /// The file's stem (`api` for `/etc/lb/api.json`).
    fn name(&self) -> Option<&str> {
        self.path.file_stem().and_then(|s| s.to_str())
    }

    fn poll_update(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Update, DiscoveryError>>> {
        loop {
            if let Some(next) = self.pending.pop_front() {
                return Poll::Ready(Some(next));
            }
            if let Some(reading) = &mut self.reading {
                let read = match reading.as_mut().poll(cx) {
                    Poll::Ready(read) => read,
                    Poll::Pending => return Poll::Pending,
                };
                self.reading = None;
                self.decode(read);
                super::source::arm(&mut self.timer, Instant::now() + self.interval);
                continue;
            }
            if let Some(timer) = &mut self.timer {
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            let path = self.path.clone();
            self.reading = Some(Box::pin(tokio::fs::read(path)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_refuses_less_than_a_millisecond() {
        let ms = Duration::from_millis;
        let src = || FileSource::new("/nonexistent/endpoints.json");
        assert_eq!(src().try_interval(ms(1)).unwrap().interval, ms(1));
        assert_eq!(src().interval(ms(250)).clone().interval, ms(250));
        for (bad, shown) in [
            (Duration::ZERO, "0ns"),
            (Duration::from_nanos(999_999), "999.999µs"),
        ] {
            let err = src().try_interval(bad).err().unwrap();
            assert_eq!(
                err.to_string(),
                format!("invalid setting FileSource::interval = {shown}: must be at least 1ms")
            );
        }
    }

    #[test]
    #[should_panic(expected = "invalid setting FileSource::interval = 0ns")]
    fn a_zero_interval_panics() {
        let _ = FileSource::new("/nonexistent/endpoints.json").interval(Duration::ZERO);
    }
}
