//! Events: the immutable record of one thing that happened to one lead (SPEC 3).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{EventId, LeadId, TransferId};
use crate::time::Millis;

macro_rules! event_types {
    ($($variant:ident => $text:literal),* $(,)?) => {
        /// The type strings of SPEC 3; extend with care, never rename.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum EventType {
            $(#[serde(rename = $text)] $variant,)*
        }

        impl EventType {
            pub const ALL: &'static [EventType] = &[$(EventType::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventType::$variant => $text,)*
                }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some(EventType::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

event_types! {
    SourceSubmitted => "source.submitted",
    SourceAccepted => "source.accepted",
    SourceRejected => "source.rejected",
    EnhancementSuccess => "enhancement.success",
    EnhancementFailure => "enhancement.failure",
    EnhancementError => "enhancement.error",
    FilterPassed => "filter.passed",
    FilterFailed => "filter.failed",
    RecipientSkipped => "recipient.skipped",
    RecipientDelivered => "recipient.delivered",
    RecipientFailed => "recipient.failed",
    RecipientError => "recipient.error",
    RetryScheduled => "retry.scheduled",
    RetryAttempted => "retry.attempted",
    DeliveryAbandoned => "delivery.abandoned",
    DeliveryResent => "delivery.resent",
    DestinationWarning => "destination.warning",
    DestinationDisabled => "destination.disabled",
    FlowCompleted => "flow.completed",
    LeadUpdated => "lead.updated",
    LeadStatusChanged => "lead.status_changed",
    LeadAssigned => "lead.assigned",
    LeadProgressed => "lead.progressed",
    EventTriggered => "event.triggered",
    PostbackSent => "postback.sent",
    PostbackFailed => "postback.failed",
    FeedbackReceived => "feedback.received",
    FeedbackProcessed => "feedback.processed",
    ActionExecuted => "action.executed",
    ActionFailed => "action.failed",
    LeadErased => "lead.erased",
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A register status: what a transfer (and the events about it) mean to an operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterStatus {
    New,
    Success,
    Skip,
    Error,
}

impl RegisterStatus {
    pub const ALL: [RegisterStatus; 4] =
        [RegisterStatus::New, RegisterStatus::Success, RegisterStatus::Skip, RegisterStatus::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            RegisterStatus::New => "new",
            RegisterStatus::Success => "success",
            RegisterStatus::Skip => "skip",
            RegisterStatus::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }
}

/// How a step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "success" => Some(Outcome::Success),
            "failure" => Some(Outcome::Failure),
            "error" => Some(Outcome::Error),
            _ => None,
        }
    }
}

/// An event about to be appended. The store gives it its place in the log (and its hash).
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub id: EventId,
    pub event_type: EventType,
    pub timestamp: Millis,
    pub lead_id: LeadId,
    pub flow_id: String,
    pub source_id: String,
    pub destination_id: Option<String>,
    pub transfer_id: Option<TransferId>,
    pub status: Option<RegisterStatus>,
    pub outcome: Option<Outcome>,
    pub reason: Option<String>,
    pub duration_ms: Option<i64>,
    pub integration: Option<String>,
    pub response_code: Option<i64>,
    pub price: Option<f64>,
    pub attempt: Option<i64>,
    pub data: Value,
    /// The lead's snapshot; events between two changes of the lead share one.
    pub lead: Arc<Value>,
}

impl NewEvent {
    /// An event of the given type about a lead, with every optional field empty.
    pub fn about(event_type: EventType, timestamp: Millis, lead_id: &LeadId, flow_id: &str, source_id: &str) -> Self {
        Self {
            id: EventId::generate(),
            event_type,
            timestamp,
            lead_id: lead_id.clone(),
            flow_id: flow_id.to_owned(),
            source_id: source_id.to_owned(),
            destination_id: None,
            transfer_id: None,
            status: None,
            outcome: None,
            reason: None,
            duration_ms: None,
            integration: None,
            response_code: None,
            price: None,
            attempt: None,
            data: Value::Object(serde_json::Map::new()),
            lead: Arc::new(Value::Null),
        }
    }
}
