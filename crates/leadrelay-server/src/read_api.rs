//! Reading the log: events (with every filter of SPEC 5), leads and their timelines, the
//! register, and streamed exports in NDJSON or CSV.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use futures::StreamExt;
use leadrelay_store::{
    events_page, export_event_lines, export_events, write_json_string, CursorList, EventQuery, SortOrder, TransferRow,
    EVENT_FIELDS,
};
use serde::Serialize;

use crate::auth::Caller;
use crate::export::{csv_header, encode_csv};
use crate::params::{event_query, lead_query, register_query, Params, EVENT_PARAMS, LEAD_PARAMS, REGISTER_PARAMS};
use crate::{ApiError, ApiResult, AppState};

/// Rows a `rules` query may scan for one page before it answers with a cursor to go on.
const RULES_SCAN_BUDGET: usize = 20_000;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/events/{event_id}", get(get_event))
        .route("/api/v1/flows/{flow_id}/events", get(list_flow_events))
        .route("/api/v1/leads", get(list_leads))
        .route("/api/v1/leads/{lead_id}", get(get_lead))
        .route("/api/v1/leads/{lead_id}/events", get(lead_timeline))
        .route("/api/v1/register", get(list_register))
        .route("/api/v1/export", get(export))
}

/// Which top-level fields of an event to write (`include`/`exclude`).
#[derive(Clone)]
struct Projection(Vec<&'static str>);

impl Projection {
    fn from_params(params: &Params) -> ApiResult<Self> {
        let include = params.field_list("include")?;
        let exclude = params.field_list("exclude")?.unwrap_or_default();
        let fields = EVENT_FIELDS
            .iter()
            .copied()
            .filter(|field| include.as_ref().is_none_or(|include| include.iter().any(|f| f == field)))
            .filter(|field| !exclude.iter().any(|f| f == field))
            .collect();
        Ok(Self(fields))
    }
}

/// `{"items": [...], "next_cursor": ...}` around items that write themselves as JSON.
fn page_json(count: usize, next_cursor: Option<String>, mut write_item: impl FnMut(usize, &mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * 1024 + 64);
    out.extend_from_slice(b"{\"items\":[");
    for index in 0..count {
        if index > 0 {
            out.push(b',');
        }
        write_item(index, &mut out);
    }
    out.extend_from_slice(b"],\"next_cursor\":");
    match next_cursor {
        Some(cursor) => write_json_string(&mut out, &cursor),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    out
}

fn json_bytes(bytes: Vec<u8>) -> Response {
    ([(CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes).into_response()
}

#[derive(Serialize)]
pub(crate) struct PageBody<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

pub(crate) fn json_response(body: &impl Serialize) -> ApiResult<Response> {
    let bytes = serde_json::to_vec(body).map_err(|error| ApiError::Internal(error.to_string()))?;
    Ok(([(CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes).into_response())
}

/// The `rules` filter read against the flows' field types, as their filters read them.
fn type_rules(state: &AppState, query: &mut EventQuery) -> ApiResult<()> {
    query
        .type_rules(&state.config())
        .map_err(|problem| ApiError::bad_request("invalid_parameter", format!("rules: {problem}")))
}

async fn events_response(state: &AppState, mut query: EventQuery, projection: Projection) -> ApiResult<Response> {
    type_rules(state, &mut query)?;
    let page = events_page(state.store.as_ref(), &query, RULES_SCAN_BUDGET).await?;
    let next_cursor = page.next_cursor.as_ref().map(|cursor| cursor.encode_for(CursorList::Events, query.sort));
    Ok(json_bytes(page_json(page.items.len(), next_cursor, |index, out| {
        page.items[index].write_json(out, &projection.0)
    })))
}

/// Events, newest first by default, with every filter of SPEC 5.
#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(crate::openapi::LeadFilterDoc, crate::openapi::EventParamsDoc, crate::openapi::EventPageDoc),
    responses((status = 200, description = "A page of events", body = crate::openapi::PageDoc),
              (status = 400, description = "A parameter is invalid; the message names it", body = crate::openapi::ErrorBody)))]
pub(crate) async fn list_events(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery) -> ApiResult<Response> {
    let params = Params::parse(query.as_deref(), EVENT_PARAMS)?;
    let events = event_query(&params, SortOrder::Desc)?;
    events_response(&state, events, Projection::from_params(&params)?).await
}

/// The events of one flow.
#[utoipa::path(get, path = "/api/v1/flows/{flow_id}/events", tag = "events",
    params(("flow_id" = String, Path, description = "The flow's id"), crate::openapi::LeadFilterDoc, crate::openapi::EventParamsDoc, crate::openapi::EventPageDoc),
    responses((status = 200, description = "A page of events", body = crate::openapi::PageDoc),
              (status = 400, description = "A parameter is invalid", body = crate::openapi::ErrorBody),
              (status = 404, description = "No such flow, configured or in the log", body = crate::openapi::ErrorBody)))]
pub(crate) async fn list_flow_events(
    State(state): State<Arc<AppState>>,
    Path(flow_id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let params = Params::parse(query.as_deref(), EVENT_PARAMS)?;
    let mut events = event_query(&params, SortOrder::Desc)?;
    if events.flow_id.as_ref().is_some_and(|given| *given != flow_id) {
        return Err(ApiError::bad_request("invalid_parameter", "flow_id: differs from the flow in the path"));
    }
    // A flow that is neither configured nor in the log does not exist; a deleted flow's
    // events stay readable.
    let configured = state.config().flows.contains_key(&flow_id)
        || state.config_since(tokio::time::Instant::now()).await?.flows.contains_key(&flow_id);
    if !configured {
        let any = EventQuery { flow_id: Some(flow_id.clone()), ..EventQuery::default() };
        if state.store.scan_events(&any, None, 1).await?.is_empty() {
            return Err(ApiError::not_found("flow_not_found", format!("no flow {flow_id:?}")));
        }
    }
    events.flow_id = Some(flow_id);
    events_response(&state, events, Projection::from_params(&params)?).await
}

/// One event.
#[utoipa::path(get, path = "/api/v1/events/{event_id}", tag = "events",
    params(("event_id" = String, Path, description = "`evt_…`"),
           ("include" = Option<String>, Query, description = "Comma-separated top-level fields to keep"),
           ("exclude" = Option<String>, Query, description = "Comma-separated top-level fields to drop")),
    responses((status = 200, description = "The event", body = crate::openapi::EventDoc),
              (status = 400, description = "A parameter is invalid", body = crate::openapi::ErrorBody),
              (status = 404, description = "No such event", body = crate::openapi::ErrorBody)))]
pub(crate) async fn get_event(
    State(state): State<Arc<AppState>>,
    Path(event_id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let projection = Projection::from_params(&Params::parse(query.as_deref(), &["include", "exclude"])?)?;
    match state.store.event(&event_id).await? {
        Some(event) => {
            let mut out = Vec::with_capacity(event.data.len() + event.lead.len() + 512);
            event.write_json(&mut out, &projection.0);
            Ok(json_bytes(out))
        }
        None => Err(ApiError::not_found("event_not_found", format!("no event {event_id:?}"))),
    }
}

/// Leads, newest first by default.
#[utoipa::path(get, path = "/api/v1/leads", tag = "leads", params(crate::openapi::LeadParamsDoc),
    responses((status = 200, description = "A page of lead snapshots", body = crate::openapi::PageDoc),
              (status = 400, description = "A parameter is invalid", body = crate::openapi::ErrorBody)))]
pub(crate) async fn list_leads(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery) -> ApiResult<Response> {
    let params = Params::parse(query.as_deref(), LEAD_PARAMS)?;
    let query = lead_query(&params)?;
    let page = state.store.leads_page(&query).await?;
    let next_cursor = page.next_cursor.as_ref().map(|cursor| cursor.encode_for(CursorList::Leads, query.sort));
    Ok(json_bytes(page_json(page.items.len(), next_cursor, |index, out| {
        out.extend_from_slice(page.items[index].snapshot.as_bytes())
    })))
}

/// A lead's current snapshot.
#[utoipa::path(get, path = "/api/v1/leads/{lead_id}", tag = "leads",
    params(("lead_id" = String, Path, description = "`lead_…`")),
    responses((status = 200, description = "The lead", body = Object),
              (status = 404, description = "No such lead", body = crate::openapi::ErrorBody)))]
pub(crate) async fn get_lead(State(state): State<Arc<AppState>>, Path(lead_id): Path<String>) -> ApiResult<Response> {
    match state.store.lead(&lead_id).await? {
        Some(lead) => Ok(json_bytes(lead.snapshot.into_bytes())),
        None => Err(ApiError::not_found("lead_not_found", format!("no lead {lead_id:?}"))),
    }
}

/// A lead's timeline, oldest first (`sort=desc` for newest first), with the events filters.
#[utoipa::path(get, path = "/api/v1/leads/{lead_id}/events", tag = "leads",
    params(("lead_id" = String, Path, description = "`lead_…`"), crate::openapi::EventParamsDoc, crate::openapi::TimelinePageDoc),
    responses((status = 200, description = "The timeline, oldest first", body = crate::openapi::PageDoc),
              (status = 400, description = "A parameter is invalid", body = crate::openapi::ErrorBody),
              (status = 404, description = "No such lead", body = crate::openapi::ErrorBody)))]
pub(crate) async fn lead_timeline(
    State(state): State<Arc<AppState>>,
    Path(lead_id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    // The path names the lead; every other filter of the log applies.
    let known: Vec<&str> = EVENT_PARAMS.iter().copied().filter(|name| *name != "lead_id").collect();
    let params = Params::parse(query.as_deref(), &known)?;
    let mut events = event_query(&params, SortOrder::Asc)?;
    events.limit = params.limit(1000)?;
    if state.store.lead(&lead_id).await?.is_none() {
        return Err(ApiError::not_found("lead_not_found", format!("no lead {lead_id:?}")));
    }
    events.lead_id = Some(lead_id);
    events_response(&state, events, Projection::from_params(&params)?).await
}

/// The register: one row per transfer, newest first by default.
#[utoipa::path(get, path = "/api/v1/register", tag = "register", params(crate::openapi::RegisterParamsDoc),
    responses((status = 200, description = "A page of transfers", body = crate::openapi::PageDoc),
              (status = 400, description = "A parameter is invalid", body = crate::openapi::ErrorBody)))]
pub(crate) async fn list_register(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let params = Params::parse(query.as_deref(), REGISTER_PARAMS)?;
    let query = register_query(&params)?;
    let page = state.register_page(&query).await?;
    let next_cursor = page.next_cursor.as_ref().map(|cursor| cursor.encode_for(CursorList::Transfers, query.sort));
    json_response(&PageBody { items: transfers_for(&caller, page.items), next_cursor })
}

/// Register rows as a caller may read them: the lead values a description quotes (a filter's
/// `(was "…")`) are masked for readers without access to personal data.
pub(crate) fn transfers_for(caller: &Caller, mut rows: Vec<TransferRow>) -> Vec<TransferRow> {
    if !caller.sees_pii() {
        for row in &mut rows {
            row.description = leadrelay_domain::rules::mask_found_values(&row.description).into_owned();
        }
    }
    rows
}

/// At most `remaining` of the `count` lines of `ndjson`, counting them off `remaining`.
fn first_lines(mut ndjson: String, count: usize, remaining: &mut usize) -> String {
    if count > *remaining {
        // Every line ends with a newline, and JSON escapes any inside a value.
        let end = ndjson.match_indices('\n').nth(*remaining - 1).map_or(ndjson.len(), |(at, _)| at + 1);
        ndjson.truncate(end);
        *remaining = 0;
    } else {
        *remaining -= count;
    }
    ndjson
}

#[derive(Clone, Copy, PartialEq)]
enum ExportFormat {
    Csv,
    Ndjson,
}

/// Streams every matching event, one page in memory at a time.
#[utoipa::path(get, path = "/api/v1/export", tag = "events",
    params(("format" = Option<String>, Query, description = "`ndjson` (default) or `csv`"), crate::openapi::LeadFilterDoc, crate::openapi::EventParamsDoc, crate::openapi::ExportPageDoc),
    responses((status = 200, description = "Every matching event, oldest first, streamed", content_type = "application/x-ndjson"),
              (status = 400, description = "A parameter is invalid", body = crate::openapi::ErrorBody)))]
pub(crate) async fn export(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery) -> ApiResult<Response> {
    let mut known = EVENT_PARAMS.to_vec();
    known.push("format");
    let mut params = Params::parse(query.as_deref(), &known)?;
    // Export streams every matching event unless `limit` caps how many.
    let cap =
        match params.take("limit") {
            None => usize::MAX,
            Some(text) => text.parse::<usize>().ok().filter(|cap| *cap >= 1).ok_or_else(|| {
                ApiError::bad_request("invalid_parameter", "limit: must be a whole number of at least 1")
            })?,
        };
    let format = match params.text("format").as_deref() {
        None | Some("ndjson") => ExportFormat::Ndjson,
        Some("csv") => ExportFormat::Csv,
        Some(_) => return Err(ApiError::bad_request("invalid_parameter", "format: must be csv or ndjson")),
    };
    let mut events = event_query(&params, SortOrder::Asc)?;
    events.limit = leadrelay_store::MAX_PAGE;
    type_rules(&state, &mut events)?;
    let projection = Projection::from_params(&params)?;

    // Once the status is sent, a storage error can only end the stream early, which the client
    // sees as a broken download.
    let stream = match format {
        ExportFormat::Csv => {
            let header = futures::stream::iter([Ok::<Bytes, std::io::Error>(csv_header(&projection.0))]);
            let rows = export_events(state.store.clone(), events).take(cap).chunks(500).map(move |chunk| {
                let events = chunk
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|error| std::io::Error::other(error.to_string()))?;
                encode_csv(&events, &projection.0)
            });
            header.chain(rows).boxed()
        }
        ExportFormat::Ndjson => export_event_lines(state.store.clone(), events, projection.0)
            .scan(cap, |remaining, page| {
                let chunk = (*remaining > 0).then(|| {
                    let lines = page.map_err(|error| std::io::Error::other(error.to_string()))?;
                    Ok(Bytes::from(first_lines(lines.ndjson, lines.count, remaining)))
                });
                futures::future::ready(chunk)
            })
            .boxed(),
    };
    let (content_type, file) = match format {
        ExportFormat::Csv => ("text/csv; charset=utf-8", "attachment; filename=\"events.csv\""),
        ExportFormat::Ndjson => ("application/x-ndjson", "attachment; filename=\"events.ndjson\""),
    };
    Ok((
        [(CONTENT_TYPE, HeaderValue::from_static(content_type)), (CONTENT_DISPOSITION, HeaderValue::from_static(file))],
        Body::from_stream(stream),
    )
        .into_response())
}
