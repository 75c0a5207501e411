//! Evaluating a compiled rule set: resolving each rule's field, normalising what was found
//! (field objects, blanks) and comparing it by type.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::{Number, Value};

use super::compile::{CompiledNode, CompiledRule, CompiledRuleSet, CompiledSet, Kind, List, Operand, Test};
use super::verdict::{summarise, RuleOutcome, Verdict};
use super::Resolve;

impl CompiledRuleSet {
    /// Evaluates the rule set and records every rule evaluated, in order.
    pub fn evaluate<R: Resolve + ?Sized>(&self, resolver: &R) -> Verdict {
        let mut record = Record::default();
        // The root forgives everything when it passes, so a passing verdict has no decisive failures.
        let passed = evaluate_set(&self.root, resolver, &mut record);
        Verdict { passed, evaluated: record.evaluated, decisive: record.decisive }
    }

    /// Whether the rule set passes, recording nothing: the fast path for scanning many items.
    pub fn matches<R: Resolve + ?Sized>(&self, resolver: &R) -> bool {
        evaluate_set(&self.root, resolver, &mut Discard)
    }
}

/// Where evaluation reports each rule's outcome.
trait Sink {
    fn rule(&mut self, rule: &CompiledRule, actual: Option<&Value>, passed: bool);
    /// A position to come back to: failures recorded after it are forgiven when the set that
    /// took the mark passes anyway (a failed first choice of an `any`).
    fn mark(&self) -> usize;
    fn forgive(&mut self, mark: usize);
}

struct Discard;

impl Sink for Discard {
    fn rule(&mut self, _: &CompiledRule, _: Option<&Value>, _: bool) {}

    fn mark(&self) -> usize {
        0
    }

    fn forgive(&mut self, _: usize) {}
}

#[derive(Default)]
struct Record {
    evaluated: Vec<RuleOutcome>,
    /// Indexes in `evaluated` of failures that still count against the verdict.
    decisive: Vec<usize>,
}

impl Sink for Record {
    fn rule(&mut self, rule: &CompiledRule, actual: Option<&Value>, passed: bool) {
        if !passed {
            self.decisive.push(self.evaluated.len());
        }
        self.evaluated.push(RuleOutcome {
            field: rule.field.clone(),
            op: rule.op,
            value: rule.value.clone(),
            actual: actual.map(summarise),
            passed,
        });
    }

    fn mark(&self) -> usize {
        self.decisive.len()
    }

    fn forgive(&mut self, mark: usize) {
        self.decisive.truncate(mark);
    }
}

fn evaluate_set<R: Resolve + ?Sized, S: Sink>(set: &CompiledSet, resolver: &R, sink: &mut S) -> bool {
    let mark = sink.mark();
    let mut item_passes = |item: &CompiledNode| match item {
        CompiledNode::Rule(rule) => evaluate_rule(rule, resolver, sink),
        CompiledNode::Set(set) => evaluate_set(set, resolver, sink),
    };
    let passed = if set.any { set.items.iter().any(&mut item_passes) } else { set.items.iter().all(&mut item_passes) };
    if passed {
        sink.forgive(mark);
    }
    passed
}

fn evaluate_rule<R: Resolve + ?Sized, S: Sink>(rule: &CompiledRule, resolver: &R, sink: &mut S) -> bool {
    let subject = Subject::of(resolver.resolve(&rule.field));
    let passed = passes(&rule.test, &subject);
    sink.rule(rule, subject.compared, passed);
    passed
}

/// A resolved field, normalised: field objects opened, their validity read.
struct Subject<'a> {
    /// What comparisons look at; `None` when the path resolved to nothing.
    compared: Option<&'a Value>,
    /// A field object's own `valid` flag.
    valid_flag: Option<bool>,
}

impl<'a> Subject<'a> {
    fn of(resolved: Option<&'a Value>) -> Subject<'a> {
        match resolved {
            Some(Value::Object(object)) if object.contains_key("value") => Subject {
                compared: Some(field_object_value(object)),
                valid_flag: object.get("valid").and_then(json_bool),
            },
            other => Subject { compared: other, valid_flag: None },
        }
    }

    fn is_valid(&self) -> bool {
        match self.compared {
            None => false,
            Some(value) => self.valid_flag.unwrap_or_else(|| !is_blank(value)),
        }
    }
}

/// A field object's `value`, or its `raw` when the value is null.
fn field_object_value(object: &serde_json::Map<String, Value>) -> &Value {
    match object.get("value") {
        Some(Value::Null) | None => object.get("raw").unwrap_or(&Value::Null),
        Some(value) => value,
    }
}

fn json_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(flag) => Some(*flag),
        Value::String(text) => lenient_bool(text),
        Value::Number(number) => Num::from_json(number).as_bool(),
        _ => None,
    }
}

/// Missing, null, whitespace, an empty list or object, or a field object with a blank value.
pub(super) fn is_blank(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(text) => text.trim().is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Object(object) if object.contains_key("value") => is_blank(field_object_value(object)),
        Value::Object(object) => object.is_empty(),
        Value::Bool(_) | Value::Number(_) => false,
    }
}

fn passes(test: &Test, subject: &Subject<'_>) -> bool {
    let Some(actual) = subject.compared else {
        // A missing field is blank and invalid, equal to nothing and in no list.
        return matches!(test, Test::Blank | Test::Invalid | Test::Ne(_) | Test::NotIn(_));
    };
    match test {
        Test::Blank => is_blank(actual),
        Test::NotBlank => !is_blank(actual),
        Test::Valid => subject.is_valid(),
        Test::Invalid => !subject.is_valid(),
        Test::Eq(operand) => any_scalar(actual, |scalar| scalar.equals(operand)),
        Test::Ne(operand) => !any_scalar(actual, |scalar| scalar.equals(operand)),
        Test::In(list) => in_list(actual, list),
        Test::NotIn(list) => !in_list(actual, list),
        Test::Contains(operand) => contains(actual, operand),
        Test::StartsWith(operand) => any_scalar(actual, |scalar| {
            let text = scalar.text();
            let mut lowered = text.chars().flat_map(char::to_lowercase);
            operand.text.chars().all(|expected| lowered.next() == Some(expected))
        }),
        // A field whose value did not parse (`valid: false`) has no place in an order: `"abc"`
        // is not at least 18, and `"!!"` is not before 2005.
        Test::Compare(_, _) if subject.valid_flag == Some(false) => false,
        Test::Compare(operand, accept) => {
            Scalar::of(actual).and_then(|scalar| scalar.compare(operand)).is_some_and(accept)
        }
        Test::Matches(regex) => any_scalar(actual, |scalar| regex.is_match(&scalar.text())),
        Test::Unusable => false,
    }
}

/// Whether a scalar, or any item of a list (a group of checkboxes), passes `test`: a list
/// equals a value when one of its items does, as `in` and `contains` read it.
fn any_scalar(actual: &Value, test: impl Fn(Scalar<'_>) -> bool) -> bool {
    match actual {
        Value::Array(items) => items.iter().filter_map(Scalar::of).any(test),
        _ => Scalar::of(actual).is_some_and(test),
    }
}

fn in_list(actual: &Value, list: &List) -> bool {
    match actual {
        Value::Array(items) => items.iter().any(|item| in_list_scalar(item, list)),
        _ => in_list_scalar(actual, list),
    }
}

fn in_list_scalar(actual: &Value, list: &List) -> bool {
    match Scalar::of(actual) {
        Some(Scalar::Text(text)) => {
            list.texts.contains(lowercase(text).as_ref())
                || list.others.iter().any(|operand| Scalar::Text(text).equals(operand))
        }
        Some(scalar) => list.operands.iter().any(|operand| scalar.equals(operand)),
        None => false,
    }
}

fn contains(actual: &Value, operand: &Operand) -> bool {
    match actual {
        Value::Array(items) => items.iter().any(|item| Scalar::of(item).is_some_and(|scalar| scalar.equals(operand))),
        _ => Scalar::of(actual).is_some_and(|scalar| lowercase(&scalar.text()).contains(operand.text.as_str())),
    }
}

/// A string (trimmed), number or boolean found at a path.
#[derive(Clone, Copy)]
enum Scalar<'a> {
    Text(&'a str),
    Number(&'a Number),
    Bool(bool),
}

impl<'a> Scalar<'a> {
    fn of(value: &'a Value) -> Option<Scalar<'a>> {
        match value {
            Value::String(text) => Some(Scalar::Text(text.trim())),
            Value::Number(number) => Some(Scalar::Number(number)),
            Value::Bool(flag) => Some(Scalar::Bool(*flag)),
            Value::Null | Value::Array(_) | Value::Object(_) => None,
        }
    }

    /// The text form, for substring, prefix and regex tests.
    fn text(self) -> Cow<'a, str> {
        match self {
            Scalar::Text(text) => Cow::Borrowed(text),
            Scalar::Number(number) => Cow::Owned(number.to_string()),
            Scalar::Bool(flag) => Cow::Borrowed(if flag { "true" } else { "false" }),
        }
    }

    /// Type-aware equality: numerically when either side is a JSON number, leniently as a
    /// boolean when either side is a JSON boolean, else as text.
    fn equals(self, operand: &Operand) -> bool {
        match (self, operand.kind) {
            (Scalar::Bool(flag), _) => operand.boolean == Some(flag),
            (Scalar::Text(text), Kind::Bool) => lenient_bool(text).is_some_and(|flag| operand.boolean == Some(flag)),
            (Scalar::Number(number), Kind::Bool) => {
                Num::from_json(number).as_bool().is_some_and(|flag| operand.boolean == Some(flag))
            }
            (Scalar::Text(text), Kind::Number) => {
                Num::parse(text).zip(operand.number).is_some_and(|(a, b)| a.equals(b))
            }
            (Scalar::Number(number), Kind::Number | Kind::Text) => {
                operand.number.is_some_and(|expected| Num::from_json(number).equals(expected))
            }
            (Scalar::Text(text), Kind::Text) => text.chars().flat_map(char::to_lowercase).eq(operand.text.chars()),
        }
    }

    /// Ordering for `gt`/`lt`: numeric when both sides are numbers, else text (only between
    /// two strings that are not numbers); `None` when the two cannot be ordered, as a number
    /// and a text that is not one cannot.
    fn compare(self, operand: &Operand) -> Option<Ordering> {
        match (self, operand.kind) {
            (Scalar::Bool(_), _) | (_, Kind::Bool) => None,
            (Scalar::Number(number), _) => Num::from_json(number).compare(operand.number?),
            (Scalar::Text(""), _) => None,
            (Scalar::Text(text), Kind::Number) => Num::parse(text)?.compare(operand.number?),
            (Scalar::Text(text), Kind::Text) => match (Num::parse(text), operand.number) {
                (Some(actual), Some(expected)) => actual.compare(expected),
                // `"abc"` is not at least 18; a date (`2024-05-01`) still orders after `"2024"`.
                (None, Some(_)) if !text.starts_with(|c: char| c.is_ascii_digit()) => None,
                _ => Some(text.chars().flat_map(char::to_lowercase).cmp(operand.text.chars())),
            },
        }
    }
}

/// A number exactly as integers allow, else as a float.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    pub(super) fn from_json(number: &Number) -> Num {
        if let Some(int) = number.as_i64() {
            Num::Int(int.into())
        } else if let Some(int) = number.as_u64() {
            Num::Int(int.into())
        } else {
            Num::Float(number.as_f64().unwrap_or(f64::NAN))
        }
    }

    /// A plain decimal number in text (`42`, `-1.5`, `2e3`); not `1,000`, `0x1f`, `inf` or a date.
    pub(super) fn parse(text: &str) -> Option<Num> {
        let text = text.trim();
        let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
        if !unsigned.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
            return None;
        }
        if unsigned.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(int) = text.parse::<i128>() {
                return Some(Num::Int(int));
            }
        }
        if !unsigned.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-')) {
            return None;
        }
        text.parse::<f64>().ok().filter(|float| float.is_finite()).map(Num::Float)
    }

    fn as_f64(self) -> f64 {
        match self {
            Num::Int(int) => int as f64,
            Num::Float(float) => float,
        }
    }

    pub(super) fn as_bool(self) -> Option<bool> {
        let float = self.as_f64();
        if float == 1.0 {
            Some(true)
        } else if float == 0.0 {
            Some(false)
        } else {
            None
        }
    }

    fn equals(self, other: Num) -> bool {
        self.compare(other) == Some(Ordering::Equal)
    }

    fn compare(self, other: Num) -> Option<Ordering> {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => Some(a.cmp(&b)),
            (a, b) => a.as_f64().partial_cmp(&b.as_f64()),
        }
    }
}

/// `true`/`false`, `yes`/`no`, `y`/`n`, `on`/`off` (what a checkbox posts) and `1`/`0`, in any case.
pub(super) fn lenient_bool(text: &str) -> Option<bool> {
    const TRUE: [&str; 5] = ["true", "yes", "y", "on", "1"];
    const FALSE: [&str; 5] = ["false", "no", "n", "off", "0"];
    let text = text.trim();
    if TRUE.iter().any(|word| word.eq_ignore_ascii_case(text)) {
        Some(true)
    } else if FALSE.iter().any(|word| word.eq_ignore_ascii_case(text)) {
        Some(false)
    } else {
        None
    }
}

/// Lower-cases character by character (as the comparisons do), borrowing when nothing changes.
pub(super) fn lowercase(text: &str) -> Cow<'_, str> {
    let unchanged = if text.is_ascii() {
        !text.bytes().any(|b| b.is_ascii_uppercase())
    } else {
        text.chars().all(|c| {
            let mut lowered = c.to_lowercase();
            lowered.next() == Some(c) && lowered.next().is_none()
        })
    };
    if unchanged {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text.chars().flat_map(char::to_lowercase).collect())
    }
}
