//! The one rule language: nested `all`/`any` rule sets of `field op value` rules (SPEC 4, 5a).
//!
//! The same evaluator serves flow filters, acceptance criteria, destination filters, caps,
//! pricing, action and alert conditions and the `rules` filter of the events API. A rule set
//! lives three lives:
//!
//! 1. **Configuration**: [`RuleSet::from_json`] (also behind `Deserialize`) checks the shape
//!    and every rule, and its errors name where and what: `all[1].op: unknown op "equals" (…)`.
//! 2. **Compilation**: [`RuleSet::compile`] prepares regexes and normalised operands once, so
//!    scanning thousands of rows allocates next to nothing.
//! 3. **Evaluation** against anything that can [`Resolve`] a dotted path:
//!    [`CompiledRuleSet::matches`] answers yes or no, [`CompiledRuleSet::evaluate`] also
//!    returns a [`Verdict`] recording every rule evaluated and which ones failed.
//!
//! # Semantics
//!
//! - `all` stops at its first failing item, `any` at its first passing one; only the rules
//!   actually evaluated are recorded.
//! - A resolved object with a `"value"` key is a *field object* (`{"raw", "value", "valid",
//!   components…}`): comparisons use its `value` (its `raw` when `value` is null), and
//!   `valid`/`invalid` read its `valid` flag. Anything else is compared as it is, and is valid
//!   when it is not blank.
//! - Blank means missing, null, an empty or whitespace-only string, an empty list or object, or a
//!   field object whose value is blank.
//! - A path that resolves to nothing is blank and invalid: `blank`, `invalid`, `ne` and `not_in`
//!   pass, every other op fails.
//! - Text compares trimmed and case-insensitively. When either side is a JSON number, `eq`/`ne`/
//!   `in` compare numerically (`"42"` eq `42`); two strings always compare as text, so the postal
//!   code `"01234"` is not `"1234"`. When either side is a JSON boolean, the other may be
//!   `true`/`false`, `yes`/`no`, `on`/`off`, `1`/`0`.
//! - `gt`/`gte`/`lt`/`lte` compare numerically when both sides are numbers or numeric strings,
//!   else as lower-cased text (so ISO dates and times order correctly); a blank value, a boolean,
//!   or a number against non-numeric text never passes.
//! - A list value (a group of checkboxes) is read item by item, the same for every op: `eq`,
//!   `starts_with`, `matches` and `in` pass when one item does, `ne` and `not_in` when none
//!   does, and `contains` asks whether one item equals the value; on text (or a number)
//!   `contains` is a substring test.
//! - `matches` runs the regex, as written (case-sensitive unless it says `(?i)`), on the trimmed
//!   text of a string, number or boolean.

mod compile;
mod eval;
mod parse;
mod resolve;
mod verdict;

#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use compile::CompiledRuleSet;
pub use resolve::{FnResolver, Resolve};
pub use verdict::{mask_found_values, RuleOutcome, Verdict};

/// How deeply rule sets may nest, counting the outermost set as 1.
pub const MAX_DEPTH: usize = 16;
/// How many rules one rule set may hold, all levels together.
pub const MAX_RULES: usize = 1000;
/// The longest accepted field path, in bytes.
pub const MAX_FIELD_LENGTH: usize = 256;
/// The longest accepted `matches` pattern, in bytes.
pub const MAX_PATTERN_LENGTH: usize = 10_000;
/// The compiled-size limit handed to the regex engine for one `matches` pattern.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A rule set: `{"all": [...]}` passes when every item passes, `{"any": [...]}` when one does.
///
/// Serialises to exactly that shape; deserialises through [`RuleSet::from_json`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleSet {
    All(Vec<RuleNode>),
    Any(Vec<RuleNode>),
}

/// One item of a rule set: a rule or a nested rule set.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RuleNode {
    Rule(Rule),
    Set(RuleSet),
}

/// One `field op value` test, e.g. `{"field": "state", "op": "in", "value": ["TX", "CA"]}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rule {
    /// A dotted path (`state`, `email.domain`, `appended.phone_check.carrier`).
    pub field: String,
    pub op: Op,
    /// The expected value; `None` for the ops that take none (`blank`, `valid`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

/// The comparison a rule makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Eq,
    Ne,
    In,
    NotIn,
    Contains,
    StartsWith,
    Gt,
    Gte,
    Lt,
    Lte,
    Blank,
    NotBlank,
    Matches,
    Valid,
    Invalid,
}

/// Why a rule set was refused: where (`all[1].op`, empty for the whole set) and what.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct RuleError {
    path: String,
    message: String,
}

impl RuleSet {
    /// Parses and validates a rule set from its JSON form (SPEC 5a).
    pub fn from_json(value: &Value) -> Result<RuleSet, RuleError> {
        parse::rule_set(value)
    }

    /// The items of the set, whichever kind it is.
    pub fn items(&self) -> &[RuleNode] {
        match self {
            RuleSet::All(items) | RuleSet::Any(items) => items,
        }
    }

    /// Every rule's field path, depth first.
    pub fn fields(&self) -> Vec<&str> {
        let mut fields = Vec::new();
        for item in self.items() {
            match item {
                RuleNode::Rule(rule) => fields.push(rule.field.as_str()),
                RuleNode::Set(set) => fields.extend(set.fields()),
            }
        }
        fields
    }

    /// Checks a rule set that was built in code rather than parsed: the same checks, and the
    /// same errors, as [`RuleSet::from_json`].
    pub fn validate(&self) -> Result<(), RuleError> {
        compile::try_compile(self).map(|_| ())
    }

    /// Compiles a validated rule set. Never fails: a rule that [`RuleSet::validate`] would
    /// refuse (only possible for sets built in code) compiles to a rule that never passes.
    pub fn compile(&self) -> CompiledRuleSet {
        compile::compile(self)
    }

    /// Validates and compiles in one step.
    pub fn try_compile(&self) -> Result<CompiledRuleSet, RuleError> {
        compile::try_compile(self)
    }
}

impl<'de> Deserialize<'de> for RuleSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        RuleSet::from_json(&value).map_err(serde::de::Error::custom)
    }
}

impl Rule {
    pub fn new(field: impl Into<String>, op: Op, value: Option<Value>) -> Rule {
        Rule { field: field.into(), op, value }
    }
}

impl Op {
    /// Every op, in the order the documentation lists them.
    pub const ALL: [Op; 15] = [
        Op::Eq,
        Op::Ne,
        Op::In,
        Op::NotIn,
        Op::Contains,
        Op::StartsWith,
        Op::Gt,
        Op::Gte,
        Op::Lt,
        Op::Lte,
        Op::Blank,
        Op::NotBlank,
        Op::Matches,
        Op::Valid,
        Op::Invalid,
    ];

    /// The op's name in the rule language (`not_in`).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Ne => "ne",
            Op::In => "in",
            Op::NotIn => "not_in",
            Op::Contains => "contains",
            Op::StartsWith => "starts_with",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Blank => "blank",
            Op::NotBlank => "not_blank",
            Op::Matches => "matches",
            Op::Valid => "valid",
            Op::Invalid => "invalid",
        }
    }

    /// Whether a rule with this op needs a `value` (all but `blank`, `not_blank`, `valid`,
    /// `invalid`, which must have none).
    pub fn takes_value(self) -> bool {
        !matches!(self, Op::Blank | Op::NotBlank | Op::Valid | Op::Invalid)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Op {
    type Err = RuleError;

    fn from_str(name: &str) -> Result<Op, RuleError> {
        Op::ALL.into_iter().find(|op| op.as_str() == name).ok_or_else(|| {
            let expected: Vec<&str> = Op::ALL.iter().map(|op| op.as_str()).collect();
            RuleError::new("", format!("unknown op {} (expected one of {})", quote(name), expected.join(", ")))
        })
    }
}

impl RuleError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> RuleError {
        RuleError { path: path.into(), message: message.into() }
    }

    /// Where in the rule set, e.g. `all[1].op`; empty when the whole set is at fault.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong, without the path.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Places the error inside an enclosing document, e.g. `within("filters[0].rules")` turns
    /// `all[1].op: …` into `filters[0].rules.all[1].op: …`.
    pub fn within(mut self, prefix: &str) -> RuleError {
        self.path = match (prefix.is_empty(), self.path.is_empty()) {
            (true, _) => self.path,
            (false, true) => prefix.to_owned(),
            (false, false) if self.path.starts_with('[') => format!("{prefix}{}", self.path),
            (false, false) => format!("{prefix}.{}", self.path),
        };
        self
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Where a rule set's part sits, rendered only when an error needs it (`all[1].any[0].op`).
#[derive(Clone, Copy)]
enum Location<'a> {
    Root,
    Key(&'a Location<'a>, &'static str),
    Index(&'a Location<'a>, usize),
}

impl Location<'_> {
    fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out);
        out
    }

    fn render_into(&self, out: &mut String) {
        match self {
            Location::Root => {}
            Location::Key(parent, key) => {
                parent.render_into(out);
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Location::Index(parent, index) => {
                parent.render_into(out);
                out.push('[');
                out.push_str(&index.to_string());
                out.push(']');
            }
        }
    }

    fn error(&self, message: impl Into<String>) -> RuleError {
        RuleError::new(self.render(), message)
    }
}

/// A user-supplied string for an error message: JSON-quoted (so odd characters show) and cut
/// short, so a huge value cannot make a huge error.
fn quote(text: &str) -> String {
    let shown = truncate_chars(text, 60);
    serde_json::to_string(shown.as_ref()).unwrap_or_default()
}

/// At most `max` characters of `text`, with `…` when something was cut.
fn truncate_chars(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]).into(),
        None => text.into(),
    }
}
