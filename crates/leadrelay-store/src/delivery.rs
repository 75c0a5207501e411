//! What crosses the store for delivery: claims of due transfers (with leases that expire when
//! a node dies), the records of attempts (events and the transfer's new state, written in one
//! transaction), and resends.

use leadrelay_domain::caps::CapWindowKey;
use leadrelay_domain::chain::Hash;
use leadrelay_domain::event::{NewEvent, RegisterStatus};
use leadrelay_domain::time::Millis;
use serde_json::Value;

use crate::{StoreError, StoreResult};

/// A request for due transfers of one destination.
#[derive(Clone, Debug)]
pub struct DeliveryClaim {
    pub destination_id: String,
    /// The node claiming; its leases are its own until they expire.
    pub owner: String,
    pub now: Millis,
    /// How long the claim holds: past it, another node may claim the transfer again.
    pub lease_ms: i64,
    pub limit: usize,
}

/// A transfer claimed for delivery, with the lead as it is now.
#[derive(Clone, Debug)]
pub struct ClaimedTransfer {
    pub transfer_id: String,
    pub lead_id: String,
    pub flow_id: String,
    pub source_id: String,
    pub destination_id: String,
    /// Attempts made before this claim.
    pub attempts: u32,
    /// `attempts` when the transfer was last resent: the retry schedule counts from there.
    pub retry_base: u32,
    pub created_at: Millis,
    /// The lead's current snapshot, which the delivery's events carry.
    pub snapshot_id: i64,
    pub snapshot: String,
    pub snapshot_digest: Hash,
}

/// A transfer as an engine reads it for delivery, before its lead's snapshot is added.
#[derive(Clone, Debug)]
pub struct ClaimRow {
    pub transfer_id: String,
    pub lead_id: String,
    pub flow_id: String,
    pub source_id: String,
    pub destination_id: String,
    pub attempts: i64,
    pub retry_base: i64,
    pub created_at: Millis,
}

impl ClaimRow {
    /// The claimed transfer, with its lead's current snapshot as stored.
    pub fn with_snapshot(self, snapshot_id: i64, snapshot: String, digest: Vec<u8>) -> StoreResult<ClaimedTransfer> {
        let snapshot_digest = digest.try_into().map_err(|_| {
            StoreError::Corrupt(format!("the snapshot of lead {} has a digest that is not 32 bytes", self.lead_id))
        })?;
        Ok(ClaimedTransfer {
            transfer_id: self.transfer_id,
            lead_id: self.lead_id,
            flow_id: self.flow_id,
            source_id: self.source_id,
            destination_id: self.destination_id,
            attempts: u32::try_from(self.attempts).unwrap_or(0),
            retry_base: u32::try_from(self.retry_base).unwrap_or(0),
            created_at: self.created_at,
            snapshot_id,
            snapshot,
            snapshot_digest,
        })
    }
}

/// An event about an existing lead, encoded for the log: it shares the lead's stored snapshot.
#[derive(Clone, Debug)]
pub struct LoggedEvent {
    pub event: NewEvent,
    pub data_json: String,
    pub snapshot_id: i64,
    pub content: Hash,
}

impl LoggedEvent {
    pub fn new(mut event: NewEvent, snapshot_id: i64, snapshot_digest: &Hash) -> Self {
        let (data_json, content) = crate::records::encode_event(&mut event, snapshot_digest);
        Self { event, data_json, snapshot_id, content }
    }
}

/// Where a transfer stands after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferState {
    /// Waiting for its next attempt at `due_at`.
    Pending { due_at: Millis },
    /// Nothing more to do: delivered, refused, or skipped.
    Done,
    /// Retries exhausted: in the not-integrated collection until resent.
    Abandoned,
}

impl TransferState {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferState::Pending { .. } => "pending",
            TransferState::Done => "done",
            TransferState::Abandoned => "abandoned",
        }
    }
}

/// A transfer's new state.
#[derive(Clone, Debug)]
pub struct TransferUpdate {
    pub transfer_id: String,
    /// The lease holder recording the update. When another node holds the transfer now
    /// (this lease expired and it was claimed again), the events are still written (the
    /// attempt happened) but the state is left to the new holder.
    pub owner: Option<String>,
    pub status: RegisterStatus,
    pub description: String,
    pub state: TransferState,
    pub attempts: u32,
    pub updated_at: Millis,
    /// Set by a resend: the retry schedule starts over from this many attempts.
    pub retry_base: Option<u32>,
}

/// One attempt's stored row, beside its events.
#[derive(Clone, Debug)]
pub struct AttemptRow {
    pub transfer_id: String,
    pub attempt: u32,
    pub started_at: Millis,
    pub duration_ms: i64,
    pub outcome: &'static str,
    pub response_code: Option<i64>,
    /// The event that holds the request sent and the response received.
    pub event_id: String,
}

/// Everything one delivery step writes, in one transaction.
#[derive(Clone, Debug)]
pub struct DeliveryRecord {
    pub events: Vec<LoggedEvent>,
    pub update: Option<TransferUpdate>,
    pub attempt: Option<AttemptRow>,
    /// Cap windows a successful delivery counts toward.
    pub cap_counts: Vec<CapWindowKey>,
}

/// How a resend ended for one transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResendOutcome {
    /// Queued again: due now, with a `delivery.resent` event; its retries start over.
    Queued,
    NotFound,
    /// A transfer to no destination (a rejected lead) has nothing to resend.
    NoDestination,
    /// It is being delivered right now.
    AlreadyQueued,
}

/// Transfers to queue again for delivery, by a person or the API.
#[derive(Clone, Debug)]
pub struct ResendRequest {
    pub transfer_ids: Vec<String>,
    /// Who asked (a token's name), for the `delivery.resent` event.
    pub actor: String,
    /// The bulk resend job that asks, if one does: its events name it.
    pub job_id: Option<String>,
    pub now: Millis,
}

/// What a resend needs to know of a transfer, read in the writer's transaction.
#[derive(Clone, Debug)]
pub struct ResendRow {
    pub transfer_id: String,
    pub lead_id: String,
    pub flow_id: String,
    pub source_id: String,
    pub destination_id: Option<String>,
    pub status: String,
    pub state: String,
    pub lease_owner: Option<String>,
    pub attempts: u32,
    pub snapshot_id: i64,
    pub snapshot_digest: Hash,
}

/// The event and the new state of one resent transfer, or why it is not resent. Shared by
/// every engine, so that a resend means the same everywhere.
pub fn plan_resend(
    row: Option<&ResendRow>,
    actor: &str,
    job_id: Option<&str>,
    now: Millis,
) -> Result<DeliveryRecord, ResendOutcome> {
    use leadrelay_domain::event::EventType;
    use leadrelay_domain::ids::{LeadId, TransferId};

    let row = row.ok_or(ResendOutcome::NotFound)?;
    let destination_id = row.destination_id.as_deref().ok_or(ResendOutcome::NoDestination)?;
    if row.state == "pending" && row.lease_owner.is_some() {
        return Err(ResendOutcome::AlreadyQueued);
    }
    let mut event = NewEvent::about(
        EventType::DeliveryResent,
        now,
        &LeadId::from_stored(row.lead_id.clone()),
        &row.flow_id,
        &row.source_id,
    );
    event.destination_id = Some(destination_id.to_owned());
    event.transfer_id = Some(TransferId::from_stored(row.transfer_id.clone()));
    event.status = Some(RegisterStatus::New);
    event.data = serde_json::json!({
        "by": actor,
        "job_id": job_id,
        "previous_status": row.status,
        "previous_state": row.state,
        "attempts_before": row.attempts,
    });
    Ok(DeliveryRecord {
        events: vec![LoggedEvent::new(event, row.snapshot_id, &row.snapshot_digest)],
        update: Some(TransferUpdate {
            transfer_id: row.transfer_id.clone(),
            owner: None,
            status: RegisterStatus::New,
            description: format!("Resent by {actor}: queued for delivery to {destination_id}"),
            state: TransferState::Pending { due_at: now },
            attempts: row.attempts,
            updated_at: now,
            retry_base: Some(row.attempts),
        }),
        attempt: None,
        cap_counts: Vec::new(),
    })
}

impl ResendOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            ResendOutcome::Queued => "queued",
            ResendOutcome::NotFound => "not_found",
            ResendOutcome::NoDestination => "no_destination",
            ResendOutcome::AlreadyQueued => "in_flight",
        }
    }
}

/// A node's claim on the running jobs no node holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobClaim {
    pub owner: String,
    pub now: Millis,
    /// How long the lease holds; the running job renews it with every save.
    pub lease_ms: i64,
}

/// A background job (a bulk resend) and its progress.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct JobRecord {
    pub id: String,
    pub kind: String,
    /// `running`, `completed` or `failed`.
    pub status: String,
    /// What the job works on: for a resend, the register filter.
    pub params: Value,
    /// Where a running job continues after a restart.
    #[serde(skip)]
    pub cursor: Option<String>,
    pub matched: u64,
    pub queued: u64,
    pub skipped: u64,
    pub error: Option<String>,
    #[serde(serialize_with = "crate::records::serialize_millis")]
    pub created_at: Millis,
    #[serde(serialize_with = "crate::records::serialize_millis")]
    pub updated_at: Millis,
    /// The node running the job, until `lease_until`; a save from another node is refused.
    #[serde(skip)]
    pub owner: Option<String>,
    #[serde(skip)]
    pub lease_until: Option<Millis>,
}
