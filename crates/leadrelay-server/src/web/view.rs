//! What every page shares: the page shell, status badges, times, JSON blocks and the HTML
//! error page. maud escapes every value it interpolates; nothing here builds HTML from text.

use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use leadrelay_domain::event::RegisterStatus;
use leadrelay_domain::time::Millis;
use maud::{html, Markup, DOCTYPE};

use super::session::Session;
use crate::ApiError;

/// Scripts and styles come only from this server's `/assets/`; no inline script runs, so
/// markup a lead smuggled into a page could not run even if it escaped escaping.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                      connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// An HTML answer with the headers every page carries.
pub(crate) fn page_response(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup.into_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The navigation entries, by path.
const NAV: [(&str, &str); 4] =
    [("/", "Register"), ("/not-integrated", "Not integrated"), ("/overview", "Overview"), ("/config", "Configuration")];

/// A whole page: head, navigation (when signed in), and the body.
pub(crate) fn shell(title: &str, current: &str, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · leadrelay" }
                link rel="stylesheet" href="/assets/app.css";
                script src="/assets/app.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "leadrelay" }
                    @if let Some(session) = session {
                        nav {
                            @for (path, label) in NAV {
                                a.current[path == current] href=(path) { (label) }
                            }
                        }
                        form.sign-out method="post" action="/sign-out" {
                            (session.csrf_field())
                            span.who { (session.name) }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A register status as a coloured badge.
pub(crate) fn status_badge(status: RegisterStatus) -> Markup {
    let label = match status {
        RegisterStatus::New => "New",
        RegisterStatus::Success => "Success",
        RegisterStatus::Skip => "Skip",
        RegisterStatus::Error => "Error",
    };
    html! { span class={"badge status-" (status.as_str())} data-status=(status.as_str()) { (label) } }
}

/// An event's outcome (`success`, `failure`, `error`) as a badge; nothing when it has none.
pub(crate) fn outcome_badge(outcome: Option<&str>) -> Markup {
    html! {
        @if let Some(outcome) = outcome {
            span class={"badge outcome-" (css_word(outcome))} { (outcome) }
        }
    }
}

/// A word safe to use in a class name: letters, digits and dashes only.
pub(crate) fn css_word(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect()
}

/// A time as people read it, in UTC to the second, with the exact ISO time on hover.
pub(crate) fn time(millis: Millis) -> Markup {
    shown_time(millis, 19)
}

/// A time to the millisecond, for steps that follow each other closely.
pub(crate) fn precise_time(millis: Millis) -> Markup {
    shown_time(millis, 23)
}

/// The first `length` characters of the ISO time, with a space for the `T`.
fn shown_time(millis: Millis, length: usize) -> Markup {
    let exact = leadrelay_domain::time::format_millis(millis);
    let shown = exact.get(..length).map(|text| text.replace('T', " ")).unwrap_or_else(|| exact.clone());
    html! { time datetime=(exact) title=(exact) { (shown) } }
}

/// A duration as people read it: `850 ms`, `12.4 s`, `3 min 5 s`, `2 h 10 min`, `3 d 4 h`.
pub(crate) fn duration(millis: i64) -> String {
    let millis = millis.max(0);
    match millis {
        0..1_000 => format!("{millis} ms"),
        1_000..60_000 => format!("{:.1} s", millis as f64 / 1000.0),
        60_000..3_600_000 => format!("{} min {} s", millis / 60_000, millis % 60_000 / 1000),
        3_600_000..86_400_000 => format!("{} h {} min", millis / 3_600_000, millis % 3_600_000 / 60_000),
        _ => format!("{} d {} h", millis / 86_400_000, millis % 86_400_000 / 3_600_000),
    }
}

/// A JSON text, pretty-printed, in a `<pre>`; text that is not JSON is shown as it is.
pub(crate) fn json_block(text: &str) -> Markup {
    let pretty = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|value| serde_json::to_string_pretty(&value).ok())
        .unwrap_or_else(|| text.to_owned());
    html! { pre.json { (pretty) } }
}

/// A JSON value, pretty-printed, in a `<pre>`.
pub(crate) fn json_value(value: &serde_json::Value) -> Markup {
    html! { pre.json { (serde_json::to_string_pretty(value).unwrap_or_default()) } }
}

/// An error a page answers with, shown as a page.
#[derive(Debug)]
pub(crate) struct WebError {
    pub status: StatusCode,
    pub message: String,
}

impl WebError {
    pub fn not_found(message: impl Into<String>) -> Self {
        Self { status: StatusCode::NOT_FOUND, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into() }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self { status: StatusCode::FORBIDDEN, message: message.into() }
    }
}

impl From<ApiError> for WebError {
    fn from(error: ApiError) -> Self {
        Self { status: error.status(), message: error.public_message() }
    }
}

impl From<leadrelay_store::StoreError> for WebError {
    fn from(error: leadrelay_store::StoreError) -> Self {
        ApiError::from(error).into()
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = html! {
            section.error-page {
                h1 { (self.status.as_u16()) " · " (title) }
                p.error { (self.message) }
                p { a href="/" { "Back to the register" } }
            }
        };
        page_response(self.status, shell(title, "", None, body))
    }
}

pub(crate) type WebResult<T> = Result<T, WebError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(12_400), "12.4 s");
        assert_eq!(duration(185_000), "3 min 5 s");
        assert_eq!(duration(7_800_000), "2 h 10 min");
        assert_eq!(duration(-5), "0 ms");
    }

    #[test]
    fn values_are_escaped() {
        let markup = json_block(r#"{"name":"<script>alert(1)</script>"}"#).into_string();
        assert!(!markup.contains("<script>"), "{markup}");
        assert!(markup.contains("&lt;script&gt;"), "{markup}");
        assert_eq!(css_word("a b<c"), "a-b-c");
    }
}
