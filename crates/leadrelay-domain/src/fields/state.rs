//! The `state` field type: a US state, DC or inhabited territory, written as its two-letter
//! USPS code or its name, normalised to the code.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::Value;

use super::Parsed;

const COMPONENTS: [&str; 2] = ["code", "name"];

/// Longer than any state name or alias; longer input is not looked up at all.
const MAX_LENGTH: usize = 64;

/// USPS code and canonical name of every state, DC and the inhabited territories.
const STATES: [(&str, &str); 56] = [
    ("AL", "Alabama"),
    ("AK", "Alaska"),
    ("AZ", "Arizona"),
    ("AR", "Arkansas"),
    ("CA", "California"),
    ("CO", "Colorado"),
    ("CT", "Connecticut"),
    ("DE", "Delaware"),
    ("DC", "District of Columbia"),
    ("FL", "Florida"),
    ("GA", "Georgia"),
    ("HI", "Hawaii"),
    ("ID", "Idaho"),
    ("IL", "Illinois"),
    ("IN", "Indiana"),
    ("IA", "Iowa"),
    ("KS", "Kansas"),
    ("KY", "Kentucky"),
    ("LA", "Louisiana"),
    ("ME", "Maine"),
    ("MD", "Maryland"),
    ("MA", "Massachusetts"),
    ("MI", "Michigan"),
    ("MN", "Minnesota"),
    ("MS", "Mississippi"),
    ("MO", "Missouri"),
    ("MT", "Montana"),
    ("NE", "Nebraska"),
    ("NV", "Nevada"),
    ("NH", "New Hampshire"),
    ("NJ", "New Jersey"),
    ("NM", "New Mexico"),
    ("NY", "New York"),
    ("NC", "North Carolina"),
    ("ND", "North Dakota"),
    ("OH", "Ohio"),
    ("OK", "Oklahoma"),
    ("OR", "Oregon"),
    ("PA", "Pennsylvania"),
    ("RI", "Rhode Island"),
    ("SC", "South Carolina"),
    ("SD", "South Dakota"),
    ("TN", "Tennessee"),
    ("TX", "Texas"),
    ("UT", "Utah"),
    ("VT", "Vermont"),
    ("VA", "Virginia"),
    ("WA", "Washington"),
    ("WV", "West Virginia"),
    ("WI", "Wisconsin"),
    ("WY", "Wyoming"),
    ("PR", "Puerto Rico"),
    ("GU", "Guam"),
    ("VI", "U.S. Virgin Islands"),
    ("AS", "American Samoa"),
    ("MP", "Northern Mariana Islands"),
];

/// Other common spellings, keyed as `normalise` leaves them.
const ALIASES: [(&str, &str); 8] = [
    ("washington dc", "DC"),
    ("washington district of columbia", "DC"),
    ("virgin islands", "VI"),
    ("us virgin islands", "VI"),
    ("united states virgin islands", "VI"),
    ("northern marianas", "MP"),
    ("commonwealth of puerto rico", "PR"),
    ("mariana islands", "MP"),
];

/// Every accepted key (code, name, alias), normalised, to its index in `STATES`.
static LOOKUP: LazyLock<HashMap<String, usize>> = LazyLock::new(|| {
    let index_of = |code: &str| STATES.iter().position(|(c, _)| *c == code);
    let mut lookup = HashMap::new();
    for (index, (code, name)) in STATES.iter().enumerate() {
        lookup.insert(normalise(code), index);
        lookup.insert(normalise(name), index);
    }
    for (alias, code) in ALIASES {
        if let Some(index) = index_of(code) {
            lookup.insert(normalise(alias), index);
        }
    }
    lookup
});

/// Lower case, without dots or commas, with single spaces: `"U.S.  Virgin Islands"` →
/// `"us virgin islands"`.
fn normalise(text: &str) -> String {
    let without_dots: String = text.chars().filter(|c| !matches!(c, '.' | ',')).collect();
    without_dots.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

pub(super) fn parse(trimmed: &str) -> Parsed {
    if trimmed.len() > MAX_LENGTH {
        return Parsed::unparsed(trimmed, &COMPONENTS);
    }
    match LOOKUP.get(&normalise(trimmed)) {
        Some(&index) => {
            let (code, name) = STATES[index];
            Parsed::new(Value::from(code), true).with("code", code).with("name", name)
        }
        None => Parsed::unparsed(trimmed, &COMPONENTS),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::test_support::{assert_parsed, huge};
    use super::super::FieldType;
    use super::STATES;

    #[track_caller]
    fn check(raw: &str, expected: Value) {
        assert_parsed(FieldType::State, raw, expected);
    }

    #[track_caller]
    fn check_state(raw: &str, code: &str, name: &str) {
        check(raw, json!({"value": code, "valid": true, "code": code, "name": name}));
    }

    #[track_caller]
    fn check_invalid(raw: &str) {
        check(raw, json!({"value": raw.trim(), "valid": false, "code": null, "name": null}));
    }

    #[test]
    fn codes_are_accepted_in_any_case() {
        for (raw, code, name) in [
            ("TX", "TX", "Texas"),
            ("tx", "TX", "Texas"),
            (" Ny ", "NY", "New York"),
            ("dc", "DC", "District of Columbia"),
            ("pr", "PR", "Puerto Rico"),
            ("GU", "GU", "Guam"),
            ("vi", "VI", "U.S. Virgin Islands"),
            ("As", "AS", "American Samoa"),
            ("mp", "MP", "Northern Mariana Islands"),
        ] {
            check_state(raw, code, name);
        }
    }

    #[test]
    fn names_are_accepted_in_any_case_and_spacing() {
        for (raw, code, name) in [
            ("texas", "TX", "Texas"),
            ("New York", "NY", "New York"),
            ("NEW   YORK", "NY", "New York"),
            ("north carolina", "NC", "North Carolina"),
            ("District of Columbia", "DC", "District of Columbia"),
            ("Washington, D.C.", "DC", "District of Columbia"),
            ("D.C.", "DC", "District of Columbia"),
            ("US Virgin Islands", "VI", "U.S. Virgin Islands"),
            ("u.s. virgin islands", "VI", "U.S. Virgin Islands"),
            ("washington", "WA", "Washington"),
        ] {
            check_state(raw, code, name);
        }
    }

    #[test]
    fn every_state_round_trips_by_code_and_by_name() {
        for (code, name) in STATES {
            check_state(code, code, name);
            check_state(&name.to_lowercase(), code, name);
        }
    }

    #[test]
    fn unknown_places_and_garbage_are_invalid() {
        for raw in ["", "  ", "XX", "Texass", "T X", "Ontario", "ON", "AA", "12", "Zoë Ñúñez", "🎉", "New\u{0}York"]
        {
            check_invalid(raw);
        }
        check_invalid(&huge("texas"));
    }
}
