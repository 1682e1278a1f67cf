//! Replayable request bodies: see [`ReplayBody`].
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker, ready};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::error::BoxError;
use crate::trace::event;

/// Why a [`ReplayBody`] handle cannot yield the rest of the body.
///
/// The original body's own error is passed through unchanged to the
/// handle that read it; these are what every other poll gets afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The body grew (or was known to be) larger than the replay cap, so
    /// the frames this handle missed were not kept.
    #[error(
        "the request body is larger than the replay cap of {cap} bytes and cannot be sent again"
    )]
    CapExceeded {
        /// The cap, in bytes.
        cap: usize,
    },
    /// The original body failed; its error went to the handle that read
    /// it.
    #[error("the original request body failed on an earlier read")]
    BodyFailed,
    /// A panic while polling the original body left the shared state
    /// unusable.
    #[error("the replay state was poisoned by a panic while polling the original body")]
    Poisoned,
}

/// Request bodies that can be sent more than once.
///
/// A retry needs the request again, but an HTTP request body is a stream:
/// `http_body::Body` is polled frame by frame, usually from a socket, a
/// channel or a file, and it is not `Clone`. Once the first attempt has
/// pulled a frame out of it, that frame is gone. Buffering every body up
/// front would make retries possible but would delay the first byte and
/// hold large uploads in memory for nothing.
///
/// [`ReplayBody`] records the frames as the first attempt streams them, up
/// to a byte cap. A clone starts again from the beginning: it replays the
/// recording, then carries on reading the original body where the earlier
/// attempt left it (an attempt refused before it sent everything loses
/// nothing), recording as it goes. A body that grows past the cap stops
/// being recorded and is no longer replayable; the attempt streaming it is
/// not affected. This is the design of linkerd2-proxy's `ReplayBody`
/// (`linkerd-http-retry`), with one difference: the handles share the
/// state behind a mutex instead of passing it from one to the next, and
/// every handle waiting on the original is woken, so two attempts alive
/// at once (a slow first attempt still being dropped by the client while
/// the retry starts) cannot lose a wake-up.
///
/// # What each handle yields
///
/// Data frames read from the original are numbered in the order they were
/// read. Each handle (the first one and every clone) yields frames `0, 1,
/// 2, …`, each as [`Bytes`] (a non-`Bytes` [`Buf`] is copied into one; a
/// `Bytes` chunk is not copied). When a handle needs frame `i`:
///
/// - if `i` was read already and the recording is kept, it yields a copy
///   of that frame, byte for byte;
/// - if `i` was read already but the recording was dropped, it yields a
///   [`ReplayError`] instead, on this poll and every later one — never
///   the frames after the gap;
/// - if `i` has not been read yet, it reads it from the original and, when
///   the recording is kept and the total stays within the cap, records it.
///
/// Once the original has ended, a handle that has yielded every data frame
/// yields the original's trailers, if it had any (trailers are always
/// kept and do not count against the cap), then the end of the stream.
///
/// The recording is dropped, its memory freed and
/// [`is_replayable`](ReplayBody::is_replayable) turns false for good when:
///
/// - a frame would take the recorded total past the cap: the handle that
///   read that frame still yields it and goes on reading the original
///   normally, so that attempt is complete; every other handle — clones
///   made earlier and not finished, and clones made later — fails with
///   [`ReplayError::CapExceeded`] as soon as it needs a frame it missed;
/// - the original's size hint says, before anything is read, that it is
///   larger than the cap (its lower bound exceeds the cap): nothing is
///   recorded, and the first handle to read a frame is the one that
///   streams it;
/// - the original fails: its error goes to the handle that read it, and
///   every handle (that one included) fails with
///   [`ReplayError::BodyFailed`] from then on.
///
/// A retry layer checks `is_replayable()` after an attempt failed and
/// sends a clone only if it is still true.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use tower_lb::retry::ReplayBody;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let body = ReplayBody::new(Full::new(Bytes::from_static(b"hello")), 64 * 1024);
/// let retry = body.clone();
///
/// // The first attempt streams the body...
/// let sent = body.collect().await.unwrap().to_bytes();
/// assert_eq!(sent, "hello");
///
/// // ...and the retry sends it again.
/// assert!(retry.is_replayable());
/// let resent = retry.collect().await.unwrap().to_bytes();
/// assert_eq!(resent, "hello");
///
/// // A body over the cap is streamed once, and only once.
/// let big = ReplayBody::new(Full::new(Bytes::from(vec![7u8; 100])), 10);
/// let retry = big.clone();
/// assert!(!big.is_replayable());
/// assert_eq!(big.collect().await.unwrap().to_bytes().len(), 100);
/// assert!(retry.collect().await.is_err());
/// # }
/// ```
pub struct ReplayBody<B> {
    shared: Arc<Mutex<Shared<B>>>,
    /// Index of the next data frame this handle yields.
    next: usize,
    /// Bytes this handle has yielded.
    yielded: u64,
    /// This handle has yielded its trailers or the end of the stream.
    done: bool,
}

struct Shared<B> {
    /// The original body, until it ends or fails.
    body: Option<Pin<Box<B>>>,
    cap: usize,
    /// The data frames read so far, while they fit in `cap`; `None` once
    /// the body is not replayable.
    recording: Option<Vec<Bytes>>,
    /// Bytes in `recording`.
    recorded: usize,
    /// Why `recording` is `None`.
    lost: Option<ReplayError>,
    /// Data frames read from the original.
    frames: usize,
    /// Bytes read from the original.
    bytes: u64,
    /// The original returned its end (or its trailers).
    ended: bool,
    trailers: Option<HeaderMap>,
    /// Handles waiting on the original.
    waiting: Arc<WakerSet>,
    /// Wakes every waker in `waiting`; the original is polled with it.
    fan_out: Waker,
}

impl<B> ReplayBody<B>
where
    B: Body,
{
    /// Wraps `body`, recording up to `cap` bytes of it for clones to
    /// replay.
    ///
    /// When `body`'s size hint already says it is larger than `cap` (its
    /// lower bound exceeds `cap`), nothing is recorded and the body is not
    /// replayable from the start. A body of unknown size is recorded until
    /// it crosses `cap`.
    pub fn new(body: B, cap: usize) -> Self {
        let cap_bytes = u64::try_from(cap).unwrap_or(u64::MAX);
        let too_large = body.size_hint().lower() > cap_bytes;
        if too_large {
            event!(
                debug,
                cap,
                size_hint = body.size_hint().lower(),
                "request body is larger than the replay cap; it will not be recorded"
            );
        }
        let waiting = Arc::new(WakerSet::default());
        let fan_out = Waker::from(Arc::clone(&waiting));
        let shared = Shared {
            body: Some(Box::pin(body)),
            cap,
            recording: if too_large { None } else { Some(Vec::new()) },
            recorded: 0,
            lost: too_large.then_some(ReplayError::CapExceeded { cap }),
            frames: 0,
            bytes: 0,
            ended: false,
            trailers: None,
            waiting,
            fan_out,
        };
        ReplayBody {
            shared: Arc::new(Mutex::new(shared)),
            next: 0,
            yielded: 0,
            done: false,
        }
    }
}

impl<B> ReplayBody<B> {
    /// Whether a clone can still send the whole body: true until the body
    /// grows (or is known to be) larger than the cap, or the original
    /// fails. Once false, it stays false.
    pub fn is_replayable(&self) -> bool {
        match self.shared.lock() {
            Ok(shared) => shared.recording.is_some(),
            Err(_) => false,
        }
    }

    /// The cap this body was created with, in bytes.
    pub fn cap(&self) -> usize {
        lock(&self.shared).cap
    }
}

impl<B> Clone for ReplayBody<B> {
    /// Another handle on the same body, starting from the beginning.
    fn clone(&self) -> Self {
        ReplayBody {
            shared: Arc::clone(&self.shared),
            next: 0,
            yielded: 0,
            done: false,
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let Ok(mut guard) = this.shared.lock() else {
            return Poll::Ready(Some(Err(ReplayError::Poisoned.into())));
        };
        let shared = &mut *guard;

        // Frames the original already gave: replay them, or fail if they
        // were not kept.
        if this.next < shared.frames {
            let chunk = shared
                .recording
                .as_ref()
                .and_then(|recording| recording.get(this.next));
            return Poll::Ready(Some(match chunk {
                Some(chunk) => {
                    this.next = this.next.saturating_add(1);
                    this.yielded = this.yielded.saturating_add(len_u64(chunk));
                    Ok(Frame::data(chunk.clone()))
                }
                None => Err(shared.lost().into()),
            }));
        }

        // This handle has every frame read so far.
        if shared.ended {
            this.done = true;
            return Poll::Ready(shared.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        }

        // Read on from the original, and keep this handle's place.
        let polled = ready!(shared.read_on(cx));
        match &polled {
            Some(Ok(frame)) => match frame.data_ref() {
                Some(chunk) => {
                    this.next = this.next.saturating_add(1);
                    this.yielded = this.yielded.saturating_add(len_u64(chunk));
                }
                // Trailers: the end.
                None => this.done = true,
            },
            Some(Err(_)) => {}
            None => this.done = true,
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        if self.done {
            return true;
        }
        let Ok(shared) = self.shared.lock() else {
            return false;
        };
        if self.next < shared.frames {
            // More to replay, or an error to report.
            false
        } else if shared.ended {
            shared.trailers.is_none()
        } else {
            shared.body.as_ref().is_some_and(|b| b.is_end_stream())
        }
    }

    fn size_hint(&self) -> SizeHint {
        if self.done {
            return SizeHint::with_exact(0);
        }
        let Ok(shared) = self.shared.lock() else {
            return SizeHint::default();
        };
        // Bytes the original gave that this handle has not yielded yet.
        let ahead = shared.bytes.saturating_sub(self.yielded);
        if shared.ended {
            return SizeHint::with_exact(ahead);
        }
        let Some(body) = shared.body.as_ref() else {
            return SizeHint::default();
        };
        let rest = body.size_hint();
        let mut hint = SizeHint::new();
        let lower = ahead.saturating_add(rest.lower());
        hint.set_lower(lower);
        // `upper >= rest.lower()`, so the sum is at least `lower` unless it
        // overflows, in which case there is no upper bound.
        if let Some(upper) = rest.upper().and_then(|u| ahead.checked_add(u)) {
            if upper >= lower {
                hint.set_upper(upper);
            }
        }
        hint
    }
}

impl<B> Shared<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    /// The next frame of the original (data recorded, the end or an error
    /// noted), for a handle that has every frame read so far.
    ///
    /// The original only ever sees the fan-out waker, so a handle that
    /// polls it last (and may then be dropped, like an abandoned attempt)
    /// does not take the wake-up away from one that polled it before: when
    /// the original can make progress, every handle that saw it pending is
    /// woken and re-polls, replaying what another handle read meanwhile.
    /// The handle registers before the original is polled so that a wake
    /// from another thread between the two is not lost. A handle whose
    /// poll is ready stays registered until the next wake, which costs at
    /// most one spurious wake-up.
    fn read_on(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(Some(Err(self.lost().into())));
        };
        self.waiting.register(cx.waker());
        let mut fan_out = Context::from_waker(&self.fan_out);
        loop {
            let frame = match ready!(body.as_mut().poll_frame(&mut fan_out)) {
                None => {
                    self.finish(None);
                    return Poll::Ready(None);
                }
                Some(Err(error)) => {
                    self.fail();
                    return Poll::Ready(Some(Err(error.into())));
                }
                Some(Ok(frame)) => frame,
            };
            match frame.into_data() {
                Ok(mut data) => {
                    let chunk = data.copy_to_bytes(data.remaining());
                    self.record(&chunk);
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.finish(Some(trailers.clone()));
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    // A frame kind this version of http-body does not
                    // know: neither data nor trailers, so skip it.
                }
            }
        }
    }
}

impl<B> Shared<B> {
    /// Why a frame this handle missed is not available.
    fn lost(&self) -> ReplayError {
        self.lost.unwrap_or(ReplayError::BodyFailed)
    }

    /// Counts a data frame read from the original and records it if it
    /// fits.
    fn record(&mut self, chunk: &Bytes) {
        self.frames = self.frames.saturating_add(1);
        self.bytes = self.bytes.saturating_add(len_u64(chunk));
        let Some(recording) = self.recording.as_mut() else {
            return;
        };
        match self.recorded.checked_add(chunk.len()) {
            Some(total) if total <= self.cap => {
                recording.push(chunk.clone());
                self.recorded = total;
            }
            _ => {
                event!(
                    debug,
                    cap = self.cap,
                    "request body grew past the replay cap; it can no longer be retried"
                );
                self.recording = None;
                self.recorded = 0;
                self.lost = Some(ReplayError::CapExceeded { cap: self.cap });
            }
        }
    }

    /// The original ended, with or without trailers.
    fn finish(&mut self, trailers: Option<HeaderMap>) {
        self.ended = true;
        self.trailers = trailers;
        self.body = None;
    }

    /// The original failed.
    fn fail(&mut self) {
        self.body = None;
        self.recording = None;
        self.recorded = 0;
        self.lost = Some(ReplayError::BodyFailed);
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ReplayBody");
        d.field("next", &self.next)
            .field("yielded", &self.yielded)
            .field("done", &self.done);
        match self.shared.try_lock() {
            Ok(shared) => d
                .field("cap", &shared.cap)
                .field("replayable", &shared.recording.is_some())
                .field("recorded", &shared.recorded)
                .field("frames", &shared.frames)
                .field("ended", &shared.ended),
            Err(_) => d.field("shared", &format_args!("<locked>")),
        };
        d.finish()
    }
}

/// The wakers of the handles waiting on the original body.
#[derive(Default)]
struct WakerSet {
    wakers: Mutex<Vec<Waker>>,
}

impl WakerSet {
    fn register(&self, waker: &Waker) {
        let mut wakers = lock(&self.wakers);
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }

    fn wake_all(&self) {
        let wakers = std::mem::take(&mut *lock(&self.wakers));
        wakers.into_iter().for_each(Waker::wake);
    }
}

impl Wake for WakerSet {
    fn wake(self: Arc<Self>) {
        self.wake_all();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_all();
    }
}

/// Locks for reading plain state, which a panic cannot leave inconsistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn len_u64(chunk: &Bytes) -> u64 {
    u64::try_from(chunk.len()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use http::HeaderValue;
    use http_body_util::{BodyExt, Empty, Full, StreamBody};
    use tokio::sync::mpsc;

    type Item = Result<Frame<Bytes>, BoxError>;

    /// A `Stream` over a channel receiver (futures-util is not a
    /// dependency).
    struct Channel(mpsc::Receiver<Item>);

    impl futures_core::Stream for Channel {
        type Item = Item;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
            self.0.poll_recv(cx)
        }
    }

    type ChannelBody = StreamBody<Channel>;

    /// A streaming body of unknown size fed through the returned sender.
    fn channel(cap: usize) -> (mpsc::Sender<Item>, ReplayBody<ChannelBody>) {
        let (tx, rx) = mpsc::channel(64);
        (tx, ReplayBody::new(StreamBody::new(Channel(rx)), cap))
    }

    async fn send(tx: &mpsc::Sender<Item>, chunk: &[u8]) {
        tx.send(Ok(Frame::data(Bytes::copy_from_slice(chunk))))
            .await
            .unwrap();
    }

    /// FNV-1a over the bytes.
    fn checksum(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// Distinct, position-dependent chunks, so reordering or loss shows.
    fn chunks(count: usize, len: usize) -> Vec<Vec<u8>> {
        (0..count)
            .map(|c| (0..len).map(|i| (c * 31 + i * 7) as u8).collect())
            .collect()
    }

    /// Awaits `future`, failing the test rather than hanging.
    async fn within<F: std::future::Future>(future: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(5), future)
            .await
            .expect("did not hang")
    }

    /// The next data frame, failing on anything else.
    async fn next_data<B>(body: &mut ReplayBody<B>) -> Bytes
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        body.frame()
            .await
            .expect("a frame")
            .expect("not an error")
            .into_data()
            .expect("a data frame")
    }

    #[tokio::test]
    async fn under_the_cap_every_clone_replays_byte_for_byte() {
        let parts = chunks(8, 100);
        let expected = parts.concat();
        let (tx, body) = channel(1024);
        let retry = body.clone();
        let producer = tokio::spawn(async move {
            for part in parts {
                send(&tx, &part).await;
            }
        });

        let first = body.collect().await.unwrap().to_bytes();
        producer.await.unwrap();
        assert_eq!(first, expected);
        assert!(retry.is_replayable());

        for _ in 0..2 {
            let again = retry.clone();
            assert!(!again.is_end_stream());
            assert_eq!(again.size_hint().exact(), Some(expected.len() as u64));
            let replayed = again.collect().await.unwrap().to_bytes();
            assert_eq!(replayed, expected);
            assert_eq!(checksum(&replayed), checksum(&expected));
        }
        // The handle made before the first pass replays too.
        let replayed = retry.collect().await.unwrap().to_bytes();
        assert_eq!(checksum(&replayed), checksum(&expected));
    }

    #[tokio::test]
    async fn a_clone_after_a_partial_read_continues_the_original() {
        let parts = chunks(5, 10);
        let expected = parts.concat();
        let (tx, mut first) = channel(1024);
        send(&tx, &parts[0]).await;
        send(&tx, &parts[1]).await;

        let mut seen_first = Vec::new();
        seen_first.extend_from_slice(&next_data(&mut first).await);
        seen_first.extend_from_slice(&next_data(&mut first).await);
        assert_eq!(seen_first, parts[..2].concat());

        // The first attempt stops here (say the connection was refused
        // mid-send); the retry starts over and the rest has not been sent.
        let retry = first.clone();
        let hint = retry.size_hint();
        assert_eq!(hint.lower(), 20, "the recorded part is known");
        assert_eq!(hint.upper(), None, "the rest is not");
        let producer = tokio::spawn(async move {
            for part in &parts[2..] {
                send(&tx, part).await;
            }
        });
        let resent = retry.collect().await.unwrap().to_bytes();
        producer.await.unwrap();
        assert_eq!(resent, expected);
        assert_eq!(checksum(&resent), checksum(&expected));

        // The first handle, resumed, gets the rest from the recording.
        assert_eq!(first.size_hint().exact(), Some(30));
        let rest = first.collect().await.unwrap().to_bytes();
        seen_first.extend_from_slice(&rest);
        assert_eq!(seen_first, expected);
        assert_eq!(checksum(&seen_first), checksum(&expected));
    }

    #[tokio::test]
    async fn over_the_cap_the_first_pass_is_complete_and_clones_fail() {
        // Cap 10, chunks of 4: recorded 4, 8, then 12 crosses the cap.
        let parts = chunks(5, 4);
        let expected = parts.concat();
        let (tx, mut body) = channel(10);
        let older = body.clone();
        let mut older_partial = body.clone();
        for part in &parts {
            send(&tx, part).await;
        }
        drop(tx);

        let mut seen = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let chunk = next_data(&mut body).await;
            assert_eq!(&chunk[..], &part[..]);
            seen.extend_from_slice(&chunk);
            assert_eq!(body.is_replayable(), i < 2, "after chunk {i}");
            if i == 0 {
                // This one got the first chunk, from the recording.
                assert_eq!(next_data(&mut older_partial).await, &part[..]);
            }
        }
        assert!(body.frame().await.is_none());
        assert!(body.is_end_stream());
        assert_eq!(seen, expected, "the first pass is never truncated");

        // A clone made afterwards fails on its first poll, with no data.
        let mut later = body.clone();
        assert!(!later.is_replayable());
        let error = within(later.frame()).await.unwrap().unwrap_err();
        assert_eq!(
            error.downcast_ref::<ReplayError>(),
            Some(&ReplayError::CapExceeded { cap: 10 })
        );
        // And keeps failing rather than skip ahead.
        assert!(within(later.frame()).await.unwrap().is_err());

        // Older clones fail too: the one that had nothing yet...
        assert!(within(older.collect()).await.is_err());
        // ...and the one that had part of the recording gets no more data.
        let error = within(older_partial.frame()).await.unwrap().unwrap_err();
        assert!(error.is::<ReplayError>());
    }

    #[tokio::test]
    async fn a_body_known_to_exceed_the_cap_is_not_replayable_up_front() {
        let data = Bytes::from(chunks(1, 100).concat());
        let body = ReplayBody::new(Full::new(data.clone()), 99);
        let retry = body.clone();
        assert!(!body.is_replayable());
        assert_eq!(body.size_hint().exact(), Some(100));

        let first = body.collect().await.unwrap().to_bytes();
        assert_eq!(first, data);
        assert!(within(retry.collect()).await.is_err());

        // At the cap exactly, it is replayable.
        let body = ReplayBody::new(Full::new(data.clone()), 100);
        assert!(body.is_replayable());
        let retry = body.clone();
        assert_eq!(body.collect().await.unwrap().to_bytes(), data);
        assert_eq!(retry.collect().await.unwrap().to_bytes(), data);

        // A streaming body of unknown size is not flagged before reading.
        let (_tx, body) = channel(0);
        assert!(body.is_replayable());
    }

    #[tokio::test]
    async fn trailers_are_replayed() {
        let (tx, body) = channel(1024);
        let retry = body.clone();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        send(&tx, b"abc").await;
        send(&tx, b"def").await;
        tx.send(Ok(Frame::trailers(trailers.clone())))
            .await
            .unwrap();
        drop(tx);

        let first = body.collect().await.unwrap();
        assert_eq!(first.trailers(), Some(&trailers));
        assert_eq!(first.to_bytes(), "abcdef");

        assert!(retry.is_replayable());
        let mut retry = retry;
        assert_eq!(next_data(&mut retry).await, "abc");
        assert_eq!(next_data(&mut retry).await, "def");
        assert!(!retry.is_end_stream(), "the trailers are still to come");
        let frame = retry.frame().await.unwrap().unwrap();
        assert_eq!(frame.trailers_ref(), Some(&trailers));
        assert!(retry.is_end_stream());
        assert!(retry.frame().await.is_none());

        let second = retry.clone().collect().await.unwrap();
        assert_eq!(second.trailers(), Some(&trailers));
        assert_eq!(second.to_bytes(), "abcdef");
    }

    #[tokio::test]
    async fn an_error_from_the_original_reaches_its_reader_and_ends_replay() {
        let (tx, mut body) = channel(1024);
        let retry = body.clone();
        send(&tx, b"abc").await;
        tx.send(Err("upload interrupted".into())).await.unwrap();

        assert_eq!(next_data(&mut body).await, "abc");
        assert!(body.is_replayable());
        let error = body.frame().await.unwrap().unwrap_err();
        assert_eq!(error.to_string(), "upload interrupted");
        assert!(!body.is_replayable());
        // Polling again does not reach the failed original.
        let again = within(body.frame()).await.unwrap().unwrap_err();
        assert_eq!(
            again.downcast_ref::<ReplayError>(),
            Some(&ReplayError::BodyFailed)
        );

        let mut retry = retry;
        let error = within(retry.frame()).await.unwrap().unwrap_err();
        assert_eq!(
            error.downcast_ref::<ReplayError>(),
            Some(&ReplayError::BodyFailed)
        );
        assert!(!retry.is_end_stream());
    }

    #[tokio::test]
    async fn an_empty_body_ends_at_once_on_every_pass() {
        let body = ReplayBody::new(Empty::<Bytes>::new(), 0);
        let retry = body.clone();
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(body.collect().await.unwrap().to_bytes().is_empty());
        assert!(retry.is_replayable());
        assert!(retry.is_end_stream());
        assert_eq!(retry.size_hint().exact(), Some(0));
        assert!(retry.collect().await.unwrap().to_bytes().is_empty());

        // A stream that turns out empty only when polled.
        let (tx, body) = channel(0);
        drop(tx);
        let retry = body.clone();
        assert!(!body.is_end_stream());
        assert!(body.collect().await.unwrap().to_bytes().is_empty());
        assert!(retry.is_replayable());
        assert!(retry.is_end_stream());
        assert_eq!(retry.size_hint().exact(), Some(0));
        assert!(retry.collect().await.unwrap().to_bytes().is_empty());
    }

    /// A waker that records that it was woken.
    #[derive(Default)]
    struct Flag(std::sync::atomic::AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl Flag {
        fn woken(&self) -> bool {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn a_handle_is_woken_even_when_another_polled_the_original_last() {
        let (tx, body) = channel(1024);
        let mut waiting = body.clone();
        let mut abandoned = body;

        // The retry polls first and waits; then the first attempt polls
        // (the original now holds that attempt's wake-up) and is dropped.
        let flag = Arc::new(Flag::default());
        let waker = Waker::from(Arc::clone(&flag));
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut waiting).poll_frame(&mut cx).is_pending());
        let other = Waker::from(Arc::new(Flag::default()));
        let mut other_cx = Context::from_waker(&other);
        assert!(
            Pin::new(&mut abandoned)
                .poll_frame(&mut other_cx)
                .is_pending()
        );
        drop(abandoned);

        send(&tx, b"abc").await;
        assert!(flag.woken(), "the waiting handle must be woken");
        match Pin::new(&mut waiting).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => assert_eq!(frame.into_data().unwrap(), "abc"),
            other => panic!("expected the data frame, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn handles_waiting_on_the_original_together_are_all_woken() {
        let parts = chunks(20, 16);
        let expected = parts.concat();
        let (tx, body) = channel(4096);
        let a = tokio::spawn(body.clone().collect());
        let b = tokio::spawn(body.clone().collect());
        let c = tokio::spawn(body.collect());
        for part in &parts {
            tokio::time::sleep(Duration::from_millis(1)).await;
            send(&tx, part).await;
        }
        drop(tx);
        for handle in [a, b, c] {
            let collected = tokio::time::timeout(Duration::from_secs(5), handle)
                .await
                .expect("no lost wake-up")
                .unwrap()
                .unwrap()
                .to_bytes();
            assert_eq!(collected, expected);
        }
    }

    #[tokio::test]
    async fn a_streamed_body_and_its_clone_reach_a_real_server_intact() {
        use axum::{Router, routing::post};
        use hyper_util::{client::legacy::Client, rt::TokioExecutor};

        async fn digest(body: Bytes) -> String {
            format!("{} {:x}", body.len(), checksum(&body))
        }

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", post(digest));
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let parts = chunks(64, 1000);
        let expected = parts.concat();
        let expected = format!("{} {:x}", expected.len(), checksum(&expected));
        let (tx, body) = channel(128 * 1024);
        let retry = body.clone();
        let producer = tokio::spawn(async move {
            for part in parts {
                send(&tx, &part).await;
                tokio::task::yield_now().await;
            }
        });

        let client = Client::builder(TokioExecutor::new()).build_http();
        let uri = format!("http://{addr}/");
        for body in [body, retry] {
            let request = http::Request::post(&uri).body(body).unwrap();
            let response = client.request(request).await.unwrap();
            assert_eq!(response.status(), http::StatusCode::OK);
            let answer = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(answer, expected);
        }
        producer.await.unwrap();
        server.abort();
    }
}
