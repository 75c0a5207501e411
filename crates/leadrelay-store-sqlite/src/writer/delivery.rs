//! The rows of delivery: transfers' new states, attempt rows, cap counters, claims (leases)
//! and jobs.

use std::collections::HashMap;

use leadrelay_domain::caps::CapWindowKey;
use leadrelay_store::completion::DueCompletion;
use leadrelay_store::{DeliveryClaim, DeliveryRecord, JobClaim, JobRecord, StoreError, StoreResult, TransferState};
use leadrelay_store_sql::{completion_transfer_from_row, due_completion_from_row};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::{rows_per_statement, ClaimRow, MAX_BOUND_VALUES};
use crate::read::{job_from_row, JOB_COLUMNS};
use crate::unavailable;

/// Sets the states delivery steps reached; a step whose lease was taken over by another node
/// leaves the state to that node.
pub(super) async fn update_transfers(
    transaction: &mut SqliteConnection,
    records: &[&DeliveryRecord],
) -> StoreResult<()> {
    let updates: Vec<_> = records.iter().filter_map(|record| record.update.as_ref()).collect();
    for chunk in updates.chunks(rows_per_statement(9)) {
        let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(
            "WITH v (id, owner, status, description, state, due_at, attempts, updated_at, retry_base) AS (",
        );
        builder.push_values(chunk, |mut row, update| {
            let due_at = match update.state {
                TransferState::Pending { due_at } => Some(due_at),
                _ => None,
            };
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
            ") UPDATE transfers SET status = v.status, description = v.description, state = v.state, due_at = v.due_at, \
             lease_owner = NULL, attempts = v.attempts, updated_at = v.updated_at, \
             retry_base = COALESCE(v.retry_base, transfers.retry_base) \
             FROM v WHERE transfers.id = v.id AND (v.owner IS NULL OR transfers.lease_owner = v.owner)",
        );
        builder.build().persistent(false).execute(&mut *transaction).await.map_err(unavailable)?;
    }
    Ok(())
}

pub(super) async fn count_caps(transaction: &mut SqliteConnection, records: &[&DeliveryRecord]) -> StoreResult<()> {
    let mut counts: HashMap<&CapWindowKey, i64> = HashMap::new();
    for key in records.iter().flat_map(|record| record.cap_counts.iter()) {
        *counts.entry(key).or_default() += 1;
    }
    let counts: Vec<_> = counts.into_iter().collect();
    for chunk in counts.chunks(rows_per_statement(4)) {
        let mut builder: QueryBuilder<Sqlite> =
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

pub(super) async fn insert_attempts(
    transaction: &mut SqliteConnection,
    records: &[&DeliveryRecord],
) -> StoreResult<()> {
    let attempts: Vec<_> = records.iter().filter_map(|record| record.attempt.as_ref()).collect();
    for chunk in attempts.chunks(rows_per_statement(7)) {
        let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT OR IGNORE INTO attempts (transfer_id, attempt, started_at, duration_ms, outcome, response_code, event_id) ",
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
        builder.build().persistent(false).execute(&mut *transaction).await.map_err(unavailable)?;
    }
    Ok(())
}

/// Leases the due transfers of one destination to the claiming node: their `due_at` moves to
/// the lease's end, when they are due again unless the node recorded an outcome.
pub(super) async fn claim_transfers(
    transaction: &mut SqliteConnection,
    claim: &DeliveryClaim,
) -> StoreResult<Vec<ClaimRow>> {
    let rows = sqlx::query(
        "UPDATE transfers SET due_at = ?1, lease_owner = ?2 WHERE seq IN (\
            SELECT seq FROM transfers WHERE state = 'pending' AND destination_id = ?3 AND due_at <= ?4 \
            ORDER BY due_at, seq LIMIT ?5) \
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
                transfer_id: row.try_get(0).map_err(unavailable)?,
                lead_id: row.try_get(1).map_err(unavailable)?,
                flow_id: row.try_get(2).map_err(unavailable)?,
                source_id: row.try_get(3).map_err(unavailable)?,
                destination_id: row.try_get(4).map_err(unavailable)?,
                attempts: row.try_get(5).map_err(unavailable)?,
                retry_base: row.try_get(6).map_err(unavailable)?,
                created_at: row.try_get(7).map_err(unavailable)?,
            })
        })
        .collect()
}

/// Saves a job, unless another node holds it.
pub(super) async fn save_job(connection: &mut SqliteConnection, job: &JobRecord) -> StoreResult<()> {
    let saved = sqlx::query(
        "INSERT INTO jobs (id, kind, status, params, cursor, matched, queued, skipped, error, created_at, updated_at, \
         owner, lease_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (id) DO UPDATE SET status = excluded.status, cursor = excluded.cursor, matched = excluded.matched, \
         queued = excluded.queued, skipped = excluded.skipped, error = excluded.error, updated_at = excluded.updated_at, \
         lease_until = excluded.lease_until WHERE jobs.owner IS excluded.owner",
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

/// Leases the running jobs no node holds to the claiming node.
pub(super) async fn claim_jobs(connection: &mut SqliteConnection, claim: &JobClaim) -> StoreResult<Vec<JobRecord>> {
    let rows = sqlx::query(&format!(
        "UPDATE jobs SET owner = ?, lease_until = ? WHERE status = 'running' \
         AND (lease_until IS NULL OR lease_until <= ?) RETURNING {JOB_COLUMNS}"
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

/// The held completions of `leads` that are due: none of the lead's transfers is pending.
/// Their rows are removed; the caller logs the events in the same transaction.
pub(super) async fn take_due_completions(
    transaction: &mut SqliteConnection,
    leads: &[String],
) -> StoreResult<Vec<DueCompletion>> {
    let mut due = Vec::new();
    for chunk in leads.chunks(MAX_BOUND_VALUES) {
        let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT p.lead_id, p.flow_id, p.source_id, p.body, l.snapshot_id, s.digest FROM pending_completions p \
             JOIN leads l ON l.id = p.lead_id JOIN snapshots s ON s.id = l.snapshot_id \
             WHERE NOT EXISTS (SELECT 1 FROM transfers t WHERE t.lead_id = p.lead_id AND t.state = 'pending') \
             AND p.lead_id IN (",
        );
        let mut separated = builder.separated(", ");
        for lead in chunk {
            separated.push_bind(lead.as_str());
        }
        builder.push(")");
        for row in builder.build().fetch_all(&mut *transaction).await.map_err(unavailable)? {
            due.push(due_completion_from_row(&row)?);
        }
    }
    for chunk in due.chunks_mut(MAX_BOUND_VALUES) {
        let mut builder: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT lead_id, id, destination_id, status FROM transfers WHERE lead_id IN (");
        let mut separated = builder.separated(", ");
        for completion in chunk.iter() {
            separated.push_bind(completion.lead_id.clone());
        }
        builder.push(") ORDER BY seq");
        for row in builder.build().fetch_all(&mut *transaction).await.map_err(unavailable)? {
            let (lead_id, transfer) = completion_transfer_from_row(&row)?;
            if let Some(completion) = chunk.iter_mut().find(|completion| completion.lead_id == lead_id) {
                completion.transfers.push(transfer);
            }
        }
        let mut deletion: QueryBuilder<Sqlite> =
            QueryBuilder::new("DELETE FROM pending_completions WHERE lead_id IN (");
        let mut separated = deletion.separated(", ");
        for completion in chunk.iter() {
            separated.push_bind(completion.lead_id.clone());
        }
        deletion.push(")");
        deletion.build().persistent(false).execute(&mut *transaction).await.map_err(unavailable)?;
    }
    Ok(due)
}
