//! What an evaluation found: every rule evaluated, what it compared, and which failures decided.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::eval::is_blank;
use super::{quote, truncate_chars, Op};

/// Recorded strings are cut to this many characters.
const RECORDED_TEXT: usize = 1000;
/// Recorded lists and objects keep this many items.
const RECORDED_ITEMS: usize = 50;
/// A description shows this many items of a list.
const DESCRIBED_ITEMS: usize = 10;

/// The result of [`CompiledRuleSet::evaluate`](super::CompiledRuleSet::evaluate).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub passed: bool,
    /// Every rule evaluated, in order; rules skipped by short-circuiting are absent.
    pub evaluated: Vec<RuleOutcome>,
    /// Indexes in `evaluated` of the failures that made the verdict fail: the failing item of
    /// an `all`, every item of a failed `any`. A failure that an `any` got over (its first
    /// choice failed, a later one passed) is in `evaluated` but not here. Empty when passed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisive: Vec<usize>,
}

/// One rule's evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleOutcome {
    pub field: String,
    pub op: Op,
    /// The rule's expected value, as written; absent for ops that take none.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub value: Option<Value>,
    /// What was compared: a field object's value rather than the object, strings cut at 1000
    /// characters and lists at 50 items. Absent when the path resolved to nothing; `null` when
    /// it resolved to null.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub actual: Option<Value>,
    pub passed: bool,
}

impl Verdict {
    /// Every rule that failed, decisive or not.
    pub fn failed(&self) -> impl Iterator<Item = &RuleOutcome> {
        self.evaluated.iter().filter(|outcome| !outcome.passed)
    }

    /// The failures that made the verdict fail (see [`Verdict::decisive`]); every failure when a
    /// failing verdict carries no indexes; nothing when it passed.
    pub fn decisive_failures(&self) -> impl Iterator<Item = &RuleOutcome> {
        let indexed = self.decisive.iter().filter_map(|&index| self.evaluated.get(index));
        let unindexed = self.decisive.is_empty() && !self.passed;
        let fallback = self.evaluated.iter().filter(move |_| unindexed);
        indexed.chain(fallback).filter(|outcome| !outcome.passed)
    }

    /// A short sentence of why the verdict failed, e.g. `state in [TX, CA] (was "NY")`, several
    /// joined with `; `. Empty when the verdict passed.
    pub fn describe_failure(&self) -> String {
        self.decisive_failures().map(RuleOutcome::describe).collect::<Vec<_>>().join("; ")
    }
}

impl RuleOutcome {
    /// The rule and what it found: `email.domain not_blank (was blank)`.
    pub fn describe(&self) -> String {
        let mut out = format!("{} {}", self.field, self.op);
        if let Some(value) = &self.value {
            out.push(' ');
            out.push_str(&describe_expected(value));
        }
        out.push_str(" (was ");
        match &self.actual {
            None => out.push_str("missing"),
            Some(actual) if is_blank(actual) => out.push_str("blank"),
            Some(actual) => out.push_str(&describe_actual(actual)),
        }
        out.push(')');
        out
    }
}

/// Keeps `null` apart from an absent key: `"actual": null` is `Some(Value::Null)`.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// A bounded copy of a found value, so a huge field cannot make a huge verdict.
pub(super) fn summarise(value: &Value) -> Value {
    match value {
        Value::String(text) => Value::String(truncate_chars(text, RECORDED_TEXT).into_owned()),
        Value::Array(items) => {
            let mut kept: Vec<Value> = items.iter().take(RECORDED_ITEMS).map(summarise).collect();
            if items.len() > RECORDED_ITEMS {
                kept.push(Value::String(format!("… and {} more", items.len() - RECORDED_ITEMS)));
            }
            Value::Array(kept)
        }
        Value::Object(object) => {
            let mut kept: Map<String, Value> =
                object.iter().take(RECORDED_ITEMS).map(|(key, value)| (key.clone(), summarise(value))).collect();
            if object.len() > RECORDED_ITEMS {
                kept.insert("…".to_owned(), Value::String(format!("{} more", object.len() - RECORDED_ITEMS)));
            }
            Value::Object(kept)
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => value.clone(),
    }
}

/// An expected value as a person writes it: `TX`, `[TX, CA]`, `42`; text is quoted only when
/// it would read ambiguously.
fn describe_expected(value: &Value) -> String {
    match value {
        Value::String(text) => {
            let plain = !text.is_empty()
                && text.trim() == text
                && !text.chars().any(|c| c.is_control() || matches!(c, ',' | '[' | ']' | '"' | '(' | ')' | ';'));
            if plain {
                truncate_chars(text, 60).into_owned()
            } else {
                quote(text)
            }
        }
        Value::Array(items) => {
            let mut shown: Vec<String> = items.iter().take(DESCRIBED_ITEMS).map(describe_expected).collect();
            if items.len() > DESCRIBED_ITEMS {
                shown.push(format!("… {} more", items.len() - DESCRIBED_ITEMS));
            }
            format!("[{}]", shown.join(", "))
        }
        other => truncate_chars(&other.to_string(), 80).into_owned(),
    }
}

/// A found value as JSON (strings quoted), cut short.
fn describe_actual(value: &Value) -> String {
    match value {
        Value::String(text) => quote(text),
        other => truncate_chars(&other.to_string(), 80).into_owned(),
    }
}

/// A description with the lead values it quotes (`(was "jo@example.com")`) masked, for readers
/// who may not see personal data; `(was blank)` and `(was missing)` stay.
pub fn mask_found_values(text: &str) -> std::borrow::Cow<'_, str> {
    static FOUND: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#"\(was (?:"(?:[^"\\]|\\.)*"|[^()"]*)\)"#).expect("the pattern is valid")
    });
    FOUND.replace_all(text, |found: &regex::Captures<'_>| match &found[0] {
        kept @ ("(was blank)" | "(was missing)") => kept.to_owned(),
        _ => "(was ***)".to_owned(),
    })
}
