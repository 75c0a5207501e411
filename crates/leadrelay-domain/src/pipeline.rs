//! The pipeline's decisions for one submission, without IO: parse → validate → duplicates →
//! filters → one transfer per destination → `flow.completed`.
//!
//! The caller (the server) supplies what needs IO: the duplicate lookup's answer and the time.
//! Deciding is cheap and deterministic, so when the store finds that a concurrent submission
//! changed the duplicate answer, the caller simply decides again with the new answer.

use std::sync::Arc;

use indexmap::IndexMap;
use serde::Serialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::compiled::CompiledRules;
use crate::config::{DeliveryMode, Destination, DuplicateMatch, DuplicatePolicy, Flow, Source};
use crate::event::{EventType, NewEvent, Outcome, RegisterStatus};
use crate::fields::{parse_field, validate_as_of, FieldType};
use crate::ids::{LeadId, TransferId};
use crate::lead::{LeadRecord, LeadView};
use crate::rules::Verdict;
use crate::time::{format_date, Millis};

/// What a submission is processed against: its source, its flow and the flow's destinations.
pub struct Intake<'a> {
    pub flow: &'a Flow,
    pub source: &'a Source,
    pub destinations: Vec<&'a Destination>,
    /// The configuration's rule sets, compiled.
    pub rules: &'a CompiledRules,
}

/// One duplicate-detection key of a lead: a field and a digest of its normalised value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct DuplicateKey {
    pub field: String,
    pub digest: String,
}

/// The question the store answers atomically at commit: is there an earlier lead in this
/// flow within the window that matches these keys (any of them, or all of them)?
#[derive(Clone, Debug, PartialEq)]
pub struct DuplicateQuery {
    pub flow_id: String,
    pub keys: Vec<DuplicateKey>,
    pub match_mode: DuplicateMatch,
    pub since: Millis,
}

/// An earlier lead that a submission duplicates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuplicateFound {
    pub lead_id: LeadId,
    pub created_at: Millis,
}

/// A submission parsed and validated, ready for a decision.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub lead_id: LeadId,
    pub received_at: Millis,
    /// The fields exactly as submitted, before the source's field map.
    pub submitted: Map<String, Value>,
    pub fields: IndexMap<String, Map<String, Value>>,
    /// Why the lead must be rejected before any duplicate check, if anything.
    pub problems: Vec<String>,
    pub duplicate_query: Option<DuplicateQuery>,
    /// What the flow's enhancements answered, in order; the caller makes the calls (IO)
    /// between `prepare` and `decide`.
    pub enhancements: Vec<EnhancementOutcome>,
}

/// How one enhancement call went.
#[derive(Clone, Debug, PartialEq)]
pub struct EnhancementOutcome {
    pub name: String,
    pub result: EnhancementResult,
    pub duration_ms: i64,
    /// The request sent and the response received, for the event.
    pub exchange: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum EnhancementResult {
    /// Data to append under `appended.<name>`.
    Success(Map<String, Value>),
    /// The service answered, with no data for this lead.
    Failure(String),
    /// The call broke (timeout, connection, not JSON, an error status).
    Error(String),
}

impl Prepared {
    /// Whether the lead goes on to enhancements: nothing rejects it before them.
    pub fn needs_enhancements(&self, flow: &Flow, duplicate: Option<&DuplicateFound>) -> bool {
        let rejected_duplicate =
            duplicate.is_some() && flow.duplicates.as_ref().is_some_and(|d| d.policy == DuplicatePolicy::Reject);
        !flow.enhancements.is_empty() && self.problems.is_empty() && !rejected_duplicate
    }
}

/// A transfer to record: one lead to one destination, or to none when the lead stopped early.
#[derive(Clone, Debug, PartialEq)]
pub struct NewTransfer {
    pub id: TransferId,
    pub lead_id: LeadId,
    pub flow_id: String,
    pub source_id: String,
    pub destination_id: Option<String>,
    pub status: RegisterStatus,
    pub description: String,
    pub created_at: Millis,
    /// Waits for delivery (background or realtime); false for skipped transfers.
    pub queued: bool,
    /// Delivered while the submitter waits (a realtime destination that is enabled).
    pub realtime: bool,
}

/// The answer of the submit endpoint (SPEC 5).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SubmitAnswer {
    pub outcome: Outcome,
    pub lead_id: LeadId,
    pub reason: Option<String>,
    pub price: Option<f64>,
    pub deliveries: Vec<Value>,
}

/// Everything one submission writes, in one transaction.
#[derive(Clone, Debug)]
pub struct Decision {
    pub lead: LeadRecord,
    /// `lead.snapshot()`, shared with the last event that saw the lead as it ends.
    pub snapshot: Arc<Value>,
    pub events: Vec<NewEvent>,
    pub transfers: Vec<NewTransfer>,
    /// Keys to remember for later duplicate checks (only for accepted, original leads).
    pub duplicate_keys: Vec<DuplicateKey>,
    /// The duplicate answer this decision assumed; the store re-checks it at commit.
    pub duplicate_query: Option<DuplicateQuery>,
    pub assumed_duplicate: Option<DuplicateFound>,
    pub answer: SubmitAnswer,
    /// `flow.completed` of a submission with deliveries to make (realtime or background): the
    /// store keeps it with the lead and logs it once none of the lead's transfers is pending
    /// any more (delivered, refused, skipped or abandoned), so that it follows their outcomes
    /// (SPEC 3, 4). `None` when it is already the last of `events`.
    pub pending_completion: Option<NewEvent>,
}

/// Why a transfer waits for a disabled destination, in the register and on its events.
pub fn held_reason(destination: &Destination) -> String {
    format!("Held: destination {} is disabled; delivered once it is enabled", destination.name)
}

/// Names that look like contact fields get their type even when the flow does not declare them.
fn inferred_type(name: &str) -> FieldType {
    match name {
        "email" | "email_address" => FieldType::Email,
        "phone" | "phone_number" | "phone_1" | "mobile" => FieldType::Phone,
        _ => FieldType::Text,
    }
}

/// The text form of a submitted value for a typed field; `None` for null (treated as
/// absent). A list of plain values (a name repeated in a form) reads as its non-blank values
/// joined by ", ", so that a field sent twice with one of them blank keeps the other as it
/// is. Text fields keep lists and maps whole (`parse_structured`).
fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(text) => Some(text.clone()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Number(number) => Some(number.to_string()),
        Value::Array(items) if items.iter().all(|item| !item.is_array() && !item.is_object()) => {
            // The same value given twice (a form with the field in two places) is one value.
            let mut seen = std::collections::HashSet::new();
            let texts: Vec<String> = items
                .iter()
                .filter_map(text_of)
                .filter(|text| !text.trim().is_empty() && seen.insert(text.trim().to_owned()))
                .collect();
            Some(texts.join(", "))
        }
        other => Some(other.to_string()),
    }
}

fn is_blank(field: &Map<String, Value>) -> bool {
    match field.get("value") {
        None | Some(Value::Null) => true,
        Some(Value::String(text)) => text.trim().is_empty(),
        Some(Value::Array(items)) => items.is_empty(),
        Some(Value::Object(map)) => map.is_empty(),
        Some(_) => false,
    }
}

/// A text field submitted as a list or a map: `raw` is the JSON value as it came, `value` the
/// same without null and blank items (strings trimmed), `valid` when anything is left.
fn parse_structured(value: &Value) -> Map<String, Value> {
    fn clean(value: &Value) -> Option<Value> {
        match value {
            Value::Null => None,
            Value::String(text) if text.trim().is_empty() => None,
            Value::String(text) => Some(Value::String(text.trim().to_owned())),
            Value::Array(items) => Some(Value::Array(items.iter().filter_map(clean).collect())),
            Value::Object(map) => {
                Some(Value::Object(map.iter().filter_map(|(key, item)| Some((key.clone(), clean(item)?))).collect()))
            }
            other => Some(other.clone()),
        }
    }
    let cleaned = clean(value).unwrap_or(Value::Null);
    let valid = match &cleaned {
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
        _ => false,
    };
    let mut field = Map::with_capacity(3);
    field.insert("raw".into(), value.clone());
    field.insert("value".into(), cleaned);
    field.insert("valid".into(), Value::Bool(valid));
    field
}

fn is_valid(field: Option<&Map<String, Value>>) -> bool {
    field.and_then(|f| f.get("valid")).and_then(Value::as_bool).unwrap_or(false)
}

/// The field a submitted name fills: the source's `field_map` entry for it, else the flow's
/// field of that name; either matched regardless of case (`Email` fills `email`) when nothing
/// matches exactly and the exact name was not submitted too. Any other name is kept as is.
fn target_of<'a>(intake: &'a Intake<'_>, name: &'a str, submitted: &Map<String, Value>) -> &'a str {
    let field_map = &intake.source.field_map;
    if let Some(target) = field_map.get(name) {
        return target;
    }
    if intake.flow.field(name).is_some() {
        return name;
    }
    let folded = |candidate: &str| candidate.eq_ignore_ascii_case(name) && !submitted.contains_key(candidate);
    if let Some((_, target)) = field_map.iter().find(|(from, _)| folded(from)) {
        return target;
    }
    match intake.flow.fields.iter().find(|def| folded(&def.name)) {
        Some(def) => &def.name,
        None => name,
    }
}

/// Parses and validates a submission: field map, field types, required fields, contact rule,
/// and the duplicate keys to check.
pub fn prepare(intake: &Intake<'_>, submitted: Map<String, Value>, received_at: Millis) -> Prepared {
    let flow = intake.flow;
    let mut fields: IndexMap<String, Map<String, Value>> = IndexMap::new();
    for (name, value) in &submitted {
        let target = target_of(intake, name, &submitted);
        let field_type = flow.field(target).map(|def| def.field_type).unwrap_or_else(|| inferred_type(target));
        let parsed = match (field_type, value) {
            // A text field keeps a list or a map as it came (a group of checkboxes, a nested
            // answer), so that rules, templates and destinations see its items.
            (FieldType::Text, Value::Array(_) | Value::Object(_)) => parse_structured(value),
            _ => {
                let Some(text) = text_of(value) else { continue };
                let mut parsed = parse_field(field_type, &text);
                validate_as_of(field_type, &mut parsed, received_at);
                // The raw value stays as it came (SPEC 4), a list included.
                if value.is_array() || value.is_object() {
                    parsed.insert("raw".into(), value.clone());
                }
                parsed
            }
        };
        // A blank value never overrides a value another submitted name mapped to the same field.
        if fields.get(target).is_some_and(|existing| !is_blank(existing)) && is_blank(&parsed) {
            continue;
        }
        fields.insert(target.to_owned(), parsed);
    }

    let mut problems = Vec::new();
    for def in flow.fields.iter().filter(|def| def.required) {
        if fields.get(&def.name).is_none_or(is_blank) {
            problems.push(format!("Missing required field: {}", def.name));
        }
    }
    if flow.require_contact {
        let has_contact = fields.iter().any(|(name, field)| {
            let field_type = flow.field(name).map(|def| def.field_type).unwrap_or_else(|| inferred_type(name));
            matches!(field_type, FieldType::Email | FieldType::Phone) && is_valid(Some(field))
        });
        if !has_contact {
            problems.push("No valid phone or email".to_owned());
        }
    }

    let duplicate_query = flow.duplicates.as_ref().and_then(|policy| {
        let keys: Vec<DuplicateKey> = policy
            .keys
            .iter()
            .filter_map(|name| {
                // Only a real value is a key: a placeholder (`n/a`, an invalid phone) would
                // make every later lead carrying it a duplicate of the first.
                let field = fields.get(name).filter(|field| !is_blank(field) && is_valid(Some(field)))?;
                let value = field.get("value").and_then(text_of)?;
                let mut hasher = Sha256::new();
                hasher.update(name.as_bytes());
                hasher.update([0]);
                hasher.update(value.trim().to_lowercase().as_bytes());
                let digest = hex::encode(&hasher.finalize()[..16]);
                Some(DuplicateKey { field: name.clone(), digest })
            })
            .collect();
        let complete = match policy.match_mode {
            DuplicateMatch::Any => !keys.is_empty(),
            DuplicateMatch::All => keys.len() == policy.keys.len(),
        };
        complete.then(|| DuplicateQuery {
            flow_id: flow.id.clone(),
            keys,
            match_mode: policy.match_mode,
            since: received_at - i64::from(policy.window_days) * 86_400_000,
        })
    });

    Prepared {
        lead_id: LeadId::generate(),
        received_at,
        submitted,
        fields,
        problems,
        duplicate_query,
        enhancements: Vec::new(),
    }
}

/// Builds events one after another, each carrying the lead's snapshot at that moment.
struct Timeline<'a> {
    intake: &'a Intake<'a>,
    lead: LeadRecord,
    /// The snapshot of `lead` as it is now; cleared by every change to the lead, so that the
    /// events between two changes share one snapshot.
    snapshot: Option<Arc<Value>>,
    events: Vec<NewEvent>,
    transfers: Vec<NewTransfer>,
    now: Millis,
}

impl Timeline<'_> {
    fn snapshot(&mut self) -> Arc<Value> {
        let lead = &self.lead;
        self.snapshot.get_or_insert_with(|| Arc::new(lead.snapshot())).clone()
    }

    /// The lead, for a change: the next event gets a new snapshot.
    fn lead_mut(&mut self) -> &mut LeadRecord {
        self.snapshot = None;
        &mut self.lead
    }

    fn push(&mut self, event_type: EventType, timestamp: Millis) -> &mut NewEvent {
        let mut event =
            NewEvent::about(event_type, timestamp, &self.lead.id, &self.intake.flow.id, &self.intake.source.id);
        event.lead = self.snapshot();
        self.events.push(event);
        let last = self.events.len() - 1;
        &mut self.events[last]
    }

    fn transfer(&mut self, destination_id: Option<&str>, status: RegisterStatus, description: String) -> TransferId {
        self.push_transfer(destination_id, status, description, false, false)
    }

    fn push_transfer(
        &mut self,
        destination_id: Option<&str>,
        status: RegisterStatus,
        description: String,
        queued: bool,
        realtime: bool,
    ) -> TransferId {
        let id = TransferId::generate();
        self.transfers.push(NewTransfer {
            id: id.clone(),
            lead_id: self.lead.id.clone(),
            flow_id: self.intake.flow.id.clone(),
            source_id: self.intake.source.id.clone(),
            destination_id: destination_id.map(str::to_owned),
            status,
            description,
            created_at: self.now,
            queued,
            realtime,
        });
        id
    }

    /// Rejects the lead: `source.rejected`, a transfer to no destination, `flow.completed`.
    fn reject(&mut self, event_type: EventType, reason: String, data: Value) {
        let lead = self.lead_mut();
        lead.outcome = Some(Outcome::Failure);
        lead.reason = Some(reason.clone());
        // A rejected lead is not bought: it costs nothing.
        lead.cost = None;
        let transfer_id = self.transfer(None, RegisterStatus::Skip, reason.clone());
        let now = self.now;
        let event = self.push(event_type, now);
        event.status = Some(RegisterStatus::Skip);
        event.outcome = Some(Outcome::Failure);
        event.reason = Some(reason);
        event.transfer_id = Some(transfer_id);
        event.data = data;
    }

    /// Ends the timeline with `flow.completed`; held back (the last value) while realtime
    /// deliveries are to run first.
    #[allow(clippy::type_complexity)]
    fn complete(
        mut self,
        received_at: Millis,
    ) -> (LeadRecord, Arc<Value>, Vec<NewEvent>, Vec<NewTransfer>, SubmitAnswer, Option<NewEvent>) {
        let outcome = self.lead.outcome.unwrap_or(Outcome::Success);
        if self.lead.outcome != Some(outcome) {
            self.lead_mut().outcome = Some(outcome);
        }
        let transfers: Vec<Value> = self
            .transfers
            .iter()
            .map(|t| json!({"transfer_id": t.id, "destination_id": t.destination_id, "status": t.status}))
            .collect();
        let now = self.now;
        let reason = self.lead.reason.clone();
        // What the lead cost, once it is known whether it was bought.
        let price = self.lead.cost;
        // A lead that went nowhere says why on its last event, as its register row does.
        let nowhere = self
            .transfers
            .iter()
            .find(|transfer| transfer.destination_id.is_none() && transfer.status == RegisterStatus::Skip)
            .map(|transfer| transfer.description.clone());
        let event = self.push(EventType::FlowCompleted, now);
        event.outcome = Some(outcome);
        event.reason = reason.clone().or(nowhere);
        event.duration_ms = Some((now - received_at).max(0));
        event.data = json!({ "transfers": transfers });
        event.price = price;
        // Realtime destinations the lead does not reach while the submitter waits (skipped by
        // their filter, or held while disabled) are answered here; the ones called add their
        // outcomes after the calls.
        let realtime_destinations: Vec<&str> = self
            .intake
            .destinations
            .iter()
            .filter(|destination| destination.mode == DeliveryMode::Realtime)
            .map(|destination| destination.id.as_str())
            .collect();
        let deliveries = self
            .transfers
            .iter()
            .filter(|transfer| {
                !transfer.realtime
                    && transfer.destination_id.as_deref().is_some_and(|id| realtime_destinations.contains(&id))
            })
            .map(|transfer| {
                json!({
                    "destination_id": transfer.destination_id,
                    "transfer_id": transfer.id,
                    "outcome": (transfer.status == RegisterStatus::Skip).then_some(Outcome::Failure),
                    "status": transfer.status,
                    "reason": transfer.description,
                    "response_code": null,
                    "price": null,
                    "retrying": transfer.queued,
                })
            })
            .collect();
        let answer = SubmitAnswer { outcome, lead_id: self.lead.id.clone(), reason, price, deliveries };
        let pending = if self.transfers.iter().any(|transfer| transfer.queued) { self.events.pop() } else { None };
        let snapshot = self.snapshot();
        (self.lead, snapshot, self.events, self.transfers, answer, pending)
    }
}

/// What a filter's event keeps of its verdict: the filter's name, every rule evaluated and
/// those that failed.
pub fn filter_data(name: &str, verdict: &Verdict) -> Value {
    json!({
        "filter": name,
        "rules_evaluated": verdict.evaluated,
        "rules_failed": verdict.failed().collect::<Vec<_>>(),
    })
}

/// Decides everything a submission does, given the duplicate answer and the time.
pub fn decide(intake: &Intake<'_>, prepared: &Prepared, duplicate: Option<&DuplicateFound>, now: Millis) -> Decision {
    let flow = intake.flow;
    let source = intake.source;
    let lead = LeadRecord {
        id: prepared.lead_id.clone(),
        flow_id: flow.id.clone(),
        source_id: source.id.clone(),
        created_at: prepared.received_at,
        updated_at: now,
        status: flow.initial_status().to_owned(),
        outcome: None,
        reason: None,
        duplicate_of: None,
        cost: source.price,
        fields: prepared.fields.clone(),
        appended: Map::new(),
    };
    let mut timeline = Timeline { intake, lead, snapshot: None, events: Vec::new(), transfers: Vec::new(), now };

    let submitted = timeline.push(EventType::SourceSubmitted, prepared.received_at);
    submitted.status = Some(RegisterStatus::New);
    submitted.data = json!({ "submitted": prepared.submitted });

    let mut accepted = false;
    let policy = flow.duplicates.as_ref().map(|d| d.policy);
    if !prepared.problems.is_empty() {
        let reason = prepared.problems.join("; ");
        timeline.reject(EventType::SourceRejected, reason, json!({ "problems": prepared.problems }));
    } else if let (Some(original), Some(DuplicatePolicy::Reject)) = (duplicate, policy) {
        timeline.lead_mut().duplicate_of = Some(original.lead_id.clone());
        let reason =
            format!("Duplicate: previously submitted {} ({})", format_date(original.created_at), original.lead_id);
        let data = json!({ "duplicate_of": original.lead_id, "original_created_at": crate::time::format_millis(original.created_at) });
        timeline.reject(EventType::SourceRejected, reason, data);
    } else {
        if let Some(original) = duplicate {
            timeline.lead_mut().duplicate_of = Some(original.lead_id.clone());
        }
        let event = timeline.push(EventType::SourceAccepted, now);
        event.status = Some(RegisterStatus::New);
        event.outcome = Some(Outcome::Success);
        event.data = json!({ "duplicate_of": duplicate.map(|d| &d.lead_id) });
        append_enhancements(&mut timeline, &prepared.enhancements, now);
        accepted = run_filters(&mut timeline, now);
    }

    if accepted {
        route(&mut timeline, now);
    }

    // An accepted lead's keys are what later submissions are compared with: a linked
    // duplicate's too, since its other keys (a new phone) were first seen on it.
    let records_keys = accepted && (duplicate.is_none() || policy == Some(DuplicatePolicy::Link));
    let duplicate_keys = match (&prepared.duplicate_query, records_keys) {
        (Some(query), true) => query.keys.clone(),
        _ => Vec::new(),
    };
    let (lead, snapshot, events, transfers, answer, pending_completion) = timeline.complete(prepared.received_at);
    Decision {
        lead,
        snapshot,
        events,
        transfers,
        duplicate_keys,
        duplicate_query: prepared.duplicate_query.clone(),
        assumed_duplicate: duplicate.cloned(),
        answer,
        pending_completion,
    }
}

/// Records each enhancement's outcome; data a service returned is appended to the lead
/// (under `appended.<name>`) before the filters run. A failure never stops the lead.
fn append_enhancements(timeline: &mut Timeline<'_>, outcomes: &[EnhancementOutcome], now: Millis) {
    for outcome in outcomes {
        let (event_type, result_outcome, reason) = match &outcome.result {
            EnhancementResult::Success(data) => {
                timeline.lead_mut().appended.insert(outcome.name.clone(), Value::Object(data.clone()));
                (EventType::EnhancementSuccess, Outcome::Success, None)
            }
            EnhancementResult::Failure(reason) => {
                (EventType::EnhancementFailure, Outcome::Failure, Some(reason.clone()))
            }
            EnhancementResult::Error(reason) => (EventType::EnhancementError, Outcome::Error, Some(reason.clone())),
        };
        let event = timeline.push(event_type, now);
        event.outcome = Some(result_outcome);
        event.reason = reason;
        event.duration_ms = Some(outcome.duration_ms);
        event.integration = Some("enhancement".to_owned());
        event.response_code = outcome.exchange.pointer("/response/status").and_then(Value::as_i64);
        let mut data = json!({ "enhancement": outcome.name });
        if let EnhancementResult::Success(appended) = &outcome.result {
            // Which fields the lead gained, as their paths.
            let paths: Vec<String> = appended.keys().map(|key| format!("appended.{}.{key}", outcome.name)).collect();
            data["appended"] = json!(paths);
        }
        if let (Value::Object(data), Value::Object(exchange)) = (&mut data, &outcome.exchange) {
            data.extend(exchange.clone());
        }
        event.data = data;
    }
}

/// Runs the source's filter and then the flow's filters; false when one failed.
fn run_filters(timeline: &mut Timeline<'_>, now: Millis) -> bool {
    let intake = timeline.intake;
    for (name, rules) in intake.rules.lead_filters(&intake.flow.id, &intake.source.id) {
        let snapshot = timeline.snapshot();
        let verdict = rules.evaluate(&LeadView(&snapshot));
        if verdict.passed {
            let event = timeline.push(EventType::FilterPassed, now);
            event.outcome = Some(Outcome::Success);
            event.data = filter_data(name, &verdict);
        } else {
            let reason = format!("Filter {name}: {}", verdict.describe_failure());
            timeline.reject(EventType::FilterFailed, reason, filter_data(name, &verdict));
            return false;
        }
    }
    true
}

/// `recipient.skipped` for a destination's transfer.
fn skip_event(
    timeline: &mut Timeline<'_>,
    destination_id: &str,
    transfer_id: TransferId,
    reason: String,
    data: Value,
    now: Millis,
) {
    let event = timeline.push(EventType::RecipientSkipped, now);
    event.destination_id = Some(destination_id.to_owned());
    event.transfer_id = Some(transfer_id);
    event.status = Some(RegisterStatus::Skip);
    event.outcome = Some(Outcome::Failure);
    event.reason = Some(reason);
    event.data = data;
}

/// One transfer per destination: skipped by the destination's filter, held (queued, but
/// skipped for now) while the destination is disabled, or queued for delivery.
fn route(timeline: &mut Timeline<'_>, now: Millis) {
    let intake = timeline.intake;
    if intake.destinations.is_empty() {
        timeline.transfer(None, RegisterStatus::Skip, "No destinations configured for this flow".to_owned());
        return;
    }
    for destination in &intake.destinations {
        let verdict = intake.rules.destination_filter(&destination.id).map(|rules| {
            let snapshot = timeline.snapshot();
            rules.evaluate(&LeadView(&snapshot))
        });
        match verdict {
            Some(verdict) if !verdict.passed => {
                let reason = format!("Destination filter: {}", verdict.describe_failure());
                let transfer_id = timeline.transfer(Some(&destination.id), RegisterStatus::Skip, reason.clone());
                let data = filter_data(&format!("destination:{}", destination.id), &verdict);
                skip_event(timeline, &destination.id, transfer_id, reason, data, now);
            }
            _ if !destination.enabled => {
                // Held, not dropped (SPEC 3: `recipient.skipped`, destination disabled): the
                // transfer stays queued and is delivered once the destination is enabled.
                let reason = held_reason(destination);
                let transfer_id =
                    timeline.push_transfer(Some(&destination.id), RegisterStatus::Skip, reason.clone(), true, false);
                skip_event(timeline, &destination.id, transfer_id, reason, json!({"held": true}), now);
            }
            _ => {
                let description = format!("Queued for delivery to {}", destination.name);
                let realtime = destination.mode == DeliveryMode::Realtime;
                timeline.push_transfer(Some(&destination.id), RegisterStatus::New, description, true, realtime);
            }
        }
    }
}
