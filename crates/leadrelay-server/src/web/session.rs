//! Signing in to the web UI with an API token, and protecting its forms.
//!
//! The session cookie (it ends with the browser session) holds the token itself, `HttpOnly`,
//! `Secure` and `SameSite=Strict`; every
//! request checks it against the stored hash, as the API checks a bearer token, so revoking
//! the token ends its sessions on every node. Every form carries a CSRF token derived from the
//! session's token (a keyed digest another site cannot compute, since it cannot read the
//! cookie), and a request whose `Origin` is another site is refused.

use std::sync::Arc;

use axum::extract::{Form, FromRequestParts, Query, State};
use axum::http::header::{HOST, ORIGIN};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use leadrelay_store::Role;
use maud::{html, Markup};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::view::{page_response, shell, WebError};
use crate::{hash_token, AppState};

pub(crate) const COOKIE: &str = "leadrelay_session";

/// A signed-in person: the name of their token, and the CSRF token of their session.
pub(crate) struct Session {
    pub name: String,
    csrf: String,
}

fn csrf_for(token: &str) -> String {
    hex::encode(Sha256::digest(format!("leadrelay-csrf\0{token}").as_bytes()))
}

impl Session {
    /// The hidden field every form of a signed-in page carries.
    pub fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.csrf); }
    }

    /// Refuses a form whose CSRF token is not this session's.
    pub fn check_csrf(&self, given: Option<&str>) -> Result<(), WebError> {
        match given {
            Some(given) if bool::from(given.as_bytes().ct_eq(self.csrf.as_bytes())) => Ok(()),
            _ => Err(WebError::forbidden(
                "This form is out of date or did not come from leadrelay (its CSRF token does not match). \
                 Reload the page and try again.",
            )),
        }
    }
}

/// Whether a request that changes something came from a page of this server: browsers send
/// `Origin` with every such request, and it must name this host.
fn same_origin(parts: &Parts) -> bool {
    let Some(origin) = parts.headers.get(ORIGIN).and_then(|value| value.to_str().ok()) else {
        return true;
    };
    let host = parts.headers.get(HOST).and_then(|value| value.to_str().ok()).unwrap_or("");
    let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or(origin);
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

/// Where to go after signing in or sending a form: only a path of this site.
pub(crate) fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(path) if path.starts_with('/') && !path.starts_with("//") && !path.contains('\\') => path.to_owned(),
        _ => "/".to_owned(),
    }
}

impl FromRequestParts<Arc<AppState>> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET && parts.method != Method::HEAD && !same_origin(parts) {
            return Err(WebError::forbidden("This request came from another site and was refused.").into_response());
        }
        let jar = CookieJar::from_headers(&parts.headers);
        let to_sign_in = || {
            let next = parts.uri.path_and_query().map(|path| path.as_str()).unwrap_or("/");
            let target = format!("/sign-in?{}", serde_urlencoded::to_string([("next", next)]).unwrap_or_default());
            (jar.clone().remove(Cookie::build(COOKIE).path("/")), Redirect::to(&target)).into_response()
        };
        let Some(token) = jar.get(COOKIE).map(|cookie| cookie.value().to_owned()) else {
            return Err(to_sign_in());
        };
        let hash = hash_token(&token);
        match state.store.find_token(&hash).await {
            Ok(Some(record)) if bool::from(record.hash.ct_eq(&hash)) && record.role == Role::Admin => {
                Ok(Session { name: record.name, csrf: csrf_for(&token) })
            }
            Ok(_) => Err(to_sign_in()),
            Err(error) => Err(WebError::from(error).into_response()),
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct NextQuery {
    next: Option<String>,
}

fn sign_in_page(status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let body = html! {
        section.sign-in {
            h1 { "Sign in" }
            p { "Paste an admin API token (" code { "leadrelay token create" } " makes one)." }
            @if let Some(error) = error {
                p.error role="alert" { (error) }
            }
            form method="post" action="/sign-in" {
                input type="hidden" name="next" value=(next);
                label for="token" { "API token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                button type="submit" { "Sign in" }
            }
        }
    };
    page_response(status, shell("Sign in", "", None, body))
}

pub(crate) async fn show_sign_in(Query(query): Query<NextQuery>) -> Response {
    sign_in_page(StatusCode::OK, &safe_next(query.next.as_deref()), None)
}

#[derive(Deserialize)]
pub(crate) struct SignInForm {
    token: String,
    next: Option<String>,
}

pub(crate) async fn sign_in(
    State(state): State<Arc<AppState>>,
    jar: CookieJar,
    parts: Parts,
    Form(form): Form<SignInForm>,
) -> Response {
    let next = safe_next(form.next.as_deref());
    if !same_origin(&parts) {
        return WebError::forbidden("This request came from another site and was refused.").into_response();
    }
    let token = form.token.trim();
    let hash = hash_token(token);
    let record = match state.store.find_token(&hash).await {
        Ok(record) => record.filter(|record| bool::from(record.hash.ct_eq(&hash))),
        Err(error) => return WebError::from(error).into_response(),
    };
    match record {
        None => sign_in_page(StatusCode::UNAUTHORIZED, &next, Some("That token is not valid.")),
        Some(record) if record.role != Role::Admin => sign_in_page(
            StatusCode::FORBIDDEN,
            &next,
            Some(&format!("A {} token cannot sign in: the web UI needs an admin token.", record.role.as_str())),
        ),
        Some(_) => {
            let cookie = Cookie::build((COOKIE, token.to_owned()))
                .path("/")
                .http_only(true)
                .secure(true)
                .same_site(SameSite::Strict)
                .build();
            (jar.add(cookie), Redirect::to(&next)).into_response()
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    csrf: Option<String>,
}

pub(crate) async fn sign_out(session: Session, jar: CookieJar, Form(form): Form<CsrfForm>) -> Response {
    if let Err(error) = session.check_csrf(form.csrf.as_deref()) {
        return error.into_response();
    }
    (jar.remove(Cookie::build(COOKIE).path("/")), Redirect::to("/sign-in")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_of_this_site_are_followed() {
        assert_eq!(safe_next(Some("/leads/lead_1?x=1")), "/leads/lead_1?x=1");
        assert_eq!(safe_next(Some("//evil.example")), "/");
        assert_eq!(safe_next(Some("https://evil.example")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn csrf_tokens_differ_per_session() {
        assert_ne!(csrf_for("a"), csrf_for("b"));
        let session = Session { name: "n".into(), csrf: csrf_for("a") };
        assert!(session.check_csrf(Some(&csrf_for("a"))).is_ok());
        assert!(session.check_csrf(Some(&csrf_for("b"))).is_err());
        assert!(session.check_csrf(None).is_err());
    }
}
