//! Field types: each raw submitted value is parsed into a normalised value and components.
//!
//! Parsing never fails and never blocks a lead by itself: `valid` is data that rules decide on.
//! Every parsed field is a JSON object with at least `raw` (the value exactly as received),
//! `value` (the normalised value, or the trimmed raw text when it could not be parsed) and
//! `valid` (a boolean), plus the components of its type.
//!
//! Components are always present for their type, so rules see one shape per type; a component
//! is `null` when the value could not be parsed far enough to know it.

mod boolean;
mod date;
mod email;
mod ip;
mod name;
mod number;
mod phone;
mod postal_code;
mod state;
mod trustedform;
mod web_url;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The type of a flow field (SPEC 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    Email,
    Phone,
    State,
    PostalCode,
    Name,
    Date,
    Dob,
    Number,
    Boolean,
    Url,
    Ip,
    TrustedformUrl,
    #[default]
    Text,
}

impl FieldType {
    /// The type as configuration writes it: `postal_code`.
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::Email => "email",
            FieldType::Phone => "phone",
            FieldType::State => "state",
            FieldType::PostalCode => "postal_code",
            FieldType::Name => "name",
            FieldType::Date => "date",
            FieldType::Dob => "dob",
            FieldType::Number => "number",
            FieldType::Boolean => "boolean",
            FieldType::Url => "url",
            FieldType::Ip => "ip",
            FieldType::TrustedformUrl => "trustedform_url",
            FieldType::Text => "text",
        }
    }
}

/// The parts a field of this type has, its own (`raw`, `value`, `valid`) first: what a rule
/// path may name after the field (`email.domain`).
pub fn component_names(field_type: FieldType) -> Vec<String> {
    parse_field(field_type, "").into_iter().map(|(name, _)| name).collect()
}

/// What a field's validity owes to the day the lead arrived, which parsing alone cannot know:
/// a `dob` after that day is invalid. `received_at` is in milliseconds since the epoch.
pub fn validate_as_of(field_type: FieldType, field: &mut Map<String, Value>, received_at: i64) {
    if field_type == FieldType::Dob {
        date::invalidate_future_dob(field, received_at);
    }
}

/// Parses one raw value of the given type into its JSON object of components.
pub fn parse_field(field_type: FieldType, raw: &str) -> Map<String, Value> {
    let trimmed = raw.trim();
    let parsed = match field_type {
        FieldType::Email => email::parse(trimmed),
        FieldType::Phone => phone::parse(trimmed),
        FieldType::State => state::parse(trimmed),
        FieldType::PostalCode => postal_code::parse(trimmed),
        FieldType::Name => name::parse(trimmed),
        FieldType::Date => date::parse_date(trimmed),
        FieldType::Dob => date::parse_dob(trimmed),
        FieldType::Number => number::parse(trimmed),
        FieldType::Boolean => boolean::parse(trimmed),
        FieldType::Url => web_url::parse(trimmed),
        FieldType::Ip => ip::parse(trimmed),
        FieldType::TrustedformUrl => trustedform::parse(trimmed),
        FieldType::Text => Parsed::new(Value::String(trimmed.to_owned()), !trimmed.is_empty()),
    };
    parsed.into_object(raw)
}

/// What one type's parser found; `parse_field` wraps it with `raw` into the output object.
struct Parsed {
    value: Value,
    valid: bool,
    components: Vec<(&'static str, Value)>,
}

impl Parsed {
    fn new(value: Value, valid: bool) -> Self {
        Self { value, valid, components: Vec::new() }
    }

    /// A value that could not be parsed: the trimmed text, invalid, every component `null`.
    fn unparsed(trimmed: &str, component_names: &[&'static str]) -> Self {
        let mut parsed = Self::new(Value::String(trimmed.to_owned()), false);
        for &name in component_names {
            parsed = parsed.with(name, Value::Null);
        }
        parsed
    }

    /// Appends one component; components keep the order they are added in.
    fn with(mut self, name: &'static str, value: impl Into<Value>) -> Self {
        self.components.push((name, value.into()));
        self
    }

    fn into_object(self, raw: &str) -> Map<String, Value> {
        let mut out = Map::with_capacity(3 + self.components.len());
        out.insert("raw".into(), Value::String(raw.to_owned()));
        out.insert("value".into(), self.value);
        out.insert("valid".into(), Value::Bool(self.valid));
        for (name, value) in self.components {
            out.insert(name.into(), value);
        }
        out
    }
}

/// Test support shared by every field type's tests.
#[cfg(test)]
mod test_support {
    use serde_json::Value;

    use super::{parse_field, FieldType};

    /// A megabyte of text, for checking that huge input is handled quickly and without panics.
    pub(super) fn huge(unit: &str) -> String {
        unit.repeat(1_000_000 / unit.len().max(1))
    }

    /// Asserts the whole output object: `raw` first, then exactly `expected`, in its order.
    #[track_caller]
    pub(super) fn assert_parsed(field_type: FieldType, raw: &str, expected: Value) {
        let out = parse_field(field_type, raw);
        assert_eq!(out.get("raw"), Some(&Value::String(raw.to_owned())), "raw of {raw:?}");
        let mut rest = out;
        rest.shift_remove("raw");
        let actual = serde_json::to_string(&rest).expect("a map always serialises");
        let expected = serde_json::to_string(&expected).expect("a value always serialises");
        assert_eq!(actual, expected, "parsing {field_type:?} {raw:?}");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::test_support::{assert_parsed, huge};
    use super::{parse_field, FieldType};

    const ALL_TYPES: [FieldType; 13] = [
        FieldType::Email,
        FieldType::Phone,
        FieldType::State,
        FieldType::PostalCode,
        FieldType::Name,
        FieldType::Date,
        FieldType::Dob,
        FieldType::Number,
        FieldType::Boolean,
        FieldType::Url,
        FieldType::Ip,
        FieldType::TrustedformUrl,
        FieldType::Text,
    ];

    #[track_caller]
    fn check(raw: &str, expected: Value) {
        assert_parsed(FieldType::Text, raw, expected);
    }

    #[test]
    fn text_is_trimmed_and_valid_when_not_empty() {
        check("hello", json!({"value": "hello", "valid": true}));
        check("  hello world \n", json!({"value": "hello world", "valid": true}));
        check("Zoë Ñúñez 🎉", json!({"value": "Zoë Ñúñez 🎉", "valid": true}));
        check("", json!({"value": "", "valid": false}));
        check(" \t\r\n ", json!({"value": "", "valid": false}));
    }

    #[test]
    fn every_type_starts_with_raw_value_valid_in_that_order() {
        for field_type in ALL_TYPES {
            let out = parse_field(field_type, "something");
            let keys: Vec<&str> = out.keys().take(3).map(String::as_str).collect();
            assert_eq!(keys, ["raw", "value", "valid"], "{field_type:?}");
        }
    }

    #[test]
    fn every_type_keeps_one_shape_whether_valid_or_not() {
        let samples = [
            (FieldType::Email, "a@example.com"),
            (FieldType::Phone, "+44 20 7946 0958"),
            (FieldType::State, "TX"),
            (FieldType::PostalCode, "12345"),
            (FieldType::Name, "Ann Lee"),
            (FieldType::Date, "2024-01-15"),
            (FieldType::Dob, "1980-01-15"),
            (FieldType::Number, "42"),
            (FieldType::Boolean, "yes"),
            (FieldType::Url, "https://example.com"),
            (FieldType::Ip, "8.8.8.8"),
            (FieldType::TrustedformUrl, "https://cert.trustedform.com/0123456789abcdef0123456789abcdef01234567"),
            (FieldType::Text, "x"),
        ];
        for (field_type, good) in samples {
            let valid = parse_field(field_type, good);
            assert_eq!(valid["valid"], json!(true), "{field_type:?} {good:?}");
            let invalid = parse_field(field_type, "");
            assert_eq!(invalid["valid"], json!(false), "{field_type:?}");
            let valid_keys: Vec<&String> = valid.keys().collect();
            let invalid_keys: Vec<&String> = invalid.keys().collect();
            assert_eq!(valid_keys, invalid_keys, "{field_type:?}");
        }
    }

    #[test]
    fn empty_and_whitespace_are_invalid_with_an_empty_value_for_every_type() {
        for field_type in ALL_TYPES {
            for raw in ["", "   ", "\t\n"] {
                let out = parse_field(field_type, raw);
                assert_eq!(out["raw"], json!(raw), "{field_type:?}");
                assert_eq!(out["value"], json!(""), "{field_type:?} {raw:?}");
                assert_eq!(out["valid"], json!(false), "{field_type:?} {raw:?}");
            }
        }
    }

    #[test]
    fn hostile_input_never_panics_for_any_type() {
        let hostile = [
            huge("a"),
            huge("9"),
            huge("1,"),
            huge("é"),
            huge("🎉"),
            huge(" "),
            huge("@."),
            format!("{}@example.com", huge("a")),
            format!("https://{}.com", huge("a")),
            "\u{0}\u{1}\u{7f}\u{202e}".to_owned(),
            "Zoë Ñúñez".to_owned(),
            "👨‍👩‍👧‍👦".to_owned(),
            "+".to_owned(),
            "++1".to_owned(),
            "  2 22#:".to_owned(),
            "003-836-4618x3001".to_owned(),
            "0/0/0".to_owned(),
            "-".to_owned(),
            ".".to_owned(),
            "e".to_owned(),
            "1e999999".to_owned(),
            "99999999999999999999999999".to_owned(),
            "[::1]".to_owned(),
            "http://".to_owned(),
            "://".to_owned(),
        ];
        for field_type in ALL_TYPES {
            for raw in &hostile {
                let out = parse_field(field_type, raw);
                assert_eq!(out["raw"].as_str(), Some(raw.as_str()));
            }
        }
    }

    #[test]
    fn field_types_are_named_in_snake_case() {
        assert_eq!(serde_json::to_value(FieldType::TrustedformUrl).unwrap(), json!("trustedform_url"));
        assert_eq!(serde_json::to_value(FieldType::PostalCode).unwrap(), json!("postal_code"));
        let parsed: FieldType = serde_json::from_value(json!("dob")).unwrap();
        assert_eq!(parsed, FieldType::Dob);
    }
}
