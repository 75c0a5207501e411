//! `GET /api/v1/openapi.json`: the API's description.

use axum::Json;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(info(title = "leadrelay", description = "A self-hosted lead event hub"))]
struct ApiDoc;

pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
