//! The configuration page: flows, sources and destinations at a glance, and the whole
//! configuration as YAML, editable and checked by the same code as `leadrelay apply`.

use std::sync::Arc;

use axum::extract::{Form, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use leadrelay_domain::config::{parse_yaml, ConfigChange, ConfigDocument};
use maud::{html, Markup};
use serde::Deserialize;

use super::session::Session;
use super::view::{page_response, shell, WebResult};
use crate::{ApiError, AppState};

/// A value's serde name (`web_form`, `background`), for enums shown in tables.
fn word(value: impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

fn tables(state: &AppState) -> Markup {
    let config = state.config();
    html! {
        h2 { "Flows" }
        table.config #flows {
            thead { tr { th { "Id" } th { "Name" } th { "Fields" } th { "Filters" } th { "Destinations" } } }
            tbody {
                @for flow in config.flows.values() {
                    tr {
                        td { code { (flow.id) } } td { (flow.name) }
                        td { (flow.fields.iter().map(|field| field.name.as_str()).collect::<Vec<_>>().join(", ")) }
                        td.number { (flow.filters.len()) }
                        td { (flow.destinations.join(", ")) }
                    }
                }
            }
        }
        h2 { "Sources" }
        table.config #sources {
            thead { tr { th { "Id" } th { "Name" } th { "Flow" } th { "Kind" } th { "Key" } th { "Price" } } }
            tbody {
                @for source in config.sources.values() {
                    tr {
                        td { code { (source.id) } } td { (source.name) } td { (source.flow_id) } td { (word(source.kind)) }
                        td { @if source.key.is_some() { "required" } @else { "none" } }
                        td.number { (source.price.map(|price| format!("{price:.2}")).unwrap_or_default()) }
                    }
                }
            }
        }
        h2 { "Destinations" }
        table.config #destinations {
            thead { tr { th { "Id" } th { "Name" } th { "Kind" } th { "URL" } th { "Mode" } th { "Enabled" } } }
            tbody {
                @for destination in config.destinations.values() {
                    tr.disabled[!destination.enabled] {
                        td { code { (destination.id) } } td { (destination.name) } td { (word(destination.kind)) }
                        td.url { (destination.url.as_deref().unwrap_or("")) }
                        td { (word(destination.mode)) }
                        td { @if destination.enabled { "yes" } @else { span.badge.status-error { "disabled" } } }
                    }
                }
            }
        }
    }
}

fn page(state: &AppState, session: &Session, text: &str, notice: Option<Markup>, status: StatusCode) -> Response {
    let body = html! {
        h1 { "Configuration" }
        @if let Some(notice) = notice { (notice) }
        (tables(state))
        h2 #edit { "Edit" }
        p.hint {
            "The whole configuration as YAML. Applying it is one transaction, checked exactly as "
            code { "leadrelay apply" } " checks a file: nothing changes unless all of it is valid."
        }
        form.editor method="post" action="/config" {
            (session.csrf_field())
            textarea name="yaml" rows="30" spellcheck="false" aria-label="Configuration (YAML)" { (text) }
            button type="submit" { "Apply" }
        }
    };
    page_response(status, shell("Configuration", "/config", Some(session), body))
}

pub(crate) async fn show(
    State(state): State<Arc<AppState>>,
    session: Session,
    RawQuery(raw): RawQuery,
) -> WebResult<Response> {
    let document = state.config().to_document();
    let text = leadrelay_domain::config::to_yaml(&document).map_err(ApiError::Internal)?;
    let applied = raw.as_deref().and_then(|query| query.strip_prefix("applied=")).and_then(|n| n.parse::<usize>().ok());
    let notice =
        applied.map(|changed| html! { p.notice role="status" { "Applied: " (changed) " object(s) changed." } });
    Ok(page(&state, &session, &text, notice, StatusCode::OK))
}

#[derive(Deserialize)]
pub(crate) struct ApplyForm {
    csrf: Option<String>,
    yaml: String,
}

pub(crate) async fn apply(
    State(state): State<Arc<AppState>>,
    session: Session,
    Form(form): Form<ApplyForm>,
) -> WebResult<Response> {
    session.check_csrf(form.csrf.as_deref())?;
    let problems = |problems: Vec<String>| {
        html! {
            div.error role="alert" {
                p { "Nothing was applied:" }
                ul { @for problem in &problems { li { (problem) } } }
            }
        }
    };
    let document: ConfigDocument = match parse_yaml(&form.yaml) {
        Ok(document) => document,
        Err(error) => {
            return Ok(page(&state, &session, &form.yaml, Some(problems(error.problems)), StatusCode::BAD_REQUEST))
        }
    };
    let before = state.config();
    match state.change_config(ConfigChange::Apply(document)).await {
        Ok(config) => Ok(Redirect::to(&format!("/config?applied={}", config.changed_since(&before))).into_response()),
        Err(error) => {
            let error = ApiError::from(error);
            let list = match error {
                ApiError::InvalidConfig(error) => error.problems,
                other => vec![other.public_message()],
            };
            Ok(page(&state, &session, &form.yaml, Some(problems(list)), StatusCode::BAD_REQUEST))
        }
    }
}
