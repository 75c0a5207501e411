//! Reads: configuration, duplicate and idempotency look-ups, and keyset pages of the log,
//! the leads and the register, in PostgreSQL's SQL.

use leadrelay_domain::config::{Config, ConfigKind, ConfigObject, DuplicateMatch};

use leadrelay_domain::ids::LeadId;
use leadrelay_domain::pipeline::{DuplicateFound, DuplicateQuery};
use leadrelay_domain::time::Millis;
use leadrelay_store::{
    ClaimRow, ClaimedTransfer, Cursor, EventQuery, JobRecord, LeadQuery, OverviewQuery, OverviewRow, Page,
    RegisterQuery, ResendRow, SortOrder, StoreResult, StoredAnswer, StoredEvent, StoredLead, TokenRecord, TransferRow,
    MAX_PAGE,
};
pub(crate) use leadrelay_store_sql::{event_from_row, job_from_row};
use leadrelay_store_sql::{lead_from_row, overview_from_row, overview_sql, token_from_row, transfer_from_row};
use sqlx::{PgConnection, PgExecutor, PgPool, Postgres, QueryBuilder, Row};

use crate::{corrupt, unavailable};

pub(crate) async fn load_config(executor: impl PgExecutor<'_>) -> StoreResult<Config> {
    let rows = sqlx::query("SELECT kind, id, body FROM config_objects ORDER BY position")
        .fetch_all(executor)
        .await
        .map_err(unavailable)?;
    let mut objects = Vec::with_capacity(rows.len());
    for row in rows {
        let kind: String = row.try_get("kind").map_err(corrupt)?;
        let id: String = row.try_get("id").map_err(corrupt)?;
        let body: String = row.try_get("body").map_err(corrupt)?;
        let kind = ConfigKind::parse(&kind).ok_or_else(|| corrupt(format!("unknown config kind {kind:?}")))?;
        let value: serde_json::Value = serde_json::from_str(&body).map_err(corrupt)?;
        let object =
            ConfigObject::parse(kind, value).map_err(|error| corrupt(format!("stored {kind} {id:?}: {error}")))?;
        objects.push(object);
    }
    Ok(Config::from_objects(objects))
}

pub(crate) async fn find_duplicate(
    executor: impl PgExecutor<'_>,
    query: &DuplicateQuery,
) -> StoreResult<Option<DuplicateFound>> {
    if query.keys.is_empty() {
        return Ok(None);
    }
    let mut builder: QueryBuilder<Postgres> =
        QueryBuilder::new("SELECT lead_id, MIN(created_at) AS first FROM duplicate_keys WHERE flow_id = ");
    builder.push_bind(query.flow_id.as_str()).push(" AND created_at >= ").push_bind(query.since);
    builder.push(" AND digest IN (");
    let mut separated = builder.separated(", ");
    for key in &query.keys {
        separated.push_bind(key.digest.as_str());
    }
    builder.push(") GROUP BY lead_id");
    if query.match_mode == DuplicateMatch::All {
        builder.push(" HAVING COUNT(DISTINCT digest) = ").push_bind(query.keys.len() as i64);
    }
    builder.push(" ORDER BY first, lead_id LIMIT 1");
    let row = builder.build().fetch_optional(executor).await.map_err(unavailable)?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(DuplicateFound {
        lead_id: LeadId::from_stored(row.try_get("lead_id").map_err(corrupt)?),
        created_at: row.try_get("first").map_err(corrupt)?,
    }))
}

/// Stored duplicate keys of one flow among `digests`, created at or after `since`.
pub(crate) async fn duplicate_keys(
    executor: impl PgExecutor<'_>,
    flow_id: &str,
    digests: &[&str],
    since: Millis,
) -> StoreResult<Vec<(String, String, Millis)>> {
    if digests.is_empty() {
        return Ok(Vec::new());
    }
    let mut builder: QueryBuilder<Postgres> =
        QueryBuilder::new("SELECT digest, lead_id, created_at FROM duplicate_keys WHERE flow_id = ");
    builder.push_bind(flow_id).push(" AND created_at >= ").push_bind(since).push(" AND digest IN (");
    let mut separated = builder.separated(", ");
    for digest in digests {
        separated.push_bind(*digest);
    }
    builder.push(")");
    let rows = builder.build().persistent(false).fetch_all(executor).await.map_err(unavailable)?;
    rows.iter()
        .map(|row| {
            Ok((row.try_get(0).map_err(corrupt)?, row.try_get(1).map_err(corrupt)?, row.try_get(2).map_err(corrupt)?))
        })
        .collect()
}

/// The stored answers of several idempotency keys at once.
pub(crate) async fn idempotent_answers(
    executor: impl PgExecutor<'_>,
    keys: &[(&str, &str)],
) -> StoreResult<Vec<((String, String), StoredAnswer)>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut builder: QueryBuilder<Postgres> = QueryBuilder::new(
        "SELECT source_id, key, http_status, answer FROM idempotency_keys WHERE (source_id, key) IN (VALUES ",
    );
    let mut separated = builder.separated(", ");
    for (source_id, key) in keys {
        separated
            .push("(")
            .push_bind_unseparated(*source_id)
            .push_unseparated(", ")
            .push_bind_unseparated(*key)
            .push_unseparated(")");
    }
    builder.push(")");
    let rows = builder.build().persistent(false).fetch_all(executor).await.map_err(unavailable)?;
    rows.iter()
        .map(|row| {
            let status: i64 = row.try_get(2).map_err(corrupt)?;
            Ok((
                (row.try_get(0).map_err(corrupt)?, row.try_get(1).map_err(corrupt)?),
                StoredAnswer {
                    http_status: u16::try_from(status).map_err(corrupt)?,
                    body_json: row.try_get(3).map_err(corrupt)?,
                },
            ))
        })
        .collect()
}

pub(crate) async fn idempotent_answer(
    executor: impl PgExecutor<'_>,
    source_id: &str,
    key: &str,
) -> StoreResult<Option<StoredAnswer>> {
    let row = sqlx::query("SELECT http_status, answer FROM idempotency_keys WHERE source_id = $1 AND key = $2")
        .bind(source_id)
        .bind(key)
        .fetch_optional(executor)
        .await
        .map_err(unavailable)?;
    let Some(row) = row else { return Ok(None) };
    let status: i64 = row.try_get("http_status").map_err(corrupt)?;
    Ok(Some(StoredAnswer {
        http_status: u16::try_from(status).map_err(corrupt)?,
        body_json: row.try_get("answer").map_err(corrupt)?,
    }))
}

/// Every column of an event, its snapshot's body last (a lookup by primary key per row, so
/// that the query plan stays an index scan of `events`).
const EVENT_COLUMNS: &str = "seq, id, type, ts, lead_id, flow_id, source_id, destination_id, transfer_id, status, outcome, reason, duration_ms, integration, response_code, price, attempt, data, (SELECT body FROM snapshots WHERE snapshots.id = events.snapshot_id) AS lead";

/// Appends `AND column = value` for each filter that is set.
fn push_equals<'a>(builder: &mut QueryBuilder<'a, Postgres>, column: &str, value: Option<&'a str>) {
    if let Some(value) = value {
        builder.push(format_args!(" AND {column} = ")).push_bind(value);
    }
}

/// Appends the indexed filters of an events query (all but the time range and `rules`).
fn push_event_filters<'a>(builder: &mut QueryBuilder<'a, Postgres>, query: &'a EventQuery) {
    push_equals(builder, "lead_id", query.lead_id.as_deref());
    push_equals(builder, "type", query.event_type.map(|t| t.as_str()));
    push_equals(builder, "status", query.status.map(|s| s.as_str()));
    push_equals(builder, "source_id", query.source_id.as_deref());
    push_equals(builder, "destination_id", query.destination_id.as_deref());
    push_equals(builder, "flow_id", query.flow_id.as_deref());
}

/// Appends the time range and the keyset condition on `(time_column, seq)` and the order.
fn push_keyset(
    builder: &mut QueryBuilder<'_, Postgres>,
    time_column: &str,
    start: Option<Millis>,
    end: Option<Millis>,
    after: Option<&Cursor>,
    sort: SortOrder,
    limit: usize,
) {
    if let Some(start) = start {
        builder.push(format_args!(" AND {time_column} >= ")).push_bind(start);
    }
    if let Some(end) = end {
        builder.push(format_args!(" AND {time_column} <= ")).push_bind(end);
    }
    if let Some(cursor) = after {
        // Written so that the index range on the time column does the work.
        let (bound, strict) = match sort {
            SortOrder::Asc => (">=", ">"),
            SortOrder::Desc => ("<=", "<"),
        };
        builder.push(format_args!(" AND {time_column} {bound} ")).push_bind(cursor.time);
        builder.push(format_args!(" AND ({time_column} {strict} ")).push_bind(cursor.time);
        builder.push(format_args!(" OR seq {strict} ")).push_bind(cursor.seq).push(")");
    }
    let direction = match sort {
        SortOrder::Asc => "ASC",
        SortOrder::Desc => "DESC",
    };
    builder.push(format_args!(" ORDER BY {time_column} {direction}, seq {direction} LIMIT "));
    builder.push_bind(limit.clamp(1, MAX_PAGE + 1) as i64);
}

pub(crate) async fn scan_events(
    pool: &PgPool,
    query: &EventQuery,
    after: Option<&Cursor>,
    limit: usize,
) -> StoreResult<Vec<StoredEvent>> {
    let mut builder: QueryBuilder<Postgres> =
        QueryBuilder::new(format!("SELECT {EVENT_COLUMNS} FROM events WHERE 1 = 1"));
    push_event_filters(&mut builder, query);
    push_keyset(&mut builder, "ts", query.start, query.end, after, query.sort, limit);
    let rows = builder.build().fetch_all(pool).await.map_err(unavailable)?;
    rows.iter().map(event_from_row).collect()
}

pub(crate) async fn event(pool: &PgPool, event_id: &str) -> StoreResult<Option<StoredEvent>> {
    let row = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"))
        .bind(event_id)
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
    row.as_ref().map(event_from_row).transpose()
}

const LEAD_COLUMNS: &str =
    "seq, id, created_at, (SELECT body FROM snapshots WHERE snapshots.id = leads.snapshot_id) AS snapshot";

pub(crate) async fn lead(pool: &PgPool, lead_id: &str) -> StoreResult<Option<StoredLead>> {
    let row = sqlx::query(&format!("SELECT {LEAD_COLUMNS} FROM leads WHERE id = $1"))
        .bind(lead_id)
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
    row.as_ref().map(lead_from_row).transpose()
}

fn page_of<T>(mut items: Vec<T>, limit: usize, cursor: impl Fn(&T) -> Cursor) -> Page<T> {
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(cursor)
    } else {
        None
    };
    Page { items, next_cursor }
}

pub(crate) async fn leads_page(pool: &PgPool, query: &LeadQuery) -> StoreResult<Page<StoredLead>> {
    let limit = query.limit.clamp(1, MAX_PAGE);
    let mut builder: QueryBuilder<Postgres> =
        QueryBuilder::new(format!("SELECT {LEAD_COLUMNS} FROM leads WHERE 1 = 1"));
    push_equals(&mut builder, "flow_id", query.flow_id.as_deref());
    push_equals(&mut builder, "source_id", query.source_id.as_deref());
    push_equals(&mut builder, "outcome", query.outcome.map(|o| o.as_str()));
    push_keyset(&mut builder, "created_at", query.start, query.end, query.cursor.as_ref(), query.sort, limit + 1);
    let rows = builder.build().fetch_all(pool).await.map_err(unavailable)?;
    let items = rows.iter().map(lead_from_row).collect::<StoreResult<Vec<_>>>()?;
    Ok(page_of(items, limit, StoredLead::cursor))
}

/// A page of the register; with `abandoned`, only the not-integrated collection.
pub(crate) async fn register_page(
    pool: &PgPool,
    query: &RegisterQuery,
    abandoned: bool,
) -> StoreResult<Page<TransferRow>> {
    let limit = query.limit.clamp(1, MAX_PAGE);
    let mut builder: QueryBuilder<Postgres> = QueryBuilder::new(
        "SELECT seq, id, lead_id, flow_id, source_id, destination_id, status, description, created_at, updated_at, attempts FROM transfers WHERE 1 = 1",
    );
    if abandoned {
        builder.push(" AND state = 'abandoned'");
    }
    push_equals(&mut builder, "status", query.status.map(|s| s.as_str()));
    push_equals(&mut builder, "lead_id", query.lead_id.as_deref());
    push_equals(&mut builder, "source_id", query.source_id.as_deref());
    push_equals(&mut builder, "destination_id", query.destination_id.as_deref());
    push_equals(&mut builder, "flow_id", query.flow_id.as_deref());
    push_keyset(&mut builder, "created_at", query.start, query.end, query.cursor.as_ref(), query.sort, limit + 1);
    let rows = builder.build().fetch_all(pool).await.map_err(unavailable)?;
    let items = rows.iter().map(transfer_from_row).collect::<StoreResult<Vec<_>>>()?;
    Ok(page_of(items, limit, TransferRow::cursor))
}

pub(crate) async fn find_token(pool: &PgPool, hash: &[u8; 32]) -> StoreResult<Option<TokenRecord>> {
    let row = sqlx::query("SELECT id, name, role, hash, created_at FROM tokens WHERE hash = $1")
        .bind(&hash[..])
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
    row.as_ref().map(token_from_row).transpose()
}

pub(crate) async fn list_tokens(pool: &PgPool) -> StoreResult<Vec<TokenRecord>> {
    let rows = sqlx::query("SELECT id, name, role, hash, created_at FROM tokens ORDER BY created_at, id")
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    rows.iter().map(token_from_row).collect()
}

/// The earliest `due_at` of a destination's pending transfers.
pub(crate) async fn next_due(pool: &PgPool, destination_id: &str) -> StoreResult<Option<i64>> {
    sqlx::query_scalar("SELECT MIN(due_at) FROM transfers WHERE state = 'pending' AND destination_id = $1")
        .bind(destination_id)
        .fetch_one(pool)
        .await
        .map_err(unavailable)
}

pub(crate) async fn with_snapshots(
    connection: &mut PgConnection,
    rows: Vec<ClaimRow>,
) -> StoreResult<Vec<ClaimedTransfer>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut snapshots: std::collections::HashMap<String, (i64, String, Vec<u8>)> = std::collections::HashMap::new();
    for chunk in rows.chunks(500) {
        let mut builder: QueryBuilder<Postgres> = QueryBuilder::new(
            "SELECT l.id, s.id, s.body, s.digest FROM leads l JOIN snapshots s ON s.id = l.snapshot_id WHERE l.id IN (",
        );
        let mut separated = builder.separated(", ");
        for row in chunk {
            separated.push_bind(row.lead_id.as_str());
        }
        builder.push(")");
        for found in builder.build().fetch_all(&mut *connection).await.map_err(unavailable)? {
            let lead_id: String = found.try_get(0).map_err(corrupt)?;
            snapshots.insert(
                lead_id,
                (
                    found.try_get(1).map_err(corrupt)?,
                    found.try_get(2).map_err(corrupt)?,
                    found.try_get(3).map_err(corrupt)?,
                ),
            );
        }
    }
    rows.into_iter()
        .map(|row| {
            let (id, body, digest) = snapshots.get(&row.lead_id).cloned().ok_or_else(|| {
                corrupt(format!("transfer {} names lead {} without a snapshot", row.transfer_id, row.lead_id))
            })?;
            row.with_snapshot(id, body, digest)
        })
        .collect()
}

/// Transfers by id, as claims return them; transfers to no destination are left out.
pub(crate) async fn transfer_rows(
    connection: &mut PgConnection,
    transfer_ids: &[String],
) -> StoreResult<Vec<ClaimRow>> {
    let mut rows = Vec::with_capacity(transfer_ids.len());
    for chunk in transfer_ids.chunks(500) {
        let mut builder: QueryBuilder<Postgres> = QueryBuilder::new(
            "SELECT id, lead_id, flow_id, source_id, destination_id, attempts, retry_base, created_at FROM transfers \
             WHERE destination_id IS NOT NULL AND id IN (",
        );
        let mut separated = builder.separated(", ");
        for id in chunk {
            separated.push_bind(id.as_str());
        }
        builder.push(")");
        for row in builder.build().fetch_all(&mut *connection).await.map_err(unavailable)? {
            rows.push(ClaimRow {
                transfer_id: row.try_get(0).map_err(corrupt)?,
                lead_id: row.try_get(1).map_err(corrupt)?,
                flow_id: row.try_get(2).map_err(corrupt)?,
                source_id: row.try_get(3).map_err(corrupt)?,
                destination_id: row.try_get(4).map_err(corrupt)?,
                attempts: row.try_get(5).map_err(corrupt)?,
                retry_base: row.try_get(6).map_err(corrupt)?,
                created_at: row.try_get(7).map_err(corrupt)?,
            });
        }
    }
    Ok(rows)
}

/// What resends need of transfers, with their leads' current snapshots. The transfers stay
/// locked until the transaction ends, so that no node claims one between this read and the
/// resend's write.
pub(crate) async fn resend_rows(
    connection: &mut PgConnection,
    transfer_ids: &[String],
) -> StoreResult<std::collections::HashMap<String, ResendRow>> {
    let mut rows = std::collections::HashMap::with_capacity(transfer_ids.len());
    for chunk in transfer_ids.chunks(500) {
        let mut builder: QueryBuilder<Postgres> = QueryBuilder::new(
            "SELECT t.id, t.lead_id, t.flow_id, t.source_id, t.destination_id, t.status, t.state, t.lease_owner, \
             t.attempts, s.id, s.digest FROM transfers t JOIN leads l ON l.id = t.lead_id \
             JOIN snapshots s ON s.id = l.snapshot_id WHERE t.id IN (",
        );
        let mut separated = builder.separated(", ");
        for id in chunk {
            separated.push_bind(id.as_str());
        }
        builder.push(") FOR UPDATE OF t");
        for row in builder.build().fetch_all(&mut *connection).await.map_err(unavailable)? {
            let digest: Vec<u8> = row.try_get(10).map_err(corrupt)?;
            let attempts: i64 = row.try_get(8).map_err(corrupt)?;
            let found = ResendRow {
                transfer_id: row.try_get(0).map_err(corrupt)?,
                lead_id: row.try_get(1).map_err(corrupt)?,
                flow_id: row.try_get(2).map_err(corrupt)?,
                source_id: row.try_get(3).map_err(corrupt)?,
                destination_id: row.try_get(4).map_err(corrupt)?,
                status: row.try_get(5).map_err(corrupt)?,
                state: row.try_get(6).map_err(corrupt)?,
                lease_owner: row.try_get(7).map_err(corrupt)?,
                attempts: u32::try_from(attempts).unwrap_or(0),
                snapshot_id: row.try_get(9).map_err(corrupt)?,
                snapshot_digest: digest.try_into().map_err(|_| corrupt("snapshot digest is not 32 bytes"))?,
            };
            rows.insert(found.transfer_id.clone(), found);
        }
    }
    Ok(rows)
}

pub(crate) const JOB_COLUMNS: &str =
    "id, kind, status, params, cursor, matched, queued, skipped, error, created_at, updated_at, owner, lease_until";

pub(crate) async fn job(pool: &PgPool, job_id: &str) -> StoreResult<Option<JobRecord>> {
    let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
        .bind(job_id)
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
    row.as_ref().map(job_from_row).transpose()
}

pub(crate) async fn cap_usage(
    pool: &PgPool,
    windows: &[leadrelay_domain::caps::CapWindowKey],
) -> StoreResult<Vec<u64>> {
    let mut counts = Vec::with_capacity(windows.len());
    for window in windows {
        let count: Option<i64> = sqlx::query_scalar(
            "SELECT count FROM cap_counters WHERE destination_id = $1 AND cap_key = $2 AND window_start = $3",
        )
        .bind(&window.destination_id)
        .bind(&window.cap_key)
        .bind(window.window_start)
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
        counts.push(u64::try_from(count.unwrap_or(0)).unwrap_or(0));
    }
    Ok(counts)
}

pub(crate) async fn overview(pool: &PgPool, query: &OverviewQuery) -> StoreResult<Vec<OverviewRow>> {
    let rows = sqlx::query(&overview_sql("$1", "$2"))
        .bind(query.start)
        .bind(query.end)
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    rows.iter().map(overview_from_row).collect()
}
