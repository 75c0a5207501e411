//! The `name` field type: a person's name with its whitespace tidied, split into first and last
//! name at the last space.

use serde_json::Value;

use super::Parsed;

pub(super) fn parse(trimmed: &str) -> Parsed {
    let collapsed = trimmed.split_whitespace().collect::<Vec<_>>().join(" ");
    // Letters of any script count (`Zoë`, `Ñúñez`, `李`); a digit of any script does not belong
    // in a name.
    let valid = collapsed.chars().any(char::is_alphabetic) && !collapsed.chars().any(char::is_numeric);
    let (first, last) = match collapsed.rsplit_once(' ') {
        Some((first, last)) => (Value::from(first), Value::from(last)),
        None if collapsed.is_empty() => (Value::Null, Value::Null),
        None => (Value::from(collapsed.as_str()), Value::Null),
    };
    Parsed::new(Value::String(collapsed), valid).with("first", first).with("last", last)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::test_support::{assert_parsed, huge};
    use super::super::{parse_field, FieldType};

    #[track_caller]
    fn check(raw: &str, expected: Value) {
        assert_parsed(FieldType::Name, raw, expected);
    }

    #[test]
    fn two_words_split_into_first_and_last() {
        check("John Smith", json!({"value": "John Smith", "valid": true, "first": "John", "last": "Smith"}));
        check("  Zoë \t Ñúñez ", json!({"value": "Zoë Ñúñez", "valid": true, "first": "Zoë", "last": "Ñúñez"}));
    }

    #[test]
    fn more_words_split_at_the_last_space() {
        check(
            "Mary  Ann   van\nDyke",
            json!({"value": "Mary Ann van Dyke", "valid": true, "first": "Mary Ann van", "last": "Dyke"}),
        );
        check(
            "Jean-Luc O'Brien",
            json!({"value": "Jean-Luc O'Brien", "valid": true, "first": "Jean-Luc", "last": "O'Brien"}),
        );
    }

    #[test]
    fn a_single_word_is_a_first_name_only() {
        check("Cher", json!({"value": "Cher", "valid": true, "first": "Cher", "last": null}));
        check("李", json!({"value": "李", "valid": true, "first": "李", "last": null}));
    }

    #[test]
    fn names_without_letters_or_with_digits_are_invalid() {
        for (raw, value, first, last) in [
            ("", "", Value::Null, Value::Null),
            ("   ", "", Value::Null, Value::Null),
            ("John 3", "John 3", json!("John"), json!("3")),
            ("R2D2", "R2D2", json!("R2D2"), Value::Null),
            ("--- ...", "--- ...", json!("---"), json!("...")),
            ("🎉 🎉", "🎉 🎉", json!("🎉"), json!("🎉")),
            ("Ann Ⅷ", "Ann Ⅷ", json!("Ann"), json!("Ⅷ")),
        ] {
            check(raw, json!({"value": value, "valid": false, "first": first, "last": last}));
        }
    }

    #[test]
    fn huge_names_are_collapsed_without_panicking() {
        let out = parse_field(FieldType::Name, &huge("ab  "));
        assert_eq!(out["valid"], json!(true));
        assert_eq!(out["last"], json!("ab"));
    }
}
