//! Microsecond timestamps.
//!
//! The log keeps times to the microsecond: both databases store them as a
//! 64-bit integer, exactly, and an idempotent retry with the same protobuf
//! timestamp always compares equal.

use std::fmt;

/// Microseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// 2000-01-01T00:00:00Z: nothing a community did happened before it, so
    /// an earlier time is a caller bug (often seconds sent as milliseconds).
    pub const EARLIEST_ACCEPTED: Timestamp = Timestamp(946_684_800_000_000);

    pub const fn from_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// From protobuf-style seconds and nanoseconds; `None` when out of range.
    /// Nanoseconds are truncated to microseconds.
    pub fn from_parts(seconds: i64, nanos: i32) -> Option<Self> {
        if !(0..1_000_000_000).contains(&nanos) {
            return None;
        }
        seconds
            .checked_mul(1_000_000)
            .and_then(|us| us.checked_add(i64::from(nanos / 1_000)))
            .map(Timestamp)
    }

    /// Protobuf-style (seconds, nanoseconds).
    pub fn to_parts(self) -> (i64, i32) {
        let seconds = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000);
        (seconds, (micros * 1_000) as i32)
    }

    pub fn plus_seconds(self, seconds: i64) -> Self {
        Timestamp(self.0.saturating_add(seconds.saturating_mul(1_000_000)))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (s, n) = self.to_parts();
        write!(f, "{s}.{:06}s", n / 1_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_at_microsecond_precision() {
        let t = Timestamp::from_parts(1_700_000_000, 123_456_789).unwrap();
        assert_eq!(t.as_micros(), 1_700_000_000_123_456);
        assert_eq!(t.to_parts(), (1_700_000_000, 123_456_000));
    }

    #[test]
    fn negative_times_split_into_valid_parts() {
        let t = Timestamp::from_micros(-1);
        assert_eq!(t.to_parts(), (-1, 999_999_000));
    }

    #[test]
    fn out_of_range_parts_are_rejected() {
        assert_eq!(Timestamp::from_parts(0, -1), None);
        assert_eq!(Timestamp::from_parts(0, 1_000_000_000), None);
        assert_eq!(Timestamp::from_parts(i64::MAX, 0), None);
    }
}
