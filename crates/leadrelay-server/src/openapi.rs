//! `GET /api/v1/openapi.json`: the API's description, generated from the handlers'
//! annotations and, for the configuration collections, from the same table that routes them.

use axum::Json;
use serde::Serialize;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Required, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::config_api::COLLECTIONS;

/// Every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable machine-readable code, e.g. `invalid_json`, `source_not_found`.
    pub code: String,
    /// A human sentence saying what was wrong.
    pub message: String,
}

/// The answer of a submission.
#[derive(Serialize, ToSchema)]
pub struct SubmitAnswerDoc {
    /// `success` (201) or `failure` (200: recorded but rejected).
    pub outcome: String,
    pub lead_id: String,
    pub reason: Option<String>,
    pub price: Option<f64>,
    /// Outcomes of realtime destinations.
    #[schema(value_type = Vec<Object>)]
    pub deliveries: Vec<serde_json::Value>,
}

/// A page of a list.
#[derive(Serialize, ToSchema)]
pub struct PageDoc {
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<serde_json::Value>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// One event of the log (SPEC 3).
#[derive(Serialize, ToSchema)]
pub struct EventDoc {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub timestamp: String,
    pub lead_id: String,
    pub flow_id: String,
    pub source_id: String,
    pub destination_id: Option<String>,
    pub transfer_id: Option<String>,
    pub status: Option<String>,
    pub outcome: Option<String>,
    pub reason: Option<String>,
    pub duration_ms: Option<i64>,
    pub integration: Option<String>,
    pub response_code: Option<i64>,
    pub price: Option<f64>,
    pub attempt: Option<i64>,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    #[schema(value_type = Object)]
    pub lead: serde_json::Value,
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Adds the CRUD paths of the configuration collections, from the table that routes them.
struct ConfigCollections;

fn json_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(utoipa::openapi::ObjectBuilder::new())).build())
        .build()
}

fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody"))).build(),
        )
        .build()
}

impl Modify for ConfigCollections {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (collection, kind) in COLLECTIONS {
            let body = || {
                RequestBodyBuilder::new()
                    .content(
                        "application/json",
                        ContentBuilder::new().schema(Some(utoipa::openapi::ObjectBuilder::new())).build(),
                    )
                    .required(Some(Required::True))
                    .description(Some(format!("A {kind} as in SPEC 5a; unknown keys are refused by name")))
                    .build()
            };
            let id =
                || ParameterBuilder::new().name("id").parameter_in(ParameterIn::Path).required(Required::True).build();
            let operation = |summary: String| OperationBuilder::new().tag("configuration").summary(Some(summary));
            let query = |name: &str, description: &str| {
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .description(Some(description))
                    .build()
            };
            let list = operation(format!("List {collection}"))
                .parameter(query("limit", "1 to 1000, default 100"))
                .parameter(query("cursor", "The previous page's next_cursor"))
                .response("200", json_response("A page of the collection in its stored order, as {items, next_cursor}"))
                .response("400", error_response("A parameter is invalid; the message names it"))
                .build();
            let create = operation(format!("Create a {kind}"))
                .request_body(Some(body()))
                .response("201", json_response("The stored object, defaults filled in"))
                .response("400", error_response("Invalid object; the message names each problem"))
                .response("409", error_response("The id is taken"))
                .build();
            let get = operation(format!("Get a {kind}"))
                .parameter(id())
                .response("200", json_response("The object"))
                .response("404", error_response("No such object"))
                .build();
            let put = operation(format!("Replace a {kind}"))
                .parameter(id())
                .request_body(Some(body()))
                .response("200", json_response("The stored object"))
                .response("400", error_response("Invalid object"))
                .response("404", error_response("No such object"))
                .build();
            let delete = operation(format!("Delete a {kind}"))
                .parameter(id())
                .response("204", ResponseBuilder::new().description("Deleted").build())
                .response("404", error_response("No such object"))
                .response("409", error_response("Another object refers to it"))
                .build();
            let mut collection_item = PathItem::new(HttpMethod::Get, list);
            collection_item.post = Some(create);
            let mut object_item = PathItem::new(HttpMethod::Get, get);
            object_item.put = Some(put);
            object_item.delete = Some(delete);
            openapi.paths.paths.insert(format!("/api/v1/{collection}"), collection_item);
            openapi.paths.paths.insert(format!("/api/v1/{collection}/{{id}}"), object_item);
        }
    }
}

/// What every operation shares, applied last: a unique `operationId` (two methods of one
/// handler, such as submit's `GET` and `POST`, get one each), the `401` and `403` answers of
/// every operation that needs a token, and submit's bodies as they really are (none for
/// `GET`; JSON or a form for `POST`).
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut taken = std::collections::HashSet::new();
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                ("get", &mut item.get),
                ("put", &mut item.put),
                ("post", &mut item.post),
                ("delete", &mut item.delete),
                ("patch", &mut item.patch),
                ("head", &mut item.head),
            ];
            for (method, operation) in operations {
                let Some(operation) = operation else { continue };
                let derived = || {
                    let words: Vec<&str> = path
                        .split('/')
                        .filter(|part| !part.is_empty() && *part != "api" && *part != "v1")
                        .map(|part| part.trim_matches(|c| c == '{' || c == '}'))
                        .collect();
                    format!("{method}_{}", words.join("_").replace(['-', '.'], "_"))
                };
                let id = match operation.operation_id.take() {
                    Some(id) if !taken.contains(&id) => id,
                    Some(id) => format!("{id}_{method}"),
                    None => derived(),
                };
                taken.insert(id.clone());
                operation.operation_id = Some(id);
                // `None` inherits the document's bearer requirement; public ones say `[]`.
                if operation.security.is_none() {
                    let responses = &mut operation.responses.responses;
                    responses
                        .entry("401".to_owned())
                        .or_insert_with(|| error_response("No token, or a token that is not valid").into());
                    responses
                        .entry("403".to_owned())
                        .or_insert_with(|| error_response("The token's role may not do this").into());
                }
                if path.ends_with("/submit") {
                    if method == "get" {
                        operation.request_body = None;
                    } else if let Some(body) = &mut operation.request_body {
                        let form = ContentBuilder::new().schema(Some(utoipa::openapi::ObjectBuilder::new())).build();
                        body.content.insert("application/x-www-form-urlencoded".to_owned(), form.clone());
                        body.content.insert("multipart/form-data".to_owned(), form);
                    }
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "leadrelay", description = "A self-hosted lead event hub: intake, the event log, the register"),
    paths(
        crate::intake::submit,
        crate::read_api::list_events,
        crate::read_api::get_event,
        crate::read_api::list_flow_events,
        crate::read_api::list_leads,
        crate::read_api::get_lead,
        crate::read_api::lead_timeline,
        crate::read_api::list_register,
        crate::read_api::export,
        crate::delivery_api::not_integrated,
        crate::delivery_api::test_destination,
        crate::delivery_api::resend_one,
        crate::delivery_api::resend_matching,
        crate::delivery_api::get_job,
        crate::config_api::export_config,
        crate::config_api::apply_config,
        crate::tokens_api::create,
        crate::tokens_api::list,
        crate::tokens_api::read,
        crate::tokens_api::replace,
        crate::tokens_api::remove,
        crate::healthz,
        crate::readyz,
        openapi_json,
    ),
    components(schemas(ErrorBody, ErrorDetail, SubmitAnswerDoc, PageDoc, EventDoc)),
    modifiers(&Security, &ConfigCollections, &Conventions),
    security(("bearer" = []))
)]
struct ApiDoc;

/// The OpenAPI document of this server.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations", responses((status = 200, description = "The OpenAPI 3.1 document")))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The lead filter of the events endpoints whose path does not name the lead.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct LeadFilterDoc {
    pub lead_id: Option<String>,
}

/// Filters of the events endpoints (SPEC 5).
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct EventParamsDoc {
    /// An event type string, e.g. `source.accepted`.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Register status: `new`, `success`, `skip`, `error`.
    pub status: Option<String>,
    pub source_id: Option<String>,
    pub destination_id: Option<String>,
    pub flow_id: Option<String>,
    /// ISO 8601 time or a date (`2024-01-15`), inclusive.
    pub start: Option<String>,
    /// ISO 8601 time or a date (a date means its whole day), inclusive.
    pub end: Option<String>,
    /// A rule set (JSON) over event fields and `lead.…` snapshot paths. Each page examines a
    /// bounded number of events, so with `rules` a page may hold fewer items than `limit`, even
    /// none, and still carry a `next_cursor`: follow it until it is null.
    pub rules: Option<String>,
    /// Comma-separated top-level fields to keep.
    pub include: Option<String>,
    /// Comma-separated top-level fields to drop.
    pub exclude: Option<String>,
}

/// Paging of `GET /api/v1/events`.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct EventPageDoc {
    /// 1 to 1000, default 100.
    pub limit: Option<u32>,
    /// `asc` or `desc` (default).
    pub sort: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Paging of a lead's timeline.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct TimelinePageDoc {
    /// 1 to 1000, default 1000.
    pub limit: Option<u32>,
    /// `asc` (default, oldest first) or `desc`.
    pub sort: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// How much of the log `GET /api/v1/export` streams, and in which order.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ExportPageDoc {
    /// At most this many events (a whole number from 1); every matching event when absent.
    pub limit: Option<u64>,
    /// `asc` (default, oldest first) or `desc`.
    pub sort: Option<String>,
    /// Start after this position: a `next_cursor` of `GET /api/v1/events` with the same `sort`.
    pub cursor: Option<String>,
}

/// Filters of `GET /api/v1/register` (SPEC 5).
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct RegisterParamsDoc {
    pub status: Option<String>,
    pub lead_id: Option<String>,
    pub source_id: Option<String>,
    pub destination_id: Option<String>,
    pub flow_id: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub limit: Option<u32>,
    pub sort: Option<String>,
    pub cursor: Option<String>,
}

/// Filters of `GET /api/v1/leads`.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct LeadParamsDoc {
    pub flow_id: Option<String>,
    pub source_id: Option<String>,
    /// `success` or `failure`.
    pub outcome: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub limit: Option<u32>,
    pub sort: Option<String>,
    pub cursor: Option<String>,
}
