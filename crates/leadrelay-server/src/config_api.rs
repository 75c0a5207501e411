//! Configuration over REST: CRUD of flows, sources and destinations, and the whole
//! declarative document (`GET`/`POST /api/v1/config`), validated by the same code as `apply`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use leadrelay_domain::config::{
    parse_json, parse_yaml, ConfigChange, ConfigDocument, ConfigKind, ConfigObject, WriteMode,
};
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::params::Params;
use crate::{ApiError, ApiResult, AppState};

/// The REST collections of configuration objects.
pub const COLLECTIONS: [(&str, ConfigKind); 3] =
    [("flows", ConfigKind::Flow), ("sources", ConfigKind::Source), ("destinations", ConfigKind::Destination)];

pub fn routes() -> Router<Arc<AppState>> {
    let mut router = Router::new().route("/api/v1/config", get(export_config).post(apply_config));
    for (collection, kind) in COLLECTIONS {
        router = router
            .route(
                &format!("/api/v1/{collection}"),
                get(move |state, caller, query| list(state, caller, query, kind))
                    .post(move |state, body| create(state, kind, body)),
            )
            .route(
                &format!("/api/v1/{collection}/{{id}}"),
                get(move |state, caller, path| fetch(state, caller, kind, path))
                    .put(move |state, path, body| replace(state, kind, path, body))
                    .delete(move |state, path| remove(state, kind, path)),
            );
    }
    router
}

fn parse_object(kind: ConfigKind, body: &[u8]) -> ApiResult<ConfigObject> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|error| ApiError::bad_request("invalid_json", format!("body is not valid JSON: {error}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("invalid_json", format!("body must be a JSON object describing a {kind}")));
    }
    ConfigObject::parse(kind, value).map_err(ApiError::InvalidConfig)
}

/// An object as the caller may read it: whole for admins, its secrets masked for others.
fn shown(object: &ConfigObject, caller: &Caller) -> Value {
    if caller.sees_secrets() {
        object.to_json()
    } else {
        object.redacted().to_json()
    }
}

async fn list(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    kind: ConfigKind,
) -> ApiResult<Json<Value>> {
    let params = Params::parse(query.as_deref(), &["limit", "cursor"])?;
    let config = state.config_since(tokio::time::Instant::now()).await?;
    let objects = config.list(kind).iter().map(|object| (object.id().to_owned(), shown(object, &caller))).collect();
    let (items, next_cursor) = params.page_of(objects)?;
    Ok(Json(json!({ "items": items, "next_cursor": next_cursor })))
}

async fn fetch(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    kind: ConfigKind,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    state
        .config_since(tokio::time::Instant::now())
        .await?
        .get(kind, &id)
        .map(|object| Json(shown(&object, &caller)))
        .ok_or_else(|| ApiError::not_found("not_found", format!("{kind} {id:?} not found")))
}

/// Writes one object (its id already filled in) and answers it as stored.
async fn write(state: &AppState, mut object: ConfigObject, mode: WriteMode) -> ApiResult<Value> {
    object.fill_defaults(true);
    let kind = object.kind();
    let id = object.id().to_owned();
    let config = state.change_config(ConfigChange::Put { object, mode }).await?;
    Ok(config.get(kind, &id).map(|object| object.to_json()).unwrap_or(Value::Null))
}

async fn create(State(state): State<Arc<AppState>>, kind: ConfigKind, body: Bytes) -> ApiResult<Response> {
    let mut object = parse_object(kind, &body)?;
    // Generate the id here so that the answer names the object that was stored.
    object.fill_defaults(true);
    let stored = write(&state, object, WriteMode::Create).await?;
    Ok((StatusCode::CREATED, Json(stored)).into_response())
}

async fn replace(
    State(state): State<Arc<AppState>>,
    kind: ConfigKind,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let mut value: Value = serde_json::from_slice(&body)
        .map_err(|error| ApiError::bad_request("invalid_json", format!("body is not valid JSON: {error}")))?;
    let Some(map) = value.as_object_mut() else {
        return Err(ApiError::bad_request("invalid_json", format!("body must be a JSON object describing a {kind}")));
    };
    match map.get("id") {
        None | Some(Value::Null) => {
            map.insert("id".to_owned(), Value::String(id.clone()));
        }
        Some(Value::String(given)) if *given == id => {}
        Some(_) => {
            return Err(ApiError::bad_request("id_mismatch", format!("the body's id differs from {id:?} in the path")))
        }
    }
    let object = ConfigObject::parse(kind, value).map_err(ApiError::InvalidConfig)?;
    Ok(Json(write(&state, object, WriteMode::Replace).await?))
}

async fn remove(State(state): State<Arc<AppState>>, kind: ConfigKind, Path(id): Path<String>) -> ApiResult<StatusCode> {
    state.change_config(ConfigChange::Delete { kind, id }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The whole configuration as one document.
#[utoipa::path(get, path = "/api/v1/config", tag = "configuration",
    params(("format" = Option<String>, Query, description = "`json` (default) or `yaml`")),
    responses((status = 200, description = "The configuration document", body = Object)))]
pub(crate) async fn export_config(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let params = Params::parse(query.as_deref(), &["format"])?;
    let mut document = state.config_since(tokio::time::Instant::now()).await?.to_document();
    if !caller.sees_secrets() {
        document = document.redacted();
    }
    match params.text("format").as_deref() {
        None | Some("json") => Ok(Json(document).into_response()),
        Some("yaml") => {
            let text = leadrelay_domain::config::to_yaml(&document).map_err(ApiError::Internal)?;
            Ok(([(CONTENT_TYPE, HeaderValue::from_static("application/yaml"))], text).into_response())
        }
        Some(_) => Err(ApiError::bad_request("invalid_parameter", "format: must be json or yaml")),
    }
}

/// Applies a whole document (YAML or JSON) in one transaction.
#[utoipa::path(post, path = "/api/v1/config", tag = "configuration",
    params(("prune" = Option<bool>, Query, description = "`true` also deletes every object the document does not name")),
    request_body(content = Object, description = "A configuration document, YAML or JSON", content_type = "application/yaml"),
    responses((status = 200, description = "Applied; `changed` counts the objects that changed", body = Object),
              (status = 400, description = "Invalid; nothing was applied", body = crate::openapi::ErrorBody),
              (status = 409, description = "A deleted object is still in use; nothing was applied", body = crate::openapi::ErrorBody)))]
pub(crate) async fn apply_config(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let text =
        std::str::from_utf8(&body).map_err(|_| ApiError::bad_request("invalid_body", "body must be UTF-8 text"))?;
    let content_type = headers.get(CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    let document: ConfigDocument = if content_type.contains("json") { parse_json(text) } else { parse_yaml(text) }
        .map_err(ApiError::InvalidConfig)?;
    let params = Params::parse(query.as_deref(), &["prune"])?;
    let prune = match params.text("prune").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::bad_request("invalid_parameter", "prune: must be true or false")),
    };
    let before = state.config();
    let change = if prune { ConfigChange::Sync(document) } else { ConfigChange::Apply(document) };
    let config = state.change_config(change).await?;
    let changed = config.changed_since(&before);
    Ok(Json(json!({ "changed": changed, "config": config.to_document() })))
}
