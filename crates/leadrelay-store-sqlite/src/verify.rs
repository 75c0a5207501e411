//! `verify`: walks the log in order and checks sequence, content digests and links.

use leadrelay_domain::chain::{content_digest, link, snapshot_digest, ChainHeader, Hash, GENESIS};
use leadrelay_store::{BrokenLink, ChainReport, StoreError, StoreResult};
use sqlx::{Connection, Row, SqlitePool};

use crate::unavailable;

const CHUNK: i64 = 5000;

fn broken(seq: i64, event_id: &str, problem: impl Into<String>) -> StoreResult<ChainReport> {
    Ok(ChainReport {
        events_checked: 0,
        first_broken: Some(BrokenLink { seq, event_id: event_id.to_owned(), problem: problem.into() }),
    })
}

pub(crate) async fn verify_chain(pool: &SqlitePool) -> StoreResult<ChainReport> {
    let corrupt = |error: sqlx::Error| StoreError::Corrupt(error.to_string());
    // One read transaction: the head and every event are seen as of one moment, so commits
    // made while `verify` runs are neither half-seen nor mistaken for removals.
    let mut connection = pool.acquire().await.map_err(unavailable)?;
    let mut transaction = connection.begin().await.map_err(unavailable)?;
    let head = sqlx::query("SELECT seq, hash FROM chain_head WHERE id = 1")
        .fetch_optional(&mut *transaction)
        .await
        .map_err(unavailable)?;
    let (head_seq, head_hash): (i64, Vec<u8>) = match head {
        Some(row) => (row.try_get(0).map_err(corrupt)?, row.try_get(1).map_err(corrupt)?),
        None => (0, GENESIS.to_vec()),
    };
    let mut previous: Hash = GENESIS;
    let mut last_seq = 0i64;
    let mut checked = 0u64;
    loop {
        let rows = sqlx::query(
            "SELECT e.seq, e.id, e.type, e.ts, e.lead_id, e.flow_id, e.source_id, e.destination_id, e.transfer_id,
                    e.status, e.outcome, e.reason, e.duration_ms, e.integration, e.response_code, e.price, e.attempt,
                    e.data, s.body, e.content_digest, e.hash, e.erased, s.digest, s.erased
             FROM events e LEFT JOIN snapshots s ON s.id = e.snapshot_id
             WHERE e.seq > ? ORDER BY e.seq LIMIT ?",
        )
        .bind(last_seq)
        .bind(CHUNK)
        .fetch_all(&mut *transaction)
        .await
        .map_err(unavailable)?;
        let count = rows.len();
        for row in rows {
            let seq: i64 = row.try_get(0).map_err(corrupt)?;
            let id: String = row.try_get(1).map_err(corrupt)?;
            if seq != last_seq + 1 {
                let mut report = broken(seq, &id, format!("events {} to {} are missing", last_seq + 1, seq - 1))?;
                report.events_checked = checked;
                return Ok(report);
            }
            let data: String = row.try_get(17).map_err(corrupt)?;
            let snapshot_body: Option<String> = row.try_get(18).map_err(corrupt)?;
            let stored_content: Vec<u8> = row.try_get(19).map_err(corrupt)?;
            let stored_hash: Vec<u8> = row.try_get(20).map_err(corrupt)?;
            let event_erased: bool = row.try_get(21).map_err(corrupt)?;
            let stored_snapshot: Option<Vec<u8>> = row.try_get(22).map_err(corrupt)?;
            let snapshot_erased: Option<bool> = row.try_get(23).map_err(corrupt)?;
            if event_erased || snapshot_erased.unwrap_or(false) {
                // Only an erasure recorded in the chain itself may rewrite content.
                let lead_id: String = row.try_get(4).map_err(corrupt)?;
                let recorded: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM events WHERE lead_id = ? AND type = 'lead.erased')",
                )
                .bind(&lead_id)
                .fetch_one(&mut *transaction)
                .await
                .map_err(unavailable)?;
                if !recorded {
                    let mut report =
                        broken(seq, &id, "its content is marked erased, but no lead.erased event records it")?;
                    report.events_checked = checked;
                    return Ok(report);
                }
            }
            let (Some(snapshot_body), Some(stored_snapshot)) = (snapshot_body, stored_snapshot) else {
                let mut report = broken(seq, &id, "its lead snapshot is missing")?;
                report.events_checked = checked;
                return Ok(report);
            };
            // Erasure rewrites content on purpose and marks it; the stored digest stands for it.
            let snapshot: Hash = if snapshot_erased.unwrap_or(false) {
                stored_snapshot.as_slice().try_into().unwrap_or([0u8; 32])
            } else {
                let digest = snapshot_digest(&snapshot_body);
                if digest[..] != stored_snapshot[..] {
                    let mut report = broken(seq, &id, "its lead snapshot was changed")?;
                    report.events_checked = checked;
                    return Ok(report);
                }
                digest
            };
            let content: Hash = if event_erased {
                stored_content.as_slice().try_into().unwrap_or([0u8; 32])
            } else {
                content_digest(&data, &snapshot)
            };
            if content[..] != stored_content[..] {
                let mut report = broken(seq, &id, "its data was changed")?;
                report.events_checked = checked;
                return Ok(report);
            }
            let event_type: String = row.try_get(2).map_err(corrupt)?;
            let lead_id: String = row.try_get(4).map_err(corrupt)?;
            let flow_id: String = row.try_get(5).map_err(corrupt)?;
            let source_id: String = row.try_get(6).map_err(corrupt)?;
            let destination_id: Option<String> = row.try_get(7).map_err(corrupt)?;
            let transfer_id: Option<String> = row.try_get(8).map_err(corrupt)?;
            let status: Option<String> = row.try_get(9).map_err(corrupt)?;
            let outcome: Option<String> = row.try_get(10).map_err(corrupt)?;
            let reason: Option<String> = row.try_get(11).map_err(corrupt)?;
            let integration: Option<String> = row.try_get(13).map_err(corrupt)?;
            let header = ChainHeader {
                seq,
                id: &id,
                event_type: &event_type,
                timestamp: row.try_get(3).map_err(corrupt)?,
                lead_id: &lead_id,
                flow_id: &flow_id,
                source_id: &source_id,
                destination_id: destination_id.as_deref(),
                transfer_id: transfer_id.as_deref(),
                status: status.as_deref(),
                outcome: outcome.as_deref(),
                reason: reason.as_deref(),
                duration_ms: row.try_get(12).map_err(corrupt)?,
                integration: integration.as_deref(),
                response_code: row.try_get(14).map_err(corrupt)?,
                price: row.try_get(15).map_err(corrupt)?,
                attempt: row.try_get(16).map_err(corrupt)?,
            };
            let hash = link(&previous, &header, &content);
            if hash[..] != stored_hash[..] {
                let mut report =
                    broken(seq, &id, "its fields do not match its hash, or an event before it was changed or removed")?;
                report.events_checked = checked;
                return Ok(report);
            }
            previous = hash;
            last_seq = seq;
            checked += 1;
        }
        if (count as i64) < CHUNK {
            break;
        }
    }
    let _ = transaction.rollback().await;
    if head_seq != last_seq || head_hash[..] != previous[..] {
        return Ok(ChainReport {
            events_checked: checked,
            first_broken: Some(BrokenLink {
                seq: last_seq + 1,
                event_id: String::new(),
                problem: format!(
                    "the log ends at event {last_seq} but its head says {head_seq}: events were removed from the end"
                ),
            }),
        });
    }
    Ok(ChainReport { events_checked: checked, first_broken: None })
}
