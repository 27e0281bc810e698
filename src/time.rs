//! Timestamps as the pipeline keeps them: `i64` nanoseconds since the Unix epoch (UTC), and
//! their fixed-width text form `2026-03-28T14:30:00.123456789Z` used in the store, which sorts
//! the same as the numbers and reads well in plain SQL.
//!
//! Parsing and formatting are on the hot path (every Docker entry carries an RFC3339Nano time),
//! so the common shapes are handled by hand and anything else falls back to chrono.

use chrono::{DateTime, NaiveDateTime};

const NS: i64 = 1_000_000_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn digits(b: &[u8]) -> Option<u32> {
    let mut v: u32 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u32;
    }
    Some(v)
}

/// Parses `YYYY-MM-DD?HH:MM:SS` (any single separator at position 10) into seconds since the
/// epoch, treating it as UTC.
fn parse_date_time_prefix(b: &[u8]) -> Option<i64> {
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let y = digits(&b[0..4])? as i64;
    let mo = digits(&b[5..7])?;
    let d = digits(&b[8..10])?;
    let h = digits(&b[11..13])? as i64;
    let mi = digits(&b[14..16])? as i64;
    let s = digits(&b[17..19])? as i64;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s)
}

/// Parses an RFC3339 time with 0 to 9 fractional digits and a `Z` or `±HH:MM` offset, the way
/// Docker's json-file driver writes it (Go's `time.RFC3339Nano` trims trailing zeros).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() >= 20
        && b[10] == b'T'
        && let Some(secs) = parse_date_time_prefix(b)
    {
        let mut i = 19;
        let mut frac: i64 = 0;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let n = i - start;
            if n == 0 || n > 9 {
                return slow_rfc3339(s);
            }
            frac = digits(&b[start..i])? as i64 * 10i64.pow(9 - n as u32);
        }
        if i + 1 == b.len() && (b[i] == b'Z' || b[i] == b'z') {
            return secs.checked_mul(NS)?.checked_add(frac);
        }
    }
    slow_rfc3339(s)
}

fn slow_rfc3339(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
}

/// Parses the timestamps applications write in their own lines: RFC3339 with or without an
/// offset, `YYYY-MM-DD HH:MM:SS[,mmm|.fff]` (Python logging's `asctime`). Times without an
/// offset are taken as UTC, the default inside containers.
pub fn parse_loose(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Some(t) = parse_rfc3339(s) {
        return Some(t);
    }
    let b = s.as_bytes();
    let secs = parse_date_time_prefix(b)?;
    let rest = &b[19..];
    if rest.is_empty() {
        return secs.checked_mul(NS);
    }
    if (rest[0] == b',' || rest[0] == b'.') && rest.len() > 1 && rest.len() <= 10 {
        let n = rest.len() - 1;
        let f = digits(&rest[1..])? as i64 * 10i64.pow(9 - n as u32);
        return secs.checked_mul(NS)?.checked_add(f);
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .and_then(|t| t.and_utc().timestamp_nanos_opt())
}

/// Formats as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`: fixed width, so text order is time order.
pub fn format_ns(ts: i64) -> String {
    let mut out = String::with_capacity(30);
    write_ns(&mut out, ts);
    out
}

/// Appends the [`format_ns`] form of `ts` to `out`.
pub fn write_ns(out: &mut String, ts: i64) {
    let secs = ts.div_euclid(NS);
    let nanos = ts.rem_euclid(NS);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut buf = [0u8; 30];
    let put = |buf: &mut [u8], at: usize, v: i64, w: usize| {
        let mut v = v;
        for k in (0..w).rev() {
            buf[at + k] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(&mut buf, 0, y.clamp(0, 9999), 4);
    buf[4] = b'-';
    put(&mut buf, 5, m as i64, 2);
    buf[7] = b'-';
    put(&mut buf, 8, d as i64, 2);
    buf[10] = b'T';
    put(&mut buf, 11, sod / 3600, 2);
    buf[13] = b':';
    put(&mut buf, 14, sod % 3600 / 60, 2);
    buf[16] = b':';
    put(&mut buf, 17, sod % 60, 2);
    buf[19] = b'.';
    put(&mut buf, 20, nanos, 9);
    buf[29] = b'Z';
    // The buffer holds only ASCII digits and separators.
    out.push_str(std::str::from_utf8(&buf).unwrap_or_default());
}

/// Current time in ns since the epoch.
/// How far ahead of the wall clock a record's time may be and still be taken as the present: a
/// record stamped later (a host clock set ahead, then corrected) is counted as `clock_skew`,
/// does not count as fresh data, and is pruned by when it arrived.
pub const FUTURE_SKEW_NS: i64 = 5 * 60 * 1_000_000_000;

pub fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

/// Parses a retention age such as `30d`, `12h`, `90m`, `45s` into nanoseconds.
pub fn parse_age(s: &str) -> Option<i64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = num.parse().ok()?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    n.checked_mul(mult)?.checked_mul(NS)
}

/// A duration in the config file (`45s`, `5m`, `1h`, `30d`), held in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Age(pub i64);

impl Age {
    pub const fn secs(s: i64) -> Age {
        Age(s * NS)
    }
    pub fn as_duration(self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.0.max(0) as u64)
    }
}

/// Written back as the config would say it: the largest unit that divides it (`90s`, `5m`,
/// `30d`), so that what `config check` prints reads back as the same value.
impl serde::Serialize for Age {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl std::fmt::Display for Age {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ns = self.0;
        for (unit, size) in [
            ("d", 86_400 * NS),
            ("h", 3600 * NS),
            ("m", 60 * NS),
            ("s", NS),
        ] {
            if ns != 0 && ns % size == 0 {
                return write!(f, "{}{unit}", ns / size);
            }
        }
        if ns == 0 {
            return f.write_str("0s");
        }
        write!(f, "{}ms", ns / 1_000_000)
    }
}

impl<'de> serde::Deserialize<'de> for Age {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Age, D::Error> {
        let s = String::deserialize(d)?;
        parse_age(&s).map(Age).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration: expected a number and a unit, e.g. 45s, 5m, 1h, 30d"
            ))
        })
    }
}

/// How long before `now` the RFC 3339 time `ts` was, for people: `12s ago`, `2h10m ago`;
/// `just now` for a time ahead of the clock (skew), `never` when there is none.
pub fn ago(now: i64, ts: Option<&str>) -> String {
    match ts.and_then(parse_rfc3339) {
        None => "never".into(),
        Some(t) if t >= now => "just now".into(),
        Some(t) => format!("{} ago", human_duration(now - t)),
    }
}

/// How long from the RFC 3339 time `ts` to `now`, for people: [`ago`] without its `ago`
/// (`2h10m`): how long an alert has been firing.
pub fn since(now: i64, ts: &str) -> String {
    match parse_rfc3339(ts) {
        None => "never".into(),
        Some(t) if t >= now => "just now".into(),
        Some(t) => human_duration(now - t),
    }
}

/// A duration for people: `3h12m`, `5m`, `40s`.
pub fn human_duration(ns: i64) -> String {
    if ns > 0 && ns < 10 * NS {
        return format!("{:.1}s", ns as f64 / NS as f64);
    }
    let s = ns.max(0) / NS;
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h{m:02}m"),
        (d, h, _) => format!("{d}d{h}h"),
    }
}

/// The wall clock as the async runtime sees it: the wall time at creation plus the runtime's
/// monotonic time since, so tests with paused Tokio time drive it without sleeping.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    wall: i64,
    start: tokio::time::Instant,
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            wall: now_ns(),
            start: tokio::time::Instant::now(),
        }
    }

    /// A clock reading `wall` now.
    pub fn starting_at(wall: i64) -> Self {
        Clock {
            wall,
            start: tokio::time::Instant::now(),
        }
    }

    pub fn now_ns(&self) -> i64 {
        self.wall + self.start.elapsed().as_nanos() as i64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// The keys a service line's time is read from, first found wins (the aliases of
/// `parse::json`'s fast path are the same list).
pub const TIME_KEYS: [&str; 5] = ["timestamp", "time", "@timestamp", "ts", "asctime"];

/// An epoch timestamp given as a number, by magnitude: seconds (zap, Python `time.time()`),
/// milliseconds (JavaScript, pino), microseconds or nanoseconds.
pub fn epoch_number_to_ns(v: f64) -> Option<i64> {
    if !v.is_finite() || v <= 0.0 {
        return None;
    }
    let ns = if v < 1e11 {
        v * 1e9
    } else if v < 1e14 {
        v * 1e6
    } else if v < 1e17 {
        v * 1e3
    } else {
        v
    };
    (ns < i64::MAX as f64).then_some(ns as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_variable_precision() {
        let base = parse_rfc3339("2026-03-28T14:30:00Z").unwrap();
        assert_eq!(base, 1_774_708_200 * NS);
        assert_eq!(
            parse_rfc3339("2026-03-28T14:30:00.1Z").unwrap(),
            base + 100_000_000
        );
        assert_eq!(
            parse_rfc3339("2026-03-28T14:30:00.1234567Z").unwrap(),
            base + 123_456_700
        );
        assert_eq!(
            parse_rfc3339("2026-03-28T14:30:00.123456789Z").unwrap(),
            base + 123_456_789
        );
        assert_eq!(
            parse_rfc3339("2026-03-28T16:30:00.5+02:00").unwrap(),
            base + 500_000_000
        );
        assert_eq!(parse_rfc3339("garbage"), None);
        assert_eq!(parse_rfc3339("2026-13-28T14:30:00Z"), None);
    }

    #[test]
    fn loose_python_asctime() {
        let base = parse_rfc3339("2026-11-29T05:00:48Z").unwrap();
        assert_eq!(
            parse_loose("2026-11-29 05:00:48,263").unwrap(),
            base + 263_000_000
        );
        assert_eq!(parse_loose("2026-11-29 05:00:48").unwrap(), base);
        assert_eq!(parse_loose("2026-11-29T05:00:48").unwrap(), base);
    }

    #[test]
    fn format_round_trips() {
        for s in [
            "2026-03-28T14:30:00.123456789Z",
            "1970-01-01T00:00:00.000000000Z",
            "2000-02-29T23:59:59.999999999Z",
        ] {
            assert_eq!(format_ns(parse_rfc3339(s).unwrap()), s);
        }
    }

    #[test]
    fn ages() {
        assert_eq!(parse_age("30d"), Some(30 * 86_400 * NS));
        assert_eq!(parse_age("10m"), Some(600 * NS));
        assert_eq!(parse_age("10"), None);
        assert_eq!(parse_age("x"), None);
    }
}
