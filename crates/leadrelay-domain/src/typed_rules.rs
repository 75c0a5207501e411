//! Rules read against the flow's field types: a rule's operand is read as its field's type,
//! as the lead's value was (`dob gt "01/01/1990"` compares with `1990-01-01`, `state eq
//! "Texas"` with `TX`, `phone eq "(512) 555-0100"` with `+15125550100`), and rule paths and
//! operands a field's type cannot take are refused with the configuration.

use serde_json::Value;

use crate::fields::{component_names, parse_field, FieldType};
use crate::rules::{Op, Rule, RuleNode, RuleSet};

/// The ops whose operand is a value of the field (not a pattern or a substring).
fn compares_values(op: Op) -> bool {
    matches!(op, Op::Eq | Op::Ne | Op::In | Op::NotIn | Op::Gt | Op::Gte | Op::Lt | Op::Lte)
}

fn orders(op: Op) -> bool {
    matches!(op, Op::Gt | Op::Gte | Op::Lt | Op::Lte)
}

/// The types whose parsed value differs from how people write it.
fn normalises(field_type: FieldType) -> bool {
    matches!(
        field_type,
        FieldType::Phone
            | FieldType::State
            | FieldType::Date
            | FieldType::Dob
            | FieldType::Number
            | FieldType::Boolean
            | FieldType::PostalCode
    )
}

/// An operand read as a value of the field's type, when it is one.
fn read_as(field_type: FieldType, operand: &Value) -> Option<Value> {
    let text = match operand {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        _ => return None,
    };
    let parsed = parse_field(field_type, &text);
    (parsed.get("valid") == Some(&Value::Bool(true))).then(|| parsed.get("value").cloned()).flatten()
}

/// The set with every operand of a whole typed field read as that field's type; operands
/// that are not values of the type stay as written.
pub fn typed(set: &RuleSet, type_of: &dyn Fn(&str) -> Option<FieldType>) -> RuleSet {
    let map = |items: &[RuleNode]| -> Vec<RuleNode> {
        items
            .iter()
            .map(|item| match item {
                RuleNode::Rule(rule) => RuleNode::Rule(typed_rule(rule, type_of)),
                RuleNode::Set(set) => RuleNode::Set(typed(set, type_of)),
            })
            .collect()
    };
    match set {
        RuleSet::All(items) => RuleSet::All(map(items)),
        RuleSet::Any(items) => RuleSet::Any(map(items)),
    }
}

fn typed_rule(rule: &Rule, type_of: &dyn Fn(&str) -> Option<FieldType>) -> Rule {
    let Some(field_type) = type_of(&rule.field).filter(|field_type| normalises(*field_type)) else {
        return rule.clone();
    };
    if !compares_values(rule.op) {
        return rule.clone();
    }
    let read = |operand: &Value| read_as(field_type, operand).unwrap_or_else(|| operand.clone());
    let value = rule.value.as_ref().map(|value| match value {
        Value::Array(items) => Value::Array(items.iter().map(read).collect()),
        other => read(other),
    });
    Rule { field: rule.field.clone(), op: rule.op, value }
}

/// What a rule set asks that the flow's fields cannot answer: a component the field's type
/// does not have (`email.domian`), or an ordering against something that is not a value of
/// the field's type (`dob gt "someday"`). Each problem names the rule's place in the set.
pub fn problems(set: &RuleSet, type_of: &dyn Fn(&str) -> Option<FieldType>) -> Vec<String> {
    problems_under(set, "", type_of)
}

/// [`problems`] of the rules whose paths start with `prefix` (`lead.` in the events API's
/// `rules`), their fields named without it.
pub fn problems_under(set: &RuleSet, prefix: &str, type_of: &dyn Fn(&str) -> Option<FieldType>) -> Vec<String> {
    let mut found = Vec::new();
    walk(set, "", prefix, type_of, &mut found);
    found
}

fn walk(set: &RuleSet, at: &str, prefix: &str, type_of: &dyn Fn(&str) -> Option<FieldType>, found: &mut Vec<String>) {
    let (key, items) = match set {
        RuleSet::All(items) => ("all", items),
        RuleSet::Any(items) => ("any", items),
    };
    for (index, item) in items.iter().enumerate() {
        let here = if at.is_empty() { format!("{key}[{index}]") } else { format!("{at}.{key}[{index}]") };
        match item {
            RuleNode::Set(set) => walk(set, &here, prefix, type_of, found),
            RuleNode::Rule(rule) => {
                if let Some(field) = rule.field.strip_prefix(prefix) {
                    rule_problems(field, rule, &here, type_of, found);
                }
            }
        }
    }
}

fn rule_problems(
    field: &str,
    rule: &Rule,
    at: &str,
    type_of: &dyn Fn(&str) -> Option<FieldType>,
    found: &mut Vec<String>,
) {
    if let Some((name, component)) = field.split_once('.') {
        if let Some(field_type) = type_of(name) {
            let known = component_names(field_type);
            if !known.iter().any(|known| known == component) {
                found.push(format!(
                    "{at}.field: {name} is a field of type {}, which has no part {component:?} (its parts: {})",
                    field_type.as_str(),
                    known.join(", ")
                ));
            }
        }
        return;
    }
    let Some(field_type) = type_of(field) else { return };
    if !orders(rule.op) || !matches!(field_type, FieldType::Date | FieldType::Dob | FieldType::Number) {
        return;
    }
    if let Some(value) = &rule.value {
        if read_as(field_type, value).is_none() {
            found.push(format!(
                "{at}.value: {value} cannot be read as a {} to order {} by",
                field_type.as_str(),
                rule.field
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn types(name: &str) -> Option<FieldType> {
        match name {
            "dob" => Some(FieldType::Dob),
            "state" => Some(FieldType::State),
            "phone" => Some(FieldType::Phone),
            "amount" => Some(FieldType::Number),
            "email" => Some(FieldType::Email),
            "note" => Some(FieldType::Text),
            _ => None,
        }
    }

    fn rules(value: serde_json::Value) -> RuleSet {
        RuleSet::from_json(&value).unwrap()
    }

    fn field(raw: &str, field_type: FieldType) -> serde_json::Value {
        serde_json::Value::Object(parse_field(field_type, raw))
    }

    #[test]
    fn operands_are_read_as_the_field_type_like_the_lead_was() {
        let lead = json!({
            "dob": field("05/17/1980", FieldType::Dob),
            "state": field("tx", FieldType::State),
            "phone": field("(512) 555-0100", FieldType::Phone),
            "amount": field("1000", FieldType::Number),
            "note": field("TX", FieldType::Text),
        });
        let passes = |rule: serde_json::Value| typed(&rules(json!({"all": [rule]})), &types).compile().matches(&lead);
        assert!(!passes(json!({"field": "dob", "op": "gt", "value": "01/01/1990"})));
        assert!(passes(json!({"field": "dob", "op": "lt", "value": "01/01/2000"})));
        assert!(passes(json!({"field": "dob", "op": "eq", "value": "May 17, 1980"})));
        assert!(passes(json!({"field": "state", "op": "eq", "value": "Texas"})));
        assert!(passes(json!({"field": "state", "op": "in", "value": ["California", "Texas"]})));
        assert!(!passes(json!({"field": "state", "op": "not_in", "value": ["texas"]})));
        assert!(passes(json!({"field": "phone", "op": "eq", "value": "512-555-0100"})));
        assert!(passes(json!({"field": "amount", "op": "eq", "value": "1,000"})));
        // Text stays text, and a value the type cannot read is compared as written.
        assert!(!passes(json!({"field": "note", "op": "eq", "value": "Texas"})), "a text field is not a state");
        assert!(!passes(json!({"field": "state", "op": "eq", "value": "Texas Hill Country"})));
    }

    #[test]
    fn parts_and_orderings_the_type_cannot_take_are_problems() {
        let set = rules(json!({"all": [
            {"field": "email.domain", "op": "eq", "value": "example.com"},
            {"any": [{"field": "email.domian", "op": "eq", "value": "example.com"}]},
            {"field": "dob", "op": "gt", "value": "someday"},
            {"field": "amount", "op": "lte", "value": 5},
            {"field": "appended.check.carrier", "op": "eq", "value": "x"},
            {"field": "undeclared.part", "op": "eq", "value": "x"},
        ]}));
        assert_eq!(
            problems(&set, &types),
            [
                "all[1].any[0].field: email is a field of type email, which has no part \"domian\" (its parts: raw, \
                 value, valid, user, domain, is_free, is_disposable)",
                "all[2].value: \"someday\" cannot be read as a dob to order dob by",
            ]
        );
    }
}
