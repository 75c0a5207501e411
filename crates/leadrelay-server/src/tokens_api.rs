//! API tokens over REST: create (the value is shown once), list, read one, rename or change
//! its role, revoke.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use leadrelay_domain::ids::TokenId;
use leadrelay_domain::time::now_millis;
use leadrelay_store::{NewToken, Role};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{hash_token, new_token_value};
use crate::{ApiError, ApiResult, AppState};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/tokens", get(list).post(create))
        .route("/api/v1/tokens/{token_id}", get(read).put(replace).delete(remove))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    name: String,
    /// Required: a script that forgets it must not get every power.
    role: Role,
}

/// A token's new name and role, each kept when absent. Its value never changes: a new value
/// is a new token. The `id` and `created_at` that `GET` answers may come back as they were,
/// so that a script can read, edit and put a token.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplaceToken {
    name: Option<String>,
    role: Option<Role>,
    id: Option<String>,
    #[serde(rename = "created_at")]
    _created_at: Option<serde_json::Value>,
}

fn check_name(name: &str) -> ApiResult<()> {
    if name.trim().is_empty() || name.len() > 200 {
        return Err(ApiError::bad_request("invalid_token_name", "name must be 1 to 200 characters"));
    }
    Ok(())
}

/// Create a token; its value is answered once and only its hash is kept.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "access", request_body(content = Object, description = "{\"name\": …, \"role\": \"admin\"|\"operator\"|\"viewer\"|\"source\"} (both required)"),
    responses((status = 201, description = "The token, with its value", body = Object),
              (status = 400, description = "Invalid request", body = crate::openapi::ErrorBody)))]
pub(crate) async fn create(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> ApiResult<Response> {
    let request: CreateToken = serde_json::from_slice(&body).map_err(|error| {
        ApiError::bad_request("invalid_json", format!("body must be {{\"name\": …, \"role\": …}}: {error}"))
    })?;
    check_name(&request.name)?;
    let value = new_token_value();
    let token = NewToken {
        id: TokenId::generate().into_string(),
        name: request.name,
        role: request.role,
        hash: hash_token(&value),
        created_at: now_millis(),
    };
    state.store.create_token(token.clone()).await?;
    let body = json!({"id": token.id, "name": token.name, "role": token.role, "token": value});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "access", responses((status = 200, description = "Tokens, without their values", body = crate::openapi::PageDoc)))]
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> ApiResult<Json<serde_json::Value>> {
    let params = crate::params::Params::parse(query.as_deref(), &["limit", "cursor"])?;
    let tokens = state.store.list_tokens().await?;
    let (items, next_cursor) = params.page_of(tokens.into_iter().map(|token| (token.id.clone(), token)).collect())?;
    Ok(Json(json!({"items": items, "next_cursor": next_cursor})))
}

#[utoipa::path(get, path = "/api/v1/tokens/{token_id}", tag = "access", params(("token_id" = String, Path, description = "`tok_…`")),
    responses((status = 200, description = "The token, without its value", body = Object), (status = 404, description = "No such token", body = crate::openapi::ErrorBody)))]
pub(crate) async fn read(
    State(state): State<Arc<AppState>>,
    Path(token_id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let tokens = state.store.list_tokens().await?;
    let token = tokens.into_iter().find(|token| token.id == token_id);
    let token = token.ok_or_else(|| ApiError::not_found("token_not_found", format!("no token {token_id:?}")))?;
    Ok(Json(json!(token)))
}

/// Rename a token or change its role; its value stays as it is.
#[utoipa::path(put, path = "/api/v1/tokens/{token_id}", tag = "access", params(("token_id" = String, Path, description = "`tok_…`")),
    request_body(content = Object, description = "{\"name\": …, \"role\": \"operator\"} (each is kept when absent; `id` and `created_at` as read are accepted and cannot change)"),
    responses((status = 200, description = "The token, without its value", body = Object),
              (status = 400, description = "Invalid request", body = crate::openapi::ErrorBody),
              (status = 404, description = "No such token", body = crate::openapi::ErrorBody),
              (status = 409, description = "It is the only admin token and would stop being one", body = crate::openapi::ErrorBody)))]
pub(crate) async fn replace(
    State(state): State<Arc<AppState>>,
    Path(token_id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let request: ReplaceToken = serde_json::from_slice(&body).map_err(|error| {
        ApiError::bad_request("invalid_json", format!("body must be {{\"name\": …, \"role\": …}}: {error}"))
    })?;
    if let Some(id) = request.id.as_deref().filter(|id| *id != token_id) {
        return Err(ApiError::bad_request(
            "id_mismatch",
            format!("the body's id {id:?} is not the token {token_id:?} of the path; a token's id cannot change"),
        ));
    }
    let name = match request.name {
        Some(name) => {
            check_name(&name)?;
            name
        }
        None => {
            let tokens = state.store.list_tokens().await?;
            let current = tokens.into_iter().find(|token| token.id == token_id);
            current.ok_or_else(|| ApiError::not_found("token_not_found", format!("no token {token_id:?}")))?.name
        }
    };
    if !state.store.update_token(&token_id, &name, request.role).await? {
        return Err(ApiError::not_found("token_not_found", format!("no token {token_id:?}")));
    }
    read(State(state), Path(token_id)).await
}

#[utoipa::path(delete, path = "/api/v1/tokens/{token_id}", tag = "access", params(("token_id" = String, Path, description = "`tok_…`")),
    responses((status = 204, description = "Revoked"), (status = 404, description = "No such token", body = crate::openapi::ErrorBody),
              (status = 409, description = "It is the only admin token", body = crate::openapi::ErrorBody)))]
pub(crate) async fn remove(State(state): State<Arc<AppState>>, Path(token_id): Path<String>) -> ApiResult<StatusCode> {
    if state.store.delete_token(&token_id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("token_not_found", format!("no token {token_id:?}")))
    }
}
