//! Timestamps: UTC milliseconds, written as ISO 8601 with millisecond precision.

use chrono::{DateTime, NaiveDate, SecondsFormat, TimeZone, Utc};

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

pub fn now_millis() -> Millis {
    Utc::now().timestamp_millis()
}

/// `2024-01-15T14:30:45.123Z`.
pub fn format_millis(millis: Millis) -> String {
    match Utc.timestamp_millis_opt(millis).single() {
        Some(time) => time.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => String::from("invalid-time"),
    }
}

/// Reads a time given in a query: an RFC 3339 timestamp or a date (`2024-01-15`, midnight UTC).
/// `end_of_day` moves a bare date to the last millisecond of that day, for inclusive `end` bounds.
pub fn parse_query_time(text: &str, end_of_day: bool) -> Result<Millis, String> {
    let text = text.trim();
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc).timestamp_millis());
    }
    // Other ISO 8601 forms people type: minutes without seconds, the basic format, and no
    // offset at all (an HTML `datetime-local` field), which is read as UTC.
    for format in ["%Y-%m-%dT%H:%M%#z", "%Y%m%dT%H%M%S%#z", "%Y%m%dT%H%M%#z"] {
        if let Ok(time) = DateTime::parse_from_str(&text.replace(['Z', 'z'], "+00:00"), format) {
            return Ok(time.with_timezone(&Utc).timestamp_millis());
        }
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y%m%dT%H%M%S"]
    {
        if let Ok(time) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Ok(time.and_utc().timestamp_millis());
        }
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let start = date.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp_millis());
        if let Some(start) = start {
            return Ok(if end_of_day { start + 86_400_000 - 1 } else { start });
        }
    }
    Err(format!("invalid time {text:?}: use an ISO 8601 timestamp or a date like 2024-01-15"))
}

/// `2024-01-15`, the date part of a timestamp, for human reasons.
pub fn format_date(millis: Millis) -> String {
    format_millis(millis).chars().take(10).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_milliseconds_and_z() {
        assert_eq!(format_millis(1_705_329_045_123), "2024-01-15T14:30:45.123Z");
        assert_eq!(format_date(1_705_329_045_123), "2024-01-15");
    }

    #[test]
    fn query_times_accept_dates_and_timestamps() {
        assert_eq!(parse_query_time("2024-01-15T14:30:45.123Z", false), Ok(1_705_329_045_123));
        assert_eq!(parse_query_time("2024-01-15", false), Ok(1_705_276_800_000));
        assert_eq!(parse_query_time("2024-01-15", true), Ok(1_705_363_199_999));
        assert!(parse_query_time("yesterday", false).is_err());
        let minute = Ok(1_705_329_000_000);
        for text in [
            "2024-01-15T14:30Z",
            "2024-01-15T14:30",
            "2024-01-15T14:30:00",
            "2024-01-15 14:30",
            "20240115T143000Z",
            "20240115T1430Z",
            "2024-01-15T16:30+02:00",
        ] {
            assert_eq!(parse_query_time(text, false), minute, "{text}");
        }
    }
}
