//! What goes into the store and what comes back out of it.

use std::sync::Arc;

use leadrelay_domain::chain::{content_digest, snapshot_digest, Hash};
use leadrelay_domain::event::{NewEvent, Outcome, RegisterStatus};
use leadrelay_domain::lead::LeadRecord;
use leadrelay_domain::pipeline::{Decision, DuplicateFound, DuplicateKey, DuplicateQuery, NewTransfer};
use leadrelay_domain::time::{format_millis, Millis};
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::query::Cursor;

/// A lead snapshot serialised for storage. The events between two changes of a lead share
/// one snapshot, so it is stored once and the events refer to it.
#[derive(Clone, Debug)]
pub struct EncodedSnapshot {
    pub json: String,
    pub digest: Hash,
}

impl EncodedSnapshot {
    pub fn new(json: String) -> Self {
        let digest = snapshot_digest(&json);
        Self { json, digest }
    }
}

/// An event serialised for storage: its data as JSON text, the index of its snapshot in the
/// submission's `snapshots`, and the digest of its content (data and snapshot).
/// Encoding happens on the caller's task so that the single writer only links hashes.
#[derive(Clone, Debug)]
pub struct EncodedEvent {
    pub event: NewEvent,
    pub data_json: String,
    pub snapshot: usize,
    pub content: Hash,
}

/// A lead serialised for storage; `snapshot` indexes the submission's `snapshots`.
#[derive(Clone, Debug)]
pub struct EncodedLead {
    pub record: LeadRecord,
    pub snapshot: usize,
}

/// The stored answer to a submission, replayed for a repeated idempotency key.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredAnswer {
    pub http_status: u16,
    pub body_json: String,
}

/// An idempotency key and the answer it keeps.
#[derive(Clone, Debug)]
pub struct IdempotencyRecord {
    pub source_id: String,
    pub key: String,
    pub answer: StoredAnswer,
}

/// Everything one submission writes, in one transaction.
#[derive(Clone, Debug)]
pub struct Submission {
    pub lead: EncodedLead,
    pub snapshots: Vec<EncodedSnapshot>,
    pub events: Vec<EncodedEvent>,
    pub transfers: Vec<NewTransfer>,
    pub duplicate_keys: Vec<DuplicateKey>,
    /// The duplicate query and the answer the decision assumed; re-checked at commit.
    pub duplicate_check: Option<(DuplicateQuery, Option<DuplicateFound>)>,
    pub idempotency: Option<IdempotencyRecord>,
    /// Realtime transfers are delivered by the node that took the submission: they are
    /// stored claimed by it (`owner`) until `until`, after which any node may deliver them.
    pub realtime_lease: Option<Lease>,
    /// `flow.completed`, logged once the lead's background deliveries are done.
    pub pending_completion: Option<crate::completion::PendingCompletion>,
}

/// A claim on transfers: who holds them and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub until: Millis,
}

impl Submission {
    /// The lead its duplicate keys point later submissions to: the original a linked duplicate
    /// is linked to, so that a lead matching it links to that original too, not to a chain of
    /// duplicates; else the lead itself.
    pub fn duplicate_key_owner(&self) -> &str {
        let lead = &self.lead.record;
        lead.duplicate_of.as_ref().unwrap_or(&lead.id).as_str()
    }

    /// Encodes a decision for storage, with the answer an idempotency key keeps.
    pub fn from_decision(decision: Decision, idempotency: Option<IdempotencyRecord>) -> Self {
        let mut snapshots: Vec<EncodedSnapshot> = Vec::new();
        let mut events = Vec::with_capacity(decision.events.len());
        let mut previous: Option<Arc<Value>> = None;
        for mut event in decision.events {
            let shared = previous.as_ref().is_some_and(|snapshot| Arc::ptr_eq(snapshot, &event.lead));
            if !shared {
                snapshots.push(EncodedSnapshot::new(json_text(&event.lead)));
                previous = Some(event.lead.clone());
            }
            let snapshot = snapshots.len() - 1;
            let (data_json, content) = encode_event(&mut event, &snapshots[snapshot].digest);
            events.push(EncodedEvent { event, data_json, snapshot, content });
        }
        // The last event usually carries the lead as it ends up; when it does not (the
        // completion held back for realtime deliveries), the lead gets a snapshot of its own.
        let lead_snapshot = match previous {
            Some(last) if Arc::ptr_eq(&last, &decision.snapshot) => snapshots.len() - 1,
            _ => {
                snapshots.push(EncodedSnapshot::new(json_text(&decision.snapshot)));
                snapshots.len() - 1
            }
        };
        Self {
            lead: EncodedLead { record: decision.lead, snapshot: lead_snapshot },
            snapshots,
            events,
            transfers: decision.transfers,
            duplicate_keys: decision.duplicate_keys,
            duplicate_check: decision.duplicate_query.map(|query| (query, decision.assumed_duplicate)),
            idempotency,
            realtime_lease: None,
            pending_completion: decision
                .pending_completion
                .as_ref()
                .map(crate::completion::PendingCompletion::from_event),
        }
    }
}

/// A value's JSON text, written straight into a buffer: its `Display`, which `to_string`
/// uses, goes through the formatting machinery for every token (the whole pipeline's CPU per
/// lead fell by about a tenth without it).
fn json_text(value: &Value) -> String {
    serde_json::to_string(value).expect("a JSON value has string keys only, so it always serializes")
}

/// An event's data as its JSON text, and the digest of its content with its lead's snapshot;
/// the event keeps neither tree, the texts being the content of record from now on.
pub(crate) fn encode_event(event: &mut NewEvent, snapshot_digest: &Hash) -> (String, Hash) {
    let data_json = json_text(&event.data);
    event.data = Value::Null;
    event.lead = Arc::new(Value::Null);
    let content = content_digest(&data_json, snapshot_digest);
    (data_json, content)
}

/// An event read back from the log. `data` and `lead` are the JSON texts the store wrote
/// (validated when they were encoded, covered by the hash chain since), so they are written
/// out as they are, never re-parsed on the way to a client.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    pub seq: i64,
    pub id: String,
    pub event_type: String,
    pub timestamp: Millis,
    pub lead_id: String,
    pub flow_id: String,
    pub source_id: String,
    pub destination_id: Option<String>,
    pub transfer_id: Option<String>,
    pub status: Option<String>,
    pub outcome: Option<String>,
    pub reason: Option<String>,
    pub duration_ms: Option<i64>,
    pub integration: Option<String>,
    pub response_code: Option<i64>,
    pub price: Option<f64>,
    pub attempt: Option<i64>,
    pub data: String,
    pub lead: String,
}

/// The top-level fields of an event, in the order they are written.
pub const EVENT_FIELDS: [&str; 18] = [
    "id",
    "type",
    "timestamp",
    "lead_id",
    "flow_id",
    "source_id",
    "destination_id",
    "transfer_id",
    "status",
    "outcome",
    "reason",
    "duration_ms",
    "integration",
    "response_code",
    "price",
    "attempt",
    "data",
    "lead",
];

/// Refuses a `rules` filter over events that names a path outside an event: `state`
/// (meant as `lead.state`) would match nothing, silently.
pub fn check_event_rules(rules: &leadrelay_domain::rules::RuleSet) -> Result<(), String> {
    for field in rules.fields() {
        let top = field.split('.').next().unwrap_or(field);
        if !EVENT_FIELDS.contains(&top) {
            return Err(format!(
                "{field:?} is not a field of an event: use one of {}, data.…, or lead.… for the lead (lead.{field})",
                EVENT_FIELDS[..EVENT_FIELDS.len() - 2].join(", ")
            ));
        }
    }
    Ok(())
}

/// The top-level fields to show from `include` and `exclude` lists (comma-separated names of
/// [`EVENT_FIELDS`]), in the log's order; all of them when neither is given.
pub fn event_projection(include: Option<&str>, exclude: Option<&str>) -> Result<Vec<&'static str>, String> {
    let parse = |text: &str, what: &str| -> Result<Vec<String>, String> {
        let names: Vec<String> =
            text.split(',').map(|name| name.trim().to_owned()).filter(|name| !name.is_empty()).collect();
        match names.iter().find(|name| !EVENT_FIELDS.contains(&name.as_str())) {
            Some(unknown) => Err(format!("{what}: unknown field {unknown:?}; fields are {}", EVENT_FIELDS.join(", "))),
            None => Ok(names),
        }
    };
    let include = include.map(|text| parse(text, "include")).transpose()?;
    let exclude = exclude.map(|text| parse(text, "exclude")).transpose()?.unwrap_or_default();
    Ok(EVENT_FIELDS
        .iter()
        .copied()
        .filter(|field| include.as_ref().is_none_or(|names| names.iter().any(|name| name == field)))
        .filter(|field| !exclude.iter().any(|name| name == field))
        .collect())
}

/// One top-level value of an event, borrowed.
#[derive(Clone, Copy, Debug)]
pub enum FieldValue<'a> {
    Text(Option<&'a str>),
    Integer(Option<i64>),
    Number(Option<f64>),
    /// JSON text, written as it is.
    Json(&'a str),
}

impl StoredEvent {
    pub fn cursor(&self) -> Cursor {
        Cursor { time: self.timestamp, seq: self.seq }
    }

    /// The value of one of [`EVENT_FIELDS`]; `timestamp` is given formatted by the caller.
    pub fn field<'a>(&'a self, name: &str, timestamp: &'a str) -> FieldValue<'a> {
        match name {
            "id" => FieldValue::Text(Some(&self.id)),
            "type" => FieldValue::Text(Some(&self.event_type)),
            "timestamp" => FieldValue::Text(Some(timestamp)),
            "lead_id" => FieldValue::Text(Some(&self.lead_id)),
            "flow_id" => FieldValue::Text(Some(&self.flow_id)),
            "source_id" => FieldValue::Text(Some(&self.source_id)),
            "destination_id" => FieldValue::Text(self.destination_id.as_deref()),
            "transfer_id" => FieldValue::Text(self.transfer_id.as_deref()),
            "status" => FieldValue::Text(self.status.as_deref()),
            "outcome" => FieldValue::Text(self.outcome.as_deref()),
            "reason" => FieldValue::Text(self.reason.as_deref()),
            "duration_ms" => FieldValue::Integer(self.duration_ms),
            "integration" => FieldValue::Text(self.integration.as_deref()),
            "response_code" => FieldValue::Integer(self.response_code),
            "price" => FieldValue::Number(self.price),
            "attempt" => FieldValue::Integer(self.attempt),
            "data" => FieldValue::Json(&self.data),
            "lead" => FieldValue::Json(&self.lead),
            _ => FieldValue::Text(None),
        }
    }

    /// Writes the event as a JSON object with the given fields (in [`EVENT_FIELDS`] order).
    pub fn write_json(&self, out: &mut Vec<u8>, fields: &[&str]) {
        let timestamp = format_millis(self.timestamp);
        out.push(b'{');
        for (index, name) in fields.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            write_json_string(out, name);
            out.push(b':');
            match self.field(name, &timestamp) {
                FieldValue::Text(Some(text)) => write_json_string(out, text),
                FieldValue::Integer(Some(number)) => out.extend_from_slice(number.to_string().as_bytes()),
                FieldValue::Number(Some(number)) if number.is_finite() => out.extend_from_slice(
                    serde_json::Number::from_f64(number).map(|n| n.to_string()).unwrap_or_default().as_bytes(),
                ),
                FieldValue::Json(text) => out.extend_from_slice(text.as_bytes()),
                _ => out.extend_from_slice(b"null"),
            }
        }
        out.push(b'}');
    }

    /// The event as a JSON tree, for rule evaluation.
    pub fn to_json(&self) -> Value {
        let mut out = Vec::with_capacity(self.data.len() + self.lead.len() + 512);
        self.write_json(&mut out, &EVENT_FIELDS);
        serde_json::from_slice(&out).unwrap_or(Value::Null)
    }
}

/// Writes a JSON string literal, escaped.
pub fn write_json_string(out: &mut Vec<u8>, text: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// A page of events as NDJSON text (each event's JSON followed by a newline).
#[derive(Clone, Debug, Default)]
pub struct EventLines {
    pub ndjson: String,
    pub count: usize,
    /// The position of the page's last event.
    pub last: Option<Cursor>,
}

impl EventLines {
    /// Renders events with [`StoredEvent::write_json`].
    pub fn from_events(events: &[StoredEvent], fields: &[&str]) -> Self {
        let mut out = Vec::with_capacity(events.iter().map(|e| e.data.len() + e.lead.len() + 512).sum());
        for event in events {
            event.write_json(&mut out, fields);
            out.push(b'\n');
        }
        Self {
            // Every piece written is valid UTF-8 (JSON texts and escaped strings).
            ndjson: String::from_utf8(out).unwrap_or_default(),
            count: events.len(),
            last: events.last().map(StoredEvent::cursor),
        }
    }
}

/// A lead read back from the store: its current snapshot as the JSON text the store wrote.
#[derive(Clone, Debug)]
pub struct StoredLead {
    pub seq: i64,
    pub id: String,
    pub created_at: Millis,
    pub snapshot: String,
}

impl StoredLead {
    pub fn cursor(&self) -> Cursor {
        Cursor { time: self.created_at, seq: self.seq }
    }
}

/// One row of the register: one lead going to one destination (or to none).
#[derive(Clone, Debug, Serialize)]
pub struct TransferRow {
    #[serde(skip)]
    pub seq: i64,
    pub transfer_id: String,
    pub lead_id: String,
    pub flow_id: String,
    pub source_id: String,
    pub destination_id: Option<String>,
    pub status: RegisterStatus,
    pub description: String,
    #[serde(serialize_with = "serialize_millis")]
    pub created_at: Millis,
    #[serde(serialize_with = "serialize_millis")]
    pub updated_at: Millis,
    pub attempts: i64,
}

impl TransferRow {
    pub fn cursor(&self) -> Cursor {
        Cursor { time: self.created_at, seq: self.seq }
    }
}

pub(crate) fn serialize_millis<S: Serializer>(millis: &Millis, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_millis(*millis))
}

/// What `verify` found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChainReport {
    pub events_checked: u64,
    /// The first event that does not verify, and why; `None` when the chain is intact.
    pub first_broken: Option<BrokenLink>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BrokenLink {
    pub seq: i64,
    pub event_id: String,
    pub problem: String,
}

/// What an API token may do (SPEC 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Operator,
    Viewer,
    Source,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Source => "source",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Role::Admin, Role::Operator, Role::Viewer, Role::Source].into_iter().find(|role| role.as_str() == text)
    }
}

/// A token to store: only its hash is kept.
#[derive(Clone, Debug)]
pub struct NewToken {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub hash: [u8; 32],
    pub created_at: Millis,
}

#[derive(Clone, Debug, Serialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    #[serde(skip)]
    pub hash: [u8; 32],
    #[serde(serialize_with = "serialize_millis")]
    pub created_at: Millis,
}

/// The lead's outcome as stored text.
pub fn outcome_text(outcome: Option<Outcome>) -> Option<&'static str> {
    outcome.map(Outcome::as_str)
}
