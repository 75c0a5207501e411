//! The rows a batch writes, with multi-row statements: snapshots, leads, events, transfers,
//! duplicate keys and answers of submissions; transfer states, attempts and cap counts of
//! delivery records; claims and jobs.

use std::collections::HashMap;

use leadrelay_domain::caps::CapWindowKey;
use leadrelay_domain::time::now_millis;
use leadrelay_store::batch::{EventRow, Link};
use leadrelay_store::completion::DueCompletion;
use leadrelay_store::{
    ClaimRow, DeliveryClaim, DeliveryRecord, JobClaim, JobRecord, StoreError, StoreResult, Submission, TransferState,
};
use leadrelay_store_sql::{completion_transfer_from_row, due_completion_from_row};
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};

use crate::read::{job_from_row, JOB_COLUMNS};
use crate::{corrupt, unavailable};

/// PostgreSQL allows 65535 bound values in one statement; stay below.
const MAX_BOUND_VALUES: usize = 60_000;

/// Rows per statement for a table with `columns` bound values per row.
fn rows_per_statement(columns: usize) -> usize {
    (MAX_BOUND_VALUES / columns).max(1)
}

pub(crate) async fn insert_snapshots(
    transaction: &mut PgConnection,
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
        let mut builder: QueryBuilder<Postgres> =
            QueryBuilder::new("INSERT INTO snapshots (id, lead_id, body, digest) ");
        builder.push_values(chunk, |mut row, (id, lead_id, snapshot)| {
            row.push_bind(*id).push_bind(*lead_id).push_bind(snapshot.json.as_str()).push_bind(&snapshot.digest[..]);
        });
        builder.build().persistent(false).execute(&mut *transaction).await.map_err(unavailable)?;
    }
    Ok(())
}

pub(crate) async fn insert_leads(
    transaction: &mut PgConnection,
    accepted: &[&Submission],
    bases: &[i64],
) -> StoreResult<()> {
    let rows: Vec<_> = accepted.iter().zip(bases).collect();
    for chunk in rows.chunks(rows_per_statement(11)) {
        let mut builder: QueryBuilder<Postgres> = QueryBuilder::new(
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

pub(crate) async fn insert_events(
    transaction: &mut PgConnection,
    rows: &[EventRow<'_>],
    links: &[Link],
) -> StoreResult<()> {
    let events: Vec<_> = rows.iter().zip(links).collect();
    for chunk in events.chunks(rows_per_statement(21)) {
        let mut builder: QueryBuilder<Postgres> = QueryBuilder::new(
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

pub(crate) async fn insert_transfers(transaction: &mut PgConnection, accepted: &[&Submission]) -> StoreResult<()> {
    let transfers: Vec<_> = accepted
        .iter()
        .flat_map(|submission| {
            submission.transfers.iter().map(|transfer| (transfer, submission.realtime_lease.as_ref()))
        })
        .collect();
    for chunk in transfers.chunks(rows_per_statement(12)) {
        let mut builder: QueryBuilder<Postgres> = QueryBuilder::new(
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

pub(crate) async fn insert_duplicate_keys(transaction: &mut PgConnection, accepted: &[&Submission]) -> StoreResult<()> {
    let keys: Vec<_> = accepted
        .iter()
        .flat_map(|submission| submission.duplicate_keys.iter().map(move |key| (submission, key)))
        .collect();
    for chunk in keys.chunks(rows_per_statement(4)) {
        let mut builder: QueryBuilder<Postgres> =
            QueryBuilder::new("INSERT INTO duplicate_keys (flow_id, digest, lead_id, created_at) ");
        builder.push_values(chunk, |mut row, (submission, key)| {
            let lead = &submission.lead.record;
            row.push_bind(lead.flow_id.as_str())
                .push_bind(key.digest.as_str())
                .push_bind(submission.duplicate_key_owner())
                .push_bind(lead.created_at);
        });
        builder.build().persistent(false).execute(&mut *transaction).await.map_err(unavailable)?;
    }
    Ok(())
}

pub(crate) async fn insert_idempotency(transaction: &mut PgConnection, accepted: &[&Submission]) -> StoreResult<()> {
    let records: Vec<_> = accepted.iter().filter_map(|submission| submission.idempotency.as_ref()).collect();
    let now = now_millis();
    for chunk in records.chunks(rows_per_statement(5)) {
        let mut builder: QueryBuilder<Postgres> =
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

/// Sets the states delivery steps reached; a step whose lease was taken over by another node
/// leaves the state to that node.
pub(crate) async fn update_transfers(transaction: &mut PgConnection, records: &[&DeliveryRecord]) -> StoreResult<()> {
    let updates: Vec<_> = records.iter().filter_map(|record| record.update.as_ref()).collect();
    for chunk in updates.chunks(rows_per_statement(9)) {
        let mut builder: QueryBuilder<Postgres> = QueryBuilder::new(
            "UPDATE transfers SET status = v.status, description = v.description, state = v.state, due_at = v.due_at, \
             lease_owner = NULL, attempts = v.attempts, updated_at = v.updated_at, \
             retry_base = COALESCE(v.retry_base, transfers.retry_base) FROM (",
        );
        builder.push_values(chunk, |mut row, update| {
            let due_at = match update.state {
                TransferState::Pending { due_at } => Some(due_at),
                _ => None,
            };
            // Typed once, in the first row, so that PostgreSQL knows the columns' types.
            row.push_bind(update.transfer_id.as_str())
                .push_bind(update.owner.as_deref())
                .push_bind(update.status.as_str())
                .push_bind(update.description.as_str())
                .push_bind(update.state.as_str())
                .push_bind(due_at)
                .push_bind(i64::from(update.attempts))
                .push_bind(update.updated_at)
                .push_bind(update.retry_base.map(i64::from));
        });
        builder.push(
            ") AS v (id, owner, status, description, state, due_at, attempts, updated_at, retry_base) \
             WHERE transfers.id = v.id AND (v.owner IS NULL OR transfers.lease_owner = v.owner)",
        );
        builder.build().persistent(false).execute(&mut *transaction).await.map_err(unavailable)?;
    }
    Ok(())
}

pub(crate) async fn count_caps(transaction: &mut PgConnection, records: &[&DeliveryRecord]) -> StoreResult<()> {
    let mut counts: HashMap<&CapWindowKey, i64> = HashMap::new();
    for key in records.iter().flat_map(|record| record.cap_counts.iter()) {
        *counts.entry(key).or_default() += 1;
    }
    let counts: Vec<_> = counts.into_iter().collect();
    for chunk in counts.chunks(rows_per_statement(4)) {
        let mut builder: QueryBuilder<Postgres> =
            QueryBuilder::new("INSERT INTO cap_counters (destination_id, cap_key, window_start, count) ");
        builder.push_values(chunk, |mut row, (key, count)| {
            row.push_bind(key.destination_id.as_str())
                .push_bind(key.cap_key.as_str())
                .push_bind(key.window_start)
                .push_bind(*count);
        });
        builder.push(
            " ON CONFLICT (destination_id, cap_key, window_start) DO UPDATE SET count = cap_counters.count + excluded.count",
        );
        builder.build().persistent(false).execute(&mut *transaction).await.map_err(unavailable)?;
    }
    Ok(())
}

pub(crate) async fn insert_attempts(transaction: &mut PgConnection, records: &[&DeliveryRecord]) -> StoreResult<()> {
    let attempts: Vec<_> = records.iter().filter_map(|record| record.attempt.as_ref()).collect();
    for chunk in attempts.chunks(rows_per_statement(7)) {
        let mut builder: QueryBuilder<Postgres> = QueryBuilder::new(
            "INSERT INTO attempts (transfer_id, attempt, started_at, duration_ms, outcome, response_code, event_id) ",
        );
        builder.push_values(chunk, |mut row, attempt| {
            row.push_bind(attempt.transfer_id.as_str())
                .push_bind(i64::from(attempt.attempt))
                .push_bind(attempt.started_at)
                .push_bind(attempt.duration_ms)
                .push_bind(attempt.outcome)
                .push_bind(attempt.response_code)
                .push_bind(attempt.event_id.as_str());
        });
        builder.push(" ON CONFLICT DO NOTHING");
        builder.build().persistent(false).execute(&mut *transaction).await.map_err(unavailable)?;
    }
    Ok(())
}

/// Leases the due transfers of one destination to the claiming node: their `due_at` moves to
/// the lease's end, when they are due again unless the node recorded an outcome. Rows another
/// node is claiming at this moment are skipped, not waited for.
pub(crate) async fn claim_transfers(
    transaction: &mut PgConnection,
    claim: &DeliveryClaim,
) -> StoreResult<Vec<ClaimRow>> {
    let rows = sqlx::query(
        "UPDATE transfers SET due_at = $1, lease_owner = $2 WHERE seq IN (\
            SELECT seq FROM transfers WHERE state = 'pending' AND destination_id = $3 AND due_at <= $4 \
            ORDER BY due_at, seq LIMIT $5 FOR UPDATE SKIP LOCKED) \
         RETURNING id, lead_id, flow_id, source_id, destination_id, attempts, retry_base, created_at",
    )
    .bind(claim.now + claim.lease_ms)
    .bind(&claim.owner)
    .bind(&claim.destination_id)
    .bind(claim.now)
    .bind(i64::try_from(claim.limit).unwrap_or(i64::MAX))
    .fetch_all(&mut *transaction)
    .await
    .map_err(unavailable)?;
    rows.iter()
        .map(|row| {
            Ok(ClaimRow {
                transfer_id: row.try_get(0).map_err(corrupt)?,
                lead_id: row.try_get(1).map_err(corrupt)?,
                flow_id: row.try_get(2).map_err(corrupt)?,
                source_id: row.try_get(3).map_err(corrupt)?,
                destination_id: row.try_get(4).map_err(corrupt)?,
                attempts: row.try_get(5).map_err(corrupt)?,
                retry_base: row.try_get(6).map_err(corrupt)?,
                created_at: row.try_get(7).map_err(corrupt)?,
            })
        })
        .collect()
}

/// Saves a job, unless another node holds it.
pub(crate) async fn save_job(connection: &mut PgConnection, job: &JobRecord) -> StoreResult<()> {
    let saved = sqlx::query(
        "INSERT INTO jobs (id, kind, status, params, cursor, matched, queued, skipped, error, created_at, updated_at, \
         owner, lease_until) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         ON CONFLICT (id) DO UPDATE SET status = excluded.status, cursor = excluded.cursor, matched = excluded.matched, \
         queued = excluded.queued, skipped = excluded.skipped, error = excluded.error, updated_at = excluded.updated_at, \
         lease_until = excluded.lease_until WHERE jobs.owner IS NOT DISTINCT FROM excluded.owner",
    )
    .bind(&job.id)
    .bind(&job.kind)
    .bind(&job.status)
    .bind(job.params.to_string())
    .bind(job.cursor.as_deref())
    .bind(i64::try_from(job.matched).unwrap_or(i64::MAX))
    .bind(i64::try_from(job.queued).unwrap_or(i64::MAX))
    .bind(i64::try_from(job.skipped).unwrap_or(i64::MAX))
    .bind(job.error.as_deref())
    .bind(job.created_at)
    .bind(job.updated_at)
    .bind(job.owner.as_deref())
    .bind(job.lease_until)
    .execute(&mut *connection)
    .await
    .map_err(unavailable)?;
    if saved.rows_affected() == 0 {
        return Err(StoreError::Conflict(format!("job {} is held by another node", job.id)));
    }
    Ok(())
}

/// Leases the running jobs no node holds to the claiming node; jobs another node is claiming
/// at this moment are skipped.
pub(crate) async fn claim_jobs(connection: &mut PgConnection, claim: &JobClaim) -> StoreResult<Vec<JobRecord>> {
    let rows = sqlx::query(&format!(
        "UPDATE jobs SET owner = $1, lease_until = $2 WHERE id IN (SELECT id FROM jobs WHERE status = 'running' \
         AND (lease_until IS NULL OR lease_until <= $3) FOR UPDATE SKIP LOCKED) RETURNING {JOB_COLUMNS}"
    ))
    .bind(&claim.owner)
    .bind(claim.now + claim.lease_ms)
    .bind(claim.now)
    .fetch_all(&mut *connection)
    .await
    .map_err(unavailable)?;
    let mut jobs = rows.iter().map(job_from_row).collect::<StoreResult<Vec<_>>>()?;
    jobs.sort_by_key(|job| job.created_at);
    Ok(jobs)
}

pub(crate) async fn insert_pending_completions(
    transaction: &mut PgConnection,
    accepted: &[&Submission],
) -> StoreResult<()> {
    let held: Vec<_> = accepted
        .iter()
        .filter_map(|submission| submission.pending_completion.as_ref().map(|held| (&submission.lead.record, held)))
        .collect();
    for chunk in held.chunks(rows_per_statement(4)) {
        let mut builder: QueryBuilder<Postgres> =
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

/// The held completions of `leads` that are due: none of the lead's transfers is pending.
/// Their rows are removed; the caller logs the events in the same transaction.
pub(crate) async fn take_due_completions(
    transaction: &mut PgConnection,
    leads: &[String],
) -> StoreResult<Vec<DueCompletion>> {
    if leads.is_empty() {
        return Ok(Vec::new());
    }
    // The lead's pending transfers are counted through its index: with `state = 'pending'` in
    // the WHERE clause, stale statistics let the planner pick the index of every pending
    // transfer (`transfers_due`) and walk it for each lead (13 ms a batch at 22,000 pending).
    let rows = sqlx::query(
        "DELETE FROM pending_completions p USING leads l, snapshots s \
         WHERE p.lead_id = ANY($1) AND l.id = p.lead_id AND s.id = l.snapshot_id \
         AND (SELECT COUNT(*) FILTER (WHERE t.state = 'pending') FROM transfers t WHERE t.lead_id = p.lead_id) = 0 \
         RETURNING p.lead_id, p.flow_id, p.source_id, p.body, l.snapshot_id, s.digest",
    )
    .bind(leads)
    .fetch_all(&mut *transaction)
    .await
    .map_err(unavailable)?;
    let mut due = rows.iter().map(due_completion_from_row).collect::<StoreResult<Vec<_>>>()?;
    if due.is_empty() {
        return Ok(due);
    }
    let ids: Vec<String> = due.iter().map(|completion| completion.lead_id.clone()).collect();
    let transfers =
        sqlx::query("SELECT lead_id, id, destination_id, status FROM transfers WHERE lead_id = ANY($1) ORDER BY seq")
            .bind(&ids)
            .fetch_all(&mut *transaction)
            .await
            .map_err(unavailable)?;
    for row in &transfers {
        let (lead_id, transfer) = completion_transfer_from_row(row)?;
        if let Some(completion) = due.iter_mut().find(|completion| completion.lead_id == lead_id) {
            completion.transfers.push(transfer);
        }
    }
    Ok(due)
}
