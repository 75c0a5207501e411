//! The rows of delivery: transfers' new states, attempt rows, cap counters, claims (leases),
//! resends and jobs.

use std::collections::HashMap;

use leadrelay_domain::caps::CapWindowKey;
use leadrelay_store::completion::DueCompletion;
use leadrelay_store::{
    ClaimRow, ClaimedTransfer, DeliveryClaim, DeliveryRecord, JobClaim, JobRecord, ResendRow, StoreError, StoreResult,
    TransferState,
};
use leadrelay_store_sql::corrupt;
use rusqlite::types::Type;
use rusqlite::{params, Connection, Row};
use serde_json::Value;

use super::{execute_each, failed};
use crate::read::JOB_COLUMNS;

/// Sets the states delivery steps reached; a step whose lease was taken over by another node
/// leaves the state to that node.
pub(super) fn update_transfers(connection: &Connection, records: &[&DeliveryRecord]) -> StoreResult<()> {
    execute_each(
        connection,
        "UPDATE transfers SET status = ?3, description = ?4, state = ?5, due_at = ?6, lease_owner = NULL, \
         attempts = ?7, updated_at = ?8, retry_base = COALESCE(?9, retry_base) \
         WHERE id = ?1 AND (?2 IS NULL OR lease_owner = ?2)",
        records.iter().filter_map(|record| record.update.as_ref()),
        |statement, update| {
            let due_at = match update.state {
                TransferState::Pending { due_at } => Some(due_at),
                _ => None,
            };
            statement.execute(params![
                update.transfer_id,
                update.owner,
                update.status.as_str(),
                update.description,
                update.state.as_str(),
                due_at,
                update.attempts,
                update.updated_at,
                update.retry_base,
            ])
        },
    )
}

pub(super) fn count_caps(connection: &Connection, records: &[&DeliveryRecord]) -> StoreResult<()> {
    let mut counts: HashMap<&CapWindowKey, i64> = HashMap::new();
    for key in records.iter().flat_map(|record| record.cap_counts.iter()) {
        *counts.entry(key).or_default() += 1;
    }
    execute_each(
        connection,
        "INSERT INTO cap_counters (destination_id, cap_key, window_start, count) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (destination_id, cap_key, window_start) DO UPDATE SET count = cap_counters.count + excluded.count",
        counts,
        |statement, (key, count)| statement.execute(params![key.destination_id, key.cap_key, key.window_start, count]),
    )
}

pub(super) fn insert_attempts(connection: &Connection, records: &[&DeliveryRecord]) -> StoreResult<()> {
    execute_each(
        connection,
        "INSERT OR IGNORE INTO attempts (transfer_id, attempt, started_at, duration_ms, outcome, response_code, \
         event_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        records.iter().filter_map(|record| record.attempt.as_ref()),
        |statement, attempt| {
            statement.execute(params![
                attempt.transfer_id,
                attempt.attempt,
                attempt.started_at,
                attempt.duration_ms,
                attempt.outcome,
                attempt.response_code,
                attempt.event_id,
            ])
        },
    )
}

/// Leases the due transfers of one destination to the claiming node: their `due_at` moves to
/// the lease's end, when they are due again unless the node recorded an outcome.
pub(super) fn claim_transfers(connection: &Connection, claim: &DeliveryClaim) -> StoreResult<Vec<ClaimRow>> {
    let mut statement = connection
        .prepare_cached(
            "UPDATE transfers SET due_at = ?1, lease_owner = ?2 WHERE seq IN (\
                SELECT seq FROM transfers WHERE state = 'pending' AND destination_id = ?3 AND due_at <= ?4 \
                ORDER BY due_at, seq LIMIT ?5) \
             RETURNING id, lead_id, flow_id, source_id, destination_id, attempts, retry_base, created_at",
        )
        .map_err(failed)?;
    let limit = i64::try_from(claim.limit).unwrap_or(i64::MAX);
    let rows = statement
        .query_map(params![claim.now + claim.lease_ms, claim.owner, claim.destination_id, claim.now, limit], |row| {
            Ok(ClaimRow {
                transfer_id: row.get(0)?,
                lead_id: row.get(1)?,
                flow_id: row.get(2)?,
                source_id: row.get(3)?,
                destination_id: row.get(4)?,
                attempts: row.get(5)?,
                retry_base: row.get(6)?,
                created_at: row.get(7)?,
            })
        })
        .map_err(failed)?;
    rows.collect::<Result<_, _>>().map_err(failed)
}

/// Completes claimed rows with their leads' current snapshots, on the writer's connection
/// (inside a claim: its page cache stays warm, where a reader's is reset by every commit).
pub(super) fn snapshots_of(connection: &Connection, rows: Vec<ClaimRow>) -> StoreResult<Vec<ClaimedTransfer>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut statement = connection
        .prepare_cached(
            "SELECT s.id, s.body, s.digest FROM leads l JOIN snapshots s ON s.id = l.snapshot_id WHERE l.id = ?1",
        )
        .map_err(failed)?;
    rows.into_iter()
        .map(|row| {
            let mut found = statement.query([&row.lead_id]).map_err(failed)?;
            let Some(snapshot) = found.next().map_err(failed)? else {
                return Err(corrupt(format!(
                    "transfer {} names lead {} without a snapshot",
                    row.transfer_id, row.lead_id
                )));
            };
            let (id, body, digest) =
                (snapshot.get(0).map_err(failed)?, snapshot.get(1).map_err(failed)?, snapshot.get(2).map_err(failed)?);
            row.with_snapshot(id, body, digest)
        })
        .collect()
}

/// What resends need of transfers, with their leads' current snapshots.
pub(super) fn resend_rows(connection: &Connection, transfer_ids: &[&str]) -> StoreResult<HashMap<String, ResendRow>> {
    let mut rows = HashMap::with_capacity(transfer_ids.len());
    if transfer_ids.is_empty() {
        return Ok(rows);
    }
    let mut statement = connection
        .prepare_cached(
            "SELECT t.id, t.lead_id, t.flow_id, t.source_id, t.destination_id, t.status, t.state, t.lease_owner, \
             t.attempts, s.id, s.digest FROM transfers t JOIN leads l ON l.id = t.lead_id \
             JOIN snapshots s ON s.id = l.snapshot_id WHERE t.id = ?1",
        )
        .map_err(failed)?;
    for transfer_id in transfer_ids {
        let mut found = statement.query([transfer_id]).map_err(failed)?;
        if let Some(row) = found.next().map_err(failed)? {
            let row = resend_row(row).map_err(failed)?;
            rows.insert(row.transfer_id.clone(), row);
        }
    }
    Ok(rows)
}

fn resend_row(row: &Row<'_>) -> rusqlite::Result<ResendRow> {
    let attempts: i64 = row.get(8)?;
    let digest: Vec<u8> = row.get(10)?;
    let snapshot_digest = digest.try_into().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(10, Type::Blob, "snapshot digest is not 32 bytes".into())
    })?;
    Ok(ResendRow {
        transfer_id: row.get(0)?,
        lead_id: row.get(1)?,
        flow_id: row.get(2)?,
        source_id: row.get(3)?,
        destination_id: row.get(4)?,
        status: row.get(5)?,
        state: row.get(6)?,
        lease_owner: row.get(7)?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        snapshot_id: row.get(9)?,
        snapshot_digest,
    })
}

/// Saves a job, unless another node holds it.
pub(super) fn save_job(connection: &Connection, job: &JobRecord) -> StoreResult<()> {
    let count = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    let saved = connection
        .execute(
            "INSERT INTO jobs (id, kind, status, params, cursor, matched, queued, skipped, error, created_at, \
             updated_at, owner, lease_until) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, cursor = excluded.cursor, \
             matched = excluded.matched, queued = excluded.queued, skipped = excluded.skipped, error = excluded.error, \
             updated_at = excluded.updated_at, lease_until = excluded.lease_until WHERE jobs.owner IS excluded.owner",
            params![
                job.id,
                job.kind,
                job.status,
                job.params.to_string(),
                job.cursor,
                count(job.matched),
                count(job.queued),
                count(job.skipped),
                job.error,
                job.created_at,
                job.updated_at,
                job.owner,
                job.lease_until,
            ],
        )
        .map_err(failed)?;
    if saved == 0 {
        return Err(StoreError::Conflict(format!("job {} is held by another node", job.id)));
    }
    Ok(())
}

/// Leases the running jobs no node holds to the claiming node.
pub(super) fn claim_jobs(connection: &Connection, claim: &JobClaim) -> StoreResult<Vec<JobRecord>> {
    let mut statement = connection
        .prepare_cached(&format!(
            "UPDATE jobs SET owner = ?1, lease_until = ?2 WHERE status = 'running' \
             AND (lease_until IS NULL OR lease_until <= ?3) RETURNING {JOB_COLUMNS}"
        ))
        .map_err(failed)?;
    let count = |value: i64| u64::try_from(value).unwrap_or(0);
    let rows = statement
        .query_map(params![claim.owner, claim.now + claim.lease_ms, claim.now], |row| {
            let params: String = row.get(3)?;
            let job = JobRecord {
                id: row.get(0)?,
                kind: row.get(1)?,
                status: row.get(2)?,
                params: Value::Null,
                cursor: row.get(4)?,
                matched: count(row.get(5)?),
                queued: count(row.get(6)?),
                skipped: count(row.get(7)?),
                error: row.get(8)?,
                created_at: row.get(9)?,
                updated_at: row.get(10)?,
                owner: row.get(11)?,
                lease_until: row.get(12)?,
            };
            Ok((job, params))
        })
        .map_err(failed)?;
    let mut jobs = Vec::new();
    for row in rows {
        let (job, params) = row.map_err(failed)?;
        jobs.push(JobRecord { params: serde_json::from_str(&params).map_err(corrupt)?, ..job });
    }
    jobs.sort_by_key(|job| job.created_at);
    Ok(jobs)
}

/// The held completions of `leads` that are due: none of the lead's transfers is pending.
/// Their rows are removed; the caller logs the events in the same transaction.
pub(super) fn take_due_completions(connection: &Connection, leads: &[String]) -> StoreResult<Vec<DueCompletion>> {
    if leads.is_empty() {
        return Ok(Vec::new());
    }
    let mut held = connection
        .prepare_cached(
            "SELECT p.flow_id, p.source_id, p.body, l.snapshot_id, s.digest FROM pending_completions p \
             JOIN leads l ON l.id = p.lead_id JOIN snapshots s ON s.id = l.snapshot_id \
             WHERE p.lead_id = ?1 AND NOT EXISTS \
             (SELECT 1 FROM transfers t WHERE t.lead_id = p.lead_id AND t.state = 'pending')",
        )
        .map_err(failed)?;
    let mut transfers = connection
        .prepare_cached("SELECT id, destination_id, status FROM transfers WHERE lead_id = ?1 ORDER BY seq")
        .map_err(failed)?;
    let mut remove = connection.prepare_cached("DELETE FROM pending_completions WHERE lead_id = ?1").map_err(failed)?;
    let mut due = Vec::new();
    for lead_id in leads {
        let mut found = held.query([lead_id]).map_err(failed)?;
        let Some(row) = found.next().map_err(failed)? else { continue };
        let mut completion = DueCompletion {
            lead_id: lead_id.clone(),
            flow_id: row.get(0).map_err(failed)?,
            source_id: row.get(1).map_err(failed)?,
            body: row.get(2).map_err(failed)?,
            snapshot_id: row.get(3).map_err(failed)?,
            snapshot_digest: row.get(4).map_err(failed)?,
            transfers: Vec::new(),
        };
        // Done with the held row before it is deleted below.
        drop(found);
        completion.transfers = transfers
            .query_map([lead_id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .map_err(failed)?
            .collect::<Result<_, _>>()
            .map_err(failed)?;
        remove.execute([lead_id]).map_err(failed)?;
        due.push(completion);
    }
    Ok(due)
}
