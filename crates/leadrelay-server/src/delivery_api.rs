//! Delivery over REST: the not-integrated collection and test calls to a destination.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use leadrelay_delivery::attempt::AttemptVerdict;
use leadrelay_delivery::judge::Verdict;
use leadrelay_domain::config::FieldDef;
use leadrelay_domain::fields::{parse_field, FieldType};
use leadrelay_domain::lead::place_fields;
use leadrelay_domain::time::{format_millis, now_millis};
use leadrelay_store::{CursorList, JobRecord, ResendOutcome, ResendRequest};
use serde_json::{json, Map, Value};

use crate::auth::Caller;
use crate::params::{json_object_body, register_query, Params, REGISTER_PARAMS};
use crate::read_api::{json_response, PageBody};
use crate::{ApiError, ApiResult, AppState};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/not-integrated", get(not_integrated))
        .route("/api/v1/destinations/{id}/test", post(test_destination))
        .route("/api/v1/register/resend", post(resend_matching))
        .route("/api/v1/register/{transfer_id}/resend", post(resend_one))
        .route("/api/v1/jobs/{job_id}", get(get_job))
}

/// Transfers whose retries ran out: the not-integrated collection, with the register's filters.
#[utoipa::path(get, path = "/api/v1/not-integrated", tag = "register", params(crate::openapi::RegisterParamsDoc),
    responses((status = 200, description = "A page of abandoned transfers", body = crate::openapi::PageDoc),
              (status = 400, description = "A parameter is invalid", body = crate::openapi::ErrorBody)))]
pub(crate) async fn not_integrated(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let params = Params::parse(query.as_deref(), REGISTER_PARAMS)?;
    let query = register_query(&params)?;
    let page = state.store.not_integrated_page(&query).await?;
    let next_cursor = page.next_cursor.as_ref().map(|cursor| cursor.encode_for(CursorList::Transfers, query.sort));
    json_response(&PageBody { items: crate::read_api::transfers_for(&caller, page.items), next_cursor })
}

/// Sample values for a flow's fields, so a test call looks like a real lead.
fn sample_value(field_type: FieldType, name: &str) -> &'static str {
    match field_type {
        FieldType::Email => "test.lead@example.com",
        FieldType::Phone => "+1 512 555 0100",
        FieldType::State => "TX",
        FieldType::PostalCode => "78701",
        FieldType::Name => "Test",
        FieldType::Date | FieldType::Dob => "1980-01-15",
        FieldType::Number => "1",
        FieldType::Boolean => "true",
        FieldType::Url => "https://example.com/",
        FieldType::Ip => "203.0.113.10",
        _ if name.contains("name") => "Test",
        _ => "test",
    }
}

/// The fields a sample lead has when no flow uses the destination yet (people test a
/// destination before they wire it in): the usual contact fields.
const USUAL_FIELDS: [(&str, FieldType); 6] = [
    ("first_name", FieldType::Name),
    ("last_name", FieldType::Name),
    ("email", FieldType::Email),
    ("phone", FieldType::Phone),
    ("state", FieldType::State),
    ("postal_code", FieldType::PostalCode),
];

/// A sample field's type: the flows' declaration, else what its usual name says.
fn sample_type(name: &str, defined: &[&FieldDef]) -> FieldType {
    if let Some(def) = defined.iter().find(|def| def.name == name) {
        return def.field_type;
    }
    match name {
        "zip" | "zip_code" | "postal" => FieldType::PostalCode,
        "dob" | "birth_date" | "date_of_birth" => FieldType::Dob,
        "name" | "full_name" => FieldType::Name,
        _ => {
            USUAL_FIELDS.iter().find(|(usual, _)| *usual == name).map_or(FieldType::Text, |(_, field_type)| *field_type)
        }
    }
}

/// A lead snapshot for a test call: the given fields, or samples of the flows' fields.
fn sample_snapshot(fields: &Map<String, Value>, defined: &[&FieldDef]) -> Value {
    let parsed: Vec<(String, Map<String, Value>)> = if fields.is_empty() && defined.is_empty() {
        USUAL_FIELDS
            .iter()
            .map(|(name, field_type)| ((*name).to_owned(), parse_field(*field_type, sample_value(*field_type, name))))
            .collect()
    } else if fields.is_empty() {
        defined
            .iter()
            .map(|def| (def.name.clone(), parse_field(def.field_type, sample_value(def.field_type, &def.name))))
            .collect()
    } else {
        fields
            .iter()
            .map(|(name, value)| {
                let field_type = sample_type(name, defined);
                let text = match value {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                (name.clone(), parse_field(field_type, &text))
            })
            .collect()
    };
    let now = format_millis(now_millis());
    let mut snapshot = json!({
        "id": "lead_test", "flow_id": null, "source_id": null, "status": "new", "outcome": "success",
        "reason": null, "duplicate_of": null, "cost": null, "created_at": now, "updated_at": now,
    });
    let map = snapshot.as_object_mut().expect("an object");
    place_fields(map, parsed);
    map.insert("appended".into(), json!({}));
    snapshot
}

/// Sends a sample lead to a destination now and answers with what it replied. The body, if
/// any, is a JSON object of fields, read as the flows using the destination declare them (or
/// as their usual names say: `email`, `phone`, `state`, …); without one, the fields of those
/// flows get sample values, or the usual contact fields when no flow uses it yet. Nothing is
/// recorded.
#[utoipa::path(post, path = "/api/v1/destinations/{id}/test", tag = "configuration",
    params(("id" = String, Path, description = "The destination's id")),
    request_body(content = Object, description = "Fields of the sample lead (optional)", content_type = "application/json"),
    responses((status = 200, description = "What the destination answered", body = Object),
              (status = 400, description = "The body is not a JSON object", body = crate::openapi::ErrorBody),
              (status = 404, description = "No such destination", body = crate::openapi::ErrorBody)))]
pub(crate) async fn test_destination(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let config = state.config();
    let destination = config
        .destinations
        .get(&id)
        .ok_or_else(|| ApiError::not_found("destination_not_found", format!("no destination {id:?}")))?;
    let fields = json_object_body(&body, "sample fields")?;
    let defined: Vec<&FieldDef> = config
        .flows
        .values()
        .filter(|flow| flow.destinations.contains(&id))
        .flat_map(|flow| flow.fields.iter())
        .collect();
    let snapshot = sample_snapshot(&fields, &defined);
    let report = state.delivery.test_destination(destination, snapshot).await;
    let (outcome, reason) = match &report.verdict {
        AttemptVerdict::Judged(Verdict::Delivered) => ("success", None),
        AttemptVerdict::Judged(Verdict::Refused { reason }) => ("failure", Some(reason.clone())),
        AttemptVerdict::Judged(Verdict::Failed { reason, .. }) | AttemptVerdict::Blocked { reason } => {
            ("error", Some(reason.clone()))
        }
    };
    Ok(Json(json!({
        "destination_id": id,
        "outcome": outcome,
        "reason": reason,
        "response_code": report.response_code,
        "duration_ms": report.duration_ms,
        "captured": report.captured,
        "price": report.price,
        "request": report.request,
        "response": report.response,
    })))
}

/// Queues one transfer again with its destination's current configuration; its retries
/// start over. Works on abandoned (not-integrated) transfers too.
#[utoipa::path(post, path = "/api/v1/register/{transfer_id}/resend", tag = "register",
    params(("transfer_id" = String, Path, description = "The transfer's id")),
    responses((status = 200, description = "Queued again", body = Object),
              (status = 404, description = "No such transfer", body = crate::openapi::ErrorBody),
              (status = 409, description = "Nothing to resend, or it is being delivered right now", body = crate::openapi::ErrorBody)))]
pub(crate) async fn resend_one(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(transfer_id): Path<String>,
) -> ApiResult<Json<Value>> {
    resend_transfer(&state, &transfer_id, caller.name).await?;
    Ok(Json(json!({"transfer_id": transfer_id, "outcome": "queued", "status": "new"})))
}

/// Queues one transfer again (for the API and the web UI alike); an error says why not.
pub(crate) async fn resend_transfer(state: &AppState, transfer_id: &str, actor: String) -> ApiResult<()> {
    let config = state.config();
    let request = ResendRequest { transfer_ids: vec![transfer_id.to_owned()], actor, job_id: None, now: now_millis() };
    // The destination must still exist: check the transfer before queueing it.
    let held = state.store.held_transfers(&request.transfer_ids).await?;
    if let Some(transfer) = held.first() {
        if !config.destinations.contains_key(&transfer.destination_id) {
            return Err(ApiError::Conflict(format!(
                "destination {:?} of transfer {transfer_id} no longer exists",
                transfer.destination_id
            )));
        }
    }
    let outcome = state.store.resend_transfers(request).await?.pop().map(|(_, outcome)| outcome);
    match outcome {
        Some(ResendOutcome::Queued) => {
            state.delivery.wake();
            Ok(())
        }
        Some(ResendOutcome::NoDestination) => Err(ApiError::Conflict(format!(
            "transfer {transfer_id} went to no destination (the lead stopped before delivery): nothing to resend"
        ))),
        Some(ResendOutcome::AlreadyQueued) => {
            Err(ApiError::Conflict(format!("transfer {transfer_id} is being delivered right now")))
        }
        Some(ResendOutcome::NotFound) | None => {
            Err(ApiError::not_found("transfer_not_found", format!("no transfer {transfer_id:?}")))
        }
    }
}

/// Resends every transfer matching a register filter (`status`, `lead_id`, `source_id`,
/// `destination_id`, `flow_id`, `start`, `end`, and `not_integrated`) as a background job.
#[utoipa::path(post, path = "/api/v1/register/resend", tag = "register",
    request_body(content = Object, description = "The register filter (or give it as query parameters); `{}` resends every transfer", content_type = "application/json"),
    responses((status = 202, description = "The job, running", body = Object),
              (status = 400, description = "The filter is invalid", body = crate::openapi::ErrorBody)))]
pub(crate) async fn resend_matching(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<JobRecord>)> {
    // Resending is not undone: an empty request must not mean "every transfer" by accident.
    let query = query.filter(|query| !query.is_empty());
    let params = match (query, body.iter().all(u8::is_ascii_whitespace)) {
        (None, true) => {
            return Err(ApiError::bad_request(
                "filter_required",
                "send the register filter as a JSON body or as query parameters; {} resends every transfer",
            ))
        }
        (Some(_), false) => {
            return Err(ApiError::bad_request(
                "filter_twice",
                "give the filter either as the JSON body or as query parameters, not both",
            ))
        }
        (Some(query), true) => {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&query).map_err(|error| {
                ApiError::bad_request("invalid_query", format!("query string is not valid: {error}"))
            })?;
            let mut object = Map::new();
            for (name, value) in pairs {
                if object.insert(name.clone(), Value::String(value)).is_some() {
                    return Err(ApiError::bad_request("invalid_parameter", format!("{name}: given more than once")));
                }
            }
            Value::Object(object)
        }
        (None, false) => Value::Object(json_object_body(&body, "filters")?),
    };
    // A filter given empty (`?status=`, `{"status": null}`) would silently widen the job to
    // every transfer: refused, so that only `{}` means everything.
    if let Some((name, _)) = params.as_object().into_iter().flatten().find(|(_, value)| match value {
        Value::Null => true,
        Value::String(text) => text.trim().is_empty(),
        _ => false,
    }) {
        return Err(ApiError::bad_request("invalid_parameter", format!("{name}: empty; leave it out instead")));
    }
    let job = crate::jobs::start_resend(&state, params, &caller.name).await?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// A background job's progress.
#[utoipa::path(get, path = "/api/v1/jobs/{job_id}", tag = "register",
    params(("job_id" = String, Path, description = "The job's id")),
    responses((status = 200, description = "The job", body = Object),
              (status = 404, description = "No such job", body = crate::openapi::ErrorBody)))]
pub(crate) async fn get_job(
    State(state): State<Arc<AppState>>,
    Path(job_id): Path<String>,
) -> ApiResult<Json<JobRecord>> {
    state
        .store
        .job(&job_id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("job_not_found", format!("no job {job_id:?}")))
}
