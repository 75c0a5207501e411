//! The `boolean` field type: the usual ways forms and people write yes and no.

use serde_json::Value;

use super::Parsed;

const TRUE_WORDS: [&str; 8] = ["yes", "y", "true", "t", "1", "on", "checked", "x"];
const FALSE_WORDS: [&str; 7] = ["no", "n", "false", "f", "0", "off", "unchecked"];

/// Longer than any accepted word; longer input is not compared at all.
const MAX_LENGTH: usize = 16;

pub(super) fn parse(trimmed: &str) -> Parsed {
    if trimmed.len() <= MAX_LENGTH {
        let lower = trimmed.to_lowercase();
        if TRUE_WORDS.contains(&lower.as_str()) {
            return Parsed::new(Value::Bool(true), true);
        }
        if FALSE_WORDS.contains(&lower.as_str()) {
            return Parsed::new(Value::Bool(false), true);
        }
    }
    Parsed::new(Value::String(trimmed.to_owned()), false)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::test_support::{assert_parsed, huge};
    use super::super::FieldType;

    #[track_caller]
    fn check(raw: &str, expected: Value) {
        assert_parsed(FieldType::Boolean, raw, expected);
    }

    #[test]
    fn yes_words_are_true_in_any_case() {
        for raw in ["yes", "YES", "Y", "y", "true", "True", "t", "1", "on", "ON", "checked", "x", "X", " yes "] {
            check(raw, json!({"value": true, "valid": true}));
        }
    }

    #[test]
    fn no_words_are_false_in_any_case() {
        for raw in ["no", "NO", "n", "false", "FALSE", "f", "0", "off", "Off", "unchecked", "\tno\n"] {
            check(raw, json!({"value": false, "valid": true}));
        }
    }

    #[test]
    fn anything_else_is_invalid_and_keeps_the_trimmed_text() {
        for raw in ["", "  ", "maybe", "yess", "2", "-1", "1.0", "nope", "oui", "Zoë", "✓", "🎉", "y e s"] {
            check(raw, json!({"value": raw.trim(), "valid": false}));
        }
        let huge = huge("yes");
        check(&huge, json!({"value": huge, "valid": false}));
    }
}
