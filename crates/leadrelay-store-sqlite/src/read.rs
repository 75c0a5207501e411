//! Reads: configuration, duplicate and idempotency look-ups, and keyset pages of the log,
//! the leads and the register.

use leadrelay_domain::config::{Config, ConfigKind, ConfigObject, DuplicateMatch};

use leadrelay_domain::ids::LeadId;
use leadrelay_domain::pipeline::{DuplicateFound, DuplicateQuery};
use leadrelay_domain::time::Millis;
use leadrelay_store::{
    ClaimRow, ClaimedTransfer, Cursor, EventLines, EventQuery, JobRecord, LeadQuery, OverviewQuery, OverviewRow, Page,
    RegisterQuery, SortOrder, StoreError, StoreResult, StoredAnswer, StoredEvent, StoredLead, TokenRecord, TransferRow,
    MAX_PAGE,
};
pub(crate) use leadrelay_store_sql::{event_from_row, job_from_row};
use leadrelay_store_sql::{lead_from_row, overview_from_row, overview_sql, token_from_row, transfer_from_row};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteExecutor, SqlitePool};

use crate::unavailable;

fn corrupt(error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(error.to_string())
}

pub(crate) async fn load_config(executor: impl SqliteExecutor<'_>) -> StoreResult<Config> {
    let rows = sqlx::query(CONFIG_ROWS).fetch_all(executor).await.map_err(unavailable)?;
    let rows = rows
        .iter()
        .map(|row| {
            Ok((row.try_get(0).map_err(corrupt)?, row.try_get(1).map_err(corrupt)?, row.try_get(2).map_err(corrupt)?))
        })
        .collect::<StoreResult<_>>()?;
    config_from_rows(rows)
}

/// The stored configuration objects in order, as [`config_from_rows`] takes them.
pub(crate) const CONFIG_ROWS: &str = "SELECT kind, id, body FROM config_objects ORDER BY position";

/// The configuration from its stored rows, `(kind, id, body)` in order.
pub(crate) fn config_from_rows(rows: Vec<(String, String, String)>) -> StoreResult<Config> {
    let mut objects = Vec::with_capacity(rows.len());
    for (kind, id, body) in rows {
        let kind = ConfigKind::parse(&kind).ok_or_else(|| corrupt(format!("unknown config kind {kind:?}")))?;
        let value: serde_json::Value = serde_json::from_str(&body).map_err(corrupt)?;
        let object =
            ConfigObject::parse(kind, value).map_err(|error| corrupt(format!("stored {kind} {id:?}: {error}")))?;
        objects.push(object);
    }
    Ok(Config::from_objects(objects))
}

pub(crate) async fn find_duplicate(
    executor: impl SqliteExecutor<'_>,
    query: &DuplicateQuery,
) -> StoreResult<Option<DuplicateFound>> {
    if query.keys.is_empty() {
        return Ok(None);
    }
    let mut builder: QueryBuilder<Sqlite> =
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

pub(crate) async fn idempotent_answer(
    executor: impl SqliteExecutor<'_>,
    source_id: &str,
    key: &str,
) -> StoreResult<Option<StoredAnswer>> {
    let row = sqlx::query("SELECT http_status, answer FROM idempotency_keys WHERE source_id = ? AND key = ?")
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
fn push_equals<'a>(builder: &mut QueryBuilder<'a, Sqlite>, column: &str, value: Option<&'a str>) {
    if let Some(value) = value {
        builder.push(format_args!(" AND {column} = ")).push_bind(value);
    }
}

/// The events table as a query reads it. One lead's events are few, and its index finds them
/// at once; left to itself, SQLite may prefer an index that gives the order (by type, by
/// destination) and walk every event of that type to find the lead's.
fn events_of(query: &EventQuery) -> &'static str {
    if query.lead_id.is_some() {
        "events INDEXED BY events_by_lead"
    } else {
        "events"
    }
}

/// Appends the indexed filters of an events query (all but the time range and `rules`).
fn push_event_filters<'a>(builder: &mut QueryBuilder<'a, Sqlite>, query: &'a EventQuery) {
    push_equals(builder, "lead_id", query.lead_id.as_deref());
    push_equals(builder, "type", query.event_type.map(|t| t.as_str()));
    push_equals(builder, "status", query.status.map(|s| s.as_str()));
    push_equals(builder, "source_id", query.source_id.as_deref());
    push_equals(builder, "destination_id", query.destination_id.as_deref());
    push_equals(builder, "flow_id", query.flow_id.as_deref());
}

/// Appends the time range and the keyset condition on `(time_column, seq)` and the order.
fn push_keyset(
    builder: &mut QueryBuilder<'_, Sqlite>,
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
    pool: &SqlitePool,
    query: &EventQuery,
    after: Option<&Cursor>,
    limit: usize,
) -> StoreResult<Vec<StoredEvent>> {
    let mut builder: QueryBuilder<Sqlite> =
        QueryBuilder::new(format!("SELECT {EVENT_COLUMNS} FROM {} WHERE 1 = 1", events_of(query)));
    push_event_filters(&mut builder, query);
    push_keyset(&mut builder, "ts", query.start, query.end, after, query.sort, limit);
    let rows = builder.build().fetch_all(pool).await.map_err(unavailable)?;
    rows.iter().map(event_from_row).collect()
}

/// The SQL that renders one event field as JSON, exactly as `StoredEvent::write_json` does.
fn field_json_sql(field: &str) -> Option<&'static str> {
    Some(match field {
        "id" => "json_quote(id)",
        "type" => "json_quote(type)",
        "timestamp" => {
            "json_quote(strftime('%Y-%m-%dT%H:%M:%S', ts / 1000, 'unixepoch') || printf('.%03dZ', ts % 1000))"
        }
        "lead_id" => "json_quote(lead_id)",
        "flow_id" => "json_quote(flow_id)",
        "source_id" => "json_quote(source_id)",
        "destination_id" => "json_quote(destination_id)",
        "transfer_id" => "json_quote(transfer_id)",
        "status" => "json_quote(status)",
        "outcome" => "json_quote(outcome)",
        "reason" => "json_quote(reason)",
        "duration_ms" => "json_quote(duration_ms)",
        "integration" => "json_quote(integration)",
        "response_code" => "json_quote(response_code)",
        "price" => "json_quote(price)",
        "attempt" => "json_quote(attempt)",
        "data" => "data",
        "lead" => "(SELECT body FROM snapshots WHERE snapshots.id = events.snapshot_id)",
        _ => return None,
    })
}

/// A page of events rendered to NDJSON by SQLite itself, as one value: the stored `data` and
/// snapshot texts are concatenated without being parsed, and the page crosses from SQLite to
/// Rust once rather than row by row.
pub(crate) async fn scan_event_lines(
    pool: &SqlitePool,
    query: &EventQuery,
    after: Option<&Cursor>,
    limit: usize,
    fields: &[&'static str],
) -> StoreResult<EventLines> {
    // One concat() builds each line in a single allocation, where a chain of `||` would copy
    // the growing text at every step.
    let mut expression = String::from("concat('{'");
    for (index, field) in fields.iter().enumerate() {
        let Some(sql) = field_json_sql(field) else {
            return Err(corrupt(format!("unknown event field {field:?}")));
        };
        let separator = if index == 0 { "" } else { "," };
        expression.push_str(&format!(", '{separator}\"{field}\":', {sql}"));
    }
    expression.push_str(", '}', char(10))");
    let last = match query.sort {
        SortOrder::Asc => "max",
        SortOrder::Desc => "min",
    };
    // The inner query is an ordered, limited scan that SQLite runs as a co-routine, feeding
    // its rows to group_concat in that order. `group_concat(… ORDER BY …)` would say so
    // explicitly but sorts the page again, which halves export speed; the conformance suite
    // checks the order on every run. The last position is a text that sorts like the pair
    // (time, seq), which are never negative.
    let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
        "SELECT count(*), group_concat(line, ''), {last}(printf('%020d:%020d', ts, seq)) \
         FROM (SELECT ts, seq, {expression} AS line FROM {} WHERE 1 = 1",
        events_of(query)
    ));
    push_event_filters(&mut builder, query);
    push_keyset(&mut builder, "ts", query.start, query.end, after, query.sort, limit);
    builder.push(")");
    let row = builder.build().fetch_one(pool).await.map_err(unavailable)?;
    let count: i64 = row.try_get(0).map_err(corrupt)?;
    let ndjson: Option<String> = row.try_get(1).map_err(corrupt)?;
    let last: Option<String> = row.try_get(2).map_err(corrupt)?;
    let last = last
        .map(|text| {
            let (time, seq) = text.split_once(':').ok_or_else(|| corrupt("bad page position"))?;
            Ok::<_, StoreError>(Cursor { time: time.parse().map_err(corrupt)?, seq: seq.parse().map_err(corrupt)? })
        })
        .transpose()?;
    Ok(EventLines { ndjson: ndjson.unwrap_or_default(), count: count as usize, last })
}

pub(crate) async fn event(pool: &SqlitePool, event_id: &str) -> StoreResult<Option<StoredEvent>> {
    let row = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?"))
        .bind(event_id)
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
    row.as_ref().map(event_from_row).transpose()
}

const LEAD_COLUMNS: &str =
    "seq, id, created_at, (SELECT body FROM snapshots WHERE snapshots.id = leads.snapshot_id) AS snapshot";

pub(crate) async fn lead(pool: &SqlitePool, lead_id: &str) -> StoreResult<Option<StoredLead>> {
    let row = sqlx::query(&format!("SELECT {LEAD_COLUMNS} FROM leads WHERE id = ?"))
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

pub(crate) async fn leads_page(pool: &SqlitePool, query: &LeadQuery) -> StoreResult<Page<StoredLead>> {
    let limit = query.limit.clamp(1, MAX_PAGE);
    let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(format!("SELECT {LEAD_COLUMNS} FROM leads WHERE 1 = 1"));
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
    pool: &SqlitePool,
    query: &RegisterQuery,
    abandoned: bool,
) -> StoreResult<Page<TransferRow>> {
    let limit = query.limit.clamp(1, MAX_PAGE);
    let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(
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

pub(crate) async fn find_token(pool: &SqlitePool, hash: &[u8; 32]) -> StoreResult<Option<TokenRecord>> {
    let row = sqlx::query("SELECT id, name, role, hash, created_at FROM tokens WHERE hash = ?")
        .bind(&hash[..])
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
    row.as_ref().map(token_from_row).transpose()
}

pub(crate) async fn list_tokens(pool: &SqlitePool) -> StoreResult<Vec<TokenRecord>> {
    let rows = sqlx::query("SELECT id, name, role, hash, created_at FROM tokens ORDER BY created_at, id")
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    rows.iter().map(token_from_row).collect()
}

/// The earliest `due_at` of a destination's pending transfers.
pub(crate) async fn next_due(pool: &SqlitePool, destination_id: &str) -> StoreResult<Option<i64>> {
    sqlx::query_scalar("SELECT MIN(due_at) FROM transfers WHERE state = 'pending' AND destination_id = ?")
        .bind(destination_id)
        .fetch_one(pool)
        .await
        .map_err(unavailable)
}

/// Completes claimed rows with their leads' current snapshots.
pub(crate) async fn with_snapshots(pool: &SqlitePool, rows: Vec<ClaimRow>) -> StoreResult<Vec<ClaimedTransfer>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut snapshots: std::collections::HashMap<String, (i64, String, Vec<u8>)> = std::collections::HashMap::new();
    for chunk in rows.chunks(500) {
        let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT l.id, s.id, s.body, s.digest FROM leads l JOIN snapshots s ON s.id = l.snapshot_id WHERE l.id IN (",
        );
        let mut separated = builder.separated(", ");
        for row in chunk {
            separated.push_bind(row.lead_id.as_str());
        }
        builder.push(")");
        for found in builder.build().fetch_all(pool).await.map_err(unavailable)? {
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
pub(crate) async fn transfer_rows(pool: &SqlitePool, transfer_ids: &[String]) -> StoreResult<Vec<ClaimRow>> {
    let mut rows = Vec::with_capacity(transfer_ids.len());
    for chunk in transfer_ids.chunks(500) {
        let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT id, lead_id, flow_id, source_id, destination_id, attempts, retry_base, created_at FROM transfers \
             WHERE destination_id IS NOT NULL AND id IN (",
        );
        let mut separated = builder.separated(", ");
        for id in chunk {
            separated.push_bind(id.as_str());
        }
        builder.push(")");
        for row in builder.build().fetch_all(pool).await.map_err(unavailable)? {
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

pub(crate) const JOB_COLUMNS: &str =
    "id, kind, status, params, cursor, matched, queued, skipped, error, created_at, updated_at, owner, lease_until";

pub(crate) async fn job(pool: &SqlitePool, job_id: &str) -> StoreResult<Option<JobRecord>> {
    let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"))
        .bind(job_id)
        .fetch_optional(pool)
        .await
        .map_err(unavailable)?;
    row.as_ref().map(job_from_row).transpose()
}

pub(crate) async fn cap_usage(
    pool: &SqlitePool,
    windows: &[leadrelay_domain::caps::CapWindowKey],
) -> StoreResult<Vec<u64>> {
    let mut counts = Vec::with_capacity(windows.len());
    for window in windows {
        let count: Option<i64> = sqlx::query_scalar(
            "SELECT count FROM cap_counters WHERE destination_id = ? AND cap_key = ? AND window_start = ?",
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

pub(crate) async fn overview(pool: &SqlitePool, query: &OverviewQuery) -> StoreResult<Vec<OverviewRow>> {
    let rows = sqlx::query(&overview_sql("?", "?"))
        .bind(query.start)
        .bind(query.end)
        .fetch_all(pool)
        .await
        .map_err(unavailable)?;
    rows.iter().map(overview_from_row).collect()
}
