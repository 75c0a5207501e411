//! What a group commit decides before it writes, the same on every engine: which submissions
//! of a batch commit (idempotency replays, duplicate answers that changed), what the resends
//! of a batch queue, and the sequence numbers and hashes of the batch's events.
//!
//! An engine reads what the batch needs (stored duplicate keys, stored answers, transfer rows)
//! inside its write transaction, calls these, and writes the rows they name.

use std::collections::{HashMap, HashSet};

use leadrelay_domain::chain::{link, ChainHeader, Hash, GENESIS};
use leadrelay_domain::config::DuplicateMatch;
use leadrelay_domain::event::NewEvent;
use leadrelay_domain::ids::LeadId;
use leadrelay_domain::pipeline::{DuplicateFound, DuplicateQuery};
use leadrelay_domain::time::Millis;

use crate::{
    plan_resend, CommitOutcome, DeliveryRecord, ResendOutcome, ResendRequest, ResendRow, StoredAnswer, Submission,
};

/// The end of the chain as of the last commit, and the last snapshot id handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: i64,
    pub hash: Hash,
    pub snapshot_id: i64,
    /// The timestamp of the last event: the next is stamped no earlier (`link_events`).
    pub timestamp: Millis,
}

impl ChainHead {
    /// The head of an empty log.
    pub const EMPTY: Self = Self { seq: 0, hash: GENESIS, snapshot_id: 0, timestamp: 0 };
}

/// Where an event joins the chain: its sequence number, its hash and its timestamp as logged.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    pub seq: i64,
    pub hash: Hash,
    pub timestamp: Millis,
}

/// Earlier leads by `(flow_id, digest)`: each lead's id and creation time.
pub type KeyIndex = HashMap<(String, String), Vec<(String, i64)>>;

/// Stored idempotency answers by `(source_id, key)`.
pub type AnswerIndex = HashMap<(String, String), StoredAnswer>;

/// The digests a batch's duplicate checks look up, by flow, with the earliest time any of
/// them looks back to.
pub fn duplicate_lookups<'a>(batch: &[&'a Submission]) -> HashMap<&'a str, (Vec<&'a str>, i64)> {
    let mut by_flow: HashMap<&str, (Vec<&str>, i64)> = HashMap::new();
    for (query, _) in batch.iter().filter_map(|submission| submission.duplicate_check.as_ref()) {
        let entry = by_flow.entry(query.flow_id.as_str()).or_insert((Vec::new(), query.since));
        entry.0.extend(query.keys.iter().map(|key| key.digest.as_str()));
        entry.1 = entry.1.min(query.since);
    }
    by_flow
}

/// The idempotency keys a batch carries, as `(source_id, key)`.
pub fn idempotency_lookups<'a>(batch: &[&'a Submission]) -> Vec<(&'a str, &'a str)> {
    batch
        .iter()
        .filter_map(|submission| submission.idempotency.as_ref())
        .map(|record| (record.source_id.as_str(), record.key.as_str()))
        .collect()
}

/// The earliest lead in the window that matches the query (any key, or all of them): the
/// same answer a store's `find_duplicate` gives from the database alone.
pub fn earliest_duplicate(index: &KeyIndex, query: &DuplicateQuery) -> Option<DuplicateFound> {
    let mut matches: HashMap<&str, (usize, i64)> = HashMap::new();
    for key in &query.keys {
        let Some(leads) = index.get(&(query.flow_id.clone(), key.digest.clone())) else { continue };
        let mut counted = HashSet::new();
        for (lead_id, created_at) in leads.iter().filter(|(_, created_at)| *created_at >= query.since) {
            let entry = matches.entry(lead_id.as_str()).or_insert((0, *created_at));
            if counted.insert(lead_id.as_str()) {
                entry.0 += 1;
            }
            entry.1 = entry.1.min(*created_at);
        }
    }
    let needed = match query.match_mode {
        DuplicateMatch::Any => 1,
        DuplicateMatch::All => query.keys.len(),
    };
    matches
        .into_iter()
        .filter(|(_, (count, _))| *count >= needed)
        .min_by(|(a_id, (_, a_time)), (b_id, (_, b_time))| (a_time, a_id).cmp(&(b_time, b_id)))
        .map(|(lead_id, (_, created_at))| DuplicateFound {
            lead_id: LeadId::from_stored(lead_id.to_owned()),
            created_at,
        })
}

/// Decides, in order, which submissions of a batch commit: a used idempotency key replays
/// its answer, a duplicate answer that changed sends the submission back to be decided again.
/// `keys` and `answers` hold what is stored; the accepted submissions are added as they go,
/// so that two submissions of one batch see each other.
pub fn admit<'a>(
    batch: &[&'a Submission],
    keys: &mut KeyIndex,
    answers: &mut AnswerIndex,
) -> (Vec<CommitOutcome>, Vec<&'a Submission>) {
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut accepted = Vec::with_capacity(batch.len());
    for submission in batch {
        if let Some(record) = &submission.idempotency {
            if let Some(answer) = answers.get(&(record.source_id.clone(), record.key.clone())) {
                outcomes.push(CommitOutcome::Replay(answer.clone()));
                continue;
            }
        }
        if let Some((query, assumed)) = &submission.duplicate_check {
            let actual = earliest_duplicate(keys, query);
            let same = actual.as_ref().map(|found| &found.lead_id) == assumed.as_ref().map(|found| &found.lead_id);
            if !same {
                outcomes.push(CommitOutcome::DuplicateChanged(actual));
                continue;
            }
        }
        let lead = &submission.lead.record;
        for key in &submission.duplicate_keys {
            keys.entry((lead.flow_id.clone(), key.digest.clone()))
                .or_default()
                .push((submission.duplicate_key_owner().to_owned(), lead.created_at));
        }
        if let Some(record) = &submission.idempotency {
            answers.insert((record.source_id.clone(), record.key.clone()), record.answer.clone());
        }
        outcomes.push(CommitOutcome::Committed);
        accepted.push(*submission);
    }
    (outcomes, accepted)
}

/// Plans a batch's resends from the transfers' rows as the transaction sees them: an answer
/// per transfer of each request, and the records that queue the ones resent. A transfer asked
/// for twice in one batch is queued once.
pub fn plan_resends(
    resends: &[&ResendRequest],
    rows: &HashMap<String, ResendRow>,
) -> (Vec<Vec<(String, ResendOutcome)>>, Vec<DeliveryRecord>) {
    let mut answers_per_request = Vec::with_capacity(resends.len());
    let mut records = Vec::new();
    let mut queued_now = HashSet::new();
    for request in resends {
        let mut answers = Vec::with_capacity(request.transfer_ids.len());
        for transfer_id in &request.transfer_ids {
            if !queued_now.insert(transfer_id.as_str()) {
                answers.push((transfer_id.clone(), ResendOutcome::AlreadyQueued));
                continue;
            }
            match plan_resend(rows.get(transfer_id), &request.actor, request.job_id.as_deref(), request.now) {
                Ok(record) => {
                    records.push(record);
                    answers.push((transfer_id.clone(), ResendOutcome::Queued));
                }
                Err(outcome) => answers.push((transfer_id.clone(), outcome)),
            }
        }
        answers_per_request.push(answers);
    }
    (answers_per_request, records)
}

/// Hands out snapshot ids: the id of each accepted submission's first snapshot.
pub fn number_snapshots(head: &mut ChainHead, accepted: &[&Submission]) -> Vec<i64> {
    accepted
        .iter()
        .map(|submission| {
            let base = head.snapshot_id + 1;
            head.snapshot_id += submission.snapshots.len() as i64;
            base
        })
        .collect()
}

/// One event row to insert, from a submission or a delivery record.
pub struct EventRow<'a> {
    pub event: &'a NewEvent,
    pub data_json: &'a str,
    pub snapshot_id: i64,
    pub content: &'a Hash,
}

/// The events of a batch in log order: the accepted submissions' (their snapshots numbered
/// from `bases`), then the delivery records'.
pub fn event_rows<'a>(accepted: &[&'a Submission], bases: &[i64], records: &[&'a DeliveryRecord]) -> Vec<EventRow<'a>> {
    let mut rows = Vec::new();
    for (submission, base) in accepted.iter().zip(bases) {
        rows.extend(submission.events.iter().map(|encoded| EventRow {
            event: &encoded.event,
            data_json: &encoded.data_json,
            snapshot_id: base + encoded.snapshot as i64,
            content: &encoded.content,
        }));
    }
    for record in records {
        rows.extend(record.events.iter().map(|logged| EventRow {
            event: &logged.event,
            data_json: &logged.data_json,
            snapshot_id: logged.snapshot_id,
            content: &logged.content,
        }));
    }
    rows
}

/// Gives every event of the batch its sequence number, timestamp and hash, advancing the head.
///
/// Timestamps never decrease along the log: an event decided before one that was logged
/// first is stamped with that one's time (later by at most the wait for its commit). So the
/// log's order by time is its order of commits, and a reader that pages by time with a cursor
/// never finds an event appear behind its cursor.
pub fn link_events(head: &mut ChainHead, rows: &[EventRow<'_>]) -> Vec<Link> {
    let mut links = Vec::with_capacity(rows.len());
    for row in rows {
        let event = row.event;
        let seq = head.seq + 1;
        let timestamp = event.timestamp.max(head.timestamp);
        let header = ChainHeader {
            seq,
            id: event.id.as_str(),
            event_type: event.event_type.as_str(),
            timestamp,
            lead_id: event.lead_id.as_str(),
            flow_id: &event.flow_id,
            source_id: &event.source_id,
            destination_id: event.destination_id.as_deref(),
            transfer_id: event.transfer_id.as_ref().map(|id| id.as_str()),
            status: event.status.map(|status| status.as_str()),
            outcome: event.outcome.map(|outcome| outcome.as_str()),
            reason: event.reason.as_deref(),
            duration_ms: event.duration_ms,
            integration: event.integration.as_deref(),
            response_code: event.response_code,
            price: event.price,
            attempt: event.attempt,
        };
        let hash = link(&head.hash, &header, row.content);
        head.seq = seq;
        head.hash = hash;
        head.timestamp = timestamp;
        links.push(Link { seq, hash, timestamp });
    }
    links
}
