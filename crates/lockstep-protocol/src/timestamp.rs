//! Times as the system writes them: Unix milliseconds where they are stored, RFC 3339 in UTC
//! where a person or another program reads them. One definition of each conversion, used by the
//! server, the client library, the CLI and the desktop shell.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Milliseconds since the Unix epoch, as times are stored (database rows, the outbox).
pub fn to_millis(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The inverse of [`to_millis`]; a value outside what [`OffsetDateTime`] holds reads as the
/// epoch.
pub fn from_millis(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// `t` in RFC 3339 (`2026-12-06T05:19:58.123Z` for a UTC time).
///
/// A time RFC 3339 cannot write (a five-digit year, an offset with seconds; no clock of ours
/// produces one) is written as its Unix seconds rather than failing.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// A stored time (Unix milliseconds) in RFC 3339, UTC.
pub fn rfc3339_millis(ms: i64) -> String {
    rfc3339(from_millis(ms))
}

/// Reads an RFC 3339 time, if `text` is one.
pub fn parse_rfc3339(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_milliseconds_read_back_as_written() {
        for ms in [0, 1, 1_765_000_000_123, -86_400_000] {
            assert_eq!(to_millis(from_millis(ms)), ms);
        }
    }

    #[test]
    fn rfc3339_is_utc_with_milliseconds_and_parses_back() {
        let text = rfc3339_millis(1_765_000_000_123);
        assert_eq!(text, "2025-12-06T05:46:40.123Z");
        assert_eq!(parse_rfc3339(&text).map(to_millis), Some(1_765_000_000_123));
    }

    #[test]
    fn out_of_range_values_do_not_fail() {
        assert_eq!(from_millis(i64::MAX), OffsetDateTime::UNIX_EPOCH);
        let odd_offset = time::UtcOffset::from_hms(1, 0, 30).expect("an offset");
        let t = OffsetDateTime::from_unix_timestamp(60).expect("a time");
        assert_eq!(rfc3339(t.to_offset(odd_offset)), "60");
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
