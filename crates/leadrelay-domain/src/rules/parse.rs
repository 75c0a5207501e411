//! Reading a rule set from its JSON form, with errors that name where and what.
//!
//! This file checks the shape (objects, keys, types, op names); what a rule's field path and
//! value must be is checked by the compiler, so rule sets built in code get the same checks.

use serde_json::{Map, Value};

use super::compile::{check_rule, Budget};
use super::{quote, Location, Op, Rule, RuleError, RuleNode, RuleSet, MAX_DEPTH};

const SET_SHAPE: &str = r#"rule set must be an object with exactly one of "all" or "any""#;

pub(super) fn rule_set(value: &Value) -> Result<RuleSet, RuleError> {
    let Some(object) = value.as_object() else {
        return Err(Location::Root.error(SET_SHAPE));
    };
    if !object.contains_key("all") && !object.contains_key("any") {
        return Err(Location::Root.error(SET_SHAPE));
    }
    set(object, &Location::Root, 1, &mut Budget::default())
}

/// A rule set object, known to hold `all` or `any`.
fn set(
    object: &Map<String, Value>,
    at: &Location<'_>,
    depth: usize,
    budget: &mut Budget,
) -> Result<RuleSet, RuleError> {
    if object.contains_key("all") && object.contains_key("any") {
        return Err(at.error(SET_SHAPE));
    }
    if let Some(key) = object.keys().find(|key| *key != "all" && *key != "any") {
        return Err(at.error(format!("unknown key {}", quote(key))));
    }
    let (key, any) = if object.contains_key("all") { ("all", false) } else { ("any", true) };
    let list_at = Location::Key(at, key);
    let Some(list) = object[key].as_array() else {
        return Err(list_at.error("must be a list of rules and rule sets"));
    };
    if list.is_empty() {
        return Err(list_at.error("must not be empty"));
    }
    let mut items = Vec::with_capacity(list.len());
    for (index, item) in list.iter().enumerate() {
        items.push(node(item, &Location::Index(&list_at, index), depth, budget)?);
    }
    Ok(if any { RuleSet::Any(items) } else { RuleSet::All(items) })
}

fn node(value: &Value, at: &Location<'_>, depth: usize, budget: &mut Budget) -> Result<RuleNode, RuleError> {
    let Some(object) = value.as_object() else {
        return Err(at.error(format!("must be a rule or a rule set (an object), found {}", kind(value))));
    };
    if object.contains_key("all") || object.contains_key("any") {
        if depth >= MAX_DEPTH {
            return Err(at.error(format!("rule sets nest too deeply (at most {MAX_DEPTH} levels)")));
        }
        return set(object, at, depth + 1, budget).map(RuleNode::Set);
    }
    rule(object, at, budget).map(RuleNode::Rule)
}

fn rule(object: &Map<String, Value>, at: &Location<'_>, budget: &mut Budget) -> Result<Rule, RuleError> {
    if let Some(key) = object.keys().find(|key| !matches!(key.as_str(), "field" | "op" | "value")) {
        return Err(at.error(format!("unknown key {}", quote(key))));
    }
    let field = match object.get("field") {
        None => return Err(at.error(r#"rule needs a "field""#)),
        Some(Value::String(field)) => field.clone(),
        Some(_) => return Err(Location::Key(at, "field").error("must be a string")),
    };
    let op = match object.get("op") {
        None => return Err(at.error(r#"rule needs an "op""#)),
        Some(Value::String(name)) => {
            name.parse::<Op>().map_err(|error| error.within(&Location::Key(at, "op").render()))?
        }
        Some(_) => return Err(Location::Key(at, "op").error("must be a string")),
    };
    // An explicit null is the same as no value, so YAML's `value: ~` reads naturally.
    let value = object.get("value").filter(|value| !value.is_null()).cloned();
    let rule = Rule { field, op, value };
    budget.count_rule(at)?;
    check_rule(&rule, at)?;
    Ok(rule)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
