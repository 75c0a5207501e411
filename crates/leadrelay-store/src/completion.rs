//! `flow.completed` of a submission with background deliveries. The decision holds it back
//! ([`leadrelay_domain::pipeline::Decision::pending_completion`]); the store keeps what it
//! needs with the lead and logs it in the transaction that leaves none of the lead's transfers
//! pending (delivered, refused, skipped or abandoned), so that it follows their outcomes.
//! Engines read and write the rows; what the event says is decided here, once.

use leadrelay_domain::event::{EventType, NewEvent, Outcome};
use leadrelay_domain::ids::LeadId;
use leadrelay_domain::time::Millis;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{DeliveryRecord, LoggedEvent, StoreError, StoreResult};

/// What a held-back `flow.completed` keeps until it is logged, as stored (a JSON text).
#[derive(Clone, Debug, PartialEq)]
pub struct PendingCompletion {
    pub body: String,
}

#[derive(Serialize, Deserialize)]
struct Held {
    outcome: Option<Outcome>,
    reason: Option<String>,
    price: Option<f64>,
    received_at: Millis,
}

impl PendingCompletion {
    pub fn from_event(event: &NewEvent) -> Self {
        let held = Held {
            outcome: event.outcome,
            reason: event.reason.clone(),
            price: event.price,
            received_at: event.timestamp - event.duration_ms.unwrap_or(0),
        };
        Self { body: serde_json::to_string(&held).unwrap_or_default() }
    }
}

/// A transfer as a `flow.completed` lists it: `(transfer_id, destination_id, status)`.
pub type CompletedTransfer = (String, Option<String>, String);

/// A lead whose held-back completion is due, as an engine reads it: the stored row, the
/// lead's current snapshot, and its transfers in the order they were made.
#[derive(Clone, Debug)]
pub struct DueCompletion {
    pub lead_id: String,
    pub flow_id: String,
    pub source_id: String,
    pub body: String,
    pub snapshot_id: i64,
    pub snapshot_digest: Vec<u8>,
    pub transfers: Vec<CompletedTransfer>,
}

/// The record that logs due completions (none when nothing is due), at `now` or, should a
/// step of this batch carry a later time, at that time: the completion never sorts before the
/// outcomes it follows.
pub fn completion_record(
    due: Vec<DueCompletion>,
    records: &[&DeliveryRecord],
    now: Millis,
) -> StoreResult<Option<DeliveryRecord>> {
    if due.is_empty() {
        return Ok(None);
    }
    let latest = records.iter().flat_map(|record| record.events.iter().map(|logged| logged.event.timestamp)).max();
    let now = latest.map_or(now, |latest| latest.max(now));
    let corrupt = |what: String| StoreError::Corrupt(what);
    let mut events = Vec::with_capacity(due.len());
    for lead in due {
        let held: Held = serde_json::from_str(&lead.body)
            .map_err(|error| corrupt(format!("held completion of {}: {error}", lead.lead_id)))?;
        let lead_id = LeadId::parse(&lead.lead_id).ok_or_else(|| corrupt(format!("lead id {:?}", lead.lead_id)))?;
        let digest: [u8; 32] = lead
            .snapshot_digest
            .try_into()
            .map_err(|_| corrupt(format!("snapshot digest of {} is not 32 bytes", lead.lead_id)))?;
        let transfers: Vec<Value> = lead
            .transfers
            .iter()
            .map(
                |(id, destination, status)| json!({"transfer_id": id, "destination_id": destination, "status": status}),
            )
            .collect();
        let mut event = NewEvent::about(EventType::FlowCompleted, now, &lead_id, &lead.flow_id, &lead.source_id);
        event.outcome = held.outcome;
        event.reason = held.reason;
        event.price = held.price;
        event.duration_ms = Some((now - held.received_at).max(0));
        event.data = json!({ "transfers": transfers });
        events.push(LoggedEvent::new(event, lead.snapshot_id, &digest));
    }
    Ok(Some(DeliveryRecord { events, update: None, attempt: None, cap_counts: Vec::new() }))
}

/// The leads a batch's delivery records are about: where a held completion may now be due.
pub fn leads_of(records: &[&DeliveryRecord]) -> Vec<String> {
    let mut leads: Vec<String> = records
        .iter()
        .filter(|record| record.update.is_some())
        .flat_map(|record| record.events.iter().map(|logged| logged.event.lead_id.as_str().to_owned()))
        .collect();
    leads.sort_unstable();
    leads.dedup();
    leads
}
