//! Delivery over REST: the not-integrated collection and test calls to a destination.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use leadrelay_delivery::attempt::AttemptVerdict;
use leadrelay_delivery::judge::Verdict;
use leadrelay_domain::config::FieldDef;
use leadrelay_domain::fields::{parse_field, FieldType};
use leadrelay_domain::time::{format_millis, now_millis};
use leadrelay_store::Cursor;
use serde_json::{json, Map, Value};

use crate::params::{register_query, Params, REGISTER_PARAMS};
use crate::read_api::{json_response, PageBody};
use crate::{ApiError, ApiResult, AppState};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/not-integrated", get(not_integrated))
        .route("/api/v1/destinations/{id}/test", post(test_destination))
}

/// Transfers whose retries ran out: the not-integrated collection, with the register's filters.
#[utoipa::path(get, path = "/api/v1/not-integrated", tag = "register", params(crate::openapi::RegisterParamsDoc),
    responses((status = 200, description = "A page of abandoned transfers", body = crate::openapi::PageDoc),
              (status = 400, description = "A parameter is invalid", body = crate::openapi::ErrorBody)))]
pub(crate) async fn not_integrated(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let params = Params::parse(query.as_deref(), REGISTER_PARAMS)?;
    let page = state.store.not_integrated_page(&register_query(&params)?).await?;
    json_response(&PageBody { items: page.items, next_cursor: page.next_cursor.as_ref().map(Cursor::encode) })
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

/// A lead snapshot for a test call: the given fields, or samples of the flows' fields.
fn sample_snapshot(fields: &Map<String, Value>, defined: &[&FieldDef]) -> Value {
    let mut parsed = Map::new();
    if fields.is_empty() {
        for def in defined {
            parsed.insert(
                def.name.clone(),
                Value::Object(parse_field(def.field_type, sample_value(def.field_type, &def.name))),
            );
        }
    } else {
        for (name, value) in fields {
            let field_type = defined.iter().find(|def| &def.name == name).map_or(FieldType::Text, |def| def.field_type);
            let text = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            parsed.insert(name.clone(), Value::Object(parse_field(field_type, &text)));
        }
    }
    let now = format_millis(now_millis());
    json!({
        "id": "lead_test", "flow_id": null, "source_id": null, "status": "new", "outcome": "success",
        "reason": null, "duplicate_of": null, "cost": null, "created_at": now, "updated_at": now,
        "fields": parsed, "appended": {}
    })
}

/// Sends a sample lead to a destination now and answers with what it replied. The body, if
/// any, is a JSON object of fields; without one, the fields of the flows using the
/// destination get sample values. Nothing is recorded.
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
    let fields = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(fields)) => fields,
            _ => return Err(ApiError::bad_request("invalid_json", "body must be a JSON object of sample fields")),
        }
    };
    let defined: Vec<&FieldDef> = config
        .flows
        .values()
        .filter(|flow| flow.destinations.contains(&id))
        .flat_map(|flow| flow.fields.iter())
        .collect();
    let snapshot = sample_snapshot(&fields, &defined);
    let report = state.delivery.test_destination(destination, &snapshot).await;
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
