//! A lead's page: every event in order, with the time since the previous step and since the
//! first, its outcome and reason, the snapshot and what changed in it, and the request and
//! response of each delivery attempt.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use leadrelay_store::{events_page, EventQuery, SortOrder, StoredEvent, StoredLead};
use maud::{html, Markup};
use serde_json::Value;

use super::register::event_json;
use super::session::Session;
use super::view::{
    css_word, duration, json_block, json_value, outcome_badge, page_response, precise_time, shell, time, WebError,
    WebResult,
};
use crate::AppState;

/// Most events a lead page shows; a lead with more shows its first ones and says so.
const MOST_EVENTS: usize = 5_000;

/// A lead as it is now and its events, oldest first; not found when there is no such lead.
pub(crate) async fn timeline(state: &AppState, lead_id: &str) -> WebResult<(StoredLead, Vec<StoredEvent>)> {
    let Some(lead) = state.store.lead(lead_id).await? else {
        return Err(WebError::not_found(format!("There is no lead {lead_id}.")));
    };
    let mut query =
        EventQuery { lead_id: Some(lead_id.to_owned()), limit: 1000, sort: SortOrder::Asc, ..Default::default() };
    let mut events = Vec::new();
    loop {
        let page = events_page(state.store.as_ref(), &query, usize::MAX).await?;
        events.extend(page.items);
        match page.next_cursor {
            Some(cursor) if events.len() < MOST_EVENTS => query.cursor = Some(cursor),
            _ => break,
        }
    }
    Ok((lead, events))
}

/// Every leaf of a JSON value by its dotted path, as text.
fn flatten(value: &Value, path: &mut String, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                let length = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                flatten(child, path, out);
                path.truncate(length);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (index, child) in items.iter().enumerate() {
                let length = path.len();
                path.push_str(&format!("[{index}]"));
                flatten(child, path, out);
                path.truncate(length);
            }
        }
        leaf => {
            out.insert(path.clone(), leaf.to_string());
        }
    }
}

/// One changed path of a snapshot: its value before and after (`None` when absent).
type Change = (String, Option<String>, Option<String>);

fn changes(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<Change> {
    let mut changed: Vec<Change> = after
        .iter()
        .filter(|(path, value)| before.get(*path) != Some(value))
        .map(|(path, value)| (path.clone(), before.get(path).cloned(), Some(value.clone())))
        .collect();
    changed.extend(
        before
            .iter()
            .filter(|(path, _)| !after.contains_key(*path))
            .map(|(path, value)| (path.clone(), Some(value.clone()), None)),
    );
    changed.sort();
    changed
}

fn changes_table(changes: &[Change]) -> Markup {
    html! {
        @if changes.is_empty() {
            p.empty { "The lead did not change at this step." }
        } @else {
            table.changes {
                thead { tr { th { "Field" } th { "Before" } th { "After" } } }
                tbody {
                    @for (path, before, after) in changes {
                        tr {
                            td { code { (path) } }
                            td.before { (before.as_deref().unwrap_or("—")) }
                            td.after { (after.as_deref().unwrap_or("—")) }
                        }
                    }
                }
            }
        }
    }
}

/// The request and response a delivery or enhancement attempt recorded, when it did.
fn exchange(data: &Value) -> Markup {
    let request = data.get("request").filter(|value| !value.is_null());
    let response = data.get("response").filter(|value| !value.is_null());
    html! {
        @if let Some(request) = request {
            details.request open {
                summary { "Request" }
                (json_value(request))
            }
        }
        @if let Some(response) = response {
            details.response open {
                summary { "Response" }
                (json_value(response))
            }
        }
    }
}

pub(crate) async fn lead_page(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path(lead_id): Path<String>,
) -> WebResult<Response> {
    let (lead, events) = timeline(&state, &lead_id).await?;
    let first = events.first().map(|event| event.timestamp).unwrap_or(lead.created_at);
    let mut previous_time = first;
    let mut previous_snapshot = BTreeMap::new();
    let mut items = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        let mut snapshot = BTreeMap::new();
        if let Ok(value) = serde_json::from_str::<Value>(&event.lead) {
            flatten(&value, &mut String::new(), &mut snapshot);
        }
        let changed = (index > 0).then(|| changes(&previous_snapshot, &snapshot));
        let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
        let step = event.timestamp - previous_time;
        previous_time = event.timestamp;
        previous_snapshot = snapshot;
        items.push(html! {
            li.event data-type=(event.event_type) data-outcome=[event.outcome.as_deref()] {
                div.line {
                    span.time { (precise_time(event.timestamp)) }
                    span.delay title="Since the previous step" { "+" (duration(step)) }
                    span.total title="Since the lead arrived" { "total " (duration(event.timestamp - first)) }
                    span class={"type type-" (css_word(&event.event_type))} { (event.event_type) }
                    span.destination { (event.destination_id.as_deref().unwrap_or("")) }
                    (outcome_badge(event.outcome.as_deref()))
                    @if let Some(code) = event.response_code { span.code title="Response status" { (code) } }
                    @if let Some(ms) = event.duration_ms { span.took title="Duration of the call" { (duration(ms)) } }
                    @if let Some(attempt) = event.attempt { span.attempt { "attempt " (attempt) } }
                }
                @if let Some(reason) = &event.reason {
                    p.reason { (reason) }
                }
                (exchange(&data))
                details.changes-block {
                    summary { "Changes" }
                    @match &changed {
                        Some(changed) => (changes_table(changed)),
                        None => p.empty { "The lead as it first arrived; see the snapshot." },
                    }
                }
                details.snapshot { summary { "Snapshot" } (json_block(&event.lead)) }
                details.event-json { summary { "Event JSON" } (json_block(&event_json(event))) }
            }
        });
    }
    let last = events.last();
    let body = html! {
        h1 { "Lead " code { (lead_id) } }
        dl.facts {
            @if let Some(event) = events.first() {
                dt { "Flow" } dd { (event.flow_id) }
                dt { "Source" } dd { (event.source_id) }
            }
            dt { "Arrived" } dd { (time(first)) }
            @if let Some(last) = last {
                dt { "Last event" } dd { (last.event_type) " · " (time(last.timestamp)) " (" (duration(last.timestamp - first)) " after arrival)" }
            }
            dt { "Events" } dd { (events.len()) }
        }
        @if events.len() >= MOST_EVENTS {
            p.hint { "This lead has more events than a page shows; the API lists them all: " code { "GET /api/v1/leads/" (lead_id) "/events" } }
        }
        p { a href={"/?lead_id=" (lead_id)} { "This lead's transfers in the register" } }
        details.current { summary { "The lead now (JSON)" } (json_block(&lead.snapshot)) }
        h2 { "Timeline" }
        ol.timeline { @for item in &items { (item) } }
    };
    Ok(page_response(StatusCode::OK, shell(&format!("Lead {lead_id}"), "/", Some(&session), body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_name_added_changed_and_removed_paths() {
        let flat = |value: Value| {
            let mut out = BTreeMap::new();
            flatten(&value, &mut String::new(), &mut out);
            out
        };
        let before = flat(serde_json::json!({"email": {"raw": "a@x.com"}, "state": "TX", "tags": ["a"]}));
        let after = flat(serde_json::json!({"email": {"raw": "a@x.com", "valid": true}, "tags": ["b"]}));
        let found = changes(&before, &after);
        assert_eq!(
            found,
            vec![
                ("email.valid".into(), None, Some("true".into())),
                ("state".into(), Some("\"TX\"".into()), None),
                ("tags[0]".into(), Some("\"a\"".into()), Some("\"b\"".into())),
            ]
        );
    }
}
