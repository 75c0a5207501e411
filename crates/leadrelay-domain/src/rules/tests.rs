//! Unit tests of the rule language: parsing and its errors, every op, and verdicts.

use serde_json::{json, Map, Value};

use super::*;

/// Parses `rules`, evaluates them against `item`, and checks `matches` agrees with `evaluate`.
#[track_caller]
fn check(rules: Value, item: Value, expected: bool) -> Verdict {
    let set = RuleSet::from_json(&rules).unwrap_or_else(|error| panic!("{rules} was refused: {error}"));
    let compiled = set.compile();
    let verdict = compiled.evaluate(&item);
    assert_eq!(verdict.passed, expected, "{rules} on {item}: {verdict:?}");
    assert_eq!(compiled.matches(&item), expected, "matches disagrees with evaluate for {rules} on {item}");
    verdict
}

/// One rule on field `x` (a null `value` means none) against `{"x": actual}`.
#[track_caller]
fn check_op(op: &str, value: Value, actual: Value, expected: bool) {
    check(json!({"all": [{"field": "x", "op": op, "value": value}]}), json!({ "x": actual }), expected);
}

/// One rule on field `x` against an item that has no `x`.
#[track_caller]
fn check_missing(op: &str, value: Value, expected: bool) {
    check(json!({"all": [{"field": "x", "op": op, "value": value}]}), json!({"y": 1}), expected);
}

#[track_caller]
fn check_error(rules: Value, expected: &str) {
    match RuleSet::from_json(&rules) {
        Ok(set) => panic!("{rules} was accepted as {set:?}, expected {expected}"),
        Err(error) => assert_eq!(error.to_string(), expected),
    }
}

fn rule(field: &str, op: &str, value: Value) -> Value {
    json!({"field": field, "op": op, "value": value})
}

fn field_object(raw: &str, value: Value, valid: bool) -> Value {
    json!({"raw": raw, "value": value, "valid": valid})
}

// Parsing and serialising

#[test]
fn canonical_json_round_trips_through_the_data_model() {
    let text = json!({"all": [
        {"field": "state", "op": "in", "value": ["TX", "CA"]},
        {"any": [
            {"field": "email.domain", "op": "not_blank"},
            {"field": "phone.area", "op": "starts_with", "value": "55"}
        ]}
    ]});
    let set = RuleSet::from_json(&text).unwrap();
    assert_eq!(
        set,
        RuleSet::All(vec![
            RuleNode::Rule(Rule::new("state", Op::In, Some(json!(["TX", "CA"])))),
            RuleNode::Set(RuleSet::Any(vec![
                RuleNode::Rule(Rule::new("email.domain", Op::NotBlank, None)),
                RuleNode::Rule(Rule::new("phone.area", Op::StartsWith, Some(json!("55")))),
            ])),
        ])
    );
    assert_eq!(serde_json::to_value(&set).unwrap(), text);
    let through_serde: RuleSet = serde_json::from_value(text).unwrap();
    assert_eq!(through_serde, set);
}

#[test]
fn null_value_reads_as_no_value() {
    let set = RuleSet::from_json(&json!({"all": [{"field": "x", "op": "blank", "value": null}]})).unwrap();
    assert_eq!(set, RuleSet::All(vec![RuleNode::Rule(Rule::new("x", Op::Blank, None))]));
    assert_eq!(serde_json::to_value(&set).unwrap(), json!({"all": [{"field": "x", "op": "blank"}]}));
}

#[test]
fn op_names_agree_everywhere() {
    for op in Op::ALL {
        assert_eq!(serde_json::to_value(op).unwrap(), json!(op.as_str()));
        assert_eq!(op.as_str().parse::<Op>().unwrap(), op);
        assert_eq!(op.to_string(), op.as_str());
    }
}

#[test]
fn deserialize_gives_the_same_errors_as_from_json() {
    let error =
        serde_json::from_str::<RuleSet>(r#"{"all": [{"field": "x", "op": "equals", "value": 1}]}"#).unwrap_err();
    assert!(error.to_string().starts_with(r#"all[0].op: unknown op "equals""#), "{error}");
}

#[test]
fn shape_errors_name_where_and_what() {
    let shape = r#"rule set must be an object with exactly one of "all" or "any""#;
    check_error(json!([]), shape);
    check_error(json!("all"), shape);
    check_error(json!({}), shape);
    check_error(json!({"field": "x", "op": "blank"}), shape);
    check_error(json!({"all": [rule("x", "eq", json!(1))], "any": [rule("x", "eq", json!(1))]}), shape);
    check_error(json!({"all": [rule("x", "eq", json!(1))], "name": "geo"}), r#"unknown key "name""#);
    check_error(json!({"all": []}), "all: must not be empty");
    check_error(json!({"any": {"field": "x"}}), "any: must be a list of rules and rule sets");
    check_error(json!({"all": ["state eq TX"]}), "all[0]: must be a rule or a rule set (an object), found a string");
    check_error(json!({"all": [rule("x", "blank", Value::Null), {"any": []}]}), "all[1].any: must not be empty");
    check_error(
        json!({"all": [rule("x", "blank", Value::Null), {"any": [rule("y", "eq", json!(1))], "name": "n"}]}),
        r#"all[1]: unknown key "name""#,
    );
    check_error(
        json!({"all": [{"any": [rule("x", "blank", Value::Null), {"all": [null]}]}]}),
        "all[0].any[1].all[0]: must be a rule or a rule set (an object), found null",
    );
}

#[test]
fn unknown_op_error_names_the_path() {
    check_error(
        json!({"all": [rule("x", "eq", json!(1)), rule("state", "equals", json!("TX"))]}),
        r#"all[1].op: unknown op "equals" (expected one of eq, ne, in, not_in, contains, starts_with, gt, gte, lt, lte, blank, not_blank, matches, valid, invalid)"#,
    );
    check_error(json!({"all": [{"field": "x", "op": 3}]}), "all[0].op: must be a string");
    check_error(json!({"all": [{"field": "x"}]}), r#"all[0]: rule needs an "op""#);
}

#[test]
fn unknown_key_error_names_the_key() {
    check_error(json!({"any": [{"feild": "state", "op": "eq", "value": "TX"}]}), r#"any[0]: unknown key "feild""#);
    check_error(json!({"any": [{"field": "state", "op": "eq", "valeu": "TX"}]}), r#"any[0]: unknown key "valeu""#);
}

#[test]
fn field_path_errors_explain_the_syntax() {
    let syntax = r#"(expected names of letters, digits, "_" or "-" separated by dots)"#;
    check_error(json!({"all": [{"op": "blank"}]}), r#"all[0]: rule needs a "field""#);
    check_error(json!({"all": [{"field": 7, "op": "blank"}]}), "all[0].field: must be a string");
    check_error(json!({"all": [{"field": "", "op": "blank"}]}), "all[0].field: must not be empty");
    for bad in ["email..domain", ".email", "email.", "first name", "état", "a/b", "x[0]"] {
        let expected = format!("all[0].field: invalid field path {} {syntax}", serde_json::to_string(bad).unwrap());
        check_error(json!({"all": [{"field": bad, "op": "blank"}]}), &expected);
    }
    check_error(
        json!({"all": [{"field": "a".repeat(257), "op": "blank"}]}),
        "all[0].field: field path is longer than 256 bytes",
    );
    assert!(
        RuleSet::from_json(&json!({"all": [rule("appended.phone_check.carrier-2_x", "blank", Value::Null)]})).is_ok()
    );
}

#[test]
fn value_errors_say_what_each_op_needs() {
    let one = |op: &str, value: Value| json!({"all": [rule("x", "blank", Value::Null), rule("a", "eq", json!(1)), rule("state", op, value)]});
    check_error(one("in", Value::Null), r#"all[2]: rule needs a "value" for op "in""#);
    check_error(one("eq", Value::Null), r#"all[2]: rule needs a "value" for op "eq""#);
    check_error(one("in", json!("TX")), r#"all[2].value: op "in" needs a list"#);
    check_error(one("not_in", json!([])), r#"all[2].value: op "not_in" needs a non-empty list"#);
    check_error(one("in", json!(["TX", ["CA"]])), "all[2].value[1]: list items must be strings, numbers or booleans");
    check_error(one("in", json!(["TX", null])), "all[2].value[1]: list items must be strings, numbers or booleans");
    check_error(
        one("in", json!(["TX", " "])),
        r#"all[2].value[1]: must not be blank (use op "blank" to test for an empty field)"#,
    );
    check_error(one("eq", json!(["TX"])), r#"all[2].value: op "eq" needs one value, not a list (use "in" for a list)"#);
    check_error(
        one("ne", json!(["TX"])),
        r#"all[2].value: op "ne" needs one value, not a list (use "not_in" for a list)"#,
    );
    check_error(one("contains", json!({"a": 1})), r#"all[2].value: op "contains" needs a string, number or boolean"#);
    check_error(one("eq", json!("")), r#"all[2].value: must not be blank (use op "blank" to test for an empty field)"#);
    check_error(one("gt", json!(true)), r#"all[2].value: op "gt" needs a number or a string"#);
    check_error(one("lte", json!([1])), r#"all[2].value: op "lte" needs a number or a string"#);
    check_error(one("matches", json!(5)), r#"all[2].value: op "matches" needs a string (a regular expression)"#);
    check_error(one("matches", json!("(abc")), "all[2].value: invalid regex: unclosed group");
    check_error(one("blank", json!("x")), r#"all[2].value: op "blank" takes no value"#);
    check_error(one("valid", json!(true)), r#"all[2].value: op "valid" takes no value"#);
}

#[test]
fn oversized_regex_is_refused() {
    let error = RuleSet::from_json(&json!({"all": [rule("x", "matches", json!(r"(?:\w{100}){100}"))]})).unwrap_err();
    assert_eq!(error.path(), "all[0].value");
    assert!(error.message().starts_with("invalid regex: the compiled pattern exceeds the size limit"), "{error}");
    let error = RuleSet::from_json(&json!({"all": [rule("x", "matches", json!("a".repeat(10_001)))]})).unwrap_err();
    assert_eq!(error.to_string(), "all[0].value: invalid regex: longer than 10000 bytes");
}

#[test]
fn huge_unknown_names_are_cut_short_in_errors() {
    let error = RuleSet::from_json(&json!({"all": [rule("x", &"é".repeat(5000), json!(1))]})).unwrap_err();
    assert!(error.to_string().len() < 400, "{error}");
    assert!(error.to_string().starts_with(&format!("all[0].op: unknown op \"{}…\"", "é".repeat(60))), "{error}");
}

fn nested(depth: usize) -> Value {
    (1..depth).fold(json!({"all": [rule("x", "blank", Value::Null)]}), |inner, _| json!({"any": [inner]}))
}

#[test]
fn nesting_deeper_than_sixteen_levels_is_refused() {
    assert!(RuleSet::from_json(&nested(16)).is_ok());
    let error = RuleSet::from_json(&nested(17)).unwrap_err();
    assert_eq!(error.message(), "rule sets nest too deeply (at most 16 levels)");
    assert_eq!(error.path(), vec!["any[0]"; 16].join("."));

    let hand_built = (1..17).fold(RuleSet::All(vec![RuleNode::Rule(Rule::new("x", Op::Blank, None))]), |inner, _| {
        RuleSet::Any(vec![RuleNode::Set(inner)])
    });
    assert_eq!(hand_built.validate().unwrap_err(), error);
}

#[test]
fn more_than_a_thousand_rules_are_refused() {
    let rules = |count: usize| json!({"all": vec![rule("x", "blank", Value::Null); count]});
    assert!(RuleSet::from_json(&rules(1000)).is_ok());
    check_error(rules(1001), "all[1000]: too many rules (at most 1000 in one rule set)");
    let split = json!({"any": [rules(600), rules(401)]});
    check_error(split, "any[1].all[400]: too many rules (at most 1000 in one rule set)");
}

#[test]
fn errors_can_be_placed_within_an_enclosing_document() {
    let error = RuleSet::from_json(&json!({"all": [rule("x", "nope", json!(1))]})).unwrap_err();
    assert!(error
        .clone()
        .within("flows[0].filters[1].rules")
        .to_string()
        .starts_with("flows[0].filters[1].rules.all[0].op: unknown op"));
    let error = RuleSet::from_json(&json!(null)).unwrap_err();
    assert_eq!(error.path(), "");
    assert_eq!(
        error.within("filter").to_string(),
        r#"filter: rule set must be an object with exactly one of "all" or "any""#
    );
}

#[test]
fn hand_built_sets_get_the_same_checks() {
    let bad = RuleSet::All(vec![
        RuleNode::Rule(Rule::new("x", Op::Blank, None)),
        RuleNode::Set(RuleSet::Any(vec![RuleNode::Rule(Rule::new("y", Op::Matches, Some(json!("("))))])),
    ]);
    assert_eq!(bad.validate().unwrap_err().to_string(), "all[1].any[0].value: invalid regex: unclosed group");
    assert!(bad.try_compile().is_err());
    assert_eq!(RuleSet::Any(vec![]).validate().unwrap_err().to_string(), "any: must not be empty");
    let no_value = RuleSet::All(vec![RuleNode::Rule(Rule::new("x", Op::In, None))]);
    assert_eq!(no_value.validate().unwrap_err().to_string(), r#"all[0]: rule needs a "value" for op "in""#);
}

#[test]
fn an_invalid_hand_built_rule_never_passes() {
    let item = json!({"y": "("});
    for op in [Op::Matches, Op::Ne, Op::NotIn] {
        let set = RuleSet::All(vec![RuleNode::Rule(Rule::new("y", op, Some(json!({"not": "a scalar"}))))]);
        let compiled = set.compile();
        assert!(!compiled.matches(&item), "{op}");
        let verdict = compiled.evaluate(&item);
        assert!(!verdict.passed);
        assert_eq!(verdict.evaluated.len(), 1);
    }
}

// Every op

#[test]
fn eq_on_text_is_case_insensitive_and_trimmed() {
    check_op("eq", json!("TX"), json!("tx"), true);
    check_op("eq", json!(" TX "), json!("  Tx\n"), true);
    check_op("eq", json!("TX"), json!("TXX"), false);
    check_op("eq", json!("TX"), json!("CA"), false);
    check_op("eq", json!("TX"), json!(null), false);
    check_op("eq", json!("TX"), json!({"a": "TX"}), false);
}

#[test]
fn a_list_is_read_item_by_item_by_every_op() {
    // A group of checkboxes: one item decides, the same way for every op.
    let tags = json!(["roof", "Solar"]);
    check_op("eq", json!("solar"), tags.clone(), true);
    check_op("ne", json!("solar"), tags.clone(), false);
    check_op("in", json!(["solar"]), tags.clone(), true);
    check_op("not_in", json!(["solar"]), tags.clone(), false);
    check_op("contains", json!("solar"), tags.clone(), true);
    check_op("starts_with", json!("sol"), tags.clone(), true);
    check_op("matches", json!("^Sol"), tags.clone(), true);
    check_op("eq", json!("wind"), tags.clone(), false);
    check_op("ne", json!("wind"), tags, true);
    check_op("eq", json!("TX"), json!(["TX"]), true);
}

#[test]
fn eq_compares_numerically_when_either_side_is_a_number() {
    check_op("eq", json!(42), json!("42"), true);
    check_op("eq", json!("42"), json!(42), true);
    check_op("eq", json!(42), json!(42.0), true);
    check_op("eq", json!(42), json!(" 42.0 "), true);
    check_op("eq", json!(42), json!("042"), true);
    check_op("eq", json!(1000), json!("1,000"), false);
    check_op("eq", json!(42), json!("forty-two"), false);
    check_op("eq", json!(u64::MAX), json!(u64::MAX), true);
    check_op("eq", json!(u64::MAX), json!(u64::MAX - 1), false);
    check_op("eq", json!(-7), json!("-7"), true);
    check_op("eq", json!(0.5), json!(".5"), true);
}

#[test]
fn two_strings_compare_as_text_even_when_numeric() {
    check_op("eq", json!("01234"), json!("1234"), false);
    check_op("eq", json!("01234"), json!("01234"), true);
    check_op("eq", json!("42"), json!("42.0"), false);
}

#[test]
fn booleans_compare_leniently() {
    for truthy in [json!(true), json!("true"), json!("Yes"), json!("y"), json!("on"), json!("1"), json!(1)] {
        check_op("eq", json!(true), truthy.clone(), true);
        check_op("eq", json!(false), truthy.clone(), false);
        check_op("eq", truthy, json!(true), true);
    }
    for falsy in [json!(false), json!("FALSE"), json!("no"), json!("off"), json!("0"), json!(0)] {
        check_op("eq", json!(false), falsy.clone(), true);
        check_op("eq", json!(true), falsy, false);
    }
    check_op("eq", json!(true), json!("maybe"), false);
    check_op("eq", json!(true), json!(2), false);
    check_op("eq", json!("yes"), json!("true"), false);
}

#[test]
fn ne_is_the_negation_of_eq() {
    check_op("ne", json!("TX"), json!("tx"), false);
    check_op("ne", json!("TX"), json!("CA"), true);
    check_op("ne", json!(42), json!("42"), false);
    check_op("ne", json!("TX"), json!(null), true);
    check_op("ne", json!("TX"), json!(["TX"]), false);
}

#[test]
fn in_list_is_case_insensitive() {
    check_op("in", json!(["TX", "CA"]), json!("tx"), true);
    check_op("in", json!(["TX", "CA"]), json!(" ca "), true);
    check_op("in", json!(["TX", "CA"]), json!("NY"), false);
    check_op("in", json!(["TX", 42, true]), json!("42"), true);
    check_op("in", json!(["TX", 42, true]), json!(42), true);
    check_op("in", json!(["TX", "42"]), json!(42), true);
    check_op("in", json!(["TX", true]), json!("yes"), true);
    check_op("in", json!(["TX"]), json!(null), false);
}

#[test]
fn in_list_on_a_list_value_asks_for_any_shared_element() {
    check_op("in", json!(["solar", "wind"]), json!(["roof", "Solar"]), true);
    check_op("in", json!(["solar", "wind"]), json!(["roof"]), false);
    check_op("in", json!(["solar"]), json!([]), false);
    check_op("not_in", json!(["solar", "wind"]), json!(["roof", "Solar"]), false);
    check_op("not_in", json!(["solar", "wind"]), json!(["roof"]), true);
}

#[test]
fn long_lists_match_like_short_ones() {
    let mut zips: Vec<Value> = (0..5000).map(|n| json!(format!("{n:05}"))).collect();
    zips.push(json!("ÉTÉ"));
    zips.push(json!(99999));
    check_op("in", json!(zips), json!("04999"), true);
    check_op("in", json!(zips), json!("4999"), false);
    check_op("in", json!(zips), json!("été"), true);
    check_op("in", json!(zips), json!(99999), true);
    check_op("in", json!(zips), json!("99999"), true);
    check_op("in", json!(zips), json!("05000"), false);
    check_op("not_in", json!(zips), json!("05000"), true);
}

#[test]
fn not_in_is_the_negation_of_in() {
    check_op("not_in", json!(["TX", "CA"]), json!("tx"), false);
    check_op("not_in", json!(["TX", "CA"]), json!("NY"), true);
    check_op("not_in", json!(["TX", "CA"]), json!(""), true);
    check_op("not_in", json!([1, 2]), json!("2"), false);
}

#[test]
fn contains_searches_text_and_lists() {
    check_op("contains", json!("ACME"), json!("Acme Solar Inc"), true);
    check_op("contains", json!("solar "), json!("Acme Solar Inc"), true);
    check_op("contains", json!("wind"), json!("Acme Solar Inc"), false);
    check_op("contains", json!(555), json!("(555) 123-4567"), true);
    check_op("contains", json!("555"), json!(5551234567_u64), true);
    check_op("contains", json!("tRUe"), json!(true), true);
    check_op("contains", json!("solar"), json!(["Wind", "SOLAR"]), true);
    check_op("contains", json!("sol"), json!(["Wind", "SOLAR"]), false);
    check_op("contains", json!(3), json!([1, 2, "3"]), true);
    check_op("contains", json!("x"), json!({"x": 1}), false);
    check_op("contains", json!("x"), json!(null), false);
}

#[test]
fn starts_with_compares_the_beginning_of_the_text() {
    check_op("starts_with", json!("https://"), json!("  HTTPS://example.com"), true);
    check_op("starts_with", json!("555"), json!(5551234), true);
    check_op("starts_with", json!(555), json!("5551234"), true);
    check_op("starts_with", json!("555"), json!("1555"), false);
    check_op("starts_with", json!("longer"), json!("long"), false);
    check_op("starts_with", json!("a"), json!(["abc"]), true);
}

#[test]
fn comparisons_are_numeric_when_both_sides_are_numbers() {
    check_op("gt", json!(99), json!(100), true);
    check_op("gt", json!("99"), json!("100"), true);
    check_op("gt", json!(100), json!(100), false);
    check_op("gte", json!(100), json!("100.0"), true);
    check_op("lt", json!(10), json!("9"), true);
    check_op("lt", json!(-1), json!(-2.5), true);
    check_op("lte", json!(2.5), json!(2.5), true);
    check_op("lte", json!(2.5), json!(2.51), false);
    check_op("gt", json!(i64::MAX), json!(u64::MAX), true);
}

#[test]
fn comparisons_of_text_order_iso_dates() {
    check_op("gte", json!("2024-01-15"), json!("2024-01-15T14:30:45.123Z"), true);
    check_op("lt", json!("2024-01-15"), json!("2024-01-14"), true);
    check_op("lt", json!("2024-01-15"), json!("2023-12-31T23:59:59Z"), true);
    check_op("gt", json!("2024-01-15"), json!("2024-02-01"), true);
    check_op("gt", json!("b"), json!("A"), false);
    check_op("gt", json!("b"), json!("C"), true);
    check_op("lte", json!("2024-01-15"), json!("2024-01-15"), true);
}

#[test]
fn comparisons_never_pass_on_blank_boolean_or_mixed_values() {
    check_op("lt", json!(100), json!(""), false);
    check_op("lt", json!("zzz"), json!("  "), false);
    check_op("gt", json!(5), json!("abc"), false);
    check_op("lt", json!(5), json!("abc"), false);
    check_op("gt", json!("abc"), json!(5), false);
    check_op("gt", json!(0), json!(true), false);
    check_op("gt", json!(0), json!([1]), false);
    check_op("gt", json!(0), json!(null), false);
    check_op("gte", json!("18"), json!("abc"), false);
    check_op("lte", json!("18"), json!("abc"), false);
    check_op("gte", json!("2024"), json!("2024-05-01"), true);
}

#[test]
fn comparisons_never_pass_on_a_field_whose_value_is_invalid() {
    check_op("gte", json!("18"), field_object("abc", json!("abc"), false), false);
    check_op("lt", json!("2005-01-01"), field_object("!!", json!("!!"), false), false);
    check_op("lt", json!("2005-01-01"), field_object("0000", json!(null), false), false);
    check_op("gt", json!("999"), field_object("NaN", json!("NaN"), false), false);
    check_op("lt", json!("2005-01-01"), field_object("1990-01-01", json!("1990-01-01"), true), true);
    check_op("gte", json!(18), field_object("30", json!(30), true), true);
}

#[test]
fn blank_covers_null_whitespace_and_empty_containers() {
    for blank in [json!(null), json!(""), json!(" \t\n"), json!([]), json!({}), field_object("", json!(""), false)] {
        check_op("blank", Value::Null, blank.clone(), true);
        check_op("not_blank", Value::Null, blank, false);
    }
    for filled in
        [json!("x"), json!(0), json!(false), json!([null]), json!({"a": 1}), field_object("x", json!("x"), true)]
    {
        check_op("blank", Value::Null, filled.clone(), false);
        check_op("not_blank", Value::Null, filled, true);
    }
}

#[test]
fn matches_runs_the_regex_on_the_trimmed_text() {
    check_op("matches", json!(r"^\d{5}$"), json!(" 12345 "), true);
    check_op("matches", json!(r"^\d{5}$"), json!(12345), true);
    check_op("matches", json!(r"^\d{5}$"), json!("1234"), false);
    check_op("matches", json!("^acme"), json!("ACME corp"), false);
    check_op("matches", json!("(?i)^acme"), json!("ACME corp"), true);
    check_op("matches", json!("^$"), json!(""), true);
    check_op("matches", json!("^true$"), json!(true), true);
    check_op("matches", json!("x"), json!(["x"]), true);
    check_op("matches", json!("x"), json!(null), false);
    check_op("matches", json!(r"^\p{Greek}+$"), json!("αβγ"), true);
}

#[test]
fn valid_reads_the_field_objects_flag() {
    check_op("valid", Value::Null, field_object("a@x.com", json!("a@x.com"), true), true);
    check_op("valid", Value::Null, field_object("a@", json!("a@"), false), false);
    check_op("invalid", Value::Null, field_object("a@", json!("a@"), false), true);
    check_op("valid", Value::Null, json!({"value": "x", "valid": "false"}), false);
    check_op("valid", Value::Null, json!({"value": "x"}), true);
    check_op("valid", Value::Null, json!({"value": ""}), false);
}

#[test]
fn valid_on_a_plain_value_means_not_blank() {
    check_op("valid", Value::Null, json!("x"), true);
    check_op("valid", Value::Null, json!(0), true);
    check_op("valid", Value::Null, json!(" "), false);
    check_op("valid", Value::Null, json!(null), false);
    check_op("invalid", Value::Null, json!(" "), true);
    check_op("invalid", Value::Null, json!("x"), false);
}

#[test]
fn missing_paths_are_blank_invalid_and_equal_to_nothing() {
    check_missing("blank", Value::Null, true);
    check_missing("not_blank", Value::Null, false);
    check_missing("valid", Value::Null, false);
    check_missing("invalid", Value::Null, true);
    check_missing("ne", json!("TX"), true);
    check_missing("not_in", json!(["TX"]), true);
    check_missing("eq", json!("TX"), false);
    check_missing("in", json!(["TX"]), false);
    check_missing("contains", json!("T"), false);
    check_missing("starts_with", json!("T"), false);
    check_missing("gt", json!(0), false);
    check_missing("gte", json!(0), false);
    check_missing("lt", json!(0), false);
    check_missing("lte", json!("z"), false);
    check_missing("matches", json!(".*"), false);
}

// Field objects

#[test]
fn field_objects_compare_by_their_normalised_value() {
    let state = field_object("texas", json!("TX"), true);
    check_op("eq", json!("TX"), state.clone(), true);
    check_op("eq", json!("texas"), state.clone(), false);
    check_op("in", json!(["CA", "TX"]), state.clone(), true);
    check_op("starts_with", json!("T"), state, true);
    check_op("gt", json!(17), json!({"raw": "18 years", "value": 18, "valid": true}), true);
}

#[test]
fn field_objects_fall_back_to_raw_when_the_value_is_null() {
    let unparsed = json!({"raw": "sometime soon", "value": null, "valid": false});
    check_op("contains", json!("soon"), unparsed.clone(), true);
    check_op("blank", Value::Null, unparsed.clone(), false);
    check_op("valid", Value::Null, unparsed, false);
    check_op("blank", Value::Null, json!({"value": null}), true);
}

#[test]
fn components_resolve_by_dotted_path() {
    let lead = json!({
        "email": {"raw": "A@Example.com", "value": "a@example.com", "valid": true, "domain": "example.com", "is_free": false},
        "phone": {"raw": "555 123 4567", "value": "+15551234567", "valid": true, "area": "555"},
        "appended": {"phone_check": {"carrier": "Acme Mobile"}},
        "items": [{"sku": "A1"}, {"sku": "B2"}]
    });
    check(json!({"all": [rule("email.domain", "eq", json!("EXAMPLE.COM"))]}), lead.clone(), true);
    check(json!({"all": [rule("email.is_free", "eq", json!("no"))]}), lead.clone(), true);
    check(json!({"all": [rule("phone.area", "in", json!(["555", "556"]))]}), lead.clone(), true);
    check(json!({"all": [rule("appended.phone_check.carrier", "contains", json!("acme"))]}), lead.clone(), true);
    check(json!({"all": [rule("items.1.sku", "eq", json!("b2"))]}), lead.clone(), true);
    check(json!({"all": [rule("items.9.sku", "blank", Value::Null)]}), lead.clone(), true);
    check(json!({"all": [rule("email.domain.deeper", "blank", Value::Null)]}), lead, true);
}

// Unicode and huge values

#[test]
fn unicode_text_compares_case_insensitively() {
    check_op("eq", json!("ÉTAT"), json!("état"), true);
    check_op("eq", json!("ΟΔΟΣ"), json!("οδοσ"), true);
    check_op("eq", json!("ΟΔΟΣ"), json!("ΟΔΟΣ"), true);
    check_op("eq", json!("straße"), json!("STRASSE"), false);
    check_op("contains", json!("İstanbul"), json!("Welcome to İSTANBUL"), true);
    check_op("starts_with", json!("ÉT"), json!("été"), true);
    check_op("in", json!(["Zürich", "Genève"]), json!("ZÜRICH"), true);
    check_op("gt", json!("a"), json!("é"), true);
    check_op("eq", json!("😀 ok"), json!("😀 OK"), true);
}

#[test]
fn huge_values_are_compared_whole_but_recorded_short() {
    let huge = format!("{}needle{}", "x".repeat(1_000_000), "y".repeat(10));
    let verdict = check(json!({"all": [rule("x", "contains", json!("NEEDLE"))]}), json!({ "x": huge }), true);
    let recorded = verdict.evaluated[0].actual.as_ref().and_then(Value::as_str).unwrap();
    assert_eq!(recorded.chars().count(), 1001);
    assert!(recorded.ends_with('…'));

    let verdict = check(json!({"all": [rule("x", "eq", json!("short"))]}), json!({ "x": "é".repeat(200_000) }), false);
    assert!(verdict.describe_failure().len() < 200, "{}", verdict.describe_failure());

    let many: Vec<Value> = (0..500).map(|n| json!(n)).collect();
    let verdict = check(json!({"all": [rule("x", "contains", json!(-1))]}), json!({ "x": many }), false);
    let recorded = verdict.evaluated[0].actual.as_ref().and_then(Value::as_array).unwrap();
    assert_eq!(recorded.len(), 51);
    assert_eq!(recorded[50], json!("… and 450 more"));
}

// Nesting, short-circuit and verdicts

fn lead() -> Value {
    json!({
        "state": {"raw": "new york", "value": "NY", "valid": true},
        "email": {"raw": "a@", "value": "a@", "valid": false, "domain": ""},
        "age": 17
    })
}

#[test]
fn nested_sets_combine_all_and_any() {
    let geo_or_adult = |states: Value| {
        json!({"all": [
            {"any": [rule("state", "in", states), rule("age", "gte", json!(18))]},
            rule("email.domain", "blank", Value::Null)
        ]})
    };
    check(geo_or_adult(json!(["NY"])), lead(), true);
    check(geo_or_adult(json!(["TX"])), lead(), false);
    check(json!({"any": [{"all": [rule("age", "lt", json!(18)), rule("state", "eq", json!("ny"))]}]}), lead(), true);
    check(json!({"any": [{"all": [rule("age", "lt", json!(18)), rule("state", "eq", json!("tx"))]}]}), lead(), false);
}

#[test]
fn all_stops_recording_at_the_first_failure() {
    let verdict = check(
        json!({"all": [rule("age", "lt", json!(18)), rule("state", "eq", json!("TX")), rule("email", "valid", Value::Null)]}),
        lead(),
        false,
    );
    let recorded: Vec<(&str, bool)> =
        verdict.evaluated.iter().map(|outcome| (outcome.field.as_str(), outcome.passed)).collect();
    assert_eq!(recorded, [("age", true), ("state", false)]);
    assert_eq!(verdict.decisive, [1]);
}

#[test]
fn any_stops_recording_at_the_first_pass() {
    let verdict = check(
        json!({"any": [rule("state", "eq", json!("TX")), rule("state", "eq", json!("NY")), rule("state", "eq", json!("CA"))]}),
        lead(),
        true,
    );
    let recorded: Vec<(&Value, bool)> =
        verdict.evaluated.iter().map(|outcome| (outcome.value.as_ref().unwrap(), outcome.passed)).collect();
    assert_eq!(recorded, [(&json!("TX"), false), (&json!("NY"), true)]);
    assert_eq!(verdict.failed().count(), 1);
    assert!(verdict.decisive.is_empty());
    assert_eq!(verdict.describe_failure(), "");
}

#[test]
fn outcomes_record_expected_and_normalised_actual_values() {
    let verdict = check(
        json!({"all": [rule("state", "in", json!(["TX", "CA"])), rule("email", "valid", Value::Null)]}),
        lead(),
        false,
    );
    assert_eq!(
        serde_json::to_value(&verdict).unwrap(),
        json!({
            "passed": false,
            "evaluated": [{"field": "state", "op": "in", "value": ["TX", "CA"], "actual": "NY", "passed": false}],
            "decisive": [0]
        })
    );
}

#[test]
fn describe_failure_reads_as_a_sentence() {
    let verdict = check(json!({"all": [rule("state", "in", json!(["TX", "CA"]))]}), lead(), false);
    assert_eq!(verdict.describe_failure(), r#"state in [TX, CA] (was "NY")"#);
    let verdict = check(json!({"all": [rule("email.domain", "not_blank", Value::Null)]}), lead(), false);
    assert_eq!(verdict.describe_failure(), "email.domain not_blank (was blank)");
    let verdict = check(json!({"all": [rule("zip", "eq", json!("01234"))]}), lead(), false);
    assert_eq!(verdict.describe_failure(), "zip eq 01234 (was missing)");
    let verdict = check(json!({"all": [rule("age", "gte", json!(18))]}), lead(), false);
    assert_eq!(verdict.describe_failure(), "age gte 18 (was 17)");
    let verdict = check(json!({"all": [rule("email", "valid", Value::Null)]}), lead(), false);
    assert_eq!(verdict.describe_failure(), r#"email valid (was "a@")"#);
    let verdict = check(json!({"all": [rule("state", "eq", json!("New York, NY"))]}), lead(), false);
    assert_eq!(verdict.describe_failure(), r#"state eq "New York, NY" (was "NY")"#);
    let verdict = check(json!({"all": [rule("state", "in", json!((0..12).collect::<Vec<_>>()))]}), lead(), false);
    assert_eq!(verdict.describe_failure(), r#"state in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, … 2 more] (was "NY")"#);
}

#[test]
fn describe_failure_of_a_failed_any_joins_every_choice() {
    let verdict =
        check(json!({"any": [rule("state", "eq", json!("TX")), rule("age", "gt", json!(20))]}), lead(), false);
    assert_eq!(verdict.describe_failure(), r#"state eq TX (was "NY"); age gt 20 (was 17)"#);
}

#[test]
fn failures_an_any_got_over_do_not_explain_the_verdict() {
    let verdict = check(
        json!({"all": [
            {"any": [rule("state", "eq", json!("TX")), rule("state", "eq", json!("NY"))]},
            rule("age", "gte", json!(18))
        ]}),
        lead(),
        false,
    );
    assert_eq!(verdict.failed().count(), 2);
    assert_eq!(verdict.decisive, [2]);
    assert_eq!(verdict.describe_failure(), "age gte 18 (was 17)");
}

#[test]
fn verdicts_round_trip_through_json_keeping_null_apart_from_missing() {
    let verdict = check(
        json!({"any": [rule("a", "eq", json!(1)), rule("b", "eq", json!(1)), rule("c", "blank", Value::Null), rule("d", "eq", json!(1))]}),
        json!({"a": null, "c": "x"}),
        false,
    );
    let text = serde_json::to_value(&verdict).unwrap();
    assert_eq!(text["evaluated"][0]["actual"], json!(null));
    assert!(text["evaluated"][1].get("actual").is_none());
    assert!(text["evaluated"][2].get("value").is_none());
    let back: Verdict = serde_json::from_value(text).unwrap();
    assert_eq!(back, verdict);
    assert_eq!(back.evaluated[0].actual, Some(Value::Null));
    assert_eq!(back.evaluated[1].actual, None);
    assert_eq!(
        back.describe_failure(),
        "a eq 1 (was blank); b eq 1 (was missing); c blank (was \"x\"); d eq 1 (was missing)"
    );
}

#[test]
fn a_failing_verdict_without_indexes_describes_every_failure() {
    let verdict: Verdict = serde_json::from_value(json!({
        "passed": false,
        "evaluated": [
            {"field": "a", "op": "eq", "value": 1, "actual": 2, "passed": false},
            {"field": "b", "op": "blank", "passed": true}
        ]
    }))
    .unwrap();
    assert_eq!(verdict.describe_failure(), "a eq 1 (was 2)");
}

// Resolvers

#[test]
fn maps_closures_and_references_resolve() {
    let compiled = RuleSet::from_json(
        &json!({"all": [rule("state", "eq", json!("TX")), rule("email.domain", "eq", json!("x.com"))]}),
    )
    .unwrap()
    .compile();
    let mut fields = Map::new();
    fields.insert("state".into(), field_object("texas", json!("TX"), true));
    fields.insert("email".into(), json!({"value": "a@x.com", "domain": "x.com"}));
    assert!(compiled.matches(&fields));
    assert!(compiled.matches(&&fields));
    let dynamic: &dyn Resolve = &fields;
    assert!(compiled.evaluate(dynamic).passed);

    let flat = json!({"state": "TX", "email.domain": "x.com"});
    let resolver = FnResolver::new(|path: &str| flat.get(path));
    assert!(compiled.matches(&resolver));
    let nothing = FnResolver::new(|_: &str| None);
    assert!(!compiled.matches(&nothing));
}

#[test]
fn compiled_sets_are_reusable_across_many_items() {
    let compiled =
        RuleSet::from_json(&json!({"all": [rule("n", "gte", json!(500)), rule("tag", "in", json!(["a", "B"]))]}))
            .unwrap()
            .compile();
    let passing = (0..1000)
        .map(|n| json!({"n": n, "tag": if n % 2 == 0 { "b" } else { "c" }}))
        .filter(|item| compiled.matches(item))
        .count();
    assert_eq!(passing, 250);
}

#[test]
fn found_values_are_masked_for_readers_without_personal_data() {
    use super::mask_found_values;
    assert_eq!(
        mask_found_values(
            r#"Filter blocklist: email ne "x@y.com" (was "jo \"q\" (x)@example.com"); age gte 18 (was 17)"#
        ),
        r#"Filter blocklist: email ne "x@y.com" (was ***); age gte 18 (was ***)"#
    );
    assert_eq!(
        mask_found_values("zip eq 01234 (was missing); a blank (was blank)"),
        "zip eq 01234 (was missing); a blank (was blank)"
    );
    assert_eq!(
        mask_found_values("Duplicate: previously submitted 2024-01-10 (lead_1)"),
        "Duplicate: previously submitted 2024-01-10 (lead_1)"
    );
}
