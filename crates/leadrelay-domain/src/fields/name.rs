//! The `name` field type: a person's name with its whitespace tidied, split into first and last
//! name at the last space.

use serde_json::Value;

use super::Parsed;

pub(super) fn parse(trimmed: &str) -> Parsed {
    let collapsed = trimmed.split_whitespace().collect::<Vec<_>>().join(" ");
    // Letters of any script count (`Zoë`, `Ñúñez`, `李`); a digit of any script does not belong
    // in a name.
    let valid = collapsed.chars().any(char::is_alphabetic) && !collapsed.chars().any(char::is_numeric);
    // `Smith, John` is written last name first; a trailing suffix (`Jr.`, `III`) is not a last
    // name, nor is a leading title (`Dr.`).
    let (first, last) = match collapsed.split_once(',').map(|(last, first)| (first.trim(), last.trim())) {
        Some((first, last)) if !first.is_empty() && !last.is_empty() && !is_suffix(first) => {
            (Value::from(first), Value::from(last))
        }
        _ => {
            let words: Vec<&str> = collapsed.split([' ', ',']).filter(|word| !word.is_empty()).collect();
            let start = usize::from(words.len() > 2 && is_title(words[0]));
            let end = words.len() - usize::from(words.len() > 2 && is_suffix(words[words.len() - 1]));
            match &words[start.min(end)..end] {
                [] => (Value::Null, Value::Null),
                [only] => (Value::from(*only), Value::Null),
                [rest @ .., last] => (Value::from(rest.join(" ")), Value::from(*last)),
            }
        }
    };
    Parsed::new(Value::String(collapsed), valid).with("first", first).with("last", last)
}

/// Titles written before a name.
fn is_title(word: &str) -> bool {
    let word = word.trim_end_matches('.').to_ascii_lowercase();
    matches!(word.as_str(), "mr" | "mrs" | "ms" | "miss" | "mx" | "dr" | "prof" | "sir" | "rev")
}

/// Suffixes written after a name.
fn is_suffix(word: &str) -> bool {
    let word = word.trim_end_matches('.').to_ascii_lowercase();
    matches!(word.as_str(), "jr" | "sr" | "ii" | "iii" | "iv" | "md" | "phd" | "esq")
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
    fn last_name_first_titles_and_suffixes() {
        check("Smith, John", json!({"value": "Smith, John", "valid": true, "first": "John", "last": "Smith"}));
        check(
            "Dr. John Smith Jr.",
            json!({"value": "Dr. John Smith Jr.", "valid": true, "first": "John", "last": "Smith"}),
        );
        check("John Smith, Jr.", json!({"value": "John Smith, Jr.", "valid": true, "first": "John", "last": "Smith"}));
        check("Dr. Smith", json!({"value": "Dr. Smith", "valid": true, "first": "Dr.", "last": "Smith"}));
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
