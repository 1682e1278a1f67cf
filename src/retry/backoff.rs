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
//! [`parse_retry_after`] reads both, and the retry layer waits at least
//! that long.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;

use crate::balance::PickRng;

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
/// use tower_lb::balance::PickRng;
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
/// - an HTTP-date, preferably IMF-fixdate (`Sun, 06 Nov 1994 08:49:37
///   GMT`), or one of the obsolete forms RFC 850 (`Sunday, 06-Nov-94
///   08:49:37 GMT`, a two-digit year more than 50 years ahead of `now`
///   being taken as the past century) and asctime (`Sun Nov  6 08:49:37
///   1994`). Names are case-sensitive, as in the RFC; the day of the week
///   must be a valid name but need not match the date (RFC 9110 §5.6.7
///   asks recipients to be robust). A date in the past gives
///   `Some(Duration::ZERO)`; one more than [`MAX_RETRY_AFTER`] ahead gives
///   that.
///
/// Anything else (a sign, a fraction, an impossible date such as 31
/// February or 24:00:00, trailing text) gives `None`, never a panic.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::HeaderValue;
/// use tower_lb::retry::parse_retry_after;
///
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
/// let after = |v| parse_retry_after(&HeaderValue::from_static(v), now);
/// assert_eq!(after("120"), Some(Duration::from_secs(120)));
/// assert_eq!(after("Sun, 06 Nov 1994 08:50:37 GMT"), Some(Duration::from_secs(60)));
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
    let at = http_date(s, now)?;
    let magnitude = Duration::from_secs(at.unsigned_abs());
    let target = if at >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    };
    Some(match target {
        Some(target) => target
            .duration_since(now)
            .map_or(Duration::ZERO, |d| d.min(MAX_RETRY_AFTER)),
        // Beyond what `SystemTime` represents on this platform.
        None if at >= 0 => MAX_RETRY_AFTER,
        None => Duration::ZERO,
    })
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

const SHORT_DAYS: [&[u8]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
const LONG_DAYS: [&[u8]; 7] = [
    b"Monday",
    b"Tuesday",
    b"Wednesday",
    b"Thursday",
    b"Friday",
    b"Saturday",
    b"Sunday",
];
const MONTHS: [&[u8]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// An HTTP-date in any of its three forms, as Unix seconds.
fn http_date(s: &[u8], now: SystemTime) -> Option<i64> {
    imf_fixdate(s)
        .or_else(|| rfc850_date(s, now))
        .or_else(|| asctime_date(s))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`
fn imf_fixdate(s: &[u8]) -> Option<i64> {
    let mut c = Cursor(s);
    c.one_of(&SHORT_DAYS)?;
    c.tag(b", ")?;
    let day = c.digits(2)?;
    c.tag(b" ")?;
    let month = c.one_of(&MONTHS)? + 1;
    c.tag(b" ")?;
    let year = c.digits(4)?;
    c.tag(b" ")?;
    let time = c.time()?;
    c.tag(b" GMT")?;
    c.end()?;
    unix_seconds(i64::from(year), month, day, time)
}

/// `Sunday, 06-Nov-94 08:49:37 GMT`
fn rfc850_date(s: &[u8], now: SystemTime) -> Option<i64> {
    let mut c = Cursor(s);
    c.one_of(&LONG_DAYS)?;
    c.tag(b", ")?;
    let day = c.digits(2)?;
    c.tag(b"-")?;
    let month = c.one_of(&MONTHS)? + 1;
    c.tag(b"-")?;
    let yy = i64::from(c.digits(2)?);
    c.tag(b" ")?;
    let time = c.time()?;
    c.tag(b" GMT")?;
    c.end()?;
    // RFC 9110 §5.6.7: a year more than 50 years in the future is the
    // most recent past year with the same last two digits.
    let current = year_of(unix_now(now).div_euclid(86_400));
    let mut year = current - current.rem_euclid(100) + yy;
    if year > current + 50 {
        year -= 100;
    }
    unix_seconds(year, month, day, time)
}

/// `Sun Nov  6 08:49:37 1994`
fn asctime_date(s: &[u8]) -> Option<i64> {
    let mut c = Cursor(s);
    c.one_of(&SHORT_DAYS)?;
    c.tag(b" ")?;
    let month = c.one_of(&MONTHS)? + 1;
    c.tag(b" ")?;
    let day = if c.tag(b" ").is_some() {
        c.digits(1)?
    } else {
        c.digits(2)?
    };
    c.tag(b" ")?;
    let time = c.time()?;
    c.tag(b" ")?;
    let year = c.digits(4)?;
    c.end()?;
    unix_seconds(i64::from(year), month, day, time)
}

/// A checked civil date and time (UTC) as Unix seconds. A leap second
/// (`:60`) is accepted and lands on the next minute.
fn unix_seconds(
    year: i64,
    month: usize,
    day: u32,
    (hour, minute, second): (u32, u32, u32),
) -> Option<i64> {
    let month = u32::try_from(month).ok()?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let time = i64::from(hour * 3600 + minute * 60 + second);
    Some(days_from_civil(year, month, day) * 86_400 + time)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`, <https://howardhinnant.github.io/date_algorithms.html>).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let mp = i64::from((month + 9) % 12); // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The year containing day `days` since 1970-01-01 (the year part of
/// Hinnant's `civil_from_days`).
fn year_of(days: i64) -> i64 {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March
    let mp = (5 * doy + 2) / 153; // March = 0
    era * 400 + yoe + i64::from(mp >= 10) // January and February
}

/// `now` as whole Unix seconds (negative before 1970).
fn unix_now(now: SystemTime) -> i64 {
    match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// What is left of the input being parsed.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn tag(&mut self, tag: &[u8]) -> Option<()> {
        self.0 = self.0.strip_prefix(tag)?;
        Some(())
    }

    /// The index of the name the input starts with.
    fn one_of(&mut self, names: &[&[u8]]) -> Option<usize> {
        let i = names.iter().position(|n| self.0.starts_with(n))?;
        self.0 = &self.0[names[i].len()..];
        Some(i)
    }

    /// Exactly `n` ASCII digits.
    fn digits(&mut self, n: usize) -> Option<u32> {
        let (digits, rest) = self.0.split_at_checked(n)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.0 = rest;
        Some(
            digits
                .iter()
                .fold(0, |acc, &d| acc * 10 + u32::from(d - b'0')),
        )
    }

    /// `HH:MM:SS`, unchecked.
    fn time(&mut self) -> Option<(u32, u32, u32)> {
        let hour = self.digits(2)?;
        self.tag(b":")?;
        let minute = self.digits(2)?;
        self.tag(b":")?;
        let second = self.digits(2)?;
        Some((hour, minute, second))
    }

    fn end(&self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // Far in the past, even before 1970.
        assert_eq!(
            after("Mon, 01 Jan 0001 00:00:00 GMT", at(date)),
            Some(Duration::ZERO)
        );
        // A wrong day of the week is tolerated.
        assert_eq!(
            after("Mon, 06 Nov 1994 08:49:37 GMT", at(date - 1)),
            Some(Duration::from_secs(1))
        );
        // With `now` before 1970.
        assert_eq!(
            after(
                "Thu, 01 Jan 1970 00:00:00 GMT",
                UNIX_EPOCH - Duration::from_secs(5)
            ),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn known_dates_convert_exactly() {
        let now = at(1_700_000_000); // 2023-11-14
        let unix = |s: &str| http_date(s.as_bytes(), now);
        assert_eq!(unix("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(unix("Sunday, 06-Nov-94 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(unix("Sun Nov  6 08:49:37 1994"), Some(784_111_777));
        assert_eq!(unix("Sun Nov 06 08:49:37 1994"), Some(784_111_777));
        assert_eq!(unix("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(unix("Wed, 31 Dec 1969 23:59:59 GMT"), Some(-1));
        assert_eq!(unix("Tue, 14 Nov 2023 22:13:20 GMT"), Some(1_700_000_000));
        assert_eq!(unix("Thu, 29 Feb 2024 00:00:00 GMT"), Some(1_709_164_800));
        assert_eq!(unix("Tue, 29 Feb 2000 00:00:00 GMT"), Some(951_782_400));
        assert_eq!(unix("Fri, 31 Dec 9999 23:59:59 GMT"), Some(253_402_300_799));
        // A leap second lands on the next minute.
        assert_eq!(unix("Sat, 31 Dec 2016 23:59:60 GMT"), Some(1_483_228_800));
        for days in [-800_000, -1, 0, 59, 60, 11_016, 19_675, 2_932_896] {
            let year = year_of(days);
            let jan1 = days_from_civil(year, 1, 1);
            assert!(
                jan1 <= days && days < days_from_civil(year + 1, 1, 1),
                "{days}"
            );
        }
        assert_eq!(year_of(-1), 1969);
        assert_eq!(year_of(0), 1970);
        assert_eq!(year_of(19_675), 2023);
    }

    /// RFC 850 two-digit years: within 50 years ahead of `now`, else the
    /// previous century.
    #[test]
    fn two_digit_years_pivot_fifty_years_ahead() {
        let now = at(1_767_225_600); // 2026-01-01
        let year = |yy: &str| {
            let s = format!("Monday, 01-Jan-{yy} 00:00:00 GMT");
            http_date(s.as_bytes(), now).map(|t| year_of(t.div_euclid(86_400)))
        };
        assert_eq!(year("94"), Some(1994));
        assert_eq!(year("26"), Some(2026));
        assert_eq!(year("30"), Some(2030));
        assert_eq!(year("76"), Some(2076));
        assert_eq!(year("77"), Some(1977));
        assert_eq!(year("00"), Some(2000));
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
