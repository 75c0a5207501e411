//! What an attempt means for its transfer, without IO: the events to append (the outcome,
//! `retry.attempted`, `retry.scheduled`, `delivery.abandoned`) and the transfer's next state,
//! with the retry policy's delay (schedule, jitter, `Retry-After` within bounds).

use std::time::Duration;

use leadrelay_domain::config::{Destination, DestinationKind, RetryPolicy};
use leadrelay_domain::event::{EventType, NewEvent, Outcome, RegisterStatus};
use leadrelay_domain::ids::{LeadId, TransferId};
use leadrelay_domain::time::{format_millis, Millis};
use leadrelay_store::{AttemptRow, ClaimedTransfer, DeliveryRecord, LoggedEvent, TransferState, TransferUpdate};
use serde_json::{json, Value};

use crate::attempt::{AttemptReport, AttemptVerdict};
use crate::judge::Verdict;

/// The longest a `Retry-After` can hold a transfer back: a destination that asks for more
/// is retried after this (or the schedule's delay, when that is longer).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(6 * 3600);

/// The delay before the next attempt, after `attempts_in_round` attempts since the transfer
/// was queued or resent; `None` when the policy allows no more. `random` is uniform in [0, 1).
pub fn retry_delay(
    policy: &RetryPolicy,
    attempts_in_round: u32,
    retry_after: Option<Duration>,
    random: f64,
) -> Option<Duration> {
    if attempts_in_round >= policy.max_attempts || policy.schedule_ms.is_empty() {
        return None;
    }
    let index = (attempts_in_round.max(1) as usize - 1).min(policy.schedule_ms.len() - 1);
    let base = policy.schedule_ms[index] as f64;
    let factor = 1.0 + policy.jitter * (2.0 * random.clamp(0.0, 1.0) - 1.0);
    let scheduled = Duration::from_millis((base * factor).max(0.0).round() as u64);
    Some(match retry_after {
        Some(asked) => scheduled.max(asked.min(MAX_RETRY_AFTER)),
        None => scheduled,
    })
}

/// An event about a claimed transfer: its lead, flow, source, destination and transfer.
pub(crate) fn transfer_event(claimed: &ClaimedTransfer, event_type: EventType, at: Millis) -> NewEvent {
    let mut event = NewEvent::about(
        event_type,
        at,
        &LeadId::from_stored(claimed.lead_id.clone()),
        &claimed.flow_id,
        &claimed.source_id,
    );
    event.destination_id = Some(claimed.destination_id.clone());
    event.transfer_id = Some(TransferId::from_stored(claimed.transfer_id.clone()));
    event
}

/// An event about an attempt: a transfer event with its integration and attempt number.
fn event_about(
    claimed: &ClaimedTransfer,
    integration: &str,
    event_type: EventType,
    at: Millis,
    attempt: u32,
) -> NewEvent {
    let mut event = transfer_event(claimed, event_type, at);
    event.integration = Some(integration.to_owned());
    event.attempt = Some(i64::from(attempt));
    event
}

/// The `integration` of a destination's events: its kind.
fn integration_of(destination: &Destination) -> &'static str {
    match destination.kind {
        DestinationKind::Webhook => "webhook",
        DestinationKind::Ga4 => "ga4",
        DestinationKind::Email => "email",
    }
}

fn name_of(destination: &Destination) -> &str {
    if destination.name.is_empty() {
        &destination.id
    } else {
        &destination.name
    }
}

/// The events and the new state that an attempt's report means for its transfer.
pub fn plan(
    claimed: &ClaimedTransfer,
    destination: &Destination,
    report: &AttemptReport,
    owner: &str,
    now: Millis,
    random: f64,
) -> DeliveryRecord {
    let attempt = claimed.attempts + 1;
    let in_round = attempt.saturating_sub(claimed.retry_base);
    let name = name_of(destination);
    let integration = integration_of(destination);
    let mut events = Vec::new();
    if in_round > 1 {
        let mut retried = event_about(claimed, integration, EventType::RetryAttempted, now, attempt);
        retried.status = Some(RegisterStatus::New);
        retried.data = json!({ "attempt": attempt });
        events.push(retried);
    }

    let data = json!({
        "webhook_id": claimed.transfer_id,
        "request": report.request,
        "response": report.response,
        "captured": report.captured,
    });
    let mut outcome = event_about(claimed, integration, EventType::RecipientDelivered, now, attempt);
    outcome.duration_ms = Some(report.duration_ms);
    outcome.response_code = report.response_code.map(i64::from);
    outcome.data = data;
    let outcome_id = outcome.id.as_str().to_owned();

    let (status, description, state, outcome_name, retry_after) = match &report.verdict {
        AttemptVerdict::Judged(Verdict::Delivered) => {
            outcome.status = Some(RegisterStatus::Success);
            outcome.outcome = Some(Outcome::Success);
            outcome.price = report.price;
            let code = report.response_code.map(|code| format!(" (HTTP {code})")).unwrap_or_default();
            events.push(outcome);
            (RegisterStatus::Success, format!("Delivered to {name}{code}"), TransferState::Done, "success", None)
        }
        AttemptVerdict::Judged(Verdict::Refused { reason }) => {
            outcome.event_type = EventType::RecipientFailed;
            outcome.status = Some(RegisterStatus::Error);
            outcome.outcome = Some(Outcome::Failure);
            outcome.reason = Some(reason.clone());
            events.push(outcome);
            (RegisterStatus::Error, format!("Refused by {name}: {reason}"), TransferState::Done, "failure", None)
        }
        AttemptVerdict::Judged(Verdict::Failed { reason, retry_after }) => {
            let reason = reason.clone();
            outcome.event_type = EventType::RecipientError;
            outcome.status = Some(RegisterStatus::Error);
            outcome.outcome = Some(Outcome::Error);
            outcome.reason = Some(reason.clone());
            events.push(outcome);
            (RegisterStatus::Error, reason, TransferState::Abandoned, "error", Some(*retry_after))
        }
        AttemptVerdict::Blocked { reason } => {
            outcome.event_type = EventType::RecipientError;
            outcome.status = Some(RegisterStatus::Error);
            outcome.outcome = Some(Outcome::Error);
            outcome.reason = Some(reason.clone());
            events.push(outcome);
            (RegisterStatus::Error, reason.clone(), TransferState::Abandoned, "error", None)
        }
    };

    // A technical failure is retried while the policy allows; a blocked call never is.
    let (status, description, state) = match (state, retry_after) {
        (TransferState::Abandoned, Some(retry_after)) => {
            match retry_delay(&destination.retry, in_round, retry_after, random) {
                Some(delay) => {
                    let due_at = now + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
                    let mut scheduled = event_about(claimed, integration, EventType::RetryScheduled, now, attempt + 1);
                    scheduled.status = Some(RegisterStatus::New);
                    scheduled.reason = Some(description.clone());
                    scheduled.data = json!({
                        "next_attempt": attempt + 1,
                        "due_at": format_millis(due_at),
                        "delay_ms": delay.as_millis() as u64,
                        "retry_after_ms": retry_after.map(|wait| wait.as_millis() as u64),
                    });
                    events.push(scheduled);
                    let text = format!(
                        "Retry {} of {} at {}: {description}",
                        in_round,
                        destination.retry.max_attempts.saturating_sub(1),
                        format_millis(due_at)
                    );
                    (RegisterStatus::New, text, TransferState::Pending { due_at })
                }
                None => abandon(claimed, &mut events, now, attempt, in_round, &description),
            }
        }
        (TransferState::Abandoned, None) => abandon(claimed, &mut events, now, attempt, in_round, &description),
        other => (status, description, other.0),
    };

    let events = events
        .into_iter()
        .map(|event| LoggedEvent::new(event, claimed.snapshot_id, &claimed.snapshot_digest))
        .collect();
    DeliveryRecord {
        events,
        update: Some(TransferUpdate {
            transfer_id: claimed.transfer_id.clone(),
            owner: Some(owner.to_owned()),
            status,
            description,
            state,
            attempts: attempt,
            updated_at: now,
            retry_base: None,
        }),
        attempt: Some(AttemptRow {
            transfer_id: claimed.transfer_id.clone(),
            attempt,
            started_at: report.started_at,
            duration_ms: report.duration_ms,
            outcome: outcome_name,
            response_code: report.response_code.map(i64::from),
            event_id: outcome_id,
        }),
        cap_counts: Vec::new(),
    }
}

fn abandon(
    claimed: &ClaimedTransfer,
    events: &mut Vec<NewEvent>,
    now: Millis,
    attempt: u32,
    in_round: u32,
    last_error: &str,
) -> (RegisterStatus, String, TransferState) {
    let reason = if in_round == 1 && attempt == 1 {
        format!("Abandoned: {last_error}")
    } else if in_round == attempt {
        format!("Abandoned after {in_round} attempts: {last_error}")
    } else {
        // A resent transfer: this round's attempts, and all of them, as `attempt` says.
        format!("Abandoned after {in_round} more attempts ({attempt} in all): {last_error}")
    };
    // The same integration as the attempt's own event, just before it.
    let integration = events.last().and_then(|event| event.integration.clone()).unwrap_or_default();
    let mut abandoned = event_about(claimed, &integration, EventType::DeliveryAbandoned, now, attempt);
    abandoned.status = Some(RegisterStatus::Error);
    abandoned.outcome = Some(Outcome::Error);
    abandoned.reason = Some(reason.clone());
    abandoned.data = json!({ "attempts": attempt, "last_error": last_error });
    events.push(abandoned);
    (RegisterStatus::Error, reason, TransferState::Abandoned)
}

/// The JSON a realtime delivery adds to the submit answer's `deliveries`.
pub fn realtime_answer(record: &DeliveryRecord, destination_id: &str) -> Value {
    let update = record.update.as_ref();
    let outcome_event = record.events.iter().map(|logged| &logged.event).find(|event| {
        matches!(
            event.event_type,
            EventType::RecipientDelivered
                | EventType::RecipientFailed
                | EventType::RecipientError
                | EventType::RecipientSkipped
        )
    });
    json!({
        "destination_id": destination_id,
        "transfer_id": update.map(|update| update.transfer_id.as_str()),
        "outcome": outcome_event.and_then(|event| event.outcome).map(Outcome::as_str),
        "status": update.map(|update| update.status.as_str()),
        // A transfer that waits without an outcome (its cap busy with deliveries in flight)
        // says why.
        "reason": match outcome_event {
            Some(event) => event.reason.as_deref(),
            None => update.map(|update| update.description.as_str()),
        },
        "response_code": outcome_event.and_then(|event| event.response_code),
        "price": outcome_event.and_then(|event| event.price),
        "retrying": update.is_some_and(|update| matches!(update.state, TransferState::Pending { .. })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_attempts: u32, schedule: &[u64], jitter: f64) -> RetryPolicy {
        RetryPolicy { max_attempts, schedule_ms: schedule.to_vec(), jitter }
    }

    #[test]
    fn the_schedule_gives_the_delay_before_each_retry_and_repeats_its_last_entry() {
        let p = policy(6, &[10, 60, 300], 0.0);
        assert_eq!(retry_delay(&p, 1, None, 0.5), Some(Duration::from_millis(10)));
        assert_eq!(retry_delay(&p, 2, None, 0.5), Some(Duration::from_millis(60)));
        assert_eq!(retry_delay(&p, 3, None, 0.5), Some(Duration::from_millis(300)));
        assert_eq!(retry_delay(&p, 5, None, 0.5), Some(Duration::from_millis(300)));
        assert_eq!(retry_delay(&p, 6, None, 0.5), None);
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let p = policy(3, &[1000], 0.2);
        assert_eq!(retry_delay(&p, 1, None, 0.0), Some(Duration::from_millis(800)));
        assert_eq!(retry_delay(&p, 1, None, 0.5), Some(Duration::from_millis(1000)));
        assert_eq!(retry_delay(&p, 1, None, 0.999_999), Some(Duration::from_millis(1200)));
    }

    #[test]
    fn retry_after_delays_the_retry_within_bounds() {
        let p = policy(3, &[1000], 0.0);
        assert_eq!(retry_delay(&p, 1, Some(Duration::from_secs(5)), 0.5), Some(Duration::from_secs(5)));
        // Asking for less than the schedule does not hurry the retry.
        assert_eq!(retry_delay(&p, 1, Some(Duration::from_millis(10)), 0.5), Some(Duration::from_millis(1000)));
        assert_eq!(retry_delay(&p, 1, Some(Duration::from_secs(86_400 * 30)), 0.5), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn a_single_attempt_policy_never_retries() {
        assert_eq!(retry_delay(&policy(1, &[10], 0.0), 1, None, 0.5), None);
    }
}
