//! Backoff: how long to wait before a retry.
//!
//! Retrying at once, or after the same fixed pause, sends every client
//! that saw a failure back to the backend at the same moment, in waves
//! that keep an overloaded backend overloaded. Exponential backoff spaces
//! the waves out, but clients that failed together still retry together.
//! Marc Brooker's "Exponential Backoff and Jitter" (AWS Architecture Blog,
//! 2015, <https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/>)
//! compares the remedies: "full jitter" — a uniform draw between zero and
//! the exponential bound — makes the fewest calls of the variants it
//! tries, at a completion time close to the best, because the waves
//! dissolve into a steady trickle. [`Backoff`] is full jitter with a cap. Backoff paces retries; it does not limit how many
//! there are: that is the job of the
//! [`RetryBudget`](crate::retry::RetryBudget).
//!
//! A server that knows when it can take the request again says so with
//! `Retry-After` (RFC 9110 §10.2.3), as a number of seconds or as a date;
//! [`parse_retry_after`] reads both (dates with the `httpdate` crate, under
//! the `http` feature), and the retry layer waits at least that long.

use std::time::{Duration, SystemTime};

use http::HeaderValue;

use crate::PickRng;

/// The longest pause [`parse_retry_after`] returns: one day. Larger
/// values, as seconds or as a date, are cut to it, so a typo or a hostile
/// server cannot park a request indefinitely (an overall deadline, if set,
/// gives up sooner anyway).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Exponential backoff with full jitter ("Exponential Backoff and
/// Jitter", AWS Architecture Blog): retry `n` waits a uniformly random time
///
/// ```text
/// delay(n) = uniform [0, min(cap, base × 2^(n-1))]   for retry n ≥ 1
/// ```
///
/// The default has a 25 ms base and a 2 s cap: the bound doubles from
/// 25 ms for the first retry to 1.6 s for the seventh and stays at 2 s
/// from the eighth; on average a retry waits half its bound.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::PickRng;
/// use tower_lb::retry::Backoff;
///
/// let backoff = Backoff::new(Duration::from_millis(25), Duration::from_secs(2));
/// let rng = PickRng::seeded(7);
/// // The third retry waits up to 100 ms, the tenth up to the 2 s cap.
/// assert!(backoff.delay(3, &rng) <= Duration::from_millis(100));
/// assert_eq!(backoff.max_delay(10), Duration::from_secs(2));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
}

impl Backoff {
    /// Backoff whose bound starts at `base` for the first retry, doubles
    /// with each retry and stops growing at `cap`.
    ///
    /// Any values are accepted: a zero `base` means no pause at all, and a
    /// `cap` below `base` makes every bound `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff { base, cap }
    }

    /// The bound for the first retry.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The largest bound.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The largest delay for retry number `retry`: `min(cap, base ×
    /// 2^(retry-1))`. Retry 0 is treated as 1; huge retry numbers saturate
    /// at `cap` instead of overflowing.
    pub fn max_delay(&self, retry: u32) -> Duration {
        let doublings = retry.max(1) - 1;
        let base = self.base.as_nanos();
        let grown = if base == 0 {
            0
        } else if doublings < base.leading_zeros() {
            base << doublings
        } else {
            u128::MAX
        };
        from_nanos(grown.min(self.cap.as_nanos()))
    }

    /// A delay for retry number `retry` (the first retry is 1), drawn
    /// uniformly from `[0, max_delay(retry)]` with nanosecond resolution.
    pub fn delay(&self, retry: u32, rng: &PickRng) -> Duration {
        // floor(u × n / 2^64) is uniform in [0, n) for a uniform 64-bit u.
        // n < 2^95, so the product is split at 64 bits to fit in a u128.
        let n = self.max_delay(retry).as_nanos() + 1;
        let u = u128::from(rng.next_u64());
        let (hi, lo) = (n >> 64, n & u128::from(u64::MAX));
        from_nanos(u * hi + ((u * lo) >> 64))
    }
}

impl Default for Backoff {
    /// A 25 ms base and a 2 s cap.
    fn default() -> Self {
        Self::new(Duration::from_millis(25), Duration::from_secs(2))
    }
}

/// Nanoseconds to a `Duration`; `n` is at most `Duration::MAX` in
/// nanoseconds.
fn from_nanos(n: u128) -> Duration {
    let secs = u64::try_from(n / NANOS_PER_SEC).unwrap_or(u64::MAX);
    Duration::new(secs, (n % NANOS_PER_SEC) as u32)
}

/// The pause a `Retry-After` header value asks for, seen at `now`.
///
/// Accepts what RFC 9110 allows, surrounded by optional spaces or tabs:
///
/// - delay-seconds, a non-negative decimal integer (`120`); values above
///   [`MAX_RETRY_AFTER`], however many digits, become that;
/// - with the `http` feature, an HTTP-date in any of its three forms, as
///   the `httpdate` crate reads them: IMF-fixdate (`Sun, 06 Nov 1994
///   08:49:37 GMT`), RFC 850 (`Sunday, 06-Nov-94 08:49:37 GMT`, two-digit
///   years 00–69 taken as 2000–2069 and 70–99 as 1970–1999) and asctime
///   (`Sun Nov  6 08:49:37 1994`). Names are case-sensitive, as in the
///   RFC, and the day of the week must match the date. Dates from 1970 to
///   9999 are read; a date in the past gives `Some(Duration::ZERO)`, one
///   more than [`MAX_RETRY_AFTER`] ahead gives that.
///
/// Anything else (a sign, a fraction, an impossible date such as 31
/// February, 24:00:00 or a leap second, a date before 1970, trailing
/// text; without the `http` feature, any date) gives `None`, never a
/// panic.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::HeaderValue;
/// use tower_lb::retry::parse_retry_after;
///
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
/// let after = |v| parse_retry_after(&HeaderValue::from_static(v), now);
/// assert_eq!(after("120"), Some(Duration::from_secs(120)));
/// # #[cfg(feature = "http")]
/// assert_eq!(after("Sun, 06 Nov 1994 08:50:37 GMT"), Some(Duration::from_secs(60)));
/// # #[cfg(feature = "http")]
/// assert_eq!(after("Sun, 06 Nov 1994 08:00:00 GMT"), Some(Duration::ZERO));
/// assert_eq!(after("soon"), None);
/// ```
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let s = trim_ows(value.as_bytes());
    if s.is_empty() {
        return None;
    }
    if s.iter().all(u8::is_ascii_digit) {
        let secs = s.iter().fold(0u64, |acc, &d| {
            acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
        });
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    http_date(s, now)
}

/// The pause until the HTTP-date `s`, seen at `now`.
#[cfg(feature = "http")]
fn http_date(s: &[u8], now: SystemTime) -> Option<Duration> {
    let at = httpdate::parse_http_date(std::str::from_utf8(s).ok()?).ok()?;
    Some(
        at.duration_since(now)
            .map_or(Duration::ZERO, |d| d.min(MAX_RETRY_AFTER)),
    )
}

/// Dates need the `http` feature.
#[cfg(not(feature = "http"))]
fn http_date(_: &[u8], _: SystemTime) -> Option<Duration> {
    None
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::UNIX_EPOCH;

    const MS: Duration = Duration::from_millis(1);

    fn at(unix: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(unix)
    }

    fn after(value: &'static str, now: SystemTime) -> Option<Duration> {
        parse_retry_after(&HeaderValue::from_static(value), now)
    }

    /// Seed 7, 10 000 draws per retry 1..=10 with a 25 ms base and a
    /// 2 s cap: every draw lies in `[0, min(cap, base·2^(n-1))]`, some reach
    /// 90 % of the bound and some fall below 10 % of it (full jitter, not
    /// "equal jitter"), and the mean is within 3 % of half the bound (the
    /// standard error of the mean is 0.58 % of it, so that is ~5 σ).
    #[test]
    fn delay_is_full_jitter_within_the_exponential_bound() {
        let backoff = Backoff::default();
        let rng = PickRng::seeded(7);
        for retry in 1..=10u32 {
            let bound = (25 * MS * 2u32.pow(retry - 1)).min(Duration::from_secs(2));
            assert_eq!(backoff.max_delay(retry), bound, "retry {retry}");
            let draws: Vec<Duration> = (0..10_000).map(|_| backoff.delay(retry, &rng)).collect();
            let max = draws.iter().max().copied().unwrap_or_default();
            let min = draws.iter().min().copied().unwrap_or_default();
            assert!(max <= bound, "retry {retry}: {max:?} > {bound:?}");
            assert!(max >= bound.mul_f64(0.9), "retry {retry}: max {max:?}");
            assert!(min <= bound.mul_f64(0.1), "retry {retry}: min {min:?}");
            let mean = draws.iter().sum::<Duration>() / 10_000;
            let half = bound / 2;
            let error = mean.abs_diff(half).as_secs_f64() / half.as_secs_f64();
            assert!(
                error < 0.03,
                "retry {retry}: mean {mean:?}, expected {half:?}"
            );
        }
    }

    #[test]
    fn retry_zero_is_treated_as_one() {
        let backoff = Backoff::default();
        assert_eq!(backoff.max_delay(0), 25 * MS);
        let rng = PickRng::seeded(7);
        assert!((0..1000).all(|_| backoff.delay(0, &rng) <= 25 * MS));
    }

    /// Huge retry numbers and extreme durations saturate at the cap, with
    /// no overflow or panic.
    #[test]
    fn huge_retry_numbers_saturate_at_the_cap() {
        let rng = PickRng::seeded(7);
        let backoff = Backoff::default();
        for retry in [33, 64, 65, 95, 96, 128, 129, u32::MAX - 1, u32::MAX] {
            assert_eq!(backoff.max_delay(retry), Duration::from_secs(2), "{retry}");
            assert!(backoff.delay(retry, &rng) <= Duration::from_secs(2));
        }
        let max = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(max.max_delay(u32::MAX), Duration::MAX);
        assert_eq!(max.max_delay(1), Duration::MAX);
        let _ = max.delay(u32::MAX, &rng);
        let tiny = Backoff::new(Duration::from_nanos(1), Duration::MAX);
        assert_eq!(tiny.max_delay(65), from_nanos(1 << 64));
        assert_eq!(tiny.max_delay(u32::MAX), Duration::MAX);

        let zero = Backoff::new(Duration::ZERO, Duration::from_secs(1));
        assert_eq!(zero.delay(u32::MAX, &rng), Duration::ZERO);
        let low_cap = Backoff::new(Duration::from_secs(1), 10 * MS);
        assert_eq!(low_cap.max_delay(1), 10 * MS);
        assert!((0..1000).all(|_| low_cap.delay(1, &rng) <= 10 * MS));
    }

    /// Bounds above 2^64 ns (about 584 years) still draw uniformly: the
    /// mean of 10 000 draws is within 3 % of half the bound.
    #[test]
    fn bounds_beyond_64_bits_of_nanoseconds_draw_uniformly() {
        let rng = PickRng::seeded(7);
        let backoff = Backoff::new(Duration::from_secs(1 << 40), Duration::MAX);
        let bound = backoff.max_delay(20);
        assert_eq!(bound, Duration::from_secs(1 << 59));
        let draws: Vec<Duration> = (0..10_000).map(|_| backoff.delay(20, &rng)).collect();
        assert!(draws.iter().all(|d| *d <= bound));
        let mean = draws.iter().map(Duration::as_secs_f64).sum::<f64>() / 10_000.0;
        let half = bound.as_secs_f64() / 2.0;
        assert!((mean / half - 1.0).abs() < 0.03, "{mean} vs {half}");
    }

    #[test]
    fn default_is_25ms_base_2s_cap() {
        let backoff = Backoff::default();
        assert_eq!(
            (backoff.base(), backoff.cap()),
            (25 * MS, Duration::from_secs(2))
        );
        assert_eq!(backoff.max_delay(7), 1600 * MS);
        assert_eq!(backoff.max_delay(8), Duration::from_secs(2));
    }

    #[test]
    fn retry_after_delta_seconds() {
        let now = at(1_000_000);
        assert_eq!(after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(after("0", now), Some(Duration::ZERO));
        assert_eq!(after("007", now), Some(Duration::from_secs(7)));
        assert_eq!(after(" \t5 ", now), Some(Duration::from_secs(5)));
        assert_eq!(after("86400", now), Some(MAX_RETRY_AFTER));
        assert_eq!(after("86401", now), Some(MAX_RETRY_AFTER));
        assert_eq!(after("18446744073709551615", now), Some(MAX_RETRY_AFTER));
        assert_eq!(
            after("99999999999999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[cfg(feature = "http")]
    #[test]
    fn retry_after_http_dates() {
        let date = 784_111_777;
        for form in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(
                after(form, at(date - 30)),
                Some(Duration::from_secs(30)),
                "{form}"
            );
            assert_eq!(after(form, at(date)), Some(Duration::ZERO), "{form}");
            assert_eq!(after(form, at(date + 3600)), Some(Duration::ZERO), "{form}");
        }
        // Sub-second `now`: the remaining fraction counts.
        let now = at(date - 1) + 250 * MS;
        assert_eq!(after("Sun, 06 Nov 1994 08:49:37 GMT", now), Some(750 * MS));
        // Far ahead: capped.
        assert_eq!(
            after("Fri, 31 Dec 9999 23:59:59 GMT", at(date)),
            Some(MAX_RETRY_AFTER)
        );
        // Far in the past.
        assert_eq!(
            after("Thu, 01 Jan 1970 00:00:00 GMT", at(date)),
            Some(Duration::ZERO)
        );
        // Before 1970 httpdate reads no date: no pause asked for either.
        assert_eq!(after("Mon, 01 Jan 0001 00:00:00 GMT", at(date)), None);
        // A day of the week that does not match the date is refused.
        assert_eq!(after("Mon, 06 Nov 1994 08:49:37 GMT", at(date - 1)), None);
        // With `now` before 1970.
        assert_eq!(
            after(
                "Thu, 01 Jan 1970 00:00:00 GMT",
                UNIX_EPOCH - Duration::from_secs(5)
            ),
            Some(Duration::from_secs(5))
        );
    }

    /// Whether `value` names Unix second `unix`: one second before it,
    /// one second is left, and at it none.
    #[cfg(feature = "http")]
    fn names(value: &str, unix: u64) -> bool {
        let value = HeaderValue::from_str(value).unwrap();
        let second_before = at(unix) - Duration::from_secs(1);
        parse_retry_after(&value, second_before) == Some(Duration::from_secs(1))
            && parse_retry_after(&value, at(unix)) == Some(Duration::ZERO)
    }

    #[cfg(feature = "http")]
    #[test]
    fn known_dates_convert_exactly() {
        for (date, unix) in [
            ("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_777),
            ("Sunday, 06-Nov-94 08:49:37 GMT", 784_111_777),
            ("Sun Nov  6 08:49:37 1994", 784_111_777),
            ("Sun Nov 06 08:49:37 1994", 784_111_777),
            ("Thu, 01 Jan 1970 00:00:00 GMT", 0),
            ("Tue, 14 Nov 2023 22:13:20 GMT", 1_700_000_000),
            ("Thu, 29 Feb 2024 00:00:00 GMT", 1_709_164_800),
            ("Tue, 29 Feb 2000 00:00:00 GMT", 951_782_400),
            ("Fri, 31 Dec 9999 23:59:59 GMT", 253_402_300_799),
        ] {
            assert!(names(date, unix), "{date}");
        }
        let now = at(1_700_000_000);
        // Before 1970, and leap seconds, are not read.
        assert_eq!(after("Wed, 31 Dec 1969 23:59:59 GMT", now), None);
        assert_eq!(after("Sat, 31 Dec 2016 23:59:60 GMT", now), None);
    }

    /// RFC 850 two-digit years, as httpdate reads them: 00–69 are
    /// 2000–2069, 70–99 are 1970–1999 (RFC 9110 §5.6.7 would instead take
    /// a year more than 50 years ahead as the previous century).
    #[cfg(feature = "http")]
    #[test]
    fn two_digit_years_are_1970_to_2069() {
        for (date, unix) in [
            ("Saturday, 01-Jan-94 00:00:00 GMT", 757_382_400),
            ("Thursday, 01-Jan-26 00:00:00 GMT", 1_767_225_600),
            ("Tuesday, 01-Jan-30 00:00:00 GMT", 1_893_456_000),
            ("Tuesday, 01-Jan-69 00:00:00 GMT", 3_124_224_000),
            ("Thursday, 01-Jan-70 00:00:00 GMT", 0),
            ("Thursday, 01-Jan-76 00:00:00 GMT", 189_302_400),
            ("Saturday, 01-Jan-77 00:00:00 GMT", 220_924_800),
            ("Saturday, 01-Jan-00 00:00:00 GMT", 946_684_800),
        ] {
            assert!(names(date, unix), "{date}");
        }
    }

    #[test]
    fn retry_after_rejects_malformed() {
        let now = at(784_111_777);
        for bad in [
            "",
            "   ",
            "-5",
            "+5",
            "1.5",
            "1e3",
            "12 s",
            "0x10",
            "soon",
            "Sun, 06 Nov 1994 08:49:37",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Nov 1994 08:49:37 gmt",
            "sun, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06 nov 1994 08:49:37 GMT",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 94 08:49:37 GMT",
            "Sun, 06 Nov 1994 8:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT x",
            "Sun,  06 Nov 1994 08:49:37 GMT",
            "Sun, 00 Nov 1994 08:49:37 GMT",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Sun, 29 Feb 2023 08:49:37 GMT",
            "Sun, 29 Feb 1900 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:60:00 GMT",
            "Sun, 06 Nov 1994 08:49:61 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Xyz, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08-49-37 GMT",
            "Sun, +6 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-1994 08:49:37 GMT",
            "Sun, 06-Nov-94 08:49:37 GMT",
            "Sun Nov 6 08:49:37 1994",
            "Sun Nov  6 08:49:37 1994 GMT",
            "Sun Nov  6 08:49:37 94",
        ] {
            assert_eq!(after(bad, now), None, "{bad:?}");
        }
        let non_ascii = HeaderValue::from_bytes(b"\xff12").unwrap();
        assert_eq!(parse_retry_after(&non_ascii, now), None);
    }

    /// Every prefix, and every single-byte change, of valid values parses
    /// to something or `None` without panicking; proper prefixes of dates
    /// are rejected.
    #[test]
    fn prefixes_and_mutations_never_panic() {
        let now = at(784_111_777);
        let rng = PickRng::seeded(7);
        for valid in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            let bytes = valid.as_bytes();
            for len in 0..bytes.len() {
                let prefix = &bytes[..len];
                if let Ok(v) = HeaderValue::from_bytes(prefix) {
                    if !prefix.iter().all(u8::is_ascii_digit) {
                        assert_eq!(parse_retry_after(&v, now), None, "{prefix:?}");
                    }
                }
            }
            for i in 0..bytes.len() {
                for _ in 0..50 {
                    let mut mutated = bytes.to_vec();
                    mutated[i] = (rng.next_u64() & 0xff) as u8;
                    if let Ok(v) = HeaderValue::from_bytes(&mutated) {
                        let _ = parse_retry_after(&v, now);
                    }
                }
            }
        }
    }
}
