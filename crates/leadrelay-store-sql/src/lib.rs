//! What the SQL engines share: reading stored rows back into the storage trait's records.
//! Both engines store the same columns under the same names, so one decoder per record serves
//! both, whatever the row type.

#![forbid(unsafe_code)]

use leadrelay_domain::event::RegisterStatus;
use leadrelay_store::completion::{CompletedTransfer, DueCompletion};
use leadrelay_store::verify::ChainRow;
use leadrelay_store::{
    JobRecord, OverviewRow, Role, StoreError, StoreResult, StoredEvent, StoredLead, TokenRecord, TransferRow,
    LATENCY_BOUNDS_MS,
};
use sqlx::{ColumnIndex, Database, Decode, Row, Type};

/// A value the engine can decode from any row of its own.
pub trait Decodes<DB: Database>: for<'r> Decode<'r, DB> + Type<DB> {}

impl<DB: Database, T: for<'r> Decode<'r, DB> + Type<DB>> Decodes<DB> for T {}

/// Declares decoders generic over the row type of any engine whose columns hold text,
/// integers, reals, blobs and booleans, found by position or name.
macro_rules! decoders {
    ($($(#[$meta:meta])* pub fn $name:ident($row:ident) -> $answer:ty $body:block)*) => {$(
        $(#[$meta])*
        pub fn $name<R: Row>($row: &R) -> $answer
        where
            usize: ColumnIndex<R>,
            for<'a> &'a str: ColumnIndex<R>,
            String: Decodes<R::Database>,
            i64: Decodes<R::Database>,
            f64: Decodes<R::Database>,
            bool: Decodes<R::Database>,
            Vec<u8>: Decodes<R::Database>,
        $body
    )*};
}

/// A condition on a token row that holds unless it is the only admin token, so that deleting
/// or demoting it cannot lock every administrator out.
pub const KEEPS_AN_ADMIN: &str = "(role <> 'admin' OR (SELECT COUNT(*) FROM tokens WHERE role = 'admin') > 1)";

/// Why a token was neither deleted nor demoted although it exists.
pub fn last_admin(token_id: &str) -> StoreError {
    StoreError::Conflict(format!(
        "token {token_id} is the only admin token: create another admin token before revoking or demoting it"
    ))
}

/// A stored value that cannot be read back.
pub fn corrupt(error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(error.to_string())
}

decoders! {
/// A held completion that is due, from the columns `lead_id, flow_id, source_id, body,
/// snapshot_id, digest` (the lead's current snapshot); its transfers are read apart.
pub fn due_completion_from_row(row) -> StoreResult<DueCompletion> {
    Ok(DueCompletion {
        lead_id: row.try_get(0).map_err(corrupt)?,
        flow_id: row.try_get(1).map_err(corrupt)?,
        source_id: row.try_get(2).map_err(corrupt)?,
        body: row.try_get(3).map_err(corrupt)?,
        snapshot_id: row.try_get(4).map_err(corrupt)?,
        snapshot_digest: row.try_get(5).map_err(corrupt)?,
        transfers: Vec::new(),
    })
}

/// A transfer of a completed lead, from the columns `lead_id, id, destination_id, status`:
/// the lead, and what its `flow.completed` lists.
pub fn completion_transfer_from_row(row) -> StoreResult<(String, CompletedTransfer)> {
    Ok((
        row.try_get(0).map_err(corrupt)?,
        (row.try_get(1).map_err(corrupt)?, row.try_get(2).map_err(corrupt)?, row.try_get(3).map_err(corrupt)?),
    ))
}

/// An event from the columns `seq, id, type, ts, lead_id, flow_id, source_id, destination_id,
/// transfer_id, status, outcome, reason, duration_ms, integration, response_code, price,
/// attempt, data, lead` (the snapshot's body), in that order.
pub fn event_from_row(row) -> StoreResult<StoredEvent> {
    Ok(StoredEvent {
        seq: row.try_get(0).map_err(corrupt)?,
        id: row.try_get(1).map_err(corrupt)?,
        event_type: row.try_get(2).map_err(corrupt)?,
        timestamp: row.try_get(3).map_err(corrupt)?,
        lead_id: row.try_get(4).map_err(corrupt)?,
        flow_id: row.try_get(5).map_err(corrupt)?,
        source_id: row.try_get(6).map_err(corrupt)?,
        destination_id: row.try_get(7).map_err(corrupt)?,
        transfer_id: row.try_get(8).map_err(corrupt)?,
        status: row.try_get(9).map_err(corrupt)?,
        outcome: row.try_get(10).map_err(corrupt)?,
        reason: row.try_get(11).map_err(corrupt)?,
        duration_ms: row.try_get(12).map_err(corrupt)?,
        integration: row.try_get(13).map_err(corrupt)?,
        response_code: row.try_get(14).map_err(corrupt)?,
        price: row.try_get(15).map_err(corrupt)?,
        attempt: row.try_get(16).map_err(corrupt)?,
        data: row.try_get(17).map_err(corrupt)?,
        lead: row.try_get(18).map_err(corrupt)?,
    })
}

/// A lead from the columns `seq, id, created_at, snapshot`.
pub fn lead_from_row(row) -> StoreResult<StoredLead> {
    Ok(StoredLead {
        seq: row.try_get(0).map_err(corrupt)?,
        id: row.try_get(1).map_err(corrupt)?,
        created_at: row.try_get(2).map_err(corrupt)?,
        snapshot: row.try_get(3).map_err(corrupt)?,
    })
}

/// A register row from the columns `seq, id, lead_id, flow_id, source_id, destination_id,
/// status, description, created_at, updated_at, attempts`.
pub fn transfer_from_row(row) -> StoreResult<TransferRow> {
    let status: String = row.try_get(6).map_err(corrupt)?;
    Ok(TransferRow {
        seq: row.try_get(0).map_err(corrupt)?,
        transfer_id: row.try_get(1).map_err(corrupt)?,
        lead_id: row.try_get(2).map_err(corrupt)?,
        flow_id: row.try_get(3).map_err(corrupt)?,
        source_id: row.try_get(4).map_err(corrupt)?,
        destination_id: row.try_get(5).map_err(corrupt)?,
        status: RegisterStatus::parse(&status).ok_or_else(|| corrupt(format!("unknown status {status:?}")))?,
        description: row.try_get(7).map_err(corrupt)?,
        created_at: row.try_get(8).map_err(corrupt)?,
        updated_at: row.try_get(9).map_err(corrupt)?,
        attempts: row.try_get(10).map_err(corrupt)?,
    })
}

/// A token from its columns, by name.
pub fn token_from_row(row) -> StoreResult<TokenRecord> {
    let role: String = row.try_get("role").map_err(corrupt)?;
    let hash: Vec<u8> = row.try_get("hash").map_err(corrupt)?;
    Ok(TokenRecord {
        id: row.try_get("id").map_err(corrupt)?,
        name: row.try_get("name").map_err(corrupt)?,
        role: Role::parse(&role).ok_or_else(|| corrupt(format!("unknown role {role:?}")))?,
        hash: hash.try_into().map_err(|_| corrupt("token hash is not 32 bytes"))?,
        created_at: row.try_get("created_at").map_err(corrupt)?,
    })
}

/// A job from its columns, by name.
pub fn job_from_row(row) -> StoreResult<JobRecord> {
    let params: String = row.try_get("params").map_err(corrupt)?;
    let count = |name: &str| -> StoreResult<u64> {
        let value: i64 = row.try_get(name).map_err(corrupt)?;
        Ok(u64::try_from(value).unwrap_or(0))
    };
    Ok(JobRecord {
        id: row.try_get("id").map_err(corrupt)?,
        kind: row.try_get("kind").map_err(corrupt)?,
        status: row.try_get("status").map_err(corrupt)?,
        params: serde_json::from_str(&params).map_err(corrupt)?,
        cursor: row.try_get("cursor").map_err(corrupt)?,
        matched: count("matched")?,
        queued: count("queued")?,
        skipped: count("skipped")?,
        error: row.try_get("error").map_err(corrupt)?,
        created_at: row.try_get("created_at").map_err(corrupt)?,
        updated_at: row.try_get("updated_at").map_err(corrupt)?,
        owner: row.try_get("owner").map_err(corrupt)?,
        lease_until: row.try_get("lease_until").map_err(corrupt)?,
    })
}

/// An event as `verify` reads it: the event's columns as for [`event_from_row`] without the
/// snapshot, then `body, content_digest, hash, erased, digest, erased` (the last three of the
/// snapshot, NULL when it is missing).
pub fn chain_row(row) -> StoreResult<ChainRow> {
    let body: Option<String> = row.try_get(18).map_err(corrupt)?;
    let digest: Option<Vec<u8>> = row.try_get(22).map_err(corrupt)?;
    let snapshot_erased: Option<bool> = row.try_get(23).map_err(corrupt)?;
    Ok(ChainRow {
        seq: row.try_get(0).map_err(corrupt)?,
        id: row.try_get(1).map_err(corrupt)?,
        event_type: row.try_get(2).map_err(corrupt)?,
        timestamp: row.try_get(3).map_err(corrupt)?,
        lead_id: row.try_get(4).map_err(corrupt)?,
        flow_id: row.try_get(5).map_err(corrupt)?,
        source_id: row.try_get(6).map_err(corrupt)?,
        destination_id: row.try_get(7).map_err(corrupt)?,
        transfer_id: row.try_get(8).map_err(corrupt)?,
        status: row.try_get(9).map_err(corrupt)?,
        outcome: row.try_get(10).map_err(corrupt)?,
        reason: row.try_get(11).map_err(corrupt)?,
        duration_ms: row.try_get(12).map_err(corrupt)?,
        integration: row.try_get(13).map_err(corrupt)?,
        response_code: row.try_get(14).map_err(corrupt)?,
        price: row.try_get(15).map_err(corrupt)?,
        attempt: row.try_get(16).map_err(corrupt)?,
        data: row.try_get(17).map_err(corrupt)?,
        content_digest: row.try_get(19).map_err(corrupt)?,
        hash: row.try_get(20).map_err(corrupt)?,
        erased: row.try_get(21).map_err(corrupt)?,
        snapshot: match (body, digest) {
            (Some(body), Some(digest)) => Some((body, digest, snapshot_erased.unwrap_or(false))),
            _ => None,
        },
    })
}
}

/// The overview's one query over `transfers`, for both engines: `start` and `end` are the
/// engine's placeholders for the window's bounds. Latency buckets are counted by comparing
/// with every bound, so the query needs no engine-specific function.
pub fn overview_sql(start: &str, end: &str) -> String {
    let mut bucket = String::from("CASE WHEN status = 'success' AND destination_id IS NOT NULL THEN ");
    for bound in LATENCY_BOUNDS_MS {
        bucket.push_str(&format!("(CASE WHEN updated_at - created_at >= {bound} THEN 1 ELSE 0 END) + "));
    }
    bucket.push_str("0 ELSE -1 END");
    format!(
        "SELECT created_at / 86400000 AS day, status, source_id, destination_id, CAST({bucket} AS BIGINT) AS bucket, \
         COUNT(*) AS n FROM transfers WHERE created_at >= {start} AND created_at < {end} GROUP BY 1, 2, 3, 4, 5"
    )
}

decoders! {
/// One group of the overview, from the columns of [`overview_sql`].
pub fn overview_from_row(row) -> StoreResult<OverviewRow> {
    let status: String = row.try_get(1).map_err(corrupt)?;
    let bucket: i64 = row.try_get(4).map_err(corrupt)?;
    let count: i64 = row.try_get(5).map_err(corrupt)?;
    Ok(OverviewRow {
        day: row.try_get(0).map_err(corrupt)?,
        status: RegisterStatus::parse(&status).ok_or_else(|| corrupt(format!("unknown status {status:?}")))?,
        source_id: row.try_get(2).map_err(corrupt)?,
        destination_id: row.try_get(3).map_err(corrupt)?,
        latency_bucket: usize::try_from(bucket).ok(),
        count: u64::try_from(count).map_err(corrupt)?,
    })
}
}
