//! The `number` field type: a decimal number as people type it (`1,234.50`, `$42`, `1e3`),
//! normalised to a JSON number.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use super::Parsed;

/// Longer than any number a form would carry; longer input is not parsed at all.
const MAX_LENGTH: usize = 100;

/// Integers up to 2^53 are exact in an `f64`, so integral results up to it become JSON integers.
const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0;

/// The unsigned number: digits with optional thousands commas in threes, an optional fraction
/// (or a bare fraction `.5`), an optional exponent.
static UNSIGNED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
        .expect("the number pattern is valid")
});

const CURRENCY_SYMBOLS: [char; 4] = ['$', '€', '£', '¥'];

pub(super) fn parse(trimmed: &str) -> Parsed {
    match to_number(trimmed) {
        Some(number) => Parsed::new(number, true),
        None => Parsed::new(Value::String(trimmed.to_owned()), false),
    }
}

fn to_number(trimmed: &str) -> Option<Value> {
    if trimmed.len() > MAX_LENGTH {
        return None;
    }
    // The sign may come before or after a currency symbol: `-$5` and `$-5`.
    let (sign, rest) = take_sign(trimmed);
    let (sign, rest) = match rest.strip_prefix(CURRENCY_SYMBOLS) {
        Some(after) if sign.is_none() => take_sign(after.trim_start()),
        Some(after) => (sign, after.trim_start()),
        None => (sign, rest),
    };
    let negative = sign == Some(Sign::Negative);
    if !UNSIGNED.is_match(rest) {
        return None;
    }
    let digits = rest.replace(',', "");
    let signed = if negative { format!("-{digits}") } else { digits };
    if !signed.contains(['.', 'e', 'E']) {
        if let Ok(integer) = signed.parse::<i64>() {
            return Some(Value::from(integer));
        }
    }
    let float: f64 = signed.parse().ok()?;
    if !float.is_finite() {
        return None;
    }
    if float.fract() == 0.0 && float.abs() <= EXACT_INTEGER_LIMIT {
        // Exact by the check above; `+ 0.0` folds a negative zero into zero.
        return Some(Value::from((float + 0.0) as i64));
    }
    Some(Value::from(float))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sign {
    Positive,
    Negative,
}

/// Splits an optional leading sign off.
fn take_sign(text: &str) -> (Option<Sign>, &str) {
    if let Some(rest) = text.strip_prefix('-') {
        (Some(Sign::Negative), rest.trim_start())
    } else if let Some(rest) = text.strip_prefix('+') {
        (Some(Sign::Positive), rest.trim_start())
    } else {
        (None, text)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::test_support::{assert_parsed, huge};
    use super::super::FieldType;

    #[track_caller]
    fn check(raw: &str, expected: Value) {
        assert_parsed(FieldType::Number, raw, expected);
    }

    #[test]
    fn integers_become_json_integers() {
        for (raw, number) in [
            ("42", 42),
            (" 42 ", 42),
            ("-7", -7),
            ("+7", 7),
            ("1,234", 1234),
            ("1,234,567", 1_234_567),
            ("$1,234", 1234),
            ("1e3", 1000),
            ("42.0", 42),
            ("2.", 2),
            ("-0", 0),
            ("9223372036854775807", i64::MAX),
            ("-$5", -5),
            ("$-5", -5),
            ("- $ 5", -5),
            ("€12", 12),
        ] {
            check(raw, json!({"value": number, "valid": true}));
        }
    }

    #[test]
    fn fractions_become_json_floats() {
        for (raw, number) in [
            ("1,234.50", 1234.5),
            ("$1,234.50", 1234.5),
            ("-3.5", -3.5),
            (".5", 0.5),
            ("1.5e-3", 0.0015),
            ("9223372036854775808", 9_223_372_036_854_775_808.0),
        ] {
            check(raw, json!({"value": number, "valid": true}));
        }
    }

    #[test]
    fn everything_else_is_invalid_and_keeps_the_trimmed_text() {
        for raw in [
            "", "   ", "abc", "1,23", "12,34.5", "1.2.3", "--5", "$$5", "5$", "1e", "e5", ".", "-", "$", "NaN", "inf",
            "-inf", "1e999", "0x1F", "1 000", "Zoë", "🎉", "٤٢", "４２", "+-1", "$+-1",
        ] {
            check(raw, json!({"value": raw.trim(), "valid": false}));
        }
        let huge = huge("9");
        check(&huge, json!({"value": huge, "valid": false}));
    }
}
