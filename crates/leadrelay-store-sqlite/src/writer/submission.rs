//! The rows of a submission: its duplicate keys and idempotency answers read for a batch, and
//! its snapshots, lead, events, transfers, keys and answer written row by row with cached
//! statements.

use std::collections::HashSet;

use leadrelay_domain::time::now_millis;
use leadrelay_store::batch::{duplicate_lookups, AnswerIndex, EventRow, KeyIndex, Link};
use leadrelay_store::{StoreResult, StoredAnswer, Submission};
use rusqlite::{params, Connection};

use super::{execute_each, failed};

/// Reads the stored duplicate keys that this batch's duplicate queries could match.
pub(super) fn load_duplicate_keys(connection: &Connection, batch: &[&Submission]) -> StoreResult<KeyIndex> {
    let mut index = KeyIndex::new();
    let mut statement = connection
        .prepare_cached(
            "SELECT lead_id, created_at FROM duplicate_keys WHERE flow_id = ?1 AND digest = ?2 AND created_at >= ?3",
        )
        .map_err(failed)?;
    for (flow_id, (digests, since)) in duplicate_lookups(batch) {
        let mut seen = HashSet::with_capacity(digests.len());
        for digest in digests.into_iter().filter(|digest| seen.insert(*digest)) {
            let mut rows = statement.query(params![flow_id, digest, since]).map_err(failed)?;
            while let Some(row) = rows.next().map_err(failed)? {
                let found = (row.get(0).map_err(failed)?, row.get(1).map_err(failed)?);
                index.entry((flow_id.to_owned(), digest.to_owned())).or_default().push(found);
            }
        }
    }
    Ok(index)
}

/// Reads the stored answers of this batch's idempotency keys.
pub(super) fn load_answers(connection: &Connection, keys: &[(&str, &str)]) -> StoreResult<AnswerIndex> {
    let mut answers = AnswerIndex::new();
    if keys.is_empty() {
        return Ok(answers);
    }
    let mut statement = connection
        .prepare_cached("SELECT http_status, answer FROM idempotency_keys WHERE source_id = ?1 AND key = ?2")
        .map_err(failed)?;
    for (source_id, key) in keys {
        let mut rows = statement.query(params![source_id, key]).map_err(failed)?;
        if let Some(row) = rows.next().map_err(failed)? {
            let answer =
                StoredAnswer { http_status: row.get(0).map_err(failed)?, body_json: row.get(1).map_err(failed)? };
            answers.insert(((*source_id).to_owned(), (*key).to_owned()), answer);
        }
    }
    Ok(answers)
}

pub(super) fn insert_snapshots(connection: &Connection, accepted: &[&Submission], bases: &[i64]) -> StoreResult<()> {
    let snapshots = accepted.iter().zip(bases).flat_map(|(submission, base)| {
        let lead_id = submission.lead.record.id.as_str();
        submission.snapshots.iter().enumerate().map(move |(index, snapshot)| (base + index as i64, lead_id, snapshot))
    });
    execute_each(
        connection,
        "INSERT INTO snapshots (id, lead_id, body, digest) VALUES (?1, ?2, ?3, ?4)",
        snapshots,
        |statement, (id, lead_id, snapshot)| {
            statement.execute(params![id, lead_id, snapshot.json, &snapshot.digest[..]])
        },
    )
}

pub(super) fn insert_leads(connection: &Connection, accepted: &[&Submission], bases: &[i64]) -> StoreResult<()> {
    execute_each(
        connection,
        "INSERT INTO leads (id, flow_id, source_id, created_at, updated_at, status, outcome, reason, duplicate_of, \
         cost, snapshot_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        accepted.iter().zip(bases),
        |statement, (submission, base)| {
            let lead = &submission.lead.record;
            statement.execute(params![
                lead.id.as_str(),
                lead.flow_id,
                lead.source_id,
                lead.created_at,
                lead.updated_at,
                lead.status,
                lead.outcome.map(|outcome| outcome.as_str()),
                lead.reason,
                lead.duplicate_of.as_ref().map(|id| id.as_str()),
                lead.cost,
                base + submission.lead.snapshot as i64,
            ])
        },
    )
}

pub(super) fn insert_events(connection: &Connection, rows: &[EventRow<'_>], links: &[Link]) -> StoreResult<()> {
    execute_each(
        connection,
        "INSERT INTO events (seq, id, type, ts, lead_id, flow_id, source_id, destination_id, transfer_id, status, \
         outcome, reason, duration_ms, integration, response_code, price, attempt, data, snapshot_id, \
         content_digest, hash) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
        rows.iter().zip(links),
        |statement, (row, link)| {
            let event = row.event;
            statement.execute(params![
                link.seq,
                event.id.as_str(),
                event.event_type.as_str(),
                link.timestamp,
                event.lead_id.as_str(),
                event.flow_id,
                event.source_id,
                event.destination_id,
                event.transfer_id.as_ref().map(|id| id.as_str()),
                event.status.map(|status| status.as_str()),
                event.outcome.map(|outcome| outcome.as_str()),
                event.reason,
                event.duration_ms,
                event.integration,
                event.response_code,
                event.price,
                event.attempt,
                row.data_json,
                row.snapshot_id,
                &row.content[..],
                &link.hash[..],
            ])
        },
    )
}

pub(super) fn insert_transfers(connection: &Connection, accepted: &[&Submission]) -> StoreResult<()> {
    let transfers = accepted.iter().flat_map(|submission| {
        submission.transfers.iter().map(|transfer| (transfer, submission.realtime_lease.as_ref()))
    });
    execute_each(
        connection,
        "INSERT INTO transfers (id, lead_id, flow_id, source_id, destination_id, status, description, created_at, \
         updated_at, state, due_at, lease_owner) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?10, ?11)",
        transfers,
        |statement, (transfer, lease)| {
            // Realtime transfers are held by the node that delivers them while the submitter
            // waits; background ones are due at once.
            let (state, due_at, owner) = match (transfer.queued, transfer.realtime, lease) {
                (false, _, _) => ("done", None, None),
                (true, true, Some(lease)) => ("pending", Some(lease.until), Some(lease.owner.as_str())),
                (true, _, _) => ("pending", Some(transfer.created_at), None),
            };
            statement.execute(params![
                transfer.id.as_str(),
                transfer.lead_id.as_str(),
                transfer.flow_id,
                transfer.source_id,
                transfer.destination_id,
                transfer.status.as_str(),
                transfer.description,
                transfer.created_at,
                state,
                due_at,
                owner,
            ])
        },
    )
}

pub(super) fn insert_duplicate_keys(connection: &Connection, accepted: &[&Submission]) -> StoreResult<()> {
    let keys =
        accepted.iter().flat_map(|submission| submission.duplicate_keys.iter().map(move |key| (submission, key)));
    execute_each(
        connection,
        "INSERT INTO duplicate_keys (flow_id, digest, lead_id, created_at) VALUES (?1, ?2, ?3, ?4)",
        keys,
        |statement, (submission, key)| {
            let lead = &submission.lead.record;
            statement.execute(params![lead.flow_id, key.digest, submission.duplicate_key_owner(), lead.created_at])
        },
    )
}

pub(super) fn insert_idempotency(connection: &Connection, accepted: &[&Submission]) -> StoreResult<()> {
    let now = now_millis();
    execute_each(
        connection,
        "INSERT INTO idempotency_keys (source_id, key, http_status, answer, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        accepted.iter().filter_map(|submission| submission.idempotency.as_ref()),
        |statement, record| {
            statement.execute(params![
                record.source_id,
                record.key,
                record.answer.http_status,
                record.answer.body_json,
                now
            ])
        },
    )
}

pub(super) fn insert_pending_completions(connection: &Connection, accepted: &[&Submission]) -> StoreResult<()> {
    let held = accepted
        .iter()
        .filter_map(|submission| submission.pending_completion.as_ref().map(|held| (&submission.lead.record, held)));
    execute_each(
        connection,
        "INSERT INTO pending_completions (lead_id, flow_id, source_id, body) VALUES (?1, ?2, ?3, ?4)",
        held,
        |statement, (lead, held)| statement.execute(params![lead.id.as_str(), lead.flow_id, lead.source_id, held.body]),
    )
}
