//! The `phone` field type: an international number parsed with libphonenumber's metadata (the
//! `phonenumber` crate), assuming the US when there is no leading `+`.

use std::sync::LazyLock;

use phonenumber::{country, metadata::DATABASE, Mode, PhoneNumber, Type};
use regex::Regex;
use serde_json::Value;

use super::Parsed;

const COMPONENTS: [&str; 10] =
    ["e164", "country_code", "region", "area", "exchange", "line", "national", "type", "is_tollfree", "extension"];

/// Longer than any written phone number with an extension; longer input is not parsed at all.
const MAX_LENGTH: usize = 64;

/// E.164 allows 15 digits; a dialled international prefix (`011`) can add three more.
const DIGITS: std::ops::RangeInclusive<usize> = 7..=18;

/// A trailing extension: `x123`, `ext. 123`, `extension 123`, `#123`.
static EXTENSION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^(.*?)\s*(?:x|ext\.?|extn\.?|extension|#)\s*([0-9]{1,7})$")
        .expect("the extension pattern is valid")
});

/// What is left of a number once its extension is removed: digits, an optional leading `+`,
/// and the usual separators.
static NUMBER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\+?[0-9\s().\-/]+$").expect("the number pattern is valid"));

pub(super) fn parse(trimmed: &str) -> Parsed {
    if trimmed.len() > MAX_LENGTH {
        return Parsed::unparsed(trimmed, &COMPONENTS);
    }
    let (number, extension) = match EXTENSION.captures(trimmed) {
        Some(captures) => (captures.get(1).map_or("", |m| m.as_str()), captures.get(2).map(|m| m.as_str().to_owned())),
        None => (trimmed, None),
    };
    if !NUMBER.is_match(number) {
        return Parsed::unparsed(trimmed, &COMPONENTS);
    }
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    if !DIGITS.contains(&digits.len()) {
        return Parsed::unparsed(trimmed, &COMPONENTS);
    }
    // Only clean `+digits` or `digits` reach the library: it has panicked on odd punctuation
    // before, and we already know the shape is right. A leading `00` is the international
    // prefix used outside North America, where no number starts with 0.
    let clean = if number.starts_with('+') {
        format!("+{digits}")
    } else if let Some(rest) = digits.strip_prefix("00") {
        format!("+{rest}")
    } else {
        digits
    };
    // A number with its country code is parsed without a default region: with one, the
    // library strips that region's national prefix (the US `1`) from other countries' numbers
    // (`+33 1 42 68 53 00` lost its `1`).
    let default_region = if clean.starts_with('+') { None } else { Some(country::Id::US) };
    match phonenumber::parse(default_region, &clean) {
        Ok(phone) => describe(trimmed, &phone, extension),
        Err(_) => Parsed::unparsed(trimmed, &COMPONENTS),
    }
}

fn describe(trimmed: &str, phone: &PhoneNumber, extension: Option<String>) -> Parsed {
    // Finding a number's region tries the metadata of every region sharing its country code
    // (two dozen for +1), so it is done once per lookup here: `is_valid` and `country().id()`
    // would each repeat it. A number is valid exactly when its region is known and its type is.
    let metadata = phone.metadata(&DATABASE);
    let number_type = if metadata.is_some() { phone.number_type(&DATABASE) } else { Type::Unknown };
    // A national number that keeps a leading zero (Italy's fixed lines, `+39 06 …`) is judged
    // on its digits without the zero by the library: its type is unknown for Italy, and a US
    // type for `0512 555 0199` read as `+1 0512…`, which no plan allows. Such a number is
    // valid when its country's own pattern takes the zero, and the library's check agrees.
    let main_metadata = || {
        DATABASE
            .by_code(&phone.code().value())
            .and_then(|regions| regions.into_iter().find(|meta| meta.is_main_country_for_code()))
    };
    let valid = if phone.national().zeros() > 0 {
        main_metadata().is_some_and(|meta| meta.descriptors().general().is_match(&phone.national().to_string()))
            && (number_type != Type::Unknown || phonenumber::is_valid(phone))
    } else {
        number_type != Type::Unknown
    };
    // A number no numbering plan knows has no E.164 form or parts: making them up
    // (`555-0199` as `+15550199`) would feed rules, duplicate keys and destinations.
    if !valid {
        return Parsed::unparsed(trimmed, &COMPONENTS);
    }
    let e164 = phone.format().mode(Mode::E164).to_string();
    let country_code = phone.code().value();
    // When the library could not place a valid number (a leading-zero one, as above), its
    // country code's main region is where it is.
    let main_region = || main_metadata().map(|meta| meta.id().to_owned());
    let region = metadata
        .and_then(|meta| meta.id().parse::<country::Id>().ok())
        .map(|id| id.as_ref().to_owned())
        .or_else(|| valid.then(main_region).flatten());
    let national = phone.national().to_string();
    // North American numbers are NPA-NXX-XXXX; other plans have no such fixed split.
    let nanp_parts = (country_code == 1 && national.len() == 10).then(|| {
        let (area, rest) = national.split_at(3);
        let (exchange, line) = rest.split_at(3);
        (area.to_owned(), exchange.to_owned(), line.to_owned())
    });
    let (area, exchange, line) = match nanp_parts {
        Some((area, exchange, line)) => (Value::from(area), Value::from(exchange), Value::from(line)),
        None => (Value::Null, Value::Null, Value::Null),
    };
    Parsed::new(Value::String(e164.clone()), valid)
        .with("e164", e164)
        .with("country_code", country_code)
        .with("region", region)
        .with("area", area)
        .with("exchange", exchange)
        .with("line", line)
        .with("national", national)
        .with("type", type_name(number_type))
        .with("is_tollfree", number_type == Type::TollFree)
        .with("extension", extension)
}

fn type_name(number_type: Type) -> &'static str {
    match number_type {
        Type::FixedLine => "fixed_line",
        Type::Mobile => "mobile",
        Type::FixedLineOrMobile => "fixed_line_or_mobile",
        Type::TollFree => "toll_free",
        Type::PremiumRate => "premium_rate",
        Type::SharedCost => "shared_cost",
        Type::PersonalNumber => "personal_number",
        Type::Voip => "voip",
        Type::Pager => "pager",
        Type::Uan => "uan",
        Type::Emergency => "emergency",
        Type::Voicemail => "voicemail",
        Type::ShortCode => "short_code",
        Type::StandardRate => "standard_rate",
        Type::Carrier => "carrier",
        Type::NoInternational => "no_international",
        Type::Unknown => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::test_support::{assert_parsed, huge};
    use super::super::{parse_field, FieldType};

    #[track_caller]
    fn check(raw: &str, expected: Value) {
        assert_parsed(FieldType::Phone, raw, expected);
    }

    #[track_caller]
    fn check_unparsed(raw: &str) {
        check(
            raw,
            json!({
                "value": raw.trim(), "valid": false, "e164": null, "country_code": null,
                "region": null, "area": null, "exchange": null, "line": null, "national": null,
                "type": null, "is_tollfree": null, "extension": null,
            }),
        );
    }

    fn us_number(extension: Value) -> Value {
        json!({
            "value": "+12125550100", "valid": true, "e164": "+12125550100", "country_code": 1,
            "region": "US", "area": "212", "exchange": "555", "line": "0100",
            "national": "2125550100", "type": "fixed_line_or_mobile", "is_tollfree": false,
            "extension": extension,
        })
    }

    #[test]
    fn us_numbers_in_every_common_writing_parse_to_the_same_e164() {
        for raw in [
            "(212) 555-0100",
            "212.555.0100",
            "212-555-0100",
            "2125550100",
            "1-212-555-0100",
            "+1 212 555 0100",
            "+1 (212) 555-0100",
            " 1 212 555 0100 ",
            "011 1 212 555 0100",
        ] {
            check(raw, us_number(Value::Null));
        }
    }

    #[test]
    fn an_extension_is_split_off_and_kept() {
        for raw in ["212-555-0100 x12", "212-555-0100 ext. 12", "(212) 555-0100 extension 12", "2125550100#12"] {
            check(raw, us_number(json!("12")));
        }
    }

    #[test]
    fn numbers_in_the_555_01xx_fiction_range_still_fill_their_components() {
        let out = parse_field(FieldType::Phone, "(512) 555-0134");
        assert_eq!(out["e164"], json!("+15125550134"));
        assert_eq!(out["country_code"], json!(1));
        assert_eq!(out["area"], json!("512"));
        assert_eq!(out["exchange"], json!("555"));
        assert_eq!(out["line"], json!("0134"));
        assert_eq!(out["national"], json!("5125550134"));
        let expected_value = if out["valid"] == json!(true) { "+15125550134" } else { "(512) 555-0134" };
        assert_eq!(out["value"], json!(expected_value));
    }

    #[test]
    fn numbers_with_a_country_code_keep_every_national_digit() {
        for (raw, e164, region) in [
            ("+33 1 42 68 53 00", "+33142685300", "FR"),
            ("+33 6 12 34 56 78", "+33612345678", "FR"),
            ("+44 20 7946 0958", "+442079460958", "GB"),
            ("0033 1 42 68 53 00", "+33142685300", "FR"),
        ] {
            let out = parse_field(FieldType::Phone, raw);
            assert_eq!(out["e164"], json!(e164), "{raw}: {out:?}");
            assert_eq!(out["valid"], json!(true), "{raw}: {out:?}");
            assert_eq!(out["region"], json!(region), "{raw}: {out:?}");
        }
    }

    #[test]
    fn toll_free_numbers_are_flagged() {
        let out = parse_field(FieldType::Phone, "1-800-555-0199");
        assert_eq!(out["e164"], json!("+18005550199"));
        assert_eq!(out["area"], json!("800"));
        let out = parse_field(FieldType::Phone, "(888) 275-8747");
        assert_eq!(out["valid"], json!(true));
        assert_eq!(out["type"], json!("toll_free"));
        assert_eq!(out["is_tollfree"], json!(true));
    }

    #[test]
    fn international_numbers_keep_their_country_and_have_no_nanp_split() {
        check(
            "+44 20 7946 0958",
            json!({
                "value": "+442079460958", "valid": true, "e164": "+442079460958", "country_code": 44,
                "region": "GB", "area": null, "exchange": null, "line": null,
                "national": "2079460958", "type": "fixed_line", "is_tollfree": false, "extension": null,
            }),
        );
        for (raw, e164, code, region, kind) in [
            ("0044 20 7946 0958", "+442079460958", 44, "GB", "fixed_line"),
            ("+33 6 12 34 56 78", "+33612345678", 33, "FR", "mobile"),
            ("+49 30 901820", "+4930901820", 49, "DE", "fixed_line"),
            ("+1 416 555 0123", "+14165550123", 1, "CA", "fixed_line_or_mobile"),
        ] {
            let out = parse_field(FieldType::Phone, raw);
            assert_eq!(out["e164"], json!(e164), "{raw}");
            assert_eq!(out["country_code"], json!(code), "{raw}");
            if out["valid"] == json!(true) {
                assert_eq!(out["region"], json!(region), "{raw}");
                assert_eq!(out["type"], json!(kind), "{raw}");
            }
        }
    }

    #[test]
    fn an_italian_number_keeps_its_leading_zero_in_the_national_number() {
        let out = parse_field(FieldType::Phone, "+39 02 1234 5678");
        assert_eq!(out["valid"], json!(true));
        assert_eq!(out["national"], json!("0212345678"));
        assert_eq!(out["e164"], json!("+390212345678"));
        assert_eq!(out["region"], json!("IT"));
    }

    #[test]
    fn non_numbers_are_unparsed() {
        for raw in [
            "",
            "   ",
            "hello",
            "12",
            "+",
            "++1 212 555 0100",
            "212-555-010[0-9]9999999999",
            "  2 22#:",
            "212 555 0100 call me",
            "Zoë Ñúñez",
            "📞 212 555 0100",
            "1e10",
        ] {
            check_unparsed(raw);
        }
        // Numbers of the right shape that no numbering plan knows have no made-up parts.
        for raw in [
            "555-1234",
            "555-0199",
            "07911 123456",
            "0512 555 0199",
            "020 7946 0958",
            "003-836-4618x3001",
            "000 000 0000",
            "+999 1234 5678",
        ] {
            check_unparsed(raw);
        }
        check_unparsed(&huge("9"));
        check_unparsed(&huge("+1 "));
    }

    #[test]
    fn arbitrary_digit_strings_never_panic() {
        // A small deterministic generator sweeps lengths, prefixes and digits.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..5_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let length = 7 + (state % 12) as usize;
            let digits: String = (0..length).map(|i| char::from(b'0' + ((state >> (i * 3)) % 10) as u8)).collect();
            let prefix = ["", "+", "00", "+1", "1"][(state % 5) as usize];
            let out = parse_field(FieldType::Phone, &format!("{prefix}{digits}"));
            assert!(out["valid"].is_boolean());
        }
    }
}
