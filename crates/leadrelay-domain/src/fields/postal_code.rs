//! The `postal_code` field type: a US ZIP or ZIP+4, a Canadian postal code or a UK postcode,
//! normalised to the country's own written form.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use super::Parsed;

const COMPONENTS: [&str; 3] = ["zip5", "plus4", "country"];

/// Longer than any postal code with generous spacing; longer input is not matched at all.
const MAX_LENGTH: usize = 16;

/// `12345`, `12345-6789`, `12345 6789` or `123456789`.
static US_ZIP: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([0-9]{5})(?:[\s-]?([0-9]{4}))?$").expect("the ZIP pattern is valid"));

/// `K1A0B1` or `K1A-0B1` (spaces already removed): letter digit letter, digit letter digit; D, F, I, O, Q and U are never used, and
/// W and Z never start a code.
static CANADA: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^([ABCEGHJ-NPRSTVXY][0-9][ABCEGHJ-NPRSTV-Z])-?([0-9][ABCEGHJ-NPRSTV-Z][0-9])$")
        .expect("the Canadian pattern is valid")
});

/// A UK postcode without its spaces: outward code (`SW1A`, `M1`, `B33`, `GIR`) then inward code
/// (`1AA`); the inward letters never include C, I, K, M, O or V.
static UNITED_KINGDOM: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(GIR|[A-PR-UWYZ][A-HK-Y]?[0-9][A-Z0-9]?)([0-9][ABD-HJLNP-UW-Z]{2})$")
        .expect("the UK pattern is valid")
});

pub(super) fn parse(trimmed: &str) -> Parsed {
    if trimmed.len() > MAX_LENGTH {
        return Parsed::unparsed(trimmed, &COMPONENTS);
    }
    if let Some(captures) = US_ZIP.captures(trimmed) {
        let zip5 = captures[1].to_owned();
        let plus4 = captures.get(2).map(|m| m.as_str().to_owned());
        let value = match &plus4 {
            Some(plus4) => format!("{zip5}-{plus4}"),
            None => zip5.clone(),
        };
        return Parsed::new(Value::String(value), true).with("zip5", zip5).with("plus4", plus4).with("country", "US");
    }
    // Canadian and UK codes are written with one space in the middle, but people type any
    // spacing; matching the compact form accepts all of them.
    let compact: String = trimmed.to_uppercase().split_whitespace().collect();
    if let Some(captures) = CANADA.captures(&compact) {
        return foreign(format!("{} {}", &captures[1], &captures[2]), "CA");
    }
    if let Some(captures) = UNITED_KINGDOM.captures(&compact) {
        return foreign(format!("{} {}", &captures[1], &captures[2]), "GB");
    }
    Parsed::unparsed(trimmed, &COMPONENTS)
}

fn foreign(value: String, country: &'static str) -> Parsed {
    Parsed::new(Value::String(value), true)
        .with("zip5", Value::Null)
        .with("plus4", Value::Null)
        .with("country", country)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::test_support::{assert_parsed, huge};
    use super::super::FieldType;

    #[track_caller]
    fn check(raw: &str, expected: Value) {
        assert_parsed(FieldType::PostalCode, raw, expected);
    }

    #[track_caller]
    fn check_foreign(raw: &str, value: &str, country: &str) {
        check(raw, json!({"value": value, "valid": true, "zip5": null, "plus4": null, "country": country}));
    }

    #[track_caller]
    fn check_invalid(raw: &str) {
        check(raw, json!({"value": raw.trim(), "valid": false, "zip5": null, "plus4": null, "country": null}));
    }

    #[test]
    fn us_zips_keep_five_digits_or_zip_plus_four() {
        for (raw, value, zip5, plus4) in [
            ("78701", "78701", "78701", Value::Null),
            (" 02134 ", "02134", "02134", Value::Null),
            ("78701-1234", "78701-1234", "78701", json!("1234")),
            ("78701 1234", "78701-1234", "78701", json!("1234")),
            ("787011234", "78701-1234", "78701", json!("1234")),
        ] {
            check(raw, json!({"value": value, "valid": true, "zip5": zip5, "plus4": plus4, "country": "US"}));
        }
    }

    #[test]
    fn canadian_codes_are_uppercased_with_one_space() {
        for raw in ["K1A 0B1", "k1a0b1", "K1A-0B1", " k1a  0b1 "] {
            check_foreign(raw, "K1A 0B1", "CA");
        }
        check_foreign("h3z 2y7", "H3Z 2Y7", "CA");
    }

    #[test]
    fn uk_postcodes_are_uppercased_with_one_space_before_the_inward_code() {
        for (raw, value) in [
            ("SW1A 1AA", "SW1A 1AA"),
            ("sw1a1aa", "SW1A 1AA"),
            ("EC1A 1BB", "EC1A 1BB"),
            ("W1A 0AX", "W1A 0AX"),
            ("m1 1ae", "M1 1AE"),
            ("B33 8TH", "B33 8TH"),
            ("CR2 6XH", "CR2 6XH"),
            ("DN55  1PT", "DN55 1PT"),
            ("GIR 0AA", "GIR 0AA"),
        ] {
            check_foreign(raw, value, "GB");
        }
    }

    #[test]
    fn other_shapes_are_invalid() {
        for raw in [
            "",
            "  ",
            "1234",
            "123456",
            "12345-678",
            "12345-67890",
            "ABCDE",
            "D1A 0B1",
            "K1A 0BI",
            "SW1A 1AC",
            "QW1 1AA",
            "12 345",
            "Zoë Ñúñez",
            "🎉🎉",
            "７８７０１",
        ] {
            check_invalid(raw);
        }
        check_invalid(&huge("1"));
    }
}
