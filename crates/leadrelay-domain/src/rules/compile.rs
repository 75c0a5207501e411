//! Turning a rule set into its evaluable form: values checked, operands normalised once,
//! regexes built once.

use std::cmp::Ordering;
use std::collections::HashSet;

use regex::{Regex, RegexBuilder};
use serde_json::Value;

use super::eval::{lenient_bool, lowercase, Num};
use super::{
    quote, Location, Op, Rule, RuleError, RuleNode, RuleSet, MAX_DEPTH, MAX_FIELD_LENGTH, MAX_PATTERN_LENGTH,
    MAX_RULES, REGEX_SIZE_LIMIT,
};

/// A rule set ready to evaluate many times; see [`RuleSet::compile`].
#[derive(Clone, Debug)]
pub struct CompiledRuleSet {
    pub(super) root: CompiledSet,
}

#[derive(Clone, Debug)]
pub(super) struct CompiledSet {
    /// `any` when true, `all` when false.
    pub(super) any: bool,
    pub(super) items: Vec<CompiledNode>,
}

#[derive(Clone, Debug)]
pub(super) enum CompiledNode {
    Rule(CompiledRule),
    Set(CompiledSet),
}

#[derive(Clone, Debug)]
pub(super) struct CompiledRule {
    pub(super) field: String,
    pub(super) op: Op,
    /// The rule's value as written, for the verdict.
    pub(super) value: Option<Value>,
    pub(super) test: Test,
}

/// What a rule checks, with its operand prepared.
#[derive(Clone, Debug)]
pub(super) enum Test {
    Blank,
    NotBlank,
    Valid,
    Invalid,
    Eq(Operand),
    Ne(Operand),
    In(List),
    NotIn(List),
    Contains(Operand),
    StartsWith(Operand),
    /// `gt`, `gte`, `lt`, `lte`: which orderings of actual against expected pass.
    Compare(Operand, fn(Ordering) -> bool),
    Matches(Regex),
    /// A rule that failed validation (only possible when built in code): never passes.
    Unusable,
}

/// The JSON type an operand was written as; it decides how comparisons coerce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Text,
    Number,
    Bool,
}

/// An expected scalar in every form a comparison may need.
#[derive(Clone, Debug)]
pub(super) struct Operand {
    pub(super) kind: Kind,
    /// Trimmed and lower-cased text (a number's or boolean's JSON text).
    pub(super) text: String,
    /// The number, for numbers and numeric strings.
    pub(super) number: Option<Num>,
    /// The boolean, for booleans, `yes`/`no`-like strings and the numbers 1 and 0.
    pub(super) boolean: Option<bool>,
}

/// The list of `in`/`not_in`, with its text items hashed so long lists stay fast.
#[derive(Clone, Debug)]
pub(super) struct List {
    pub(super) operands: Vec<Operand>,
    /// The `text` of every text operand.
    pub(super) texts: HashSet<String>,
    /// The operands that are not text (numbers, booleans).
    pub(super) others: Vec<Operand>,
}

/// Counts rules across a whole rule set against [`MAX_RULES`].
#[derive(Default)]
pub(super) struct Budget {
    rules: usize,
}

impl Budget {
    pub(super) fn count_rule(&mut self, at: &Location<'_>) -> Result<(), RuleError> {
        if self.rules == MAX_RULES {
            return Err(at.error(format!("too many rules (at most {MAX_RULES} in one rule set)")));
        }
        self.rules += 1;
        Ok(())
    }
}

pub(super) fn compile(set: &RuleSet) -> CompiledRuleSet {
    CompiledRuleSet { root: compile_set(set) }
}

fn compile_set(set: &RuleSet) -> CompiledSet {
    let items = set
        .items()
        .iter()
        .map(|item| match item {
            RuleNode::Rule(rule) => CompiledNode::Rule(CompiledRule {
                field: rule.field.clone(),
                op: rule.op,
                value: rule.value.clone().filter(|value| !value.is_null()),
                test: check_rule(rule, &Location::Root).unwrap_or(Test::Unusable),
            }),
            RuleNode::Set(set) => CompiledNode::Set(compile_set(set)),
        })
        .collect();
    CompiledSet { any: matches!(set, RuleSet::Any(_)), items }
}

pub(super) fn try_compile(set: &RuleSet) -> Result<CompiledRuleSet, RuleError> {
    Ok(CompiledRuleSet { root: try_compile_set(set, &Location::Root, 1, &mut Budget::default())? })
}

fn try_compile_set(
    set: &RuleSet,
    at: &Location<'_>,
    depth: usize,
    budget: &mut Budget,
) -> Result<CompiledSet, RuleError> {
    let (key, any) = match set {
        RuleSet::All(_) => ("all", false),
        RuleSet::Any(_) => ("any", true),
    };
    let list_at = Location::Key(at, key);
    if set.items().is_empty() {
        return Err(list_at.error("must not be empty"));
    }
    let mut items = Vec::with_capacity(set.items().len());
    for (index, item) in set.items().iter().enumerate() {
        let item_at = Location::Index(&list_at, index);
        items.push(match item {
            RuleNode::Rule(rule) => {
                budget.count_rule(&item_at)?;
                CompiledNode::Rule(CompiledRule {
                    field: rule.field.clone(),
                    op: rule.op,
                    value: rule.value.clone().filter(|value| !value.is_null()),
                    test: check_rule(rule, &item_at)?,
                })
            }
            RuleNode::Set(set) => {
                if depth >= MAX_DEPTH {
                    return Err(item_at.error(format!("rule sets nest too deeply (at most {MAX_DEPTH} levels)")));
                }
                CompiledNode::Set(try_compile_set(set, &item_at, depth + 1, budget)?)
            }
        });
    }
    Ok(CompiledSet { any, items })
}

/// Checks one rule's field path and value for its op, and prepares its test.
pub(super) fn check_rule(rule: &Rule, at: &Location<'_>) -> Result<Test, RuleError> {
    check_field(&rule.field).map_err(|message| Location::Key(at, "field").error(message))?;
    let op = rule.op;
    let value_at = Location::Key(at, "value");
    let value = rule.value.as_ref().filter(|value| !value.is_null());
    if !op.takes_value() {
        if value.is_some() {
            return Err(value_at.error(format!("op \"{op}\" takes no value")));
        }
    } else if value.is_none() {
        return Err(at.error(format!("rule needs a \"value\" for op \"{op}\"")));
    }
    let value = value.unwrap_or(&Value::Null);
    Ok(match op {
        Op::Blank => Test::Blank,
        Op::NotBlank => Test::NotBlank,
        Op::Valid => Test::Valid,
        Op::Invalid => Test::Invalid,
        Op::Eq => Test::Eq(single(value, op, &value_at)?),
        Op::Ne => Test::Ne(single(value, op, &value_at)?),
        Op::Contains => Test::Contains(single(value, op, &value_at)?),
        Op::StartsWith => Test::StartsWith(single(value, op, &value_at)?),
        Op::In => Test::In(list(value, op, &value_at)?),
        Op::NotIn => Test::NotIn(list(value, op, &value_at)?),
        Op::Gt => Test::Compare(ordered(value, op, &value_at)?, Ordering::is_gt),
        Op::Gte => Test::Compare(ordered(value, op, &value_at)?, Ordering::is_ge),
        Op::Lt => Test::Compare(ordered(value, op, &value_at)?, Ordering::is_lt),
        Op::Lte => Test::Compare(ordered(value, op, &value_at)?, Ordering::is_le),
        Op::Matches => Test::Matches(pattern(value, op, &value_at)?),
    })
}

fn check_field(field: &str) -> Result<(), String> {
    if field.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if field.len() > MAX_FIELD_LENGTH {
        return Err(format!("field path is longer than {MAX_FIELD_LENGTH} bytes"));
    }
    let valid_segment = |segment: &str| {
        !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if !field.split('.').all(valid_segment) {
        return Err(format!(
            r#"invalid field path {} (expected names of letters, digits, "_" or "-" separated by dots)"#,
            quote(field)
        ));
    }
    Ok(())
}

const BLANK_VALUE: &str = r#"must not be blank (use op "blank" to test for an empty field)"#;

/// The one string, number or boolean that `eq`, `ne`, `contains` and `starts_with` compare with.
fn single(value: &Value, op: Op, at: &Location<'_>) -> Result<Operand, RuleError> {
    match value {
        Value::Array(_) if matches!(op, Op::Eq | Op::Ne) => {
            let list_op = if op == Op::Eq { "in" } else { "not_in" };
            Err(at.error(format!(r#"op "{op}" needs one value, not a list (use "{list_op}" for a list)"#)))
        }
        Value::Array(_) | Value::Object(_) => Err(at.error(format!(r#"op "{op}" needs a string, number or boolean"#))),
        _ => operand(value).ok_or_else(|| at.error(BLANK_VALUE)),
    }
}

/// The non-empty list of scalars that `in` and `not_in` look in.
fn list(value: &Value, op: Op, at: &Location<'_>) -> Result<List, RuleError> {
    let Value::Array(items) = value else {
        return Err(at.error(format!(r#"op "{op}" needs a list"#)));
    };
    if items.is_empty() {
        return Err(at.error(format!(r#"op "{op}" needs a non-empty list"#)));
    }
    let mut operands = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let item_at = Location::Index(at, index);
        if matches!(item, Value::Array(_) | Value::Object(_) | Value::Null) {
            return Err(item_at.error("list items must be strings, numbers or booleans"));
        }
        operands.push(operand(item).ok_or_else(|| item_at.error(BLANK_VALUE))?);
    }
    let texts =
        operands.iter().filter(|operand| operand.kind == Kind::Text).map(|operand| operand.text.clone()).collect();
    let others = operands.iter().filter(|operand| operand.kind != Kind::Text).cloned().collect();
    Ok(List { operands, texts, others })
}

/// The number or string that `gt`, `gte`, `lt` and `lte` order against.
fn ordered(value: &Value, op: Op, at: &Location<'_>) -> Result<Operand, RuleError> {
    match value {
        Value::Number(_) | Value::String(_) => operand(value).ok_or_else(|| at.error(BLANK_VALUE)),
        _ => Err(at.error(format!(r#"op "{op}" needs a number or a string"#))),
    }
}

fn pattern(value: &Value, op: Op, at: &Location<'_>) -> Result<Regex, RuleError> {
    let Value::String(pattern) = value else {
        return Err(at.error(format!(r#"op "{op}" needs a string (a regular expression)"#)));
    };
    if pattern.len() > MAX_PATTERN_LENGTH {
        return Err(at.error(format!("invalid regex: longer than {MAX_PATTERN_LENGTH} bytes")));
    }
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|error| at.error(format!("invalid regex: {}", regex_problem(&error))))
}

/// The regex crate's error in one line: its syntax errors span several lines with a caret.
fn regex_problem(error: &regex::Error) -> String {
    match error {
        regex::Error::Syntax(text) => text
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix("error: "))
            .unwrap_or_else(|| text.lines().last().unwrap_or("syntax error"))
            .to_owned(),
        regex::Error::CompiledTooBig(limit) => {
            format!("the compiled pattern exceeds the size limit of {limit} bytes")
        }
        other => other.to_string(),
    }
}

/// An expected scalar, prepared; `None` for blank text (and for non-scalars).
fn operand(value: &Value) -> Option<Operand> {
    match value {
        Value::String(text) => {
            let trimmed = text.trim();
            (!trimmed.is_empty()).then(|| Operand {
                kind: Kind::Text,
                text: lowercase(trimmed).into_owned(),
                number: Num::parse(trimmed),
                boolean: lenient_bool(trimmed),
            })
        }
        Value::Number(number) => {
            let parsed = Num::from_json(number);
            Some(Operand {
                kind: Kind::Number,
                text: number.to_string(),
                number: Some(parsed),
                boolean: parsed.as_bool(),
            })
        }
        Value::Bool(flag) => {
            Some(Operand { kind: Kind::Bool, text: flag.to_string(), number: None, boolean: Some(*flag) })
        }
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}
