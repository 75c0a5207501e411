//! The `date` and `dob` field types: a calendar date written in any common way, normalised to
//! ISO 8601 `YYYY-MM-DD`.
//!
//! Slash and dash dates with the day and month both under 13 are read month first, as in the US;
//! dotted dates (`15.01.2024`) are read day first, as in Europe. A two-digit year at the end
//! (`01/02/85`, `Jan 2, 85`) is read as most software reads it: 69–99 in the 1900s, 00–68 in
//! the 2000s; a date of birth read so that would lie after the lead arrived is a century
//! earlier (`01/02/30` → 1930).

use std::sync::LazyLock;

use chrono::{DateTime, Datelike, NaiveDate};
use regex::Regex;
use serde_json::Value;

use super::Parsed;

const COMPONENTS: [&str; 3] = ["year", "month", "day"];

/// Longer than any written date, even with a weekday and a time; longer input is not parsed.
const MAX_LENGTH: usize = 64;

/// Dates of birth outside these years are typing mistakes, not people. Fixed bounds, not the
/// clock, keep parsing pure and repeatable.
const DOB_YEARS: std::ops::RangeInclusive<i32> = 1900..=2100;

/// `2024-01-15`, `2024/1/5`, `2024.01.15`, optionally followed by a time (ISO datetimes).
static YEAR_FIRST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^([0-9]{4})([-/.])([0-9]{1,2})([-/.])([0-9]{1,2})(?:[T ][0-9]{1,2}:[0-9]{2}\S*)?$")
        .expect("the year-first pattern is valid")
});

/// `01/15/2024`, `1-5-2024`, `15.01.2024`, optionally followed by a time (`5/17/1980 10:30 AM`,
/// as US forms and spreadsheets write them).
static YEAR_LAST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^([0-9]{1,2})([-/.])([0-9]{1,2})([-/.])([0-9]{4}|[0-9]{2})(?:,?\s+[0-9]{1,2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?(?:\s*[AaPp]\.?[Mm]\.?)?)?$",
    )
    .expect("the year-last pattern is valid")
});

/// `20240115`.
static COMPACT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([0-9]{4})([0-9]{2})([0-9]{2})$").expect("the compact pattern is valid"));

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

const WEEKDAYS: [&str; 7] = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];

pub(super) fn parse_date(trimmed: &str) -> Parsed {
    match to_date(trimmed) {
        Some(date) => describe(date, true),
        None => Parsed::unparsed(trimmed, &COMPONENTS),
    }
}

pub(super) fn parse_dob(trimmed: &str) -> Parsed {
    match to_date(trimmed) {
        Some(date) => describe(date, DOB_YEARS.contains(&date.year())),
        None => Parsed::unparsed(trimmed, &COMPONENTS),
    }
}

/// A birth date after the day the lead arrived (in UTC, with a day of grace: somewhere it is
/// already tomorrow) is invalid: no one is born in the future. One written with a two-digit
/// year is a century earlier instead (`01/02/30` → 1930).
pub(super) fn invalidate_future_dob(field: &mut serde_json::Map<String, Value>, received_at: i64) {
    let Some(arrival) = DateTime::from_timestamp_millis(received_at).map(|time| time.date_naive()) else { return };
    let latest = arrival + chrono::Days::new(1);
    let born = field.get("value").and_then(Value::as_str).and_then(|text| text.parse::<NaiveDate>().ok());
    let Some(born) = born.filter(|born| *born > latest) else { return };
    let raw = field.get("raw").and_then(Value::as_str).unwrap_or_default().trim();
    let earlier = has_two_digit_year(raw).then(|| born.with_year(born.year() - 100)).flatten();
    match earlier.filter(|earlier| *earlier <= latest) {
        Some(earlier) => {
            let described = describe(earlier, DOB_YEARS.contains(&earlier.year())).into_object(raw);
            field.extend(described.into_iter().filter(|(name, _)| name != "raw"));
        }
        None => {
            field.insert("valid".to_owned(), Value::Bool(false));
        }
    }
}

/// Whether a date that parses was written with a two-digit year.
fn has_two_digit_year(raw: &str) -> bool {
    to_date(raw).is_some() && {
        let digits_at_end = raw.bytes().rev().take_while(u8::is_ascii_digit).count();
        let year_last = YEAR_LAST.captures(raw).map(|captures| captures[5].len());
        year_last == Some(2) || (year_last.is_none() && digits_at_end == 2 && with_month_name(raw).is_some())
    }
}

/// A two-digit year as most software reads it: 69–99 in the 1900s, 00–68 in the 2000s.
fn full_year(year: &str) -> Option<String> {
    match year.len() {
        4 => Some(year.to_owned()),
        2 => {
            let short: i32 = year.parse().ok()?;
            Some((if short >= 69 { 1900 + short } else { 2000 + short }).to_string())
        }
        _ => None,
    }
}

fn describe(date: NaiveDate, valid: bool) -> Parsed {
    Parsed::new(Value::String(date.format("%Y-%m-%d").to_string()), valid)
        .with("year", date.year())
        .with("month", date.month())
        .with("day", date.day())
}

fn to_date(trimmed: &str) -> Option<NaiveDate> {
    if trimmed.is_empty() || trimmed.len() > MAX_LENGTH {
        return None;
    }
    if let Some(captures) = YEAR_FIRST.captures(trimmed) {
        // Mixed separators (`2024-01/15`) are more likely noise than a date.
        if captures[2] != captures[4] {
            return None;
        }
        return ymd(&captures[1], &captures[3], &captures[5]);
    }
    if let Some(captures) = YEAR_LAST.captures(trimmed) {
        if captures[2] != captures[4] {
            return None;
        }
        let (first, second) = (&captures[1], &captures[3]);
        let year = full_year(&captures[5])?;
        let year = year.as_str();
        return if &captures[2] == "." {
            ymd(year, second, first)
        } else {
            // Month first, unless only the day-first reading is a date (`15/01/2024`).
            ymd(year, first, second).or_else(|| ymd(year, second, first))
        };
    }
    if let Some(captures) = COMPACT.captures(trimmed) {
        return ymd(&captures[1], &captures[2], &captures[3]);
    }
    if let Ok(datetime) = DateTime::parse_from_rfc2822(trimmed) {
        return Some(datetime.date_naive());
    }
    with_month_name(trimmed)
}

fn ymd(year: &str, month: &str, day: &str) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(year.parse().ok()?, month.parse().ok()?, day.parse().ok()?)
}

/// `January 15, 2024`, `Jan. 15 2024`, `15 Jan 2024`, `15-Jan-2024`, `2024 Jan 15`,
/// `Monday, January 15th, 2024`.
fn with_month_name(trimmed: &str) -> Option<NaiveDate> {
    let lower = trimmed.to_lowercase();
    let tokens: Vec<&str> = lower
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | '.' | '-' | '/'))
        .filter(|token| !token.is_empty() && !is_weekday(token))
        .collect();
    let [a, b, c] = tokens.as_slice() else {
        return None;
    };
    let (year, month, day) = match (month_number(a), month_number(b), month_number(c)) {
        (Some(month), None, None) => (full_year(c).filter(|_| is_year_token(c))?, month, b),
        (None, Some(month), None) if is_year(a) => (a.to_string(), month, c),
        (None, Some(month), None) => (full_year(c).filter(|_| is_year_token(c))?, month, a),
        _ => return None,
    };
    let day = strip_ordinal(day)?;
    NaiveDate::from_ymd_opt(year.parse().ok()?, month, day.parse().ok()?)
}

/// A month's full English name or any prefix of at least three letters (`jan`, `sept`).
fn month_number(token: &str) -> Option<u32> {
    if token.len() < 3 {
        return None;
    }
    let index = MONTHS.iter().position(|month| month.starts_with(token))?;
    u32::try_from(index + 1).ok()
}

fn is_year(token: &str) -> bool {
    token.len() == 4 && token.bytes().all(|b| b.is_ascii_digit())
}

/// A year written last: four digits, or two.
fn is_year_token(token: &str) -> bool {
    matches!(token.len(), 2 | 4) && token.bytes().all(|b| b.is_ascii_digit())
}

fn is_weekday(token: &str) -> bool {
    token.len() >= 3 && WEEKDAYS.iter().any(|day| day.starts_with(token))
}

/// `15th` → `15`; digits only, one or two of them.
fn strip_ordinal(day: &str) -> Option<&str> {
    let digits = ["st", "nd", "rd", "th"].iter().find_map(|suffix| day.strip_suffix(suffix)).unwrap_or(day);
    let plausible = (1..=2).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
    plausible.then_some(digits)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::test_support::{assert_parsed, huge};
    use super::super::{parse_field, validate_as_of, FieldType};

    #[track_caller]
    fn check(field_type: FieldType, raw: &str, expected: Value) {
        assert_parsed(field_type, raw, expected);
    }

    #[track_caller]
    fn check_date(raw: &str, iso: &str) {
        let [year, month, day] = [&iso[0..4], &iso[5..7], &iso[8..10]].map(|part| part.parse::<u32>().unwrap());
        check(FieldType::Date, raw, json!({"value": iso, "valid": true, "year": year, "month": month, "day": day}));
    }

    #[track_caller]
    fn check_unparsed(field_type: FieldType, raw: &str) {
        check(field_type, raw, json!({"value": raw.trim(), "valid": false, "year": null, "month": null, "day": null}));
    }

    #[test]
    fn every_common_writing_of_a_date_becomes_iso() {
        for raw in [
            "2024-01-15",
            "2024/01/15",
            "2024.01.15",
            "2024-1-15",
            "01/15/2024",
            "1/15/2024",
            "01-15-2024",
            "15.01.2024",
            "January 15, 2024",
            "january 15 2024",
            "Jan 15 2024",
            "Jan. 15, 2024",
            "15 Jan 2024",
            "15 January 2024",
            "15-Jan-2024",
            "2024 Jan 15",
            "Monday, January 15th, 2024",
            "15th January 2024",
            "Mon Jan 15 2024",
            "20240115",
            " 2024-01-15 ",
            "2024-01-15T10:30:00Z",
            "2024-01-15T23:59:59-05:00",
            "2024-01-15 10:30",
            "2024-01-15T10:30:00.123456+02:00",
            "Mon, 15 Jan 2024 10:00:00 +0000",
        ] {
            check_date(raw, "2024-01-15");
        }
    }

    #[test]
    fn ambiguous_slash_dates_are_read_month_first() {
        check_date("1/5/2024", "2024-01-05");
        check_date("01/02/2024", "2024-01-02");
        check_date("05-06-2024", "2024-05-06");
        check_date("5.6.2024", "2024-06-05");
        // With the time a US form or a spreadsheet adds.
        check_date("5/17/1980 10:30 AM", "1980-05-17");
        check_date("5/17/1980 10:30", "1980-05-17");
        check_date("05/17/1980, 22:30:15", "1980-05-17");
        check_date("5/17/1980 10:30 p.m.", "1980-05-17");
    }

    #[test]
    fn a_slash_date_that_only_works_day_first_is_read_day_first() {
        check_date("15/01/2024", "2024-01-15");
        check_date("31-12-1999", "1999-12-31");
    }

    #[test]
    fn leap_days_are_checked() {
        check_date("2024-02-29", "2024-02-29");
        check_date("Feb 29, 2000", "2000-02-29");
        check_unparsed(FieldType::Date, "2023-02-29");
        check_unparsed(FieldType::Date, "1900-02-29");
    }

    #[test]
    fn impossible_or_ambiguous_dates_are_unparsed() {
        for raw in [
            "",
            "  ",
            "2024-13-01",
            "2024-00-10",
            "2024-01-32",
            "13/13/2024",
            "1/5",
            "2024-01/15",
            "Janu 15 2024 extra",
            "Foo 15 2024",
            "Jan 2024",
            "January 2024 15",
            "01/15/024",
            "Jan 15 1",
            "2024-01-15Tnoon",
            "yesterday",
            "Zoë Ñúñez",
            "🎉",
            "٢٠٢٤-٠١-١٥",
            "２０２４-０１-１５",
            "+2024-01-15",
            "99999999",
        ] {
            check_unparsed(FieldType::Date, raw);
        }
        check_unparsed(FieldType::Date, &huge("2024-01-15"));
    }

    #[test]
    fn a_dob_is_valid_only_between_1900_and_2100() {
        check(
            FieldType::Dob,
            "04/23/1985",
            json!({"value": "1985-04-23", "valid": true, "year": 1985, "month": 4, "day": 23}),
        );
        check(
            FieldType::Dob,
            "1899-12-31",
            json!({"value": "1899-12-31", "valid": false, "year": 1899, "month": 12, "day": 31}),
        );
        check(
            FieldType::Dob,
            "2101-01-01",
            json!({"value": "2101-01-01", "valid": false, "year": 2101, "month": 1, "day": 1}),
        );
        check(
            FieldType::Dob,
            "1900-01-01",
            json!({"value": "1900-01-01", "valid": true, "year": 1900, "month": 1, "day": 1}),
        );
        check_unparsed(FieldType::Dob, "not a date");
    }

    #[test]
    fn two_digit_years_are_read_in_the_usual_century() {
        check_date("01/15/24", "2024-01-15");
        check_date("1-5-85", "1985-01-05");
        check_date("15.01.69", "1969-01-15");
        check_date("15 Jan 24", "2024-01-15");
        check_date("Jan 2, 85", "1985-01-02");
        check_date("05/17/80 10:30 AM", "1980-05-17");
        check_date("12/31/68", "2068-12-31");
    }

    #[test]
    fn a_two_digit_birth_year_never_lies_in_the_future() {
        let arrival = chrono::NaiveDate::from_ymd_opt(2026, 12, 3).unwrap().and_hms_opt(12, 0, 0).unwrap();
        let received_at = arrival.and_utc().timestamp_millis();
        for (raw, born) in [("01/02/05", "2005-01-02"), ("01/02/30", "1930-01-02"), ("Jan 2, 85", "1985-01-02")] {
            let mut field = parse_field(FieldType::Dob, raw);
            super::invalidate_future_dob(&mut field, received_at);
            assert_eq!((field["value"].as_str(), field["valid"].as_bool()), (Some(born), Some(true)), "{raw}");
            assert_eq!(field["year"], json!(born[..4].parse::<i32>().unwrap()), "{raw}");
            assert_eq!(field["raw"], raw);
        }
        // A four-digit year is taken as written: in the future, it is invalid.
        let mut field = parse_field(FieldType::Dob, "01/02/2030");
        super::invalidate_future_dob(&mut field, received_at);
        assert_eq!((field["value"].as_str(), field["valid"].as_bool()), (Some("2030-01-02"), Some(false)));
    }

    #[test]
    fn a_dob_after_the_day_of_arrival_is_invalid() {
        let arrival = chrono::NaiveDate::from_ymd_opt(2024, 1, 15).unwrap().and_hms_opt(12, 0, 0).unwrap();
        let received_at = arrival.and_utc().timestamp_millis();
        for (raw, valid) in [("2024-01-15", true), ("2024-01-16", true), ("2024-01-17", false), ("1990-05-01", true)] {
            let mut field = parse_field(FieldType::Dob, raw);
            validate_as_of(FieldType::Dob, &mut field, received_at);
            assert_eq!(field["valid"], json!(valid), "{raw}");
        }
        let mut ahead = parse_field(FieldType::Date, "2030-06-01");
        validate_as_of(FieldType::Date, &mut ahead, received_at);
        assert_eq!(ahead["valid"], json!(true), "a date may be ahead");
    }
}
