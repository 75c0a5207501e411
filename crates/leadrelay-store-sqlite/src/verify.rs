//! `verify`: reads the log in order and hands each row to the shared [`ChainWalk`].

use leadrelay_domain::chain::GENESIS;
use leadrelay_store::verify::ChainWalk;
use leadrelay_store::{ChainReport, StoreError, StoreResult};
use sqlx::{Connection, Row, SqlitePool};

use crate::unavailable;

const CHUNK: i64 = 5000;

fn corrupt(error: sqlx::Error) -> StoreError {
    StoreError::Corrupt(error.to_string())
}

pub(crate) async fn verify_chain(pool: &SqlitePool) -> StoreResult<ChainReport> {
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
    let mut walk = ChainWalk::default();
    loop {
        let rows = sqlx::query(
            "SELECT e.seq, e.id, e.type, e.ts, e.lead_id, e.flow_id, e.source_id, e.destination_id, e.transfer_id,
                    e.status, e.outcome, e.reason, e.duration_ms, e.integration, e.response_code, e.price, e.attempt,
                    e.data, s.body, e.content_digest, e.hash, e.erased, s.digest, s.erased
             FROM events e LEFT JOIN snapshots s ON s.id = e.snapshot_id
             WHERE e.seq > ? ORDER BY e.seq LIMIT ?",
        )
        .bind(walk.last_seq())
        .bind(CHUNK)
        .fetch_all(&mut *transaction)
        .await
        .map_err(unavailable)?;
        let count = rows.len();
        for row in rows {
            let row = leadrelay_store_sql::chain_row(&row)?;
            let recorded = if row.erased() {
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events WHERE lead_id = ? AND type = 'lead.erased')")
                    .bind(&row.lead_id)
                    .fetch_one(&mut *transaction)
                    .await
                    .map_err(unavailable)?
            } else {
                false
            };
            if let Err(report) = walk.check(&row, recorded) {
                return Ok(report);
            }
        }
        if (count as i64) < CHUNK {
            break;
        }
    }
    let _ = transaction.rollback().await;
    Ok(walk.finish(head_seq, &head_hash))
}
