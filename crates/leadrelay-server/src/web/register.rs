//! The register (`/`), one transfer's JSON, resends (one, or every match as a job with a
//! progress page) and the not-integrated collection.

use std::sync::Arc;

use axum::extract::{Form, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use leadrelay_domain::event::RegisterStatus;
use leadrelay_store::{CursorList, Page, RegisterQuery, TransferRow, EVENT_FIELDS};
use maud::{html, Markup};
use serde_json::Value;

use super::session::Session;
use super::view::{json_block, page_response, shell, status_badge, time, WebError, WebResult};
use crate::params::{register_query, Params, REGISTER_PARAMS};
use crate::AppState;

/// The filters a register URL may carry, in the order the filter bar shows them.
const FILTERS: [&str; 7] = ["status", "source_id", "destination_id", "flow_id", "lead_id", "start", "end"];

/// Rows per page of the register.
const PAGE_ROWS: usize = 50;

/// A register URL's filters, parsed, and the text they came from (to build links with).
pub(crate) struct Filters {
    pub query: RegisterQuery,
    given: Vec<(&'static str, String)>,
}

impl Filters {
    pub fn parse(raw: Option<&str>) -> WebResult<Self> {
        let params = Params::parse(raw, REGISTER_PARAMS)?;
        let mut query = register_query(&params)?;
        if params.text("limit").is_none() {
            query.limit = PAGE_ROWS;
        }
        let given = FILTERS.iter().filter_map(|name| params.text(name).map(|value| (*name, value))).collect();
        Ok(Self { query, given })
    }

    pub fn value(&self, name: &str) -> &str {
        self.given.iter().find(|(given, _)| *given == name).map(|(_, value)| value.as_str()).unwrap_or("")
    }

    /// The query string of these filters, with more parameters after them.
    pub fn query_string(&self, more: &[(&str, &str)]) -> String {
        let pairs: Vec<(&str, &str)> =
            self.given.iter().map(|(name, value)| (*name, value.as_str())).chain(more.iter().copied()).collect();
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }

    fn hidden_fields(&self) -> Markup {
        html! {
            @for (name, value) in &self.given {
                input type="hidden" name=(name) value=(value);
            }
        }
    }
}

/// `path?query`, or `path` when the query is empty.
pub(crate) fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    }
}

fn select(name: &str, any: &str, chosen: &str, options: impl IntoIterator<Item = (String, String)>) -> Markup {
    html! {
        select name=(name) aria-label=(any) {
            option value="" { (any) }
            @for (value, label) in options {
                option value=(value) selected[value == chosen] { (label) }
            }
        }
    }
}

fn date_input(name: &str, label: &str, value: &str) -> Markup {
    // A date picker for plain dates; a time given in full stays editable as text.
    let kind = if value.is_empty() || value.len() == 10 { "date" } else { "text" };
    html! { label { (label) " " input type=(kind) name=(name) value=(value); } }
}

fn filter_bar(state: &AppState, filters: &Filters, action: &str) -> Markup {
    let config = state.config();
    let statuses = RegisterStatus::ALL.map(|status| (status.as_str().to_owned(), status.as_str().to_owned()));
    let named =
        |id: &String, name: &String| (id.clone(), if name.is_empty() { id.clone() } else { format!("{name} ({id})") });
    html! {
        form.filters method="get" action=(action) {
            @if action == "/" {
                (select("status", "Any status", filters.value("status"), statuses))
            }
            (select("source_id", "Any source", filters.value("source_id"), config.sources.values().map(|s| named(&s.id, &s.name))))
            (select("destination_id", "Any destination", filters.value("destination_id"),
                config.destinations.values().map(|d| named(&d.id, &d.name))))
            (select("flow_id", "Any flow", filters.value("flow_id"), config.flows.values().map(|f| named(&f.id, &f.name))))
            (date_input("start", "From", filters.value("start")))
            (date_input("end", "To", filters.value("end")))
            @if !filters.value("lead_id").is_empty() {
                input type="hidden" name="lead_id" value=(filters.value("lead_id"));
            }
            button type="submit" { "Filter" }
            a.clear href=(action) { "Clear" }
        }
    }
}

/// The form that resends one transfer and comes back to `back`.
fn resend_button(transfer_id: &str, session: &Session, back: &str) -> Markup {
    html! {
        form.inline method="post" action={"/register/" (transfer_id) "/resend"} {
            (session.csrf_field())
            input type="hidden" name="back" value=(back);
            button.resend type="submit" { "Resend" }
        }
    }
}

/// One register row; `back` is where a resend from it returns to.
fn row(row: &TransferRow, session: &Session, back: &str) -> Markup {
    let detail = format!("/leads/{}/transfers/{}", row.lead_id, row.transfer_id);
    html! {
        tr.transfer data-id=(row.transfer_id) data-status=(row.status.as_str()) {
            td.time { (time(row.created_at)) }
            td { (status_badge(row.status)) }
            td { (row.source_id) }
            td { (row.destination_id.as_deref().unwrap_or("—")) }
            td { a.lead href={"/leads/" (row.lead_id)} { (row.lead_id) } }
            td.description { (row.description) }
            td.number { (row.attempts) }
            td.actions {
                a.json-toggle href=(detail) data-fragment={(detail) "?fragment=1"} { "JSON" }
                @if row.status == RegisterStatus::Error && row.destination_id.is_some() {
                    (resend_button(&row.transfer_id, session, back))
                }
            }
        }
    }
}

fn rows(page: &Page<TransferRow>, session: &Session, back: &str) -> Markup {
    html! {
        @for transfer in &page.items { (row(transfer, session, back)) }
    }
}

fn register_table(page: &Page<TransferRow>, session: &Session, back: &str, live: Option<String>) -> Markup {
    html! {
        table.register #register data-live=[live] {
            thead { tr {
                th { "Time (UTC)" } th { "Status" } th { "Source" } th { "Destination" } th { "Lead" }
                th { "Description" } th { "Attempts" } th {}
            } }
            tbody { (rows(page, session, back)) }
        }
        @if page.items.is_empty() {
            p.empty { "No transfers match." }
        }
    }
}

fn pager(path: &str, filters: &Filters, page: &Page<TransferRow>) -> Markup {
    html! {
        nav.pager {
            @if filters.query.cursor.is_some() {
                a href=(with_query(path, &filters.query_string(&[]))) { "← Newest" }
            }
            @if let Some(cursor) = &page.next_cursor {
                a.older href=(with_query(path, &filters.query_string(&[("cursor", &cursor.encode_for(CursorList::Transfers, filters.query.sort))]))) { "Older →" }
            }
        }
    }
}

/// The register page a URL names: its filters, the page, and the URL a resend returns to.
async fn read_register(state: &AppState, raw: Option<&str>) -> WebResult<(Filters, Page<TransferRow>, String)> {
    let filters = Filters::parse(raw)?;
    let page = state.register_page(&filters.query).await?;
    Ok((filters, page, with_query("/", raw.unwrap_or(""))))
}

pub(crate) async fn register(
    State(state): State<Arc<AppState>>,
    session: Session,
    RawQuery(raw): RawQuery,
) -> WebResult<Response> {
    let (filters, page, back) = read_register(&state, raw.as_deref()).await?;
    // Only the first page takes new rows as they arrive; older pages stay as they were read.
    let live = filters.query.cursor.is_none().then(|| with_query("/register/rows", &filters.query_string(&[])));
    let body = html! {
        div.heading {
            h1 { "Register" }
            form.inline method="post" action="/register/resend" {
                (session.csrf_field())
                (filters.hidden_fields())
                button type="submit" title="Queue every transfer that matches these filters (not only this page) again" {
                    "Resend all matching"
                }
            }
        }
        (filter_bar(&state, &filters, "/"))
        (register_table(&page, &session, &back, live))
        (pager("/", &filters, &page))
    };
    Ok(page_response(StatusCode::OK, shell("Register", "/", Some(&session), body)))
}

/// The first page's rows alone, for the register to take new and changed rows without a reload.
pub(crate) async fn register_rows(
    State(state): State<Arc<AppState>>,
    session: Session,
    RawQuery(raw): RawQuery,
) -> WebResult<Response> {
    let (_, page, back) = read_register(&state, raw.as_deref()).await?;
    Ok(page_response(StatusCode::OK, html! { table { tbody { (rows(&page, &session, &back)) } } }))
}

#[derive(serde::Deserialize)]
pub(crate) struct ResendForm {
    csrf: Option<String>,
    back: Option<String>,
}

pub(crate) async fn resend_one(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path(transfer_id): Path<String>,
    Form(form): Form<ResendForm>,
) -> WebResult<Response> {
    session.check_csrf(form.csrf.as_deref())?;
    crate::delivery_api::resend_transfer(&state, &transfer_id, session.name.clone()).await?;
    Ok(Redirect::to(&super::session::safe_next(form.back.as_deref())).into_response())
}

/// Starts a bulk resend of every transfer matching the filters the form carries.
pub(crate) async fn resend_matching(
    State(state): State<Arc<AppState>>,
    session: Session,
    Form(form): Form<Vec<(String, String)>>,
) -> WebResult<Response> {
    let csrf = form.iter().find(|(name, _)| name == "csrf").map(|(_, value)| value.as_str());
    session.check_csrf(csrf)?;
    let filter: serde_json::Map<String, Value> = form
        .iter()
        .filter(|(name, value)| name != "csrf" && !value.trim().is_empty())
        .map(|(name, value)| (name.clone(), Value::String(value.clone())))
        .collect();
    let job = crate::jobs::start_resend(&state, Value::Object(filter), &session.name).await?;
    Ok(Redirect::to(&format!("/jobs/{}", job.id)).into_response())
}

/// A bulk resend's progress; the page reloads itself while the job runs.
pub(crate) async fn job(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path(job_id): Path<String>,
) -> WebResult<Response> {
    let job =
        state.store.job(&job_id).await?.ok_or_else(|| WebError::not_found(format!("There is no job {job_id}.")))?;
    let running = job.status == "running";
    let done = job.queued + job.skipped;
    let body = html! {
        h1 { "Resend job " code { (job.id) } }
        @if running {
            p.live #job-status data-refresh="2" { "Running… this page updates itself." }
        }
        dl.facts {
            dt { "Status" } dd.job-status data-status=(job.status) { (job.status) }
            dt { "Matched" } dd #matched { (job.matched) }
            dt { "Queued again" } dd #queued { (job.queued) }
            dt { "Skipped" } dd #skipped { (job.skipped) " (being delivered right now, or sent to no destination)" }
            dt { "Started" } dd { (time(job.created_at)) }
            dt { "Last progress" } dd { (time(job.updated_at)) }
            @if let Some(error) = &job.error { dt { "Error" } dd.error { (error) } }
        }
        progress max=(job.matched.max(1)) value=(if running { done } else { job.matched.max(1) }) {}
        h2 { "Filter" }
        (super::view::json_value(&job.params))
        p { a href="/" { "Back to the register" } }
    };
    Ok(page_response(StatusCode::OK, shell("Resend job", "/", Some(&session), body)))
}

/// One transfer: the lead as received, the lead now, and every event of the transfer.
pub(crate) async fn transfer(
    State(state): State<Arc<AppState>>,
    session: Session,
    Path((lead_id, transfer_id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> WebResult<Response> {
    let fragment = raw.as_deref() == Some("fragment=1");
    let query =
        RegisterQuery { lead_id: Some(lead_id.clone()), limit: leadrelay_store::MAX_PAGE, ..Default::default() };
    let rows = state.register_page(&query).await?;
    let Some(transfer) = rows.items.into_iter().find(|row| row.transfer_id == transfer_id) else {
        return Err(WebError::not_found(format!("Lead {lead_id} has no transfer {transfer_id}.")));
    };
    let (_, events) = super::lead::timeline(&state, &lead_id).await?;
    // The transfer's own events, and those about its destination that came before it had
    // any (a destination filter's skip); a transfer to no destination is the lead's own story.
    let ours: Vec<_> = events
        .iter()
        .filter(|event| match &event.transfer_id {
            Some(id) => *id == transfer_id,
            None => event.destination_id == transfer.destination_id,
        })
        .collect();
    let row_json = serde_json::to_string(&transfer).unwrap_or_default();
    let submitted = events.iter().find(|event| event.event_type == "source.submitted");
    let content = html! {
        div.transfer-json data-transfer=(transfer_id) {
            h3 { "Register row" }
            (json_block(&row_json))
            @if let Some(submitted) = submitted {
                h3 { "Lead as received" }
                (json_block(&submitted.data))
            }
            h3 { "Events of this transfer" }
            @for event in &ours {
                details.event-json {
                    summary { (event.event_type) " · " (time(event.timestamp)) }
                    (json_block(&event_json(event)))
                }
            }
        }
    };
    if fragment {
        return Ok(page_response(StatusCode::OK, content));
    }
    let body = html! {
        h1 { "Transfer " code { (transfer_id) } }
        p { "Lead " a href={"/leads/" (lead_id)} { (lead_id) } }
        (content)
    };
    Ok(page_response(StatusCode::OK, shell("Transfer", "/", Some(&session), body)))
}

/// An event as the API writes it.
pub(crate) fn event_json(event: &leadrelay_store::StoredEvent) -> String {
    let mut out = Vec::with_capacity(event.data.len() + event.lead.len() + 512);
    event.write_json(&mut out, &EVENT_FIELDS);
    String::from_utf8(out).unwrap_or_default()
}

pub(crate) async fn not_integrated(
    State(state): State<Arc<AppState>>,
    session: Session,
    RawQuery(raw): RawQuery,
) -> WebResult<Response> {
    let filters = Filters::parse(raw.as_deref())?;
    let page = state.store.not_integrated_page(&filters.query).await?;
    let back = with_query("/not-integrated", raw.as_deref().unwrap_or(""));
    let body = html! {
        div.heading {
            h1 { "Not integrated" }
            @if !page.items.is_empty() {
                form.inline method="post" action="/register/resend" {
                    (session.csrf_field())
                    (filters.hidden_fields())
                    input type="hidden" name="not_integrated" value="true";
                    button type="submit" { "Resend all matching" }
                }
            }
        }
        p.hint { "Transfers whose retries ran out. Fix the cause (the destination's configuration, or the CRM), then resend." }
        (filter_bar(&state, &filters, "/not-integrated"))
        table.register #not-integrated {
            thead { tr {
                th { "Time (UTC)" } th { "Source" } th { "Destination" } th { "Lead" } th { "Last error" }
                th { "Attempts" } th { "Given up" } th {}
            } }
            tbody {
                @for transfer in &page.items {
                    tr.transfer data-id=(transfer.transfer_id) {
                        td.time { (time(transfer.created_at)) }
                        td { (transfer.source_id) }
                        td { (transfer.destination_id.as_deref().unwrap_or("—")) }
                        td { a.lead href={"/leads/" (transfer.lead_id)} { (transfer.lead_id) } }
                        td.description { (transfer.description) }
                        td.number { (transfer.attempts) }
                        td.time { (time(transfer.updated_at)) }
                        td.actions { (resend_button(&transfer.transfer_id, &session, &back)) }
                    }
                }
            }
        }
        @if page.items.is_empty() {
            p.empty { "Nothing here: every transfer was delivered, skipped, or is still being retried." }
        }
        (pager("/not-integrated", &filters, &page))
    };
    Ok(page_response(StatusCode::OK, shell("Not integrated", "/not-integrated", Some(&session), body)))
}
