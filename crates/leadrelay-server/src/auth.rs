//! Access: bearer tokens, stored only as SHA-256 hashes and compared in constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use leadrelay_store::Role;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{ApiError, AppState};

/// The SHA-256 of a token's text; the only form in which tokens are stored.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new random token: `lr_` + 32 random bytes in URL-safe base64.
pub fn new_token_value() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("lr_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Who made an authenticated request: the name of the token used.
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Caller {
    /// Whether the caller may see secrets (keys, passwords, signing secrets): admins only.
    pub fn sees_secrets(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether the caller may see lead values (personal data): admins and operators.
    pub fn sees_pii(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Operator)
    }
}

/// Reading the configuration: operators and viewers may, with its secrets masked.
fn reads_config(method: &axum::http::Method, path: &str) -> bool {
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    matches!(*method, axum::http::Method::GET | axum::http::Method::HEAD)
        && (path == "/api/v1/config"
            || ["/api/v1/sources", "/api/v1/destinations"].into_iter().any(under)
            || path == "/api/v1/flows"
            || (path.starts_with("/api/v1/flows/") && path.matches('/').count() == 4))
}

pub async fn require_admin(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = request.headers().get(AUTHORIZATION).and_then(|value| value.to_str().ok());
    // The scheme name is case-insensitive (RFC 9110 §11.1).
    let token = header
        .and_then(|value| value.split_once(' '))
        .and_then(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer").then_some(token));
    let Some(token) = token else {
        return Err(ApiError::Unauthorized("missing bearer token: send Authorization: Bearer <token>"));
    };
    let hash = hash_token(token.trim());
    let record = state.store.find_token(&hash).await?;
    let Some(record) = record.filter(|record| bool::from(record.hash.ct_eq(&hash))) else {
        return Err(ApiError::Unauthorized("invalid token"));
    };
    let (method, path) = (request.method(), request.uri().path());
    let refusal = match record.role {
        Role::Admin => None,
        Role::Operator => (!operator_may(method, path) && !reads_config(method, path)).then_some(
            "this endpoint needs an admin token (operators read leads, events, the register and the \
             configuration, and resend)",
        ),
        Role::Viewer => (!viewer_may(method, path) && !reads_config(method, path)).then_some(
            "viewer tokens read the register, the not-integrated collection, jobs and the configuration; \
             leads, events and exports hold personal data and need an operator or admin token",
        ),
        Role::Source => Some("a source token only submits leads; this endpoint needs an admin or operator token"),
    };
    if let Some(refusal) = refusal {
        return Err(ApiError::Forbidden(refusal));
    }
    request.extensions_mut().insert(Caller { name: record.name, role: record.role });
    Ok(next.run(request).await)
}

/// What a viewer token may read: transfers and jobs, which carry no submitted field. Leads,
/// events and exports carry personal data, which viewers may not see unmasked (SPEC 8).
fn viewer_may(method: &axum::http::Method, path: &str) -> bool {
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    matches!(*method, axum::http::Method::GET | axum::http::Method::HEAD)
        && ["/api/v1/register", "/api/v1/not-integrated", "/api/v1/jobs"].into_iter().any(under)
}

/// What an operator token may do (SPEC 8: read, resend): read leads, events, the register, the
/// not-integrated collection, jobs and exports, and resend transfers. Configuration (which holds
/// destinations' secrets) and tokens stay with admins.
fn operator_may(method: &axum::http::Method, path: &str) -> bool {
    const READABLE: [&str; 7] = [
        "/api/v1/events",
        "/api/v1/leads",
        "/api/v1/register",
        "/api/v1/not-integrated",
        "/api/v1/jobs",
        "/api/v1/export",
        "/api/v1/flows/",
    ];
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{}/", prefix.trim_end_matches('/')));
    match *method {
        axum::http::Method::GET | axum::http::Method::HEAD => READABLE.iter().any(|prefix| {
            // Of a flow, only its events: the flow itself is configuration.
            if *prefix == "/api/v1/flows/" {
                path.starts_with(prefix) && path.ends_with("/events")
            } else {
                under(prefix)
            }
        }),
        axum::http::Method::POST => {
            path == "/api/v1/register/resend" || (under("/api/v1/register") && path.ends_with("/resend"))
        }
        _ => false,
    }
}
