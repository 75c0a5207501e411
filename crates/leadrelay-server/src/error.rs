//! The HTTP layer's one error type: each variant answers one status with
//! `{"error": {"code", "message"}}`; internal errors are logged and answered opaquely.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use leadrelay_domain::config::{ChangeError, ConfigError};
use leadrelay_store::{ConfigWriteError, StoreError};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{0}")]
    InvalidConfig(ConfigError),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body did not arrive within {seconds} s")]
    RequestTimeout { seconds: u64 },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest { code, message: message.into() }
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::NotFound { code, message: message.into() }
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status_and_code().0
    }

    /// What a person may be shown: internal details are logged, not shown.
    pub(crate) fn public_message(&self) -> String {
        match self {
            ApiError::Internal(detail) => {
                tracing::error!(detail, "internal error");
                "Something went wrong inside leadrelay; the details are in the server's log.".to_owned()
            }
            ApiError::Unavailable(detail) => {
                tracing::error!(detail, "storage unavailable");
                "The store did not answer; nothing was changed. Try again in a moment.".to_owned()
            }
            other => other.to_string(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::InvalidConfig(_) => (StatusCode::BAD_REQUEST, "invalid_config"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound { code, .. } => (StatusCode::NOT_FOUND, code),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::RequestTimeout { .. } => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = match &self {
            ApiError::Internal(detail) => {
                let request_id = ulid::Ulid::new().to_string().to_ascii_lowercase();
                tracing::error!(%request_id, detail, "internal error");
                json!({"error": {"code": code, "message": format!("internal error (request {request_id})")}})
            }
            ApiError::Unavailable(detail) => {
                tracing::error!(detail, "storage unavailable");
                json!({"error": {"code": code, "message": "the store is unavailable; nothing was changed, retry later"}})
            }
            ApiError::InvalidConfig(error) => {
                json!({"error": {"code": code, "message": error.to_string(), "details": error.problems}})
            }
            other => json!({"error": {"code": code, "message": other.to_string()}}),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("5"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(detail) => ApiError::Unavailable(detail),
            StoreError::Corrupt(detail) => ApiError::Internal(detail),
            StoreError::Conflict(detail) => ApiError::Conflict(detail),
        }
    }
}

impl From<ConfigWriteError> for ApiError {
    fn from(error: ConfigWriteError) -> Self {
        match error {
            ConfigWriteError::Store(error) => error.into(),
            ConfigWriteError::Change(ChangeError::Invalid(error)) => ApiError::InvalidConfig(error),
            ConfigWriteError::Change(error @ ChangeError::NotFound { .. }) => {
                ApiError::not_found("not_found", error.to_string())
            }
            ConfigWriteError::Change(error) => ApiError::Conflict(error.to_string()),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Gives every error answer the one error shape, including those that axum's extractors and
/// router make themselves in plain text (a body over the limit, a bad path, a wrong method).
pub async fn json_errors(response: axum::response::Response) -> axum::response::Response {
    let status = response.status();
    let answered = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json") || value.starts_with("text/html"));
    if !(status.is_client_error() || status.is_server_error()) || answered {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = match text.trim() {
        "" => status.canonical_reason().unwrap_or("error").to_lowercase(),
        text => text.to_owned(),
    };
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable_entity",
        _ if status.is_client_error() => "bad_request",
        _ => "internal_error",
    };
    let body = serde_json::to_vec(&json!({"error": {"code": code, "message": message}})).unwrap_or_default();
    parts.headers.insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"));
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    axum::response::Response::from_parts(parts, axum::body::Body::from(body))
}
