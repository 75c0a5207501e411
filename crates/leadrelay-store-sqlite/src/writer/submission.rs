//! The rows of a submission: its duplicate keys and idempotency answers read for a batch, and
//! its snapshots, lead, events, transfers, keys and answer written with multi-row statements.

use leadrelay_domain::time::now_millis;
use leadrelay_store::batch::{duplicate_lookups, AnswerIndex, EventRow, KeyIndex, Link};
use leadrelay_store::{StoreResult, Submission};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::{rows_per_statement, MAX_BOUND_VALUES};
use crate::{read, unavailable};

/// Reads the stored duplicate keys that this batch's duplicate queries could match.
pub(super) async fn load_duplicate_keys(
    connection: &mut SqliteConnection,
    batch: &[&Submission],
) -> StoreResult<KeyIndex> {
    let mut index = KeyIndex::new();
    for (flow_id, (digests, since)) in duplicate_lookups(batch) {
        for chunk in digests.chunks(MAX_BOUND_VALUES - 2) {
            for (digest, lead_id, created_at) in read::duplicate_keys(&mut *connection, flow_id, chunk, since).await? {
                index.entry((flow_id.to_owned(), digest)).or_default().push((lead_id, created_at));
            }
        }
    }
    Ok(index)
}

/// Reads the stored answers of this batch's idempotency keys.
pub(super) async fn load_answers(connection: &mut SqliteConnection, keys: &[(&str, &str)]) -> StoreResult<AnswerIndex> {
    let mut answers = AnswerIndex::new();
    for chunk in keys.chunks(MAX_BOUND_VALUES / 2) {
        answers.extend(read::idempotent_answers(&mut *connection, chunk).await?);
    }
    Ok(answers)
}

pub(super) async fn insert_snapshots(
    transaction: &mut SqliteConnection,
    accepted: &[&Submission],
    bases: &[i64],
) -> StoreResult<()> {
    let snapshots: Vec<_> = accepted
        .iter()
        .zip(bases)
        .flat_map(|(submission, base)| {
            let lead_id = submission.lead.record.id.as_str();
            submission
                .snapshots
                .iter()
                .enumerate()
                .map(move |(index, snapshot)| (base + index as i64, lead_id, snapshot))
        })
        .collect();
    for chunk in snapshots.chunks(rows_per_statement(4)) {
        let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new("INSERT INTO snapshots (id, lead_id, body, digest) ");
        builder.push_values(chunk, |mut row, (id, lead_id, snapshot)| {
            row.push_bind(*id).push_bind(*lead_id).push_bind(snapshot.json.as_str()).push_bind(&snapshot.digest[..]);
        });
        builder.build().persistent(false).execute(&mut *transaction).await.map_err(unavailable)?;
    }
    Ok(())
}

pub(super) async fn insert_leads(
    transaction: &mut SqliteConnection,
    accepted: &[&Submission],
    bases: &[i64],
) -> StoreResult<()> {
    let rows: Vec<_> = accepted.iter().zip(bases).collect();
    for chunk in rows.chunks(rows_per_statement(11)) {
        let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO leads (id, flow_id, source_id, created_at, updated_at, status, outcome, reason, duplicate_of, cost, snapshot_id) ",
        );
        builder.push_values(chunk, |mut row, (submission, base)| {
            let lead = &submission.lead.record;
            row.push_bind(lead.id.as_str())
                .push_bind(lead.flow_id.as_str())
                .push_bind(lead.source_id.as_str())
                .push_bind(lead.created_at)
                .push_bind(lead.updated_at)
                .push_bind(lead.status.as_str())
                .push_bind(lead.outcome.map(|outcome| outcome.as_str()))
                .push_bind(lead.reason.as_deref())
                .push_bind(lead.duplicate_of.as_ref().map(|id| id.as_str()))
                .push_bind(lead.cost)
                .push_bind(**base + submission.lead.snapshot as i64);
        });
        builder.build().persistent(false).execute(&mut *transaction).await.map_err(unavailable)?;
    }
    Ok(())
}

pub(super) async fn insert_events(
    transaction: &mut SqliteConnection,
    rows: &[EventRow<'_>],
    links: &[Link],
) -> StoreResult<()> {
    let events: Vec<_> = rows.iter().zip(links).collect();
    for chunk in events.chunks(rows_per_statement(21)) {
        let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO events (seq, id, type, ts, lead_id, flow_id, source_id, destination_id, transfer_id, status, outcome, reason, duration_ms, integration, response_code, price, attempt, data, snapshot_id, content_digest, hash) ",
        );
        builder.push_values(chunk, |mut row, (event_row, link)| {
            let event = event_row.event;
            row.push_bind(link.seq)
                .push_bind(event.id.as_str())
                .push_bind(event.event_type.as_str())
                .push_bind(link.timestamp)
                .push_bind(event.lead_id.as_str())
                .push_bind(event.flow_id.as_str())
                .push_bind(event.source_id.as_str())
                .push_bind(event.destination_id.as_deref())
                .push_bind(event.transfer_id.as_ref().map(|id| id.as_str()))
                .push_bind(event.status.map(|status| status.as_str()))
                .push_bind(event.outcome.map(|outcome| outcome.as_str()))
                .push_bind(event.reason.as_deref())
                .push_bind(event.duration_ms)
                .push_bind(event.integration.as_deref())
                .push_bind(event.response_code)
                .push_bind(event.price)
                .push_bind(event.attempt)
                .push_bind(event_row.data_json)
                .push_bind(event_row.snapshot_id)
                .push_bind(&event_row.content[..])
                .push_bind(&link.hash[..]);
        });
        builder.build().persistent(false).execute(&mut *transaction).await.map_err(unavailable)?;
    }
    Ok(())
}

pub(super) async fn insert_transfers(transaction: &mut SqliteConnection, accepted: &[&Submission]) -> StoreResult<()> {
    let transfers: Vec<_> = accepted
        .iter()
        .flat_map(|submission| {
            submission.transfers.iter().map(|transfer| (transfer, submission.realtime_lease.as_ref()))
        })
        .collect();
    for chunk in transfers.chunks(rows_per_statement(12)) {
        let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO transfers (id, lead_id, flow_id, source_id, destination_id, status, description, created_at, updated_at, state, due_at, lease_owner) ",
        );
        builder.push_values(chunk, |mut row, (transfer, lease)| {
            // Realtime transfers are held by the node that delivers them while the submitter
            // waits; background ones are due at once.
            let (state, due_at, owner) = match (transfer.queued, transfer.realtime, lease) {
                (false, _, _) => ("done", None, None),
                (true, true, Some(lease)) => ("pending", Some(lease.until), Some(lease.owner.as_str())),
                (true, _, _) => ("pending", Some(transfer.created_at), None),
            };
            row.push_bind(transfer.id.as_str())
                .push_bind(transfer.lead_id.as_str())
                .push_bind(transfer.flow_id.as_str())
                .push_bind(transfer.source_id.as_str())
                .push_bind(transfer.destination_id.as_deref())
                .push_bind(transfer.status.as_str())
                .push_bind(transfer.description.as_str())
                .push_bind(transfer.created_at)
                .push_bind(transfer.created_at)
                .push_bind(state)
                .push_bind(due_at)
                .push_bind(owner);
        });
        builder.build().persistent(false).execute(&mut *transaction).await.map_err(unavailable)?;
    }
    Ok(())
}

pub(super) async fn insert_duplicate_keys(
    transaction: &mut SqliteConnection,
    accepted: &[&Submission],
) -> StoreResult<()> {
    let keys: Vec<_> = accepted
        .iter()
        .flat_map(|submission| submission.duplicate_keys.iter().map(move |key| (&submission.lead.record, key)))
        .collect();
    for chunk in keys.chunks(rows_per_statement(4)) {
        let mut builder: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO duplicate_keys (flow_id, digest, lead_id, created_at) ");
        builder.push_values(chunk, |mut row, (lead, key)| {
            row.push_bind(lead.flow_id.as_str())
                .push_bind(key.digest.as_str())
                .push_bind(lead.id.as_str())
                .push_bind(lead.created_at);
        });
        builder.build().persistent(false).execute(&mut *transaction).await.map_err(unavailable)?;
    }
    Ok(())
}

pub(super) async fn insert_idempotency(
    transaction: &mut SqliteConnection,
    accepted: &[&Submission],
) -> StoreResult<()> {
    let records: Vec<_> = accepted.iter().filter_map(|submission| submission.idempotency.as_ref()).collect();
    let now = now_millis();
    for chunk in records.chunks(rows_per_statement(5)) {
        let mut builder: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO idempotency_keys (source_id, key, http_status, answer, created_at) ");
        builder.push_values(chunk, |mut row, record| {
            row.push_bind(record.source_id.as_str())
                .push_bind(record.key.as_str())
                .push_bind(i64::from(record.answer.http_status))
                .push_bind(record.answer.body_json.as_str())
                .push_bind(now);
        });
        builder.build().persistent(false).execute(&mut *transaction).await.map_err(unavailable)?;
    }
    Ok(())
}

pub(super) async fn insert_pending_completions(
    transaction: &mut SqliteConnection,
    accepted: &[&Submission],
) -> StoreResult<()> {
    let held: Vec<_> = accepted
        .iter()
        .filter_map(|submission| submission.pending_completion.as_ref().map(|held| (&submission.lead.record, held)))
        .collect();
    for chunk in held.chunks(rows_per_statement(4)) {
        let mut builder: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO pending_completions (lead_id, flow_id, source_id, body) ");
        builder.push_values(chunk, |mut row, (lead, held)| {
            row.push_bind(lead.id.as_str())
                .push_bind(lead.flow_id.as_str())
                .push_bind(lead.source_id.as_str())
                .push_bind(held.body.as_str());
        });
        builder.build().persistent(false).execute(&mut *transaction).await.map_err(unavailable)?;
    }
    Ok(())
}
